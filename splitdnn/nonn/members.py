"""NoNN members: narrow slices of a pretrained network, one per group of the teacher's filters.

A member family (:class:`NoNNStudentSpec`) freezes a base network through ``cut`` (shared by
every member, its activations cached once per image); member ``k`` of ``K`` keeps a share of
every later block's expanded channels and its group's rows of the 1×1 head conv
(:func:`nonn_member`). :class:`NoNNMember` is what one device runs after the shared prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from splitdnn.models.weights import build_teacher
from splitdnn.students import FrozenPrefixSpec, registered


@dataclass(frozen=True)
class NoNNStudentSpec(FrozenPrefixSpec):
    """A NoNN member family: ``base``'s ImageNet weights frozen through ``cut`` (shared by
    every member, cached once per image); each member gets its own slice of the blocks after
    ``cut`` (a share of every block's expanded channels) and of the 1×1 head conv (its group's
    channels), see :func:`nonn_member`."""


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

    def __init__(self, blocks: nn.Sequential, head: nn.Module, bn: nn.Module, act: nn.Module):
        super().__init__()
        self.blocks, self.head, self.bn, self.act = blocks, head, bn, act

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.head(self.blocks(h))))

    def pooled(self, h: torch.Tensor) -> torch.Tensor:
        return self.forward(h).mean((2, 3))


def nonn_member(
    spec: NoNNStudentSpec | str,
    index: int,
    members: int,
    channels: int,
    width: float | None = None,
    pretrained: bool = True,
) -> NoNNMember:
    """Member ``index`` of ``members``: the base's blocks after ``spec.cut`` keeping a
    ``width`` share (default ``1/members``) of every block's expanded channels, and a head
    conv with ``channels`` outputs, all initialised from the ImageNet weights.

    Why slices of a pretrained network: students trained from scratch on 5k images do not
    come near the teacher on CPU in an hour; slices start from ImageNet features and only have
    to specialise. Expanded channels are ranked by their expansion BN's |gamma| and dealt
    round-robin (member ``index`` takes ranks index, index + members, …), so every member gets
    a fair share of the strong ones; head rows likewise. With ``members == 1`` and full width
    the member is exactly the base after the cut (up to the head's channel count).
    """
    spec = get_nonn_student(spec) if isinstance(spec, str) else spec
    if not 0 <= index < members:
        raise ValueError(f"member {index} of {members}")
    share = width if width is not None else 1.0 / members
    model = build_teacher(spec.base, pretrained)
    names = [name for name, _ in model._blocks.named_children()]
    first = names.index(spec.cut.split(".")[-1]) + 1
    blocks = []
    for block in list(model._blocks)[first:]:
        hidden = block._depthwise_conv.out_channels
        keep = max(1, round(hidden * share))
        gamma = (block._bn0 if hasattr(block, "_bn0") else block._bn1).weight.detach().abs()
        ranked = torch.argsort(gamma, descending=True, stable=True)
        mine = ranked[index::members] if keep * members <= hidden else ranked
        idx = torch.sort(torch.cat([mine, ranked[~torch.isin(ranked, mine)]])[:keep]).values
        if hasattr(block, "_expand_conv"):
            _slice_conv(block._expand_conv, idx, None)
            _slice_bn(block._bn0, idx)
        _slice_conv(block._depthwise_conv, idx, None)
        _slice_bn(block._bn1, idx)
        _slice_conv(block._project_conv, None, idx)
        blocks.append(block)
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
    return NoNNMember(nn.Sequential(*blocks), head, bn, nn.ReLU6()).eval()
