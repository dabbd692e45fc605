"""Scores of a distillation run or a bundle on labelled images: three evaluators, one per
kind of thing ``splitdnn evaluate`` is given.

* :func:`evaluate_run` — teacher vs mimic of a run, in torch: one row of the papers' Table 3
  (on the run's own validation split by default, so the figure is the trainer's).
* :func:`evaluate_bundle` — every mode a bundle serves, in onnxruntime, on the same images:
  ``offload`` (the teacher), ``split`` in fp32 and through the wire envelope as the head sends
  it (``fp16``, ``uint8``: quantised, encoded, decoded and dequantised by :mod:`splitdnn.wire`),
  and ``local``. Per mode: top-1/top-5, top-1 agreement with the teacher, and the gap to the
  teacher with a paired 95 % confidence interval, beside the number of images. A bundle of
  ``splitdnn export classes`` is scored on its own task too (``--task``, e.g.
  ``caltech101-5``): every class of the data set outside the classes of interest counts as
  the task's "other" label, as the bundle's grouped teacher head and its student answer.
* :func:`evaluate_classes` — an application-specific student (``method: classes``: a run
  or its assets) in torch, beside the teacher, a general student and the general local
  model on the same held-out images and the same decision (a class of interest or
  "other"); :func:`classes_table` renders it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from splitdnn import rans, wire
from splitdnn.bundle import ACCURACY_KEYS, TaskAccuracy, load_bundle
from splitdnn.checkpoints import linear_from_state, load_run
from splitdnn.data import (
    Dataset,
    Sample,
    load_crops,
    load_dataset,
    split_per_class,
    spread_evenly,
)
from splitdnn.distill.config import DistillConfig, config_samples, parse_config
from splitdnn.errors import CheckpointError, DataError
from splitdnn.imaging import normalise_pixels
from splitdnn.labels import imagenet_labels
from splitdnn.metrics import AgreementMeter, topk_indices
from splitdnn.models import get_teacher
from splitdnn.profile import count_macs, head_macs
from splitdnn.runtime import DeviceRunner, ImageClassifier, ServerRunner, Threads
from splitdnn.stats import paired_difference
from splitdnn.teacher import normalise_batch, teacher_parts

#: The split precisions scored for a bundle, as the head can send them.
SPLIT_PRECISIONS = ("fp32", "fp16", "uint8", "uint4")


# --- shared -----------------------------------------------------------------------------------


def task_targets(
    dataset_classes: list[str],
    label_space: str,
    task_labels: list[str],
    other: str | None = None,
) -> list[int]:
    """Map a data set's label indices to a task's output indices (by name; identity for
    ImageNet indices against a 1000-class task). ``other``: the task's label for every
    data set class that is not one of its labels (a grouped task, :func:`grouped_other`)."""
    if label_space == "imagenet":
        if len(task_labels) != 1000:
            raise DataError("the images have ImageNet labels but the task is not ImageNet-1k")
        return list(range(1000))
    index = {name: i for i, name in enumerate(task_labels)}
    if other is not None:
        return [index.get(c, index[other]) for c in dataset_classes]
    missing = [c for c in dataset_classes if c not in index]
    if missing:
        raise DataError(
            f"{len(missing)} data set classes are not labels of the task "
            f"(first: {missing[:5]}); pick the matching --task"
        )
    return [index[c] for c in dataset_classes]


def grouped_other(metrics: dict[str, Any], task: str, labels: list[str]) -> str | None:
    """The "other" label of a bundle's grouped task, or None: the task of ``splitdnn export
    classes`` answers its classes of interest and one last label for every other class of
    the data set (its student's classes, kept in the manifest's ``local_student``)."""
    student = metrics.get("local_student") or {}
    return (
        labels[-1]
        if task in metrics.get("local_tasks", []) and student.get("classes") == labels
        else None
    )


def bottleneck_costs(shape: list[int], input_shape: tuple[int, ...] | list[int]) -> dict:
    """What the bottleneck costs on the link: elements, raw bytes, envelope bytes."""
    elements = int(np.prod(shape))
    return {
        "bottleneck_shape": list(shape),
        "data_size_percent": 100.0 * elements / int(np.prod(input_shape)),
        "bottleneck_bytes_fp32": 4 * elements,
        "bottleneck_bytes_uint8": elements,
        "envelope_bytes_fp32": wire.envelope_size([1, *shape], "fp32"),
        "envelope_bytes_uint8": wire.envelope_size([1, *shape], "uint8"),
    }


def _select(dataset: Dataset, split: str, val_fraction: float, seed: int) -> list[Sample]:
    if split in ("val", "train"):
        train, val = split_per_class(dataset, val_fraction, seed)
        return val if split == "val" else train
    if split == "all":
        return dataset.samples
    raise DataError(f"split must be 'val', 'train' or 'all', not {split!r}")


def _no_images(dataset: Dataset, split: str, val_fraction: float, limit: int | None) -> DataError:
    """Why nothing is left to score, and what to pass instead."""
    if not dataset.samples:
        return DataError("no images to evaluate: the data folder (and list file) hold none")
    if split == "val":
        per_class: dict[int, int] = {}
        for sample in dataset.samples:
            per_class[sample.label] = per_class.get(sample.label, 0) + 1
        return DataError(
            f"no images to evaluate: the validation split holds back {val_fraction:g} of each "
            f"class, which of {len(dataset.samples)} images in {len(per_class)} classes (at "
            f"most {max(per_class.values())} per class) is none; pass --split all to score "
            "every image (for a run, training images included)"
        )
    return DataError(f"no images to evaluate (--limit {limit})")


def _progress(done: int, total: int, progress: bool) -> None:
    if progress:
        print(f"\r{done}/{total} images", end="" if done < total else "\n", flush=True)


# --- a run, in torch ----------------------------------------------------------------------------


@dataclass
class Table3Row:
    """Accuracy of teacher and mimic on the same images, plus what the split costs."""

    source: str  # "run" (torch)
    path: str
    teacher: str
    split_module: str
    task: str
    split: str  # "val" (the run's validation split), "train" (the rest) or "all"
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


def evaluate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    list_file: str | None = None,
    split: str = "val",
    limit: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> Table3Row:
    """Teacher vs mimic of a distillation run, in torch. ``split="val"`` uses the run's own
    validation split (its config's data, fraction, per-class limit and seed), so the figure
    is the trainer's; ``data``/``list_file`` point it at other images."""
    started = time.perf_counter()
    checkpoint = load_run(run_dir)
    config = DistillConfig.model_validate(checkpoint.config)
    if data is not None:
        config.data.root = Path(data)
        config.data.list = list_file
    if split in ("val", "train"):  # the trainer's own selection, so the figure is the trainer's
        samples = config_samples(config)[1 if split == "val" else 0]
        dataset = load_dataset(config.data.root, config.data.list)
    else:
        dataset = load_dataset(config.data.root, config.data.list)
        samples = _select(dataset, split, 0.0, 0)
    samples = spread_evenly(samples, limit)
    if not samples:
        raise _no_images(dataset, split, config.data.val_fraction, limit)

    spec = get_teacher(checkpoint.teacher)
    model, parts = teacher_parts(
        spec.name, checkpoint.pretrained, checkpoint.split_module, checkpoint.teacher_weights
    )
    if checkpoint.probe is not None:
        parts.classifier = linear_from_state(checkpoint.probe)
        task, task_labels = checkpoint.task or "task", list(checkpoint.classes or [])
    else:
        task, task_labels = "imagenet", list(imagenet_labels())
    targets = task_targets(dataset.classes, dataset.label_space, task_labels)
    student = checkpoint.build_student()
    student.to(memory_format=torch.channels_last)

    meter = AgreementMeter()
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            x = normalise_batch(load_crops(chunk, spec.preprocessing), spec.preprocessing)
            labels = torch.tensor([targets[s.label] for s in chunk])
            meter.update(parts.tail(parts.head(x)), parts.tail(student(x)), labels)
            _progress(meter.n, len(samples), progress)
    with torch.no_grad():
        shape = list(student.encode(torch.zeros(1, *spec.input_shape)).shape[1:])
    device = count_macs(student.encoder, spec.input_shape)
    head = head_macs(model, checkpoint.split_module, spec.input_shape)
    return Table3Row(
        source="run",
        path=str(run_dir),
        teacher=spec.name,
        split_module=checkpoint.split_module,
        task=task,
        split=split,
        **meter.result().to_dict(),
        **bottleneck_costs(shape, spec.input_shape),
        device_macs=device,
        teacher_head_macs=head,
        device_macs_reduction_percent=100.0 * (1 - device / head) if head else None,
        seconds=time.perf_counter() - started,
    )


# --- a bundle, in onnxruntime, every mode -----------------------------------------------------


class ModeHits:
    """Per-image top-1/top-5 hits of one mode, and its top-1 agreement with the teacher."""

    def __init__(self) -> None:
        self.top1: list[np.ndarray] = []
        self.top5: list[np.ndarray] = []
        self.agree: list[np.ndarray] = []

    def update(self, logits: np.ndarray, labels: np.ndarray, teacher: np.ndarray) -> None:
        ranked = topk_indices(torch.from_numpy(np.ascontiguousarray(logits)), 5).numpy()
        self.top1.append(ranked[:, 0] == labels)
        self.top5.append((ranked == labels[:, None]).any(axis=1))
        self.agree.append(ranked[:, 0] == teacher.argmax(1))

    def hits(self) -> np.ndarray:
        return np.concatenate(self.top1) if self.top1 else np.zeros(0, bool)


def paired_gap(reference: np.ndarray, other: np.ndarray) -> tuple[float, list[float]]:
    """``reference``'s top-1 minus ``other``'s (points) with its paired 95 % interval, as
    a report stores them (:func:`splitdnn.stats.paired_difference`)."""
    difference = paired_difference(reference, other)
    return difference.points, list(difference.ci95)


def _through_wire(bottleneck: np.ndarray, bundle_id: str, precision: str) -> np.ndarray:
    """The bottleneck as the tail sees it after the head sent it in ``precision``."""
    if precision == "fp32":
        return bottleneck
    data = wire.encode(bottleneck, bundle_id=bundle_id, quantisation=precision)
    return wire.decode(data).to_array()


def _entropy_coded(
    latent: np.ndarray, bundle_id: str, tables: rans.CodingTables, rate: str | None = None
) -> tuple[np.ndarray, list[int]]:
    """The latent as the tail sees it after an entropy-coded envelope (version 2), and the
    bytes each image's envelope takes on the wire (one envelope an image, as served; a
    ladder's envelope names its ``rate``, as the head sends it)."""
    received, sizes = [], []
    for one in latent:
        data = wire.encode_entropy(one[None], bundle_id=bundle_id, tables=tables, rate=rate)
        ladder = None if rate is None else {rate: (tables, tuple(one.shape))}
        received.append(wire.decode(data, tables=tables, rates=ladder).to_array())
        sizes.append(len(data))
    return np.concatenate(received), sizes


class _LadderScores:
    """Every rate of a ladder bundle, served as the head sends it (the rate's device part,
    its envelope naming the rate, its server part); parts several rates share run once."""

    def __init__(self, bundle: Any, pool: Threads) -> None:
        self.bundle = bundle
        self.rates: tuple[str, ...] = bundle.rates
        self.hits = {r: ModeHits() for r in self.rates}
        self.sizes: dict[str, list[int]] = {r: [] for r in self.rates}
        self._runners: dict[Path, Any] = {}
        self._pool = pool

    def _runner(self, kind: type, rate: str, role: str) -> Any:
        path = self.bundle.rate_model_path(rate, role)
        if path not in self._runners:
            self._runners[path] = kind(self.bundle, self._pool, rate)
        return self._runners[path]

    def update(
        self,
        x: np.ndarray,
        bottleneck: np.ndarray,
        device: DeviceRunner,
        task: str,
        labels: np.ndarray,
        teacher: np.ndarray,
    ) -> np.ndarray:
        """Score one batch at every rate; returns the default rate's logits."""
        latents = {device.model.path: bottleneck}
        default = None
        for rate in self.rates:
            runner = self._runner(DeviceRunner, rate, "device")
            if runner.model.path not in latents:
                latents[runner.model.path] = runner.run(x)
            tables = self.bundle.rate_coding_tables(rate)
            z, sizes = _entropy_coded(latents[runner.model.path], self.bundle.id, tables, rate)
            logits = self._runner(ServerRunner, rate, "server")(z, task)[1]
            self.hits[rate].update(logits, labels, teacher)
            self.sizes[rate] += sizes
            if rate == self.bundle.manifest.default_rate:
                default = logits
        assert default is not None
        return default

    def report(self, reference: np.ndarray) -> dict[str, dict[str, Any]]:
        scores = {}
        for rate, hits in self.hits.items():
            top1 = hits.hits()
            gap, ci = paired_gap(reference, top1)
            scores[rate] = {
                "top1": 100.0 * float(top1.mean()),
                "top5": 100.0 * float(np.concatenate(hits.top5).mean()),
                "agreement": 100.0 * float(np.concatenate(hits.agree).mean()),
                "gap": gap,
                "gap_ci95": ci,
                "median_bytes": float(np.median(self.sizes[rate])),
                "mean_bytes": float(np.mean(self.sizes[rate])),
            }
        return scores


def evaluate_bundle(
    bundle_dir: str | Path,
    data: str | Path,
    list_file: str | None = None,
    task: str | None = None,
    split: str = "all",
    val_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
    threads: int = 0,
) -> dict[str, Any]:
    """Every served mode of a bundle on the same images, as the services compute them.

    Keys name mode and precision: ``offload_top1``, ``split_fp32_top1``,
    ``split_uint8_top1``, ``local_top1`` (and ``_top5``; ``_agreement`` with the teacher;
    ``_gap`` to the teacher with ``_gap_ci95``). ``local`` is left out when the bundle's
    local model has no classifier for the task. A bundle with coding tables (an
    entropy-coded bottleneck) adds ``split_entropy``, the envelope it serves, with the bytes
    of each image's envelope (``split_entropy_median_bytes``, ``_mean_bytes``);
    ``split_uint8_zstd_median_bytes`` is the same for uint8 + zstd (version 1). A ladder
    bundle adds ``rates``: per rate its split as served (``top1``, ``top5``, ``agreement``,
    ``gap`` to the teacher with ``gap_ci95``, ``median_bytes``, ``mean_bytes``); its
    ``split_entropy`` is the default rate's.
    ``threads``: ONNX Runtime threads per model (0: onnxruntime decides).
    """
    started = time.perf_counter()
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    dataset = load_dataset(data, list_file)
    if task is None:
        task = _guess_task(dataset, {t: s.labels for t, s in manifest.tasks.items()})
    task = bundle.task(task)
    task_labels = bundle.labels(task)
    other = grouped_other(manifest.metrics, task, task_labels)
    targets = task_targets(dataset.classes, dataset.label_space, task_labels, other)
    samples = spread_evenly(_select(dataset, split, val_fraction, seed), limit)
    if not samples:
        raise _no_images(dataset, split, val_fraction, limit)

    spec, local_spec = bundle.preprocessing, bundle.local_preprocessing
    pool = Threads(intra_op=threads, inter_op=min(threads, 1))
    device, server = DeviceRunner(bundle, pool), ServerRunner(bundle, pool)
    offload = ImageClassifier(bundle, "offload", pool)
    local = ImageClassifier(bundle, "local", pool)
    has_local = task in manifest.metrics.get("local_tasks", [task])
    tables = bundle.coding_tables()
    modes = ["offload", *(f"split_{p}" for p in SPLIT_PRECISIONS)]
    modes += ["split_entropy"] if tables is not None else []
    modes += ["local"] if has_local else []
    hits = {m: ModeHits() for m in modes}
    ladder = _LadderScores(bundle, pool)
    entropy_bytes: list[int] = []
    integer_bytes: dict[str, list[int]] = {q: [] for q in wire.INTEGER_BITS}
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        labels = np.array([targets[s.label] for s in chunk])
        x = normalise_pixels(load_crops(chunk, spec), spec)
        _, teacher = offload.run(x, task)
        bottleneck = device.run(x)
        logits = {"offload": teacher}
        for precision in SPLIT_PRECISIONS:
            z = _through_wire(bottleneck, bundle.id, precision)
            logits[f"split_{precision}"] = server(z, task)[1]
        for quantisation, sizes in integer_bytes.items():
            sizes += [
                len(
                    wire.encode(
                        b[None], bundle_id=bundle.id, quantisation=quantisation, compression="zstd"
                    )
                )
                for b in bottleneck
            ]
        if ladder.rates:
            default = ladder.update(x, bottleneck, device, task, labels, teacher)
            logits["split_entropy"] = default
            entropy_bytes = ladder.sizes[bundle.manifest.default_rate or ""]
        elif tables is not None:
            z, sizes = _entropy_coded(bottleneck, bundle.id, tables)
            logits["split_entropy"] = server(z, task)[1]
            entropy_bytes += sizes
        if has_local:
            local_x = normalise_pixels(load_crops(chunk, local_spec), local_spec)
            logits["local"] = local.run(local_x, task)[1]
        for mode in modes:
            hits[mode].update(logits[mode], labels, teacher)
        _progress(min(i + batch_size, len(samples)), len(samples), progress)

    report: dict[str, Any] = {
        "source": "bundle",
        "path": str(bundle_dir),
        "bundle_id": bundle.id,
        "teacher": manifest.teacher,
        "split_module": manifest.split_module,
        "task": task,
        "data": str(data),
        "split": split,
        "images": len(samples),
        "modes": modes,
    }
    reference = hits["offload"].hits()
    for mode in modes:
        top1 = hits[mode].hits()
        report[f"{mode}_top1"] = 100.0 * float(top1.mean())
        report[f"{mode}_top5"] = 100.0 * float(np.concatenate(hits[mode].top5).mean())
        if mode != "offload":
            report[f"{mode}_agreement"] = 100.0 * float(np.concatenate(hits[mode].agree).mean())
            report[f"{mode}_gap"], report[f"{mode}_gap_ci95"] = paired_gap(reference, top1)
    for quantisation, sizes in integer_bytes.items():  # what fewer bits cost, with its bytes
        gap, ci = paired_gap(hits["split_fp32"].hits(), hits[f"split_{quantisation}"].hits())
        report[f"{quantisation}_cost"], report[f"{quantisation}_cost_ci95"] = gap, ci
        report[f"split_{quantisation}_zstd_median_bytes"] = float(np.median(sizes))
    if entropy_bytes:
        report["split_entropy_median_bytes"] = float(np.median(entropy_bytes))
        report["split_entropy_mean_bytes"] = float(np.mean(entropy_bytes))
    if ladder.rates:
        report["rates"] = ladder.report(reference)
    metrics = manifest.metrics
    report.update(bottleneck_costs(manifest.bottleneck.shape, (3, spec.size, spec.size)))
    report.update(
        {
            "device_macs": metrics.get("device_macs"),
            "teacher_head_macs": metrics.get("teacher_head_macs"),
            "device_macs_reduction_percent": metrics.get("device_macs_reduction_percent"),
            "seconds": time.perf_counter() - started,
        }
    )
    return report


def task_accuracy(report: dict[str, Any], data: str | None = None) -> TaskAccuracy:
    """The figures of an :func:`evaluate_bundle` report that a bundle keeps for auto's
    accuracy bound (``splitdnn evaluate BUNDLE --record``); ``data`` says which images
    (default: the report's data folder and split)."""
    top1 = {k: round(report[f"{k}_top1"], 2) for k in ACCURACY_KEYS if f"{k}_top1" in report}
    where = data or f"{report.get('data', report['path'])}, split {report['split']}"
    return TaskAccuracy(images=report["images"], data=where, top1=top1)


def rate_accuracy(report: dict[str, Any], rate: str, data: str | None = None) -> TaskAccuracy:
    """One rate's figures of a ladder bundle's report, as its manifest keeps them: the
    teacher and local as measured beside it, ``split_entropy`` this rate's split (the
    report's fp32/fp16/uint8 split scores are the default rate's device part, not this
    rate's, so they stay in the bundle's top-level figures only)."""
    figures = task_accuracy(report, data)
    top1 = {k: v for k, v in figures.top1.items() if not k.startswith("split_")}
    top1["split_entropy"] = round(report["rates"][rate]["top1"], 2)
    return figures.model_copy(update={"top1": top1})


def _guess_task(dataset: Dataset, tasks: dict[str, list[str]]) -> str:
    """The bundle task whose labels the data set's classes are."""
    if dataset.label_space == "imagenet" and "imagenet" in tasks:
        return "imagenet"
    names = set(dataset.classes)
    for task, labels in tasks.items():
        if names <= set(labels):
            return task
    raise DataError(f"no task of the bundle ({', '.join(tasks)}) has these classes; use --task")


# --- an application-specific student (method: classes), in torch -------------------------------


def is_classes_run(path: str | Path) -> bool:
    """Whether ``path`` holds a ``method: classes`` run or its committed assets."""
    import json

    from splitdnn.checkpoints import KD_STUDENT_JSON

    path = Path(path)
    for name, key in (("config.json", ()), (KD_STUDENT_JSON, ("config",))):
        try:
            data = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        for k in key:
            data = data.get(k, {})
        return data.get("method") == "classes"
    return False


def _teacher_probe(payload: dict[str, Any], config: DistillConfig, source: Path) -> Path:
    """The teacher probe of a whole-student run or its assets: the assets' copy, else where
    the run took it from (:func:`splitdnn.distill.kd.teacher_probe_candidates`)."""
    from splitdnn.distill.kd import teacher_probe_candidates

    if payload.get("teacher_probe"):
        return source / payload["teacher_probe"]
    candidates = teacher_probe_candidates(config, source)
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise CheckpointError(
            f"the teacher probe of {source} is none of {', '.join(map(str, candidates))}; "
            "write the assets from the run again (`splitdnn export assets RUN --out DIR` "
            "copies the probe the run fitted)"
        )
    return found


def _grouped_row(
    name: str,
    model: torch.nn.Module,
    preprocessing: Any,
    samples: list[Sample],
    groups: torch.Tensor | None,
    labels: torch.Tensor,
    other: int,
    batch_size: int,
) -> tuple[dict[str, Any], np.ndarray]:
    """One model's grouped scores (its argmax mapped by ``groups`` when it answers the data
    set's classes; as is when ``groups`` is None), MACs and parameters, and its per-image
    hits on the classes of interest."""
    from splitdnn.distill.classes import grouped_scores
    from splitdnn.profile import count_params

    answers = []
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            x = normalise_batch(load_crops(chunk, preprocessing), preprocessing)
            answers.append(model(x).argmax(1))
    predicted = torch.cat(answers)
    if groups is not None:
        predicted = groups[predicted]
    row = {
        "model": name,
        **grouped_scores(predicted, labels, other),
        "input_size": preprocessing.size,
        "macs": count_macs(model, (3, preprocessing.size, preprocessing.size)),
        "params": count_params(model),
    }
    interest = labels != other
    return row, (predicted == labels)[interest].numpy()


def evaluate_classes(
    run_dir: str | Path,
    general: str | Path | None = None,
    local_probe: str | Path | None = None,
    data: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = False,
    limit: int | None = None,
) -> dict[str, Any]:
    """An application-specific student (``method: classes``: a run directory or its committed
    assets) on its run's held-out images (the validation split of its config, or of ``data``
    with the same fraction and seed: it picked no checkpoint with ``train.keep: last``),
    beside, on the same images and the same decision (a class of interest or "other"; a
    101-class model's argmax mapped to it):

    * the teacher (the run's teacher and probe),
    * ``general``: a general student run (``method: kd`` on all classes, e.g. of the same
      size),
    * the product's general local-mode model: EfficientNet-Lite0 at 224 px + its probe
      (``local_probe``; default: the default assets' ``lite0_caltech101_probe``, left out
      with the reason in ``local_model_left_out`` when the data are not its 101 classes).

    ``limit``: score only that many of the held-out images, spread evenly (a quick check).

    Per model: accuracy on the classes of interest, "other" recall and precision, overall
    accuracy (each with its 95 % Wilson interval and its number of images), MACs (one image)
    and parameters; the student's gap to the teacher on the classes of interest with a
    paired 95 % interval; and its MACs as a share of each general model's.
    """
    from splitdnn.checkpoints import DEFAULT_ASSETS, load_linear, read_kd_student
    from splitdnn.distill.classes import class_groups
    from splitdnn.distill.config import classes_of_interest
    from splitdnn.distill.kd import whole_student
    from splitdnn.students import get_kd_student
    from splitdnn.teacher import frozen_backbone

    started = time.perf_counter()
    run_dir = Path(run_dir)
    payload = read_kd_student(run_dir)
    config = parse_config(payload["config"], base_dir=run_dir)  # assets: paths relative to it
    if config.classes is None:
        raise DataError(f"{run_dir} is not a method: classes run")
    if data is not None:
        config.data.root = Path(data)
    _, samples, classes, _ = config_samples(config)
    samples = spread_evenly(samples, limit)
    of_interest = classes_of_interest(config.classes, classes)
    groups = class_groups(len(classes), of_interest)
    labels = groups[torch.tensor([s.label for s in samples])]
    other = len(of_interest)

    def base_preprocessing(student_name: str) -> Any:
        return get_teacher(get_kd_student(student_name).base).preprocessing

    rows, hits = [], {}

    def add(name: str, model: torch.nn.Module, preprocessing: Any, grouped: bool) -> None:
        if progress:
            print(f"scoring {name} on {len(samples)} images", flush=True)
        row, hit = _grouped_row(
            name,
            model.eval(),
            preprocessing,
            samples,
            None if grouped else groups,
            labels,
            other,
            batch_size,
        )
        rows.append(row)
        hits[name] = hit

    add("student", whole_student(payload), base_preprocessing(payload["student_name"]), True)
    teacher_spec = get_teacher(config.teacher.name)
    _, teacher = frozen_backbone(
        config.teacher.name, config.teacher.pretrained, None, config.teacher.weights
    )
    probe_path = _teacher_probe(payload, config, run_dir)
    add(
        "teacher",
        torch.nn.Sequential(teacher, load_linear(probe_path)),
        teacher_spec.preprocessing,
        False,
    )
    if general is not None:
        general_payload = read_kd_student(general)
        if list(general_payload.get("classes", [])) != classes:
            raise DataError(f"{general} is not a student of the same {len(classes)} classes")
        model = whole_student(general_payload)
        add("general_student", model, base_preprocessing(general_payload["student_name"]), False)
    given = local_probe is not None
    local_probe = Path(local_probe or DEFAULT_ASSETS / "lite0_caltech101_probe.safetensors")
    probe = load_linear(local_probe)
    left_out = None
    if probe.out_features != len(classes):
        left_out = (
            f"the local model's probe {local_probe} answers {probe.out_features} classes, "
            f"the data has {len(classes)}"
        )
        if given:
            raise DataError(f"{left_out}: pass the local probe for this data")
    else:
        _, lite0 = frozen_backbone("efficientnet_lite0", True, None)
        add(
            "local_model",
            torch.nn.Sequential(lite0, probe),
            get_teacher("efficientnet_lite0").preprocessing,
            False,
        )
    gap, ci = paired_gap(hits["student"], hits["teacher"])
    student = rows[0]
    shares = {
        f"macs_percent_of_{row['model']}": 100.0 * student["macs"] / row["macs"] for row in rows[1:]
    }
    return {
        "source": "run",
        "path": str(run_dir),
        "classes": [classes[i] for i in of_interest],
        "other": config.classes.other,
        "split": "val",
        "images": len(samples),
        "classes_images": int((labels != other).sum()),
        "other_images": int((labels == other).sum()),
        "rows": rows,
        "student_minus_teacher_classes_accuracy": gap,
        "student_minus_teacher_classes_accuracy_ci95": ci,
        **shares,
        **({"local_model_left_out": left_out} if left_out else {}),
        "seconds": time.perf_counter() - started,
    }


def classes_table(report: dict[str, Any]) -> str:
    """:func:`evaluate_classes`'s report as a Markdown table (one row per model)."""

    def rate(value: dict[str, Any]) -> str:
        if value["percent"] is None:
            return "–"
        low, high = value["ci95"]
        return f"{value['percent']:.2f} [{low:.1f}, {high:.1f}] (n={value['n']})"

    lines = [
        f"{len(report['classes'])} classes of interest ({', '.join(report['classes'])}) + "
        f"{report['other']!r}; {report['images']} held-out images ({report['classes_images']} "
        f"of the classes, {report['other_images']} other); 95 % Wilson intervals.",
        "",
        "| model | crop | MACs (M) | params (M) | accuracy on the classes | "
        "other recall | other precision |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['model']} | {row['input_size']} px | {row['macs'] / 1e6:.1f} | "
            f"{row['params'] / 1e6:.2f} | {rate(row['classes_accuracy'])} | "
            f"{rate(row['other_recall'])} | {rate(row['other_precision'])} |"
        )
    low, high = report["student_minus_teacher_classes_accuracy_ci95"]
    lines += [
        "",
        f"Student minus teacher on the classes: "
        f"{report['student_minus_teacher_classes_accuracy']:+.2f} points "
        f"(paired 95 % CI [{low:+.2f}, {high:+.2f}]).",
    ]
    lines += [
        f"Student MACs: {value:.1f} % of the {key.removeprefix('macs_percent_of_')}'s."
        for key, value in report.items()
        if key.startswith("macs_percent_of_")
    ]
    if report.get("local_model_left_out"):
        lines.append(f"Local model left out: {report['local_model_left_out']}.")
    return "\n".join(lines)
