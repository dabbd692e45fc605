"""Bundles: the manifest contract, the bundle id, and tamper detection."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from splitdnn.bundle import (
    MANIFEST,
    Manifest,
    TaskAccuracy,
    bundle_id_of,
    default_bundle_path,
    load_bundle,
    record_accuracy,
    write_manifest,
)
from splitdnn.errors import BundleError, UnknownNameError, UnknownTaskError
from splitdnn.imaging import Preprocessing

TASKS = {"imagenet": ["tench", "goldfish"], "caltech101": ["Faces", "Leopards", "Motorbikes"]}


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    """A bundle whose 'models' are plain bytes: the manifest does not care what they hold."""
    for role in ("device", "server", "offload", "local"):
        (tmp_path / f"{role}.onnx").write_bytes(role.encode() * 10)
    write_manifest(
        tmp_path,
        name="toy-b2",
        teacher="toy",
        split_module="layer2",
        preprocessing=Preprocessing(size=260, resize=292),
        local_preprocessing=Preprocessing.torchvision(224).to_dict(),
        bottleneck_shape=[2, 4, 4],
        tasks=TASKS,
        metrics={"device_macs": 123},
    )
    return tmp_path


def test_written_manifest_loads_and_matches_the_contract(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    raw = json.loads((bundle_dir / MANIFEST).read_text())
    assert set(raw) >= {
        "format_version", "bundle_id", "name", "teacher", "split_module", "preprocessing",
        "local_preprocessing", "bottleneck", "tasks", "default_task", "models", "files",
        "metrics",
    }  # fmt: skip
    assert raw["tasks"]["imagenet"] == {"labels": ["tench", "goldfish"]}
    assert raw["files"]["device.onnx"]["bytes"] == 60
    assert bundle.manifest.default_task == "imagenet"  # the first task by default
    assert bundle.preprocessing == Preprocessing(size=260, resize=292)
    assert bundle.local_preprocessing == Preprocessing.torchvision(224)
    assert bundle.model_path("server") == bundle_dir / "server.onnx"
    assert bundle.manifest.metrics == {"device_macs": 123}


def test_no_task_is_the_default_but_an_empty_or_unknown_task_is_refused(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    assert bundle.task(None) == "imagenet" and bundle.task("caltech101") == "caltech101"
    for name in ("", "cifar"):
        with pytest.raises(UnknownTaskError, match="this bundle has"):
            bundle.task(name)


def test_bundle_id_is_sha256_over_sorted_name_hash_pairs(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    pairs = sorted(
        (p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in bundle_dir.glob("*.onnx")
    )
    digest = hashlib.sha256("".join(f"{n}\0{h}\n" for n, h in pairs).encode()).hexdigest()
    assert bundle.id == digest[:16]
    assert bundle_id_of(dict(reversed(pairs))) == bundle.id  # order does not matter


def test_tampered_file_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / "server.onnx").write_bytes(b"server" * 9 + b"SERVER")  # same size
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bundle_dir)
    assert load_bundle(bundle_dir, verify=False).name == "toy-b2"


def test_missing_file_or_manifest_is_refused(bundle_dir: Path, tmp_path_factory) -> None:
    (bundle_dir / "local.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="export default"):
        load_bundle(tmp_path_factory.mktemp("empty"))


def test_edited_manifest_is_refused(bundle_dir: Path) -> None:
    path = bundle_dir / MANIFEST
    raw = json.loads(path.read_text())
    raw["bundle_id"] = "0" * 16
    path.write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="bundle_id"):
        load_bundle(bundle_dir)
    path.write_text("{not json")
    with pytest.raises(BundleError, match="not a valid manifest"):
        load_bundle(bundle_dir)


def test_file_names_cannot_escape_the_bundle(bundle_dir: Path) -> None:
    path = bundle_dir / MANIFEST
    raw = json.loads(path.read_text())
    raw["files"]["../evil.onnx"] = raw["files"]["device.onnx"]
    raw["bundle_id"] = bundle_id_of({k: v["sha256"] for k, v in raw["files"].items()})
    path.write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="path"):
        load_bundle(bundle_dir)


def test_manifest_validation_catches_inconsistent_fields(bundle_dir: Path) -> None:
    raw = json.loads((bundle_dir / MANIFEST).read_text())
    with pytest.raises(ValueError, match="default_task"):
        Manifest.model_validate({**raw, "default_task": "cifar"})
    with pytest.raises(ValueError, match="format_version"):
        Manifest.model_validate({**raw, "format_version": 2})


def test_write_manifest_needs_every_model(tmp_path: Path) -> None:
    (tmp_path / "device.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match="server"):
        write_manifest(
            tmp_path, name="n", teacher="t", split_module="m",
            preprocessing=Preprocessing(8, 8), local_preprocessing=Preprocessing(8, 8),
            bottleneck_shape=[1], tasks={"a": ["x"]},
        )  # fmt: skip


def test_unknown_task_lists_the_known_ones(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    assert bundle.task(None) == "imagenet"
    assert bundle.labels("caltech101") == TASKS["caltech101"]
    with pytest.raises(UnknownNameError, match="caltech101"):
        bundle.task("cifar10")


def test_default_bundle_path_honours_the_environment(monkeypatch, bundle_dir: Path) -> None:
    monkeypatch.setenv("SPLITDNN_BUNDLE", str(bundle_dir))
    assert default_bundle_path() == bundle_dir
    assert load_bundle().name == "toy-b2"
    monkeypatch.delenv("SPLITDNN_BUNDLE")
    assert default_bundle_path().parts[-2:] == ("assets", "default-bundle")


def test_a_copied_bundle_keeps_its_id(bundle_dir: Path, tmp_path_factory) -> None:
    copy = tmp_path_factory.mktemp("copy") / "b"
    shutil.copytree(bundle_dir, copy)
    assert load_bundle(copy).id == load_bundle(bundle_dir).id


# --- measured accuracy and auto's bound ---------------------------------------------------------


def _figures(split: float, local: float | None = None) -> TaskAccuracy:
    top1 = {"offload": 90.0, "split_uint8": split, "split_fp32": split + 0.5}
    if local is not None:
        top1["local"] = local
    return TaskAccuracy(images=500, data="held-out photos", top1=top1)


def test_recorded_accuracy_is_kept_in_the_manifest_and_the_id_does_not_change(bundle_dir):
    before = load_bundle(bundle_dir)
    record_accuracy(bundle_dir, "imagenet", _figures(split=81.0, local=89.0))
    after = load_bundle(bundle_dir)
    assert after.id == before.id
    assert after.manifest.accuracy["imagenet"].drop("split") == pytest.approx(9.0)
    assert after.manifest.accuracy["imagenet"].drop("split", "fp32") == pytest.approx(8.5)
    assert after.manifest.accuracy["imagenet"].drop("split", "fp16") is None
    with pytest.raises(BundleError, match="does not have"):
        record_accuracy(bundle_dir, "cifar10", _figures(split=81.0))


def test_accuracy_figures_need_the_teacher_as_reference_and_known_modes():
    with pytest.raises(ValueError, match="offload"):
        TaskAccuracy(images=5, data="x", top1={"split_uint8": 80.0})
    with pytest.raises(ValueError, match="only keys"):
        TaskAccuracy(images=5, data="x", top1={"offload": 90.0, "split": 80.0})


def test_the_bound_excludes_modes_that_lose_more_than_max_drop(bundle_dir):
    modes = ("local", "split", "offload")
    record_accuracy(bundle_dir, "imagenet", _figures(split=81.0, local=89.0))
    bundle = load_bundle(bundle_dir)
    bound = bundle.accuracy_bound("imagenet", modes, max_drop=2.0)
    assert bound.allowed == ("local", "offload") and bound.excluded == {"split": pytest.approx(9.0)}
    assert bundle.accuracy_bound("imagenet", modes, max_drop=9.0).allowed == modes
    assert bundle.accuracy_bound("imagenet", modes, 0.5).allowed == ("offload",)
    # a task never measured: nothing says any mode loses, and the bound says so
    unmeasured = bundle.accuracy_bound("caltech101", modes, max_drop=0.0)
    assert unmeasured.allowed == modes and unmeasured.unmeasured == modes


def test_bundle_info_shows_the_held_out_figures_auto_reads(bundle_dir):
    from splitdnn.bundle import describe

    record_accuracy(bundle_dir, "imagenet", _figures(split=81.0, local=89.0))
    shown = describe(load_bundle(bundle_dir), ["imagenet"])["accuracy"]["held_out"]
    assert shown["imagenet"]["top1"]["split_uint8"] == 81.0 and shown["imagenet"]["images"] == 500
