"""NoNN serving (issue #14, item 4) with real services on 127.0.0.1: two member services and
a gateway in ``mode=nonn`` fan out, join and answer; a stopped or silent member gives a
degraded answer (or 503 problem+json when so configured), never a hang; bad input is 4xx.
K = 4 (issue #24): any one of four members down still gives the degraded answer."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import assert_problem, free_port

from splitdnn import serve, wire

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

MEMBER_APP = "services.member.app:create_app"
#: A guard only (the gateway's own member deadline is 2 s): a hang fails here, not forever.
CLIENT_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def nonn_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from toy_nonn_bundle import build_toy_nonn_bundle

    directory = tmp_path_factory.mktemp("toy-nonn")
    build_toy_nonn_bundle(directory)
    return directory


@pytest.fixture(scope="module")
def nonn_bundle_k4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from toy_nonn_bundle import CHANNELS_K4, build_toy_nonn_bundle

    directory = tmp_path_factory.mktemp("toy-nonn-k4")
    build_toy_nonn_bundle(directory, CHANNELS_K4)
    return directory


def _start(app: str, env: dict[str, str]) -> tuple[str, subprocess.Popen]:
    port = free_port()
    command = serve.uvicorn_command(app, "127.0.0.1", port, "warning")
    process = subprocess.Popen(command, env={**os.environ, **env})
    return f"http://127.0.0.1:{port}", process


@contextmanager
def members(bundle: Path) -> Iterator[list[tuple[str, subprocess.Popen]]]:
    from splitdnn.nonn.bundle import load_nonn_bundle

    started = []
    try:
        for i in range(len(load_nonn_bundle(bundle).manifest.members)):
            env = {
                "SPLITDNN_NONN_BUNDLE": str(bundle),
                "SPLITDNN_MEMBER_INDEX": str(i),
                "SPLITDNN_MEMBER_INTRA_OP_THREADS": "1",
            }
            started.append(_start(MEMBER_APP, env))
        for url, process in started:
            assert serve.wait_ready(url + "/v2/health/ready", 60, process), "member not ready"
        yield started
    finally:
        serve.stop_processes(p for _, p in started)


@contextmanager
def gateway(
    bundle: Path, urls: list[str], degraded: bool = True, wait_for: str = "live"
) -> Iterator[str]:
    """A gateway with the NoNN bundle and no head (it serves mode=nonn only)."""
    env = {
        "SPLITDNN_NONN_BUNDLE": str(bundle),
        "SPLITDNN_GATEWAY_MEMBER_URLS": json.dumps(urls),
        "SPLITDNN_GATEWAY_MEMBER_TIMEOUT_S": "2",
        "SPLITDNN_GATEWAY_NONN_DEGRADED": str(degraded).lower(),
    }
    url, process = _start(serve.GATEWAY_APP, env)
    try:
        ok = serve.wait_ready(f"{url}/v2/health/{wait_for}", 30, process)
        assert ok, f"gateway not {wait_for}"
        yield url
    finally:
        serve.stop_processes([process])


def _expected(bundle: Path, image: bytes, missing: tuple[int, ...] = ()) -> int:
    """The top class computed here: each member's ONNX file, uint8 through the wire format,
    the numpy join (training means for missing members)."""
    from splitdnn.imaging import load_input
    from splitdnn.nonn.bundle import load_nonn_bundle
    from splitdnn.runtime import OnnxModel

    nb = load_nonn_bundle(bundle)
    x = load_input(image, nb.preprocessing)
    feats = []
    for i in range(len(nb.manifest.members)):
        if i in missing:
            feats.append(None)
            continue
        f = OnnxModel(nb.member_path(i)).run(x)["features"]
        feats.append(wire.decode_array(wire.encode(f, bundle_id=nb.id, quantisation="uint8"))[1])
    return int(np.argmax(nb.join()(feats)[0]))


def test_member_answers_its_features_in_the_wire_format(nonn_bundle, cat_jpeg):
    from toy_nonn_bundle import CHANNELS

    with members(nonn_bundle) as started:
        for i, (url, _) in enumerate(started):
            response = httpx.post(url + "/v2/features", content=cat_jpeg, timeout=CLIENT_TIMEOUT)
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == wire.CONTENT_TYPE
            envelope, features = wire.decode_array(response.content)
            assert features.shape == (1, CHANNELS[i]) and envelope.quantisation == "uint8"
            assert len(response.content) <= 2048
            info = httpx.get(url + "/v2/member", timeout=CLIENT_TIMEOUT).json()
            assert info["index"] == i and info["channels"] == CHANNELS[i]
            fp16 = httpx.post(
                url + "/v2/features",
                content=cat_jpeg,
                params={"quantisation": "fp16"},
                timeout=CLIENT_TIMEOUT,
            )
            assert wire.decode_array(fp16.content)[0].quantisation == "fp16"
        bad = httpx.post(started[0][0] + "/v2/features", content=b"not an image")
        assert_problem(bad, 415)
        assert_problem(
            httpx.post(started[0][0] + "/v2/features?quantisation=int4", content=cat_jpeg), 422
        )


def classify_nonn(gateway_url: str, image: bytes) -> httpx.Response:
    """``POST /classify?mode=nonn`` with the image, allowing for the members' start-up."""
    return httpx.post(
        gateway_url + "/classify", params={"mode": "nonn"}, content=image, timeout=CLIENT_TIMEOUT
    )


def test_gateway_fans_out_joins_and_degrades_when_a_member_stops(nonn_bundle, cat_jpeg):
    with members(nonn_bundle) as started:
        urls = [u for u, _ in started]
        with gateway(nonn_bundle, urls) as gw:
            response = classify_nonn(gw, cat_jpeg)
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["mode"] == "nonn" and answer["degraded"] is False
            assert answer["top_k"][0]["index"] == _expected(nonn_bundle, cat_jpeg)
            assert [m["index"] for m in answer["members"]] == [0, 1]
            assert all(m["ok"] and 0 < m["bytes_received"] <= 2048 for m in answer["members"])
            # the photo goes up to each member: K copies are what the device sends
            assert all(m["bytes_sent"] == len(cat_jpeg) for m in answer["members"])
            assert answer["bytes_sent"] == 2 * len(cat_jpeg)
            assert answer["bytes_received"] == sum(m["bytes_received"] for m in answer["members"])
            assert {"head", "transfer", "tail", "join", "total"} <= set(answer["timings_ms"])
            assert {"request_id", "image_bytes", "bundle", "task", "fallback"} <= set(answer)

            # bad input is refused before any member is asked
            assert_problem(
                httpx.post(gw + "/classify", params={"mode": "nonn"}, content=b"GIF89a..."),
                415,
            )
            for task in ("imagenet", ""):  # not the NoNN bundle's one task: 422, as the head
                params = {"mode": "nonn", "task": task}
                refused = httpx.post(gw + "/classify", params=params, content=cat_jpeg)
                assert_problem(refused, 422, "unknown-task")

            # stop member 1: the answer comes from member 0 and member 1's training means
            serve.stop_processes([started[1][1]])
            response = classify_nonn(gw, cat_jpeg)
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["degraded"] is True and answer["missing_members"] == [1]
            assert (
                answer["members"][1]["ok"] is False
                and "unreachable" in answer["members"][1]["error"]
            )
            assert answer["bytes_sent"] == len(cat_jpeg)  # nothing went to the stopped member
            assert answer["top_k"][0]["index"] == _expected(nonn_bundle, cat_jpeg, missing=(1,))

        with gateway(nonn_bundle, urls, degraded=False) as strict:
            response = classify_nonn(strict, cat_jpeg)
            body = assert_problem(response, 503, "upstream-unavailable")
            assert "member 1" in body["detail"]


def test_with_four_members_any_one_down_gives_the_degraded_answer(nonn_bundle_k4, cat_jpeg):
    with members(nonn_bundle_k4) as started:
        urls = [u for u, _ in started]
        with gateway(nonn_bundle_k4, urls) as gw:
            response = classify_nonn(gw, cat_jpeg)
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["degraded"] is False
            assert [m["index"] for m in answer["members"]] == [0, 1, 2, 3]
            assert answer["top_k"][0]["index"] == _expected(nonn_bundle_k4, cat_jpeg)
        for down in range(4):  # member `down` at an address where nothing listens
            with gateway(
                nonn_bundle_k4, [*urls[:down], f"http://127.0.0.1:{free_port()}", *urls[down + 1 :]]
            ) as gw:
                response = classify_nonn(gw, cat_jpeg)
                assert response.status_code == 200, response.text
                answer = response.json()
                assert answer["degraded"] is True and answer["missing_members"] == [down]
                expected = _expected(nonn_bundle_k4, cat_jpeg, missing=(down,))
                assert answer["top_k"][0]["index"] == expected


def test_a_nonn_only_gateway_is_ready_when_its_members_are_and_serves_nonn_only(
    nonn_bundle, cat_jpeg
):
    """No head to wait for: ready means mode=nonn can answer (with degraded answers, one
    member up is enough); a request naming no mode gets mode=nonn, a head mode a 422."""
    with (
        members(nonn_bundle) as started,
        gateway(nonn_bundle, [u for u, _ in started], wait_for="ready") as gw,
    ):
        response = httpx.post(gw + "/classify", content=cat_jpeg, timeout=CLIENT_TIMEOUT)
        assert response.status_code == 200, response.text
        assert response.json()["mode"] == "nonn"
        refused = httpx.post(gw + "/classify?mode=split", content=cat_jpeg)
        assert "mode=nonn only" in assert_problem(refused, 422)["detail"]
        serve.stop_processes([started[1][1]])
        assert httpx.get(gw + "/v2/health/ready").status_code == 200  # degraded answers
        serve.stop_processes([started[0][1]])
        body = assert_problem(httpx.get(gw + "/v2/health/ready"), 503)
        assert "NoNN members" in body["detail"]


@contextmanager
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers (a hung member)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        sock.close()


def test_a_silent_member_times_out_into_a_degraded_answer(nonn_bundle, cat_jpeg):
    with members(nonn_bundle) as started, silent_server() as silent:
        with gateway(nonn_bundle, [started[0][0], silent]) as gw:
            response = classify_nonn(gw, cat_jpeg)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["missing_members"] == [1]
        assert "timed out" in answer["members"][1]["error"]


def test_nonn_mode_without_configuration_is_a_clear_4xx(cat_jpeg):
    url, process = _start(serve.GATEWAY_APP, {"SPLITDNN_GATEWAY_HEAD_URL": "http://127.0.0.1:9"})
    try:
        assert serve.wait_ready(url + "/v2/health/live", 60, process)
        response = httpx.post(url + "/classify", params={"mode": "nonn"}, content=cat_jpeg)
        body = assert_problem(response, 422)
        assert "SPLITDNN_NONN_BUNDLE" in body["detail"]
    finally:
        serve.stop_processes([process])
