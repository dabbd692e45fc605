"""Figures as PNG files (matplotlib, Agg backend: no display needed). Imported lazily by the
CLI, so matplotlib is only needed by whoever asks for a plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from splitdnn.profile import SplitPointRow

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def profile_figure(rows: Sequence[SplitPointRow], title: str) -> Figure:
    """The papers' Figure 1 for one teacher: output size and compressed size (% of the
    input) as bars, cumulative MACs (% of the model) as a line, one x tick per split point.

    Where the bars drop below 100 % early while the line stays low is where a split pays.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row.module for row in rows]
    x = list(range(len(rows)))
    width = 0.4
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(rows) + 2.0), 4.5))
    ax.bar(
        [i - width / 2 for i in x],
        [row.output_percent for row in rows],
        width,
        label="output size [% of input]",
        color="tab:blue",
    )
    ax.bar(
        [i + width / 2 for i in x],
        [row.compressed_percent for row in rows],
        width,
        label="zlib-compressed size [% of input]",
        color="tab:green",
    )
    ax.plot(
        x,
        [row.cumulative_macs_percent for row in rows],
        "o-",
        color="tab:red",
        label="cumulative MACs [% of model]",
    )
    ax.axhline(100.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("percent")
    ax.set_title(title, pad=24)
    # Above the axes, between them and the title: inside, it hid the tallest early bars.
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    fig.tight_layout()
    return fig


def plot_profile(rows: Sequence[SplitPointRow], path: str | Path, title: str) -> Path:
    """Write :func:`profile_figure` as a PNG; returns the path written."""
    import matplotlib.pyplot as plt

    fig = profile_figure(rows, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
