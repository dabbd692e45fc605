"""benchmarks/rate_accuracy.py: the re-encodings it scores and the report it writes (the
figures themselves come from the held-out images, in benchmarks/results/)."""

from __future__ import annotations

import io
import json

from PIL import Image

from benchmarks.rate_accuracy import ImageSetting, image_at, settings, write_report
from splitdnn.bundle import load_bundle


def test_a_setting_encodes_the_teachers_view_at_its_size_and_quality(toy_bundle_dir, cat_jpeg):
    bundle = load_bundle(toy_bundle_dir)
    photo = Image.open(io.BytesIO(cat_jpeg)).convert("RGB")
    view = bundle.preprocessing.resize
    small = ImageSetting("webp", 10, view // 2).encode(photo, bundle)
    large = ImageSetting("webp", 60, view).encode(photo, bundle)
    assert Image.open(io.BytesIO(small)).size == (view // 2, view // 2)
    assert Image.open(io.BytesIO(large)).size == (view, view)
    assert (
        Image.open(io.BytesIO(ImageSetting("jpeg", 30, view).encode(photo, bundle))).format
        == "JPEG"
    )
    assert len(small) < len(large)
    assert len(settings((112, 224))) == 2 * 3 * 2


def _row(kind, setting, top1, nbytes):
    return {
        "kind": kind,
        "setting": setting,
        "images": 10,
        "top1": top1,
        "top1_ci95": [top1 - 5, top1 + 5],
        "median_bytes": nbytes,
        "mean_bytes": nbytes,
    }


def test_the_report_compares_split_with_the_best_image_that_fits_its_bytes(tmp_path):
    images = [
        _row("webp", "webp 112 px q10", 40.0, 900),
        _row("webp", "webp 292 px q30", 75.0, 5000),
        _row("jpeg", "jpeg 144 px q30", 60.0, 1800),
    ]
    assert image_at(images, 2000)["setting"] == "jpeg 144 px q30"
    assert image_at(images, 800) is None
    task = {
        "task": "imagenet",
        "data": "held out",
        "images": 10,
        "image": images,
        "split": [_row("split", "split: uint8 + zstd", 72.0, 3300)],
        "raw": _row("reference", "raw", 83.0, 30000),
        "local": _row("reference", "local", 81.0, 0),
    }
    write_report(
        {"bundle": {"name": "b", "id": "0" * 16}, "teacher": "t", "tasks": [task]}, tmp_path
    )
    text = (tmp_path / "rate_accuracy.md").read_text()
    assert (
        "| split: uint8 + zstd | 3,300 | 72.00 [67.0, 77.0] | jpeg 144 px q30: 60.00 (+12.00) |"
        in text
    )
    assert json.loads((tmp_path / "rate_accuracy.json").read_text())["tasks"][0]["images"] == 10
    assert (tmp_path / "rate_accuracy.png").stat().st_size > 10_000


def test_a_ladder_is_scored_at_every_rate_and_another_bundle_beside_it(
    tmp_path, toy_bundle_dir, cat_jpeg
):
    """Each rate sends with its own tables (the peaked r1 in fewer bytes than the flat r2),
    and an --also bundle's split is labelled with its name."""
    import pytest

    pytest.importorskip("onnxruntime")
    from toy_ladder import build_toy_ladder

    from benchmarks.rate_accuracy import split_ways
    from splitdnn.runtime import Threads

    build_toy_ladder(tmp_path / "ladder")
    ladder = load_bundle(tmp_path / "ladder")
    ways = split_ways(ladder, Threads(1, 1))
    assert [w.rate for w in ways] == list(ladder.rates) == ["r1", "r2", "r3"]
    task = ladder.manifest.default_task
    sent = {w.rate: w(cat_jpeg, task) for w in ways}
    for logits, nbytes in sent.values():
        assert logits.shape[-1] == len(ladder.labels(task)) and nbytes > 0
    assert sent["r1"][1] < sent["r2"][1]
    other = split_ways(load_bundle(toy_bundle_dir), Threads(1, 1), named=True)
    assert len(other) == 1 and other[0].rate is None
    assert other[0].label.startswith(f"{load_bundle(toy_bundle_dir).name}: split")


def test_reference_rows_are_reused_only_for_the_same_teacher_grid_and_images(
    tmp_path, toy_bundle_dir
):
    """The key of the rows that do not depend on split changes with the images, the grid
    and the teacher's file, so an earlier run's rows are never kept for another set-up."""
    import pytest

    pytest.importorskip("onnxruntime")
    import dataclasses

    from benchmarks.rate_accuracy import reference_key
    from splitdnn.data import Sample

    bundle = load_bundle(toy_bundle_dir)
    samples = [Sample(tmp_path / f"{i}.jpg", i % 2) for i in range(4)]
    key = reference_key(bundle, settings((112,)), samples)
    assert key == reference_key(bundle, settings((112,)), list(samples))
    assert key != reference_key(bundle, settings((112, 144)), samples)
    assert key != reference_key(bundle, settings((112,)), samples[:3])
    other = bundle.manifest.model_copy(deep=True)
    other.files[other.models.offload].sha256 = "0" * 64  # another teacher
    changed = dataclasses.replace(bundle, manifest=other)
    assert reference_key(changed, settings((112,)), samples) != key
