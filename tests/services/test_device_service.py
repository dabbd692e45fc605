"""The device app: gateway and head in one process (``splitdnn serve device``, what
``serve all``, compose and the k8s manifests run). /classify calls the head's pipeline
in-process: no head server exists, yet every mode answers as the head would."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import Device, assert_problem, running_device
from helpers import classify_form as classify

from gateway.app import create_device_app
from gateway.settings import GatewaySettings
from services.head.settings import HeadSettings
from splitdnn.bundle import load_bundle
from splitdnn.imaging import load_input
from splitdnn.runtime import softmax

TOKEN = "device-token"


@pytest.fixture(scope="module")
def device(toy_bundle_dir) -> Iterator[Device]:
    with running_device(toy_bundle_dir, TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def client(device) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=device.gateway, timeout=20) as c:
        yield c


@pytest.mark.parametrize("mode", ["split", "local", "offload", "auto"])
def test_every_mode_answers_in_one_process_without_a_token(
    client, cat_jpeg, toy_bundle_dir, mode
) -> None:
    response = classify(client, cat_jpeg, mode=mode)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["bundle"] == load_bundle(toy_bundle_dir).id
    assert answer["fallback"] is False and len(answer["top_k"]) == 5
    assert answer["request_id"] == response.headers["x-request-id"]
    assert answer["image_bytes"] == len(cat_jpeg)
    assert set(answer["timings_ms"]) == {"head", "transfer", "tail", "total"}
    assert answer["mode"] in {"split", "local", "offload"} if mode == "auto" else mode


def test_split_fp32_equals_the_assembled_model(client, toy_bundle, cat_jpeg) -> None:
    import torch

    directory, _, modules = toy_bundle
    x = torch.from_numpy(load_input(cat_jpeg, load_bundle(directory).preprocessing))
    with torch.no_grad():
        reference = softmax(modules["server"](modules["device"](x))[0].numpy()[0])
    answer = classify(client, cat_jpeg, mode="split", quantisation="fp32", top_k=10).json()
    assert [e["index"] for e in answer["top_k"]] == list(np.argsort(-reference)[:10])
    assert answer["encoding"] == {"quantisation": "fp32", "compression": "zstd"}


def test_the_head_stages_reach_server_timing_once(client, cat_jpeg) -> None:
    response = classify(client, cat_jpeg, mode="split")
    timing = dict(
        (part.split(";dur=")[0].strip(), float(part.split(";dur=")[1]))
        for part in response.headers["server-timing"].split(",")
    )
    answer = response.json()["timings_ms"]
    # recorded by the pipeline in this process, not added again from the answer
    assert timing["head"] == pytest.approx(answer["head"], rel=0.05, abs=0.1)
    assert timing["tail"] == pytest.approx(answer["tail"], rel=0.05, abs=0.1)


@pytest.mark.parametrize("mode", ["split", "local"])
def test_the_answer_names_the_cpu_of_preprocessing_and_the_model(client, cat_jpeg, mode) -> None:
    # the worker thread's CPU in each part: what benchmarks/device_cpu.py subtracts
    stages = classify(client, cat_jpeg, mode=mode).json()["head_stages_ms"]
    assert stages["preprocess_cpu"] > 0 and stages["model_cpu"] > 0


def test_head_errors_are_problems_from_the_one_process(client, cat_jpeg) -> None:
    assert_problem(classify(client, b"not an image", mode="split"), 415)
    assert_problem(classify(client, cat_jpeg, mode="split", task="nope"), 422, "unknown-task")


def test_status_and_ready_report_the_in_process_head_and_the_tail(client, device) -> None:
    assert client.get("/v2/health/ready").status_code == 200
    status = client.get("/status").json()
    assert status["head_url"] is None and status["tail_url"] == device.tail
    assert status["head_ready"] is True and status["tail_ready"] is True
    assert set(status["latency"]["predictions"]) == {"split", "local", "offload"}
    assert set(status["bundle"]["tasks"]["imagenet"]["modes"]) >= {"split", "offload"}


def test_the_in_flight_limit_is_the_head_one_when_smaller(toy_bundle_dir) -> None:
    head = HeadSettings(SPLITDNN_BUNDLE=toy_bundle_dir, max_in_flight=2, load_in_background=True)
    app = create_device_app(GatewaySettings(max_in_flight=8), head)
    assert app.state.limiter.limit == 2


def test_a_device_without_a_tail_falls_back_to_local(toy_bundle_dir, cat_jpeg) -> None:
    head = HeadSettings(
        SPLITDNN_BUNDLE=toy_bundle_dir,
        tail_url="http://127.0.0.1:9",  # nothing listens
        load_in_background=False,
        intra_op_threads=1,
    )
    with TestClient(create_device_app(GatewaySettings(), head)) as test_client:
        response = test_client.post(
            "/classify?mode=split", content=cat_jpeg, headers={"Content-Type": "image/jpeg"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["mode"] == "local" and response.json()["fallback"] is True
        assert test_client.get("/status").json()["tail_ready"] is False


def test_auto_max_drop_reaches_the_in_process_head(client, cat_jpeg) -> None:
    answer = classify(client, cat_jpeg, mode="auto", max_drop=7.5).json()
    assert answer["auto"]["max_drop"] == 7.5
