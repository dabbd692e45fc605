"""Torch models -> a model bundle: four ONNX files checked against torch, plus ``manifest.json``.

::

    device.onnx    "image" [N,3,S,S] -> "bottleneck"             the student's encoder
    coding.json    (entropy-coded students only) the entropy model's tables, see splitdnn.rans
    server.onnx    "bottleneck" -> "logits_<task>" per task       decoder + teacher tail + heads
    offload.onnx   "image" -> "logits_<task>" per task            the whole teacher
    local.onnx     "image" [N,3,L,L] -> "logits_<task>" per task  a device-only model

Every file is exported with a dynamic batch axis (opset 17, the TorchScript exporter, which
handles EfficientNet-Lite's static "same" padding), then run in onnxruntime on a batch of two
and compared with torch; a difference over :data:`TOLERANCE` raises :class:`ExportError`, so a
bundle on disk always reproduces the model it came from. The manifest is written by
:func:`splitdnn.bundle.write_manifest`.

Sources: :func:`export_run` (a distillation run directory or its assets), :func:`export_default`
(the committed default assets) and :func:`export_ladder` / :func:`export_ladder_assets` (several
entropy students as one bundle of rates) read a :class:`~splitdnn.checkpoints.StudentCheckpoint`
and assemble it (:func:`splitdnn.parts.assemble`) before :func:`export_bundle` writes it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from splitdnn import reencode
from splitdnn.bundle import (
    ACCURACY_FILE,
    CODING_FILE,
    LADDER_FILE,
    MANIFEST,
    LadderAssets,
    Manifest,
    RateFigures,
    default_bundle_path,
    load_bundle,
    read_ladder_assets,
    read_measured_accuracy,
    record_accuracy,
    record_quantisation,
    record_rate_accuracy,
    write_ladder,
    write_ladder_assets,
    write_manifest,
)
from splitdnn.checkpoints import (
    DEFAULT_ASSETS,
    DEFAULT_LOCAL,
    load_linear,
    read_default_assets,
    read_student,
)
from splitdnn.errors import ExportError
from splitdnn.parts import BundleParts, assemble
from splitdnn.profile import count_macs, count_params, head_macs
from splitdnn.runtime import LOGITS_PREFIX
from splitdnn.students import EntropyStudent
from splitdnn.to_onnx import TOLERANCE, check_onnx, export_onnx

# --- the exported modules -----------------------------------------------------------------


class TaskHeads(nn.Module):
    """Pooled features -> one logits tensor per task, in task order (the ONNX output order)."""

    def __init__(self, classifiers: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.tasks = list(classifiers)
        self.heads = nn.ModuleList(classifiers.values())

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(head(z) for head in self.heads)


class ServerPart(nn.Module):
    """Bottleneck -> student decoder -> teacher tail up to pooled features -> task heads."""

    def __init__(self, decoder: nn.Module, features: nn.Module, heads: TaskHeads) -> None:
        super().__init__()
        self.decoder, self.features, self.heads = decoder, features, heads

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.heads(self.features(self.decoder(z)))


class ImagePart(nn.Module):
    """Image -> backbone(s) up to pooled features -> task heads (offload and local models)."""

    def __init__(self, backbone: nn.Module, heads: TaskHeads) -> None:
        super().__init__()
        self.backbone, self.heads = backbone, heads

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.heads(self.backbone(x))


# --- export and check (one file: splitdnn.to_onnx) ----------------------------------------


def _prepare_output_dir(out_dir: Path) -> None:
    """Refuse to scatter files into a non-empty folder that is not already a bundle."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ExportError(f"{out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
            raise ExportError(
                f"{out_dir} is not empty and holds no bundle; choose a new or empty folder"
            )
        for stale in [*out_dir.glob("*.onnx*"), out_dir / reencode.CHOICE_FILE]:
            stale.unlink(missing_ok=True)  # a re-encoding choice was measured on the old bundle
    out_dir.mkdir(parents=True, exist_ok=True)


def bundle_costs(parts: BundleParts) -> dict[str, Any]:
    """Size and MAC figures of the split, recorded in the manifest's metrics."""
    input_shape = parts.teacher.input_shape
    with torch.no_grad():
        z = parts.student.encode(torch.zeros(1, *input_shape))
    device = count_macs(parts.student.encoder, input_shape)
    # On the original teacher: its traced head may inline layers that fire no hooks.
    head = head_macs(parts.teacher_model, parts.split_module, input_shape)
    elements = int(np.prod(z.shape[1:]))
    return {
        "bottleneck_shape": list(z.shape[1:]),
        "data_size_percent": 100.0 * elements / int(np.prod(input_shape)),
        "device_macs": device,
        "teacher_head_macs": head,
        "device_macs_reduction_percent": 100.0 * (1.0 - device / head) if head else None,
        "device_params": count_params(parts.student.encoder),
        "server_decoder_params": count_params(parts.student.decoder),
    }


def export_bundle(
    parts: BundleParts, out_dir: str | Path, *, check: bool = True, seed: int = 0
) -> Manifest:
    """Write the four ONNX files and the manifest into ``out_dir``; return the manifest.

    With ``check`` (the default) every file is compared with torch on a batch of two random
    inputs (exported with batch one, so the dynamic batch axis is exercised too).
    """
    out_dir = Path(out_dir)
    _prepare_output_dir(out_dir)
    for module in (
        parts.student,
        parts.teacher_model,
        parts.teacher_head,
        parts.teacher_features,
        parts.local_backbone,
        *parts.classifiers.values(),
        *parts.local_classifiers.values(),
    ):
        module.eval().to(memory_format=torch.contiguous_format)
    tasks = list(parts.labels)
    missing = [t for t in tasks if t not in parts.classifiers]
    if missing:
        raise ExportError(f"no teacher classifier for task(s) {missing}")
    heads = TaskHeads({t: parts.classifiers[t] for t in tasks})
    local_tasks = [t for t in tasks if t in parts.local_classifiers]
    if not local_tasks:
        raise ExportError(f"the local model has a classifier for none of the tasks {tasks}")
    local_heads = TaskHeads({t: parts.local_classifiers[t] for t in local_tasks})

    generator = torch.Generator().manual_seed(seed)
    size, local_size = parts.teacher.input_size, parts.local.input_size
    image = torch.randn(2, 3, size, size, generator=generator)
    local_image = torch.randn(2, 3, local_size, local_size, generator=generator)
    with torch.no_grad():
        bottleneck = parts.student.encode(image)
    logits = [LOGITS_PREFIX + t for t in tasks]
    local_logits = [LOGITS_PREFIX + t for t in local_tasks]
    offload = ImagePart(nn.Sequential(parts.teacher_head, parts.teacher_features), heads)
    jobs = [
        ("device", parts.student.device_part(), image, "image", ["bottleneck"]),
        (
            "server",
            ServerPart(parts.student.server_part(), parts.teacher_features, heads),
            bottleneck,
            "bottleneck",
            logits,
        ),
        ("offload", offload, image, "image", logits),
        ("local", ImagePart(parts.local_backbone, local_heads), local_image, "image", local_logits),
    ]
    diffs: dict[str, float] = {}
    device_tolerance = TOLERANCE
    if isinstance(parts.student, EntropyStudent):
        # its latent is the bottleneck times a per-channel gain (up to ~100): the same
        # precision in quantisation steps allows the gain times the difference
        device_tolerance *= max(1.0, float(parts.student.log_gain.detach().exp().max()))
    with torch.no_grad():
        for role, module, example, input_name, outputs in jobs:
            path = out_dir / f"{role}.onnx"
            export_onnx(module, example[:1], path, input_name, outputs)
            if check:
                tolerance = device_tolerance if role == "device" else TOLERANCE
                diffs[role] = check_onnx(path, module, example, tolerance)

    metrics = {
        **parts.metrics,
        **bundle_costs(parts),
        "local_model": parts.local.name,
        "local_tasks": local_tasks,
    }
    if check:
        metrics["onnx_max_abs_diff"] = diffs
    coding = None
    if isinstance(parts.student, EntropyStudent):
        coding = CODING_FILE
        tables = json.dumps(parts.student.coding_tables(), separators=(",", ":"))
        (out_dir / coding).write_text(tables + "\n", encoding="utf-8")
    return write_manifest(
        out_dir,
        name=parts.name,
        teacher=parts.teacher.name,
        split_module=parts.split_module,
        preprocessing=parts.teacher.preprocessing,
        local_preprocessing=parts.local.preprocessing,
        bottleneck_shape=list(bottleneck.shape[1:]),
        tasks={t: parts.labels[t] for t in tasks},
        default_task=parts.default_task,
        metrics=metrics,
        coding=coding,
    )


# --- sources -------------------------------------------------------------------------------


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    local: str = DEFAULT_LOCAL,
    local_probes: Mapping[str, str | Path] | None = None,
    task: str | None = None,
    name: str | None = None,
    check: bool = True,
) -> Manifest:
    """A bundle from a distillation run directory (or its assets, ``splitdnn export assets``):
    its best student, its teacher (ImageNet head and the run's probe task, named ``task`` or
    after the data folder) and the device-only model ``local`` with its own ImageNet head plus
    ``local_probes`` (task -> probe file; assets may carry their own). The run's probe task is
    the bundle's default task."""
    checkpoint = read_student(run_dir, task)
    probes: dict[str, nn.Module] = {t: load_linear(p) for t, p in (local_probes or {}).items()}
    parts = assemble(
        checkpoint,
        name=name or f"{checkpoint.teacher}-b{checkpoint.bottleneck}-{Path(run_dir).name}",
        local=local,
        local_probes=probes,
        default_task=checkpoint.task,
    )
    return export_bundle(parts, out_dir, check=check)


def export_default(
    assets_dir: str | Path = DEFAULT_ASSETS,
    out_dir: str | Path | None = None,
    *,
    check: bool = True,
) -> Manifest:
    """Build the embedded default bundle from the committed assets into ``out_dir`` (default:
    the packaged ``splitdnn/assets/default-bundle``, what the services load).

    The assets' measured fair-offload choice (``reencode.json``, written by
    ``benchmarks/reencode_sweep.py --write-assets``) goes beside the bundle: it depends on the
    teacher and its preprocessing only, so it holds for every student of that teacher. Their
    held-out accuracy per mode (``accuracy.json``, written by ``benchmarks/accuracy_by_mode.py
    assets``) goes into the manifest when it was measured on the bundle of the same id, with
    the quantisation chosen on those figures (what split sends by default)."""
    checkpoint = read_default_assets(assets_dir)
    name = checkpoint.name or f"default-{checkpoint.teacher}-b{checkpoint.bottleneck}"
    target = Path(out_dir) if out_dir is not None else default_bundle_path()
    manifest = export_bundle(assemble(checkpoint, name=name), target, check=check)
    measured = read_measured_accuracy(assets_dir)
    if measured is not None and measured.bundle_id == manifest.bundle_id:
        for task, figures in measured.tasks.items():
            manifest = record_accuracy(target, task, figures)
        if measured.quantisation is not None:  # chosen on these figures: sent so by default
            manifest = record_quantisation(target, measured.quantisation)
    elif measured is not None:
        warnings.warn(
            f"{assets_dir}/{ACCURACY_FILE} was measured on bundle {measured.bundle_id}, not "
            f"{manifest.bundle_id}: not recorded (measure again: python "
            "benchmarks/accuracy_by_mode.py evaluate BUNDLE --name NAME, then its assets command)",
            stacklevel=2,
        )
    choice = reencode.load_choice(assets_dir)
    if choice is not None and choice.teacher in (None, checkpoint.teacher):
        reencode.save_choice(target, choice)
    elif choice is not None:
        warnings.warn(
            f"{assets_dir}/{reencode.CHOICE_FILE} was measured with {choice.teacher}, not "
            f"{checkpoint.teacher}: not copied (measure again with benchmarks/reencode_sweep.py)",
            stacklevel=2,
        )
    return manifest


def export_ladder(
    sources: Mapping[str, str | Path],
    out_dir: str | Path,
    *,
    default_rate: str | None = None,
    local: str = DEFAULT_LOCAL,
    local_probes: Mapping[str, str | Path] | None = None,
    task: str | None = None,
    check: bool = True,
) -> Manifest:
    """A ladder bundle: several rates (rate name -> an entropy student's run directory, or a
    bundle already exported from one) sharing the teacher, the split, offload and local.
    Runs are exported first (:func:`export_run`, into a scratch folder beside ``out_dir``
    that is removed after), then :func:`splitdnn.bundle.write_ladder` puts the rates
    together; ``default_rate`` (default: the first) is what a request without ``rate=``
    gets. Figures: ``splitdnn evaluate OUT --record`` on held-out images, per rate."""
    import shutil
    import tempfile

    if not sources:
        raise ExportError("a ladder needs at least one rate")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir} is not an empty folder; a ladder is written into a new one")
    if default_rate is not None and default_rate not in sources:
        raise ExportError(f"default rate {default_rate!r} is not one of {list(sources)}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-rates-", dir=out_dir.parent))
    try:
        bundles: dict[str, Path] = {}
        for rate, source in sources.items():
            source = Path(source)
            if (source / MANIFEST).is_file():
                bundles[rate] = source
                continue
            bundles[rate] = scratch / rate
            export_run(
                source,
                bundles[rate],
                local=local,
                local_probes=local_probes,
                task=task,
                check=check,
            )
        origin = {rate: {"source": str(path)} for rate, path in sources.items()}
        return write_ladder(out_dir, bundles, default_rate or next(iter(sources)), origin)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def export_ladder_assets(
    assets_dir: str | Path, out_dir: str | Path, *, check: bool = True
) -> Manifest:
    """The ladder of committed rate assets (``assets_dir/ladder.json`` names the rates, each a
    folder of ``splitdnn export assets``, and the default): built with :func:`export_ladder`,
    and the figures measured on a ladder of the same id recorded into its manifest, so auto
    weighs the rates without measuring again. Figures measured on another id are not copied
    (a warning says how to measure them)."""
    assets_dir = Path(assets_dir)
    ladder = read_ladder_assets(assets_dir)
    sources = {rate: assets_dir / rate for rate in ladder.rates}
    manifest = export_ladder(sources, out_dir, default_rate=ladder.default_rate, check=check)
    if ladder.figures and ladder.measured_on != manifest.bundle_id:
        warnings.warn(
            f"{assets_dir}/{LADDER_FILE}'s figures were measured on bundle {ladder.measured_on}, "
            f"not {manifest.bundle_id}: not recorded (measure: splitdnn evaluate {out_dir} "
            "--data DIR --split val --record per task, then splitdnn export ladder-figures)",
            stacklevel=2,
        )
        return manifest
    for rate, figures in ladder.figures.items():
        for task, accuracy in figures.accuracy.items():
            manifest = record_rate_accuracy(
                out_dir, rate, task, accuracy, figures.median_bytes[task]
            )
    return manifest


def keep_ladder_figures(bundle_dir: str | Path, assets_dir: str | Path) -> Path:
    """A recorded ladder bundle's order, default rate and per-rate figures as
    ``assets_dir/ladder.json`` beside the rates' assets (one folder per rate, by name), so
    :func:`export_ladder_assets` rebuilds the same bundle with its figures."""
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    if not m.rates or m.default_rate is None:
        raise ExportError(f"{bundle_dir} is not a ladder bundle (no rates)")
    missing = [r for r in m.rates if not (Path(assets_dir) / r).is_dir()]
    if missing:
        raise ExportError(
            f"{assets_dir} has no assets for rates {missing}: write each with "
            "`splitdnn export assets RUN --out ASSETS/RATE`"
        )
    ladder = LadderAssets(
        rates=list(m.rates),
        default_rate=m.default_rate,
        measured_on=m.bundle_id,
        figures={
            rate: RateFigures(accuracy=spec.accuracy, median_bytes=spec.median_bytes)
            for rate, spec in m.rates.items()
            if spec.accuracy
        },
    )
    return write_ladder_assets(assets_dir, ladder)


# --- a whole student's assets (method kd, labels or classes) ----------------------------------


def export_kd_assets(run_dir: str | Path, out_dir: str | Path) -> Path:
    """A whole student's run as assets to commit or move (written by
    :func:`splitdnn.checkpoints.save_kd_assets`): its config's paths relative to ``out_dir``,
    and the teacher probe the run fitted itself (or took from ``kd.teacher_run``) copied
    beside, so ``splitdnn evaluate`` of the assets needs no run directory. A probe the config
    names (``teacher.probe_from``) stays a path. Returns the JSON's path."""
    from splitdnn.checkpoints import read_kd_student, save_kd_assets
    from splitdnn.distill.config import parse_config, portable_config
    from splitdnn.distill.kd import teacher_probe_candidates

    payload = read_kd_student(run_dir)
    config = parse_config(payload["config"], base_dir=Path(run_dir))
    used = next((p for p in teacher_probe_candidates(config, Path(run_dir)) if p.is_file()), None)
    probe = None
    if used is not None and used != config.teacher.probe_from:
        probe = load_linear(used).state_dict()
    payload = {**payload, "config": portable_config(config, Path(out_dir))}
    return save_kd_assets(payload, out_dir, teacher_probe=probe)


# --- an application-specific student as the local model (method: classes) --------------------


class GroupedHead(nn.Module):
    """A classifier over the data set's classes -> the log of its softmax summed per group
    (the classes of interest, then "other"): the teacher's answer to an application task,
    so split and offload mode serve the same task as the application-specific local model."""

    def __init__(self, classifier: nn.Module, groups: torch.Tensor) -> None:
        super().__init__()
        self.classifier = classifier
        matrix = nn.functional.one_hot(groups.long(), int(groups.max()) + 1).float()
        self.register_buffer("matrix", matrix)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.classifier(z), dim=1) @ self.matrix
        return torch.log(probs.clamp_min(1e-30))


def export_classes(
    source: str | Path,
    out_dir: str | Path,
    *,
    split_from: str | Path = DEFAULT_ASSETS,
    task: str | None = None,
    name: str | None = None,
    check: bool = True,
) -> Manifest:
    """A bundle whose local model is an application-specific student (``method: classes``;
    its run directory or committed assets) for the task ``task`` (default: the split student's
    task + ``-<number of classes>``, e.g. ``caltech101-5``), with split and offload mode from
    ``split_from`` (a run or default assets: the split student and the teacher with its probe)
    for every task: ImageNet, the full data set's task and the application task (the teacher's
    probabilities grouped the same way, :class:`GroupedHead`)."""
    from splitdnn.checkpoints import read_kd_student
    from splitdnn.distill.classes import class_groups
    from splitdnn.distill.kd import whole_student
    from splitdnn.models import get_teacher
    from splitdnn.students import get_kd_student

    payload = read_kd_student(source)
    if payload.get("method") != "classes" or "of_interest" not in payload:
        raise ExportError(f"{source} is not an application-specific student (method: classes)")
    checkpoint = read_student(split_from)
    data_classes = list(payload["data_classes"])
    if checkpoint.probe is None or list(checkpoint.classes or []) != data_classes:
        raise ExportError(
            f"{split_from}: its teacher probe does not answer the student's {len(data_classes)} "
            "data set classes, so it cannot serve the application task in split mode"
        )
    task = task or f"{checkpoint.task}-{len(payload['of_interest'])}"
    parts = assemble(checkpoint, name=name or f"{task}-{Path(source).name}")
    if task in parts.labels:
        raise ExportError(f"task {task!r} is already a task of {split_from}; pick another --task")
    groups = class_groups(len(data_classes), list(payload["of_interest"]))
    assert checkpoint.task is not None  # a probe comes with its task
    parts.classifiers[task] = GroupedHead(parts.classifiers[checkpoint.task], groups)
    parts.labels[task] = list(payload["classes"])
    parts.preferred_task = task  # what its local model answers: its users' own photos
    pool, prefix, head = whole_student(payload)
    spec = get_kd_student(payload["student_name"])
    parts.local = get_teacher(spec.base)
    parts.local_backbone = nn.Sequential(pool, prefix, head.rest)
    parts.local_classifiers = {task: head.classifier}
    parts.metrics["local_student"] = {
        "name": spec.name,
        "input_size": parts.local.input_size // spec.downsample,
        "classes": list(payload["classes"]),
        "macs": count_macs(nn.Sequential(pool, prefix, head), parts.local.input_shape),
        "params": count_params(nn.Sequential(pool, prefix, head)),
        "validation": payload.get("metrics"),
    }
    return export_bundle(parts, out_dir, check=check)
