"""The teacher catalogue: lookups, registration rules and the specs' data."""

from __future__ import annotations

import pytest

from splitdnn.errors import UnknownNameError
from splitdnn.models import TeacherSpec, get_teacher, list_teachers, register

PAPER_TEACHERS = ["densenet169", "densenet201", "resnet152", "inception_v3"]
LITE_TEACHERS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def test_catalogue_has_the_papers_teachers_and_the_lite_family() -> None:
    assert set(PAPER_TEACHERS + LITE_TEACHERS + ["mobilenet_v2"]) <= set(list_teachers())
    assert list_teachers() == sorted(list_teachers())


def test_unknown_teacher_error_lists_registered_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        get_teacher("resnet9000")
    message = str(info.value)
    assert "resnet9000" in message
    for name in list_teachers():
        assert name in message


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(get_teacher("resnet152"))


def test_student_split_must_be_a_split_point() -> None:
    spec = get_teacher("resnet152")
    bad = TeacherSpec(
        name="resnet152-bad-split",
        family=spec.family,
        build=spec.build,
        input_size=spec.input_size,
        preprocessing=spec.preprocessing,
        split_points=("layer1",),
        student_split="layer2",
        classifier="fc",
    )
    with pytest.raises(ValueError, match="not a split point"):
        register(bad)
    assert "resnet152-bad-split" not in list_teachers()


@pytest.mark.parametrize("name", LITE_TEACHERS)
def test_lite_weights_install_offline_and_use_tflite_preprocessing(name: str) -> None:
    spec = get_teacher(name)
    assert spec.weights_offline
    assert spec.preprocessing.mean == (127.0, 127.0, 127.0)
    assert spec.preprocessing.std == (128.0, 128.0, 128.0)
    assert spec.preprocessing.size == spec.input_size
    assert spec.input_shape == (3, spec.input_size, spec.input_size)


@pytest.mark.parametrize("name", list_teachers())
def test_split_points_are_module_paths_in_forward_order(name: str) -> None:
    spec = get_teacher(name)
    model = spec.build(False)
    modules = dict(model.named_modules())
    assert all(point in modules for point in spec.split_points)
    assert spec.student_split in spec.split_points
    assert spec.classifier in modules
    order = [n for n in modules if n in spec.split_points]
    assert order == list(spec.split_points)
    assert len(set(spec.split_points)) == len(spec.split_points)
