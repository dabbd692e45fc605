"""Head service (device): ``create_app()`` assembles; the lifespan loads the bundle.

Run: ``splitdnn serve head --port 8002 --tail-url http://EDGE:8001`` or
``uvicorn services.head.app:create_app --factory --port 8002``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from services.common.deps import create_service_app
from services.common.health import ServiceState
from services.common.warmup import time_ms, warmup_jpeg
from services.head import routes
from services.head.pipeline import (
    Encoding,
    HeadPipeline,
    encode_bottleneck,
    local_tasks,
    no_coding_tables,
    reencoding_of,
    sent_quantisation,
)
from services.head.settings import HeadSettings, get_settings
from services.head.tail_client import TailClient, Transport
from splitdnn import rans, reencode, wire
from splitdnn.bundle import load_bundle
from splitdnn.errors import ConfigError
from splitdnn.latency import LatencyModel
from splitdnn.runtime import DeviceRunner, ImageClassifier, Threads


def load_components(settings: HeadSettings, tail: TailClient) -> dict[str, Any]:
    """Load and verify the bundle, open the device and local sessions, warm both up,
    seed the latency model with the measured times, and ask the tail for its own."""
    bundle = load_bundle(settings.bundle)
    threads = Threads(settings.intra_op_threads, settings.inter_op_threads)
    device = DeviceRunner(bundle, threads)
    local = ImageClassifier(bundle, "local", threads)
    image = warmup_jpeg()
    tables = bundle.coding_tables()
    # the pipeline, the routes and the priors see what split really sends by default
    settings = settings.model_copy(
        update={"quantisation": sent_quantisation(settings.quantisation, bundle)}
    )
    if settings.quantisation == wire.ENTROPY and tables is None:
        raise ConfigError(no_coding_tables(bundle))
    encoding = Encoding(settings.quantisation, settings.compression)
    # the entropy coder's compiled kernels (numba), before the timed warm-ups seed the
    # latency model: compiling takes seconds on a weak device, a cached load much less
    coder_warmup_ms = rans.warm_up() if tables is not None else 0.0

    def head_split() -> None:
        encode_bottleneck(device(image), bundle, tables, encoding, settings.zstd_level)

    warmup_ms = {
        "head_split": round(time_ms(head_split), 3),
        "local": round(time_ms(lambda: local(image, local_tasks(local)[0])), 3),
        "entropy_coder": round(coder_warmup_ms, 3),
    }
    reencoding = reencoding_of(settings.offload_reencode, bundle)
    reencode_ratio = 1.0
    if reencoding is not None:  # what re-encoding a photo costs this device and saves

        def reencode_photo() -> bytes:
            return reencode.reencode(image, bundle.preprocessing, reencoding, settings.max_pixels)

        warmup_ms["head_reencode"] = round(time_ms(reencode_photo), 3)
        reencode_ratio = len(reencode_photo()) / len(image)
    # a ladder's rates: their own device parts (one session per distinct file)
    rate_devices: dict[str, DeviceRunner] = {}
    for rate in bundle.rates:
        path = bundle.rate_model_path(rate, "device")
        same = [r for r in rate_devices.values() if r.model.path == path]
        if path == device.model.path:
            same.append(device)
        rate_devices[rate] = same[0] if same else DeviceRunner(bundle, threads, rate)
    priors = HeadPipeline.priors(
        settings,
        bundle,
        warmup_ms["local"],
        warmup_ms["head_split"],
        warmup_ms.get("head_reencode"),
    )
    latency = LatencyModel(priors, alpha=settings.ewma_alpha, tail_retry_s=settings.tail_retry_s)
    pipeline = HeadPipeline(
        bundle, device, local, tail, settings, latency, rate_devices, reencode_ratio
    )
    pipeline.probe_tail()
    return {"bundle": bundle, "pipeline": pipeline, "warmup_ms": warmup_ms}


@contextmanager
def running_head(
    settings: HeadSettings, tail_transport: httpx.BaseTransport | None = None
) -> Iterator[ServiceState]:
    """The head's components for the life of an app: the tail client, and the bundle loaded
    (in the background if set) into a :class:`ServiceState` that is ready only while the
    tail holds the same bundle. The head app and the device app (gateway and head in one
    process, ``gateway.app.create_device_app``) both run it."""
    tail = TailClient(settings, tail_transport)
    service = ServiceState()
    service.start(lambda: load_components(settings, tail), settings.load_in_background)
    service.checks.append(lambda: service.components["pipeline"].tail_readiness())
    try:
        yield service
    finally:
        tail.close()


def create_app(
    settings: HeadSettings | None = None,
    tail_transport: Transport | httpx.BaseTransport | None = None,
) -> FastAPI:
    """The head app; ``tail_transport`` lets tests wire a fake or in-process tail (the
    production :class:`~services.head.tail_client.PooledTransport` otherwise)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        with running_head(settings, tail_transport) as service:
            yield {"service": service}

    app = create_service_app(
        "head",
        "Device half of split inference: device part, local model, envelope upload.",
        lifespan=lifespan,
        router=routes.router,
        settings=settings,
    )
    return app
