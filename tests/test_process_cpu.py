"""benchmarks/process_cpu.py: a process's CPU time from its threads' scheduler statistics."""

from __future__ import annotations

import os
import sys
import time

import pytest

from benchmarks.process_cpu import cpu_seconds

pytestmark = pytest.mark.skipif(
    not os.path.exists(f"/proc/{os.getpid()}/task"), reason="needs Linux /proc"
)


def test_cpu_seconds_grows_by_the_work_done_and_not_by_sleeping():
    before = cpu_seconds(os.getpid())
    deadline = time.thread_time() + 0.2
    while time.thread_time() < deadline:  # 0.2 s of this thread's CPU
        pass
    busy = cpu_seconds(os.getpid()) - before
    time.sleep(0.2)
    idle = cpu_seconds(os.getpid()) - before - busy
    assert 0.19 < busy < 0.2 + 0.15  # other threads of pytest may add a little
    assert idle < 0.05


def test_cpu_seconds_of_a_process_that_is_gone_is_zero():
    import subprocess

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert cpu_seconds(process.pid) == 0.0
