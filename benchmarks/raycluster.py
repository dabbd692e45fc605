"""A multi-node Ray cluster on this machine, the tail deployed on it, and its teardown.

``ray start --head`` plus worker nodes, each ``--block`` in its own process group, every
port chosen free and every address 127.0.0.1, a private temp dir and a small object store:
other Ray users of the machine are neither reached nor stopped. The tail is deployed with
``splitdnn serve tail --ray --address`` (the CLI a user runs), so the test and the
benchmark go through the same path.

    with LocalRayCluster(nodes=2, cpus_per_node=1) as cluster:
        with cluster.tail(bundle, replicas=2) as url: ...
        cluster.replica_pids()   # ServeReplica processes, to kill one
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil

from benchmarks.inputs import free_port
from benchmarks.report import ROOT
from splitdnn import serve


class ClusterError(RuntimeError):
    """The cluster or the deployment did not come up (tests skip with this reason)."""


def ray_cli() -> Path:
    path = Path(sys.executable).parent / "ray"
    if not path.exists():
        raise ClusterError(f"no ray command beside {sys.executable}")
    return path


class LocalRayCluster:
    """``nodes`` Ray nodes (the first the head) with ``cpus_per_node`` logical CPUs each."""

    def __init__(self, nodes: int = 2, cpus_per_node: int = 1, object_store_mb: int = 100):
        self.nodes, self.cpus, self.store_mb = nodes, cpus_per_node, object_store_mb
        # short: Ray's unix socket paths must stay under ~107 characters
        self.temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen] = []
        self.env = {
            **os.environ,
            "RAY_TMPDIR": str(self.temp),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "RAY_USAGE_STATS_ENABLED": "0",
            # one proxy (head node) for all: by default it sends everything to the replicas
            # of its own node while they have room, and the worker node's would idle
            "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0",
            # Ray's token authentication, with a token of this cluster's own (not ~/.ray's)
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(16),
        }

    def _start_node(self, head: bool) -> subprocess.Popen:
        command = [
            str(ray_cli()), "start", "--block", "--disable-usage-stats",
            "--node-ip-address", "127.0.0.1",
            "--num-cpus", str(self.cpus), "--num-gpus", "0",
            "--object-store-memory", str(self.store_mb * 1024 * 1024),
            "--node-manager-port", str(free_port()),
            "--object-manager-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
        ]  # fmt: skip
        if head:
            command += [
                "--head", "--port", str(self.port), "--include-dashboard", "false",
                "--ray-client-server-port", str(free_port()), "--temp-dir", str(self.temp),
            ]  # fmt: skip
        else:
            command += ["--address", self.address]
        log = open(self.temp / f"node{len(self.processes)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(process)
        return process

    def __enter__(self) -> LocalRayCluster:
        try:
            self._start_node(head=True)
            self._wait_for_nodes(1, 120)
            for _ in range(self.nodes - 1):
                self._start_node(head=False)
            self._wait_for_nodes(self.nodes, 120)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_for_nodes(self, count: int, timeout: float) -> None:
        """Until ``count`` raylets run under our node processes (or one of them exits)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    log = (self.temp / f"node{self.processes.index(process)}.log").read_text()
                    raise ClusterError(f"a Ray node exited: {log[-800:]}")
            raylets = [p for p in self.descendants() if _name(p).endswith("raylet")]
            if len(raylets) >= count:
                time.sleep(1)  # registered with the GCS a moment after it starts
                return
            time.sleep(0.5)
        raise ClusterError(f"{count} Ray nodes did not start within {timeout:.0f} s")

    def descendants(self) -> list[psutil.Process]:
        """Every live process our node processes started (raylets, workers, replicas)."""
        found: list[psutil.Process] = []
        for process in self.processes:
            try:
                found += psutil.Process(process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
        return found

    def replica_pids(self, node: int | None = None) -> list[int]:
        """PIDs of the tail's replicas (of one node: 0 is the head node)."""
        roots = self.processes if node is None else [self.processes[node]]
        pids = []
        for root in roots:
            try:
                children = psutil.Process(root.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            pids += [p.pid for p in children if "ServeReplica" in _title(p)]
        return pids

    @contextmanager
    def tail(
        self,
        bundle: Path,
        replicas: int = 2,
        batch_max_size: int = 16,
        batch_wait_ms: float = 5.0,
        env: dict[str, str] | None = None,
        ready_timeout: float = 180,
    ) -> Iterator[str]:
        """``splitdnn serve tail --ray --address`` on this cluster; yields the tail's URL once
        ``replicas`` replicas answer ``/v2/health/ready``."""
        port = free_port()
        command = [
            sys.executable, "-m", "splitdnn.cli", "serve", "tail", "--ray",
            "--address", self.address, "--port", str(port), "--bundle", str(bundle),
            "--replicas", str(replicas), "--batch-max-size", str(batch_max_size),
            "--batch-wait-ms", str(batch_wait_ms), "--log-level", "warning",
        ]  # fmt: skip
        log = open(self.temp / f"deploy{port}.log", "wb")  # noqa: SIM115
        driver = subprocess.Popen(
            command,
            env={**self.env, "SPLITDNN_TAIL_INTRA_OP_THREADS": "1", **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + ready_timeout
            # the proxy, not the driver, holds the port: no process for wait_ready
            while len(self.replica_pids()) < replicas or not serve.wait_ready(
                url + "/v2/health/ready", 1
            ):
                if driver.poll() is not None or time.monotonic() > deadline:
                    text = (self.temp / f"deploy{port}.log").read_text()[-1500:]
                    raise ClusterError(
                        f"the Ray tail did not become ready (driver exit {driver.poll()}): {text}"
                    )
                time.sleep(0.5)
            yield url
        finally:
            _stop_group(driver)
            self.undeploy()

    def undeploy(self) -> None:
        """Delete the tail application (replicas stop), keeping the cluster."""
        code = (
            "import ray; from ray import serve; "
            f"ray.init(address='{self.address}', log_to_driver=False); serve.shutdown()"
        )
        subprocess.run(
            [sys.executable, "-c", code],
            env=self.env,
            timeout=120,
            check=False,
            capture_output=True,
        )

    def stop(self) -> None:
        """Stop our nodes and every process they started; nothing else on the machine."""
        started = self.descendants()
        for process in reversed(self.processes):
            _stop_group(process)
        _, alive = psutil.wait_procs(started, timeout=15)
        for process in alive:
            with suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(alive, timeout=5)
        self.processes.clear()
        shutil.rmtree(self.temp, ignore_errors=True)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group we started (``start_new_session``), then SIGKILL it."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
    except ProcessLookupError:
        pass


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.Error:
        return ""


def _title(process: psutil.Process) -> str:
    try:
        cmdline = process.cmdline()
    except psutil.Error:
        return ""
    return cmdline[0] if cmdline else ""
