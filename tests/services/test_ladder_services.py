"""A ladder bundle served (issue #21): ``?rate=`` picks the split rate at the head, the
gateway and the device app; the envelope names it and the tail runs that rate's parts; an
unknown rate is a 422 naming the rates there are; auto weighs every rate within max_drop."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgpack
import pytest
from fastapi.testclient import TestClient
from helpers import assert_problem, running_device
from helpers import classify_form as classify

from services.head.app import create_app as create_head
from services.head.settings import HeadSettings
from services.tail.app import create_app as create_tail
from services.tail.settings import TailSettings
from splitdnn import wire
from splitdnn.bundle import TaskAccuracy, load_bundle, record_accuracy, record_rate_accuracy
from splitdnn.runtime import DeviceRunner, ServerRunner, top_k

RATES = ["r1", "r2", "r3"]


@pytest.fixture(scope="module")
def ladder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from toy_ladder import build_toy_ladder

    directory = tmp_path_factory.mktemp("ladder") / "bundle"
    build_toy_ladder(directory)
    return directory


def _figures(offload: float, local: float, split: float) -> TaskAccuracy:
    top1 = {"offload": offload, "local": local, "split_entropy": split}
    return TaskAccuracy(images=50, data="held-out toy images", top1=top1)


@pytest.fixture(scope="module")
def measured_dir(ladder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ladder with ImageNet figures: r1 small (1,000 B) and 5 points below the teacher,
    r2 (3,000 B) 1 point below, r3 never measured; local 10 points below."""
    copy = tmp_path_factory.mktemp("measured") / "bundle"
    shutil.copytree(ladder_dir, copy)
    record_rate_accuracy(copy, "r1", "imagenet", _figures(80.0, 70.0, 75.0), 1000)
    record_rate_accuracy(copy, "r2", "imagenet", _figures(80.0, 70.0, 79.0), 3000)
    return copy


def _tail(bundle_dir: Path) -> TestClient:
    return TestClient(create_tail(TailSettings(bundle=bundle_dir, load_in_background=False)))


def _through(tail: TestClient):
    """An httpx transport handler that hands the head's requests to the real tail app."""

    def handler(request: httpx.Request) -> httpx.Response:
        response = tail.request(
            request.method,
            request.url.raw_path.decode(),
            content=request.content,
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
        )
        return httpx.Response(response.status_code, headers=response.headers,
                              content=response.content)  # fmt: skip

    return handler


@pytest.fixture
def head_on(request) -> Iterator:
    """``head_on(bundle_dir, **settings)``: the head in front of the real tail app."""
    stack = []

    def start(bundle_dir: Path, **settings) -> TestClient:
        tail = _tail(bundle_dir).__enter__()
        head_settings = HeadSettings(bundle=bundle_dir, tail_url="http://tail.test",
                                     load_in_background=False, **settings)  # fmt: skip
        head = TestClient(create_head(head_settings, httpx.MockTransport(_through(tail))))
        stack.extend([tail, head.__enter__()])
        return head

    yield start
    for client in reversed(stack):
        client.__exit__(None, None, None)


def _infer(head: TestClient, mode: str, image: bytes, **params) -> httpx.Response:
    return head.post(f"/infer/{mode}", content=image, params=params)


def _expected_top(bundle_dir: Path, rate: str, image: bytes, task: str = "imagenet") -> list:
    bundle = load_bundle(bundle_dir)
    tables = bundle.rate_coding_tables(rate)
    latent = DeviceRunner(bundle, rate=rate)(image)
    received = tables.latent(tables.symbols(latent))
    task, logits = ServerRunner(bundle, rate=rate)(received, task)
    return [r.index for r in top_k(logits[0], bundle.labels(task), 5)]


# --- the tail ----------------------------------------------------------------------------------


def test_the_tail_runs_the_rate_the_envelope_names(ladder_dir, cat_jpeg) -> None:
    bundle = load_bundle(ladder_dir)
    latent = DeviceRunner(bundle, rate="r3")(cat_jpeg)
    body = wire.encode_entropy(
        latent, bundle_id=bundle.id, tables=bundle.rate_coding_tables("r3"), rate="r3"
    )
    with _tail(ladder_dir) as tail:
        answer = tail.post(f"/v2/models/{bundle.name}/infer", content=body,
                           params={"task": "imagenet"},
                           headers={"Content-Type": wire.CONTENT_TYPE})  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert answer.json()["rate"] == "r3"
        assert [e["index"] for e in answer.json()["top_k"]] == _expected_top(
            ladder_dir, "r3", cat_jpeg
        )
        fields = msgpack.unpackb(body)
        for rate, status in (("r9", 422), (17, 400), ("x" * 40, 400)):
            hostile = msgpack.packb({**fields, "rate": rate})
            response = tail.post(f"/v2/models/{bundle.name}/infer", content=hostile,
                                 headers={"Content-Type": wire.CONTENT_TYPE})  # fmt: skip
            problem = assert_problem(response, status)
            if status == 422:
                assert "['r1', 'r2', 'r3']" in problem["detail"]


# --- the head ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", RATES)
def test_split_sends_the_rate_asked_for_and_says_so(head_on, ladder_dir, cat_jpeg, rate):
    head = head_on(ladder_dir)
    response = _infer(head, "split", cat_jpeg, rate=rate)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["rate"] == rate and answer["encoding"]["quantisation"] == "entropy"
    assert [e["index"] for e in answer["top_k"]] == _expected_top(ladder_dir, rate, cat_jpeg)
    bundle = load_bundle(ladder_dir)
    latent = DeviceRunner(bundle, rate=rate)(cat_jpeg)
    sent = wire.encode_entropy(
        latent, bundle_id=bundle.id, tables=bundle.rate_coding_tables(rate), rate=rate
    )
    assert answer["bytes_sent"] == len(sent)


def test_split_entropy_without_a_rate_sends_the_default_rate(head_on, ladder_dir, cat_jpeg):
    answer = _infer(head_on(ladder_dir), "split", cat_jpeg, quantisation="entropy").json()
    assert answer["rate"] == load_bundle(ladder_dir).manifest.default_rate


@pytest.mark.parametrize("mode", ["split", "auto", "local"])
def test_an_unknown_rate_is_a_422_naming_the_rates(head_on, ladder_dir, cat_jpeg, mode) -> None:
    response = _infer(head_on(ladder_dir), mode, cat_jpeg, rate="r9")
    problem = assert_problem(response, 422, "unknown-rate")
    assert "['r1', 'r2', 'r3']" in problem["detail"]


def test_a_rate_with_another_quantisation_is_refused(head_on, ladder_dir, cat_jpeg) -> None:
    response = _infer(head_on(ladder_dir), "split", cat_jpeg, rate="r1", quantisation="uint8")
    assert "entropy" in assert_problem(response, 422)["detail"]


def test_a_rate_on_a_one_rate_bundle_is_refused(head_on, toy_bundle_dir, cat_jpeg) -> None:
    response = _infer(head_on(toy_bundle_dir), "split", cat_jpeg, rate="r1")
    assert "one rate" in assert_problem(response, 422, "unknown-rate")["detail"]


# --- auto ----------------------------------------------------------------------------------


def test_auto_never_serves_a_rate_over_max_drop_or_unmeasured(head_on, measured_dir, cat_jpeg):
    head = head_on(measured_dir)  # exploration included: 25 decisions, every 10th explores
    served = set()
    for _ in range(25):
        answer = _infer(head, "auto", cat_jpeg, max_drop=2.0, task="imagenet").json()
        served.add((answer["mode"], answer.get("rate")))
        why = answer["auto"]
        assert why["excluded"] == {"local": 10.0, "split@r1": 5.0}
        assert why["unmeasured_rates"] == ["split@r3"]
        assert set(why["allowed"]) == {"offload", "split@r2"}
        assert why["rate"] == answer.get("rate")
    assert served <= {("offload", None), ("split", "r2")}


def test_on_a_slow_link_auto_picks_the_small_rate_the_bound_allows(head_on, measured_dir,
                                                                   cat_jpeg) -> None:  # fmt: skip
    head = head_on(measured_dir, prior_rate_mbps=0.01)  # 1,250 B/s before anything is sent
    answer = _infer(head, "auto", cat_jpeg, max_drop=6.0, task="imagenet").json()
    assert answer["mode"] == "split" and answer["rate"] == "r1", answer["auto"]
    assert answer["auto"]["chose"] == "split" and answer["auto"]["rate"] == "r1"
    assert answer["predictions"]["split@r1"]["bytes"] == 1000  # the manifest's median
    assert answer["predicted_ms"]["split@r1"] < answer["predicted_ms"]["split@r2"]
    # a bound that rules r1 out: the next rate
    answer = _infer(head, "auto", cat_jpeg, max_drop=2.0, task="imagenet").json()
    assert (answer["mode"], answer.get("rate")) == ("split", "r2"), answer["auto"]


def test_auto_with_a_rate_considers_that_split_rate_only(head_on, measured_dir, cat_jpeg):
    head = head_on(measured_dir, prior_rate_mbps=0.01)
    answer = _infer(head, "auto", cat_jpeg, max_drop=6.0, task="imagenet", rate="r2").json()
    assert answer["auto"]["allowed"] == ["offload", "split@r2"]
    assert (answer["mode"], answer.get("rate")) == ("split", "r2")


@pytest.fixture(scope="module")
def offload_only_dir(toy_bundle_dir, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy bundle with figures that leave auto only offload within 2 points."""
    copy = tmp_path_factory.mktemp("offload-only") / "bundle"
    shutil.copytree(toy_bundle_dir, copy)
    top1 = {"offload": 80.0, "local": 60.0, "split_uint8": 60.0}
    record_accuracy(copy, "imagenet", TaskAccuracy(images=50, data="toy", top1=top1))
    return copy


@pytest.mark.parametrize(("mbps", "reencoded"), [(1000.0, False), (0.01, True)])
def test_auto_offload_re_encodes_only_when_that_is_predicted_faster(
    head_on, offload_only_dir, cat_jpeg, mbps, reencoded
) -> None:
    """Re-encoding costs device time (measured at warm-up): on a fast link it saves less
    than it costs, so auto sends the upload as it is; on a slow one it sends the smaller
    re-encoded photo, and says so."""
    head = head_on(offload_only_dir, offload_reencode="webp:90", prior_rate_mbps=mbps)
    answer = _infer(head, "auto", cat_jpeg, max_drop=2.0, task="imagenet").json()
    assert answer["mode"] == "offload", answer["auto"]
    assert (answer["bytes_sent"] < len(cat_jpeg)) is reencoded
    assert answer["auto"].get("reencode", False) is reencoded
    assert answer["predictions"]["offload"].get("reencode", False) is reencoded


# --- the device app (gateway and head in one process) and a real tail --------------------------


def test_the_device_app_passes_the_rate_through(ladder_dir, cat_jpeg) -> None:
    with (
        running_device(ladder_dir, None) as device,
        httpx.Client(base_url=device.gateway, timeout=20) as client,
    ):
        answer = classify(client, cat_jpeg, mode="split", rate="r1", task="imagenet").json()
        assert answer["rate"] == "r1"
        assert [e["index"] for e in answer["top_k"]] == _expected_top(ladder_dir, "r1", cat_jpeg)
        problem = assert_problem(classify(client, cat_jpeg, mode="split", rate="r9"), 422)
        assert "['r1', 'r2', 'r3']" in problem["detail"]
