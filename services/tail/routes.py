"""Tail endpoints: the server part on an envelope (split) and the teacher on an image (offload).

Inference endpoints are plain ``def`` so FastAPI runs them in its thread pool and the event
loop stays free for health checks and admission control.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response

from services.common.context import BUNDLE_HEADER, RequestContext
from services.common.deps import (
    ADMISSION,
    AppMetrics,
    Context,
    Service,
    TaskQuery,
    TopKQuery,
    get_app_settings,
    image_body,
    read_capped,
)
from services.common.metrics import Metrics
from services.common.openapi import IMAGE_CONTENT, INFER_CONTENT, problem_responses
from services.tail.settings import TailSettings
from splitdnn import oip, wire
from splitdnn.bundle import Bundle
from splitdnn.errors import BundleMismatchError, UnknownNameError, WireError
from splitdnn.runtime import ImageClassifier, ServerRunner, top_k

router = APIRouter(prefix="/v2", tags=["inference"])
#: The server part's session run, a bottleneck batch -> every named output: what the split
#: routes call, so a host can batch concurrent requests into one run (services/tail/ray_app.py).
ServerRun = Callable[[np.ndarray], dict[str, np.ndarray]]
Settings = Annotated[TailSettings, Depends(get_app_settings)]

WithLogits = Annotated[bool, Query(description="Also return the raw logits")]

PROBLEMS = problem_responses(
    {
        400: "bad envelope or OIP request, or corrupt image (problem+json with 'error')",
        401: "missing or wrong bearer token",
        404: "unknown model name",
        409: "the sender holds a different bundle",
        413: "body, declared raw size or batch over the configured limit",
        415: "not an image",
        422: "invalid query parameter (an unknown or empty task too), or NaN/infinity in the "
        "tensor",
        503: "not ready or overloaded (Retry-After)",
    }
)


async def envelope_body(request: Request, settings: Settings) -> bytes:
    return await read_capped(request, settings.max_envelope_bytes, "envelope")


def _bundle(service: Service, name: str, sender: str | None = None) -> Bundle:
    """The loaded bundle; 409 if the sender's bundle id differs, 404 for another name."""
    bundle: Bundle = service.get("bundle")
    if sender and sender != bundle.id:
        raise BundleMismatchError(
            f"the sender holds bundle {sender!r}; this tail holds {bundle.id!r}"
        )
    if name not in (bundle.name, bundle.id):
        raise UnknownNameError(f"unknown model {name!r}; this tail serves {bundle.name!r}")
    return bundle


def _answer(
    bundle: Bundle, task: str, logits: np.ndarray, k: int, with_logits: bool
) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "model_name": bundle.name,
        "bundle": bundle.id,
        "task": task,
        "top_k": [r.to_dict() for r in top_k(logits[0], bundle.labels(task), k)],
    }
    if with_logits:
        answer["outputs"] = [
            {
                "name": f"logits_{task}",
                "datatype": "FP32",
                "shape": list(logits.shape),
                "data": logits.reshape(-1).tolist(),
            }
        ]
    return answer


def _with_timings(
    answer: dict[str, Any],
    body: bytes,
    start: float,
    context: RequestContext,
    metrics: Metrics,
) -> dict[str, Any]:
    """Export the decode and tail stages and add ``bytes_in`` and ``timings_ms`` to the answer.

    Both modes report alike: the head takes ``compute`` out of its round trip to estimate
    the transfer time.
    """
    compute_ms = (time.perf_counter() - start) * 1000
    metrics.stage("decode", context.stages_ms["decode"] / 1000)
    metrics.stage("tail", context.stages_ms["tail"] / 1000)
    answer["bytes_in"] = len(body)
    answer["timings_ms"] = {s: round(v, 3) for s, v in context.stages_ms.items()}
    answer["timings_ms"]["compute"] = round(compute_ms, 3)
    return answer


@router.get("", summary="Server metadata (Open Inference Protocol)")
def server_metadata() -> dict[str, Any]:
    return {"name": "splitdnn-tail", "version": "1", "extensions": ["binary_tensor_data"]}


@router.get(
    "/models/{name}/ready", summary="Model ready (Open Inference Protocol)", responses=PROBLEMS
)
def model_ready(name: str, service: Service) -> dict[str, Any]:
    bundle = _bundle(service, name)
    return {"name": bundle.name, "ready": True}


@router.get("/models/{name}", summary="Model metadata", responses=PROBLEMS)
def model_metadata(name: str, service: Service) -> dict[str, Any]:
    bundle = _bundle(service, name)
    server: ServerRunner = service.get("server")
    return {
        "name": bundle.name,
        "versions": [bundle.id],
        "platform": "onnxruntime_onnx",
        "bundle": bundle.id,
        **server.model.metadata(),
        "tasks": {task: len(spec.labels) for task, spec in bundle.manifest.tasks.items()},
        "default_task": bundle.manifest.default_task,
        "envelope": {"content_type": wire.CONTENT_TYPE, "version": wire.FORMAT_VERSION},
        # a ladder's rates an entropy-coded envelope may name (empty: one rate)
        "rates": list(bundle.rates),
        "warmup_ms": service.get("warmup_ms"),
    }


def is_oip(request: Request, body: bytes) -> bool:
    """An Open Inference Protocol request rather than a msgpack envelope: the binary
    extension's header, a JSON media type, or a JSON object without the envelope's type."""
    content_type = request.headers.get("content-type", "").lower()
    if oip.HEADER_LENGTH.lower() in request.headers or content_type.startswith("application/json"):
        return True
    return not content_type.startswith(wire.CONTENT_TYPE) and body[:1] == b"{"


@router.post(
    "/models/{name}/infer",
    summary="Split mode: the server part on a msgpack envelope, or an OIP v2 request "
    "(JSON tensors or the binary tensor extension)",
    responses={
        **PROBLEMS,
        200: {
            "description": "top-k answer (envelope), or the OIP v2 answer (JSON, or JSON + "
            "binary outputs with Inference-Header-Content-Length)",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                oip.BINARY_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}},
            },
        },
    },
    response_model=None,
    openapi_extra={"requestBody": {"required": True, "content": INFER_CONTENT}},
    dependencies=ADMISSION,
)
def infer(
    name: str,
    request: Request,
    body: Annotated[bytes, Depends(envelope_body)],
    service: Service,
    context: Context,
    metrics: AppMetrics,
    settings: Settings,
    task: TaskQuery = None,
    k: TopKQuery = None,
    logits: WithLogits = False,
) -> dict[str, Any] | Response:
    if is_oip(request, body):
        return infer_oip(name, request, body, service, context, metrics, settings)
    start = time.perf_counter()
    server: ServerRunner = service.get("server")
    bundle = _bundle(service, name)
    metrics.bytes_in.labels(metrics.service, "envelope").inc(len(body))
    with context.stage("decode"):
        envelope, tensor = wire.decode_array(
            body,
            max_envelope_bytes=settings.max_envelope_bytes,
            max_raw_bytes=max_raw_bytes(settings, server),
            max_batch=settings.max_batch,
            sample_shape=server.bottleneck_shape,
            bundle_id=bundle.id,
            tables=service.get("coding_tables"),
            rates=service.get("ladder"),
        )
    task = bundle.task(task)
    run_server: ServerRun = service.get("run_server")
    if envelope.rate is not None:  # a ladder's rate: that rate's server part
        rate_server: ServerRunner = service.get("rate_servers")[envelope.rate]
        if rate_server is not server:
            server, run_server = rate_server, rate_server.model.run
    with context.stage("tail"):  # with the Ray tail, this includes the batching wait
        task, out = server.logits(run_server(tensor), task)
    answer = _answer(bundle, task, out, k or settings.top_k, logits)
    if envelope.rate is not None:
        answer["rate"] = envelope.rate
    return _with_timings(answer, body, start, context, metrics)


def max_raw_bytes(settings: TailSettings, server: ServerRunner) -> int:
    """The raw size a full batch of float32 bottlenecks needs, capped by the setting."""
    full_batch = settings.max_batch * math.prod(server.bottleneck_shape) * 4
    return min(settings.max_raw_bytes, full_batch)


def infer_oip(
    name: str,
    request: Request,
    body: bytes,
    service: Service,
    context: RequestContext,
    metrics: Metrics,
    settings: TailSettings,
) -> Response:
    """The Open Inference Protocol v2 answer: every requested ``logits_<task>`` output."""
    server: ServerRunner = service.get("server")
    bundle = _bundle(service, name)
    metrics.bytes_in.labels(metrics.service, "oip").inc(len(body))
    with context.stage("decode"):
        parsed = oip.parse_request(
            body,
            request.headers.get(oip.HEADER_LENGTH),
            input_name=server.model.input_name,
            sample_shape=server.bottleneck_shape,
            max_batch=settings.max_batch,
        )
    unknown = sorted(set(parsed.outputs) - set(server.model.output_names))
    if unknown:
        raise WireError(f"unknown outputs {unknown}; this model has {server.model.output_names}")
    run_server: ServerRun = service.get("run_server")
    with context.stage("tail"):
        outputs = run_server(parsed.tensor)
    chosen = {n: outputs[n] for n in (parsed.outputs or server.model.output_names)}
    content, header_length = oip.encode_response(bundle.name, bundle.id, parsed, chosen)
    if header_length is None:
        return Response(content, media_type=oip.JSON_CONTENT_TYPE)
    return Response(
        content,
        media_type=oip.BINARY_CONTENT_TYPE,
        headers={oip.HEADER_LENGTH: str(header_length)},
    )


@router.post(
    "/models/{name}/classify",
    summary="Offload mode: run the whole teacher on an image",
    responses=PROBLEMS,
    openapi_extra={"requestBody": {"required": True, "content": IMAGE_CONTENT}},
    dependencies=ADMISSION,
)
def classify_image(
    name: str,
    request: Request,
    body: Annotated[bytes, Depends(image_body)],
    service: Service,
    context: Context,
    metrics: AppMetrics,
    settings: Settings,
    task: TaskQuery = None,
    k: TopKQuery = None,
    logits: WithLogits = False,
) -> dict[str, Any]:
    start = time.perf_counter()
    bundle = _bundle(service, name, request.headers.get(BUNDLE_HEADER))
    task = bundle.task(task)
    teacher: ImageClassifier = service.get("offload")
    metrics.bytes_in.labels(metrics.service, "image").inc(len(body))
    with context.stage("decode"):
        x = teacher.preprocess(body, settings.max_pixels)
    with context.stage("tail"):
        task, out = teacher.run(x, task)
    answer = _answer(bundle, task, out, k or settings.top_k, logits)
    return _with_timings(answer, body, start, context, metrics)
