"""Overload soak: open-loop split requests through the gateway at twice the measured capacity,
with the tail killed and restarted in the middle.

    python -m benchmarks.soak                    # 300 s at 2x capacity, default bundle
    python -m benchmarks.soak --duration 60 --factor 2

1. Capacity: closed loop at the head's in-flight limit for ``--probe`` seconds; capacity is
   the rate of 200 answers.
2. Soak: requests leave on a fixed schedule at ``factor x capacity`` whatever the answers
   (open loop), so the services must shed what they cannot do: each answer must be a 200 or
   a 503 + Retry-After, within 1 s. Failed = anything else (5xx other than 503, a transport
   error, or no answer within ``--timeout``).
3. At 40 % of the run the tail gets SIGKILL and is started again at once; split requests
   fall back to local meanwhile. Recovery = time from the tail answering ready again to the
   first split answer served by the tail.
4. RSS of every process sampled every 0.1 s; growth = median of the last 10 % of the run
   against the median of 10-20 % (the restarted tail: its own first minute against its end).

Writes ``benchmarks/results/soak.{json,md,png}``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from benchmarks.report import ROOT, conditions, figure, table, write_results
from benchmarks.stack import Stack, local_stack, mark_times, stack_parser
from services.head.settings import HeadSettings
from splitdnn.bundle import load_bundle


async def post(client: httpx.AsyncClient, image: bytes, timeout: float) -> dict[str, Any]:
    start = time.perf_counter()
    record: dict[str, Any] = {}
    try:
        response = await client.post(
            "/classify",
            params={"mode": "split"},
            content=image,
            headers={"Content-Type": "image/jpeg"},
            timeout=timeout,
        )
        record["status"] = response.status_code
        if response.status_code == 200:
            answer = response.json()
            record["mode"] = answer["mode"]
            record["fallback"] = bool(answer.get("fallback"))
        elif response.status_code == 503:
            record["retry_after"] = response.headers.get("retry-after")
    except httpx.HTTPError as exc:
        record["status"] = type(exc).__name__
    record["ms"] = (time.perf_counter() - start) * 1000
    return record


async def capacity(url: str, image: bytes, concurrency: int, seconds: float) -> float:
    """Rate of 200 answers with ``concurrency`` clients in a closed loop."""
    done = 0
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url) as client:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                record = await post(client, image, 30)
                done += record["status"] == 200 and record.get("mode") == "split"

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - start)


async def soak(
    stack: Stack, image: bytes, rate: float, duration: float, timeout: float
) -> tuple[list[dict], dict[str, float]]:
    records: list[dict] = []
    events: dict[str, float] = {}
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    loop_start = time.perf_counter()
    t0 = stack.now()
    events["start"] = t0

    def kill_and_restart() -> None:
        time.sleep(duration * 0.4)
        events["tail_killed"] = stack.now()
        stack.kill("tail")
        stack.start("tail")
        events["tail_ready"] = stack.now()

    threading.Thread(target=kill_and_restart, daemon=True).start()
    async with httpx.AsyncClient(base_url=stack.url("gateway"), limits=limits) as client:
        tasks = []
        n = int(rate * duration)
        for i in range(n):
            due = loop_start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = stack.now()

            async def one(sent: float = sent) -> None:
                record = await post(client, image, timeout)
                record["t"] = sent
                records.append(record)

            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    events["end"] = stack.now()
    return records, events


def median_rss(stack: Stack, name: str, since: float, until: float) -> float | None:
    values = [s.rss_mib for s in stack.samples if s.service == name and since <= s.t <= until]
    return statistics.median(values) if values else None


def summarise(
    records: list[dict], events: dict[str, float], stack: Stack, rate: float, cap: float
) -> dict[str, Any]:
    start, end = events["start"], events["end"]
    length = end - start
    statuses = Counter(str(r["status"]) for r in records)
    failed = [r for r in records if r["status"] not in (200, 503)]
    slow = [r for r in records if r["status"] in (200, 503) and r["ms"] > 1000]
    accepted = sorted(r["ms"] for r in records if r["status"] == 200)
    killed, ready = events["tail_killed"], events["tail_ready"]
    after = sorted(
        r["t"] + r["ms"] / 1000
        for r in records
        if r["status"] == 200 and r.get("mode") == "split" and r["t"] >= ready
    )
    during = [r for r in records if killed <= r["t"] < ready]
    rss: dict[str, Any] = {}
    for name in ("gateway", "head"):
        early = median_rss(stack, name, start + 0.1 * length, start + 0.2 * length)
        late = median_rss(stack, name, end - 0.1 * length, end)
        rss[name] = {"early_mib": early, "late_mib": late}
    tail_early = median_rss(stack, "tail", start + 0.1 * length, start + 0.2 * length)
    tail_before_kill = median_rss(stack, "tail", killed - 0.1 * length, killed)
    restarted_early = median_rss(stack, "tail", ready, ready + 0.1 * length)
    restarted_late = median_rss(stack, "tail", end - 0.1 * length, end)
    rss["tail (first process)"] = {"early_mib": tail_early, "late_mib": tail_before_kill}
    rss["tail (restarted)"] = {"early_mib": restarted_early, "late_mib": restarted_late}
    for values in rss.values():
        e, la = values["early_mib"], values["late_mib"]
        values["growth_pct"] = round(100 * (la - e) / e, 2) if e and la else None
        values["early_mib"] = round(e, 1) if e else None
        values["late_mib"] = round(la, 1) if la else None

    def pct(q: float) -> float | None:
        return (
            round(accepted[min(len(accepted) - 1, int(q * len(accepted)))], 1) if accepted else None
        )

    modes = Counter(
        ("fallback " if r.get("fallback") else "") + r.get("mode", "?")
        for r in records
        if r["status"] == 200
    )
    return {
        "capacity_rps": round(cap, 2),
        "offered_rps": round(rate, 2),
        "duration_s": round(length, 1),
        "requests": len(records),
        "statuses": dict(sorted(statuses.items())),
        "failed": len(failed),
        "answers_over_1s": len(slow),
        "max_ms": round(max(r["ms"] for r in records), 1),
        "accepted_p50_ms": pct(0.5),
        "accepted_p99_ms": pct(0.99),
        "modes_of_200s": dict(modes),
        "slowest": [
            {
                "sent_at_s": round(r["t"] - start, 2),
                "ms": round(r["ms"], 1),
                "status": r["status"],
                "mode": ("fallback " if r.get("fallback") else "") + r.get("mode", "-"),
            }
            for r in sorted(records, key=lambda r: -r["ms"])[:5]
        ],
        "retry_after_on_every_503": all(
            r.get("retry_after") for r in records if r["status"] == 503
        ),
        "tail_killed_at_s": round(killed - start, 1),
        "tail_down_s": round(ready - killed, 2),
        "requests_sent_while_tail_down": len(during),
        "failed_while_tail_down": sum(r["status"] not in (200, 503) for r in during),
        "split_recovery_s": round(after[0] - ready, 2) if after else None,
        "rss": rss,
    }


def write_report(result: dict[str, Any], records: list[dict], stack: Stack, out: Path) -> None:
    s = result["summary"]
    modes = s["modes_of_200s"]
    figures = [
        ("requests", f"{s['requests']:,}"),
        ("statuses", ", ".join(f"{k}: {v:,}" for k, v in s["statuses"].items())),
        ("failed (not 200/503)", s["failed"]),
        ("200/503 answers slower than 1 s", s["answers_over_1s"]),
        ("slowest answer (ms)", s["max_ms"]),
        ("accepted p50 / p99 (ms)", f"{s['accepted_p50_ms']} / {s['accepted_p99_ms']}"),
        ("modes of the 200s", ", ".join(f"{k}: {v:,}" for k, v in modes.items())),
        ("Retry-After on every 503", s["retry_after_on_every_503"]),
        ("tail killed at (s) / down for (s)", f"{s['tail_killed_at_s']} / {s['tail_down_s']}"),
        (
            "requests sent while the tail was down / failed",
            f"{s['requests_sent_while_tail_down']} / {s['failed_while_tail_down']}",
        ),
        ("split served by the tail again after it was ready (s)", s["split_recovery_s"]),
    ]
    lines = [
        "# Overload soak: split requests at 2x capacity, tail killed mid-run",
        "",
        f"Bundle `{result['bundle']}`, command `{result['command']}`. Capacity measured "
        f"closed-loop at the head's in-flight limit: {s['capacity_rps']} req/s; offered open-loop "
        f"{s['offered_rps']} req/s for {s['duration_s']} s. Limits: gateway 8, head 2, tail 8 "
        "in flight.",
        "",
        *table(["figure", "value"], figures),
        "",
        *table(
            ["process", "RSS early (MiB)", "RSS late (MiB)", "growth %"],
            (
                [name, v["early_mib"], v["late_mib"], v["growth_pct"]]
                for name, v in s["rss"].items()
            ),
        ),
        "",
        "Slowest answers (sent at s after the start, ms, status, mode):",
        "",
        *(f"* {r['sent_at_s']} s: {r['ms']} ms, {r['status']}, {r['mode']}" for r in s["slowest"]),
    ]

    def plot(result: dict[str, Any], path: Path) -> None:
        with figure(path, 2, 1, figsize=(9, 7), sharex=True, dpi=120) as (_, (ax, ax2)):
            for status, colour in ((200, "tab:blue"), (503, "tab:orange")):
                points = [(r["t"], r["ms"]) for r in records if r["status"] == status]
                if points:
                    ax.scatter(*zip(*points, strict=True), s=2, c=colour, label=str(status))
            bad = [(r["t"], r["ms"]) for r in records if r["status"] not in (200, 503)]
            if bad:
                ax.scatter(*zip(*bad, strict=True), s=8, c="red", label="failed")
            ax.set_ylabel("answer time (ms)")
            ax.set_title(f"{s['offered_rps']} req/s offered vs {s['capacity_rps']} capacity")
            ax.legend(markerscale=4)
            events = {"tail_killed": "red", "tail_ready": "green"}
            mark_times((ax, ax2), result["events"], events)
            stack.plot_rss(ax2, "time (s); red: tail killed, green: tail ready again")

    write_results("soak", result, lines, out, plot)


def main(argv: list[str] | None = None) -> int:
    parser = stack_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--probe", type=float, default=20.0, help="capacity probe seconds")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    bundle_dir, bundle = args.bundle, load_bundle(args.bundle)
    image = (ROOT / "examples" / "cat.jpg").read_bytes()
    head_limit = HeadSettings.model_fields["max_in_flight"].default
    started_at = conditions()
    with local_stack(bundle_dir) as stack:
        cap = asyncio.run(capacity(stack.url("gateway"), image, head_limit, args.probe))
        rate = args.factor * cap
        print(f"capacity {cap:.2f} req/s; offering {rate:.2f} req/s for {args.duration} s")
        records, events = asyncio.run(soak(stack, image, rate, args.duration, args.timeout))
        summary = summarise(records, events, stack, rate, cap)
        result = {
            "conditions": started_at,
            "command": "python -m benchmarks.soak "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "bundle": bundle.id,
            "events": {k: round(v, 3) for k, v in events.items()},
            "summary": summary,
        }
        write_report(result, records, stack, args.out)
    print(json.dumps(summary, indent=2))
    growth = [v["growth_pct"] for v in summary["rss"].values() if v["growth_pct"] is not None]
    ok = summary["failed"] == 0 and summary["answers_over_1s"] == 0 and max(growth) < 5
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
