"""Helpers shared by the service tests (import as ``from helpers import ...``)."""

from __future__ import annotations

import http.server
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from http_helpers import answering

from benchmarks.inputs import free_port
from splitdnn import serve, wire
from splitdnn.runtime import ImageClassifier, ServerRunner, top_k


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


@contextmanager
def running_services(
    apps: dict[str, tuple[str, dict[str, str]]], ready_timeout: float
) -> Iterator[tuple[dict[str, str], dict[str, subprocess.Popen]]]:
    """``apps`` (name -> (import string, environment)) as uvicorn subprocesses on ephemeral
    127.0.0.1 ports, started in order and each waited for: (their URLs, their processes).
    An environment may name another service's URL as ``{url:NAME}``."""
    ports = {name: free_port() for name in apps}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    children = {}
    for name, (app, env) in apps.items():
        for other, url in urls.items():
            env = {key: value.replace(f"{{url:{other}}}", url) for key, value in env.items()}
        command = serve.uvicorn_command(app, "127.0.0.1", ports[name], "warning")
        children[name] = serve.Child(command, env, urls[name] + "/v2/health/ready")
    with serve.running_children(children, ready_timeout) as processes:
        yield urls, processes


@dataclass
class Running:
    """The services a test started: ``gateway`` is where a client posts (the gateway, or the
    device that serves ``/classify`` itself); ``head`` is None inside a device."""

    gateway: str
    tail: str
    processes: dict[str, subprocess.Popen]
    head: str | None = None


#: The names the test modules use: tail + head + gateway, or tail + device.
Stack = Device = Running


@contextmanager
def running_stack(
    bundle_dir: Path, token: str | None, ready_timeout: float = 60
) -> Iterator[Stack]:
    """Tail, head and gateway as uvicorn subprocesses on ephemeral 127.0.0.1 ports."""
    common = {"SPLITDNN_TAIL_INTRA_OP_THREADS": "1", "SPLITDNN_HEAD_INTRA_OP_THREADS": "1"}
    apps = {
        "tail": (serve.TAIL_APP, {**common, **serve.tail_env(bundle_dir, token)}),
        "head": (
            serve.HEAD_APP,
            {
                **common,
                **serve.head_env("{url:tail}", bundle_dir, token),
                "SPLITDNN_HEAD_TAIL_TIMEOUT_S": "3",
            },
        ),
        "gateway": (
            serve.GATEWAY_APP,
            {
                **common,
                **serve.gateway_env("{url:head}", "{url:tail}", token=token),
                "SPLITDNN_GATEWAY_MAX_IMAGE_BYTES": "1000000",
            },
        ),
    }
    with running_services(apps, ready_timeout) as (urls, processes):
        yield Running(urls["gateway"], urls["tail"], processes, head=urls["head"])


@contextmanager
def running_device(
    bundle_dir: Path, token: str | None, ready_timeout: float = 60
) -> Iterator[Device]:
    """The tail and the device (gateway and head in one process, as ``splitdnn serve all``
    starts them) as uvicorn subprocesses on ephemeral 127.0.0.1 ports."""
    apps = {
        "tail": (serve.TAIL_APP, serve.tail_env(bundle_dir, token)),
        "device": (
            serve.DEVICE_APP,
            {
                **serve.device_env("{url:tail}", bundle_dir, token),
                "SPLITDNN_HEAD_TAIL_TIMEOUT_S": "3",
                "SPLITDNN_GATEWAY_MAX_IMAGE_BYTES": "1000000",
            },
        ),
    }
    with running_services(apps, ready_timeout) as (urls, processes):
        yield Running(urls["device"], urls["tail"], processes)


def classify_form(client: httpx.Client, image: bytes, **params: object) -> httpx.Response:
    """POST /classify with the image as the multipart field ``image`` (curl -F)."""
    return client.post(
        "/classify", params=params, files={"image": ("cat.jpg", image, "image/jpeg")}
    )


Handler = Callable[[httpx.Request], httpx.Response]


class FakeTail:
    """Answers like the tail, runs the real server part, and records what it received."""

    def __init__(self, bundle) -> None:
        self.bundle = bundle
        self.server = ServerRunner(bundle)
        self.offload = ImageClassifier(bundle, "offload")
        self.requests: list[httpx.Request] = []
        self.failure: Handler | None = None
        self.delay_s = 0.002  # a round trip longer than the 1.5 ms of "compute" reported below

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "GET":
            return httpx.Response(
                200, json={"bundle": self.bundle.id, "warmup_ms": {"split": 1, "offload": 5}}
            )
        if self.failure is not None:
            return self.failure(request)
        task = request.url.params.get("task")
        if request.url.path.endswith("/infer"):
            _, x = wire.decode_array(request.content)
            task, logits = self.server(x, task)
        else:
            task, logits = self.offload(request.content, task)
        ranked = top_k(logits[0], self.bundle.labels(task), int(request.url.params["top_k"]))
        time.sleep(self.delay_s)
        return httpx.Response(
            200,
            json={"top_k": [r.to_dict() for r in ranked], "timings_ms": {"compute": 1.5}},
        )

    def last(self, method: str = "POST") -> httpx.Request:
        return [r for r in self.requests if r.method == method][-1]


def infer(head, mode: str, image: bytes, **params) -> httpx.Response:
    """POST ``image`` to the head's ``/infer/{mode}``."""
    return head.post(f"/infer/{mode}", content=image, params=params)


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

    with answering(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Adapter)) as url:
        yield url
