"""Accuracy of a teacher and its mimic on the same images: one row of the papers' Table 3."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass
class Agreement:
    """Top-1/top-5 of teacher and mimic (percent) and how often their top-1 agree."""

    images: int
    teacher_top1: float
    teacher_top5: float
    mimic_top1: float
    mimic_top5: float
    top1_agreement: float

    def to_dict(self) -> dict:
        return asdict(self)


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum())


class AgreementMeter:
    """Accumulates batches of teacher and mimic logits against labels."""

    def __init__(self) -> None:
        self.n = 0
        self.hits = {"t1": 0, "t5": 0, "m1": 0, "m5": 0, "agree": 0}

    def update(self, teacher: torch.Tensor, mimic: torch.Tensor, labels: torch.Tensor) -> None:
        self.n += labels.shape[0]
        self.hits["t1"] += topk_hits(teacher, labels, 1)
        self.hits["t5"] += topk_hits(teacher, labels, 5)
        self.hits["m1"] += topk_hits(mimic, labels, 1)
        self.hits["m5"] += topk_hits(mimic, labels, 5)
        self.hits["agree"] += int((teacher.argmax(1) == mimic.argmax(1)).sum())

    def result(self) -> Agreement:
        pct = {k: 100.0 * v / max(self.n, 1) for k, v in self.hits.items()}
        return Agreement(self.n, pct["t1"], pct["t5"], pct["m1"], pct["m5"], pct["agree"])


# --- one row of Table 3 for a run directory or a bundle ---------------------------------------


@dataclass
class Table3Row:
    """Accuracy of teacher and mimic on the same images, plus what the split costs."""

    source: str  # "run" (torch) or "bundle" (onnxruntime)
    path: str
    teacher: str
    split_module: str
    task: str
    split: str  # "val" (the run's validation split) or "all"
    images: int
    teacher_top1: float
    teacher_top5: float
    mimic_top1: float
    mimic_top5: float
    top1_agreement: float
    bottleneck_shape: list[int]
    data_size_percent: float
    bottleneck_bytes_fp32: int
    bottleneck_bytes_uint8: int
    envelope_bytes_fp32: int
    envelope_bytes_uint8: int
    device_macs: int | None
    teacher_head_macs: int | None
    device_macs_reduction_percent: float | None
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _subset(samples: list, limit: int | None) -> list:
    """``limit`` samples spread evenly over the list (so every part of a sorted list counts)."""
    if not limit or limit >= len(samples):
        return samples
    import numpy as np

    return [samples[int(i)] for i in np.linspace(0, len(samples) - 1, limit).round()]


def task_targets(dataset_classes: list[str], label_space: str, task_labels: list[str]) -> list[int]:
    """Map a data set's label indices to a task's output indices (by name; identity for
    ImageNet indices against a 1000-class task)."""
    from splitdnn.errors import DataError

    if label_space == "imagenet":
        if len(task_labels) != 1000:
            raise DataError("the images have ImageNet labels but the task is not ImageNet-1k")
        return list(range(1000))
    index = {name: i for i, name in enumerate(task_labels)}
    missing = [c for c in dataset_classes if c not in index]
    if missing:
        raise DataError(
            f"{len(missing)} data set classes are not labels of the task "
            f"(first: {missing[:5]}); pick the matching --task"
        )
    return [index[c] for c in dataset_classes]


def _costs(shape: list[int], input_shape: tuple[int, ...] | list[int]) -> dict:
    import numpy as np

    from splitdnn.wire import envelope_size

    elements = int(np.prod(shape))
    return {
        "bottleneck_shape": list(shape),
        "data_size_percent": 100.0 * elements / int(np.prod(input_shape)),
        "bottleneck_bytes_fp32": 4 * elements,
        "bottleneck_bytes_uint8": elements,
        "envelope_bytes_fp32": envelope_size([1, *shape], "fp32"),
        "envelope_bytes_uint8": envelope_size([1, *shape], "uint8"),
    }


def evaluate_run(
    run_dir,
    data=None,
    list_file: str | None = None,
    split: str = "val",
    limit: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> Table3Row:
    """Teacher vs mimic of a distillation run, in torch. ``split="val"`` uses the run's own
    validation split (its config's data, fraction, per-class limit and seed), so the figure
    is the trainer's; ``data``/``list_file`` point it at other images."""
    import time
    from pathlib import Path

    from splitdnn.data import load_crops, load_dataset
    from splitdnn.distill.config import DistillConfig
    from splitdnn.distill.trainer import Distiller, TeacherParts, normalise_batch
    from splitdnn.errors import DataError
    from splitdnn.export import _student_from_state, linear_from_state, load_run, task_name
    from splitdnn.models import get_teacher
    from splitdnn.profile import count_macs, head_macs

    started = time.perf_counter()
    payload = load_run(run_dir)
    config = DistillConfig.model_validate(payload["config"])
    if data is not None:
        config.data.root = Path(data)
        config.data.list = list_file
    spec = get_teacher(payload["teacher"])
    split_module = payload["split_module"]
    dataset = load_dataset(config.data.root, config.data.list)
    if split == "val":  # the trainer's own selection, so the figure is the trainer's
        _, samples, _ = Distiller(config, run_dir, progress=False).samples()
    elif split == "all":
        samples = dataset.samples
    else:
        raise DataError(f"split must be 'val' or 'all', not {split!r}")
    samples = _subset(samples, limit)
    if not samples:
        raise DataError("no images to evaluate")

    model = spec.build(config.teacher.pretrained)
    parts = TeacherParts(spec, model, split_module)
    if payload.get("classifier") is not None:
        parts.classifier = linear_from_state(payload["classifier"])
        task, task_labels = task_name(payload), list(payload["classes"])
    else:
        from splitdnn.labels import imagenet_labels

        task, task_labels = "imagenet", list(imagenet_labels())
    targets = task_targets(dataset.classes, dataset.label_space, task_labels)
    student = _student_from_state(
        spec.name, payload["bottleneck"], payload["variant"], payload["student"]
    )
    student.to(memory_format=torch.channels_last)

    meter = AgreementMeter()
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            x = normalise_batch(load_crops(chunk, spec.preprocessing), spec.preprocessing)
            labels = torch.tensor([targets[s.label] for s in chunk])
            meter.update(parts.tail(parts.head(x)), parts.tail(student(x)), labels)
            if progress:
                print(f"\r{meter.n}/{len(samples)} images", end="", flush=True)
    if progress:
        print(flush=True)
    agreement = meter.result()
    with torch.no_grad():
        shape = list(student.encode(torch.zeros(1, *spec.input_shape)).shape[1:])
    device = count_macs(student.encoder, spec.input_shape)
    head = head_macs(model, split_module, spec.input_shape)
    return Table3Row(
        source="run",
        path=str(run_dir),
        teacher=spec.name,
        split_module=split_module,
        task=task,
        split=split,
        **agreement.to_dict(),
        **_costs(shape, spec.input_shape),
        device_macs=device,
        teacher_head_macs=head,
        device_macs_reduction_percent=100.0 * (1 - device / head) if head else None,
        seconds=time.perf_counter() - started,
    )


def evaluate_bundle(
    bundle_dir,
    data,
    list_file: str | None = None,
    task: str | None = None,
    split: str = "all",
    val_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> Table3Row:
    """Teacher (``offload.onnx``) vs mimic (``device.onnx`` -> ``server.onnx``) of a bundle,
    in onnxruntime: what the services would answer, on the same crops."""
    import time

    import numpy as np

    from splitdnn.bundle import load_bundle
    from splitdnn.data import load_crops, load_dataset, split_per_class
    from splitdnn.errors import DataError
    from splitdnn.runtime import DeviceRunner, ImageClassifier, ServerRunner

    started = time.perf_counter()
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    dataset = load_dataset(data, list_file)
    if task is None:
        task = _guess_task(dataset, {t: s.labels for t, s in manifest.tasks.items()})
    task = bundle.task(task)
    targets = task_targets(dataset.classes, dataset.label_space, bundle.labels(task))
    if split == "val":
        _, samples = split_per_class(dataset, val_fraction, seed)
    elif split == "all":
        samples = dataset.samples
    else:
        raise DataError(f"split must be 'val' or 'all', not {split!r}")
    samples = _subset(samples, limit)
    if not samples:
        raise DataError("no images to evaluate")

    spec = bundle.preprocessing
    device, server = DeviceRunner(bundle), ServerRunner(bundle)
    offload = ImageClassifier(bundle, "offload")
    mean = np.asarray(spec.mean, np.float32).reshape(1, 1, 1, 3)
    std = np.asarray(spec.std, np.float32).reshape(1, 1, 1, 3)
    meter = AgreementMeter()
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        crops = load_crops(chunk, spec).astype(np.float32)
        x = np.ascontiguousarray(((crops - mean) / std).transpose(0, 3, 1, 2))
        _, teacher = offload.run(x, task)
        _, mimic = server(device.run(x), task)
        labels = torch.tensor([targets[s.label] for s in chunk])
        meter.update(torch.from_numpy(teacher), torch.from_numpy(mimic), labels)
        if progress:
            print(f"\r{meter.n}/{len(samples)} images", end="", flush=True)
    if progress:
        print(flush=True)
    agreement = meter.result()
    metrics = manifest.metrics
    device_macs = metrics.get("device_macs")
    head = metrics.get("teacher_head_macs")
    return Table3Row(
        source="bundle",
        path=str(bundle_dir),
        teacher=manifest.teacher,
        split_module=manifest.split_module,
        task=task,
        split=split,
        **agreement.to_dict(),
        **_costs(manifest.bottleneck.shape, (3, spec.size, spec.size)),
        device_macs=device_macs,
        teacher_head_macs=head,
        device_macs_reduction_percent=metrics.get("device_macs_reduction_percent"),
        seconds=time.perf_counter() - started,
    )


def _guess_task(dataset, tasks: dict[str, list[str]]) -> str:
    """The bundle task whose labels the data set's classes are."""
    from splitdnn.errors import DataError

    if dataset.label_space == "imagenet" and "imagenet" in tasks:
        return "imagenet"
    names = set(dataset.classes)
    for task, labels in tasks.items():
        if names <= set(labels):
            return task
    raise DataError(f"no task of the bundle ({', '.join(tasks)}) has these classes; use --task")
