"""Container entrypoint: size thread pools to the container's CPU limit, then exec the command.

Thread pools sized to the host's cores oversubscribe a container limited to fewer CPUs
(``cpus: 1.5`` in compose, ``--cpus``); the kernel then throttles ONNX Runtime's spinning
threads mid-inference. The count is the CPU quota (cgroup v2 ``cpu.max``, v1
``cpu.cfs_quota_us``/``cpu.cfs_period_us``) rounded down, at least 1, and at most the CPUs
this process may run on (cpuset). Variables the user has set are left alone.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

#: Read by OpenMP/BLAS and by the head and tail services (ONNX Runtime intra-op threads).
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "SPLITDNN_HEAD_INTRA_OP_THREADS",
    "SPLITDNN_TAIL_INTRA_OP_THREADS",
    "SPLITDNN_MEMBER_INTRA_OP_THREADS",
)


def cpu_quota(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup CPU quota, or None when there is no quota."""
    cpu_max = cgroup_root / "cpu.max"  # cgroup v2: "max 100000" or "150000 100000"
    if cpu_max.is_file():
        quota, period = cpu_max.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):  # cgroup v1
        quota_file = cgroup_root / name / "cpu.cfs_quota_us"
        period_file = cgroup_root / name / "cpu.cfs_period_us"
        if quota_file.is_file() and period_file.is_file():
            quota = int(quota_file.read_text())
            return None if quota <= 0 else quota / int(period_file.read_text())
    return None


def thread_count(quota: float | None, available: int) -> int:
    """Threads for a CPU quota (None: no quota) on ``available`` schedulable CPUs."""
    if quota is None:
        return max(1, available)
    return max(1, min(available, math.floor(quota + 1e-9)))


def thread_env(
    environ: dict[str, str], cgroup_root: Path = Path("/sys/fs/cgroup")
) -> dict[str, str]:
    """The thread variables to add to ``environ`` (those it does not set already)."""
    try:
        quota = cpu_quota(cgroup_root)
    except (OSError, ValueError):
        quota = None
    count = str(thread_count(quota, len(os.sched_getaffinity(0))))
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
