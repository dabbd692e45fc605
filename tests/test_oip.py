"""Open Inference Protocol v2 bodies: parsing both dialects, answers, and refusals before
allocation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from splitdnn import oip
from splitdnn.errors import WireError, WireLimitError, WireSizeError, WireValueError

SAMPLE = (2, 3)


def parse(body: bytes, header_length: str | None = None, max_batch: int = 4):
    return oip.parse_request(
        body, header_length, input_name="x", sample_shape=SAMPLE, max_batch=max_batch
    )


def request(**spec_over) -> dict:
    spec = {"name": "x", "datatype": "FP32", "shape": [1, *SAMPLE], "data": list(range(6))}
    spec.update(spec_over)
    return {"inputs": [spec]}


def test_json_tensors_flat_or_nested() -> None:
    flat = parse(json.dumps(request()).encode())
    nested = parse(json.dumps(request(data=[[[0, 1, 2], [3, 4, 5]]])).encode())
    expected = np.arange(6, dtype=np.float32).reshape(1, *SAMPLE)
    np.testing.assert_array_equal(flat.tensor, expected)
    np.testing.assert_array_equal(nested.tensor, expected)
    assert flat.tensor.dtype == np.float32


@pytest.mark.parametrize("datatype", ["FP32", "FP16"])
def test_binary_extension(datatype: str) -> None:
    x = np.arange(12, dtype=oip.INPUT_DTYPES[datatype]).reshape(2, *SAMPLE)
    header = json.dumps(
        {
            "id": "a",
            "inputs": [
                {"name": "x", "datatype": datatype, "shape": [2, *SAMPLE],
                 "parameters": {"binary_data_size": x.nbytes}}
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()  # fmt: skip
    parsed = parse(header + x.tobytes(), str(len(header)))
    np.testing.assert_array_equal(parsed.tensor, x.astype(np.float32))
    assert parsed.id == "a" and parsed.outputs == ("y",) and parsed.binary == {"y": True}


def test_answer_json_and_binary() -> None:
    parsed = parse(json.dumps({**request(), "parameters": {"binary_data_output": True}}).encode())
    y = np.array([[1.5, -2.0]], np.float32)
    body, length = oip.encode_response("m", "v1", parsed, {"y": y})
    header = json.loads(body[:length])
    assert header["outputs"][0] == {
        "name": "y", "datatype": "FP32", "shape": [1, 2],
        "parameters": {"binary_data_size": 8},
    }  # fmt: skip
    np.testing.assert_array_equal(np.frombuffer(body[length:], "<f4"), y.reshape(-1))
    json_only = parse(json.dumps(request()).encode())
    body, length = oip.encode_response("m", "v1", json_only, {"y": y})
    assert length is None and json.loads(body)["outputs"][0]["data"] == [1.5, -2.0]


@pytest.mark.parametrize(
    ("body", "header_length", "error"),
    [
        (b"not json", None, WireError),
        (b"[" * 100_000, None, WireError),
        (json.dumps(request(shape=[5, *SAMPLE], data=[0] * 30)).encode(), None, WireLimitError),
        (json.dumps(request(shape=[0, *SAMPLE], data=[])).encode(), None, WireLimitError),
        (json.dumps(request(shape=[1, 3, 2])).encode(), None, WireSizeError),
        (json.dumps(request(data=[0] * 7)).encode(), None, WireSizeError),
        (json.dumps(request(data=[[0] * 6] * 10_000)).encode(), None, WireSizeError),
        (json.dumps(request(data=["1"] * 6)).encode(), None, WireError),
        (json.dumps(request(data=[True] * 6)).encode(), None, WireError),
        (json.dumps(request(data=[1e39] * 6)).encode(), None, WireValueError),
        (json.dumps(request(datatype="FP16", data=[1e5] * 6)).encode(), None, WireValueError),
        (json.dumps(request(data=[10**400] * 6)).encode(), None, WireValueError),
        (json.dumps(request(datatype="BYTES")).encode(), None, WireError),
        (json.dumps(request(name="y")).encode(), None, WireError),
        (b"{}", "99", WireSizeError),
        (b"{}", "-1", WireError),
        (json.dumps(request()).encode() + b"\x00" * 4, None, WireError),
    ],
    ids=[
        "not-json", "deep", "batch-over", "batch-zero", "shape", "count", "count-nested",
        "strings", "bools", "inf-fp32", "inf-fp16", "huge-int", "datatype", "name",
        "header-past-body", "header-negative", "trailing-bytes",
    ],
)  # fmt: skip
def test_refusals(body: bytes, header_length: str | None, error: type) -> None:
    with pytest.raises(error):
        parse(body, header_length)


def test_binary_size_must_match_shape_and_body() -> None:
    header = json.dumps(request(data=None, parameters={"binary_data_size": 8})).encode()
    with pytest.raises(WireSizeError):
        parse(header + bytes(8), str(len(header)))
    header = json.dumps(request(data=None, parameters={"binary_data_size": 24})).encode()
    with pytest.raises(WireSizeError):
        parse(header + bytes(20), str(len(header)))
    with pytest.raises(WireValueError):
        nan = np.full(6, np.nan, np.float32).tobytes()
        parse(header + nan, str(len(header)))
