"""Hostile inputs against the running stack: hypothesis-generated envelopes, OIP requests and
uploads, each answered with its 4xx problem+json; RSS of every service sampled throughout.

    python -m benchmarks.hostile                 # 10,000 cases on the default bundle
    python -m benchmarks.hostile --cases 500 --bundle DIR

Envelopes and OIP requests go straight to the tail at its in-flight limit (8 at once);
uploads go to the gateway at the head's limit (2 at once), so refusals come from the checks,
not from admission control. Counted: statuses per kind, 5xx, 200s for kinds that must never
be accepted (NaN/inf tensors or scales, batches over the limit, bombs), whether a process
died, and the tail's peak RSS against its idle RSS.

Writes ``benchmarks/results/hostile.{json,md,png}``.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import zstandard
from hypothesis import Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from benchmarks.inputs import png_declaring
from benchmarks.report import ROOT, conditions, figure, table, write_results
from benchmarks.stack import Stack, local_stack, mark_times, stack_parser
from services.tail.settings import TailSettings
from splitdnn import oip, wire
from splitdnn.bundle import load_bundle

#: Kinds that must never be answered 200.
NEVER_200 = {
    "nan_fp32",
    "nan_fp16",
    "bad_scale",
    "big_batch",
    "oip_nan",
    "oip_big_batch",
    "png_bomb_header",
    "extreme_aspect",
    "other_format",
    "zstd_bomb",
    "other_bundle",
}


@dataclass
class Case:
    kind: str
    target: str  # "tail" or "gateway"
    body: bytes
    headers: dict[str, str]


@dataclass
class Model:
    name: str
    bundle_id: str
    shape: tuple[int, ...]
    max_batch: int


def envelope_fields(
    model: Model, x: np.ndarray, quantisation: str = "fp32", /, **over: Any
) -> bytes:
    """A version-1 envelope of ``x`` written field by field, with fields overridden."""
    quant = quantisation
    raw_dtype = wire.DTYPES[wire.QUANTISATIONS[quant]]
    raw = np.ascontiguousarray(x.astype(raw_dtype)).tobytes()
    fields = {
        "v": 1,
        "bundle": model.bundle_id,
        "dtype": wire.QUANTISATIONS[quant],
        "shape": list(x.shape),
        "quant": quant,
        "scale": None,
        "zero_point": None,
        "compression": "none",
        "raw_size": len(raw),
        "data": raw,
    }
    fields.update(over)
    return msgpack.packb(fields, use_bin_type=True)


def image_bytes(fmt: str, size: tuple[int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buffer, fmt)
    return buffer.getvalue()


def strategies(model: Model, cat_jpeg: bytes) -> st.SearchStrategy[Case]:
    msgpack_type = {"Content-Type": wire.CONTENT_TYPE}
    json_type = {"Content-Type": "application/json"}
    sample = model.shape
    size = math.prod(sample)

    def tensor(draw, batch: int = 1) -> np.ndarray:
        return np.full((batch, *sample), draw(st.floats(-3, 3)), np.float32)

    @st.composite
    def nan_float(draw, quant: str) -> Case:
        x = tensor(draw)
        flat = x.reshape(-1)
        for i in draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=5)):
            flat[i] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        kind = "nan_" + quant
        return Case(kind, "tail", envelope_fields(model, x, quant), msgpack_type)

    @st.composite
    def bad_scale(draw) -> Case:
        scale = draw(st.floats(3.5e38, 1e308) | st.floats(1e-300, 1e-46))
        x = np.zeros((1, *sample), np.uint8)
        body = envelope_fields(model, x, "uint8", scale=[scale], zero_point=[0])
        return Case("bad_scale", "tail", body, msgpack_type)

    @st.composite
    def big_batch(draw) -> Case:
        batch = draw(st.integers(model.max_batch + 1, 1000))
        raw = bytes(batch * size)
        data = zstandard.ZstdCompressor(level=3).compress(raw)
        body = envelope_fields(
            model,
            np.zeros((1, *sample), np.uint8),
            "uint8",
            shape=[batch, *sample],
            scale=[1.0] * batch,
            zero_point=[0] * batch,
            compression="zstd",
            raw_size=len(raw),
            data=data,
        )
        return Case("big_batch", "tail", body, msgpack_type)

    @st.composite
    def wrong_shape(draw) -> Case:
        shape = draw(st.lists(st.integers(0, 40), min_size=1, max_size=5))
        while math.prod(shape) > 4 * size:  # a wrong shape, not a big body
            shape.pop()
        x = np.zeros(shape, np.float32)
        if tuple(shape[1:]) == sample:
            x = np.zeros((1, 1), np.float32)
        return Case("wrong_shape", "tail", envelope_fields(model, x), msgpack_type)

    @st.composite
    def other_bundle(draw) -> Case:
        bundle = draw(st.text("0123456789abcdef", min_size=16, max_size=16))
        if bundle == model.bundle_id:
            bundle = "f" * 16
        body = envelope_fields(model, tensor(draw), bundle=bundle)
        return Case("other_bundle", "tail", body, msgpack_type)

    @st.composite
    def raw_size_lie(draw) -> Case:
        x = tensor(draw)
        lie = draw(st.integers(0, 2**40))
        return Case("raw_size_lie", "tail", envelope_fields(model, x, raw_size=lie), msgpack_type)

    @st.composite
    def zstd_bomb(draw) -> Case:
        factor = draw(st.integers(2, 256))
        raw_size = size  # declares one uint8 sample, inflates to ``factor`` times that
        compressor = zstandard.ZstdCompressor(level=3, write_content_size=draw(st.booleans()))
        data = compressor.compress(bytes(raw_size * factor))
        x = np.zeros((1, *sample), np.uint8)
        body = envelope_fields(
            model, x, "uint8", scale=[1.0], zero_point=[0], compression="zstd", data=data
        )
        return Case("zstd_bomb", "tail", body, msgpack_type)

    @st.composite
    def mutated(draw) -> Case:
        key = draw(st.sampled_from(["v", "dtype", "shape", "quant", "scale", "zero_point",
                                    "compression", "raw_size", "data", "bundle"]))  # fmt: skip
        value = draw(
            st.none()
            | st.booleans()
            | st.integers(-(2**63), 2**64 - 1)
            | st.floats()
            | st.text(max_size=8)
            | st.binary(max_size=64)
            | st.lists(st.integers(-5, 300), max_size=6)
        )
        body = envelope_fields(model, tensor(draw), **{key: value})
        return Case("mutated_field", "tail", body, msgpack_type)

    random_bytes = st.binary(max_size=4096).map(
        lambda b: Case("random_bytes", "tail", b, msgpack_type)
    )

    @st.composite
    def oip_nan(draw) -> Case:
        x = tensor(draw).reshape(-1).tolist()
        for i in draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=3)):
            x[i] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        request = {"inputs": [{"name": "bottleneck", "datatype": "FP32",
                               "shape": [1, *sample], "data": x}]}  # fmt: skip
        return Case("oip_nan", "tail", json.dumps(request).encode(), json_type)

    @st.composite
    def oip_big_batch(draw) -> Case:
        batch = draw(st.integers(model.max_batch + 1, 1000))
        request = {"inputs": [{"name": "bottleneck", "datatype": "FP32",
                               "shape": [batch, *sample],
                               "parameters": {"binary_data_size": batch * size * 4}}]}  # fmt: skip
        header = json.dumps(request).encode()
        headers = {oip.HEADER_LENGTH: str(len(header)), "Content-Type": oip.BINARY_CONTENT_TYPE}
        return Case("oip_big_batch", "tail", header + bytes(64), headers)

    oip_random = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=20,
    ).map(lambda v: Case("oip_random_json", "tail", json.dumps(v).encode(), json_type))

    # --- uploads, to the gateway -----------------------------------------------------------
    @st.composite
    def png_bomb(draw) -> Case:
        side = draw(st.integers(8_001, 65_535))  # 64 MP limit: 8000 x 8000
        return Case("png_bomb_header", "gateway", png_declaring(side, side), {})

    @st.composite
    def extreme_aspect(draw) -> Case:
        width = draw(st.integers(300_000, 2_000_000))
        return Case("extreme_aspect", "gateway", png_declaring(width, 1, pixels=True), {})

    @st.composite
    def truncated(draw) -> Case:
        cut = draw(st.integers(0, len(cat_jpeg) - 1))
        return Case("truncated_jpeg", "gateway", cat_jpeg[:cut], {"Content-Type": "image/jpeg"})

    @st.composite
    def other_format(draw) -> Case:
        fmt = draw(st.sampled_from(["GIF", "BMP", "TIFF", "ICO", "PPM"]))
        size = (draw(st.integers(1, 64)), draw(st.integers(1, 64)))
        return Case("other_format", "gateway", image_bytes(fmt, size), {})

    upload_bytes = st.binary(max_size=4096).map(lambda b: Case("random_upload", "gateway", b, {}))

    @st.composite
    def flipped(draw) -> Case:
        data = bytearray(cat_jpeg)
        for i in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=20)):
            data[i] = draw(st.integers(0, 255))
        return Case("corrupted_jpeg", "gateway", bytes(data), {"Content-Type": "image/jpeg"})

    return st.one_of(
        nan_float("fp32"),
        nan_float("fp16"),
        bad_scale(),
        big_batch(),
        wrong_shape(),
        other_bundle(),
        raw_size_lie(),
        zstd_bomb(),
        mutated(),
        random_bytes,
        oip_nan(),
        oip_big_batch(),
        oip_random,
        png_bomb(),
        extreme_aspect(),
        truncated(),
        other_format(),
        upload_bytes,
        flipped(),
    )


def generate(model: Model, cat_jpeg: bytes, n: int, seed: int) -> list[Case]:
    cases: list[Case] = []

    @hypothesis_seed(seed)
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate])
    @given(strategies(model, cat_jpeg))
    def collect(case: Case) -> None:
        cases.append(case)

    collect()
    return cases[:n]


async def send(stack: Stack, model: Model, cases: list[Case], concurrency: int) -> list[dict]:
    results: list[dict] = []
    semaphore = asyncio.Semaphore(concurrency)
    auth = {"Authorization": f"Bearer {stack.token}"}
    paths = {"tail": f"/v2/models/{model.name}/infer", "gateway": "/classify"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(case: Case) -> None:
            async with semaphore:
                start = time.perf_counter()
                try:
                    response = await client.post(
                        stack.url(case.target) + paths[case.target],
                        content=case.body,
                        headers={**auth, **case.headers},
                    )
                    status: int | str = response.status_code
                    problem = response.headers.get("content-type", "").startswith(
                        "application/problem+json"
                    )
                except httpx.HTTPError as exc:
                    status, problem = type(exc).__name__, False
                results.append(
                    {
                        "kind": case.kind,
                        "target": case.target,
                        "status": status,
                        "problem_json": problem,
                        "ms": (time.perf_counter() - start) * 1000,
                        "bytes": len(case.body),
                    }
                )

        await asyncio.gather(*(one(c) for c in cases))
    return results


def warm_envelopes(stack: Stack, model: Model, n: int = 50) -> None:
    x = np.random.default_rng(0).normal(size=(1, *model.shape)).astype(np.float32)
    body = wire.encode(x, bundle_id=model.bundle_id, quantisation="uint8", compression="zstd")
    headers = {"Authorization": f"Bearer {stack.token}", "Content-Type": wire.CONTENT_TYPE}
    with httpx.Client(timeout=30) as client:
        for _ in range(n):
            url = stack.url("tail") + f"/v2/models/{model.name}/infer"
            assert client.post(url, content=body, headers=headers).status_code == 200


def summarise(results: list[dict], stack: Stack, phases: dict[str, float]) -> dict[str, Any]:
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        by_kind[r["kind"]][str(r["status"])] += 1
    statuses = Counter(str(r["status"]) for r in results)
    server_errors = sum(
        n for s, n in statuses.items() if not s.isdigit() or (int(s) >= 500 and s != "503")
    )
    overloaded = statuses.get("503", 0)
    never_200 = sum(1 for r in results if r["kind"] in NEVER_200 and r["status"] == 200)
    not_problem = sum(1 for r in results if r["status"] != 200 and not r["problem_json"])
    tail_idle = phases["tail_idle_rss_mib"]
    tail_peak = stack.peak("tail", phases["envelopes_start"], phases["envelopes_end"])
    return {
        "cases": len(results),
        "statuses": dict(sorted(statuses.items())),
        "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(by_kind.items())},
        "server_errors_other_than_503": server_errors,
        "overloaded_503": overloaded,
        "never_200_kinds_answered_200": never_200,
        "refusals_not_problem_json": not_problem,
        "crashed": [n for n, p in stack.processes.items() if p.poll() is not None],
        "tail_idle_rss_mib": round(tail_idle, 1),
        "tail_peak_rss_mib_during_envelopes": round(tail_peak or 0.0, 1),
        "tail_rss_growth_mib": round((tail_peak or 0.0) - tail_idle, 1),
        "peak_rss_mib": {
            name: round(stack.peak(name) or 0.0, 1) for name in ("tail", "head", "gateway")
        },
        "p99_ms": round(float(np.percentile([r["ms"] for r in results], 99)), 1),
        "max_ms": round(max(r["ms"] for r in results), 1),
    }


def write_report(result: dict[str, Any], stack: Stack, out: Path) -> None:
    s = result["summary"]
    figures = [
        ("5xx other than 503 (or transport errors)", s["server_errors_other_than_503"]),
        ("503 overloaded (admission control)", s["overloaded_503"]),
        ("200 for a kind that must be refused", s["never_200_kinds_answered_200"]),
        ("refusals not problem+json", s["refusals_not_problem_json"]),
        ("processes that died", len(s["crashed"])),
        ("tail RSS idle (MiB)", s["tail_idle_rss_mib"]),
        ("tail RSS peak during envelopes (MiB)", s["tail_peak_rss_mib_during_envelopes"]),
        ("tail RSS growth (MiB)", s["tail_rss_growth_mib"]),
        ("p99 / max answer time (ms)", f"{s['p99_ms']} / {s['max_ms']}"),
    ]
    lines = [
        "# Hostile inputs against the running stack",
        "",
        f"{s['cases']:,} hypothesis-generated cases (seed {result['seed']}) on bundle "
        f"`{result['bundle']}`: envelopes and OIP requests to the tail at its in-flight limit "
        f"({result['tail_concurrency']} at once), uploads to the gateway at the head's limit "
        f"({result['gateway_concurrency']} at once). Command: `{result['command']}`.",
        "",
        *table(["figure", "value"], figures),
        "",
        *table(
            ["kind", "answers (status: count)"],
            (
                [
                    f"{kind}{' (must not be 200)' if kind in NEVER_200 else ''}",
                    ", ".join(f"{k}: {v}" for k, v in counts.items()),
                ]
                for kind, counts in s["by_kind"].items()
            ),
            align="ll",
        ),
    ]

    def plot(result: dict[str, Any], path: Path) -> None:
        with figure(path, figsize=(8, 4.5), dpi=120) as (_, ax):
            phases = ("envelopes_start", "envelopes_end", "uploads_end")
            mark_times([ax], result["phases"], dict.fromkeys(phases, "grey"))
            stack.plot_rss(ax)
            ax.set_title(f"RSS while {s['cases']:,} hostile requests arrive")

    write_results("hostile", result, lines, out, plot)


def main(argv: list[str] | None = None) -> int:
    parser = stack_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    bundle_dir, bundle = args.bundle, load_bundle(args.bundle)
    tail_limit = TailSettings.model_fields["max_in_flight"].default
    model = Model(
        bundle.name,
        bundle.id,
        tuple(bundle.manifest.bottleneck.shape),
        TailSettings.model_fields["max_batch"].default,
    )
    cat_jpeg = (ROOT / "examples" / "cat.jpg").read_bytes()
    started = time.perf_counter()
    cases = generate(model, cat_jpeg, args.cases, args.seed)
    print(f"generated {len(cases)} cases in {time.perf_counter() - started:.1f} s", flush=True)
    envelopes = [c for c in cases if c.target == "tail"]
    uploads = [c for c in cases if c.target == "gateway"]
    started_at = conditions()
    with local_stack(bundle_dir) as stack:
        warm_envelopes(stack, model)
        time.sleep(2.0)
        phases = {"tail_idle_rss_mib": stack.rss_mib("tail") or 0.0}
        phases["envelopes_start"] = stack.now()
        results = asyncio.run(send(stack, model, envelopes, tail_limit))
        phases["envelopes_end"] = stack.now()
        results += asyncio.run(send(stack, model, uploads, 2))
        phases["uploads_end"] = stack.now()
        time.sleep(0.5)
        summary = summarise(results, stack, phases)
        result = {
            "conditions": started_at,
            "command": "python -m benchmarks.hostile "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "bundle": bundle.id,
            "seed": args.seed,
            "tail_concurrency": tail_limit,
            "gateway_concurrency": 2,
            "phases": {k: round(v, 3) for k, v in phases.items()},
            "summary": summary,
        }
        write_report(result, stack, args.out)
    print(json.dumps(summary, indent=2))
    ok = (
        summary["server_errors_other_than_503"] == 0
        and summary["never_200_kinds_answered_200"] == 0
        and not summary["crashed"]
        and summary["tail_rss_growth_mib"] < 100
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
