"""Gateway against a fake head (httpx.MockTransport): parsing, refusals, relaying."""

from __future__ import annotations

import io
import json

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers import assert_problem
from PIL import Image

from gateway.app import create_app
from gateway.settings import GatewaySettings


class FakeHead:
    """Records what the gateway forwards and answers like the head."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.reply: httpx.Response | None = None
        self.error: type[httpx.HTTPError] | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.requests.append(request)
        if self.error is not None:
            raise self.error("fake failure", request=request)
        if request.url.path == "/v2/health/ready":
            return httpx.Response(200, json={"ready": True})
        if self.reply is not None:
            return self.reply
        mode = request.url.path.rsplit("/", 1)[-1]
        return httpx.Response(
            200,
            json={
                "mode": mode,
                "top_k": [{"index": 3, "label": "tabby", "score": 0.9}],
                "timings_ms": {"head": 5.0, "transfer": 2.0, "tail": 1.0, "total": 8.0},
                "bytes_sent": 400,
                "bundle": "0123456789abcdef",
                "request_id": request.headers.get("x-request-id"),
                "fallback": False,
            },
        )


@pytest.fixture
def fake_head() -> FakeHead:
    return FakeHead()


@pytest.fixture
def gateway(fake_head):
    settings = GatewaySettings(head_url="http://head.test", max_image_bytes=100_000)
    with TestClient(create_app(settings, head_transport=httpx.MockTransport(fake_head))) as c:
        yield c


def png(size: tuple[int, int] = (32, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buffer, "PNG")
    return buffer.getvalue()


def test_multipart_and_raw_bodies_forward_the_same_bytes(gateway, fake_head, cat_jpeg) -> None:
    multipart = gateway.post(
        "/classify", params={"mode": "split"}, files={"image": ("cat.jpg", cat_jpeg, "image/jpeg")}
    )
    raw = gateway.post(
        "/classify", params={"mode": "split"}, content=cat_jpeg,
        headers={"Content-Type": "image/jpeg"},
    )  # fmt: skip
    assert multipart.status_code == raw.status_code == 200
    first, second = [r for r in fake_head.requests if r.url.path == "/infer/split"]
    assert first.content == second.content == cat_jpeg
    answer = raw.json()
    assert answer["mode"] == "split" and answer["top_k"][0]["label"] == "tabby"
    assert answer["image_bytes"] == len(cat_jpeg)


def test_answer_has_the_documented_fields(gateway, cat_jpeg) -> None:
    answer = gateway.post("/classify", files={"image": cat_jpeg}).json()
    assert {"mode", "top_k", "timings_ms", "bytes_sent", "bundle", "request_id", "fallback"} <= set(
        answer
    )
    assert set(answer["timings_ms"]) == {"head", "transfer", "tail", "total"}
    assert answer["mode"] == "split"  # the default mode


def test_request_id_is_propagated_and_server_timing_has_the_stages(
    gateway, fake_head, cat_jpeg
) -> None:
    response = gateway.post(
        "/classify", files={"image": cat_jpeg}, headers={"X-Request-ID": "trace-7"}
    )
    assert fake_head.requests[-1].headers["x-request-id"] == "trace-7"
    assert response.json()["request_id"] == response.headers["x-request-id"] == "trace-7"
    timing = response.headers["server-timing"]
    for stage in ("head;dur=5.00", "transfer;dur=2.00", "tail;dur=1.00", "total;dur="):
        assert stage in timing


@pytest.mark.parametrize("mode", ["local", "offload", "auto"])
def test_mode_task_and_options_reach_the_head(gateway, fake_head, cat_jpeg, mode) -> None:
    gateway.post(
        "/classify",
        params={"mode": mode, "task": "caltech101", "top_k": 3, "fallback": "false"},
        files={"image": cat_jpeg},
    )
    sent = fake_head.requests[-1]
    assert sent.url.path == f"/infer/{mode}"
    assert dict(sent.url.params) == {"task": "caltech101", "top_k": "3", "fallback": "false"}


def test_auto_accuracy_bound_reaches_the_head(gateway, fake_head, cat_jpeg) -> None:
    gateway.post("/classify", params={"mode": "auto", "max_drop": 0.5}, files={"image": cat_jpeg})
    assert fake_head.requests[-1].url.params["max_drop"] == "0.5"
    refused = gateway.post("/classify", params={"max_drop": 101}, files={"image": cat_jpeg})
    assert refused.status_code == 422


def test_not_an_image_is_415_before_reaching_the_head(gateway, fake_head) -> None:
    assert_problem(gateway.post("/classify", files={"image": b"hello"}), 415, "unsupported-image")
    response = gateway.post(
        "/classify", content=b"{}", headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 415, "unsupported-media-type")
    assert_problem(gateway.post("/classify", content=b"", headers={"Content-Type": "image/png"}),
                   415)  # fmt: skip
    assert not fake_head.requests


def test_oversized_images_are_413(gateway, fake_head, cat_jpeg) -> None:
    big = cat_jpeg * 3  # over the 100 kB limit
    assert_problem(gateway.post("/classify", files={"image": big}), 413)
    response = gateway.post("/classify", content=big, headers={"Content-Type": "image/jpeg"})
    assert_problem(response, 413)
    assert not fake_head.requests


def test_too_many_pixels_is_413(fake_head) -> None:
    settings = GatewaySettings(head_url="http://head.test", max_pixels=100)
    with TestClient(create_app(settings, head_transport=httpx.MockTransport(fake_head))) as c:
        assert_problem(c.post("/classify", files={"image": png()}), 413, "image-too-large")


def test_unknown_mode_and_missing_field_are_422(gateway, cat_jpeg) -> None:
    body = assert_problem(
        gateway.post("/classify", params={"mode": "teleport"}, files={"image": cat_jpeg}),
        422,
        "validation-error",
    )
    assert body["errors"][0]["loc"] == ["query", "mode"]
    assert_problem(gateway.post("/classify", files={"photo": cat_jpeg}), 422)


def test_head_problems_are_relayed_with_the_gateway_request_id_and_path(
    gateway, fake_head, cat_jpeg
) -> None:
    problem = {"type": "urn:splitdnn:problem:corrupt-image", "title": "Truncated", "status": 400,
               "detail": "truncated", "request_id": "head-id",
               "instance": "/infer/split"}  # fmt: skip
    fake_head.reply = httpx.Response(
        400, content=json.dumps(problem), headers={"Content-Type": "application/problem+json"}
    )
    response = gateway.post("/classify", files={"image": cat_jpeg})
    body = assert_problem(response, 400, "corrupt-image")
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["instance"] == "/classify"  # the caller's path, not the head's internal route


def test_an_unreachable_head_is_503_with_retry_after(gateway, fake_head, cat_jpeg) -> None:
    fake_head.error = httpx.ConnectError
    response = gateway.post("/classify", files={"image": cat_jpeg})
    assert_problem(response, 503, "upstream-unavailable")
    assert response.headers["retry-after"] == "1"


def test_overloaded_head_keeps_retry_after(gateway, fake_head, cat_jpeg) -> None:
    fake_head.reply = httpx.Response(
        503,
        json={"type": "urn:splitdnn:problem:overloaded", "title": "busy", "status": 503,
              "detail": "busy"},
        headers={"Retry-After": "1"},
    )  # fmt: skip
    response = gateway.post("/classify", files={"image": cat_jpeg})
    assert_problem(response, 503, "overloaded")
    assert response.headers["retry-after"] == "1"


@pytest.mark.parametrize(("error", "status"), [(httpx.ConnectError, 503), (httpx.ReadTimeout, 504)])
def test_head_down_or_late_is_a_problem_not_a_500(gateway, fake_head, cat_jpeg, error, status):
    fake_head.error = error
    assert_problem(gateway.post("/classify", files={"image": cat_jpeg}), status)
    assert_problem(gateway.get("/v2/health/ready"), 503)


def test_ready_follows_the_head(gateway) -> None:
    assert gateway.get("/v2/health/ready").json() == {"ready": True}
    assert gateway.get("/v2/health/live").json() == {"live": True}
    assert "splitdnn_requests_total" in gateway.get("/metrics").text
    assert "/classify" in gateway.get("/openapi.json").json()["paths"]


# --- admission, tokens and hostile uploads ---------------------------------------------------


def test_the_gateway_sends_the_head_its_token(fake_head, cat_jpeg) -> None:
    settings = GatewaySettings(head_url="http://head.test", token="shared")
    with TestClient(create_app(settings, head_transport=httpx.MockTransport(fake_head))) as c:
        assert c.post("/classify", content=cat_jpeg).status_code == 200
    assert fake_head.requests[-1].headers["authorization"] == "Bearer shared"


def test_over_the_in_flight_limit_is_503_at_once(gateway, fake_head, cat_jpeg) -> None:
    limiter = gateway.app.state.limiter
    assert limiter.limit == 8
    limiter.in_flight = limiter.limit
    try:
        response = gateway.post("/classify", content=cat_jpeg)
    finally:
        limiter.in_flight = 0
    assert_problem(response, 503, "overloaded")
    assert response.headers["retry-after"] == "1"
    assert not [r for r in fake_head.requests if r.url.path.startswith("/infer")]


def test_a_png_declaring_a_bomb_and_other_formats_are_refused(gateway, fake_head) -> None:
    from benchmarks.inputs import png_declaring

    bomb = png_declaring(60_000, 60_000)
    assert_problem(gateway.post("/classify", content=bomb), 413, "image-too-large")
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF")
    assert_problem(gateway.post("/classify", content=gif.getvalue()), 415, "unsupported-image")
    assert not fake_head.requests
