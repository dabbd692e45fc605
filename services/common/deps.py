"""Dependencies and app assembly shared by every service.

Routes declare what they need (``Context``, ``Service``, a checked token, a capped body,
the common query options); :func:`create_service_app` assembles every service's app the
same way, and :func:`setup_app` installs the error handlers, the request-context middleware
and the health and metrics routers in one call.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from starlette.types import Lifespan

from services.common import health, metrics
from services.common.context import RequestContext, RequestContextMiddleware
from services.common.docs import install_local_docs
from services.common.errors import (
    OverloadedError,
    PayloadTooLargeError,
    UnauthorizedError,
    install_error_handlers,
)
from services.common.health import ServiceState
from services.common.metrics import Metrics
from services.common.settings import BaseServiceSettings, ServiceSettings


def setup_app(app: FastAPI, service: str, readiness: bool = True) -> Metrics:
    """Errors as problem+json, request ids, Server-Timing, ``/v2/health/*`` and ``/metrics``.

    ``readiness=False`` leaves ``/v2/health/ready`` to the app (the gateway asks the head).
    """
    app.state.metrics = Metrics(service)
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics)
    app.include_router(health.router)
    if readiness:
        app.include_router(health.ready_router)
    app.include_router(metrics.router)
    return app.state.metrics


def create_service_app(
    service: str,
    summary: str,
    *,
    lifespan: Lifespan[FastAPI],
    router: APIRouter,
    settings: BaseServiceSettings,
    readiness: bool = True,
) -> FastAPI:
    """The app of one service, assembled like the others (title, errors, health, metrics).

    ``settings`` (the instance handed to ``create_app`` by tests or the CLI, else read from
    the environment) are what the routes' :func:`get_app_settings` dependency returns.
    """
    app = FastAPI(
        title=f"splitdnn {service}",
        summary=summary,
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served from local files below, not from a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.limiter = InFlightLimiter(settings.max_in_flight)
    setup_app(app, service, readiness)
    install_local_docs(app)
    log_to_stderr()
    app.include_router(router)
    return app


def server_log_level() -> int:
    """The level uvicorn was started with (``--log-level``, set on ``uvicorn.error``; its
    default config sets ``uvicorn`` to INFO); INFO where no uvicorn configured one (a Ray
    Serve replica, a test client)."""
    for name in ("uvicorn.error", "uvicorn"):
        level = logging.getLogger(name).level
        if level != logging.NOTSET:
            return level
    return logging.INFO


def log_to_stderr() -> None:
    """The one place the services configure logging: the ``splitdnn.*`` loggers (startup
    line, access lines with request ids, fallbacks) take the level the server was started
    with (``splitdnn serve ... --log-level warning`` or ``uvicorn --log-level warning`` hides
    the access lines), and go to stderr where nothing else shows them: uvicorn configures
    only its own loggers."""
    ours = logging.getLogger("splitdnn")
    ours.setLevel(server_log_level())
    if ours.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    ours.addHandler(handler)


# The small dependencies are ``async def`` although they never await: FastAPI runs a sync
# dependency in the thread pool, one thread hop per dependency per request (five on the
# head's /infer/{mode}), which a 0.11-core device pays in wake-ups and GIL hand-offs.


async def get_context(request: Request) -> RequestContext:
    return request.state.context


async def get_service(request: Request) -> ServiceState:
    return request.state.service


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_app_settings(request: Request) -> BaseServiceSettings:
    """The settings the app was built with (:func:`create_service_app`).

    Read from the app's state rather than put in as a dependency override: with any override
    set, FastAPI re-inspects the signature of every dependency of every request (measured:
    most of the head's per-request CPU outside the model, ~10x that in wall time on a
    0.11-core device profile).
    """
    return request.app.state.settings


Context = Annotated[RequestContext, Depends(get_context)]
Service = Annotated[ServiceState, Depends(get_service)]
AppMetrics = Annotated[Metrics, Depends(get_metrics)]
#: Query options of every endpoint that classifies; ``None`` means the service's default.
TaskQuery = Annotated[str | None, Query(description="Task head; default from manifest")]
TopKQuery = Annotated[int | None, Query(alias="top_k", ge=1, le=100)]
MaxDropQuery = Annotated[
    float | None,
    Query(
        ge=0,
        le=100,
        description="Auto: serve only modes whose measured top-1 on the task is at most this "
        "many points below the teacher's (default: the head's auto_max_drop setting)",
    ),
]


RateQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=32,
        description="Split on a ladder bundle: the rate to send at (entropy-coded; default the "
        "bundle's default rate); auto: consider only this split rate. An unknown rate is 422 "
        "naming the rates there are",
    ),
]


def check_token(request: Request, expected: str | None) -> None:
    """401 unless ``Authorization: Bearer <expected>``; no token configured = open."""
    if not expected:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise UnauthorizedError("this service needs 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise UnauthorizedError("the bearer token is wrong")


async def read_capped(request: Request, limit: int, what: str = "body") -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes without buffering them."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"the {what} is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"the {what} is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def authorised(
    request: Request, settings: Annotated[ServiceSettings, Depends(get_app_settings)]
) -> None:
    """Dependency: 401 unless the caller sends the shared token (head, tail and members
    check the same ``SPLITDNN_TOKEN``; the head's caller is the gateway)."""
    check_token(request, settings.token.get_secret_value() if settings.token else None)


async def image_body(
    request: Request, settings: Annotated[ServiceSettings, Depends(get_app_settings)]
) -> bytes:
    """Dependency: the raw image body, capped at the service's ``max_image_bytes``."""
    return await read_capped(request, settings.max_image_bytes, "image")


class InFlightLimiter:
    """At most ``limit`` requests in flight; the next one gets 503 with Retry-After.

    Refusing at once keeps latency bounded: a queued request would only miss the
    head's deadline later, and the head falls back to local immediately on a 503.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0  # changed only on the event loop, so no lock is needed


async def limit_in_flight(request: Request) -> AsyncIterator[None]:
    """Dependency: admit the request under ``app.state.limiter`` or raise 503."""
    limiter: InFlightLimiter = request.app.state.limiter
    if limiter.in_flight >= limiter.limit:
        raise OverloadedError(
            f"{limiter.in_flight} requests in flight; the limit is {limiter.limit}"
        )
    limiter.in_flight += 1
    try:
        yield
    finally:
        limiter.in_flight -= 1


#: Admission for classifications: the right token, then a free in-flight slot, then the body.
ADMISSION = [Depends(authorised), Depends(limit_in_flight)]
