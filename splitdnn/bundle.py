"""Model bundles: a directory of ONNX files plus ``manifest.json`` that pins each by sha256.

::

    manifest.json   the :class:`Manifest` below
    device.onnx     "image" [N,3,S,S] -> "bottleneck" [N,C,H,W]      (runs on the device)
    server.onnx     "bottleneck" -> "logits_<task>" per task            (runs on the edge)
    offload.onnx    "image" -> "logits_<task>": the whole teacher       (offload mode)
    local.onnx      "image" (its own preprocessing) -> "logits_<task>"  (local mode)

A *ladder* bundle (issue #21) holds several entropy-coded split rates: ``rates`` maps each
name to its own device and server parts and coding tables (``device-<rate>.onnx``, ...; a file
identical to another rate's is stored once) with its held-out figures, and ``default_rate``
is the one the top-level ``models``/``coding`` name, so a reader that knows no ladder serves
the default rate. A one-rate bundle has neither key (its manifest is what it always was).

The bundle id is the first 16 hex digits of sha256 over the sorted ``(file name, sha256)``
pairs, so head and tail can prove in one short string that they run the same weights.
The exporter calls :func:`write_manifest`; services call :func:`load_bundle`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from splitdnn import rans
from splitdnn.errors import BundleError, UnknownNameError, UnknownRateError, UnknownTaskError
from splitdnn.imaging import Preprocessing
from splitdnn.latency import MODES, split_option
from splitdnn.wire import ENTROPY, Quantisation

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: File name of an entropy-coded bottleneck's tables in a bundle.
CODING_FILE = "coding.json"
#: The roles a bundle provides and their default file names.
ROLES: tuple[str, ...] = ("device", "server", "offload", "local")
DEFAULT_FILES: dict[str, str] = {role: f"{role}.onnx" for role in ROLES}
AnyManifest = TypeVar("AnyManifest", bound=BaseModel)


class PreprocessingSpec(BaseModel):
    """The JSON form of :class:`splitdnn.imaging.Preprocessing`."""

    size: int = Field(gt=0)
    resize: int = Field(gt=0)
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)

    def to_preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.model_dump())


class BottleneckSpec(BaseModel):
    shape: list[int] = Field(min_length=1)
    dtype: str = "FP32"


class TaskSpec(BaseModel):
    labels: list[str] = Field(min_length=1)


#: The top-1 figures a task's measured accuracy may hold: the teacher (offload, the
#: reference every drop is counted from), the local model, split at each quantisation.
ACCURACY_KEYS: tuple[str, ...] = (
    "offload",
    "local",
    "split_fp32",
    "split_fp16",
    "split_uint8",
    "split_uint4",
    "split_entropy",
)


class TaskAccuracy(BaseModel):
    """Top-1 per mode of one task, measured on held-out images (``splitdnn evaluate BUNDLE
    --record``): what auto's accuracy bound reads, so auto never serves a mode that loses
    more than the caller allows without saying so."""

    images: int = Field(gt=0)
    data: str = Field(description="which images: never used to train or pick the checkpoint")
    top1: dict[str, float]

    @model_validator(mode="after")
    def _known_keys(self) -> TaskAccuracy:
        unknown = sorted(set(self.top1) - set(ACCURACY_KEYS))
        if unknown or "offload" not in self.top1:
            raise ValueError(
                f"top1 needs 'offload' (the reference) and only keys of {list(ACCURACY_KEYS)}; "
                f"got {sorted(self.top1)}"
            )
        return self

    def drop(self, mode: str, quantisation: str = "uint8") -> float | None:
        """Points ``mode`` loses against the teacher (``split`` at ``quantisation``); None
        when that mode was not measured."""
        key = f"split_{quantisation}" if mode == "split" else mode
        if key not in self.top1:
            return None
        return self.top1["offload"] - self.top1[key]


#: Measured accuracy kept beside a bundle's sources (the default assets), for the bundle of
#: that id only: ``{"bundle_id": ..., "tasks": {task: TaskAccuracy}}``.
ACCURACY_FILE = "accuracy.json"


class MeasuredAccuracy(BaseModel):
    bundle_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    tasks: dict[str, TaskAccuracy]
    #: What the bundle should send split as, chosen on these figures (``Manifest.quantisation``).
    quantisation: Quantisation | None = None


def read_measured_accuracy(directory: str | Path) -> MeasuredAccuracy | None:
    """``directory/accuracy.json``, or None when there is none."""
    path = Path(directory) / ACCURACY_FILE
    if not path.is_file():
        return None
    try:
        return MeasuredAccuracy.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise BundleError(f"{path} is not a valid accuracy file: {exc}") from exc


class FileEntry(BaseModel):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class ModelFiles(BaseModel):
    device: str = "device.onnx"
    server: str = "server.onnx"
    offload: str = "offload.onnx"
    local: str = "local.onnx"


#: What a rate may be called: it travels in ``?rate=`` and in an envelope.
RATE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"


class RateSpec(BaseModel):
    """One operating point of a ladder: its files (listed in the manifest's ``files``), its
    bottleneck, and what it measured on held-out images (``splitdnn evaluate --record``)."""

    device: str
    server: str
    coding: str
    bottleneck: BottleneckSpec
    #: task -> held-out top-1 per mode; ``split_entropy`` is this rate's split as sent
    accuracy: dict[str, TaskAccuracy] = Field(default_factory=dict)
    #: task -> median bytes of this rate's envelope on the same images
    median_bytes: dict[str, float] = Field(default_factory=dict)
    #: where the rate came from (its run, beta), for people
    metrics: dict[str, Any] = Field(default_factory=dict)

    def drop(self, task: str) -> float | None:
        """Points this rate's split loses against the teacher on ``task``; None unmeasured."""
        figures = self.accuracy.get(task)
        return figures.drop("split", "entropy") if figures else None


class RateFigures(BaseModel):
    """One rate's held-out figures as a ladder's manifest keeps them (task -> ...)."""

    accuracy: dict[str, TaskAccuracy] = Field(default_factory=dict)
    median_bytes: dict[str, float] = Field(default_factory=dict)


#: Beside committed rate assets (``splitdnn/assets/rates``): the ladder's order, its default
#: rate and the figures measured on the ladder bundle of one id, so a ladder rebuilt from the
#: assets serves auto's accuracy bound without measuring again.
LADDER_FILE = "ladder.json"


class LadderAssets(BaseModel):
    #: rate names in ladder order (fewest bytes first); each is a folder of assets beside
    rates: list[str] = Field(min_length=1)
    default_rate: str
    #: the bundle id the figures were measured on; None: not measured
    measured_on: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$")
    figures: dict[str, RateFigures] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> LadderAssets:
        bad = [r for r in self.rates if not re.match(RATE_NAME, r)]
        if bad or len(set(self.rates)) != len(self.rates):
            raise ValueError(f"rates must be distinct names matching {RATE_NAME}: {self.rates}")
        if self.default_rate not in self.rates:
            raise ValueError(f"default_rate {self.default_rate!r} is not one of {self.rates}")
        if set(self.figures) - set(self.rates):
            raise ValueError(f"figures for rates not in the ladder: {sorted(self.figures)}")
        return self


def read_ladder_assets(directory: str | Path) -> LadderAssets:
    """``directory/ladder.json`` (see :data:`LADDER_FILE`)."""
    path = Path(directory) / LADDER_FILE
    try:
        return LadderAssets.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}") from None
    except ValidationError as exc:
        raise BundleError(f"{path} is not a valid ladder file: {exc}") from exc


def write_ladder_assets(directory: str | Path, ladder: LadderAssets) -> Path:
    """Write ``ladder`` as ``directory/ladder.json`` (UTF-8, whole or not at all)."""
    write_manifest_file(Path(directory), LADDER_FILE, ladder)
    return Path(directory) / LADDER_FILE


class Manifest(BaseModel):
    """``manifest.json``; field names are a contract with the exporter and the services."""

    model_config = ConfigDict(extra="allow")

    format_version: int = FORMAT_VERSION
    bundle_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    name: str
    teacher: str
    split_module: str
    preprocessing: PreprocessingSpec
    local_preprocessing: PreprocessingSpec
    bottleneck: BottleneckSpec
    tasks: dict[str, TaskSpec] = Field(min_length=1)
    default_task: str
    models: ModelFiles = Field(default_factory=ModelFiles)
    files: dict[str, FileEntry]
    metrics: dict[str, Any] = Field(default_factory=dict)
    #: task -> measured held-out accuracy per mode (absent: not measured).
    accuracy: dict[str, TaskAccuracy] = Field(default_factory=dict)
    #: The entropy-coding tables of an entropy-coded bottleneck (a file listed in ``files``),
    #: or None: the bottleneck goes as a plain tensor (envelope version 1).
    coding: str | None = None
    #: What a plain bundle's bottleneck is sent as when the head is left to the bundle
    #: (``quantisation: bundle``, its default): a version 1 quantisation of ``splitdnn.wire``
    #: whose held-out cost was measured; None: uint8. Ignored with ``coding`` (entropy).
    quantisation: Quantisation | None = None
    #: A ladder: rate name -> its parts and figures (None: a one-rate bundle).
    rates: dict[str, RateSpec] | None = None
    #: The rate the top-level ``models.device``/``models.server``/``coding`` name.
    default_rate: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"format_version {self.format_version} is not supported")
        if self.default_task not in self.tasks:
            raise ValueError(f"default_task {self.default_task!r} is not one of {list(self.tasks)}")
        unknown = sorted(set(self.accuracy) - set(self.tasks))
        if unknown:
            raise ValueError(f"accuracy for task(s) {unknown} the bundle does not have")
        for role in ROLES:
            if getattr(self.models, role) not in self.files:
                raise ValueError(f"models.{role} is not listed in files")
        if self.coding is not None and self.coding not in self.files:
            raise ValueError("coding is not listed in files")
        self._consistent_ladder()
        return self

    def _consistent_ladder(self) -> None:
        if self.rates is None:
            if self.default_rate is not None:
                raise ValueError("default_rate without rates")
            return
        if not self.rates or self.default_rate not in self.rates:
            raise ValueError(f"default_rate {self.default_rate!r} is not one of {list(self.rates)}")
        for name, rate in self.rates.items():
            if not re.match(RATE_NAME, name):
                raise ValueError(f"rate name {name!r} does not match {RATE_NAME}")
            for filename in (rate.device, rate.server, rate.coding):
                if filename not in self.files:
                    raise ValueError(f"rate {name!r}: {filename} is not listed in files")
            unknown = sorted((set(rate.accuracy) | set(rate.median_bytes)) - set(self.tasks))
            if unknown:
                raise ValueError(f"rate {name!r}: figures for task(s) {unknown} not in tasks")
        default = self.rates[self.default_rate]
        top = (self.models.device, self.models.server, self.coding, self.bottleneck.shape)
        if (default.device, default.server, default.coding, default.bottleneck.shape) != top:
            raise ValueError("the default rate's files must be the top-level models and coding")


def bundle_id_of(files: dict[str, FileEntry] | dict[str, str]) -> str:
    """16 hex digits of sha256 over the sorted (file name, sha256) pairs."""
    pairs = sorted(
        (name, entry if isinstance(entry, str) else entry.sha256) for name, entry in files.items()
    )
    digest = hashlib.sha256()
    for name, sha in pairs:
        digest.update(f"{name}\0{sha}\n".encode())
    return digest.hexdigest()[:16]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path, what: str, manifest: str = "a manifest") -> FileEntry:
    """``path``'s size and sha256, or a :class:`BundleError` naming ``what`` is missing."""
    if not path.is_file():
        raise BundleError(f"cannot write {manifest}: {what} {path} does not exist")
    return FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)


def default_bundle_path() -> Path:
    """``$SPLITDNN_BUNDLE``, else the bundle shipped inside the package."""
    env = os.environ.get("SPLITDNN_BUNDLE")
    return Path(env) if env else Path(__file__).parent / "assets" / "default-bundle"


@dataclass(frozen=True)
class AccuracyBound:
    """Which modes auto may serve for a task under ``max_drop`` points against the teacher."""

    max_drop: float
    allowed: tuple[str, ...]
    #: mode -> its measured drop, for each mode the bound rules out
    excluded: dict[str, float]
    #: modes without a measured figure for this task (allowed: nothing says they lose)
    unmeasured: tuple[str, ...]
    #: a ladder's rates without a measured figure for this task (excluded); None: no ladder
    unmeasured_rates: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "max_drop": self.max_drop,
            "allowed": list(self.allowed),
            "excluded": {m: round(d, 2) for m, d in self.excluded.items()},
            "unmeasured": list(self.unmeasured),
        }
        if self.unmeasured_rates is not None:
            answer["unmeasured_rates"] = list(self.unmeasured_rates)
        return answer


@dataclass(frozen=True)
class LoadedBundle:
    """A loaded, verified bundle directory of any kind (this module's, NoNN's): its path and
    manifest, which pins the files by ``bundle_id`` and says how images are preprocessed."""

    path: Path
    manifest: Any

    @property
    def id(self) -> str:
        return self.manifest.bundle_id

    @property
    def preprocessing(self) -> Preprocessing:
        return self.manifest.preprocessing.to_preprocessing()


@dataclass(frozen=True)
class Bundle(LoadedBundle):
    """A loaded, verified bundle: its directory and manifest."""

    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    def model_path(self, role: str) -> Path:
        if role not in ROLES:
            raise UnknownNameError(f"unknown bundle role {role!r}; roles are {list(ROLES)}")
        return self.path / getattr(self.manifest.models, role)

    def task(self, task: str | None) -> str:
        """Resolve ``None`` (no task asked for) to the default task; an unknown name, the empty
        one too (``task=``), is refused with the known ones listed, never read as the default."""
        name = self.manifest.default_task if task is None else task
        if name not in self.manifest.tasks:
            raise UnknownTaskError(
                f"unknown task {name!r}; this bundle has {list(self.manifest.tasks)}"
            )
        return name

    def accuracy_bound(
        self, task: str, modes: tuple[str, ...], max_drop: float, quantisation: str = "uint8"
    ) -> AccuracyBound:
        """The ``modes`` whose measured top-1 on ``task`` is at most ``max_drop`` points below
        the teacher's (split as sent in ``quantisation``); a mode never measured stays
        allowed and is named in ``unmeasured``. On a ladder, split is every rate
        (``split@<rate>``, entropy-coded): a rate never measured for ``task`` is *excluded*
        (a ladder's rates differ too much to assume) and named in ``unmeasured_rates``."""
        ladder = bool(self.rates) and "split" in modes
        plain = tuple(m for m in modes if not (ladder and m == "split"))
        figures = self.manifest.accuracy.get(task)
        drops = {m: figures.drop(m, quantisation) if figures else None for m in plain}
        excluded = {m: d for m, d in drops.items() if d is not None and d > max_drop}
        allowed = [m for m in plain if m not in excluded]
        unmeasured_rates: list[str] | None = None
        if ladder:
            unmeasured_rates = []
            for rate in self.rates:
                option, drop = split_option(rate), self.rate_spec(rate).drop(task)
                if drop is None:
                    unmeasured_rates.append(option)
                elif drop > max_drop:
                    excluded[option] = drop
                else:
                    allowed.append(option)
        return AccuracyBound(
            max_drop=max_drop,
            allowed=tuple(allowed),
            excluded=excluded,
            unmeasured=tuple(m for m, d in drops.items() if d is None),
            unmeasured_rates=None if unmeasured_rates is None else tuple(unmeasured_rates),
        )

    def labels(self, task: str | None = None) -> list[str]:
        return self.manifest.tasks[self.task(task)].labels

    @property
    def local_preprocessing(self) -> Preprocessing:
        return self.manifest.local_preprocessing.to_preprocessing()

    def local_mode_fix(self, task: str, local_tasks: list[str]) -> str:
        """What serves ``task`` in local mode when the local model (answering ``local_tasks``)
        does not: a probe at export for a run's local model; for the application-specific
        student of ``export classes`` (which takes no probe), its own task or another bundle."""
        if "local_student" in self.manifest.metrics and local_tasks:
            # Lite0, the local model of `export run`, answers ImageNet with its own head.
            probe = "" if task == "imagenet" else f" --local-probe {task}=FILE"
            return (
                f"its local model is the application-specific student of `splitdnn export "
                f"classes`, which answers {', '.join(local_tasks)} only: ask "
                f"task={local_tasks[0]} in local mode, or serve a bundle of `splitdnn export "
                f"run RUN{probe}` for {task} in local mode"
            )
        return (
            f"its local model classifies {local_tasks}; export with --local-probe "
            f"{task}=FILE to add one"
        )

    # --- a ladder of rates -----------------------------------------------------------

    @property
    def rates(self) -> tuple[str, ...]:
        """The ladder's rate names (empty for a one-rate bundle)."""
        return tuple(self.manifest.rates or ())

    def rate(self, name: str | None) -> str | None:
        """Resolve a requested rate: None is the default rate (None for a one-rate bundle);
        a name the ladder does not have is refused with the rates there are."""
        if name is None:
            return self.manifest.default_rate
        if name not in self.rates:
            there = f"the rates are {list(self.rates)}" if self.rates else "it has one rate only"
            raise UnknownRateError(f"unknown rate {name!r}; in bundle {self.name!r} {there}")
        return name

    def rate_spec(self, name: str) -> RateSpec:
        rate = self.rate(name)
        assert rate is not None and self.manifest.rates is not None
        return self.manifest.rates[rate]

    def rate_model_path(self, name: str, role: str) -> Path:
        """The ``device`` or ``server`` part of rate ``name``."""
        if role not in ("device", "server"):
            raise UnknownNameError(f"a rate has a device and a server part, not {role!r}")
        return self.path / getattr(self.rate_spec(name), role)

    def rate_coding_tables(self, name: str) -> rans.CodingTables:
        return self._read_tables(self.rate_spec(name).coding)

    def rate_bytes(self, task: str) -> dict[str, float]:
        """Per rate, the median envelope bytes measured for ``task`` (rates measured only)."""
        specs = self.manifest.rates or {}
        return {r: s.median_bytes[task] for r, s in specs.items() if task in s.median_bytes}

    def sent_quantisation(self) -> str:
        """What split sends when left to the bundle: entropy-coded when it has coding
        tables, else the quantisation its manifest names (chosen on measured figures when it
        was exported), else uint8."""
        if self.manifest.coding is not None:
            return ENTROPY
        return self.manifest.quantisation or "uint8"

    def coding_tables(self) -> rans.CodingTables | None:
        """The entropy-coding tables (checked), or None for a plain-tensor bottleneck."""
        if self.manifest.coding is None:
            return None
        return self._read_tables(self.manifest.coding)

    def _read_tables(self, filename: str) -> rans.CodingTables:
        path = self.path / filename
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return rans.CodingTables.from_lists(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise BundleError(f"{path} holds no coding tables: {exc}") from exc


def _as_spec(value: Preprocessing | dict | PreprocessingSpec) -> PreprocessingSpec:
    if isinstance(value, PreprocessingSpec):
        return value
    if isinstance(value, Preprocessing):
        value = value.to_dict()
    return PreprocessingSpec.model_validate(value)


def write_manifest(
    directory: str | Path,
    *,
    name: str,
    teacher: str,
    split_module: str,
    preprocessing: Preprocessing | dict,
    local_preprocessing: Preprocessing | dict,
    bottleneck_shape: list[int] | tuple[int, ...],
    tasks: dict[str, list[str]],
    default_task: str | None = None,
    models: dict[str, str] | None = None,
    metrics: dict[str, Any] | None = None,
    bottleneck_dtype: str = "FP32",
    coding: str | None = None,
) -> Manifest:
    """Hash the model files already in ``directory`` and write ``manifest.json`` next to them.

    ``models`` maps roles to file names (default ``<role>.onnx``); any other files listed
    there are hashed too, and so is ``coding`` (the entropy-coding tables' file, if any).
    Returns the manifest written.
    """
    directory = Path(directory)
    roles = {**DEFAULT_FILES, **(models or {})}
    files = {roles[role]: file_entry(directory / roles[role], f"{role} model") for role in ROLES}
    for filename in sorted(p.name for p in directory.iterdir() if p.name.endswith(".onnx.data")):
        # external weights the exporter may write
        files[filename] = file_entry(directory / filename, "external weights")
    if coding is not None:
        files[coding] = file_entry(directory / coding, "coding tables")
    manifest = pinned_manifest(
        Manifest,
        directory,
        files,
        name=name,
        teacher=teacher,
        split_module=split_module,
        preprocessing=_as_spec(preprocessing),
        local_preprocessing=_as_spec(local_preprocessing),
        bottleneck=BottleneckSpec(shape=list(bottleneck_shape), dtype=bottleneck_dtype),
        tasks={task: TaskSpec(labels=list(labels)) for task, labels in tasks.items()},
        default_task=default_task or next(iter(tasks)),
        models=ModelFiles(**{role: roles[role] for role in ROLES}),
        metrics=metrics or {},
        coding=coding,
    )
    _write(directory, manifest)
    return manifest


def pinned_manifest(
    kind: type[AnyManifest], directory: Path, files: dict[str, FileEntry], **fields: Any
) -> AnyManifest:
    """A manifest of ``kind`` pinning ``files`` by their bundle id; a field it refuses is a
    :class:`BundleError` naming ``directory``, never a pydantic traceback."""
    try:
        return kind(bundle_id=bundle_id_of(files), files=files, **fields)
    except ValidationError as exc:
        raise BundleError(f"invalid manifest for {directory}: {exc}") from exc


def _write(directory: Path, manifest: Manifest) -> None:
    """``manifest.json`` replaced whole. A one-rate bundle's manifest leaves the ladder keys
    out, so it stays what it was before ladders."""
    ladder = {"rates", "default_rate"} if manifest.rates is None else set()
    write_manifest_file(directory, MANIFEST, manifest, exclude=ladder)


def write_manifest_file(
    directory: Path, filename: str, manifest: BaseModel, exclude: set[str] | None = None
) -> None:
    """``filename`` replaced whole by ``manifest`` as JSON (a reader never sees half a
    manifest); ``exclude``: fields left out."""
    text = json.dumps(manifest.model_dump(mode="json", exclude=exclude), indent=2)
    partial = directory / f".{filename}.partial"
    partial.write_text(text + "\n", encoding="utf-8")
    os.replace(partial, directory / filename)


def record_accuracy(directory: str | Path, task: str, accuracy: TaskAccuracy) -> Manifest:
    """Write ``accuracy`` as the measured figures of ``task`` into the bundle's manifest.
    The bundle id does not change: it pins the model files, and the figures describe them."""
    bundle = load_bundle(directory, verify=False)
    data = {
        **bundle.manifest.model_dump(),
        "accuracy": {**bundle.manifest.accuracy, task: accuracy},
    }
    return _rewrite(bundle, data, f"accuracy for {task!r}", directory)


def record_quantisation(directory: str | Path, quantisation: Quantisation | None) -> Manifest:
    """Write what split sends by default (``Manifest.quantisation``) into a bundle's manifest;
    the bundle id does not change."""
    bundle = load_bundle(directory, verify=False)
    data = {**bundle.manifest.model_dump(), "quantisation": quantisation}
    return _rewrite(bundle, data, f"quantisation {quantisation!r}", directory)


def record_rate_accuracy(
    directory: str | Path, rate: str, task: str, accuracy: TaskAccuracy, median_bytes: float
) -> Manifest:
    """Write one rate's measured figures for ``task`` (its top-1 per mode and the median
    bytes of its envelope) into a ladder bundle's manifest; the bundle id does not change.
    The default rate's figures go to the top-level ``accuracy`` too (what a reader that
    knows no ladder reads)."""
    bundle = load_bundle(directory, verify=False)
    spec = bundle.rate_spec(rate)
    updated = spec.model_copy(
        update={
            "accuracy": {**spec.accuracy, task: accuracy},
            "median_bytes": {**spec.median_bytes, task: float(median_bytes)},
        }
    )
    data = bundle.manifest.model_dump()
    data["rates"] = {**bundle.manifest.rates, rate: updated}  # type: ignore[dict-item]
    if rate == bundle.manifest.default_rate:
        # the bundle's own figures of the same images (its fp32/uint8 split) stay beside it
        current = bundle.manifest.accuracy.get(task)
        if current is not None and (current.images, current.data) == (
            accuracy.images,
            accuracy.data,
        ):
            accuracy = accuracy.model_copy(update={"top1": {**current.top1, **accuracy.top1}})
        data["accuracy"] = {**bundle.manifest.accuracy, task: accuracy}
    return _rewrite(bundle, data, f"rate {rate!r}", directory)


def _rewrite(bundle: Bundle, data: dict[str, Any], what: str, directory: str | Path) -> Manifest:
    """Check ``data`` as the bundle's new manifest and write it; ``what`` names what was
    being recorded when it does not validate (a :class:`BundleError`)."""
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise BundleError(f"cannot record {what} in {directory}: {exc}") from exc
    _write(bundle.path, manifest)
    return manifest


#: What every rate of a ladder must share with the others (the device's input, the teacher,
#: the tasks, the offload and local models).
_LADDER_SHARED = ("teacher", "split_module", "preprocessing", "local_preprocessing", "tasks")


def write_ladder(
    out_dir: str | Path,
    sources: dict[str, str | Path],
    default_rate: str,
    metrics: dict[str, dict[str, Any]] | None = None,
) -> Manifest:
    """One bundle holding several rates from one-rate entropy-coded bundles (``sources``:
    rate name -> bundle directory, in ladder order). The default rate's bundle is copied
    whole (its offload and local models are every rate's); every other rate adds its device
    and server parts and coding tables as ``<role>-<rate>.onnx`` / ``coding-<rate>.json``,
    unless an identical file is already in (then the rate names that one: a device part
    several rates share is stored once). Each source's recorded figures become its rate's.
    """
    out_dir = Path(out_dir)
    if default_rate not in sources:
        raise BundleError(f"default rate {default_rate!r} is not one of {list(sources)}")
    loaded = {name: load_bundle(path) for name, path in sources.items()}
    for name, bundle in loaded.items():
        if not re.match(RATE_NAME, name):
            raise BundleError(f"rate name {name!r} does not match {RATE_NAME}")
        if bundle.manifest.coding is None or bundle.rates:
            raise BundleError(
                f"rate {name!r}: {bundle.path} is not a one-rate entropy-coded bundle "
                "(export an entropy student: `rate:` in its config)"
            )
    base = loaded[default_rate]
    for name, bundle in loaded.items():
        differ = [
            key
            for key in _LADDER_SHARED
            if getattr(bundle.manifest, key) != getattr(base.manifest, key)
        ]
        if differ:
            raise BundleError(
                f"rate {name!r} ({bundle.path}) differs from the default rate in {differ}: "
                "a ladder's rates share the teacher, the split, the tasks and preprocessing"
            )
    if out_dir.exists() and any(out_dir.iterdir()):
        raise BundleError(f"{out_dir} is not empty; a ladder is written into a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    for filename in base.manifest.files:
        shutil.copyfile(base.path / filename, out_dir / filename)
    files = dict(base.manifest.files)
    by_hash = {entry.sha256: filename for filename, entry in files.items()}
    rates: dict[str, RateSpec] = {}
    for name, bundle in loaded.items():
        m = bundle.manifest
        assert m.coding is not None
        named: dict[str, str] = {}
        for role, filename, target in (
            ("device", m.models.device, f"device-{name}.onnx"),
            ("server", m.models.server, f"server-{name}.onnx"),
            ("coding", m.coding, f"coding-{name}.json"),
        ):
            entry = m.files[filename]
            if entry.sha256 not in by_hash:
                if any(f.endswith(".onnx.data") for f in m.files):
                    raise BundleError(f"rate {name!r}: ONNX files with external data")
                shutil.copyfile(bundle.path / filename, out_dir / target)
                files[target] = entry
                by_hash[entry.sha256] = target
            named[role] = by_hash[entry.sha256]
        rates[name] = RateSpec(
            **named,
            bottleneck=m.bottleneck,
            accuracy={t: a for t, a in m.accuracy.items() if "split_entropy" in a.top1},
            metrics={"source_bundle": m.bundle_id, "name": m.name, **(metrics or {}).get(name, {})},
        )
    data = base.manifest.model_dump()
    data.update(
        bundle_id=bundle_id_of(files),
        files=files,
        rates=rates,
        default_rate=default_rate,
        name=f"{base.manifest.name}-ladder",
    )
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise BundleError(f"invalid ladder manifest for {out_dir}: {exc}") from exc
    _write(out_dir, manifest)
    return manifest


def load_bundle(directory: str | Path | None = None, *, verify: bool = True) -> Bundle:
    """Read ``manifest.json`` and check every listed file's size and sha256 (``verify``)."""
    directory = Path(directory) if directory is not None else default_bundle_path()
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(
            f"no bundle at {directory}: {MANIFEST} is missing "
            "(set SPLITDNN_BUNDLE or run `splitdnn export default`)"
        )
    try:
        manifest = Manifest.model_validate_json(manifest_path.read_bytes())
    except ValidationError as exc:
        raise BundleError(f"{manifest_path} is not a valid manifest: {exc}") from exc
    verify_files(manifest_path, manifest.files, manifest.bundle_id, verify=verify)
    return Bundle(path=directory, manifest=manifest)


def verify_files(
    manifest_path: Path, files: dict[str, FileEntry], bundle_id: str, *, verify: bool = True
) -> None:
    """Check that ``bundle_id`` pins ``files`` and that each sits beside ``manifest_path``
    (``verify``: with its size and sha256); a :class:`BundleError` says which does not."""
    directory = manifest_path.parent
    if bundle_id_of(files) != bundle_id:
        raise BundleError(f"{manifest_path}: bundle_id does not match the listed file hashes")
    for filename, entry in files.items():
        if Path(filename).name != filename:
            raise BundleError(f"{manifest_path}: file name {filename!r} must not contain a path")
        path = directory / filename
        if not path.is_file():
            raise BundleError(f"bundle file {path} is missing")
        if verify:
            if path.stat().st_size != entry.bytes:
                raise BundleError(
                    f"{path} is {path.stat().st_size} bytes, manifest says {entry.bytes}"
                )
            if sha256_file(path) != entry.sha256:
                raise BundleError(f"{path} does not match its sha256 in the manifest (tampered?)")


# --- what a bundle serves -----------------------------------------------------------------------


def served_modes(bundle: Bundle, local_tasks: Sequence[str]) -> dict[str, list[str]]:
    """Per task, the modes a head on ``bundle`` answers: split and offload for every task
    (server and offload models have a classifier for each), local for ``local_tasks`` (those
    of the local model: :func:`splitdnn.runtime.model_tasks`), and auto, which picks among
    those."""
    return {
        task: [m for m in MODES if m != "local" or task in local_tasks] + ["auto"]
        for task in bundle.manifest.tasks
    }


def describe(bundle: Bundle, local_tasks: Sequence[str]) -> dict[str, Any]:
    """What a bundle serves, as ``splitdnn bundle info`` prints it and the head's ``/bundle``
    (and so the gateway's ``/status``) answers: tasks with their modes, the split, the
    accuracy figures the manifest carries, and every file with its size and sha256."""
    m = bundle.manifest
    metrics = m.metrics
    modes = served_modes(bundle, local_tasks)
    elements = 1
    for size in m.bottleneck.shape:
        elements *= size
    accuracy = {
        key: value
        for key, value in {
            "run_validation": metrics.get("validation"),
            "local_student_validation": (metrics.get("local_student") or {}).get("validation"),
            # what auto's bound reads: per task, top-1 of each mode on held-out images
            "held_out": {task: figures.model_dump() for task, figures in m.accuracy.items()},
        }.items()
        if value
    }
    return {
        "bundle_id": m.bundle_id,
        "name": m.name,
        "path": str(bundle.path),
        "teacher": m.teacher,
        "split_module": m.split_module,
        "local_model": metrics.get("local_model"),
        "default_task": m.default_task,
        "tasks": {
            task: {"classes": len(spec.labels), "modes": modes[task]}
            for task, spec in m.tasks.items()
        },
        "bottleneck": {
            "shape": m.bottleneck.shape,
            "dtype": m.bottleneck.dtype,
            "uint8_bytes": elements,  # before the envelope's header and zstd
            "data_size_percent": metrics.get("data_size_percent"),
        },
        "device_macs": metrics.get("device_macs"),
        "teacher_head_macs": metrics.get("teacher_head_macs"),
        "accuracy": accuracy,
        **_describe_ladder(m),
        "bytes": sum(entry.bytes for entry in m.files.values()),
        "files": {
            name: {"bytes": entry.bytes, "sha256": entry.sha256} for name, entry in m.files.items()
        },
    }


def _describe_ladder(m: Manifest) -> dict[str, Any]:
    """A ladder's rates as :func:`describe` shows them (nothing for a one-rate bundle)."""
    if m.rates is None:
        return {}
    return {
        "default_rate": m.default_rate,
        "rates": {
            name: {
                "files": [spec.device, spec.server, spec.coding],
                "bottleneck": spec.bottleneck.shape,
                "median_bytes": spec.median_bytes,
                "held_out": {t: figures.model_dump() for t, figures in spec.accuracy.items()},
            }
            for name, spec in m.rates.items()
        },
    }
