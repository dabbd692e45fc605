"""Where split wins: capture-to-output time per mode, link rate and device profile.

The tail runs inside a network namespace behind a veth pair shaped with tbf both ways (a
~1-packet bucket, segmentation offload off: see ``benchmarks/netns.py``; the rate each
setting really gets is calibrated with a bulk upload and reported). The device runs in the
root namespace inside a cgroup holding a device profile's CPU share
(``splitdnn/devices.json``: pi4, jetson-nano, unlimited), with default settings (ONNX
Runtime threads sized by the services themselves; ``--threads N`` sets them by hand).

Two paths per profile (``--paths``):

* ``classify``, the public path as deployed: gateway and head in one process
  (``splitdnn serve device``) under the device's quota, the client posting to
  ``/classify?mode=...``. Offload there is the head's setting (the fair re-encode when the
  bundle has ``reencode.json``), so its cells are ``offload-fair``; no raw ``offload``.
* ``head``, the head alone (``splitdnn serve head``) under the quota, the client posting to
  its ``/infer/{mode}``: the figures of the sweeps before.
* ``apart`` (only when asked for): gateway and head as two processes, both under the quota,
  the client posting to the gateway's ``/classify`` (local and split unless ``--modes``):
  what the second server, parse and hop cost.

For every path x profile x rate x mode the client posts held-out photos open-loop, all
modes of a rate interleaved on one fixed schedule (each request followed by a gap of 1.5x its
mode's warm-up time, so a cell measures latency, not a queue, and a burst of load on the
shared machine hits every mode alike; latency from the intended send time), and records
per request the client time, the stages the head reports (τhead with its model part,
τlink, τtail) and bytes.

Modes: ``local``, ``split`` (uint8 + zstd), ``offload`` (the upload as it came),
``offload-fair`` (re-encoded at the teacher's input size, ``splitdnn/reencode.py``) and
``auto`` (the head picks among local, split and fair offload).

    python -m benchmarks.bandwidth_sweep --bundle DIR --images ../shared/data/imagenet-sample

Writes ``benchmarks/results/bandwidth_sweep.{json,csv,md}`` and PNGs: latency vs rate per
profile, the gain ratios of the Distilled Split DNNs paper's Figure 3 (offload / split and
local / split; > 1 means split is faster), the overhead ratio (split time / (τhead +
bytes/rate + τtail)) and auto's choices. Needs root, iproute2, ethtool and a cgroup v1 cpu
controller.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from benchmarks import cgroup
from benchmarks.loadgen import Reply, interleaved, percentile, run
from benchmarks.netns import burst_bytes, calibrate, shaped_link, why_unavailable
from benchmarks.report import (
    RESULTS,
    ROOT,
    conditions,
    figure,
    table,
    write_results,
)
from benchmarks.stack import device_stack
from splitdnn import devices
from splitdnn.bundle import default_bundle_path, load_bundle

MODES = ("local", "split", "offload", "offload-fair", "auto")
FIXED = ("local", "split", "offload-fair")  # what auto chooses among
PROFILES = ("pi4", "jetson-nano", "unlimited")
RATES = (0.5, 1, 2, 5, 10, 20, 50, 100)
#: classify: gateway + head in one process, /classify (as deployed); head: /infer/{mode};
#: apart (on request): gateway and head as two processes under the quota, /classify.
PATHS = ("classify", "head")
ALL_PATHS = ("classify", "apart", "head")
#: What /classify can ask: offload is the head's setting (fair), there is no raw offload.
CLASSIFY_MODES = ("local", "split", "offload-fair", "auto")
#: auto's offload re-encodes (the head's fair setting): its answers' modes as cell names.
FAIR = {"offload": "offload-fair"}


def held_out_images(folder: Path, count: int) -> list[tuple[str, bytes]]:
    """The first ``count`` held-out ImageNet-sample photos (val_fraction 0.75, seed 0: no
    distillation stage trained on them), or the first JPEGs of any folder."""
    from splitdnn.data import load_dataset, split_per_class

    try:
        samples = split_per_class(load_dataset(folder), 0.75, 0)[1]
        paths = [s.path for s in samples]
    except Exception:  # a plain folder of photos
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    return [(p.name, p.read_bytes()) for p in paths[:count]]


def request_params(
    mode: str, path: str = "head", max_drop: float | None = None
) -> tuple[str, dict[str, str]]:
    """(URL path, query) of one request: the head's ``/infer/{mode}``, or ``/classify``
    (where offload is the head's setting: the fair re-encode). ``max_drop`` (auto only)
    replaces the head's accuracy bound: 100 lets auto choose among every mode by time."""
    extra = {"max_drop": f"{max_drop:g}"} if mode == "auto" and max_drop is not None else {}
    if path in ("classify", "apart"):
        return "/classify", {"mode": mode.removesuffix("-fair"), "fallback": "false", **extra}
    if mode == "offload":
        return "/infer/offload", {"reencode": "false", "fallback": "false"}
    if mode == "offload-fair":
        return "/infer/offload", {"reencode": "true", "fallback": "false"}
    return f"/infer/{mode}", {"fallback": "false", **extra}


def post(
    client: httpx.Client,
    mode: str,
    image: bytes,
    path: str = "head",
    max_drop: float | None = None,
) -> dict[str, Any]:
    url, params = request_params(mode, path, max_drop)
    response = client.post(
        url, params=params, content=image, headers={"Content-Type": "image/jpeg"}
    )
    if response.status_code != 200:
        raise RuntimeError(f"{mode}: {response.status_code} {response.text[:200]}")
    return response.json()


def warm_interval(
    client: httpx.Client,
    images: list,
    mode: str,
    warmup: int,
    path: str = "head",
    max_drop: float | None = None,
) -> float:
    """Warm a mode up; the gap to leave after each of its requests (1.5x its time)."""
    warm = []
    for i in range(warmup):
        start = time.perf_counter()
        try:
            post(client, mode, images[i % len(images)][1], path, max_drop)
        except (RuntimeError, httpx.HTTPError) as exc:  # counted in the cell, not fatal
            print(f"warm-up {mode}: {exc}", file=sys.stderr)
        warm.append(time.perf_counter() - start)
    return max(0.05, 1.5 * statistics.median(warm))


def measure_row(
    client: httpx.Client,
    images: list[tuple[str, bytes]],
    modes: list[str],
    payload_mbit: float,
    warmup: int,
    path: str = "head",
    max_drop: float | None = None,
) -> list[dict[str, Any]]:
    """One profile x rate row: every mode's requests interleaved on one open-loop schedule
    (photo 1 in every mode, then photo 2, ...; each request followed by a gap of 1.5x its
    mode's warm-up time, so requests do not overlap and a burst of load on the shared
    machine hits all modes alike), then one cell per mode."""
    gaps = {
        m: warm_interval(client, images, m, warmup * (3 if m == "auto" else 1), path, max_drop)
        for m in modes
    }
    plan, times = interleaved(gaps, len(images))

    def send(k: int) -> Reply:
        mode, i = plan[k]
        answer = post(client, mode, images[i][1], path, max_drop)
        t = answer["timings_ms"]
        stages = answer.get("head_stages_ms") or {}
        info = {
            "cell": mode,
            "image": images[i][0],
            "mode": answer["mode"],
            "head_ms": t["head"],
            "head_model_ms": stages.get("model", 0.0),
            "transfer_ms": t["transfer"],
            "tail_ms": t["tail"],
            "head_total_ms": t["total"],
            "bytes": answer["bytes_sent"],
        }
        if "predicted_ms" in answer:
            info["predicted_ms"] = answer["predicted_ms"]
        if isinstance(answer.get("auto"), dict) and "allowed" in answer["auto"]:
            # auto's offload is the fair one: the cells' name for it
            allowed = answer["auto"]["allowed"]
            info["allowed"] = [FAIR.get(m, m) for m in allowed]
        return Reply(None, info)

    summary = run(send, rate=1.0, count=len(plan), times=times)
    return [
        cell_of(
            mode,
            [r for r in summary["records"] if plan[r["i"]][0] == mode],
            gaps[mode],
            payload_mbit,
        )
        for mode in modes
    ]


def cell_of(mode: str, all_records: list[dict], gap: float, payload_mbit: float) -> dict:
    """The medians of one mode's requests in a row."""
    records = [r for r in all_records if r["error"] is None]
    errors = dict(Counter(r["error"] for r in all_records if r["error"] is not None))
    for r in records:
        link_ms = r["bytes"] * 8 / (payload_mbit * 1e6) * 1000
        r["limit_ms"] = round(r["head_ms"] + link_ms + r["tail_ms"], 3)
        r["overhead_ratio"] = round(r["latency_ms"] / r["limit_ms"], 4) if r["limit_ms"] else None
        r["device_other_ms"] = round(
            r["latency_ms"] - r["head_model_ms"] - r["transfer_ms"] - r["tail_ms"], 3
        )

    def med(key: str) -> float | None:
        values = [r[key] for r in records if r.get(key) is not None]
        return round(statistics.median(values), 3) if values else None

    latencies = [r["latency_ms"] for r in records]
    cell = {
        "mode": mode,
        "n": len(records),
        "errors": errors,
        "gap_s": round(gap, 3),
        "p50_ms": round(percentile(latencies, 50), 3) if latencies else None,
        "p95_ms": round(percentile(latencies, 95), 3) if latencies else None,
        "max_ms": round(max(latencies), 3) if latencies else None,
        "late_ms_max": max((r["late_ms"] for r in records), default=None),
        "head_ms": med("head_ms"),
        "head_model_ms": med("head_model_ms"),
        "link_ms": med("transfer_ms"),
        "tail_ms": med("tail_ms"),
        "bytes": med("bytes"),
        "limit_ms": med("limit_ms"),
        "overhead_ratio": med("overhead_ratio"),
        "device_other_ms": med("device_other_ms"),
        "below_limit": sum(1 for r in records if r["latency_ms"] < 0.98 * r["limit_ms"]),
        "records": records,
    }
    if mode == "auto":
        cell["chosen"] = dict(Counter(r["mode"] for r in records))
        if any("allowed" in r for r in records):
            cell["allowed"] = sorted({m for r in records for m in r.get("allowed", ())})
    if not latencies:
        print(f"{mode}: every request failed: {errors}", file=sys.stderr)
    return cell


def floors(result: dict[str, Any]) -> None:
    """Per request the tbf floor: τhead + (bytes - bucket)/rate + τtail. tbf lets its first
    bucket (one 1,600 B frame at low rates) through at once, so at 0.5-2 Mbit/s a request
    can sit below bytes/rate by up to bucket/rate (26 ms at 0.5 Mbit/s); nothing may sit
    below this floor. Counts per cell in ``below_floor``."""
    for p in result["profiles"]:
        for row in p["rows"]:
            rate = row["calibration"]["payload_mbit"]
            bucket = burst_bytes(row["rate_mbit"])
            for cell in row["cells"]:
                below = 0
                for r in cell["records"]:
                    link_ms = max(0, r["bytes"] - bucket) * 8 / (rate * 1e6) * 1000
                    r["floor_ms"] = round(r["head_ms"] + link_ms + r["tail_ms"], 3)
                    below += r["latency_ms"] < r["floor_ms"]
                cell["below_floor"] = below


def derive(row: dict[str, Any]) -> None:
    """Figure-3 gains, auto vs the best fixed mode, for one profile x rate row."""
    cells = {c["mode"]: c for c in row["cells"]}
    p50 = {m: c["p50_ms"] for m, c in cells.items()}
    split = p50.get("split")
    if split:
        for other in ("local", "offload", "offload-fair"):
            if p50.get(other):
                row[f"gain_vs_{other}"] = round(p50[other] / split, 3)
    fixed = {m: p50[m] for m in FIXED if p50.get(m)}
    if fixed:
        best = min(fixed, key=fixed.get)
        row["best_fixed"] = best
        if p50.get("auto"):
            row["auto_vs_best"] = round(p50["auto"] / fixed[best], 3)


#: Issue #25's bounds: split's wall time against physics, auto against the best fixed mode.
PHYSICS_BOUND, AUTO_BOUND = 1.10, 1.05


def against_physics(row: dict[str, Any]) -> dict[str, Any]:
    """One rate's split p50, its physics (medians of τhead + bytes/calibrated rate + τtail)
    and their ratio, beside the median per-request ratio (``overhead_ratio``); auto's p50
    against the best fixed mode's. Computed from the cells, so a rewrite of an older run's
    JSON gets it too."""
    split, auto = _cell(row, "split") or {}, _cell(row, "auto") or {}
    fixed = {m: c["p50_ms"] for m in FIXED if (c := _cell(row, m)) and c.get("p50_ms")}
    best = min(fixed, key=fixed.get) if fixed else None
    # the modes auto's accuracy bound let it serve (recorded from its answers)
    allowed = {m: v for m, v in fixed.items() if m in auto.get("allowed", fixed)}
    best_allowed = min(allowed, key=allowed.get) if allowed else None
    wall, limit = split.get("p50_ms"), split.get("limit_ms")
    return {
        "split_p50_ms": wall,
        "physics_ms": limit,
        "p50_over_physics": round(wall / limit, 3) if wall and limit else None,
        "overhead_ratio": split.get("overhead_ratio"),
        "auto_p50_ms": auto.get("p50_ms"),
        "best_fixed": best,
        "best_fixed_p50_ms": fixed.get(best) if best else None,
        "auto_vs_best": round(auto["p50_ms"] / fixed[best], 3)
        if best and auto.get("p50_ms")
        else None,
        "auto_allowed": auto.get("allowed"),
        "best_allowed": best_allowed,
        "auto_vs_best_allowed": round(auto["p50_ms"] / allowed[best_allowed], 3)
        if best_allowed and auto.get("p50_ms")
        else None,
    }


def compare_runs(result: dict[str, Any], other: dict[str, Any]) -> list[dict[str, Any]]:
    """Per profile x path x rate x mode present in both runs: p50, τhead and τtail of this
    run against ``other``'s (e.g. default threads against one thread set by hand)."""
    theirs = {(p["name"], p.get("path", "head")): p for p in other["profiles"]}
    cells = []
    for p in result["profiles"]:
        q = theirs.get((p["name"], p.get("path", "head")))
        if q is None:
            continue
        their_rows = {r["rate_mbit"]: r for r in q["rows"]}
        for r in p["rows"]:
            if r["rate_mbit"] not in their_rows:
                continue
            for c in r["cells"]:
                d = _cell(their_rows[r["rate_mbit"]], c["mode"])
                if not d or not c.get("p50_ms") or not d.get("p50_ms"):
                    continue
                cells.append(
                    {
                        "profile": p["name"],
                        "path": p.get("path", "head"),
                        "rate_mbit": r["rate_mbit"],
                        "mode": c["mode"],
                        **{
                            f"{key}_{side}": x[key]
                            for key in ("p50_ms", "head_ms", "tail_ms")
                            for side, x in (("this", c), ("other", d))
                        },
                        "ratio": round(c["p50_ms"] / d["p50_ms"], 3),
                    }
                )
    return cells


def band(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rates where split beats local and fair offload (grid points and log-interpolated
    edges), and the band's width as max/min rate."""
    wins = [
        r["rate_mbit"]
        for r in rows
        if r.get("gain_vs_local", 0) > 1 and r.get("gain_vs_offload-fair", 0) > 1
    ]
    if not wins:
        return {"grid_rates": [], "width": None}
    margin = [
        (r["rate_mbit"], min(r.get("gain_vs_local", 0), r.get("gain_vs_offload-fair", 0)))
        for r in rows
    ]
    lo, hi = min(wins), max(wins)

    def cross(a: tuple[float, float], b: tuple[float, float]) -> float:
        (ra, ga), (rb, gb) = a, b
        if ga == gb:
            return ra
        f = (1 - ga) / (gb - ga)
        return math.exp(math.log(ra) + f * (math.log(rb) - math.log(ra)))

    i_lo = next(i for i, (r, _) in enumerate(margin) if r == lo)
    i_hi = next(i for i, (r, _) in enumerate(margin) if r == hi)
    edge_lo = cross(margin[i_lo - 1], margin[i_lo]) if i_lo > 0 else lo
    edge_hi = cross(margin[i_hi], margin[i_hi + 1]) if i_hi + 1 < len(margin) else hi
    return {
        "grid_rates": wins,
        "edges_mbit": [round(edge_lo, 3), round(edge_hi, 3)],
        "width": round(edge_hi / edge_lo, 2),
        "open_above": i_hi + 1 == len(margin),
        "open_below": i_lo == 0,
    }


def sweep_one(
    args: argparse.Namespace,
    bundle_dir: Path,
    images: list[tuple[str, bytes]],
    name: str,
    profile: devices.DeviceProfile,
    path: str,
    modes: list[str],
) -> dict[str, Any]:
    """Every rate of one profile on one path, with fresh services."""
    rows: list[dict[str, Any]] = []
    with (
        shaped_link(args.rates[0], name=args.name) as link,
        cgroup.cpu_group(f"{args.name}-{name}", profile) as group,
        device_stack(
            link, bundle_dir, group, args.threads, path, tail_threads=args.tail_threads
        ) as services,
        httpx.Client(base_url=services.url("client"), timeout=300) as client,
    ):
        for rate in args.rates:
            link = link.set_rate(rate)
            cal = calibrate(link)
            cells = measure_row(
                client, images, modes, cal["payload_mbit"], args.warmup, path, args.auto_max_drop
            )
            row: dict[str, Any] = {"rate_mbit": rate, "calibration": cal, "cells": cells}
            derive(row)
            rows.append(row)
            brief = {c["mode"]: c["p50_ms"] for c in row["cells"]}
            print(name, path, rate, f"cal {cal['wire_mbit']}", brief, flush=True)
    local = [c for r in rows for c in r["cells"] if c["mode"] == "local"]
    return {
        "name": name,
        "path": path,
        "cpu_share": profile.cpu_share,
        "period_us": profile.period_us,
        "device": profile.device,
        "local_model_ms": statistics.median(c["head_model_ms"] for c in local) if local else None,
        "rows": rows,
        "band": band(rows),
    }


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    bundle_dir = Path(args.bundle)
    bundle = load_bundle(bundle_dir)
    images = held_out_images(Path(args.images), args.count)
    result: dict[str, Any] = {
        "bundle": {"name": bundle.name, "id": bundle.id},
        "images": {
            "folder": str(args.images),
            "count": len(images),
            "median_bytes": int(statistics.median(len(b) for _, b in images)),
        },
        "conditions": conditions(),
        "note": args.note,
        "threads": args.threads or "auto (the services size them)",
        "tail_threads": args.tail_threads or args.threads or "auto",
        "auto_max_drop": args.auto_max_drop,
        "profiles": [],
    }
    for name in args.profiles:
        profile = devices.get(name)
        if args.period_us:
            profile = dataclasses.replace(profile, period_us=args.period_us)
        if args.cpu_share:
            name = f"{name}@{args.cpu_share:g}"
            profile = dataclasses.replace(profile, name=name, cpu_share=args.cpu_share)
        for path in args.paths:
            modes = [m for m in args.modes if path == "head" or m in CLASSIFY_MODES]
            if path == "apart" and args.modes == list(MODES):
                modes = ["local", "split"]  # what the extra process costs; nothing else new
            result["profiles"].append(
                sweep_one(args, bundle_dir, images, name, profile, path, modes)
            )
    for p in result["profiles"]:
        unlimited = next(
            (u for u in result["profiles"] if u["name"] == "unlimited" and u["path"] == p["path"]),
            None,
        )
        if unlimited and unlimited["local_model_ms"] and p["local_model_ms"]:
            p["slowdown_measured"] = round(p["local_model_ms"] / unlimited["local_model_ms"], 2)
        split_model = [
            c["head_model_ms"] for r in p["rows"] for c in r["cells"] if c["mode"] == "split"
        ]
        if split_model and p["local_model_ms"]:
            p["device_part_model_ms"] = round(statistics.median(split_model), 3)
            p["device_part_share"] = round(p["device_part_model_ms"] / p["local_model_ms"], 3)
    result["load_after"] = os.getloadavg()
    return result


def label(profile: dict[str, Any]) -> str:
    """A profile's name and path (runs before the public path measured the head only)."""
    return f"{profile['name']}, {profile.get('path', 'head')}"


def _cell(row: dict[str, Any], mode: str) -> dict[str, Any] | None:
    return next((c for c in row["cells"] if c["mode"] == mode), None)


def write_csv(result: dict[str, Any], path: Path) -> None:
    keys = [
        "profile",
        "path",
        "rate_mbit",
        "calibrated_wire_mbit",
        "mode",
        "n",
        "p50_ms",
        "p95_ms",
        "head_ms",
        "head_model_ms",
        "link_ms",
        "tail_ms",
        "bytes",
        "limit_ms",
        "overhead_ratio",
        "device_other_ms",
        "offered_rate",
        "achieved_rate",
    ]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*keys, "chosen"])
        writer.writeheader()
        for p in result["profiles"]:
            for r in p["rows"]:
                for c in r["cells"]:
                    writer.writerow(
                        {
                            "profile": p["name"],
                            "path": p.get("path", "head"),
                            "rate_mbit": r["rate_mbit"],
                            "calibrated_wire_mbit": r["calibration"]["wire_mbit"],
                            **{k: c.get(k) for k in keys[4:]},
                            "chosen": json.dumps(c.get("chosen")) if c.get("chosen") else "",
                        }
                    )


def fmt(v: Any, digits: int = 0) -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}" if isinstance(v, (int, float)) else str(v)


def markdown(result: dict[str, Any]) -> list[str]:
    """The report's lines (the conditions line goes under the title)."""
    lines = [
        "# Where split wins: time per mode, link rate and device profile",
        "",
        f"Bundle `{result['bundle']['name']}` ({result['bundle']['id']}); "
        f"{result['images']['count']} held-out ImageNet-sample photos per cell (median "
        f"{result['images']['median_bytes']:,} B), open-loop fixed arrivals; the device side "
        "(path classify: gateway and head in one process, `/classify`; path head: the head "
        "alone, `/infer/{mode}`) in a cgroup with the profile's CPU share (10 ms period), "
        f"ONNX Runtime threads {result.get('threads', 1)} (the tail's: "
        f"{result.get('tail_threads', result.get('threads', 1))}); tail unlimited in a "
        "network namespace behind a tbf-shaped veth (~1-packet bucket, offloads off); auto's "
        "accuracy bound "
        + (
            f"max_drop={result['auto_max_drop']:g} points"
            if result.get("auto_max_drop") is not None
            else "the head's default"
        )
        + ". "
        "Load average at the end "
        f"{', '.join(f'{x:.2f}' for x in result['load_after'])}"
        f"{' (' + result['note'] + ')' if result.get('note') else ''}; medians per cell.",
        "",
        "Times are client-side p50 ms from the intended send time to the parsed answer. "
        "Gain = other / split (> 1: split is faster). Overhead = split time / (τhead + "
        "bytes/calibrated rate + τtail). Floor = τhead + (bytes − tbf bucket)/rate + τtail: "
        "tbf passes its first bucket (one 1,600 B frame at low rates) at once, so a request "
        "may sit below bytes/rate by bucket/rate, never below the floor.",
    ]
    for p in result["profiles"]:
        share = "no limit" if p["cpu_share"] is None else f"{p['cpu_share']} core"
        lines += [
            "",
            f"## {label(p)} ({share})",
            "",
            f"Local model {fmt(p['local_model_ms'], 1)} ms (slowdown "
            f"{fmt(p.get('slowdown_measured'), 2)}x vs unlimited); device part's model "
            f"{fmt(p.get('device_part_model_ms'), 1)} ms = "
            f"{fmt(100 * p['device_part_share'] if p.get('device_part_share') else None, 0)} % "
            "of the local model's time.",
            "",
        ]
        lines += table(
            ["Mbit/s (cal.)", *MODES, "auto chose", "gain vs local", "vs offload", "vs fair",
             "auto / best", "split overhead"],
            (_rate_row(r) for r in p["rows"]),
            align="lrrrrrlrrrrr",
        )  # fmt: skip
        b = p["band"]
        lines += [
            "",
            (
                f"Split beats local and fair offload at {b['grid_rates']} Mbit/s; "
                f"interpolated band {b['edges_mbit'][0]:g}–{b['edges_mbit'][1]:g} Mbit/s, "
                f"width {b['width']:g}x"
                + (" (open above: wins at the top rate)" if b.get("open_above") else "")
                + (" (open below)" if b.get("open_below") else "")
                + "."
            )
            if b["width"]
            else "Split never beats both local and fair offload.",
        ]
        lines += ["", *_physics_lines(p)]
        cells = [c for r in p["rows"] for c in r["cells"]]
        below = sum(c.get("below_floor", 0) for c in cells)
        lines += ["", f"Requests below the tbf floor: {below} of {sum(c['n'] for c in cells)}."]
        lines += [
            "",
            "Per mode, medians over all rates: τhead (model part), bytes, device cost "
            "that is not the model (client time − model − link − tail):",
            "",
        ]
        lines += table(
            ["mode", "τhead ms", "model ms", "τtail ms", "bytes", "not-model device ms"],
            _stage_rows(p),
        )
    if result.get("against"):
        lines += ["", *_against_lines(result["against"], result)]
    lines += ["", "Calibration (bulk TCP upload, wire Mbit/s incl. headers):", ""]
    p0 = result["profiles"][0]
    lines += [
        ", ".join(f"{r['rate_mbit']:g} → {r['calibration']['wire_mbit']:.2f}" for r in p0["rows"])
    ]
    return lines


def _rate_row(r: dict[str, Any]) -> list[str]:
    """One rate of a profile's table: p50 per mode, auto's choices, gains and overhead."""
    auto = _cell(r, "auto") or {}
    return [
        f"{r['rate_mbit']:g} ({r['calibration']['wire_mbit']:.2f})",
        *(fmt((_cell(r, m) or {}).get("p50_ms"), 1) for m in MODES),
        ", ".join(f"{m} {n}" for m, n in (auto.get("chosen") or {}).items()),
        fmt(r.get("gain_vs_local"), 2),
        fmt(r.get("gain_vs_offload"), 2),
        fmt(r.get("gain_vs_offload-fair"), 2),
        fmt(r.get("auto_vs_best"), 2),
        fmt((_cell(r, "split") or {}).get("overhead_ratio"), 2),
    ]


def _physics_lines(p: dict[str, Any]) -> list[str]:
    """Split against physics and auto against the best fixed mode, per rate, and how many
    rates from 1 to 50 Mbit/s meet issue #25's bounds."""
    figures = [(r["rate_mbit"], against_physics(r)) for r in p["rows"]]
    lines = [
        "Split against physics (τhead + bytes/calibrated rate + τtail, medians of the cell: "
        "what the device, the link and the tail take at least) and auto against the best "
        f"fixed mode; bounds {PHYSICS_BOUND:.2f} and {AUTO_BOUND:.2f}:",
        "",
    ]
    lines += table(
        ["Mbit/s", "split p50", "physics", "p50 / physics", "per-request ratio (median)",
         "auto p50", "best fixed mode (p50)", "auto / best", "auto allowed",
         "auto / best allowed"],
        (
            [f"{rate:g}", fmt(f["split_p50_ms"], 1), fmt(f["physics_ms"], 1),
             fmt(f["p50_over_physics"], 3), fmt(f["overhead_ratio"], 3),
             fmt(f["auto_p50_ms"], 1),
             f"{f['best_fixed']} ({fmt(f['best_fixed_p50_ms'], 1)})" if f["best_fixed"] else "–",
             fmt(f["auto_vs_best"], 3),
             ", ".join(f["auto_allowed"]) if f["auto_allowed"] else "not recorded",
             fmt(f["auto_vs_best_allowed"], 3) if f["auto_allowed"] else "–"]
            for rate, f in figures
        ),
        align="lrrrrrlrlr",
    )  # fmt: skip
    target = [(rate, f) for rate, f in figures if 1 <= rate <= 50]

    def tally(key: str, bound: float) -> str:
        values = [(rate, f[key]) for rate, f in target if f[key] is not None]
        if not values:
            return "not measured"
        met = [rate for rate, v in values if v <= bound]
        lo, hi = min(v for _, v in values), max(v for _, v in values)
        return f"{len(met)} of {len(values)} rates ({lo:.3f}–{hi:.3f})"

    lines += [
        "",
        f"From 1 to 50 Mbit/s: split p50 / physics ≤ {PHYSICS_BOUND:.2f} at "
        f"{tally('p50_over_physics', PHYSICS_BOUND)}; per-request ratio ≤ {PHYSICS_BOUND:.2f} "
        f"at {tally('overhead_ratio', PHYSICS_BOUND)}; auto / best ≤ {AUTO_BOUND:.2f} at "
        f"{tally('auto_vs_best', AUTO_BOUND)}"
        + (
            f", against the best mode its accuracy bound allowed at "
            f"{tally('auto_vs_best_allowed', AUTO_BOUND)}"
            if any(f["auto_allowed"] for _, f in target)
            else ""
        )
        + ".",
    ]
    return lines


def _against_lines(against: dict[str, Any], result: dict[str, Any]) -> list[str]:
    """The section comparing this run with another (``--against``), cell by cell."""
    cells = against["cells"]
    lines = [
        f"## Against the run with ONNX Runtime threads {against['threads']} (the tail's: "
        f"{against['tail_threads']}; `{against['file']}`)",
        "",
        f"p50 of this run (threads {result.get('threads')}, the tail's "
        f"{result.get('tail_threads', result.get('threads'))}) / p50 of the other, per cell; "
        "τhead and "
        "τtail (medians) beside, to show which side moved.",
        "",
    ]
    lines += table(
        ["profile, path", "Mbit/s", "mode", "p50 this / other", "ratio",
         "τhead this / other", "τtail this / other"],
        (
            [f"{c['profile']}, {c['path']}", f"{c['rate_mbit']:g}", c["mode"],
             f"{fmt(c['p50_ms_this'], 1)} / {fmt(c['p50_ms_other'], 1)}", fmt(c["ratio"], 3),
             f"{fmt(c['head_ms_this'], 1)} / {fmt(c['head_ms_other'], 1)}",
             f"{fmt(c['tail_ms_this'], 1)} / {fmt(c['tail_ms_other'], 1)}"]
            for c in cells
        ),
        align="lrlrrrr",
    )  # fmt: skip
    within = [c for c in cells if c["ratio"] <= 1.10]
    if cells:
        ratios = [c["ratio"] for c in cells]
        lines += [
            "",
            f"Within 10 %: {len(within)} of {len(cells)} cells "
            f"(ratios {min(ratios):.3f}–{max(ratios):.3f}).",
        ]
    return lines


def _stage_rows(p: dict[str, Any]) -> list[list[str]]:
    """Per mode, medians over all rates of a profile's stage times and bytes."""
    rows = []
    for mode in MODES:
        cs = [c for r in p["rows"] for c in r["cells"] if c["mode"] == mode]

        def m(key: str, cs: list = cs) -> float | None:
            vals = [c[key] for c in cs if c.get(key) is not None]
            return statistics.median(vals) if vals else None

        if cs:
            times = [fmt(m(key), 1) for key in ("head_ms", "head_model_ms", "tail_ms")]
            rows.append([mode, *times, fmt(m("bytes")), fmt(m("device_other_ms"), 1)])
    return rows


def plot(result: dict[str, Any], path: Path) -> None:
    """``path`` (latency vs rate per profile), and beside it figure3_gains.png (the gains of
    split) and overhead_and_auto.png."""
    profiles = result["profiles"]
    size = (5 * len(profiles), 4.2)
    with figure(path, 1, len(profiles), figsize=size, sharey=True) as (_, axes):
        axes = list(axes) if len(profiles) > 1 else [axes]
        for ax, p in zip(axes, profiles, strict=True):
            rates = [r["rate_mbit"] for r in p["rows"]]
            for mode in MODES:
                ys = [(_cell(r, mode) or {}).get("p50_ms") for r in p["rows"]]
                style = {"linestyle": "--", "marker": "x"} if mode == "auto" else {"marker": "o"}
                if any(y is not None for y in ys):  # a path may not run every mode
                    ax.plot(rates, ys, label=mode, **style)
            _rate_axes(ax, label(p))
        axes[0].set_ylabel("p50 capture-to-output (ms)")
        axes[0].legend()

    gains = path.parent / "figure3_gains.png"
    with figure(gains, 1, 3, figsize=(15, 4.2), sharey=True) as (_, axes):
        for ax, other, title in zip(
            axes,
            ("offload-fair", "offload", "local"),
            ("(a) vs fair offload", "(b) vs raw offload", "(c) vs local"),
            strict=True,
        ):
            for p in profiles:
                rates = [r["rate_mbit"] for r in p["rows"]]
                ys = [r.get(f"gain_vs_{other}") for r in p["rows"]]
                if any(g is not None for g in ys):
                    ax.plot(rates, ys, marker="o", label=label(p))
            ax.axhline(1.0, color="k", lw=0.8)
            _rate_axes(ax, f"gain of split {title}")
        axes[0].set_ylabel("T(other) / T(split)  (> 1: split faster)")
        axes[0].legend()

    with figure(path.parent / "overhead_and_auto.png", 1, 2, figsize=(11, 4.2)) as (_, axes):
        for p in profiles:
            rates = [r["rate_mbit"] for r in p["rows"]]
            overhead = [(_cell(r, "split") or {}).get("overhead_ratio") for r in p["rows"]]
            auto = [r.get("auto_vs_best") for r in p["rows"]]
            for ax, ys in ((axes[0], overhead), (axes[1], auto)):
                if any(y is not None for y in ys):
                    ax.plot(rates, ys, marker="o", label=label(p))
        axes[0].axhline(1.10, color="r", lw=0.8, linestyle="--", label="target 1.10")
        axes[0].set_title("split: measured / (τhead + bytes/rate + τtail)")
        axes[1].axhline(1.05, color="r", lw=0.8, linestyle="--", label="target 1.05")
        axes[1].set_title("auto p50 / best fixed mode's p50")
        for ax in axes:
            if len(ax.get_lines()) > 1:  # more than the target line
                ax.set_xscale("log")
            ax.set_xlabel("link rate (Mbit/s)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()


def _rate_axes(ax: Any, title: str) -> None:
    """Log-log axes over the link rate, titled."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("link rate (Mbit/s)")
    ax.grid(True, which="both", alpha=0.3)


def link_parser(description: str) -> argparse.ArgumentParser:
    """The options of every benchmark on a shaped link (this sweep, ``tls_cost``): bundle,
    photos, requests per cell, warm-up, where to write, what else ran, and a rewrite of the
    reports from an earlier run's JSON."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bundle", default=str(default_bundle_path()))
    parser.add_argument("--images", default=str(ROOT.parent / "shared/data/imagenet-sample"))
    parser.add_argument("--count", type=int, default=16, help="photos (requests) per cell")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--note", default="", help="what else ran on the machine (reported)")
    parser.add_argument("--from-json", help="rewrite the reports of an earlier run's JSON")
    return parser


def measured_or_loaded(
    args: argparse.Namespace, name: str, measure: Callable[[argparse.Namespace], dict[str, Any]]
) -> dict[str, Any] | None:
    """The result of ``--from-json``, else of ``measure(args)``; None, after saying why on
    stderr, where this machine cannot shape a link or hold a CPU share."""
    if args.from_json:
        return json.loads(Path(args.from_json).read_text())
    for reason in (why_unavailable(), cgroup.why_unavailable()):
        if reason is not None:
            print(f"{name}: {reason}", file=sys.stderr)
            return None
    return measure(args)


def main(argv: list[str] | None = None) -> int:
    parser = link_parser(__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES))
    parser.add_argument("--rates", type=float, nargs="+", default=list(RATES))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime threads/service; 0: the default"
    )
    parser.add_argument(
        "--tail-threads",
        type=int,
        default=None,
        help="the tail's ONNX Runtime threads apart from --threads (it shares this machine)",
    )
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=ALL_PATHS)
    parser.add_argument(
        "--auto-max-drop",
        type=float,
        help="auto's accuracy bound in points (default: the head's); 100 lets it choose by time",
    )
    parser.add_argument(
        "--against",
        help="another run's bandwidth_sweep.json (e.g. --threads 1): add p50 ratios per cell",
    )
    parser.add_argument(
        "--name", default="sdsweep", help="network namespace and cgroup name prefix (short)"
    )
    parser.add_argument("--period-us", type=int, help="cgroup period instead of devices.json's")
    parser.add_argument(
        "--cpu-share", type=float, help="cores instead of the profile's (named PROFILE@SHARE)"
    )
    args = parser.parse_args(argv)
    result = measured_or_loaded(args, "bandwidth_sweep", sweep)
    if result is None:
        return 2
    floors(result)
    if args.against:
        other = json.loads(Path(args.against).read_text())
        result["against"] = {
            "file": args.against,
            "threads": other.get("threads", "?"),
            "tail_threads": other.get("tail_threads", other.get("threads", "?")),
            "cells": compare_runs(result, other),
        }
    out = Path(args.out)
    write_results("bandwidth_sweep", result, markdown(result), out, plot, indent=1)
    write_csv(result, out / "bandwidth_sweep.csv")
    print(f"wrote {out}/bandwidth_sweep.{{json,csv,md,png}}, figure3_gains.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
