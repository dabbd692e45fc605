"""Head service against a fake tail (httpx.MockTransport) and a real in-process tail."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers import FakeTail, assert_problem, infer, serving

from services.head.app import create_app
from services.head.settings import HeadSettings
from services.tail.app import create_app as create_tail
from services.tail.settings import TailSettings
from splitdnn import wire
from splitdnn.bundle import load_bundle
from splitdnn.latency import LatencyModel
from splitdnn.runtime import ImageClassifier

TOKEN = "s3cret"
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(scope="module")
def bundle(toy_bundle_dir):
    return load_bundle(toy_bundle_dir)


@pytest.fixture(scope="module")
def fake_tail(bundle) -> FakeTail:
    return FakeTail(bundle)


@pytest.fixture(scope="module", params=["production", "fake"])
def head(request, toy_bundle_dir, fake_tail):
    """The head with the fake tail behind its production transport (keep-alive connections
    to a real socket) and behind an in-memory ``httpx.MockTransport``."""
    with ExitStack() as stack:
        if request.param == "production":
            tail_url, transport = stack.enter_context(serving(fake_tail)), None
        else:
            tail_url, transport = "http://tail.test", httpx.MockTransport(fake_tail)
        settings = HeadSettings(
            bundle=toy_bundle_dir,
            token=TOKEN,
            tail_url=tail_url,
            load_in_background=False,
            max_image_bytes=200_000,
            tail_retry_s=0.0,
            tail_timeout_s=1.0,  # a silent tail on a real socket costs this much
        )
        c = stack.enter_context(TestClient(create_app(settings, tail_transport=transport)))
        c.headers["Authorization"] = f"Bearer {TOKEN}"  # the head checks its callers too
        yield c


@pytest.fixture(autouse=True)
def healthy_tail(fake_tail):
    fake_tail.failure = None
    yield
    fake_tail.failure = None


def test_routes_read_the_settings_the_app_was_built_with(head) -> None:
    """From the app's state, not a dependency override: with any override set, FastAPI
    re-inspects every dependency's signature on every request (most of the head's CPU
    outside the model; ~20 ms a request on the 0.11-core device profile)."""
    assert head.app.dependency_overrides == {}
    response = infer(head, "local", b"\xff\xd8" + b"\0" * 200_001)  # over this app's limit
    assert response.status_code == 413, response.text


def test_head_probed_the_tail_at_start_up(head, fake_tail, bundle) -> None:
    assert fake_tail.last("GET").url.path == f"/v2/models/{bundle.name}"
    assert head.get("/v2/health/ready").status_code == 200


def test_split_sends_one_envelope_with_token_and_request_id(
    head, fake_tail, bundle, cat_jpeg
) -> None:
    response = infer(head, "split", cat_jpeg, task="caltech101", top_k=2)
    answer = response.json()
    sent = fake_tail.last()
    envelope = wire.decode(sent.content)
    assert sent.url.path == f"/v2/models/{bundle.name}/infer"
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["x-request-id"] == answer["request_id"] == response.headers["x-request-id"]
    assert sent.headers["content-type"] == wire.CONTENT_TYPE
    assert envelope.bundle_id == bundle.id and envelope.quantisation == "uint8"
    assert answer["bytes_sent"] == len(sent.content)
    assert answer["mode"] == "split" and answer["fallback"] is False
    assert answer["task"] == "caltech101" and len(answer["top_k"]) == 2
    assert answer["timings_ms"]["tail"] == pytest.approx(1.5)
    assert set(answer["timings_ms"]) == {"head", "transfer", "tail", "total"}


def test_quantisation_and_compression_can_be_chosen_per_request(head, fake_tail, cat_jpeg) -> None:
    sizes = {}
    for quantisation in ("fp32", "fp16", "uint8", "uint4"):
        answer = infer(head, "split", cat_jpeg, quantisation=quantisation).json()
        assert wire.decode(fake_tail.last().content).quantisation == quantisation
        sizes[quantisation] = answer["bytes_sent"]
    assert sizes["uint4"] < sizes["uint8"] < sizes["fp16"] < sizes["fp32"]
    infer(head, "split", cat_jpeg)
    assert wire.decode(fake_tail.last().content).compression == "zstd"  # the default
    infer(head, "split", cat_jpeg, compression="none")
    assert wire.decode(fake_tail.last().content).compression == "none"


def test_split_sends_what_the_bundle_names_unless_the_settings_say_otherwise(
    toy_bundle_dir, fake_tail, cat_jpeg, tmp_path
) -> None:
    """``quantisation: bundle`` (the default) reads the manifest's ``quantisation``."""
    import shutil

    from splitdnn.bundle import record_quantisation

    named = tmp_path / "uint4-bundle"
    shutil.copytree(toy_bundle_dir, named)
    record_quantisation(named, "uint4")
    assert load_bundle(named).id == load_bundle(toy_bundle_dir).id  # figures, not files
    for setting, sent in (("bundle", "uint4"), ("uint8", "uint8")):
        settings = HeadSettings(
            bundle=named, tail_url="http://tail.test", load_in_background=False,
            quantisation=setting,
        )  # fmt: skip
        app = create_app(settings, tail_transport=httpx.MockTransport(fake_tail))
        with TestClient(app) as client:
            assert infer(client, "split", cat_jpeg).status_code == 200
        assert wire.decode(fake_tail.last().content).quantisation == sent


def test_offload_sends_the_image_bytes_unchanged(head, fake_tail, bundle, cat_jpeg) -> None:
    answer = infer(head, "offload", cat_jpeg).json()
    sent = fake_tail.last()
    assert sent.content == cat_jpeg and sent.headers["x-bundle-id"] == bundle.id
    assert answer["bytes_sent"] == len(cat_jpeg) and answer["mode"] == "offload"


def test_local_never_calls_the_tail(head, fake_tail, cat_jpeg) -> None:
    before = len(fake_tail.requests)
    answer = infer(head, "local", cat_jpeg).json()
    assert len(fake_tail.requests) == before
    assert answer["mode"] == "local" and answer["bytes_sent"] == 0
    assert answer["timings_ms"]["transfer"] == 0


def _unavailable(request: httpx.Request) -> httpx.Response:
    return httpx.Response(503, json={"status": 503}, headers={"Retry-After": "1"})


def _refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def _late(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("deadline", request=request)


@pytest.mark.parametrize("failure", [_unavailable, _refused, _late])
@pytest.mark.parametrize("mode", ["split", "offload"])
def test_tail_failure_falls_back_to_local(head, fake_tail, cat_jpeg, failure, mode) -> None:
    fake_tail.failure = failure
    answer = infer(head, mode, cat_jpeg).json()
    assert answer["mode"] == "local" and answer["requested_mode"] == mode
    assert answer["fallback"] is True and answer["fallback_reason"]
    assert answer["bytes_sent"] == 0


@pytest.mark.parametrize(
    ("failure", "status"), [(_unavailable, 503), (_refused, 503), (_late, 504)]
)
def test_no_fallback_when_the_request_says_so(head, fake_tail, cat_jpeg, failure, status) -> None:
    fake_tail.failure = failure
    response = infer(head, "split", cat_jpeg, fallback="false")
    assert_problem(response, status)
    if status == 503:  # the tail is down: say when to try again, like every other 503
        assert response.headers["retry-after"] == "1"


@pytest.mark.parametrize(
    ("status", "slug"), [(409, "bundle-mismatch"), (401, "unauthorized"), (400, "bad-envelope")]
)
def test_tail_problems_are_relayed_not_hidden_by_fallback(
    head, fake_tail, cat_jpeg, status, slug
) -> None:
    problem = {"type": f"urn:splitdnn:problem:{slug}", "title": "t", "status": status,
               "detail": "from the tail", "instance": "/v2/models/toy/infer"}  # fmt: skip

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status, json=problem, headers={"Content-Type": "application/problem+json"}
        )

    fake_tail.failure = refuse
    body = assert_problem(infer(head, "split", cat_jpeg), status, slug)
    assert body["detail"] == "from the tail"
    assert body["instance"] == "/infer/split"  # the head's caller's path, not the tail's route


def test_auto_reports_its_choice_and_predictions(head, fake_tail, cat_jpeg) -> None:
    answer = infer(head, "auto", cat_jpeg).json()
    assert answer["requested_mode"] == "auto"
    assert set(answer["predicted_ms"]) == {"local", "split", "offload"}


def _fresh_head(toy_bundle_dir, tail: FakeTail) -> TestClient:
    settings = HeadSettings(bundle=toy_bundle_dir, tail_url="http://tail.test",
                            load_in_background=False, tail_retry_s=0.0)  # fmt: skip
    return TestClient(create_app(settings, httpx.MockTransport(tail)))


def _measured_fastest(head, image: bytes) -> str:
    """Run every fixed mode twice and name the one whose client-side wall time was lowest."""
    walls: dict[str, float] = {}
    for mode in ("local", "split", "offload") * 2:
        start = time.perf_counter()
        assert infer(head, mode, image).json()["fallback"] is False
        walls[mode] = min(walls.get(mode, float("inf")), time.perf_counter() - start)
    return min(walls, key=walls.get)


@pytest.mark.parametrize("slow", ["link", "image model"])
def test_auto_picks_the_mode_that_was_measured_fastest(
    toy_bundle_dir, bundle, cat_jpeg, monkeypatch, slow
) -> None:
    """A slow link makes local fastest; a slow image model (the device's local model and the
    tail's offload model) makes split fastest. Auto must follow the measurements either way."""
    tail = FakeTail(bundle)
    if slow == "link":
        tail.delay_s = 0.25
    else:
        original = ImageClassifier.run

        def slow_model(self, *args, **kwargs):
            time.sleep(0.25)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(ImageClassifier, "run", slow_model)
    with _fresh_head(toy_bundle_dir, tail) as head:
        fastest = _measured_fastest(head, cat_jpeg)
        assert fastest == ("local" if slow == "link" else "split")
        answer = infer(head, "auto", cat_jpeg).json()
        assert answer["mode"] == fastest, answer["predicted_ms"]


def test_auto_serves_no_mode_whose_measured_drop_exceeds_max_drop(
    toy_bundle_dir, cat_jpeg, monkeypatch, tmp_path
) -> None:
    """Split is measured fastest (a slow image model), but the bundle's manifest says split
    loses 9 points on the task: auto serves another mode and says why, unless the request
    allows a 9-point drop."""
    import shutil

    from splitdnn.bundle import TaskAccuracy, record_accuracy

    shutil.copytree(toy_bundle_dir, tmp_path / "bundle")
    figures = {"offload": 90.0, "local": 89.5, "split_uint8": 81.0}
    record_accuracy(
        tmp_path / "bundle", "imagenet", TaskAccuracy(images=750, data="x", top1=figures)
    )
    original = ImageClassifier.run

    def slow_model(self, *args, **kwargs):
        time.sleep(0.25)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ImageClassifier, "run", slow_model)
    with _fresh_head(tmp_path / "bundle", FakeTail(load_bundle(tmp_path / "bundle"))) as head:
        assert _measured_fastest(head, cat_jpeg) == "split"
        for _ in range(12):  # past an exploration turn too
            answer = infer(head, "auto", cat_jpeg, task="imagenet").json()
            assert answer["mode"] in ("local", "offload"), answer["auto"]
        assert answer["auto"]["max_drop"] == 2.0
        assert answer["auto"]["excluded"] == {"split": 9.0}
        assert answer["auto"]["allowed"] == ["local", "offload"]
        allowed = infer(head, "auto", cat_jpeg, task="imagenet", max_drop=9.5).json()
        assert allowed["mode"] == "split" and allowed["auto"]["excluded"] == {}
        unmeasured = infer(head, "auto", cat_jpeg, task="caltech101").json()
        assert unmeasured["auto"]["unmeasured"] == ["local", "split", "offload"]
        assert_problem(infer(head, "auto", cat_jpeg, max_drop=-1), 422, "validation-error")
        # /latency says what auto would serve under the same bound, without steering it
        would = head.get("/latency", params={"task": "imagenet"}).json()
        assert would["auto_would_choose"] in ("local", "offload")
        assert would["auto"]["excluded"] == {"split": 9.0} and would["auto"]["task"] == "imagenet"
        loose = head.get("/latency", params={"task": "imagenet", "max_drop": 9.5}).json()
        assert loose["auto_would_choose"] == "split"


def test_auto_avoids_a_tail_that_just_failed(toy_bundle_dir, fake_tail, cat_jpeg) -> None:
    settings = HeadSettings(
        bundle=toy_bundle_dir, tail_url="http://tail.test", load_in_background=False,
        tail_retry_s=60.0, prior_rate_mbps=1e6,
    )  # fmt: skip
    with TestClient(create_app(settings, httpx.MockTransport(fake_tail))) as head:
        fake_tail.failure = _refused
        assert infer(head, "split", cat_jpeg).json()["fallback"] is True
        answer = infer(head, "auto", cat_jpeg).json()
        assert answer["mode"] == "local" and answer["fallback"] is False
        assert answer["predicted_ms"]["split"] is None
        assert head.get("/latency").json()["estimates"]["tail_available"] is False


def test_latency_endpoint_predicts_every_mode(toy_bundle_dir, bundle, cat_jpeg, monkeypatch):
    with _fresh_head(toy_bundle_dir, FakeTail(bundle)) as head:
        before = head.get("/latency", params={"image_bytes": 10_000}).json()
        assert set(before["predictions"]) == {"local", "split", "offload"}
        assert before["predictions"]["offload"]["bytes"] == 10_000
        assert before["estimates"]["rate_samples"] == 0
        infer(head, "split", cat_jpeg)
        infer(head, "offload", cat_jpeg)
        after = head.get("/latency").json()["estimates"]
        assert after["rate_samples"] == 2
        decisions = []
        original = LatencyModel.choose
        monkeypatch.setattr(
            LatencyModel, "choose", lambda *a, **k: decisions.append(1) or original(*a, **k)
        )
        for _ in range(12):  # polling /latency is not auto deciding (its exploration counts)
            head.get("/latency")
        assert decisions == []
        infer(head, "auto", cat_jpeg)
        assert decisions == [1]


def test_image_errors(head, cat_jpeg) -> None:
    assert_problem(infer(head, "split", b"GIF89a but not really"), 415, "unsupported-image")
    assert_problem(infer(head, "local", cat_jpeg[:2000]), 400, "corrupt-image")
    assert_problem(infer(head, "split", cat_jpeg * 7), 413)
    for task in ("cifar10", ""):  # a bad value of a parameter (422), never the default
        assert_problem(infer(head, "split", cat_jpeg, task=task), 422, "unknown-task")
    assert_problem(infer(head, "sideways", cat_jpeg), 422, "validation-error")


def test_metrics_count_modes_and_bytes_sent(head, cat_jpeg) -> None:
    infer(head, "split", cat_jpeg)
    text = head.get("/metrics").text
    assert 'splitdnn_bytes_sent_total{mode="split",service="head"}' in text
    assert 'splitdnn_mode_requests_total{fallback="false",mode="split",service="head"}' in text


def test_head_and_tail_with_different_bundles_answer_409(
    toy_bundle_dir, other_bundle_dir, cat_jpeg
) -> None:
    tail_settings = TailSettings(bundle=other_bundle_dir, load_in_background=False)
    with TestClient(create_tail(tail_settings)) as tail:
        settings = HeadSettings(
            bundle=toy_bundle_dir, tail_url="http://tail.test", load_in_background=False
        )
        with TestClient(create_app(settings, tail_transport=tail._transport)) as head:
            for mode in ("split", "offload"):
                body = assert_problem(infer(head, mode, cat_jpeg), 409, "bundle-mismatch")
                assert load_bundle(other_bundle_dir).id in body["detail"]


# --- the head's own admission and the tail's answers -----------------------------------------


def test_the_head_authenticates_its_callers_with_its_token(head, cat_jpeg) -> None:
    for auth in ("", "Bearer nope"):
        response = head.post("/infer/local", content=cat_jpeg, headers={"Authorization": auth})
        assert_problem(response, 401, "unauthorized")
    assert_problem(head.get("/latency", headers={"Authorization": ""}), 401)
    assert head.get("/v2/health/ready", headers={"Authorization": ""}).status_code == 200


def test_over_the_in_flight_limit_is_503_at_once(head, cat_jpeg) -> None:
    limiter = head.app.state.limiter
    assert limiter.limit == 2  # the default: a device has few cores
    limiter.in_flight = limiter.limit
    try:
        start = time.perf_counter()
        response = head.post("/infer/local", content=cat_jpeg * 7)  # 413 if it were read
        elapsed = time.perf_counter() - start
    finally:
        limiter.in_flight = 0
    assert_problem(response, 503, "overloaded")
    assert response.headers["retry-after"] == "1" and elapsed < 1.0
    assert infer(head, "local", cat_jpeg).status_code == 200


@pytest.mark.parametrize(
    "answer",
    [
        {"timings_ms": {"compute": 1.0}},  # no top_k
        {"top_k": "tabby"},
        {"top_k": [{"index": 1, "label": "x", "score": "high"}]},
        {"top_k": [], "timings_ms": ["compute"]},
        {"top_k": [], "timings_ms": {"compute": "slow"}},
        ["top_k"],
    ],
    ids=["no-top-k", "top-k-string", "score-string", "timings-list", "compute-string", "list"],
)
def test_a_tail_200_without_what_the_head_needs_falls_back_or_is_502(
    head, fake_tail, cat_jpeg, answer
) -> None:
    fake_tail.failure = lambda request: httpx.Response(200, json=answer)
    for mode in ("split", "offload"):
        response = infer(head, mode, cat_jpeg)
        assert response.status_code == 200, response.text
        assert response.json()["fallback"] is True and response.json()["mode"] == "local"
        assert_problem(infer(head, mode, cat_jpeg, fallback="false"), 502, "bad-upstream-answer")


def test_a_tail_200_that_is_not_json_falls_back(head, fake_tail, cat_jpeg) -> None:
    fake_tail.failure = lambda request: httpx.Response(200, content=b"<html>")
    assert infer(head, "split", cat_jpeg).json()["fallback"] is True


@pytest.mark.parametrize("status", [500, 502])
def test_a_500_or_502_is_tried_again_and_answered_by_the_tail(
    head, fake_tail, cat_jpeg, status
) -> None:
    """A Ray tail's proxy answers 500 for a replica that died mid-request; the next try
    reaches a live replica, so the device gets a split answer, not a fallback."""

    def fail_once(request: httpx.Request) -> httpx.Response:
        fake_tail.failure = None
        return httpx.Response(status, text="Internal Server Error")

    fake_tail.failure = fail_once
    before = len(fake_tail.requests)
    answer = infer(head, "split", cat_jpeg, fallback="false")
    assert answer.status_code == 200, answer.text
    assert answer.json()["mode"] == "split" and answer.json()["fallback"] is False
    assert len([r for r in fake_tail.requests[before:] if r.method == "POST"]) == 2


def test_a_500_every_time_is_tried_once_more_then_falls_back(head, fake_tail, cat_jpeg) -> None:
    fake_tail.failure = lambda request: httpx.Response(500, text="Internal Server Error")
    before = len(fake_tail.requests)
    answer = infer(head, "split", cat_jpeg).json()
    assert answer["mode"] == "local" and answer["fallback"] is True
    assert len([r for r in fake_tail.requests[before:] if r.method == "POST"]) == 2


def test_an_overloaded_tail_is_not_tried_again(head, fake_tail, cat_jpeg) -> None:
    fake_tail.failure = _unavailable
    before = len(fake_tail.requests)
    assert infer(head, "split", cat_jpeg).json()["fallback"] is True
    assert len([r for r in fake_tail.requests[before:] if r.method == "POST"]) == 1
