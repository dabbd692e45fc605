"""``mode=nonn`` end to end on a device profile, beside ``split`` and ``local`` through the
same gateway (issue #24): is NoNN faster than running the local model on the device?

The set-up is the bandwidth sweep's (``benchmarks/stack.py``, :func:`device_stack`, path
``classify``): the device — gateway and head in one process, as deployed — in a cgroup
holding the profile's CPU share (pi4: 0.11 core, 10 ms period) in the root namespace; the
edge server's tail in a network namespace behind a tbf-shaped veth link (no CPU limit). The
K NoNN members sit in that namespace too, **each in its own cgroup with the same CPU share**
(each member is a device of its own), so the gateway reaches them over the same shaped link,
which the members share like devices on one wireless cell. The gateway posts the uploaded
photo to every member concurrently, each decodes, crops and runs its model, answers its
pooled features (uint8 envelope), and the gateway joins them in numpy.

Per photo the three modes go out back to back on one open-loop schedule (``local``,
``split``, ``nonn``, each request followed by a gap of 1.5x its mode's warm-up time: no
overlap), so a burst of load on the shared machine hits every mode alike. Each request's
time is the client's, from its intended send time. For ``nonn`` the answer's ``members``
give each member's round trip and compute (``X-Compute-Ms``: decode + model + envelope, under
its quota); then, for the per-member model time, the same photos are posted straight to the
members, all at once as the gateway does, and their ``Server-Timing`` stages are kept
(``decode``, ``member``: the ONNX model alone). Last, in a group of its own with the same
share, the teacher and the local model alone on the same photos (:mod:`benchmarks.model_alone`):
what one device would pay to run either itself.

    sudo python -m benchmarks.nonn_latency --config configs/nonn/lite2-caltech101-k2-narrow.yaml
    sudo python -m benchmarks.nonn_latency --nonn DIR --name k2-wide

``--config`` times an untrained bundle of that config's architecture
(:func:`benchmarks.nonn_costs.untrained_bundle`; times do not depend on the weights).
Photos: held-out Caltech-101 images (the NoNN configs' validation split, which trains and
picks nothing), spread over the classes. Writes
``benchmarks/results/nonn/latency_NAME.{json,md,png}``. Needs root, iproute2, ethtool and a
cgroup v1 cpu controller.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from benchmarks import cgroup
from benchmarks.bandwidth_sweep import measured_or_loaded
from benchmarks.loadgen import Reply, interleaved, percentile, run
from benchmarks.netns import calibrate, shaped_link
from benchmarks.report import (
    RESULTS,
    ROOT,
    conditions,
    figure,
    table,
    write_json,
    write_results,
)
from benchmarks.stack import device_stack
from splitdnn import devices
from splitdnn.bundle import default_bundle_path
from splitdnn.distill.config import config_samples, load_config
from splitdnn.nonn.bundle import load_nonn_bundle
from splitdnn.stats import median_ratio

MODES = ("local", "split", "nonn")
DATA_CONFIG = ROOT / "configs" / "nonn" / "lite2-caltech101-k2-narrow.yaml"
#: What the report states ran beside the measurement unless ``--note`` says otherwise.
NOTE = "two niced trainings (nice 10 and 19, one thread each); this run at normal priority"


def held_out_photos(config: Path, count: int) -> list[tuple[str, bytes]]:
    """``count`` photos of ``config``'s validation split (which trains and picks nothing),
    evenly spread over it (so over the classes, which it lists in order)."""
    _, val, _, _ = config_samples(load_config(config))
    step = max(1, len(val) // count)
    return [(s.path.name, s.path.read_bytes()) for s in val[::step][:count]]


def kernel_layout(model: Path) -> dict[str, int]:
    """How ONNX Runtime (this machine, one thread, all optimisations) lays out ``model``'s
    convolutions: how many run in its blocked NCHWc kernels, how many stay plain, and the
    layout reorders between them. A model whose channel counts do not suit the block runs
    slower per MAC; this is from its optimised graph, no timing."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="nonn-layout-") as folder:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3  # not the warning that the file is machine-specific
        options.optimized_model_filepath = str(Path(folder) / "optimised.onnx")
        ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(options.optimized_model_filepath).graph.node
    blocked = sum(1 for n in nodes if n.domain == "com.microsoft.nchwc" and n.op_type == "Conv")
    plain = sum(
        1 for n in nodes if n.op_type in ("Conv", "FusedConv") and not n.domain.endswith("nchwc")
    )
    reorders = sum(1 for n in nodes if n.op_type in ("ReorderInput", "ReorderOutput"))
    return {"convs": blocked + plain, "blocked": blocked, "plain": plain, "reorders": reorders}


def post(client: httpx.Client, mode: str, image: bytes, task: str) -> dict[str, Any]:
    """One ``/classify`` request; a non-200 or a degraded NoNN answer is an error (a member
    missing would time the stand-in, not the member)."""
    response = client.post(
        "/classify",
        params={"mode": mode, "task": task, "fallback": "false"},
        content=image,
        headers={"Content-Type": "image/jpeg"},
    )
    if response.status_code != 200:
        raise RuntimeError(f"{mode}: {response.status_code} {response.text[:200]}")
    answer = response.json()
    if answer.get("degraded"):
        raise RuntimeError(f"nonn degraded: members {answer.get('missing_members')} missing")
    return answer


def record_of(answer: dict[str, Any], image: str) -> dict[str, Any]:
    """What one answer says about where its time went."""
    t = answer["timings_ms"]
    info: dict[str, Any] = {"image": image, "mode": answer["mode"], "bytes": answer["bytes_sent"]}
    if answer["mode"] == "nonn":
        members = answer["members"]
        info |= {
            "join_ms": t["join"],
            "members": [
                {k: m.get(k) for k in ("index", "round_trip_ms", "compute_ms", "bytes_received")}
                for m in members
            ],
            "slowest_round_trip_ms": max(m["round_trip_ms"] for m in members),
        }
    else:
        stages = answer.get("head_stages_ms") or {}
        info |= {
            "head_ms": t["head"],
            "head_model_ms": stages.get("model", 0.0),
            "transfer_ms": t["transfer"],
            "tail_ms": t["tail"],
        }
    return info


def warm_gap(
    client: httpx.Client, photos: list[tuple[str, bytes]], mode: str, task: str, warmup: int
) -> float:
    """Warm a mode up; the gap to leave after each of its requests (1.5x its time)."""
    times = []
    for i in range(warmup):
        start = time.perf_counter()
        post(client, mode, photos[i % len(photos)][1], task)
        times.append(time.perf_counter() - start)
    return max(0.05, 1.5 * statistics.median(times))


def measure_modes(
    client: httpx.Client, photos: list[tuple[str, bytes]], task: str, warmup: int
) -> dict[str, Any]:
    """Every mode per photo on one interleaved open-loop schedule; the records and gaps."""
    gaps = {mode: warm_gap(client, photos, mode, task, warmup) for mode in MODES}
    plan, times = interleaved(gaps, len(photos))

    def send(k: int) -> Reply:
        mode, i = plan[k]
        return Reply(None, record_of(post(client, mode, photos[i][1], task), photos[i][0]))

    records = run(send, rate=1.0, count=len(plan), times=times)["records"]
    for r in records:
        r["cell"] = plan[r["i"]][0]
    return {"gaps_s": {m: round(g, 3) for m, g in gaps.items()}, "records": records}


def member_stages(urls: list[str], photos: list[tuple[str, bytes]]) -> list[list[dict[str, float]]]:
    """Per photo, every member's ``Server-Timing`` stages (ms) for that photo posted to all
    members at once (as the gateway does), straight from the client."""

    def one(client: httpx.Client, image: bytes) -> dict[str, float]:
        response = client.post("/v2/features", content=image,
                               headers={"Content-Type": "application/octet-stream"})  # fmt: skip
        response.raise_for_status()
        stages = {}
        for part in response.headers.get("Server-Timing", "").split(","):
            name, _, dur = part.strip().partition(";dur=")
            if dur:
                stages[name] = float(dur)
        return stages

    clients = [httpx.Client(base_url=u, timeout=120) for u in urls]
    try:
        with ThreadPoolExecutor(len(urls)) as pool:

            def all_at_once(image: bytes) -> list[dict[str, float]]:
                return list(pool.map(one, clients, [image] * len(clients)))

            for _, image in photos[:2]:  # warm-up
                all_at_once(image)
            return [all_at_once(image) for _, image in photos]
    finally:
        for c in clients:
            c.close()


def models_alone(
    group: cgroup.CpuGroup, bundle: Path, photos: list[tuple[str, bytes]]
) -> dict[str, Any]:
    """The split bundle's teacher and local model timed alone in ``group`` (the device's
    share; nothing else in it), one photo at a time: :mod:`benchmarks.model_alone`'s JSON."""
    with tempfile.TemporaryDirectory(prefix="nonn-alone-") as folder:
        paths = []
        for i, (name, image) in enumerate(photos):
            paths.append(Path(folder) / f"{i:03d}-{name}")
            paths[-1].write_bytes(image)
        argv = [sys.executable, "-m", "benchmarks.model_alone", str(bundle), *map(str, paths)]
        done = subprocess.run(
            group.wrap(argv), cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False
        )
    if done.returncode != 0:
        raise RuntimeError(f"model_alone failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


def _p50(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """p50/p95 per mode, the parts of nonn's time, per member times, nonn/local and
    nonn/split ratios of p50s with paired intervals."""
    ok = [r for r in result["records"] if r["error"] is None]
    cells: dict[str, Any] = {}
    for mode in MODES:
        rs = [r for r in ok if r["cell"] == mode]
        lat = [r["latency_ms"] for r in rs]
        cells[mode] = {
            "n": len(rs),
            "errors": sum(1 for r in result["records"] if r["cell"] == mode and r["error"]),
            "p50_ms": round(percentile(lat, 50), 2) if lat else None,
            "p95_ms": round(percentile(lat, 95), 2) if lat else None,
        }
        if mode == "nonn":
            cells[mode] |= {
                "slowest_member_round_trip_ms": _p50([r["slowest_round_trip_ms"] for r in rs]),
                "join_ms": _p50([r["join_ms"] for r in rs]),
                # the gateway's own part: receive, fan out, decode envelopes, answer, client
                "gateway_rest_ms": _p50(
                    [r["latency_ms"] - r["slowest_round_trip_ms"] - r["join_ms"] for r in rs]
                ),
                "bytes": _p50([r["bytes"] for r in rs]),
            }
        else:
            cells[mode] |= {
                "head_model_ms": _p50([r["head_model_ms"] for r in rs]),
                "head_ms": _p50([r["head_ms"] for r in rs]),
                "transfer_ms": _p50([r["transfer_ms"] for r in rs]),
                "tail_ms": _p50([r["tail_ms"] for r in rs]),
                "device_rest_ms": _p50(
                    [r["latency_ms"] - r["head_ms"] - r["transfer_ms"] - r["tail_ms"] for r in rs]
                ),
                "bytes": _p50([r["bytes"] for r in rs]),
            }
    nonn = [r for r in ok if r["cell"] == "nonn"]
    k = len(result["member_stages"][0]) if result["member_stages"] else 0
    members = []
    for i in range(k):
        through = [m for r in nonn for m in r["members"] if m["index"] == i]
        direct = [p[i] for p in result["member_stages"]]
        members.append(
            {
                "index": i,
                "compute_ms": _p50([m["compute_ms"] for m in through]),
                "round_trip_ms": _p50([m["round_trip_ms"] for m in through]),
                "transfer_ms": _p50([m["round_trip_ms"] - m["compute_ms"] for m in through]),
                "model_ms": _p50([d.get("member") for d in direct]),
                "decode_ms": _p50([d.get("decode") for d in direct]),
                "total_ms": _p50([d.get("total") for d in direct]),
            }
        )
    ratios = {}
    by = {(r["cell"], r["image"]): r["latency_ms"] for r in ok}
    for other in ("local", "split"):
        photos = [img for (m, img) in by if m == "nonn" and (other, img) in by]
        if photos:
            r = median_ratio([by[other, p] for p in photos], [by["nonn", p] for p in photos])
            ratios[f"nonn_over_{other}"] = {
                "ratio": round(r.ratio, 3),
                "ci95": [round(x, 3) for x in r.ci95],
                "photos": r.items,
            }
    alone = {
        role: {"model_ms": _p50(x["model_ms"]), "n": len(x["model_ms"]), "threads": x["threads"]}
        for role, x in (result.get("models_alone") or {}).items()
    }
    return {"cells": cells, "members": members, "ratios": ratios, "models_alone": alone}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    profile = devices.get(args.profile)
    photos = held_out_photos(Path(args.data_config), args.count)
    with ExitStack() as stack:
        if args.config:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nonn-time-")))
            nonn_dir = untrained(Path(args.config), folder / "bundle")
            os.chmod(folder, 0o755)
        else:
            nonn_dir = Path(args.nonn)
        bundle = load_nonn_bundle(nonn_dir)
        manifest = bundle.manifest
        result: dict[str, Any] = {
            "name": args.name,
            "profile": args.profile,
            "cpu_share": profile.cpu_share,
            "period_us": profile.period_us,
            "nonn": {
                "source": str(args.config or args.nonn),
                # untrained_bundle marks its bundles (their accuracy means nothing)
                "trained": not (manifest.metrics or {}).get("training", {}).get("untrained"),
                "bundle": bundle.id,
                "student": manifest.student,
                "members": len(manifest.members),
                "costs": (manifest.metrics or {}).get("costs"),
            },
            "split_bundle": str(args.bundle),
            "task": manifest.task,
            "rate_mbit": args.rate,
            "photos": {"source": str(args.data_config), "count": len(photos)},
            "note": args.note,
            "conditions": conditions(),
        }
        files = [nonn_dir / m.file for m in manifest.members]
        result["layout"] = {
            "local": kernel_layout(Path(args.bundle) / "local.onnx"),
            "members": [kernel_layout(f) for f in files],
        }
        link = stack.enter_context(shaped_link(args.rate, name=f"{args.ns}", subnet=234))
        result["calibration"] = calibrate(link)
        group = stack.enter_context(cgroup.cpu_group(f"{args.ns}-device", profile))
        member_groups = [
            stack.enter_context(cgroup.cpu_group(f"{args.ns}-m{i}", profile))
            for i in range(len(manifest.members))
        ]
        services = stack.enter_context(
            device_stack(link, Path(args.bundle), group, 0, path="classify", port_offset=400,
                         nonn=nonn_dir, member_groups=member_groups)
        )  # fmt: skip
        client = stack.enter_context(httpx.Client(base_url=services.url("client"), timeout=300))
        measured = measure_modes(client, photos, manifest.task, args.warmup)
        result |= measured
        urls = [services.url(f"member{i}") for i in range(len(manifest.members))]
        result["member_stages"] = member_stages(urls, photos)
        alone = stack.enter_context(cgroup.cpu_group(f"{args.ns}-alone", profile))
        result["models_alone"] = models_alone(alone, Path(args.bundle), photos)
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def untrained(config: Path, out: Path) -> Path:
    from benchmarks.nonn_costs import untrained_bundle  # torch only when asked for

    return untrained_bundle(config.resolve(), out)


def markdown(result: dict[str, Any]) -> list[str]:
    s = result["summary"]
    c, n = s["cells"], result["nonn"]
    costs = n.get("costs") or {}
    width = costs.get("width")
    macs = [m["macs"] for m in costs.get("members", [])]
    what = (
        f"{n['members']} members, {n['student']}"
        + (f", width {width:.3f}" if width else "")
        + (f", {max(macs) / 1e6:.1f} M MACs each" if macs else "")
        + ("" if n["trained"] else " (untrained weights of the same architecture)")
    )
    cal = result["calibration"]
    lines = [
        f"# mode=nonn against split and local on the {result['profile']} profile "
        f"({result['name']})",
        "",
        f"NoNN: {what}; bundle {n['bundle']}. Device (gateway + head, one process) and every "
        f"member each in its own cgroup of {result['cpu_share']} core "
        f"({result['period_us'] // 1000} ms period); members and the tail behind one "
        f"{result['rate_mbit']:g} Mbit/s tbf link (calibrated {cal['payload_mbit']} Mbit/s "
        "payload), the tail without a CPU limit. "
        f"{result['photos']['count']} held-out Caltech-101 photos a mode, modes interleaved "
        "per photo, no overlap. "
        f"Also running: {result['note'] or 'not recorded'}. Load average at the end "
        f"{', '.join(str(x) for x in result['load_after'])}.",
        "",
        *table(
            ["mode", "n", "p50 (ms)", "p95 (ms)", "where the p50 goes (medians, ms)", "bytes"],
            [
                [m, c[m]["n"], c[m]["p50_ms"], c[m]["p95_ms"], _parts(m, c[m]), c[m]["bytes"]]
                for m in MODES
            ],
            align="lrrrlr",
        ),
        "",
    ]
    for key, r in s["ratios"].items():
        other = key.removeprefix("nonn_over_")
        lines.append(
            f"- nonn / {other}, ratio of p50s: **{r['ratio']:.3f}** "
            f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] (paired bootstrap, {r['photos']} photos)"
        )
    lines += [
        "",
        "Per member (p50, ms): through the gateway, compute is `X-Compute-Ms` (decode + "
        "model + envelope) and transfer the rest of the member's round trip (the photo up the "
        "link, the features back, HTTP); posted straight to all members at once, the model "
        "alone and the photo's decode and crop (`Server-Timing`).",
        "",
        *table(
            ["member", "round trip", "compute", "transfer", "model alone", "decode + crop"],
            [
                [
                    m["index"],
                    m["round_trip_ms"],
                    m["compute_ms"],
                    m["transfer_ms"],
                    m["model_ms"],
                    m["decode_ms"],
                ]
                for m in s["members"]
            ],
        ),
        "",
        f"Local model on the same profile (local mode's model stage): "
        f"{c['local']['head_model_ms']} ms; split's device part: {c['split']['head_model_ms']} ms.",
    ]
    alone = s.get("models_alone") or {}
    if alone:
        lines += [
            "",
            f"Alone on the same profile (a {result['cpu_share']}-core group of its own, one photo "
            "at a time, threads sized to the quota as served; `benchmarks/model_alone.py`), p50 "
            "over the same photos: the teacher (the split bundle's offload model) "
            f"**{alone['offload']['model_ms']} ms**, the local model {alone['local']['model_ms']} "
            f"ms ({alone['offload']['threads']}).",
        ]
    layout = result.get("layout")
    if layout:
        lines += [
            "",
            "ONNX Runtime's layout of the convolutions (optimised graph, this machine): blocked "
            "NCHWc kernels / plain / layout reorders between them:",
            "",
            *table(
                ["model", "convolutions", "blocked", "plain", "reorders"],
                [
                    [name, x["convs"], x["blocked"], x["plain"], x["reorders"]]
                    for name, x in [("local model", layout["local"])]
                    + [(f"member {i}", x) for i, x in enumerate(layout["members"])]
                ],
            ),
        ]
    return lines


def _parts(mode: str, cell: dict[str, Any]) -> str:
    if mode == "nonn":
        return (
            f"slowest member round trip {cell['slowest_member_round_trip_ms']}, "
            f"join {cell['join_ms']}, gateway rest {cell['gateway_rest_ms']}"
        )
    return (
        f"model {cell['head_model_ms']}, device {cell['head_ms']}, link {cell['transfer_ms']}, "
        f"tail {cell['tail_ms']}, rest {cell['device_rest_ms']}"
    )


def plot(result: dict[str, Any], path: Path) -> None:
    ok = [r for r in result["records"] if r["error"] is None]
    s = result["summary"]
    with figure(path, 1, 2, figsize=(10, 4), dpi=110) as (_, (left, right)):
        data = [[r["latency_ms"] for r in ok if r["cell"] == m] for m in MODES]
        left.boxplot(data, showfliers=True)
        left.set_xticks(range(1, len(MODES) + 1), list(MODES))
        left.set_ylabel("client time per photo (ms)")
        left.set_title(f"{result['name']}: {result['profile']}, {result['rate_mbit']:g} Mbit/s")
        names = [f"member {m['index']}" for m in s["members"]] + ["local model"]
        model = [m["model_ms"] or 0 for m in s["members"]] + [
            s["cells"]["local"]["head_model_ms"] or 0
        ]
        if s.get("models_alone"):  # the teacher alone as one device would run it
            names.append("teacher alone")
            model.append(s["models_alone"]["offload"]["model_ms"] or 0)
        decode = [m["decode_ms"] or 0 for m in s["members"]]
        decode += [0] * (len(names) - len(decode))
        right.barh(names, model, label="model")
        right.barh(names, decode, left=model, label="decode + crop (members)")
        right.set_xlabel(f"p50 ms under {result['cpu_share']} core")
        right.set_title("per device")
        right.legend()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--nonn", type=Path, help="a NoNN bundle (splitdnn export nonn)")
    source.add_argument("--config", type=Path, help="time an untrained bundle of this config")
    parser.add_argument("--name", help="result name (latency_NAME); default from the source")
    parser.add_argument("--bundle", type=Path, default=default_bundle_path(),
                        help="the split bundle the device and tail serve")  # fmt: skip
    parser.add_argument("--data-config", type=Path, default=DATA_CONFIG,
                        help="whose validation split gives the held-out photos")  # fmt: skip
    parser.add_argument("--profile", default="pi4")
    parser.add_argument("--rate", type=float, default=20.0, help="link rate, Mbit/s")
    parser.add_argument("--count", type=int, default=24, help="photos per mode")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--ns", default="sdnonn", help="namespace and cgroup name prefix")
    parser.add_argument("--out", type=Path, default=RESULTS / "nonn")
    parser.add_argument("--note", default=NOTE, help="what else ran on the machine")
    parser.add_argument("--from-json", help="rewrite the reports of an earlier run's JSON")
    args = parser.parse_args(argv)
    if not (args.nonn or args.config or args.from_json):
        parser.error("give --nonn DIR or --config YAML")
    args.name = args.name or (args.config or args.nonn or Path("nonn")).stem
    result = measured_or_loaded(args, "nonn_latency", measure)
    if result is None:
        return 2
    name = f"latency_{result['name']}"
    write_json(name, result, args.out, indent=1)  # the measurement first, whatever follows
    result["summary"] = summarise(result)
    write_results(name, result, markdown(result), args.out, plot, indent=1)
    print(f"wrote {args.out}/{name}.{{json,md,png}}")
    print("\n".join(markdown(result)[2:]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
