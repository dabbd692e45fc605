"""Entropy coding of an integer bottleneck with fixed per-channel tables, in numpy (no torch).

Why here and why this coder: the device encodes and the edge decodes an entropy-coded
bottleneck (:class:`splitdnn.students.EntropyStudent`) and neither may need torch;
the coder also has to run on the arm64 device image, where no wheel of a compiled range coder
installs. So this is interleaved rANS (Duda 2013; Giesen's "Interleaved entropy coders",
2014) vectorised over ``lanes`` independent coder states: one numpy step codes one symbol in
every lane, so a 13,872-element bottleneck takes ``13,872 / lanes`` steps, not 13,872 Python
iterations. Each lane ends with its 32-bit state in the stream (4 bytes a lane).

Parameters (as ryg_rans' 32-bit coder with 16-bit words): probabilities are quantised to
``PRECISION`` = 16 bits, a lane's state stays in ``[2**16, 2**32)``, renormalisation moves one
16-bit word. A stream is ``lanes`` final states (uint32, little-endian) then the words
(uint16, little-endian) in the order the decoder reads them.

Tables (:class:`CodingTables`) are what the learned entropy model becomes for serving:
per channel a median (the value counted from), the smallest symbol and a quantised CDF
(compressai's ``EntropyBottleneck.update()`` tables). A value outside a channel's range is
clamped into it (the model gives it less than ~1e-9 probability).

Decoding is bounded by the element count the caller expects, never by the stream: a stream
that ends early, leaves words over or leaves a lane in any state but the start state is
refused (:class:`~splitdnn.errors.WireCompressionError`).

Two kernels write and read the same bytes: ``numba`` (:mod:`splitdnn.rans_fast`, compiled;
~20x faster, which a weak device needs) when numba imports, else ``numpy`` (this module), so
nothing breaks where numba is absent. :func:`warm_up` compiles the numba kernels (or loads
them from numba's cache) before a service takes requests.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import numpy as np

from splitdnn.errors import BundleError, WireCompressionError

PRECISION = 16
_TOTAL = 1 << PRECISION
_LOW = 1 << 16  # lower end of a lane's state; the state stays in [_LOW, _LOW << 16)
_WORD = 16
_MASK = (1 << _WORD) - 1
#: Lanes a stream may have: more lanes, fewer numpy steps, 4 more bytes each.
MAX_LANES = 256
DEFAULT_LANES = 32
#: Most steps one stream may take (elements / lanes, rounded up): what bounds the decoder's
#: work per sample (~12 µs a step here: a 13,872-element sample in one lane took 287 ms).
MAX_STEPS = 512
#: Symbols a channel may have (its CDF holds one entry more).
MAX_SYMBOLS = 1 << 12
log = logging.getLogger(__name__)
#: The coder's implementations: same streams, ``numba`` compiled, ``numpy`` the fallback.
Kernel = Literal["auto", "numba", "numpy"]


@functools.cache
def _compiled() -> ModuleType | None:
    """:mod:`splitdnn.rans_fast` when numba imports and can set up its kernels, else None."""
    try:
        from splitdnn import rans_fast
    except ImportError:  # no numba (not in the serve extra's install): numpy, quietly
        return None
    except (RuntimeError, OSError) as error:  # numba found no writable cache directory
        log.warning(
            "the entropy coder runs in numpy (~20x slower): numba cannot set up its kernels "
            "(%s); set NUMBA_CACHE_DIR to a writable directory",
            error,
        )
        return None
    return rans_fast


def kernels() -> tuple[str, ...]:
    """The kernels this host has: ``("numba", "numpy")`` or ``("numpy",)``."""
    return ("numba", "numpy") if _compiled() is not None else ("numpy",)


def _use_compiled(kernel: Kernel) -> ModuleType | None:
    if kernel == "numpy":
        return None
    compiled = _compiled()
    if compiled is None and kernel == "numba":
        raise ValueError("the numba kernel needs numba (the serve extra)")
    return compiled


def warm_up() -> float:
    """Compile (or load from numba's cache) both compiled kernels on a tiny stream, so no
    request pays it; the milliseconds it took (0.0 with no numba)."""
    if _compiled() is None:
        return 0.0
    began = time.perf_counter()
    tables = CodingTables.from_lists([0.0], [0], [[0, 1 << 15, _TOTAL]])
    symbols = np.array([[0, 1, 1]], dtype=np.int32)
    decode(encode(symbols, tables, 2, kernel="numba"), (1, 3), tables, 2, kernel="numba")
    return 1000 * (time.perf_counter() - began)


@dataclass(frozen=True)
class CodingTables:
    """Per-channel coding tables: ``medians`` (float32), ``offsets`` (the smallest symbol,
    relative to the median) and ``cdfs`` (one non-decreasing integer array per channel, from
    0 to ``2**PRECISION``, every symbol at least 1). Build with :meth:`from_lists`, which
    checks them."""

    medians: np.ndarray
    offsets: np.ndarray
    cdfs: tuple[np.ndarray, ...]

    @classmethod
    def from_lists(
        cls,
        medians: list[float],
        offsets: list[int],
        cdfs: list[list[int]],
        precision: int = PRECISION,
    ) -> CodingTables:
        """Checked tables from plain lists (a bundle's JSON); :class:`BundleError` if not."""
        if precision != PRECISION:
            raise BundleError(f"coding tables of {precision}-bit precision; the coder has 16")
        channels = len(medians)
        if not (len(offsets) == len(cdfs) == channels) or channels == 0:
            raise BundleError("coding tables need one median, offset and CDF per channel")
        med = np.asarray(medians, dtype=np.float32)
        if not np.isfinite(med).all():
            raise BundleError("coding table medians must be finite")
        if not all(isinstance(o, int) and abs(o) < MAX_SYMBOLS for o in offsets):
            raise BundleError("coding table offsets must be small integers")
        checked = []
        for c, cdf in enumerate(cdfs):
            array = np.asarray(cdf, dtype=np.int64)
            if array.ndim != 1 or not 2 <= len(array) <= MAX_SYMBOLS + 1:
                raise BundleError(f"channel {c}: a CDF holds 2 to {MAX_SYMBOLS + 1} entries")
            if array[0] != 0 or array[-1] != _TOTAL or (np.diff(array) < 1).any():
                raise BundleError(
                    f"channel {c}: a CDF rises from 0 to {_TOTAL} by at least 1 per symbol"
                )
            checked.append(array)
        return cls(med, np.asarray(offsets, dtype=np.int64), tuple(checked))

    def to_lists(self) -> dict[str, list]:
        """The plain form :meth:`from_lists` reads (for a bundle's JSON)."""
        return {
            "precision": PRECISION,  # type: ignore[dict-item]
            "medians": [float(m) for m in self.medians],
            "offsets": [int(o) for o in self.offsets],
            "cdfs": [[int(v) for v in cdf] for cdf in self.cdfs],
        }

    @property
    def channels(self) -> int:
        return len(self.cdfs)

    def symbols(self, latent: np.ndarray) -> np.ndarray:
        """The integers sent for a latent ``(N, C, ...)``: ``round(y - median)`` per
        channel, clamped to the channel's range (int32, same shape)."""
        y = np.asarray(latent, dtype=np.float32)
        shape = (1, self.channels) + (1,) * (y.ndim - 2)
        q = np.rint(y - self.medians.reshape(shape))
        low = self.offsets.reshape(shape)
        high = low + np.array([len(c) - 2 for c in self.cdfs]).reshape(shape)
        with np.errstate(invalid="ignore"):
            return np.clip(np.nan_to_num(q), low, high).astype(np.int32)

    def latent(self, symbols: np.ndarray) -> np.ndarray:
        """What the decoder part receives: ``symbols + median`` (float32)."""
        shape = (1, self.channels) + (1,) * (symbols.ndim - 2)
        return (symbols.astype(np.float32) + self.medians.reshape(shape)).astype(np.float32)

    def _flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every channel's starts and frequencies end to end, each channel's first index, and
        the search keys (``channel << 17 | start``) that find a symbol from a slot."""
        starts, freqs, base, _, keys = self._arrays
        return starts, freqs, base, keys

    @functools.cached_property
    def _arrays(self) -> tuple[np.ndarray, ...]:
        """:meth:`_flat`'s arrays and each channel's symbol count (int64, made once: callers
        only read them)."""
        starts = [cdf[:-1] for cdf in self.cdfs]
        freqs = [np.diff(cdf) for cdf in self.cdfs]
        sizes = np.array([len(s) for s in starts], dtype=np.int64)
        base = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        keys = np.concatenate([(c << 17) + s for c, s in enumerate(starts)])
        flat_starts = np.concatenate(starts).astype(np.int64)
        return flat_starts, np.concatenate(freqs).astype(np.int64), base, sizes, keys


def lanes_for(elements: int, lanes: int = DEFAULT_LANES) -> int:
    """``lanes``, raised until a sample of ``elements`` takes at most :data:`MAX_STEPS`
    steps; ValueError when even :data:`MAX_LANES` lanes cannot."""
    needed = max(lanes, -(-elements // MAX_STEPS))
    if needed > MAX_LANES:
        raise ValueError(
            f"{elements} elements need more than {MAX_LANES} lanes of {MAX_STEPS} steps"
        )
    return needed


def _layout(shape: tuple[int, ...], lanes: int) -> tuple[int, int, np.ndarray]:
    """(elements, steps, channel of every element) of one sample ``(C, ...)``."""
    n = math.prod(shape)
    steps = -(-n // lanes)
    channel = np.arange(n) // max(math.prod(shape[1:]), 1)
    return n, steps, channel


def _padded(values: np.ndarray, steps: int, lanes: int, fill: int) -> np.ndarray:
    """``values`` as a (steps, lanes) uint64 array, the last step filled up with ``fill``."""
    out = np.full(steps * lanes, fill, dtype=np.uint64)
    out[: len(values)] = values
    return out.reshape(steps, lanes)


def _outside(index: int, symbols: np.ndarray, plane: int) -> ValueError:
    channel = index // plane
    return ValueError(
        f"symbol {symbols.reshape(-1)[index]} (element {index}) is outside channel "
        f"{channel}'s range"
    )


def encode(
    symbols: np.ndarray, tables: CodingTables, lanes: int = DEFAULT_LANES, kernel: Kernel = "auto"
) -> bytes:
    """One sample's symbols ``(C, ...)`` (from :meth:`CodingTables.symbols`) as a stream;
    ValueError for a symbol outside its channel's range.

    In numpy, elements past the last fill the last step with an identity symbol (frequency
    ``2**16``, start 0: the state neither changes nor renormalises), so every step is the
    same few numpy operations on all lanes."""
    if not 1 <= lanes <= MAX_LANES:
        raise ValueError(f"lanes must be 1 to {MAX_LANES}")
    if symbols.ndim < 1 or symbols.shape[0] != tables.channels:
        raise ValueError(f"symbols of shape {symbols.shape} for {tables.channels} channels")
    starts, freqs, base, sizes, _ = tables._arrays
    plane = max(math.prod(symbols.shape[1:]), 1)
    compiled = _use_compiled(kernel)
    if compiled is not None:
        flat = np.ascontiguousarray(symbols, dtype=np.int64).reshape(-1)
        states, body, bad = compiled.encode_lanes(
            flat, plane, starts, freqs, base, sizes, tables.offsets, lanes
        )
        if bad >= 0:
            raise _outside(bad, symbols, plane)
        return states.astype("<u4").tobytes() + body.astype("<u2").tobytes()
    _, steps, channel = _layout(symbols.shape, lanes)
    symbol = symbols.reshape(-1).astype(np.int64) - tables.offsets[channel]
    outside = np.flatnonzero((symbol < 0) | (symbol >= sizes[channel]))
    if len(outside):
        raise _outside(int(outside[0]), symbols, plane)
    index = base[channel] + symbol
    start = _padded(starts[index], steps, lanes, 0)
    freq = _padded(freqs[index], steps, lanes, _TOTAL)
    limit = freq << np.uint64(16)  # renormalise at or above this
    shift, mask = np.uint64(_WORD), np.uint64(_MASK)
    x = np.full(lanes, _LOW, dtype=np.uint64)
    words: list[np.ndarray] = []
    for s in range(steps - 1, -1, -1):
        emit = x >= limit[s]
        words.append(x[emit] & mask)
        x[emit] >>= shift
        q, r = np.divmod(x, freq[s])
        x = (q << shift) + r + start[s]
    # the decoder reads the last step's words first, and within a step the lanes backwards
    body = np.concatenate([w[::-1] for w in reversed(words)]) if words else np.empty(0)
    return x.astype("<u4").tobytes() + body.astype("<u2").tobytes()


def decode(
    stream: bytes,
    shape: tuple[int, ...],
    tables: CodingTables,
    lanes: int = DEFAULT_LANES,
    kernel: Kernel = "auto",
) -> np.ndarray:
    """The symbols ``shape`` (one sample, ``(C, ...)``) that ``stream`` codes, int32.

    Raises :class:`WireCompressionError` when the stream is short, too long, odd or not
    what :func:`encode` writes for these tables (the lanes must end where they started)."""
    if not 1 <= lanes <= MAX_LANES:
        raise WireCompressionError(f"lanes must be 1 to {MAX_LANES}")
    if len(shape) < 1 or shape[0] != tables.channels:
        raise WireCompressionError(f"shape {shape} does not fit {tables.channels} channels")
    head = 4 * lanes
    if len(stream) < head or (len(stream) - head) % 2:
        raise WireCompressionError("the entropy-coded stream is truncated")
    n = math.prod(shape)
    steps = -(-n // lanes)
    if steps > MAX_STEPS:
        raise WireCompressionError(f"{steps} steps a stream; the limit is {MAX_STEPS}")
    if len(stream) - head > 2 * steps * lanes:
        raise WireCompressionError("the entropy-coded stream is longer than its symbols need")
    x = np.frombuffer(stream, dtype="<u4", count=lanes).astype(np.uint64)
    if (x < _LOW).any():
        raise WireCompressionError("the entropy-coded stream holds an impossible coder state")
    compiled = _use_compiled(kernel)
    if compiled is not None:
        starts, freqs, base, sizes, _ = tables._arrays
        out = np.empty(n, dtype=np.int32)
        status = compiled.decode_lanes(
            x.astype(np.int64),
            np.frombuffer(stream, dtype="<u2", offset=head).astype(np.uint16, copy=False),
            max(math.prod(shape[1:]), 1),
            starts,
            freqs,
            base,
            sizes,
            tables.offsets,
            out,
        )
        if status == compiled.ENDS_EARLY:
            raise WireCompressionError("the entropy-coded stream ends before its symbols")
        if status != compiled.DECODED:
            raise WireCompressionError("the entropy-coded stream does not decode to its symbols")
        return out.reshape(shape)
    starts, freqs, base, keys = tables._flat()
    _, _, channel = _layout(shape, lanes)
    words = np.frombuffer(stream, dtype="<u2", offset=head).astype(np.uint64)
    # search keys of each step's lanes; past the last element a key no slot reaches, so
    # that lane decodes the identity symbol (appended at the end of the flat tables)
    channels = _padded(channel.astype(np.uint64) << np.uint64(17), steps, lanes, 1 << 40)
    keys = np.append(keys, 1 << 40).astype(np.uint64)
    starts, freqs = np.append(starts, 0), np.append(freqs, _TOTAL)
    starts, freqs = starts.astype(np.uint64), freqs.astype(np.uint64)
    shift, low = np.uint64(PRECISION), np.uint64(_LOW)
    slot_mask = np.uint64(_TOTAL - 1)
    out = np.zeros((steps, lanes), dtype=np.int64)
    read = 0
    for s in range(steps):
        slot = x & slot_mask
        j = np.searchsorted(keys, channels[s] + slot, side="right") - 1
        out[s] = j
        x = freqs[j] * (x >> shift) + slot - starts[j]
        renorm = np.flatnonzero(x < low)[::-1]
        if read + len(renorm) > len(words):
            raise WireCompressionError("the entropy-coded stream ends before its symbols")
        x[renorm] = (x[renorm] << np.uint64(_WORD)) | words[read : read + len(renorm)]
        read += len(renorm)
    if read != len(words) or (x != _LOW).any():
        raise WireCompressionError("the entropy-coded stream does not decode to its symbols")
    symbols = out.reshape(-1)[:n] - base[channel] + tables.offsets[channel]
    return symbols.astype(np.int32).reshape(shape)
