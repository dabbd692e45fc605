"""Knowledge distillation vs labels only, for the whole student of local mode.

Trains the same student (an ImageNet EfficientNet-Lite0 whose last stages are fine-tuned,
starting from Lite0 + Caltech-101 probe, i.e. from the current local model) twice with the same
budget: ``method: kd`` on the Lite2 + probe teacher's soft targets (Hinton et al., 2015) and
``method: labels`` on the labels alone. Writes ``benchmarks/results/kd_vs_labels.json`` and
``.md``. Run from the repository root, after the HND run whose cached teacher outputs it reuses:

    nice -n 19 python -m benchmarks.kd_vs_labels --teacher-run runs/attempt1-blocks14

(any finished ``method: hnd`` run of the Lite2 + probe teacher with ``hflip: true`` on the
same data and seed will do: only its cached pooled features and ``classifier.pt`` are used).

Without ``--teacher-run`` the Lite2 teacher runs here once (slow on CPU: ~10 minutes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.report import RESULTS, ROOT, conditions, table, write_results
from splitdnn.distill.config import load_config, parse_config
from splitdnn.distill.kd import WholeStudentDistillation
from splitdnn.distill.trainer import train
from splitdnn.students import KD_STUDENTS


def _configs(args: argparse.Namespace) -> dict[str, dict]:
    base = load_config(args.config).model_dump(mode="json")
    shared = {
        "teacher": base["teacher"],
        "data": base["data"],
        # Mirrored images for both runs, whatever the hnd config does: fine-tuning on 5,206
        # images overfits quickly, and the mirrored teacher outputs are cached anyway.
        "augmentation": {"hflip": True, "cache_teacher": True},
        "probe": base["probe"],
        "seed": base["seed"],
        "train": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "optimizer": {"name": "adam", "lr": args.lr},
            "milestones": [max(1, round(args.epochs * 0.7))],
            "gamma": 0.1,
            "threads": args.threads,
            "checkpoint_every": 50,
        },
        "kd": {
            "student": args.student,
            "temperature": args.temperature,
            "alpha": args.alpha,
            "teacher_run": str(args.teacher_run) if args.teacher_run else None,
        },
    }
    return {method: {**shared, "method": method} for method in ("kd", "labels")}


def _markdown(report: dict) -> list[str]:
    kd, labels = report["runs"]["kd"], report["runs"]["labels"]
    b = report["budget"]
    lines = [
        "# Knowledge distillation vs labels only (local-mode student, Caltech-101)",
        "",
        f"Student `{report['student']}`: {report['student_notes']}; starts from EfficientNet-"
        "Lite0 + Caltech-101 linear probe (the current local model). Teacher: "
        f"{report['teacher']} (validation top-1 {kd['teacher_top1']:.2f} %).",
        f"Same budget for both: {b['epochs']} epochs, batch {b['batch_size']}, Adam lr "
        f"{b['lr']} (×0.1 at epoch {b['milestones'][0]}), mirrored images, frozen layers "
        f"cached; KD: T = {b['temperature']}, α = {b['alpha']}. Validation: "
        f"{report['val_images']} images (10 % per class of train.txt, seed {report['seed']}).",
        "",
        *table(
            ["method", "start (Lite0 + probe)", "best top-1 (epoch)", "final top-1", "minutes"],
            (
                [
                    name,
                    f"{run['initial_top1']:.2f}",
                    f"{run['best_top1']:.2f} ({run['best_epoch']})",
                    f"{run['final_top1']:.2f}",
                    f"{run['minutes']:.1f}",
                ]
                for name, run in (("kd", kd), ("labels", labels))
            ),
            align="lllll",
        ),
    ]
    return [*lines, "", report["verdict"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/lite2-caltech101.yaml")
    parser.add_argument("--teacher-run", type=Path, default=None)
    parser.add_argument("--student", default="efficientnet_lite0_last2", choices=KD_STUDENTS)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs/kd-vs-labels")
    parser.add_argument("--feature-cache", type=Path, default=ROOT / "runs/lite0-features")
    parser.add_argument("--out", type=Path, default=RESULTS / "kd_vs_labels")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    started_at = conditions()
    runs = {}
    for method, raw in _configs(args).items():
        config = parse_config(raw, base_dir=ROOT)
        started = time.perf_counter()
        summary = train(
            WholeStudentDistillation(config, args.runs / method, True, args.feature_cache),
            resume=True,
        )
        result = {
            "method": method,
            "initial_top1": summary["initial"]["val_top1"],
            "best_top1": summary["best"]["val_top1"],
            "best_epoch": summary["best_epoch"],
            "final_top1": summary["last"]["val_top1"],
            "teacher_top1": summary["last"].get("teacher_top1"),
        }
        result["minutes"] = (time.perf_counter() - started) / 60
        metrics = args.runs / method / "metrics.jsonl"
        result["curve"] = [json.loads(line) for line in metrics.read_text().splitlines()]
        runs[method] = result
    kd, labels = runs["kd"], runs["labels"]
    base = kd["initial_top1"]
    if kd["best_top1"] > base and kd["best_top1"] >= labels["best_top1"]:
        verdict = (
            f"KD's student beats Lite0 + probe ({kd['best_top1']:.2f} % vs {base:.2f} %) and the "
            f"labels-only student ({labels['best_top1']:.2f} %): it can replace the local model "
            "(same architecture and cost)."
        )
    else:
        verdict = (
            f"KD's student ({kd['best_top1']:.2f} %) does not beat both Lite0 + probe "
            f"({base:.2f} %) and labels only ({labels['best_top1']:.2f} %): Lite0 + probe stays "
            "the local model."
        )
    val_images = kd["curve"][0]["images"]
    config = load_config(args.config)
    report = {
        "student": args.student,
        "student_notes": KD_STUDENTS[args.student].notes,
        "teacher": f"{config.teacher.name} + Caltech-101 linear probe",
        "seed": config.seed,
        "val_images": val_images,
        "budget": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "milestones": [max(1, round(args.epochs * 0.7))],
            "temperature": args.temperature,
            "alpha": args.alpha,
            "threads": args.threads,
        },
        "runs": runs,
        "verdict": verdict,
        "conditions": started_at,
    }
    write_results(args.out.name, report, _markdown(report), args.out.parent)
    print(verdict)


if __name__ == "__main__":
    main()
