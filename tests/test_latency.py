"""The latency model: EWMAs, the bandwidth estimate, and which mode auto picks."""

from __future__ import annotations

import json
import math

import pytest

from splitdnn.latency import MODES, BandwidthEstimator, Ewma, LatencyModel, Priors


def test_ewma_first_sample_replaces_the_prior_then_blends() -> None:
    e = Ewma(alpha=0.5, initial=100.0)
    assert e.get(0.0) == 100.0
    assert e.update(10.0) == 10.0
    assert e.update(20.0) == 15.0
    assert e.update(float("nan")) == 15.0  # garbage is ignored, not averaged in
    with pytest.raises(ValueError):
        Ewma(alpha=0.0)


def test_bandwidth_ewma_tracks_recent_transfers() -> None:
    bw = BandwidthEstimator(prior_bytes_per_s=1000.0, alpha=0.5)
    assert bw.bytes_per_s == 1000.0
    bw.observe(1_000_000, 1.0)
    assert bw.bytes_per_s == 1_000_000
    bw.observe(500_000, 1.0)
    assert bw.bytes_per_s == 750_000
    bw.observe(0, 1.0)  # nothing sent: no information
    bw.observe(100, float("inf"))
    assert bw.samples == 2


def test_tiny_transfers_cannot_claim_an_absurd_rate() -> None:
    bw = BandwidthEstimator(1.0, min_seconds=1e-3)
    bw.observe(1000, 0.0)
    assert bw.bytes_per_s == pytest.approx(1e6)


def test_fit_separates_overhead_from_rate() -> None:
    bw = BandwidthEstimator(1.0, window=16)
    overhead, rate = 0.004, 125_000.0  # 4 ms round trip, 1 Mbit/s
    for size in [400, 35_000, 400, 60_000, 400, 20_000]:
        bw.observe(size, overhead + size / rate)
    fitted = bw.fit()
    assert fitted is not None
    assert fitted[0] == pytest.approx(overhead, rel=1e-6)
    assert fitted[1] == pytest.approx(rate, rel=1e-6)
    assert bw.seconds_for(100_000) == pytest.approx(overhead + 100_000 / rate)


def test_fit_needs_payloads_of_different_sizes() -> None:
    bw = BandwidthEstimator(1.0)
    for _ in range(5):
        bw.observe(400, 0.004)
    assert bw.fit() is None
    assert bw.seconds_for(400) == pytest.approx(0.004)


def test_predictions_follow_the_formulas() -> None:
    model = LatencyModel(
        Priors(
            rate_bytes_per_s=1e6,
            local_ms=50,
            head_split_ms=10,
            tail_split_ms=5,
            head_offload_ms=1,
            tail_offload_ms=20,
            envelope_bytes=2000,
        )
    )
    p = model.predict(image_bytes=100_000)
    assert p["local"].total_ms == 50
    assert p["split"].total_ms == pytest.approx(10 + 2 + 5)
    assert p["offload"].total_ms == pytest.approx(1 + 100 + 20)
    assert p["split"].bytes == 2000 and p["offload"].bytes == 100_000
    assert model.choose(100_000)[0] == "split"


def test_measurements_replace_priors() -> None:
    model = LatencyModel(Priors(rate_bytes_per_s=1e6, envelope_bytes=2000))
    model.observe_stage("local", 0.001)
    model.observe_transfer(500, 0.0005, envelope=True)
    assert model.stage_ms("local") == pytest.approx(1.0)
    assert model.predict(1000)["split"].bytes == 500
    with pytest.raises(ValueError):
        model.observe_stage("gpu", 1.0)


@pytest.mark.parametrize(
    ("rate", "expected"),
    [(1e3, "local"), (1e6, "split"), (1e10, "offload")],
)
def test_auto_choice_moves_with_the_link_rate(rate: float, expected: str) -> None:
    priors = Priors(
        rate_bytes_per_s=rate,
        local_ms=40,
        head_split_ms=10,
        tail_split_ms=2,
        head_offload_ms=0,
        tail_offload_ms=3,
        envelope_bytes=4000,
    )
    assert LatencyModel(priors).choose(image_bytes=40_000)[0] == expected


def test_tail_down_rules_out_remote_modes_for_a_while() -> None:
    model = LatencyModel(Priors(local_ms=1000), tail_retry_s=5.0)
    assert model.choose(1000, now=0.0)[0] != "local"
    model.mark_tail_down(now=100.0)
    mode, predictions = model.choose(1000, now=101.0)
    assert mode == "local"
    assert math.isinf(predictions["split"].total_ms)
    assert predictions["split"].to_dict()["total"] is None  # JSON has no infinity
    assert model.choose(1000, now=106.0)[0] != "local"
    model.mark_tail_down(now=200.0)
    model.observe_transfer(100, 0.01)  # a success clears the mark
    assert model.tail_available(now=200.5)


def test_snapshot_is_json() -> None:
    model = LatencyModel()
    model.observe_transfer(1000, 0.01)
    snapshot = model.snapshot()
    json.dumps(snapshot)
    assert set(snapshot["stages_ms"]) >= {"local", "head_split", "tail_split"}
    assert set(MODES) == {"local", "split", "offload"}
