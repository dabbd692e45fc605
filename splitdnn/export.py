"""Torch models -> a model bundle: four ONNX files checked against torch, plus ``manifest.json``.

::

    device.onnx    "image" [N,3,S,S] -> "bottleneck"             the student's encoder
    server.onnx    "bottleneck" -> "logits_<task>" per task       decoder + teacher tail + heads
    offload.onnx   "image" -> "logits_<task>" per task            the whole teacher
    local.onnx     "image" [N,3,L,L] -> "logits_<task>" per task  a device-only model

Every file is exported with a dynamic batch axis (opset 17, the TorchScript exporter, which
handles EfficientNet-Lite's static "same" padding), then run in onnxruntime on a batch of two
and compared with torch; a difference over :data:`TOLERANCE` raises :class:`ExportError`, so a
bundle on disk always reproduces the model it came from. The manifest is written by
:func:`splitdnn.bundle.write_manifest`.

Three sources build the same :class:`BundleParts`:

* :func:`export_run` — a distillation run directory (``best.pt`` from the trainer);
* :func:`export_default` — the committed default assets (safetensors weights + ``default.json``);
* :func:`save_default_assets` writes those assets from a run directory (no pickle in git).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from splitdnn.bundle import MANIFEST, Manifest, write_manifest
from splitdnn.errors import ExportError
from splitdnn.models import TeacherSpec, get_teacher
from splitdnn.students import BottleneckStudent, build_student

OPSET = 17
#: Largest allowed |onnxruntime - torch| on any output (logits or bottleneck).
TOLERANCE = 1e-4
LOGITS_PREFIX = "logits_"
#: Where the committed default assets live, and what they are called.
DEFAULT_ASSETS = Path(__file__).parent / "assets" / "default"
DEFAULT_JSON = "default.json"
STUDENT_FILE = "student.safetensors"
DEFAULT_LOCAL = "efficientnet_lite0"


# --- the exported modules -----------------------------------------------------------------


class TaskHeads(nn.Module):
    """Pooled features -> one logits tensor per task, in task order (the ONNX output order)."""

    def __init__(self, classifiers: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.tasks = list(classifiers)
        self.heads = nn.ModuleList(classifiers.values())

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(head(z) for head in self.heads)


class ServerPart(nn.Module):
    """Bottleneck -> student decoder -> teacher tail up to pooled features -> task heads."""

    def __init__(self, decoder: nn.Module, features: nn.Module, heads: TaskHeads) -> None:
        super().__init__()
        self.decoder, self.features, self.heads = decoder, features, heads

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.heads(self.features(self.decoder(z)))


class ImagePart(nn.Module):
    """Image -> backbone(s) up to pooled features -> task heads (offload and local models)."""

    def __init__(self, backbone: nn.Module, heads: TaskHeads) -> None:
        super().__init__()
        self.backbone, self.heads = backbone, heads

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.heads(self.backbone(x))


@dataclass
class BundleParts:
    """Everything a bundle is made of, as torch modules in eval mode.

    ``classifiers`` act on the teacher's pooled features, ``local_classifiers`` on the local
    model's; both map task name -> linear layer. ``labels`` has every task of the bundle.
    """

    name: str
    teacher: TeacherSpec
    split_module: str
    student: BottleneckStudent
    teacher_model: nn.Module  # the whole teacher (its classifier replaced), for MAC counts
    teacher_head: nn.Module
    teacher_features: nn.Module
    classifiers: dict[str, nn.Module]
    labels: dict[str, list[str]]
    local: TeacherSpec
    local_backbone: nn.Module
    local_classifiers: dict[str, nn.Module]
    default_task: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


# --- export and check ---------------------------------------------------------------------


def export_onnx(
    module: nn.Module, example: torch.Tensor, path: Path, input_name: str, outputs: list[str]
) -> None:
    """One ONNX file with a dynamic batch axis on the input and every output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-value shapes
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            input_names=[input_name],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [input_name, *outputs]},
            opset_version=OPSET,
            dynamo=False,
        )


def check_onnx(
    path: Path, module: nn.Module, example: torch.Tensor, tolerance: float = TOLERANCE
) -> float:
    """Run ``path`` in onnxruntime and ``module`` in torch on ``example``; return the largest
    absolute difference, or raise :class:`ExportError` when it exceeds ``tolerance``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    with torch.no_grad():
        want = module(example)
    want = list(want) if isinstance(want, tuple | list) else [want]
    if len(got) != len(want):
        raise ExportError(f"{path.name}: onnxruntime gave {len(got)} outputs, torch {len(want)}")
    worst = 0.0
    for name, a, b in zip((o.name for o in session.get_outputs()), got, want, strict=True):
        if a.shape != tuple(b.shape):
            raise ExportError(f"{path.name}: {name} has shape {a.shape}, torch {tuple(b.shape)}")
        diff = float(np.max(np.abs(a - b.numpy()))) if a.size else 0.0
        if not diff <= tolerance:  # also catches NaN
            raise ExportError(
                f"{path.name}: output {name} differs from torch by {diff:.3g} (> {tolerance:g})"
            )
        worst = max(worst, diff)
    return worst


def _prepare_output_dir(out_dir: Path) -> None:
    """Refuse to scatter files into a non-empty folder that is not already a bundle."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ExportError(f"{out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
            raise ExportError(
                f"{out_dir} is not empty and holds no bundle; choose a new or empty folder"
            )
        for stale in out_dir.glob("*.onnx*"):
            stale.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def bundle_costs(parts: BundleParts) -> dict[str, Any]:
    """Size and MAC figures of the split, recorded in the manifest's metrics."""
    from splitdnn.profile import count_macs, count_params, head_macs

    input_shape = parts.teacher.input_shape
    with torch.no_grad():
        z = parts.student.encode(torch.zeros(1, *input_shape))
    device = count_macs(parts.student.encoder, input_shape)
    # On the original teacher: its traced head may inline layers that fire no hooks.
    head = head_macs(parts.teacher_model, parts.split_module, input_shape)
    elements = int(np.prod(z.shape[1:]))
    return {
        "bottleneck_shape": list(z.shape[1:]),
        "data_size_percent": 100.0 * elements / int(np.prod(input_shape)),
        "device_macs": device,
        "teacher_head_macs": head,
        "device_macs_reduction_percent": 100.0 * (1.0 - device / head) if head else None,
        "device_params": count_params(parts.student.encoder),
        "server_decoder_params": count_params(parts.student.decoder),
    }


def export_bundle(
    parts: BundleParts, out_dir: str | Path, *, check: bool = True, seed: int = 0
) -> Manifest:
    """Write the four ONNX files and the manifest into ``out_dir``; return the manifest.

    With ``check`` (the default) every file is compared with torch on a batch of two random
    inputs (exported with batch one, so the dynamic batch axis is exercised too).
    """
    out_dir = Path(out_dir)
    _prepare_output_dir(out_dir)
    for module in (
        parts.student,
        parts.teacher_model,
        parts.teacher_head,
        parts.teacher_features,
        parts.local_backbone,
        *parts.classifiers.values(),
        *parts.local_classifiers.values(),
    ):
        module.eval().to(memory_format=torch.contiguous_format)
    tasks = list(parts.labels)
    missing = [t for t in tasks if t not in parts.classifiers]
    if missing:
        raise ExportError(f"no teacher classifier for task(s) {missing}")
    heads = TaskHeads({t: parts.classifiers[t] for t in tasks})
    local_tasks = [t for t in tasks if t in parts.local_classifiers]
    if not local_tasks:
        raise ExportError(f"the local model has a classifier for none of the tasks {tasks}")
    local_heads = TaskHeads({t: parts.local_classifiers[t] for t in local_tasks})

    generator = torch.Generator().manual_seed(seed)
    size, local_size = parts.teacher.input_size, parts.local.input_size
    image = torch.randn(2, 3, size, size, generator=generator)
    local_image = torch.randn(2, 3, local_size, local_size, generator=generator)
    with torch.no_grad():
        bottleneck = parts.student.encode(image)
    logits = [LOGITS_PREFIX + t for t in tasks]
    local_logits = [LOGITS_PREFIX + t for t in local_tasks]
    offload = ImagePart(nn.Sequential(parts.teacher_head, parts.teacher_features), heads)
    jobs = [
        ("device", parts.student.encoder, image, "image", ["bottleneck"]),
        (
            "server",
            ServerPart(parts.student.decoder, parts.teacher_features, heads),
            bottleneck,
            "bottleneck",
            logits,
        ),
        ("offload", offload, image, "image", logits),
        ("local", ImagePart(parts.local_backbone, local_heads), local_image, "image", local_logits),
    ]
    diffs: dict[str, float] = {}
    with torch.no_grad():
        for role, module, example, input_name, outputs in jobs:
            path = out_dir / f"{role}.onnx"
            export_onnx(module, example[:1], path, input_name, outputs)
            if check:
                diffs[role] = check_onnx(path, module, example)

    metrics = {
        **parts.metrics,
        **bundle_costs(parts),
        "local_model": parts.local.name,
        "local_tasks": local_tasks,
    }
    if check:
        metrics["onnx_max_abs_diff"] = diffs
    return write_manifest(
        out_dir,
        name=parts.name,
        teacher=parts.teacher.name,
        split_module=parts.split_module,
        preprocessing=parts.teacher.preprocessing,
        local_preprocessing=parts.local.preprocessing,
        bottleneck_shape=list(bottleneck.shape[1:]),
        tasks={t: parts.labels[t] for t in tasks},
        default_task=parts.default_task or ("imagenet" if "imagenet" in tasks else tasks[0]),
        metrics=metrics,
    )


# --- building the parts -------------------------------------------------------------------


def linear_from_state(state: Mapping[str, torch.Tensor]) -> nn.Linear:
    """A linear classifier from a ``{weight, bias}`` state dict (a probe)."""
    if "weight" not in state:
        raise ExportError(f"a linear classifier needs 'weight' (and 'bias'); got {list(state)}")
    weight = state["weight"]
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in state)
    linear.load_state_dict(dict(state))
    return linear.eval()


def load_linear(path: str | Path) -> nn.Linear:
    """A probe from a ``.safetensors`` file or a torch state dict (``.pt``; a ``best.pt`` or a
    dict holding it under ``classifier``/``probe`` works too)."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"probe file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return linear_from_state(load_file(str(path)))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("classifier", "probe"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ExportError(f"{path} holds no state dict")
    return linear_from_state(state)


def teacher_parts(spec: TeacherSpec, pretrained: bool, split_module: str):
    """The frozen teacher cut at ``split_module``: (model, head, features, own classifier)."""
    from splitdnn.distill.trainer import TeacherParts

    model = spec.build(pretrained)
    parts = TeacherParts(spec, model, split_module)
    return model, parts.head, parts.features, parts.classifier


def local_parts(name: str, probes: Mapping[str, nn.Module] | None = None):
    """A device-only model (its real weights) as (spec, backbone, classifiers per task).

    Its own classifier is the ``imagenet`` task; ``probes`` add other tasks on its features.
    """
    spec = get_teacher(name)
    model = spec.build(True)
    own = model.get_submodule(spec.classifier)
    model.set_submodule(spec.classifier, nn.Identity())
    classifiers: dict[str, nn.Module] = {"imagenet": own} if spec.num_classes == 1000 else {}
    classifiers.update(probes or {})
    return spec, model.eval(), classifiers


def _student_from_state(
    teacher: str, bottleneck: int | None, variant: str, state: Mapping[str, torch.Tensor]
) -> BottleneckStudent:
    if bottleneck is None:
        raise ExportError("a student without a bottleneck has no device/server split to export")
    student = build_student(teacher, bottleneck, variant)
    try:
        student.load_state_dict(dict(state))
    except RuntimeError as exc:
        raise ExportError(
            f"the saved student does not fit {teacher} b={bottleneck}: {exc}"
        ) from exc
    return student.eval()


def _imagenet_task(spec: TeacherSpec, classifier: nn.Module) -> tuple[dict, dict]:
    from splitdnn.labels import imagenet_labels

    if spec.num_classes != 1000:
        return {}, {}
    return {"imagenet": classifier}, {"imagenet": list(imagenet_labels())}


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """The trainer's ``best.pt`` of a run directory (plain tensors and values, no code)."""
    path = Path(run_dir) / "best.pt"
    if not path.is_file():
        raise ExportError(f"{run_dir} has no best.pt; is it a finished `splitdnn distill` run?")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("kind") != "splitdnn-student":
        raise ExportError(f"{path} is not a splitdnn student checkpoint")
    return payload


def task_name(payload: Mapping[str, Any]) -> str:
    """Name of a probe run's task: the data folder's name (``caltech101``)."""
    root = payload.get("config", {}).get("data", {}).get("root")
    return Path(root).name.lower().replace("-", "_") if root else "task"


def run_parts(
    run_dir: str | Path,
    *,
    local: str = DEFAULT_LOCAL,
    local_probes: Mapping[str, str | Path] | None = None,
    task: str | None = None,
    name: str | None = None,
) -> BundleParts:
    """:class:`BundleParts` of a distillation run: its student, its teacher (and probe), and a
    local model with its own ImageNet head plus any ``local_probes`` (task -> probe file)."""
    payload = load_run(run_dir)
    spec = get_teacher(payload["teacher"])
    split = payload["split_module"]
    pretrained = bool(payload.get("config", {}).get("teacher", {}).get("pretrained", True))
    student = _student_from_state(
        spec.name, payload["bottleneck"], payload["variant"], payload["student"]
    )
    model, head, features, own = teacher_parts(spec, pretrained, split)
    classifiers, labels = _imagenet_task(spec, own)
    if payload.get("classifier") is not None:
        probe_task = task or task_name(payload)
        classifiers[probe_task] = linear_from_state(payload["classifier"])
        labels[probe_task] = list(payload["classes"])
    if not classifiers:
        raise ExportError(f"{spec.name} has neither an ImageNet head nor a probe to export")
    probes = {t: load_linear(p) for t, p in (local_probes or {}).items()}
    local_spec, backbone, local_classifiers = local_parts(local, probes)
    metrics = {k: v for k, v in (payload.get("metrics") or {}).items()}
    return BundleParts(
        name=name or f"{spec.name}-b{payload['bottleneck']}-{Path(run_dir).name}",
        teacher=spec,
        split_module=split,
        student=student,
        teacher_model=model,
        teacher_head=head,
        teacher_features=features,
        classifiers=classifiers,
        labels=labels,
        local=local_spec,
        local_backbone=backbone,
        local_classifiers=local_classifiers,
        metrics={"validation": metrics} if metrics else {},
    )


def export_run(run_dir: str | Path, out_dir: str | Path, **kwargs: Any) -> Manifest:
    """A bundle from a distillation run directory; see :func:`run_parts` for the options."""
    check = kwargs.pop("check", True)
    return export_bundle(run_parts(run_dir, **kwargs), out_dir, check=check)


# --- the embedded default -----------------------------------------------------------------


def _local_prefix(local: str) -> str:
    return local.removeprefix("efficientnet_")


def _contiguous(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses non-contiguous (e.g. channels_last) tensors and shared storage.
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def save_default_assets(
    run_dir: str | Path,
    assets_dir: str | Path = DEFAULT_ASSETS,
    *,
    local_probe: str | Path | None = None,
    local: str = DEFAULT_LOCAL,
    task: str | None = None,
) -> Path:
    """Write the default bundle's source weights from a run: safetensors files (no pickle in
    git) and ``default.json`` naming them. ``local_probe`` is the local model's probe for the
    run's task. Returns the path of ``default.json``."""
    from safetensors.torch import save_file

    payload = load_run(run_dir)
    assets = Path(assets_dir)
    assets.mkdir(parents=True, exist_ok=True)
    save_file(_contiguous(payload["student"]), str(assets / STUDENT_FILE))
    files = {"student": STUDENT_FILE}
    probe_task = None
    if payload.get("classifier") is not None:
        probe_task = task or task_name(payload)
        files["probe"] = f"{probe_task}_probe.safetensors"
        save_file(_contiguous(payload["classifier"]), str(assets / files["probe"]))
        if local_probe is not None:
            files["local_probe"] = f"{_local_prefix(local)}_{probe_task}_probe.safetensors"
            probe = load_linear(local_probe)
            save_file(_contiguous(probe.state_dict()), str(assets / files["local_probe"]))
    elif local_probe is not None:
        raise ExportError("the run has no probe task, so a local probe has nothing to serve")
    config = payload.get("config", {})
    meta = {
        "teacher": payload["teacher"],
        "pretrained": bool(config.get("teacher", {}).get("pretrained", True)),
        "split_module": payload["split_module"],
        "bottleneck": payload["bottleneck"],
        "variant": payload["variant"],
        "task": probe_task,
        "classes": list(payload["classes"]) if probe_task else None,
        "local": local,
        "files": files,
        "metrics": payload.get("metrics") or {},
        "config": config,
    }
    path = assets / DEFAULT_JSON
    path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path


def _read_default_meta(assets: Path) -> tuple[dict[str, Any], Callable[[str], Path]]:
    """``default.json`` of an assets folder, and a lookup of its files by role (``student``,
    ``probe``, ``local_probe``; standard names unless ``files`` says otherwise)."""
    meta_path = assets / DEFAULT_JSON
    if not meta_path.is_file():
        raise ExportError(
            f"{meta_path} does not exist; write the assets with "
            "`splitdnn export RUN_DIR --assets DIR` first"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {meta_path}: {exc}") from exc
    if not isinstance(meta, dict) or "teacher" not in meta or "bottleneck" not in meta:
        raise ExportError(f"{meta_path} needs at least 'teacher' and 'bottleneck'")
    local = meta.get("local") or DEFAULT_LOCAL
    task = meta.get("task", "caltech101")
    files = {
        "student": STUDENT_FILE,
        "probe": f"{task}_probe.safetensors",
        "local_probe": f"{_local_prefix(local)}_{task}_probe.safetensors",
        **(meta.get("files") or {}),
    }

    def need(key: str) -> Path:
        path = assets / files[key]
        if not path.is_file():
            raise ExportError(f"default asset {path} is missing")
        return path

    return meta, need


def is_default_assets(path: str | Path) -> bool:
    """Whether ``path`` is a folder of default assets (``default.json``), not a run."""
    return (Path(path) / DEFAULT_JSON).is_file()


def default_student_checkpoint(assets_dir: str | Path = DEFAULT_ASSETS) -> dict[str, Any]:
    """The student of default assets in the trainer's ``best.pt`` layout (``kind``,
    ``teacher``, ``split_module``, ``bottleneck``, ``variant``, ``student`` state dict), so a
    distillation stage can start from the embedded default (``train.init_from``)."""
    return _student_checkpoint(*_read_default_meta(Path(assets_dir)))


def _student_checkpoint(meta: Mapping[str, Any], need: Callable[[str], Path]) -> dict[str, Any]:
    from safetensors.torch import load_file

    spec = get_teacher(meta["teacher"])
    return {
        "kind": "splitdnn-student",
        "teacher": spec.name,
        "split_module": meta.get("split_module") or spec.student_split,
        "bottleneck": meta["bottleneck"],
        "variant": meta.get("variant", "caltech101"),
        "student": load_file(str(need("student"))),
    }


def default_parts(assets_dir: str | Path = DEFAULT_ASSETS) -> BundleParts:
    """:class:`BundleParts` from the committed default assets (see :func:`save_default_assets`).

    ``default.json`` needs ``teacher``, ``bottleneck`` and, for the probe task, ``classes``;
    everything else has defaults (``task`` caltech101, ``local`` efficientnet_lite0, the
    standard file names).
    """
    from safetensors.torch import load_file

    assets = Path(assets_dir)
    meta, need = _read_default_meta(assets)
    spec = get_teacher(meta["teacher"])
    local = meta.get("local") or DEFAULT_LOCAL
    task = meta.get("task", "caltech101")
    checkpoint = _student_checkpoint(meta, need)
    student = _student_from_state(
        spec.name, checkpoint["bottleneck"], checkpoint["variant"], checkpoint["student"]
    )
    split = checkpoint["split_module"]
    model, head, features, own = teacher_parts(spec, bool(meta.get("pretrained", True)), split)
    classifiers, labels = _imagenet_task(spec, own)
    local_probes: dict[str, nn.Module] = {}
    if task and meta.get("classes"):
        classifiers[task] = linear_from_state(load_file(str(need("probe"))))
        labels[task] = list(meta["classes"])
        local_probes[task] = linear_from_state(load_file(str(need("local_probe"))))
    local_spec, backbone, local_classifiers = local_parts(local, local_probes)
    return BundleParts(
        name=meta.get("name") or f"default-{spec.name}-b{meta['bottleneck']}",
        teacher=spec,
        split_module=split,
        student=student,
        teacher_model=model,
        teacher_head=head,
        teacher_features=features,
        classifiers=classifiers,
        labels=labels,
        local=local_spec,
        local_backbone=backbone,
        local_classifiers=local_classifiers,
        default_task="imagenet" if "imagenet" in labels else None,
        metrics={"validation": meta["metrics"]} if meta.get("metrics") else {},
    )


def export_default(
    assets_dir: str | Path = DEFAULT_ASSETS,
    out_dir: str | Path | None = None,
    *,
    check: bool = True,
) -> Manifest:
    """Build the embedded default bundle from the committed assets into ``out_dir`` (default:
    the packaged ``splitdnn/assets/default-bundle``, what the services load)."""
    from splitdnn.bundle import default_bundle_path

    target = Path(out_dir) if out_dir is not None else default_bundle_path()
    return export_bundle(default_parts(assets_dir), target, check=check)
