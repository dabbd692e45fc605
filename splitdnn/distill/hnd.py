"""Head network distillation (``method: hnd``) on CPU: cache what is fixed, train what is not.

What :class:`HeadDistillation` adds to the epoch loop of :mod:`.trainer`:

1. Decode and crop every image once (uint8 arrays on disk in ``RUN/cache``).
2. Run the frozen teacher once per image (and per flip): head outputs (the targets), pooled
   features (for a linear probe and the generalised loss) and validation logits. The cache is
   keyed by teacher, cut, preprocessing, seed and the exact sample lists, and its image counts
   are checked when it is reused.
3. With ``teacher.classifier: probe``, fit a linear classifier on the pooled features (or take
   ``teacher.probe_from``).
4. Run a student's frozen teacher prefix (variant ``teacher_init``) once per image, in memory.
5. The loss: SSE on the head output (+ optional pooled-feature SSE and soft-target KL on the
   classifier's logits, both through the frozen tail; optional random resized crops on part of
   each batch, their targets computed then). The score: the mimic's validation top-1.
6. With a ``rate`` section, the student's bottleneck is entropy-coded
   (:class:`~splitdnn.students.EntropyStudent`): the loss adds ``rate.beta`` × the bits per
   image and the entropy model's quantile loss, and every epoch reports the bits the model
   expects on the validation images. It may start from a plain student with fewer bottleneck
   channels (``train.init_from``): the new channels start silent (``widen_state``).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from splitdnn.checkpoints import PROBE, StudentCheckpoint, load_linear, read_student, save_atomic
from splitdnn.data import Sample, load_crops, samples_digest
from splitdnn.distill.augment import mix_pairs, random_resized_crops
from splitdnn.distill.config import DistillConfig, config_samples, unlabelled_samples
from splitdnn.distill.losses import kd_loss, sse
from splitdnn.distill.probe import fit_probe
from splitdnn.distill.trainer import Method
from splitdnn.errors import CheckpointError, ConfigError
from splitdnn.metrics import AgreementMeter
from splitdnn.models import get_teacher
from splitdnn.models.weights import weights_digest
from splitdnn.students import (
    BottleneckStudent,
    EntropyStudent,
    build_student,
    entropy_student,
    student_split,
    widen_state,
)
from splitdnn.teacher import normalise_batch, teacher_parts

#: Bump when what a cache file means changes, so caches of older code are rebuilt.
CACHE_VERSION = "2"
BATCH = 32
#: Weight of the entropy model's quantile loss, so the logged loss shows distortion and rate
#: (unweighted, ~2,000 at the start of a 48-channel run, it hid them). Its gradient reaches
#: only the quantiles, and Adam's steps hardly depend on a gradient's scale: the medians
#: (the rounding grid) learn as fast; the tails learn slower where the density is thin, and
#: nothing depends on them (the served tables bisect the density, ``coding_tables``).
AUX_WEIGHT = 1e-3


class HeadDistillation(Method):
    """Runs one ``method: hnd`` config in one run directory."""

    name = "hnd"
    score_key = "mimic_top1"

    def __init__(self, config: DistillConfig, run_dir: str | Path, progress: bool = True):
        if config.method != self.name:
            raise ConfigError(f"method {config.method!r} is not head network distillation")
        super().__init__(config, run_dir, progress)
        self.cache_dir = self.run_dir / "cache"
        self.spec = get_teacher(config.teacher.name)
        self.split_module = config.split_module or student_split(self.spec.name)
        #: The teacher's own ImageNet head, kept beside a probe for its soft-target term.
        self.imagenet_classifier: nn.Module | None = None

    # -- setup ------------------------------------------------------------------------------

    def samples(self) -> tuple[list[Sample], list[Sample], list[str]]:
        """Training and validation samples and class names: the run's deterministic split."""
        train, val, classes, label_space = config_samples(self.config)
        classifier = self.config.teacher.classifier
        self.log(f"teacher classifier: {classifier} (labels: {label_space} classes)")
        if classifier == "imagenet" and label_space != "imagenet":
            self.log(
                "warning: teacher.classifier: imagenet on class folders that are not ImageNet "
                "classes: the teacher's top-1 is near 0 and best.pt is picked on it; use "
                "teacher.classifier: probe (or leave it out: auto picks probe for such labels)"
            )
        return train, val, classes

    def setup(self, fresh: bool) -> nn.Module:
        cfg = self.config
        _, self.parts = teacher_parts(
            self.spec.name, cfg.teacher.pretrained, self.split_module, cfg.teacher.weights
        )
        labelled, self.val, self.classes = self.samples()
        self.labelled = len(labelled)
        self.train_samples = labelled + unlabelled_samples(cfg)
        self.log(
            f"{self.labelled} training + {len(self.train_samples) - self.labelled} unlabelled "
            f"/ {len(self.val)} validation images, {len(self.classes)} classes"
        )
        self.cache = self._build_cache()
        if cfg.teacher.classifier == "probe":
            if self.spec.num_classes == 1000:
                self.imagenet_classifier = self.parts.classifier
            self.parts.classifier = self._probe().requires_grad_(False)
        self.val_labels = torch.tensor([s.label for s in self.val])
        with torch.no_grad():
            self.teacher_val_logits = self.parts.classifier(self._array("val_feats"))
        teacher_top1 = 100.0 * float(
            (self.teacher_val_logits.argmax(1) == self.val_labels).float().mean()
        )
        self.log(f"teacher top-1 on validation: {teacher_top1:.2f}")

        student = build_student(
            self.spec.name,
            cfg.student.bottleneck,
            cfg.student.variant,
            split_module=self.split_module,
            weights=cfg.teacher.weights,
        )
        if cfg.rate is not None:
            student = entropy_student(student)
        student.to(memory_format=torch.channels_last)
        calibrate = fresh and isinstance(student, EntropyStudent)
        if fresh and cfg.train.init_from is not None:
            calibrate = self._init_student(student, cfg.train.init_from) and calibrate
        self.student = student
        self.prefix: dict[str, torch.Tensor] | None = None
        if student.frozen_layers and cfg.augmentation.cache_teacher:
            self.prefix = self._frozen_outputs(student)
        if calibrate:
            self._calibrate(student)
        heads, feats = self.cache["train_heads"], self.cache["train_feats"]
        self.head_energy = float(
            np.mean(np.square(np.asarray(heads[:256], np.float32))) * np.prod(heads.shape[1:])
        )
        self.feat_energy = float(np.mean(np.square(np.asarray(feats[:256]))) * feats.shape[1])
        return student

    def num_samples(self) -> int:
        return len(self.train_samples)

    def _array(self, name: str) -> torch.Tensor:
        """A cached array as a tensor sharing its (read-only, memory-mapped) memory; nothing
        writes to it, so torch's warning about non-writable arrays is not for us."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            return torch.as_tensor(np.asarray(self.cache[name]))

    def _cache_key(self) -> str:
        c = self.config
        parts = [
            CACHE_VERSION,
            c.teacher.name,
            str(c.teacher.pretrained),
            self.split_module,
            str(c.augmentation.hflip),
            json.dumps(self.spec.preprocessing.to_dict()),
            samples_digest(self.train_samples),
            samples_digest(self.val),
        ]
        if c.teacher.weights is not None:  # appended, so caches of published weights stay valid
            parts.append(weights_digest(c.teacher.weights))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def _teacher_pass(self, crops: np.ndarray, flip: bool, desc: str):
        """Head outputs (fp16) and pooled features of every crop, in batches."""
        heads, feats = [], []
        batches: Any = range(0, len(crops), BATCH)
        if self.progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc=desc, unit="batch")
        with torch.no_grad():
            for i in batches:
                x = normalise_batch(crops[i : i + BATCH], self.spec.preprocessing)
                h = self.parts.head(x.flip(3) if flip else x)
                heads.append(h.half().numpy())
                feats.append(self.parts.features(h).numpy())
        return np.concatenate(heads), np.concatenate(feats)

    def _cached(self, key: str, names: list[str]) -> dict[str, np.ndarray] | None:
        """The cache of this key, if complete and of the right size; else None."""
        meta_path = self.cache_dir / "meta.json"
        if not meta_path.exists() or json.loads(meta_path.read_text()).get("key") != key:
            return None
        if not all((self.cache_dir / f"{n}.npy").exists() for n in names):
            return None
        cache = {n: np.load(self.cache_dir / f"{n}.npy", mmap_mode="r") for n in names}
        sizes = {
            n: len(self.val) if n.startswith("val") else len(self.train_samples) for n in names
        }
        if any(len(cache[n]) != sizes[n] for n in names):
            return None
        return cache

    def _build_cache(self) -> dict[str, np.ndarray]:
        key = self._cache_key()
        names = ["train_crops", "val_crops", "train_heads", "train_feats", "val_feats"]
        if self.config.augmentation.hflip:
            names += ["flip_heads", "flip_feats"]
        cached = self._cached(key, names)
        if cached is not None:
            self.log(f"using cached crops and teacher outputs in {self.cache_dir}")
            return cached
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        (self.cache_dir / "meta.json").unlink(missing_ok=True)
        spec = self.spec.preprocessing
        cache: dict[str, np.ndarray] = {
            "train_crops": load_crops(self.train_samples, spec, self.progress),
            "val_crops": load_crops(self.val, spec, self.progress),
        }
        cache["train_heads"], cache["train_feats"] = self._teacher_pass(
            cache["train_crops"], False, "teacher"
        )
        _, cache["val_feats"] = self._teacher_pass(cache["val_crops"], False, "teacher val")
        if self.config.augmentation.hflip:
            cache["flip_heads"], cache["flip_feats"] = self._teacher_pass(
                cache["train_crops"], True, "teacher flip"
            )
        for name, array in cache.items():
            np.save(self.cache_dir / f"{name}.npy", array)
        meta = {"key": key, "train": len(self.train_samples), "val": len(self.val)}
        (self.cache_dir / "meta.json").write_text(json.dumps(meta))
        return cache

    def _probe(self) -> nn.Linear:
        """Linear classifier on the frozen pooled features (flipped copies included), or the
        one ``teacher.probe_from`` names; kept in the run as ``classifier.pt``."""
        path = self.run_dir / PROBE
        probe = nn.Linear(self.parts.num_features, len(self.classes))
        if path.exists():
            return load_linear(path)
        source = self.config.teacher.probe_from
        if source is not None:
            try:
                probe = load_linear(source)
            except CheckpointError as exc:
                raise ConfigError(f"teacher.probe_from: {exc}") from None
            if probe.weight.shape != (len(self.classes), self.parts.num_features):
                raise ConfigError(
                    f"teacher.probe_from: {source} maps {probe.in_features} features to "
                    f"{probe.out_features} classes; this run needs "
                    f"{self.parts.num_features} -> {len(self.classes)}"
                )
            self.log(f"probe taken from {source}")
        else:
            n = self.labelled  # unlabelled images come after the labelled ones
            labels = torch.tensor([s.label for s in self.train_samples[:n]])
            mirrored = self.cache["flip_feats"][:n] if "flip_feats" in self.cache else None
            pooled = self.cache["train_feats"][:n]
            fit_probe(probe, pooled, labels, self.config.probe, self.config.seed, mirrored)
        save_atomic(probe.state_dict(), path)
        return probe.eval()

    def _init_student(self, student: BottleneckStudent, source: Path) -> bool:
        """Load the weights of an earlier student of the same design (``train.init_from``).

        An entropy-coded student may start from a plain one, and from one with fewer
        bottleneck channels. Returns whether the entropy model and gains still need a start
        (the source had none)."""
        try:
            checkpoint = read_student(source)
        except (CheckpointError, KeyError) as exc:
            raise ConfigError(f"train.init_from: {exc}") from None
        c = self.config
        ours = (self.spec.name, self.split_module, c.student.bottleneck, c.student.variant)
        theirs = checkpoint.design
        wider = (
            isinstance(student, EntropyStudent)
            and theirs[:2] + theirs[3:] == ours[:2] + ours[3:]
            and theirs[2] is not None
            and ours[2] is not None
            and theirs[2] < ours[2]
        )
        if theirs != ours and not wider:
            raise ConfigError(
                f"train.init_from: {checkpoint.source} holds a student for "
                f"{theirs}, this run needs {ours}"
            )
        state = dict(checkpoint.student)
        if isinstance(student, EntropyStudent):
            state, widened = widen_state(state, student.state_dict())
            if widened:
                self.log(f"bottleneck widened from {theirs[2]} to {ours[2]} channels")
        student.load_state_dict(state)
        self.log(f"student initialised from {checkpoint.source}")
        return "log_gain" not in checkpoint.student

    def _calibrate(self, student: EntropyStudent) -> None:
        """Start the gains from the bottleneck's spread on some training images."""
        rate = self.config.rate
        assert rate is not None
        n = min(rate.calibration_images, len(self.train_samples))
        if self.prefix is not None:
            prefix = self.prefix["train"][:n].float()
        else:
            crops = normalise_batch(self.cache["train_crops"][:n], self.spec.preprocessing)
            with torch.no_grad():
                prefix = student.frozen()(crops)
        student.calibrate(prefix, rate.init_levels)
        gains = student.log_gain.detach().exp()
        self.log(
            f"gains calibrated on {n} images for {rate.init_levels:g} levels: "
            f"{float(gains.min()):.3g}..{float(gains.max()):.3g}"
        )

    def parameter_groups(self, student: nn.Module) -> list[dict[str, Any]]:
        """The entropy model and gains learn at ``rate.entropy_lr``, the rest at the
        configured rate."""
        if not isinstance(student, EntropyStudent) or self.config.rate is None:
            return super().parameter_groups(student)
        fast = {id(p) for p in student.entropy_parameters()}
        trainable = [p for p in student.parameters() if p.requires_grad]
        return [
            {"params": [p for p in trainable if id(p) not in fast]},
            {
                "params": [p for p in trainable if id(p) in fast],
                "lr": self.config.rate.entropy_lr,
            },
        ]

    def _frozen_outputs(self, student: BottleneckStudent) -> dict[str, torch.Tensor]:
        """The student's frozen prefix run once on every crop (it never changes in training).

        Kept in memory, so epochs train only what learns: validation rows as fp32 (exactly
        what inference computes), training rows as fp16 (~0.2 MB an image for Lite2's
        24x65x65, so ten thousand images and their mirror images fit in 4 GB).
        """
        frozen = student.frozen().eval()
        jobs = [("train", "train_crops", False), ("val", "val_crops", False)]
        if self.config.augmentation.hflip:
            jobs.append(("flip", "train_crops", True))
        outputs: dict[str, torch.Tensor] = {}
        stored = self._stored_prefix(frozen, [name for name, _, _ in jobs])
        for name, key, flip in jobs:
            if stored is not None and name in stored.arrays:
                outputs[name] = stored.arrays[name]
                continue
            crops = self.cache[key]
            batches: Any = range(0, len(crops), BATCH)
            if self.progress:
                from tqdm import tqdm

                batches = tqdm(batches, desc=f"frozen prefix {name}", unit="batch")
            chunks = []
            with torch.no_grad():
                for i in batches:
                    x = normalise_batch(crops[i : i + BATCH], self.spec.preprocessing)
                    h = frozen(x.flip(3) if flip else x).contiguous()
                    chunks.append(h if name == "val" else h.half())
            outputs[name] = torch.cat(chunks)
            if stored is not None:
                outputs[name] = stored.save(name, outputs[name])
        return outputs

    def _stored_prefix(self, frozen: nn.Module, names: list[str]) -> _StoredPrefix | None:
        """The frozen prefix's outputs kept beside the crop cache: a run that resumes, or a
        rung of a rate ladder with the same teacher prefix and images, loads them instead of
        recomputing (~8 min for Lite2 on two busy cores). Keyed by the crop cache's key and
        a digest of the prefix's weights, so a different prefix never reads them."""
        if not self.config.augmentation.cache_teacher:
            return None
        digest = hashlib.sha256(self._cache_key().encode())
        for name, tensor in sorted(frozen.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        sizes = {n: len(self.val) if n == "val" else len(self.train_samples) for n in names}
        stored = _StoredPrefix(self.cache_dir, digest.hexdigest()[:16], sizes)
        if stored.arrays:
            self.log(f"using the stored frozen-prefix outputs ({', '.join(stored.arrays)})")
        return stored

    # -- one step -----------------------------------------------------------------------------

    def loss(self, idx: np.ndarray, flip: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        x, target, feats = self._batch(idx, flip, rng)
        student = self.student
        rate = self.config.rate
        if isinstance(student, EntropyStudent) and rate is not None:
            prefix = x if self.prefix is not None else student.frozen()(x)
            out, bits = student.forward_with_bits(prefix)
            loss = rate.beta * bits.mean() + AUX_WEIGHT * student.aux_loss()
        else:
            out = student.forward_from_frozen(x) if self.prefix is not None else student(x)
            loss = out.new_zeros(())
        loss = loss + sse(out, target) / self.head_energy
        tcfg = self.config.train
        tail_terms = (tcfg.pooled_loss_weight, tcfg.logits_loss_weight)
        if any(w > 0 for w in tail_terms) or self._imagenet_term():
            loss = loss + self.tail_loss(out, feats)
        return loss

    def _imagenet_term(self) -> bool:
        weight = self.config.train.imagenet_logits_loss_weight
        return weight > 0 and self.imagenet_classifier is not None

    def tail_loss(self, out: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The terms measured after the frozen teacher tail, on the first share of the batch:
        pooled-feature SSE (relative to the features' energy) and soft-target KL on logits."""
        tcfg, parts = self.config.train, self.parts
        k = max(1, round(len(out) * tcfg.pooled_loss_fraction))
        pooled = parts.features(out[:k])
        loss = tcfg.pooled_loss_weight * sse(pooled, feats[:k]) / self.feat_energy
        heads = [(tcfg.logits_loss_weight, parts.classifier)]
        if self.imagenet_classifier is not None:
            heads.append((tcfg.imagenet_logits_loss_weight, self.imagenet_classifier))
        for weight, classifier in heads:
            if weight > 0:
                with torch.no_grad():
                    target = classifier(feats[:k])
                soft = kd_loss(classifier(pooled), target, None, tcfg.logits_temperature)
                loss = loss + weight * soft
        return loss

    def _batch(self, idx: np.ndarray, flip: np.ndarray, rng: np.random.Generator):
        """Student input, teacher head output and pooled features of one training batch.

        Rows drawn for a random resized crop get a fresh view of their crop and the teacher's
        outputs on that view; the other rows use the cached crops (or their frozen-prefix
        outputs) and cached targets.
        """
        flip_rows = torch.from_numpy(flip)
        prefix = self.prefix
        if prefix is None:
            x = normalise_batch(self.cache["train_crops"][idx], self.spec.preprocessing)
            x[flip_rows] = x[flip_rows].flip(3)
        else:  # prefix outputs are cached only together with the teacher's targets
            x = prefix["train"][torch.from_numpy(idx)].float()
            if flip.any():
                x[flip_rows] = prefix["flip"][torch.from_numpy(idx[flip])].float()
        views, aug = self._views(idx, flip, rng)
        if views is None:
            return (x, *self._targets(x, idx, flip))
        rows = torch.from_numpy(aug)
        with torch.no_grad():
            x[rows] = views if prefix is None else self.student.frozen()(views)
        # Cached targets, or (cache_teacher: false) the teacher run on x, views included.
        target, feats = self._targets(x, idx, flip)
        if self.config.augmentation.cache_teacher:
            with torch.no_grad():
                head = self.parts.head(views)
                target[rows], feats[rows] = head, self.parts.features(head)
        return x, target, feats

    def _views(self, idx: np.ndarray, flip: np.ndarray, rng: np.random.Generator):
        """New images for a fixed share of the batch (one input shape for the teacher, no
        re-planning per step): random resized crops and/or mixed pairs, mirrored as drawn.
        Returns (views, which rows) or (None, None) when augmentation is off."""
        augment = self.config.augmentation
        crop, mix = augment.random_crop, augment.mix
        share = max(crop.probability if crop else 0.0, mix.probability if mix else 0.0)
        count = round(share * len(idx))
        if not count:
            return None, None
        aug = np.zeros(len(idx), bool)
        aug[rng.choice(len(idx), count, replace=False)] = True
        spec = self.spec.preprocessing
        raw = normalise_batch(self.cache["train_crops"][idx[aug]], spec)
        if crop:
            views = random_resized_crops(raw, rng, crop.min_scale, crop.max_aspect, flip[aug])
        else:
            views = raw
            mirrored = torch.from_numpy(flip[aug])
            views[mirrored] = views[mirrored].flip(3)
        if mix:
            partners = rng.integers(0, len(idx), count)
            other = normalise_batch(self.cache["train_crops"][idx[partners]], spec)
            mirrored = torch.from_numpy(flip[partners])
            other[mirrored] = other[mirrored].flip(3)
            views = mix_pairs(views, other, rng, mix.mode, mix.alpha)
        return views, aug

    def _targets(self, x: torch.Tensor, idx: np.ndarray, flip: np.ndarray):
        """Teacher head outputs and pooled features for a batch: cached, or computed now on
        the input images ``x`` (``cache_teacher: false``, where there is no frozen prefix)."""
        if self.config.augmentation.cache_teacher:
            heads = np.asarray(self.cache["train_heads"][idx], np.float32)
            feats = np.asarray(self.cache["train_feats"][idx])
            if flip.any():
                heads[flip] = np.asarray(self.cache["flip_heads"][idx[flip]], np.float32)
                feats[flip] = np.asarray(self.cache["flip_feats"][idx[flip]])
            return torch.from_numpy(heads), torch.from_numpy(feats)
        with torch.no_grad():
            head = self.parts.head(x)
            return head, self.parts.features(head)

    # -- scoring --------------------------------------------------------------------------------

    def evaluate(self, batch_size: int = BATCH) -> dict[str, Any]:
        """Teacher vs mimic (student + frozen teacher tail) on the validation images."""
        student = self.student.eval()
        meter = AgreementMeter()
        bits: list[torch.Tensor] = []
        with torch.no_grad():
            for i in range(0, len(self.val), batch_size):
                if self.prefix is not None:
                    x = self.prefix["val"][i : i + batch_size]
                else:
                    crops = self.cache["val_crops"][i : i + batch_size]
                    x = normalise_batch(crops, self.spec.preprocessing)
                if isinstance(student, EntropyStudent):
                    prefix = x if self.prefix is not None else student.frozen()(x)
                    head, image_bits = student.forward_with_bits(prefix)
                    bits.append(image_bits)
                else:
                    head = student.forward_from_frozen(x) if self.prefix is not None else student(x)
                meter.update(
                    self.teacher_val_logits[i : i + batch_size],
                    self.parts.tail(head),
                    self.val_labels[i : i + batch_size],
                )
        record = meter.result().to_dict()
        if bits:  # the entropy model's estimate of the coded bottleneck, headers not counted
            per_image = torch.cat(bits)
            record["bottleneck_bytes_mean"] = float(per_image.mean()) / 8
            record["bottleneck_bytes_median"] = float(per_image.median()) / 8
        return record

    def describe(self, record: dict[str, Any]) -> str:
        text = (
            f"teacher top-1 {record['teacher_top1']:.2f}, mimic top-1 "
            f"{record['mimic_top1']:.2f}, agreement {record['top1_agreement']:.2f}"
        )
        if "bottleneck_bytes_median" in record:
            text += f", bottleneck {record['bottleneck_bytes_median']:.0f} B (median, estimated)"
        return text

    def best_payload(self, record: dict[str, Any]) -> dict[str, Any]:
        c = self.config
        probe = c.teacher.classifier == "probe"
        return StudentCheckpoint(
            teacher=self.spec.name,
            split_module=self.split_module,
            bottleneck=c.student.bottleneck,
            variant=c.student.variant,
            student=self.student.state_dict(),
            probe=self.parts.classifier.state_dict() if probe else None,
            classes=self.classes,
            metrics=record,
            config=c.model_dump(mode="json"),
        ).to_payload()


class _StoredPrefix:
    """Frozen-prefix outputs as ``.npy`` files named by the prefix's digest; a file is
    written whole under a temporary name and renamed, so a crash never leaves half of one."""

    def __init__(self, folder: Path, digest: str, sizes: dict[str, int]) -> None:
        self.folder, self.digest = folder, digest
        self.arrays: dict[str, torch.Tensor] = {}
        for name, size in sizes.items():
            path = self._path(name)
            if path.exists():
                array = np.load(path, mmap_mode="r")
                if len(array) == size:
                    with warnings.catch_warnings():  # read-only memory map; nothing writes it
                        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
                        self.arrays[name] = torch.as_tensor(array)

    def _path(self, name: str) -> Path:
        return self.folder / f"prefix-{self.digest}-{name}.npy"

    def save(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self._path(name).with_suffix(".partial.npy")
        np.save(partial, tensor.numpy())
        os.replace(partial, self._path(name))
        return tensor
