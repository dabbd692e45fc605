"""The entropy coder of the version 2 envelope and the envelope itself: the decoded integers
are the encoder's, the bytes are pinned, and hostile streams and headers end in named errors;
with either kernel (numba, numpy), which write the same bytes and read any bytes alike.
"""

from __future__ import annotations

import logging
import math
import sys

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitdnn import rans, wire
from splitdnn.errors import (
    BundleError,
    BundleMismatchError,
    WireCompressionError,
    WireError,
    WireLimitError,
    WireSizeError,
    WireVersionError,
)

BUNDLE = "0123456789abcdef"
NO_NUMBA = "numba" not in rans.kernels()
NEEDS_NUMBA = pytest.mark.skipif(NO_NUMBA, reason="numba is not installed (the serve extra)")
FIXTURES_OK = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


@pytest.fixture(params=[pytest.param("numba", marks=NEEDS_NUMBA), "numpy"])
def kernel(request, monkeypatch) -> str:
    """The kernel a test runs with: also what ``kernel="auto"`` (the envelope's) picks."""
    if request.param == "numpy":
        monkeypatch.setattr(rans, "_compiled", lambda: None)
    return request.param


def tables_from_probabilities(probabilities: list[list[float]], offsets: list[int]):
    """Quantised tables (every symbol at least 1 of 2**16) from per-channel probabilities."""
    cdfs = []
    for p in probabilities:
        total = rans._TOTAL - len(p)
        freq = 1 + np.floor(np.asarray(p) / sum(p) * total).astype(np.int64)
        freq[np.argmax(freq)] += rans._TOTAL - freq.sum()
        cdfs.append([0, *np.cumsum(freq).tolist()])
    return rans.CodingTables.from_lists([0.25 * c for c in range(len(cdfs))], offsets, cdfs)


SMALL = tables_from_probabilities([[0.1, 0.8, 0.1], [0.5, 0.25, 0.25]], [-1, 0])


@st.composite
def coded_samples(draw):
    channels = draw(st.integers(1, 4))
    probabilities = [
        draw(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12)) for _ in range(channels)
    ]
    probabilities = [p if sum(p) > 0 else [1.0] * len(p) for p in probabilities]
    offsets = [draw(st.integers(-6, 3)) for _ in range(channels)]
    tables = tables_from_probabilities(probabilities, offsets)
    shape = (channels, draw(st.integers(0, 7)), draw(st.integers(1, 7)))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    symbols = np.stack(
        [
            rng.integers(0, len(tables.cdfs[c]) - 1, size=shape[1:]) + tables.offsets[c]
            for c in range(channels)
        ]
    ).astype(np.int32)
    return tables, symbols, draw(st.integers(1, 40))


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURES_OK)
@given(coded_samples())
def test_decoded_integers_are_the_encoders(kernel: str, case) -> None:
    tables, symbols, lanes = case
    stream = rans.encode(symbols, tables, lanes)
    assert np.array_equal(rans.decode(stream, symbols.shape, tables, lanes), symbols)


def test_likely_symbols_cost_fewer_bytes_close_to_their_information(kernel: str) -> None:
    """The stream is the symbols' information plus at most 4 bytes a lane (the final states,
    which also hold some of it) and a word."""
    rng = np.random.default_rng(0)
    p = [0.02, 0.9, 0.06, 0.02]
    tables = tables_from_probabilities([p] * 8, [-1] * 8)
    symbols = (rng.choice(4, size=(8, 17, 17), p=p) - 1).astype(np.int32)
    frequencies = np.diff(tables.cdfs[0])[symbols.ravel() + 1]
    information = -np.log2(frequencies / rans._TOTAL).sum() / 8
    stream = rans.encode(symbols, tables, lanes=4)
    assert information <= len(stream) <= information * 1.01 + 4 * 4 + 2
    assert len(stream) < symbols.size / 4  # far below a byte per element


def test_values_outside_a_channels_range_are_clamped_into_it() -> None:
    latent = np.array([[[[-9.0, 0.0, 9.0]], [[-9.0, 0.25, 9.0]]]], np.float32)
    assert SMALL.symbols(latent).tolist() == [[[[-1, 0, 1]], [[0, 0, 2]]]]
    assert SMALL.latent(SMALL.symbols(latent)).tolist() == [
        [[[-1.0, 0.0, 1.0]], [[0.25, 0.25, 2.25]]]
    ]


@pytest.mark.parametrize(
    ("medians", "offsets", "cdfs", "message"),
    [
        ([0.0], [0], [[0, 65536]], None),
        ([0.0], [0], [[0, 3, 65535]], "rises from 0 to 65536"),
        ([0.0], [0], [[0, 0, 65536]], "at least 1 per symbol"),
        ([0.0], [0], [[65536]], "2 to"),
        ([float("nan")], [0], [[0, 65536]], "finite"),
        ([0.0], [1.5], [[0, 65536]], "small integers"),
        ([0.0, 1.0], [0], [[0, 65536]], "one median, offset and CDF"),
    ],
)
def test_tables_are_checked_when_read(medians, offsets, cdfs, message) -> None:
    if message is None:
        assert rans.CodingTables.from_lists(medians, offsets, cdfs).channels == 1
        return
    with pytest.raises(BundleError, match=message):
        rans.CodingTables.from_lists(medians, offsets, cdfs)


# --- the version 2 envelope -------------------------------------------------------------------


def test_entropy_envelope_is_pinned_byte_for_byte(kernel: str) -> None:
    latent = np.array([[[[0.0, 1.0]], [[0.25, 1.25]]]], np.float32)  # symbols [0, 1], [0, 1]
    data = wire.encode_entropy(latent, bundle_id="ab", tables=SMALL, lanes=1)
    stream = rans.encode(np.array([[[0, 1]], [[0, 1]]], np.int32), SMALL, 1)
    expected = (
        b"\x86"  # map of 6
        b"\xa1v\x02"
        b"\xa6bundle\xa2ab"
        b"\xa5shape\x94\x01\x02\x01\x02"
        b"\xa5coder\xa6rans16"
        b"\xa5lanes\x01"
        b"\xa7streams\x91\xc4" + bytes([len(stream)]) + stream
    )
    assert data == expected
    # By hand: CDFs [0, 6554, 58982, 65536] and [0, 32768, 49152, 65536]; from x = 2**16,
    # coding (start, freq) = (32768, 16384), (0, 32768), (58982, 6554), (6554, 52428) in
    # reverse order gives 294912, 589824, 5898204, 7372854 = 0x708036 and emits no word.
    assert stream == (7372854).to_bytes(4, "little")


def test_entropy_envelope_round_trips_to_integers_plus_medians(kernel: str) -> None:
    rng = np.random.default_rng(1)
    latent = rng.normal(0.0, 1.0, size=(3, 2, 5, 4)).astype(np.float32)
    data = wire.encode_entropy(latent, bundle_id=BUNDLE, tables=SMALL)
    envelope = wire.decode(data, tables=SMALL, bundle_id=BUNDLE, sample_shape=(2, 5, 4))
    assert envelope.version == 2 and envelope.size == len(data)
    assert np.array_equal(envelope.to_array(), SMALL.latent(SMALL.symbols(latent)))


def entropy_fields(**overrides: object) -> dict:
    latent = np.zeros((1, 2, 3, 3), np.float32)
    fields = msgpack.unpackb(wire.encode_entropy(latent, bundle_id=BUNDLE, tables=SMALL))
    fields.update(overrides)
    return fields


def pack(fields: dict) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"coder": "zstd"}, WireError, "unknown coder"),
        ({"lanes": 0}, WireError, "'lanes'"),
        ({"lanes": 10**6}, WireError, "'lanes'"),
        ({"shape": [1, 2, 3]}, WireSizeError, "sample shape"),
        ({"shape": [1, 3, 3, 3]}, WireSizeError, "sample shape"),
        ({"shape": [2000, 2, 3, 3]}, WireLimitError, "batch"),
        ({"shape": [1, 2, 3, 3], "streams": []}, WireSizeError, "one bin per sample"),
        ({"streams": ["text"]}, WireError, "msgpack bin"),
        ({"streams": [b"\x00" * 10**5]}, WireSizeError, "its symbols take"),
        ({"streams": [b"\x00\x00\x01\x00" * 31]}, WireCompressionError, "truncated"),
        ({"streams": [b"\xff" * 129]}, WireCompressionError, "truncated"),
        ({"bundle": "other"}, BundleMismatchError, "other"),
        ({"extra": 1}, WireError, "extra"),
    ],
)
def test_hostile_entropy_headers_are_named_errors(kernel, overrides, error, message) -> None:
    with pytest.raises(error, match=message):
        wire.decode(
            pack(entropy_fields(**overrides)),
            tables=SMALL,
            bundle_id=BUNDLE,
            sample_shape=(2, 3, 3),
            max_batch=8,
        )


def test_few_lanes_for_many_elements_are_refused_before_decoding(kernel: str) -> None:
    """One lane for 1,800 elements would be 1,800 decoder steps a sample: over the limit."""
    fields = entropy_fields(shape=[1, 2, 30, 30], lanes=1, streams=[b"\x00\x00\x01\x00"])
    with pytest.raises(WireLimitError, match="steps a sample"):
        wire.decode(pack(fields), tables=SMALL)
    with pytest.raises(WireCompressionError, match="steps a stream"):
        rans.decode(b"\x00\x00\x01\x00", (2, 30, 30), SMALL, lanes=1)


def test_the_encoder_raises_its_lanes_to_stay_within_the_step_limit(kernel: str) -> None:
    latent = np.zeros((1, 2, 40, 40), np.float32)  # 3,200 elements: 7 lanes of <= 512 steps
    fields = msgpack.unpackb(wire.encode_entropy(latent, bundle_id=BUNDLE, tables=SMALL, lanes=1))
    assert fields["lanes"] == 7
    assert wire.decode(pack(fields), tables=SMALL).to_array().shape == latent.shape
    with pytest.raises(WireError, match="lanes"):
        wire.encode_entropy(np.zeros((1, 2, 300, 300), np.float32), bundle_id=BUNDLE, tables=SMALL)


def test_an_entropy_envelope_needs_the_receivers_tables() -> None:
    with pytest.raises(WireVersionError, match="coding tables"):
        wire.decode(pack(entropy_fields()))


def test_the_decoded_size_limit_holds_before_decoding() -> None:
    with pytest.raises(WireLimitError, match="decoded size"):
        wire.decode(pack(entropy_fields()), tables=SMALL, max_raw_bytes=71)


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURES_OK)
@given(st.binary(max_size=600), st.integers(1, 8))
def test_random_streams_end_in_a_named_error_or_valid_symbols(
    kernel: str, stream: bytes, lanes: int
) -> None:
    """Any bytes as a stream: either integers in range or WireCompressionError, in a
    number of steps fixed by the shape."""
    shape = (2, 6, 5)
    try:
        symbols = rans.decode(stream, shape, SMALL, lanes)
    except WireCompressionError:
        return
    assert symbols.shape == shape
    assert np.array_equal(
        rans.decode(rans.encode(symbols, SMALL, lanes), shape, SMALL, lanes), symbols
    )


@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURES_OK)
@given(st.integers(0, 10**6), st.integers(1, 255))
def test_a_flipped_byte_is_refused_or_decodes_in_range(
    kernel: str, position: int, flip: int
) -> None:
    rng = np.random.default_rng(2)
    latent = rng.normal(0.0, 1.0, size=(1, 2, 9, 9)).astype(np.float32)
    data = bytearray(wire.encode_entropy(latent, bundle_id=BUNDLE, tables=SMALL, lanes=4))
    data[position % len(data)] ^= flip
    try:
        envelope = wire.decode(bytes(data), tables=SMALL, sample_shape=(2, 9, 9))
    except WireError:
        return
    symbols = np.frombuffer(envelope.payload, "<i4").reshape(envelope.shape)
    assert symbols.min() >= -1 and symbols.max() <= 2
    assert math.prod(envelope.shape) == 162


# --- the two kernels: same bytes, same symbols, same refusals ----------------------------------


def outcome(run) -> tuple:
    """What a call gave: ("ok", value) or (exception type, message)."""
    try:
        value = run()
    except (ValueError, WireCompressionError) as error:
        return type(error), str(error)
    return "ok", value.tolist() if isinstance(value, np.ndarray) else value


def both(call, *args) -> tuple[tuple, tuple]:
    return outcome(lambda: call(*args, kernel="numba")), outcome(
        lambda: call(*args, kernel="numpy")
    )


@NEEDS_NUMBA
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(coded_samples())
def test_both_kernels_write_the_same_stream_and_read_it_alike(case) -> None:
    tables, symbols, lanes = case
    stream, numpy_stream = both(rans.encode, symbols, tables, lanes)
    assert stream == numpy_stream and stream[0] == "ok"
    decoded = both(rans.decode, stream[1], symbols.shape, tables, lanes)
    assert decoded[0] == decoded[1] == ("ok", symbols.tolist())


@NEEDS_NUMBA
@pytest.mark.parametrize("lanes", [1, 7, 28, 32, 64, 255, 256])
@pytest.mark.parametrize("shape", [(48, 17, 17), (3, 0, 5), (5, 1, 1), (2, 40, 40)])
def test_both_kernels_agree_on_bottleneck_sized_samples(shape, lanes) -> None:
    rng = np.random.default_rng(lanes)
    widths = rng.integers(1, 40, size=shape[0])
    tables = tables_from_probabilities(
        [rng.random(w) ** 4 for w in widths], rng.integers(-20, 3, size=shape[0]).tolist()
    )
    symbols = np.stack(
        [
            rng.integers(0, len(tables.cdfs[c]) - 1, size=shape[1:]) + tables.offsets[c]
            for c in range(shape[0])
        ]
    ).astype(np.int32)
    stream = both(rans.encode, symbols, tables, lanes)
    assert stream[0] == stream[1]
    if math.prod(shape) > lanes * rans.MAX_STEPS:  # the decoder's bound holds for both
        assert stream[0][0] == "ok"
        refused = both(rans.decode, stream[0][1], shape, tables, lanes)
        assert refused[0] == refused[1] and refused[0][0] is WireCompressionError
        return
    decoded = both(rans.decode, stream[0][1], shape, tables, lanes)
    assert decoded[0] == decoded[1] == ("ok", symbols.tolist())


@NEEDS_NUMBA
@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.integers(1, 8), st.sampled_from([(2, 6, 5), (2, 1, 1)]))
def test_both_kernels_refuse_a_random_stream_with_the_same_error(stream, lanes, shape) -> None:
    decoded = both(rans.decode, stream, shape, SMALL, lanes)
    assert decoded[0] == decoded[1]


@NEEDS_NUMBA
@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 255), st.integers(-3, 3))
def test_both_kernels_refuse_a_damaged_stream_with_the_same_error(position, flip, cut) -> None:
    """A real stream with one byte flipped, then cut short or extended by ``cut`` words."""
    rng = np.random.default_rng(3)
    symbols = SMALL.symbols(rng.normal(0.0, 1.0, size=(1, 2, 9, 9)).astype(np.float32))[0]
    stream = bytearray(rans.encode(symbols, SMALL, 4))
    stream[position % len(stream)] ^= flip
    stream = bytes(stream[: len(stream) + 2 * cut] if cut < 0 else stream + b"\x01\x00" * cut)
    decoded = both(rans.decode, stream, (2, 9, 9), SMALL, 4)
    assert decoded[0] == decoded[1]


@pytest.mark.parametrize("symbol", [-2, 2])
def test_a_symbol_outside_its_channels_range_is_refused_by_either_kernel(
    kernel: str, symbol: int
) -> None:
    symbols = np.array([[[0, symbol]], [[0, 1]]], np.int32)  # channel 0 codes -1 to 1
    with pytest.raises(ValueError, match=r"\(element 1\) is outside channel 0"):
        rans.encode(symbols, SMALL, 2, kernel=kernel)


def test_asking_for_numba_without_it_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(rans, "_compiled", lambda: None)
    assert rans.kernels() == ("numpy",) and rans.warm_up() == 0.0
    with pytest.raises(ValueError, match="needs numba"):
        rans.encode(np.zeros((2, 1), np.int32), SMALL, kernel="numba")
    stream = rans.encode(np.zeros((2, 1), np.int32), SMALL)  # auto: numpy
    assert rans.decode(stream, (2, 1), SMALL).tolist() == [[0], [0]]


@NEEDS_NUMBA
def test_numba_that_cannot_cache_its_kernels_leaves_numpy_and_a_warning(
    monkeypatch, caplog
) -> None:
    """As for a user with no writable home and no NUMBA_CACHE_DIR: the import fails with
    numba's RuntimeError, the coder keeps numpy and the log says how to fix it."""
    import numba

    import splitdnn

    def no_locator(*args, **kwargs):
        raise RuntimeError("cannot cache function: no locator available")

    monkeypatch.delitem(sys.modules, "splitdnn.rans_fast")
    monkeypatch.delattr(splitdnn, "rans_fast")
    monkeypatch.setattr(numba, "njit", no_locator)
    with caplog.at_level(logging.WARNING, logger="splitdnn.rans"):
        assert rans._compiled.__wrapped__() is None
    assert "NUMBA_CACHE_DIR" in caplog.text
