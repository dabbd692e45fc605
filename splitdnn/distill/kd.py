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
frozen and whose last stages are fine-tuned (:data:`KD_STUDENTS`): the frozen part runs once per
image (and per mirror image) and its activations are cached, so an epoch only runs the last
stages on 7×7 maps — seconds to a minute on CPU. Its classifier starts from the linear probe on
the frozen backbone (:mod:`.probe`), so epoch 0 *is* the current local model (backbone + probe)
and the run measures what fine-tuning with soft targets adds to it. The student has the same
architecture and cost as the local model, so it can replace it with no change on the device.

BatchNorm layers keep their ImageNet statistics (the fine-tuned layers stay in eval mode):
with batches of 64 from 101 classes, re-estimating them is noise, and the module then computes
the same function in training and in evaluation.

The teacher's logits come from a frozen teacher (``teacher``: Lite2 + Caltech probe by default)
and are computed once: either taken from the cache of a ``method: hnd`` run on the same data
(``kd.teacher_run``, whose ``classifier.pt`` is the probe) or computed here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from splitdnn.data import Sample
from splitdnn.distill.config import DistillConfig, config_samples
from splitdnn.distill.losses import kd_loss
from splitdnn.distill.probe import _backbone, extract_features, top1, train_linear
from splitdnn.distill.runfiles import append_metrics, epoch_record, save_atomic
from splitdnn.errors import ConfigError, UnknownNameError
from splitdnn.evaluate import topk_hits
from splitdnn.models import get_teacher

# -- students ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KDStudentSpec:
    """A whole student: ``base``'s architecture and ImageNet weights, frozen through ``cut``;
    everything after ``cut`` and a new linear classifier are trained."""

    name: str
    base: str
    cut: str
    notes: str = ""


KD_STUDENTS: dict[str, KDStudentSpec] = {
    spec.name: spec
    for spec in (
        KDStudentSpec(
            "efficientnet_lite0_last1",
            "efficientnet_lite0",
            "_blocks.14",
            "fine-tunes the 320-channel block and the 1280-channel head conv",
        ),
        KDStudentSpec(
            "efficientnet_lite0_last2",
            "efficientnet_lite0",
            "_blocks.13",
            "fine-tunes the last 192-channel block onwards (default)",
        ),
        KDStudentSpec(
            "efficientnet_lite0_last3",
            "efficientnet_lite0",
            "_blocks.12",
            "fine-tunes the last two 192-channel blocks onwards",
        ),
    )
}


def get_kd_student(name: str) -> KDStudentSpec:
    """The registered whole student ``name``; the error lists the registered ones."""
    try:
        return KD_STUDENTS[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown kd student {name!r}; registered: {', '.join(sorted(KD_STUDENTS))}"
        ) from None


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


# -- the run -----------------------------------------------------------------------------------


class KDTrainer:
    """Runs one ``method: kd`` or ``method: labels`` config in one run directory.

    Writes ``metrics.jsonl`` (one line per epoch; epoch 0 is the untrained student = backbone
    + probe), ``best.pt`` (best validation top-1) and ``last.pt`` (for ``resume``).
    """

    def __init__(
        self,
        config: DistillConfig,
        run_dir: str | Path,
        progress: bool = True,
        feature_cache: str | Path | None = None,
    ) -> None:
        if config.method not in ("kd", "labels"):
            raise ConfigError(f"method {config.method!r} is run by splitdnn.distill.trainer")
        self.config = config
        self.run_dir = Path(run_dir)
        self.cache_dir = Path(feature_cache) if feature_cache else self.run_dir / "cache"
        self.progress = progress
        try:
            self.student_spec = get_kd_student(config.kd.student)
        except UnknownNameError as exc:
            raise ConfigError(f"kd.student: {exc}") from None
        self.teacher_spec = get_teacher(config.teacher.name)

    def _log(self, message: str) -> None:
        if self.progress:
            print(message, flush=True)

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
            ("teacher", ("name", "pretrained", "classifier")),
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

    def _teacher_classifier(
        self, feats: dict[str, np.ndarray], train: list[Sample], classes: list[str]
    ) -> nn.Linear:
        c = self.config
        if c.teacher.classifier == "imagenet":
            model = self.teacher_spec.build(c.teacher.pretrained)
            return model.get_submodule(self.teacher_spec.classifier).eval()
        width = feats["pooled"].shape[1]
        probe = nn.Linear(width, len(classes))
        candidates = [self.run_dir / "teacher_probe.pt"]
        if c.kd.teacher_run is not None:
            candidates.insert(0, c.kd.teacher_run / "classifier.pt")
        for path in candidates:
            if path.exists():
                probe.load_state_dict(torch.load(path, weights_only=True))
                self._log(f"teacher probe from {path}")
                return probe.eval()
        self._log("fitting the teacher's linear probe")
        self._fit_probe(probe, feats, train, candidates[-1])
        return probe.eval()

    def _fit_probe(self, probe: nn.Linear, feats, train: list[Sample], path: Path) -> None:
        """Train ``probe`` on the pooled features (mirrored copies too) and save it."""
        x, y = self._probe_data(feats, train)
        cfg = self.config.probe
        train_linear(
            probe,
            x,
            y,
            epochs=cfg.epochs,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            seed=self.config.seed,
        )
        save_atomic(probe.state_dict(), path)

    def _probe_data(self, feats: dict[str, np.ndarray], train: list[Sample]):
        parts = [torch.from_numpy(np.array(feats["pooled"]))]
        if "flip_pooled" in feats:
            parts.append(torch.from_numpy(np.array(feats["flip_pooled"])))
        labels = torch.tensor([s.label for s in train]).repeat(len(parts))
        return torch.cat(parts), labels

    def _teacher_logits(self, train, val, classes) -> dict[str, torch.Tensor]:
        """Teacher logits for train (and mirrored train) and validation, computed once."""
        c = self.config
        if c.kd.teacher_run is not None:
            feats = self._teacher_from_run(c.kd.teacher_run, len(train), len(val))
        else:
            tr = extract_features(
                c.teacher.name,
                train,
                hflip=c.augmentation.hflip,
                pretrained=c.teacher.pretrained,
                cache_dir=self.cache_dir,
                progress=self.progress,
            )
            va = extract_features(
                c.teacher.name,
                val,
                pretrained=c.teacher.pretrained,
                cache_dir=self.cache_dir,
                progress=self.progress,
            )
            feats = {**tr, "val_pooled": va["pooled"]}
        classifier = self._teacher_classifier(feats, train, classes)
        with torch.no_grad():
            return {k: classifier(torch.from_numpy(np.array(v))) for k, v in feats.items()}

    # -- training ------------------------------------------------------------------------------

    def _student(self, feats, train: list[Sample], classes: list[str]) -> FineTunedStudent:
        """Backbone layers after the cut (ImageNet init) + the probe as the classifier."""
        c, spec = self.config, self.student_spec
        _, rest = _backbone(spec.base, True, spec.cut)
        # Seeded here, as in fit_linear_probe: kd and labels runs start from the same probe
        # (the local model's), whatever else drew from the generator before.
        torch.manual_seed(c.seed)
        probe = nn.Linear(feats["pooled"].shape[1], len(classes))
        path = self.run_dir / "student_probe.pt"
        if path.exists():
            probe.load_state_dict(torch.load(path, weights_only=True))
        else:
            self._fit_probe(probe, feats, train, path)
        return FineTunedStudent(rest, probe)

    def _evaluate(self, student: FineTunedStudent, h_val, labels, teacher_val) -> dict:
        logits = []
        with torch.no_grad():
            for i in range(0, len(h_val), 64):
                x = torch.from_numpy(np.array(h_val[i : i + 64], np.float32))
                logits.append(student(x.contiguous(memory_format=torch.channels_last)))
        out = torch.cat(logits) if logits else torch.zeros(0, 1)
        record = {
            "images": len(labels),
            "val_top1": top1(out, labels),
            "val_top5": 100.0 * topk_hits(out, labels, 5) / max(len(labels), 1),
        }
        if teacher_val is not None:
            record["teacher_top1"] = top1(teacher_val, labels)
            record["agreement"] = 100.0 * float(
                (teacher_val.argmax(1) == out.argmax(1)).float().mean()
            )
        return record

    def run(self, resume: bool = False) -> dict:
        """Train; return a summary (initial, best and final validation top-1)."""
        c, tcfg, spec = self.config, self.config.train, self.student_spec
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(c.model_dump_json(indent=2))
        if tcfg.threads:
            torch.set_num_threads(tcfg.threads)
        torch.manual_seed(c.seed)

        train, val, classes, _ = config_samples(c)
        self._log(f"{len(train)} training / {len(val)} validation images, {len(classes)} classes")
        hflip = c.augmentation.hflip
        feats = extract_features(
            spec.base,
            train,
            cut=spec.cut,
            hflip=hflip,
            cache_dir=self.cache_dir,
            progress=self.progress,
        )
        val_feats = extract_features(
            spec.base, val, cut=spec.cut, cache_dir=self.cache_dir, progress=self.progress
        )
        teacher = self._teacher_logits(train, val, classes) if c.method == "kd" else None
        student = self._student(feats, train, classes)
        student.to(memory_format=torch.channels_last)

        labels = torch.tensor([s.label for s in train])
        val_labels = torch.tensor([s.label for s in val])
        teacher_val = teacher["val_pooled"] if teacher is not None else None
        optimiser = torch.optim.Adam(
            student.parameters(), lr=tcfg.optimizer.lr, weight_decay=tcfg.optimizer.weight_decay
        )
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, tcfg.milestones, tcfg.gamma)
        metrics_path = self.run_dir / "metrics.jsonl"
        last_path, best_path = self.run_dir / "last.pt", self.run_dir / "best.pt"
        state = {"epoch": 0, "step": 0, "best_top1": -1.0, "best_epoch": -1, "initial_top1": None}
        if resume and last_path.exists():
            ckpt = torch.load(last_path, weights_only=False)
            student.load_state_dict(ckpt["student"])
            optimiser.load_state_dict(ckpt["optimizer"])
            schedule.load_state_dict(ckpt["schedule"])
            state = ckpt["state"]
            self._log(f"resuming at epoch {state['epoch']} step {state['step']}")
        else:
            metrics_path.unlink(missing_ok=True)
        if state["initial_top1"] is None:
            initial = self._evaluate(student, val_feats["cut"], val_labels, teacher_val)
            state["initial_top1"] = initial["val_top1"]
            with metrics_path.open("a") as handle:
                handle.write(json.dumps({"epoch": 0, **initial}) + "\n")
            self._log(f"epoch 0 (backbone + probe): top-1 {initial['val_top1']:.2f}")

        def checkpoint() -> None:
            save_atomic(
                {
                    "student": student.state_dict(),
                    "optimizer": optimiser.state_dict(),
                    "schedule": schedule.state_dict(),
                    "state": dict(state),
                },
                last_path,
            )

        n = len(train)
        steps_per_epoch = -(-n // tcfg.batch_size)
        if tcfg.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, tcfg.max_steps_per_epoch)
        record: dict = {}
        while state["epoch"] < tcfg.epochs:
            epoch = state["epoch"]
            rng = np.random.default_rng([c.seed, epoch])
            order = rng.permutation(n)
            flips = rng.random(n) < 0.5 if hflip else np.zeros(n, bool)
            started, seen, running = time.perf_counter(), 0, 0.0
            for step in range(state["step"], steps_per_epoch):
                idx = np.sort(order[step * tcfg.batch_size : (step + 1) * tcfg.batch_size])
                flip = flips[idx]
                h = np.asarray(feats["cut"][idx], np.float32)
                if flip.any():
                    h[flip] = np.asarray(feats["flip_cut"][idx[flip]], np.float32)
                x = torch.from_numpy(h).contiguous(memory_format=torch.channels_last)
                out = student(x)
                if teacher is not None:
                    t = teacher["pooled"][idx].clone()
                    if flip.any():
                        t[torch.from_numpy(flip)] = teacher["flip_pooled"][idx[flip]]
                    loss = kd_loss(out, t, labels[idx], c.kd.temperature, c.kd.alpha)
                else:
                    loss = nn.functional.cross_entropy(out, labels[idx])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                seen += len(idx)
                running = 0.9 * running + 0.1 * loss.item() if running else loss.item()
                state["step"] = step + 1
                if state["step"] % tcfg.checkpoint_every == 0:
                    checkpoint()
            schedule.step()
            seconds = time.perf_counter() - started
            metrics = self._evaluate(student, val_feats["cut"], val_labels, teacher_val)
            record = epoch_record(epoch + 1, running, optimiser, seen, seconds, metrics)
            append_metrics(metrics_path, record)
            self._log(
                f"epoch {epoch + 1}/{tcfg.epochs}: loss {running:.4f}, "
                f"top-1 {record['val_top1']:.2f} ({seconds:.0f} s)"
            )
            if record["val_top1"] > state["best_top1"]:
                state["best_top1"], state["best_epoch"] = record["val_top1"], epoch + 1
                save_atomic(self._best_payload(student, classes, record), best_path)
            state["epoch"], state["step"] = epoch + 1, 0
            checkpoint()
        return {
            "method": c.method,
            "student": spec.name,
            "epochs": tcfg.epochs,
            "initial_top1": state["initial_top1"],
            "best_top1": state["best_top1"],
            "best_epoch": state["best_epoch"],
            "final_top1": record.get("val_top1", state["best_top1"]),
            "teacher_top1": top1(teacher_val, val_labels) if teacher_val is not None else None,
        }

    def _best_payload(self, student: FineTunedStudent, classes: list[str], record: dict) -> dict:
        c = self.config
        return {
            "kind": "splitdnn-kd-student",
            "method": c.method,
            "student_name": self.student_spec.name,
            "base": self.student_spec.base,
            "cut": self.student_spec.cut,
            "student": student.state_dict(),
            "classes": classes,
            "metrics": record,
            "config": c.model_dump(mode="json"),
        }


def run_config(
    config: DistillConfig, run_dir: str | Path, resume: bool = False, progress: bool = True
) -> dict:
    """Run any method: ``hnd`` with :class:`~splitdnn.distill.trainer.Distiller`, ``kd`` and
    ``labels`` with :class:`KDTrainer`."""
    if config.method == "hnd":
        from splitdnn.distill.trainer import Distiller

        return Distiller(config, run_dir, progress=progress).run(resume=resume)
    return KDTrainer(config, run_dir, progress=progress).run(resume=resume)
