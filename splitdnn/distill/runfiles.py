"""What a training run leaves in its run directory, written the same way by every trainer:
checkpoints replaced atomically (a kill never leaves half a file) and one JSON line of
metrics per epoch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def save_atomic(obj: object, path: Path) -> None:
    """torch.save to a temporary file, then rename: a kill never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def epoch_record(
    epoch: int,
    loss: float,
    optimiser: torch.optim.Optimizer,
    images: int,
    seconds: float,
    metrics: dict,
) -> dict:
    """One line of ``metrics.jsonl``: the epoch (1-based), its smoothed loss, learning rate,
    training speed and the validation ``metrics``."""
    return {
        "epoch": epoch,
        "loss": loss,
        "lr": optimiser.param_groups[0]["lr"],
        "images_per_s": images / max(seconds, 1e-9),
        **metrics,
    }


def append_metrics(path: Path, record: dict) -> None:
    """Append ``record`` to the run's ``metrics.jsonl`` as one line."""
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
