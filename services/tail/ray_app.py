"""The tail as a Ray Serve deployment: the same FastAPI app, with replicas and batching.

Many devices share one edge. Ray Serve gives the tail what one uvicorn process cannot:
replicas on every node of a cluster, autoscaling on ongoing requests, a replica restarted
when it dies, and dynamic batching. Nothing here is a second copy of the routes: each
replica builds the app of :mod:`services.tail.app` (``@serve.ingress``) and replaces only
its session run (``run_server``) with a ``@serve.batch`` one that joins concurrent
requests into one ONNX Runtime run. The batching wait happens inside the route's ``tail``
stage, so the ``timings_ms.compute`` the head reads (and auto mode's tail estimate) includes
it.

Run: ``splitdnn serve tail --ray [--replicas N] [--address HOST:PORT]``, or from a KubeRay
``RayService`` with ``import_path: services.tail.ray_app:app`` (``deploy/k8s/``).
Environment, besides the tail's own ``SPLITDNN_TAIL_*``: ``SPLITDNN_TAIL_BATCH_MAX_SIZE``
(1 turns batching off) and ``SPLITDNN_TAIL_BATCH_WAIT_MS``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Mapping
from typing import Any

import anyio.from_thread
import numpy as np
from fastapi import FastAPI
from pydantic import Field
from ray import serve
from starlette.types import ASGIApp, Receive, Scope, Send

from services.tail.app import RunWrapper, create_app
from services.tail.routes import ServerRun
from services.tail.settings import TailSettings
from splitdnn.errors import ConfigError

APP_NAME = "splitdnn-tail"
DEPLOYMENT = "Tail"
#: What replicas inherit from the process that deploys them (Ray workers do not see the
#: driver's environment).
ENV_PREFIXES = ("SPLITDNN_",)
ENV_NAMES = ("PYTHONPATH",)


class RayTailSettings(TailSettings):
    """The tail's settings plus the batcher's (``SPLITDNN_TAIL_BATCH_*``)."""

    batch_max_size: int = Field(
        default=16,
        ge=1,
        le=256,
        description="Most requests joined into one ONNX Runtime run; 1 turns batching off.",
    )
    batch_wait_ms: float = Field(
        default=5.0,
        ge=0,
        le=1000,
        description="Longest a request waits for others to fill its batch (ms).",
    )


def batching(max_batch_size: int, wait_s: float) -> RunWrapper:
    """A ``run_server`` wrapper joining concurrent requests into one session run.

    The routes are plain ``def`` (FastAPI's thread pool); each hands its tensor back to the
    replica's event loop, where ``@serve.batch`` collects up to ``max_batch_size`` requests
    or waits ``wait_s``, runs them as one batch in a worker thread (the loop stays free for
    health checks) and gives every request its own rows.
    """

    def wrap(run: ServerRun) -> ServerRun:
        if max_batch_size <= 1:
            return run

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=wait_s)
        async def batched(tensors: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
            outputs = await asyncio.to_thread(run, np.concatenate(tensors))
            bounds = np.cumsum([len(t) for t in tensors])[:-1]
            parts = {name: np.split(value, bounds) for name, value in outputs.items()}
            return [{name: p[i] for name, p in parts.items()} for i in range(len(tensors))]

        def run_batched(tensor: np.ndarray) -> dict[str, np.ndarray]:
            return anyio.from_thread.run(batched, tensor)

        return run_batched

    return wrap


class _LifespanState:
    """Give each request the lifespan's ``service``: uvicorn copies the lifespan state into
    every request's scope, Ray Serve's replica does not."""

    def __init__(self, app: ASGIApp, owner: FastAPI) -> None:
        self.app, self.owner = app, owner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = getattr(self.owner.state, "service", None)
        if scope["type"] in ("http", "websocket") and service is not None:
            scope.setdefault("state", {}).setdefault("service", service)
        await self.app(scope, receive, send)


def build_app() -> FastAPI:
    """One replica's app: the tail's, loading in the foreground (Ray sends traffic once the
    lifespan is done, so only to a loaded replica) and with the batching run."""
    settings = RayTailSettings().model_copy(update={"load_in_background": False})
    wrap = batching(settings.batch_max_size, settings.batch_wait_ms / 1000)
    app = create_app(settings, wrap_run=wrap)
    app.add_middleware(_LifespanState, owner=app)
    return app


@serve.deployment(
    name=DEPLOYMENT,
    max_ongoing_requests=16,
    max_queued_requests=64,
    health_check_period_s=2,
    health_check_timeout_s=10,
    graceful_shutdown_timeout_s=5,
)
@serve.ingress(build_app)
class Tail:
    """The tail deployment; its routes are the FastAPI app's (``build_app``)."""

    def check_health(self) -> None:
        """A replica whose bundle failed to load is unhealthy, so Ray replaces it."""
        service = getattr(self.app.state, "service", None)  # type: ignore[attr-defined]
        if service is not None and service.error:
            raise RuntimeError(service.error)


def replica_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``SPLITDNN_*`` settings (and PYTHONPATH) replicas need from the deploying process."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.startswith(ENV_PREFIXES) or k in ENV_NAMES}


def deployment_options(
    replicas: int = 1,
    max_replicas: int | None = None,
    max_ongoing_requests: int = 16,
    target_ongoing_requests: float = 8,
    replica_cpus: float = 1.0,
    env: Mapping[str, str] | None = None,
    max_queued_requests: int = 64,
) -> dict[str, Any]:
    """``Tail.options(...)``: a fixed replica count, or autoscaling on ongoing requests from
    ``replicas`` to ``max_replicas``."""
    options: dict[str, Any] = {
        "max_ongoing_requests": max_ongoing_requests,
        # a bounded queue: past it Ray answers 503 at once (the head falls back to local),
        # as the plain tail's in-flight limit does; unbounded, an overload measured here
        # (benchmarks/README.md) grew a backlog of minutes and cut throughput to a fraction
        "max_queued_requests": max_queued_requests,
        "ray_actor_options": {
            "num_cpus": replica_cpus,
            "runtime_env": {"env_vars": dict(replica_env() if env is None else env)},
        },
    }
    if max_replicas is not None and max_replicas > replicas:
        options["autoscaling_config"] = {
            "min_replicas": replicas,
            "initial_replicas": replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": target_ongoing_requests,
        }
    else:
        options["num_replicas"] = replicas
    return options


def run(
    *,
    host: str = "127.0.0.1",
    port: int = 8001,
    address: str | None = None,
    replicas: int = 1,
    max_replicas: int | None = None,
    max_ongoing_requests: int = 16,
    replica_cpus: float = 1.0,
    num_cpus: int | None = None,
    object_store_mb: int = 200,
    blocking: bool = True,
) -> None:
    """Deploy the tail on Ray Serve and serve HTTP on ``host:port`` (the head node's proxy).

    Without ``address`` a local one-node cluster starts in this process (``num_cpus``
    logical CPUs, a small object store); with it, the tail joins that cluster. The tail's
    in-flight limit follows ``max_ongoing_requests``: Ray queues the rest at the proxy.
    """
    import ray

    os.environ.setdefault("SPLITDNN_TAIL_MAX_IN_FLIGHT", str(max_ongoing_requests))
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            object_store_memory=object_store_mb * 1024 * 1024,
            include_dashboard=False,
            log_to_driver=False,
        )
    serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port})
    options = deployment_options(
        replicas, max_replicas, max_ongoing_requests, replica_cpus=replica_cpus
    )
    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C, through the finally below
    try:
        serve.run(
            Tail.options(**options).bind(),
            name=APP_NAME,
            route_prefix="/",
            blocking=blocking,
        )
    except KeyboardInterrupt:
        pass
    finally:
        if blocking and not address:  # our own cluster goes with us; a joined one stays
            serve.shutdown()
            ray.shutdown()


def status(address: str = "auto") -> dict[str, Any]:
    """The tail's deployments and replica counts as Ray Serve reports them, read through the
    cluster's GCS at ``address`` (``auto``: the cluster this machine started last, found under
    ``RAY_TMPDIR``). Ray's own ``serve status`` asks the dashboard, which ``splitdnn serve
    tail --ray`` does not start: it ends in a connection traceback there.

    Refuses (:class:`ConfigError`) at once when nothing listens at ``address`` (``ray.init``
    would retry for minutes) or no cluster is found, and when Serve runs no application.
    """
    import ray

    _check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except ConnectionError as exc:
        raise ConfigError(
            f"no Ray cluster at {address!r} ({exc}). A local `splitdnn serve tail --ray` is "
            "found with the RAY_TMPDIR it was started with; a cluster of its own by --address "
            "HOST:PORT (its GCS port, 6379 by default)"
        ) from None
    try:
        state = serve.status()
    finally:
        ray.shutdown()
    applications: dict[str, Any] = {}
    for name, application in state.applications.items():
        deployments = {}
        for deployment_name, deployment in application.deployments.items():
            replicas = {str(k): int(v) for k, v in deployment.replica_states.items()}
            deployments[deployment_name] = {
                "status": str(deployment.status),
                "replicas": replicas,
                "running": replicas.get("RUNNING", 0),
                "message": deployment.message,
            }
        applications[name] = {"status": str(application.status), "deployments": deployments}
    if not applications:
        raise ConfigError(
            f"the Ray cluster at {address!r} runs no Serve application: start the tail with "
            "`splitdnn serve tail --ray --address HOST:PORT`"
        )
    return {"address": address, "applications": applications}


def _check_reachable(address: str) -> None:
    """For ``HOST:PORT``, a TCP connection first: a clear refusal instead of a long retry."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local" or a ray:// address: Ray resolves those itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
    except OSError as exc:
        raise ConfigError(
            f"nothing answers at {address} ({exc.strerror or exc}): is the Ray head node "
            "running, and is that its GCS port (6379 unless `ray start --port` said otherwise)?"
        ) from None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


#: For ``serve run`` and KubeRay's ``serveConfigV2`` (``import_path``): replicas, autoscaling
#: and the environment come from that config.
app = Tail.bind()
