"""NoNN accuracy against member size: how far each trained K = 2 / K = 4 bundle is from the
issue's targets (#24: each member within a share of the teacher's MACs, top-1 within a few
points of the teacher's), read from the served figures ``splitdnn nonn figures`` wrote.

Each point is one figures file (the served path on the same held-out images, never trained
on nor used to pick a checkpoint): its largest member's MACs as a share of the teacher's,
served top-1 with its 95 % interval, the worst answer with one member down, and the
teacher's top-1 on the same images. Nothing is re-measured here.

    python -m benchmarks.nonn_size_curve                    # the committed figures
    python -m benchmarks.nonn_size_curve --point F.json="K = 2, my run" [--point ...]

Writes ``benchmarks/results/nonn/size_curve.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.report import RESULTS, conditions, figure, table, write_results

NONN_RESULTS = RESULTS / "nonn"

#: The committed figures files, each with what it measured (its config and training).
COMMITTED = {
    "k1.json": "K = 1 control: one student of the pair's size, frozen prefix, 6 epochs",
    "k2.json": "frozen prefix through _blocks.12, 6 epochs",
    "k2-narrow-figures.json": "narrow from the stem, 6 epochs",
    "k2-narrow8-long-figures.json": "narrow, channels x8, 14 epochs",
    "k2-narrow8-unlabelled-hflip-figures.json": "x8, + label-free photos, mirrors, 8 epochs",
    "k4-narrow-figures.json": "narrow, 6 epochs at 1e-4",
    "k4-narrow-fast-figures.json": "narrow, 7 epochs at 3e-4",
    "k4-narrow-unlabelled-hflip-figures.json": "+ label-free photos, mirrors, 5 epochs",
}

#: The issue's targets: K -> (largest member's share of the teacher's MACs in %, points
#: below the teacher allowed).
TARGETS = {2: (25.0, 2.0), 4: (12.5, 4.0)}


def _members(figures: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Per-member costs: ``costs.members`` (today's figures) or ``members`` (the first ones)."""
    costs = figures.get("costs") or {}
    return costs.get("members") or figures.get("members") or []


def point(figures: Mapping[str, Any], label: str, teacher_macs: int) -> dict[str, Any]:
    """One figures file as a point of the curve."""
    members = _members(figures)
    if not members:
        raise ValueError(f"{label}: the figures name no member costs")
    served, teacher = figures["served"], figures["teacher"]
    largest = max(int(m["macs"]) for m in members)
    down = [d["top1"] for d in served.get("one_member_down", [])]
    return {
        "label": label,
        "bundle": figures.get("bundle"),
        "members": len(members),
        "member_macs": largest,
        "member_macs_percent": round(100 * largest / teacher_macs, 2),
        "member_fp16_bytes": max(2 * int(m["params"]) for m in members),
        "images": served["images"],
        "top1": served["top1"],
        "ci95": list(served["ci95"]),
        "teacher_top1": teacher["top1"],
        "points_below_teacher": round(teacher["top1"] - served["top1"], 2),
        "worst_one_down": min(down) if down else None,
    }


def curve(files: Mapping[Path, str]) -> dict[str, Any]:
    """The points of ``files`` (path -> label), smallest members first. The teacher's MACs
    come from the first file that carries them (every file is of the same teacher)."""
    loaded = {path: json.loads(path.read_text()) for path in files}
    teacher_macs = next(
        (f["costs"]["teacher"]["macs"] for f in loaded.values() if "costs" in f), None
    )
    if teacher_macs is None:
        raise ValueError("no figures file carries the teacher's MACs (costs.teacher)")
    points = [point(loaded[path], label, teacher_macs) for path, label in files.items()]
    points.sort(key=lambda p: (p["members"], p["member_macs"], p["top1"]))
    for number, p in enumerate(points, 1):
        p["number"] = number  # the chart labels each point with its table row's number
    return {
        "conditions": conditions(),
        "teacher_macs": teacher_macs,
        "targets": {str(k): {"macs_percent": m, "points": p} for k, (m, p) in TARGETS.items()},
        "points": points,
    }


def _met(p: Mapping[str, Any]) -> str:
    target = TARGETS.get(p["members"])
    if target is None:
        return "—"
    size = p["member_macs_percent"] <= target[0]
    accuracy = p["points_below_teacher"] <= target[1]
    return f"{'yes' if size else 'no'} / {'yes' if accuracy else 'no'}"


def report_lines(result: Mapping[str, Any]) -> list[str]:
    rows = [
        (
            p["number"],
            p["members"],
            p["label"],
            f"{p['member_macs'] / 1e6:.1f} M ({p['member_macs_percent']:.1f} %)",
            f"{p['member_fp16_bytes'] / 1e6:.2f}",
            f"**{p['top1']:.2f}** [{p['ci95'][0]:.2f}, {p['ci95'][1]:.2f}]",
            f"{p['teacher_top1']:.2f}",
            f"{-p['points_below_teacher']:+.2f}",
            "—" if p["worst_one_down"] is None else f"{p['worst_one_down']:.2f}",
            _met(p),
        )
        for p in result["points"]
    ]
    targets = "; ".join(
        f"K = {k}: each member ≤ {t['macs_percent']} % of the teacher's MACs, top-1 within "
        f"{t['points']} points"
        for k, t in result["targets"].items()
    )
    return [
        "# NoNN: accuracy against member size",
        "",
        f"Served top-1 (uint8 features, the join in numpy) on the held-out images; the teacher "
        f"on the same images; its MACs {result['teacher_macs'] / 1e6:.1f} M. Targets (#24): "
        f"{targets}.",
        "",
        *table(
            [
                "#",
                "K",
                "members",
                "largest member, MACs",
                "fp16 MB",
                "top-1 [95 %]",
                "teacher",
                "vs teacher",
                "worst, one down",
                "size / accuracy target",
            ],
            rows,
            "rrlrrrrrrl",
        ),
    ]


def plot(result: Mapping[str, Any], path: Path) -> None:
    with figure(path, 1, 1, figsize=(7.5, 4.8)) as (_, ax):
        teacher = max(p["teacher_top1"] for p in result["points"])
        ax.axhline(teacher, color="black", lw=1, ls="--", label=f"teacher {teacher:.2f}")
        colours = {1: "tab:gray", 2: "tab:blue", 4: "tab:orange"}
        for k, target in result["targets"].items():
            share, points = target["macs_percent"], target["points"]
            ax.fill_between(
                [0, share],
                teacher - points,
                100,
                color=colours.get(int(k), "tab:green"),
                alpha=0.12,
                label=f"K = {k} target",
            )
        for k in sorted({p["members"] for p in result["points"]}):
            rows = [p for p in result["points"] if p["members"] == k]
            x = [p["member_macs_percent"] for p in rows]
            y = [p["top1"] for p in rows]
            err = [
                [p["top1"] - p["ci95"][0] for p in rows],
                [p["ci95"][1] - p["top1"] for p in rows],
            ]
            ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, color=colours.get(k), label=f"K = {k}")
            for p in rows:
                ax.annotate(
                    str(p["number"]),
                    (p["member_macs_percent"], p["top1"]),
                    xytext=(5, -3),
                    textcoords="offset points",
                    fontsize=8,
                )
        ax.set_xlim(0, max(45, max(p["member_macs_percent"] for p in result["points"]) + 5))
        ax.set_ylim(40, 100)
        ax.set_xlabel("largest member's MACs, % of the teacher's")
        ax.set_ylabel(f"served top-1 %, {result['points'][0]['images']} held-out images")
        ax.set_title("NoNN: accuracy against member size (numbers: rows of size_curve.md)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--point",
        action="append",
        default=[],
        metavar="FILE=LABEL",
        help="a figures JSON of `splitdnn nonn figures` and what it measured (repeatable; "
        "default: the committed ones in benchmarks/results/nonn)",
    )
    parser.add_argument("--out", type=Path, default=NONN_RESULTS)
    args = parser.parse_args(argv)
    if args.point:
        files = {}
        for item in args.point:
            name, sep, label = item.partition("=")
            if not sep or not label:
                parser.error(f"--point {item!r}: expected FILE=LABEL")
            files[Path(name)] = label
    else:
        files = {NONN_RESULTS / name: label for name, label in COMMITTED.items()}
    result = curve(files)
    write_results("size_curve", result, report_lines(result), args.out, plot)
    print(f"wrote {args.out}/size_curve.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
