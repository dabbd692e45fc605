"""What TLS costs on the device–edge link: split and offload p50 with and without it.

Two head → tail pairs run side by side on the bandwidth sweep's set-up (``bandwidth_sweep``:
tails in one network namespace behind a tbf-shaped veth, heads in one cgroup holding a
device profile's CPU share): one plain HTTP, one mutual TLS with certificates made here
(``splitdnn certs``). Keep-alive is on, so a handshake is paid once per connection, as in
service. At every rate both pairs are measured with the sweep's interleaved open-loop
schedule, the pair that goes first alternating from rate to rate so drift on the shared
machine hits both alike.

    sudo python benchmarks/tls_cost.py --profile pi4 --rates 1 2 5 10 20 50

Writes ``benchmarks/results/tls_cost.{json,md,png}``. Needs root, iproute2, ethtool and a
cgroup v1 cpu controller (like the sweep), and the ``certs`` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import cgroup  # noqa: E402
from benchmarks.bandwidth_sweep import Services, held_out_images, measure_row  # noqa: E402
from benchmarks.netns import calibrate, shaped_link, why_unavailable  # noqa: E402
from splitdnn import devices  # noqa: E402
from splitdnn.bundle import default_bundle_path  # noqa: E402
from splitdnn.tls import make_certificates  # noqa: E402

MODES = ["split", "offload"]
VARIANTS = ("plain", "tls")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    profile = devices.get(args.profile)
    images = held_out_images(Path(args.images), args.count)
    result: dict[str, Any] = {
        "profile": args.profile,
        "cpu_share": profile.cpu_share,
        "images": {"folder": str(args.images), "count": len(images)},
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_before": os.getloadavg(),
        "note": args.note,
        "rows": [],
    }
    with ExitStack() as stack:
        certs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tls-cost-")))
        link = stack.enter_context(shaped_link(args.rates[0], name="sdtls", subnet=233))
        make_certificates(certs, ["tail", "head"], hosts=[link.ns_ip], days=2)
        os.chmod(certs, 0o755)
        group = stack.enter_context(cgroup.cpu_group(f"sdtls-{args.profile}", profile))
        clients = {}
        for offset, variant in enumerate(VARIANTS):
            tls_dir = certs if variant == "tls" else None
            services = stack.enter_context(
                Services(link, Path(args.bundle), group, args.threads, tls_dir, 300 + offset * 10)
            )
            clients[variant] = stack.enter_context(
                httpx.Client(base_url=services.head_url, timeout=300)
            )
        for i, rate in enumerate(args.rates):
            link = link.set_rate(rate)
            cal = calibrate(link)
            row: dict[str, Any] = {"rate_mbit": rate, "calibration": cal, "cells": {}}
            order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                cells = measure_row(
                    clients[variant], images, MODES, cal["payload_mbit"], args.warmup
                )
                row["cells"][variant] = {c["mode"]: c for c in cells}
            row["tls_over_plain"] = {
                mode: round(row["cells"]["tls"][mode]["p50_ms"]
                            / row["cells"]["plain"][mode]["p50_ms"], 3)  # fmt: skip
                for mode in MODES
            }
            result["rows"].append(row)
            print(rate, {v: {m: c["p50_ms"] for m, c in row["cells"][v].items()} for v in order},
                  row["tls_over_plain"], flush=True)  # fmt: skip
    result["load_after"] = os.getloadavg()
    return result


def write_markdown(result: dict[str, Any], path: Path) -> None:
    lines = [
        f"# TLS cost on the device–edge link ({result['profile']}, "
        f"{result['cpu_share']} core for the head)",
        "",
        f"commit {result['commit']}, {result['started']}, {result['host']}; load before "
        f"{[round(x, 2) for x in result['load_before']]}, after "
        f"{[round(x, 2) for x in result['load_after']]}; {result['images']['count']} held-out "
        "photos per cell; mutual TLS head → tail, keep-alive on.",
        "",
        f"Also running: {result['note'] or 'not recorded'}",
        "",
        "| rate (Mbit/s) | split p50 plain | split p50 TLS | TLS/plain | "
        "offload p50 plain | offload p50 TLS | TLS/plain |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        c = row["cells"]
        lines.append(
            f"| {row['rate_mbit']:g} | {c['plain']['split']['p50_ms']:.1f} | "
            f"{c['tls']['split']['p50_ms']:.1f} | {row['tls_over_plain']['split']:.3f} | "
            f"{c['plain']['offload']['p50_ms']:.1f} | {c['tls']['offload']['p50_ms']:.1f} | "
            f"{row['tls_over_plain']['offload']:.3f} |"
        )
    path.write_text("\n".join(lines) + "\n")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [r["rate_mbit"] for r in result["rows"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, colour in (("split", "C0"), ("offload", "C1")):
        for variant, style in (("plain", "-"), ("tls", "--")):
            p50 = [r["cells"][variant][mode]["p50_ms"] for r in result["rows"]]
            ax.plot(rates, p50, style, color=colour, marker="o", label=f"{mode} {variant}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("link rate (Mbit/s)")
    ax.set_ylabel("p50 (ms)")
    ax.set_title(f"TLS vs plain HTTP, {result['profile']} profile, keep-alive")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(default_bundle_path()))
    parser.add_argument("--images", default=str(ROOT.parent / "shared/data/imagenet-sample"))
    parser.add_argument("--count", type=int, default=16, help="photos (requests) per cell")
    parser.add_argument("--profile", default="pi4")
    parser.add_argument("--rates", type=float, nargs="+", default=[1, 2, 5, 10, 20, 50])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--note", default="", help="what else ran on the machine (reported)")
    args = parser.parse_args(argv)
    for reason in (why_unavailable(), cgroup.why_unavailable()):
        if reason is not None:
            print(f"tls_cost: {reason}", file=sys.stderr)
            return 2
    result = measure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tls_cost.json").write_text(json.dumps(result, indent=1) + "\n")
    write_markdown(result, out / "tls_cost.md")
    plot(result, out / "tls_cost.png")
    print(f"wrote {out}/tls_cost.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
