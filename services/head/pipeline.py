"""What the head does per mode, and the measurements that feed the latency model.

local    image -> local.onnx                              (nothing leaves the device)
split    image -> device.onnx -> envelope --POST--> tail server part
offload  image bytes --POST--> tail teacher
auto     the mode :class:`~splitdnn.latency.LatencyModel` predicts fastest among those the
         accuracy bound allows (on a ladder bundle: local, offload and every split rate)

Split and offload fall back to local when the tail is down, overloaded or late, unless the
caller said ``fallback=false``. Every transfer feeds the bandwidth estimate; every stage
time feeds the compute estimates.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.common.context import BUNDLE_HEADER, REQUEST_ID, RequestContext
from services.common.errors import InvalidRequestError, UpstreamUnavailableError
from services.common.metrics import Metrics
from services.head.settings import HeadSettings
from services.head.tail_client import TailClient
from splitdnn import rans, reencode, wire
from splitdnn.bundle import AccuracyBound, Bundle
from splitdnn.latency import MODES, LatencyModel, Priors, option_mode, split_option
from splitdnn.runtime import LOGITS_PREFIX, DeviceRunner, ImageClassifier, top_k

log = logging.getLogger("splitdnn.head")


@dataclass(frozen=True)
class Encoding:
    """How split mode writes its envelope (settings, or a per-request override)."""

    quantisation: str = "uint8"
    compression: str = "none"
    #: a ladder bundle's rate (entropy-coded with that rate's parts); None: the default
    rate: str | None = None


@dataclass
class Outcome:
    """One classification as the head answers it."""

    mode: str
    task: str
    top_k: list[dict[str, Any]]
    head_ms: float
    transfer_ms: float
    tail_ms: float
    bytes_sent: int
    fallback: bool = False
    fallback_reason: str | None = None
    #: Parts of ``head_ms``: decode/resize/normalise (or re-encode), and the model alone.
    preprocess_ms: float = 0.0
    model_ms: float = 0.0
    #: The same two parts in CPU time of the worker thread (``time.thread_time``): what a
    #: CPU quota charges, and steady on a loaded machine where wall time is not.
    preprocess_cpu_ms: float = 0.0
    model_cpu_ms: float = 0.0
    #: Auto only: the accuracy bound, the modes it allowed and excluded, what it chose and why.
    auto: dict[str, Any] | None = None
    #: Split: the quantisation sent (auto may send a rate entropy-coded), and on a
    #: ladder bundle the rate.
    quantisation: str | None = None
    rate: str | None = None


def sent_quantisation(setting: str, bundle: Bundle) -> str:
    """What split sends by default: the setting, where ``bundle`` (the default) means as the
    bundle was made to be sent (:meth:`Bundle.sent_quantisation`)."""
    return bundle.sent_quantisation() if setting == "bundle" else setting


def no_coding_tables(bundle: Bundle) -> str:
    return (
        "quantisation=entropy needs a bundle of an entropy-coded student (with coding "
        f"tables); bundle {bundle.name!r} has none: send fp32, fp16 or uint8"
    )


def encode_bottleneck(
    bottleneck: np.ndarray,
    bundle: Bundle,
    tables: rans.CodingTables | None,
    encoding: Encoding,
    level: int,
) -> bytes:
    """The envelope split sends: the entropy-coded integers (version 2, needs ``tables``;
    naming ``encoding.rate`` on a ladder) for ``entropy``, else the tensor as ``encoding``
    says (version 1)."""
    if encoding.quantisation == wire.ENTROPY:
        if tables is None:
            raise InvalidRequestError(no_coding_tables(bundle))
        return wire.encode_entropy(
            bottleneck, bundle_id=bundle.id, tables=tables, rate=encoding.rate
        )
    return wire.encode(
        bottleneck,
        bundle_id=bundle.id,
        quantisation=encoding.quantisation,
        compression=encoding.compression,
        level=level,
    )


def resolve_encoding(bundle: Bundle, encoding: Encoding) -> Encoding:
    """The encoding split really sends: on a ladder, entropy-coded envelopes name their rate
    (the default when none was asked for); a rate asks for entropy coding, so another
    quantisation with it is refused. An unknown rate is refused naming the rates there are."""
    rate = bundle.rate(encoding.rate)  # UnknownRateError (422) for a rate it does not have
    if encoding.rate is not None and encoding.quantisation != wire.ENTROPY:
        raise InvalidRequestError(
            f"rate={encoding.rate} is an entropy-coded operating point; it cannot be sent as "
            f"quantisation={encoding.quantisation} (leave quantisation out, or use entropy)"
        )
    if encoding.quantisation != wire.ENTROPY:
        return Encoding(encoding.quantisation, encoding.compression)
    return Encoding(encoding.quantisation, encoding.compression, rate)


class HeadPipeline:
    """The device side of every mode, with its measurements."""

    def __init__(
        self,
        bundle: Bundle,
        device: DeviceRunner,
        local: ImageClassifier,
        tail: TailClient,
        settings: HeadSettings,
        latency: LatencyModel,
        rate_devices: dict[str, DeviceRunner] | None = None,
        reencode_ratio: float = 1.0,
    ) -> None:
        self.bundle, self.device, self.local, self.tail = bundle, device, local, tail
        self.settings, self.latency = settings, latency
        self.local_tasks = local_tasks(local)
        #: Why the tail cannot serve this head (another bundle), from the last probe; None
        #: when it matched or did not answer. ``tail_checked`` is when it last answered.
        self.tail_mismatch: str | None = None
        self.tail_matched = False
        self._tail_probed = 0.0
        self.reencoding = reencoding_of(settings.offload_reencode, bundle)
        # re-encoded bytes / uploaded bytes, EWMA, seeded by the warm-up photo's: without a
        # seed, re-encoding would look like it saves nothing and auto would never try it
        self._offload_ratio = reencode_ratio
        #: The bundle's entropy-coding tables, or None (then no ``entropy`` envelopes).
        self.coding_tables = bundle.coding_tables()
        #: A ladder's rates: rate -> (its device part, its tables).
        self.rates = {
            rate: (
                (rate_devices or {}).get(rate) or DeviceRunner(bundle, rate=rate),
                bundle.rate_coding_tables(rate),
            )
            for rate in bundle.rates
        }

    def no_local_model(self, task: str) -> InvalidRequestError:
        """422 for ``mode=local`` on a task the bundle's local model cannot classify."""
        return InvalidRequestError(
            f"task {task!r} has no local model in bundle {self.bundle.name!r} "
            f"({self.bundle.local_mode_fix(task, self.local_tasks)}): "
            "use mode=split or mode=offload, or auto, which picks between those two"
        )

    def choose(
        self,
        image_bytes: int,
        task: str,
        max_drop: float,
        quantisation: str,
        reencoded_bytes: int | None = None,
        rate: str | None = None,
    ) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """Auto mode: the latency model's choice among the options that can classify
        ``task`` (local only with a local classifier; on a ladder every split rate, or only
        ``rate`` when one was asked for) and whose measured drop against the teacher is
        within ``max_drop``; returns the option (a mode or ``split@<rate>``), the
        predictions and why."""
        servable, bound, allowed = self._within_bound(task, max_drop, quantisation, rate)
        option, predicted = self.latency.choose(
            image_bytes, allowed=allowed, reencoded_bytes=reencoded_bytes
        )
        fastest = self._fastest(allowed, predicted)
        chose_mode, chose_rate = option_mode(option)
        why = {
            **bound.to_dict(),
            "chose": chose_mode,
            "because": "fastest predicted within max_drop"
            if option == fastest
            else "exploring: the allowed mode measured longest ago",
        }
        if self.bundle.rates:
            why["allowed"] = list(allowed)
            why["rate"] = chose_rate
        if chose_mode == "offload" and predicted[option].reencode:
            why["reencode"] = True
        if "local" not in servable:
            why["no_local_model"] = task
        return option, predicted, why

    def _within_bound(
        self, task: str, max_drop: float, quantisation: str, rate: str | None = None
    ) -> tuple[tuple[str, ...], AccuracyBound, tuple[str, ...]]:
        """The modes that can classify ``task``, the accuracy bound over them, and the
        options auto may choose (only ``rate``'s split when one was asked for)."""
        servable = tuple(m for m in MODES if m != "local" or task in self.local_tasks)
        bound = self.bundle.accuracy_bound(task, servable, max_drop, quantisation)
        allowed = tuple(
            o
            for o in bound.allowed
            if rate is None or option_mode(o)[0] != "split" or o == split_option(rate)
        )
        return servable, bound, allowed

    def _fastest(self, allowed: tuple[str, ...], predicted: dict[str, Any]) -> str:
        """The allowed option predicted fastest (ties in the latency model's option order)."""
        order = self.latency.options
        return min(allowed, key=lambda o: (predicted[o].total_ms, order.index(o)))

    def would_choose(
        self, image_bytes: int, task: str | None = None, max_drop: float | None = None
    ) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """What auto would serve now for an image of ``image_bytes`` (the fastest predicted
        option within the bound; no exploration, and nothing counted as a decision), the
        predictions and the bound: for ``/latency``, which must not steer auto."""
        task = self.bundle.task(task)
        drop = self.settings.auto_max_drop if max_drop is None else max_drop
        _, bound, allowed = self._within_bound(task, drop, self.settings.quantisation)
        predicted = self.latency.predict(image_bytes)
        option = self._fastest(allowed, predicted)
        return option, predicted, {"task": task, **bound.to_dict()}

    @classmethod
    def priors(
        cls,
        settings: HeadSettings,
        bundle: Bundle,
        local_ms: float,
        head_ms: float,
        reencode_ms: float | None = None,
    ) -> Priors:
        return Priors(
            rate_bytes_per_s=settings.prior_rate_mbps * 1e6 / 8,
            local_ms=local_ms,
            head_split_ms=head_ms,
            tail_split_ms=settings.prior_tail_ms,
            tail_offload_ms=settings.prior_tail_ms,
            # entropy-coded: no size before the first one is sent; uint8's bounds it above
            envelope_bytes=wire.envelope_size(
                (1, *bundle.manifest.bottleneck.shape),
                "uint8" if settings.quantisation == wire.ENTROPY else settings.quantisation,
            ),
            head_reencode_ms=reencode_ms if reencode_ms is not None else Priors.head_reencode_ms,
            rate_bytes=rate_priors(bundle),
        )

    # --- the modes ------------------------------------------------------------------
    def run(
        self,
        mode: str,
        image: bytes,
        task: str | None,
        k: int,
        fallback: bool,
        context: RequestContext,
        metrics: Metrics,
        encoding: Encoding | None = None,
        reencode_offload: bool | None = None,
        max_drop: float | None = None,
    ) -> tuple[Outcome, dict[str, Any] | None]:
        """Serve ``mode`` (``auto`` resolved here); returns the outcome (for auto, with why
        it chose) and auto's predictions. ``reencode_offload`` overrides whether offload
        re-encodes, ``max_drop`` auto's accuracy bound (None: the settings)."""
        task = self.bundle.task(task)
        predictions = None
        fair = self.reencoding is not None if reencode_offload is None else reencode_offload
        encoding = encoding or Encoding(self.settings.quantisation, self.settings.compression)
        if mode == "auto":
            reencoded = None
            if fair and reencode.worth_it(image, self.bundle.preprocessing):
                reencoded = round(len(image) * self._offload_ratio)
            bound = self.settings.auto_max_drop if max_drop is None else max_drop
            self.bundle.rate(encoding.rate)  # an unknown rate is refused before anything runs
            option, predicted, why = self.choose(
                len(image), task, bound, encoding.quantisation, reencoded, encoding.rate
            )
            predictions = {m: p.to_dict() for m, p in predicted.items()}
            mode, rate = option_mode(option)
            if rate is not None:
                encoding = Encoding(wire.ENTROPY, encoding.compression, rate)
            if mode == "offload":
                fair = predicted[option].reencode
        if mode == "local" and task not in self.local_tasks:
            raise self.no_local_model(task)
        if mode == "local":
            outcome = self.run_local(image, task, k, context)
        else:
            try:
                if mode == "split":
                    outcome = self.run_split(image, task, k, context, encoding)
                else:
                    outcome = self.run_offload(image, task, k, context, fair)
            except UpstreamUnavailableError as exc:
                self.latency.mark_tail_down()
                if not fallback or task not in self.local_tasks:
                    raise
                log.warning("tail failed in %s mode, falling back to local: %s", mode, exc)
                outcome = self.run_local(image, task, k, context)
                outcome.fallback, outcome.fallback_reason = True, exc.detail
        if predictions is not None:
            outcome.auto = why
        metrics.modes.labels(metrics.service, outcome.mode, str(outcome.fallback).lower()).inc()
        metrics.bytes_sent.labels(metrics.service, outcome.mode).inc(outcome.bytes_sent)
        for stage, ms in (("head", outcome.head_ms), ("transfer", outcome.transfer_ms)):
            metrics.stage(stage, ms / 1000)
        return outcome, predictions

    def run_local(self, image: bytes, task: str, k: int, context: RequestContext) -> Outcome:
        start, cpu = time.perf_counter(), time.thread_time()
        with context.stage("head"):
            x = self.local.preprocess(image, self.settings.max_pixels)
            ready, cpu_ready = time.perf_counter(), time.thread_time()
            task, logits = self.local.run(x, task)
            ran, cpu_ran = time.perf_counter(), time.thread_time()
            ranked = [r.to_dict() for r in top_k(logits[0], self.bundle.labels(task), k)]
        seconds = time.perf_counter() - start
        self.latency.observe_stage("local", seconds)
        outcome = Outcome("local", task, ranked, seconds * 1000, 0.0, 0.0, 0)
        outcome.preprocess_ms, outcome.model_ms = (ready - start) * 1000, (ran - ready) * 1000
        outcome.preprocess_cpu_ms = (cpu_ready - cpu) * 1000
        outcome.model_cpu_ms = (cpu_ran - cpu_ready) * 1000
        return outcome

    def run_split(
        self,
        image: bytes,
        task: str,
        k: int,
        context: RequestContext,
        encoding: Encoding | None = None,
    ) -> Outcome:
        encoding = encoding or Encoding(self.settings.quantisation, self.settings.compression)
        encoding = resolve_encoding(self.bundle, encoding)
        if encoding.quantisation == wire.ENTROPY and self.coding_tables is None:
            raise InvalidRequestError(no_coding_tables(self.bundle))
        device, tables = self.device, self.coding_tables
        if encoding.rate is not None:
            device, tables = self.rates[encoding.rate]
        start, cpu = time.perf_counter(), time.thread_time()
        with context.stage("head"):
            x = device.preprocess(image, self.settings.max_pixels)
            ready, cpu_ready = time.perf_counter(), time.thread_time()
            bottleneck = device.run(x)
            ran, cpu_ran = time.perf_counter(), time.thread_time()
            envelope = encode_bottleneck(
                bottleneck, self.bundle, tables, encoding, self.settings.zstd_level
            )
        head_s = time.perf_counter() - start
        answer, round_trip = self.tail.post(
            f"/v2/models/{self.bundle.name}/infer",
            envelope,
            wire.CONTENT_TYPE,
            {"task": task, "top_k": k},
            {REQUEST_ID: context.request_id},
        )
        tail_s, transfer_s = _split_round_trip(answer, round_trip)
        context.record("transfer", transfer_s)
        context.record("tail", tail_s)
        self.latency.observe_stage("head_split", head_s)
        self.latency.observe_stage("tail_split", tail_s)
        self.latency.observe_transfer(len(envelope), transfer_s, envelope=True, rate=encoding.rate)
        outcome = Outcome(
            "split",
            task,
            answer["top_k"],
            head_s * 1000,
            transfer_s * 1000,
            tail_s * 1000,
            len(envelope),
        )
        outcome.quantisation, outcome.rate = encoding.quantisation, encoding.rate
        outcome.preprocess_ms, outcome.model_ms = (ready - start) * 1000, (ran - ready) * 1000
        outcome.preprocess_cpu_ms = (cpu_ready - cpu) * 1000
        outcome.model_cpu_ms = (cpu_ran - cpu_ready) * 1000
        return outcome

    def run_offload(
        self, image: bytes, task: str, k: int, context: RequestContext, fair: bool = False
    ) -> Outcome:
        """Send the image; ``fair`` re-encodes it at the teacher's input size first."""
        start, cpu = time.perf_counter(), time.thread_time()
        payload = image
        reencoded = fair and reencode.worth_it(image, self.bundle.preprocessing)
        if reencoded:
            with context.stage("head"):
                setting = self.reencoding or reencode.Reencoding()
                payload = reencode.reencode(
                    image, self.bundle.preprocessing, setting, self.settings.max_pixels
                )
            self._offload_ratio += 0.3 * (len(payload) / max(1, len(image)) - self._offload_ratio)
        head_s, head_cpu_s = time.perf_counter() - start, time.thread_time() - cpu
        answer, round_trip = self.tail.post(
            f"/v2/models/{self.bundle.name}/classify",
            payload,
            "application/octet-stream",
            {"task": task, "top_k": k},
            {REQUEST_ID: context.request_id, BUNDLE_HEADER: self.bundle.id},
        )
        tail_s, transfer_s = _split_round_trip(answer, round_trip)
        context.record("transfer", transfer_s)
        context.record("tail", tail_s)
        # re-encoding is its own estimate: a plain offload never makes it look cheaper
        self.latency.observe_stage("head_reencode" if reencoded else "head_offload", head_s)
        self.latency.observe_stage("tail_offload", tail_s)
        self.latency.observe_transfer(len(payload), transfer_s)
        outcome = Outcome(
            "offload",
            task,
            answer["top_k"],
            head_s * 1000,
            transfer_s * 1000,
            tail_s * 1000,
            len(payload),
        )
        outcome.preprocess_ms, outcome.preprocess_cpu_ms = head_s * 1000, head_cpu_s * 1000
        return outcome

    def probe_tail(self) -> dict[str, Any] | None:
        """Ask the tail for its bundle and warm-up times: the warm-up times seed the latency
        model; another bundle than the head's is logged and kept in ``tail_mismatch`` (the
        head's readiness reports it). Harmless if the tail is down."""
        self._tail_probed = time.monotonic()
        url = f"{self.settings.tail_url}/v2/models/{self.bundle.name}"
        ours = f"{self.bundle.id} ({self.bundle.name})"
        try:
            reply = self.tail.send("GET", f"/v2/models/{self.bundle.name}", timeout=1.0)
            meta = json.loads(reply.content) if reply.status in (200, 404) else None
        except (UpstreamUnavailableError, ValueError) as exc:
            log.info("tail not reachable yet (%s); using priors", exc)
            return None
        if reply.status == 404:
            theirs = (meta or {}).get("detail", "it serves another model")
            self._set_mismatch(f"the tail at {url} does not serve this head's {ours}: {theirs}")
            return None
        if meta is None or not isinstance(meta, dict):
            log.info("tail answered %s to %s; using priors", reply.status, url)
            return None
        if meta.get("bundle") != self.bundle.id:
            self._set_mismatch(
                f"the tail at {self.settings.tail_url} holds bundle {meta.get('bundle')} "
                f"({meta.get('name')}), this head {ours}: split and offload would answer 409; "
                "serve the same bundle on both"
            )
            return meta
        if self.tail_mismatch:
            log.info("the tail now holds this head's bundle %s", ours)
        self.tail_mismatch, self.tail_matched = None, True
        warm = meta.get("warmup_ms")
        for mode in ("split", "offload"):
            value = warm.get(mode) if isinstance(warm, dict) else None
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.latency.observe_stage(f"tail_{mode}", value / 1000)
        return meta

    def _set_mismatch(self, message: str) -> None:
        if message != self.tail_mismatch:
            log.error("%s", message)
        self.tail_mismatch, self.tail_matched = message, False

    def tail_readiness(self, every_s: float = 2.0) -> str | None:
        """For ``/v2/health/ready``: why this head is not ready (its tail holds another
        bundle), or None. Until the tail has matched once it is asked again, at most every
        ``every_s`` seconds, so a tail that starts or changes later is noticed."""
        if not self.tail_matched and time.monotonic() - self._tail_probed >= every_s:
            self.probe_tail()
        return self.tail_mismatch


def rate_priors(bundle: Bundle) -> dict[str, float]:
    """Each measured rate's envelope bytes before any is sent: its median on the default
    task's held-out images, else on another task's."""
    priors: dict[str, float] = {}
    for task in [bundle.manifest.default_task, *bundle.manifest.tasks]:
        for rate, nbytes in bundle.rate_bytes(task).items():
            priors.setdefault(rate, nbytes)
    return priors


def local_tasks(local: ImageClassifier) -> list[str]:
    """The tasks the local model has a classifier for (its ``logits_<task>`` outputs)."""
    names = local.model.output_names
    return [n.removeprefix(LOGITS_PREFIX) for n in names if n.startswith(LOGITS_PREFIX)]


def reencoding_of(setting: str, bundle: Bundle) -> reencode.Reencoding | None:
    """``none``, ``bundle`` (the measured choice beside the bundle, if any) or ``webp:95``."""
    if setting == "none":
        return None
    if setting == "bundle":
        path = getattr(bundle, "path", None)
        return reencode.load_choice(path) if path is not None else None
    return reencode.parse(setting)


def _split_round_trip(answer: dict[str, Any], round_trip: float) -> tuple[float, float]:
    """(tail compute, transfer) seconds: transfer is the round trip minus tail compute."""
    compute_ms = float((answer.get("timings_ms") or {}).get("compute", 0.0))
    tail_s = min(max(compute_ms / 1000, 0.0), round_trip)
    return tail_s, round_trip - tail_s
