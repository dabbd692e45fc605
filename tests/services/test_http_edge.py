"""The edge of HTTP on a real uvicorn process: what its parser refuses before any route runs
is problem+json too, and ``--log-level`` reaches the services' own loggers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import free_port

from splitdnn import serve

H11 = "services.common.http:ProblemH11Protocol"
HTTPTOOLS = "services.common.http:ProblemHttpToolsProtocol"
try:
    import httptools  # noqa: F401  (uvicorn and splitdnn serve use it when installed)
except ImportError:
    HAS_HTTPTOOLS = False
else:
    HAS_HTTPTOOLS = True


@contextmanager
def gateway(log: Path, log_level: str = "warning", http: str | None = None) -> Iterator[int]:
    """The gateway (it needs no bundle) under uvicorn as ``splitdnn serve`` starts it, its
    stderr in ``log``; ``http`` swaps the HTTP protocol class."""
    port = free_port()
    command = serve.uvicorn_command(serve.GATEWAY_APP, "127.0.0.1", port, log_level)
    if http is not None:
        command[command.index("--http") + 1] = http
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, env=os.environ.copy(), stderr=stderr)
        try:
            live = f"http://127.0.0.1:{port}/v2/health/live"
            assert serve.wait_ready(live, 60, process), log.read_text()
            yield port
        finally:
            serve.stop_processes([process])


def raw_request(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (httpx refuses a URL over 64 KB) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def classify_with_mode(mode: str) -> bytes:
    return (
        f"POST /classify?mode={mode} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: image/jpeg\r\nContent-Length: 3\r\n\r\nabc"
    ).encode()


def test_a_100_kb_mode_is_a_414_problem_not_uvicorns_plain_text_400(tmp_path) -> None:
    """What ``splitdnn serve`` runs (httptools, whose URL parser stops at 64 KB)."""
    if not HAS_HTTPTOOLS:
        pytest.skip("httptools is not installed: uvicorn parses with h11 (tested below)")
    with gateway(tmp_path / "gateway.log", http=HTTPTOOLS) as port:
        status, headers, body = raw_request(port, classify_with_mode("x" * 100_000))
    assert status == 414, body[:200]
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["type"].endswith(":uri-too-long") and problem["status"] == 414
    assert problem["request_id"] == headers["x-request-id"]


def test_h11_refuses_a_request_line_over_its_buffer_with_a_414_problem(tmp_path) -> None:
    """h11 refuses a request head over 16 KiB that has not fully arrived: 40 KB of a request
    line with no end yet (all of it read by the server, so no reset hides the answer)."""
    with gateway(tmp_path / "gateway.log", http=H11) as port:
        status, headers, body = raw_request(port, b"POST /classify?mode=" + b"x" * 40_000)
    assert status == 414, body[:200]
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["type"].endswith(":uri-too-long")


@pytest.mark.parametrize("http", [H11, HTTPTOOLS])
def test_malformed_http_is_a_400_problem(tmp_path, http) -> None:
    if http == HTTPTOOLS and not HAS_HTTPTOOLS:
        pytest.skip("httptools is not installed")
    with gateway(tmp_path / "gateway.log", http=http) as port:
        status, headers, body = raw_request(port, b"NOT HTTP AT ALL\r\n\r\n")
    assert status == 400 and headers["content-type"] == "application/problem+json"
    assert json.loads(body)["type"].endswith(":bad-http-request")


@pytest.mark.parametrize(("log_level", "shown"), [("warning", False), ("info", True)])
def test_the_log_level_reaches_the_services_own_loggers(tmp_path, log_level, shown) -> None:
    log = tmp_path / "gateway.log"
    with gateway(log, log_level) as port:
        status, _, _ = raw_request(port, classify_with_mode("sideways"))
        assert status == 422
    assert ("splitdnn.access" in log.read_text()) is shown, log.read_text()
