"""The CPU this process may really use, and ONNX Runtime thread counts sized to it.

A device process usually runs under a CPU quota (systemd ``CPUQuota=``, a container's
``cpus:``, a cgroup made by hand) that ``os.cpu_count()`` does not see. ONNX Runtime's
default (one intra-op thread per host core, spinning between runs) then burns the quota
in spin-waits and gets throttled mid-inference: measured on a quarter core, 2.6x slower
than one thread. This module reads what limits the process:

* its own cgroup's CPU quota (``/proc/self/cgroup`` names the group; v1
  ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, v2 ``cpu.max``), the smallest along the
  path from that group up to the hierarchy's root, since a parent's quota limits its
  children too;
* its CPU affinity (``os.sched_getaffinity``: cpusets, ``taskset``);

and :func:`plan_threads` turns that into intra/inter-op threads, with spinning off under a
quota. Stdlib only: the runtime, the services and the container entrypoint all use it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

#: Quota files per cgroup version, as read by :func:`_group_quota`.
V1_QUOTA, V1_PERIOD, V2_MAX = "cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.max"


@dataclass(frozen=True)
class CpuBudget:
    """What limits this process: a cgroup quota in cores (None: none) and its affinity."""

    quota: float | None
    affinity: int
    #: Where the quota comes from (the group's directory and its values), for the log.
    source: str = ""

    @property
    def cores(self) -> float:
        """CPUs the process can use at once: the quota, at most its schedulable CPUs."""
        return float(self.affinity) if self.quota is None else min(self.quota, self.affinity)


@dataclass(frozen=True)
class ThreadPlan:
    """ONNX Runtime settings for one session, and why."""

    intra_op: int
    inter_op: int
    spinning: bool
    reason: str

    def describe(self) -> str:
        spin = "on" if self.spinning else "off"
        threads = f"intra-op {self.intra_op}, inter-op {self.inter_op}"
        return f"{threads}, spinning {spin} ({self.reason})"


def _read_quota_v1(group: Path) -> tuple[float, str] | None:
    quota_file, period_file = group / V1_QUOTA, group / V1_PERIOD
    if not (quota_file.is_file() and period_file.is_file()):
        return None
    quota, period = int(quota_file.read_text()), int(period_file.read_text())
    if quota <= 0 or period <= 0:  # -1: no limit
        return None
    return quota / period, f"cgroup v1 {group}: {quota}/{period} us"


def _read_quota_v2(group: Path) -> tuple[float, str] | None:
    cpu_max = group / V2_MAX
    if not cpu_max.is_file():
        return None
    fields = cpu_max.read_text().split()
    if not fields or fields[0] == "max":
        return None
    period = int(fields[1]) if len(fields) > 1 else 100_000
    return int(fields[0]) / period, f"cgroup v2 {group}: cpu.max {fields[0]} {period}"


@dataclass(frozen=True)
class _Mount:
    version: int
    root: str  # the cgroup path mounted here (not "/" inside a container without cgroupns)
    point: Path


def _cpu_mounts(mountinfo: str) -> list[_Mount]:
    """The cgroup v1 hierarchies holding the cpu controller, and the cgroup2 mounts."""
    mounts = []
    for line in mountinfo.splitlines():
        before, sep, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        root, point = fields[3], Path(fields[4].replace("\\040", " "))
        if tail[0] == "cgroup2":
            mounts.append(_Mount(2, root, point))
        elif tail[0] == "cgroup" and "cpu" in tail[2].split(","):
            mounts.append(_Mount(1, root, point))
    return mounts


def _own_groups(cgroup: str) -> dict[int, str]:
    """This process's group path per version: v1 of the cpu controller, v2 the unified one."""
    groups: dict[int, str] = {}
    for line in cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            groups[2] = path
        elif "cpu" in controllers.split(","):
            groups[1] = path
    return groups


def _walk_up(mount: _Mount, path: str) -> list[Path]:
    """The group's directory and its parents up to the mount point, innermost first.

    A path outside the mount's root (a container without its own cgroup namespace sees the
    host's path) falls back to the mount point itself, which is then the container's group.
    """
    root = mount.root.rstrip("/")
    if root and path.startswith(root + "/"):
        path = path[len(root) :]
    elif root and path == root:
        path = "/"
    parts = [p for p in path.split("/") if p]
    start = mount.point.joinpath(*parts)
    if not start.is_dir():
        return [mount.point]
    return [start, *[p for p in start.parents if p.is_relative_to(mount.point)]]


def cgroup_quota(proc: Path = Path("/proc/self")) -> tuple[float | None, str]:
    """This process's CPU quota in cores (None: no quota) and where it comes from.

    Reads ``proc/cgroup`` and ``proc/mountinfo``, then every group from the process's own
    up to its hierarchy's root, in v1 and v2 alike; the smallest quota wins.
    """
    try:
        groups = _own_groups((proc / "cgroup").read_text())
        mounts = _cpu_mounts((proc / "mountinfo").read_text())
    except OSError:
        return None, "no /proc cgroup information"
    best: tuple[float, str] | None = None
    for mount in mounts:
        if mount.version not in groups:
            continue
        read = _read_quota_v1 if mount.version == 1 else _read_quota_v2
        for group in _walk_up(mount, groups[mount.version]):
            try:
                found = read(group)
            except (OSError, ValueError):
                continue
            if found is not None and (best is None or found[0] < best[0]):
                best = found
    return (None, "no cgroup CPU quota") if best is None else best


def cpu_budget(proc: Path = Path("/proc/self")) -> CpuBudget:
    """The quota of this process's cgroup and the CPUs it may run on."""
    quota, source = cgroup_quota(proc)
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        affinity = os.cpu_count() or 1
    return CpuBudget(quota, max(1, affinity), source)


def thread_count(budget: CpuBudget) -> int:
    """Intra-op threads for a budget: whole cores it may use (a quota rounded down), >= 1.

    More threads than whole cores of quota only take turns being throttled.
    """
    return max(1, math.floor(budget.cores + 1e-9))


def plan_threads(budget: CpuBudget, intra_op: int = 0, inter_op: int = 0) -> ThreadPlan:
    """ONNX Runtime threads for ``budget``; ``intra_op``/``inter_op`` > 0 are kept as set.

    Inter-op threads run independent nodes side by side only in parallel execution mode;
    the sessions run sequentially, so auto gives one. Spinning (threads busy-waiting for
    the next run) is off under a quota: every spin is quota the model does not get.
    """
    auto = thread_count(budget)
    chosen_intra = intra_op or auto
    chosen_inter = inter_op or 1
    limits = f"{budget.affinity} CPUs in the affinity mask"
    if budget.quota is not None:
        limits = f"quota {budget.quota:g} CPU ({budget.source}), {limits}"
    how = "set" if intra_op else "auto"
    return ThreadPlan(
        intra_op=chosen_intra,
        inter_op=chosen_inter,
        spinning=budget.quota is None,
        reason=f"{how}; {limits}",
    )
