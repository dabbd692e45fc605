"""A tiny bundle built from random torch modules, so service tests need no real weights.

Same contract as the exporter's bundles: four ONNX files plus ``manifest.json`` written by
:func:`splitdnn.bundle.write_manifest`. Also used by the benchmarks when no real bundle exists.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from splitdnn.bundle import Manifest, write_manifest
from splitdnn.imaging import Preprocessing
from splitdnn.to_onnx import export_onnx

SIZE = 64
LOCAL_SIZE = 48
BOTTLENECK = (4, 8, 8)
TASKS = {
    "imagenet": [f"imagenet-class-{i}" for i in range(10)],
    "caltech101": [f"caltech-class-{i}" for i in range(5)],
}


class Device(nn.Module):
    """Image [N,3,64,64] -> bottleneck [N,4,8,8]."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, BOTTLENECK[0], 3, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Heads(nn.Module):
    """Features [N,F,...] -> one logits tensor per task."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.heads = nn.ModuleList(nn.Linear(channels, len(v)) for v in TASKS.values())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = self.pool(x).flatten(1)
        return tuple(head(z) for head in self.heads)


class Server(nn.Module):
    """Bottleneck -> decoder -> task heads."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Sequential(nn.Conv2d(BOTTLENECK[0], 16, 3, padding=1), nn.ReLU())
        self.heads = Heads(16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.heads(self.decoder(x))


class Full(nn.Module):
    def __init__(self, device: Device, server: Server) -> None:
        super().__init__()
        self.device_part, self.server_part = device, server

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.server_part(self.device_part(x))


class Local(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 5, stride=4, padding=2), nn.ReLU())
        self.heads = Heads(8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.heads(self.body(x))


def _export(module: nn.Module, path: Path, size: int, input_name: str, outputs: list[str]) -> None:
    """The bundle's own ONNX export (dynamic batch, its opset) on a random example."""
    example = torch.randn(1, *((3, size, size) if input_name == "image" else BOTTLENECK))
    export_onnx(module, example, path, input_name, outputs)


class Subset(nn.Module):
    """Only some outputs of a multi-task module (a local model without every task)."""

    def __init__(self, module: nn.Module, keep: list[int]) -> None:
        super().__init__()
        self.module, self.keep = module, keep

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.module(x)
        return tuple(outputs[i] for i in self.keep)


def build_toy_bundle(
    directory: Path, seed: int = 0, local_tasks: list[str] | None = None
) -> tuple[Manifest, dict[str, nn.Module]]:
    """Write the toy bundle into ``directory``; returns the manifest and the torch modules.

    ``local_tasks`` (default: all) are the tasks the local model classifies, as a bundle
    exported without ``--local-probe`` for its run's task has only ``imagenet``."""
    torch.manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    device, server, local = Device(), Server(), Local()
    with torch.no_grad():  # peaked scores, so 8-bit rounding cannot flip a near tie
        for heads in (server.heads, local.heads):
            for linear in heads.heads:
                linear.weight.mul_(25.0)
    full = Full(device, server)
    logits = [f"logits_{task}" for task in TASKS]
    with torch.no_grad():
        _export(device, directory / "device.onnx", SIZE, "image", ["bottleneck"])
        _export(server, directory / "server.onnx", SIZE, "bottleneck", logits)
        _export(full, directory / "offload.onnx", SIZE, "image", logits)
        keep = [i for i, task in enumerate(TASKS) if local_tasks is None or task in local_tasks]
        local_logits = [logits[i] for i in keep]
        _export(Subset(local, keep), directory / "local.onnx", LOCAL_SIZE, "image", local_logits)
    manifest = write_manifest(
        directory,
        name="toy-b4",
        teacher="toy",
        split_module="body.4",
        preprocessing=Preprocessing(size=SIZE, resize=73),
        local_preprocessing=Preprocessing.torchvision(LOCAL_SIZE),
        bottleneck_shape=list(BOTTLENECK),
        tasks=TASKS,
        default_task="imagenet",
        metrics={"note": "random weights, for tests only"},
    )
    return manifest, {"device": device, "server": server, "offload": full, "local": local}


if __name__ == "__main__":  # python tests/toy_bundle.py OUT_DIR
    import sys

    print(build_toy_bundle(Path(sys.argv[1]))[0].bundle_id)
