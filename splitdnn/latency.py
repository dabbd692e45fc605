"""The latency model: the only place a mode's capture-to-output time is predicted.

For an image of ``B_img`` bytes and a link of rate ``r`` bytes/s (estimated online):

============  ===================================================================
``local``     τ_local                                   (device-only model)
``split``     τ_head + B_env / r + τ_tail               (device part, envelope, server part)
``offload``   τ_send + B_img / r + τ_teacher            (raw image to the edge, full teacher)
============  ===================================================================

Every τ is an exponentially weighted moving average (EWMA) of measured times, seeded by a
warm-up run or a prior; ``B_env`` is the EWMA of sent envelope sizes; ``r`` is an EWMA of
bytes/s over recent transfers (:class:`BandwidthEstimator`). The rate absorbs per-request
overheads (round trip, HTTP framing) for payloads of the usual size, which is what the
prediction needs. While the edge is known to be down, remote modes predict infinity.
No torch and no web framework: the head service feeds it, the gateway only reads answers.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

#: The modes a request can be served in; ``auto`` picks one of these.
MODES: tuple[str, ...] = ("local", "split", "offload")
#: Compute stages whose times the model tracks.
STAGES: tuple[str, ...] = ("local", "head_split", "tail_split", "head_offload", "tail_offload")


class Ewma:
    """Exponentially weighted moving average: recent measurements count most."""

    def __init__(self, alpha: float = 0.3, initial: float | None = None) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.value = initial
        self.count = 0

    def update(self, sample: float) -> float:
        if not math.isfinite(sample) or sample < 0:
            return self.value if self.value is not None else 0.0
        # The first real measurement replaces a prior outright.
        self.value = sample if self.count == 0 else self.value + self.alpha * (sample - self.value)
        self.count += 1
        return self.value

    def get(self, default: float) -> float:
        return default if self.value is None else self.value


class BandwidthEstimator:
    """Online estimate of the device→edge rate: EWMA of bytes/s of recent transfers.

    Transfers shorter than ``min_seconds`` are clamped to it, so a tiny payload on a fast
    link cannot claim an absurd rate.
    """

    def __init__(
        self, prior_bytes_per_s: float, alpha: float = 0.3, min_seconds: float = 1e-4
    ) -> None:
        if prior_bytes_per_s <= 0:
            raise ValueError("the prior rate must be positive")
        self._ewma = Ewma(alpha, initial=float(prior_bytes_per_s))
        self.min_seconds = min_seconds
        self.last_bytes_per_s: float | None = None

    def observe(self, nbytes: int, seconds: float) -> float:
        """Record one transfer of ``nbytes`` that took ``seconds``; returns the new estimate."""
        if nbytes <= 0 or not math.isfinite(seconds) or seconds < 0:
            return self.bytes_per_s
        rate = nbytes / max(seconds, self.min_seconds)
        self.last_bytes_per_s = rate
        return self._ewma.update(rate)

    @property
    def bytes_per_s(self) -> float:
        return self._ewma.get(1.0)

    @property
    def samples(self) -> int:
        return self._ewma.count


@dataclass(frozen=True)
class Prediction:
    """Predicted stage times of one mode, in milliseconds."""

    mode: str
    head_ms: float
    transfer_ms: float
    tail_ms: float
    bytes: int

    @property
    def total_ms(self) -> float:
        return self.head_ms + self.transfer_ms + self.tail_ms

    def to_dict(self) -> dict[str, float | int | str | None]:
        def finite(v: float) -> float | None:  # JSON has no infinity
            return round(v, 3) if math.isfinite(v) else None

        return {
            "mode": self.mode,
            "head": finite(self.head_ms),
            "transfer": finite(self.transfer_ms),
            "tail": finite(self.tail_ms),
            "total": finite(self.total_ms),
            "bytes": self.bytes,
        }


@dataclass
class Priors:
    """What the model assumes before measuring (milliseconds, bytes/s, bytes)."""

    rate_bytes_per_s: float = 10e6 / 8  # 10 Mbit/s
    local_ms: float = 50.0
    head_split_ms: float = 20.0
    tail_split_ms: float = 10.0
    head_offload_ms: float = 0.5
    tail_offload_ms: float = 20.0
    envelope_bytes: int = 4096


@dataclass
class LatencyModel:
    """Measured times in, predicted capture-to-output times out; thread-safe."""

    priors: Priors = field(default_factory=Priors)
    alpha: float = 0.3
    #: How long remote modes are ruled out after the edge failed.
    tail_retry_s: float = 5.0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.bandwidth = BandwidthEstimator(self.priors.rate_bytes_per_s, self.alpha)
        self._stages = {stage: Ewma(self.alpha) for stage in STAGES}
        self._envelope = Ewma(self.alpha)
        self._tail_down_until = 0.0

    # --- measurements -------------------------------------------------------------
    def observe_stage(self, stage: str, seconds: float) -> None:
        if stage not in self._stages:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        with self._lock:
            self._stages[stage].update(seconds * 1000.0)

    def observe_transfer(self, nbytes: int, seconds: float, *, envelope: bool = False) -> None:
        """One payload crossed the link; ``envelope`` marks split-mode payloads."""
        with self._lock:
            self.bandwidth.observe(nbytes, seconds)
            if envelope:
                self._envelope.update(float(nbytes))
            self._tail_down_until = 0.0

    def mark_tail_down(self, now: float | None = None) -> None:
        with self._lock:
            self._tail_down_until = (time.monotonic() if now is None else now) + self.tail_retry_s

    def tail_available(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self._tail_down_until

    # --- predictions --------------------------------------------------------------
    def stage_ms(self, stage: str) -> float:
        return self._stages[stage].get(getattr(self.priors, f"{stage}_ms"))

    def predict(self, image_bytes: int, now: float | None = None) -> dict[str, Prediction]:
        """Predicted times of every mode for an image of ``image_bytes`` bytes."""
        with self._lock:
            rate = self.bandwidth.bytes_per_s
            env_bytes = round(self._envelope.get(float(self.priors.envelope_bytes)))
            remote = self.tail_available(now)
            local = Prediction("local", self.stage_ms("local"), 0.0, 0.0, 0)
            split = Prediction(
                "split",
                self.stage_ms("head_split"),
                1000.0 * env_bytes / rate if remote else math.inf,
                self.stage_ms("tail_split"),
                env_bytes,
            )
            offload = Prediction(
                "offload",
                self.stage_ms("head_offload"),
                1000.0 * image_bytes / rate if remote else math.inf,
                self.stage_ms("tail_offload"),
                image_bytes,
            )
        return {"local": local, "split": split, "offload": offload}

    def choose(
        self, image_bytes: int, now: float | None = None
    ) -> tuple[str, dict[str, Prediction]]:
        """The mode with the lowest predicted total (ties prefer local, then split)."""
        predictions = self.predict(image_bytes, now)
        best = min(MODES, key=lambda m: (predictions[m].total_ms, MODES.index(m)))
        return best, predictions

    def snapshot(self) -> dict[str, object]:
        """Current estimates, for a status endpoint and the benchmark report."""
        with self._lock:
            return {
                "rate_bytes_per_s": round(self.bandwidth.bytes_per_s, 1),
                "rate_samples": self.bandwidth.samples,
                "stages_ms": {s: round(self.stage_ms(s), 3) for s in STAGES},
                "envelope_bytes": self._envelope.get(float(self.priors.envelope_bytes)),
                "tail_available": self.tail_available(),
            }
