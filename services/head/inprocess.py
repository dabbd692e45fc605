"""The head called in-process, for a gateway in the same process (they share a device).

Through HTTP, every classification on the device is parsed twice (gateway, then head), hops
once over loopback and crosses two servers' middleware; on a quarter core that costs more
than the link. :class:`InProcessHead` answers what the head's ``/infer/{mode}`` would
answer (:func:`services.head.routes.infer_answer`), from the same pipeline, in a worker
thread. The head's token guards its HTTP port against other callers; a caller in the same
process needs none.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool

from services.common.context import RequestContext
from services.common.errors import UpstreamUnavailableError
from services.common.health import ServiceState
from services.common.metrics import Metrics
from services.head.pipeline import HeadPipeline
from services.head.routes import infer_answer, latency_answer
from services.head.settings import HeadSettings
from splitdnn.bundle import describe


class InProcessHead:
    """The head's pipeline behind the calls a gateway makes (classify, ready, status)."""

    def __init__(self, service: ServiceState, settings: HeadSettings, metrics: Metrics) -> None:
        self.service, self.settings, self.metrics = service, settings, metrics

    async def infer(
        self,
        mode: str,
        image: bytes,
        context: RequestContext,
        *,
        task: str | None = None,
        k: int | None = None,
        fallback: bool = True,
        quantisation: str | None = None,
        compression: str | None = None,
        max_drop: float | None = None,
        rate: str | None = None,
    ) -> dict[str, Any]:
        """The head's answer to ``/infer/{mode}``; its stages are recorded in ``context``.
        Raises the head's errors (503 while loading, 404 unknown task, ...) unchanged."""
        pipeline: HeadPipeline = self.service.get("pipeline")
        return await run_in_threadpool(
            infer_answer, pipeline, self.settings, mode, image, task, k, fallback, context,
            self.metrics, quantisation, compression, None, max_drop, rate,
        )  # fmt: skip

    async def ready(self) -> bool:
        """Loaded, warmed up, and the tail (if reachable) holds the same bundle."""
        if not self.service.ready:
            return False
        for check in self.service.checks:
            if await run_in_threadpool(check):
                return False
        return True

    async def tail_ready(self) -> bool:
        """The tail answers its ``/v2/health/ready`` with 200 (through the head's client)."""
        if not self.service.ready:
            return False
        pipeline: HeadPipeline = self.service.get("pipeline")

        def ask() -> bool:
            try:
                return pipeline.tail.send("GET", "/v2/health/ready", timeout=1.0).status == 200
            except UpstreamUnavailableError:
                return False

        return await run_in_threadpool(ask)

    def bundle(self) -> dict[str, Any] | None:
        """What the head's ``/bundle`` answers (:func:`splitdnn.bundle.describe`), or None
        while loading."""
        if not self.service.ready:
            return None
        pipeline: HeadPipeline = self.service.get("pipeline")
        return describe(pipeline.bundle, pipeline.local_tasks)

    def latency(self, image_bytes: int = 50_000) -> dict[str, Any] | None:
        """What the head's ``/latency`` answers, or None while loading."""
        if not self.service.ready:
            return None
        return latency_answer(self.service.get("pipeline"), image_bytes)
