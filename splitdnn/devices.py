"""Device profiles as data: the CPU share that makes one core of this machine stand for a
named device (``devices.json``, which cites the published figure each profile aims at).

A profile is applied with a cgroup v1 cpu-controller group (``cpu.cfs_quota_us`` =
``cpu_share`` x ``period_us``, a short 10 ms period so times do not cluster at 100 ms steps;
the kernel takes no quota under 1 ms, so at 0.11 core 10 ms is about the shortest there is)
or Docker ``--cpus`` with ``--cpu-period 10000``; ``benchmarks/cgroup.py`` does the former.
Standard library only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from splitdnn.errors import UnknownNameError

DATA = Path(__file__).with_name("devices.json")
#: The kernel refuses a ``cpu.cfs_quota_us`` below 1 ms (``min_cfs_quota_period``).
MIN_QUOTA_US = 1000


@dataclass(frozen=True)
class DeviceProfile:
    """One device: its CPU share (cores; None = no limit) and where the share comes from."""

    name: str
    device: str
    cpu_share: float | None
    period_us: int
    target_local_ms: float | None
    source: str
    slowdown_measured: float | None

    def __post_init__(self) -> None:
        quota = self.quota_us
        if quota is not None and quota < MIN_QUOTA_US:
            shortest = math.ceil(MIN_QUOTA_US / self.cpu_share)  # type: ignore[operator]
            raise ValueError(
                f"profile {self.name}: {self.cpu_share:g} core of a {self.period_us} µs period is "
                f"a {quota} µs quota, below the kernel's {MIN_QUOTA_US} µs minimum; the shortest "
                f"period for this share is {shortest} µs"
            )

    @property
    def quota_us(self) -> int | None:
        """``cpu.cfs_quota_us`` for this profile (None: no limit)."""
        return None if self.cpu_share is None else round(self.cpu_share * self.period_us)

    def docker_args(self) -> list[str]:
        if self.cpu_share is None:
            return []
        return [f"--cpu-period={self.period_us}", f"--cpu-quota={self.quota_us}"]


@cache
def profiles() -> dict[str, DeviceProfile]:
    """Every profile of ``devices.json`` by name."""
    data = json.loads(DATA.read_text())
    period = int(data["period_us"])
    return {
        name: DeviceProfile(
            name=name,
            device=p["device"],
            cpu_share=None if p["cpu_share"] is None else float(p["cpu_share"]),
            period_us=period,
            target_local_ms=p.get("target_local_ms"),
            source=p["source"],
            slowdown_measured=p.get("slowdown_measured"),
        )
        for name, p in data["profiles"].items()
    }


def get(name: str) -> DeviceProfile:
    try:
        return profiles()[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown device profile {name!r}; known: {sorted(profiles())}"
        ) from None
