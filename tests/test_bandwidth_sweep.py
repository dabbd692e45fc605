"""The sweep's arithmetic on tiny made-up rows: gains, auto vs best, the band, the floor."""

from __future__ import annotations

import pytest

from benchmarks.bandwidth_sweep import band, cell_of, derive, floors


def row(rate: float, **p50: float) -> dict:
    return {"rate_mbit": rate, "cells": [{"mode": m.replace("_", "-"), "p50_ms": v}
                                         for m, v in p50.items()]}  # fmt: skip


def test_gains_are_other_over_split_and_auto_is_compared_with_the_best_fixed_mode() -> None:
    r = row(5, local=180, split=100, offload=150, offload_fair=120, auto=105)
    derive(r)
    assert r["gain_vs_local"] == 1.8 and r["gain_vs_offload-fair"] == 1.2
    assert r["best_fixed"] == "split" and r["auto_vs_best"] == 1.05


def test_the_band_is_where_split_beats_local_and_fair_offload_with_interpolated_edges() -> None:
    rows = []
    for rate, fair in ((1, 4.0), (10, 2.0), (100, 0.5)):  # crosses 1 between 10 and 100
        r = row(rate, local=200, split=100, offload_fair=100 * fair)
        derive(r)
        rows.append(r)
    b = band(rows)
    assert b["grid_rates"] == [1, 10] and b["open_below"] and not b["open_above"]
    assert b["edges_mbit"][0] == 1
    # gain 2 -> 0.5 from 10 to 100 Mbit/s: 1 is crossed 2/3 of the way, in log rate
    assert b["edges_mbit"][1] == pytest.approx(10 ** (1 + 2 / 3), rel=1e-3)
    none = [row(1, local=50, split=100, offload_fair=300)]
    derive(none[0])
    assert band(none) == {"grid_rates": [], "width": None}


def record(i: int, latency: float, error: str | None = None) -> dict:
    return {"i": i, "latency_ms": latency, "late_ms": 0.0, "error": error, "mode": "split",
            "head_ms": 20.0, "head_model_ms": 15.0, "transfer_ms": 10.0, "tail_ms": 10.0,
            "bytes": 3_000}  # fmt: skip


def test_a_cell_reports_medians_overhead_and_what_is_not_the_model() -> None:
    records = [record(0, 60.0), record(1, 70.0), record(2, 0.0, error="http_503")]
    cell = cell_of("split", records, gap=0.1, payload_mbit=2.4)  # 3,000 B = 10 ms
    assert cell["n"] == 2 and cell["errors"] == {"http_503": 1}
    assert cell["limit_ms"] == 40.0 and cell["overhead_ratio"] == pytest.approx(1.625)
    assert cell["device_other_ms"] == 30.0  # 65 - 15 model - 10 link - 10 tail
    result = {"profiles": [{"rows": [{"rate_mbit": 2.4, "calibration": {"payload_mbit": 2.4},
                                      "cells": [cell]}]}]}  # fmt: skip
    floors(result)
    assert cell["below_floor"] == 0
    cell["records"][0]["latency_ms"] = 30.0  # faster than head + tail alone: impossible
    floors(result)
    assert cell["below_floor"] == 1


def test_the_public_path_asks_classify_and_its_offload_is_the_head_setting() -> None:
    from benchmarks.bandwidth_sweep import request_params

    assert request_params("split", "classify") == (
        "/classify",
        {"mode": "split", "fallback": "false"},
    )
    assert request_params("offload-fair", "classify")[1]["mode"] == "offload"
    assert request_params("offload-fair", "head") == (
        "/infer/offload",
        {"reencode": "true", "fallback": "false"},
    )
