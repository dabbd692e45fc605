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
    # local 40 ms, split 10 + 2 ms, offload 0 + 3 ms: each wins at some link rate
    stages = {"local": 40, "head_split": 10, "tail_split": 2, "head_offload": 0, "tail_offload": 3}
    compute = {f"{stage}_ms": ms for stage, ms in stages.items()}
    priors = Priors(rate_bytes_per_s=rate, envelope_bytes=4000, **compute)
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


def test_a_small_payloads_overhead_does_not_slow_the_estimate_for_large_ones() -> None:
    """Envelopes (3 kB) pay a 5 ms round trip that dominates their time; a 30 kB photo on
    the same 10 Mbit/s link must not be predicted at the envelope's effective rate."""
    bw = BandwidthEstimator(prior_bytes_per_s=1.0, alpha=0.5)
    rate, overhead = 1.25e6, 0.005
    for _ in range(5):
        bw.observe(3_400, overhead + 3_400 / rate)
    bw.observe(30_000, overhead + 30_000 / rate)
    assert bw.size_class(3_400) != bw.size_class(30_000)
    assert bw.seconds_for(3_400) == pytest.approx(overhead + 3_400 / rate)
    assert bw.seconds_for(31_000) == pytest.approx((overhead + 30_000 / rate) * 31 / 30)


def test_every_nth_auto_decision_refreshes_the_mode_measured_longest_ago() -> None:
    model = LatencyModel(Priors(local_ms=10, head_split_ms=50, tail_split_ms=50), explore_every=5)
    chosen = [model.choose(30_000)[0] for _ in range(10)]
    assert chosen.count("local") == 8
    assert chosen[4] != "local" and chosen[9] != "local"
    model.observe_stage("tail_split", 0.1)  # split just ran (on the 5th): offload is stalest
    assert {chosen[4], chosen[9]} <= {"split", "offload"}


def test_auto_never_chooses_a_mode_it_is_not_allowed_even_when_exploring() -> None:
    """Split is by far the fastest predicted; allowed only local and offload, auto never
    serves it, neither as the best nor on an exploration turn."""
    model = LatencyModel(Priors(local_ms=100, head_split_ms=1, tail_split_ms=1), explore_every=2)
    assert model.choose(30_000)[0] == "split"
    chosen = {model.choose(30_000, allowed=("local", "offload"))[0] for _ in range(20)}
    assert chosen == {"local", "offload"}
    with pytest.raises(ValueError, match="non-empty subset"):
        model.choose(30_000, allowed=())
    with pytest.raises(ValueError, match="non-empty subset"):
        model.choose(30_000, allowed=("nonn",))


class SimulatedLink:
    """Times the head would measure: local 100 ms; split 40 + envelope + 20; offload
    20 + photo + 30 (ms), the link with a 3 ms overhead per request."""

    def __init__(self, mbit: float) -> None:
        self.mbit = mbit

    def transfer_s(self, nbytes: int) -> float:
        return 0.003 + nbytes * 8 / (self.mbit * 1e6)

    def serve(self, model: LatencyModel, mode: str) -> float:
        if mode == "local":
            model.observe_stage("local", 0.1)
            return 100.0
        if mode == "split":
            t = self.transfer_s(3_400)
            model.observe_stage("head_split", 0.04)
            model.observe_stage("tail_split", 0.02)
            model.observe_transfer(3_400, t, envelope=True)
            return 60 + 1000 * t
        t = self.transfer_s(30_000)
        model.observe_stage("head_offload", 0.02)
        model.observe_stage("tail_offload", 0.03)
        model.observe_transfer(30_000, t)
        return 50 + 1000 * t


def best_mode(link: SimulatedLink) -> str:
    return min(
        MODES, key=lambda m: SimulatedLink(link.mbit).serve(LatencyModel(explore_every=0), m)
    )


def test_auto_follows_a_link_that_changes_both_ways_within_bounded_requests() -> None:
    link = SimulatedLink(100.0)  # offload fastest
    model = LatencyModel(Priors(rate_bytes_per_s=1e6 / 8), explore_every=10)
    for mode in MODES:  # a warm-up that tried each mode once
        link.serve(model, mode)
    # slower link: the mode in use shows it at once; faster: exploration must find it,
    # within two rounds of exploring (two other modes, every 10th decision)
    for phase_mbit, bound in ((100.0, 3), (0.5, 8), (100.0, 2 * 10 + 5)):
        link.mbit = phase_mbit
        target = best_mode(link)
        chosen = []
        for _ in range(60):
            mode = model.choose(30_000)[0]
            link.serve(model, mode)
            chosen.append(mode)
        first = next(i for i, m in enumerate(chosen) if m == target)
        assert first < bound, (phase_mbit, target, chosen[:30])
        settled = chosen[bound:]
        assert settled.count(target) >= 0.85 * len(settled), (phase_mbit, chosen)
