"""Accuracy figures shared by training and evaluation: top-k hits and top-1 agreement.

The trainers score every epoch with these and ``splitdnn evaluate`` scores runs and bundles
with the same code, so a figure in ``metrics.jsonl`` and one in an evaluation report mean
the same thing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


def topk_indices(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of each row's ``k`` largest logits (fewer when there are fewer classes)."""
    return logits.topk(min(k, logits.shape[1]), dim=1).indices


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    """How many rows have their label among the ``k`` largest logits."""
    return int((topk_indices(logits, k) == labels[:, None]).any(dim=1).sum())


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent (0 for no rows)."""
    return 100.0 * topk_hits(logits, labels, 1) / len(labels) if len(labels) else 0.0


@dataclass
class Agreement:
    """Top-1/top-5 of teacher and mimic (percent) and how often their top-1 agree."""

    images: int
    teacher_top1: float
    teacher_top5: float
    mimic_top1: float
    mimic_top5: float
    top1_agreement: float

    def to_dict(self) -> dict:
        return asdict(self)


class AgreementMeter:
    """Accumulates batches of teacher and mimic logits against labels."""

    def __init__(self) -> None:
        self.n = 0
        self.hits = {"t1": 0, "t5": 0, "m1": 0, "m5": 0, "agree": 0}

    def update(self, teacher: torch.Tensor, mimic: torch.Tensor, labels: torch.Tensor) -> None:
        self.n += labels.shape[0]
        self.hits["t1"] += topk_hits(teacher, labels, 1)
        self.hits["t5"] += topk_hits(teacher, labels, 5)
        self.hits["m1"] += topk_hits(mimic, labels, 1)
        self.hits["m5"] += topk_hits(mimic, labels, 5)
        self.hits["agree"] += int((teacher.argmax(1) == mimic.argmax(1)).sum())

    def result(self) -> Agreement:
        pct = {k: 100.0 * v / max(self.n, 1) for k, v in self.hits.items()}
        return Agreement(self.n, pct["t1"], pct["t5"], pct["m1"], pct["m5"], pct["agree"])
