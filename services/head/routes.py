"""Head endpoints: ``POST /infer/{mode}`` with the raw image bytes, plus metadata.

The gateway is the public front; these endpoints are what it calls on the device.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request

from services.common.context import RequestContext
from services.common.deps import (
    ADMISSION,
    AppMetrics,
    Context,
    MaxDropQuery,
    RateQuery,
    Service,
    TaskQuery,
    TopKQuery,
    authorised,
    get_app_settings,
    read_capped,
)
from services.common.errors import UnsupportedMediaError
from services.common.metrics import Metrics
from services.common.openapi import IMAGE_CONTENT, problem_responses
from services.head.pipeline import Encoding, HeadPipeline
from services.head.settings import HeadSettings
from splitdnn import wire
from splitdnn.bundle import Bundle, describe
from splitdnn.errors import UnknownNameError
from splitdnn.wire import Compression, SplitQuantisation

router = APIRouter(tags=["inference"])
Settings = Annotated[HeadSettings, Depends(get_app_settings)]
HeadMode = Literal["split", "local", "offload", "auto"]

PROBLEMS = problem_responses(
    {
        400: "truncated or corrupt image",
        401: "missing or wrong bearer token (the head's own, or the tail refused it)",
        404: "unknown model name",
        409: "head and tail hold different bundles",
        413: "image over the configured limit",
        415: "not an image, or a multipart form (the head takes the raw image body)",
        422: "invalid path or query parameter (an unknown or empty task too)",
        502: "the tail answered without the fields the head needs and fallback=false",
        503: "not ready, over the in-flight limit (Retry-After), or the tail is down and "
        "fallback=false",
        504: "the tail missed the deadline and fallback=false",
    }
)


async def raw_image_body(request: Request, settings: Settings) -> bytes:
    """The image body, refusing a multipart form with a pointer to the gateway."""
    if request.headers.get("content-type", "").lower().startswith("multipart/"):
        raise UnsupportedMediaError(
            "the head takes the image as the raw request body (curl --data-binary @cat.jpg "
            "-H 'Content-Type: image/jpeg' .../infer/split), not a multipart form; the "
            "gateway's POST /classify takes the form (curl -F image=@cat.jpg)"
        )
    return await read_capped(request, settings.max_image_bytes, "image")


@router.post(
    "/infer/{mode}",
    summary="Classify an image in one mode (auto picks the fastest predicted)",
    responses=PROBLEMS,
    openapi_extra={"requestBody": {"required": True, "content": IMAGE_CONTENT}},
    dependencies=ADMISSION,
)
def infer(
    mode: HeadMode,
    image: Annotated[bytes, Depends(raw_image_body)],
    service: Service,
    context: Context,
    metrics: AppMetrics,
    settings: Settings,
    task: TaskQuery = None,
    k: TopKQuery = None,
    fallback: Annotated[bool, Query(description="Fall back to local if the tail fails")] = True,
    quantisation: Annotated[
        SplitQuantisation | None, Query(description="Override the envelope quantisation")
    ] = None,
    compression: Annotated[
        Compression | None, Query(description="Override the envelope compression")
    ] = None,
    reencode: Annotated[
        bool | None,
        Query(
            description="Offload: re-encode at the teacher's input size (default: setting); "
            "auto: may, where that is predicted faster than sending the upload as it is"
        ),
    ] = None,
    max_drop: MaxDropQuery = None,
    rate: RateQuery = None,
) -> dict[str, Any]:
    pipeline: HeadPipeline = service.get("pipeline")
    return infer_answer(
        pipeline,
        settings,
        mode,
        image,
        task,
        k,
        fallback,
        context,
        metrics,
        quantisation,
        compression,
        reencode,
        max_drop,
        rate,
    )


def infer_answer(
    pipeline: HeadPipeline,
    settings: HeadSettings,
    mode: str,
    image: bytes,
    task: str | None,
    k: int | None,
    fallback: bool,
    context: RequestContext,
    metrics: Metrics,
    quantisation: str | None = None,
    compression: str | None = None,
    reencode: bool | None = None,
    max_drop: float | None = None,
    rate: str | None = None,
) -> dict[str, Any]:
    """Run one classification and build the head's answer: what ``/infer/{mode}`` returns
    and what a gateway in the same process (:mod:`services.head.inprocess`) relays. On a
    ladder bundle, ``rate`` picks the split rate (an unknown one is 422, whatever the mode);
    the answer names the rate split sent at."""
    start = time.perf_counter()
    pipeline.bundle.rate(rate)
    # a rate is entropy-coded: asked for alone, it sends entropy whatever the setting
    default_quantisation = wire.ENTROPY if rate is not None else pipeline.settings.quantisation
    encoding = Encoding(
        quantisation or default_quantisation, compression or settings.compression, rate
    )
    outcome, predictions = pipeline.run(
        mode,
        image,
        task,
        k or settings.top_k,
        fallback,
        context,
        metrics,
        encoding,
        reencode,
        max_drop,
    )
    total_ms = (time.perf_counter() - start) * 1000
    answer: dict[str, Any] = {
        "mode": outcome.mode,
        "requested_mode": mode,
        "task": outcome.task,
        "top_k": outcome.top_k,
        "timings_ms": {
            "head": round(outcome.head_ms, 3),
            "transfer": round(outcome.transfer_ms, 3),
            "tail": round(outcome.tail_ms, 3),
            "total": round(total_ms, 3),
        },
        "head_stages_ms": {
            "preprocess": round(outcome.preprocess_ms, 3),
            "model": round(outcome.model_ms, 3),
            "preprocess_cpu": round(outcome.preprocess_cpu_ms, 3),
            "model_cpu": round(outcome.model_cpu_ms, 3),
        },
        "bytes_sent": outcome.bytes_sent,
        "encoding": (
            {
                "quantisation": outcome.quantisation or encoding.quantisation,
                "compression": encoding.compression,
            }
            if outcome.mode == "split"
            else None
        ),
        "bundle": pipeline.bundle.id,
        "model": pipeline.bundle.name,
        "request_id": context.request_id,
        "fallback": outcome.fallback,
    }
    if outcome.rate is not None:  # split on a ladder: the rate sent, and its bytes above
        answer["rate"] = outcome.rate
    if outcome.fallback_reason:
        answer["fallback_reason"] = outcome.fallback_reason
    if outcome.auto is not None:
        answer["auto"] = outcome.auto
    if predictions is not None:
        answer["predicted_ms"] = {m: p["total"] for m, p in predictions.items()}
        answer["predictions"] = predictions
    return answer


@router.get(
    "/latency",
    summary="Current latency estimates and predictions per mode",
    responses=PROBLEMS,
    dependencies=[Depends(authorised)],
)
def latency(
    service: Service,
    image_bytes: Annotated[int, Query(ge=0, description="Image size to predict for")] = 50_000,
    task: Annotated[str | None, Query(description="Task auto would classify")] = None,
    max_drop: MaxDropQuery = None,
) -> dict[str, Any]:
    return latency_answer(service.get("pipeline"), image_bytes, task, max_drop)


def latency_answer(
    pipeline: HeadPipeline,
    image_bytes: int,
    task: str | None = None,
    max_drop: float | None = None,
) -> dict[str, Any]:
    """The latency estimates, each option's prediction for an image of ``image_bytes``, and
    what auto would serve within its accuracy bound (``auto``: the bound, as in answers)."""
    chosen, predictions, bound = pipeline.would_choose(image_bytes, task, max_drop)
    return {
        "estimates": pipeline.latency.snapshot(),
        "image_bytes": image_bytes,
        "auto_would_choose": chosen,
        "auto": bound,
        "predictions": {m: p.to_dict() for m, p in predictions.items()},
    }


@router.get(
    "/bundle",
    summary="What this head's bundle serves: tasks with their modes, the split, files",
    responses=PROBLEMS,
    dependencies=[Depends(authorised)],
)
def bundle_info(service: Service) -> dict[str, Any]:
    pipeline: HeadPipeline = service.get("pipeline")
    return describe(pipeline.bundle, pipeline.local_tasks)


@router.get(
    "/v2/models/{name}",
    summary="Device-side model metadata",
    responses=PROBLEMS,
    dependencies=[Depends(authorised)],
)
def model_metadata(name: str, service: Service, settings: Settings) -> dict[str, Any]:
    bundle: Bundle = service.get("bundle")
    if name not in (bundle.name, bundle.id):
        raise UnknownNameError(f"unknown model {name!r}; this head serves {bundle.name!r}")
    pipeline: HeadPipeline = service.get("pipeline")
    return {
        "name": bundle.name,
        "versions": [bundle.id],
        "platform": "onnxruntime_onnx",
        "bundle": bundle.id,
        "device": pipeline.device.model.metadata(),
        "local": pipeline.local.model.metadata(),
        "tasks": {task: len(spec.labels) for task, spec in bundle.manifest.tasks.items()},
        "default_task": bundle.manifest.default_task,
        "tail_url": settings.tail_url,
        "quantisation": pipeline.settings.quantisation,
        "compression": settings.compression,
        "warmup_ms": service.get("warmup_ms"),
    }
