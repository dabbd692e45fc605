"""Tail service (edge server): ``create_app()`` assembles; the lifespan loads the bundle.

Run: ``splitdnn serve tail --port 8001`` or
``uvicorn services.tail.app:create_app --factory --port 8001``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI

from services.common.deps import create_service_app
from services.common.health import ServiceState
from services.common.warmup import time_ms, warmup_jpeg
from services.tail import routes
from services.tail.routes import ServerRun
from services.tail.settings import TailSettings, get_settings
from splitdnn import rans
from splitdnn.bundle import load_bundle
from splitdnn.runtime import ImageClassifier, ServerRunner, Threads

#: Wraps the session run (the Ray deployment batches concurrent requests into one run).
RunWrapper = Callable[[ServerRun], ServerRun]


def load_components(settings: TailSettings, wrap_run: RunWrapper | None = None) -> dict[str, Any]:
    """Load and verify the bundle, open both sessions, and warm each up once.

    ``run_server`` is what the split routes call: the session's own ``run``, or
    ``wrap_run`` of it, so batching changes no route.
    """
    bundle = load_bundle(settings.bundle)
    threads = Threads(settings.intra_op_threads, settings.inter_op_threads)
    server = ServerRunner(bundle, threads)
    offload = ImageClassifier(bundle, "offload", threads)
    zeros = np.zeros((1, *server.bottleneck_shape), dtype=np.float32)
    image = warmup_jpeg()
    coding_tables = bundle.coding_tables()
    warmup_ms = {
        "split": round(time_ms(lambda: server(zeros)), 3),
        "offload": round(time_ms(lambda: offload(image)), 3),
        # the entropy coder's compiled kernels (numba), so no envelope pays their compile
        "entropy_coder": round(rans.warm_up() if coding_tables is not None else 0.0, 3),
    }
    run_server = wrap_run(server.model.run) if wrap_run else server.model.run
    # a ladder's rates: each rate's server part (one session per distinct file; the default
    # rate's is the server above) and what its envelopes are decoded with
    rate_servers: dict[str, ServerRunner] = {}
    for rate in bundle.rates:
        path = bundle.rate_model_path(rate, "server")
        same = [r for r in [server, *rate_servers.values()] if r.model.path == path]
        rate_servers[rate] = same[0] if same else ServerRunner(bundle, threads, rate)
    ladder = {
        rate: (bundle.rate_coding_tables(rate), runner.bottleneck_shape)
        for rate, runner in rate_servers.items()
    }
    return {
        "bundle": bundle,
        # the bundle's entropy-coding tables (None: it takes version 1 envelopes only)
        "coding_tables": coding_tables,
        "rate_servers": rate_servers,
        "ladder": ladder or None,
        "server": server,
        "run_server": run_server,
        "offload": offload,
        "warmup_ms": warmup_ms,
    }


def create_app(settings: TailSettings | None = None, wrap_run: RunWrapper | None = None) -> FastAPI:
    """The tail app; ``settings`` default to the environment (``SPLITDNN_TAIL_*``).

    ``wrap_run`` replaces the server part's session run (see :func:`load_components`).
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        service = ServiceState()
        # also on app.state: a host that does not copy lifespan state into each request's
        # scope (Ray Serve) hands it over from there (services/tail/ray_app.py)
        app.state.service = service
        service.start(lambda: load_components(settings, wrap_run), settings.load_in_background)
        yield {"service": service}

    app = create_service_app(
        "tail",
        "Edge half of split inference: server part (split) and teacher (offload).",
        lifespan=lifespan,
        router=routes.router,
        settings=settings,
    )
    return app
