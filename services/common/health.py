"""Liveness and readiness, Open Inference Protocol style.

``/v2/health/live`` answers as soon as the process serves HTTP. ``/v2/health/ready``
answers 200 only after :class:`ServiceState` says the bundle is loaded and a warm-up
inference ran, so orchestrators route traffic to warm services only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from services.common.errors import NotReadyError
from services.common.openapi import problem_responses

log = logging.getLogger("splitdnn.services")


class ServiceState:
    """Loaded components of one service, filled in by a loader that may run in a thread."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self.error: str | None = None
        self.components: dict[str, Any] = {}
        self.started = time.monotonic()
        #: Run (in a worker thread) by ``/v2/health/ready`` once loaded: each returns why the
        #: service is not ready after all (e.g. the head's tail holds another bundle) or None.
        self.checks: list[Callable[[], str | None]] = []

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def load(self, loader: Callable[[], dict[str, Any]]) -> None:
        """Run ``loader`` (load bundle, build sessions, warm up) and mark ready."""
        try:
            self.components.update(loader())
        except Exception as exc:  # a bad bundle must show in /ready, not kill the server
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("loading failed: %s", self.error)
            return
        bundle = self.components.get("bundle")
        if bundle is not None:
            log.info(
                "loaded in %.1f s: bundle %s (%s, teacher %s cut at %s, tasks %s) from %s",
                time.monotonic() - self.started,
                bundle.id,
                bundle.name,
                bundle.manifest.teacher,
                bundle.manifest.split_module,
                ", ".join(bundle.manifest.tasks),
                bundle.path,
            )
        self._ready.set()

    def start(self, loader: Callable[[], dict[str, Any]], background: bool) -> None:
        if background:
            threading.Thread(target=self.load, args=(loader,), daemon=True).start()
        else:
            self.load(loader)

    def get(self, name: str) -> Any:
        """A loaded component; raises 503 until the service is ready."""
        if not self.ready:
            raise NotReadyError(self.error or "the bundle is still loading")
        return self.components[name]


router = APIRouter(prefix="/v2/health", tags=["health"])
#: Readiness from a :class:`ServiceState`; the gateway, which loads nothing, has its own.
ready_router = APIRouter(prefix="/v2/health", tags=["health"])


@router.get("/live", summary="The process answers HTTP")
async def live() -> dict[str, bool]:
    return {"live": True}


@ready_router.get(
    "/ready",
    summary="Bundle loaded and warmed up",
    responses=problem_responses({503: "still loading, or loading failed"}),
)
async def ready(request: Request) -> dict[str, Any]:
    state: ServiceState = request.state.service
    if not state.ready:
        raise NotReadyError(state.error or "the bundle is still loading")
    for check in state.checks:
        reason = await run_in_threadpool(check)
        if reason:
            raise NotReadyError(reason)
    return {"ready": True}
