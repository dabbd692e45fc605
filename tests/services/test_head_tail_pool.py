"""The head's production transport (stdlib keep-alive pool) to a real server: answers,
errors, reused connections."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator

import pytest

from services.common.errors import (
    UpstreamBadAnswerError,
    UpstreamProblem,
    UpstreamServerError,
    UpstreamUnavailableError,
)
from services.head.settings import HeadSettings
from services.head.tail_client import PooledTransport, TailClient


class Tail(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: set[int] = set()  # noqa: RUF012

    def do_POST(self) -> None:
        Tail.connections.add(id(self.connection))
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = int(self.path.split("status=")[1].split("&")[0]) if "status=" in self.path else 200
        answer = {"n": len(body), "auth": self.headers.get("Authorization"), "path": self.path,
                  "type": self.headers.get("Content-Type"),
                  "top_k": [{"index": 0, "label": "cat", "score": 1.0}]}  # fmt: skip
        if "no_top_k" in self.path:
            del answer["top_k"]
        if status != 200:
            answer = {"title": "no", "status": status, "detail": "refused"}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 429:
            self.send_header("Retry-After", "3")
        if "close" in self.path:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tail_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Tail)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Tail.connections = set()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def client(url: str) -> TailClient:
    return TailClient(HeadSettings(tail_url=url, token="tok", load_in_background=False))


def test_posts_reuse_one_connection_and_carry_headers_and_params(tail_url: str) -> None:
    tail = client(tail_url)
    assert isinstance(tail.transport, PooledTransport)
    for _ in range(3):
        answer, seconds = tail.post("/infer", b"abc", "application/x", {"task": "t", "k": None}, {})
        assert answer["n"] == 3 and answer["auth"] == "Bearer tok" and seconds > 0
        assert answer["path"] == "/infer?task=t" and answer["type"] == "application/x"
    assert len(Tail.connections) == 1
    tail.close()


def test_a_connection_the_tail_closed_is_replaced(tail_url: str) -> None:
    tail = client(tail_url)
    tail.post("/infer", b"x", "a/b", {"close": 1}, {})
    assert tail.post("/infer", b"xy", "a/b", {}, {})[0]["n"] == 2
    tail.close()


def test_an_answer_without_top_k_is_a_bad_answer_on_the_pooled_path(tail_url: str) -> None:
    tail = client(tail_url)
    with pytest.raises(UpstreamBadAnswerError, match="top_k"):
        tail.post("/infer", b"x", "a/b", {"no_top_k": 1}, {})
    tail.close()


def test_errors_map_to_fallback_or_relayed_problems(tail_url: str) -> None:
    tail = client(tail_url)
    with pytest.raises(UpstreamUnavailableError, match="503"):
        tail.post("/infer", b"x", "a/b", {"status": 503}, {})
    with pytest.raises(UpstreamUnavailableError, match="429"):
        tail.post("/infer", b"x", "a/b", {"status": 429}, {})
    with pytest.raises(UpstreamProblem) as problem:
        tail.post("/infer", b"x", "a/b", {"status": 409}, {})
    assert problem.value.status == 409
    with pytest.raises(UpstreamServerError, match="502"):  # tried again, then given up
        tail.post("/infer", b"x", "a/b", {"status": 502}, {})
    tail.close()


def test_a_tail_that_is_down_is_unavailable() -> None:
    tail = client("http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(UpstreamUnavailableError, match="unreachable"):
        tail.post("/infer", b"x", "a/b", {}, {})


def test_idle_connections_the_tail_timed_out_are_all_replaced(tail_url: str) -> None:
    """uvicorn closes idle keep-alive connections after 5 s; every pooled one may be dead."""
    tail = client(tail_url)
    pool = tail.transport
    assert isinstance(pool, PooledTransport)
    dead = [pool._connect() for _ in range(3)]
    for conn in dead:
        conn.sock.close()  # closed under the pool's feet, as a timed-out peer leaves them
        pool.idle.put((time.monotonic(), conn))
    assert tail.post("/infer", b"abc", "a/b", {}, {})[0]["n"] == 3
    tail.close()
