"""The device process's CPU per ``/classify`` request, and how much of it is not the model.

On the pi4 profile (0.11 core, 10 ms period) every 0.1 ms of device CPU costs ~0.9 ms of
wall time, so the CPU the one-process device app (``splitdnn serve device``) spends outside
the device model and the image preprocessing (HTTP parsing, the framework, JSON, the thread
hop, the tail client, logging, metrics) is what keeps split's wall time above
head + bytes/rate + tail. CPU time does not depend on the quota and is far steadier than
wall time on a shared machine, so this runs without a cgroup: the tail and the device app on
127.0.0.1, one ONNX Runtime thread each (intra and inter op), requests one at a time.

Per request: the device process's CPU, all threads (:func:`benchmarks.process_cpu.
cpu_seconds`, exact from ``/proc/PID/task/*/schedstat``, read before and after), and the
worker thread's CPU in preprocessing and the model (``time.thread_time()``, which the head
reports in ``head_stages_ms``); the rest is "not model". Modes ``split``, ``offload`` and
``local``, each with a multipart upload (``-F image=@photo.jpg``, what a browser or curl
sends) and a raw ``image/jpeg`` body, interleaved photo by photo over held-out photos.

``--profile`` also samples the device process with py-spy (``record -r 1000 -f raw``)
during a second pass and tabulates where the not-model CPU goes (py-spy counts a thread
that is runnable but waiting for a CPU as active, so on a loaded machine the shares are
rough; the CPU figures above are exact).

    python -m benchmarks.device_cpu --images ../shared/data/imagenet-sample --count 200

Writes ``benchmarks/results/device_cpu.{json,md,png}`` (``--name`` for another name).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from benchmarks.bandwidth_sweep import held_out_images
from benchmarks.process_cpu import cpu_seconds
from benchmarks.report import RESULTS, ROOT, conditions, figure, table, write_results
from benchmarks.stack import loopback_device_stack
from splitdnn.bundle import default_bundle_path

MODES = ("split", "offload", "local")
BODIES = ("multipart", "raw")


def post(client: httpx.Client, mode: str, body: str, image: bytes) -> dict[str, Any]:
    """One ``/classify`` in ``mode`` with the photo as a multipart field or a raw body."""
    params = {"mode": mode, "fallback": "false"}
    if body == "multipart":
        response = client.post(
            "/classify", params=params, files={"image": ("photo.jpg", image, "image/jpeg")}
        )
    else:
        response = client.post(
            "/classify", params=params, content=image, headers={"Content-Type": "image/jpeg"}
        )
    if response.status_code != 200:
        raise RuntimeError(f"{mode}/{body}: {response.status_code} {response.text[:200]}")
    return response.json()


def measure(
    clients: Mapping[str, tuple[httpx.Client, int]],
    images: list[tuple[str, bytes]],
    warmup: int,
) -> list[dict[str, Any]]:
    """Every mode x body on every photo, one request at a time, on every device app in
    ``clients`` (name -> (client, pid)) back to back, the order flipped photo by photo;
    per request the process's CPU (ms)
    and the worker thread's preprocessing and model CPU the head reported."""
    cells = [(m, b) for m in MODES for b in BODIES]
    for client, _ in clients.values():
        for mode, body in cells:
            for i in range(warmup):
                post(client, mode, body, images[i % len(images)][1])
    rows = []
    order = list(clients)
    for i, (name, image) in enumerate(images):
        for mode, body in cells:
            for code in order if i % 2 == 0 else order[::-1]:  # neither always goes first
                client, pid = clients[code]
                before = cpu_seconds(pid)
                answer = post(client, mode, body, image)
                cpu_ms = (cpu_seconds(pid) - before) * 1000
                stages = answer.get("head_stages_ms") or {}
                rows.append(
                    {
                        "code": code,
                        "mode": mode,
                        "body": body,
                        "image": name,
                        "image_bytes": len(image),
                        "cpu_ms": round(cpu_ms, 4),
                        "preprocess_cpu_ms": stages.get("preprocess_cpu", 0.0),
                        "model_cpu_ms": stages.get("model_cpu", 0.0),
                    }
                )
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per code x mode x body: n, median and mean CPU per request and its parts (ms)."""
    cells = []
    for code in dict.fromkeys(r["code"] for r in rows):
        for mode in MODES:
            for body in BODIES:
                mine = [r for r in rows if (r["code"], r["mode"], r["body"]) == (code, mode, body)]
                if mine:
                    cells.append({"code": code, "mode": mode, "body": body, **parts(mine)})
    return cells


def parts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    rest = [r["cpu_ms"] - r["preprocess_cpu_ms"] - r["model_cpu_ms"] for r in rows]

    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 3)

    return {
        "n": len(rows),
        "cpu_ms": med("cpu_ms"),
        "cpu_mean_ms": round(statistics.fmean(r["cpu_ms"] for r in rows), 3),
        "preprocess_cpu_ms": med("preprocess_cpu_ms"),
        "model_cpu_ms": med("model_cpu_ms"),
        "not_model_cpu_ms": round(statistics.median(rest), 3),
        "not_model_cpu_mean_ms": round(statistics.fmean(rest), 3),
    }


#: Innermost frames of a thread blocked on a lock, a queue or a socket.
WAITS = ("Condition.wait (", "Queue.get (", "SocketIO.readinto (", "Event.wait (", "select (")
#: What a sampled stack is part of: the innermost frame that contains one of a category's
#: strings names it (walking from the innermost frame out), else "other".
CATEGORIES = (
    # py-spy --gil names the GIL's last holder, also after it let go to wait: not CPU
    ("waiting (last GIL holder blocked: not CPU)", WAITS),
    ("device model", ("Session.run (",)),
    ("preprocessing / re-encode", ("preprocess (", "reencode (")),
    ("envelope encode (uint8 + zstd)", ("encode_bottleneck (",)),
    ("tail client: http.client", ("PooledTransport.send (",)),
    ("tail client: answer JSON + checks", ("checked_answer (",)),
    ("multipart parse", ("MultiPartParser", "multipart/")),
    ("body read", ("read_capped (",)),
    ("image sniff", ("sniff (",)),
    ("response: serialise + JSON", ("serialize_response (", "JSONResponse.render (")),
    ("request: dependencies + query validation", ("solve_dependencies (",)),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("logging", ("logging/",)),
    # py-spy also shows native work right after a call (the model's) at these lines
    ("the head's pipeline, own lines", ("pipeline.py", "routes.py:")),
    ("the classify endpoint, own lines", ("classify (gateway/",)),
    ("thread-pool hop (anyio)", ("anyio/", "Queue.put", "_worker (concurrent")),
    ("latency model", ("latency.py",)),
    ("middleware (request id, Server-Timing)", ("context.py",)),
    ("HTTP server (uvicorn, httptools)", ("uvicorn/protocols/",)),
    ("event loop (uvloop, C)", ("Runner.run (",)),
    ("routing + exception middleware (Starlette)", ("starlette/",)),
)


#: py-spy samples per second
RATE = 1000


def profile(pid: int, seconds_of: Any, out: Path, requests: int) -> list[dict[str, Any]]:
    """py-spy samples (``--nonblocking``: the process is not paused per sample) of the
    thread holding the GIL in ``pid`` while ``seconds_of()``
    runs (``--gil``: a thread waiting for the GIL, a lock or a socket is not counted, nor
    native code that released the GIL, such as ONNX Runtime's kernels), by category."""
    raw = out.with_suffix(".txt")
    spy = subprocess.Popen(
        [
            "py-spy",
            "record",
            "-p",
            str(pid),
            "-r",
            "1000",
            "--gil",
            "--nonblocking",
            "-f",
            "raw",
            "-o",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    try:
        seconds_of()
    finally:
        spy.send_signal(2)  # SIGINT: py-spy writes what it has
        spy.wait(30)
    lines = raw.read_text().splitlines()
    (out.parent / "stacks.txt").write_text("\n".join(lines))
    return tally(lines, requests)


def category(frames: list[str]) -> str:
    if any(wait in frames[-1] for wait in WAITS):
        return CATEGORIES[0][0]
    for frame in reversed(frames):
        for name, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return name
    return "other"


def tally(lines: list[str], requests: int) -> list[dict[str, Any]]:
    """Raw py-spy stacks (``frame;frame;... count``) -> samples, share and ms per request
    (at :data:`RATE`) per category."""
    counts: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[category(stack.split(";"))] += int(count)
    total = sum(counts.values()) or 1
    return [
        {
            "part": name,
            "samples": n,
            "share": round(n / total, 4),
            "ms_per_request": round(n / RATE * 1000 / requests, 3),
        }
        for name, n in counts.most_common()
    ]


def plot(result: Mapping[str, Any], path: Path) -> None:
    cells = [c for c in result["cells"]]
    labels = [f"{c['mode']}\n{c['body']}\n{c['code']}" for c in cells]
    parts = (
        ("model_cpu_ms", "device model"),
        ("preprocess_cpu_ms", "preprocessing / re-encode"),
        ("not_model_cpu_ms", "everything else"),
    )
    with figure(path, 1, 1, figsize=(max(8, len(cells)), 4.5)) as (_, ax):
        bottom = [0.0] * len(cells)
        for key, label in parts:
            values = [c[key] for c in cells]
            ax.bar(labels, values, bottom=bottom, label=label)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set(ylabel="device CPU per request (ms, median)", title=result["title"])
        ax.legend()


def report(result: Mapping[str, Any]) -> list[str]:
    lines = [
        f"# {result['title']}",
        "",
        "CPU of the device process (`splitdnn serve device`, all threads, from schedstat) per "
        "`/classify` request, tail on 127.0.0.1, one ONNX Runtime thread, requests one at a "
        "time, no CPU quota. `not model` = process CPU − worker-thread CPU of preprocessing "
        "(re-encode for offload) − the device model. Medians, mean in brackets.",
        "",
        *table(
            ["code", "mode", "body", "n", "process CPU ms", "model", "preprocess", "not model"],
            [
                (
                    c["code"],
                    c["mode"],
                    c["body"],
                    c["n"],
                    f"{c['cpu_ms']:.2f} ({c['cpu_mean_ms']:.2f})",
                    f"{c['model_cpu_ms']:.2f}",
                    f"{c['preprocess_cpu_ms']:.2f}",
                    f"{c['not_model_cpu_ms']:.2f} ({c['not_model_cpu_mean_ms']:.2f})",
                )
                for c in result["cells"]
            ],
        ),
    ]
    if result.get("profile"):
        lines += [
            "",
            "## Where the device process's Python time goes (py-spy --gil, all cells)",
            "",
            "Samples of the thread py-spy sees holding the GIL, 1 kHz, by the innermost frame "
            "that names a part. Rough: py-spy names the GIL's last holder, so a thread that let "
            "go of it to wait or to run native code (ONNX Runtime) is counted until another "
            "takes it, and a thread preempted on the loaded machine counts too. The process CPU "
            "above is exact.",
            "",
            *table(
                ["part", "samples", "share", "ms per request"],
                [
                    (p["part"], p["samples"], f"{p['share']:.1%}", f"{p['ms_per_request']:.3f}")
                    for p in result["profile"]
                ],
            ),
        ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=default_bundle_path())
    parser.add_argument(
        "--images", type=Path, default=ROOT.parent / "shared" / "data" / "imagenet-sample"
    )
    parser.add_argument("--count", type=int, default=200, help="photos (requests per cell)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="also sample with py-spy")
    parser.add_argument("--profile-count", type=int, default=50, help="photos while sampled")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a source tree of the code before (e.g. `git archive REV | tar -x -C DIR`): "
        "its device app runs beside this tree's, requests alternating, cells 'before' and "
        "'after'",
    )
    parser.add_argument("--keep-stacks", type=Path, help="save py-spy's raw stacks here")
    parser.add_argument("--name", default="device_cpu")
    parser.add_argument("--title", default="Device CPU per /classify request")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    images = held_out_images(args.images, args.count)
    if not images:
        sys.exit(f"no photos under {args.images}")
    result: dict[str, Any] = {"title": args.title, "conditions": conditions()}
    code: dict[str, Path | None] = {"this": None}
    if args.baseline:
        code = {"before": args.baseline, "after": None}
    result["code"] = {name: str(path) if path else "this tree" for name, path in code.items()}
    with loopback_device_stack(args.bundle, 1, code) as stack, ExitStack() as open_clients:
        clients = {
            name: (
                open_clients.enter_context(httpx.Client(base_url=stack.url(name), timeout=60)),
                stack.processes[name].pid,
            )
            for name in code
        }
        rows = measure(clients, images, args.warmup)
        if args.profile:  # this tree's device app alone
            mine = {name: clients[name] for name in list(code)[-1:]}
            with tempfile.TemporaryDirectory() as tmp:
                result["profile"] = profile(
                    mine[next(iter(mine))][1],
                    lambda: measure(mine, images[: args.profile_count], 0),
                    Path(tmp) / "device.raw",
                    min(args.profile_count, len(images)) * len(MODES) * len(BODIES),
                )
                if args.keep_stacks:
                    args.keep_stacks.write_text((Path(tmp) / "stacks.txt").read_text())
    result["cells"] = summarise(rows)
    result["requests"] = rows
    for path in write_results(args.name, result, report(result), args.out, plot):
        print(path)


if __name__ == "__main__":
    main()
