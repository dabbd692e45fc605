"""The one way the benchmarks start the services: a :class:`Stack` of child processes
(``splitdnn.serve.start_children``, which the tests' ``running_services`` uses too) that
can kill and restart one of them and, when asked, samples their RSS (psutil) in a
background thread.

Two set-ups build it:

* :func:`local_stack`: tail, head and gateway on 127.0.0.1 with a shared token (the
  settings they ship with: in-flight limits 8 / 2 / 8), for the overload benchmarks
  (``hostile``, ``soak``).
* :func:`device_stack`: the tail inside a tbf-shaped network namespace (no CPU limit) and
  the device side in a device profile's CPU group: the head alone (path ``head``), gateway
  and head in one process (``classify``) or as two processes (``apart``), for
  ``bandwidth_sweep`` and ``tls_cost``; with a NoNN bundle, its members too, each in its own
  CPU group behind the same link, and ``mode=nonn`` on the device's gateway
  (``nonn_latency``).
* :func:`loopback_device_stack`: the tail and the one-process device app on 127.0.0.1, no
  CPU group, for ``device_cpu`` (CPU per request does not depend on a quota).
"""

from __future__ import annotations

import argparse
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.cgroup import CpuGroup
from benchmarks.inputs import free_port
from benchmarks.netns import Link
from benchmarks.report import RESULTS
from splitdnn import serve
from splitdnn.bundle import default_bundle_path
from splitdnn.tls import TLSFiles, client_context

PORTS = {"tail": 18201, "head": 18202, "gateway": 18200}
#: The device set-up's ports (``port_offset`` lets a second set run beside the first).
DEVICE_PORTS = {"tail": 18101, "head": 18102, "gateway": 18100}
#: NoNN member I of the device set-up listens on this port + I (+ ``port_offset``).
MEMBER_PORT = 18110
READY = "/v2/health/ready"


@dataclass
class RssSample:
    t: float
    service: str
    rss_mib: float


@dataclass
class Stack:
    """``children`` started in order on ``with`` (each waited for), stopped on exit.
    ``urls`` names each service's base URL (and ``client``: where a client posts)."""

    children: dict[str, serve.Child]
    urls: dict[str, str]
    token: str | None = None
    ready_timeout: float = 180.0
    #: Seconds between RSS samples; None samples nothing (a sweep keeps the CPU quiet).
    rss_every: float | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    samples: list[RssSample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _t0: float = field(default_factory=time.monotonic)

    def url(self, name: str) -> str:
        return self.urls[name]

    def start(self, name: str, timeout: float | None = None) -> float:
        """Start one service again; returns seconds until it answered ready."""
        start = time.monotonic()
        children = {name: self.children[name]}
        self.processes.update(serve.start_children(children, timeout or self.ready_timeout))
        return time.monotonic() - start

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        process.kill()
        process.wait()

    def __enter__(self) -> Stack:
        self.processes.update(serve.start_children(self.children, self.ready_timeout))
        if self.rss_every is not None:
            threading.Thread(target=self._sample, args=(self.rss_every,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        serve.stop_processes(self.processes.values())

    def rss_mib(self, name: str) -> float | None:
        import psutil

        process = self.processes.get(name)
        if process is None:
            return None
        try:
            return psutil.Process(process.pid).memory_info().rss / 2**20
        except psutil.Error:
            return None

    def _sample(self, every: float) -> None:
        while not self._stop.wait(every):
            now = time.monotonic() - self._t0
            for name in list(self.processes):
                rss = self.rss_mib(name)
                if rss is not None:
                    self.samples.append(RssSample(now, name, rss))

    def now(self) -> float:
        return time.monotonic() - self._t0

    def peak(self, name: str, since: float = 0.0, until: float = float("inf")) -> float | None:
        values = [s.rss_mib for s in self.samples if s.service == name and since <= s.t <= until]
        return max(values) if values else None

    def plot_rss(self, ax: Any, xlabel: str = "time (s)") -> None:
        """Each service's sampled RSS over time on a matplotlib axis, with a legend."""
        for name in self.children:
            points = [(s.t, s.rss_mib) for s in self.samples if s.service == name]
            if points:
                ax.plot(*zip(*points, strict=True), label=name)
        ax.set(xlabel=xlabel, ylabel="RSS (MiB)")
        ax.legend()


def mark_times(axes: Any, times: Mapping[str, float], colours: Mapping[str, str]) -> None:
    """A dashed vertical line at each event's time (s), in its colour, on every axis."""
    for ax in axes:
        for event, colour in colours.items():
            ax.axvline(times[event], color=colour, lw=0.8, ls="--")


def stack_parser(description: str) -> argparse.ArgumentParser:
    """The options of every benchmark on :func:`local_stack`: the bundle it serves (default:
    the packaged one) and where the results go."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bundle", type=Path, default=default_bundle_path())
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def local_stack(
    bundle: Path,
    token: str = "benchmark-token",
    threads: int = 1,
    extra_env: Mapping[str, Mapping[str, str]] | None = None,
) -> Stack:
    """Tail, head and gateway on 127.0.0.1 (:data:`PORTS`), RSS sampled every 0.1 s."""
    urls = {name: f"http://127.0.0.1:{port}" for name, port in PORTS.items()}
    common = {
        "SPLITDNN_TAIL_INTRA_OP_THREADS": str(threads),
        "SPLITDNN_HEAD_INTRA_OP_THREADS": str(threads),
        "MALLOC_ARENA_MAX": "2",  # as in the images
    }
    own = {
        "tail": (serve.TAIL_APP, serve.tail_env(bundle, token)),
        "head": (serve.HEAD_APP, serve.head_env(urls["tail"], bundle, token)),
        "gateway": (
            serve.GATEWAY_APP,
            serve.gateway_env(urls["head"], urls["tail"], token=token),
        ),
    }
    children = {
        name: serve.Child(
            serve.uvicorn_command(app, "127.0.0.1", PORTS[name], "warning"),
            {**common, **env, **(extra_env or {}).get(name, {})},
            urls[name] + READY,
        )
        for name, (app, env) in own.items()
    }
    return Stack(children, urls, token=token, rss_every=0.1)


def loopback_device_stack(
    bundle: Path, threads: int = 1, code: Mapping[str, Path | None] | None = None
) -> Stack:
    """The tail and gateway + head in one process (``splitdnn serve device``) on free
    127.0.0.1 ports, ``threads`` ONNX Runtime threads (intra op; inter op 1) each, no
    token. ``code`` names one device app per entry, each run from its own source tree
    (``PYTHONPATH``; None: this one), beside each other on the same tail: an A/B of two
    versions under the same load. Default: one, named ``device``."""
    code = code or {"device": None}
    ports = {name: free_port() for name in ("tail", *code)}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    common = {
        f"SPLITDNN_{service}_{kind}_OP_THREADS": str(threads if kind == "INTRA" else 1)
        for service in ("TAIL", "HEAD")
        for kind in ("INTRA", "INTER")
    }
    common["OMP_NUM_THREADS"] = str(threads)
    children = {
        "tail": serve.Child(
            serve.uvicorn_command(serve.TAIL_APP, "127.0.0.1", ports["tail"], "warning"),
            {**common, **serve.tail_env(bundle)},
            urls["tail"] + READY,
        )
    }
    for name, source in code.items():
        env = {**common, **serve.device_env(urls["tail"], bundle, compression="zstd")}
        if source is not None:
            env["PYTHONPATH"] = str(source)
        children[name] = serve.Child(
            serve.uvicorn_command(serve.DEVICE_APP, "127.0.0.1", ports[name], "warning"),
            env,
            urls[name] + READY,
        )
    return Stack(children, urls)


def device_stack(
    link: Link,
    bundle: Path,
    group: CpuGroup,
    threads: int,
    path: str = "head",
    tls_dir: Path | None = None,
    port_offset: int = 0,
    tail_threads: int | None = None,
    nonn: Path | None = None,
    member_groups: Sequence[CpuGroup] = (),
) -> Stack:
    """The tail in ``link``'s namespace (no CPU limit), the device side in ``group``: the
    head alone (``path`` head), gateway and head in one process (``classify``) or as two
    processes (``apart``). ``threads`` 0 leaves ONNX Runtime threads to the services (the
    default); ``tail_threads``, when given, sets the tail's apart (on this one machine the
    tail's threads compete with the device's quota, on a real edge server they do not).
    ``tls_dir`` (``splitdnn certs`` output naming the namespace's address): head
    → tail over mutual TLS. ``urls["client"]`` is where the client posts: the gateway when
    it runs apart, else the device or head.

    ``nonn`` (a NoNN bundle; path ``classify`` or ``apart``): one member per entry of
    ``member_groups``, each in its group inside the link's namespace (a device of its own,
    reached over the link, as the tail is), started before the device side, whose gateway
    then also serves ``mode=nonn`` (member deadline 60 s: a slow member is measured, not
    dropped). ``urls["member0"]``, … name them."""
    ports = {name: port + port_offset for name, port in DEVICE_PORTS.items()}
    tls = (
        {name: TLSFiles.from_dir(tls_dir, name) for name in ("tail", "head")}
        if tls_dir is not None
        else {}
    )
    scheme = "https" if tls_dir is not None else "http"
    urls = {
        "tail": f"{scheme}://{link.ns_ip}:{ports['tail']}",
        "head": f"http://127.0.0.1:{ports['head']}",
        "gateway": f"http://127.0.0.1:{ports['gateway']}",
    }
    urls["client"] = urls["gateway"] if path == "apart" else urls["head"]
    base: dict[str, str] = {}
    if threads:
        for service in ("TAIL", "HEAD"):
            base[f"SPLITDNN_{service}_INTRA_OP_THREADS"] = str(threads)
            base[f"SPLITDNN_{service}_INTER_OP_THREADS"] = "1"
        base["OMP_NUM_THREADS"] = "1"
    if tail_threads:
        base["SPLITDNN_TAIL_INTRA_OP_THREADS"] = str(tail_threads)
        base["SPLITDNN_TAIL_INTER_OP_THREADS"] = "1"
    if member_groups and nonn is None:
        raise ValueError("member groups need the NoNN bundle their members serve")
    members = [
        f"http://{link.ns_ip}:{MEMBER_PORT + port_offset + i}" for i in range(len(member_groups))
    ]
    urls |= {f"member{i}": url for i, url in enumerate(members)}
    nonn_env = (
        {**serve.nonn_env(nonn, members), "SPLITDNN_GATEWAY_MEMBER_TIMEOUT_S": "60"}
        if nonn is not None
        else {}
    )
    tail_tls, head_tls = tls.get("tail"), tls.get("head")
    tail = serve.uvicorn_command(
        serve.TAIL_APP, link.ns_ip, ports["tail"], "warning",
        serve.uvicorn_tls(tail_tls, mutual=True),
    )  # fmt: skip
    app = serve.DEVICE_APP if path == "classify" else serve.HEAD_APP
    head = serve.uvicorn_command(app, "127.0.0.1", ports["head"], "warning")
    head_env = {
        **serve.device_env(urls["tail"], bundle, compression="zstd"),
        "SPLITDNN_HEAD_TAIL_TIMEOUT_S": "60",
        "SPLITDNN_GATEWAY_TIMEOUT_S": "120",
        "SPLITDNN_HEAD_OFFLOAD_REENCODE": "bundle",
        **(head_tls.env() if head_tls else {}),
    }
    # The tail asks for a client certificate under mutual TLS: the probe shows the head's.
    probe = client_context(head_tls.ca, head_tls.cert, head_tls.key) if head_tls else None
    children = {
        "tail": serve.Child(
            link.exec_argv(tail), {**base, **serve.tail_env(bundle)}, urls["tail"] + READY, probe
        ),
    }
    for i, member_group in enumerate(member_groups):
        port = MEMBER_PORT + port_offset + i
        member = serve.uvicorn_command(serve.MEMBER_APP, link.ns_ip, port, "warning")
        children[f"member{i}"] = serve.Child(
            # nsenter, not ip netns exec: the member must see its group's quota (threads)
            member_group.wrap(link.enter_argv(member)),
            {**base, **serve.member_env(Path(str(nonn)), i)},
            urls[f"member{i}"] + READY,
        )
    children["head"] = serve.Child(
        group.wrap(head),
        {**base, **head_env, **(nonn_env if path == "classify" else {})},
        urls["head"] + READY,
    )
    if path == "apart":  # a gateway process beside the head, both under the quota
        gateway = serve.uvicorn_command(serve.GATEWAY_APP, "127.0.0.1", ports["gateway"], "warning")
        gateway_env = {
            **serve.gateway_env(urls["head"], urls["tail"]),
            "SPLITDNN_GATEWAY_TIMEOUT_S": "120",
            **nonn_env,
        }
        children["gateway"] = serve.Child(
            group.wrap(gateway), {**base, **gateway_env}, urls["gateway"] + READY
        )
    return Stack(children, urls, ready_timeout=300)
