"""Member endpoints: ``POST /v2/features`` (image -> envelope of pooled features) and
``GET /v2/member`` (which member, channels, bundle).

The features go out through :mod:`splitdnn.wire` (the only envelope code), so the gateway
decodes them with the same checks as the tail does a bottleneck. Timings travel in headers
(the body is the envelope): ``X-Compute-Ms`` (decode + model + encode).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response

from services.common.deps import (
    ADMISSION,
    AppMetrics,
    Context,
    Service,
    get_app_settings,
    image_body,
)
from services.common.openapi import IMAGE_CONTENT, problem_responses
from services.member.settings import MemberSettings
from splitdnn import wire
from splitdnn.imaging import load_input
from splitdnn.nonn.bundle import NoNNBundle
from splitdnn.runtime import OnnxModel
from splitdnn.wire import Quantisation

router = APIRouter(prefix="/v2", tags=["inference"])
Settings = Annotated[MemberSettings, Depends(get_app_settings)]
COMPUTE_HEADER = "X-Compute-Ms"
MEMBER_HEADER = "X-NoNN-Member"

PROBLEMS = problem_responses(
    {
        400: "truncated or corrupt image",
        401: "missing or wrong bearer token",
        413: "image over the configured limit",
        415: "not an image",
        422: "invalid query parameter",
        503: "not ready or overloaded (Retry-After)",
    }
)


@router.get("/member", summary="This member: index, channels, bundle")
def member(service: Service, settings: Settings) -> dict[str, Any]:
    bundle: NoNNBundle = service.get("nonn_bundle")
    spec = bundle.manifest.members[settings.index]
    return {
        "index": settings.index,
        "members": len(bundle.manifest.members),
        "channels": spec.channels,
        "bundle": bundle.id,
        "model": bundle.manifest.name,
        "quantisation": settings.quantisation,
        "envelope": {"content_type": wire.CONTENT_TYPE, "version": wire.FORMAT_VERSION},
        "warmup_ms": service.get("warmup_ms"),
    }


@router.post(
    "/features",
    summary="Run this member on an image; answer its pooled features as a msgpack envelope",
    responses={
        **PROBLEMS,
        200: {
            "description": "the envelope",
            "content": {wire.CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        },
    },
    response_class=Response,
    openapi_extra={"requestBody": {"required": True, "content": IMAGE_CONTENT}},
    dependencies=ADMISSION,
)
def features(
    body: Annotated[bytes, Depends(image_body)],
    service: Service,
    context: Context,
    metrics: AppMetrics,
    settings: Settings,
    quantisation: Annotated[
        Quantisation | None,
        Query(description="Envelope quantisation (default from settings)"),
    ] = None,
) -> Response:
    start = time.perf_counter()
    bundle: NoNNBundle = service.get("nonn_bundle")
    model: OnnxModel = service.get("model")
    metrics.bytes_in.labels(metrics.service, "image").inc(len(body))
    with context.stage("decode"):
        x = load_input(body, bundle.preprocessing, settings.max_pixels)
    with context.stage("member"):
        out = model.run(x)["features"]
    envelope = wire.encode(
        out, bundle_id=bundle.id, quantisation=quantisation or settings.quantisation
    )
    return Response(
        envelope,
        media_type=wire.CONTENT_TYPE,
        headers={
            COMPUTE_HEADER: f"{(time.perf_counter() - start) * 1000:.3f}",
            MEMBER_HEADER: str(settings.index),
        },
    )
