"""A rate-limited link to a private network namespace, for measuring modes at known rates.

    root namespace (device)  <-- veth, tbf each way -->  namespace "<name>" (edge)
        10.231.<n>.1                                          10.231.<n>.2

``tbf`` shapes both directions (this kernel has no ``netem``, so no added delay). Needs
root and iproute2. Everything is removed on exit, also after errors; traffic stays on the
veth pair, never on a real interface.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    namespace: str
    host_dev: str
    ns_dev: str
    host_ip: str
    ns_ip: str
    rate_mbit: float

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace (the edge side)."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def set_rate(self, rate_mbit: float) -> Link:
        """Change the rate of both directions in place."""
        _shape(self.host_dev, rate_mbit, None, change=True)
        _shape(self.ns_dev, rate_mbit, self.namespace, change=True)
        return Link(**{**self.__dict__, "rate_mbit": rate_mbit})


def why_unavailable() -> str | None:
    """None if links can be made here, else the reason (for pytest skips)."""
    if os.geteuid() != 0:
        return "needs root for ip netns / tc"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs iproute2 ({tool} not found)"
    return None


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


def _shape(dev: str, rate_mbit: float, namespace: str | None, change: bool = False) -> None:
    rate_bytes = rate_mbit * 1e6 / 8
    burst = max(16 * 1024, int(rate_bytes * 0.01))  # >= 10 ms of traffic, >= an MTU
    argv = ["tc", "qdisc", "change" if change else "add", "dev", dev, "root", "tbf",
            "rate", f"{rate_mbit}mbit", "burst", str(burst), "latency", "400ms"]  # fmt: skip
    if namespace:
        argv = ["ip", "netns", "exec", namespace, *argv]
    _run(argv)


@contextmanager
def shaped_link(rate_mbit: float, name: str = "sdnb", subnet: int = 231) -> Iterator[Link]:
    """Create namespace + veth + tbf; yield the :class:`Link`; always tear down."""
    reason = why_unavailable()
    if reason:
        raise RuntimeError(reason)
    namespace, host_dev, ns_dev = name, f"{name}-h", f"{name}-n"
    third = (os.getpid() % 200) + 20
    host_ip, ns_ip = f"10.{subnet}.{third}.1", f"10.{subnet}.{third}.2"
    _run(["ip", "netns", "del", namespace], check=False)  # leftovers of a killed run
    _run(["ip", "link", "del", host_dev], check=False)
    try:
        _run(["ip", "netns", "add", namespace])
        _run(["ip", "link", "add", host_dev, "type", "veth", "peer", "name", ns_dev])
        _run(["ip", "link", "set", ns_dev, "netns", namespace])
        _run(["ip", "addr", "add", f"{host_ip}/30", "dev", host_dev])
        _run(["ip", "link", "set", host_dev, "up"])
        inside = ["ip", "netns", "exec", namespace]
        _run([*inside, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_dev])
        _run([*inside, "ip", "link", "set", ns_dev, "up"])
        _run([*inside, "ip", "link", "set", "lo", "up"])
        _shape(host_dev, rate_mbit, None)
        _shape(ns_dev, rate_mbit, namespace)
        yield Link(namespace, host_dev, ns_dev, host_ip, ns_ip, rate_mbit)
    finally:
        _run(["ip", "netns", "del", namespace], check=False)
        _run(["ip", "link", "del", host_dev], check=False)
