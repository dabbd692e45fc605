"""Auto follows a real link whose rate tc changes mid-run, within a bounded number of requests.

Payloads really cross a tbf-shaped veth (an envelope-sized and a photo-sized body to a sink
in a network namespace); compute times are fixed constants, so the only thing that changes
is the link: fast (offload best), slow (split best), fast again (exploration must notice).
"""

from __future__ import annotations

import time

import httpx
import pytest
from netns_helpers import http_sink

from benchmarks.netns import shaped_link, why_unavailable
from splitdnn.latency import LatencyModel, Priors

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(why_unavailable() is not None, reason=str(why_unavailable())),
]

ENVELOPE, PHOTO = bytes(3_400), bytes(30_000)
#: (head, tail) compute seconds per mode: local 100 ms; split 40 + 20; offload 5 + 25.
COMPUTE = {"local": (0.100, 0.0), "split": (0.040, 0.020), "offload": (0.005, 0.025)}


def serve(model: LatencyModel, client: httpx.Client, url: str, mode: str) -> float:
    head, tail = COMPUTE[mode]
    if mode == "local":
        model.observe_stage("local", head)
        return head
    body = ENVELOPE if mode == "split" else PHOTO
    start = time.perf_counter()
    client.post(url, content=body)
    seconds = time.perf_counter() - start
    model.observe_stage(f"head_{mode}", head)
    model.observe_stage(f"tail_{mode}", tail)
    model.observe_transfer(len(body), seconds, envelope=mode == "split")
    return head + seconds + tail


def test_auto_switches_when_tc_changes_the_rate() -> None:
    explore = 10
    model = LatencyModel(Priors(rate_bytes_per_s=10e6 / 8), explore_every=explore)
    # (rate, mode that is fastest there, requests within which auto must pick it)
    phases = [(50.0, "offload", 3), (1.0, "split", 8), (50.0, "offload", 2 * explore + 5)]
    log = []
    with (
        shaped_link(50.0, name="sdtauto") as link,
        http_sink(link, 18768) as url,
        httpx.Client(timeout=30) as client,
    ):
        for mode in COMPUTE:  # warm-up: each mode once
            serve(model, client, url, mode)
        for rate, target, bound in phases:
            link = link.set_rate(rate)
            chosen = []
            for _ in range(bound + 10):
                mode = model.choose(len(PHOTO))[0]
                serve(model, client, url, mode)
                chosen.append(mode)
            log.append((rate, chosen))
            first = next((i for i, m in enumerate(chosen) if m == target), None)
            assert first is not None and first < bound, log
            tail = chosen[first:]
            assert tail.count(target) >= 0.75 * len(tail), log
