"""Distillation losses, each with its formula and paper.

* :func:`sse` — head network distillation (Matsubara et al., "Distilled Split Deep Neural
  Networks for Edge-Assisted Real-Time Systems", 2019, Eq. 1):
  ``SSE(X) = Σ_x ||t(x) − s(x)||²`` between the frozen teacher head and the student head.
  Returned per sample (divided by the batch size) so the figure does not depend on it;
  Adam is invariant to that constant.
* :func:`kd_loss` — knowledge distillation (Hinton, Vinyals, Dean, "Distilling the Knowledge
  in a Neural Network", 2015): ``α T² KL(softmax(t/T) || softmax(s/T)) + (1 − α) CE(s, y)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors per sample, averaged over the batch."""
    return (student - teacher).pow(2).sum() / student.shape[0]


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """Hinton's soft-target loss, mixed with cross-entropy on the labels when given."""
    soft = (
        F.kl_div(
            F.log_softmax(student_logits / temperature, dim=1),
            F.softmax(teacher_logits / temperature, dim=1),
            reduction="batchmean",
        )
        * temperature**2
    )
    if labels is None or alpha >= 1.0:
        return soft
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)
