"""``mode=nonn``: fan the image out to the K NoNN members, join their features, answer.

Why the join runs here: it is one small matrix (1,280 × 101 for K = 2, 0.5 MB) and the
gateway is where the members' answers meet anyway. Joining in a member would make that
member a hub (a second hop, and the answer would die with it); joining in the tail would add
a hop to every request. numpy runs it in microseconds, so the gateway still loads no ONNX
model, only ``join.npz`` of the NoNN bundle (verified against ``nonn.json``).

Every member call has its own deadline (``member_timeout_s``); all run concurrently, so the
answer waits for the slowest member at most that long, never forever. A member that is down,
late or answers something the wire format refuses is *missing*: with ``nonn_degraded`` the
join puts that member's training-mean features in its place and the answer says
``degraded: true`` and which members are missing; without it, 503 problem+json.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from gateway.settings import GatewaySettings
from services.common.context import REQUEST_ID, RequestContext
from services.common.errors import UpstreamUnavailableError
from services.common.upstream import bearer
from splitdnn import tls, wire
from splitdnn.errors import SplitDNNError, UnknownTaskError
from splitdnn.nonn.bundle import Join, NoNNBundle, load_nonn_bundle
from splitdnn.runtime import top_k

COMPUTE_HEADER = "X-Compute-Ms"


@dataclass
class NoNNState:
    """What the gateway holds for ``mode=nonn``: the bundle, its join, the member URLs."""

    bundle: NoNNBundle
    join: Join
    urls: list[str]
    client: httpx.AsyncClient
    degraded: bool
    timeout_s: float
    headers: dict[str, str] = field(default_factory=dict)
    #: The gateway shows a TLS client certificate (the members may ask for one).
    client_cert: bool = False


def load_state(settings: GatewaySettings, client: httpx.AsyncClient) -> NoNNState | None:
    """The NoNN state when a bundle and member URLs are configured, else None (the mode then
    answers 422). A bundle whose member count differs from the URLs is refused at start."""
    if settings.nonn_bundle is None or not settings.member_urls:
        return None
    bundle = load_nonn_bundle(settings.nonn_bundle)
    if len(bundle.manifest.members) != len(settings.member_urls):
        raise SplitDNNError(
            f"the NoNN bundle has {len(bundle.manifest.members)} members, "
            f"SPLITDNN_GATEWAY_MEMBER_URLS lists {len(settings.member_urls)}"
        )
    headers = bearer(settings.token)
    return NoNNState(
        bundle,
        bundle.join(),
        [u.rstrip("/") for u in settings.member_urls],
        client,
        settings.nonn_degraded,
        settings.member_timeout_s,
        headers,
        settings.tls_cert is not None,
    )


async def nonn_ready(state: NoNNState) -> bool:
    """Whether ``mode=nonn`` can answer now: every member ready, or (degraded answers
    allowed) at least one."""

    async def one(url: str) -> bool:
        try:
            response = await state.client.get(f"{url}/v2/health/ready", timeout=1.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    ready = await asyncio.gather(*(one(url) for url in state.urls))
    return any(ready) if state.degraded else all(ready)


async def _ask(
    state: NoNNState, index: int, image: bytes, quantisation: str | None, request_id: str
) -> dict[str, Any]:
    """One member's answer: its features, or why there are none (never raises)."""
    url = state.urls[index]
    channels = state.bundle.manifest.members[index].channels
    record: dict[str, Any] = {"index": index, "url": url, "ok": False, "bytes_sent": 0}
    start = time.perf_counter()
    try:
        response = await state.client.post(
            f"{url}/v2/features",
            content=image,
            params={"quantisation": quantisation} if quantisation else None,
            headers={
                "Content-Type": "application/octet-stream",
                REQUEST_ID: request_id,
                **state.headers,
            },
            timeout=httpx.Timeout(state.timeout_s, connect=min(1.0, state.timeout_s)),
        )
    except httpx.TimeoutException as exc:
        record["error"] = f"timed out after {state.timeout_s} s ({type(exc).__name__})"
        if not isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout)):
            record["bytes_sent"] = len(image)  # connected: the photo may have gone up
    except httpx.HTTPError as exc:
        record["error"] = (
            f"unreachable: {tls.explain(exc, url, state.client_cert) or type(exc).__name__}"
        )
    else:
        record["round_trip_ms"] = round((time.perf_counter() - start) * 1000, 3)
        record["bytes_sent"], record["bytes_received"] = len(image), len(response.content)
        if response.status_code != 200:
            record["error"] = f"answered {response.status_code}"
            record["status"] = response.status_code
        else:
            try:
                _, features = wire.decode_array(
                    response.content,
                    bundle_id=state.bundle.id,
                    sample_shape=(channels,),
                    max_batch=1,
                    max_envelope_bytes=1 << 20,
                    max_raw_bytes=channels * 4,
                )
            except SplitDNNError as exc:
                record["error"] = f"bad envelope: {exc}"
            else:
                record["ok"] = True
                record["features"] = features
                try:
                    record["compute_ms"] = float(response.headers.get(COMPUTE_HEADER, "nan"))
                except ValueError:
                    record["compute_ms"] = None
    record.setdefault("round_trip_ms", round((time.perf_counter() - start) * 1000, 3))
    return record


async def classify_nonn(
    state: NoNNState | None,
    image: bytes,
    task: str | None,
    k: int,
    quantisation: str | None,
    context: RequestContext,
) -> dict[str, Any]:
    """The answer of ``mode=nonn`` (same keys as the head's answers, plus ``members``); a
    ``task`` other than the NoNN bundle's one task is refused (422), as the head refuses one."""
    if state is None:
        from services.common.errors import InvalidRequestError

        raise InvalidRequestError(
            "mode=nonn is not configured: set SPLITDNN_NONN_BUNDLE and SPLITDNN_GATEWAY_MEMBER_URLS"
        )
    if task is not None and task != state.bundle.manifest.task:
        raise UnknownTaskError(
            f"unknown task {task!r}; the NoNN bundle has {[state.bundle.manifest.task]}"
        )
    answers = await asyncio.gather(
        *(_ask(state, i, image, quantisation, context.request_id) for i in range(len(state.urls)))
    )
    missing = [a["index"] for a in answers if not a["ok"]]
    if missing and (not state.degraded or len(missing) == len(answers)):
        reasons = "; ".join(
            f"member {a['index']} ({a['url']}): {a['error']}" for a in answers if not a["ok"]
        )
        raise UpstreamUnavailableError(
            f"NoNN members unavailable: {reasons}",
            members=[_public(a) for a in answers],
        )
    start = time.perf_counter()
    logits = state.join([a.get("features") for a in answers])
    join_ms = (time.perf_counter() - start) * 1000
    ok = [a for a in answers if a["ok"]]
    slowest = max(ok, key=lambda a: a["round_trip_ms"])
    compute = slowest.get("compute_ms") or 0.0
    manifest = state.bundle.manifest
    return {
        "mode": "nonn",
        "requested_mode": "nonn",
        "task": manifest.task,
        "top_k": [r.to_dict() for r in top_k(logits[0], manifest.labels, k)],
        "timings_ms": {
            "head": 0.0,
            "transfer": round(max(slowest["round_trip_ms"] - compute, 0.0), 3),
            "tail": round(compute, 3),
            "join": round(join_ms, 3),
        },
        # the photo goes up to every member (K copies on the link): what the device sends
        "bytes_sent": sum(a["bytes_sent"] for a in answers),
        "bytes_received": sum(a.get("bytes_received", 0) for a in ok),
        "encoding": {"quantisation": quantisation or "member default", "compression": "none"},
        "bundle": state.bundle.id,
        "model": manifest.name,
        "fallback": bool(missing),
        "degraded": bool(missing),
        "missing_members": missing,
        "members": [_public(a) for a in answers],
    }


def _public(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "features"}
