"""Gateway: the public front on the device. ``create_app()`` assembles; no model loads.

Run: ``splitdnn serve gateway --port 8000 --head-url http://127.0.0.1:8002`` or
``uvicorn gateway.app:create_app --factory --port 8000``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from gateway import nonn, routes
from gateway.settings import GatewaySettings, get_settings
from services.common.deps import create_service_app
from services.common.upstream import bearer


def create_app(
    settings: GatewaySettings | None = None,
    head_transport: httpx.AsyncBaseTransport | None = None,
    member_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The gateway app; ``head_transport`` (``member_transport``) lets tests put a fake
    head (NoNN members) behind it."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
        tls = settings.client_tls()  # https:// head and member URLs: verified against tls_ca
        async with (
            httpx.AsyncClient(
                base_url=settings.head_url,
                headers=bearer(settings.token),
                timeout=httpx.Timeout(settings.timeout_s, connect=2.0, pool=1.0),
                limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
                transport=head_transport,
                verify=tls,
            ) as client,
            httpx.AsyncClient(
                limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
                transport=member_transport,
                verify=tls,
            ) as members,
        ):
            yield {"head": client, "nonn": nonn.load_state(settings, members)}

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
