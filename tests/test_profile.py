"""MAC counting and split-point profiles, checked against hand counts and published totals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from splitdnn.models import get_teacher
from splitdnn.profile import (
    compressed_size,
    count_macs,
    count_params,
    cumulative_macs,
    head_macs,
    profile_split_points,
)


def test_conv_and_linear_macs_by_hand() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8*3*9 per output pixel, 16x16 pixels
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: 9 per output element
        nn.Flatten(),
        nn.Linear(8 * 16 * 16, 10),
    )
    want = 16 * 16 * 8 * 3 * 9 + 16 * 16 * 8 * 9 + 8 * 16 * 16 * 10
    assert count_macs(model, (3, 16, 16)) == want


def test_macs_are_per_sample_whatever_the_batch() -> None:
    model = nn.Conv2d(3, 4, 1)
    _, total = cumulative_macs(model, torch.zeros(5, 3, 8, 8), [])
    assert total == 3 * 4 * 64


@pytest.mark.parametrize(
    ("name", "giga_macs"),
    [
        ("resnet152", 11.51),  # torchvision: 11.51 GFLOPS (MACs)
        ("densenet201", 4.29),
        ("inception_v3", 5.71),
        ("efficientnet_lite0", 0.385),
    ],
)
def test_whole_model_macs_match_published_figures(name: str, giga_macs: float) -> None:
    spec = get_teacher(name)
    assert count_macs(spec.build(False), spec.input_shape) / 1e9 == pytest.approx(
        giga_macs, rel=0.01
    )


def test_cumulative_macs_grow_along_the_split_points() -> None:
    spec = get_teacher("efficientnet_lite0")
    model = spec.build(False)
    reached, total = cumulative_macs(model, torch.zeros(1, *spec.input_shape), spec.split_points)
    values = [reached[p] for p in spec.split_points]
    assert values == sorted(values)
    assert 0 < values[0] < values[-1] <= total
    assert head_macs(model, spec.student_split, spec.input_shape) == reached[spec.student_split]


def test_profile_rows_start_at_the_input_and_follow_the_split_points(cat_jpeg: bytes) -> None:
    from splitdnn.imaging import load_input

    spec = get_teacher("efficientnet_lite0")
    model = spec.build(True)
    x = torch.from_numpy(load_input(cat_jpeg, spec.preprocessing))
    rows = profile_split_points(model, spec.split_points, x)
    assert [r.module for r in rows] == ["input", *spec.split_points]
    assert rows[0].output_percent == 100.0
    blocks7 = rows[1 + spec.split_points.index("_blocks.7")]
    assert blocks7.output_shape == [80, 14, 14]
    assert blocks7.output_percent == pytest.approx(100 * 80 * 14 * 14 / (3 * 224 * 224))
    assert 0 < blocks7.compressed_percent < blocks7.output_percent
    assert rows[-1].cumulative_macs_percent == pytest.approx(99.67, abs=0.01)
    assert set(rows[0].to_dict()) >= {"module", "output_shape", "cumulative_macs_percent"}


def test_compressed_size_rewards_redundancy() -> None:
    zeros = np.zeros(10_000, np.float32)
    noise = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
    assert compressed_size(zeros) < 200 < compressed_size(noise)


def test_count_params() -> None:
    assert count_params(nn.Linear(10, 3)) == 33


def test_the_profile_legend_hides_no_bar_and_stays_in_the_figure() -> None:
    """Lite2's ``_bn0`` output is 265 % of the input: a legend inside the axes sat on it."""
    pytest.importorskip("matplotlib")
    from matplotlib.patches import Rectangle

    from splitdnn.plots import profile_figure
    from splitdnn.profile import SplitPointRow

    sizes = [100.0, 265.0, 133.0, 50.0, 50.0, 26.0, 12.0, 17.0, 8.0, 51.0, 0.6]
    rows = [
        SplitPointRow(f"point{i}", [1], 1, size, i, 10.0 * i, 1, 0.9 * size)
        for i, size in enumerate(sizes)
    ]
    fig = profile_figure(rows, "toy: cost per split point")
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        (ax,) = fig.axes
        legend = ax.get_legend().get_window_extent(renderer)
        bars = [p for p in ax.patches if isinstance(p, Rectangle)]
        assert len(bars) == 2 * len(rows)
        for bar in bars:
            assert not legend.overlaps(bar.get_window_extent(renderer)), bar
        assert fig.bbox.contains(legend.x0, legend.y0) and fig.bbox.contains(legend.x1, legend.y1)
        title = ax.title.get_window_extent(renderer)
        assert not legend.overlaps(title)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


class _Residual(nn.Module):
    """x + conv(relu(conv(x))): the block holds its input for the skip."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a, self.act, self.b = (
            nn.Conv2d(channels, channels, 1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(self.act(self.a(x)))


def test_peak_activations_by_hand_count_what_a_residual_block_holds() -> None:
    from splitdnn.profile import device_costs, peak_activation_bytes

    # a chain: the largest input + output of one layer (ReLU: 16 in + 16 out, fp32)
    chain = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
    assert peak_activation_bytes(chain, (3, 2, 2)) == (16 + 16) * 4
    # a residual block: after its first layer the block's input (16) is held as well
    assert peak_activation_bytes(_Residual(4), (4, 2, 2)) == (16 + 16 + 16) * 4
    assert peak_activation_bytes(_Residual(4), (4, 2, 2), bytes_per_element=2) == 48 * 2
    costs = device_costs(chain, (3, 2, 2))
    assert costs["params"] == 16 and costs["macs"] == 4 * 3 * 4
    assert (costs["weights_bytes_fp32"], costs["weights_bytes_fp16"]) == (64, 32)
    assert costs["weights_bytes_int8"] == 16
