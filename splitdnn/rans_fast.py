"""Compiled kernels of :mod:`splitdnn.rans` (numba): the same interleaved rANS, one element
at a time instead of one numpy step over all lanes.

Why: the numpy coder pays ~10 numpy calls per step, which on a weak device (0.11 of a core)
cost as much as the device's model. numba compiles these loops to machine code and, unlike
a Rust or C coder, installs from wheels on both x86_64 and aarch64 (the arm64 head). The
streams are byte for byte the numpy coder's: the encoder walks the steps backwards and the
lanes forwards and emits its words in that order, which reversed is the order the decoder
reads them (steps forwards, lanes backwards); elements past the last are skipped, which is
what the numpy coder's identity symbol does. Everything is int64: a state stays below
``2**32`` even on a hostile stream, so nothing overflows.

:mod:`splitdnn.rans` imports this module only when numba imports (else it keeps numpy), and
checks every argument before calling a kernel; a kernel reports a bad stream by a status,
which the caller turns into the same error the numpy coder raises.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_LOW = 1 << 16
_MASK = (1 << 16) - 1
#: Statuses of :func:`decode_lanes`.
DECODED, ENDS_EARLY, NOT_ITS_SYMBOLS = 0, 1, 2


@njit(cache=True, nogil=True)
def encode_lanes(
    symbols: np.ndarray,
    plane: int,
    starts: np.ndarray,
    freqs: np.ndarray,
    base: np.ndarray,
    sizes: np.ndarray,
    offsets: np.ndarray,
    lanes: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Final states (int64, one a lane), the words in the decoder's order (uint16), and -1,
    or the flat index of the first symbol outside its channel's range."""
    n = symbols.size
    steps = (n + lanes - 1) // lanes
    x = np.full(lanes, _LOW, dtype=np.int64)
    words = np.empty(n, dtype=np.uint16)
    count = 0
    for s in range(steps - 1, -1, -1):
        for lane in range(lanes):
            i = s * lanes + lane
            if i >= n:
                break
            c = i // plane
            k = np.int64(symbols[i]) - offsets[c]
            if k < 0 or k >= sizes[c]:
                return x, words[:0], i
            start = starts[base[c] + k]
            freq = freqs[base[c] + k]
            v = x[lane]
            if v >= freq << 16:
                words[count] = v & _MASK
                count += 1
                v >>= 16
            x[lane] = ((v // freq) << 16) + v % freq + start
    return x, words[:count][::-1].copy(), -1


@njit(cache=True, nogil=True)
def decode_lanes(
    states: np.ndarray,
    words: np.ndarray,
    plane: int,
    starts: np.ndarray,
    freqs: np.ndarray,
    base: np.ndarray,
    sizes: np.ndarray,
    offsets: np.ndarray,
    out: np.ndarray,
) -> int:
    """Decode ``out.size`` symbols into ``out`` (int32) from ``states`` (int64, one a lane,
    each at least ``2**16``) and ``words``; a status: :data:`DECODED`, :data:`ENDS_EARLY`
    (a lane needs a word the stream lacks) or :data:`NOT_ITS_SYMBOLS` (words left over, or
    a lane not back at its start state)."""
    x = states.copy()
    lanes = x.size
    n = out.size
    steps = (n + lanes - 1) // lanes
    read = 0
    for s in range(steps):
        for lane in range(lanes - 1, -1, -1):
            i = s * lanes + lane
            if i >= n:
                continue
            c = i // plane
            b = base[c]
            v = x[lane]
            slot = v & _MASK
            lo, hi = 0, sizes[c]  # the symbol k with starts[b + k] <= slot < starts[b + k + 1]
            while hi - lo > 1:
                mid = (lo + hi) >> 1
                if starts[b + mid] <= slot:
                    lo = mid
                else:
                    hi = mid
            v = freqs[b + lo] * (v >> 16) + slot - starts[b + lo]
            if v < _LOW:
                if read >= words.size:
                    return ENDS_EARLY
                v = (v << 16) | np.int64(words[read])
                read += 1
            x[lane] = v
            out[i] = lo + offsets[c]
    if read != words.size:
        return NOT_ITS_SYMBOLS
    for lane in range(lanes):
        if x[lane] != _LOW:
            return NOT_ITS_SYMBOLS
    return DECODED
