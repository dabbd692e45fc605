"""Per-request context: ``X-Request-ID`` in and out, stage timings, ``Server-Timing``.

A pure ASGI middleware (no ``BaseHTTPMiddleware``, so streaming and background work are
untouched) puts a :class:`RequestContext` into the request state; routes record stages in
it and the middleware turns them into ``Server-Timing`` and Prometheus observations.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.metrics import Metrics

REQUEST_ID = "X-Request-ID"
#: Sent with an offloaded image so the tail can refuse a head holding another bundle.
BUNDLE_HEADER = "X-Bundle-ID"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: One line per request with its id (``client "METHOD path" status ms request_id=...``).
access = logging.getLogger("splitdnn.access")


@dataclass
class RequestContext:
    """What one request carries through the services."""

    request_id: str
    stages_ms: dict[str, float] = field(default_factory=dict)

    def record(self, stage: str, seconds: float) -> None:
        self.stages_ms[stage] = self.stages_ms.get(stage, 0.0) + seconds * 1000.0

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a block as one ``Server-Timing`` stage."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.record(name, time.perf_counter() - start)

    def server_timing(self) -> str:
        return ", ".join(f"{name};dur={ms:.2f}" for name, ms in self.stages_ms.items())


def close_stages(context: RequestContext, total_s: float, read_s: float) -> None:
    """Account for all of ``total``: ``read`` (receiving the request body), the stages the
    route recorded, and ``app`` for the rest (routing, validation, the worker-thread hop,
    encoding the answer), so the named stages add up to ``total``."""
    context.record("read", read_s)
    named = sum(ms for name, ms in context.stages_ms.items() if name != "total") / 1000
    context.record("app", max(total_s - named, 0.0))
    context.record("total", total_s)


def route_path(scope: Scope) -> str:
    """The matched route's path template for metrics labels; routes FastAPI adds itself
    (``/openapi.json``) may leave none in the scope, so they are matched here."""
    path = getattr(scope.get("route"), "path", None)
    if path:
        return path
    for route in getattr(scope.get("app"), "routes", ()):
        if route.matches({**scope, "type": "http"})[0] == Match.FULL:
            return getattr(route, "path", None) or "unmatched"
    return "unmatched"


def new_request_id() -> str:
    return uuid.uuid4().hex


class RequestContextMiddleware:
    """Accept or mint a request id, add ``X-Request-ID`` and ``Server-Timing``, count."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _VALID_ID.match(incoming) else new_request_id()
        context = RequestContext(request_id)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["context"] = context
        start = time.perf_counter()
        status = 500
        reading = 0.0

        async def receive_wrapper() -> Message:
            nonlocal reading
            began = time.perf_counter()
            try:
                return await receive()
            finally:
                reading += time.perf_counter() - began

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID] = request_id
                close_stages(context, time.perf_counter() - start, reading)
                headers.append("Server-Timing", context.server_timing())
            await send(message)

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            path = route_path(scope)
            access.info(
                '%s "%s %s" %s %.1f ms request_id=%s',
                (scope.get("client") or ("-",))[0],
                scope.get("method", ""),
                scope.get("path", ""),
                status,
                (time.perf_counter() - start) * 1000,
                request_id,
            )
            self.metrics.requests.labels(
                self.metrics.service, path, scope.get("method", ""), str(status)
            ).inc()
            self.metrics.request_seconds.labels(self.metrics.service, path).observe(
                time.perf_counter() - start
            )
