"""Prometheus metrics, one registry per app so several apps can live in one test process."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

#: Buckets from 1 ms to 10 s: stages range from a decode on the edge to a slow link upload.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The counters and histograms every service exports under ``/metrics``."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        count, time = self._counter, self._histogram
        self.requests = count(
            "splitdnn_requests", "HTTP requests by route and status.", "route", "method", "status"
        )
        self.request_seconds = time(
            "splitdnn_request_seconds", "Wall time of HTTP requests.", "route"
        )
        self.stage_seconds = time(
            "splitdnn_stage_seconds",
            "Time per pipeline stage (decode, head, transfer, tail, ...).",
            "stage",
        )
        self.bytes_in = count(
            "splitdnn_bytes_in", "Request body bytes received, by kind (envelope, image).", "kind"
        )
        self.bytes_sent = count(
            "splitdnn_bytes_sent", "Payload bytes sent over the device->edge link, by mode.", "mode"
        )
        self.modes = count(
            "splitdnn_mode_requests",
            "Classifications by mode used and whether it was a fallback.",
            "mode",
            "fallback",
        )

    def _counter(self, name: str, documentation: str, *labels: str) -> Counter:
        """``name`` in this app's registry, labelled by service and ``labels``."""
        return Counter(name, documentation, ["service", *labels], registry=self.registry)

    def _histogram(self, name: str, documentation: str, *labels: str) -> Histogram:
        """As :meth:`_counter`, with :data:`BUCKETS`."""
        return Histogram(
            name,
            documentation,
            ["service", *labels],
            buckets=BUCKETS,
            registry=self.registry,
        )

    def stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(self.service, stage).observe(seconds)


router = APIRouter(tags=["observability"])


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    responses={
        200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}
    },
)
def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
