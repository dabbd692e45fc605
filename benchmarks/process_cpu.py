"""CPU time a running process has used, all its threads, in nanoseconds' precision.

Per-request CPU of a service is what a slow device multiplies into wall time (a 0.11-core
profile pays ~9x), and it is far steadier than wall time on a shared machine: other load
delays a request but does not add to its CPU. ``/proc/PID/task/*/schedstat`` (first field:
ns on a CPU) is exact, where ``/proc/PID/stat`` counts 10 ms ticks. Linux only; 0.0 when
the process or its statistics are gone (a thread that ends between listing and reading
loses its share).
"""

from __future__ import annotations

import os


def cpu_seconds(pid: int) -> float:
    """Seconds on a CPU so far, summed over the process's live threads."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as stats:
                total += int(stats.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9
