"""Export a ``method: nonn`` run to a NoNN bundle, and measure it on held-out images.

``python -m splitdnn.nonn_export export RUN --out DIR``: one ONNX file per member (image ->
pooled features: the shared frozen prefix, the member's slice, global pooling), ``join.npz``
and ``nonn.json`` (:mod:`splitdnn.nonn_bundle`). Each member file is checked against torch.

``python -m splitdnn.nonn_export assets RUN --out DIR``: the trained slices and join in float16
safetensors + JSON (a few MB, committed); ``export`` takes such a folder in place of RUN.

``python -m splitdnn.nonn_export figures BUNDLE --config CFG [--control RUN]``: the served
path on the config's validation images (which pick no checkpoint with ``train.keep: last``):
each member in onnxruntime, its features through the wire format (uint8 by default) and back,
the join in numpy; top-1 with a 95 % Wilson interval, the teacher's on the same images, and
per member MACs, parameters, weight memory, ONNX size and envelope bytes per image.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from splitdnn import wire
from splitdnn.checkpoints import load_torch
from splitdnn.distill.config import config_samples, parse_config
from splitdnn.distill.probe import extract_features
from splitdnn.errors import ExportError
from splitdnn.imaging import load_input
from splitdnn.models import get_teacher
from splitdnn.nonn_bundle import (
    JOIN_FILE,
    NoNNBundle,
    load_nonn_bundle,
    save_join,
    write_nonn_manifest,
)
from splitdnn.profile import count_macs, count_params
from splitdnn.stats import paired_difference, proportion_ci
from splitdnn.students import NoNNMember, get_nonn_student, nonn_member
from splitdnn.teacher import frozen_backbone

OPSET = 17
TOLERANCE = 1e-3


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
    from safetensors.torch import save_file

    payload, members, _, _ = load_run(run)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() for k, v in payload["student"].items()}
    save_file(state, str(out / ASSET_WEIGHTS))
    info = {k: v for k, v in payload.items() if k != "student"}
    info["means"] = [round(float(x), 6) for x in _member_means(payload, members, run)]
    (out / ASSET_INFO).write_text(json.dumps(info) + "\n")
    return out


def _payload(run: Path) -> dict[str, Any]:
    """``best.pt`` of a run directory, or the committed assets of :func:`save_assets`."""
    if (run / ASSET_INFO).exists() and not (run / "best.pt").exists():
        from safetensors.torch import load_file

        payload = json.loads((run / ASSET_INFO).read_text())
        weights = load_file(str(run / ASSET_WEIGHTS))
        payload["student"] = {k: v.float() for k, v in weights.items()}
        return payload
    return load_torch(run / "best.pt", "NoNN checkpoint")


def _member_means(payload: dict[str, Any], members: list[NoNNMember], run: Path) -> np.ndarray:
    """The members' mean pooled features on the training images (from the run's cache)."""
    if "means" in payload:
        return np.asarray(payload["means"], np.float64)
    spec = get_nonn_student(payload["student_name"])
    config = parse_config(payload["config"])
    train, _, _, _ = config_samples(config)
    cache = config.nonn.cache_dir or run / "cache"
    cut = extract_features(spec.base, train, cut=spec.cut, cache_dir=cache)["cut"]
    sums = np.zeros(sum(m.head.out_channels for m in members))
    with torch.no_grad():
        for i in range(0, len(cut), 128):
            h = torch.from_numpy(np.asarray(cut[i : i + 128], np.float32))
            sums += torch.cat([m.pooled(h) for m in members], 1).sum(0).double().numpy()
    return sums / max(len(cut), 1)


def load_run(run: Path) -> tuple[dict[str, Any], list[NoNNMember], nn.Linear, nn.Module]:
    """A run's ``best.pt`` (or its saved assets): payload, trained members, join layer and
    the frozen prefix."""
    payload = _payload(run)
    if payload.get("kind") != "splitdnn-nonn":
        raise ExportError(f"{run} is not a NoNN run (kind {payload.get('kind')!r})")
    spec = get_nonn_student(payload["student_name"])
    groups, k = payload["groups"], payload["students"]
    members = [nonn_member(spec, i, k, len(g), payload["width"]) for i, g in enumerate(groups)]
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                part,
                (example,),
                str(path),
                input_names=["image"],
                output_names=["features"],
                dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        _check(path, part, example)
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
        metrics={"training": metrics, "groups": [len(g) for g in payload["groups"]]},
    )
    return load_nonn_bundle(out)


def _check(path: Path, module: nn.Module, example: torch.Tensor) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": example.numpy()})[0]
    with torch.no_grad():
        want = module(example).numpy()
    diff = float(np.max(np.abs(got - want)))
    if not diff <= TOLERANCE:
        raise ExportError(f"{path.name} differs from torch by {diff:.3g}")


def _ci95(hits: int, n: int) -> tuple[float, float]:
    """The Wilson interval in percent, rounded as the figures files store it."""
    low, high = proportion_ci(hits, n)
    return round(low, 2), round(high, 2)


def member_costs(run: Path) -> list[dict[str, Any]]:
    """Per member: MACs and parameters (prefix + slice), fp32 weight memory, the largest
    activation (fp32 bytes) of one image."""
    _, members, _, prefix = load_run(run)
    spec = get_nonn_student(_payload(run)["student_name"])
    size = get_teacher(spec.base).preprocessing.size
    rows = []
    for member in members:
        part = MemberPart(prefix, member).eval()
        largest = 0

        def hook(_m: nn.Module, _i: Any, o: Any) -> None:
            nonlocal largest
            if isinstance(o, torch.Tensor):
                largest = max(largest, o.numel() * 4)

        handles = [m.register_forward_hook(hook) for m in part.modules() if not list(m.children())]
        with torch.no_grad():
            part(torch.zeros(1, 3, size, size))
        for h in handles:
            h.remove()
        params = count_params(part)
        rows.append(
            {
                "macs": count_macs(part, (3, size, size)),
                "params": params,
                "weights_bytes_fp32": params * 4,
                "largest_activation_bytes": largest,
                "channels": member.head.out_channels,
            }
        )
    return rows


def served_accuracy(
    bundle: NoNNBundle, config_path: Path, quantisation: str = "uint8", limit: int | None = None
) -> dict[str, Any]:
    """Top-1 of the served path on the config's validation images (see the module doc)."""
    from splitdnn.runtime import OnnxModel

    config = parse_config(
        __import__("yaml").safe_load(config_path.read_text()), config_path.resolve().parent
    )
    _, val, classes, _ = config_samples(config)
    if classes != bundle.manifest.labels:
        raise ExportError("the config's classes differ from the bundle's labels")
    val = val[:limit] if limit else val
    models = [OnnxModel(bundle.member_path(i)) for i in range(len(bundle.manifest.members))]
    join = bundle.join()
    spec = bundle.preprocessing
    hits, sizes, ms = 0, [[] for _ in models], [[] for _ in models]
    correct: list[bool] = []
    for sample in val:
        x = load_input(Path(sample.path).read_bytes(), spec)
        feats = []
        for i, model in enumerate(models):
            start = time.perf_counter()
            f = model.run(x)["features"]
            ms[i].append((time.perf_counter() - start) * 1000)
            env = wire.encode(f, bundle_id=bundle.id, quantisation=quantisation)
            sizes[i].append(len(env))
            feats.append(wire.decode_array(env, bundle_id=bundle.id)[1])
        correct.append(bool(np.argmax(join(feats)[0]) == sample.label))
        hits += int(correct[-1])
    n = len(val)
    return {
        "images": n,
        "top1": round(100 * hits / max(n, 1), 2),
        "ci95": _ci95(hits, n),
        "quantisation": quantisation,
        "envelope_bytes": [int(max(s)) if s else 0 for s in sizes],
        "member_ms_median": [round(float(np.median(m)), 2) if m else 0.0 for m in ms],
        "correct": correct,
    }


def teacher_correct(config_path: Path) -> list[bool]:
    """The teacher's (cached maps, its probe) correctness on the config's validation images,
    in the same order as :func:`served_accuracy`."""
    from splitdnn.checkpoints import load_linear
    from splitdnn.distill.nonn import teacher_maps

    config = parse_config(
        __import__("yaml").safe_load(config_path.read_text()), config_path.resolve().parent
    )
    _, val, _, _ = config_samples(config)
    if config.teacher.probe_from is None or config.nonn.cache_dir is None:
        raise ExportError("teacher figures need teacher.probe_from and nonn.cache_dir")
    pooled = teacher_maps(
        config.teacher.name,
        val,
        pretrained=config.teacher.pretrained,
        weights=config.teacher.weights,
        cache_dir=config.nonn.cache_dir,
    )["pooled"]
    with torch.no_grad():
        logits = load_linear(config.teacher.probe_from)(torch.from_numpy(np.array(pooled)))
    return [bool(p == s.label) for p, s in zip(logits.argmax(1).tolist(), val, strict=True)]


def served_minus_teacher(served: list[bool], teacher: list[bool]) -> dict[str, Any]:
    """Served top-1 minus the teacher's on the same images, in points, with its paired 95 %
    interval and the discordant counts."""
    difference = paired_difference(served, teacher)
    return {
        "points": round(difference.points, 2),
        "ci95": tuple(round(bound, 2) for bound in difference.ci95),
        "only_first_right": difference.only_first_right,
        "only_second_right": difference.only_second_right,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export")
    e.add_argument("run", type=Path)
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--name", default="nonn")
    a = sub.add_parser("assets", help="save a run's small trained weights for committing")
    a.add_argument("run", type=Path)
    a.add_argument("--out", type=Path, required=True)
    f = sub.add_parser("figures")
    f.add_argument("bundle", type=Path)
    f.add_argument("--run", type=Path, required=True)
    f.add_argument("--config", type=Path, required=True)
    f.add_argument("--quantisation", default="uint8")
    f.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.command == "assets":
        print(f"NoNN assets -> {save_assets(args.run, args.out)}")
        return
    if args.command == "export":
        bundle = export_nonn(args.run, args.out, args.name)
        print(f"NoNN bundle {bundle.id} -> {args.out}")
        return
    bundle = load_nonn_bundle(args.bundle)
    served = served_accuracy(bundle, args.config, args.quantisation)
    teacher = teacher_correct(args.config)
    record = {
        "bundle": bundle.id,
        "served": {k: v for k, v in served.items() if k != "correct"},
        "teacher": {
            "images": len(teacher),
            "top1": round(100 * sum(teacher) / max(len(teacher), 1), 2),
            "ci95": _ci95(sum(teacher), len(teacher)),
        },
        "served_minus_teacher": served_minus_teacher(served["correct"], teacher),
        "members": member_costs(args.run),
        "correct": [int(c) for c in served["correct"]],
    }
    text = json.dumps(record, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
