"""Open Inference Protocol v2 (KServe / Triton) inference bodies: the tail's second dialect.

The msgpack envelope (:mod:`splitdnn.wire`) is what the head sends; this module reads and
writes the standard request and response of ``POST /v2/models/{name}/infer`` so stock
clients (``tritonclient.http``, KServe's) can call the tail unmodified:

========================  ===================================================================
JSON tensors              ``{"inputs": [{"name", "datatype", "shape", "data": [...]}], ...}``
binary tensor extension   the JSON header, then the raw little-endian bytes of each input that
                          declares ``parameters.binary_data_size``, in input order; the header
                          length is the HTTP header ``Inference-Header-Content-Length``
binary outputs            asked for by ``parameters.binary_data_output`` or per output by
                          ``parameters.binary_data``; the answer is laid out the same way
========================  ===================================================================

Every check runs before a tensor is allocated: header length, JSON size, element counts
against the expected per-sample shape and batch limit, data lengths against the shape;
non-finite values are refused in the datatype they arrive in. Failures raise
:class:`~splitdnn.errors.WireError` subclasses, like the envelope's. No torch, no HTTP.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from splitdnn.errors import WireError, WireLimitError, WireSizeError, WireValueError

#: The HTTP header that splits a binary-extension body into JSON header and tensor bytes.
HEADER_LENGTH = "Inference-Header-Content-Length"
#: Media type of a pure JSON request or answer.
JSON_CONTENT_TYPE = "application/json"
#: Media type of a body that uses the binary tensor extension.
BINARY_CONTENT_TYPE = "application/octet-stream"
#: Largest JSON header accepted (the tensors themselves go in the binary part).
MAX_HEADER_BYTES = 1 << 20

#: OIP datatypes accepted as the bottleneck input -> numpy dtype (little-endian).
INPUT_DTYPES: dict[str, np.dtype] = {"FP32": np.dtype("<f4"), "FP16": np.dtype("<f2")}


@dataclass(frozen=True)
class InferRequest:
    """One parsed request: its id, the input tensor, and which outputs it wants how."""

    id: str | None
    input_name: str
    tensor: np.ndarray
    #: Requested output names, in order; empty means every output of the model.
    outputs: tuple[str, ...] = ()
    #: Output name -> wants raw bytes instead of a JSON list.
    binary: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False


def parse_request(
    body: bytes,
    header_length: str | None,
    *,
    input_name: str,
    sample_shape: tuple[int, ...],
    max_batch: int,
) -> InferRequest:
    """Check and parse a request whose one input is a batch of ``sample_shape`` tensors."""
    header, binary = _split(body, header_length)
    try:
        request = json.loads(header)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise WireError(f"the inference request is not JSON: {exc}") from exc
    if not isinstance(request, dict):
        raise WireError("an inference request is a JSON object")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise WireError("'id' must be a string")
    parameters = _object(request.get("parameters"), "parameters")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise WireError(f"send exactly one input, {input_name!r}")
    tensor = _input_tensor(inputs[0], binary, input_name, sample_shape, max_batch)

    outputs: list[str] = []
    binary_outputs: dict[str, bool] = {}
    wanted = request.get("outputs", [])
    if not isinstance(wanted, list):
        raise WireError("'outputs' must be a list")
    for output in wanted:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise WireError("every requested output needs a 'name'")
        options = _object(output.get("parameters"), "output parameters")
        outputs.append(output["name"])
        if "binary_data" in options:
            binary_outputs[output["name"]] = options["binary_data"] is True
    return InferRequest(
        id=request_id,
        input_name=input_name,
        tensor=tensor,
        outputs=tuple(outputs),
        binary=binary_outputs,
        binary_default=parameters.get("binary_data_output") is True,
    )


def encode_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: dict[str, np.ndarray],
) -> tuple[bytes, int | None]:
    """The answer body and, when some outputs are binary, the JSON header's length."""
    described: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, value in outputs.items():
        array = np.ascontiguousarray(value, dtype="<f4")
        entry: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
        if request.binary.get(name, request.binary_default):
            raw = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        described.append(entry)
    answer: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": described,
    }
    if request.id is not None:
        answer["id"] = request.id
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        if len(body) > MAX_HEADER_BYTES:
            raise WireLimitError(
                f"a JSON-only request is limited to {MAX_HEADER_BYTES} bytes; send tensors "
                "with the binary extension"
            )
        return body, b""
    if not header_length.isdigit():
        raise WireError(f"{HEADER_LENGTH} must be a non-negative integer")
    length = int(header_length)
    if length > len(body):
        raise WireSizeError(f"{HEADER_LENGTH} is {length}; the body has {len(body)} bytes")
    if length > MAX_HEADER_BYTES:
        raise WireLimitError(f"the JSON header is {length} bytes; the limit is {MAX_HEADER_BYTES}")
    return body[:length], body[length:]


def _object(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WireError(f"'{what}' must be a JSON object")
    return value


def _input_tensor(
    spec: dict[str, Any],
    binary: bytes,
    input_name: str,
    sample_shape: tuple[int, ...],
    max_batch: int,
) -> np.ndarray:
    if spec.get("name") != input_name:
        raise WireError(f"the input is named {input_name!r}, not {spec.get('name')!r}")
    datatype = spec.get("datatype")
    if datatype not in INPUT_DTYPES:
        raise WireError(f"datatype {datatype!r} is not accepted; send one of {list(INPUT_DTYPES)}")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise WireError("'shape' must be a list of non-negative integers")
    if tuple(shape[1:]) != tuple(sample_shape):
        raise WireSizeError(
            f"shape {shape} does not match [N, {', '.join(map(str, sample_shape))}]"
        )
    if not 1 <= shape[0] <= max_batch:
        raise WireLimitError(f"batch of {shape[0]}; send 1 to {max_batch} per request")
    dtype = INPUT_DTYPES[datatype]
    count = math.prod(shape)
    options = _object(spec.get("parameters"), "input parameters")
    if "binary_data_size" in options:
        size = options["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size != count * dtype.itemsize:
            raise WireSizeError(
                f"binary_data_size must be {count * dtype.itemsize} for shape {shape}, not {size}"
            )
        if len(binary) != size:
            raise WireSizeError(f"the binary part has {len(binary)} bytes; {size} declared")
        values = np.frombuffer(binary, dtype=dtype)
    else:
        if binary:
            raise WireSizeError("binary bytes follow the header, but no input declares them")
        data = spec.get("data")
        values = _json_values(data, count, dtype)
    if not np.isfinite(values).all():
        raise WireValueError(f"the input holds NaN or infinity (in {datatype})")
    return values.reshape(shape).astype(np.float32)


def _json_values(data: object, count: int, dtype: np.dtype) -> np.ndarray:
    """A flat or nested JSON list of numbers, exactly ``count`` of them, in ``dtype``."""
    flat: list[object] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            if len(flat) + len(item) > count:
                raise WireSizeError(f"'data' holds more than the {count} values of the shape")
            stack.extend(reversed(item))
        else:
            flat.append(item)
    if len(flat) != count:
        raise WireSizeError(f"'data' holds {len(flat)} values; the shape needs {count}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        raise WireError("'data' must hold numbers only")
    try:
        with np.errstate(over="ignore"):
            return np.asarray(flat, dtype=np.float64).astype(dtype)
    except OverflowError as exc:  # an integer beyond float64
        raise WireValueError("a value in 'data' is out of range") from exc
