"""An envelope upload over a tbf-shaped veth link takes as long as the configured rate says.

This checks the measuring instrument of ``benchmarks/bandwidth_sweep.py``: if tbf shapes
the link, the head's transfer times (and the bandwidth estimate fed by them) are real.
"""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from netns_helpers import http_sink

from benchmarks.netns import burst_bytes, calibrate, shaped_link, why_unavailable
from splitdnn import wire
from splitdnn.latency import BandwidthEstimator

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(why_unavailable() is not None, reason=str(why_unavailable())),
]


@pytest.mark.parametrize("rate_mbit", [2.0, 8.0])
def test_envelope_upload_runs_at_the_shaped_rate(rate_mbit: float) -> None:
    tensor = np.random.default_rng(0).normal(size=(1, 32, 48, 48)).astype(np.float32)
    envelope = wire.encode(tensor, bundle_id="0" * 16)  # ~295 kB, incompressible
    expected_s = len(envelope) * 8 / (rate_mbit * 1e6)
    with shaped_link(rate_mbit, name="sdtest") as link, http_sink(link, 18765) as url:
        estimator = BandwidthEstimator(prior_bytes_per_s=1.0, alpha=1.0)
        rates = []
        with httpx.Client(timeout=30) as client:
            for _ in range(3):
                start = time.perf_counter()
                response = client.post(url, content=envelope)
                elapsed = time.perf_counter() - start
                assert response.text == str(len(envelope))
                rates.append(estimator.observe(len(envelope), elapsed))
    # The link caps the rate; a busy CPU can only lower it, so the best upload is the measure.
    measured_mbit = max(rates) * 8 / 1e6
    # TCP/IP headers cost ~4 %; tbf's burst lets the first ~16 kB through at once.
    assert 0.8 * rate_mbit <= measured_mbit <= 1.1 * rate_mbit, (measured_mbit, expected_s)


def test_calibrated_rate_is_within_ten_percent_of_the_set_rate() -> None:
    with shaped_link(4.0, name="sdtcal") as link:
        result = calibrate(link, nbytes=150_000, port=18766)
    assert 0.9 * 4.0 <= result["wire_mbit"] <= 1.1 * 4.0, result


@pytest.mark.parametrize("rate_mbit", [1.0, 4.0])
def test_a_small_request_is_not_faster_than_its_bytes_allow(rate_mbit: float) -> None:
    """A 3.4 kB envelope (split's size) must be shaped too: one-packet bucket, no TSO."""
    body = bytes(3400)
    # the bucket may let its first packet through at once; the rest waits for tokens
    floor_s = (len(body) - burst_bytes(rate_mbit)) * 8 / (rate_mbit * 1e6)
    with (
        shaped_link(rate_mbit, name="sdtsmall") as link,
        http_sink(link, 18767) as url,
        httpx.Client(timeout=30) as client,
    ):
        client.post(url, content=b"x")  # connection up
        times = []
        for _ in range(3):
            start = time.perf_counter()
            client.post(url, content=body)
            times.append(time.perf_counter() - start)
    assert min(times) >= floor_s, (times, floor_s)


def test_wait_ready_sees_a_service_started_in_a_namespace() -> None:
    """The sweep's tail listens in its own network namespace, where the host's /proc/net
    does not see the socket: readiness looks in the process's own tables (it waited
    forever before)."""
    from splitdnn import serve

    with shaped_link(100.0, name="sdtready") as link:
        argv = [sys.executable, "-m", "http.server", "18770", "--bind", link.ns_ip]
        process = subprocess.Popen(
            link.exec_argv(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            assert serve.wait_ready(f"http://{link.ns_ip}:18770/", 20, process)
        finally:
            serve.stop_processes([process])
