"""A user's own teacher weights (``teacher.weights: PATH``): read a state dict, load it strictly.

A state dict is a ``.safetensors`` file or a ``.pt``/``.pth`` torch file (read with
``weights_only=True``: data, never code; a checkpoint that holds the state dict under
``state_dict`` or ``model`` is accepted too). Loading is strict: a key the model lacks, a key
the file lacks or a tensor of the wrong shape is a :class:`TeacherWeightsError` that names
the keys, never a silent half-random teacher.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from splitdnn.errors import CheckpointError
from splitdnn.models._api import get_teacher

SUFFIXES = (".pt", ".pth", ".safetensors")
#: How many keys of each kind an error lists before "and N more".
SHOWN = 8


class TeacherWeightsError(CheckpointError):
    """A teacher weights file is missing, unreadable, or does not fit the teacher."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pt``/``.pth``/``.safetensors`` state dict, on the CPU."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise TeacherWeightsError(
            f"teacher weights {path}: expected a state dict ending in {', '.join(SUFFIXES)}"
        )
    if not path.is_file():
        raise TeacherWeightsError(f"teacher weights {path} do not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (OSError, SafetensorError) as exc:
            raise TeacherWeightsError(f"cannot read teacher weights {path}: {exc}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TeacherWeightsError(f"cannot read teacher weights {path}: {first}") from None
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise TeacherWeightsError(f"teacher weights {path} hold no state dict of tensors")
    return dict(state)


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN])
    return shown + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")


def load_weights(model: nn.Module, path: str | Path, teacher: str = "the teacher") -> nn.Module:
    """Load the state dict at ``path`` into ``model`` strictly; mismatches are listed by key."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k} ({tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} in {teacher})"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_listed(wrong)}")
    if problems:
        raise TeacherWeightsError(f"{path} does not fit {teacher}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model


def weights_digest(path: str | Path) -> str:
    """A short sha256 of a weights file, for cache keys: new weights, new teacher outputs."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def build_teacher(
    name: str, pretrained: bool = True, weights: str | Path | None = None
) -> nn.Module:
    """A registered or derived teacher in eval mode: with ``weights``, built without its
    published weights and loaded strictly from that state dict; else ``spec.build(pretrained)``."""
    spec = get_teacher(name)
    if weights is not None:
        return load_weights(spec.build(False), weights, spec.name).eval()
    try:
        return spec.build(pretrained)
    except OSError as exc:  # a download that failed (no internet): say what to do instead
        raise TeacherWeightsError(
            f"cannot fetch the published {spec.name} weights ({exc}); bring a state dict "
            "with teacher.weights: PATH, or set teacher.pretrained: false for random weights"
        ) from None
