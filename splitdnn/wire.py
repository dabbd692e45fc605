"""The tensor envelope: the only code that writes or reads the bytes the device sends the edge.

Format (version 1). An envelope is one msgpack map, media type ``application/vnd.msgpack``,
no extension types and no pickle, whose keys are exactly, in this order:

====================  ==========================================================================
``v``                 format version, the integer 1; a decoder refuses any other
``bundle``            id of the sender's bundle (``Manifest.bundle_id``), so the receiver can
                      refuse a bottleneck from a different model
``dtype``             Open Inference Protocol name of the payload's element type:
                      ``FP32``, ``FP16`` or ``UINT8``
``shape``             list of 1 to 8 non-negative integers; the first is the batch size N
``quant``             ``fp32``, ``fp16``, ``uint8`` or ``uint4`` (must match ``dtype``;
                      ``uint4`` is written as ``UINT8``, two values a byte)
``scale``             ``uint8``/``uint4`` only: N positive finite floats, else nil
``zero_point``        ``uint8``/``uint4`` only: N integers in 0..255 (0..15), else nil;
                      x = (q - zero_point) * scale
``compression``       ``none`` or ``zstd``
``raw_size``          payload bytes after decompression: exactly prod(shape) * itemsize;
                      ``uint4``: ceil(prod(shape) / 2), the first value of each byte in its
                      high nibble, a last odd value's low nibble zero
``data``              the payload: little-endian, C order; one zstd frame when compressed
====================  ==========================================================================

The decoder checks, in this order and *before* allocating anything the size of the payload:
the total length, the header fields, the bundle and per-sample shape the receiver expects,
the batch size, ``raw_size`` against its limit; then it decompresses at most
``raw_size + 1`` bytes with a zstd window no larger than the payload needs (a zstd bomb stops
there), and :meth:`Envelope.to_array` refuses NaN and infinity in the float32 result (scales
are checked in float32 too, so 1e300 or 1e-300 never reach the model). It raises one named
:class:`~splitdnn.errors.WireError` subclass per failure. Byte counts are exact:
the size of an envelope is ``len(encode(...))``. No torch: the device image needs none.

Format version 2: an entropy-coded bottleneck, fewer bytes than uint8 + zstd. The same
msgpack rules; the keys are exactly, in this order:

====================  ==========================================================================
``v``                 the integer 2
``bundle``            as in version 1
``shape``             list of 2 to 8 non-negative integers ``[N, C, ...]``
``coder``             ``rans16``: :mod:`splitdnn.rans`, 16-bit probabilities
``lanes``             interleaved coder states per stream, 1 to ``rans.MAX_LANES``
``streams``           N msgpack bin, one coded stream per sample
====================  ==========================================================================

One optional key, after ``bundle``: ``rate``, the name (1 to 32 characters) of the rate of a
ladder bundle the streams were coded at, so the receiver decodes with that rate's tables
and runs that rate's server part; without it, the receiver's default. A rate the receiver
does not hold is :class:`~splitdnn.errors.UnknownRateError` naming the ones it does.

The integers are ``round(y − median)`` of the device's latent ``y`` per channel, coded with
the bundle's tables (:class:`~splitdnn.rans.CodingTables`), which the receiver supplies: the
envelope carries no model. Before decoding, the decoder checks the header, the bundle, the
per-sample shape (and the channel count against its tables), the batch, the decoded size
against ``max_raw_bytes``, the steps a stream takes (elements / lanes) against
``rans.MAX_STEPS`` and every stream's length against the most its symbols can take;
decoding then runs that fixed number of steps, so a hostile stream costs at most that and
ends in :class:`~splitdnn.errors.WireCompressionError`.
:meth:`Envelope.to_array` gives ``integers + median`` in float32.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgpack
import numpy as np
import zstandard

from splitdnn import rans
from splitdnn.errors import (
    BundleMismatchError,
    UnknownRateError,
    WireCompressionError,
    WireError,
    WireLimitError,
    WireSizeError,
    WireValueError,
    WireVersionError,
)

#: Media type of an envelope in HTTP bodies.
CONTENT_TYPE = "application/vnd.msgpack"
#: The format version of plain tensors (fp32, fp16, uint8, uint4).
FORMAT_VERSION = 1
#: The format version of an entropy-coded bottleneck.
ENTROPY_VERSION = 2
#: Every format version this module reads.
VERSIONS = (FORMAT_VERSION, ENTROPY_VERSION)
#: Entropy coders of version 2, by name.
CODERS = ("rans16",)
#: Default limits: an envelope (or its decompressed payload) larger than this is refused.
MAX_ENVELOPE_BYTES = 64 * 1024 * 1024
MAX_RAW_BYTES = 64 * 1024 * 1024
#: zstd window limit, so a hostile frame cannot make the decoder reserve gigabytes; the
#: decoder allows less: the payload's own size rounded up, at least MIN_ZSTD_WINDOW.
MAX_ZSTD_WINDOW = 1 << 27
MIN_ZSTD_WINDOW = 1 << 21
MAX_NDIM = 8
MAX_BATCH = 1024

#: Open Inference Protocol datatype -> numpy dtype of the payload.
DTYPES: dict[str, np.dtype] = {
    "FP32": np.dtype("<f4"),
    "FP16": np.dtype("<f2"),
    "UINT8": np.dtype("u1"),
}
#: Quantisation scheme -> the OIP datatype its payload is written in.
QUANTISATIONS: dict[str, str] = {"fp32": "FP32", "fp16": "FP16", "uint8": "UINT8", "uint4": "UINT8"}
#: The integer quantisations (per sample, asymmetric: a scale and a zero point) and their bits.
#: 4 bits cost today's default student no measurable top-1 and halve the bytes of 8.
INTEGER_BITS: dict[str, int] = {"uint8": 8, "uint4": 4}
COMPRESSIONS: tuple[str, ...] = ("none", "zstd")
#: The quantisation of an entropy-coded envelope (format version 2).
ENTROPY = "entropy"
#: The same choices as types, for settings and query parameters (tests/test_wire.py keeps
#: them equal to the tables above). What the head may send split as: a version-1
#: quantisation or the entropy-coded envelope (a bundle with coding tables).
Quantisation = Literal["fp32", "fp16", "uint8", "uint4"]
SplitQuantisation = Literal["fp32", "fp16", "uint8", "uint4", "entropy"]
Compression = Literal["none", "zstd"]

_KEYS = (
    "v",
    "bundle",
    "dtype",
    "shape",
    "quant",
    "scale",
    "zero_point",
    "compression",
    "raw_size",
    "data",
)
_KEYS_V2 = ("v", "bundle", "shape", "coder", "lanes", "streams")
#: The optional key of version 2: the ladder rate the streams were coded at.
RATE_KEY = "rate"
MAX_RATE_NAME = 32
#: A receiver's ladder for :func:`decode`: rate -> (its coding tables, its sample shape).
Ladder = Mapping[str, tuple[rans.CodingTables, tuple[int, ...]]]


@dataclass(frozen=True)
class Envelope:
    """A decoded envelope: the header fields plus the raw (decompressed) payload."""

    version: int
    bundle_id: str
    dtype: str
    shape: tuple[int, ...]
    quantisation: str
    scale: tuple[float, ...] | None
    zero_point: tuple[int, ...] | None
    compression: str
    raw_size: int
    payload: bytes
    #: Length of the encoded envelope in bytes, i.e. what crossed the link.
    size: int
    #: Version 2 only: the receiver's per-channel medians the integers count from.
    medians: tuple[float, ...] | None = None
    #: Version 2 only: the ladder rate the sender named (None: the receiver's default).
    rate: str | None = None

    def to_array(self) -> np.ndarray:
        """The float32 tensor the server part expects (dequantised when ``uint8``/``uint4``; for an
        entropy-coded bottleneck, ``integers + median``).

        Raises :class:`WireValueError` if any element is NaN or infinite in float32 (a NaN
        payload, or a scale large enough to overflow).
        """
        if self.quantisation == ENTROPY:
            symbols = np.frombuffer(self.payload, dtype="<i4").reshape(self.shape)
            shape = (1, len(self.medians or ())) + (1,) * (len(self.shape) - 2)
            medians = np.asarray(self.medians, dtype=np.float32).reshape(shape)
            return (symbols.astype(np.float32) + medians).astype(np.float32)
        if self.quantisation == "uint4":
            values = unpack_nibbles(self.payload, math.prod(self.shape)).reshape(self.shape)
        else:
            values = np.frombuffer(self.payload, dtype=DTYPES[self.dtype]).reshape(self.shape)
        if self.quantisation not in INTEGER_BITS:
            result = values.astype(np.float32)
        else:
            n = self.shape[0]
            scale = np.asarray(self.scale, dtype=np.float32).reshape(
                (n,) + (1,) * (len(self.shape) - 1)
            )
            zero = np.asarray(self.zero_point, dtype=np.float32).reshape(scale.shape)
            with np.errstate(over="ignore", invalid="ignore"):
                result = ((values.astype(np.float32) - zero) * scale).astype(np.float32)
        if not np.isfinite(result).all():
            raise WireValueError("the tensor holds NaN or infinity (in float32)")
        return result


def quantise_uint(tensor: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric ``bits``-bit quantisation per sample (axis 0), the sample's range cut into
    2**bits − 1 steps: returns (q as uint8, scale, zero_point).

    The range always includes 0, so a constant tensor keeps a positive scale (a zero
    tensor gets scale 1) and nothing divides by zero.
    """
    top = (1 << bits) - 1
    x = np.asarray(tensor, dtype=np.float32)
    if x.ndim == 0:
        raise WireError(f"{bits}-bit quantisation needs a batch axis")
    if not np.all(np.isfinite(x)):
        raise WireError("cannot quantise a tensor holding NaN or infinity")
    flat = x.reshape(x.shape[0], math.prod(x.shape[1:]))
    if flat.shape[1] == 0:
        lo = hi = np.zeros(x.shape[0], dtype=np.float32)
    else:
        lo = np.minimum(flat.min(axis=1), 0.0)
        hi = np.maximum(flat.max(axis=1), 0.0)
    scale = ((hi.astype(np.float64) - lo) / top).astype(np.float32)
    scale[~(scale > 0)] = 1.0
    zero = np.clip(np.round(-lo / scale), 0, top).astype(np.int64)
    q = np.round(flat / scale[:, None]) + zero[:, None]
    return np.clip(q, 0, top).astype(np.uint8).reshape(x.shape), scale, zero


def pack_nibbles(values: np.ndarray) -> bytes:
    """4-bit values (0..15) two a byte, the first in the high nibble (C order)."""
    flat = np.asarray(values, dtype=np.uint8).reshape(-1)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return ((flat[0::2] << 4) | flat[1::2]).astype(np.uint8).tobytes()


def unpack_nibbles(payload: bytes, count: int) -> np.ndarray:
    """The first ``count`` 4-bit values of :func:`pack_nibbles`' bytes, as uint8."""
    packed = np.frombuffer(payload, dtype=np.uint8)
    out = np.empty(packed.size * 2, dtype=np.uint8)
    out[0::2], out[1::2] = packed >> 4, packed & 0x0F
    return out[:count]


def encode(
    tensor: np.ndarray,
    *,
    bundle_id: str,
    quantisation: str = "fp32",
    compression: str = "none",
    level: int = 3,
) -> bytes:
    """Pack a float tensor (batch first) into an envelope; ``len()`` of the result is exact."""
    if quantisation not in QUANTISATIONS:
        raise WireError(f"unknown quantisation {quantisation!r}; choose from {list(QUANTISATIONS)}")
    if compression not in COMPRESSIONS:
        raise WireError(f"unknown compression {compression!r}; choose from {list(COMPRESSIONS)}")
    x = np.asarray(tensor)
    if x.ndim < 1 or x.ndim > MAX_NDIM:
        raise WireError(f"a tensor needs 1 to {MAX_NDIM} axes, got {x.ndim}")
    dtype = QUANTISATIONS[quantisation]
    scale: list[float] | None = None
    zero: list[int] | None = None
    if quantisation in INTEGER_BITS:
        q, s, z = quantise_uint(x, INTEGER_BITS[quantisation])
        scale, zero = [float(v) for v in s], [int(v) for v in z]
        raw = pack_nibbles(q) if quantisation == "uint4" else q.tobytes()
    else:
        raw = np.ascontiguousarray(x.astype(DTYPES[dtype])).tobytes()
    data = raw
    if compression == "zstd":
        data = zstandard.ZstdCompressor(level=level).compress(raw)
    header = {
        "v": FORMAT_VERSION,
        "bundle": str(bundle_id),
        "dtype": dtype,
        "shape": [int(d) for d in x.shape],
        "quant": quantisation,
        "scale": scale,
        "zero_point": zero,
        "compression": compression,
        "raw_size": len(raw),
        "data": data,
    }
    return msgpack.packb(header, use_bin_type=True)


def encode_entropy(
    latent: np.ndarray,
    *,
    bundle_id: str,
    tables: rans.CodingTables,
    lanes: int = rans.DEFAULT_LANES,
    rate: str | None = None,
) -> bytes:
    """Pack a latent ``(N, C, ...)`` as a version 2 envelope: per channel
    ``round(y − median)``, clamped to the tables' range, entropy-coded per sample in
    ``lanes`` lanes (more where a sample would otherwise take over ``rans.MAX_STEPS``);
    ``rate`` names the ladder rate whose tables these are (omitted when None)."""
    if rate is not None and not 0 < len(rate) <= MAX_RATE_NAME:
        raise WireError(f"a rate name has 1 to {MAX_RATE_NAME} characters, got {rate!r}")
    y = np.asarray(latent)
    if not 2 <= y.ndim <= MAX_NDIM or y.shape[1] != tables.channels:
        raise WireError(
            f"an entropy-coded latent is (N, {tables.channels}, ...), got {list(y.shape)}"
        )
    if not np.isfinite(y).all():
        raise WireError("cannot entropy-code a latent holding NaN or infinity")
    symbols = tables.symbols(y)
    try:
        lanes = rans.lanes_for(math.prod(y.shape[1:]), lanes)
    except ValueError as exc:
        raise WireError(str(exc)) from None
    header: dict[str, Any] = {"v": ENTROPY_VERSION, "bundle": str(bundle_id)}
    if rate is not None:
        header[RATE_KEY] = rate
    header |= {
        "shape": [int(d) for d in y.shape],
        "coder": CODERS[0],
        "lanes": int(lanes),
        "streams": [rans.encode(sample, tables, lanes) for sample in symbols],
    }
    return msgpack.packb(header, use_bin_type=True)


def decode(
    data: bytes,
    *,
    max_envelope_bytes: int = MAX_ENVELOPE_BYTES,
    max_raw_bytes: int = MAX_RAW_BYTES,
    max_batch: int = MAX_BATCH,
    sample_shape: tuple[int, ...] | None = None,
    bundle_id: str | None = None,
    tables: rans.CodingTables | None = None,
    rates: Ladder | None = None,
) -> Envelope:
    """Check and unpack an envelope; every failure is a :class:`WireError` subclass (or
    :class:`UnknownRateError` for a rate the receiver does not hold).

    ``sample_shape`` (the shape after the batch axis) and ``bundle_id``, when given, are
    checked before the payload is decompressed: a bottleneck for another model costs the
    receiver no allocation (:class:`BundleMismatchError`, :class:`WireSizeError`). A batch
    over ``max_batch``, or sizes over the byte limits, raise :class:`WireLimitError`.
    ``tables``: the receiver's entropy-coding tables; a version 2 envelope needs them.
    ``rates``: a ladder receiver's tables and sample shape per rate, for a version 2
    envelope that names its rate (then ``tables`` and ``sample_shape`` are the default's).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError("an envelope must be bytes")
    size = len(data)
    if size > max_envelope_bytes:
        raise WireLimitError(f"envelope is {size} bytes; the limit is {max_envelope_bytes}")
    try:
        fields = msgpack.unpackb(
            bytes(data),
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=max_envelope_bytes,
            max_str_len=4096,
            max_array_len=MAX_BATCH,
            max_map_len=64,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types (ValueError, StackError, ...)
        raise WireError(f"not a msgpack envelope: {type(exc).__name__}: {exc}") from exc
    if not isinstance(fields, dict):
        raise WireError(f"an envelope is a msgpack map, got {type(fields).__name__}")
    version = fields.get("v")
    if not _is_int(version):
        raise WireError("the envelope has no integer format version 'v'")
    if version not in VERSIONS:
        raise WireVersionError(
            f"envelope format version {version} is not supported; speak {list(VERSIONS)}"
        )
    if version == ENTROPY_VERSION:
        rate = _rate(fields, rates)
        if rate is not None and rates is not None:
            tables, sample_shape = rates[rate]
        return _decode_entropy(
            fields, size, max_raw_bytes, max_batch, sample_shape, bundle_id, tables, rate
        )
    if set(fields) != set(_KEYS):
        missing = sorted(set(_KEYS) - set(fields))
        extra = sorted(map(str, set(fields) - set(_KEYS)))
        raise WireError(f"envelope keys do not match version 1: missing {missing}, extra {extra}")

    sender = _sender(fields)
    dtype = fields["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise WireError(f"unknown dtype {dtype!r}; expected one of {list(DTYPES)}")
    quant = fields["quant"]
    if not isinstance(quant, str) or quant not in QUANTISATIONS:
        raise WireError(f"unknown quantisation {quant!r}; expected one of {list(QUANTISATIONS)}")
    if QUANTISATIONS[quant] != dtype:
        raise WireError(f"quantisation {quant!r} is written as {QUANTISATIONS[quant]}, not {dtype}")
    compression = fields["compression"]
    if not isinstance(compression, str) or compression not in COMPRESSIONS:
        raise WireError(f"unknown compression {compression!r}; expected one of {COMPRESSIONS}")

    shape = _shape(fields, 1)
    _check_receiver(sender, shape, bundle_id, sample_shape)
    if shape[0] > max_batch:
        raise WireLimitError(f"batch of {shape[0]}; the limit is {max_batch} per request")
    raw_size = fields["raw_size"]
    if not _is_int(raw_size) or raw_size < 0:
        raise WireSizeError("'raw_size' must be a non-negative integer")
    if raw_size > max_raw_bytes:
        raise WireLimitError(f"declared raw size {raw_size} is over the limit {max_raw_bytes}")
    expected = payload_size(shape, quant)
    if expected != raw_size:
        raise WireSizeError(f"shape {shape} of {dtype} needs {expected} bytes, not {raw_size}")

    scale, zero = fields["scale"], fields["zero_point"]
    if quant in INTEGER_BITS:
        scale, zero = _check_quant_params(scale, zero, shape[0], quant)
    elif scale is not None or zero is not None:
        raise WireError(f"'scale' and 'zero_point' must be nil for {quant}")

    body = fields["data"]
    if not isinstance(body, bytes):
        raise WireError("'data' must be msgpack bin")
    payload = _decompress(body, raw_size) if compression == "zstd" else body
    if len(payload) != raw_size:
        raise WireSizeError(f"payload is {len(payload)} bytes; raw_size declares {raw_size}")
    return Envelope(
        version=version,
        bundle_id=sender,
        dtype=dtype,
        shape=tuple(shape),
        quantisation=quant,
        scale=scale,
        zero_point=zero,
        compression=compression,
        raw_size=raw_size,
        payload=payload,
        size=size,
    )


def _decode_entropy(
    fields: dict,
    size: int,
    max_raw_bytes: int,
    max_batch: int,
    sample_shape: tuple[int, ...] | None,
    bundle_id: str | None,
    tables: rans.CodingTables | None,
    rate: str | None = None,
) -> Envelope:
    """The version 2 checks (module docstring), then the streams decoded."""
    keys = set(_KEYS_V2) | ({RATE_KEY} if rate is not None else set())
    if set(fields) != keys:
        missing = sorted(keys - set(fields))
        extra = sorted(map(str, set(fields) - keys))
        raise WireError(f"envelope keys do not match version 2: missing {missing}, extra {extra}")
    if tables is None:
        raise WireVersionError(
            "an entropy-coded envelope (version 2) needs the bundle's coding tables, and "
            "this receiver's bundle has none; send version 1"
        )
    sender = _sender(fields)
    coder = fields["coder"]
    if not isinstance(coder, str) or coder not in CODERS:
        raise WireError(f"unknown coder {coder!r}; expected one of {list(CODERS)}")
    lanes = fields["lanes"]
    if not _is_int(lanes) or not 1 <= lanes <= rans.MAX_LANES:
        raise WireError(f"'lanes' must be an integer from 1 to {rans.MAX_LANES}")
    shape = _shape(fields, 2)
    _check_receiver(sender, shape, bundle_id, sample_shape)
    if shape[1] != tables.channels:
        raise WireSizeError(f"{shape[1]} channels; the coding tables have {tables.channels}")
    if shape[0] > max_batch:
        raise WireLimitError(f"batch of {shape[0]}; the limit is {max_batch} per request")
    raw_size = math.prod(shape) * 4
    if raw_size > max_raw_bytes:
        raise WireLimitError(f"decoded size {raw_size} is over the limit {max_raw_bytes}")
    streams = fields["streams"]
    if not isinstance(streams, list) or len(streams) != shape[0]:
        raise WireSizeError(f"'streams' must be a list of one bin per sample ({shape[0]})")
    per_sample = math.prod(shape[1:])
    steps = -(-per_sample // lanes)
    if steps > rans.MAX_STEPS:
        raise WireLimitError(
            f"{lanes} lanes for {per_sample} elements take {steps} steps a sample; the limit "
            f"is {rans.MAX_STEPS}"
        )
    longest = 4 * lanes + 2 * lanes * steps
    for stream in streams:
        if not isinstance(stream, bytes):
            raise WireError("every stream must be msgpack bin")
        if len(stream) > longest:
            raise WireSizeError(f"a stream of {len(stream)} bytes; its symbols take <= {longest}")
    symbols = (
        np.stack([rans.decode(stream, tuple(shape[1:]), tables, lanes) for stream in streams])
        if streams
        else np.zeros(shape, np.int32)
    )
    return Envelope(
        version=ENTROPY_VERSION,
        bundle_id=sender,
        dtype="INT32",
        shape=tuple(shape),
        quantisation=ENTROPY,
        scale=None,
        zero_point=None,
        compression=coder,
        raw_size=raw_size,
        payload=symbols.astype("<i4").tobytes(),
        size=size,
        medians=tuple(float(m) for m in tables.medians),
        rate=rate,
    )


def _rate(fields: dict, rates: Ladder | None) -> str | None:
    """The rate a version 2 envelope names (checked against the receiver's), or None."""
    if RATE_KEY not in fields:
        return None
    rate = fields[RATE_KEY]
    if not isinstance(rate, str) or not 0 < len(rate) <= MAX_RATE_NAME:
        raise WireError(f"'rate' must be a rate name of 1 to {MAX_RATE_NAME} characters")
    if rates is None or rate not in rates:
        held = f"the rates {sorted(rates)}" if rates else "no ladder of rates"
        raise UnknownRateError(
            f"the envelope's rate {rate!r} is not here: this receiver holds {held}"
        )
    return rate


def payload_size(shape: tuple[int, ...] | list[int], quantisation: str) -> int:
    """Bytes of a version 1 payload before compression (``raw_size``)."""
    count = math.prod(shape)
    if quantisation == "uint4":
        return (count + 1) // 2
    return count * DTYPES[QUANTISATIONS[quantisation]].itemsize


def envelope_size(shape: tuple[int, ...] | list[int], quantisation: str = "fp32") -> int:
    """Size of an uncompressed envelope for ``shape``: exact for fp32 and fp16, an upper
    bound for uint8 and uint4 (a zero point below 128 packs one byte shorter). zstd makes it
    smaller.

    Used to seed the latency model before any real envelope was sent.
    """
    probe = np.full(tuple(shape), -1.0, dtype=np.float32)
    probe.reshape(-1)[::2] = 0.5  # zero point 170: as long as a msgpack zero point gets
    return len(encode(probe, bundle_id="0" * 16, quantisation=quantisation))


def decode_array(data: bytes, **options: Any) -> tuple[Envelope, np.ndarray]:
    """Decode and dequantise in one call: (envelope, float32 tensor); ``options`` are
    :func:`decode`'s (limits, expected bundle and shape, coding tables)."""
    envelope = decode(data, **options)
    return envelope, envelope.to_array()


def _sender(fields: dict) -> str:
    """The sender's bundle id, checked (both versions)."""
    sender = fields["bundle"]
    if not isinstance(sender, str) or len(sender) > 64:
        raise WireError("'bundle' must be a bundle id string of at most 64 characters")
    return sender


def _shape(fields: dict, min_ndim: int) -> list[int]:
    """The envelope's shape: ``min_ndim`` to ``MAX_NDIM`` non-negative integers."""
    shape = fields["shape"]
    if (
        not isinstance(shape, list)
        or not min_ndim <= len(shape) <= MAX_NDIM
        or not all(_is_int(d) and d >= 0 for d in shape)
    ):
        raise WireError(f"'shape' must be {min_ndim} to {MAX_NDIM} non-negative integers")
    return shape


def _check_receiver(
    sender: str, shape: list[int], bundle_id: str | None, sample_shape: tuple[int, ...] | None
) -> None:
    """The envelope is for this receiver: same bundle, the sample shape it expects."""
    if bundle_id is not None and bundle_id != sender:
        raise BundleMismatchError(
            f"the sender holds bundle {sender!r}; the receiver holds {bundle_id!r}"
        )
    if sample_shape is not None and tuple(shape[1:]) != tuple(sample_shape):
        raise WireSizeError(
            f"sample shape {shape[1:]} does not match the expected {list(sample_shape)}"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_quant_params(
    scale: object, zero: object, batch: int, quant: str
) -> tuple[tuple[float, ...], tuple[int, ...]]:
    top = (1 << INTEGER_BITS[quant]) - 1
    if not isinstance(scale, list) or not isinstance(zero, list):
        raise WireError(f"{quant} envelopes need 'scale' and 'zero_point' lists")
    if len(scale) != batch or len(zero) != batch:
        raise WireSizeError(f"{quant} needs one scale and zero point per sample ({batch})")
    if not all(isinstance(s, float) and math.isfinite(s) and s > 0 for s in scale):
        raise WireValueError(f"every {quant} scale must be a positive finite float")
    with np.errstate(over="ignore", under="ignore"):
        as_float32 = np.asarray(scale, dtype=np.float64).astype(np.float32)
    if not (np.isfinite(as_float32).all() and (as_float32 > 0).all()):
        raise WireValueError(f"every {quant} scale must be positive and finite in float32")
    if not all(_is_int(z) and 0 <= z <= top for z in zero):
        raise WireError(f"every {quant} zero point must be an integer in 0..{top}")
    return tuple(scale), tuple(zero)


def _decompress(body: bytes, raw_size: int) -> bytes:
    """Inflate one zstd frame, reading at most ``raw_size + 1`` bytes so bombs stop early."""
    window = min(MAX_ZSTD_WINDOW, max(MIN_ZSTD_WINDOW, 1 << max(raw_size - 1, 1).bit_length()))
    dctx = zstandard.ZstdDecompressor(max_window_size=window)
    out = bytearray()
    try:
        with dctx.stream_reader(io.BytesIO(body), read_across_frames=False) as reader:
            while len(out) <= raw_size:
                chunk = reader.read(min(raw_size + 1 - len(out), 1 << 20) or 1)
                if not chunk:
                    break
                out += chunk
    except zstandard.ZstdError as exc:
        raise WireCompressionError(f"the zstd payload is corrupt: {exc}") from exc
    if len(out) > raw_size:
        raise WireCompressionError(f"the zstd payload inflates past its declared {raw_size} bytes")
    return bytes(out)
