"""ONNX Runtime runners for the four bundle models: device, server, offload and local.

Each runner owns one ``InferenceSession`` created once (sessions are thread-safe for
``run``), with configurable thread counts because the device and the edge share their
cores with other work: threads left at 0 (auto) are sized to the CPU the process may
really use (:mod:`splitdnn.cpus`: its cgroup quota and affinity, spinning off under a
quota), logged once per process. onnxruntime is imported lazily, so ``import splitdnn``
works on a machine that only trains.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitdnn.bundle import Bundle
from splitdnn.cpus import CpuBudget, ThreadPlan, cpu_budget, plan_threads
from splitdnn.errors import BundleError
from splitdnn.imaging import MAX_PIXELS, Preprocessing, load_input

LOGITS_PREFIX = "logits_"
log = logging.getLogger("splitdnn.runtime")


@dataclass(frozen=True)
class Threads:
    """ONNX Runtime thread counts; 0 sizes them to the process's CPU (:func:`session_threads`)."""

    intra_op: int = 0
    inter_op: int = 0


@functools.lru_cache(maxsize=1)
def process_budget() -> CpuBudget:
    """This process's CPU budget, read once (the cgroup does not change under a service)."""
    return cpu_budget()


_logged_plans: set[ThreadPlan] = set()


def session_threads(threads: Threads, budget: CpuBudget | None = None) -> ThreadPlan:
    """The threads and spinning a session gets; each distinct plan is logged once."""
    plan = plan_threads(budget or process_budget(), threads.intra_op, threads.inter_op)
    if plan not in _logged_plans:
        _logged_plans.add(plan)
        log.info("ONNX Runtime threads: %s", plan.describe())
    return plan


@dataclass(frozen=True)
class Ranked:
    """One entry of a top-k answer."""

    index: int
    label: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "label": self.label, "score": self.score}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(logits: np.ndarray, labels: list[str], k: int = 5) -> list[Ranked]:
    """Softmax scores of the ``k`` best classes of one sample's logits, best first."""
    scores = softmax(np.asarray(logits).reshape(-1))
    k = max(1, min(k, scores.size))
    order = np.argsort(-scores, kind="stable")[:k]
    return [
        Ranked(int(i), labels[i] if i < len(labels) else str(int(i)), float(scores[i]))
        for i in order
    ]


class OnnxModel:
    """One ONNX file, one session; ``run`` maps the single input to named outputs."""

    def __init__(self, path: Path, threads: Threads = Threads()) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise BundleError(
                "onnxruntime is not installed: pip install 'splitdnn[serve]'"
            ) from exc
        self.threads = session_threads(threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads.intra_op
        options.inter_op_num_threads = self.threads.inter_op
        if not self.threads.spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BundleError(f"onnxruntime cannot load {path}: {exc}") from exc
        self.path = path
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise BundleError(f"{path.name} must have exactly one input, has {len(inputs)}")
        self.input_name: str = inputs[0].name
        self.input_shape: list[Any] = list(inputs[0].shape)
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})
        return dict(zip(self.output_names, outputs, strict=True))

    def metadata(self) -> dict[str, Any]:
        """Inputs and outputs in Open Inference Protocol form."""

        def tensor(t: Any) -> dict[str, Any]:
            shape = [d if isinstance(d, int) else -1 for d in t.shape]
            return {"name": t.name, "datatype": "FP32", "shape": shape}

        return {
            "inputs": [tensor(t) for t in self.session.get_inputs()],
            "outputs": [tensor(t) for t in self.session.get_outputs()],
        }


class _ClassifierMixin:
    """Shared by runners whose model outputs ``logits_<task>``."""

    bundle: Bundle
    model: OnnxModel

    def logits(self, outputs: dict[str, np.ndarray], task: str | None) -> tuple[str, np.ndarray]:
        """The task's logits among a run's ``outputs`` (for callers that run the session
        themselves, e.g. a batching tail)."""
        return self._logits(outputs, task)

    def _logits(self, outputs: dict[str, np.ndarray], task: str | None) -> tuple[str, np.ndarray]:
        name = self.bundle.task(task)
        key = LOGITS_PREFIX + name
        if key not in outputs:
            raise BundleError(f"{self.model.path.name} has no output {key!r}")
        return name, outputs[key]


class DeviceRunner:
    """The device part: image bytes -> bottleneck tensor (float32, batch of one); ``rate``:
    that rate's device part of a ladder bundle (None: the bundle's default)."""

    def __init__(
        self, bundle: Bundle, threads: Threads = Threads(), rate: str | None = None
    ) -> None:
        self.bundle = bundle
        self.spec: Preprocessing = bundle.preprocessing
        path = (
            bundle.model_path("device") if rate is None else bundle.rate_model_path(rate, "device")
        )
        self.model = OnnxModel(path, threads)

    def preprocess(self, image: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
        return load_input(image, self.spec, max_pixels)

    def run(self, x: np.ndarray) -> np.ndarray:
        outputs = self.model.run(x)
        return outputs.get("bottleneck", next(iter(outputs.values())))

    def __call__(self, image: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
        return self.run(self.preprocess(image, max_pixels))


class ServerRunner(_ClassifierMixin):
    """The server part: bottleneck tensor -> logits of one task; ``rate``: that rate's
    server part of a ladder bundle (None: the bundle's default)."""

    def __init__(
        self, bundle: Bundle, threads: Threads = Threads(), rate: str | None = None
    ) -> None:
        self.bundle = bundle
        if rate is None:
            self.model = OnnxModel(bundle.model_path("server"), threads)
            self.bottleneck_shape = tuple(bundle.manifest.bottleneck.shape)
        else:
            self.model = OnnxModel(bundle.rate_model_path(rate, "server"), threads)
            self.bottleneck_shape = tuple(bundle.rate_spec(rate).bottleneck.shape)

    def __call__(self, bottleneck: np.ndarray, task: str | None = None) -> tuple[str, np.ndarray]:
        return self._logits(self.model.run(bottleneck), task)


class ImageClassifier(_ClassifierMixin):
    """A whole-image model (``offload`` or ``local``) with its own preprocessing."""

    def __init__(self, bundle: Bundle, role: str, threads: Threads = Threads()) -> None:
        if role not in ("offload", "local"):
            raise BundleError(f"{role!r} is not a whole-image model")
        self.bundle = bundle
        self.role = role
        self.spec = bundle.preprocessing if role == "offload" else bundle.local_preprocessing
        self.model = OnnxModel(bundle.model_path(role), threads)

    def preprocess(self, image: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
        return load_input(image, self.spec, max_pixels)

    def run(self, x: np.ndarray, task: str | None = None) -> tuple[str, np.ndarray]:
        return self._logits(self.model.run(x), task)

    def __call__(
        self, image: bytes, task: str | None = None, max_pixels: int = MAX_PIXELS
    ) -> tuple[str, np.ndarray]:
        return self.run(self.preprocess(image, max_pixels), task)


def model_tasks(bundle: Bundle, role: str) -> list[str]:
    """The tasks the bundle's ``role`` model has a classifier for (its ``logits_<task>``
    outputs; the local model may have fewer than the bundle)."""
    names = set(OnnxModel(bundle.model_path(role)).output_names)
    return [task for task in bundle.manifest.tasks if LOGITS_PREFIX + task in names]


def warm_up(run: Any, x: np.ndarray, repeats: int = 2) -> float:
    """Run ``run(x)`` a few times; returns the last time in seconds (the first is slow)."""
    elapsed = 0.0
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        run(x)
        elapsed = time.perf_counter() - start
    return elapsed
