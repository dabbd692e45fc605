"""What each NoNN member costs its device, for every config in ``configs/nonn/``, beside the
teacher and the local model: MACs for one image, parameters, weights in fp32 / fp16 / int8
bytes and the peak activation memory (:func:`splitdnn.profile.device_costs`, an estimate from
shapes). Widths come from each config's ``nonn.budget`` (or ``nonn.width``, default 1/K);
group sizes are the balanced split of the teacher's last filters, as the partition makes
them. No training and no data beyond the class list: costs do not depend on the weights.
:func:`untrained_bundle` exports a config's members before any training, for timing them
(``benchmarks/nonn_latency.py``). Writes ``benchmarks/results/nonn/costs.{json,md}``:

    python -m benchmarks.nonn_costs
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from benchmarks.report import RESULTS, ROOT, conditions, table, write_results
from splitdnn.checkpoints import BEST
from splitdnn.distill.config import DistillConfig, config_samples, load_config
from splitdnn.models import get_teacher
from splitdnn.nonn.export import export_nonn, nonn_costs
from splitdnn.nonn.members import (
    NoNNMember,
    NoNNStudentSpec,
    get_nonn_student,
    nonn_member,
    width_for_budget,
)
from splitdnn.nonn.method import NONN_KIND
from splitdnn.teacher import frozen_backbone


@dataclass
class Design:
    """One config's members as its run would build them (before training): family, groups
    (the balanced split of the teacher's last filters, as the partition makes them), width
    from ``nonn.budget`` (or ``nonn.width``, default 1/K) and the members themselves."""

    config: DistillConfig
    spec: NoNNStudentSpec
    groups: list[list[int]]
    width: float
    members: list[NoNNMember]
    classes: list[str]


def design(config_path: Path, pretrained: bool = False) -> Design:
    """The members of one config (random weights unless ``pretrained``: costs and times do
    not depend on them)."""
    config = load_config(config_path)
    n = config.nonn
    spec = get_nonn_student(n.student)
    teacher = get_teacher(config.teacher.name)
    filters = teacher.build(False).get_submodule(teacher.classifier).in_features
    sizes = [filters // n.students + (i < filters % n.students) for i in range(n.students)]
    if n.budget is not None:
        width = width_for_budget(
            spec,
            n.students,
            max(sizes),
            macs=n.budget.macs,
            fp16_bytes=n.budget.fp16_bytes,
            channel_multiple=n.channel_multiple,
        )
    else:
        width = n.width if n.width is not None else 1 / n.students
    members = [
        nonn_member(
            spec, k, n.students, size, width, pretrained, channel_multiple=n.channel_multiple
        )
        for k, size in enumerate(sizes)
    ]
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    groups = [list(range(start, start + size)) for start, size in zip(starts, sizes, strict=True)]
    _, _, classes, _ = config_samples(config)
    return Design(config, spec, groups, width, members, classes)


def design_costs(config_path: Path) -> dict:
    """The costs of one config's members (random weights), teacher and local model."""
    d = design(config_path)
    prefix, _ = frozen_backbone(d.spec.base, False, d.spec.cut)
    payload = {
        "student_name": d.spec.name,
        "config": d.config.model_dump(mode="json"),
        "classes": d.classes,
        "width": d.width,
    }
    costs = nonn_costs(payload, d.members, prefix)
    return {
        "config": str(config_path.relative_to(ROOT)),
        "students": d.config.nonn.students,
        "student": d.spec.name,
        "budget": d.config.nonn.budget.model_dump(exclude_none=True)
        if d.config.nonn.budget
        else None,
        **costs,
    }


def untrained_bundle(config_path: Path, out: Path) -> Path:
    """A NoNN bundle of ``config_path``'s architecture before any training (ImageNet slices,
    a random join, zero mean features), written by the same export as a trained run's
    (:func:`splitdnn.nonn.export.export_nonn`): for timing members, whose speed does not
    depend on their weights. Its accuracy means nothing."""
    d = design(config_path, pretrained=True)
    join = nn.Linear(sum(len(g) for g in d.groups), len(d.classes))
    state = {f"members.{k}.{name}": t for k, m in enumerate(d.members)
             for name, t in m.state_dict().items()}  # fmt: skip
    state |= {f"join.{name}": t for name, t in join.state_dict().items()}
    payload = {
        "kind": NONN_KIND,
        "student_name": d.spec.name,
        "base": d.spec.base,
        "cut": d.spec.cut,
        "students": d.config.nonn.students,
        "width": d.width,
        "channel_multiple": d.config.nonn.channel_multiple,
        "groups": d.groups,
        "student": state,
        "classes": d.classes,
        "metrics": {"untrained": 1},
        "config": d.config.model_dump(mode="json"),
        "means": [0.0] * join.in_features,
    }
    with tempfile.TemporaryDirectory(prefix="nonn-untrained-") as run:
        torch.save(payload, Path(run) / BEST)
        export_nonn(Path(run), out, name=f"untrained-{config_path.stem}")
    return out


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    paths = args.configs or sorted((ROOT / "configs" / "nonn").glob("*.yaml"))
    designs = [design_costs(p.resolve()) for p in paths]
    result = {"conditions": conditions(), "designs": designs}
    first = designs[0]
    rows = []
    for d in designs:
        m = max(d["members"], key=lambda r: r["macs"])
        rows.append(
            (
                f"`{Path(d['config']).name}`: {d['student']}",
                d["students"],
                f"{d['width']:.3f}" if d["width"] else "—",
                f"{m['macs'] / 1e6:.1f} M ({m['macs_percent_of_teacher']:.1f} %)",
                f"{m['params'] / 1e6:.2f} M",
                f"{_mb(m['weights_bytes_fp32'])} / {_mb(m['weights_bytes_fp16'])} / "
                f"{_mb(m['weights_bytes_int8'])}",
                _mb(m["peak_activation_bytes"]),
                f"{sum(r['macs'] for r in d['members']) / 1e6:.1f} M",
            )
        )
    for key in ("teacher", "local"):
        w = first[key]
        rows.append(
            (
                f"{key}: {w['name']} + probe (one device)",
                1,
                "—",
                f"{w['macs'] / 1e6:.1f} M",
                f"{w['params'] / 1e6:.2f} M",
                f"{_mb(w['weights_bytes_fp32'])} / {_mb(w['weights_bytes_fp16'])} / "
                f"{_mb(w['weights_bytes_int8'])}",
                _mb(w["peak_activation_bytes"]),
                f"{w['macs'] / 1e6:.1f} M",
            )
        )
    header = [
        "design",
        "K",
        "width",
        "MACs per member (% of teacher)",
        "params per member",
        "weights fp32 / fp16 / int8",
        "peak activations (fp32)",
        "MACs, all members",
    ]
    lines = [
        "# NoNN member costs per device (issue #24)",
        "",
        "The largest member of each design (members differ by at most one head channel).",
        "MACs for one image at the base's input size (224 px; the teacher 260 px); weights at",
        "4 / 2 / 1 bytes a parameter (int8 without its per-channel scales); peak activations:",
        "the largest set of fp32 tensors alive at once in one forward, estimated from shapes",
        "(`splitdnn.profile.peak_activation_bytes`: a layer's input and output plus the inputs",
        "residual blocks hold for their skip). Frozen-prefix members include the prefix.",
        "",
        *table(header, rows),
    ]
    write_results("costs", result, lines, out=RESULTS / "nonn")


if __name__ == "__main__":
    main()
