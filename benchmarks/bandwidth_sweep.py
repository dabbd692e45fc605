"""Capture-to-output time of local, split, offload and auto at several link rates.

The tail runs inside a network namespace behind a tbf-shaped veth link (see
``benchmarks/netns.py``); head and gateway run in the root namespace, as on the device.
For each rate the script posts the same JPEG to the gateway in every mode and records the
client-side wall time (image bytes in hand -> answer parsed), the stage times the services
report, bytes sent, and what auto chose and predicted.

    sudo .venv/bin/python benchmarks/bandwidth_sweep.py --rates 1 2 5 10 20 50 100

Writes ``benchmarks/results/bandwidth_sweep.{json,md,png}``. Needs root and iproute2.
Without ``--bundle`` it uses the default bundle, or builds the toy test bundle if there is
none (then compute is tiny and the numbers mostly show the link).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.netns import Link, shaped_link, why_unavailable  # noqa: E402
from splitdnn import serve, wire  # noqa: E402
from splitdnn.bundle import default_bundle_path, load_bundle  # noqa: E402

MODES = ("local", "split", "split-fp32", "offload", "auto")


def default_image() -> bytes:
    """examples/cat.jpg if present, else scikit-image's Chelsea as a quality-90 JPEG."""
    example = ROOT / "examples" / "cat.jpg"
    if example.is_file():
        return example.read_bytes()
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def resolve_bundle(arg: str | None, scratch: Path) -> Path:
    if arg:
        return Path(arg)
    if (default_bundle_path() / "manifest.json").is_file():
        return default_bundle_path()
    sys.path.insert(0, str(ROOT / "tests"))
    from toy_bundle import build_toy_bundle

    print("no default bundle: building the toy test bundle", file=sys.stderr)
    build_toy_bundle(scratch / "toy")
    return scratch / "toy"


def envelope_sizes(bundle_dir: Path, image: bytes) -> list[dict[str, Any]]:
    """Bytes of this image's envelope in every quantisation, with and without zstd."""
    from splitdnn.runtime import DeviceRunner

    bundle = load_bundle(bundle_dir)
    bottleneck = DeviceRunner(bundle)(image)
    rows = []
    for quantisation in wire.QUANTISATIONS:
        for compression in wire.COMPRESSIONS:
            data = wire.encode(
                bottleneck, bundle_id=bundle.id, quantisation=quantisation, compression=compression
            )
            rows.append(
                {"quantisation": quantisation, "compression": compression, "bytes": len(data)}
            )
    return rows


class Services:
    """Tail inside the namespace, head and gateway outside; stopped on exit."""

    def __init__(self, link: Link, bundle: Path, threads: int) -> None:
        self.link, self.bundle, self.threads = link, bundle, threads
        self.processes: list[subprocess.Popen] = []
        self.tail_url = f"http://{link.ns_ip}:18101"
        self.head_url = "http://127.0.0.1:18102"
        self.gateway_url = "http://127.0.0.1:18100"

    def __enter__(self) -> Services:
        base = {**os.environ, "SPLITDNN_TAIL_INTRA_OP_THREADS": str(self.threads),
                "SPLITDNN_HEAD_INTRA_OP_THREADS": str(self.threads)}  # fmt: skip
        tail = serve.uvicorn_command(serve.TAIL_APP, self.link.ns_ip, 18101, "warning")
        head = serve.uvicorn_command(serve.HEAD_APP, "127.0.0.1", 18102, "warning")
        gateway = serve.uvicorn_command(serve.GATEWAY_APP, "127.0.0.1", 18100, "warning")
        head_env = {
            **serve.head_env(self.tail_url, self.bundle),
            "SPLITDNN_HEAD_TAIL_TIMEOUT_S": "60",
        }
        plan = [
            (self.link.exec_argv(tail), serve.tail_env(self.bundle)),
            (head, head_env),
            (gateway, {**serve.gateway_env(self.head_url, self.tail_url),
                       "SPLITDNN_GATEWAY_TIMEOUT_S": "120"}),
        ]  # fmt: skip
        for argv, env in plan:
            self.processes.append(subprocess.Popen(argv, env={**base, **env}))
        for url, process in zip(
            (self.tail_url, self.head_url, self.gateway_url), self.processes, strict=True
        ):
            if not serve.wait_ready(url + "/v2/health/ready", 120, process):
                raise RuntimeError(f"{url} did not become ready")
        return self

    def __exit__(self, *exc: object) -> None:
        serve.stop_processes(self.processes)


def classify(client: httpx.Client, image: bytes, mode: str) -> tuple[float, dict[str, Any]]:
    params = {"mode": mode, "fallback": "false"}
    if mode == "split-fp32":
        params = {"mode": "split", "quantisation": "fp32", "fallback": "false"}
    start = time.perf_counter()
    response = client.post("/classify", params=params, content=image,
                           headers={"Content-Type": "image/jpeg"})  # fmt: skip
    answer = response.json()
    elapsed_ms = (time.perf_counter() - start) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{mode}: {response.status_code} {answer}")
    return elapsed_ms, answer


def measure(client: httpx.Client, image: bytes, mode: str, repeats: int, warmup: int) -> dict:
    for _ in range(warmup):
        classify(client, image, mode)
    totals, answers = [], []
    for _ in range(repeats):
        elapsed, answer = classify(client, image, mode)
        totals.append(elapsed)
        answers.append(answer)

    def median(stage: str) -> float:
        return round(statistics.median(a["timings_ms"][stage] for a in answers), 3)

    row: dict[str, Any] = {
        "mode": mode,
        "median_ms": round(statistics.median(totals), 3),
        "p90_ms": round(sorted(totals)[max(0, int(0.9 * len(totals)) - 1)], 3),
        "mean_ms": round(statistics.fmean(totals), 3),
        "head_ms": median("head"),
        "transfer_ms": median("transfer"),
        "tail_ms": median("tail"),
        "bytes_sent": answers[-1]["bytes_sent"],
    }
    if mode == "auto":
        row["chosen"] = dict(Counter(a["mode"] for a in answers))
        row["predicted_ms"] = {
            m: statistics.median(a["predicted_ms"][m] or float("inf") for a in answers)
            for m in ("local", "split", "offload")
        }
    return row


def write_report(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bandwidth_sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Bandwidth sweep: capture-to-output time per mode",
        "",
        f"Bundle `{result['bundle']['name']}` ({result['bundle']['id']}), image "
        f"{result['image_bytes']} bytes, {result['repeats']} requests per cell, "
        f"link shaped with tbf on a veth pair (both directions), no added delay. "
        f"Host: {result['host']}.",
        "",
        "Median client-side ms (image bytes in hand → JSON answer parsed); split is uint8.",
        "",
        "| Mbit/s | " + " | ".join(MODES) + " | auto chose | auto predicted (l/s/o) |",
        "|---:|" + "---:|" * len(MODES) + "---|---|",
    ]
    for sweep in result["sweep"]:
        rows = {r["mode"]: r for r in sweep["modes"]}
        auto = rows["auto"]
        predicted = "/".join(
            f"{auto['predicted_ms'][m]:.0f}" for m in ("local", "split", "offload")
        )
        chosen = ", ".join(f"{m}×{n}" for m, n in auto["chosen"].items())
        cells = " | ".join(f"{rows[m]['median_ms']:.1f}" for m in MODES)
        lines.append(f"| {sweep['rate_mbit']:g} | {cells} | {chosen} | {predicted} |")
    lines += ["", "Bytes sent per request:", ""]
    first = {r["mode"]: r for r in result["sweep"][0]["modes"]}
    for mode in ("split", "split-fp32", "offload"):
        lines.append(f"- {mode}: {first[mode]['bytes_sent']} bytes")
    lines += ["", "Envelope sizes for this image:", "", "| quantisation | compression | bytes |",
              "|---|---|---:|"]  # fmt: skip
    lines += [f"| {r['quantisation']} | {r['compression']} | {r['bytes']} |"
              for r in result["envelopes"]]  # fmt: skip
    (out / "bandwidth_sweep.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [s["rate_mbit"] for s in result["sweep"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode in MODES:
        ys = [
            next(r for r in s["modes"] if r["mode"] == mode)["median_ms"] for s in result["sweep"]
        ]
        style = {"linestyle": "--", "marker": "x"} if mode == "auto" else {"marker": "o"}
        ax.plot(rates, ys, label=mode, **style)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("link rate (Mbit/s, tbf)")
    ax.set_ylabel("median capture-to-output time (ms)")
    ax.set_title(f"{result['bundle']['name']}: time per mode vs link rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "bandwidth_sweep.png", dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[1, 2, 5, 10, 20, 50, 100])
    parser.add_argument("--bundle", help="bundle directory (default: packaged or toy)")
    parser.add_argument("--image", help="JPEG to classify (default: examples/cat.jpg or Chelsea)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads/service")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    if (reason := why_unavailable()) is not None:
        print(f"bandwidth_sweep: {reason}", file=sys.stderr)
        return 2
    image = Path(args.image).read_bytes() if args.image else default_image()
    with tempfile.TemporaryDirectory() as scratch:
        bundle_dir = resolve_bundle(args.bundle, Path(scratch))
        bundle = load_bundle(bundle_dir)
        result: dict[str, Any] = {
            "bundle": {"name": bundle.name, "id": bundle.id, "path": str(bundle_dir)},
            "image_bytes": len(image),
            "repeats": args.repeats,
            "host": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "envelopes": envelope_sizes(bundle_dir, image),
            "sweep": [],
        }
        with shaped_link(args.rates[0], name="sdsweep") as link, \
                Services(link, bundle_dir, args.threads) as services, \
                httpx.Client(base_url=services.gateway_url, timeout=300) as client:  # fmt: skip
            for rate in args.rates:
                link = link.set_rate(rate)
                rows = [measure(client, image, mode, args.repeats, args.warmup) for mode in MODES]
                result["sweep"].append({"rate_mbit": rate, "modes": rows})
                print(rate, {r["mode"]: r["median_ms"] for r in rows}, flush=True)
    write_report(result, Path(args.out))
    print(f"wrote {args.out}/bandwidth_sweep.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
