"""Bottleneck student heads: a small ``encoder`` that runs on the device and ends at the
bottleneck, and a ``decoder`` on the edge server that restores the teacher head's output.

The device/server boundary is the ``encode``/``decode`` method boundary, so exporting the
device part is exporting ``encoder`` and nothing else. ``forward`` is the same in training and
evaluation.

Two designs:

* :func:`paper_student` — the papers' student for DenseNet-169/201, ResNet-152 and
  Inception-v3 (Matsubara et al., 2019): 7×7/2 conv to 64, BN+ReLU, 3×3/2 max-pool, BN+ReLU,
  then a 2×2/2 conv (padding 1) to ``b`` channels — the bottleneck. The decoder is 2×2 convs
  with BN+ReLU that walk the bottleneck's grid to the teacher head's grid, then a 1×1 conv to
  its channels; ``imagenet`` is the wide variant, ``caltech101`` the narrow one.
* :func:`lite_student` — for EfficientNet-Lite. The 7×7 stem above costs 118 M MACs at 224 px,
  more than a whole Lite0 head up to its stride-16 stage, so it cannot be the device part of a
  Lite split. Instead the encoder is a narrow MobileNet-style stack (3×3/2 stem,
  depthwise-separable blocks down to stride 16) that ends with a 1×1 conv to a few channels,
  which keeps the bottleneck under 2 % of the input while spending at most a quarter of the
  teacher head's MACs (checked by tests). The decoder is two 3×3 convs and a 1×1 projection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from splitdnn.errors import UnknownNameError


class BottleneckStudent(nn.Module):
    """``decode(encode(x))`` approximates the teacher head; ``encode`` is the device part."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class MimicModel(nn.Module):
    """Student head + the teacher's own (frozen) tail: the assembled split model."""

    def __init__(self, student: nn.Module, tail: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.tail = tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.student(x))


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0):
    return [
        nn.Conv2d(cin, cout, kernel, stride, padding, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


# --- the papers' student ---------------------------------------------------------------------


@dataclass(frozen=True)
class PaperDesign:
    """Grid geometry of one teacher family's student. ``decoder`` lists (stride, padding) of
    the 2×2 convs that take the bottleneck grid to the teacher head's grid."""

    stem_padding: int
    pool_padding: int
    decoder: tuple[tuple[int, int], ...]
    head_channels: int


PAPER_DESIGNS = {
    # 224 -> 112 -> 56 -> 29 (bottleneck) -> 28 -> 27 -> 14 = 256x14x14 (transition2)
    "densenet": PaperDesign(3, 1, ((1, 0), (1, 0), (2, 1)), 256),
    # 224 -> 112 -> 56 -> 29 -> 28 -> 29 -> 28 = 512x28x28 (layer2)
    "resnet": PaperDesign(3, 1, ((1, 0), (1, 1), (1, 0)), 512),
    # 299 -> 147 -> 73 -> 37 -> 36 -> 35 = 192x35x35 (maxpool2, before Mixed_5b)
    "inception": PaperDesign(0, 0, ((1, 0), (1, 0)), 192),
}

_WIDTHS = {"caltech101": (64, 128, 256), "imagenet": (128, 256, 512)}


def paper_student(family: str, bottleneck: int, variant: str = "caltech101") -> BottleneckStudent:
    """The papers' bottleneck student for a DenseNet, ResNet or Inception teacher."""
    if family not in PAPER_DESIGNS:
        raise UnknownNameError(f"no paper student for {family!r}; known: {sorted(PAPER_DESIGNS)}")
    if variant not in _WIDTHS:
        raise UnknownNameError(f"unknown variant {variant!r}; known: {sorted(_WIDTHS)}")
    design = PAPER_DESIGNS[family]
    encoder = nn.Sequential(
        *_conv_bn_relu(3, 64, 7, 2, design.stem_padding)[:1],
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, design.pool_padding),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.Conv2d(64, bottleneck, 2, 2, 1, bias=False),
    )
    widths = _WIDTHS[variant]
    layers: list[nn.Module] = [nn.BatchNorm2d(bottleneck), nn.ReLU(inplace=True)]
    channels = bottleneck
    for i, (stride, padding) in enumerate(design.decoder):
        width = widths[min(i, len(widths) - 1)]
        layers += _conv_bn_relu(channels, width, 2, stride, padding)
        channels = width
    layers.append(nn.Conv2d(channels, design.head_channels, 1))
    return BottleneckStudent(encoder, nn.Sequential(*layers))


# --- the EfficientNet-Lite student ------------------------------------------------------------


def depthwise_separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    """MobileNet's block: 3×3 depthwise conv then 1×1 pointwise conv, each with BN+ReLU.

    Cheaper per useful MAC on a CPU than inverted residuals with expansion, which spend most
    of their MACs on wide 1×1 convs at high resolution.
    """
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


@dataclass(frozen=True)
class LiteDesign:
    """Encoder: 3×3/2 stem, then depthwise-separable blocks (out channels, stride); decoder:
    3×3 convs of ``decoder`` widths, then a 1×1 conv to the teacher head's channels."""

    stem: int
    blocks: tuple[tuple[int, int], ...]
    decoder: tuple[int, ...]
    head_channels: int


LITE_DESIGNS = {
    # Lite2 cut after _blocks.10 (88x17x17, 346.6 M MACs at 260 px): 83 M MACs on the device.
    "efficientnet_lite2": LiteDesign(
        stem=32,
        blocks=((64, 2), (128, 2), (128, 1), (192, 2), (192, 1), (192, 1)),
        decoder=(128, 256),
        head_channels=88,
    ),
    # Lite1 cut after _blocks.10 (80x15x15 at 240 px).
    "efficientnet_lite1": LiteDesign(
        stem=24,
        blocks=((48, 2), (96, 2), (96, 1), (160, 2), (160, 1)),
        decoder=(128, 192),
        head_channels=80,
    ),
    # Lite0 cut after _blocks.7 (80x14x14 at 224 px).
    "efficientnet_lite0": LiteDesign(
        stem=24,
        blocks=((48, 2), (96, 2), (96, 1), (160, 2)),
        decoder=(128, 192),
        head_channels=80,
    ),
}


def lite_student(teacher: str, bottleneck: int) -> BottleneckStudent:
    """The bottleneck student for an EfficientNet-Lite teacher (see the module docstring).

    The device part ends with BN+ReLU after the bottleneck conv: the tensor it sends is then
    non-negative and about half zeros, so 8-bit quantisation spends its levels on one sign
    and zstd shrinks the envelope further.
    """
    if teacher not in LITE_DESIGNS:
        raise UnknownNameError(f"no Lite student for {teacher!r}; known: {sorted(LITE_DESIGNS)}")
    design = LITE_DESIGNS[teacher]
    layers: list[nn.Module] = _conv_bn_relu(3, design.stem, 3, 2, 1)
    channels = design.stem
    for cout, stride in design.blocks:
        layers.append(depthwise_separable(channels, cout, stride))
        channels = cout
    layers += _conv_bn_relu(channels, bottleneck, 1)
    encoder = nn.Sequential(*layers)

    decoder: list[nn.Module] = []
    channels = bottleneck
    for width in design.decoder:
        decoder += _conv_bn_relu(channels, width, 3, 1, 1)
        channels = width
    decoder.append(nn.Conv2d(channels, design.head_channels, 1))
    return BottleneckStudent(encoder, nn.Sequential(*decoder))


# --- one entry point ---------------------------------------------------------------------------


def build_student(teacher: str, bottleneck: int, variant: str = "caltech101") -> BottleneckStudent:
    """The registered bottleneck student for ``teacher`` with ``bottleneck`` channels."""
    from splitdnn.models import get_teacher

    spec = get_teacher(teacher)
    if spec.family == "efficientnet_lite":
        return lite_student(teacher, bottleneck)
    return paper_student(spec.family, bottleneck, variant)


def student_split(teacher: str) -> str:
    """The teacher module the student replaces everything up to (from the teacher spec)."""
    from splitdnn.models import get_teacher

    return get_teacher(teacher).student_split


__all__: Sequence[str] = [
    "BottleneckStudent",
    "MimicModel",
    "build_student",
    "lite_student",
    "paper_student",
    "student_split",
]
