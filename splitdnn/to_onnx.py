"""One torch module written as one ONNX file, and the check that it still computes the same.

Every exporter (bundles: :mod:`splitdnn.export`; NoNN members: :mod:`splitdnn.nonn.export`)
writes with :func:`export_onnx` (opset :data:`OPSET`, the TorchScript exporter, which handles
EfficientNet-Lite's static "same" padding, a dynamic batch axis on every input and output) and
compares onnxruntime with torch by :func:`check_onnx` (same outputs, same shapes, within
:data:`TOLERANCE`), so a file on disk always reproduces the module it came from.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from splitdnn.errors import ExportError

OPSET = 17
#: Largest allowed |onnxruntime - torch| on any output (logits, bottleneck, features).
TOLERANCE = 1e-4


def export_onnx(
    module: nn.Module, example: torch.Tensor, path: Path, input_name: str, outputs: list[str]
) -> None:
    """One ONNX file with a dynamic batch axis on the input and every output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-value shapes
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            input_names=[input_name],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [input_name, *outputs]},
            opset_version=OPSET,
            dynamo=False,
        )


def check_onnx(
    path: Path, module: nn.Module, example: torch.Tensor, tolerance: float = TOLERANCE
) -> float:
    """Run ``path`` in onnxruntime and ``module`` in torch on ``example``; return the largest
    absolute difference, or raise :class:`ExportError` when it exceeds ``tolerance``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    with torch.no_grad():
        want = module(example)
    want = list(want) if isinstance(want, tuple | list) else [want]
    if len(got) != len(want):
        raise ExportError(f"{path.name}: onnxruntime gave {len(got)} outputs, torch {len(want)}")
    worst = 0.0
    for name, a, b in zip((o.name for o in session.get_outputs()), got, want, strict=True):
        if a.shape != tuple(b.shape):
            raise ExportError(f"{path.name}: {name} has shape {a.shape}, torch {tuple(b.shape)}")
        diff = float(np.max(np.abs(a - b.numpy()))) if a.size else 0.0
        if not diff <= tolerance:  # also catches NaN
            raise ExportError(
                f"{path.name}: output {name} differs from torch by {diff:.3g} (> {tolerance:g})"
            )
        worst = max(worst, diff)
    return worst
