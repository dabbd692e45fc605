"""The three real services on 127.0.0.1, each a uvicorn subprocess, classifying a real photo.

The last test kills the tail, so it stays last in this file.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from helpers import Stack, assert_problem, running_stack
from helpers import classify_form as classify

from splitdnn.bundle import load_bundle
from splitdnn.imaging import load_input
from splitdnn.runtime import softmax

TOKEN = "integration-token"


@pytest.fixture(scope="module")
def stack(toy_bundle_dir) -> Iterator[Stack]:
    with running_stack(toy_bundle_dir, TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def client(stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway, timeout=20) as c:
        yield c


@pytest.fixture(scope="module")
def reference(toy_bundle, cat_jpeg) -> np.ndarray:
    """Softmax scores of the assembled torch model (device then server) run in process."""
    import torch

    directory, _, modules = toy_bundle
    x = torch.from_numpy(load_input(cat_jpeg, load_bundle(directory).preprocessing))
    with torch.no_grad():
        logits = modules["server"](modules["device"](x))[0]  # imagenet head
    return softmax(logits.numpy()[0])


@pytest.mark.parametrize("mode", ["split", "local", "offload", "auto"])
def test_every_mode_classifies_a_real_photo(client, cat_jpeg, toy_bundle_dir, mode) -> None:
    response = classify(client, cat_jpeg, mode=mode)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["bundle"] == load_bundle(toy_bundle_dir).id
    assert answer["fallback"] is False and len(answer["top_k"]) == 5
    assert answer["request_id"] == response.headers["x-request-id"]
    assert set(answer["timings_ms"]) == {"head", "transfer", "tail", "total"}
    if mode == "auto":
        assert answer["mode"] in {"split", "local", "offload"}
        assert set(answer["predicted_ms"]) == {"split", "local", "offload"}
    else:
        assert answer["mode"] == mode


def test_split_fp32_equals_the_assembled_model(client, cat_jpeg, reference) -> None:
    answer = classify(client, cat_jpeg, mode="split", quantisation="fp32", top_k=10).json()
    indices = [entry["index"] for entry in answer["top_k"]]
    scores = np.array([entry["score"] for entry in answer["top_k"]])
    assert indices[0] == int(reference.argmax())
    np.testing.assert_allclose(scores, reference[indices], atol=1e-4)


def test_split_uint8_keeps_the_top_1(client, cat_jpeg, reference) -> None:
    answer = classify(client, cat_jpeg, mode="split", quantisation="uint8").json()
    assert answer["top_k"][0]["index"] == int(reference.argmax())


def test_split_uint8_sends_at_most_a_tenth_of_offload(client, cat_jpeg) -> None:
    split = classify(client, cat_jpeg, mode="split", quantisation="uint8").json()
    offload = classify(client, cat_jpeg, mode="offload").json()
    assert offload["bytes_sent"] == len(cat_jpeg)
    assert 0 < split["bytes_sent"] <= offload["bytes_sent"] / 10


def test_raw_image_body_works_too(client, cat_jpeg) -> None:
    response = client.post("/classify", content=cat_jpeg, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200 and response.json()["mode"] == "split"


def test_errors_are_problem_json(client, stack, cat_jpeg) -> None:
    assert_problem(classify(client, b"definitely not a jpeg"), 415)
    assert_problem(classify(client, cat_jpeg[: len(cat_jpeg) // 3], mode="local"), 400)
    assert_problem(classify(client, cat_jpeg[: len(cat_jpeg) // 3], mode="offload"), 400)
    assert_problem(classify(client, cat_jpeg * 40), 413)
    assert_problem(classify(client, cat_jpeg, mode="warp"), 422)
    no_token = httpx.post(
        f"{stack.tail}/v2/models/toy-b4/infer", content=b"x", headers={"X-Request-ID": "t-1"}
    )
    assert no_token.headers["x-request-id"] == "t-1"
    assert_problem(no_token, 401, "unauthorized")


def test_request_id_crosses_the_services(client, cat_jpeg) -> None:
    response = classify(client, cat_jpeg, mode="split")
    stages = response.headers["server-timing"]
    assert all(f"{s};dur=" in stages for s in ("head", "transfer", "tail", "total"))
    traced = client.post(
        "/classify", content=cat_jpeg, headers={"Content-Type": "image/jpeg", "X-Request-ID": "r9"}
    )
    assert traced.json()["request_id"] == "r9"


def test_metrics_and_docs_are_served(stack) -> None:
    for url in (stack.gateway, stack.head, stack.tail):
        assert httpx.get(f"{url}/metrics").text.startswith("# HELP")
        assert httpx.get(f"{url}/docs").status_code == 200


def test_killing_the_tail_falls_back_to_local_without_failures(client, stack, cat_jpeg) -> None:
    tail = stack.processes["tail"]
    tail.kill()
    tail.wait(timeout=10)
    for mode in ("split", "offload", "split", "auto", "offload"):
        response = classify(client, cat_jpeg, mode=mode)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["mode"] == "local"
        assert answer["fallback"] is (mode != "auto")  # auto already knows the tail is down
    assert_problem(classify(client, cat_jpeg, mode="split", fallback="false"), 503)
