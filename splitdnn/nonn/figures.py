"""Figures of a NoNN bundle on held-out images, the way it is served.

:func:`bundle_figures` (``splitdnn nonn figures BUNDLE --run RUN --config CFG``): on the
config's validation images (which pick no checkpoint with ``train.keep: last``) each member
runs in onnxruntime, its features go through the wire format (uint8 by default) and back, the
join runs in numpy; top-1 with a 95 % Wilson interval, the teacher's on the same images and
the paired difference, envelope bytes, and per member MACs, parameters, weights in
fp32/fp16/int8 and peak activation memory beside the teacher's and the local model's.
``split="train"`` scores as many trained-on images instead: the gap between the two says
whether the members lack capacity (both low) or data (trained-on far above held-out).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from splitdnn import wire
from splitdnn.checkpoints import load_linear
from splitdnn.data import Sample, spread_evenly
from splitdnn.distill.config import DistillConfig, config_samples, load_config
from splitdnn.distill.trainer import METRICS
from splitdnn.errors import ConfigError, ExportError
from splitdnn.imaging import load_input
from splitdnn.nonn.bundle import NoNNBundle
from splitdnn.nonn.export import load_run, nonn_costs
from splitdnn.nonn.method import flip_consistency, teacher_maps
from splitdnn.runtime import OnnxModel
from splitdnn.stats import paired_difference, proportion_ci


def _ci95(hits: int, n: int) -> tuple[float, float]:
    """The Wilson interval in percent, rounded as the figures files store it."""
    low, high = proportion_ci(hits, n)
    return round(low, 2), round(high, 2)


def member_costs(run: Path) -> dict[str, Any]:
    """Each member's device costs beside the teacher's and the local model's
    (:func:`splitdnn.nonn.export.nonn_costs`)."""
    payload, members, _, prefix = load_run(run)
    return nonn_costs(payload, members, prefix)


#: Which images the figures score: ``val``, the held-out validation split (the figures);
#: ``train``, as many trained-on images spread evenly over the training split (the
#: generalisation gap beside them, never a figure on its own).
FIGURE_SPLITS = ("val", "train")


def figure_images(config: DistillConfig, split: str = "val") -> tuple[list[Sample], list[str]]:
    """The images of ``split`` (:data:`FIGURE_SPLITS`), in a fixed order, and the config's
    class names."""
    if split not in FIGURE_SPLITS:
        raise ConfigError(f"split must be one of {', '.join(FIGURE_SPLITS)}, not {split!r}")
    train, val, classes, _ = config_samples(config)
    return (val if split == "val" else spread_evenly(train, len(val))), classes


def served_accuracy(
    bundle: NoNNBundle,
    config_path: Path,
    quantisation: str = "uint8",
    limit: int | None = None,
    split: str = "val",
) -> dict[str, Any]:
    """Top-1 of the served path on the config's validation images (see the module doc), or
    on trained-on ones (``split="train"``)."""
    images, classes = figure_images(load_config(config_path), split)
    if classes != bundle.manifest.labels:
        raise ExportError("the config's classes differ from the bundle's labels")
    images = images[:limit] if limit else images
    models = [OnnxModel(bundle.member_path(i)) for i in range(len(bundle.manifest.members))]
    join = bundle.join()
    spec = bundle.preprocessing
    hits, sizes, ms = 0, [[] for _ in models], [[] for _ in models]
    correct: list[bool] = []
    down_hits = [0] * len(models)  # the degraded answer: member k missing, its means instead
    for sample in images:
        x = load_input(Path(sample.path).read_bytes(), spec)
        feats = []
        for i, model in enumerate(models):
            start = time.perf_counter()
            f = model.run(x)["features"]
            ms[i].append((time.perf_counter() - start) * 1000)
            env = wire.encode(f, bundle_id=bundle.id, quantisation=quantisation)
            sizes[i].append(len(env))
            feats.append(wire.decode_array(env, bundle_id=bundle.id)[1])
        correct.append(bool(np.argmax(join(feats)[0]) == sample.label))
        hits += int(correct[-1])
        for k in range(len(models)):
            missing = [None if j == k else f for j, f in enumerate(feats)]
            down_hits[k] += int(np.argmax(join(missing)[0]) == sample.label)
    n = len(images)
    return {
        "images": n,
        "top1": round(100 * hits / max(n, 1), 2),
        "ci95": _ci95(hits, n),
        "quantisation": quantisation,
        "envelope_bytes": [int(max(s)) if s else 0 for s in sizes],
        "member_ms_median": [round(float(np.median(m)), 2) if m else 0.0 for m in ms],
        "one_member_down": [
            {"member": k, "top1": round(100 * h / max(n, 1), 2), "ci95": _ci95(h, n)}
            for k, h in enumerate(down_hits)
        ],
        "correct": correct,
    }


def teacher_correct(config_path: Path, split: str = "val") -> list[bool]:
    """The teacher's (cached maps, its probe) correctness on the images of ``split``, in the
    same order as :func:`served_accuracy`."""
    config = load_config(config_path)
    if config.teacher.probe_from is None or config.nonn.cache_dir is None:
        missing = [
            key
            for key, value in (
                ("teacher.probe_from", config.teacher.probe_from),
                ("nonn.cache_dir", config.nonn.cache_dir),
            )
            if value is None
        ]
        raise ConfigError(
            f"{config_path}: the teacher's figures read its probe and its cached maps, and "
            f"this config sets no {' and no '.join(missing)}: name the probe the run used "
            "(teacher.probe_from) and the cache it wrote (nonn.cache_dir, by default "
            "RUN/cache)"
        )
    images, _ = figure_images(config, split)
    pooled = teacher_maps(
        config.teacher.name,
        images,
        pretrained=config.teacher.pretrained,
        weights=config.teacher.weights,
        cache_dir=config.nonn.cache_dir,
    )["pooled"]
    with torch.no_grad():
        logits = load_linear(config.teacher.probe_from)(torch.from_numpy(np.array(pooled)))
    return [bool(p == s.label) for p, s in zip(logits.argmax(1).tolist(), images, strict=True)]


def served_minus_teacher(served: list[bool], teacher: list[bool]) -> dict[str, Any]:
    """Served top-1 minus the teacher's on the same images, in points, with its paired 95 %
    interval and the discordant counts."""
    difference = paired_difference(served, teacher)
    return {
        "points": round(difference.points, 2),
        "ci95": tuple(round(bound, 2) for bound in difference.ci95),
        "only_first_right": difference.only_first_right,
        "only_second_right": difference.only_second_right,
    }


def bundle_figures(
    bundle: NoNNBundle,
    run: Path,
    config_path: Path,
    quantisation: str = "uint8",
    split: str = "val",
) -> dict[str, Any]:
    """Every figure of the module docstring, as ``splitdnn nonn figures`` writes them. The
    teacher's are computed first: a config that cannot give them fails before the slow part."""
    teacher = teacher_correct(config_path, split)
    served = served_accuracy(bundle, config_path, quantisation, split=split)
    return {
        "bundle": bundle.id,
        "split": split,
        "served": {k: v for k, v in served.items() if k != "correct"},
        "teacher": {
            "images": len(teacher),
            "top1": round(100 * sum(teacher) / max(len(teacher), 1), 2),
            "ci95": _ci95(sum(teacher), len(teacher)),
        },
        "served_minus_teacher": served_minus_teacher(served["correct"], teacher),
        "costs": member_costs(run),
        "correct": [int(c) for c in served["correct"]],
    }


def flip_figures(config_path: Path, run: Path, split: str = "val") -> dict[str, Any]:
    """:func:`splitdnn.nonn.method.flip_consistency` for a run's groups on the images of
    ``split``, beside the run's last attention distance (the members' against the targets):
    is the mirrored target's error small against what the members still miss?"""
    config = load_config(config_path)
    partition = run / "partition.json"
    if not partition.exists():
        raise ConfigError(f"{run}: no partition.json; is it a method: nonn run directory?")
    groups = json.loads(partition.read_text())["groups"]
    images, _ = figure_images(config, split)
    probe = load_linear(config.teacher.probe_from) if config.teacher.probe_from else None
    record = flip_consistency(
        config.teacher.name,
        images,
        groups,
        probe,
        pretrained=config.teacher.pretrained,
        weights=config.teacher.weights,
    )
    metrics = run / METRICS
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    members = json.loads(lines[-1]).get("attention_distance") if lines else None
    return {"split": split, "flip": record, "members_attention_distance": members}
