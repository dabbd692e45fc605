"""Open-loop load: requests leave at scheduled times, whatever the answers do.

A closed loop (N clients, each waiting for its answer before the next request) slows down
with the server and hides queueing: a slow answer delays the next request, so the offered
load falls exactly when it matters. Here the schedule is fixed beforehand — evenly spaced
(``fixed``) or exponential gaps (``poisson``) at ``rate`` per second — and each request's
latency is measured from its *intended* send time, so time spent waiting for a free worker
or a late scheduler counts (no coordinated omission).

    summary = run(send, rate=5, count=100, arrivals="poisson", seed=0)

``send(i)`` performs request ``i`` and returns a :class:`Reply` (or raises: the exception's
class name becomes the error class). The summary holds offered vs achieved rate, errors by
class, latency p50/p95/p99/max and every request's record.

CLI (it replaced the closed-loop ``load_test.py``): post photos from a folder to a URL.

    python -m benchmarks.loadgen http://127.0.0.1:8000/classify?mode=split \\
        --images ../shared/data/imagenet-sample/images --rate 5 --count 200 --arrivals poisson
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.report import conditions

ARRIVALS = ("fixed", "poisson")


@dataclass
class Reply:
    """What one request returned: ``error`` None when it succeeded."""

    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Record:
    index: int
    intended_s: float  # scheduled send time, from the start of the run
    sent_s: float  # when it really left
    done_s: float
    error: str | None
    info: dict[str, Any]

    @property
    def latency_ms(self) -> float:
        """From the intended send time to the answer (waiting for a worker counts)."""
        return (self.done_s - self.intended_s) * 1000


def schedule(rate: float, count: int, arrivals: str = "fixed", seed: int = 0) -> list[float]:
    """Send times (seconds from start) of ``count`` requests at ``rate`` per second."""
    if rate <= 0 or count < 0:
        raise ValueError("rate must be positive and count non-negative")
    if arrivals == "fixed":
        return [i / rate for i in range(count)]
    if arrivals == "poisson":
        rng = random.Random(seed)
        times, t = [], 0.0
        for _ in range(count):
            times.append(t)
            t += rng.expovariate(rate)
        return times
    raise ValueError(f"arrivals must be one of {ARRIVALS}, not {arrivals!r}")


def interleaved(gaps: dict[str, float], count: int) -> tuple[list[tuple[str, int]], list[float]]:
    """Every mode of ``gaps`` for each of ``count`` inputs in turn, each request sent one
    gap (that mode's warm time) after the one before: requests do not overlap, and a burst
    of load on a shared machine hits every mode alike. Returns (mode, input) pairs and send
    times in seconds."""
    plan = [(mode, i) for i in range(count) for mode in gaps]
    times, t = [], 0.0
    for mode, _ in plan:
        times.append(t)
        t += gaps[mode]
    return plan, times


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def run(
    send: Callable[[int], Reply],
    rate: float,
    count: int,
    arrivals: str = "fixed",
    seed: int = 0,
    workers: int = 64,
    times: list[float] | None = None,
) -> dict[str, Any]:
    """Send ``count`` requests on the schedule (or at the given send ``times``, seconds from
    the start); returns the summary (see :func:`summarise`)."""
    times = schedule(rate, count, arrivals, seed) if times is None else list(times)
    records: list[Record] = []
    lock = threading.Lock()
    start = time.perf_counter()

    def one(i: int, intended: float) -> None:
        sent = time.perf_counter() - start
        try:
            reply = send(i)
        except Exception as exc:  # the class is the error class; the run goes on
            reply = Reply(type(exc).__name__, {"detail": str(exc)[:200]})
        done = time.perf_counter() - start
        with lock:
            records.append(Record(i, intended, sent, done, reply.error, reply.info))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, intended in enumerate(times):
            delay = intended - (time.perf_counter() - start)
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, i, intended)
    records.sort(key=lambda r: r.index)
    return summarise(records, rate, arrivals)


def summarise(records: list[Record], rate: float, arrivals: str) -> dict[str, Any]:
    """Offered vs achieved rate, errors by class, latency percentiles of successes."""
    ok = [r.latency_ms for r in records if r.error is None]
    span = max((r.done_s for r in records), default=0.0) - min(
        (r.intended_s for r in records), default=0.0
    )
    offered_span = max((r.intended_s for r in records), default=0.0)
    n = len(records)

    def rounded(v: float | None) -> float | None:
        return None if v is None else round(v, 3)

    return {
        "arrivals": arrivals,
        "offered_rate": rate,
        "offered_rate_measured": round((n - 1) / offered_span, 3) if offered_span > 0 else None,
        "achieved_rate": round(len(ok) / span, 3) if span > 0 else None,
        "requests": n,
        "succeeded": len(ok),
        "errors": dict(Counter(r.error for r in records if r.error is not None)),
        "p50_ms": rounded(percentile(ok, 50)),
        "p95_ms": rounded(percentile(ok, 95)),
        "p99_ms": rounded(percentile(ok, 99)),
        "max_ms": rounded(max(ok) if ok else None),
        "mean_ms": rounded(statistics.fmean(ok) if ok else None),
        "records": [
            {
                "i": r.index,
                "intended_s": round(r.intended_s, 4),
                "late_ms": round((r.sent_s - r.intended_s) * 1000, 3),
                "latency_ms": round(r.latency_ms, 3),
                "error": r.error,
                **r.info,
            }
            for r in records
        ],
    }


def http_sender(url: str, images: list[bytes], timeout: float = 60.0) -> Callable[[int], Reply]:
    """``send(i)`` posting ``images[i % len(images)]`` to ``url`` with one pooled client."""
    import httpx

    client = httpx.Client(timeout=timeout, limits=httpx.Limits(max_connections=64))

    def send(i: int) -> Reply:
        response = client.post(
            url, content=images[i % len(images)], headers={"Content-Type": "image/jpeg"}
        )
        if response.status_code != 200:
            return Reply(f"http_{response.status_code}")
        answer = response.json()
        info = {"mode": answer.get("mode"), "fallback": answer.get("fallback")}
        return Reply(None, info)

    return send


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="endpoint taking an image body, e.g. .../classify?mode=split")
    parser.add_argument("--images", type=Path, required=True, help="folder of JPEGs")
    parser.add_argument("--rate", type=float, default=5.0, help="requests per second offered")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--arrivals", choices=ARRIVALS, default="poisson")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not paths:
        print(f"no JPEGs in {args.images}", file=sys.stderr)
        return 2
    images = [p.read_bytes() for p in paths[: max(1, min(len(paths), args.count))]]
    started_at = conditions()
    summary = run(http_sender(args.url, images), args.rate, args.count, args.arrivals, args.seed)
    brief = {k: v for k, v in summary.items() if k != "records"}
    print(json.dumps(brief, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"conditions": started_at, **summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
