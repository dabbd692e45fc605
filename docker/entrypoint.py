"""Container entrypoint: size the numeric libraries' thread pools to the CPU limit, then exec.

Thread pools sized to the host's cores oversubscribe a container limited to fewer CPUs
(``cpus: 1.5`` in compose, ``--cpus``). The ONNX Runtime sessions size themselves from
the same limit (:mod:`splitdnn.cpus`, the one implementation: the process's own cgroup
quota and its affinity, spinning off under a quota) and log what they chose; this sets the
OpenMP/BLAS variables, which those libraries read before any of our code runs. Variables
the user has set are left alone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from splitdnn.cpus import cpu_budget, thread_count

#: Read by OpenMP and OpenBLAS when they load (numpy, Pillow's helpers).
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_env(environ: dict[str, str], proc: Path = Path("/proc/self")) -> dict[str, str]:
    """The thread variables to add to ``environ`` (those it does not set already)."""
    count = str(thread_count(cpu_budget(proc)))
    return {name: count for name in THREAD_VARS if not environ.get(name)}


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("entrypoint: no command given")
    added = thread_env(dict(os.environ))
    os.environ.update(added)
    if added:
        print(f"entrypoint: {' '.join(f'{k}={v}' for k, v in added.items())}", file=sys.stderr)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
