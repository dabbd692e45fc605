"""A new user's first hour (issue #16), replayed: each step says what it does, refuses
what it cannot do, and never claims to be ready when it is not.

One section per item of the issue; everything runs on toy data and the toy bundle.
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from splitdnn import serve
from splitdnn.cli import app

runner = CliRunner()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


# --- 1. `serve all` with its ports taken ---------------------------------------------------


class _AlwaysReady(http.server.BaseHTTPRequestHandler):
    """Whatever already holds the port: it answers 200 to every GET, /v2/health/ready too."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def foreign_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AlwaysReady)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_serve_all_refuses_taken_ports_before_starting_anything(
    foreign_server, toy_bundle_dir, monkeypatch
):
    started = []
    monkeypatch.setattr(serve.subprocess, "Popen", lambda *a, **k: started.append(a))
    result = invoke(
        "serve", "all", "--gateway-port", foreign_server, "--head-port", free_port(),
        "--tail-port", free_port(), "--bundle", toy_bundle_dir,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "ready" not in result.stdout
    assert f"gateway {foreign_server}" in result.stderr
    assert "already in use" in result.stderr and "--gateway-port" in result.stderr
    assert started == []


def test_serve_all_refuses_one_port_for_two_services(toy_bundle_dir):
    result = invoke("serve", "all", "--head-port", "8123", "--tail-port", "8123")
    assert result.exit_code == 2 and "three different ports" in result.stderr


def test_readiness_counts_only_the_started_process(foreign_server):
    """A 200 from another server on the port is not the started child being ready."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        url = f"http://127.0.0.1:{foreign_server}/v2/health/ready"
        assert serve.wait_ready(url, timeout=1.0, process=child) is False
        assert serve.wait_ready(url, timeout=1.0) is True  # no process: any 200 will do
    finally:
        child.kill()
        child.wait()


# --- 2. a task the local model does not have ------------------------------------------------


@pytest.fixture(scope="module")
def imagenet_only_local(tmp_path_factory) -> Path:
    """A bundle like `export run` without --local-probe: local.onnx has only imagenet."""
    from toy_bundle import build_toy_bundle

    directory = tmp_path_factory.mktemp("imagenet-only-local")
    build_toy_bundle(directory, local_tasks=["imagenet"])
    return directory


@pytest.fixture(scope="module")
def head_without_local_task(imagenet_only_local):
    from fastapi.testclient import TestClient

    from services.head.app import create_app
    from services.head.settings import HeadSettings

    def tail(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"bundle": "x", "warmup_ms": {}})
        return httpx.Response(
            200, json={"top_k": [{"index": 0, "label": "c", "score": 1.0}], "timings_ms": {}}
        )

    settings = HeadSettings(
        bundle=imagenet_only_local,
        tail_url="http://tail.test",
        load_in_background=False,
        prior_tail_ms=5000.0,  # local is surely the fastest predicted mode
    )
    app = create_app(settings, tail_transport=httpx.MockTransport(tail))
    with TestClient(app) as client:
        yield client


def test_local_mode_on_a_task_without_a_local_model_is_422_naming_the_modes(
    head_without_local_task, cat_jpeg
):
    response = head_without_local_task.post(
        "/infer/local", params={"task": "caltech101"}, content=cat_jpeg
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "caltech101" in detail and "mode=split" in detail and "mode=offload" in detail
    assert "--local-probe caltech101=FILE" in detail
    ok = head_without_local_task.post("/infer/local", params={"task": "imagenet"}, content=cat_jpeg)
    assert ok.status_code == 200 and ok.json()["mode"] == "local"


def test_auto_skips_local_for_a_task_without_a_local_model(head_without_local_task, cat_jpeg):
    latency = head_without_local_task.get("/latency").json()
    assert latency["auto_would_choose"] == "local"
    response = head_without_local_task.post(
        "/infer/auto", params={"task": "caltech101"}, content=cat_jpeg
    )
    assert response.status_code == 200, response.text
    assert response.json()["mode"] in ("split", "offload")
