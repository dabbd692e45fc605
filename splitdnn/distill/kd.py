"""Whole-student knowledge distillation for local mode (``method: kd``) and its control
(``method: labels``).

Local mode runs a whole classifier on the device. Knowledge distillation (Hinton, Vinyals,
Dean, 2015) trains that small model on the big teacher's softened outputs
(:func:`splitdnn.distill.losses.kd_loss`); ``method: labels`` trains the very same student with
the same budget on the labels alone, so the difference between the two is what the teacher's
soft targets add.

**The student, and why.** A student trained from random init on 5,206 Caltech-101 images is
both slow (a randomly initialised EfficientNet-Lite0 needs tens of epochs of full 224 px
forward and backward passes: hours on two CPU cores) and poor (a small CNN from scratch on that
little data stays far below a pretrained backbone + linear probe, which is what local mode
already has). So a student here is an ImageNet-pretrained backbone whose first layers stay
frozen and whose last stages are fine-tuned (:data:`splitdnn.students.KD_STUDENTS`): the frozen
part runs once per image (and per mirror image) and its activations are cached, so an epoch
only runs the last stages on 7×7 maps — seconds to a minute on CPU. Its classifier starts from
the linear probe on the frozen backbone (:mod:`.probe`), so epoch 0 *is* the current local
model (backbone + probe) and the run measures what fine-tuning with soft targets adds to it.
The student has the same architecture and cost as the local model, so it can replace it with no
change on the device.

BatchNorm layers keep their ImageNet statistics (the fine-tuned layers stay in eval mode):
with batches of 64 from 101 classes, re-estimating them is noise, and the module then computes
the same function in training and in evaluation.

The teacher's logits come from a frozen teacher (``teacher``: Lite2 + Caltech probe by default)
and are computed once: either taken from the cache of a ``method: hnd`` run on the same data
(``kd.teacher_run``, whose ``classifier.pt`` is the probe) or computed here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from splitdnn.checkpoints import (
    KD_STUDENT_KIND,
    PROBE,
    StudentCheckpoint,
    load_linear,
    read_student,
    save_atomic,
)
from splitdnn.data import Sample
from splitdnn.distill.config import DistillConfig, config_samples
from splitdnn.distill.losses import kd_loss
from splitdnn.distill.probe import FrozenBackbone, extract_features, fit_probe
from splitdnn.distill.trainer import Method
from splitdnn.errors import ConfigError, UnknownNameError
from splitdnn.metrics import top1, topk_hits
from splitdnn.models import build_teacher, get_teacher
from splitdnn.students import get_kd_student
from splitdnn.teacher import freeze, frozen_backbone


class FineTunedStudent(nn.Module):
    """The trainable part of a whole student: the layers after the cut + a linear classifier.

    Input: the frozen prefix's activations (cached); output: logits. Always in eval mode (see
    the module docstring), so ``forward`` does not depend on ``self.training``.
    """

    def __init__(self, rest: nn.Module, classifier: nn.Linear) -> None:
        super().__init__()
        self.rest = rest
        self.classifier = classifier
        self.requires_grad_(True)
        self.eval()

    def train(self, mode: bool = True) -> FineTunedStudent:
        return super().train(False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.rest(h))


#: The teacher probe a whole-student run fits itself, in its run directory.
TEACHER_PROBE = "teacher_probe.pt"


def teacher_probe_candidates(config: DistillConfig, run_dir: Path) -> list[Path]:
    """Where a whole-student run's teacher probe comes from, the first that exists:
    ``teacher.probe_from``, ``kd.teacher_run``'s probe, else the one the run fits itself
    (the last, :data:`TEACHER_PROBE` in ``run_dir``)."""
    candidates = [Path(run_dir) / TEACHER_PROBE]
    if config.kd.teacher_run is not None:
        candidates.insert(0, config.kd.teacher_run / PROBE)
    if config.teacher.probe_from is not None:
        candidates.insert(0, config.teacher.probe_from)
    return candidates


def whole_student(payload: dict[str, Any]) -> nn.Module:
    """The whole student of a ``best.pt`` payload (``method: kd|labels|classes``), from the
    image (the base's preprocessed crop) to its logits: the input pool (``downsample``), the
    frozen prefix with ImageNet weights and the trained rest + classifier. In eval mode."""
    if payload.get("kind") != KD_STUDENT_KIND:
        raise ConfigError("not a whole-student checkpoint (kind != splitdnn-kd-student)")
    if payload.get("device_from"):
        raise ConfigError("a student behind a distilled device part is not a whole student")
    spec = get_kd_student(payload["student_name"])
    prefix, rest = frozen_backbone(spec.base, True, spec.cut)
    classifier = payload["student"]["classifier.weight"]
    head = FineTunedStudent(rest, nn.Linear(classifier.shape[1], classifier.shape[0]))
    head.load_state_dict(payload["student"])
    pool = nn.AvgPool2d(spec.downsample) if spec.downsample > 1 else nn.Identity()
    return nn.Sequential(pool, prefix, head).eval()


class WholeStudentDistillation(Method):
    """Runs one ``method: kd`` or ``method: labels`` config in one run directory.

    Epoch 0 of ``metrics.jsonl`` is the untrained student (backbone + probe, the current local
    model); ``best.pt`` holds the best validation top-1.
    """

    score_key = "val_top1"
    evaluate_at_start = True
    #: The config ``method`` values this class runs (a subclass names its own).
    methods: tuple[str, ...] = ("kd", "labels")

    def __init__(
        self,
        config: DistillConfig,
        run_dir: str | Path,
        progress: bool = True,
        feature_cache: str | Path | None = None,
    ) -> None:
        if config.method not in self.methods:
            raise ConfigError(f"method {config.method!r} is not run by {type(self).__name__}")
        super().__init__(config, run_dir, progress)
        self.name = config.method
        self.cache_dir = Path(feature_cache) if feature_cache else self.run_dir / "cache"
        try:
            self.student_spec = get_kd_student(config.kd.student)
        except UnknownNameError as exc:
            raise ConfigError(f"kd.student: {exc}") from None
        self.teacher_spec = get_teacher(config.teacher.name)
        #: With ``kd.device_from``: the distilled student whose device part runs first.
        self.device_checkpoint: StudentCheckpoint | None = None

    # -- teacher -------------------------------------------------------------------------------

    def _teacher_from_run(self, run: Path, n_train: int, n_val: int) -> dict[str, np.ndarray]:
        """Pooled features cached by an hnd run with the same teacher and data.

        Checked against the run's own ``config.json`` (teacher, data, seed), not its cache key:
        pooled features do not depend on the run's split point or student, which change
        between hnd experiments.
        """
        c = self.config
        try:
            theirs = json.loads((run / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"kd.teacher_run: {run} is not a distillation run: {exc}") from None
        ours = c.model_dump(mode="json")
        for section, keys in (
            ("teacher", ("name", "pretrained", "classifier", "weights")),
            ("data", ("root", "list", "val_fraction", "per_class_limit")),
        ):
            for key in keys:
                if theirs.get(section, {}).get(key) != ours[section][key]:
                    raise ConfigError(
                        f"kd.teacher_run: {run} used {section}.{key} = "
                        f"{theirs.get(section, {}).get(key)!r}, this config "
                        f"{ours[section][key]!r}"
                    )
        if theirs.get("seed") != c.seed:
            raise ConfigError(f"kd.teacher_run: {run} used another seed (another split)")
        names = {"pooled": "train_feats", "val_pooled": "val_feats"}
        if c.augmentation.hflip:
            names["flip_pooled"] = "flip_feats"
        paths = {k: run / "cache" / f"{v}.npy" for k, v in names.items()}
        absent = [str(p) for p in paths.values() if not p.exists()]
        if absent or not (run / "cache" / "meta.json").exists():
            raise ConfigError(
                f"kd.teacher_run: {run} has no finished teacher cache "
                f"(missing: {', '.join(absent) or 'cache/meta.json'})"
            )
        out = {k: np.load(p, mmap_mode="r") for k, p in paths.items()}
        if len(out["pooled"]) != n_train or len(out["val_pooled"]) != n_val:
            raise ConfigError(f"kd.teacher_run: {run}'s cache has a different number of images")
        return out

    def _teacher_classifier(self, feats: dict[str, np.ndarray]) -> nn.Module:
        c = self.config
        if c.teacher.classifier == "imagenet":
            model = build_teacher(c.teacher.name, c.teacher.pretrained, c.teacher.weights)
            return model.get_submodule(self.teacher_spec.classifier).eval()
        candidates = teacher_probe_candidates(c, self.run_dir)
        for path in candidates:
            if path.exists():
                self.log(f"teacher probe from {path}")
                return load_linear(path)
        self.log("fitting the teacher's linear probe")
        probe = nn.Linear(feats["pooled"].shape[1], len(self.classes))
        labels = torch.tensor([s.label for s in self.train_samples])
        self._fit_probe(probe, feats, labels, candidates[-1])
        return probe.eval()

    def _fit_probe(
        self, probe: nn.Linear, feats: dict[str, np.ndarray], labels: torch.Tensor, path: Path
    ) -> None:
        """Train ``probe`` on the pooled features (mirrored copies too) and save it."""
        c = self.config
        fit_probe(probe, feats["pooled"], labels, c.probe, c.seed, feats.get("flip_pooled"))
        save_atomic(probe.state_dict(), path)

    def teacher_logits(self) -> dict[str, torch.Tensor]:
        """Teacher logits for train (and mirrored train) and validation, computed once."""
        c = self.config
        train, val = self.train_samples, self.val
        if c.kd.teacher_run is not None:
            feats = self._teacher_from_run(c.kd.teacher_run, len(train), len(val))
        else:
            common = {
                "pretrained": c.teacher.pretrained,
                "weights": c.teacher.weights,
                "cache_dir": self.cache_dir,
                "progress": self.progress,
            }
            tr = extract_features(c.teacher.name, train, hflip=c.augmentation.hflip, **common)
            va = extract_features(c.teacher.name, val, **common)
            feats = {**tr, "val_pooled": va["pooled"]}
        classifier = self._teacher_classifier(feats)
        with torch.no_grad():
            return {k: classifier(torch.from_numpy(np.array(v))) for k, v in feats.items()}

    # -- what the student learns (a subclass may group the classes, see .classes) ----------------

    def output_classes(self) -> list[str]:
        """The student's outputs, in order: the data set's classes."""
        return self.classes

    def task_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Data set labels -> the student's output indices (here the same)."""
        return labels

    def task_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Teacher logits -> soft-target logits over the student's outputs (here the same)."""
        return logits

    # -- setup ---------------------------------------------------------------------------------

    def input_backbone(self) -> FrozenBackbone | None:
        """For a student that sees a downsampled input (``downsample`` > 1): the frozen base
        behind a ``downsample`` x ``downsample`` average pool, named after the student (cache
        files); None for a student on the full crop."""
        spec = self.student_spec
        if spec.downsample == 1:
            return None
        if self.config.kd.device_from is not None:
            raise ConfigError(f"kd.device_from: {spec.name} sees a downsampled input")
        prefix, rest = frozen_backbone(spec.base, True, spec.cut)
        return FrozenBackbone(spec.name, nn.Sequential(nn.AvgPool2d(spec.downsample), prefix), rest)

    def device_backbone(self) -> FrozenBackbone | None:
        """With ``kd.device_from``: the distilled student's encoder (frozen, the device part)
        in front of its decoder and the base model after the cut (split mode, served)."""
        source = self.config.kd.device_from
        if source is None:
            return None
        checkpoint = read_student(source)
        spec = self.student_spec
        if (checkpoint.teacher, checkpoint.split_module) != (spec.base, spec.cut):
            raise ConfigError(
                f"kd.device_from: {source} is a {checkpoint.teacher} student split at "
                f"{checkpoint.split_module}; kd.student {spec.name} fine-tunes {spec.base} "
                f"after {spec.cut}"
            )
        student = checkpoint.build_student()
        _, rest = frozen_backbone(spec.base, True, spec.cut)
        digest = hashlib.sha256()
        for name, tensor in sorted(checkpoint.student.items()):
            digest.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
        self.device_checkpoint = checkpoint
        return FrozenBackbone(
            f"device-{digest.hexdigest()[:16]}",
            freeze(student.encoder),
            freeze(nn.Sequential(student.decoder, rest)),
        )

    def initial_student(self) -> FineTunedStudent:
        """Backbone layers after the cut (ImageNet init; with ``kd.device_from`` the distilled
        decoder before them) + the probe as the classifier (``kd.probe_from``, else fitted)."""
        spec = self.student_spec
        _, rest = frozen_backbone(spec.base, True, spec.cut)
        if self.config.kd.device_from is not None:
            assert self.device_checkpoint is not None  # set by device_backbone() in setup
            rest = nn.Sequential(self.device_checkpoint.build_student().decoder, rest)
        # Seeded here, as in fit_linear_probe: kd and labels runs start from the same probe
        # (the local model's), whatever else drew from the generator before.
        torch.manual_seed(self.config.seed)
        probe = nn.Linear(self.feats["pooled"].shape[1], len(self.output_classes()))
        path = self.run_dir / "student_probe.pt"
        if self.config.kd.probe_from is not None:
            probe = load_linear(self.config.kd.probe_from)
            if probe.out_features != len(self.output_classes()):
                raise ConfigError(
                    f"kd.probe_from: {self.config.kd.probe_from} has {probe.out_features} "
                    f"classes, the student {len(self.output_classes())}"
                )
        elif path.exists():
            probe = load_linear(path)
        else:
            self._fit_probe(probe, self.feats, self.labels, path)
        return FineTunedStudent(rest, probe)

    def setup(self, fresh: bool) -> nn.Module:
        c, spec = self.config, self.student_spec
        train, val, classes, _ = config_samples(c)
        self.train_samples: list[Sample] = train
        self.val, self.classes = val, classes
        self.log(f"{len(train)} training / {len(val)} validation images, {len(classes)} classes")
        common = {
            "cut": spec.cut,
            "cache_dir": self.cache_dir,
            "progress": self.progress,
            "backbone": self.device_backbone() or self.input_backbone(),
        }
        self.feats = extract_features(spec.base, train, hflip=c.augmentation.hflip, **common)
        self.val_cut = extract_features(spec.base, val, **common)["cut"]
        #: The teacher's own logits (over the data set's classes); ``teacher``: the targets.
        self.teacher_raw = self.teacher_logits() if c.method != "labels" else None
        self.teacher = (
            None
            if self.teacher_raw is None
            else {k: self.task_logits(v) for k, v in self.teacher_raw.items()}
        )
        self.labels = self.task_labels(torch.tensor([s.label for s in train]))
        self.val_labels = self.task_labels(torch.tensor([s.label for s in val]))
        self.student = self.initial_student()
        self.student.to(memory_format=torch.channels_last)
        return self.student

    def num_samples(self) -> int:
        return len(self.train_samples)

    # -- one step and scoring --------------------------------------------------------------------

    def loss(self, idx: np.ndarray, flip: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        h = np.asarray(self.feats["cut"][idx], np.float32)
        if flip.any():
            h[flip] = np.asarray(self.feats["flip_cut"][idx[flip]], np.float32)
        out = self.student(torch.from_numpy(h).contiguous(memory_format=torch.channels_last))
        if self.teacher is None:
            return nn.functional.cross_entropy(out, self.labels[idx])
        target = self.teacher["pooled"][idx].clone()
        if flip.any():
            target[torch.from_numpy(flip)] = self.teacher["flip_pooled"][idx[flip]]
        kd = self.config.kd
        return kd_loss(out, target, self.labels[idx], kd.temperature, kd.alpha)

    def val_logits(self) -> torch.Tensor:
        """The student's logits on the validation images."""
        logits = []
        with torch.no_grad():
            for i in range(0, len(self.val_cut), 64):
                x = torch.from_numpy(np.array(self.val_cut[i : i + 64], np.float32))
                logits.append(self.student(x.contiguous(memory_format=torch.channels_last)))
        return torch.cat(logits) if logits else torch.zeros(0, 1)

    def evaluate(self) -> dict[str, Any]:
        out = self.val_logits()
        labels = self.val_labels
        record: dict[str, Any] = {
            "images": len(labels),
            "val_top1": top1(out, labels),
            "val_top5": 100.0 * topk_hits(out, labels, 5) / max(len(labels), 1),
        }
        if self.teacher is not None:
            teacher = self.teacher["val_pooled"]
            record["teacher_top1"] = top1(teacher, labels)
            record["agreement"] = 100.0 * float((teacher.argmax(1) == out.argmax(1)).float().mean())
        return record

    def describe(self, record: dict[str, Any]) -> str:
        return f"top-1 {record['val_top1']:.2f}"

    def best_payload(self, record: dict[str, Any]) -> dict[str, Any]:
        c_from = self.config.kd.device_from
        return {
            "kind": KD_STUDENT_KIND,
            "method": self.config.method,
            "student_name": self.student_spec.name,
            "base": self.student_spec.base,
            "cut": self.student_spec.cut,
            "device_from": None if c_from is None else str(c_from),
            "downsample": self.student_spec.downsample,
            "student": self.student.state_dict(),
            "classes": self.output_classes(),
            "metrics": record,
            "config": self.config.model_dump(mode="json"),
        }
