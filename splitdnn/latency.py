"""The latency model: the only place a mode's capture-to-output time is predicted.

For an image of ``B_img`` bytes, with ``T(B)`` the predicted time to send ``B`` bytes over
the device→edge link:

============  ===================================================================
``local``     τ_local                                   (device-only model)
``split``     τ_head + T(B_env) + τ_tail                (device part, envelope, server part)
``offload``   τ_send + T(B_img) + τ_teacher             (raw image to the edge, full teacher)
``split@r``   τ_head + T(B_r) + τ_tail                  (one rate r of a ladder bundle)
============  ===================================================================

Offload counts what the device really does: when the head may re-encode the photo (fair
offload), ``offload`` is the faster of sending it as uploaded (τ_send + T(B_img)) and
re-encoding it (τ_reencode + T(B_reenc), with the re-encoded bytes the caller expects), and
the prediction says which (``reencode``), so auto sends what it predicted. τ_send and
τ_reencode are separate estimates: a plain offload never lowers the re-encode's cost.
A ladder's rates share τ_head and τ_tail (the same architecture); ``B_r`` is the EWMA of
rate r's sent envelopes, seeded with the rate's measured median from the bundle.

Every τ is an exponentially weighted moving average (EWMA) of measured times, seeded by a
warm-up run or a prior; ``B_env`` is the EWMA of sent envelope sizes. ``T`` comes from
:class:`BandwidthEstimator`: per payload size class (4x wide: a 3 kB envelope and a 30 kB
photo never share one) an EWMA of the effective bytes/s, which folds the per-request
overhead (round trip, the head's own HTTP work) into the rate *at that size*; for a size
never sent, ``T(B) = overhead + B / r`` fitted to recent transfers once their sizes differ
enough, else one EWMA over all transfers. A sample 4x off its class's estimate replaces
it (a changed link, not noise: busy-CPU jitter here stays under 3x). A mode's estimates
refresh only when it runs, so every ``explore_every``-th auto decision runs the mode
measured longest ago instead of the predicted best (10 %: the median is untouched, and
with two other modes each is refreshed at least every 20 decisions, so a link that got
faster is noticed within ~25 requests). While the edge is known to be down, remote modes
predict infinity. No torch and no web framework: the head service feeds it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

#: The modes a request can be served in; ``auto`` picks one of these.
MODES: tuple[str, ...] = ("local", "split", "offload")
#: Compute stages whose times the model tracks.
STAGES: tuple[str, ...] = (
    "local",
    "head_split",
    "tail_split",
    "head_offload",
    "tail_offload",
    "head_reencode",
)


def split_option(rate: str) -> str:
    """How auto names split at one rate of a ladder: ``split@<rate>``."""
    return f"split@{rate}"


def option_mode(option: str) -> tuple[str, str | None]:
    """``split@r1`` -> (``split``, ``r1``); a plain mode -> (mode, None)."""
    mode, _, rate = option.partition("@")
    return mode, rate or None


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
    """Online estimate of the device→edge link from recent transfers.

    Two views of the same samples: an EWMA of bytes/s (robust, but a per-request overhead
    such as the round trip makes small payloads look slow), and a least-squares fit of
    ``seconds = overhead + bytes / rate`` over the last ``window`` transfers, used once
    their sizes differ enough (largest ≥ 4× smallest) to tell overhead from rate.
    Transfers shorter than ``min_seconds`` count as that long, so a tiny payload on a fast
    link cannot claim an absurd rate.
    """

    def __init__(
        self,
        prior_bytes_per_s: float,
        alpha: float = 0.3,
        min_seconds: float = 1e-4,
        window: int = 32,
    ) -> None:
        if prior_bytes_per_s <= 0:
            raise ValueError("the prior rate must be positive")
        self._ewma = Ewma(alpha, initial=float(prior_bytes_per_s))
        self.min_seconds = min_seconds
        self._samples: deque[tuple[float, float]] = deque(maxlen=window)
        self._classes: dict[int, Ewma] = {}
        self.alpha = alpha
        #: A class's sample this many times off its estimate replaces it (the link changed).
        self.jump = 4.0
        self.last_bytes_per_s: float | None = None

    @staticmethod
    def size_class(nbytes: float) -> int:
        """Payloads within a factor of 4 share a class: 1-4 kB, 4-16 kB, 16-64 kB, ..."""
        return int(math.log(max(nbytes, 1.0), 4))

    def observe(self, nbytes: int, seconds: float) -> float:
        """Record one transfer of ``nbytes`` that took ``seconds``; returns the EWMA rate."""
        if nbytes <= 0 or not math.isfinite(seconds) or seconds < 0:
            return self.bytes_per_s
        seconds = max(seconds, self.min_seconds)
        rate = nbytes / seconds
        self.last_bytes_per_s = rate
        self._samples.append((float(nbytes), seconds))
        # seconds per byte, not bytes/s: an average of rates hides a link that slowed down
        per_byte = seconds / nbytes
        ewma = self._classes.setdefault(self.size_class(nbytes), Ewma(self.alpha))
        if ewma.value and not 1 / self.jump < per_byte / ewma.value < self.jump:
            ewma.count = 0  # a jump this large is a new link, not noise: start over
        ewma.update(per_byte)
        return self._ewma.update(rate)

    @property
    def bytes_per_s(self) -> float:
        """EWMA of bytes/s over recent transfers (overhead included)."""
        return self._ewma.get(1.0)

    @property
    def samples(self) -> int:
        return self._ewma.count

    def fit(self) -> tuple[float, float] | None:
        """``(overhead_s, bytes_per_s)`` from the window, or None when sizes are too alike."""
        if len(self._samples) < 3:
            return None
        sizes = [b for b, _ in self._samples]
        if max(sizes) < 4 * min(sizes):
            return None
        n = len(self._samples)
        mean_b = sum(sizes) / n
        mean_t = sum(t for _, t in self._samples) / n
        var = sum((b - mean_b) ** 2 for b in sizes)
        cov = sum((b - mean_b) * (t - mean_t) for b, t in self._samples)
        if var <= 0 or cov <= 0:
            return None
        slope = cov / var
        return max(mean_t - slope * mean_b, 0.0), 1.0 / slope

    def class_rate(self, nbytes: float) -> float | None:
        """Effective bytes/s measured for payloads of this size class, if any."""
        ewma = self._classes.get(self.size_class(nbytes))
        return None if ewma is None or not ewma.value else 1.0 / ewma.value

    def seconds_for(self, nbytes: int) -> float:
        """Predicted transfer time of ``nbytes``: its size class's rate, else the fit."""
        rate = self.class_rate(nbytes)
        if rate is not None and rate > 0:
            return nbytes / rate
        fitted = self.fit()
        if fitted is not None:
            overhead, rate = fitted
            return overhead + nbytes / rate
        return nbytes / self.bytes_per_s


#: The stage whose sample shows a mode ran (for exploration's "measured longest ago").
_STAGE_MODE = {"local": "local", "tail_split": "split", "tail_offload": "offload"}


@dataclass(frozen=True)
class Prediction:
    """Predicted stage times of one mode, in milliseconds."""

    mode: str
    head_ms: float
    transfer_ms: float
    tail_ms: float
    bytes: int
    #: split at one rate of a ladder: that rate
    rate: str | None = None
    #: offload: whether the photo is re-encoded before it is sent
    reencode: bool = False

    @property
    def total_ms(self) -> float:
        return self.head_ms + self.transfer_ms + self.tail_ms

    def to_dict(self) -> dict[str, float | int | str | None]:
        def finite(v: float) -> float | None:  # JSON has no infinity
            return round(v, 3) if math.isfinite(v) else None

        answer: dict[str, float | int | str | None] = {
            "mode": self.mode,
            "head": finite(self.head_ms),
            "transfer": finite(self.transfer_ms),
            "tail": finite(self.tail_ms),
            "total": finite(self.total_ms),
            "bytes": self.bytes,
        }
        if self.rate is not None:
            answer["rate"] = self.rate
        if self.reencode:
            answer["reencode"] = True
        return answer


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
    #: re-encoding a photo before offload (decode, resize, encode) on the device
    head_reencode_ms: float = 50.0
    #: a ladder's rates: rate -> envelope bytes (the bundle's measured median)
    rate_bytes: dict[str, float] = field(default_factory=dict)


@dataclass
class LatencyModel:
    """Measured times in, predicted capture-to-output times out; thread-safe."""

    priors: Priors = field(default_factory=Priors)
    alpha: float = 0.3
    #: How long remote modes are ruled out after the edge failed.
    tail_retry_s: float = 5.0
    #: Every n-th auto decision runs the mode measured longest ago (0: never explore).
    explore_every: int = 10

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.bandwidth = BandwidthEstimator(self.priors.rate_bytes_per_s, self.alpha)
        self._stages = {stage: Ewma(self.alpha) for stage in STAGES}
        self._envelope = Ewma(self.alpha)
        self._rate_envelope = {
            rate: Ewma(self.alpha, initial=float(nbytes))
            for rate, nbytes in self.priors.rate_bytes.items()
        }
        self._tail_down_until = 0.0
        self._decisions = 0
        self._last_seen = dict.fromkeys(self.options, 0)  # decisions at an option's last sample

    @property
    def options(self) -> tuple[str, ...]:
        """What auto may choose, in tie order: local, split, each rate, offload."""
        rates = tuple(split_option(rate) for rate in self._rate_envelope)
        return ("local", "split", *rates, "offload")

    # --- measurements -------------------------------------------------------------
    def observe_stage(self, stage: str, seconds: float) -> None:
        if stage not in self._stages:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        with self._lock:
            self._stages[stage].update(seconds * 1000.0)
            mode = _STAGE_MODE.get(stage)
            if mode is not None:
                self._last_seen[mode] = self._decisions

    def observe_transfer(
        self, nbytes: int, seconds: float, *, envelope: bool = False, rate: str | None = None
    ) -> None:
        """One payload crossed the link; ``envelope`` marks split-mode payloads, ``rate``
        the ladder rate it was sent at."""
        with self._lock:
            self.bandwidth.observe(nbytes, seconds)
            if rate is not None:  # a rate's bytes are its own (an unmeasured one: not kept)
                if rate in self._rate_envelope:
                    self._rate_envelope[rate].update(float(nbytes))
                    self._last_seen[split_option(rate)] = self._decisions
            elif envelope:
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

    def predict(
        self, image_bytes: int, now: float | None = None, reencoded_bytes: int | None = None
    ) -> dict[str, Prediction]:
        """Predicted times of every option for an image of ``image_bytes`` bytes;
        ``reencoded_bytes``: what the photo would be re-encoded to, when the head may
        (offload is then the faster of sending it as it is and re-encoding it)."""
        with self._lock:
            env_bytes = round(self._envelope.get(float(self.priors.envelope_bytes)))
            remote = self.tail_available(now)

            def send_ms(nbytes: int) -> float:
                return 1000.0 * self.bandwidth.seconds_for(nbytes) if remote else math.inf

            def split(nbytes: int, rate: str | None = None) -> Prediction:
                head, tail = self.stage_ms("head_split"), self.stage_ms("tail_split")
                return Prediction("split", head, send_ms(nbytes), tail, nbytes, rate=rate)

            local = Prediction("local", self.stage_ms("local"), 0.0, 0.0, 0)
            tail_offload = self.stage_ms("tail_offload")
            offload = Prediction(
                "offload",
                self.stage_ms("head_offload"),
                send_ms(image_bytes),
                tail_offload,
                image_bytes,
            )
            if reencoded_bytes is not None:
                reencoded = Prediction(
                    "offload",
                    self.stage_ms("head_reencode"),
                    send_ms(reencoded_bytes),
                    tail_offload,
                    reencoded_bytes,
                    reencode=True,
                )
                if reencoded.total_ms < offload.total_ms:
                    offload = reencoded
            predictions = {"local": local, "split": split(env_bytes)}
            for rate, ewma in self._rate_envelope.items():
                predictions[split_option(rate)] = split(round(ewma.get(0.0)), rate)
            predictions["offload"] = offload
        return predictions

    def choose(
        self,
        image_bytes: int,
        now: float | None = None,
        allowed: tuple[str, ...] = MODES,
        reencoded_bytes: int | None = None,
    ) -> tuple[str, dict[str, Prediction]]:
        """The ``allowed`` option (a mode, or ``split@<rate>``) with the lowest predicted
        total (ties in :attr:`options` order); every ``explore_every``-th call the available
        allowed option measured longest ago instead. Predictions are of every option,
        allowed or not."""
        options = self.options
        unknown = sorted(set(allowed) - set(options))
        if unknown or not allowed:
            raise ValueError(f"allowed must be a non-empty subset of {options}, got {allowed}")
        candidates = [m for m in options if m in allowed]
        predictions = self.predict(image_bytes, now, reencoded_bytes)
        best = min(candidates, key=lambda m: (predictions[m].total_ms, options.index(m)))
        with self._lock:
            self._decisions += 1
            if self.explore_every and self._decisions % self.explore_every == 0:
                others = [
                    m for m in candidates if m != best and math.isfinite(predictions[m].total_ms)
                ]
                if others:
                    return min(others, key=lambda m: self._last_seen[m]), predictions
        return best, predictions

    def snapshot(self) -> dict[str, object]:
        """Current estimates, for a status endpoint and the benchmark report."""
        with self._lock:
            fitted = self.bandwidth.fit()
            return {
                "rate_bytes_per_s": round(self.bandwidth.bytes_per_s, 1),
                "fit": None
                if fitted is None
                else {"overhead_ms": round(fitted[0] * 1000, 3), "bytes_per_s": round(fitted[1])},
                "rate_samples": self.bandwidth.samples,
                "class_rates_bytes_per_s": {
                    f">={4**c}B": round(1.0 / e.value, 1) if e.value else None
                    for c, e in sorted(self.bandwidth._classes.items())
                },
                "explore_every": self.explore_every,
                "stages_ms": {s: round(self.stage_ms(s), 3) for s in STAGES},
                "envelope_bytes": self._envelope.get(float(self.priors.envelope_bytes)),
                "rate_envelope_bytes": {r: e.get(0.0) for r, e in self._rate_envelope.items()},
                "tail_available": self.tail_available(),
            }
