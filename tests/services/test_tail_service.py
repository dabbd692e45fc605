"""Tail service: envelope and image inference, health, metrics, and every refusal."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import assert_problem

from services.tail.app import create_app
from services.tail.settings import TailSettings
from splitdnn import wire
from splitdnn.bundle import load_bundle
from splitdnn.runtime import ServerRunner

TOKEN = "s3cret"


@pytest.fixture(scope="module")
def bundle(toy_bundle_dir):
    return load_bundle(toy_bundle_dir)


@pytest.fixture(scope="module")
def tail(toy_bundle_dir):
    settings = TailSettings(
        bundle=toy_bundle_dir,
        token=TOKEN,
        load_in_background=False,
        max_in_flight=2,
        max_envelope_bytes=100_000,
        max_image_bytes=200_000,
    )
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        yield client


def envelope(bundle, quantisation: str = "fp32", bundle_id: str | None = None, shape=None):
    x = np.random.default_rng(0).normal(size=shape or (1, *bundle.manifest.bottleneck.shape))
    return x.astype(np.float32), wire.encode(
        x, bundle_id=bundle_id or bundle.id, quantisation=quantisation
    )


def post_envelope(tail, bundle, body: bytes, **params):
    return tail.post(
        f"/v2/models/{bundle.name}/infer",
        content=body,
        params=params,
        headers={"Content-Type": wire.CONTENT_TYPE},
    )


def test_live_and_ready_after_warm_up(tail) -> None:
    assert tail.get("/v2/health/live").json() == {"live": True}
    assert tail.get("/v2/health/ready").json() == {"ready": True}


def test_model_metadata_describes_the_server_part(tail, bundle) -> None:
    meta = tail.get(f"/v2/models/{bundle.name}").json()
    assert meta["versions"] == [bundle.id]
    assert meta["inputs"] == [{"name": "bottleneck", "datatype": "FP32", "shape": [-1, 4, 8, 8]}]
    assert {o["name"] for o in meta["outputs"]} == {"logits_imagenet", "logits_caltech101"}
    assert meta["warmup_ms"]["split"] >= 0
    assert tail.get(f"/v2/models/{bundle.id}").status_code == 200
    assert_problem(tail.get("/v2/models/resnet50"), 404, "unknown-name")


def test_envelope_inference_equals_the_server_part_in_process(tail, bundle) -> None:
    x, body = envelope(bundle)
    answer = post_envelope(tail, bundle, body, logits="true", task="caltech101", top_k=3).json()
    _, expected = ServerRunner(bundle)(x, "caltech101")
    got = np.asarray(answer["outputs"][0]["data"], np.float32).reshape(expected.shape)
    np.testing.assert_array_equal(got, expected)
    assert answer["task"] == "caltech101" and len(answer["top_k"]) == 3
    assert answer["top_k"][0]["index"] == int(expected.argmax())
    assert answer["bytes_in"] == len(body)
    assert answer["timings_ms"]["compute"] >= answer["timings_ms"]["tail"] > 0


def test_uint8_envelope_is_dequantised(tail, bundle) -> None:
    x, body = envelope(bundle, "uint8")
    answer = post_envelope(tail, bundle, body, logits="true").json()
    _, expected = ServerRunner(bundle)(x)
    got = np.asarray(answer["outputs"][0]["data"], np.float32)
    np.testing.assert_allclose(got, expected.reshape(-1), atol=0.05)


def test_bad_envelopes_are_400(tail, bundle) -> None:
    assert_problem(post_envelope(tail, bundle, b"\x00garbage"), 400, "bad-envelope")
    _, wrong_shape = envelope(bundle, shape=(1, 4, 8, 9))
    body = assert_problem(post_envelope(tail, bundle, wrong_shape), 400, "bad-envelope")
    assert "sample shape" in body["detail"]


def test_envelope_over_the_limit_is_413(tail, bundle) -> None:
    _, big = envelope(bundle, shape=(1, 4, 80, 80))
    assert_problem(post_envelope(tail, bundle, big), 413, "payload-too-large")


def test_envelope_from_another_bundle_is_409(tail, bundle) -> None:
    _, body = envelope(bundle, bundle_id="ffffffffffffffff")
    assert_problem(post_envelope(tail, bundle, body), 409, "bundle-mismatch")


def test_missing_or_wrong_token_is_401(tail, bundle) -> None:
    _, body = envelope(bundle)
    url = f"/v2/models/{bundle.name}/infer"
    response = tail.post(url, content=body, headers={"Authorization": ""})
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
    response = tail.post(url, content=body, headers={"Authorization": "Bearer nope"})
    assert_problem(response, 401, "unauthorized")


def test_too_many_in_flight_is_503_with_retry_after(tail, bundle) -> None:
    limiter = tail.app.state.limiter
    limiter.in_flight = limiter.limit  # as if two requests were running
    try:
        _, body = envelope(bundle)
        response = post_envelope(tail, bundle, body)
    finally:
        limiter.in_flight = 0
    assert_problem(response, 503, "overloaded")
    assert response.headers["retry-after"] == "1"
    assert post_envelope(tail, bundle, body).status_code == 200


def test_requests_really_in_flight_fill_the_limit_and_release_it(tail, bundle, monkeypatch) -> None:
    """A third envelope while two are inside the model (limit two) gets 503; afterwards,
    and after a run of refused bad envelopes, every slot is free again."""
    components = tail.app.state.service.components
    original = components["run_server"]
    started = threading.Barrier(3, timeout=10)

    def slow(x):
        started.wait()  # both admitted requests are inside the model before either returns
        time.sleep(0.2)
        return original(x)

    monkeypatch.setitem(components, "run_server", slow)
    _, body = envelope(bundle)
    with ThreadPoolExecutor(2) as pool:
        calls = [pool.submit(post_envelope, tail, bundle, body) for _ in range(2)]
        deadline = time.monotonic() + 10
        while tail.app.state.limiter.in_flight < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = post_envelope(tail, bundle, body)
        started.wait()  # the third party: let the two admitted requests finish
        statuses = sorted(c.result().status_code for c in calls)
    assert_problem(refused, 503, "overloaded")
    assert statuses == [200, 200]
    monkeypatch.setitem(components, "run_server", original)
    for _ in range(5):
        assert post_envelope(tail, bundle, b"not an envelope").status_code == 400
    assert tail.app.state.limiter.in_flight == 0
    assert post_envelope(tail, bundle, body).status_code == 200


def test_image_inference_and_image_errors(tail, bundle, cat_jpeg: bytes) -> None:
    url = f"/v2/models/{bundle.name}/classify"
    headers = {"Content-Type": "image/jpeg"}
    answer = tail.post(url, content=cat_jpeg, headers=headers).json()
    assert answer["bytes_in"] == len(cat_jpeg) and answer["bundle"] == bundle.id
    assert_problem(tail.post(url, content=b"not an image", headers=headers), 415)
    assert_problem(tail.post(url, content=cat_jpeg[:3000], headers=headers), 400, "corrupt-image")
    big = cat_jpeg * 7
    assert_problem(tail.post(url, content=big, headers=headers), 413)
    mismatch = {**headers, "X-Bundle-ID": "0000000000000000"}
    assert_problem(tail.post(url, content=cat_jpeg, headers=mismatch), 409, "bundle-mismatch")
    for task in ("cifar", ""):
        assert_problem(tail.post(url, content=cat_jpeg, params={"task": task}), 422, "unknown-task")


def test_request_id_and_server_timing_headers(tail, bundle) -> None:
    _, body = envelope(bundle)
    response = tail.post(
        f"/v2/models/{bundle.name}/infer", content=body, headers={"X-Request-ID": "req-42"}
    )
    assert response.headers["x-request-id"] == "req-42"
    stages = [part.split(";")[0] for part in response.headers["server-timing"].split(", ")]
    assert stages == ["decode", "tail", "read", "app", "total"]  # all of total, named
    weird = tail.get("/v2/health/live", headers={"X-Request-ID": "bad id\twith spaces"})
    assert weird.headers["x-request-id"] != "bad id\twith spaces"


def test_metrics_count_requests_stages_and_bytes(tail, bundle) -> None:
    _, body = envelope(bundle)
    post_envelope(tail, bundle, body)
    text = tail.get("/metrics").text
    assert 'splitdnn_requests_total{method="POST",route="/v2/models/{name}/infer"' in text
    assert 'splitdnn_stage_seconds_bucket{le="0.001",service="tail",stage="tail"}' in text
    assert 'splitdnn_bytes_in_total{kind="envelope",service="tail"}' in text


def test_openapi_documents_the_endpoints(tail) -> None:
    paths = tail.get("/openapi.json").json()["paths"]
    assert {"/v2/models/{name}/infer", "/v2/models/{name}/classify", "/v2/health/ready"} <= set(
        paths
    )
    assert tail.get("/docs").status_code == 200


def test_not_ready_until_a_bundle_loads(tmp_path) -> None:
    settings = TailSettings(bundle=tmp_path, load_in_background=False)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v2/health/live").status_code == 200
        body = assert_problem(client.get("/v2/health/ready"), 503, "not-ready")
        assert "manifest.json" in body["detail"]
        response = client.post("/v2/models/x/infer", content=b"")
        assert_problem(response, 503, "not-ready")
        assert response.headers["retry-after"] == "1"


# --- hostile envelopes and uploads: each a 4xx problem+json, never a 200 or a 5xx -------------


def test_a_nan_or_infinite_fp32_envelope_is_422(tail, bundle) -> None:
    for bad in (np.nan, np.inf):
        x = np.zeros((1, *bundle.manifest.bottleneck.shape), np.float32)
        x[0, 0, 0, 0] = bad
        body = wire.encode(x, bundle_id=bundle.id)
        problem = assert_problem(post_envelope(tail, bundle, body), 422, "non-finite-tensor")
        assert problem["error"] == problem["detail"]  # what OIP clients read


def test_a_uint8_scale_that_is_infinite_in_float32_is_422(tail, bundle) -> None:
    import msgpack

    _, body = envelope(bundle, "uint8")
    fields = msgpack.unpackb(body)
    fields["scale"] = [1e300]
    hostile = msgpack.packb(fields, use_bin_type=True)
    assert_problem(post_envelope(tail, bundle, hostile), 422, "non-finite-tensor")


def test_a_tiny_zstd_envelope_declaring_a_huge_batch_is_413_before_decompressing(
    tail, bundle
) -> None:
    x = np.zeros((1000, *bundle.manifest.bottleneck.shape), np.float32)
    body = wire.encode(x, bundle_id=bundle.id, quantisation="uint8", compression="zstd")
    assert len(body) < 20_000
    problem = assert_problem(post_envelope(tail, bundle, body), 413, "envelope-too-large")
    assert "batch of 1000" in problem["detail"]


def test_a_png_header_declaring_60000_squared_pixels_is_413(tail, bundle) -> None:
    from benchmarks.inputs import png_declaring

    url = f"/v2/models/{bundle.name}/classify"
    response = tail.post(url, content=png_declaring(60_000, 60_000))
    assert_problem(response, 413, "image-too-large")


def test_model_ready_and_server_extensions(tail, bundle) -> None:
    assert tail.get(f"/v2/models/{bundle.name}/ready").json()["ready"] is True
    assert_problem(tail.get("/v2/models/nope/ready"), 404)
    assert "binary_tensor_data" in tail.get("/v2").json()["extensions"]


def test_oip_json_infer_equals_the_envelope_path(tail, bundle) -> None:
    x, body = envelope(bundle)
    expected = post_envelope(tail, bundle, body, logits="true", task="caltech101").json()
    request = {
        "id": "r1",
        "inputs": [
            {"name": "bottleneck", "datatype": "FP32", "shape": list(x.shape),
             "data": x.reshape(-1).tolist()}
        ],
        "outputs": [{"name": "logits_caltech101"}],
    }  # fmt: skip
    answer = tail.post(f"/v2/models/{bundle.name}/infer", json=request)
    assert answer.status_code == 200, answer.text
    output = answer.json()["outputs"][0]
    assert answer.json()["id"] == "r1" and output["name"] == "logits_caltech101"
    np.testing.assert_array_equal(output["data"], expected["outputs"][0]["data"])


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"datatype": "INT64"}, 400),
        ({"shape": [1, 4, 8, 9]}, 400),
        ({"shape": [100, 4, 8, 8]}, 413),
        ({"data": [float("nan")] * 256}, 422),
        ({"data": [1.0] * 255}, 400),
        ({"name": "x"}, 400),
    ],
)
def test_bad_oip_requests_are_4xx_with_an_error_field(tail, bundle, change, status) -> None:
    spec = {"name": "bottleneck", "datatype": "FP32", "shape": [1, 4, 8, 8], "data": [0.0] * 256}
    spec.update(change)
    content = json.dumps({"inputs": [spec]}).encode()  # NaN written as JSON's NaN
    response = tail.post(
        f"/v2/models/{bundle.name}/infer",
        content=content,
        headers={"Content-Type": "application/json"},
    )
    problem = assert_problem(response, status)
    assert problem["error"]
