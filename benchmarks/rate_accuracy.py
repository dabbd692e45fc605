"""Rate against accuracy: what each way of sending an image costs in bytes and top-1.

On each task's held-out images (the same sets as ``accuracy_by_mode.py``: never trained on,
never used to pick a checkpoint) the script scores, image by image:

* **the image, re-encoded** (WebP and JPEG at several sizes and qualities: the short side
  scaled to ``size``, centre square, encoded; the teacher resizes it back) and sent to the
  unmodified teacher (``offload.onnx``): SC2's baseline, the one split must beat;
* **split** as the head sends it (device part, the wire envelope, server part): the bytes
  are the envelope's, as on the wire; a bundle of an entropy-coded student (coding tables)
  sends the entropy-coded envelope (version 2), others the quantisation their manifest
  names + zstd (and uint8 + zstd beside it when they send another); a ladder bundle, every
  rate (each with its own device part, tables and server part; the envelope names the rate);
  ``--also BUNDLE`` adds other bundles' split on the same images (e.g. today's default);
* the teacher on the raw upload and the **local** model (0 bytes) as reference lines.

    python -m benchmarks.rate_accuracy splitdnn/assets/default-bundle [--limit N]
    python -m benchmarks.rate_accuracy bundles/ladder --also splitdnn/assets/default-bundle \
        --references-from benchmarks/results/rate_accuracy.json   # score split only

Writes ``benchmarks/results/rate_accuracy.{json,md,png}``: per task and setting the median
and mean bytes, top-1 with its 95 % Wilson interval, and the number of images.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.accuracy_by_mode import DATA, HELD_OUT
from benchmarks.report import RESULTS, conditions, figure, table, write_results
from splitdnn import reencode, wire
from splitdnn.bundle import Bundle, load_bundle
from splitdnn.data import load_dataset, samples_digest, split_per_class
from splitdnn.evaluate import task_targets
from splitdnn.imaging import decode_image
from splitdnn.runtime import DeviceRunner, ImageClassifier, ServerRunner, Threads
from splitdnn.stats import proportion_ci

#: Short side of the re-encoded view (px; the teacher's own resize is the largest) and the
#: qualities tried at each: from ~1 KB up to past the split envelope's bytes.
SIZES = (112, 144, 192, 224, 292)
QUALITIES = {"webp": (10, 30, 60), "jpeg": (10, 30, 60)}


@dataclass(frozen=True)
class ImageSetting:
    """One re-encoding of the photo: format, quality, short side of the view."""

    format: str
    quality: int
    size: int

    @property
    def label(self) -> str:
        return f"{self.format} {self.size} px q{self.quality}"

    def encode(self, image: Image.Image, bundle: Bundle) -> bytes:
        view = reencode.fit_view(image, bundle.preprocessing)
        if self.size < view.width:
            view = view.resize((self.size, self.size), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        if self.format == "webp":
            view.save(buffer, "WEBP", quality=self.quality, method=4)
        else:
            view.save(buffer, "JPEG", quality=self.quality, optimize=True)
        return buffer.getvalue()


def settings(sizes: tuple[int, ...] = SIZES) -> list[ImageSetting]:
    return [ImageSetting(f, q, s) for f, qs in QUALITIES.items() for q in qs for s in sizes]


def _row(kind: str, label: str, hits: list[int], sizes: list[int]) -> dict[str, Any]:
    low, high = proportion_ci(sum(hits), len(hits))
    return {
        "kind": kind,
        "setting": label,
        "images": len(hits),
        "top1": round(100 * statistics.fmean(hits), 2),
        "top1_ci95": [round(low, 2), round(high, 2)],
        "median_bytes": int(statistics.median(sizes)),
        "mean_bytes": round(statistics.fmean(sizes)),
    }


def split_label(bundle: Bundle, rate: str | None = None, quantisation: str | None = None) -> str:
    if rate is not None:
        return f"split: entropy-coded, rate {rate}"
    if bundle.manifest.coding:
        return "split: entropy-coded"
    return f"split: {quantisation or bundle.sent_quantisation()} + zstd"


def send_split(
    bundle: Bundle, bottleneck: np.ndarray, rate: str | None = None, quantisation: str | None = None
) -> tuple[bytes, np.ndarray]:
    """The envelope split sends for ``bottleneck`` and what the tail decodes from it: the
    entropy-coded one (version 2) when the bundle has coding tables (a ladder's ``rate``:
    that rate's tables, named in the envelope), else ``quantisation`` (default: what the
    bundle sends, :meth:`Bundle.sent_quantisation`) + zstd."""
    tables = bundle.coding_tables() if rate is None else bundle.rate_coding_tables(rate)
    if tables is not None:
        envelope = wire.encode_entropy(bottleneck, bundle_id=bundle.id, tables=tables, rate=rate)
        ladder = None if rate is None else {rate: (tables, tuple(bottleneck.shape[1:]))}
        return envelope, wire.decode(envelope, tables=tables, rates=ladder).to_array()
    envelope = wire.encode(
        bottleneck,
        bundle_id=bundle.id,
        quantisation=quantisation or bundle.sent_quantisation(),
        compression="zstd",
    )
    return envelope, wire.decode_array(envelope)[1]


@dataclass
class SplitWay:
    """One way split can be sent: a bundle (and a ladder's rate) with its two parts."""

    label: str
    bundle: Bundle
    rate: str | None
    device: DeviceRunner
    server: ServerRunner
    quantisation: str | None = None

    def __call__(self, raw: bytes, task: str) -> tuple[np.ndarray, int]:
        envelope, received = send_split(self.bundle, self.device(raw), self.rate, self.quantisation)
        return self.server(received, task)[1], len(envelope)


def split_ways(bundle: Bundle, threads: Threads, named: bool = False) -> list[SplitWay]:
    """Every rate of a ladder bundle, or its one split (a plain bundle that sends fewer bits
    than 8: uint8 as well, the envelope it replaced); ``named`` puts the bundle's name in the
    label (a bundle compared with the main one)."""
    prefix = f"{bundle.name}: " if named else ""
    rates: list[str | None] = list(bundle.rates) or [None]
    kinds: list[tuple[str | None, str | None]] = [(rate, None) for rate in rates]
    if not bundle.rates and bundle.sent_quantisation() not in ("uint8", wire.ENTROPY):
        kinds.append((None, "uint8"))
    return [
        SplitWay(
            prefix + split_label(bundle, rate, quantisation),
            bundle,
            rate,
            DeviceRunner(bundle, threads, rate=rate),
            ServerRunner(bundle, threads, rate=rate),
            quantisation,
        )
        for rate, quantisation in kinds
    ]


def reference_key(bundle: Bundle, grid: list[ImageSetting], samples: list) -> dict[str, Any]:
    """What the rows that do not depend on split are a function of: the teacher's and the
    local model's files, the preprocessing, the re-encodings and the images (in order)."""
    files, models = bundle.manifest.files, bundle.manifest.models
    return {
        "offload_sha256": files[models.offload].sha256,
        "local_sha256": files[models.local].sha256 if models.local in files else None,
        "preprocessing": bundle.preprocessing.to_dict(),
        "grid": [s.label for s in grid],
        "samples": samples_digest(samples),
    }


def measure_task(
    bundle: Bundle,
    task: str,
    data: Path,
    limit: int | None,
    grid: list[ImageSetting],
    also: tuple[Bundle, ...] = (),
    earlier: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every setting of ``grid``, every split way (each rate, and the ``also`` bundles') and
    the references on one task's held-out images. ``earlier``: this task's result from an
    earlier run; its image and reference rows are kept when they were measured with the same
    teacher, local model, preprocessing, grid and images (only split is scored again)."""
    folder, list_file, fraction, seed = HELD_OUT[task]
    dataset = load_dataset(data / folder, list_file)
    targets = task_targets(dataset.classes, dataset.label_space, bundle.labels(task))
    samples = split_per_class(dataset, fraction, seed)[1]
    samples = samples[:: max(1, len(samples) // limit)][:limit] if limit else samples
    key = reference_key(bundle, grid, samples)
    reuse = earlier is not None and earlier.get("reference_key") == key
    if earlier is not None and not reuse:
        print(f"{task}: the earlier rows were measured otherwise; scoring all", file=sys.stderr)
    threads = Threads(intra_op=1, inter_op=1)
    teacher = ImageClassifier(bundle, "offload", threads)
    local = ImageClassifier(bundle, "local", threads)
    ways = split_ways(bundle, threads)
    for other in also:
        if task in other.manifest.tasks:
            ways += split_ways(other, threads, named=True)
    has_local = task in bundle.manifest.metrics.get("local_tasks", [task])
    hits: dict[str, list[int]] = {}
    sizes: dict[str, list[int]] = {}

    def score(key: str, logits: np.ndarray, nbytes: int, label: int) -> None:
        hits.setdefault(key, []).append(int(int(np.argmax(logits[0])) == label))
        sizes.setdefault(key, []).append(nbytes)

    for i, sample in enumerate(samples):
        raw = sample.path.read_bytes()
        label = targets[sample.label]
        if not reuse:
            score("raw", teacher(raw, task)[1], len(raw), label)
            image = decode_image(raw)
            for setting in grid:
                encoded = setting.encode(image, bundle)
                score(setting.label, teacher(encoded, task)[1], len(encoded), label)
            if has_local:
                score("local", local(raw, task)[1], 0, label)
        for way in ways:
            logits, nbytes = way(raw, task)
            score(way.label, logits, nbytes, label)
        print(f"\r{task}: {i + 1}/{len(samples)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    split = [
        {**_row("split", w.label, hits[w.label], sizes[w.label]), "bundle": w.bundle.name}
        for w in ways
    ]
    if reuse:
        assert earlier is not None
        references = {k: earlier[k] for k in ("raw", "local", "image")}
    else:
        references = {
            "raw": _row("reference", "the photo as uploaded -> teacher", hits["raw"], sizes["raw"]),
            "local": _row("reference", "local model", hits["local"], sizes["local"])
            if has_local
            else None,
            "image": [_row(s.format, s.label, hits[s.label], sizes[s.label]) for s in grid],
        }
    return {
        "task": task,
        "data": f"{folder}: {fraction:.0%} per class held out (seed {seed})",
        "images": len(samples),
        "reference_key": key,
        "references_from": earlier.get("run") if reuse and earlier else None,
        "split": split,
        **references,
    }


def image_at(rows: list[dict[str, Any]], nbytes: int) -> dict[str, Any] | None:
    """The best re-encoded image that fits in ``nbytes`` (median), or None."""
    fitting = [r for r in rows if r["median_bytes"] <= nbytes]
    return max(fitting, key=lambda r: r["top1"]) if fitting else None


def write_report(result: dict[str, Any], out: Path) -> None:
    lines = [
        "# Rate against accuracy",
        "",
        f"Written by `python -m benchmarks.rate_accuracy` for bundle `{result['bundle']['name']}` "
        f"({result['bundle']['id']}). Top-1 in percent with its 95 % Wilson interval; bytes are "
        "what crosses the link (median per image). `image` rows: the photo re-encoded at that "
        "short side and quality, classified by the unmodified teacher.",
    ]
    for task in result["tasks"]:
        lines += ["", f"## {task['task']} ({task['images']} held-out images: {task['data']})", ""]
        if task.get("references_from"):
            lines += [
                "The image, raw-upload and local rows are kept from an earlier run with the "
                f"same teacher, local model, grid and images ({task['references_from']}); "
                "split was scored in this one.",
                "",
            ]
        rows = task["split"] + sorted(task["image"], key=lambda r: r["median_bytes"])
        rows += [r for r in (task["raw"], task["local"]) if r]
        lines += table(
            ["what is sent", "median bytes", "top-1 [95 % CI]", "best image within its bytes"],
            (_setting_row(task, r) for r in rows),
            align="lrrl",
        )
    write_results("rate_accuracy", result, lines, out, plot)


def _setting_row(task: dict[str, Any], r: dict[str, Any]) -> list[str]:
    """One way of sending: bytes, top-1 with its interval and, for split, the best image
    re-encoding that fits in as many bytes."""
    versus = ""
    if r["kind"] == "split":
        best = image_at(task["image"], r["median_bytes"])
        versus = (
            f"{best['setting']}: {best['top1']:.2f} ({r['top1'] - best['top1']:+.2f})"
            if best
            else "none fits"
        )
    low, high = r["top1_ci95"]
    return [
        r["setting"],
        f"{r['median_bytes']:,}",
        f"{r['top1']:.2f} [{low:.1f}, {high:.1f}]",
        versus,
    ]


def plot(result: dict[str, Any], path: Path) -> None:
    tasks = result["tasks"]
    size = (6.5 * len(tasks), 4.8)
    with figure(path, 1, len(tasks), figsize=size, squeeze=False, dpi=130) as (_, axes):
        for ax, task in zip(axes[0], tasks, strict=True):
            _plot_task(ax, task, result["bundle"]["name"])
        axes[0][-1].legend(fontsize=6, loc="lower right", ncol=2)


def _plot_task(ax: Any, task: dict[str, Any], main: str) -> None:
    """Top-1 against bytes for one task: a curve per image format and size, split as red
    markers (a ladder's rates joined; ``--also`` bundles' in magenta), the raw upload and local
    as lines."""
    for fmt, marker in (("webp", "o"), ("jpeg", "s")):
        for size in sorted({int(r["setting"].split()[1]) for r in task["image"]}):
            rows = [
                r
                for r in task["image"]
                if r["kind"] == fmt and int(r["setting"].split()[1]) == size
            ]
            rows.sort(key=lambda r: r["median_bytes"])
            ax.plot(
                [r["median_bytes"] for r in rows],
                [r["top1"] for r in rows],
                marker=marker,
                lw=0.8,
                ms=3,
                alpha=0.7,
                label=f"image {fmt} {size} px",
            )
    split_rows = sorted(task["split"], key=lambda r: r["median_bytes"])
    ours = [r for r in split_rows if r.get("bundle", main) == main]  # not an --also bundle
    if len(ours) > 1:  # a ladder: its rates as one curve
        ax.plot([r["median_bytes"] for r in ours], [r["top1"] for r in ours], "r-", lw=1.2)
    # a marker per row, so the legend tells apart a ladder's rates, or one split sent as uint4
    # and as uint8 (red: this bundle; magenta: --also bundles)
    markers = {True: itertools.cycle("*PXDph"), False: itertools.cycle("^v<>dH")}
    for r in split_rows:
        mine = r in ours
        marker = next(markers[mine])
        ax.plot(r["median_bytes"], r["top1"], ls="", marker=marker, color="r" if mine else "m",
                ms=12 if marker == "*" else 8, label=r["setting"])  # fmt: skip
    ax.axhline(task["raw"]["top1"], color="k", ls="--", lw=1, label="teacher, raw upload")
    if task["local"]:
        ax.axhline(task["local"]["top1"], color="g", ls=":", lw=1.2, label="local (0 B)")
    ax.set_xscale("log")
    ax.set_xlabel("bytes sent per image (median, log)")
    ax.set_ylabel("top-1 %")
    ax.set_title(f"{task['task']}: {task['images']} held-out images")
    ax.grid(alpha=0.3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--tasks", nargs="+", default=list(HELD_OUT), choices=list(HELD_OUT))
    parser.add_argument("--limit", type=int, default=None, help="images per task, spread evenly")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--also", type=Path, nargs="*", default=[], help="other bundles whose split to add"
    )
    parser.add_argument(
        "--references-from",
        type=Path,
        help="an earlier rate_accuracy.json: keep its image and reference rows where they were "
        "measured with the same teacher, local model, grid and images (score split only)",
    )
    args = parser.parse_args(argv)
    earlier: dict[str, dict[str, Any]] = {}
    if args.references_from is not None:
        previous = json.loads(args.references_from.read_text())
        run = previous.get("conditions", {}).get("date") or str(args.references_from)
        earlier = {t["task"]: {**t, "run": run} for t in previous["tasks"]}
    bundle = load_bundle(args.bundle)
    also = tuple(load_bundle(path) for path in args.also)
    grid = settings(tuple(args.sizes))
    result: dict[str, Any] = {
        "conditions": conditions(),
        "bundle": {"name": bundle.name, "id": bundle.id},
        "teacher": bundle.manifest.teacher,
        "tasks": [],
    }
    for task in args.tasks:  # the report after each task: a long run keeps what it finished
        result["tasks"].append(
            measure_task(bundle, task, args.data, args.limit, grid, also, earlier.get(task))
        )
        write_report(result, args.out)
    print(f"wrote {args.out}/rate_accuracy.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
