"""A short head-distillation run on the shape images and its config, for the distillation
tests (import as ``from distill_helpers import ...``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def distil(config: dict, run: Path, resume: bool = False) -> dict:
    """Train ``config`` into ``run`` without a progress bar; the trainer's summary."""
    from splitdnn.distill.config import parse_config
    from splitdnn.distill.hnd import HeadDistillation
    from splitdnn.distill.trainer import train

    return train(HeadDistillation(parse_config(config), run, progress=False), resume=resume)


def two_step_run(
    run: Path, data: Path, teacher: dict, student: dict, probe_epochs: int, **extra: Any
) -> Any:
    """A head-distillation run of two steps (batch 3, no flips, a third of ``data`` held
    out) into ``run``; its checkpoint (``splitdnn.checkpoints.load_run``)."""
    from splitdnn.checkpoints import load_run

    distil(
        {
            "teacher": teacher,
            **extra,
            "student": student,
            "data": {"root": str(data), "val_fraction": 0.34},
            "augmentation": {"hflip": False},
            "train": {"epochs": 1, "batch_size": 3, "max_steps_per_epoch": 2, "threads": 1},
            "probe": {"epochs": probe_epochs},
        },
        run,
    )
    return load_run(run)


def whole_student_config(
    root: Path, method: str, student: str, epochs: int = 1, hflip: bool = False
) -> dict:
    """A whole-student run (``method`` kd, labels or classes) of ``student`` on ``root``
    with a Lite0 + probe teacher, one thread, a fifth of the images held out."""
    return {
        "method": method,
        "teacher": {"name": "efficientnet_lite0", "classifier": "probe"},
        "kd": {"student": student, "temperature": 4.0, "alpha": 0.9},
        "data": {"root": str(root), "val_fraction": 0.2},
        "augmentation": {"hflip": hflip},
        "train": {"epochs": epochs, "batch_size": 4, "threads": 1, "optimizer": {"lr": 1e-4}},
        "probe": {"epochs": 10},
    }


def distil_config(root: Path, **train) -> dict:
    """A three-epoch Lite0 run of four steps an epoch on ``root``; ``train`` overrides."""
    return {
        "teacher": {"name": "efficientnet_lite0", "classifier": "probe"},
        "student": {"bottleneck": 4},
        "data": {"root": str(root), "val_fraction": 0.2},
        "augmentation": {"hflip": False},
        "train": {
            "epochs": 3,
            "batch_size": 4,
            "max_steps_per_epoch": 4,
            "threads": 1,
            "checkpoint_every": 1,
            "optimizer": {"lr": 3e-3},
            **train,
        },
        "probe": {"epochs": 10},
    }


def lite0_teacher_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small ``teacher_init`` design for Lite0 (registered for Lite2 only), so that tests
    with a frozen prefix run in seconds."""
    import splitdnn.students as students

    # Lite0 cut at _blocks.7 (80x14x14): prefix up to _blocks.1 (24x56x56), suffix _blocks.6-7.
    lite0 = students.TeacherInitDesign(
        prefix="_blocks.1",
        prefix_channels=24,
        blocks=((32, 2), (48, 2)),
        decoder=(32,),
        suffix_channels=80,
        suffix=("_blocks.6", "_blocks.7"),
    )
    monkeypatch.setitem(students.TEACHER_INIT_DESIGNS, "efficientnet_lite0", lite0)


def spy(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list:
    """Replace ``owner.name`` by a wrapper that keeps each of its results: the list, newest
    last."""
    results: list = []
    real = getattr(owner, name)

    def recorded(*args: Any, **kwargs: Any) -> Any:
        results.append(real(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(owner, name, recorded)
    return results
