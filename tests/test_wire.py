"""The envelope: exact bytes, round trips, and hostile inputs rejected with named errors."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from splitdnn import errors, wire

BUNDLE = "0123456789abcdef"


def header(**overrides: object) -> dict:
    """A valid uint8 envelope map for a [1, 4] tensor, with fields overridden."""
    fields = {
        "v": 1,
        "bundle": BUNDLE,
        "dtype": "UINT8",
        "shape": [1, 4],
        "quant": "uint8",
        "scale": [0.5],
        "zero_point": [3],
        "compression": "none",
        "raw_size": 4,
        "data": bytes([0, 3, 4, 255]),
    }
    fields.update(overrides)
    return fields


def pack(fields: dict) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


# --- exact bytes and byte counts --------------------------------------------------------


def test_encoding_is_pinned_byte_for_byte() -> None:
    data = wire.encode(np.array([[1.0, -2.0]], np.float32), bundle_id="ab")
    expected = (
        b"\x8a"  # map of 10
        b"\xa1v\x01"
        b"\xa6bundle\xa2ab"
        b"\xa5dtype\xa4FP32"
        b"\xa5shape\x92\x01\x02"
        b"\xa5quant\xa4fp32"
        b"\xa5scale\xc0"
        b"\xaazero_point\xc0"
        b"\xabcompression\xa4none"
        b"\xa8raw_size\x08"
        b"\xa4data\xc4\x08\x00\x00\x80?\x00\x00\x00\xc0"
    )
    assert data == expected


def test_decoder_accepts_keys_in_any_order() -> None:
    fields = header()
    shuffled = pack(dict(reversed(list(fields.items()))))
    assert wire.decode(shuffled).payload == wire.decode(pack(fields)).payload


def test_size_is_the_exact_byte_count() -> None:
    x = np.random.default_rng(0).normal(size=(1, 4, 8, 8)).astype(np.float32)
    data = wire.encode(x, bundle_id=BUNDLE, quantisation="uint8")
    assert wire.decode(data).size == len(data)
    assert wire.envelope_size((1, 4, 8, 8), "uint8") == len(data)  # zero point ≥ 128 here
    assert wire.envelope_size((1, 4, 8, 8), "fp32") == len(wire.encode(x, bundle_id=BUNDLE))


@pytest.mark.parametrize(("quant", "itemsize"), [("fp32", 4), ("fp16", 2), ("uint8", 1)])
def test_payload_is_itemsize_times_elements(quant: str, itemsize: int) -> None:
    x = np.ones((2, 3, 5), np.float32)
    envelope = wire.decode(wire.encode(x, bundle_id=BUNDLE, quantisation=quant))
    assert envelope.raw_size == len(envelope.payload) == 30 * itemsize
    assert envelope.dtype == wire.QUANTISATIONS[quant]


@pytest.mark.parametrize(("count", "size"), [(30, 15), (31, 16), (1, 1), (0, 0)])
def test_uint4_packs_two_values_a_byte(count: int, size: int) -> None:
    x = np.linspace(-1, 2, count, dtype=np.float32).reshape(1, count)
    envelope = wire.decode(wire.encode(x, bundle_id=BUNDLE, quantisation="uint4"))
    assert envelope.raw_size == len(envelope.payload) == size
    assert wire.payload_size((1, count), "uint4") == size
    assert envelope.dtype == "UINT8" and envelope.quantisation == "uint4"
    values = np.arange(16)
    assert wire.unpack_nibbles(wire.pack_nibbles(values), 16).tolist() == values.tolist()
    assert wire.pack_nibbles(np.array([1, 2, 3])) == bytes([0x12, 0x30])  # first value high


# --- round trips ---------------------------------------------------------------------------

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
tensors = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6),
    elements=finite,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=tensors, compression=st.sampled_from(wire.COMPRESSIONS))
def test_fp32_round_trip_is_exact(x: np.ndarray, compression: str) -> None:
    data = wire.encode(x, bundle_id=BUNDLE, compression=compression)
    envelope, y = wire.decode_array(data)
    assert envelope.shape == x.shape and envelope.bundle_id == BUNDLE
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("quantisation", list(wire.INTEGER_BITS))
@settings(max_examples=150, deadline=None)
@given(x=tensors, compression=st.sampled_from(wire.COMPRESSIONS))
def test_integer_round_trip_is_within_half_a_step(
    quantisation: str, x: np.ndarray, compression: str
) -> None:
    """uint8 and uint4: each sample's range (with 0) in 2**bits − 1 steps, off by half one."""
    envelope, y = wire.decode_array(
        wire.encode(x, bundle_id=BUNDLE, quantisation=quantisation, compression=compression)
    )
    assert y.shape == x.shape and y.dtype == np.float32
    steps = (1 << wire.INTEGER_BITS[quantisation]) - 1
    for i, scale in enumerate(envelope.scale or ()):
        span = max(float(x[i].max(initial=0)), 0) - min(float(x[i].min(initial=0)), 0)
        assert scale > 0 and (scale == 1.0 or scale == pytest.approx(span / steps, rel=1e-5))
        assert np.all(np.abs(y[i] - x[i]) <= scale * 0.5 + 1e-5 * (1 + np.abs(x[i])))


@settings(max_examples=100, deadline=None)
@given(x=tensors)
def test_fp16_round_trip_is_fp16_rounding(x: np.ndarray) -> None:
    _, y = wire.decode_array(wire.encode(x, bundle_id=BUNDLE, quantisation="fp16"))
    np.testing.assert_array_equal(y, x.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("value", [0.0, 5.0, -3.25])
def test_constant_tensor_quantises_without_dividing_by_zero(value: float) -> None:
    x = np.full((2, 3, 3), value, np.float32)
    with np.errstate(all="raise"):
        envelope, y = wire.decode_array(wire.encode(x, bundle_id=BUNDLE, quantisation="uint8"))
    assert all(s > 0 and math.isfinite(s) for s in envelope.scale or ())
    np.testing.assert_allclose(y, x, atol=1e-6)


def test_quantisation_is_per_sample() -> None:
    x = np.stack([np.linspace(0, 1, 16), np.linspace(0, 1000, 16)]).astype(np.float32)
    envelope, y = wire.decode_array(wire.encode(x, bundle_id=BUNDLE, quantisation="uint8"))
    assert envelope.scale is not None and envelope.scale[0] < envelope.scale[1] / 100
    assert np.abs(y[0] - x[0]).max() < 0.01


def test_encoder_refuses_nan_for_uint8_and_unknown_options() -> None:
    with pytest.raises(errors.WireError):
        wire.encode(np.array([np.nan], np.float32), bundle_id=BUNDLE, quantisation="uint8")
    with pytest.raises(errors.WireError):
        wire.encode(np.zeros(2), bundle_id=BUNDLE, quantisation="int4")
    with pytest.raises(errors.WireError):
        wire.encode(np.zeros(2), bundle_id=BUNDLE, compression="gzip")
    with pytest.raises(errors.WireError):
        wire.encode(np.float32(1.0), bundle_id=BUNDLE)


# --- hostile inputs ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=512))
def test_random_bytes_are_rejected_cleanly(data: bytes) -> None:
    with pytest.raises(errors.WireError):
        wire.decode(data)


@settings(max_examples=200, deadline=None)
@given(
    value=st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats()
        | st.text()
        | st.binary(),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_random_msgpack_values_are_rejected_cleanly(value: object) -> None:
    with pytest.raises(errors.WireError):
        wire.decode(msgpack.packb(value, use_bin_type=True))


@settings(max_examples=200, deadline=None)
@given(
    key=st.sampled_from(list(header())),
    value=st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.lists(st.integers(-5, 300), max_size=5),
)
def test_a_mutated_field_never_escapes_as_another_error(key: str, value: object) -> None:
    data = pack(header(**{key: value}))
    try:
        envelope = wire.decode(data)
    except errors.WireError:
        return
    envelope.to_array()  # whatever passed the checks must be a usable tensor


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_deep_nesting_is_rejected(depth: int) -> None:
    with pytest.raises(errors.WireError):
        wire.decode(b"\x91" * depth + b"\xc0")


def test_unknown_version_is_rejected() -> None:
    with pytest.raises(errors.WireVersionError):
        wire.decode(pack(header(v=3)))
    with pytest.raises(errors.WireError, match="version 2"):  # entropy-coded: other keys
        wire.decode(pack(header(v=2)))


def test_missing_and_extra_keys_are_rejected() -> None:
    fields = header()
    del fields["scale"]
    with pytest.raises(errors.WireError, match="missing"):
        wire.decode(pack(fields))
    with pytest.raises(errors.WireError, match="extra"):
        wire.decode(pack(header(pickle=b"cos\nsystem\n")))


def test_shape_and_size_mismatches_are_rejected() -> None:
    with pytest.raises(errors.WireSizeError):
        wire.decode(pack(header(shape=[1, 5])))
    with pytest.raises(errors.WireSizeError):
        wire.decode(pack(header(raw_size=5)))
    with pytest.raises(errors.WireSizeError):
        wire.decode(pack(header(data=b"\x00" * 3)))
    with pytest.raises(errors.WireSizeError):
        wire.decode(pack(header(scale=[0.5, 0.5], zero_point=[1, 1])))


def test_huge_declared_sizes_are_rejected_before_allocating() -> None:
    huge = [1 << 20, 1 << 20, 1 << 20]
    with pytest.raises(errors.WireSizeError):
        wire.decode(pack(header(shape=huge, raw_size=1 << 60)))
    with pytest.raises(errors.WireSizeError):
        wire.decode(pack(header(shape=[1, 1 << 27], raw_size=1 << 27)), max_raw_bytes=1 << 20)
    with pytest.raises(errors.WireSizeError):
        wire.decode(b"\x00" * 2048, max_envelope_bytes=1024)
    # a bin header that claims 4 GiB but carries 4 bytes
    with pytest.raises(errors.WireError):
        wire.decode(b"\x81\xa4data\xc6\xff\xff\xff\xff\x00\x00\x00\x00")


def test_zstd_bomb_stops_at_the_declared_size() -> None:
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\x00" * (64 << 20))
    assert len(bomb) < 10_000
    fields = header(compression="zstd", data=bomb)
    # refused by the window the declared size allows, or at most raw_size + 1 bytes later
    with pytest.raises(errors.WireCompressionError, match=r"inflates past|too much memory"):
        wire.decode(pack(fields))


def test_zstd_short_or_corrupt_payload_is_rejected() -> None:
    short = zstandard.ZstdCompressor().compress(b"\x01\x02")
    with pytest.raises(errors.WireSizeError):
        wire.decode(pack(header(compression="zstd", data=short)))
    with pytest.raises(errors.WireCompressionError):
        wire.decode(pack(header(compression="zstd", data=b"\x28\xb5\x2f\xfd garbage")))


def test_bad_quantisation_parameters_are_rejected() -> None:
    for overrides in (
        {"scale": [0.0]},
        {"scale": [float("nan")]},
        {"scale": [-1.0]},
        {"zero_point": [256]},
        {"zero_point": [True]},
        {"scale": None},
        {"dtype": "FP32"},
    ):
        with pytest.raises(errors.WireError):
            wire.decode(pack(header(**overrides)))
    uint4 = header(quant="uint4", raw_size=2, data=bytes([0x03, 0x4F]))  # [1, 4] in 2 bytes
    np.testing.assert_allclose(wire.decode_array(pack(uint4))[1], [[-1.5, 0.0, 0.5, 6.0]])
    for overrides in ({"zero_point": [16]}, {"raw_size": 4, "data": bytes(4)}, {"data": b"\x00"}):
        with pytest.raises(errors.WireError):  # zero point over 15; 4-bit sizes are halved
            wire.decode(pack({**uint4, **overrides}))
    fp32 = header(dtype="FP32", quant="fp32", raw_size=16, data=b"\x00" * 16)
    wire.decode(pack({**fp32, "scale": None, "zero_point": None}))
    with pytest.raises(errors.WireError):
        wire.decode(pack(fp32))  # fp32 with a scale


def test_extension_types_and_non_maps_are_rejected() -> None:
    with pytest.raises(errors.WireError):
        wire.decode(msgpack.packb(msgpack.ExtType(1, b"x")))
    with pytest.raises(errors.WireError):
        wire.decode(pack(header(bundle=msgpack.ExtType(1, b"x"))))
    with pytest.raises(errors.WireError):
        wire.decode(msgpack.packb([1, 2, 3]))


def test_a_zstd_bomb_within_the_window_still_stops_at_the_declared_size() -> None:
    # streamed without a content size: the frame's window is small, its output is not
    compressor = zstandard.ZstdCompressor(level=3, write_content_size=False)
    bomb = compressor.compress(b"\x00" * (8 << 20))
    with pytest.raises(errors.WireCompressionError, match="inflates past"):
        wire.decode(pack(header(compression="zstd", data=bomb)))


def test_expected_bundle_shape_and_batch_are_checked_before_decompressing() -> None:
    # a corrupt payload behind each bad header: the header check must answer first
    corrupt = header(compression="zstd", data=b"\x28\xb5\x2f\xfd garbage")
    with pytest.raises(errors.BundleMismatchError):
        wire.decode(pack(corrupt), bundle_id="fedcba9876543210")
    with pytest.raises(errors.WireSizeError, match="sample shape"):
        wire.decode(pack(corrupt), sample_shape=(5,))
    many = header(
        shape=[1000, 4], raw_size=4000, scale=[0.5] * 1000, zero_point=[3] * 1000,
        compression="zstd", data=b"\x28\xb5\x2f\xfd garbage",
    )  # fmt: skip
    with pytest.raises(errors.WireLimitError, match="batch of 1000"):
        wire.decode(pack(many), sample_shape=(4,), max_batch=32)
    with pytest.raises(errors.WireLimitError):
        wire.decode(pack(header()), max_raw_bytes=3)
    with pytest.raises(
        errors.WireCompressionError
    ):  # all header checks passed: now it decompresses
        wire.decode(pack(corrupt), bundle_id=BUNDLE, sample_shape=(4,), max_batch=1)


@pytest.mark.parametrize("scale", [1e300, 1e-300, 3.5e38])
def test_scales_are_checked_in_float32(scale: float) -> None:
    with pytest.raises(errors.WireValueError):
        wire.decode(pack(header(scale=[scale])))


def test_a_scale_that_overflows_when_dequantised_is_refused() -> None:
    envelope = wire.decode(pack(header(scale=[3.0e38])))  # finite in float32 itself
    with pytest.raises(errors.WireValueError):
        envelope.to_array()  # (255 - 3) * 3e38 overflows


@pytest.mark.parametrize("quantisation", ["fp32", "fp16"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_payloads_are_refused(quantisation: str, bad: float) -> None:
    x = np.zeros((1, 4), np.float32)
    x[0, 2] = bad
    with pytest.raises(errors.WireValueError):
        wire.decode_array(wire.encode(x, bundle_id=BUNDLE, quantisation=quantisation))


def test_fp32_values_that_overflow_fp16_are_refused_in_fp16() -> None:
    x = np.full((1, 4), 1e6, np.float32)  # inf once written as fp16
    with pytest.raises(errors.WireValueError):
        wire.decode_array(wire.encode(x, bundle_id=BUNDLE, quantisation="fp16"))


def test_the_quantisation_and_compression_types_are_the_tables():
    """Settings and query parameters take their choices from these types: one list."""
    from typing import get_args

    assert get_args(wire.Quantisation) == tuple(wire.QUANTISATIONS)
    assert get_args(wire.SplitQuantisation) == (*wire.QUANTISATIONS, wire.ENTROPY)
    assert get_args(wire.Compression) == wire.COMPRESSIONS
