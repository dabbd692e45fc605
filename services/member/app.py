"""NoNN member service: ``create_app()`` assembles; the lifespan loads one member.

Run: ``SPLITDNN_NONN_BUNDLE=bundles/nonn SPLITDNN_MEMBER_INDEX=0
uvicorn services.member.app:create_app --factory --port 8010``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from services.common.deps import create_service_app
from services.common.health import ServiceState
from services.common.warmup import time_ms, warmup_jpeg
from services.member import routes
from services.member.settings import MemberSettings, get_settings
from splitdnn.imaging import load_input
from splitdnn.nonn.bundle import load_nonn_bundle
from splitdnn.runtime import OnnxModel, Threads


def load_components(settings: MemberSettings) -> dict[str, Any]:
    """Load and verify the NoNN bundle, open this member's session, warm it up once."""
    bundle = load_nonn_bundle(settings.nonn_bundle)
    path = bundle.member_path(settings.index)
    model = OnnxModel(path, Threads(settings.intra_op_threads, settings.inter_op_threads))
    x = load_input(warmup_jpeg(), bundle.preprocessing)
    warmup = round(time_ms(lambda: model.run(x)), 3)
    # "nonn_bundle", not "bundle": ServiceState logs a split bundle's fields under that name
    return {"nonn_bundle": bundle, "model": model, "warmup_ms": warmup}


def create_app(settings: MemberSettings | None = None) -> FastAPI:
    """The member app; ``settings`` default to the environment (``SPLITDNN_MEMBER_*``)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        service = ServiceState()
        service.start(lambda: load_components(settings), settings.load_in_background)
        yield {"service": service}

    app = create_service_app(
        "member",
        "One NoNN student: image in, its pooled features out (msgpack envelope).",
        lifespan=lifespan,
        router=routes.router,
        settings=settings,
    )
    return app
