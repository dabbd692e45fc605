"""A cgroup v1 cpu-controller group that gives processes a device profile's CPU share.

    with cpu_group("sd-pi4", profile) as group:
        process = subprocess.Popen(group.wrap(argv))   # or group.add(pid)

``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` is an absolute budget (cores), so a profile's
time does not depend on what else runs on the machine, as long as the machine has that
much CPU free. A short period (10 ms) keeps times from clustering at period steps. The
group is removed on exit (its processes must have ended). Needs root and
``/sys/fs/cgroup/cpu``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from splitdnn.devices import DeviceProfile

ROOT = Path("/sys/fs/cgroup/cpu")


def why_unavailable() -> str | None:
    """None if cpu groups can be made here, else the reason (for pytest skips)."""
    if os.geteuid() != 0:
        return "needs root to create cgroups"
    if not (ROOT / "cpu.cfs_quota_us").is_file():
        return f"no cgroup v1 cpu controller at {ROOT}"
    return None


@dataclass(frozen=True)
class CpuGroup:
    path: Path | None  # None: no limit (processes stay where they are)

    def add(self, pid: int) -> None:
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(pid))

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` started inside the group (a shell joins it, then execs)."""
        if self.path is None:
            return list(argv)
        return ["sh", "-c", f'echo $$ > {self.path}/cgroup.procs && exec "$@"', "sh", *argv]

    def usage_s(self) -> float:
        """CPU seconds the group has used (cpuacct when mounted with cpu, else 0)."""
        if self.path is None:
            return 0.0
        usage = self.path / "cpuacct.usage"
        return int(usage.read_text()) / 1e9 if usage.is_file() else 0.0


@contextmanager
def cpu_group(name: str, profile: DeviceProfile) -> Iterator[CpuGroup]:
    """A group limited to ``profile.cpu_share`` cores; no group when the profile is unlimited."""
    if profile.quota_us is None:
        yield CpuGroup(None)
        return
    reason = why_unavailable()
    if reason:
        raise RuntimeError(reason)
    path = ROOT / name
    path.mkdir(exist_ok=True)
    try:
        (path / "cpu.cfs_period_us").write_text(str(profile.period_us))
        (path / "cpu.cfs_quota_us").write_text(str(profile.quota_us))
        yield CpuGroup(path)
    finally:
        _remove(path)


def _remove(path: Path) -> None:
    for _ in range(50):  # processes may take a moment to leave
        try:
            procs = (path / "cgroup.procs").read_text().split()
            for pid in procs:  # move stragglers back to the root group
                (ROOT / "cgroup.procs").write_text(pid)
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
