"""The tail on Ray Serve: throughput and p99 vs offered load, 1 or 2 replicas, batching on or
off; the batch-size curve of the server part; a replica killed under load.

Everything runs on this machine: a two-node Ray cluster (``benchmarks/raycluster.py``), the
tail deployed by ``splitdnn serve tail --ray --address``, envelopes of one real photo posted
straight to the tail (the tail is what is measured: 16 devices' heads would not fit on two
cores beside it). Load is open-loop (``loadgen.py``): requests leave on schedule whatever
the answers do, and latency counts from the intended send time.

    nice -n 5 .venv/bin/python -m benchmarks.ray_tail --bundle splitdnn/assets/default-bundle
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from benchmarks import loadgen
from benchmarks.inputs import cat_jpeg
from benchmarks.raycluster import LocalRayCluster
from benchmarks.report import RESULTS, conditions, figure, table, write_json, write_results
from splitdnn import wire
from splitdnn.bundle import default_bundle_path, load_bundle
from splitdnn.runtime import DeviceRunner, ServerRunner, Threads

BATCH_SIZES = (1, 2, 4, 8, 16)


def batch_curve(bundle_dir: Path, repeats: int = 15) -> list[dict[str, float]]:
    """Median ONNX Runtime time of the server part (one thread, as in a replica) per batch."""
    server = ServerRunner(load_bundle(bundle_dir), Threads(1, 1))
    rows = []
    for n in BATCH_SIZES:
        x = np.random.default_rng(0).normal(size=(n, *server.bottleneck_shape))
        x = x.astype(np.float32)
        server.model.run(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            server.model.run(x)
            times.append((time.perf_counter() - start) * 1000)
        median = statistics.median(times)
        rows.append(
            {"batch": n, "batch_ms": round(median, 2), "per_sample_ms": round(median / n, 2)}
        )
    return rows


def envelope(bundle_dir: Path) -> tuple[str, bytes]:
    bundle = load_bundle(bundle_dir)
    device = DeviceRunner(bundle, Threads(1, 1))
    x = device.run(device.preprocess(cat_jpeg()))
    return bundle.name, wire.encode(x, bundle_id=bundle.id)


def sender(url: str, name: str, body: bytes, kill: dict[str, Any] | None = None, retries: int = 0):
    client = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=128))
    target = f"{url}/v2/models/{name}/infer"

    def send(i: int) -> loadgen.Reply:
        if kill is not None and i == kill["at"]:
            threading.Thread(target=kill["do"]).start()
        retried = 0
        while True:
            response = client.post(
                target, content=body, headers={"Content-Type": wire.CONTENT_TYPE}
            )
            # the head's policy (SPLITDNN_HEAD_TAIL_RETRIES): a 500/502 is sent once more
            if response.status_code in (500, 502) and retried < retries:
                retried += 1
                continue
            break
        if response.status_code != 200:
            return loadgen.Reply(f"http_{response.status_code}", {"retried": retried})
        timings = response.json()["timings_ms"]
        info = {"tail_ms": timings["tail"], "compute_ms": timings["compute"], "retried": retried}
        return loadgen.Reply(None, info)

    return send


def closed_loop(send, devices: int, seconds: float) -> dict[str, Any]:
    """``devices`` senders, each sending its next request when the last is answered: the
    throughput the tail gives 16 busy devices."""
    stop = time.perf_counter() + seconds
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def device() -> None:
        nonlocal errors
        i = 0
        while time.perf_counter() < stop:
            start = time.perf_counter()
            reply = send(10_000_000 + i)
            i += 1
            with lock:
                if reply.error:
                    errors += 1
                else:
                    latencies.append((time.perf_counter() - start) * 1000)

    threads = [threading.Thread(target=device) for _ in range(devices)]
    begin = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    span = time.perf_counter() - begin
    return {
        "devices": devices,
        "seconds": round(span, 2),
        "answered": len(latencies),
        "errors": errors,
        "throughput_rps": round(len(latencies) / span, 2),
        "p50_ms": loadgen.percentile(latencies, 50),
        "p99_ms": loadgen.percentile(latencies, 99),
    }


def brief(summary: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in summary.items() if k != "records"}
    tails = [r["tail_ms"] for r in summary["records"] if r.get("tail_ms") is not None]
    out["tail_stage_p50_ms"] = loadgen.percentile(tails, 50)
    return out


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    name, body = envelope(args.bundle)
    runs: list[dict[str, Any]] = []
    with LocalRayCluster(nodes=2, cpus_per_node=1) as cluster:
        for replicas in args.replicas:
            for batching in (False, True):
                size = args.batch_max_size if batching else 1
                with cluster.tail(
                    args.bundle, replicas=replicas, batch_max_size=size,
                    batch_wait_ms=args.batch_wait_ms,
                ) as url:  # fmt: skip
                    send = sender(url, name, body)
                    loadgen.run(send, rate=10, count=20)  # warm connections and replicas
                    config = {"replicas": replicas, "batching": batching, "batch_max_size": size}
                    closed = closed_loop(send, args.devices, args.closed_seconds)
                    print(json.dumps({**config, "closed_loop": closed}), flush=True)
                    points = []
                    for rate in args.rates:
                        count = max(40, int(rate * args.seconds))
                        summary = loadgen.run(send, rate=rate, count=count, workers=128)
                        points.append(brief(summary))
                        print(json.dumps({**config, **points[-1]}), flush=True)
                    runs.append({**config, "closed_loop": closed, "open_loop": points})
    return {"runs": runs}


def kill_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Only the kill run: 2 replicas, batching on."""
    name, body = envelope(args.bundle)
    with LocalRayCluster(nodes=2, cpus_per_node=1) as cluster, cluster.tail(
        args.bundle, replicas=2, batch_max_size=args.batch_max_size,
        batch_wait_ms=args.batch_wait_ms,
    ) as url:  # fmt: skip
        state: dict[str, Any] = {}
        count = int(args.kill_rate * args.kill_seconds)
        kill_at = count // 3

        def kill() -> None:
            victim = cluster.replica_pids(node=1)[0]
            state["pid"], state["killed_s"] = victim, time.perf_counter() - begin[0]
            psutil.Process(victim).kill()
            while time.perf_counter() - begin[0] < args.kill_seconds + 60:
                pids = cluster.replica_pids(node=1)
                if pids and victim not in pids:
                    state["new_process_s"] = round(time.perf_counter() - begin[0], 3)
                    new = pids[0]
                    break
                time.sleep(0.05)
            else:
                return
            # loaded: its ONNX Runtime sessions exist (Ray routes to it once its app started)
            while time.perf_counter() - begin[0] < args.kill_seconds + 60:
                try:
                    if _serving(new):
                        state["new_replica_loaded_s"] = round(time.perf_counter() - begin[0], 3)
                        return
                except psutil.Error:
                    return
                time.sleep(0.05)

        send = sender(url, name, body, {"at": kill_at, "do": kill}, retries=args.retries)
        loadgen.run(sender(url, name, body), rate=10, count=20)
        begin = [time.perf_counter()]
        summary = loadgen.run(send, rate=args.kill_rate, count=count, workers=128)
    records = summary["records"]
    result = {"rate": args.kill_rate, "kill_at_request": kill_at, **brief(summary), **state}
    result["retries_allowed"] = args.retries
    result["requests_retried"] = sum(1 for r in records if r.get("retried"))
    if "killed_s" in state:
        before = [r["latency_ms"] for r in records if r["intended_s"] < state["killed_s"]]
        normal = 2 * (loadgen.percentile(before, 50) or 0)
        late = [
            r for r in records if r["intended_s"] >= state["killed_s"] and (
                r["error"] or r["latency_ms"] > max(normal, 1.0))
        ]  # fmt: skip
        last = max((r["intended_s"] + r["latency_ms"] / 1000 for r in late), default=None)
        result["latency_recovered_s"] = (
            round(last - state["killed_s"], 3) if last is not None else 0.0
        )
        result["recovery_rule"] = (
            "seconds from the kill until the last request (sent after it) slower than twice "
            "the median before it"
        )
    return result


def _serving(pid: int) -> bool:
    """The replica process has loaded its sessions: ONNX Runtime has mapped its library."""
    try:
        return any("onnxruntime" in m.path for m in psutil.Process(pid).memory_maps())
    except psutil.Error:
        return False


#: How the cluster was laid out, beside the conditions every report carries.
CLUSTER = (
    "2 Ray nodes on this machine, 1 logical CPU each, replicas 1 CPU each, "
    "ONNX Runtime 1 thread per replica, one proxy on the head node"
)


def write(result: dict[str, Any], out: Path) -> None:
    cluster = result["conditions"].get("cluster", CLUSTER)
    lines = ["# The tail on Ray Serve", "", f"Cluster: {cluster}."]
    lines += ["", "## Server part alone: ONNX Runtime time vs batch size (1 thread)", ""]
    lines += table(
        ["batch", "batch ms", "ms per sample"],
        ([r["batch"], r["batch_ms"], r["per_sample_ms"]] for r in result["curve"]),
        align="rrr",
    )
    lines += ["", f"## {result['devices']} devices, closed loop (each sends when answered)", ""]
    lines += table(
        ["replicas", "batching", "throughput (req/s)", "p50 ms", "p99 ms", "errors"],
        (
            [
                run["replicas"],
                f"on (≤{run['batch_max_size']})" if run["batching"] else "off",
                run["closed_loop"]["throughput_rps"],
                f"{run['closed_loop']['p50_ms']:.1f}",
                f"{run['closed_loop']['p99_ms']:.1f}",
                run["closed_loop"]["errors"],
            ]
            for run in result["runs"]
        ),
        align="rlrrrr",
    )
    lines += ["", "## Open loop: offered vs achieved, p99", ""]
    lines += table(
        ["replicas", "batching", "offered/s", "achieved/s", "p50 ms", "p99 ms", "errors", "n"],
        (
            [
                run["replicas"], "on" if run["batching"] else "off", p["offered_rate"],
                p["achieved_rate"], p["p50_ms"], p["p99_ms"], p["errors"] or 0, p["requests"],
            ]
            for run in result["runs"]
            for p in run["open_loop"]
        ),
        align="rlrrrrlr",
    )  # fmt: skip
    write_results("ray_tail", result, lines, out, plot)


def plot(result: dict[str, Any], path: Path) -> None:
    with figure(path, 1, 3, figsize=(15, 4.2)) as (_, (ax1, ax2, ax3)):
        for run in result["runs"]:
            label = f"{run['replicas']} replica(s), batching {'on' if run['batching'] else 'off'}"
            offered = [p["offered_rate"] for p in run["open_loop"]]
            ax1.plot(offered, [p["achieved_rate"] for p in run["open_loop"]], "o-", label=label)
            ax2.plot(offered, [p["p99_ms"] for p in run["open_loop"]], "o-", label=label)
        ax1.plot(ax1.get_xlim(), ax1.get_xlim(), ":", color="grey")
        ax1.set(xlabel="offered (req/s)", ylabel="achieved (req/s)", title="Throughput")
        ax2.set(xlabel="offered (req/s)", ylabel="p99 (ms)", title="p99 latency", yscale="log")
        curve = result["curve"]
        ax3.plot([r["batch"] for r in curve], [r["per_sample_ms"] for r in curve], "o-")
        ax3.set(xlabel="batch size", ylabel="ms per sample", title="Server part (ONNX, 1 thread)",
                ylim=(0, None))  # fmt: skip
        ax1.legend(fontsize=8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=default_bundle_path())
    parser.add_argument("--rates", type=float, nargs="+", default=[10, 20, 40, 60])
    parser.add_argument("--seconds", type=float, default=10, help="per open-loop point")
    parser.add_argument("--devices", type=int, default=16)
    parser.add_argument("--closed-seconds", type=float, default=15)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-max-size", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--kill", action="store_true", help="only the replica-kill run")
    parser.add_argument("--kill-rate", type=float, default=20)
    parser.add_argument("--kill-seconds", type=float, default=30)
    parser.add_argument(
        "--retries", type=int, default=1, help="kill run: 500/502 sent again, as the head does"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.kill:
        result = {"conditions": {**conditions(), "cluster": CLUSTER}}
        result["replica_kill"] = kill_sweep(args)
        write_json("ray_tail_kill" if args.retries else "ray_tail_kill_no_retry", result, args.out)
        print(json.dumps({k: v for k, v in result["replica_kill"].items() if k != "records"}))
        return 0
    result = {
        "conditions": {**conditions(), "cluster": CLUSTER},
        "devices": args.devices,
        "curve": batch_curve(args.bundle),
    }
    print(json.dumps(result["curve"]), flush=True)
    result.update(sweep(args))
    write(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
