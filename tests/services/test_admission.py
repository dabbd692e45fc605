"""Admission control on the three real services (uvicorn subprocesses): requests whose bodies
have not arrived yet fill a service's in-flight limit; the next one is refused with 503 +
Retry-After at once, before its own (never sent) body; the slots free when those clients go."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from helpers import Stack, running_stack

from splitdnn.bundle import load_bundle

TOKEN = "admission-token"
LIMITS = {"gateway": 8, "head": 2, "tail": 8}  # the settings' defaults


@pytest.fixture(scope="module")
def stack(toy_bundle_dir) -> Iterator[Stack]:
    with running_stack(toy_bundle_dir, TOKEN) as running:
        yield running


def stalled(url: str, path: str, content_type: str) -> socket.socket:
    """A POST whose headers promise 500 kB (under every limit) and whose body never comes."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
    sock.sendall(
        (
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: {content_type}\r\n"
            "Content-Length: 500000\r\n\r\n"
        ).encode()
        + b"\x00" * 1000
    )
    return sock


def read_head(sock: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode("latin-1")


@pytest.mark.parametrize("service", ["gateway", "head", "tail"])
def test_a_full_service_refuses_at_once_before_reading_the_body(
    stack, toy_bundle_dir, service
) -> None:
    name = load_bundle(toy_bundle_dir).name
    path, content_type = {
        "gateway": ("/classify", "image/jpeg"),
        "head": ("/infer/local", "image/jpeg"),
        "tail": (f"/v2/models/{name}/infer", "application/vnd.msgpack"),
    }[service]
    url = getattr(stack, service)
    holders = [stalled(url, path, content_type) for _ in range(LIMITS[service])]
    try:
        time.sleep(0.5)  # every holder admitted and waiting for its body
        refused = stalled(url, path, content_type)
        start = time.perf_counter()
        head = read_head(refused)
        elapsed = time.perf_counter() - start
        refused.close()
        assert head.startswith("HTTP/1.1 503"), head
        assert "retry-after: 1" in head.lower()
        assert elapsed < 1.0
    finally:
        for sock in holders:
            sock.close()
    deadline = time.monotonic() + 5
    while True:  # the holders' slots come back once their connections are gone
        response = httpx.get(url + "/metrics")  # any answer: the service is alive
        probe = httpx.post(
            url + path,
            content=b"x",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type},
        )
        if probe.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert response.status_code == 200
    assert probe.status_code in (400, 415), probe.text  # refused by the checks, not admission
