"""What TLS costs on the device–edge link: split and offload p50 with and without it.

Two head → tail pairs run side by side on the bandwidth sweep's set-up (``bandwidth_sweep``:
tails in one network namespace behind a tbf-shaped veth, each head in its own cgroup holding
a device profile's CPU share): one plain HTTP, one mutual TLS with certificates made here
(``splitdnn certs``). Keep-alive is on, so a handshake is paid once per connection, as in
service. At every rate both pairs are measured on one open-loop schedule: each photo in
every mode to both heads back to back, the one that goes first alternating from photo to
photo, each request followed by a gap of 1.5x its warm-up time (no overlap), so a burst of
load on the shared machine hits plain and TLS alike.

    sudo python -m benchmarks.tls_cost --profile pi4 --rates 1 2 5 10 20 50

Writes ``benchmarks/results/tls_cost.{json,md,png}``. Needs root, iproute2, ethtool and a
cgroup v1 cpu controller (like the sweep), and the ``certs`` extra.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

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
from splitdnn.stats import median_ratio
from splitdnn.tls import make_certificates

MODES = ["split", "offload"]
VARIANTS = ("plain", "tls")
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


def measure_pair(
    clients: dict[str, httpx.Client],
    images: list[tuple[str, bytes]],
    payload_mbit: float,
    warmup: int,
    head_pids: dict[str, int],
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """One rate: every (variant, mode) cell on one interleaved open-loop schedule; and per
    mode the TLS/plain ratio of p50s with its paired 95 % interval and the head's CPU per
    request in both (what TLS costs the device itself, steady where wall times are not)."""
    gaps = {(v, m): warm_interval(clients[v], images, m, warmup) for v in VARIANTS for m in MODES}
    plan = []
    for i in range(len(images)):
        variants = VARIANTS if i % 2 == 0 else VARIANTS[::-1]
        plan += [(v, m, i) for m in MODES for v in variants]
    times, t = [], 0.0
    for v, m, _ in plan:
        times.append(t)
        t += gaps[v, m]

    def send(k: int) -> Reply:
        variant, mode, i = plan[k]
        cpu_before = cpu_seconds(head_pids[variant])
        answer = post(clients[variant], mode, images[i][1])
        head_cpu_ms = (cpu_seconds(head_pids[variant]) - cpu_before) * 1000
        t = answer["timings_ms"]
        stages = answer.get("head_stages_ms") or {}
        return Reply(None, {
            "image": images[i][0], "mode": answer["mode"], "head_ms": t["head"],
            "head_model_ms": stages.get("model", 0.0), "transfer_ms": t["transfer"],
            "tail_ms": t["tail"], "head_total_ms": t["total"], "bytes": answer["bytes_sent"],
            "head_cpu_ms": round(head_cpu_ms, 3),
        })  # fmt: skip

    records = run(send, rate=1.0, count=len(plan), times=times)["records"]
    cells = {
        v: {
            m: cell_of(
                m, [r for r in records if plan[r["i"]][:2] == (v, m)], gaps[v, m], payload_mbit
            )
            for m in MODES
        }
        for v in VARIANTS
    }
    return cells, {m: tls_effect(records, plan, m) for m in MODES}


def tls_effect(records: list[dict], plan: list[tuple[str, str, int]], mode: str) -> dict:
    """TLS/plain for one mode over the photos both variants answered: ratio of p50s with a
    paired bootstrap interval, and the head's median CPU per request in each."""
    by = {(plan[r["i"]][0], plan[r["i"]][2]): r for r in records
          if plan[r["i"]][1] == mode and r["error"] is None}  # fmt: skip
    photos = sorted({i for v, i in by if (("plain", i) in by and ("tls", i) in by)})
    if not photos:
        return {"photos": 0}
    pairs = [(by["plain", i], by["tls", i]) for i in photos]
    ratio = median_ratio([p["latency_ms"] for p, _ in pairs], [t["latency_ms"] for _, t in pairs])
    cpu = {
        v: statistics.median(pair[k]["head_cpu_ms"] for pair in pairs)
        for k, v in enumerate(VARIANTS)
    }
    return {
        "photos": len(photos),
        "p50_ratio": round(ratio.ratio, 4),
        "p50_ratio_ci95": [round(x, 4) for x in ratio.ci95],
        "head_cpu_ms": {v: round(c, 3) for v, c in cpu.items()},
        "head_cpu_added_ms": round(
            statistics.median(t["head_cpu_ms"] - p["head_cpu_ms"] for p, t in pairs), 3
        ),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    profile = devices.get(args.profile)
    images = held_out_images(Path(args.images), args.count)
    result: dict[str, Any] = {
        "profile": args.profile,
        "cpu_share": profile.cpu_share,
        "images": {"folder": str(args.images), "count": len(images)},
        "conditions": conditions(),
        "note": args.note,
        "rows": [],
    }
    with ExitStack() as stack:
        certs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tls-cost-")))
        link = stack.enter_context(shaped_link(args.rates[0], name="sdtls", subnet=233))
        make_certificates(certs, ["tail", "head"], hosts=[link.ns_ip], days=2)
        os.chmod(certs, 0o755)
        result["client_cpu_us"] = client_cpu(certs, args.cpu_count)
        print("client CPU per request (us):", result["client_cpu_us"], flush=True)
        clients, head_pids = {}, {}
        for offset, variant in enumerate(VARIANTS):
            tls_dir = certs if variant == "tls" else None
            # each head its own share, as each device has its own CPU
            group = stack.enter_context(
                cgroup.cpu_group(f"sdtls-{args.profile}-{variant}", profile)
            )
            services = stack.enter_context(
                device_stack(
                    link,
                    Path(args.bundle),
                    group,
                    args.threads,
                    path="head",
                    tls_dir=tls_dir,
                    port_offset=300 + offset * 10,
                )
            )
            clients[variant] = stack.enter_context(
                httpx.Client(base_url=services.url("head"), timeout=300)
            )
            head_pids[variant] = services.processes["head"].pid
        for rate in args.rates:
            link = link.set_rate(rate)
            cal = calibrate(link)
            cells, effect = measure_pair(
                clients, images, cal["payload_mbit"], args.warmup, head_pids
            )
            row: dict[str, Any] = {"rate_mbit": rate, "calibration": cal, "cells": cells}
            p50 = {v: {m: c["p50_ms"] for m, c in cells[v].items()} for v in VARIANTS}
            row["tls_over_plain"] = {m: round(p50["tls"][m] / p50["plain"][m], 3) for m in MODES}
            row["tls_effect"] = effect
            result["rows"].append(row)
            print(rate, p50, effect, flush=True)
    result["load_after"] = os.getloadavg()
    return result


def markdown(result: dict[str, Any]) -> list[str]:
    """The report's lines (the conditions line goes under the title)."""
    load_after = ", ".join(f"{x:.2f}" for x in result["load_after"])
    lines = [
        f"# TLS cost on the device–edge link ({result['profile']}, "
        f"{result['cpu_share']} core for the head)",
        "",
        f"Load average at the end {load_after}; {result['images']['count']} held-out "
        "photos per cell; mutual TLS head → tail, keep-alive on.",
        "",
        f"Also running: {result['note'] or 'not recorded'}",
        "",
        "TLS/plain is the ratio of p50s with a 95 % paired-bootstrap interval (photos "
        "resampled with both their times); head CPU is the head process's CPU per request "
        "(all threads), plain → TLS, median.",
        "",
        *table(
            ["rate (Mbit/s)", "split p50 plain", "split p50 TLS", "TLS/plain [95 % CI]",
             "split head CPU ms", "offload p50 plain", "offload p50 TLS",
             "TLS/plain [95 % CI]", "offload head CPU ms"],
            ([f"{row['rate_mbit']:g}", *_mode_cells(row, "split"), *_mode_cells(row, "offload")]
             for row in result["rows"]),
            align="rrrrrrrrr",
        ),
    ]  # fmt: skip
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


def _mode_cells(row: dict[str, Any], mode: str) -> list[str]:
    """p50 plain, p50 TLS, TLS/plain (with its interval when measured), head CPU."""
    effect = row.get("tls_effect", {}).get(mode, {})
    ratio, cpu = f"{row['tls_over_plain'][mode]:.3f}", "–"
    if effect.get("photos"):
        low, high = effect["p50_ratio_ci95"]
        ratio = f"{effect['p50_ratio']:.3f} [{low:.3f}, {high:.3f}]"
        cpu = f"{effect['head_cpu_ms']['plain']:.2f} → {effect['head_cpu_ms']['tls']:.2f}"
    p50 = [f"{row['cells'][v][mode]['p50_ms']:.1f}" for v in VARIANTS]
    return [*p50, ratio, cpu]


def plot(result: dict[str, Any], path: Path) -> None:
    rates = [r["rate_mbit"] for r in result["rows"]]
    with figure(path, figsize=(6, 4), dpi=120) as (_, ax):
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


def main(argv: list[str] | None = None) -> int:
    parser = link_parser(__doc__.splitlines()[0])
    parser.add_argument("--profile", default="pi4")
    parser.add_argument("--rates", type=float, nargs="+", default=[1, 2, 5, 10, 20, 50])
    parser.add_argument(
        "--cpu-count", type=int, default=2000, help="requests per client-CPU measurement"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    out = Path(args.out)
    result = measured_or_loaded(args, "tls_cost", measure)
    if result is None:
        return 2
    write_results("tls_cost", result, markdown(result), out, plot, indent=1)
    print(f"wrote {out}/tls_cost.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
