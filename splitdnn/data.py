"""Labelled image lists from the layouts users have, and a deterministic validation split.

Layouts (auto-detected by :func:`load_dataset`):

* a list file of ``class/file.jpg`` lines (Caltech-101's ``train.txt``), class from the folder;
* ``labels.csv`` with ``file,synset,index`` (the ImageNet sample), class = the ImageNet index;
* a plain folder of class subfolders (``root/<class>/*.jpg``, no list file needed); the
  validation images are then a seeded share of every class (:func:`split_per_class`).
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splitdnn.errors import DataError, ImageError
from splitdnn.imaging import Preprocessing, decode_image, resize_and_crop

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class Dataset:
    """Samples plus the class names their labels index."""

    samples: list[Sample]
    classes: list[str]
    label_space: str  # "imagenet" when labels are ImageNet indices, else "folder"

    def __len__(self) -> int:
        return len(self.samples)


def _from_list(root: Path, list_file: Path) -> Dataset:
    lines = [ln.strip() for ln in list_file.read_text().splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{list_file} lists no images")
    classes = sorted({ln.split("/")[0] for ln in lines})
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for ln in lines:
        if "/" not in ln:
            raise DataError(f"{list_file}: line {ln!r} is not of the form class/file.jpg")
        samples.append(Sample(root / ln, index[ln.split("/")[0]]))
    return Dataset(samples, classes, "folder")


def _from_labels_csv(root: Path, csv_file: Path) -> Dataset:
    with csv_file.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"file", "index"} <= set(rows[0]):
        raise DataError(f"{csv_file} needs the columns file,synset,index")
    images = root / "images" if (root / "images").is_dir() else root  # the sample's layout
    samples = [Sample(images / row["file"], int(row["index"])) for row in rows]
    return Dataset(samples, [str(i) for i in range(1000)], "imagenet")


def _from_folders(root: Path) -> Dataset:
    """``root/<class>/<image>`` (torchvision's ImageFolder); hidden folders and files
    (``.ipynb_checkpoints``, ``._x.jpg``) are not classes or images."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    images = {
        name: [
            path
            for path in sorted((root / name).iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
        ]
        for name in classes
    }
    if not any(images.values()):
        raise DataError(f"{root} has no class folders with images")
    # An empty folder would still be a class: a probe output no image ever trains.
    empty = [str(root / name) for name in classes if not images[name]]
    if empty:
        raise DataError(
            f"class folder(s) without images ({', '.join(sorted(IMAGE_SUFFIXES))}): "
            f"{', '.join(empty)}; add images to them or remove them"
        )
    samples = [Sample(path, label) for label, name in enumerate(classes) for path in images[name]]
    return Dataset(samples, classes, "folder")


def load_dataset(root: str | Path, list_file: str | Path | None = None) -> Dataset:
    """Read a data set in any supported layout; see the module docstring."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    if list_file is not None:
        list_path = Path(list_file)
        if not list_path.is_absolute() and not list_path.exists():
            list_path = root / list_path
        if not list_path.is_file():
            raise DataError(f"list file {list_file} does not exist")
        if list_path.suffix == ".csv":
            return _from_labels_csv(root, list_path)
        return _from_list(root / "images" if (root / "images").is_dir() else root, list_path)
    if (root / "labels.csv").is_file():
        return _from_labels_csv(root, root / "labels.csv")
    if (root / "train.txt").is_file():
        return _from_list(
            root / "images" if (root / "images").is_dir() else root, root / "train.txt"
        )
    return _from_folders(root)


def split_per_class(
    dataset: Dataset, val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Seeded split that holds out ``val_fraction`` of every class (at least one image of any
    class with two or more), so the same config always gives the same validation set.

    Classes with a single image (the ImageNet sample: one photo per class) are pooled and split
    together, so ``val_fraction`` of them is held out rather than all or none.
    """
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for sample in dataset.samples:
        by_class[sample.label].append(sample)
    groups = [by_class[label] for label in sorted(by_class) if len(by_class[label]) > 1]
    singles = [by_class[label][0] for label in sorted(by_class) if len(by_class[label]) == 1]
    if singles:
        groups.append(singles)
    rng = random.Random(seed)
    train, val = [], []
    for group in groups:
        items = sorted(group, key=lambda s: str(s.path))
        rng.shuffle(items)
        n_val = round(len(items) * val_fraction)
        if val_fraction > 0 and len(items) >= 2:
            n_val = max(1, n_val)
        val += items[:n_val]
        train += items[n_val:]
    return train, val


def select_samples(
    root: str | Path,
    list_file: str | Path | None,
    val_fraction: float,
    seed: int,
    per_class_limit: int | None = None,
) -> tuple[list[Sample], list[Sample], list[str], str]:
    """Training and validation samples, class names and label space of a data folder.

    Every trainer, probe and evaluation of a run goes through here (via the run's config), so
    the same settings always give the same images in the same order: teacher outputs cached by
    one run line up with another's. ``per_class_limit`` keeps the first N images of a class.
    """
    dataset = load_dataset(root, list_file)
    if per_class_limit:
        kept: dict[int, int] = defaultdict(int)
        samples = []
        for s in dataset.samples:
            if kept[s.label] < per_class_limit:
                kept[s.label] += 1
                samples.append(s)
        dataset.samples = samples
    train, val = split_per_class(dataset, val_fraction, seed)
    return train, val, dataset.classes, dataset.label_space


def spread_evenly(samples: Sequence[Sample], limit: int | None) -> list[Sample]:
    """``limit`` samples spread evenly over the list (so every part of a sorted list counts);
    all of them without a limit or with one at least as long as the list."""
    if not limit or limit >= len(samples):
        return list(samples)
    return [samples[int(i)] for i in np.linspace(0, len(samples) - 1, limit).round()]


def samples_digest(samples: Sequence[Sample]) -> str:
    """A short hash of an ordered sample list (paths and labels), for cache keys: edit a list
    file and every cache built from the old list is stale."""
    import hashlib

    digest = hashlib.sha256()
    for s in samples:
        digest.update(f"{s.path}\t{s.label}\n".encode())
    return digest.hexdigest()[:16]


def load_crop(path: Path, spec: Preprocessing) -> np.ndarray:
    """One image file -> the uint8 HWC crop the model sees (normalised later, in batches)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    try:
        return np.asarray(resize_and_crop(decode_image(data), spec), dtype=np.uint8)
    except ImageError as exc:  # stop, naming the file: a skipped image would shift the split
        raise DataError(f"{path}: {exc}; replace or remove the file") from exc


def load_crops(samples: Sequence[Sample], spec: Preprocessing, progress: bool = False):
    """Crops of many images as one uint8 array (N, H, W, 3), decoded in a thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    out = np.empty((len(samples), spec.size, spec.size, 3), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = pool.map(lambda s: load_crop(s.path, spec), samples)
        if progress:
            from tqdm import tqdm

            jobs = tqdm(jobs, total=len(samples), desc="decode", unit="img")
        for i, crop in enumerate(jobs):
            out[i] = crop
    return out
