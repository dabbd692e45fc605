"""Accuracy of a teacher and its mimic on the same images: one row of the papers' Table 3."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


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


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum())


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
