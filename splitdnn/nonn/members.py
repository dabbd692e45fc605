"""NoNN members: narrow slices of a pretrained network, one per group of the teacher's filters.

Two kinds of member family (:class:`NoNNStudentSpec`):

* **narrow from the stem** (``cut=None``, ``efficientnet_lite0_narrow``): nothing is shared or
  frozen; every layer of member ``k`` keeps a ``width`` share of its channels — the stem's, each
  block's expanded and output channels — and its group's rows of the 1×1 head conv, so MACs
  fall about as ``width²`` and a member is small end to end (issue #24). The width comes from
  the user's budget (:func:`width_for_budget`);
* **frozen prefix** (``efficientnet_lite0_slice``): the base frozen through ``cut`` (shared by
  every member, its activations cached once per image), a share of every later block's
  expanded channels (the committed K = 2 assets of issue #14).

:class:`NoNNMember` is what one device runs (after the shared prefix, if any).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from splitdnn.errors import ConfigError
from splitdnn.models import get_teacher
from splitdnn.models.weights import build_teacher
from splitdnn.profile import count_params, device_costs
from splitdnn.students import FrozenPrefixSpec, registered


@dataclass(frozen=True)
class NoNNStudentSpec(FrozenPrefixSpec):
    """A NoNN member family on ``base``'s ImageNet weights. With ``cut`` the base is frozen
    through it (shared by every member, cached once per image) and each member gets its own
    slice of the blocks after it; with ``cut=None`` each member is a slice of the whole base,
    narrow from the stem. Either way the 1×1 head conv keeps the group's channels, see
    :func:`nonn_member`."""

    cut: str | None = None  # type: ignore[assignment]


NONN_STUDENTS: dict[str, NoNNStudentSpec] = {
    spec.name: spec
    for spec in (
        NoNNStudentSpec(
            "efficientnet_lite0_slice",
            "efficientnet_lite0",
            "_blocks.12",
            "Lite0 frozen through _blocks.12 (192 ch, 7x7); slices of _blocks.13-15 and the head",
        ),
        NoNNStudentSpec(
            "efficientnet_lite0_slice_deep",
            "efficientnet_lite0",
            "_blocks.10",
            "Lite0 frozen through _blocks.10 (112 ch, 14x14); slices of _blocks.11-15 and head",
        ),
        NoNNStudentSpec(
            "efficientnet_lite0_narrow",
            "efficientnet_lite0",
            None,
            "Lite0 narrow from the stem: a width share of every layer's channels, nothing shared",
        ),
    )
}


def get_nonn_student(name: str) -> NoNNStudentSpec:
    """The registered NoNN member family ``name``; the error lists the registered ones."""
    return registered(NONN_STUDENTS, "nonn student", name)


def _slice_conv(conv: nn.Conv2d, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> None:
    """Keep output channels ``out_idx`` and input channels ``in_idx`` of ``conv`` in place
    (a depthwise conv keeps the same channels in and out)."""
    w = conv.weight.detach()
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels
    if out_idx is not None:
        w = w[out_idx]
        conv.out_channels = len(out_idx)
    if depthwise:
        conv.in_channels = conv.groups = conv.out_channels
    elif in_idx is not None:
        w = w[:, in_idx]
        conv.in_channels = len(in_idx)
    conv.weight = nn.Parameter(w.clone())


def _slice_bn(bn: nn.BatchNorm2d, idx: torch.Tensor) -> None:
    bn.weight = nn.Parameter(bn.weight.detach()[idx].clone())
    bn.bias = nn.Parameter(bn.bias.detach()[idx].clone())
    bn.running_mean = bn.running_mean[idx].clone()
    bn.running_var = bn.running_var[idx].clone()
    bn.num_features = len(idx)


class NoNNMember(nn.Module):
    """One NoNN student after the shared frozen prefix: sliced Lite blocks, a 1×1 head conv to
    its group's channel count, BN, ReLU6. ``forward`` returns the feature *maps* (the
    attention-transfer loss needs them); :meth:`pooled` the vector the member sends."""

    def __init__(
        self,
        blocks: nn.Sequential,
        head: nn.Module,
        bn: nn.Module,
        act: nn.Module,
        stem: nn.Module | None = None,
    ):
        super().__init__()
        self.blocks, self.head, self.bn, self.act = blocks, head, bn, act
        self.stem = stem if stem is not None else nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.head(self.blocks(self.stem(h)))))

    def pooled(self, h: torch.Tensor) -> torch.Tensor:
        return self.forward(h).mean((2, 3))


def _share(gamma: torch.Tensor, keep: int, index: int, members: int) -> torch.Tensor:
    """``keep`` channels for member ``index`` of ``members``, ranked by ``|gamma|`` (their BN
    scale) and dealt round-robin (ranks index, index + members, …) so every member gets a fair
    share of the strong ones; a share wider than ``1/members`` takes the strongest ``keep``."""
    ranked = torch.argsort(gamma.detach().abs(), descending=True, stable=True)
    hidden = len(ranked)
    mine = ranked[index::members] if keep * members <= hidden else ranked
    return torch.sort(torch.cat([mine, ranked[~torch.isin(ranked, mine)]])[:keep]).values


def _slice_head(model: nn.Module, index: int, members: int, channels: int) -> None:
    """The 1×1 head conv and its BN keep ``channels`` rows (dealt round-robin by |gamma|);
    rows beyond the base's start at random."""
    head, bn = model._conv_head, model._bn1
    total = head.out_channels
    ranked = torch.argsort(bn.weight.detach().abs(), descending=True, stable=True)
    order = torch.cat([ranked[index::members], ranked[~torch.isin(ranked, ranked[index::members])]])
    rows = torch.sort(order[: min(channels, total)]).values
    _slice_conv(head, rows, None)
    _slice_bn(bn, rows)
    if channels > total:  # more outputs than the base's head: extra rows start at random
        extra = nn.Conv2d(head.in_channels, channels - total, 1, bias=False)
        head.weight = nn.Parameter(torch.cat([head.weight.detach(), extra.weight.detach()]))
        head.out_channels = channels
        bn_extra = nn.BatchNorm2d(channels - total, eps=bn.eps)
        for key in ("weight", "bias"):
            setattr(
                bn,
                key,
                nn.Parameter(
                    torch.cat([getattr(bn, key).detach(), getattr(bn_extra, key).detach()])
                ),
            )
        bn.running_mean = torch.cat([bn.running_mean, bn_extra.running_mean])
        bn.running_var = torch.cat([bn.running_var, bn_extra.running_var])
        bn.num_features = channels


def _keeps_skip(block: nn.Module) -> bool:
    """Whether an MBConv block adds its input to its output (its own forward's test)."""
    args = block._block_args
    return bool(block.id_skip and args.stride == 1 and args.input_filters == args.output_filters)


def _narrow(
    model: nn.Module, index: int, members: int, width: float, multiple: int = 1
) -> nn.Module:
    """Slice every layer of a Lite base in place to a ``width`` share of its channels, each
    count rounded to a ``multiple`` (8 keeps ONNX Runtime's blocked convolution kernels: a
    K = 2 width-0.594 member ran 2.7x faster at 1.7 % fewer MACs): the stem's outputs, each
    block's expanded channels and outputs (a residual block keeps its input's channels, so
    the skip still adds), then feed the head conv the last block's."""

    def keep(n: int) -> int:
        return min(n, max(multiple, multiple * round(n * width / multiple)))

    idx = _share(model._bn0.weight, keep(model._conv_stem.out_channels), index, members)
    _slice_conv(model._conv_stem, idx, None)
    _slice_bn(model._bn0, idx)
    for block in model._blocks:
        if hasattr(block, "_expand_conv"):
            hidden = _share(block._bn0.weight, keep(block._bn0.num_features), index, members)
            _slice_conv(block._expand_conv, hidden, idx)
            _slice_bn(block._bn0, hidden)
        else:  # no expansion: the depthwise conv runs on the block's input channels
            hidden = idx
        _slice_conv(block._depthwise_conv, hidden, None)
        _slice_bn(block._bn1, hidden)
        if not _keeps_skip(block):
            idx = _share(block._bn2.weight, keep(block._bn2.num_features), index, members)
        _slice_conv(block._project_conv, idx, hidden)
        _slice_bn(block._bn2, idx)
    _slice_conv(model._conv_head, None, idx)
    return model


def nonn_member(
    spec: NoNNStudentSpec | str,
    index: int,
    members: int,
    channels: int,
    width: float | None = None,
    pretrained: bool = True,
    channel_multiple: int = 1,
) -> NoNNMember:
    """Member ``index`` of ``members``, all initialised from the ImageNet weights: a ``width``
    share (default ``1/members``) of the channels of every layer (``spec.cut`` None: narrow
    from the stem) or of every expanded layer after ``spec.cut``, and a head conv with
    ``channels`` outputs; narrow from the stem, every layer's count rounded to a
    ``channel_multiple``.

    Why slices of a pretrained network: students trained from scratch on 5k images do not
    come near the teacher on CPU in an hour; slices start from ImageNet features and only have
    to specialise. Channels are ranked by their BN's |gamma| and dealt round-robin
    (:func:`_share`), so members differ and every member gets a fair share of the strong ones;
    head rows likewise. With ``members == 1`` and full width the member is exactly the base
    (after the cut; up to the head's channel count).
    """
    spec = get_nonn_student(spec) if isinstance(spec, str) else spec
    if not 0 <= index < members:
        raise ValueError(f"member {index} of {members}")
    share = width if width is not None else 1.0 / members
    model = build_teacher(spec.base, pretrained)
    if spec.cut is None:
        _narrow(model, index, members, share, channel_multiple)
        stem: nn.Module | None = nn.Sequential(model._conv_stem, model._bn0, model._swish)
        blocks = list(model._blocks)
    else:
        stem = None
        names = [name for name, _ in model._blocks.named_children()]
        first = names.index(spec.cut.split(".")[-1]) + 1
        blocks = []
        for block in list(model._blocks)[first:]:
            hidden = block._depthwise_conv.out_channels
            bn = block._bn0 if hasattr(block, "_bn0") else block._bn1
            idx = _share(bn.weight, max(1, round(hidden * share)), index, members)
            if hasattr(block, "_expand_conv"):
                _slice_conv(block._expand_conv, idx, None)
                _slice_bn(block._bn0, idx)
            _slice_conv(block._depthwise_conv, idx, None)
            _slice_bn(block._bn1, idx)
            _slice_conv(block._project_conv, None, idx)
            blocks.append(block)
    _slice_head(model, index, members, channels)
    member = NoNNMember(nn.Sequential(*blocks), model._conv_head, model._bn1, nn.ReLU6(), stem)
    return member.eval()


def member_input_shape(spec: NoNNStudentSpec) -> tuple[int, int, int]:
    """The image a member's device receives (C, H, W): the base's input size."""
    size = get_teacher(spec.base).preprocessing.size
    return (3, size, size)


#: Widths :func:`width_for_budget` chooses from: multiples of 1/64.
WIDTH_STEP = 1 / 64


def width_for_budget(
    spec: NoNNStudentSpec | str,
    members: int,
    channels: int,
    *,
    macs: int | None = None,
    fp16_bytes: int | None = None,
    channel_multiple: int = 1,
) -> float:
    """The widest member (a multiple of :data:`WIDTH_STEP`, at most 1) whose MACs for one
    image and fp16 weights fit the budget, for a member with ``channels`` head outputs (pass
    the largest group). Only for families narrow from the stem: a frozen prefix's cost does
    not shrink with the width. Costs fall monotonically with the width, so a bisection over
    the grid suffices (random weights: costs do not depend on them)."""
    spec = get_nonn_student(spec) if isinstance(spec, str) else spec
    if spec.cut is not None:
        raise ConfigError(
            f"nonn.budget: the {spec.name} members share a frozen prefix through {spec.cut}, "
            "whose cost no width changes; use a family narrow from the stem "
            "(efficientnet_lite0_narrow)"
        )
    shape = member_input_shape(spec)

    def fits(step: int) -> bool:
        member = nonn_member(
            spec, 0, members, channels, step * WIDTH_STEP, False, channel_multiple=channel_multiple
        )
        if fp16_bytes is not None and 2 * count_params(member) > fp16_bytes:
            return False
        return macs is None or device_costs(member, shape)["macs"] <= macs

    low, high = 0, round(1 / WIDTH_STEP)  # fits(low) assumed; find the largest step that fits
    if not fits(1):
        raise ConfigError(
            f"nonn.budget: even a {WIDTH_STEP:.4f}-width member with {channels} head channels "
            f"exceeds it (macs {macs}, fp16_bytes {fp16_bytes})"
        )
    low = 1
    if fits(high):
        return 1.0
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low * WIDTH_STEP


def calibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Re-estimate every BatchNorm's running mean and variance on ``batches`` (a cumulative
    average over all of them), weights unchanged, then back to eval mode.

    Why: a member narrow from the stem drops channels from every layer's input, so each BN
    sees other statistics than the ImageNet ones it keeps; the shift compounds over 16 blocks
    (the K = 2 width-0.594 members fell to 36 % top-1 with a fitted join, and one epoch of
    training with those statistics frozen went to 24 %). Slimmable networks recalibrate the
    same way after changing a width."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for bn, momentum in zip(norms, momenta, strict=True):
            bn.momentum = momentum
            bn.eval()
