"""What TLS costs on the device–edge link: split and offload p50 with and without it.

Two head → tail pairs run side by side on the bandwidth sweep's set-up (``bandwidth_sweep``:
both tails in one network namespace behind one tbf-shaped veth, each head in its own cgroup
holding a device profile's CPU share). The two pairs are two *slots*, A and B (own cgroup,
own ports, own processes); one slot holds a plain HTTP pair, the other a mutual-TLS pair
with certificates made here (``splitdnn certs``). Earlier runs kept plain in one slot and
TLS in the other, and the slots' own difference was as large as TLS's: here the pairs are
restarted between repeats with the roles swapped (repeat 1: plain in A, TLS in B; repeat 2:
the reverse; ...), every photo is measured in every repeat, so each condition spends the
same requests in each slot and a slot's bias cancels in TLS/plain. The slot effect (slot A
over slot B, the conditions balanced) is reported beside it, so the bias that cancelled is
seen. Keep-alive is on, so a handshake is paid once per connection, as in service.

At every rate and repeat both pairs are measured on one open-loop schedule: each photo in
every mode to both slots back to back, the slot that goes first alternating from photo to
photo, each request followed by a gap of 1.5x its warm-up time (no overlap), so a burst of
load on the shared machine hits plain and TLS alike.

    sudo python -m benchmarks.tls_cost --profile pi4 --rates 1 2 5 10 20 50 --count 100

One locked run gives intervals of about ±3-4 %; ``--combine EARLIER.json ...`` pools this
run (or ``--from-json``'s) with earlier runs of the same photos, bundle, profile and rates
into one report over all their repeats (each run's own TLS/plain beside), refusing runs
that differ.

Writes ``benchmarks/results/tls_cost.{json,md,png}``. Needs root, iproute2, ethtool and a
cgroup v1 cpu controller (like the sweep), and the ``certs`` extra.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks import cgroup
from benchmarks.bandwidth_sweep import (
    cell_of,
    held_out_images,
    link_parser,
    measured_or_loaded,
    post,
    warm_interval,
)
from benchmarks.loadgen import Reply, run
from benchmarks.netns import calibrate, shaped_link
from benchmarks.process_cpu import cpu_seconds
from benchmarks.report import conditions, figure, table, write_results
from benchmarks.stack import device_stack
from splitdnn import devices
from splitdnn.stats import MedianRatio, median_ratio
from splitdnn.tls import make_certificates

MODES = ["split", "offload"]
VARIANTS = ("plain", "tls")
#: The two head → tail pairs side by side (own cgroup, ports, processes); roles swap.
SLOTS = ("A", "B")
#: Body sizes of the CPU measurement: the cat's split envelope and its offload upload.
BODIES = {"split": 3306, "offload": 34306}

#: A tail stand-in for the CPU measurement: keep-alive HTTP/1.1, the same small answer to
#: every POST, TLS with a required client certificate when given cert, key and CA.
_ECHO_TAIL = """
import http.server, json, ssl, sys
answer = json.dumps({"top_k": [{"index": 0, "label": "c", "score": 1.0}]}).encode()
class Tail(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Tail)
if len(sys.argv) > 2:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=sys.argv[4])
    context.load_cert_chain(sys.argv[2], sys.argv[3])
    context.verify_mode = ssl.CERT_REQUIRED
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""


def client_cpu(certs: Path, count: int) -> dict[str, dict[str, float]]:
    """CPU the head's production tail client spends per request (its own thread's time,
    keep-alive on), plain and mutual TLS, at split's and offload's body sizes: what TLS
    costs the device apart from the link, without the shared machine's noise in it."""
    from services.head.settings import HeadSettings
    from services.head.tail_client import TailClient

    result: dict[str, dict[str, float]] = {}
    for variant in VARIANTS:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        files = [str(certs / n) for n in ("tail.pem", "tail.key", "ca.pem")]
        argv = [sys.executable, "-c", _ECHO_TAIL, str(port), *(files if variant == "tls" else [])]
        server = subprocess.Popen(argv)
        scheme = "https" if variant == "tls" else "http"
        tls = {"tls_cert": certs / "head.pem", "tls_key": certs / "head.key",
               "tls_ca": certs / "ca.pem"} if variant == "tls" else {}  # fmt: skip
        settings = HeadSettings(tail_url=f"{scheme}://127.0.0.1:{port}", **tls)
        try:
            for _ in range(100):  # until the server listens
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            client = TailClient(settings)
            result[variant] = {}
            for mode, size in BODIES.items():
                body = os.urandom(size)
                for _ in range(20):
                    client.post("/infer", body, "application/octet-stream", {}, {})
                start = time.thread_time()
                for _ in range(count):
                    client.post("/infer", body, "application/octet-stream", {}, {})
                result[variant][mode] = round((time.thread_time() - start) / count * 1e6, 1)
            client.close()
        finally:
            server.kill()
            server.wait()
    return result


def arrangement(repeat: int) -> dict[str, str]:
    """The variant each slot holds in a repeat: plain in A on even repeats (counted from 0),
    TLS in A on odd ones, so an even number of repeats gives each condition equal time in
    each slot."""
    variants = VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]
    return dict(zip(SLOTS, variants, strict=True))


def sending_order(photos: int) -> list[tuple[str, str, int]]:
    """(slot, mode, photo) in the order sent in one repeat at one rate: each photo in every
    mode to both slots back to back, slot A first for even photos and B first for odd ones
    (with the roles swapped between repeats, a photo's first condition alternates too)."""
    order = []
    for i in range(photos):
        slots = SLOTS if i % 2 == 0 else SLOTS[::-1]
        order += [(slot, mode, i) for mode in MODES for slot in slots]
    return order


def measure_repeat(
    clients: dict[str, httpx.Client],
    head_pids: dict[str, int],
    roles: dict[str, str],
    repeat: int,
    images: list[tuple[str, bytes]],
    warmup: int,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """One rate in one repeat: every (slot, mode) on one interleaved open-loop schedule.
    Returns the records, each labelled with its repeat, slot, variant, requested mode and
    photo, and the gap after each request by variant and mode."""
    gaps = {(s, m): warm_interval(clients[s], images, m, warmup) for s in SLOTS for m in MODES}
    plan = sending_order(len(images))
    times, t = [], 0.0
    for slot, mode, _ in plan:
        times.append(t)
        t += gaps[slot, mode]

    def send(k: int) -> Reply:
        slot, mode, i = plan[k]
        cpu_before = cpu_seconds(head_pids[slot])
        answer = post(clients[slot], mode, images[i][1])
        head_cpu_ms = (cpu_seconds(head_pids[slot]) - cpu_before) * 1000
        t = answer["timings_ms"]
        stages = answer.get("head_stages_ms") or {}
        return Reply(None, {
            "mode": answer["mode"], "head_ms": t["head"],
            "head_model_ms": stages.get("model", 0.0), "transfer_ms": t["transfer"],
            "tail_ms": t["tail"], "head_total_ms": t["total"], "bytes": answer["bytes_sent"],
            "head_cpu_ms": round(head_cpu_ms, 3),
        })  # fmt: skip

    records = run(send, rate=1.0, count=len(plan), times=times)["records"]
    for r in records:  # failed requests too: every record says where it was sent
        slot, mode, i = plan[r["i"]]
        r.update(repeat=repeat, slot=slot, variant=roles[slot], requested=mode, photo=i,
                 image=images[i][0])  # fmt: skip
    by_variant = {v: {m: gaps[s, m] for m in MODES} for s, v in roles.items()}
    return records, by_variant


def _ratio(ratio: MedianRatio) -> dict[str, Any]:
    return {"ratio": round(ratio.ratio, 4), "ci95": [round(x, 4) for x in ratio.ci95]}


def crossover_effect(records: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    """TLS/plain and slot A/B for one mode at one rate, over the photos that both slots
    answered in every repeat. TLS/plain pools every repeat (each condition as often in A as
    in B, so a slot's bias cancels); slot A/B pools both conditions (TLS's effect cancels
    the same way). Each is a ratio of medians with a paired bootstrap interval, a photo
    resampled with all its times. Beside them, what one arrangement alone would have shown
    (TLS/plain with TLS in A, with TLS in B), each condition's own slot A/B (across repeats,
    so drift between repeats is in it), and the head's CPU per request."""
    roles = {(r["repeat"], r["slot"]): r["variant"] for r in records}
    repeats = sorted({k for k, _ in roles})
    held = {v: sum(1 for (_, s), w in roles.items() if s == "A" and w == v) for v in VARIANTS}
    if len(roles) != 2 * len(repeats) or held["plain"] != held["tls"]:
        raise ValueError(f"each condition must hold slot A in as many repeats as the other: {held}")
    slot_of = {(k, v): s for (k, s), v in roles.items()}
    ok = {(r["photo"], r["repeat"], r["slot"]): r for r in records
          if r["requested"] == mode and r["error"] is None}  # fmt: skip
    photos = sorted({p for p, _, _ in ok
                     if all((p, k, s) in ok for k in repeats for s in SLOTS)})  # fmt: skip
    if not photos:
        return {"photos": 0}

    def times(slot: Callable[[int], str], among: list[int], key: str = "latency_ms") -> np.ndarray:
        return np.array([[ok[p, k, slot(k)][key] for k in among] for p in photos])

    def condition(variant: str, among: list[int] = repeats, key: str = "latency_ms") -> np.ndarray:
        return times(lambda k: slot_of[k, variant], among, key)

    def in_slot(slot: str, among: list[int]) -> np.ndarray:
        return times(lambda k: slot, among)

    where_tls = {s: [k for k in repeats if slot_of[k, "tls"] == s] for s in SLOTS}
    holding = {(s, v): [k for k in repeats if roles[k, s] == v] for s in SLOTS for v in VARIANTS}
    cpu = {v: condition(v, key="head_cpu_ms") for v in VARIANTS}
    return {
        "photos": len(photos),
        "repeats": len(repeats),
        "tls_over_plain": _ratio(median_ratio(condition("plain"), condition("tls"))),
        "slot_a_over_b": _ratio(median_ratio(in_slot("B", repeats), in_slot("A", repeats))),
        "tls_over_plain_with_tls_in": {
            s: _ratio(median_ratio(condition("plain", ks), condition("tls", ks)))
            for s, ks in where_tls.items()
        },
        "slot_a_over_b_of": {
            v: _ratio(median_ratio(in_slot("B", holding["B", v]), in_slot("A", holding["A", v])))
            for v in VARIANTS
        },
        "head_cpu_ms": {v: round(float(np.median(c)), 3) for v, c in cpu.items()},
        "head_cpu_added_ms": round(float(np.median(cpu["tls"] - cpu["plain"])), 3),
    }


def verdict(rows: list[dict[str, Any]], mode: str = "split", limit: float = 1.05) -> str:
    """Whether "TLS adds at most ``limit`` - 1 to ``mode``'s p50" holds at every rate:
    ``shown`` (every upper 95 % bound within it), ``refuted`` (some lower bound above it),
    else ``not shown``."""
    bounds = [row["effect"][mode]["tls_over_plain"]["ci95"] for row in rows]
    if any(low > limit for low, _ in bounds):
        return "refuted"
    return "shown" if bounds and all(high <= limit for _, high in bounds) else "not shown"


def rate_row(rate: float, repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """One rate's cells (per variant and mode, pooled over repeats) and effects per mode;
    ``repeats`` holds each repeat's records, gaps, roles and calibration."""
    records = [r for rep in repeats for r in rep.pop("records")]
    payload_mbit = statistics.fmean(rep["calibration"]["payload_mbit"] for rep in repeats)
    cells = {
        v: {
            m: cell_of(
                m,
                [r for r in records if (r["variant"], r["requested"]) == (v, m)],
                statistics.fmean(rep["gap_s"][v][m] for rep in repeats),
                payload_mbit,
            )
            for m in MODES
        }
        for v in VARIANTS
    }
    p50 = {v: {m: c["p50_ms"] for m, c in cells[v].items()} for v in VARIANTS}
    return {
        "rate_mbit": rate,
        "repeats": repeats,
        "cells": cells,
        "effect": {m: crossover_effect(records, m) for m in MODES},
        "p50_ms": p50,
    }


def photo_fingerprint(result: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """Each photo's name and split payload size in a run: the same photos through the same
    bundle give the same pairs (the payload is deterministic), so runs whose results did not
    record their bundle can still be checked."""
    seen: dict[int, set[tuple[str, int]]] = {}
    for row in result["rows"]:
        for variant in VARIANTS:
            for r in row["cells"][variant]["split"]["records"]:
                seen.setdefault(r["photo"], set()).add((r["image"], r["bytes"]))
    if any(len(pairs) > 1 for pairs in seen.values()):
        raise ValueError("a photo's split payload differs within one run: not one bundle")
    return {photo: next(iter(pairs)) for photo, pairs in sorted(seen.items())}


def _run_summaries(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs a result holds, each with its own conditions and TLS/plain per rate (a
    pooled result already lists them)."""
    if "runs" in result:
        return copy.deepcopy(result["runs"])
    return [{
        "conditions": result.get("conditions"), "note": result.get("note", ""),
        "repeats": result["repeats"], "load_after": result.get("load_after"),
        "client_cpu_us": result.get("client_cpu_us"),
        "tls_over_plain": {m: [row["effect"][m].get("tls_over_plain") for row in result["rows"]]
                           for m in MODES},
        "verdict": {m: verdict(result["rows"], m) for m in MODES},
    }]  # fmt: skip


def check_poolable(results: list[dict[str, Any]]) -> None:
    """Refuse, saying what differs, runs that are not one measurement repeated: another
    profile, CPU share, photo folder or count, bundle, rate list, or other photos or payloads;
    or a run without per-repeat records (one before the roles were swapped)."""
    for k, result in enumerate(results):
        rows = result.get("rows") or []
        if not rows or any("repeats" not in row or "records" not in row["cells"]["plain"]["split"]
                           for row in rows):  # fmt: skip
            raise ValueError(f"run {k + 1} has no per-repeat records to pool")
    first = results[0]

    def described(result: dict[str, Any]) -> dict[str, Any]:
        return {
            "profile": result["profile"],
            "cpu_share": result["cpu_share"],
            "photo folder": result["images"].get("folder"),
            "photo count": result["images"]["count"],
            "rates (Mbit/s)": [row["rate_mbit"] for row in result["rows"]],
        }

    for k, result in enumerate(results[1:], start=2):
        for key, value in described(result).items():
            if value != described(first)[key]:
                raise ValueError(f"run {k} differs from run 1 in {key}: "
                                 f"{value!r} vs {described(first)[key]!r}")  # fmt: skip
        bundles = {r["bundle"] for r in (first, result) if "bundle" in r}
        if len(bundles) > 1:
            raise ValueError(f"run {k} differs from run 1 in bundle: {sorted(bundles)}")
        ours, theirs = photo_fingerprint(result), photo_fingerprint(first)
        if ours != theirs:
            differing = sorted(p for p in ours.keys() | theirs.keys()
                               if ours.get(p) != theirs.get(p))  # fmt: skip
            raise ValueError(
                f"run {k} differs from run 1 in photos or split payloads (another bundle?) at "
                f"photo {differing[0]}: {ours.get(differing[0])} vs {theirs.get(differing[0])}"
            )


def pool(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result over all repeats of several runs of one measurement (earliest first): the
    repeats renumbered in sequence, every rate's cells and effects recomputed from the
    records together, the same verdict; each run's own conditions and TLS/plain kept under
    ``runs``. Raises ValueError where the runs differ (:func:`check_poolable`)."""
    check_poolable(results)
    runs: list[dict[str, Any]] = []
    by_rate: dict[float, list[dict[str, Any]]] = {r["rate_mbit"]: [] for r in results[0]["rows"]}
    errors: dict[float, dict[tuple[str, str], Counter]] = {rate: {} for rate in by_rate}
    offset = 0
    for result in results:
        first_run = len(runs)
        runs += _run_summaries(result)
        for row in copy.deepcopy(result["rows"]):
            records = [r for v in VARIANTS for m in MODES for r in row["cells"][v][m]["records"]]
            for v in VARIANTS:
                for m in MODES:
                    errors[row["rate_mbit"]].setdefault((v, m), Counter()).update(
                        row["cells"][v][m]["errors"]
                    )
            for rep in row["repeats"]:
                own = [r for r in records if r["repeat"] == rep["repeat"]]
                for r in own:
                    r["repeat"] += offset
                rep["run"] = rep.get("run", 0) + first_run
                rep["repeat"] += offset
                rep["records"] = own
                by_rate[row["rate_mbit"]].append(rep)
        offset += result["repeats"]
    rows = []
    for rate, repeats in by_rate.items():
        row = rate_row(rate, repeats)
        for (v, m), counted in errors[rate].items():  # cell_of sees the answered ones only
            row["cells"][v][m]["errors"] = dict(counted)
        rows.append(row)
    last = results[-1]
    return {
        "profile": last["profile"],
        "cpu_share": last["cpu_share"],
        "images": last["images"],
        **({"bundle": last["bundle"]} if "bundle" in last else {}),
        "repeats": offset,
        "arrangements": [a for r in results for a in r["arrangements"]],
        "conditions": last["conditions"],
        "note": f"{len(runs)} runs pooled; each run's conditions and figures under runs",
        "runs": runs,
        "rows": rows,
        "verdict": {m: verdict(rows, m) for m in MODES},
        "load_after": last["load_after"],
        "client_cpu_us": last.get("client_cpu_us"),
    }


def start_pairs(
    stack: ExitStack,
    link: Any,
    groups: dict[str, cgroup.CpuGroup],
    roles: dict[str, str],
    certs: Path,
    args: argparse.Namespace,
) -> tuple[dict[str, httpx.Client], dict[str, int]]:
    """Both slots' head → tail pairs in the roles given (slot A started first, always), on
    the slot's own cgroup and ports; a client to each head and each head's pid by slot."""
    clients, head_pids = {}, {}
    for offset, slot in enumerate(SLOTS):
        services = stack.enter_context(
            device_stack(
                link,
                Path(args.bundle),
                groups[slot],
                args.threads,
                path="head",
                tls_dir=certs if roles[slot] == "tls" else None,
                port_offset=300 + offset * 10,
            )
        )
        clients[slot] = stack.enter_context(
            httpx.Client(base_url=services.url("head"), timeout=300)
        )
        head_pids[slot] = services.processes["head"].pid
    return clients, head_pids


def measure(args: argparse.Namespace) -> dict[str, Any]:
    profile = devices.get(args.profile)
    images = held_out_images(Path(args.images), args.count)
    result: dict[str, Any] = {
        "profile": args.profile,
        "cpu_share": profile.cpu_share,
        "images": {"folder": str(args.images), "count": len(images)},
        "bundle": str(Path(args.bundle).resolve()),
        "repeats": args.repeats,
        "arrangements": [arrangement(k) for k in range(args.repeats)],
        "conditions": conditions(),
        "note": args.note,
        "rows": [],
    }
    by_rate: dict[float, list[dict[str, Any]]] = {rate: [] for rate in args.rates}
    with ExitStack() as stack:
        certs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tls-cost-")))
        link = stack.enter_context(shaped_link(args.rates[0], name=args.name, subnet=233))
        make_certificates(certs, ["tail", "head"], hosts=[link.ns_ip], days=2)
        os.chmod(certs, 0o755)
        result["client_cpu_us"] = client_cpu(certs, args.cpu_count)
        print("client CPU per request (us):", result["client_cpu_us"], flush=True)
        # each slot its own share, as each device has its own CPU; kept across repeats
        groups = {
            slot: stack.enter_context(
                cgroup.cpu_group(f"{args.name}-{args.profile}-{slot}", profile)
            )
            for slot in SLOTS
        }
        for repeat in range(args.repeats):
            roles = arrangement(repeat)
            with ExitStack() as pairs:  # the pairs restart with the roles swapped
                clients, head_pids = start_pairs(pairs, link, groups, roles, certs, args)
                for rate in args.rates:
                    link = link.set_rate(rate)
                    calibration = calibrate(link)
                    records, gaps = measure_repeat(
                        clients, head_pids, roles, repeat, images, args.warmup
                    )
                    by_rate[rate].append({
                        "repeat": repeat, "roles": roles, "gap_s": gaps,
                        "calibration": calibration, "records": records,
                    })  # fmt: skip
                    print(f"repeat {repeat + 1} {roles} {rate:g} Mbit/s done", flush=True)
    for rate in args.rates:
        row = rate_row(rate, by_rate[rate])
        result["rows"].append(row)
        print(rate, row["p50_ms"], {m: e.get("tls_over_plain") for m, e in row["effect"].items()},
              flush=True)  # fmt: skip
    result["verdict"] = {m: verdict(result["rows"], m) for m in MODES}
    result["load_after"] = os.getloadavg()
    return result


def _with_ci(ratio: dict[str, Any] | None) -> str:
    if not ratio:
        return "–"
    low, high = ratio["ci95"]
    return f"{ratio['ratio']:.3f} [{low:.3f}, {high:.3f}]"


def markdown(result: dict[str, Any]) -> list[str]:
    """The report's lines (the conditions line goes under the title)."""
    load_after = ", ".join(f"{x:.2f}" for x in result["load_after"])
    n, repeats = result["images"]["count"], result["repeats"]
    rows = result["rows"]
    lines = [
        f"# TLS cost on the device–edge link ({result['profile']}, "
        f"{result['cpu_share']} core for the head)",
        "",
        f"Load average at the end {load_after}; {n} held-out photos, each sent in every mode "
        f"to both slots in each of {repeats} repeats ({n * repeats // 2} requests per "
        "condition, slot, mode and rate); mutual TLS head → tail, keep-alive on.",
        "",
        f"Also running: {result['note'] or 'not recorded'}",
        "",
        "Slots A and B are the two head → tail pairs side by side (each its own cgroup of "
        f"{result['cpu_share']} core, its own ports and processes; one namespace and veth "
        "shared). Repeat 1 runs plain in A and TLS in B, repeat 2 the reverse, and so on "
        "(both pairs restarted between repeats), so each condition spends as many requests "
        "in each slot. TLS/plain is the ratio of the two conditions' p50s over all repeats "
        "(the slots' bias cancels); slot A/B the ratio of the slots' p50s over both "
        "conditions (TLS's effect cancels): the bias that was cancelled. Each with a 95 % "
        "paired-bootstrap interval (photos resampled with all their times).",
        "",
        *(f"**{m}: TLS adds ≤ 5 % to p50 (upper 95 % bound ≤ 1.05 at every rate): "
          f"{verdict(rows, m)}.**" for m in MODES),
        "",
        *table(
            ["rate (Mbit/s)", "split p50 plain → TLS (ms)", "split TLS/plain [95 % CI]",
             "split slot A/B [95 % CI]", "offload p50 plain → TLS (ms)",
             "offload TLS/plain [95 % CI]", "offload slot A/B [95 % CI]"],
            ([f"{row['rate_mbit']:g}", *_mode_cells(row, "split"), *_mode_cells(row, "offload")]
             for row in rows),
            align="rrrrrrr",
        ),
        "",
        "What one arrangement alone would show (TLS/plain with TLS in slot A, in slot B), "
        "each condition's own slot A/B (across repeats: drift between repeats is in it), "
        "and the head process's CPU per request (all threads, median, plain → TLS):",
        "",
        *table(
            ["rate (Mbit/s)", "mode", "TLS/plain, TLS in A", "TLS/plain, TLS in B",
             "plain: slot A/B", "TLS: slot A/B", "head CPU ms"],
            ([f"{row['rate_mbit']:g}", m, *_bias_cells(row["effect"][m])]
             for row in rows for m in MODES),
            align="rlrrrrr",
        ),
    ]  # fmt: skip
    if result.get("runs"):
        lines += ["", *runs_lines(result)]
    cpu = result.get("client_cpu_us")
    if cpu:
        lines += [
            "",
            "CPU of the head's tail client per request (its thread's time, keep-alive, "
            f"loopback, outside the cgroup; a {result['cpu_share']}-core device pays "
            f"~{1 / result['cpu_share']:.0f}x this in wall time):",
            "",
            *table(
                ["body", "plain (µs)", "mutual TLS (µs)", "TLS adds (µs)"],
                (
                    [f"{mode} ({size:,} B)", cpu["plain"][mode], cpu["tls"][mode],
                     f"{cpu['tls'][mode] - cpu['plain'][mode]:+.1f}"]
                    for mode, size in BODIES.items()
                ),
            ),
        ]  # fmt: skip
    return lines


def runs_lines(result: dict[str, Any]) -> list[str]:
    """A pooled result's runs: each one's conditions, load and own TLS/plain per rate."""
    rates = [f"{row['rate_mbit']:g}" for row in result["rows"]]
    lines = [
        f"Pooled from {len(result['runs'])} runs of the same photos, bundle, profile and "
        "rates (the tables above are over all their repeats); each run on its own:",
        "",
    ]
    for k, run_ in enumerate(result["runs"], start=1):
        c = run_.get("conditions") or {}
        load = ", ".join(f"{x:.2f}" for x in c.get("load_average_at_start", []))
        end = ", ".join(f"{x:.2f}" for x in run_.get("load_after") or [])
        cpu = run_.get("client_cpu_us") or {}
        client = (f"; tail client CPU per split request {cpu['plain']['split']} → "
                  f"{cpu['tls']['split']} µs" if cpu else "")  # fmt: skip
        lines.append(f"- run {k}: {c.get('date', '?')}, commit {c.get('commit', '?')}, "
                     f"{run_['repeats']} repeats, load {load} → {end}{client}; also running: "
                     f"{run_.get('note') or 'not recorded'}")  # fmt: skip
    lines.append("")
    pooled = {m: [row["effect"][m].get("tls_over_plain") for row in result["rows"]] for m in MODES}
    lines += table(
        ["TLS/plain [95 % CI]", *(f"{r} Mbit/s" for r in rates), "≤ 5 %"],
        [
            *([f"{m}, run {k}", *map(_with_ci, run_["tls_over_plain"][m]), run_["verdict"][m]]
              for m in MODES for k, run_ in enumerate(result["runs"], start=1)),
            *([f"{m}, pooled", *map(_with_ci, pooled[m]), verdict(result["rows"], m)]
              for m in MODES),
        ],
        align="l" + "r" * (len(rates) + 1),
    )  # fmt: skip
    return lines


def _mode_cells(row: dict[str, Any], mode: str) -> list[str]:
    """p50 plain → TLS, TLS/plain and slot A/B with their intervals."""
    effect = row["effect"][mode]
    p50 = row["p50_ms"]
    return [
        f"{p50['plain'][mode]:.1f} → {p50['tls'][mode]:.1f}",
        _with_ci(effect.get("tls_over_plain")),
        _with_ci(effect.get("slot_a_over_b")),
    ]


def _bias_cells(effect: dict[str, Any]) -> list[str]:
    if not effect.get("photos"):
        return ["–"] * 5
    cpu = effect["head_cpu_ms"]
    return [
        *(_with_ci(effect["tls_over_plain_with_tls_in"][s]) for s in SLOTS),
        *(_with_ci(effect["slot_a_over_b_of"][v]) for v in VARIANTS),
        f"{cpu['plain']:.2f} → {cpu['tls']:.2f} ({effect['head_cpu_added_ms']:+.2f})",
    ]


def plot(result: dict[str, Any], path: Path) -> None:
    rows = result["rows"]
    rates = [r["rate_mbit"] for r in rows]
    with figure(path, 1, 2, figsize=(11, 4), dpi=120) as (_, (left, right)):
        for mode, colour in (("split", "C0"), ("offload", "C1")):
            for variant, style in (("plain", "-"), ("tls", "--")):
                p50 = [r["p50_ms"][variant][mode] for r in rows]
                left.plot(rates, p50, style, color=colour, marker="o", label=f"{mode} {variant}")
        left.set(xscale="log", yscale="log", xlabel="link rate (Mbit/s)", ylabel="p50 (ms)",
                 title=f"p50, {result['profile']} profile, keep-alive")  # fmt: skip
        left.legend()
        for k, (mode, key, colour, label) in enumerate((
            ("split", "tls_over_plain", "C0", "split TLS/plain"),
            ("split", "slot_a_over_b", "C2", "split slot A/B"),
            ("offload", "tls_over_plain", "C1", "offload TLS/plain"),
        )):  # fmt: skip
            shifted = [rate * (1 + 0.06 * (k - 1)) for rate in rates]
            ratios = [r["effect"][mode][key] for r in rows]
            middle = [x["ratio"] for x in ratios]
            below = [x["ratio"] - x["ci95"][0] for x in ratios]
            above = [x["ci95"][1] - x["ratio"] for x in ratios]
            right.errorbar(shifted, middle, yerr=[below, above], fmt="o", color=colour,
                           capsize=3, label=label)  # fmt: skip
        right.axhline(1.0, color="grey", lw=0.8)
        right.axhline(1.05, color="red", lw=0.8, ls="--", label="+5 %")
        title = f"95 % intervals; {result['repeats']} repeats, slots' roles swapped"
        right.set(xscale="log", xlabel="link rate (Mbit/s)", ylabel="ratio of p50s", title=title)
        right.legend(fontsize=8)


def main(argv: list[str] | None = None) -> int:
    parser = link_parser(__doc__.splitlines()[0])
    parser.add_argument("--profile", default="pi4")
    parser.add_argument("--rates", type=float, nargs="+", default=[1, 2, 5, 10, 20, 50])
    parser.add_argument(
        "--cpu-count", type=int, default=2000, help="requests per client-CPU measurement"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--repeats", type=int, default=2,
        help="repeats, the slots' roles swapped between them (even: each condition as often "
        "in each slot)",
    )  # fmt: skip
    parser.add_argument(
        "--name", default="sdtls", help="network namespace and cgroup name prefix (short)"
    )
    parser.add_argument(
        "--combine", nargs="+", default=[], metavar="EARLIER.json",
        help="pool this run with earlier runs' JSON (earliest first) of the same photos, "
        "bundle, profile and rates: one report over all their repeats",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.repeats < 2 or args.repeats % 2:
        parser.error("--repeats must be even and at least 2: each condition as often in each slot")
    out = Path(args.out)
    result = measured_or_loaded(args, "tls_cost", measure)
    if result is None:
        return 2
    if args.combine:
        earlier = [json.loads(Path(path).read_text()) for path in args.combine]
        try:
            result = pool([*earlier, result])
        except ValueError as error:
            print(f"tls_cost: cannot pool: {error}", file=sys.stderr)
            return 2
    write_results("tls_cost", result, markdown(result), out, plot, indent=1)
    print(f"wrote {out}/tls_cost.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
