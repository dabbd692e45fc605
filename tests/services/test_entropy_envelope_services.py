"""Entropy-coded envelopes (version 2) between head and tail: the tail takes them when its
bundle carries coding tables and answers what the server part computes on the decoded
integers; hostile streams, and version 2 without tables, are 400 problems; the head sends
them with quantisation=entropy, and refuses that for a bundle without tables."""

from __future__ import annotations

import json
import shutil

import msgpack
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import assert_problem

from services.head.app import create_app as create_head
from services.head.settings import HeadSettings
from services.tail.app import create_app
from services.tail.settings import TailSettings
from splitdnn import rans, wire
from splitdnn.bundle import bundle_id_of, load_bundle, sha256_file
from splitdnn.runtime import DeviceRunner, ServerRunner


def _tables(channels: int) -> dict:
    """Tables for ``channels`` channels of symbols -2..2 around medians 0.5."""
    cdf = [0, 4096, 16384, 49152, 61440, 65536]
    return {"medians": [0.5] * channels, "offsets": [-2] * channels, "cdfs": [cdf] * channels}


@pytest.fixture(scope="module")
def coded_bundle_dir(toy_bundle_dir, tmp_path_factory):
    """The toy bundle plus coding tables, listed and hashed in its manifest."""
    out = tmp_path_factory.mktemp("coded") / "bundle"
    shutil.copytree(toy_bundle_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    channels = manifest["bottleneck"]["shape"][0]
    (out / "coding.json").write_text(json.dumps({"precision": 16, **_tables(channels)}))
    path = out / "coding.json"
    manifest["files"]["coding.json"] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest["coding"] = "coding.json"
    manifest["bundle_id"] = bundle_id_of({n: e["sha256"] for n, e in manifest["files"].items()})
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _client(bundle_dir):
    settings = TailSettings(bundle=bundle_dir, load_in_background=False)
    return TestClient(create_app(settings))


def _post(client, bundle, body: bytes):
    return client.post(
        f"/v2/models/{bundle.name}/infer",
        content=body,
        params={"logits": "true", "task": "caltech101"},
        headers={"Content-Type": wire.CONTENT_TYPE},
    )


def test_an_entropy_coded_envelope_is_answered_on_the_decoded_integers(coded_bundle_dir):
    bundle = load_bundle(coded_bundle_dir)
    tables = bundle.coding_tables()
    latent = np.random.default_rng(0).normal(0.5, 1.0, (1, *bundle.manifest.bottleneck.shape))
    body = wire.encode_entropy(latent.astype(np.float32), bundle_id=bundle.id, tables=tables)
    with _client(coded_bundle_dir) as client:
        answer = _post(client, bundle, body)
    assert answer.status_code == 200, answer.text
    _, expected = ServerRunner(bundle)(tables.latent(tables.symbols(latent)), "caltech101")
    got = np.asarray(answer.json()["outputs"][0]["data"], np.float32).reshape(expected.shape)
    np.testing.assert_array_equal(got, expected)


def test_hostile_entropy_streams_are_400_problems(coded_bundle_dir):
    bundle = load_bundle(coded_bundle_dir)
    tables = bundle.coding_tables()
    latent = np.zeros((1, *bundle.manifest.bottleneck.shape), np.float32)
    fields = msgpack.unpackb(wire.encode_entropy(latent, bundle_id=bundle.id, tables=tables))
    truncated = {**fields, "streams": [fields["streams"][0][:-2]]}
    noise = {**fields, "streams": [bytes(range(256)) * 2]}
    with _client(coded_bundle_dir) as client:
        for hostile in (truncated, noise):
            response = _post(client, bundle, msgpack.packb(hostile, use_bin_type=True))
            assert_problem(response, 400)


def test_a_tail_without_coding_tables_refuses_version_2(toy_bundle_dir, coded_bundle_dir):
    bundle = load_bundle(toy_bundle_dir)
    channels = bundle.manifest.bottleneck.shape[0]
    tables = rans.CodingTables.from_lists(**_tables(channels))
    latent = np.zeros((1, *bundle.manifest.bottleneck.shape), np.float32)
    body = wire.encode_entropy(latent, bundle_id=bundle.id, tables=tables)
    with _client(toy_bundle_dir) as client:
        problem = assert_problem(_post(client, bundle, body), 400)
    assert "coding tables" in problem["detail"]


def _head(bundle_dir, tail, **settings):
    head = HeadSettings(
        bundle=bundle_dir, tail_url="http://tail.test", load_in_background=False, **settings
    )
    return TestClient(create_head(head, tail_transport=tail._transport))


def test_the_head_sends_split_entropy_coded_to_a_tail_that_takes_it(coded_bundle_dir, cat_jpeg):
    bundle = load_bundle(coded_bundle_dir)
    tables = bundle.coding_tables()
    latent = DeviceRunner(bundle)(cat_jpeg)
    expected = wire.encode_entropy(latent, bundle_id=bundle.id, tables=tables)
    with (
        _client(coded_bundle_dir) as tail,
        _head(coded_bundle_dir, tail, quantisation="entropy") as head,
    ):
        response = head.post("/infer/split", content=cat_jpeg, params={"task": "caltech101"})
        assert response.status_code == 200, response.text
        assert response.json()["bytes_sent"] == len(expected)
        plain = head.post("/infer/split", content=cat_jpeg, params={"quantisation": "uint8"})
        assert plain.status_code == 200 and plain.json()["bytes_sent"] != len(expected)


def test_by_default_split_is_sent_as_the_bundle_was_trained_to_be(
    coded_bundle_dir, toy_bundle_dir, cat_jpeg
):
    """An entropy-coded student's bundle sends entropy-coded integers with no setting (its
    8-bit envelope would spend bytes it was trained not to need); any other sends uint8."""
    for bundle_dir, sent in ((coded_bundle_dir, "entropy"), (toy_bundle_dir, "uint8")):
        with _client(bundle_dir) as tail, _head(bundle_dir, tail) as head:
            answer = head.post("/infer/split", content=cat_jpeg).json()
            assert answer["encoding"]["quantisation"] == sent, answer
            info = head.get(f"/v2/models/{load_bundle(bundle_dir).id}").json()
            assert info["quantisation"] == sent


def test_entropy_needs_a_bundle_with_coding_tables(toy_bundle_dir, cat_jpeg):
    with _client(toy_bundle_dir) as tail:
        with _head(toy_bundle_dir, tail) as head:
            response = head.post(
                "/infer/split", content=cat_jpeg, params={"quantisation": "entropy"}
            )
            assert "coding tables" in assert_problem(response, 422)["detail"]
        with _head(toy_bundle_dir, tail, quantisation="entropy") as head:  # loading fails
            ready = head.get("/v2/health/ready")
            assert ready.status_code == 503 and "coding tables" in ready.text


def test_head_and_tail_compile_the_entropy_coder_before_they_serve(
    coded_bundle_dir, toy_bundle_dir, monkeypatch
):
    """A bundle with coding tables: both warm the coder's compiled kernels once at load (no
    request pays numba's compile) and report what it took; without tables neither does."""
    calls = []
    monkeypatch.setattr(rans, "warm_up", lambda: calls.append(1) or 1234.5)
    bundle = load_bundle(coded_bundle_dir)
    with _client(coded_bundle_dir) as tail, _head(coded_bundle_dir, tail) as head:
        assert len(calls) == 2
        for service in (tail, head):
            meta = service.get(f"/v2/models/{bundle.name}").json()
            assert meta["warmup_ms"]["entropy_coder"] == 1234.5
    calls.clear()
    with _client(toy_bundle_dir) as tail, _head(toy_bundle_dir, tail) as head:
        assert calls == []
        meta = tail.get(f"/v2/models/{load_bundle(toy_bundle_dir).name}").json()
        assert meta["warmup_ms"]["entropy_coder"] == 0.0
