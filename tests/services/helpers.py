"""Helpers shared by the service tests (import as ``from helpers import ...``)."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from splitdnn import serve


def assert_problem(response: httpx.Response, status: int, slug: str | None = None) -> dict:
    """The response is RFC 9457 problem+json with this status (and type slug)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail"} <= set(body)
    if slug is not None:
        assert body["type"].endswith(":" + slug), body
    return body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    gateway: str
    head: str
    tail: str
    processes: dict[str, subprocess.Popen]


@contextmanager
def running_stack(
    bundle_dir: Path, token: str | None, ready_timeout: float = 60
) -> Iterator[Stack]:
    """Tail, head and gateway as uvicorn subprocesses on ephemeral 127.0.0.1 ports."""
    ports = {name: free_port() for name in ("tail", "head", "gateway")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    common = {"SPLITDNN_TAIL_INTRA_OP_THREADS": "1", "SPLITDNN_HEAD_INTRA_OP_THREADS": "1"}
    envs = {
        "tail": serve.tail_env(bundle_dir, token),
        "head": {
            **serve.head_env(urls["tail"], bundle_dir, token),
            "SPLITDNN_HEAD_TAIL_TIMEOUT_S": "3",
        },
        "gateway": {
            **serve.gateway_env(urls["head"], urls["tail"], token=token),
            "SPLITDNN_GATEWAY_MAX_IMAGE_BYTES": "1000000",
        },
    }
    apps = {"tail": serve.TAIL_APP, "head": serve.HEAD_APP, "gateway": serve.GATEWAY_APP}
    processes: dict[str, subprocess.Popen] = {}
    try:
        for name in ("tail", "head", "gateway"):
            command = serve.uvicorn_command(apps[name], "127.0.0.1", ports[name], "warning")
            processes[name] = subprocess.Popen(command, env={**os.environ, **common, **envs[name]})
        for name in ("tail", "head", "gateway"):
            url = urls[name] + "/v2/health/ready"
            assert serve.wait_ready(url, ready_timeout, processes[name]), f"{name} not ready"
        yield Stack(urls["gateway"], urls["head"], urls["tail"], processes)
    finally:
        serve.stop_processes(processes.values())


@dataclass
class Device:
    gateway: str
    tail: str
    processes: dict[str, subprocess.Popen]


@contextmanager
def running_device(
    bundle_dir: Path, token: str | None, ready_timeout: float = 60
) -> Iterator[Device]:
    """The tail and the device (gateway and head in one process, as ``splitdnn serve all``
    starts them) as uvicorn subprocesses on ephemeral 127.0.0.1 ports."""
    ports = {name: free_port() for name in ("tail", "device")}
    tail_url = f"http://127.0.0.1:{ports['tail']}"
    envs = {
        "tail": serve.tail_env(bundle_dir, token),
        "device": {
            **serve.device_env(tail_url, bundle_dir, token),
            "SPLITDNN_HEAD_TAIL_TIMEOUT_S": "3",
            "SPLITDNN_GATEWAY_MAX_IMAGE_BYTES": "1000000",
        },
    }
    apps = {"tail": serve.TAIL_APP, "device": serve.DEVICE_APP}
    processes: dict[str, subprocess.Popen] = {}
    try:
        for name in ("tail", "device"):
            command = serve.uvicorn_command(apps[name], "127.0.0.1", ports[name], "warning")
            processes[name] = subprocess.Popen(command, env={**os.environ, **envs[name]})
        for name in ("tail", "device"):
            url = f"http://127.0.0.1:{ports[name]}/v2/health/ready"
            assert serve.wait_ready(url, ready_timeout, processes[name]), f"{name} not ready"
        yield Device(f"http://127.0.0.1:{ports['device']}", tail_url, processes)
    finally:
        serve.stop_processes(processes.values())


Handler = Callable[[httpx.Request], httpx.Response]


@contextmanager
def serving(handler: Handler) -> Iterator[str]:
    """``handler`` (an ``httpx.MockTransport`` handler) behind a real HTTP/1.1 server on
    127.0.0.1, keep-alive on: the base URL. The same fake then answers the head's production
    transport over a socket and the in-memory one. A handler that raises a timeout leaves
    the connection silent until the client hangs up; any other ``httpx`` error closes it
    without an answer."""

    class Adapter(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = httpx.Request(
                self.command,
                f"http://{self.headers.get('Host', 'tail.test')}{self.path}",
                headers=list(self.headers.items()),
                content=self.rfile.read(length),
            )
            try:
                response = handler(request)
            except httpx.TimeoutException:
                self.rfile.read(1)  # until the client gives up and closes
                self.close_connection = True
                return
            except httpx.HTTPError:
                self.close_connection = True
                return
            content = response.read()
            self.send_response(response.status_code)
            for name, value in response.headers.items():
                if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Adapter)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
