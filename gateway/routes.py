"""``POST /classify``: the public endpoint. Takes the image, asks the head, answers JSON.

The gateway checks what it can cheaply (media type, size, an image header), asks the head,
and relays the head's answer or problem. The head runs the modes, the fallback and the
latency model. Apart from the head, the gateway loads no model and asks the head's
``/infer/{mode}`` over HTTP; beside it on the device (``create_device_app``), it calls the
head's pipeline in-process (:class:`~services.head.inprocess.InProcessHead`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, Query, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from gateway.nonn import NoNNState, classify_nonn, nonn_ready
from gateway.settings import GatewaySettings, Mode
from services.common.context import REQUEST_ID, RequestContext
from services.common.deps import (
    Context,
    MaxDropQuery,
    RateQuery,
    get_app_settings,
    limit_in_flight,
    read_capped,
)
from services.common.errors import (
    InvalidRequestError,
    UnsupportedMediaError,
    UpstreamUnavailableError,
)
from services.common.openapi import IMAGE_CONTENT, problem_responses
from services.common.upstream import connection_error, upstream_error
from services.head.inprocess import InProcessHead
from splitdnn.errors import CorruptImageError, ImageTooLargeError
from splitdnn.imaging import open_image
from splitdnn.wire import Compression, SplitQuantisation

router = APIRouter(tags=["classify"])
Settings = Annotated[GatewaySettings, Depends(get_app_settings)]
RAW_TYPES = ("image/", "application/octet-stream")
#: Room for multipart boundaries and part headers on top of the image limit.
MULTIPART_OVERHEAD = 64 * 1024

PROBLEMS = problem_responses(
    {
        400: "truncated or corrupt image, or malformed multipart",
        401: "the head or the tail refused the token",
        409: "head and tail hold different bundles",
        413: "image over the configured limit",
        415: "not an image",
        422: "unknown or empty mode or task, or no 'image' field",
        502: "the tail answered nonsense and fallback=false",
        503: "over the in-flight limit, head unavailable or busy, or tail down with "
        "fallback=false (each with Retry-After)",
        504: "deadline missed",
    }
)


async def get_head(request: Request) -> httpx.AsyncClient | InProcessHead | None:
    """The head's HTTP client, the head itself when it runs in this process, or None for a
    gateway that serves NoNN only."""
    return request.state.head


Head = Annotated[httpx.AsyncClient | InProcessHead | None, Depends(get_head)]
#: The modes a head answers; a NoNN-only gateway refuses them.
HEAD_MODES = ("split", "local", "offload", "auto")


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def extract_image(request: Request, limit: int) -> bytes:
    """The image from the multipart field ``image`` or from a raw image body."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        body = await read_capped(request, limit + MULTIPART_OVERHEAD, "upload")
        parser = MultiPartParser(request.headers, _once(body), max_files=4, max_fields=16)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise CorruptImageError(f"malformed multipart body: {exc.message}") from exc
        try:
            field = form.get("image")
            if field is None:
                raise InvalidRequestError("send the image in the multipart field 'image'")
            data = await field.read() if isinstance(field, UploadFile) else field.encode()
        finally:
            await form.close()
    elif not content_type or content_type.startswith(RAW_TYPES):
        data = await read_capped(request, limit, "image")
    else:
        raise UnsupportedMediaError(
            f"{content_type!r} is not accepted: send image/jpeg, image/png or multipart 'image'"
        )
    if len(data) > limit:
        raise ImageTooLargeError(f"the image is {len(data)} bytes; the limit is {limit}")
    return data


def sniff(data: bytes, max_pixels: int) -> None:
    """Refuse non-images (415), other formats than JPEG/PNG/WebP (415) and oversized or
    bomb images (413) from the header alone (:func:`splitdnn.imaging.open_image`)."""
    open_image(data, max_pixels).close()


async def call_head(
    head: Head,
    path: str,
    image: bytes,
    params: dict[str, Any],
    context: RequestContext,
    client_cert: bool = False,
) -> dict[str, Any]:
    try:
        response = await head.post(
            path,
            content=image,
            params={k: v for k, v in params.items() if v is not None},
            headers={"Content-Type": "application/octet-stream", REQUEST_ID: context.request_id},
        )
    except httpx.HTTPError as exc:
        raise connection_error("head", str(head.base_url), exc, client_cert) from exc
    if response.status_code >= 400:
        raise upstream_error(
            "head", response.status_code, response.content, response.headers, relay_all=True
        )
    return response.json()


@router.post(
    "/classify",
    summary="Classify an image (multipart field 'image', or a raw image/jpeg|png body)",
    responses=PROBLEMS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"image": {"type": "string", "format": "binary"}},
                        "required": ["image"],
                    }
                },
                **IMAGE_CONTENT,
            },
        }
    },
    dependencies=[Depends(limit_in_flight)],
)
async def classify(
    request: Request,
    head: Head,
    context: Context,
    settings: Settings,
    mode: Annotated[
        Mode | None,
        Query(description="split | local | offload | auto | nonn; default from settings"),
    ] = None,
    task: Annotated[str | None, Query(description="Task head; default from the bundle")] = None,
    k: Annotated[int, Query(alias="top_k", ge=1, le=100)] = 5,
    fallback: Annotated[
        bool, Query(description="Fall back to local when the tail is down or late")
    ] = True,
    quantisation: Annotated[
        SplitQuantisation | None,
        Query(description="Split mode: envelope quantisation (default from the head)"),
    ] = None,
    compression: Annotated[
        Compression | None,
        Query(description="Split mode: envelope compression (default from the head)"),
    ] = None,
    max_drop: MaxDropQuery = None,
    rate: RateQuery = None,
) -> dict[str, Any]:
    start = time.perf_counter()
    image = await extract_image(request, settings.max_image_bytes)
    sniff(image, settings.max_pixels)
    # a NoNN-only gateway (no head) serves mode=nonn, also when the request names no mode
    mode = mode or (settings.default_mode if head is not None else "nonn")
    if head is None and mode != "nonn":
        raise InvalidRequestError(
            f"mode={mode}: this gateway serves mode=nonn only (it has a NoNN bundle and no "
            "head: set SPLITDNN_GATEWAY_HEAD_URL, or --head-url, to serve "
            f"{'|'.join(HEAD_MODES)} too)"
        )
    if mode == "nonn":
        nonn: NoNNState | None = request.state.nonn
        answer = await classify_nonn(nonn, image, task, k, quantisation, context)
        context.record("members", answer["timings_ms"]["transfer"] / 1000)
        answer["timings_ms"]["total"] = round((time.perf_counter() - start) * 1000, 3)
        answer["request_id"] = context.request_id
        answer["image_bytes"] = len(image)
        return answer
    if isinstance(head, InProcessHead):  # its pipeline records the stages in context
        answer = await head.infer(
            mode, image, context, task=task, k=k, fallback=fallback,
            quantisation=quantisation, compression=compression, max_drop=max_drop, rate=rate,
        )  # fmt: skip
        timings = answer["timings_ms"]
    else:
        params = {
            "task": task,
            "top_k": k,
            "fallback": str(fallback).lower(),
            "quantisation": quantisation,
            "compression": compression,
            "max_drop": max_drop,
            "rate": rate,
        }
        answer = await call_head(
            head, f"/infer/{mode}", image, params, context, settings.tls_cert is not None
        )
        timings = answer.setdefault("timings_ms", {})
        for stage in ("head", "transfer", "tail"):
            context.record(stage, float(timings.get(stage) or 0.0) / 1000)
    timings["total"] = round((time.perf_counter() - start) * 1000, 3)
    answer["request_id"] = context.request_id
    answer["image_bytes"] = len(image)
    return answer


async def _ready(client: httpx.AsyncClient, url: str) -> bool:
    try:
        response = await client.get(url, timeout=1.0)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


@router.get(
    "/v2/health/ready",
    tags=["health"],
    summary="Ready when it can answer the modes it serves: the head's when it has a head, "
    "mode=nonn when it has a NoNN bundle",
    responses=problem_responses(
        {503: "the head is not ready, or too few NoNN members are (Retry-After)"}
    ),
)
async def ready(request: Request, head: Head) -> dict[str, Any]:
    if isinstance(head, InProcessHead):
        head_ready = await head.ready()
    else:
        head_ready = head is None or await _ready(head, "/v2/health/ready")
    if not head_ready:
        raise UpstreamUnavailableError("the head is not ready")
    state: NoNNState | None = request.state.nonn
    if state is not None and not await nonn_ready(state):
        raise UpstreamUnavailableError(
            "too few NoNN members are ready to answer mode=nonn"
            + (" (one is enough with degraded answers)" if state.degraded else " (all needed)")
        )
    return {"ready": True}


async def _head_json(head: httpx.AsyncClient, path: str) -> dict[str, Any] | None:
    """The head's JSON answer at ``path``, or None when it is down or refuses."""
    try:
        response = await head.get(path, timeout=1.0)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _bundle_summary(described: dict[str, Any]) -> dict[str, Any]:
    """The part of :func:`splitdnn.bundle.describe` the status page shows."""
    return {key: described.get(key) for key in ("bundle_id", "name", "default_task", "tasks")}


@router.get(
    "/status",
    tags=["health"],
    summary="Head and tail readiness, the bundle's tasks with the modes each answers, latency "
    "estimates",
)
async def status(head: Head, settings: Settings) -> dict[str, Any]:
    if isinstance(head, InProcessHead):
        return {
            "head_url": None,  # in this process
            "tail_url": head.settings.tail_url,
            "head_ready": await head.ready(),
            "tail_ready": await head.tail_ready(),
            "default_mode": settings.default_mode,
            **({"bundle": _bundle_summary(bundle)} if (bundle := head.bundle()) else {}),
            **({"latency": latency} if (latency := head.latency()) else {}),
        }
    if head is None:  # NoNN only
        return {"head_url": None, "serves": ["nonn"], "default_mode": "nonn"}
    tail_ready = await _ready(head, settings.tail_url.rstrip("/") + "/v2/health/ready")
    answer: dict[str, Any] = {
        "head_url": settings.head_url,
        "tail_url": settings.tail_url,
        "head_ready": await _ready(head, "/v2/health/ready"),
        "tail_ready": tail_ready,
        "default_mode": settings.default_mode,
    }
    bundle = await _head_json(head, "/bundle")  # splitdnn.bundle.describe, on the head
    if bundle is not None:
        answer["bundle"] = _bundle_summary(bundle)
    latency = await _head_json(head, "/latency")
    if latency is not None:
        answer["latency"] = latency
    return answer
