"""The distillation config: plain values in YAML, validated by pydantic.

Unknown keys and wrong types are errors that name the key (``train.epochs: …``). Nothing in a
config is imported or executed: teachers and students are looked up by name in the registries.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from splitdnn.data import Sample, select_samples
from splitdnn.errors import ConfigError, UnknownNameError
from splitdnn.models import get_teacher
from splitdnn.students import (
    canonical_variant,
    default_variant,
    get_kd_student,
    student_problem,
)


def _known_name(lookup: Callable[[str], object], value: str) -> str:
    """``value`` if ``lookup`` (a registry's getter) knows it; else a ValueError with the
    registry's message, the only error pydantic turns into one that names the key."""
    try:
        lookup(value)
    except UnknownNameError as exc:
        raise ValueError(str(exc)) from None
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeacherConfig(_Strict):
    name: str = "efficientnet_lite2"
    pretrained: bool = True
    #: ``imagenet`` keeps the teacher's classifier; ``probe`` trains a linear classifier on the
    #: frozen backbone's pooled features for the data set's own classes; ``auto`` (the
    #: default) is ``imagenet`` when the data's labels are ImageNet indices (a list file of
    #: ImageNet classes) and ``probe`` otherwise, e.g. for one's own class folders.
    classifier: Literal["auto", "imagenet", "probe"] = "auto"
    #: With ``classifier: probe``: take the probe from this run directory (its
    #: ``classifier.pt``) or probe file (``.pt``/``.safetensors``) instead of fitting one, so
    #: that every stage of a recipe distils towards one and the same teacher.
    probe_from: Path | None = None
    #: Your own weights for the teacher: a state dict (``.pt``/``.pth``/``.safetensors``) for
    #: ``name``'s architecture, loaded strictly (every key must fit; mismatches are listed by
    #: key). Replaces the published weights, so ``pretrained`` no longer matters.
    weights: Path | None = None

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        return _known_name(get_teacher, value)

    @model_validator(mode="after")
    def _probe_from_needs_a_probe(self) -> TeacherConfig:
        if self.probe_from is not None and self.classifier == "auto":
            self.classifier = "probe"
        if self.probe_from is not None and self.classifier != "probe":
            raise ValueError("probe_from needs classifier: probe")
        return self


class StudentConfig(_Strict):
    #: Bottleneck channels; ``null`` is the papers' "mimic without bottleneck" (Table 2).
    bottleneck: int | None = Field(default=12, ge=1, le=512)
    #: Student design (see splitdnn.students.build_student); unset: the one default,
    #: ``splitdnn.students.default_variant`` (``teacher_init``, starting from the teacher's
    #: own layers, for the Lite teachers; ``narrow`` for the others). ``caltech101`` and
    #: ``imagenet``, the first names of ``narrow`` and ``wide``, are read as those.
    variant: Literal["narrow", "wide", "teacher_init", "caltech101", "imagenet"] | None = None

    @field_validator("variant")
    @classmethod
    def _current_name(cls, value: str | None) -> str | None:
        return canonical_variant(value) if value is not None else None


class RateConfig(_Strict):
    """An entropy-coded bottleneck (``splitdnn.students.EntropyStudent``): the
    bottleneck is sent as integers coded with a learned model, and the loss adds
    ``beta`` × the bits each image costs (the model's estimate; see ``EntropyStudent``)."""

    #: Weight of the rate term, per bit of one image: larger sends fewer bytes.
    beta: float = Field(ge=0)
    #: Learning rate of the entropy model and the per-channel gains (they start far from
    #: their values, the rest starts from a trained student).
    entropy_lr: float = Field(default=1e-3, gt=0)
    #: With ``train.init_from`` a plain student: each channel's 99.9th percentile starts at
    #: this many integer steps (today's 4-bit quantisation, which costs no accuracy, has 15).
    init_levels: float = Field(default=16.0, gt=0)
    #: Frozen-prefix outputs of this many training images calibrate the gains.
    calibration_images: int = Field(default=256, ge=1)


class UnlabelledSource(_Strict):
    """More training inputs for the label-free losses (their labels, if any, are not used).

    ``val_fraction``/``seed`` hold out the same images that ``splitdnn evaluate --split val
    --val-fraction F --seed S`` scores, so a labelled set can feed training and still keep a
    held-out part for the figures (e.g. the ImageNet sample: 0.75 held out).
    """

    root: Path
    list: str | None = None
    val_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    seed: int = 0


class DataConfig(_Strict):
    root: Path
    list: str | None = None
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    #: Keep at most this many images per class (quick experiments and tests).
    per_class_limit: int | None = Field(default=None, ge=1)
    #: Extra images for the label-free distillation losses (``method: hnd``; ``nonn``: its
    #: attention and soft-target terms); the probe and the validation figures use ``root`` only.
    unlabelled: tuple[UnlabelledSource, ...] = ()


class RandomCropConfig(_Strict):
    """Random resized crops (see :mod:`splitdnn.distill.augment`) on a share of every batch."""

    #: Share of each batch (a fixed count) replaced by random resized crops; the teacher runs on
    #: those views during training (the rest use the cached outputs).
    probability: float = Field(default=0.5, gt=0, le=1)
    #: Smallest box, as a fraction of the crop's area.
    min_scale: float = Field(default=0.35, gt=0, le=1)
    #: Widest aspect ratio of a box (and its inverse the tallest).
    max_aspect: float = Field(default=4 / 3, ge=1)


class MixConfig(_Strict):
    """Mixed pairs of training images (``mixup``: a weighted average; ``cutmix``: a box of one
    pasted into the other), the teacher run on each mixed image for its targets. Widens what
    the student sees between the images it has (Zhang et al. 2018; Yun et al. 2019)."""

    mode: Literal["mixup", "cutmix"] = "cutmix"
    #: Share of each batch (a fixed count) replaced by mixed images.
    probability: float = Field(default=0.5, gt=0, le=1)
    #: Beta(alpha, alpha) draws the mixing weight (mixup) or the box's area share (cutmix).
    alpha: float = Field(default=1.0, gt=0)


class AugmentConfig(_Strict):
    hflip: bool = True
    #: Cache the teacher's outputs (and the decoded crops) once instead of every epoch: the
    #: centre crops and their flips are deterministic, so their targets never change.
    cache_teacher: bool = True
    #: Random resized crops of the cached crops (``null``: none). Their targets cannot be
    #: cached, so they cost a teacher pass each (measured on 2 CPU cores with EfficientNet-Lite2
    #: at 0.5: 17 images/s against 36 without, about 2x the epoch time).
    random_crop: RandomCropConfig | None = None
    #: Mixed pairs of images (``null``: none); like random crops, a teacher pass each.
    mix: MixConfig | None = None


class OptimizerConfig(_Strict):
    name: Literal["adam"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)


class TrainConfig(_Strict):
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=32, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    #: Multi-step schedule: multiply the learning rate by ``gamma`` at these epochs.
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(default=0.1, gt=0, le=1)
    #: Generalised head network distillation: also match the pooled features the classifier
    #: sees, through the frozen teacher tail, on this fraction of every batch.
    pooled_loss_weight: float = Field(default=0.0, ge=0)
    pooled_loss_fraction: float = Field(default=0.25, gt=0, le=1)
    #: Hinton's soft-target term on the frozen classifier's logits (the run's task: the probe,
    #: or the teacher's own head), on the same rows as the pooled term. Still label-free: the
    #: targets are the teacher's logits on the same image.
    logits_loss_weight: float = Field(default=0.0, ge=0)
    logits_temperature: float = Field(default=4.0, gt=0)
    #: With ``classifier: probe``: the same soft-target KL on the teacher's own ImageNet
    #: classifier too, so the student serves both tasks of the bundle.
    imagenet_logits_loss_weight: float = Field(default=0.0, ge=0)
    #: Which epoch ``best.pt`` keeps: the best validation score (``best``), or the last
    #: (``last``: validation images then pick nothing and stay fit for honest figures).
    keep: Literal["best", "last"] = "best"
    #: Start the student from this run directory's ``best.pt`` (or this checkpoint file)
    #: instead of from scratch: a second stage, e.g. the pooled-feature loss after plain SSE.
    init_from: Path | None = None
    checkpoint_every: int = Field(default=50, ge=1, description="steps between checkpoints")
    threads: int | None = Field(default=None, ge=1)
    max_steps_per_epoch: int | None = Field(default=None, ge=1)


class ProbeConfig(_Strict):
    epochs: int = Field(default=60, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)


class KDConfig(_Strict):
    #: The whole small student of local mode, by name (see ``splitdnn.distill.kd.KD_STUDENTS``):
    #: an ImageNet-pretrained backbone with its last stages fine-tuned.
    student: str = "efficientnet_lite0_last2"
    temperature: float = Field(default=4.0, gt=0)
    #: Weight of the soft-target term; ``1 - alpha`` weighs cross-entropy on the labels.
    alpha: float = Field(default=0.9, ge=0, le=1)
    #: A ``method: hnd`` run directory with the same teacher and data: its cached pooled
    #: features and ``classifier.pt`` are reused instead of running the teacher again.
    teacher_run: Path | None = None
    #: Server-side fine-tuning of split mode: a distilled student (run directory, checkpoint or
    #: default assets) whose device part (encoder) runs first, frozen, as the device would; its
    #: decoder joins the student's trainable layers. The kd student's base must be the
    #: distilled student's teacher and its cut the student's split point.
    device_from: Path | None = None
    #: Start the student's classifier from this probe file (e.g. the one the bundle serves)
    #: instead of fitting a new one, so that epoch 0 is the served model.
    probe_from: Path | None = None

    @field_validator("student")
    @classmethod
    def _known_student(cls, value: str) -> str:
        return _known_name(get_kd_student, value)


class ClassesConfig(_Strict):
    """Application-specific distillation (``method: classes``, see :mod:`.classes`): the
    student answers these classes of the data set plus ``other`` (the rest)."""

    #: The classes of interest: data set class names or label indices (checked against the
    #: data when the run starts; an unknown name is refused by name).
    names: list[str | int] = Field(min_length=1)
    #: The name of the extra output that takes the teacher's remaining probability mass.
    other: str = "other"

    @field_validator("names")
    @classmethod
    def _distinct(cls, value: list[str | int]) -> list[str | int]:
        repeated = sorted({str(v) for v in value if value.count(v) > 1})
        if repeated:
            raise ValueError(f"classes listed twice: {', '.join(repeated)}")
        return value


def classes_of_interest(config: ClassesConfig, classes: list[str]) -> list[int]:
    """The label indices of ``config.names`` among the data set's ``classes`` (in the
    config's order); an unknown name or index is refused by name."""
    out = []
    for name in config.names:
        if isinstance(name, int):
            if not 0 <= name < len(classes):
                raise ConfigError(
                    f"classes.names: index {name} is not a class (the data has {len(classes)})"
                )
            out.append(name)
        elif name in classes:
            out.append(classes.index(name))
        else:
            raise ConfigError(f"classes.names: {name!r} is not a class of the data")
    if len(set(out)) != len(out):
        raise ConfigError("classes.names: a class is listed twice (by name and by index)")
    if config.other in [classes[i] for i in out]:
        raise ConfigError(f"classes.other: {config.other!r} is also a class of interest")
    if len(out) == len(classes):
        raise ConfigError("classes.names: every class is of interest, so 'other' is empty")
    return out


class NoNNBudget(_Strict):
    """What one NoNN member may cost its device; the widest member that fits is trained
    (:func:`splitdnn.nonn.members.width_for_budget`). Give either or both."""

    #: Multiply-accumulates for one image at the base's input size.
    macs: int | None = Field(default=None, gt=0)
    #: Bytes of the member's weights in float16 (2 a parameter).
    fp16_bytes: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _something(self) -> NoNNBudget:
        if self.macs is None and self.fp16_bytes is None:
            raise ValueError("nonn.budget needs macs, fp16_bytes or both")
        return self


class NoNNConfig(_Strict):
    """``method: nonn`` (see :mod:`splitdnn.nonn.method`)."""

    #: The member family (``splitdnn.nonn.members.NONN_STUDENTS``; checked by the method,
    #: which sits above this module).
    student: str = "efficientnet_lite0_slice"
    #: K: members, one per group of the teacher's last conv filters.
    students: int = Field(default=2, ge=1, le=16)
    #: Share of each sliced block's expanded channels a member keeps (default ``1/students``).
    width: float | None = Field(default=None, gt=0, le=1)
    #: A cost ceiling per member that picks the width instead (a member family narrow from
    #: the stem, ``efficientnet_lite0_narrow``); not together with ``width``.
    budget: NoNNBudget | None = None
    #: Training images whose teacher activations build the filter co-activation graph.
    graph_images: int = Field(default=1000, ge=2)
    #: Edges kept per filter in that graph, and Louvain's resolution.
    neighbours: int = Field(default=16, ge=1)
    resolution: float = Field(default=1.0, gt=0)
    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.9, ge=0, le=1)
    #: Weight of the attention-transfer term (each member on its group's attention map).
    attention_weight: float = Field(default=10.0, ge=0)
    #: The join layer's learning rate (default: ``train.optimizer.lr``, the members'). Narrow
    #: pretrained members want a low rate (3e-5–1e-4) that would starve the freshly fitted
    #: join: at one rate for both, Adam reshapes the members faster than the join follows.
    join_lr: float | None = Field(default=None, gt=0)
    #: Members narrow from the stem: round every layer's channel count to a multiple of this.
    #: 8 keeps ONNX Runtime's blocked convolution kernels (a K = 2 width-0.594 member with
    #: counts like 19 and 57 ran slower than the whole local model; rounded, 2.7x faster).
    channel_multiple: int = Field(default=1, ge=1, le=64)
    #: Where the teacher's maps and the members' inputs are cached (default ``run/cache``);
    #: runs on the same data can share it.
    cache_dir: Path | None = None

    @model_validator(mode="after")
    def _width_or_budget(self) -> NoNNConfig:
        if self.width is not None and self.budget is not None:
            raise ValueError("nonn: give width or budget, not both")
        return self


class DistillConfig(_Strict):
    method: Literal["hnd", "kd", "labels", "classes", "nonn"] = "hnd"
    teacher: TeacherConfig = TeacherConfig()
    split_module: str | None = None
    student: StudentConfig = StudentConfig()
    data: DataConfig
    augmentation: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    probe: ProbeConfig = ProbeConfig()
    kd: KDConfig = KDConfig()
    #: ``method: classes`` only: the classes of interest.
    classes: ClassesConfig | None = None
    nonn: NoNNConfig = NoNNConfig()
    #: ``method: hnd`` only: an entropy-coded bottleneck trained with a rate term.
    rate: RateConfig | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _nonn_flips_on_request(self) -> DistillConfig:
        """NoNN's flips cost a second teacher pass over every training image (its maps,
        cached beside the first, :mod:`splitdnn.nonn.method`): its default is no flip, and
        ``hflip: true`` must be asked for."""
        if self.method == "nonn" and "hflip" not in self.augmentation.model_fields_set:
            self.augmentation = self.augmentation.model_copy(update={"hflip": False})
        return self

    @model_validator(mode="after")
    def _rate_needs_a_bottleneck(self) -> DistillConfig:
        if self.rate is not None and self.method != "hnd":
            raise ValueError("rate: an entropy-coded bottleneck goes with method: hnd")
        if self.rate is not None and self.student.bottleneck is None:
            raise ValueError("rate: an entropy-coded bottleneck needs student.bottleneck")
        return self

    @model_validator(mode="after")
    def _classes_section(self) -> DistillConfig:
        if (self.method == "classes") != (self.classes is not None):
            raise ValueError("the classes section goes with method: classes (and only with it)")
        return self

    @model_validator(mode="after")
    def _default_variant(self) -> DistillConfig:
        if self.student.variant is None:
            self.student.variant = default_variant(self.teacher.name)
        return self

    @model_validator(mode="after")
    def _split_module_has_a_student(self) -> DistillConfig:
        """A ``split_module`` (or student variant) without a student is refused when the config
        is read, not after minutes of caching and probe fitting."""
        if self.method != "hnd":
            return self
        spec = get_teacher(self.teacher.name)
        split = self.split_module or spec.student_split
        problem = student_problem(spec.name, split, self.student.variant)
        if problem is not None:
            key = "split_module" if self.split_module is not None else "student.variant"
            raise ValueError(f"{key}: {problem}")
        return self


def _format(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"{key}: {message}")
    return "; ".join(lines)


#: The config's paths, as (section, key): relative ones are taken from the config's base dir.
PATH_KEYS = (
    ("data", "root"),
    ("kd", "teacher_run"),
    ("kd", "device_from"),
    ("kd", "probe_from"),
    ("nonn", "cache_dir"),
    ("teacher", "probe_from"),
    ("teacher", "weights"),
    ("train", "init_from"),
)


def parse_config(data: object, base_dir: Path | None = None) -> DistillConfig:
    """Validate a mapping; relative data paths are taken from ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping of keys to values")
    try:
        config = DistillConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid config: {_format(exc)}") from None
    if base_dir is not None:
        for part, key in _path_fields(config):
            path = getattr(part, key)
            if path is not None and not path.is_absolute():
                setattr(part, key, (base_dir / path).resolve())
    return config


def _path_fields(config: DistillConfig) -> list[tuple[BaseModel, str]]:
    """(section, key) of every path in ``config``: :data:`PATH_KEYS` and unlabelled roots."""
    parts = [(getattr(config, section), key) for section, key in PATH_KEYS]
    return parts + [(source, "root") for source in config.data.unlabelled]


def portable_config(config: DistillConfig, base_dir: Path) -> dict[str, Any]:
    """``config`` as JSON values with its paths relative to ``base_dir``, for files that are
    committed or moved (assets): no absolute path of the machine they were made on.
    ``parse_config(data, base_dir)`` reads them back."""
    copy = config.model_copy(deep=True)
    for part, key in _path_fields(copy):
        path = getattr(part, key)
        if path is not None and path.is_absolute():
            setattr(part, key, Path(os.path.relpath(path, Path(base_dir).resolve())))
    return copy.model_dump(mode="json")


def load_config(path: str | Path) -> DistillConfig:
    """Read and validate a YAML config (safe loader: no tags, no code). Relative paths in
    it (``data.root``, ``teacher.probe_from``, ``train.init_from``, ``kd.teacher_run``,
    ``kd.device_from``, ``kd.probe_from``, ``data.unlabelled[].root``) are taken from the
    config file's folder, so a config works from any working directory."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return parse_config(data, base_dir=path.resolve().parent)


def config_samples(config: DistillConfig) -> tuple[list[Sample], list[Sample], list[str], str]:
    """Training and validation samples, class names and label space of a config (see
    :func:`splitdnn.data.select_samples`, which holds the logic). Settles
    ``teacher.classifier: auto`` on the label space found (see :class:`TeacherConfig`)."""
    c = config.data
    found = select_samples(c.root, c.list, c.val_fraction, config.seed, c.per_class_limit)
    if config.teacher.classifier == "auto":
        config.teacher.classifier = "imagenet" if found[3] == "imagenet" else "probe"
    return found


def unlabelled_samples(config: DistillConfig) -> list[Sample]:
    """The training part of every ``data.unlabelled`` source, in config order (label -1)."""
    out: list[Sample] = []
    for source in config.data.unlabelled:
        train = select_samples(source.root, source.list, source.val_fraction, source.seed)[0]
        out += [Sample(s.path, -1) for s in train]
    return out
