"""A ``method: nonn`` run -> a NoNN bundle (:mod:`splitdnn.nonn.bundle`), and its small assets.

:func:`export_nonn` (``splitdnn export nonn RUN --out DIR``): one ONNX file per member (image
-> pooled features: the shared frozen prefix if the family has one, the member's slice, global
pooling), written and checked against torch by :mod:`splitdnn.to_onnx` like every bundle file,
then ``join.npz`` and ``nonn.json`` (with each member's costs beside the teacher's and the
local model's, :func:`nonn_costs`).

:func:`save_assets` (``splitdnn nonn assets RUN --out DIR``): the trained slices and join in
float16 safetensors + JSON (a few MB, committed; :func:`splitdnn.checkpoints.save_payload_assets`);
:func:`export_nonn` takes such a folder in place of RUN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from splitdnn.checkpoints import (
    BEST,
    load_torch,
    read_payload_assets,
    save_payload_assets,
)
from splitdnn.distill.config import config_samples, parse_config
from splitdnn.errors import CheckpointError, ExportError
from splitdnn.models import build_teacher, get_teacher
from splitdnn.nonn.bundle import (
    JOIN_FILE,
    NONN_MANIFEST,
    NoNNBundle,
    load_nonn_bundle,
    save_join,
    write_nonn_manifest,
)
from splitdnn.nonn.members import NoNNMember, get_nonn_student, member_input_shape, nonn_member
from splitdnn.nonn.method import NONN_KIND, member_batch, member_inputs
from splitdnn.profile import device_costs
from splitdnn.teacher import frozen_backbone
from splitdnn.to_onnx import check_onnx, export_onnx


class MemberPart(nn.Module):
    """Image -> the shared frozen prefix -> one member -> pooled features."""

    def __init__(self, prefix: nn.Module, member: NoNNMember) -> None:
        super().__init__()
        self.prefix, self.member = prefix, member

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.member.pooled(self.prefix(x))


ASSET_WEIGHTS, ASSET_INFO = "nonn_student.safetensors", "nonn_student.json"


def save_assets(run: Path, out: Path) -> Path:
    """The run's trained weights as small committed assets: the members' trainable slices
    and the join in float16 safetensors (the frozen prefix is the installed ImageNet weights),
    and a JSON of groups, classes, config, metrics and the members' mean features."""
    payload, members, _, _ = load_run(run)
    means = [round(float(x), 6) for x in _member_means(payload, members, run)]
    save_payload_assets(payload, out, ASSET_WEIGHTS, ASSET_INFO, {"means": means})
    return out


def nonn_source(path: Path) -> str | None:
    """What NoNN thing ``path`` holds ("a NoNN bundle", "a NoNN run", "NoNN assets"), or
    None: other commands name the NoNN ones instead of failing on what they cannot read."""
    if (path / NONN_MANIFEST).is_file():
        return "a NoNN bundle"
    if (path / ASSET_INFO).is_file():
        return "NoNN assets"
    best = path / BEST
    if best.is_file():
        try:
            payload = load_torch(best)
        except CheckpointError:
            return None  # not for this to report: the command reading it says why
        if isinstance(payload, dict) and payload.get("kind") == NONN_KIND:
            return "a NoNN run"
    return None


def read_payload(run: Path) -> dict[str, Any]:
    """``best.pt`` of a run directory, or the committed assets of :func:`save_assets`."""
    if (run / ASSET_INFO).exists() and not (run / BEST).exists():
        return read_payload_assets(run, ASSET_WEIGHTS, ASSET_INFO)
    return load_torch(run / BEST, "NoNN checkpoint")


def _member_means(payload: dict[str, Any], members: list[NoNNMember], run: Path) -> np.ndarray:
    """The members' mean pooled features on the training images (from the run's cache)."""
    if "means" in payload:
        return np.asarray(payload["means"], np.float64)
    spec = get_nonn_student(payload["student_name"])
    config = parse_config(payload["config"])
    train, _, _, _ = config_samples(config)
    cache = config.nonn.cache_dir or run / "cache"
    cut = member_inputs(spec, train, cache)
    sums = np.zeros(sum(m.head.out_channels for m in members))
    with torch.no_grad():
        for i in range(0, len(cut), 128):
            h = member_batch(spec, cut, np.arange(i, min(i + 128, len(cut))))
            sums += torch.cat([m.pooled(h) for m in members], 1).sum(0).double().numpy()
    return sums / max(len(cut), 1)


def load_run(run: Path) -> tuple[dict[str, Any], list[NoNNMember], nn.Linear, nn.Module]:
    """A run's ``best.pt`` (or its saved assets): payload, trained members, join layer and
    the frozen prefix."""
    payload = read_payload(run)
    if payload.get("kind") != NONN_KIND:
        raise ExportError(f"{run} is not a NoNN run (kind {payload.get('kind')!r})")
    spec = get_nonn_student(payload["student_name"])
    groups, k = payload["groups"], payload["students"]
    multiple = payload.get("channel_multiple", 1)  # runs before it had none: 1
    members = [
        nonn_member(spec, i, k, len(g), payload["width"], channel_multiple=multiple)
        for i, g in enumerate(groups)
    ]
    state = payload["student"]
    for i, member in enumerate(members):
        prefix = f"members.{i}."
        member.load_state_dict(
            {n[len(prefix) :]: t for n, t in state.items() if n.startswith(prefix)}
        )
    join = nn.Linear(state["join.weight"].shape[1], state["join.weight"].shape[0])
    join.load_state_dict({"weight": state["join.weight"], "bias": state["join.bias"]})
    frozen, _ = frozen_backbone(spec.base, True, spec.cut)
    return payload, members, join, frozen


def one_device_model(name: str, classes: int) -> nn.Module:
    """``name`` as one device would run it for ``classes`` classes: the pretrained network
    with a linear probe for its classifier (random weights: costs do not depend on them)."""
    spec = get_teacher(name)
    model = build_teacher(name, False)
    old = model.get_submodule(spec.classifier)
    model.set_submodule(spec.classifier, nn.Linear(old.in_features, classes))
    return model.eval()


def nonn_costs(
    payload: dict[str, Any], members: list[NoNNMember], prefix: nn.Module
) -> dict[str, Any]:
    """What each member costs its device (:func:`splitdnn.profile.device_costs`: MACs,
    parameters, weights in fp32/fp16/int8 bytes, peak activation memory; the shared prefix
    included), beside the teacher (with its probe) and the local model (the members' base,
    whole, with a probe) on one device, and each member's share of the teacher's MACs."""
    spec = get_nonn_student(payload["student_name"])
    teacher_name = parse_config(payload["config"]).teacher.name
    classes = len(payload["classes"])
    shape = member_input_shape(spec)
    rows = []
    for member in members:
        row = device_costs(MemberPart(prefix, member).eval(), shape)
        rows.append({**row, "channels": member.head.out_channels})
    teacher = device_costs(
        one_device_model(teacher_name, classes), get_teacher(teacher_name).input_shape
    )
    local = device_costs(one_device_model(spec.base, classes), shape)
    for row in rows:
        row["macs_percent_of_teacher"] = round(100 * row["macs"] / teacher["macs"], 2)
    return {
        "width": payload.get("width"),
        "channel_multiple": payload.get("channel_multiple", 1),
        "members": rows,
        "teacher": {"name": teacher_name, **teacher},
        "local": {"name": spec.base, **local},
    }


def export_nonn(run: Path, out: Path, name: str = "nonn") -> NoNNBundle:
    """Write the NoNN bundle of ``run`` to ``out`` (see the module docstring)."""
    payload, members, join, prefix = load_run(run)
    spec = get_nonn_student(payload["student_name"])
    config = parse_config(payload["config"])
    base = get_teacher(spec.base)
    size = base.preprocessing.size
    out.mkdir(parents=True, exist_ok=True)
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    files = []
    for i, member in enumerate(members):
        part = MemberPart(prefix, member).eval()
        path = out / f"member{i}.onnx"
        export_onnx(part, example, path, "image", ["features"])
        check_onnx(path, part, example)
        files.append((path.name, member.head.out_channels))
    # the members' mean features on the training images: a degraded answer's stand-in
    means = _member_means(payload, members, run)
    save_join(
        out / JOIN_FILE,
        join.weight.detach().numpy(),
        join.bias.detach().numpy(),
        means,
    )
    metrics = {k: v for k, v in payload["metrics"].items() if isinstance(v, int | float)}
    write_nonn_manifest(
        out,
        name=name,
        teacher=config.teacher.name,
        student=spec.name,
        preprocessing=base.preprocessing,
        members=files,
        labels=payload["classes"],
        metrics={
            "training": metrics,
            "groups": [len(g) for g in payload["groups"]],
            "costs": nonn_costs(payload, members, prefix),
        },
    )
    return load_nonn_bundle(out)
