"""A bundle of an entropy-coded student: its coding tables travel in the bundle (hashed like
the models), and device.onnx -> rANS envelope -> server.onnx gives torch's answer.

EfficientNet-Lite0 with a random student and probe, as in ``test_export.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("compressai")

from export_helpers import CLASSES, TEACHER, write_images  # noqa: E402

from splitdnn import wire  # noqa: E402
from splitdnn.bundle import load_bundle  # noqa: E402
from splitdnn.errors import BundleError  # noqa: E402

BOTTLENECK = 6


@pytest.fixture(scope="module")
def rate_bundle(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from torch import nn

    from splitdnn.distill.config import parse_config
    from splitdnn.export import export_run
    from splitdnn.students import build_student, entropy_student

    root = tmp_path_factory.mktemp("rate-export")
    write_images(root / "data")
    torch.manual_seed(0)
    student = entropy_student(build_student(TEACHER, BOTTLENECK))
    student.calibrate(torch.rand(4, 3, 224, 224), 6.0)
    config = parse_config(
        {
            "teacher": {"name": TEACHER, "classifier": "probe"},
            "student": {"bottleneck": BOTTLENECK},
            "data": {"root": str(root / "data"), "list": "train.txt", "val_fraction": 0.5},
            "rate": {"beta": 1e-4},
        }
    )
    payload = {
        "kind": "splitdnn-student",
        "teacher": TEACHER,
        "split_module": "_blocks.7",
        "bottleneck": BOTTLENECK,
        "variant": config.student.variant,
        "student": student.state_dict(),
        "classifier": nn.Linear(1280, len(CLASSES)).state_dict(),
        "classes": CLASSES,
        "metrics": {},
        "config": config.model_dump(mode="json"),
    }
    (root / "run").mkdir()
    torch.save(payload, root / "run" / "best.pt")
    probe = root / "lite0_probe.pt"
    torch.save(nn.Linear(1280, len(CLASSES)).state_dict(), probe)
    export_run(root / "run", root / "bundle", local_probes={"data": probe}, task="data")
    return {"root": root, "bundle": root / "bundle"}


def test_the_coding_tables_are_part_of_the_bundle(rate_bundle) -> None:
    bundle = load_bundle(rate_bundle["bundle"])
    assert bundle.manifest.coding == "coding.json"
    assert "coding.json" in bundle.manifest.files
    tables = bundle.coding_tables()
    assert tables is not None and tables.channels == BOTTLENECK


def test_tampered_coding_tables_are_refused(rate_bundle, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(rate_bundle["bundle"], copy)
    tables = json.loads((copy / "coding.json").read_text())
    tables["cdfs"][0][1] = 0
    (copy / "coding.json").write_text(json.dumps(tables))
    with pytest.raises(BundleError, match=r"coding\.json"):  # size or sha256
        load_bundle(copy)
    with pytest.raises(BundleError, match="rises from 0"):
        load_bundle(copy, verify=False).coding_tables()


def test_device_to_server_through_the_entropy_envelope_is_torchs_answer(
    rate_bundle, cat_jpeg: bytes
) -> None:
    from splitdnn.checkpoints import load_run
    from splitdnn.parts import assemble
    from splitdnn.runtime import DeviceRunner, ServerRunner

    bundle = load_bundle(rate_bundle["bundle"])
    tables = bundle.coding_tables()
    device, server = DeviceRunner(bundle), ServerRunner(bundle)
    latent = device(cat_jpeg)
    data = wire.encode_entropy(latent, bundle_id=bundle.id, tables=tables)
    envelope = wire.decode(data, tables=tables, bundle_id=bundle.id)
    _, logits = server(envelope.to_array(), "data")

    parts = assemble(load_run(rate_bundle["root"] / "run", "data"), name="check")
    x = torch.from_numpy(device.preprocess(cat_jpeg))
    with torch.no_grad():
        want_latent = parts.student.encode(x)
        want = parts.classifiers["data"](parts.teacher_features(parts.student(x)))
    assert np.abs(latent - want_latent.numpy()).max() <= 1e-4
    assert np.abs(logits - want.numpy()).max() <= 1e-3
    assert envelope.size < latent.size  # under a byte per element


def test_evaluate_bundle_scores_the_entropy_envelope_with_its_bytes(rate_bundle) -> None:
    from splitdnn.data import load_crops, load_dataset
    from splitdnn.evaluate import evaluate_bundle
    from splitdnn.imaging import normalise_pixels
    from splitdnn.runtime import DeviceRunner

    data = rate_bundle["root"] / "data"
    report = evaluate_bundle(rate_bundle["bundle"], data, "train.txt", task="data")
    assert "split_entropy" in report["modes"] and report["images"] == 6
    bundle = load_bundle(rate_bundle["bundle"])
    spec = bundle.preprocessing
    samples = load_dataset(data, "train.txt").samples
    latent = DeviceRunner(bundle).run(normalise_pixels(load_crops(samples, spec), spec))
    sizes = [
        len(wire.encode_entropy(z[None], bundle_id=bundle.id, tables=bundle.coding_tables()))
        for z in latent
    ]
    assert report["split_entropy_median_bytes"] == float(np.median(sizes))
    assert report["split_uint8_zstd_median_bytes"] > 0


def test_the_rate_benchmark_sends_an_entropy_bundles_split_entropy_coded(rate_bundle, cat_jpeg):
    from benchmarks.rate_accuracy import send_split, split_label
    from splitdnn.runtime import DeviceRunner

    bundle = load_bundle(rate_bundle["bundle"])
    latent = DeviceRunner(bundle)(cat_jpeg)
    envelope, received = send_split(bundle, latent)
    tables = bundle.coding_tables()
    assert envelope == wire.encode_entropy(latent, bundle_id=bundle.id, tables=tables)
    assert np.array_equal(received, tables.latent(tables.symbols(latent)))
    assert split_label(bundle) == "split: entropy-coded"


def test_the_committed_rate_assets_are_the_ladders_entropy_students() -> None:
    """`splitdnn export ladder --assets splitdnn/assets/rates` needs no run: each rate of
    ladder.json is a folder of assets holding an entropy student that loads, and every
    figure kept beside them was measured on held-out images of both tasks."""
    from splitdnn.bundle import read_ladder_assets
    from splitdnn.checkpoints import read_student

    assets = Path(__file__).resolve().parents[1] / "splitdnn" / "assets" / "rates"
    ladder = read_ladder_assets(assets)
    for rate in ladder.rates:
        checkpoint = read_student(assets / rate)
        assert checkpoint.entropy_coded and checkpoint.task == "caltech101"
        checkpoint.build_student()  # the saved state fits the student it names
        figures = ladder.figures[rate]
        assert set(figures.accuracy) == set(figures.median_bytes) == {"imagenet", "caltech101"}
        for accuracy in figures.accuracy.values():
            assert accuracy.images >= 500 and "split_entropy" in accuracy.top1
