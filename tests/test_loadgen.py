"""The open-loop load generator: fixed schedule, latency from the intended send time."""

from __future__ import annotations

import threading
import time

import pytest

from benchmarks.loadgen import Reply, percentile, run, schedule


def test_fixed_schedule_is_evenly_spaced_and_poisson_has_the_rate() -> None:
    assert schedule(4.0, 4, "fixed") == [0.0, 0.25, 0.5, 0.75]
    times = schedule(100.0, 5000, "poisson", seed=1)
    assert times == sorted(times)
    assert times[-1] / len(times) == pytest.approx(0.01, rel=0.05)
    assert schedule(100.0, 50, "poisson", seed=1) == schedule(100.0, 50, "poisson", seed=1)
    with pytest.raises(ValueError):
        schedule(1.0, 3, "bursty")


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([], 50) is None


def test_a_slow_server_does_not_slow_the_arrivals_and_queueing_counts() -> None:
    """One worker, 20 ms service, requests every 5 ms: a closed loop would send at 50/s and
    see 20 ms; open loop keeps offering 200/s and the backlog shows in the latency."""
    lock = threading.Lock()

    def send(i: int) -> Reply:
        with lock:
            time.sleep(0.02)
        return Reply(None, {"n": i})

    summary = run(send, rate=200.0, count=20, arrivals="fixed", workers=4)
    assert summary["requests"] == summary["succeeded"] == 20
    assert summary["offered_rate_measured"] == pytest.approx(200.0, rel=0.01)
    assert summary["achieved_rate"] < 60  # the server's capacity, not the offer
    assert summary["max_ms"] > 200  # the last request queued behind the others
    assert summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    assert [r["n"] for r in summary["records"]] == list(range(20))


def test_errors_are_counted_by_class() -> None:
    def send(i: int) -> Reply:
        if i % 3 == 0:
            raise TimeoutError("late")
        if i % 3 == 1:
            return Reply("http_503")
        return Reply()

    summary = run(send, rate=1000.0, count=9)
    assert summary["errors"] == {"TimeoutError": 3, "http_503": 3}
    assert summary["succeeded"] == 3


def test_interleaved_sends_every_mode_per_input_one_warm_gap_apart() -> None:
    from benchmarks.loadgen import interleaved

    plan, times = interleaved({"local": 0.1, "split": 0.05}, 2)
    assert plan == [("local", 0), ("split", 0), ("local", 1), ("split", 1)]
    assert times == pytest.approx([0.0, 0.1, 0.15, 0.25])
