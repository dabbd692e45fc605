"""Network of Neural Networks (``method: nonn``): K disjoint students, one per part of the
teacher's last convolutional layer, joined by one small final layer.

NoNN (Bhardwaj, Suda, Marculescu, "Memory- and Communication-Aware Model Compression for
Distributed Deep Learning Inference on IoT", 2019):

1. the teacher's last conv filters are partitioned into K groups by community detection on a
   filter co-activation graph built from real training images
   (:func:`splitdnn.nonn.partition.partition_filters`: activation-hubs weights, Louvain, balanced);
2. student k learns the attention map of group k — ``sum_c a_c^2`` over the group's
   channels, L2-normalised (Zagoruyko & Komodakis 2017) — on its own output maps, while
3. all students together learn the teacher's soft output through one final linear layer
   over their concatenated pooled features (Hinton KD, :func:`splitdnn.distill.losses.kd_loss`).

At inference each student runs alone on the image (one device each) and sends only its pooled
features; the final layer joins them. No student talks to another.

**Students, and why.** From scratch on 5k Caltech-101 images on a shared CPU, K students would
not come near the teacher in an hour. A member is a *slice* of an ImageNet-pretrained
EfficientNet-Lite0 (:func:`splitdnn.nonn.members.nonn_member`). Narrow from the stem
(``efficientnet_lite0_narrow``): every layer keeps a ``width`` share of its channels, the
width the largest that fits ``nonn.budget`` (MACs and/or fp16 weight bytes per member,
:func:`splitdnn.nonn.members.width_for_budget`); the members then train on the image itself
(decoded crops cached once, uint8). With a frozen prefix (``efficientnet_lite0_slice``): the
network through ``cut`` is frozen and shared (its activations cached once per image), the
blocks after it keep a ``1/K`` share of their expanded channels. Either way the head conv has
the group's channel count. The control ``nonn.students: 1`` (full width) is one student whose
trainable part has the members' total size, trained with the same losses, data and budget.

BatchNorm layers keep their ImageNet statistics (members stay in eval mode), as in
:mod:`splitdnn.distill.kd`.
The teacher (Lite2 + its Caltech-101 probe) runs once per image: its last maps are cached
(fp16) and give the graph, the attention targets and, through the probe, the soft targets.

**Flips** (``augmentation.hflip: true``, members narrow from the stem only): each image is
also seen mirrored, against the teacher's own pass on the mirrored crop (cached once, like the
unmirrored one): twice the views where the members are short of images rather than of
capacity. Not the cheaper shortcut of mirroring the cached maps: the teacher's last maps are
far from flip-equivariant (:func:`flip_consistency`: on the 578 held-out Caltech-101 images
the mirrored attention is 0.17-0.20 from the true one, as far as trained members are from
their targets).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from splitdnn.checkpoints import load_linear, save_atomic
from splitdnn.data import Sample, load_crops
from splitdnn.distill.config import DistillConfig, config_samples, unlabelled_samples
from splitdnn.distill.losses import kd_loss
from splitdnn.distill.probe import extract_features, fit_probe
from splitdnn.distill.trainer import Method
from splitdnn.errors import ConfigError, UnknownNameError
from splitdnn.metrics import top1, topk_hits
from splitdnn.models import build_teacher, get_teacher
from splitdnn.nonn.members import (
    NoNNMember,
    NoNNStudentSpec,
    calibrate_batchnorm,
    get_nonn_student,
    nonn_member,
    width_for_budget,
)
from splitdnn.nonn.partition import partition_filters
from splitdnn.teacher import normalise_batch

NONN_KIND = "splitdnn-nonn"
#: Training images whose statistics re-estimate a narrow member's BatchNorms before training.
BN_CALIBRATION_IMAGES = 512
_CACHE_VERSION = "1"


class NoNNModel(nn.Module):
    """K members and the join layer. Input: the shared frozen prefix's activations; output:
    logits and each member's feature maps. Always in eval mode (BatchNorm statistics kept)."""

    def __init__(self, members: Sequence[NoNNMember], join: nn.Linear) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.join = join
        self.requires_grad_(True)
        self.eval()

    def train(self, mode: bool = True) -> NoNNModel:
        return super().train(False)

    def features(self, h: torch.Tensor) -> list[torch.Tensor]:
        return [m(h) for m in self.members]

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        maps = self.features(h)
        return self.join(torch.cat([m.mean((2, 3)) for m in maps], 1)), maps


def attention(maps: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Zagoruyko's attention map of (N, C, H, W) maps: mean of squares over channels,
    resized to ``size`` by area averaging, flattened and L2-normalised: (N, H*W)."""
    a = maps.float().pow(2).mean(1, keepdim=True)
    if size is not None and tuple(a.shape[-2:]) != tuple(size):
        a = F.adaptive_avg_pool2d(a, size)
    return F.normalize(a.flatten(1), dim=1)


def mirror_attention(attentions: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Flattened attention maps (..., h*w) at ``size`` mirrored left to right."""
    return attentions.unflatten(-1, tuple(size)).flip(-1).flatten(-2)


def _pool_module(model: nn.Module) -> nn.Module:
    pools = [m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    if not pools:
        raise ConfigError("nonn: the teacher has no global average pooling to read maps from")
    return pools[-1]


@contextmanager
def _teacher_pass(
    name: str, pretrained: bool, weights: Path | None
) -> Iterator[Callable[[np.ndarray, bool], torch.Tensor]]:
    """``maps_of(crops, mirrored)``: the teacher's last feature maps (float32 N, C, H, W, the
    input of its global pooling) for uint8 NHWC crops, mirrored left to right first when
    asked. The hook that reads them is removed on exit."""
    spec = get_teacher(name)
    model = build_teacher(name, pretrained, weights).eval()
    captured: list[torch.Tensor] = []
    hook = _pool_module(model).register_forward_hook(lambda _m, i, _o: captured.append(i[0]))

    def maps_of(crops: np.ndarray, mirrored: bool) -> torch.Tensor:
        if mirrored:
            crops = np.ascontiguousarray(crops[:, :, ::-1])
        captured.clear()
        with torch.no_grad():
            model(normalise_batch(crops, spec.preprocessing))
        return captured[-1].float()

    try:
        yield maps_of
    finally:
        hook.remove()


def teacher_maps(
    name: str,
    samples: Sequence[Sample],
    *,
    pretrained: bool = True,
    weights: Path | None = None,
    cache_dir: Path,
    progress: bool = False,
    batch_size: int = 32,
    hflip: bool = False,
) -> dict[str, np.ndarray]:
    """The teacher's last feature maps (N, C, H, W) float16 (the input of its global pooling)
    and pooled features (N, C) float32, cached under a key of teacher and sample list; with
    ``hflip`` also ``flip_maps`` / ``flip_pooled``, the teacher's own pass on each mirrored
    crop (each pass saved when done, so a killed run keeps the finished one)."""
    spec = get_teacher(name)
    parts = [_CACHE_VERSION, name, str(pretrained), str(weights or "")]
    parts += [f"{s.path}:{s.label}" for s in samples]
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    arrays: dict[str, np.ndarray] = {}
    missing: list[tuple[str, dict[str, Path]]] = []
    for prefix in ["", "flip_"] if hflip else [""]:
        tag = prefix.replace("_", "-")
        paths = {k: cache_dir / f"{name}-{key}-{tag}{k}.npy" for k in ("maps", "pooled")}
        if all(p.exists() for p in paths.values()):
            arrays |= {prefix + k: np.load(p, mmap_mode="r") for k, p in paths.items()}
        else:
            missing.append((prefix, paths))
    if not missing:
        return arrays
    crops = load_crops(samples, spec.preprocessing, progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _teacher_pass(name, pretrained, weights) as maps_of:
        for prefix, paths in missing:
            out: dict[str, list[np.ndarray]] = {"maps": [], "pooled": []}
            batches: Any = range(0, len(crops), batch_size)
            if progress:
                from tqdm import tqdm

                batches = tqdm(batches, desc=f"{name} {prefix}maps", unit="batch")
            for i in batches:
                maps = maps_of(crops[i : i + batch_size], bool(prefix))
                out["maps"].append(maps.half().numpy())
                out["pooled"].append(maps.mean((2, 3)).numpy())
            for k, chunks in out.items():
                tmp = paths[k].with_suffix(".tmp.npy")
                np.save(tmp, np.ascontiguousarray(np.concatenate(chunks)))
                tmp.replace(paths[k])
                arrays[prefix + k] = np.load(paths[k], mmap_mode="r")
    return arrays


def flip_consistency(
    name: str,
    samples: Sequence[Sample],
    groups: Sequence[Sequence[int]],
    probe: nn.Module | None = None,
    *,
    pretrained: bool = True,
    weights: Path | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """How far the shortcut ``augmentation.hflip`` does not take (mirror the cached pass) is
    from the teacher's second pass on each mirrored image, on ``samples``: per group, the mean
    attention distance between the two (the scale of the members' ``attention_distance``: the
    squared L2 distance of unit vectors, 0 same, 2 opposite) beside the distance had the
    target not been mirrored, and how often the teacher's answer through ``probe`` is the
    same for an image and its mirror. Two passes, nothing cached."""
    crops = load_crops(samples, get_teacher(name).preprocessing)
    distances: list[torch.Tensor] = []
    unmirrored: list[torch.Tensor] = []
    same = 0
    with _teacher_pass(name, pretrained, weights) as maps_of, torch.no_grad():
        for i in range(0, len(crops), batch_size):
            batch = crops[i : i + batch_size]
            maps, maps_of_mirror = maps_of(batch, False), maps_of(batch, True)
            size = tuple(maps.shape[-2:])
            cached = torch.stack([attention(maps[:, g]) for g in groups], 1)
            shortcut = mirror_attention(cached, size)
            second = torch.stack([attention(maps_of_mirror[:, g]) for g in groups], 1)
            distances.append((shortcut - second).pow(2).sum(-1))
            unmirrored.append((cached - second).pow(2).sum(-1))
            if probe is not None:
                answers = probe(maps.mean((2, 3))).argmax(1)
                same += int((answers == probe(maps_of_mirror.mean((2, 3))).argmax(1)).sum())

    def per_group(rows: list[torch.Tensor]) -> list[float]:
        means = torch.cat(rows).mean(0) if rows else torch.zeros(len(groups))
        return [round(float(v), 5) for v in means]

    return {
        "images": len(samples),
        "attention_distance": per_group(distances),
        "attention_distance_unmirrored": per_group(unmirrored),
        "same_answer": None if probe is None else round(100.0 * same / max(len(samples), 1), 2),
    }


def member_inputs(
    spec: NoNNStudentSpec, samples: Sequence[Sample], cache_dir: Path, progress: bool = False
) -> np.ndarray:
    """What the members see for ``samples``, cached under ``cache_dir``: the frozen shared
    prefix's activations (float16) for a family with a ``cut``, else the decoded crops
    themselves (uint8 NHWC, normalised per batch by :func:`member_batch`)."""
    if spec.cut is not None:
        return extract_features(
            spec.base, samples, cut=spec.cut, cache_dir=cache_dir, progress=progress
        )["cut"]
    preprocessing = get_teacher(spec.base).preprocessing
    parts = [_CACHE_VERSION, spec.base, json.dumps(preprocessing.to_dict(), sort_keys=True)]
    parts += [f"{s.path}:{s.label}" for s in samples]
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    path = cache_dir / f"{spec.base}-{key}-crops.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    crops = load_crops(samples, preprocessing, progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, crops)
    tmp.replace(path)
    return np.load(path, mmap_mode="r")


def member_batch(spec: NoNNStudentSpec, inputs: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    """Rows ``idx`` of :func:`member_inputs` as the members' float32 input."""
    rows = np.asarray(inputs[idx])
    if rows.dtype == np.uint8:
        return normalise_batch(rows, get_teacher(spec.base).preprocessing)
    return torch.from_numpy(rows.astype(np.float32))


class NoNNDistillation(Method):
    """Runs one ``method: nonn`` config in one run directory. ``partition.json`` holds the
    filter groups; epoch 0 of ``metrics.jsonl`` is the untrained slices with a fitted join."""

    name = "nonn"
    score_key = "val_top1"
    evaluate_at_start = True

    def __init__(self, config: DistillConfig, run_dir: str | Path, progress: bool = True) -> None:
        if config.method != "nonn":
            raise ConfigError(f"method {config.method!r} is not nonn")
        n = config.nonn
        try:
            self.spec = get_nonn_student(n.student)
        except UnknownNameError as exc:
            raise ConfigError(f"nonn.student: {exc.args[0]}") from None
        if config.augmentation.hflip and self.spec.cut is not None:
            raise ConfigError(
                f"nonn: augmentation.hflip needs members that see the image; "
                f"{n.student!r} sees the cached activations of a frozen prefix "
                f"(through {self.spec.cut}): set hflip to false"
            )
        super().__init__(config, run_dir, progress)
        self.cache_dir = n.cache_dir if n.cache_dir is not None else self.run_dir / "cache"

    # -- teacher -------------------------------------------------------------------------------

    def _teacher_probe(self, pooled: np.ndarray) -> nn.Module:
        c = self.config
        if c.teacher.classifier == "imagenet":
            model = build_teacher(c.teacher.name, c.teacher.pretrained, c.teacher.weights)
            return model.get_submodule(get_teacher(c.teacher.name).classifier).eval()
        if c.teacher.probe_from is not None:
            return load_linear(c.teacher.probe_from).eval()
        path = self.cache_dir / "teacher_probe.pt"
        probe = nn.Linear(pooled.shape[1], len(self.classes))
        if path.exists():
            probe.load_state_dict(torch.load(path, weights_only=True))
            return probe.eval()
        self.log("fitting the teacher's linear probe")
        torch.manual_seed(c.seed)
        fit_probe(probe, pooled[: self.labelled], self.labels[: self.labelled], c.probe, c.seed)
        save_atomic(probe.state_dict(), path)
        return probe.eval()

    def _partition(self, pooled: np.ndarray) -> list[list[int]]:
        """The groups, computed once (``partition.json``) from ``graph_images`` training
        images drawn with the seed."""
        path = self.run_dir / "partition.json"
        n = self.config.nonn
        if path.exists():
            saved = json.loads(path.read_text())
            if saved["students"] == n.students and saved["filters"] == pooled.shape[1]:
                return saved["groups"]
        rng = np.random.default_rng(self.config.seed)
        count = min(n.graph_images, len(pooled))
        chosen = np.sort(rng.choice(len(pooled), count, replace=False))
        acts = np.asarray(pooled[chosen], np.float32)
        self.log(f"partitioning {acts.shape[1]} filters into {n.students} on {count} images")
        groups = partition_filters(
            acts,
            n.students,
            seed=self.config.seed,
            neighbours=n.neighbours,
            resolution=n.resolution,
        )
        path.write_text(
            json.dumps(
                {
                    "students": n.students,
                    "filters": int(acts.shape[1]),
                    "graph_images": count,
                    "seed": self.config.seed,
                    "sizes": [len(g) for g in groups],
                    "groups": groups,
                }
            )
        )
        return groups

    # -- setup ---------------------------------------------------------------------------------

    def setup(self, fresh: bool) -> nn.Module:
        c, n = self.config, self.config.nonn
        labelled, val, classes, _ = config_samples(c)
        # label-free photos (data.unlabelled, label -1) come after the labelled images: they
        # feed the attention and soft-target terms; the label term, the teacher's probe and
        # the join's starting fit use the labelled ones only
        train = labelled + unlabelled_samples(c)
        self.labelled = len(labelled)
        self.train_samples, self.val, self.classes = train, val, classes
        self.labels = torch.tensor([s.label for s in train])
        self.val_labels = torch.tensor([s.label for s in val])
        self.log(
            f"{len(labelled)} training + {len(train) - len(labelled)} unlabelled / {len(val)} "
            f"validation images, {len(classes)} classes"
        )
        common = {"pretrained": c.teacher.pretrained, "weights": c.teacher.weights}
        t_train = teacher_maps(
            c.teacher.name,
            train,
            cache_dir=self.cache_dir,
            progress=self.progress,
            hflip=c.augmentation.hflip,
            **common,
        )
        t_val = teacher_maps(
            c.teacher.name, val, cache_dir=self.cache_dir, progress=self.progress, **common
        )
        self.groups = self._partition(t_train["pooled"])
        probe = self._teacher_probe(t_train["pooled"])
        with torch.no_grad():
            self.teacher_logits = probe(torch.from_numpy(np.array(t_train["pooled"])))
            if "flip_pooled" in t_train:
                flip_pooled = torch.from_numpy(np.array(t_train["flip_pooled"]))
                self.flip_teacher_logits = probe(flip_pooled)
            self.val_teacher = probe(torch.from_numpy(np.array(t_val["pooled"])))
        spec = self.spec
        self.cut = member_inputs(spec, train, self.cache_dir, self.progress)
        self.val_cut = member_inputs(spec, val, self.cache_dir, self.progress)
        self.width = self._width()
        members = [
            nonn_member(
                spec, k, n.students, len(g), self.width, channel_multiple=n.channel_multiple
            )
            for k, g in enumerate(self.groups)
        ]
        with torch.no_grad():
            size = tuple(members[0](self._h(self.cut, np.arange(1))).shape[-2:])
        self.attention = self._teacher_attention(t_train["maps"], size)
        if "flip_maps" in t_train:
            self.flip_attention = self._teacher_attention(t_train["flip_maps"], size)
        self.val_attention = self._teacher_attention(t_val["maps"], size)
        join = nn.Linear(sum(len(g) for g in self.groups), len(classes))
        model = NoNNModel(members, join)
        if fresh:
            if spec.cut is None:
                self._calibrate(model)
            self._fit_join(model)
        self.student = model
        return model

    def parameter_groups(self, student: nn.Module) -> list[dict[str, Any]]:
        """The members at ``train.optimizer.lr``; the join at ``nonn.join_lr`` when set."""
        if self.config.nonn.join_lr is None or not isinstance(student, NoNNModel):
            return super().parameter_groups(student)
        join = list(student.join.parameters())
        members = [p for p in student.members.parameters() if p.requires_grad]
        return [{"params": members}, {"params": join, "lr": self.config.nonn.join_lr}]

    def _width(self) -> float | None:
        """``nonn.width``, or the widest that fits ``nonn.budget`` for the largest group."""
        n = self.config.nonn
        if n.budget is None:
            return n.width
        width = width_for_budget(
            self.spec,
            n.students,
            max(len(g) for g in self.groups),
            macs=n.budget.macs,
            fp16_bytes=n.budget.fp16_bytes,
            channel_multiple=n.channel_multiple,
        )
        self.log(f"nonn.budget {n.budget.model_dump(exclude_none=True)}: width {width:.4f}")
        return width

    def _teacher_attention(self, maps: np.ndarray, size: tuple[int, ...]) -> torch.Tensor:
        """(N, K, H*W) attention of each group of the teacher's maps at the members' size."""
        out = []
        for i in range(0, len(maps), 128):
            chunk = torch.from_numpy(np.asarray(maps[i : i + 128], np.float32))
            out.append(torch.stack([attention(chunk[:, g], size) for g in self.groups], 1))
        return torch.cat(out)

    def _h(self, cut: np.ndarray, idx: np.ndarray) -> torch.Tensor:
        return member_batch(self.spec, cut, idx)

    def _pooled(self, model: NoNNModel, cut: np.ndarray) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(0, len(cut), 64):
                h = self._h(cut, np.arange(i, min(i + 64, len(cut))))
                out.append(torch.cat([m.mean((2, 3)) for m in model.features(h)], 1))
        return torch.cat(out)

    def _calibrate(self, model: NoNNModel) -> None:
        """The members' BatchNorm statistics re-estimated on ``BN_CALIBRATION_IMAGES``
        training images drawn with the seed (:func:`splitdnn.nonn.members.calibrate_batchnorm`);
        they then stay fixed, as the members train in eval mode."""
        rng = np.random.default_rng(self.config.seed)
        count = min(BN_CALIBRATION_IMAGES, len(self.cut))
        idx = np.sort(rng.choice(len(self.cut), count, replace=False))
        self.log(f"re-estimating the members' BatchNorm statistics on {count} training images")
        calibrate_batchnorm(
            model, (self._h(self.cut, idx[i : i + 32]) for i in range(0, count, 32))
        )

    def _fit_join(self, model: NoNNModel) -> None:
        """Start the join layer as a linear probe on the untrained members' features, so
        epoch 0 is a meaningful baseline."""
        self.log("fitting the join layer on the untrained members' features")
        torch.manual_seed(self.config.seed)
        fit_probe(
            model.join,
            self._pooled(model, self.cut[: self.labelled]),
            self.labels[: self.labelled],
            self.config.probe,
            self.config.seed,
        )

    def num_samples(self) -> int:
        return len(self.train_samples)

    # -- one step and scoring --------------------------------------------------------------------

    def loss(self, idx: np.ndarray, flip: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        n = self.config.nonn
        x, target, soft = self._h(self.cut, idx), self.attention[idx], self.teacher_logits[idx]
        if flip.any():  # mirrored rows: the mirrored crop and the teacher's pass on it
            rows = torch.from_numpy(flip)
            x = torch.where(rows[:, None, None, None], x.flip(-1), x)
            target = torch.where(rows[:, None, None], self.flip_attention[idx], target)
            soft = torch.where(rows[:, None], self.flip_teacher_logits[idx], soft)
        logits, maps = self.student(x)
        labels = self.labels[idx]
        known = labels >= 0
        if bool(known.all()):
            loss = kd_loss(logits, soft, labels, n.temperature, n.alpha)
        else:  # label-free rows: soft targets only; the label term on the labelled rows
            loss = n.alpha * kd_loss(logits, soft, None, n.temperature)
            if bool(known.any()):
                loss = loss + (1 - n.alpha) * F.cross_entropy(logits[known], labels[known])
        if n.attention_weight > 0:
            at = sum((attention(m) - target[:, k]).pow(2).sum(1).mean() for k, m in enumerate(maps))
            loss = loss + n.attention_weight * at / len(maps)
        return loss

    def evaluate(self) -> dict[str, Any]:
        logits, at = [], []
        with torch.no_grad():
            for i in range(0, len(self.val_cut), 64):
                idx = np.arange(i, min(i + 64, len(self.val_cut)))
                out, maps = self.student(self._h(self.val_cut, idx))
                logits.append(out)
                at.append(
                    torch.stack(
                        [
                            (attention(m) - self.val_attention[idx, k]).pow(2).sum(1)
                            for k, m in enumerate(maps)
                        ],
                        1,
                    )
                )
        out = torch.cat(logits) if logits else torch.zeros(0, 1)
        labels, teacher = self.val_labels, self.val_teacher
        return {
            "images": len(labels),
            "val_top1": top1(out, labels),
            "val_top5": 100.0 * topk_hits(out, labels, 5) / max(len(labels), 1),
            "teacher_top1": top1(teacher, labels),
            "agreement": 100.0 * float((teacher.argmax(1) == out.argmax(1)).float().mean()),
            "attention_distance": [round(float(v), 5) for v in torch.cat(at).mean(0)],
        }

    def describe(self, record: dict[str, Any]) -> str:
        return f"top-1 {record['val_top1']:.2f} (teacher {record['teacher_top1']:.2f})"

    def best_payload(self, record: dict[str, Any]) -> dict[str, Any]:
        n = self.config.nonn
        return {
            "kind": NONN_KIND,
            "student_name": self.spec.name,
            "base": self.spec.base,
            "cut": self.spec.cut,
            "students": n.students,
            "width": self.width,
            "channel_multiple": n.channel_multiple,
            "groups": self.groups,
            "student": self.student.state_dict(),
            "classes": self.classes,
            "metrics": record,
            "config": self.config.model_dump(mode="json"),
        }
