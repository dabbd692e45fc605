"""The TLS bench's crossover on made-up times: the slots' roles swap between repeats, each
condition spends as many requests in each slot, and a slot's bias cancels in TLS/plain while
it shows in slot A/B (no timing here: the times are built with known factors)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from benchmarks.tls_cost import (
    MODES,
    SLOTS,
    VARIANTS,
    arrangement,
    crossover_effect,
    main,
    markdown,
    plot,
    pool,
    rate_row,
    sending_order,
    verdict,
)

TLS, SLOT_A = 1.03, 1.10  # TLS's factor, slot A's bias


def test_roles_swap_between_repeats_so_each_condition_holds_each_slot_equally() -> None:
    roles = [arrangement(k) for k in range(4)]
    assert all(sorted(r.values()) == sorted(VARIANTS) for r in roles)
    assert roles[0] != roles[1] and roles[0] == roles[2]
    for slot in SLOTS:
        held = Counter(r[slot] for r in roles)
        assert held["plain"] == held["tls"] == 2


def test_each_photo_goes_to_both_slots_back_to_back_the_first_slot_alternating() -> None:
    order = sending_order(4)
    assert len(order) == 4 * len(MODES) * len(SLOTS)
    pairs = [order[k : k + 2] for k in range(0, len(order), 2)]
    for (slot1, mode1, photo1), (slot2, mode2, photo2) in pairs:
        assert (mode1, photo1) == (mode2, photo2) and {slot1, slot2} == set(SLOTS)
    first = {photo: slot for (slot, _, photo), _ in pairs}
    assert [first[i] for i in range(4)] == ["A", "B", "A", "B"]
    # with the roles swapped, a photo's first condition swaps too
    assert arrangement(0)[first[0]] != arrangement(1)[first[0]]


def records(base, repeats: int = 2, mode: str = "split", fail=(), tls: float = TLS) -> list[dict]:
    """Times = photo's base x TLS's factor (in the TLS pair) x slot A's bias (in slot A)."""
    out = []
    for k in range(repeats):
        for slot, variant in arrangement(k).items():
            for i, b in enumerate(base):
                latency = b * (tls if variant == "tls" else 1.0) * (SLOT_A if slot == "A" else 1.0)
                out.append({
                    "i": len(out), "repeat": k, "slot": slot, "variant": variant,
                    "requested": mode, "mode": mode, "photo": i, "latency_ms": latency,
                    "late_ms": 0.0, "error": "ReadTimeout" if (k, slot, i) in fail else None,
                    "head_cpu_ms": 7.0 + (0.3 if variant == "tls" else 0.0), "head_ms": 20.0,
                    "head_model_ms": 15.0, "transfer_ms": 10.0, "tail_ms": 10.0,
                    "bytes": 3000 + i, "image": f"photo{i}.jpg",
                })  # fmt: skip
    return out


def test_a_slot_bias_cancels_in_tls_over_plain_and_shows_in_slot_a_over_b() -> None:
    effect = crossover_effect(records(np.linspace(60.0, 90.0, 21)), "split")
    assert effect["photos"] == 21 and effect["repeats"] == 2
    assert effect["tls_over_plain"]["ratio"] == pytest.approx(TLS, abs=1e-4)
    assert effect["tls_over_plain"]["ci95"] == pytest.approx([TLS, TLS], abs=1e-4)
    assert effect["slot_a_over_b"]["ratio"] == pytest.approx(SLOT_A, abs=1e-4)
    # either arrangement alone carries the bias, one way or the other
    alone = effect["tls_over_plain_with_tls_in"]
    assert alone["A"]["ratio"] == pytest.approx(TLS * SLOT_A, abs=1e-4)
    assert alone["B"]["ratio"] == pytest.approx(TLS / SLOT_A, abs=1e-4)
    for variant in VARIANTS:
        assert effect["slot_a_over_b_of"][variant]["ratio"] == pytest.approx(SLOT_A, abs=1e-4)
    assert effect["head_cpu_added_ms"] == pytest.approx(0.3)


def test_a_photo_missing_in_any_repeat_or_slot_is_left_out_of_the_pairs() -> None:
    effect = crossover_effect(records([60.0, 70.0, 80.0], fail={(1, "A", 2)}), "split")
    assert effect["photos"] == 2
    assert crossover_effect(records([60.0], fail={(0, "B", 0)}), "split") == {"photos": 0}
    assert crossover_effect(records([60.0], mode="offload"), "split") == {"photos": 0}


def test_repeats_that_leave_a_condition_longer_in_one_slot_are_refused() -> None:
    unbalanced = [r for r in records([60.0, 70.0], repeats=3) if r["repeat"] != 1]
    with pytest.raises(ValueError, match="slot A"):
        crossover_effect(unbalanced, "split")


def _row(low: float, high: float) -> dict:
    return {"effect": {"split": {"tls_over_plain": {"ratio": (low + high) / 2,
                                                    "ci95": [low, high]}}}}  # fmt: skip


def test_five_percent_is_shown_only_when_every_upper_bound_is_within_it() -> None:
    assert verdict([_row(0.95, 1.04), _row(1.0, 1.05)]) == "shown"
    assert verdict([_row(0.95, 1.04), _row(1.0, 1.08)]) == "not shown"
    assert verdict([_row(0.95, 1.04), _row(1.06, 1.12)]) == "refuted"
    assert verdict([]) == "not shown"


def made_up_repeats(every: list[dict], rate: float) -> list[dict]:
    """A rate's two repeats as the bench records them, from made-up request records."""
    return [
        {"repeat": k, "roles": arrangement(k), "calibration": {"payload_mbit": rate},
         "gap_s": {v: {m: 0.1 for m in MODES} for v in VARIANTS},
         "records": [r for r in every if r["repeat"] == k]}
        for k in range(2)
    ]  # fmt: skip


def test_a_rate_row_pools_the_repeats_and_the_report_renders(tmp_path) -> None:
    base = np.linspace(60.0, 90.0, 9)
    rows = []
    for rate in (1.0, 10.0):
        every = records(base) + records(base * 3, mode="offload")
        rows.append(rate_row(rate, made_up_repeats(every, rate)))
    row = rows[0]
    assert row["cells"]["plain"]["split"]["n"] == 2 * len(base)  # both repeats, both slots
    assert row["p50_ms"]["tls"]["offload"] / row["p50_ms"]["plain"]["offload"] == pytest.approx(
        TLS, rel=1e-3
    )
    result = {"profile": "pi4", "cpu_share": 0.11, "images": {"count": len(base)},
              "repeats": 2, "note": "", "rows": rows, "load_after": [0.1, 0.2, 0.3],
              "client_cpu_us": {v: {m: 100.0 for m in MODES} for v in VARIANTS}}  # fmt: skip
    text = "\n".join(markdown(result))
    assert "split: TLS adds ≤ 5 % to p50 (upper 95 % bound ≤ 1.05 at every rate): shown" in text
    assert f"{SLOT_A:.3f} [{SLOT_A:.3f}, {SLOT_A:.3f}]" in text  # slot A/B, the cancelled bias
    plot(result, tmp_path / "tls_cost.png")
    assert (tmp_path / "tls_cost.png").stat().st_size > 0


def run_result(base, rates=(1.0, 10.0), tls: float = TLS, fail=(), **changes) -> dict:
    """A whole made-up run as the bench writes it (JSON round trip), ``changes`` on top."""
    rows = []
    for rate in rates:
        every = records(base, fail=fail, tls=tls) + records(base * 3, mode="offload", tls=tls)
        row = rate_row(rate, made_up_repeats(every, rate))
        row["effect"] = {m: crossover_effect(every, m) for m in MODES}
        rows.append(row)
    result = {"profile": "pi4", "cpu_share": 0.11,
              "images": {"folder": "photos", "count": len(base)}, "repeats": 2,
              "arrangements": [arrangement(k) for k in range(2)],
              "conditions": {"date": "2026-12-07T00:00:00Z", "commit": "abc"},
              "note": f"TLS x{tls}", "rows": rows, "verdict": {},
              "load_after": [0.1, 0.2, 0.3],
              "client_cpu_us": {v: {m: 100.0 for m in MODES} for v in VARIANTS}}  # fmt: skip
    result.update(changes)
    return json.loads(json.dumps(result))


BASE = np.linspace(60.0, 90.0, 9)


def test_pooling_two_runs_reports_on_all_four_repeats_and_keeps_each_runs_figures() -> None:
    first, second = run_result(BASE), run_result(BASE, tls=1.09)
    pooled = pool([first, second])
    assert pooled["repeats"] == 4 and len(pooled["arrangements"]) == 4
    row = pooled["rows"][0]
    assert sorted(rep["repeat"] for rep in row["repeats"]) == [0, 1, 2, 3]
    assert [rep["run"] for rep in row["repeats"]] == [0, 0, 1, 1]
    assert row["cells"]["plain"]["split"]["n"] == 4 * len(BASE)  # two runs, two repeats, slots
    split = row["effect"]["split"]
    assert split["repeats"] == 4 and split["photos"] == len(BASE)
    assert TLS < split["tls_over_plain"]["ratio"] < 1.09  # both runs' times in one median
    assert split["slot_a_over_b"]["ratio"] == pytest.approx(SLOT_A, abs=1e-4)  # still cancels
    runs = pooled["runs"]
    assert [r["note"] for r in runs] == ["TLS x1.03", "TLS x1.09"]
    assert runs[1]["tls_over_plain"]["split"][0]["ratio"] == pytest.approx(1.09, abs=1e-4)
    assert [r["verdict"]["split"] for r in runs] == ["shown", "refuted"]
    low, high = split["tls_over_plain"]["ci95"]
    assert low <= 1.05 < high and pooled["verdict"]["split"] == "not shown"  # pooled intervals
    text = "\n".join(markdown(pooled))
    assert "Pooled from 2 runs" in text and "| split, run 2 | 1.090 [1.090, 1.090]" in text
    # pooling a pooled result with a third run numbers on
    again = pool([pooled, run_result(BASE)])
    assert again["repeats"] == 6 and len(again["runs"]) == 3
    assert [rep["run"] for rep in again["rows"][0]["repeats"]] == [0, 0, 1, 1, 2, 2]


def test_pooling_keeps_failed_requests_counted_and_their_photo_out_of_the_pairs() -> None:
    pooled = pool([run_result(BASE, fail={(1, "A", 2)}), run_result(BASE)])
    row = pooled["rows"][0]
    failed_variant = arrangement(1)["A"]
    assert row["cells"][failed_variant]["split"]["errors"] == {"ReadTimeout": 1}
    assert row["effect"]["split"]["photos"] == len(BASE) - 1


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        ({"profile": "jetson"}, "profile"),
        ({"images": {"folder": "photos", "count": 8}}, "photo count"),
        ({"rates": (1.0, 20.0)}, "rates"),
        ({"bundle": "/other"}, "bundle"),
        ({"payload of photo 0": 9999}, "photos or split payloads"),
    ],
)
def test_runs_of_another_measurement_are_refused_saying_what_differs(changed, message) -> None:
    first = run_result(BASE, bundle="/bundle")
    changes = {"bundle": "/bundle", **changed}
    rates = changes.pop("rates", (1.0, 10.0))
    payload = changes.pop("payload of photo 0", None)
    other = run_result(BASE, rates=rates, **changes)
    for row in other["rows"]:  # another bundle: the same photo, another split payload
        for r in (
            row["cells"]["tls"]["split"]["records"] + row["cells"]["plain"]["split"]["records"]
        ):
            if payload is not None and r["photo"] == 0:
                r["bytes"] = payload
    with pytest.raises(ValueError, match=message):
        pool([first, other])


def test_a_run_without_per_repeat_records_is_refused() -> None:
    old = run_result(BASE)
    for row in old["rows"]:
        del row["repeats"]
    with pytest.raises(ValueError, match="no per-repeat records"):
        pool([old, run_result(BASE)])


def test_combine_on_the_command_line_writes_the_pooled_report_or_refuses(tmp_path, capsys) -> None:
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text(json.dumps(run_result(BASE)))
    second.write_text(json.dumps(run_result(BASE, tls=1.09)))
    argv = ["--from-json", str(second), "--combine", str(first), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    written = json.loads((tmp_path / "out" / "tls_cost.json").read_text())
    assert written["repeats"] == 4 and len(written["runs"]) == 2
    assert (tmp_path / "out" / "tls_cost.png").stat().st_size > 0
    other = run_result(BASE, profile="jetson")
    first.write_text(json.dumps(other))
    assert main(argv) == 2
    assert "cannot pool: run 2 differs from run 1 in profile" in capsys.readouterr().err
