"""What a bundle is made of, as torch modules: one assembly from a student checkpoint.

A run directory (``best.pt``) and the committed default assets both read into a
:class:`~splitdnn.checkpoints.StudentCheckpoint`; :func:`assemble` turns either into
:class:`BundleParts`: the student, the frozen teacher cut at the split, one classifier per
task (the teacher's own ImageNet head, plus the run's probe task) and the device-only model
of local mode (its own ImageNet head plus probes for other tasks).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from splitdnn.checkpoints import DEFAULT_LOCAL, StudentCheckpoint, linear_from_state
from splitdnn.errors import CheckpointError, ExportError
from splitdnn.labels import imagenet_labels
from splitdnn.models import TeacherSpec, build_teacher, get_teacher
from splitdnn.models.weights import weights_digest
from splitdnn.students import BottleneckStudent
from splitdnn.teacher import teacher_parts


@dataclass
class BundleParts:
    """Everything a bundle is made of, as torch modules in eval mode.

    ``classifiers`` act on the teacher's pooled features, ``local_classifiers`` on the local
    model's; both map task name -> linear layer. ``labels`` has every task of the bundle.
    """

    name: str
    teacher: TeacherSpec
    split_module: str
    student: BottleneckStudent
    teacher_model: nn.Module  # the whole teacher (its classifier replaced), for MAC counts
    teacher_head: nn.Module
    teacher_features: nn.Module
    classifiers: dict[str, nn.Module]
    labels: dict[str, list[str]]
    local: TeacherSpec
    local_backbone: nn.Module
    local_classifiers: dict[str, nn.Module]
    metrics: dict[str, Any] = field(default_factory=dict)
    preferred_task: str | None = None

    @property
    def default_task(self) -> str:
        """What a request without ``task`` gets: ``preferred_task`` (a user's run: its own
        task, as its users send photos of its classes), else ImageNet when the bundle has it."""
        if self.preferred_task in self.labels:
            return self.preferred_task
        return "imagenet" if "imagenet" in self.labels else next(iter(self.labels))


def local_parts(
    name: str,
    probes: Mapping[str, nn.Module] | None = None,
    weights: Path | None = None,
) -> tuple[TeacherSpec, nn.Module, dict[str, nn.Module]]:
    """A device-only model as (spec, backbone, classifiers per task): its published weights,
    or the user's state dict ``weights``.

    Its own classifier is the ``imagenet`` task; ``probes`` add other tasks on its features.
    """
    spec = get_teacher(name)
    model = build_teacher(spec.name, True, weights)
    own = model.get_submodule(spec.classifier)
    model.set_submodule(spec.classifier, nn.Identity())
    classifiers: dict[str, nn.Module] = {"imagenet": own} if spec.num_classes == 1000 else {}
    classifiers.update(probes or {})
    return spec, model.eval(), classifiers


def assemble(
    checkpoint: StudentCheckpoint,
    *,
    name: str,
    local: str | None = None,
    local_probes: Mapping[str, nn.Module] | None = None,
    default_task: str | None = None,
) -> BundleParts:
    """:class:`BundleParts` of a student checkpoint. ``local`` (default: the checkpoint's,
    else EfficientNet-Lite0) is the device-only model; ``local_probes`` (task -> linear layer)
    add tasks to it, on top of the checkpoint's own local probe (default assets carry one).
    ``default_task``: what a request without ``task`` gets (default: ImageNet, if there)."""
    spec = get_teacher(checkpoint.teacher)
    student = checkpoint.build_student()
    model, parts = teacher_parts(
        spec.name, checkpoint.pretrained, checkpoint.split_module, checkpoint.teacher_weights
    )
    classifiers: dict[str, nn.Module] = {}
    labels: dict[str, list[str]] = {}
    if spec.num_classes == 1000:
        classifiers["imagenet"], labels["imagenet"] = parts.classifier, list(imagenet_labels())
    if checkpoint.probe is not None and checkpoint.task and checkpoint.classes:
        classifiers[checkpoint.task] = linear_from_state(checkpoint.probe)
        labels[checkpoint.task] = list(checkpoint.classes)
    if not classifiers:
        raise CheckpointError(f"{spec.name} has neither an ImageNet head nor a probe to export")
    probes: dict[str, nn.Module] = {}
    if checkpoint.local_probe is not None and checkpoint.task:
        probes[checkpoint.task] = linear_from_state(checkpoint.local_probe)
    probes.update(local_probes or {})
    local_name = get_teacher(local or checkpoint.local or DEFAULT_LOCAL).name
    _refuse_the_runs_probe_elsewhere(checkpoint, local_name, probes)
    # The run's probes were fitted on its teacher's features: a local model of the teacher's
    # architecture is the teacher, with the user's own weights when the run had them.
    local_weights = checkpoint.teacher_weights if local_name == spec.name else None
    local_spec, backbone, local_classifiers = local_parts(local_name, probes, local_weights)
    metrics = _provenance(checkpoint)
    if local_weights is not None:
        metrics["local_weights"] = metrics["teacher_weights"]
    return BundleParts(
        name=name,
        teacher=spec,
        split_module=checkpoint.split_module,
        student=student,
        teacher_model=model,
        teacher_head=parts.head,
        teacher_features=parts.features,
        classifiers=classifiers,
        labels=labels,
        local=local_spec,
        local_backbone=backbone,
        local_classifiers=local_classifiers,
        metrics=metrics,
        preferred_task=default_task,
    )


def _refuse_the_runs_probe_elsewhere(
    checkpoint: StudentCheckpoint, local: str, probes: Mapping[str, nn.Module]
) -> None:
    """The run's own probe (``classifier.pt``) reads its teacher's features; on a local model
    of another architecture (EfficientNet-Lite0 and -Lite2 both have 1,280) it would answer
    without an error, and wrongly."""
    if checkpoint.probe is None or local == checkpoint.teacher:
        return
    weight = checkpoint.probe.get("weight")
    for task, probe in probes.items():
        same = isinstance(probe, nn.Linear) and weight is not None
        if same and probe.weight.shape == weight.shape and torch.equal(probe.weight, weight):
            raise ExportError(
                f"the local probe for {task!r} is the run's teacher probe, fitted on "
                f"{checkpoint.teacher}'s features, but the local model is {local}: pass "
                f"--local {checkpoint.teacher}, or fit a probe on {local}'s features with "
                f"`splitdnn probe CONFIG --teacher {local} --out FILE`"
            )


def _provenance(checkpoint: StudentCheckpoint) -> dict[str, Any]:
    """What the manifest's ``metrics`` say about where the bundle came from: the validation
    figures, and a user's own teacher weights (file and digest), which the teacher's name
    alone does not tell."""
    metrics: dict[str, Any] = {"validation": checkpoint.metrics} if checkpoint.metrics else {}
    weights = checkpoint.teacher_weights
    if weights is not None:
        metrics["teacher_weights"] = {"file": weights.name, "sha256_16": weights_digest(weights)}
    return metrics
