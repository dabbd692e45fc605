"""The head's one client to the tail, and the transports it can run on.

:class:`TailClient` does everything that is not moving bytes: URLs, the token, retries of
a 500/502, the status → exception mapping (:mod:`services.common.upstream`) and the check of
a 200 answer. A :class:`Transport` moves the bytes (one method, like httpx's
``BaseTransport``):

- :class:`PooledTransport` — production: keep-alive ``http.client`` connections (TLS when
  the URL is ``https://``). Chosen over an ``httpx.Client`` for speed: httpx cost ~1.2 ms
  more CPU per 37 kB request, which a 0.11-core device pays ~10x in wall time.
- :class:`HttpxTransport` — any ``httpx.BaseTransport`` (``httpx.MockTransport`` for a
  fake tail, a ``TestClient``'s transport for an in-process one), for tests.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import queue
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from services.common.errors import UpstreamBadAnswerError, UpstreamServerError
from services.common.upstream import bearer, connection_error, upstream_error
from services.head.settings import HeadSettings

log = logging.getLogger("splitdnn.head")


@dataclass
class Reply:
    """One answer of the tail as bytes; ``headers`` with lower-case names."""

    status: int
    headers: dict[str, str]
    content: bytes


class Transport(Protocol):
    """Moves one request to the tail and its answer back; raises ``TimeoutError`` past
    ``timeout`` and ``OSError`` (``ssl.SSLError`` included) or ``http.client.HTTPException``
    when the exchange fails."""

    def send(
        self, method: str, target: str, headers: dict[str, str], body: bytes, timeout: float
    ) -> Reply: ...

    def close(self) -> None: ...


class TailClient:
    """Requests to the tail; its failures become fallback-able errors (or relayed ones)."""

    def __init__(
        self,
        settings: HeadSettings,
        transport: Transport | httpx.BaseTransport | None = None,
    ) -> None:
        self.url = settings.tail_url.rstrip("/")
        if transport is None:
            transport = PooledTransport(
                self.url,
                settings.connect_timeout_s,
                settings.max_connections,
                settings.client_tls() if self.url.startswith("https://") else None,
            )
        elif isinstance(transport, httpx.BaseTransport):
            transport = HttpxTransport(transport, self.url)
        self.transport: Transport = transport
        self.headers = bearer(settings.token)
        self.client_cert = settings.tls_cert is not None
        self.timeout_s = settings.tail_timeout_s
        self.retries = settings.tail_retries

    def close(self) -> None:
        self.transport.close()

    def send(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """One exchange, any status; a failed connection is :class:`UpstreamUnavailableError`
        (:class:`UpstreamTimeoutError` past the deadline)."""
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
        target = f"{path}?{query}" if query else path
        try:
            return self.transport.send(
                method, target, {**self.headers, **(headers or {})}, body, timeout or self.timeout_s
            )
        except (OSError, http.client.HTTPException) as exc:
            raise connection_error("tail", self.url, exc, self.client_cert) from exc

    def post(
        self, path: str, body: bytes, content_type: str, params: dict, headers: dict
    ) -> tuple[dict[str, Any], float]:
        """POST and return (checked JSON answer, round-trip seconds, failed tries included).

        A 500 or 502 is tried again up to ``tail_retries`` times: a replica that died
        mid-request (Ray tail) is the likely cause, and another replica answers.
        """
        start = time.perf_counter()
        for attempt in range(self.retries + 1):
            reply = self.send("POST", path, body, {"Content-Type": content_type, **headers}, params)
            if reply.status == 200:
                return checked_answer(reply.content), time.perf_counter() - start
            error = upstream_error("tail", reply.status, reply.content, reply.headers)
            if not isinstance(error, UpstreamServerError) or attempt == self.retries:
                raise error
            log.warning("tail answered %s; trying again (%d)", error.detail, attempt + 1)
        raise AssertionError("unreachable")  # the loop returns or raises


class PooledTransport:
    """Keep-alive ``http.client`` connections to one tail, one per concurrent request."""

    def __init__(
        self,
        url: str,
        connect_timeout: float,
        max_idle: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        self.https = parts.scheme == "https"
        self.tls = tls if tls is not None else ssl.create_default_context()
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port
        self.prefix = parts.path.rstrip("/")
        self.connect_timeout = connect_timeout
        self.idle: queue.LifoQueue[tuple[float, http.client.HTTPConnection]] = queue.LifoQueue()
        self.max_idle = max_idle
        #: uvicorn drops keep-alive connections idle for 5 s; do not reuse older ones
        self.max_idle_s = 4.0

    def _connect(self) -> http.client.HTTPConnection:
        if self.https:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.connect_timeout, context=self.tls
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def send(
        self, method: str, target: str, headers: dict[str, str], body: bytes, timeout: float
    ) -> Reply:
        for attempt in (0, 1):  # a kept-alive connection the tail closed: once more, fresh
            conn = self._take() if attempt == 0 else None
            reused = conn is not None
            try:
                if conn is None:
                    conn = self._connect()
                conn.sock.settimeout(timeout)
                conn.request(method, self.prefix + target, body=body, headers=headers)
                response = conn.getresponse()
                content = response.read()
            except TimeoutError:
                _close(conn)
                raise
            except (OSError, http.client.HTTPException):
                _close(conn)
                if reused:
                    self.close()  # the others idled as long: probably closed too
                    continue
                raise
            if response.will_close or self.idle.qsize() >= self.max_idle:
                conn.close()
            else:
                self.idle.put((time.monotonic(), conn))
            names = {k.lower(): v for k, v in response.getheaders()}
            return Reply(response.status, names, content)
        raise AssertionError("unreachable")  # the second try returns or raises

    def _take(self) -> http.client.HTTPConnection | None:
        """A pooled connection idle for less than ``max_idle_s``, or None."""
        while True:
            try:
                since, conn = self.idle.get_nowait()
            except queue.Empty:
                return None
            if time.monotonic() - since < self.max_idle_s:
                return conn
            conn.close()

    def close(self) -> None:
        while True:
            try:
                _close(self.idle.get_nowait()[1])
            except queue.Empty:
                return


def _close(conn: http.client.HTTPConnection | None) -> None:
    if conn is not None:
        conn.close()


class HttpxTransport:
    """Any ``httpx.BaseTransport`` as a :class:`Transport` (fakes and in-process tails)."""

    def __init__(self, transport: httpx.BaseTransport, url: str) -> None:
        self.transport, self.url = transport, url

    def send(
        self, method: str, target: str, headers: dict[str, str], body: bytes, timeout: float
    ) -> Reply:
        request = httpx.Request(
            method,
            self.url + target,
            headers=headers,
            content=body,
            extensions={"timeout": httpx.Timeout(timeout).as_dict()},
        )
        try:
            response = self.transport.handle_request(request)
            content = response.read()
        except httpx.TimeoutException as exc:
            raise TimeoutError(str(exc)) from exc
        except httpx.HTTPError as exc:
            raise ConnectionError(str(exc)) from exc
        names = {k.lower(): v for k, v in response.headers.items()}
        return Reply(response.status_code, names, content)

    def close(self) -> None:
        self.transport.close()


def checked_answer(content: bytes) -> dict[str, Any]:
    """A tail's 200 answer, if it holds what the head uses: a ``top_k`` list of
    ``{index, label, score}`` and, optionally, finite ``timings_ms.compute``. Anything else
    is :class:`UpstreamBadAnswerError` (fallback to local, or 502), never a 500."""
    try:
        answer = json.loads(content)
    except ValueError as exc:
        raise UpstreamBadAnswerError("the tail answered something that is not JSON") from exc
    if not isinstance(answer, dict):
        raise UpstreamBadAnswerError("the tail's answer is not a JSON object")
    ranked = answer.get("top_k")
    if not isinstance(ranked, list) or not all(
        isinstance(r, dict)
        and isinstance(r.get("index"), int)
        and isinstance(r.get("label"), str)
        and isinstance(r.get("score"), (int, float))
        and math.isfinite(r["score"])
        for r in ranked
    ):
        raise UpstreamBadAnswerError("the tail's answer has no valid 'top_k' list")
    timings = answer.get("timings_ms", {})
    compute = timings.get("compute", 0.0) if isinstance(timings, dict) else None
    if (
        not isinstance(compute, (int, float))
        or isinstance(compute, bool)
        or not math.isfinite(compute)
    ):
        raise UpstreamBadAnswerError("the tail's 'timings_ms.compute' is not a finite number")
    return answer
