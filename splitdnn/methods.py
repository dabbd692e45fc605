"""Every distillation method by its config name, and the one way to run a config.

A new method is a :class:`~splitdnn.distill.trainer.Method` (a loss, a student, a score)
registered here; the epoch loop, checkpoints, resume and metrics are the trainer's. The table
sits above every method family (:mod:`splitdnn.distill` and :mod:`splitdnn.nonn`), so a family
imports the trainer and never the table: imports go one way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from splitdnn.distill.classes import ClassDistillation
from splitdnn.distill.config import DistillConfig
from splitdnn.distill.hnd import HeadDistillation
from splitdnn.distill.kd import WholeStudentDistillation
from splitdnn.distill.trainer import Method, check_run_dir, train
from splitdnn.nonn.method import NoNNDistillation

#: ``method`` value -> the class that runs it.
METHODS: dict[str, type[Method]] = {
    "hnd": HeadDistillation,
    "kd": WholeStudentDistillation,
    "labels": WholeStudentDistillation,
    "classes": ClassDistillation,
    "nonn": NoNNDistillation,
}


def method_for(config: DistillConfig, run_dir: str | Path, progress: bool = True) -> Method:
    """The method object that runs ``config`` in ``run_dir``."""
    return METHODS[config.method](config, run_dir, progress=progress)


def run_config(
    config: DistillConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Train ``config`` in ``run_dir`` (``resume``: continue from ``last.pt``; ``force``:
    start an existing run over); return the trainer's summary. An existing run without
    either is refused; a finished one with ``resume`` returns its summary at once, with
    ``"finished": True``."""
    finished = check_run_dir(run_dir, config.train.epochs, resume=resume, force=force)
    if finished is not None:
        return {"method": config.method, **finished}
    return train(method_for(config, run_dir, progress), resume=resume)
