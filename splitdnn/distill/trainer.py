"""The one epoch loop every distillation method runs.

A method (:class:`Method`: head network distillation in :mod:`.hnd`, whole-student knowledge
distillation in :mod:`.kd`) prepares its data and student and says what one training step's
loss is, how to score the student, and what its best checkpoint holds. Everything else is
here, once:

* seeded data order: an epoch's order and flips depend only on ``seed`` and the epoch, a
  step's extra randomness on ``(seed, epoch, step)``, so a resumed run trains exactly what an
  uninterrupted one would;
* Adam on the trainable parameters (in the method's groups), a multi-step learning-rate
  schedule;
* ``last.pt`` written atomically every ``checkpoint_every`` steps and after every epoch;
  ``--resume`` continues at the saved epoch and step;
* after every epoch: the method's validation metrics, one line in ``metrics.jsonl`` (a fresh
  run starts the file anew; a resumed run drops lines of epochs it trains again), a log line,
  and ``best.pt`` when the method's score improved (or every epoch with ``train.keep:
  last``, so that validation images pick no checkpoint).

``train`` returns a summary: the best and the last epoch's records (and the untrained
student's, for methods that score it as epoch 0).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from splitdnn.checkpoints import BEST, LAST, load_torch, save_atomic
from splitdnn.distill.config import DistillConfig
from splitdnn.errors import ConfigError

METRICS = "metrics.jsonl"


class Method:
    """What a distillation method gives the loop. Subclasses set the class attributes and
    implement the methods below; :func:`train` calls them in this order:
    :meth:`setup`, (:meth:`evaluate` for epoch 0), then per step :meth:`loss` and per epoch
    :meth:`evaluate`, :meth:`describe` and, on a new best, :meth:`best_payload`."""

    #: The ``method`` value of the config this class runs.
    name: str = ""
    #: The key of :meth:`evaluate`'s record that picks ``best.pt`` (higher is better).
    score_key: str = ""
    #: Score the untrained student as epoch 0 (when it is a meaningful baseline).
    evaluate_at_start: bool = False

    def __init__(self, config: DistillConfig, run_dir: str | Path, progress: bool = True):
        self.config = config
        self.run_dir = Path(run_dir)
        self.progress = progress

    def log(self, message: str) -> None:
        if self.progress:
            print(message, flush=True)

    def setup(self, fresh: bool) -> nn.Module:
        """Prepare data, teacher outputs and the student; return the module whose trainable
        parameters the optimiser updates (and whose state ``last.pt`` keeps). ``fresh`` is
        false when the loop will load ``last.pt`` next (so no initial weights are needed)."""
        raise NotImplementedError

    def num_samples(self) -> int:
        raise NotImplementedError

    def parameter_groups(self, student: nn.Module) -> list[dict[str, Any]]:
        """Adam's parameter groups: by default one, every trainable parameter at the
        configured learning rate (a group may set its own ``lr``)."""
        return [{"params": [p for p in student.parameters() if p.requires_grad]}]

    def loss(self, idx: np.ndarray, flip: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """The loss of one batch: sample indices (sorted), which of them to mirror, and a
        generator seeded with ``(seed, epoch, step)`` for any other randomness."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, Any]:
        """Validation metrics of the current student (holds :attr:`score_key`)."""
        raise NotImplementedError

    def describe(self, record: dict[str, Any]) -> str:
        return f"{self.score_key} {record[self.score_key]:.2f}"

    def best_payload(self, record: dict[str, Any]) -> dict[str, Any]:
        """What ``best.pt`` holds for the epoch of ``record``."""
        raise NotImplementedError


def epoch_record(
    epoch: int, loss: float, optimiser: torch.optim.Optimizer, images: int, seconds: float
) -> dict[str, Any]:
    """The loop's part of a ``metrics.jsonl`` line; the method's metrics follow it."""
    return {
        "epoch": epoch,
        "loss": loss,
        "lr": optimiser.param_groups[0]["lr"],
        "images_per_s": images / max(seconds, 1e-9),
    }


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def _keep_epochs_up_to(path: Path, last_epoch: int) -> None:
    """Drop lines of epochs after ``last_epoch`` (written before a kill, trained again)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln).get("epoch", 0) <= last_epoch]
    path.write_text("".join(ln + "\n" for ln in kept))


def check_run_dir(
    run_dir: str | Path, epochs: int, resume: bool = False, force: bool = False
) -> dict[str, Any] | None:
    """Refuse to train over an existing run unless told how: ``resume`` continues it,
    ``force`` starts it over. Returns the finished run's summary when ``resume`` finds
    nothing left to train (so the caller skips setup), else None."""
    run_dir = Path(run_dir)
    held = [name for name in (LAST, BEST, METRICS) if (run_dir / name).exists()]
    if not held or force:
        return None
    if not resume:
        raise ConfigError(
            f"{run_dir} already holds a run ({', '.join(held)}): pass --resume to continue "
            "it, --force to start it over (its checkpoints and metrics are replaced), or "
            "--run-dir for a new one"
        )
    if not (run_dir / LAST).exists():
        raise ConfigError(f"cannot resume {run_dir}: it has no {LAST}; use --force to start over")
    state = load_torch(run_dir / LAST, "resume checkpoint")["state"]
    if state["epoch"] < epochs:
        return None
    return {
        "finished": True,
        "epochs": state["epoch"],
        "best_epoch": state["best_epoch"],
        "best": state["best"],
        "last": state["last"],
        "initial": state["initial"],
    }


def train(method: Method, resume: bool = False) -> dict[str, Any]:
    """Run ``method`` to its configured number of epochs; see the module docstring.

    A run directory this call creates is removed again when the method's setup fails (bad
    data, a missing teacher), so a failed start leaves nothing behind."""
    cfg, tcfg = method.config, method.config.train
    run_dir = method.run_dir
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    torch.manual_seed(cfg.seed)
    last_path, best_path, metrics_path = run_dir / LAST, run_dir / BEST, run_dir / METRICS
    resuming = resume and last_path.exists()

    try:
        student = method.setup(fresh=not resuming)
    except BaseException:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    (run_dir / "config.json").write_text(cfg.model_dump_json(indent=2))
    optimiser = torch.optim.Adam(
        method.parameter_groups(student),
        lr=tcfg.optimizer.lr,
        weight_decay=tcfg.optimizer.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, tcfg.milestones, tcfg.gamma)
    state: dict[str, Any] = {
        "epoch": 0,
        "step": 0,
        "best_score": None,
        "best_epoch": None,
        "best": None,
        "initial": None,
        "last": None,
    }
    if resuming:
        ckpt = load_torch(last_path, "resume checkpoint")
        student.load_state_dict(ckpt["student"])
        optimiser.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        state = ckpt["state"]
        _keep_epochs_up_to(metrics_path, state["epoch"])
        method.log(f"resuming at epoch {state['epoch']} step {state['step']}")
    else:
        metrics_path.unlink(missing_ok=True)

    def checkpoint() -> None:
        payload = {
            "student": student.state_dict(),
            "optimizer": optimiser.state_dict(),
            "schedule": schedule.state_dict(),
            "state": dict(state),
        }
        save_atomic(payload, last_path)

    if method.evaluate_at_start and state["initial"] is None:
        state["initial"] = {"epoch": 0, **method.evaluate()}
        _append(metrics_path, state["initial"])
        method.log(f"epoch 0 (untrained): {method.describe(state['initial'])}")

    n = method.num_samples()
    steps_per_epoch = -(-n // tcfg.batch_size)
    if tcfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, tcfg.max_steps_per_epoch)
    while state["epoch"] < tcfg.epochs:
        epoch = state["epoch"]
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.permutation(n)
        flips = rng.random(n) < 0.5 if cfg.augmentation.hflip else np.zeros(n, bool)
        student.train()
        steps: Any = range(state["step"], steps_per_epoch)
        bar = None
        if method.progress:
            from tqdm import tqdm

            bar = tqdm(steps, desc=f"epoch {epoch + 1}/{tcfg.epochs}", unit="step")
            steps = bar
        seen, started, running = 0, time.perf_counter(), 0.0
        for step in steps:
            idx = np.sort(order[step * tcfg.batch_size : (step + 1) * tcfg.batch_size])
            loss = method.loss(idx, flips[idx], np.random.default_rng([cfg.seed, epoch, step]))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            seen += len(idx)
            running = 0.9 * running + 0.1 * loss.item() if running else loss.item()
            state["step"] = step + 1
            if bar is not None:
                rate = seen / (time.perf_counter() - started)
                bar.set_postfix(loss=f"{running:.4f}", img_s=f"{rate:.0f}")
            if state["step"] % tcfg.checkpoint_every == 0:
                checkpoint()
        schedule.step()
        seconds = time.perf_counter() - started
        record = {
            **epoch_record(epoch + 1, running, optimiser, seen, seconds),
            **method.evaluate(),
        }
        _append(metrics_path, record)
        method.log(f"epoch {epoch + 1}: loss {running:.4f}, {method.describe(record)}")
        score = record[method.score_key]
        improved = state["best_score"] is None or score > state["best_score"]
        if tcfg.keep == "last" or improved:
            state["best_score"], state["best_epoch"], state["best"] = score, epoch + 1, record
            save_atomic(method.best_payload(record), best_path)
        state["last"] = record
        state["epoch"], state["step"] = epoch + 1, 0
        checkpoint()
    return {
        "method": method.name,
        "epochs": tcfg.epochs,
        "score": method.score_key,
        "best_epoch": state["best_epoch"],
        "best": state["best"],
        "last": state["last"],
        "initial": state["initial"],
    }
