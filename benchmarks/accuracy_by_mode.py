"""Accuracy of every served mode of a bundle on held-out images, and the report of all runs.

python -m benchmarks.accuracy_by_mode evaluate BUNDLE --name NAME [--threads 1]
    Caltech-101: the 578 validation images (10 % per class, seed 0), which neither the
    probes nor the students trained on; ImageNet: the 750 held-out photos of the ImageNet
    sample (val_fraction 0.75, seed 0), which no stage trained on. One JSON per task in
    benchmarks/results/accuracy/NAME-TASK.json (splitdnn.evaluate.evaluate_bundle).
python -m benchmarks.accuracy_by_mode assets NAME [--out splitdnn/assets/default] [--quantisation Q]
    accuracy.json beside the default assets from NAME-TASK.json: the held-out top-1 per
    mode that `splitdnn export default` records in the bundle's manifest (auto's bound),
    and, with --quantisation, what the bundle sends split as by default (chosen on them).
python -m benchmarks.accuracy_by_mode report
    accuracy.md (a table per task: top-1 of every mode, agreement, gaps with 95 % CI)
    and accuracy.png (top-1 by mode, bundle and task) from every JSON there.
python -m benchmarks.accuracy_by_mode curves RUN_DIR --name NAME
    copies RUN_DIR/metrics.jsonl to benchmarks/results/distill/NAME.jsonl and plots it.
python -m benchmarks.accuracy_by_mode finetune [--runs runs/finetune-]
    server-side fine-tuning (configs/finetune/MODE.yaml, run into runs/finetune-MODE):
    copies each mode's metrics.jsonl to benchmarks/results/finetune/MODE.jsonl and writes
    finetune.md + finetune.png: validation top-1 per epoch, epoch 0 being the served model.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from benchmarks.report import RESULTS, ROOT, conditions, conditions_line, figure, table, write_json
from splitdnn.wire import QUANTISATIONS

#: One JSON per bundle and task (``NAME-TASK.json``), and the report of them all.
ACCURACY = RESULTS / "accuracy"
DATA = ROOT.parent / "shared" / "data"
#: task -> (data folder, list file, val_fraction, seed): the held-out images of each task.
HELD_OUT = {
    "caltech101": ("caltech101", "train.txt", 0.1, 0),
    "imagenet": ("imagenet-sample", None, 0.75, 0),
}
MODES = ("offload", "split_fp32", "split_fp16", "split_uint8", "split_uint4", "local")


def evaluate(bundle: Path, name: str, data: Path, threads: int, limit: int | None) -> None:
    from splitdnn.evaluate import evaluate_bundle

    for task, (folder, list_file, fraction, seed) in HELD_OUT.items():
        report = evaluate_bundle(
            bundle,
            data / folder,
            list_file,
            task=task,
            split="val",
            val_fraction=fraction,
            seed=seed,
            limit=limit,
            progress=True,
            threads=threads,
        )
        report["name"] = name
        report["conditions"] = conditions()
        print(f"wrote {write_json(f'{name}-{task}', report, ACCURACY)}")


def held_out_images(task: str) -> str:
    """Which images a task's figures come from, as the manifest states it."""
    folder, list_file, fraction, seed = HELD_OUT[task]
    return (
        f"{folder}{f' ({list_file})' if list_file else ''}: {fraction:.0%} per class held out "
        f"(seed {seed}), used neither to train nor to pick the checkpoint"
    )


def measured_accuracy(name: str, quantisation: str | None = None) -> dict:
    """``accuracy.json`` of the assets from the NAME-TASK.json reports of one bundle."""
    from splitdnn.evaluate import task_accuracy

    reports = {
        task: json.loads((ACCURACY / f"{name}-{task}.json").read_text()) for task in HELD_OUT
    }
    ids = {r["bundle_id"] for r in reports.values()}
    if len(ids) != 1:
        raise SystemExit(f"the {name} reports are of different bundles: {sorted(ids)}")
    tasks = {
        task: task_accuracy(r, held_out_images(task)).model_dump() for task, r in reports.items()
    }
    measured: dict = {"bundle_id": ids.pop(), "tasks": tasks}
    if quantisation is not None:
        missing = [t for t, r in reports.items() if f"split_{quantisation}_top1" not in r]
        if missing:
            raise SystemExit(f"split_{quantisation} was not measured for {missing}")
        measured["quantisation"] = quantisation
    return measured


def assets(name: str, out: Path, quantisation: str | None = None) -> None:
    path = out / "accuracy.json"
    path.write_text(json.dumps(measured_accuracy(name, quantisation), indent=2) + "\n")
    print(f"wrote {path}")


def _row(r: dict) -> list[str]:
    cells = [r["name"], str(r["images"])]
    for mode in MODES:
        cells.append(f"{r[f'{mode}_top1']:.2f}" if f"{mode}_top1" in r else "–")
    for mode in ("split_uint8", "local"):
        if f"{mode}_gap" in r:
            low, high = r[f"{mode}_gap_ci95"]
            cells.append(f"{r[f'{mode}_gap']:+.2f} [{low:+.2f}, {high:+.2f}]")
        else:
            cells.append("–")
    cells.append(f"{r.get('split_uint8_agreement', float('nan')):.2f}")
    cells.append(f"{r['uint8_cost']:+.2f}")
    cost, size = r.get("uint4_cost"), r.get("split_uint4_zstd_median_bytes")
    cells.append(f"{cost:+.2f} ({size:,.0f} B)" if cost is not None and size else "–")
    size8 = r.get("split_uint8_zstd_median_bytes")
    cells.append(f"{size8:,.0f}" if size8 else "–")
    return cells


#: The columns of a task's table in accuracy.md.
HEADER = [
    "bundle", "images", "offload", "split fp32", "split fp16", "split uint8", "split uint4",
    "local", "gap split uint8 [95 % CI]", "gap local [95 % CI]", "agreement uint8",
    "uint8 cost", "uint4 cost (median bytes)", "uint8 + zstd median bytes",
]  # fmt: skip


def report() -> None:
    # a report written by `splitdnn evaluate --json` has no name: its file's stands in
    runs = [{"name": p.stem, **json.loads(p.read_text())} for p in sorted(ACCURACY.glob("*.json"))]
    lines = [
        "# Accuracy of every served mode (held-out images)",
        "",
        "Written by `python -m benchmarks.accuracy_by_mode report` from the JSON files beside",
        "this one. Top-1 in percent; gaps are offload (the teacher) minus the mode, with a",
        "paired 95 % confidence interval; agreement is top-1 agreement with the teacher;",
        "uint8 (uint4) cost is split fp32 minus split sent in an 8-bit (4-bit) envelope.",
        "",
    ]
    for task in HELD_OUT:
        rows = [r for r in runs if r["task"] == task]
        if not rows:
            continue
        lines += [f"## {task}", "", *table(HEADER, (_row(r) for r in rows), "l" * len(HEADER))]
        lines += ["", *(f"* {r['name']}: {conditions_line(r)}" for r in rows), ""]
    (ACCURACY / "accuracy.md").write_text("\n".join(lines))
    _plot(runs, ACCURACY / "accuracy.png")
    print("\n".join(lines))


def _plot(runs: list[dict], path: Path) -> None:
    tasks = [t for t in HELD_OUT if any(r["task"] == t for r in runs)]
    size = (6 * len(tasks), 4.2)
    with figure(path, 1, len(tasks), figsize=size, squeeze=False) as (_, axes):
        for ax, task in zip(axes[0], tasks, strict=True):
            rows = [r for r in runs if r["task"] == task]
            width = 0.8 / len(MODES)
            for j, mode in enumerate(MODES):
                xs = [i + (j - len(MODES) / 2 + 0.5) * width for i in range(len(rows))]
                ys = [r.get(f"{mode}_top1", 0.0) for r in rows]
                ax.bar(xs, ys, width, label=mode.replace("_", " "))
            ticks = [f"{r['name']}\n({r['images']} images)" for r in rows]
            ax.set_xticks(range(len(rows)), ticks)
            low = min(r.get(f"{m}_top1", 100.0) for r in rows for m in MODES)
            ax.set_ylim(max(0.0, low - 10), 100)
            ax.set_ylabel("top-1 [%]")
            ax.set_title(f"{task}: held-out images")
            ax.grid(axis="y", alpha=0.3)
        axes[0][0].legend(fontsize=8, loc="lower left")


def curves(run_dir: Path, name: str) -> None:
    target = RESULTS / "distill" / f"{name}.jsonl"
    shutil.copy(run_dir / "metrics.jsonl", target)
    lines = [json.loads(ln) for ln in target.read_text().splitlines() if ln.strip()]
    epochs = [r["epoch"] for r in lines]
    with figure(target.with_suffix(".png"), 1, 2, figsize=(10, 3.8)) as (fig, (left, right)):
        left.plot(epochs, [r["loss"] for r in lines], marker="o")
        left.set_xlabel("epoch")
        left.set_ylabel("training loss (smoothed)")
        for key in ("teacher_top1", "mimic_top1", "top1_agreement"):
            right.plot(epochs, [r[key] for r in lines], marker="o", label=key)
        right.set_xlabel("epoch")
        right.set_ylabel("validation [%]")
        right.legend()
        fig.suptitle(name)
    print(f"wrote {target} and {target.with_suffix('.png')}")


FINETUNE_MODES = ("split", "offload", "local")


def finetune(prefix: str) -> None:
    out = RESULTS / "finetune"
    out.mkdir(parents=True, exist_ok=True)
    records = {}
    for mode in FINETUNE_MODES:
        source = Path(f"{prefix}{mode}") / "metrics.jsonl"
        if source.exists():
            shutil.copy(source, out / f"{mode}.jsonl")
        path = out / f"{mode}.jsonl"
        if path.exists():
            records[mode] = [json.loads(ln) for ln in path.read_text().splitlines() if ln]
    epochs = max((len(r) for r in records.values()), default=0)
    rows = []
    with figure(out / "finetune.png", figsize=(6, 3.8)) as (_, ax):
        for mode, history in records.items():
            tops = [r["val_top1"] for r in history]
            cells = [f"{t:.2f}" for t in tops] + ["–"] * (epochs - len(tops))
            rows.append([mode, history[0]["images"], *cells, f"{tops[-1] - tops[0]:+.2f}"])
            ax.plot([r["epoch"] for r in history], tops, marker="o", label=mode)
        ax.set_xlabel("epoch (0: served)")
        ax.set_ylabel("validation top-1 [%]")
        ax.legend()
    lines = [
        "# Server-side fine-tuning on the labels (Caltech-101)",
        "",
        "Written by `python -m benchmarks.accuracy_by_mode finetune` from the JSONL files",
        "beside this one (configs/finetune/: one budget for every mode). Validation top-1 in",
        "percent on the same held-out images, which picked no checkpoint; epoch 0 is the",
        "served model, before any fine-tuning.",
        "",
        *table(
            ["mode", "images", *(f"epoch {e}" for e in range(epochs)), "change"],
            rows,
            "l" * (epochs + 3),
        ),
    ]
    (out / "finetune.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'finetune.md'} and {out / 'finetune.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate")
    ev.add_argument("bundle", type=Path)
    ev.add_argument("--name", required=True)
    ev.add_argument("--data", type=Path, default=DATA)
    ev.add_argument("--threads", type=int, default=1)
    ev.add_argument("--limit", type=int, default=None)
    sub.add_parser("report")
    asset = sub.add_parser("assets")
    asset.add_argument("name")
    asset.add_argument("--out", type=Path, default=ROOT / "splitdnn" / "assets" / "default")
    asset.add_argument(
        "--quantisation",
        choices=list(QUANTISATIONS),
        default=None,
        help="what the default bundle sends split as (its held-out figures must be measured)",
    )
    cu = sub.add_parser("curves")
    cu.add_argument("run_dir", type=Path)
    cu.add_argument("--name", required=True)
    ft = sub.add_parser("finetune")
    ft.add_argument("--runs", default="runs/finetune-", help="run directory prefix")
    args = parser.parse_args()
    if args.command == "evaluate":
        evaluate(args.bundle, args.name, args.data, args.threads, args.limit)
    elif args.command == "report":
        report()
    elif args.command == "assets":
        assets(args.name, args.out, args.quantisation)
    elif args.command == "finetune":
        finetune(args.runs)
    else:
        curves(args.run_dir, args.name)


if __name__ == "__main__":
    main()
