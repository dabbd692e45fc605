"""Bottleneck students (head network distillation): a small ``encoder`` that runs on the
device and ends at the bottleneck, and a ``decoder`` on the edge server that restores the
teacher head's output; and their entropy-coded form (:class:`EntropyStudent`).

The device/server boundary is the ``encode``/``decode`` method boundary, so exporting the
device part is exporting ``encoder`` and nothing else. ``forward`` is the same in training and
evaluation.

Four designs, one entry point (:func:`build_student`):

* :func:`paper_student` — the papers' student for DenseNet-169/201, ResNet-152 and
  Inception-v3 (Matsubara et al., 2019): 7×7/2 conv to 64, BN+ReLU, 3×3/2 max-pool, BN+ReLU,
  then a 2×2/2 conv (padding 1) to ``b`` channels — the bottleneck. The decoder is 2×2 convs
  with BN+ReLU that walk the bottleneck's grid to the teacher head's grid, then a 1×1 conv to
  its channels; ``wide`` and ``narrow`` variants (first named ``imagenet`` and ``caltech101``).
* :func:`lite_student` — for EfficientNet-Lite. The 7×7 stem above costs 118 M MACs at 224 px,
  more than a whole Lite0 head up to its stride-16 stage, so it cannot be the device part of a
  Lite split. Instead the encoder is a narrow MobileNet-style stack (3×3/2 stem,
  depthwise-separable blocks down to stride 16) that ends with a 1×1 conv to a few channels,
  which keeps the bottleneck under 2 % of the input while spending at most a quarter of the
  teacher head's MACs (checked by tests). The decoder is two 3×3 convs and a 1×1 projection.
* :func:`teacher_init_student` (variant ``teacher_init``, EfficientNet-Lite2) — the device
  part *starts with the teacher's own first blocks*, frozen: ImageNet-trained features cost
  the device nothing it would not spend on a scratch stem, and cannot over-fit a small data
  set. A short depthwise-separable compressor takes them to the bottleneck. The decoder ends
  with trainable copies of the teacher's last head blocks, so it only has to restore their
  input. The frozen prefix is deterministic, so the trainer runs it once per image.
* :func:`scaled_student` — any other split point the profile lists (any teacher, any
  cut): the Lite student's recipe sized from the shapes at that point. The encoder halves the
  grid with a 3×3/2 stem and depthwise-separable blocks until it is the split's grid or the
  nearest above (at most stride 32), the decoder widens the bottleneck with 3×3 convs, meets
  the split's grid exactly (a valid conv or a transposed conv: no resampling, ONNX-friendly)
  and ends with a 1×1 conv to the split's channels.

The designs above are kept where they exist (the papers' and the tuned Lite ones at each
teacher's ``student_split``); :func:`student_problem` says why a point cannot have a student.
``teacher_init`` away from its registered design is derived from the teacher's own split
points (:func:`teacher_init_design`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from splitdnn.errors import UnknownNameError
from splitdnn.models import get_teacher
from splitdnn.models.weights import build_teacher
from splitdnn.split import output_shapes, split_model
from splitdnn.split import runs_in_sequence as split_runs_in_sequence

VARIANTS = ("narrow", "wide", "teacher_init")
#: The first names of ``narrow`` and ``wide`` (they named the papers' data sets, and collided
#: with task names); accepted wherever a variant is read, stored as the new ones.
VARIANT_ALIASES = {"caltech101": "narrow", "imagenet": "wide"}

#: The student design a config or ``splitdnn student`` gets when it names none, where the
#: teacher has one (:func:`default_variant`): the Lite student that starts from the
#: teacher's own layers, as in the committed default bundle.
DEFAULT_VARIANT = "teacher_init"
#: ... and for the other teachers: the papers' narrow student.
FALLBACK_VARIANT = "narrow"


def canonical_variant(variant: str) -> str:
    """``variant`` under its current name (``caltech101`` -> ``narrow``, ``imagenet`` ->
    ``wide``); any other name unchanged."""
    return VARIANT_ALIASES.get(variant, variant)


class BottleneckStudent(nn.Module):
    """``decode(encode(x))`` approximates the teacher head; ``encode`` is the device part.

    ``frozen_layers`` leading layers of ``encoder`` (an ``nn.Sequential`` then) are taken from
    the teacher and never trained: no gradients, batch-norm statistics kept in eval mode.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, frozen_layers: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.frozen_layers = frozen_layers
        for p in self.frozen().parameters():
            p.requires_grad_(False)

    def frozen(self) -> nn.Module:
        """The frozen device prefix (an empty ``nn.Sequential`` when there is none)."""
        if not self.frozen_layers:
            return nn.Sequential()
        return self.encoder[: self.frozen_layers]  # type: ignore[index]

    def train(self, mode: bool = True) -> BottleneckStudent:
        super().train(mode)
        self.frozen().eval()
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward_from_frozen(self, prefix_output: torch.Tensor) -> torch.Tensor:
        """The trainable part only: ``forward(x) == forward_from_frozen(frozen()(x))``."""
        z = self.encoder[self.frozen_layers :](prefix_output)  # type: ignore[index]
        return self.decode(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def device_part(self) -> nn.Module:
        """The module the device runs (what ``encode`` computes), for export."""
        return self.encoder

    def server_part(self) -> nn.Module:
        """The module the edge runs on what the device sent (what ``decode`` computes)."""
        return self.decoder


class ChannelScale(nn.Module):
    """Multiplies each channel by a fixed factor: the entropy student's gain (or its
    inverse) in an exported part."""

    def __init__(self, factors: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("factors", factors.detach().clone().view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factors


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

_WIDTHS = {"narrow": (64, 128, 256), "wide": (128, 256, 512)}


def paper_student(family: str, bottleneck: int, variant: str = "narrow") -> BottleneckStudent:
    """The papers' bottleneck student for a DenseNet, ResNet or Inception teacher."""
    variant = canonical_variant(variant)
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
    encoder = _conv_bn_relu(3, design.stem, 3, 2, 1)
    encoder += _separable_to_bottleneck(design.stem, design.blocks, bottleneck)
    decoder, channels = _decoder_convs(bottleneck, design.decoder)
    decoder.append(nn.Conv2d(channels, design.head_channels, 1))
    return BottleneckStudent(nn.Sequential(*encoder), nn.Sequential(*decoder))


def _separable_to_bottleneck(
    channels: int, blocks: tuple[tuple[int, int], ...], bottleneck: int
) -> list[nn.Module]:
    """Depthwise-separable blocks (out channels, stride), then a 1×1 conv + BN + ReLU to the
    bottleneck: the end of every Lite student's device part."""
    layers: list[nn.Module] = []
    for cout, stride in blocks:
        layers.append(depthwise_separable(channels, cout, stride))
        channels = cout
    return layers + _conv_bn_relu(channels, bottleneck, 1)


def _decoder_convs(bottleneck: int, widths: tuple[int, ...]) -> tuple[list[nn.Module], int]:
    """3×3 conv + BN + ReLU layers of ``widths`` from the bottleneck, and their last width."""
    layers: list[nn.Module] = []
    channels = bottleneck
    for width in widths:
        layers += _conv_bn_relu(channels, width, 3, 1, 1)
        channels = width
    return layers, channels


# --- the teacher-initialised EfficientNet-Lite student ----------------------------------------


@dataclass(frozen=True)
class TeacherInitDesign:
    """``prefix``: the teacher module the frozen device prefix ends after; ``blocks``:
    depthwise-separable (out channels, stride) from there to the bottleneck grid; ``decoder``:
    3×3 conv widths, then a 1×1 conv + BN to ``suffix_channels``; ``suffix``: teacher modules
    copied (trainable) after it, ending at the split."""

    prefix: str
    prefix_channels: int
    blocks: tuple[tuple[int, int], ...]
    decoder: tuple[int, ...]
    suffix_channels: int
    suffix: tuple[str, ...]


TEACHER_INIT_DESIGNS = {
    # Lite2 at 260 px: stem + _blocks.0-1 are 67.5 M MACs (24x65x65); the compressor adds
    # ~15 M, so the device spends ~82 M of the 346.6 M-MAC head (≤ 25 %). The decoder restores
    # _blocks.7's output (88x17x17) for copies of _blocks.8-10.
    "efficientnet_lite2": TeacherInitDesign(
        prefix="_blocks.1",
        prefix_channels=24,
        blocks=((96, 2), (128, 2), (192, 1)),
        decoder=(128, 128),
        suffix_channels=88,
        suffix=("_blocks.8", "_blocks.9", "_blocks.10"),
    ),
}


#: Compressor widths of a derived teacher_init design, one per halving of the grid.
_INIT_COMPRESSOR = (96, 128, 192, 256, 256)
#: At most this many teacher blocks end a derived teacher_init decoder.
_INIT_SUFFIX = 3


def teacher_init_design(teacher: str, split_module: str) -> TeacherInitDesign | str:
    """The ``teacher_init`` design at a split point: the registered one, else one derived from
    the teacher's split points and their shapes, or the reason there is none.

    Derived: the frozen device prefix ends at the last split point at stride 4 or less; the
    decoder ends with copies of up to three teacher blocks before the split that keep its
    shape and run in sequence (Lite2 at ``_blocks.10``: ``_blocks.8-10``); the compressor
    halves the prefix's grid to the split's.
    """
    spec = get_teacher(teacher)
    registered = TEACHER_INIT_DESIGNS.get(spec.name)
    if registered is not None and split_module == spec.student_split:
        return registered
    points = list(spec.split_points)
    shapes = _point_shapes(spec.name)
    target = shapes.get(split_module, ())
    if split_module not in points or len(target) != 3:
        return f"{split_module!r} outputs no single feature map"
    end = points.index(split_module)
    start = end
    while start > 0 and end - start < _INIT_SUFFIX and shapes.get(points[start - 1]) == target:
        start -= 1
    with torch.device("meta"):
        model = spec.build(False)
    while start < end and not split_runs_in_sequence(model, points[start : end + 1]):
        start += 1
    early = [
        p
        for p in points[:start]
        if len(shapes.get(p, ())) == 3 and shapes[p][1] * 4 >= spec.input_size
    ]
    if not early:
        return (
            f"no split point of {spec.name} before {points[start]!r} is at stride 4 or less, "
            "for the frozen device prefix to end at"
        )
    prefix = early[-1]
    channels, grid, grid_w = shapes[prefix]
    steps = 0
    while grid > target[1] and steps < len(_INIT_COMPRESSOR):
        grid, grid_w, steps = math.ceil(grid / 2), math.ceil(grid_w / 2), steps + 1
    if (grid, grid_w) != tuple(target[1:]):
        return (
            f"halving {spec.name}'s {shapes[prefix][1]}x{shapes[prefix][2]} grid at {prefix!r} "
            f"never gives the {target[1]}x{target[2]} grid at {split_module!r}"
        )
    widths = _INIT_COMPRESSOR[:steps] or _INIT_COMPRESSOR[:1]
    return TeacherInitDesign(
        prefix=prefix,
        prefix_channels=channels,
        blocks=(*((w, 2) for w in _INIT_COMPRESSOR[:steps]), (widths[-1], 1)),
        decoder=(128, 128),
        suffix_channels=target[0],
        suffix=tuple(points[start + 1 : end + 1]),
    )


def teacher_init_student(
    teacher: str,
    bottleneck: int,
    teacher_model: nn.Module | None = None,
    weights: str | Path | None = None,
    split_module: str | None = None,
) -> BottleneckStudent:
    """A student whose device prefix and decoder suffix start as the teacher's layers, at
    ``split_module`` (default: the teacher's ``student_split``; see :func:`teacher_init_design`).

    ``teacher_model`` supplies the weights (default: the registered pretrained teacher, or
    the state dict at ``weights``); the student holds copies, so training it never changes the
    teacher.
    """
    import copy

    split = split_module or get_teacher(teacher).student_split
    design = teacher_init_design(teacher, split)
    if isinstance(design, str):
        raise UnknownNameError(f"no teacher_init student for {teacher} at {split!r}: {design}")
    model = teacher_model if teacher_model is not None else build_teacher(teacher, True, weights)
    encoder: list[nn.Module] = [copy.deepcopy(split_model(model, design.prefix).head)]
    encoder += _separable_to_bottleneck(design.prefix_channels, design.blocks, bottleneck)
    decoder, channels = _decoder_convs(bottleneck, design.decoder)
    decoder += [
        nn.Conv2d(channels, design.suffix_channels, 1, bias=False),
        nn.BatchNorm2d(design.suffix_channels),
    ]
    decoder += [copy.deepcopy(model.get_submodule(name)) for name in design.suffix]
    student = BottleneckStudent(nn.Sequential(*encoder), nn.Sequential(*decoder), frozen_layers=1)
    return student.train()


# --- a student for any split point ------------------------------------------------------------

#: Channels of the scaled student's encoder after each halving of the grid (stem first).
_SCALED_ENCODER = (24, 48, 96, 160, 256)
_SCALED_DECODER = {"narrow": (128, 192), "wide": (192, 256)}
#: The deepest the encoder goes: stride 32 (a later split's grid is met in the decoder).
_MAX_HALVINGS = 5


@lru_cache(maxsize=32)
def _point_shapes(teacher: str) -> dict[str, tuple[int, ...]]:
    """(C, H, W) at every split point of ``teacher``: one forward pass of the teacher built on
    the meta device (no weights, no arithmetic)."""
    spec = get_teacher(teacher)
    with torch.device("meta"):
        model = spec.build(False)
    return output_shapes(model, list(spec.split_points), spec.input_shape)


def split_output_shape(teacher: str, split_module: str) -> tuple[int, ...]:
    """(C, H, W) of the teacher head's output at ``split_module`` (what a student there must
    restore); ``()`` for a point whose output is not one 4-D map or that is no split point."""
    return _point_shapes(teacher).get(split_module, ())


def student_problem(teacher: str, split_module: str, variant: str = "narrow") -> str | None:
    """Why ``teacher`` cannot have a ``variant`` student at ``split_module``, or None."""
    spec = get_teacher(teacher)
    variant = canonical_variant(variant)
    if split_module not in spec.split_points:
        return (
            f"{split_module!r} is not a split point of {spec.name}; choose one of "
            f"{', '.join(spec.split_points)} (`splitdnn profile {spec.name}`)"
        )
    if variant not in VARIANTS:
        return f"unknown student variant {variant!r}; known: {', '.join(VARIANTS)}"
    shape = split_output_shape(spec.name, split_module)
    if len(shape) != 3:
        return (
            f"{spec.name} at {split_module!r} outputs no single (C, H, W) feature map, and a "
            "bottleneck student restores one"
        )
    if variant == "teacher_init":
        design = teacher_init_design(spec.name, split_module)
        if isinstance(design, str):
            return (
                f"no teacher_init student for {spec.name} at {split_module!r}: {design}; "
                "the narrow or wide variant fits any split point"
            )
    return None


def _halvings(size: int, target: int) -> tuple[int, int]:
    """How many 3×3/2 convs (padding 1: ``ceil(n / 2)``) take ``size`` to the smallest grid
    not below ``target`` (at most :data:`_MAX_HALVINGS`, at least one), and that grid."""
    steps, grid = 1, math.ceil(size / 2)
    while steps < _MAX_HALVINGS and math.ceil(grid / 2) >= target:
        steps, grid = steps + 1, math.ceil(grid / 2)
    return steps, grid


def scaled_student(
    input_shape: tuple[int, ...],
    split_shape: tuple[int, ...],
    bottleneck: int,
    variant: str = "narrow",
) -> BottleneckStudent:
    """A bottleneck student sized from the shapes at a split point (module docstring).

    ``split_shape`` is the teacher head's output (C, H, W); ``variant`` picks the decoder's
    widths (``wide`` is wider).
    """
    variant = canonical_variant(variant)
    if variant not in _SCALED_DECODER:
        raise UnknownNameError(
            f"no scaled student variant {variant!r}; known: {sorted(_SCALED_DECODER)}"
        )
    channels, height, width = split_shape
    steps_h, grid_h = _halvings(input_shape[1], height)
    steps_w, grid_w = _halvings(input_shape[2], width)
    steps = max(steps_h, steps_w)
    grid_h, grid_w = _grid(input_shape[1], steps), _grid(input_shape[2], steps)
    stem = _SCALED_ENCODER[0]
    blocks = tuple((_SCALED_ENCODER[i], 2) for i in range(1, steps))
    blocks += ((_SCALED_ENCODER[steps - 1], 1),)  # one block at the bottleneck's grid
    encoder = _conv_bn_relu(3, stem, 3, 2, 1)
    encoder += _separable_to_bottleneck(stem, blocks, bottleneck)
    decoder, width_out = _decoder_convs(bottleneck, _SCALED_DECODER[variant])
    fit = _fit_grid((grid_h, grid_w), (height, width), width_out)
    if fit is not None:
        decoder += [fit, nn.BatchNorm2d(width_out), nn.ReLU(inplace=True)]
    decoder.append(nn.Conv2d(width_out, channels, 1))
    return BottleneckStudent(nn.Sequential(*encoder), nn.Sequential(*decoder))


def _grid(size: int, steps: int) -> int:
    for _ in range(steps):
        size = math.ceil(size / 2)
    return size


def _fit_grid(grid: tuple[int, int], target: tuple[int, int], channels: int) -> nn.Module | None:
    """A layer taking a ``grid`` map to exactly ``target``: a valid conv shrinks it by
    ``k - 1``, a stride-1 transposed conv grows it by ``k - 1``; None when they agree."""
    if grid == target:
        return None
    if all(g >= t for g, t in zip(grid, target, strict=True)):
        kernel = tuple(g - t + 1 for g, t in zip(grid, target, strict=True))
        return nn.Conv2d(channels, channels, kernel, bias=False)
    if all(g <= t for g, t in zip(grid, target, strict=True)):
        kernel = tuple(t - g + 1 for g, t in zip(grid, target, strict=True))
        return nn.ConvTranspose2d(channels, channels, kernel, bias=False)
    raise UnknownNameError(f"no student grid fits {target} from {grid}")  # pragma: no cover


# --- the entropy-coded bottleneck (issue #21) ---------------------------------------------------


class EntropyStudent(BottleneckStudent):
    """A bottleneck student whose bottleneck is sent as integers, entropy-coded with a learned
    per-channel model (Ballé et al. 2018's factorized prior, compressai's
    ``EntropyBottleneck``), as in the Entropic Student (Matsubara et al. 2022).

    ``encode`` (device) gives the continuous latent ``y = z · gain`` of the plain student's
    bottleneck ``z``; the wire carries ``round(y − median)`` per channel; ``decode`` (server)
    divides by the gain before the plain decoder. The per-channel gain sets how many integer
    levels a channel spends (calibrated from data when a plain student is turned into this
    one, then learnt); the rate term decides which channels are worth their bits.

    Training (``forward_with_bits``): the rate is counted on the latent plus uniform noise
    (differentiable), while the decoder already sees the rounded latent through a
    straight-through estimator, so what it learns is what it will be served.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, frozen_layers: int, channels: int):
        super().__init__(encoder, decoder, frozen_layers)
        from compressai.entropy_models import EntropyBottleneck

        self.channels = channels
        self.log_gain = nn.Parameter(torch.zeros(channels))
        self.entropy = EntropyBottleneck(channels)

    def gain(self) -> torch.Tensor:
        return self.log_gain.exp().view(1, -1, 1, 1)

    def medians(self) -> torch.Tensor:
        """Per-channel offset the integers are counted from (the entropy model's medians)."""
        return self.entropy.quantiles[:, 0, 1].detach().view(1, -1, 1, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x) * self.gain()

    def quantise(self, y: torch.Tensor) -> torch.Tensor:
        """``round(y − median) + median``, with the identity's gradient (straight through)."""
        medians = self.medians()
        rounded = torch.round(y - medians) + medians
        return y + (rounded - y).detach()

    def decode(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.decoder(y_hat / self.gain())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.quantise(self.encode(x)))

    def device_part(self) -> nn.Module:
        """Encoder then gain: the continuous latent the device rounds and entropy-codes
        (:mod:`splitdnn.rans`; rounding and coding are not in the ONNX file)."""
        return nn.Sequential(self.encoder, ChannelScale(self.log_gain.exp()))

    def server_part(self) -> nn.Module:
        """Inverse gain then decoder, on ``integers + median`` from the wire."""
        return nn.Sequential(ChannelScale((-self.log_gain).exp()), self.decoder)

    def forward_from_frozen(self, prefix_output: torch.Tensor) -> torch.Tensor:
        return self.forward_with_bits(prefix_output)[0]

    def forward_with_bits(self, prefix_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(head output, bits of each image) from the frozen prefix's output. In training the
        bits are those of the noisy latent; in eval mode those of the rounded one, i.e. the
        model's estimate of what the entropy coder writes."""
        y = self.encoder[self.frozen_layers :](prefix_output) * self.gain()  # type: ignore[index]
        _, likelihoods = self.entropy(y)
        bits = -torch.log2(likelihoods).flatten(1).sum(1)
        return self.decode(self.quantise(y)), bits

    def aux_loss(self) -> torch.Tensor:
        """compressai's quantile loss: moves only the entropy model's quantiles (its tails
        and medians), which the coder's tables are cut from."""
        return self.entropy.loss()

    def entropy_parameters(self) -> list[nn.Parameter]:
        """The entropy model and the gain: what learns at ``rate.entropy_lr``."""
        return [self.log_gain, *self.entropy.parameters()]

    @torch.no_grad()
    def coding_tables(self) -> dict[str, list]:
        """The entropy model as fixed tables for serving without torch (the plain lists of
        :meth:`splitdnn.rans.CodingTables.from_lists`): per channel the median, the smallest
        symbol relative to it and compressai's quantised CDF (16-bit). Its last bin is
        compressai's escape; here it is the value just above the range, into which values
        out of range are clamped (:meth:`splitdnn.rans.CodingTables.symbols`)."""
        # The tails from the density itself (bisection), not the aux-trained quantiles,
        # which move at the optimiser's pace and can lag far behind a short fine-tuning:
        # values past them would be clamped. The medians stay: the decoder learnt their grid.
        medians = self.entropy.quantiles[:, :, 1].clone()
        self.entropy._update_quantiles()
        quantiles = self.entropy.quantiles
        quantiles[:, :, 1] = medians
        quantiles[:, :, 0] = torch.minimum(quantiles[:, :, 0], medians)
        quantiles[:, :, 2] = torch.maximum(quantiles[:, :, 2], medians)
        self.entropy.update(force=True)
        lengths = self.entropy._cdf_length.tolist()
        cdfs = [
            row[:n] for row, n in zip(self.entropy._quantized_cdf.tolist(), lengths, strict=True)
        ]
        return {
            "precision": int(self.entropy.entropy_coder_precision),
            "medians": self.medians().flatten().tolist(),
            "offsets": [int(o) for o in self.entropy._offset.tolist()],
            "cdfs": cdfs,
        }

    @torch.no_grad()
    def calibrate(self, prefix_outputs: torch.Tensor, levels: float) -> None:
        """Set each channel's gain so its 99.9th percentile spans ``levels`` integer steps
        (a channel that is always zero keeps gain 1)."""
        z = self.encoder[self.frozen_layers :](prefix_outputs)  # type: ignore[index]
        per_channel = z.transpose(0, 1).flatten(1).float()
        top = torch.quantile(per_channel, 0.999, dim=1)
        gain = torch.where(top > 1e-6, levels / top.clamp_min(1e-6), torch.ones_like(top))
        self.log_gain.copy_(gain.log())


def entropy_student(student: BottleneckStudent) -> EntropyStudent:
    """``student``'s layers (shared, not copied) behind an entropy-coded bottleneck."""
    channels = _bottleneck_channels(student)
    out = EntropyStudent(student.encoder, student.decoder, student.frozen_layers, channels)
    return out.train(student.training)


def _bottleneck_channels(student: BottleneckStudent) -> int:
    """Channels of the decoder's first conv's input: the bottleneck's."""
    for module in student.decoder.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise UnknownNameError("a student decoder without a conv has no bottleneck")  # pragma: no cover


def widen_state(
    state: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A narrower student's weights in a wider one of the same design (more bottleneck
    channels), so that the wider one starts as the narrow one's function.

    Every tensor of ``state`` whose shape differs from ``fresh``'s goes into the leading slice
    of the fresh tensor. The new *output* rows of a layer keep their fresh initialisation,
    the new *input* columns of a conv (dim 1) start at zero: the decoder ignores the new
    channels until training makes them useful. Returns (state, names widened).
    """
    out, widened = dict(fresh), []
    for name, old in state.items():
        new = fresh.get(name)
        if new is None or new.shape == old.shape:
            out[name] = old
            continue
        if new.ndim != old.ndim or any(o > n for o, n in zip(old.shape, new.shape, strict=True)):
            raise UnknownNameError(f"{name}: {tuple(old.shape)} does not fit {tuple(new.shape)}")
        target = new.clone()
        if new.ndim > 1 and new.shape[1] != old.shape[1]:
            target[:, old.shape[1] :] = 0
        target[tuple(slice(0, d) for d in old.shape)] = old
        out[name], widened = target, [*widened, name]
    return out, widened


# --- one entry point ---------------------------------------------------------------------------


def default_variant(teacher: str) -> str:
    """The one default student design: ``teacher_init`` where ``teacher`` has one (the Lite
    teachers), else the papers' ``narrow``."""
    return DEFAULT_VARIANT if teacher in TEACHER_INIT_DESIGNS else FALLBACK_VARIANT


def student_variants(teacher: str) -> list[str]:
    """The student designs that exist for ``teacher`` (empty: none, only profiling)."""
    # Every teacher with a (C, H, W) split point has the scaled students (:func:`scaled_student`);
    # teacher_init has registered designs for some (others may derive one per split point).
    get_teacher(teacher)
    return (["teacher_init"] if teacher in TEACHER_INIT_DESIGNS else []) + list(_WIDTHS)


def build_student(
    teacher: str,
    bottleneck: int,
    variant: str | None = None,
    split_module: str | None = None,
    weights: str | Path | None = None,
    teacher_model: nn.Module | None = None,
) -> BottleneckStudent:
    """The bottleneck student for ``teacher`` with ``bottleneck`` channels, replacing the
    teacher head up to ``split_module`` (default: the teacher's ``student_split``).

    ``variant``: the papers' ``narrow`` or ``wide`` student (old names ``caltech101``,
    ``imagenet``; for a Lite
    teacher both mean :func:`lite_student`), or ``teacher_init`` (:func:`teacher_init_student`,
    whose copies of teacher layers come from ``teacher_model``, else the state dict at
    ``weights``, else the published weights). At a split point without
    such a design, :func:`scaled_student`. :func:`student_problem` says why a point has none.
    """
    spec = get_teacher(teacher)
    variant = canonical_variant(variant or default_variant(teacher))
    split = split_module or spec.student_split
    problem = student_problem(spec.name, split, variant)
    if problem is not None:
        raise UnknownNameError(problem)
    if variant == "teacher_init":
        return teacher_init_student(teacher, bottleneck, teacher_model, weights, split)
    if split == spec.student_split and spec.name in LITE_DESIGNS:
        return lite_student(teacher, bottleneck)
    if split == spec.student_split and spec.family in PAPER_DESIGNS:
        return paper_student(spec.family, bottleneck, variant)
    return scaled_student(
        spec.input_shape, split_output_shape(spec.name, split), bottleneck, variant
    )


def student_split(teacher: str) -> str:
    """The teacher module the student replaces everything up to (from the teacher spec)."""
    return get_teacher(teacher).student_split
