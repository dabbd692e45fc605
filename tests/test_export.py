"""Exported bundles reproduce torch in onnxruntime; a run directory, its default assets and
the bundle built from them agree, and evaluation scores the same in torch and onnxruntime.

Everything uses EfficientNet-Lite0 (its weights install offline) with a random student and
random probes, so the tests need no training and no network. One bundle is exported per
session (about half a minute on two cores) and shared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from export_helpers import BOTTLENECK, CLASSES, TEACHER, fake_run, write_images
from torch import nn

from splitdnn.bundle import load_bundle
from splitdnn.errors import BundleError, CheckpointError, ExportError


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory):
    """run dir -> default assets -> bundle, plus the data folder they were made for."""
    from splitdnn.checkpoints import load_run, save_default_assets
    from splitdnn.export import export_default

    root = tmp_path_factory.mktemp("export")
    data_root = root / "caltech101"
    write_images(data_root)
    payload = fake_run(root / "run", data_root)
    local_probe = nn.Linear(1280, len(CLASSES))
    torch.save(local_probe.state_dict(), root / "lite0_probe.pt")
    save_default_assets(load_run(root / "run"), root / "assets", local_probe=local_probe)
    manifest = export_default(root / "assets", root / "bundle")
    return {
        "root": root,
        "data": data_root,
        "run": root / "run",
        "assets": root / "assets",
        "bundle": root / "bundle",
        "manifest": manifest,
        "payload": payload,
        "local_probe": local_probe,
    }


def test_default_assets_are_safetensors_and_json(chain) -> None:
    from safetensors.torch import load_file

    assets = chain["assets"]
    names = sorted(p.name for p in assets.iterdir())
    assert names == [
        "caltech101_probe.safetensors",
        "default.json",
        "lite0_caltech101_probe.safetensors",
        "student.safetensors",
    ]
    meta = json.loads((assets / "default.json").read_text())
    assert meta["teacher"] == TEACHER and meta["bottleneck"] == BOTTLENECK
    assert meta["classes"] == CLASSES and meta["task"] == "caltech101"
    student = load_file(str(assets / "student.safetensors"))
    for key, value in chain["payload"]["student"].items():
        assert torch.equal(student[key], value), key
    probe = load_file(str(assets / "lite0_caltech101_probe.safetensors"))
    assert torch.equal(probe["weight"], chain["local_probe"].weight)


def test_manifest_follows_the_bundle_contract(chain) -> None:
    bundle = load_bundle(chain["bundle"])  # verifies every sha256
    m = bundle.manifest
    assert m.teacher == TEACHER and m.split_module == "_blocks.7"
    assert m.bottleneck.shape == [BOTTLENECK, 14, 14] and m.bottleneck.dtype == "FP32"
    assert list(m.tasks) == ["imagenet", "caltech101"] and m.default_task == "imagenet"
    assert m.tasks["caltech101"].labels == CLASSES
    assert m.tasks["imagenet"].labels[281] == "tabby"
    assert m.tasks["imagenet"].labels[282] == "tiger cat"
    assert m.preprocessing.size == 224 and m.local_preprocessing.size == 224
    assert set(m.files) == {"device.onnx", "server.onnx", "offload.onnx", "local.onnx"}
    assert m.metrics["device_macs"] < 0.25 * m.metrics["teacher_head_macs"]
    assert max(m.metrics["onnx_max_abs_diff"].values()) <= 1e-4
    assert m.metrics["validation"]["mimic_top1"] == 33.3


def test_a_bundle_from_a_users_run_defaults_to_the_runs_own_task(chain, tmp_path) -> None:
    """A request without ``task`` to a bundle of one's own photos gets their classes, not
    ImageNet's (the default bundle, from assets, keeps ImageNet: see above)."""
    from splitdnn.export import export_run

    manifest = export_run(chain["run"], tmp_path / "bundle", check=False)
    assert list(manifest.tasks) == ["imagenet", "caltech101"]
    assert manifest.default_task == "caltech101"


def test_onnx_files_have_the_contract_names_and_a_dynamic_batch(chain) -> None:
    import onnxruntime as ort

    io_names = {}
    for role in ("device", "server", "offload", "local"):
        session = ort.InferenceSession(str(chain["bundle"] / f"{role}.onnx"))
        (inp,) = session.get_inputs()
        assert inp.shape[0] == "batch"
        io_names[role] = (inp.name, [o.name for o in session.get_outputs()])
    logits = ["logits_imagenet", "logits_caltech101"]
    assert io_names == {
        "device": ("image", ["bottleneck"]),
        "server": ("bottleneck", logits),
        "offload": ("image", logits),
        "local": ("image", logits),
    }


def test_bundle_runs_like_torch_on_a_real_photo(chain, cat_jpeg: bytes) -> None:
    """device -> server in onnxruntime equals student -> teacher tail -> probe in torch."""
    from splitdnn.checkpoints import read_default_assets
    from splitdnn.parts import assemble
    from splitdnn.runtime import DeviceRunner, ImageClassifier, ServerRunner

    bundle = load_bundle(chain["bundle"])
    device, server = DeviceRunner(bundle), ServerRunner(bundle)
    z = device(cat_jpeg)
    _, mimic = server(z, "caltech101")
    _, teacher = ImageClassifier(bundle, "offload").run(device.preprocess(cat_jpeg), "imagenet")
    _, local = ImageClassifier(bundle, "local")(cat_jpeg, "imagenet")

    parts = assemble(read_default_assets(chain["assets"]), name="check")
    x = torch.from_numpy(device.preprocess(cat_jpeg))
    with torch.no_grad():
        want_z = parts.student.encode(x)
        want_mimic = parts.classifiers["caltech101"](parts.teacher_features(parts.student(x)))
        want_teacher = parts.classifiers["imagenet"](parts.teacher_features(parts.teacher_head(x)))
    assert np.abs(z - want_z.numpy()).max() <= 1e-4
    assert np.abs(mimic - want_mimic.numpy()).max() <= 1e-4
    assert np.abs(teacher - want_teacher.numpy()).max() <= 1e-4
    assert int(teacher.argmax()) in range(281, 286)  # a real Lite0 sees a cat
    assert int(local.argmax()) in range(281, 286)


def test_tampered_bundle_is_refused(chain, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(chain["bundle"], copy)
    with (copy / "server.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError):
        load_bundle(copy)


def test_check_onnx_raises_when_onnx_and_torch_disagree(tmp_path: Path) -> None:
    from splitdnn.export import check_onnx, export_onnx

    module = nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 8, 8)
    path = tmp_path / "m.onnx"
    export_onnx(module, x[:1], path, "image", ["out"])
    assert check_onnx(path, module, x) <= 1e-5
    with torch.no_grad():
        module.weight.add_(1e-2)
    with pytest.raises(ExportError, match="differs from torch"):
        check_onnx(path, module, x)


def test_a_run_keeps_the_imagenet_head_and_adds_the_probe_task(chain) -> None:
    from splitdnn.checkpoints import load_linear, load_run
    from splitdnn.parts import assemble

    probe = load_linear(chain["root"] / "lite0_probe.pt")
    parts = assemble(load_run(chain["run"]), name="run", local_probes={"caltech101": probe})
    assert list(parts.labels) == ["imagenet", "caltech101"]
    assert parts.labels["caltech101"] == CLASSES
    assert set(parts.local_classifiers) == {"imagenet", "caltech101"}
    assert parts.classifiers["caltech101"].out_features == len(CLASSES)


def test_export_refuses_a_non_bundle_folder_and_a_missing_run(tmp_path: Path) -> None:
    from splitdnn.export import _prepare_output_dir, export_run

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        _prepare_output_dir(tmp_path)
    with pytest.raises(CheckpointError, match=r"best\.pt"):
        export_run(tmp_path / "nothing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"neither best\.pt nor default\.json"):
        export_run(tmp_path / "empty", tmp_path / "out")


def test_evaluate_scores_the_same_in_torch_and_onnxruntime(chain) -> None:
    from splitdnn.evaluate import evaluate_bundle, evaluate_run

    run = evaluate_run(chain["run"], split="all")
    bundle = evaluate_bundle(chain["bundle"], chain["data"], "train.txt", split="all")
    assert run.images == bundle["images"] == 6
    assert bundle["task"] == run.task == "caltech101"
    same = {
        "teacher_top1": "offload_top1",
        "teacher_top5": "offload_top5",
        "mimic_top1": "split_fp32_top1",
        "mimic_top5": "split_fp32_top5",
        "top1_agreement": "split_fp32_agreement",
    }
    for theirs, ours in same.items():
        assert getattr(run, theirs) == pytest.approx(bundle[ours]), ours
    assert run.bottleneck_shape == bundle["bottleneck_shape"] == [BOTTLENECK, 14, 14]
    assert run.bottleneck_bytes_uint8 == BOTTLENECK * 14 * 14
    assert run.bottleneck_bytes_fp32 == 4 * run.bottleneck_bytes_uint8
    assert run.device_macs == bundle["device_macs"]
    assert bundle["device_macs_reduction_percent"] == pytest.approx(
        run.device_macs_reduction_percent
    )


def test_evaluate_bundle_scores_every_served_mode_on_the_same_images(chain) -> None:
    """offload, split in four precisions (through the wire as the head sends them) and
    local: top-1/5, agreement with the teacher, gaps with a 95 % interval that holds them;
    for 8 and 4 bits their cost against fp32 and the median bytes with zstd."""
    from splitdnn.evaluate import evaluate_bundle

    report = evaluate_bundle(chain["bundle"], chain["data"], "train.txt", split="all")
    assert report["modes"] == [
        "offload", "split_fp32", "split_fp16", "split_uint8", "split_uint4", "local"
    ]  # fmt: skip
    for mode in report["modes"]:
        assert 0 <= report[f"{mode}_top1"] <= report[f"{mode}_top5"] <= 100
        if mode == "offload":
            continue
        gap, (low, high) = report[f"{mode}_gap"], report[f"{mode}_gap_ci95"]
        assert gap == pytest.approx(report["offload_top1"] - report[f"{mode}_top1"])
        assert low <= gap <= high
    for bits in ("uint8", "uint4"):
        low, high = report[f"{bits}_cost_ci95"]
        assert low <= report[f"{bits}_cost"] <= high
    assert 0 < report["split_uint4_zstd_median_bytes"] < report["split_uint8_zstd_median_bytes"]


def test_paired_gap_is_the_stats_modules_paired_difference() -> None:
    from splitdnn.evaluate import paired_gap
    from splitdnn.stats import paired_difference

    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.9
    b = a.copy()
    b[rng.choice(400, 20, replace=False)] ^= True
    gap, (low, high) = paired_gap(a, b)
    assert (gap, (low, high)) == (paired_difference(a, b).points, paired_difference(a, b).ci95)
    assert gap == pytest.approx(100.0 * (a.mean() - b.mean()))


def test_evaluate_run_uses_the_runs_validation_split(chain) -> None:
    from splitdnn.data import load_dataset, split_per_class
    from splitdnn.evaluate import evaluate_run

    row = evaluate_run(chain["run"])  # split val: val_fraction 0.5, seed 3 from the config
    _, val = split_per_class(load_dataset(chain["data"], "train.txt"), 0.5, 3)
    assert row.split == "val" and row.images == len(val) == 3


def test_cli_exports_and_evaluates_a_bundle(chain, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from splitdnn.cli import app

    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(chain["bundle"]),
            "--data",
            str(chain["data"]),
            "--list",
            "train.txt",
            "--limit",
            "3",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["images"] == 3 and row["source"] == "bundle"
    assert {
        "offload_top1",
        "split_fp32_top5",
        "split_uint8_top1",
        "split_uint8_agreement",
        "split_uint8_gap_ci95",
        "local_top1",
        "data_size_percent",
        "bottleneck_bytes_uint8",
        "device_macs_reduction_percent",
    } <= set(row)

    probe = f"caltech101={chain['root'] / 'lite0_probe.pt'}"
    args = ["export", "assets", str(chain["run"]), "--out", str(tmp_path / "a")]
    result = runner.invoke(app, [*args, "--local-probe", probe])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / "lite0_caltech101_probe.safetensors").is_file()
    result = runner.invoke(app, [*args, "--local-probe", f"imagenet={chain['root']}/x.pt"])
    assert result.exit_code == 2 and "one local probe" in result.stderr

    result = runner.invoke(
        app,
        ["export", "default", "--assets", str(tmp_path / "none"), "--out", str(tmp_path / "b")],
    )
    assert result.exit_code == 2
    assert "default.json" in result.stderr

    result = runner.invoke(app, ["export", "run", str(chain["run"])])
    assert result.exit_code == 2 and "--out" in result.output


def test_export_run_without_a_local_probe_says_which_tasks_local_mode_lacks(chain, tmp_path):
    from typer.testing import CliRunner

    from splitdnn.cli import app

    result = CliRunner().invoke(app, ["export", "run", str(chain["run"]), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["metrics"]["local_tasks"] == ["imagenet"]
    assert "task 'caltech101' has no local model" in result.stderr
    assert "--local-probe caltech101=" in result.stderr


def test_export_default_puts_the_assets_fair_offload_choice_beside_the_bundle(chain, tmp_path):
    """The measured re-encoding holds for the teacher it was measured with: copied for that
    teacher, refused (with a warning) for another, and never left over from an old export."""
    import shutil

    from splitdnn import reencode
    from splitdnn.export import export_default

    assets = tmp_path / "assets"
    shutil.copytree(chain["assets"], assets)
    measured = reencode.Reencoding("webp", 90, 88.0, 88.4, 300, 20_000, 39_000, TEACHER)
    reencode.save_choice(assets, measured)
    export_default(assets, tmp_path / "bundle", check=False)
    assert reencode.load_choice(tmp_path / "bundle") == measured

    reencode.save_choice(assets, reencode.Reencoding("jpeg", 85, teacher="efficientnet_lite2"))
    with pytest.warns(UserWarning, match="measured with efficientnet_lite2"):
        export_default(assets, tmp_path / "bundle", check=False)
    assert reencode.load_choice(tmp_path / "bundle") is None


def test_the_default_assets_fair_offload_choice_is_for_their_teacher() -> None:
    from splitdnn import reencode
    from splitdnn.checkpoints import DEFAULT_ASSETS, read_default_assets

    choice = reencode.load_choice(DEFAULT_ASSETS)
    assert choice is not None and choice.teacher == read_default_assets().teacher
    assert choice.top1 is not None and choice.raw_top1 is not None
    assert choice.raw_top1 - choice.top1 <= 0.5 and choice.images


def test_export_default_records_the_assets_accuracy_for_the_bundle_it_was_measured_on(
    chain, tmp_path
):
    """auto's accuracy bound reads the manifest: the assets' held-out figures go in only when
    they were measured on a bundle of the same id, with a warning otherwise."""
    import shutil

    from splitdnn.bundle import ACCURACY_FILE, load_bundle
    from splitdnn.export import export_default

    assets = tmp_path / "assets"
    shutil.copytree(chain["assets"], assets)
    figures = {"images": 9, "data": "held out", "top1": {"offload": 80.0, "split_uint8": 70.0}}
    measured = {"bundle_id": chain["manifest"].bundle_id, "tasks": {"caltech101": figures}}
    (assets / ACCURACY_FILE).write_text(json.dumps(measured))
    export_default(assets, tmp_path / "bundle", check=False)
    manifest = load_bundle(tmp_path / "bundle").manifest
    assert manifest.accuracy["caltech101"].drop("split") == pytest.approx(10.0)

    measured["bundle_id"] = "0123456789abcdef"
    (assets / ACCURACY_FILE).write_text(json.dumps(measured))
    with pytest.warns(UserWarning, match="measured on bundle 0123456789abcdef"):
        export_default(assets, tmp_path / "bundle", check=False)
    assert load_bundle(tmp_path / "bundle").manifest.accuracy == {}


def test_the_default_assets_accuracy_is_the_committed_held_out_measurement() -> None:
    """accuracy.json is derived from the committed per-task reports of the default bundle
    (benchmarks/results/accuracy/stage7-*.json), not typed in."""
    from benchmarks import accuracy_by_mode
    from splitdnn.bundle import read_measured_accuracy
    from splitdnn.checkpoints import DEFAULT_ASSETS

    committed = read_measured_accuracy(DEFAULT_ASSETS)
    assert committed is not None
    derived = accuracy_by_mode.measured_accuracy("stage7", committed.quantisation)
    assert committed.model_dump(exclude_none=True) == derived
    assert set(committed.tasks) == {"imagenet", "caltech101"}


# --- a run on the user's own teacher weights: the bundle serves their model, not ours -------


@pytest.fixture(scope="module")
def own_weights_run(tmp_path_factory: pytest.TempPathFactory):
    """A run distilled towards the user's own Lite0 (the published weights, perturbed: a state
    dict of the same architecture that answers differently), its probe in ``classifier.pt``."""
    from splitdnn.models import get_teacher

    root = tmp_path_factory.mktemp("own-weights")
    torch.manual_seed(7)
    mine = get_teacher(TEACHER).build(True)
    with torch.no_grad():
        for tensor in mine.state_dict().values():
            if tensor.is_floating_point():
                tensor.mul_(1 + 0.2 * torch.randn_like(tensor).clamp(-2, 2))
    weights = root / "my-lite0.pt"
    torch.save(mine.state_dict(), weights)
    payload = fake_run(root / "run", root / "caltech101")
    payload["config"]["teacher"]["weights"] = str(weights)
    torch.save(payload, root / "run" / "best.pt")
    torch.save(payload["classifier"], root / "run" / "classifier.pt")
    return {"root": root, "run": root / "run", "weights": weights, "model": mine.eval()}


def test_local_mode_of_a_run_on_own_weights_answers_like_the_users_model(
    own_weights_run, cat_jpeg: bytes
) -> None:
    """`export run --local-probe TASK=RUN/classifier.pt`: local.onnx is the user's Lite0 (its
    own head for imagenet, the run's probe for the task), not the packaged one."""
    from splitdnn.checkpoints import load_linear
    from splitdnn.export import export_run
    from splitdnn.models import build_teacher, get_teacher
    from splitdnn.runtime import ImageClassifier

    run, out = own_weights_run["run"], own_weights_run["root"] / "bundle"
    probe = {"caltech101": run / "classifier.pt"}
    manifest = export_run(run, out, local_probes=probe, check=False)
    local = ImageClassifier(load_bundle(out), "local")
    x = local.preprocess(cat_jpeg)
    _, served_imagenet = local.run(x, "imagenet")
    _, served_task = local.run(x, "caltech101")

    model = build_teacher(TEACHER, weights=own_weights_run["weights"])
    with torch.no_grad():
        want_imagenet = model(torch.from_numpy(x))
        model.set_submodule(get_teacher(TEACHER).classifier, nn.Identity())
        want_task = load_linear(run / "classifier.pt")(model(torch.from_numpy(x)))
    assert np.abs(served_imagenet - want_imagenet.numpy()).max() <= 1e-4
    assert np.abs(served_task - want_task.numpy()).max() <= 1e-4
    assert manifest.metrics["local_weights"]["file"] == "my-lite0.pt"


def test_the_runs_probe_on_a_local_model_of_another_architecture_is_refused(
    own_weights_run, tmp_path: Path
) -> None:
    """Lite2's pooled features have Lite0's width (1,280): the probe would fit and answer
    wrongly; export names both ways out instead."""
    from splitdnn.export import export_run

    probe = {"caltech101": own_weights_run["run"] / "classifier.pt"}
    with pytest.raises(ExportError) as info:
        export_run(own_weights_run["run"], tmp_path, local="efficientnet_lite2", local_probes=probe)
    assert "--local efficientnet_lite0" in str(info.value)
    assert "splitdnn probe CONFIG --teacher efficientnet_lite2" in str(info.value)
