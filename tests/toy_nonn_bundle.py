"""A tiny NoNN bundle from random torch modules, so the member and gateway tests need no real
weights: by default two members (image [N,3,32,32] -> features [N,6] and [N,5]) and a join
layer; ``channels`` gives one member per entry (K = 4: ``CHANNELS_K4``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from splitdnn.imaging import Preprocessing
from splitdnn.nonn.bundle import JOIN_FILE, NoNNManifest, save_join, write_nonn_manifest
from splitdnn.to_onnx import export_onnx

SIZE = 32
CHANNELS = (6, 5)
CHANNELS_K4 = (6, 5, 4, 3)
LABELS = [f"class-{i}" for i in range(4)]
PREPROCESSING = Preprocessing(size=SIZE, resize=36)


class Member(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, channels, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x)).mean((2, 3))


def build_toy_nonn_bundle(
    directory: Path, channels: tuple[int, ...] = CHANNELS
) -> tuple[NoNNManifest, list[nn.Module]]:
    torch.manual_seed(0)
    members = [Member(c).eval() for c in channels]
    files = []
    for i, member in enumerate(members):
        path = directory / f"member{i}.onnx"
        export_onnx(member, torch.zeros(1, 3, SIZE, SIZE), path, "image", ["features"])
        files.append((path.name, channels[i]))
    rng = np.random.default_rng(0)
    total = sum(channels)
    save_join(
        directory / JOIN_FILE,
        rng.normal(size=(len(LABELS), total)),
        rng.normal(size=len(LABELS)),
        np.full(total, 0.1),
    )
    manifest = write_nonn_manifest(
        directory,
        name="toy-nonn",
        teacher="toy",
        student="toy",
        preprocessing=PREPROCESSING,
        members=files,
        labels=LABELS,
        task="toy",
    )
    return manifest, members
