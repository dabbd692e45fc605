"""Application-specific distillation (``method: classes``): Distill-Net.

Motamedi et al. ("Distill-Net: Application-Specific Distillation of Deep Convolutional Neural
Networks for Resource-Constrained IoT Platforms") distil a teacher that knows many classes into
a small student that answers only the few classes an application cares about, plus "other".
Here the student outputs the ``classes.names`` of the data set plus ``classes.other``; its soft
targets are the teacher's probabilities on those classes, and for "other" the teacher's
remaining probability mass (:func:`grouped_probs`), softened by ``kd.temperature`` after
grouping (:func:`grouped_logits`); its labels are the image's class if it is one of interest,
else "other". The loss is :func:`~splitdnn.distill.losses.kd_loss` (``kd.alpha`` weighs the
soft targets).

Everything else is :mod:`.kd`'s whole-student distillation: an ImageNet-pretrained student
(``kd.student``, e.g. ``efficientnet_lite0_112_tail``: EfficientNet-Lite0 on a 2x2
average-pooled crop, a quarter of the local model's MACs) frozen up to a cut whose activations
are cached, the rest fine-tuned, the classifier started from a linear probe on the frozen
features (for the grouped labels), the same teacher (Lite2 + Caltech-101 probe) and caches.

Scores (:func:`grouped_scores`, also used for a general student's or the teacher's
101-way answers, their argmax mapped to class-or-other): accuracy on the images of the
classes of interest, and the recall of "other" (images of the other classes answered
"other").
"""

from __future__ import annotations

from typing import Any

import torch

from splitdnn.distill.config import ClassesConfig, DistillConfig, classes_of_interest
from splitdnn.distill.kd import WholeStudentDistillation
from splitdnn.errors import ConfigError
from splitdnn.stats import proportion_ci


def class_groups(num_classes: int, of_interest: list[int]) -> torch.Tensor:
    """For every data set label, the student's output index: its position among the classes
    of interest, or ``len(of_interest)`` ("other")."""
    groups = torch.full((num_classes,), len(of_interest), dtype=torch.long)
    for position, label in enumerate(of_interest):
        groups[label] = position
    return groups


def grouped_probs(logits: torch.Tensor, groups: torch.Tensor, temperature: float = 1.0):
    """Softmax of ``logits / temperature`` over the data set's classes, summed per group:
    (N, C) -> (N, K + 1), the classes of interest and "other" (the remaining mass)."""
    probs = torch.softmax(logits / temperature, dim=1)
    out = torch.zeros(len(logits), int(groups.max()) + 1, dtype=probs.dtype)
    return out.index_add_(1, groups, probs)


def grouped_logits(logits: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """The grouped teacher's logits: ``log p`` of :func:`grouped_probs` (at temperature 1), so
    their softmax is the grouped teacher and :func:`~.losses.kd_loss` softens them by ``T``.

    Grouping comes before softening on purpose: softening 101 logits first (at T = 4) spreads
    so much mass over the 96 other classes that "other" outweighs the true class even for an
    image the teacher is sure of (measured: a student trained so answered "other" for all
    124 held-out images of the classes of interest after one epoch)."""
    probs = grouped_probs(logits, groups)
    return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))


def _rate(hits: int, n: int) -> dict[str, Any]:
    """A percentage with its 95 % Wilson interval and its count."""
    if n == 0:
        return {"percent": None, "ci95": None, "n": 0}
    return {"percent": 100.0 * hits / n, "ci95": list(proportion_ci(hits, n)), "n": n}


def grouped_scores(predicted: torch.Tensor, labels: torch.Tensor, other: int) -> dict[str, Any]:
    """Scores of grouped answers (``predicted``, ``labels``: output indices, ``other`` the
    index of "other"): ``classes_accuracy`` (images of the classes of interest answered with
    their class), ``other_recall`` (images of other classes answered "other"),
    ``other_precision`` and the overall accuracy, each with its 95 % interval and count."""
    predicted, labels = predicted.long(), labels.long()
    interest = labels != other
    said_other = predicted == other
    return {
        "classes_accuracy": _rate(int((predicted == labels)[interest].sum()), int(interest.sum())),
        "other_recall": _rate(int(said_other[~interest].sum()), int((~interest).sum())),
        "other_precision": _rate(int((~interest)[said_other].sum()), int(said_other.sum())),
        "accuracy": _rate(int((predicted == labels).sum()), len(labels)),
    }


class ClassDistillation(WholeStudentDistillation):
    """Runs one ``method: classes`` config: a whole student for the classes of interest and
    "other", distilled from the teacher's grouped soft targets. ``best.pt`` is a kd-student
    checkpoint whose ``classes`` are the student's outputs (the classes of interest, then
    "other")."""

    methods = ("classes",)
    score_key = "val_classes_accuracy"

    def __init__(self, config: DistillConfig, run_dir, progress: bool = True, **kwargs) -> None:
        super().__init__(config, run_dir, progress, **kwargs)
        if config.classes is None:  # the config refuses this; a guard for direct callers
            raise ConfigError("method: classes needs a classes section")
        self.classes_config: ClassesConfig = config.classes

    # -- the grouping (the hooks of WholeStudentDistillation) -----------------------------------

    @property
    def groups(self) -> torch.Tensor:
        """Data set label -> output index (the classes of interest, then "other")."""
        if not hasattr(self, "_groups"):
            self.of_interest = classes_of_interest(self.classes_config, self.classes)
            self._groups = class_groups(len(self.classes), self.of_interest)
        return self._groups

    def output_classes(self) -> list[str]:
        self.groups  # noqa: B018 -- resolves (and checks) the names
        return [self.classes[i] for i in self.of_interest] + [self.classes_config.other]

    def task_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return self.groups[labels]

    def task_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return grouped_logits(logits, self.groups)

    # -- scoring --------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, Any]:
        logits = self.val_logits()
        other = len(self.of_interest)
        record: dict[str, Any] = {"images": len(self.val_labels)}
        scores = grouped_scores(logits.argmax(1), self.val_labels, other)
        for key, value in scores.items():
            record[f"val_{key}"] = value["percent"]
        record["val_classes_images"] = scores["classes_accuracy"]["n"]
        if self.teacher_raw is not None:
            teacher = self.groups[self.teacher_raw["val_pooled"].argmax(1)]
            for key, value in grouped_scores(teacher, self.val_labels, other).items():
                record[f"teacher_{key}"] = value["percent"]
        return record

    def describe(self, record: dict[str, Any]) -> str:
        return (
            f"classes {record['val_classes_accuracy']:.2f} other recall "
            f"{record['val_other_recall']:.2f}"
        )

    def best_payload(self, record: dict[str, Any]) -> dict[str, Any]:
        payload = super().best_payload(record)
        payload["of_interest"] = list(self.of_interest)
        payload["data_classes"] = list(self.classes)
        return payload
