"""Linear probes: a frozen backbone's pooled features + one trained linear layer.

Why a probe: the ImageNet-pretrained teachers have 1,000 ImageNet outputs, but a data set such
as Caltech-101 has its own classes. Training only a linear classifier on the frozen pooled
features gives a classifier for those classes in seconds (features are computed once and
cached), without changing anything the split inference depends on: the head, the bottleneck and
the tail stay the teacher's, only the last layer is new. The same probe is

* the Caltech-101 teacher of head network distillation (``teacher.classifier: probe``),
* the classifier of local mode (EfficientNet-Lite0 backbone + probe),
* the starting point and the baseline of the whole-student distillation in :mod:`.kd`.

Features come from :func:`extract_features`, which can also return the activations at a cut
(``cut="_blocks.13"``) in the same pass, so one slow CPU pass over the images serves both the
probe and a student that fine-tunes the layers after the cut.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from splitdnn.data import Sample, load_crops
from splitdnn.distill.config import ProbeConfig, config_samples, load_config
from splitdnn.metrics import top1
from splitdnn.models import get_teacher
from splitdnn.models.weights import weights_digest
from splitdnn.teacher import frozen_backbone, normalise_batch

#: Bump when what a cache file means changes, so stale caches are not reused.
_CACHE_VERSION = "1"


def _features_key(
    teacher_name: str,
    pretrained: bool,
    samples: Sequence[Sample],
    weights: str | Path | None = None,
) -> str:
    spec = get_teacher(teacher_name)
    parts = [
        _CACHE_VERSION,
        teacher_name,
        str(pretrained),
        json.dumps(spec.preprocessing.to_dict()),
    ]
    parts += [f"{s.path}:{s.label}" for s in samples]
    if weights is not None:  # appended, so caches of published weights stay valid
        parts.append(weights_digest(weights))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class FrozenBackbone:
    """Two frozen halves to extract features with: ``prefix`` (whose output is the ``cut``
    array) and ``rest`` (up to the pooled features). ``name`` identifies them in cache files,
    so it must change whenever their weights do."""

    name: str
    prefix: nn.Module
    rest: nn.Module


def extract_features(
    teacher_name: str,
    samples: Sequence[Sample],
    *,
    cut: str | None = None,
    hflip: bool = False,
    pretrained: bool = True,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = False,
    backbone: FrozenBackbone | None = None,
    weights: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """Frozen-backbone outputs for ``samples``, in their order.

    Returns ``pooled`` (N, C) float32 and, with ``cut``, ``cut`` (N, …) float16 activations
    after that module; with ``hflip`` also ``flip_pooled`` / ``flip_cut`` for the mirrored
    images. With ``cache_dir`` the arrays are saved as ``.npy`` under a key of teacher,
    preprocessing and the exact sample list, and reused (memory-mapped) the next time.
    ``backbone`` replaces the teacher's own halves (e.g. a distilled student's device part in
    front of the teacher's tail); its ``name`` goes into the cache file names. ``weights``:
    the user's own teacher state dict (``teacher.weights``), its digest in the cache key.
    """
    kinds = ["pooled"] + (["cut"] if cut or backbone else [])
    passes = [False, True] if hflip else [False]
    key = _features_key(teacher_name, pretrained, samples, weights) if cache_dir is not None else ""
    tag = {"pooled": "pooled", "cut": f"cut-{cut}"}
    if backbone is not None:
        tag = {kind: f"{backbone.name}-{kind}" for kind in kinds}

    def path_of(kind: str, flip: bool) -> Path | None:
        if cache_dir is None:
            return None
        return Path(cache_dir) / f"{teacher_name}-{key}-{'flip-' if flip else ''}{tag[kind]}.npy"

    arrays: dict[str, np.ndarray] = {}
    missing = []
    for flip in passes:  # each pass is saved when done, so a killed run keeps finished passes
        paths = [path_of(kind, flip) for kind in kinds]
        if all(p is not None and p.exists() for p in paths):
            for kind, p in zip(kinds, paths, strict=True):
                arrays[("flip_" if flip else "") + kind] = np.load(p, mmap_mode="r")
        else:
            missing.append(flip)
    if not missing:
        return arrays

    spec = get_teacher(teacher_name)
    if backbone is not None:
        prefix, rest = backbone.prefix, backbone.rest
    else:
        prefix, rest = frozen_backbone(teacher_name, pretrained, cut, weights)
    crops = load_crops(samples, spec.preprocessing, progress)
    for flip in missing:
        out: dict[str, list[np.ndarray]] = {kind: [] for kind in kinds}
        batches = range(0, len(crops), batch_size)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc=f"{teacher_name}{' flip' if flip else ''}", unit="batch")
        with torch.no_grad():
            for i in batches:
                x = normalise_batch(crops[i : i + batch_size], spec.preprocessing)
                if flip:
                    x = x.flip(3)
                h = prefix(x)
                out["pooled"].append(rest(h).float().numpy())
                if "cut" in out:
                    out["cut"].append(h.half().numpy())
        for kind in kinds:
            array = np.concatenate(out[kind])
            arrays[("flip_" if flip else "") + kind] = array
            path = path_of(kind, flip)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.npy")
                np.save(tmp, array)
                os.replace(tmp, path)
    return arrays


def train_linear(
    probe: nn.Linear,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int = 60,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    batch_size: int = 256,
) -> nn.Linear:
    """Train ``probe`` in place with cross-entropy: AdamW, cosine schedule, seeded order.

    The layer is passed in (not built here) so a caller controls when its random init draws
    from the global generator; the HND trainer relies on that to keep its runs reproducible.
    """
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs)
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator)
        for i in range(0, len(features), batch_size):
            idx = order[i : i + batch_size]
            loss = nn.functional.cross_entropy(probe(features[idx]), labels[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        schedule.step()
    return probe.eval()


def fit_probe(
    probe: nn.Linear,
    pooled: np.ndarray | torch.Tensor,
    labels: torch.Tensor,
    settings: ProbeConfig,
    seed: int,
    mirrored: np.ndarray | torch.Tensor | None = None,
) -> nn.Linear:
    """Train ``probe`` on a teacher's pooled features of labelled images (and of their mirror
    images, which share the labels) with the config's probe settings."""
    with warnings.catch_warnings():  # memory-mapped caches are read-only; nothing writes
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        feats = [torch.as_tensor(np.asarray(pooled))]
        if mirrored is not None:
            feats.append(torch.as_tensor(np.asarray(mirrored)))
    return train_linear(
        probe,
        torch.cat(feats),
        labels.repeat(len(feats)),
        epochs=settings.epochs,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        seed=seed,
    )


@dataclass
class ProbeResult:
    """A fitted probe and how well it does on the held-out images."""

    linear: nn.Linear
    val_top1: float
    train_images: int
    val_images: int


def fit_linear_probe(
    teacher_name: str,
    train: Sequence[Sample],
    val: Sequence[Sample],
    num_classes: int,
    *,
    hflip: bool = True,
    epochs: int = 60,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    pretrained: bool = True,
    cache_dir: str | Path | None = None,
    cut: str | None = None,
    progress: bool = False,
    weights: str | Path | None = None,
) -> ProbeResult:
    """Fit a linear classifier on the frozen pooled features of ``teacher_name`` (with the
    user's state dict ``weights``, else its published weights).

    Mirrored training images (``hflip``) double the probe's data at the cost of one more
    backbone pass. ``cut`` only adds those activations to the cache (see
    :func:`extract_features`), so a later whole-student run reuses this pass.
    """
    torch.manual_seed(seed)
    common = {"pretrained": pretrained, "cache_dir": cache_dir, "progress": progress}
    tr = extract_features(teacher_name, train, cut=cut, hflip=hflip, weights=weights, **common)
    va = extract_features(teacher_name, val, cut=cut, weights=weights, **common)
    probe = nn.Linear(tr["pooled"].shape[1], num_classes)
    settings = ProbeConfig(epochs=epochs, lr=lr, weight_decay=weight_decay)
    labels = torch.tensor([s.label for s in train])
    fit_probe(probe, tr["pooled"], labels, settings, seed, tr["flip_pooled"] if hflip else None)
    with torch.no_grad():
        logits = probe(torch.from_numpy(np.array(va["pooled"])))
    val_top1 = top1(logits, torch.tensor([s.label for s in val]))
    return ProbeResult(probe, val_top1, len(train), len(val))


def save_probe(result: ProbeResult, path: str | Path, meta: dict) -> tuple[Path, Path]:
    """Write ``<path>.safetensors`` (``weight``, ``bias``) and ``<path>.json`` (metrics, meta).

    safetensors, not a pickle: the bundle and the services load it without executing code.
    """
    from safetensors.torch import save_file

    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    weights = base.with_suffix(".safetensors")
    save_file(
        {
            "weight": result.linear.weight.detach().contiguous(),
            "bias": result.linear.bias.detach().contiguous(),
        },
        str(weights),
    )
    info = base.with_suffix(".json")
    info.write_text(
        json.dumps(
            {
                "val_top1": round(result.val_top1, 2),
                "train_images": result.train_images,
                "val_images": result.val_images,
                **meta,
            },
            indent=2,
        )
        + "\n"
    )
    return weights, info


def fit_config_probe(
    config_path: Path,
    out: Path,
    *,
    teacher: str | None = None,
    cache_dir: Path | None = None,
    cut: str | None = None,
    progress: bool = True,
) -> tuple[str, ProbeResult, Path, Path]:
    """A linear probe on ``teacher`` (default: the config's) fitted with the data, split, seed
    and probe settings of a distillation config, so a probe is fitted on exactly the training
    images (and scored on exactly the validation images) of that run (``splitdnn probe``).
    Returns the teacher probed, the result and the weights and info files written at ``out``
    (a path without suffix)."""
    config = load_config(config_path)
    teacher = teacher or config.teacher.name
    # The config's own weights go with its teacher only: an exported local model of that
    # architecture is built from them too (splitdnn.parts.assemble).
    own = get_teacher(teacher).name == get_teacher(config.teacher.name).name
    weights = config.teacher.weights if own else None
    train, val, classes, _ = config_samples(config)
    result = fit_linear_probe(
        teacher,
        train,
        val,
        len(classes),
        hflip=config.augmentation.hflip,
        epochs=config.probe.epochs,
        lr=config.probe.lr,
        weight_decay=config.probe.weight_decay,
        seed=config.seed,
        cache_dir=cache_dir,
        cut=cut,
        progress=progress,
        weights=weights,
    )
    meta = {
        "teacher": teacher,
        "weights": weights.name if weights else None,
        "classes": classes,
        "data": {
            "list": config.data.list,
            "val_fraction": config.data.val_fraction,
            "seed": config.seed,
            "hflip": config.augmentation.hflip,
        },
        "probe": config.probe.model_dump(),
        "config": config_path.name,
    }
    weights_file, info = save_probe(result, out, meta)
    return teacher, result, weights_file, info
