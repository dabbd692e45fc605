"""Load test: N concurrent clients posting one image to a running gateway.

    splitdnn serve all &            # or any gateway URL
    python benchmarks/load_test.py --mode split --concurrency 8 --requests 200

Reports throughput, latency percentiles, status codes (503s from the tail's in-flight
limit turn into local fallbacks, not failures) and the modes actually used. ``--json``
writes the summary to a file as well.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx


def default_image() -> bytes:
    example = Path(__file__).resolve().parents[1] / "examples" / "cat.jpg"
    if example.is_file():
        return example.read_bytes()
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def percentile(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) if ordered else None


async def run(url: str, image: bytes, mode: str, concurrency: int, total: int) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    fallbacks = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal fallbacks
            while True:
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                start = time.perf_counter()
                try:
                    response = await client.post(
                        "/classify",
                        params={"mode": mode},
                        content=image,
                        headers={"Content-Type": "image/jpeg"},
                    )
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1
                    continue
                latencies.append((time.perf_counter() - start) * 1000)
                statuses[str(response.status_code)] += 1
                if response.status_code == 200:
                    answer = response.json()
                    modes[answer["mode"]] += 1
                    fallbacks += bool(answer.get("fallback"))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started

    return {
        "url": url,
        "mode": mode,
        "concurrency": concurrency,
        "requests": total,
        "image_bytes": len(image),
        "wall_s": round(wall, 3),
        "throughput_rps": round(total / wall, 2),
        "latency_ms": {
            "p50": percentile(latencies, 0.5),
            "p95": percentile(latencies, 0.95),
            "p99": percentile(latencies, 0.99),
            "mean": round(statistics.fmean(latencies), 2) if latencies else None,
        },
        "statuses": dict(statuses),
        "modes_used": dict(modes),
        "fallbacks": fallbacks,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="gateway base URL")
    parser.add_argument("--mode", default="split", choices=["split", "local", "offload", "auto"])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--image", help="JPEG to send (default: examples/cat.jpg or Chelsea)")
    parser.add_argument("--json", help="also write the summary to this file")
    args = parser.parse_args(argv)
    image = Path(args.image).read_bytes() if args.image else default_image()
    summary = asyncio.run(run(args.url, image, args.mode, args.concurrency, args.requests))
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    failed = sum(n for status, n in summary["statuses"].items() if status != "200")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
