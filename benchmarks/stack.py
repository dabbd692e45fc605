"""The three services as uvicorn subprocesses on 127.0.0.1, for the overload benchmarks.

``Stack`` starts tail, head and gateway with a shared token (the settings they ship with:
in-flight limits 8 / 2 / 8), can kill and restart the tail, and samples the RSS of each
process (psutil) in a background thread.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from splitdnn import serve

PORTS = {"tail": 18201, "head": 18202, "gateway": 18200}
APPS = {"tail": serve.TAIL_APP, "head": serve.HEAD_APP, "gateway": serve.GATEWAY_APP}


@dataclass
class RssSample:
    t: float
    service: str
    rss_mib: float


@dataclass
class Stack:
    bundle: Path
    token: str = "benchmark-token"
    threads: int = 1
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    samples: list[RssSample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _t0: float = field(default_factory=time.monotonic)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{PORTS[name]}"

    def env(self, name: str) -> dict[str, str]:
        common = {
            "SPLITDNN_TAIL_INTRA_OP_THREADS": str(self.threads),
            "SPLITDNN_HEAD_INTRA_OP_THREADS": str(self.threads),
            "MALLOC_ARENA_MAX": "2",  # as in the images
        }
        own = {
            "tail": serve.tail_env(self.bundle, self.token),
            "head": serve.head_env(self.url("tail"), self.bundle, self.token),
            "gateway": serve.gateway_env(self.url("head"), self.url("tail"), token=self.token),
        }[name]
        return {**os.environ, **common, **own, **self.extra_env.get(name, {})}

    def start(self, name: str, timeout: float = 180.0) -> float:
        """Start one service; returns seconds until it answered ready."""
        command = serve.uvicorn_command(APPS[name], "127.0.0.1", PORTS[name], "warning")
        start = time.monotonic()
        self.processes[name] = subprocess.Popen(command, env=self.env(name))
        url = self.url(name) + "/v2/health/ready"
        if not serve.wait_ready(url, timeout, self.processes[name]):
            raise RuntimeError(f"{name} did not become ready at {url}")
        return time.monotonic() - start

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        process.kill()
        process.wait()

    def __enter__(self) -> Stack:
        try:
            for name in ("tail", "head", "gateway"):
                self.start(name)
        except BaseException:
            serve.stop_processes(self.processes.values())
            raise
        threading.Thread(target=self._sample, daemon=True).start()
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

    def _sample(self, every: float = 0.1) -> None:
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
