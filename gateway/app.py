"""Gateway: the public front on the device.

``create_app()`` is the gateway apart from the head (no model loads; it asks the head over
HTTP). ``create_device_app()`` is gateway and head in one process, for a device that runs
both: ``/classify`` calls the head's pipeline in-process, with one HTTP server, one body
parse and no loopback hop.

Run: ``splitdnn serve device --port 8000 --tail-url http://EDGE:8001`` (both),
``splitdnn serve gateway --port 8000 --head-url http://127.0.0.1:8002`` (apart),
``splitdnn serve gateway --nonn DIR --member-url URL ...`` (NoNN only: no head), or
``uvicorn gateway.app:create_app --factory --port 8000``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
from fastapi import FastAPI

from gateway import nonn, routes
from gateway.settings import GatewaySettings, get_settings
from services.common.deps import InFlightLimiter, create_service_app
from services.common.upstream import bearer
from services.head.app import running_head
from services.head.inprocess import InProcessHead
from services.head.settings import HeadSettings
from services.head.settings import get_settings as get_head_settings


def create_app(
    settings: GatewaySettings | None = None,
    head_transport: httpx.AsyncBaseTransport | None = None,
    member_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The gateway app; ``head_transport`` (``member_transport``) lets tests put a fake
    head (NoNN members) behind it."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, object]]:
        tls = settings.client_tls()  # https:// head and member URLs: verified against tls_ca
        async with AsyncExitStack() as stack:
            head = None  # a NoNN-only gateway (a NoNN bundle and no head URL) has none
            if settings.head_url is not None:
                head = await stack.enter_async_context(
                    httpx.AsyncClient(
                        base_url=settings.head_url,
                        headers=bearer(settings.token),
                        timeout=httpx.Timeout(settings.timeout_s, connect=2.0, pool=1.0),
                        limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
                        transport=head_transport,
                        verify=tls,
                    )
                )
            members = await stack.enter_async_context(
                httpx.AsyncClient(
                    limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
                    transport=member_transport,
                    verify=tls,
                )
            )
            yield {"head": head, "nonn": nonn.load_state(settings, members)}

    app = create_service_app(
        "gateway",
        "POST /classify?mode=split|local|offload|auto in front of the head service; "
        "mode=nonn fans out to the NoNN members.",
        lifespan=lifespan,
        router=routes.router,
        settings=settings,
        readiness=False,
    )
    return app


def create_device_app(
    settings: GatewaySettings | None = None,
    head_settings: HeadSettings | None = None,
    tail_transport: httpx.BaseTransport | None = None,
    member_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """Gateway and head in one process (``splitdnn serve device``).

    Settings come from both environments (``SPLITDNN_GATEWAY_*`` for the public side,
    ``SPLITDNN_HEAD_*`` and ``SPLITDNN_BUNDLE`` for the head); ``head_url`` is unused. The
    in-flight limit is the smaller of the two, checked before a body is read: the head's
    limit is what the device's cores can run at once.
    """
    settings = settings or get_settings()
    head_settings = head_settings or get_head_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, object]]:
        with running_head(head_settings, tail_transport) as service:
            async with httpx.AsyncClient(
                limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
                transport=member_transport,
                verify=settings.client_tls(),  # https:// member URLs: verified against tls_ca
            ) as members:
                yield {
                    "head": InProcessHead(service, head_settings, app.state.metrics),
                    "service": service,
                    "nonn": nonn.load_state(settings, members),
                }

    app = create_service_app(
        "device",
        "Gateway and head in one process: POST /classify?mode=split|local|offload|auto runs "
        "the device part here and sends the bottleneck to the tail.",
        lifespan=lifespan,
        router=routes.router,
        settings=settings,
        readiness=False,
    )
    app.state.limiter = InFlightLimiter(min(settings.max_in_flight, head_settings.max_in_flight))
    return app
