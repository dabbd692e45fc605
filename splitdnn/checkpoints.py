"""What training leaves on disk, and the one reader of each kind of file.

A run directory (``splitdnn distill CONFIG --run-dir RUN``)::

    config.json     the validated config, as run
    metrics.jsonl   one JSON line per epoch (see splitdnn.distill.trainer)
    last.pt         student, optimiser, schedule and loop state, for ``--resume``
    best.pt         the student checkpoint of the best epoch (the schema below)
    classifier.pt   the teacher's linear probe of a ``classifier: probe`` run
    cache/          decoded crops and teacher outputs, reused while the data are unchanged

A **student checkpoint** (``best.pt``, ``kind: splitdnn-student``) holds plain values and
tensors only: ``teacher``, ``split_module``, ``bottleneck``, ``variant``, ``student`` (state
dict), ``classifier`` (probe state dict or None), ``classes``, ``metrics``, ``config``.
**Default assets** (``splitdnn/assets/default``) hold the same student as safetensors files
named by ``default.json``, so git holds no pickle. Both read into :class:`StudentCheckpoint`,
from which a later stage (``train.init_from``), the exporter and the evaluator start.

Every ``torch.load`` here passes ``weights_only=True``: a checkpoint is data, never code.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from splitdnn.errors import CheckpointError
from splitdnn.models import get_teacher
from splitdnn.students import (
    BottleneckStudent,
    build_student,
    canonical_variant,
    entropy_student,
)

STUDENT_KIND = "splitdnn-student"
KD_STUDENT_KIND = "splitdnn-kd-student"
BEST, LAST, PROBE = "best.pt", "last.pt", "classifier.pt"
#: Where the committed default assets live, and what they are called.
DEFAULT_ASSETS = Path(__file__).parent / "assets" / "default"
DEFAULT_JSON = "default.json"
STUDENT_FILE = "student.safetensors"
DEFAULT_LOCAL = "efficientnet_lite0"


# --- files ----------------------------------------------------------------------------------


def save_atomic(obj: object, path: Path) -> None:
    """torch.save to a temporary file, then rename: a kill never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_torch(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load`` of plain tensors and values only (``weights_only=True``); a missing,
    corrupt or code-carrying file is a :class:`CheckpointError` that names it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read {what} {path}: {first}") from None


# --- linear probes --------------------------------------------------------------------------


def linear_from_state(state: Mapping[str, torch.Tensor]) -> nn.Linear:
    """A linear classifier from a ``{weight, bias}`` state dict (a probe)."""
    if "weight" not in state:
        raise CheckpointError(f"a linear classifier needs 'weight' (and 'bias'); got {list(state)}")
    weight = state["weight"]
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in state)
    linear.load_state_dict(dict(state))
    return linear.eval()


def load_linear(path: str | Path) -> nn.Linear:
    """A probe from a ``.safetensors`` file, a torch state dict (``.pt``), a checkpoint holding
    one under ``classifier``/``probe``, or a run directory (its ``classifier.pt``)."""
    path = Path(path)
    if path.is_dir():
        path = path / PROBE
    if not path.is_file():
        raise CheckpointError(f"probe file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return linear_from_state(load_file(str(path)))
    state = load_torch(path, "probe")
    for key in ("classifier", "probe"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no state dict")
    return linear_from_state(state)


# --- student checkpoints --------------------------------------------------------------------


@dataclass
class StudentCheckpoint:
    """A distilled bottleneck student and what it was distilled towards.

    ``probe``/``task``/``classes``: the Caltech-style probe task of a ``classifier: probe`` run
    (None for an ImageNet-head run). ``local``/``local_probe`` come only with default assets,
    which also carry the local model's probe for the task. ``source`` is the file read.
    """

    teacher: str
    split_module: str
    bottleneck: int | None
    variant: str
    student: dict[str, torch.Tensor]
    pretrained: bool = True
    probe: dict[str, torch.Tensor] | None = None
    task: str | None = None
    classes: list[str] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    local: str | None = None
    local_probe: dict[str, torch.Tensor] | None = None
    name: str | None = None
    source: Path | None = None

    @property
    def teacher_weights(self) -> Path | None:
        """The user's own teacher state dict the student was distilled towards
        (``teacher.weights`` of its config), or None for the published weights."""
        weights = (self.config.get("teacher") or {}).get("weights")
        return Path(weights) if weights else None

    @property
    def design(self) -> tuple[str, str, int | None, str]:
        """What a student's weights fit: (teacher, split module, bottleneck, variant)."""
        return (self.teacher, self.split_module, self.bottleneck, self.variant)

    def to_payload(self) -> dict[str, Any]:
        """The ``best.pt`` form (see the module docstring)."""
        return {
            "kind": STUDENT_KIND,
            "teacher": self.teacher,
            "split_module": self.split_module,
            "bottleneck": self.bottleneck,
            "variant": self.variant,
            "student": self.student,
            "classifier": self.probe,
            "classes": self.classes,
            "metrics": self.metrics,
            "config": self.config,
        }

    @property
    def entropy_coded(self) -> bool:
        """Whether the bottleneck is entropy-coded (trained with a ``rate`` section)."""
        return bool(self.config.get("rate"))

    def build_student(self) -> BottleneckStudent:
        """The student module with these weights, in eval mode (an
        :class:`~splitdnn.students.EntropyStudent` for an entropy-coded one)."""
        if self.bottleneck is None:
            raise CheckpointError(
                "a student without a bottleneck has no device/server split to export"
            )
        # A teacher_init student's copies of teacher layers are all in the saved state dict,
        # so they start from a random-weight teacher: nothing is downloaded or read twice.
        scaffold = (
            get_teacher(self.teacher).build(False) if self.variant == "teacher_init" else None
        )
        student = build_student(
            self.teacher,
            self.bottleneck,
            self.variant,
            split_module=self.split_module,
            teacher_model=scaffold,
        )
        if self.entropy_coded:
            student = entropy_student(student)
        try:
            student.load_state_dict(dict(self.student))
        except RuntimeError as exc:
            raise CheckpointError(
                f"the saved student does not fit {self.teacher} at {self.split_module} "
                f"b={self.bottleneck}: {exc}"
            ) from None
        return student.eval()


def task_name(config: Mapping[str, Any]) -> str:
    """Name of a probe run's task: its data folder's name (``caltech101``)."""
    root = config.get("data", {}).get("root")
    return Path(root).name.lower().replace("-", "_") if root else "task"


def _from_payload(payload: Any, path: Path, task: str | None = None) -> StudentCheckpoint:
    if not isinstance(payload, dict) or payload.get("kind") != STUDENT_KIND:
        raise CheckpointError(f"{path} is not a splitdnn student checkpoint")
    config = payload.get("config") or {}
    probe = payload.get("classifier")
    return StudentCheckpoint(
        teacher=payload["teacher"],
        split_module=payload["split_module"],
        bottleneck=payload["bottleneck"],
        variant=canonical_variant(payload["variant"]),
        student=payload["student"],
        pretrained=bool(config.get("teacher", {}).get("pretrained", True)),
        probe=probe,
        task=(task or task_name(config)) if probe is not None else None,
        classes=list(payload["classes"]) if probe is not None else None,
        metrics=dict(payload.get("metrics") or {}),
        config=config,
        source=path,
    )


def load_run(run_dir: str | Path, task: str | None = None) -> StudentCheckpoint:
    """The best student of a run directory (its ``best.pt``). ``task`` names the probe task
    (default: the data folder's name)."""
    path = Path(run_dir) / BEST
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no {BEST}; is it a finished `splitdnn distill` run?")
    return _from_payload(load_torch(path), path, task)


def read_student(source: str | Path, task: str | None = None) -> StudentCheckpoint:
    """A student from a run directory, a checkpoint file or a default-assets folder (whose
    task is its own; ``task`` names a run's probe task, default its data folder's name)."""
    source = Path(source)
    if source.is_dir() and not (source / BEST).exists() and is_default_assets(source):
        return read_default_assets(source)
    if not source.is_file() and not (source / BEST).is_file():
        raise CheckpointError(
            f"{source} has neither {BEST} nor {DEFAULT_JSON}; is it a finished `splitdnn "
            "distill` run, or assets written by `splitdnn export assets`?"
        )
    path = source / BEST if source.is_dir() else source
    return _from_payload(load_torch(path), path, task)


# --- default assets -------------------------------------------------------------------------


def _local_prefix(local: str) -> str:
    return local.removeprefix("efficientnet_")


def _contiguous(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses non-contiguous (e.g. channels_last) tensors and shared storage.
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def is_default_assets(path: str | Path) -> bool:
    """Whether ``path`` is a folder of default assets (``default.json``), not a run."""
    return (Path(path) / DEFAULT_JSON).is_file()


def save_default_assets(
    checkpoint: StudentCheckpoint,
    assets_dir: str | Path = DEFAULT_ASSETS,
    *,
    local: str = DEFAULT_LOCAL,
    local_probe: nn.Linear | None = None,
) -> Path:
    """Write a student's weights as default assets: safetensors files (no pickle in git) and
    ``default.json`` naming them. ``local_probe`` is the local model's probe for the
    checkpoint's task. Returns the path of ``default.json``."""
    from safetensors.torch import save_file

    assets = Path(assets_dir)
    assets.mkdir(parents=True, exist_ok=True)
    save_file(_contiguous(checkpoint.student), str(assets / STUDENT_FILE))
    files = {"student": STUDENT_FILE}
    task = checkpoint.task
    if checkpoint.probe is not None and task is not None:
        files["probe"] = f"{task}_probe.safetensors"
        save_file(_contiguous(checkpoint.probe), str(assets / files["probe"]))
        if local_probe is not None:
            files["local_probe"] = f"{_local_prefix(local)}_{task}_probe.safetensors"
            save_file(_contiguous(local_probe.state_dict()), str(assets / files["local_probe"]))
    elif local_probe is not None:
        raise CheckpointError("the run has no probe task, so a local probe has nothing to serve")
    meta = {
        "teacher": checkpoint.teacher,
        "pretrained": checkpoint.pretrained,
        "split_module": checkpoint.split_module,
        "bottleneck": checkpoint.bottleneck,
        "variant": checkpoint.variant,
        "task": task,
        "classes": checkpoint.classes if task else None,
        "local": local,
        "files": files,
        "metrics": checkpoint.metrics,
        "config": checkpoint.config,
    }
    path = assets / DEFAULT_JSON
    path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path


def read_default_assets(assets_dir: str | Path = DEFAULT_ASSETS) -> StudentCheckpoint:
    """The student (and probes) of a default-assets folder.

    ``default.json`` needs ``teacher`` and ``bottleneck`` and, for the probe task,
    ``classes``; everything else has defaults (``task`` caltech101, ``local``
    efficientnet_lite0, the standard file names).
    """
    from safetensors.torch import load_file

    assets = Path(assets_dir)
    meta_path = assets / DEFAULT_JSON
    if not meta_path.is_file():
        raise CheckpointError(
            f"{meta_path} does not exist; write the assets with "
            "`splitdnn export assets RUN_DIR --out DIR` first"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {meta_path}: {exc}") from None
    if not isinstance(meta, dict) or "teacher" not in meta or "bottleneck" not in meta:
        raise CheckpointError(f"{meta_path} needs at least 'teacher' and 'bottleneck'")
    local = meta.get("local") or DEFAULT_LOCAL
    task = meta.get("task", "caltech101")
    files = {
        "student": STUDENT_FILE,
        "probe": f"{task}_probe.safetensors",
        "local_probe": f"{_local_prefix(local)}_{task}_probe.safetensors",
        **(meta.get("files") or {}),
    }

    named = set(meta.get("files") or {})

    def read(key: str) -> dict[str, torch.Tensor] | None:
        """A file by role; a missing one is an error when ``default.json`` names it (or it is
        the student or the probe), else absent (assets without a local probe)."""
        path = assets / files[key]
        if path.is_file():
            return load_file(str(path))
        if key == "local_probe" and key not in named:
            return None
        raise CheckpointError(f"default asset {path} is missing")

    try:
        spec = get_teacher(meta["teacher"])
    except KeyError as exc:
        raise CheckpointError(f"{meta_path}: {exc}") from None
    has_task = bool(task and meta.get("classes"))
    return StudentCheckpoint(
        teacher=spec.name,
        split_module=meta.get("split_module") or spec.student_split,
        bottleneck=meta["bottleneck"],
        variant=canonical_variant(meta.get("variant", "narrow")),
        student=read("student") or {},
        pretrained=bool(meta.get("pretrained", True)),
        probe=read("probe") if has_task else None,
        task=task if has_task else None,
        classes=list(meta["classes"]) if has_task else None,
        metrics=dict(meta.get("metrics") or {}),
        config=dict(meta.get("config") or {}),
        local=local,
        local_probe=read("local_probe") if has_task else None,
        name=meta.get("name"),
        source=meta_path,
    )


# --- whole students (kd, labels, classes) -------------------------------------------------------

#: A whole student's assets: its trained weights (fp16 safetensors) and this JSON of the rest.
KD_STUDENT_JSON = "kd_student.json"
#: The teacher probe a whole-student run fitted itself, copied beside its assets.
KD_TEACHER_PROBE_FILE = "teacher_probe.safetensors"


def save_kd_assets(
    payload: Mapping[str, Any],
    out_dir: str | Path,
    teacher_probe: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """A whole student's ``best.pt`` payload as committed assets: the trained layers in fp16
    safetensors (the frozen prefix is the base's published weights) and a JSON of the plain
    values (name, classes, metrics, config). ``teacher_probe``: the probe the run fitted for
    its teacher (a state dict), kept as ``teacher_probe.safetensors`` and named in the JSON,
    since the run directory does not travel with the assets. Returns the JSON's path."""
    from safetensors.torch import save_file

    if payload.get("kind") != KD_STUDENT_KIND:
        raise CheckpointError("not a whole-student checkpoint (kind != splitdnn-kd-student)")
    out = Path(out_dir)
    extra = {}
    if teacher_probe is not None:
        out.mkdir(parents=True, exist_ok=True)
        save_file(_contiguous(teacher_probe), str(out / KD_TEACHER_PROBE_FILE))
        extra["teacher_probe"] = KD_TEACHER_PROBE_FILE
    return save_payload_assets(payload, out, STUDENT_FILE, KD_STUDENT_JSON, extra)


def save_payload_assets(
    payload: Mapping[str, Any],
    out_dir: Path,
    weights_file: str,
    json_file: str,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """A run's ``best.pt`` payload as small committed files: its ``student`` state dict in
    fp16 safetensors (``weights_file``, named in the JSON's ``weights``) and every other value,
    with ``extra``, as ``json_file``. Read back by :func:`read_payload_assets`."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() for k, v in payload["student"].items()}
    save_file(state, str(out_dir / weights_file))
    meta = {k: v for k, v in payload.items() if k != "student"}
    meta["weights"] = {"file": weights_file, "dtype": "float16"}
    path = out_dir / json_file
    path.write_text(json.dumps({**meta, **(extra or {})}, indent=2) + "\n")
    return path


def read_payload_assets(directory: Path, weights_file: str, json_file: str) -> dict[str, Any]:
    """The payload of :func:`save_payload_assets` (float32 tensors under ``student``); the
    JSON's ``weights`` names the weights file, else ``weights_file``."""
    from safetensors.torch import load_file

    try:
        meta = json.loads((directory / json_file).read_text())
    except ValueError as exc:
        raise CheckpointError(f"{directory / json_file}: {exc}") from None
    state = load_file(str(directory / meta.get("weights", {}).get("file", weights_file)))
    return {**meta, "student": {k: v.float() for k, v in state.items()}}


def read_kd_student(source: str | Path) -> dict[str, Any]:
    """A whole student's payload (``best.pt``'s schema, float32 tensors) from a run directory,
    a ``best.pt`` file or a folder written by :func:`save_kd_assets` (whose ``config`` paths
    are relative to that folder, and ``teacher_probe``, when present, a file in it)."""
    source = Path(source)
    if source.is_dir() and (source / KD_STUDENT_JSON).is_file():
        return read_payload_assets(source, STUDENT_FILE, KD_STUDENT_JSON)
    path = source / BEST if source.is_dir() else source
    payload = load_torch(path)
    if not isinstance(payload, dict) or payload.get("kind") != KD_STUDENT_KIND:
        raise CheckpointError(f"{path} is not a whole student (method kd, labels or classes)")
    return payload
