"""Bottleneck students: shapes that fit their teacher, budgets, and the papers' Table 3 figures
(bottleneck size and device-MAC reduction), recomputed from the models."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from splitdnn.errors import UnknownNameError
from splitdnn.models import get_teacher
from splitdnn.profile import count_macs, head_macs, student_costs
from splitdnn.split import split_model
from splitdnn.students import MimicModel, build_student

PAPER_TEACHERS = ["densenet169", "densenet201", "resnet152", "inception_v3"]
LITE_TEACHERS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


@cache
def _teacher(name: str) -> torch.nn.Module:
    return get_teacher(name).build(False)


@cache
def _head_shape(name: str) -> tuple[int, ...]:
    spec = get_teacher(name)
    with torch.no_grad():
        out = split_model(_teacher(name), spec.student_split).head(
            torch.zeros(1, *spec.input_shape)
        )
    return tuple(out.shape[1:])


@pytest.mark.parametrize("variant", ["caltech101", "imagenet"])
@pytest.mark.parametrize("bottleneck", [3, 6, 9, 12])
@pytest.mark.parametrize("name", PAPER_TEACHERS)
def test_paper_student_restores_the_teacher_head_shape(name: str, bottleneck: int, variant: str):
    spec = get_teacher(name)
    student = build_student(name, bottleneck, variant).eval()
    with torch.no_grad():
        z = student.encode(torch.zeros(1, *spec.input_shape))
        out = student.decode(z)
    assert z.shape[1] == bottleneck
    grid = 37 if name == "inception_v3" else 29  # the papers' 3x29x29 and 3x37x37
    assert tuple(z.shape[2:]) == (grid, grid)
    assert tuple(out.shape[1:]) == _head_shape(name)


@pytest.mark.parametrize("bottleneck", [3, 6, 12])
@pytest.mark.parametrize("name", LITE_TEACHERS)
def test_lite_student_fits_budget_and_head_shape(name: str, bottleneck: int) -> None:
    """Device part ≤ 25 % of the teacher head's MACs, bottleneck ≤ 2 % of the input."""
    spec = get_teacher(name)
    student = build_student(name, bottleneck).eval()
    with torch.no_grad():
        z = student.encode(torch.zeros(1, *spec.input_shape))
        assert tuple(student(torch.zeros(1, *spec.input_shape)).shape[1:]) == _head_shape(name)
    assert z[0].numel() <= 0.02 * 3 * spec.input_size**2
    device = count_macs(student.encoder, spec.input_shape)
    head = head_macs(_teacher(name), spec.student_split, spec.input_shape)
    assert device <= 0.25 * head, f"{name}: {device / head:.1%} of the head"


def _flop_counter_macs(module: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """MACs by torch's own FLOP counter (2 FLOPs a MAC): a count independent of ours."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module.eval()(torch.zeros(1, *shape))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("variant", ["caltech101", "teacher_init"])
def test_lite2_default_student_figures_agree_with_torchs_flop_counter(variant: str) -> None:
    """The default: Lite2 cut at _blocks.10, b=12, 12x17x17 of a 3x260x260 input; device and
    teacher-head MACs as torch's FLOP counter finds them, the device within 25 % of the head."""
    spec = get_teacher("efficientnet_lite2")
    costs = student_costs("efficientnet_lite2", 12, variant)
    assert costs.split_module == "_blocks.10"
    assert costs.bottleneck_shape == [12, 17, 17]
    assert costs.data_size_percent == pytest.approx(100 * 12 * 17 * 17 / (3 * 260 * 260))
    student = build_student("efficientnet_lite2", 12, variant)
    assert costs.device_macs == _flop_counter_macs(student.encoder, spec.input_shape)
    head = split_model(_teacher("efficientnet_lite2"), spec.student_split).head
    assert costs.teacher_head_macs == _flop_counter_macs(head, spec.input_shape)
    assert costs.device_macs / costs.teacher_head_macs <= 0.25


@pytest.mark.parametrize(
    ("name", "shape", "size", "min_reduction"),
    [
        ("densenet201", [3, 29, 29], 1.68, 94.0),  # paper: 94.2
        ("resnet152", [3, 29, 29], 1.68, 95.0),  # paper: 95.5
        ("inception_v3", [3, 37, 37], 1.53, 84.0),  # paper: 84.4
    ],
)
def test_paper_table3_sizes_and_reductions(name, shape, size, min_reduction) -> None:
    costs = student_costs(name, 3)
    assert costs.bottleneck_shape == shape
    assert costs.data_size_percent == pytest.approx(size, abs=0.01)
    assert costs.device_macs_reduction_percent >= min_reduction


def test_mimic_model_is_student_then_teacher_tail() -> None:
    spec = get_teacher("efficientnet_lite0")
    teacher = spec.build(True)
    cut = split_model(teacher, spec.student_split)
    student = build_student(spec.name, 6).eval()
    mimic = MimicModel(student, cut.tail).eval()
    x = torch.randn(1, *spec.input_shape)
    with torch.no_grad():
        assert torch.equal(mimic(x), cut.tail(student.decode(student.encode(x))))
        assert mimic(x).shape == (1, 1000)


@pytest.mark.parametrize(
    ("teacher", "variant"),
    [("resnet152", "caltech101"), ("efficientnet_lite0", "caltech101")],
)
def test_forward_is_the_same_in_train_and_eval(teacher: str, variant: str) -> None:
    """Apart from batch norm's own statistics, no layer computes differently in training:
    with batch-norm layers held in eval mode, train() and eval() give the same output."""
    torch.manual_seed(0)
    student = build_student(teacher, 3, variant)
    x = torch.randn(2, *get_teacher(teacher).input_shape)
    with torch.no_grad():
        expected = student.eval()(x)
        student.train()
        for module in student.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
        assert any(m.training for m in student.modules())
        assert torch.equal(student(x), expected)


@pytest.mark.parametrize(("old", "new"), [("caltech101", "narrow"), ("imagenet", "wide")])
def test_the_old_variant_names_build_the_same_student(old: str, new: str) -> None:
    """``narrow``/``wide`` were first named after data sets (colliding with task names): the
    old names still build the same student, in a config too, stored under the new name."""
    from splitdnn.distill.config import parse_config
    from splitdnn.students import canonical_variant

    torch.manual_seed(0)
    a = build_student("resnet152", 3, old).state_dict()
    torch.manual_seed(0)
    b = build_student("resnet152", 3, new).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert canonical_variant(old) == new
    config = parse_config({"teacher": {"name": "resnet152"}, "data": {"root": "x"},
                           "student": {"variant": old}})  # fmt: skip
    assert config.student.variant == new


def test_no_student_for_an_unknown_variant_or_point() -> None:
    with pytest.raises(UnknownNameError, match="cifar10"):
        build_student("resnet152", 3, "cifar10")
    with pytest.raises(UnknownNameError, match="not a split point"):
        build_student("resnet152", 3, split_module="layer2.0.conv1")


# --- the teacher-initialised Lite student -------------------------------------------------------


@cache
def _teacher_init(bottleneck: int = 12):
    teacher = get_teacher("efficientnet_lite2").build(True)
    student = build_student("efficientnet_lite2", bottleneck, "teacher_init")
    return teacher, student


def test_teacher_init_student_fits_budget_and_head_shape() -> None:
    costs = student_costs("efficientnet_lite2", 12, "teacher_init")
    assert costs.bottleneck_shape == [12, 17, 17]
    assert costs.data_size_percent <= 2.0
    assert costs.device_macs <= 0.25 * costs.teacher_head_macs
    # the frozen prefix really is counted: it alone is the teacher up to _blocks.1
    prefix = head_macs(_teacher("efficientnet_lite2"), "_blocks.1", (3, 260, 260))
    assert prefix < costs.device_macs
    _, student = _teacher_init()
    with torch.no_grad():
        out = student.eval()(torch.zeros(1, 3, 260, 260))
    assert tuple(out.shape[1:]) == _head_shape("efficientnet_lite2")


def test_teacher_init_prefix_is_the_teacher_and_stays_frozen() -> None:
    teacher, student = _teacher_init()
    x = torch.randn(2, 3, 260, 260)
    with torch.no_grad():
        expected = split_model(teacher, "_blocks.1").head(x)
        assert torch.equal(student.frozen()(x), expected)
        student.eval()
        assert torch.equal(student.forward_from_frozen(student.frozen()(x)), student(x))
    student.train()
    assert not any(m.training for layer in student.frozen() for m in layer.modules())
    assert all(m.training for m in student.decoder.modules())
    frozen = {id(p) for p in student.frozen().parameters()}
    assert frozen and all(not p.requires_grad for p in student.frozen().parameters())
    assert all(p.requires_grad for p in student.parameters() if id(p) not in frozen)


def test_teacher_init_student_copies_teacher_weights_instead_of_sharing_them() -> None:
    teacher, student = _teacher_init()
    suffix = student.decoder[-1]  # the copy of _blocks.10
    original = teacher.get_submodule("_blocks.10")
    assert torch.equal(suffix._project_conv.weight, original._project_conv.weight)
    assert suffix._project_conv.weight is not original._project_conv.weight
    teacher_params = {id(p) for p in teacher.parameters()}
    assert not any(id(p) in teacher_params for p in student.parameters())


def test_teacher_init_needs_a_split_point_to_start_from() -> None:
    """Away from the registered Lite2 design, teacher_init is derived (students/bottleneck.py),
    but the first split point has no earlier one for the frozen device prefix to end at."""
    with pytest.raises(UnknownNameError, match="teacher_init"):
        build_student("resnet152", 3, "teacher_init", split_module="maxpool")
    teacher = get_teacher("resnet152").build(False)  # random weights: nothing downloaded
    student = build_student("resnet152", 3, "teacher_init", teacher_model=teacher)
    assert student.frozen_layers == 1
    copied = student.frozen()[0].get_submodule("layer1.2.conv3").weight
    assert torch.equal(copied, teacher.layer1[2].conv3.weight)
