"""The sweep's arithmetic on tiny made-up rows: gains, auto vs best, the band, the floor."""

from __future__ import annotations

import pytest

from benchmarks.bandwidth_sweep import (
    _physics_lines,
    against_physics,
    band,
    cell_of,
    compare_runs,
    derive,
    floors,
)


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


def physics_row(rate: float, split: float, limit: float, auto: float, local: float) -> dict:
    r = row(rate, local=local, split=split, offload_fair=500, auto=auto)
    cells = {c["mode"]: c for c in r["cells"]}
    cells["split"].update(limit_ms=limit, overhead_ratio=round(split / limit + 0.01, 3))
    return r


def test_split_is_set_against_physics_and_auto_against_the_best_fixed_mode() -> None:
    f = against_physics(physics_row(5, split=110, limit=100, auto=84, local=80))
    assert f["split_p50_ms"] == 110 and f["physics_ms"] == 100
    assert f["p50_over_physics"] == 1.1 and f["overhead_ratio"] == 1.11
    assert f["best_fixed"] == "local" and f["best_fixed_p50_ms"] == 80
    assert f["auto_vs_best"] == 1.05
    assert f["best_allowed"] == "local" and f["auto_vs_best_allowed"] == 1.05
    missing = against_physics(row(5, local=80))
    assert missing["p50_over_physics"] is None and missing["auto_vs_best"] is None


def test_the_report_counts_only_rates_from_1_to_50_against_the_bounds() -> None:
    rows = [
        physics_row(0.5, split=300, limit=100, auto=400, local=200),  # outside: not counted
        physics_row(1, split=105, limit=100, auto=100, local=200),
        physics_row(50, split=150, limit=100, auto=90, local=80),
    ]
    text = "\n".join(_physics_lines({"rows": rows}))
    assert "≤ 1.10 at 1 of 2 rates (1.050–1.500)" in text
    assert "auto / best ≤ 1.05 at 1 of 2 rates (0.952–1.125)" in text


def test_two_runs_are_compared_cell_by_cell_where_both_measured() -> None:
    def run(p50: dict[str, float], rates: tuple[float, ...]) -> dict:
        rows = []
        for rate in rates:
            r = row(rate, **p50)
            for c in r["cells"]:
                c.update(head_ms=10.0, tail_ms=20.0)
            rows.append(r)
        return {"profiles": [{"name": "pi4@0.25", "path": "classify", "rows": rows}]}

    default = run({"local": 66, "split": 90}, (1, 5))
    one = run({"local": 60, "split": 100, "auto": 70}, (5, 20))
    cells = compare_runs(default, one)
    assert [(c["rate_mbit"], c["mode"], c["ratio"]) for c in cells] == [
        (5, "local", 1.1),
        (5, "split", 0.9),
    ]
    other_path = {"profiles": [{**one["profiles"][0], "path": "head"}]}
    assert compare_runs(default, other_path) == []


def test_auto_is_also_set_against_the_best_mode_its_accuracy_bound_allowed() -> None:
    r = physics_row(5, split=100, limit=90, auto=126, local=120)
    next(c for c in r["cells"] if c["mode"] == "auto")["allowed"] = ["local", "offload-fair"]
    f = against_physics(r)
    assert f["best_fixed"] == "split" and f["auto_vs_best"] == 1.26
    assert f["best_allowed"] == "local" and f["auto_vs_best_allowed"] == 1.05


def test_an_accuracy_bound_is_sent_with_auto_requests_only() -> None:
    from benchmarks.bandwidth_sweep import request_params

    assert request_params("auto", "classify", 100)[1]["max_drop"] == "100"
    assert request_params("auto", "head", 2.5)[1]["max_drop"] == "2.5"
    assert "max_drop" not in request_params("split", "classify", 100)[1]
    assert "max_drop" not in request_params("auto", "classify")[1]
