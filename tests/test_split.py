"""Cutting a teacher: head∘tail reproduces the teacher exactly at every registered split point.

Inception-v3 and DenseNet do work outside their children (input transform, final ReLU and
pooling), so equality must be checked numerically, not by listing children.
"""

from __future__ import annotations

import pytest
import torch

from splitdnn.errors import UnknownNameError
from splitdnn.models import get_teacher, list_teachers
from splitdnn.split import SplitError, module_names, split_model

TOLERANCE = 1e-5


def _input(size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list_teachers())
def test_head_then_tail_equals_teacher_at_every_split_point(name: str) -> None:
    spec = get_teacher(name)
    torch.manual_seed(0)
    model = spec.build(spec.weights_offline).eval()  # torchvision: weights=None, offline
    x = _input(spec.input_size)
    with torch.no_grad():
        want = model(x)
        for point in spec.split_points:
            cut = split_model(model, point)
            got = cut.tail(cut.head(x))
            diff = (got - want).abs().max().item()
            assert diff <= TOLERANCE, f"{name} at {point}: max abs diff {diff}"


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_lite_split_matches_the_original_package_forward(name: str) -> None:
    """Our subclass only changes the flatten; the cut must still equal the package's model."""
    from efficientnet_lite_pytorch import EfficientNet

    spec = get_teacher(name)
    ours = spec.build(True)
    original = EfficientNet.from_name(name.replace("_", "-"))
    original.load_state_dict(ours.state_dict())
    original.eval()
    x = _input(spec.input_size, seed=1)
    with torch.no_grad():
        want = original(x)
        for point in (spec.split_points[0], spec.student_split, spec.split_points[-1]):
            cut = split_model(ours, point)
            diff = (cut.tail(cut.head(x)) - want).abs().max().item()
            assert diff <= TOLERANCE, f"{name} at {point}: max abs diff {diff}"


def test_head_ends_at_the_module_output_and_shares_parameters() -> None:
    model = get_teacher("resnet152").build(False)
    cut = split_model(model, "layer2")
    x = _input(224)
    with torch.no_grad():
        h = cut.head(x)
    assert tuple(h.shape) == (1, 512, 28, 28)
    assert cut.head.get_submodule("conv1").weight is model.conv1.weight


def test_unknown_module_path_names_the_lister() -> None:
    model = get_teacher("resnet152").build(False)
    with pytest.raises(UnknownNameError, match="module_names"):
        split_model(model, "layer9")
    with pytest.raises(UnknownNameError):
        split_model(model, "")
    assert "layer1.0.conv1" in module_names(model)


def test_cut_inside_a_residual_block_is_refused() -> None:
    """After layer1.0.conv1 the block's input also crosses (the skip connection)."""
    model = get_teacher("resnet152").build(False)
    with pytest.raises(SplitError, match="cross the cut"):
        split_model(model, "layer1.0.conv1")


def test_cut_at_a_module_that_runs_twice_is_refused() -> None:
    shared = torch.nn.ReLU()

    class Twice(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.act = shared

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.act(x) - 1)

    with pytest.raises(SplitError, match="runs 2 times"):
        split_model(Twice(), "act")
