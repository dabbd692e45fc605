"""A rate-limited link to a private network namespace, for measuring modes at known rates.

    root namespace (device)  <-- veth, tbf each way -->  namespace "<name>" (edge)
        10.231.<n>.1                                          10.231.<n>.2

``tbf`` shapes both directions (this kernel has no ``netem``, so no added delay) with a
bucket of about one packet, and segmentation offload is off on both veth ends: with a
bucket larger than a request, or 64 KB TSO super-packets, small requests pass unshaped.
:func:`calibrate` measures the rate a bulk TCP upload really gets. Needs root, iproute2
and ethtool. Everything is removed on exit, also after errors; traffic stays on the
veth pair, never on a real interface.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from benchmarks.system_tools import why_missing


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

    def enter_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace with this machine's ``/sys`` kept: ``ip netns
        exec`` mounts the namespace's own sysfs, which hides ``/sys/fs/cgroup``, so a
        process in a CPU group (a NoNN member on its device profile) could not read its
        quota and would size its ONNX Runtime threads to the whole machine."""
        return ["nsenter", f"--net=/var/run/netns/{self.namespace}", *argv]

    def set_rate(self, rate_mbit: float) -> Link:
        """Change the rate of both directions in place."""
        _shape(self.host_dev, rate_mbit, None, change=True)
        _shape(self.ns_dev, rate_mbit, self.namespace, change=True)
        return Link(**{**self.__dict__, "rate_mbit": rate_mbit})


def why_unavailable() -> str | None:
    """None if links can be made here, else the reason (for pytest skips)."""
    if os.geteuid() != 0:
        return "needs root for ip netns / tc"
    return why_missing("ip", "tc", "ethtool", "nsenter")


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


def burst_bytes(rate_mbit: float) -> int:
    """tbf bucket: one full frame, or 1 ms of traffic at high rates (a few KB at most)."""
    return max(1600, int(rate_mbit * 1e6 / 8 * 0.001))


def _shape(dev: str, rate_mbit: float, namespace: str | None, change: bool = False) -> None:
    burst = burst_bytes(rate_mbit)
    argv = ["tc", "qdisc", "change" if change else "add", "dev", dev, "root", "tbf",
            "rate", f"{rate_mbit}mbit", "burst", str(burst), "latency", "400ms"]  # fmt: skip
    if namespace:
        argv = ["ip", "netns", "exec", namespace, *argv]
    _run(argv)


def _offloads_off(dev: str, namespace: str | None) -> None:
    argv = ["ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"]
    _run(["ip", "netns", "exec", namespace, *argv] if namespace else argv)


#: A TCP sink for :func:`calibrate`: reads everything, answers with one byte per upload.
SINK = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
while True:
    conn, _ = server.accept()
    with conn:
        want = int.from_bytes(conn.recv(8, socket.MSG_WAITALL), "big")
        got = 0
        while got < want:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            got += len(chunk)
        conn.sendall(b"k")
"""


def calibrate(link: Link, nbytes: int | None = None, port: int = 18799) -> dict[str, float]:
    """Time a bulk TCP upload through the link: the payload rate it really gets (Mbit/s) and
    the same on the wire (TCP/IP/Ethernet headers added: 1448 payload bytes per 1514)."""
    import socket
    import sys
    import time

    nbytes = nbytes or max(100_000, int(link.rate_mbit * 1e6 / 8 * 0.5))  # ~0.5 s of traffic
    sink = subprocess.Popen(link.exec_argv([sys.executable, "-c", SINK, link.ns_ip, str(port)]))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = socket.create_connection((link.ns_ip, port), timeout=60)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with conn:
            payload = bytes(nbytes)
            start = time.perf_counter()
            conn.sendall(nbytes.to_bytes(8, "big") + payload)
            conn.recv(1)
            seconds = time.perf_counter() - start
    finally:
        sink.kill()
        sink.wait()
    goodput = nbytes * 8 / seconds / 1e6
    return {
        "set_mbit": link.rate_mbit,
        "bytes": nbytes,
        "seconds": round(seconds, 4),
        "payload_mbit": round(goodput, 3),
        "wire_mbit": round(goodput * 1514 / 1448, 3),
    }


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
        _offloads_off(host_dev, None)
        _offloads_off(ns_dev, namespace)
        _shape(host_dev, rate_mbit, None)
        _shape(ns_dev, rate_mbit, namespace)
        yield Link(namespace, host_dev, ns_dev, host_ip, ns_ip, rate_mbit)
    finally:
        _run(["ip", "netns", "del", namespace], check=False)
        _run(["ip", "link", "del", host_dev], check=False)
