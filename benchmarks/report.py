"""The one result writer of the benchmarks: every script writes ``NAME.json`` (all numbers),
``NAME.md`` (its tables) and ``NAME.png`` (its plot) under ``benchmarks/results/`` through
:func:`write_results`, with the same ``conditions`` block beside the figures: git commit,
date, host, CPU model and count, load average at the start, Python and ONNX Runtime
versions. A script adds only its own measurement, tables and plot.

Results written before this module carried their conditions under other keys
(``provenance``, ``machine``, or ``host`` / ``load_before`` / ``started`` at the top level);
:func:`conditions_of` reads those too, so old JSON renders without being measured again.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parents[1]
#: Where results written before ``conditions`` kept the same facts (old key -> shown as).
LEGACY_KEYS = {
    "commit": "commit",
    "started": "date",
    "date": "date",
    "host": "host",
    "machine": "host",
    "cpus": "cpus",
    "platform": "platform",
    "load_before": "load_average_at_start",
    "load_average": "load_average_at_start",
    "load_average_at_start": "load_average_at_start",
    "python": "python",
    "onnxruntime": "onnxruntime",
}


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def conditions() -> dict[str, Any]:
    """What the figures were measured on; call it when the measurement starts."""
    return {
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "onnxruntime": _version("onnxruntime"),
    }


def conditions_of(result: Mapping[str, Any]) -> dict[str, Any]:
    """A result's conditions block, with what an older result kept of it under other keys
    (:data:`LEGACY_KEYS`) under today's names."""
    stamped = result.get("conditions")
    found: dict[str, Any] = dict(stamped) if isinstance(stamped, Mapping) else {}
    for source in (stamped, result, result.get("provenance"), result.get("machine")):
        if not isinstance(source, Mapping):
            continue
        for old, new in LEGACY_KEYS.items():
            if old in source and not isinstance(source[old], Mapping):
                found.setdefault(new, source[old])
    return found


def conditions_line(result: Mapping[str, Any]) -> str:
    """The conditions as one Markdown line, the same in every report."""
    c = conditions_of(result)
    if not c:
        return "Conditions: not recorded."
    load = c.get("load_average_at_start")
    if isinstance(load, (list, tuple)):
        load = ", ".join(f"{x:.2f}" for x in load)
    host = ", ".join(
        str(x)
        for x in (
            c.get("host") or c.get("platform"),
            c.get("cpu_model"),
            c.get("cpus") and f"{c['cpus']} CPUs",
        )
        if x
    )
    parts = [
        ("commit", c.get("commit")),
        ("date", c.get("date")),
        ("host", host),
        ("load average at start", load),
        ("Python", c.get("python")),
        ("ONNX Runtime", c.get("onnxruntime")),
    ]
    return "Conditions: " + "; ".join(f"{k} {v}" for k, v in parts if v) + "."


def table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> list[str]:
    """Markdown table lines. ``align`` has one letter a column, ``l`` or ``r`` (default:
    the first column left, the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(rule) + "|",
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
    ]


def write_results(
    name: str,
    result: Mapping[str, Any],
    lines: Sequence[str],
    out: Path = RESULTS,
    plot: Callable[[Mapping[str, Any], Path], None] | None = None,
    indent: int = 2,
) -> list[Path]:
    """``out/NAME.json`` (``result``), ``out/NAME.md`` (``lines``, the conditions line under
    the title) and, with ``plot``, ``out/NAME.png``; the paths written."""
    written = [write_json(name, result, out, indent), out / f"{name}.md"]
    body = list(lines)
    at = 1 if body and body[0].startswith("# ") else 0
    body[at:at] = ["", conditions_line(result)] if at else [conditions_line(result), ""]
    written[1].write_text("\n".join(body) + "\n")
    if plot is not None:
        written.append(out / f"{name}.png")
        plot(result, written[-1])
    return written


def write_json(name: str, result: Mapping[str, Any], out: Path = RESULTS, indent: int = 2) -> Path:
    """``out/NAME.json`` alone, for a run whose tables live in another report."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=indent) + "\n")
    return path


@contextmanager
def figure(path: Path, *grid: int, dpi: int = 110, **options: Any) -> Iterator[tuple[Any, Any]]:
    """``(figure, axes)`` of ``plt.subplots(*grid, **options)`` without a display, saved to
    ``path`` (tight layout) and closed on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*grid, **options)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
