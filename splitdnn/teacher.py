"""The frozen teacher as trainers, probes, evaluation and export use it.

A teacher is cut twice: at the split point (``head`` | rest) and before its final linear layer
(``features`` | ``classifier``), so the same object gives the head's output (the distillation
target), the pooled features (what a probe and the generalised loss see) and the logits. Inputs
are normalised by :func:`normalise_batch`, which calls the one normalisation in
:mod:`splitdnn.imaging`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from splitdnn.imaging import Preprocessing, normalise_pixels
from splitdnn.models import TeacherSpec, build_teacher, get_teacher
from splitdnn.split import split_model


def normalise_batch(crops: np.ndarray | torch.Tensor, spec: Preprocessing) -> torch.Tensor:
    """uint8 NHWC crops -> float32 NCHW, normalised as the services do, in channels-last
    memory (depthwise and 1x1 convs run ~1.5-2x faster on CPU in that layout)."""
    pixels = crops.numpy() if isinstance(crops, torch.Tensor) else np.asarray(crops)
    x = torch.from_numpy(normalise_pixels(pixels, spec))
    return x.contiguous(memory_format=torch.channels_last)


def freeze(module: nn.Module) -> nn.Module:
    """No gradients, eval mode (batch-norm statistics kept), channels-last memory."""
    module.requires_grad_(False)
    module.to(memory_format=torch.channels_last)
    return module.eval()


class TeacherParts(nn.Module):
    """The frozen teacher cut twice: ``head`` (to the split), ``features`` (rest of the tail
    up to the pooled features) and ``classifier`` (the final linear layer or a probe).

    ``model`` is modified in place (its classifier becomes an identity); pass a fresh one.
    """

    def __init__(self, spec: TeacherSpec, model: nn.Module, split_module: str) -> None:
        super().__init__()
        self.classifier = model.get_submodule(spec.classifier)
        model.set_submodule(spec.classifier, nn.Identity())
        cut = split_model(model, split_module)
        self.head, self.features = cut.head, cut.tail
        freeze(self)

    @property
    def num_features(self) -> int:
        return self.classifier.in_features  # type: ignore[return-value]

    def tail(self, head_output: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(head_output))


def teacher_parts(
    name: str, pretrained: bool, split_module: str, weights: str | Path | None = None
) -> tuple[nn.Module, TeacherParts]:
    """A freshly built teacher and its :class:`TeacherParts`. The model (classifier replaced
    by an identity) is returned too: MAC counts are taken on the original modules.
    ``weights``: the user's own state dict instead of the published weights."""
    spec = get_teacher(name)
    model = build_teacher(name, pretrained, weights)
    return model, TeacherParts(spec, model, split_module)


def frozen_backbone(
    name: str, pretrained: bool, cut: str | None, weights: str | Path | None = None
) -> tuple[nn.Module, nn.Module]:
    """A teacher up to its pooled features as (prefix up to ``cut``, the rest); both frozen.
    Without ``cut`` the prefix is an identity."""
    spec = get_teacher(name)
    model = build_teacher(name, pretrained, weights)
    model.set_submodule(spec.classifier, nn.Identity())
    if cut is None:
        prefix, rest = nn.Identity(), model
    else:
        halves = split_model(model, cut)
        prefix, rest = halves.head, halves.tail
    return freeze(prefix), freeze(rest)
