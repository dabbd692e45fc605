"""NVIDIA's own ``tritonclient.http`` against a real tail (uvicorn subprocess on 127.0.0.1):
health, metadata, model ready and infer with JSON tensors and with the binary extension,
each equal to the msgpack envelope path's logits."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from helpers import free_port

from splitdnn import serve, wire
from splitdnn.bundle import load_bundle

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

TOKEN = "oip-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def auth() -> dict[str, str]:
    """A fresh header map: tritonclient writes its own headers into the one it is given."""
    return dict(AUTH)


@pytest.fixture(scope="module")
def tail_url(toy_bundle_dir) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        **serve.tail_env(toy_bundle_dir, TOKEN),
        "SPLITDNN_TAIL_INTRA_OP_THREADS": "1",
    }
    command = serve.uvicorn_command(serve.TAIL_APP, "127.0.0.1", port, "warning")
    process = subprocess.Popen(command, env=env)
    try:
        url = f"127.0.0.1:{port}"
        assert serve.wait_ready(f"http://{url}/v2/health/ready", 60, process)
        yield url
    finally:
        serve.stop_processes([process])


@pytest.fixture(scope="module")
def client(tail_url):
    with httpclient.InferenceServerClient(url=tail_url) as c:
        yield c


@pytest.fixture(scope="module")
def bundle(toy_bundle_dir):
    return load_bundle(toy_bundle_dir)


@pytest.fixture(scope="module")
def bottleneck(bundle) -> np.ndarray:
    shape = (2, *bundle.manifest.bottleneck.shape)
    return np.random.default_rng(3).normal(size=shape).astype(np.float32)


def envelope_logits(tail_url: str, bundle, x: np.ndarray, task: str) -> np.ndarray:
    """The msgpack path's logits for the same tensor."""
    response = httpx.post(
        f"http://{tail_url}/v2/models/{bundle.name}/infer",
        content=wire.encode(x, bundle_id=bundle.id),
        params={"task": task, "logits": "true"},
        headers={**auth(), "Content-Type": wire.CONTENT_TYPE},
    )
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    return np.asarray(output["data"], np.float32).reshape(output["shape"])


def test_health_metadata_and_model_ready(client, bundle) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(bundle.name, headers=auth())
    assert not client.is_model_ready("no-such-model", headers=auth())
    assert client.get_server_metadata()["name"] == "splitdnn-tail"
    meta = client.get_model_metadata(bundle.name, headers=auth())
    assert meta["inputs"][0]["name"] == "bottleneck"


@pytest.mark.parametrize("binary", [False, True], ids=["json-tensors", "binary-extension"])
def test_infer_equals_the_envelope_path(
    client, tail_url, bundle, bottleneck: np.ndarray, binary: bool
) -> None:
    inputs = [httpclient.InferInput("bottleneck", list(bottleneck.shape), "FP32")]
    inputs[0].set_data_from_numpy(bottleneck, binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput(f"logits_{task}", binary_data=binary)
        for task in ("imagenet", "caltech101")
    ]
    result = client.infer(bundle.name, inputs, outputs=outputs, headers=auth(), request_id="7")
    assert result.get_response()["id"] == "7"
    for task in ("imagenet", "caltech101"):
        # the envelope path answers only the first sample's logits, one sample at a time
        for i in range(len(bottleneck)):
            expected = envelope_logits(tail_url, bundle, bottleneck[i : i + 1], task)
            np.testing.assert_array_equal(result.as_numpy(f"logits_{task}")[i : i + 1], expected)


def test_infer_without_requested_outputs_answers_all_in_binary(
    client, bundle, bottleneck: np.ndarray
) -> None:
    inputs = [httpclient.InferInput("bottleneck", list(bottleneck.shape), "FP32")]
    inputs[0].set_data_from_numpy(bottleneck)
    result = client.infer(bundle.name, inputs, headers=auth())
    assert {o["name"] for o in result.get_response()["outputs"]} == {
        "logits_imagenet",
        "logits_caltech101",
    }
    assert result.as_numpy("logits_imagenet").shape[0] == len(bottleneck)


def test_errors_reach_the_client_as_messages(client, bundle, bottleneck: np.ndarray) -> None:
    bad = bottleneck.copy()
    bad[0, 0, 0, 0] = np.nan
    inputs = [httpclient.InferInput("bottleneck", list(bad.shape), "FP32")]
    inputs[0].set_data_from_numpy(bad)
    with pytest.raises(InferenceServerException, match="NaN") as info:
        client.infer(bundle.name, inputs, headers=auth())
    assert info.value.status() == "422"
    with pytest.raises(InferenceServerException, match="Bearer") as info:
        client.infer(bundle.name, inputs)
    assert info.value.status() == "401"
