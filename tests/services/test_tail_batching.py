"""The Ray tail's batching seam, in one process (no cluster): the same routes, one session run
for concurrent requests, each answer its own rows, the wait inside the reported compute."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import assert_problem

from services.tail.app import create_app
from services.tail.settings import TailSettings
from splitdnn import oip, wire
from splitdnn.bundle import load_bundle
from splitdnn.runtime import ServerRunner

ray_app = pytest.importorskip("services.tail.ray_app", reason="needs the ray extra")


@pytest.fixture(scope="module")
def bundle(toy_bundle_dir):
    return load_bundle(toy_bundle_dir)


@pytest.fixture(autouse=True)
def replica_context(monkeypatch):
    """``@serve.batch`` reads its replica's ``max_ongoing_requests`` (to warn); outside a
    replica there is none, so stand one in."""
    config = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=16))
    monkeypatch.setattr(ray_app.serve, "get_replica_context", lambda: config)


def batching_tail(toy_bundle_dir, max_batch_size: int, wait_s: float):
    """A tail app with the Ray deployment's batching run, counting the session runs."""
    sizes: list[int] = []

    def counting(run):
        def counted(x: np.ndarray) -> dict[str, np.ndarray]:
            sizes.append(len(x))
            return run(x)

        return ray_app.batching(max_batch_size, wait_s)(counted)

    settings = TailSettings(bundle=toy_bundle_dir, load_in_background=False, max_in_flight=32)
    return TestClient(create_app(settings, wrap_run=counting)), sizes


def samples(bundle, n: int, batch: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (batch, *bundle.manifest.bottleneck.shape)
    return [rng.normal(size=shape).astype(np.float32) for _ in range(n)]


def post(client, bundle, x: np.ndarray):
    return client.post(
        f"/v2/models/{bundle.name}/infer",
        content=wire.encode(x, bundle_id=bundle.id, quantisation="fp32"),
        params={"logits": "true", "task": "caltech101"},
        headers={"Content-Type": wire.CONTENT_TYPE},
    )


def test_concurrent_requests_share_one_run_and_get_their_own_rows(toy_bundle_dir, bundle) -> None:
    """Four requests (one of them a batch of two) and a batch size of four: the batch fills,
    so it runs once whatever the timing (the 30 s wait never elapses), and each answer is the
    unbatched server part's on its own tensor."""
    client, sizes = batching_tail(toy_bundle_dir, max_batch_size=4, wait_s=30)
    xs = [*samples(bundle, 3), *samples(bundle, 1, batch=2)]
    with client, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda x: post(client, bundle, x), xs))
    server = ServerRunner(bundle)
    for x, answer in zip(xs, answers, strict=True):
        assert answer.status_code == 200, answer.text
        logits = np.asarray(answer.json()["outputs"][0]["data"]).reshape(len(x), -1)
        np.testing.assert_allclose(logits, server(x, "caltech101")[1], rtol=1e-5, atol=1e-5)
    assert sizes == [5]  # one session run for the four requests (five samples)


def test_the_batching_wait_is_in_the_compute_time_the_head_reads(toy_bundle_dir, bundle) -> None:
    """A lone request waits for its batch to fill until the timeout: the tail's
    ``timings_ms.compute`` (what the head's tail estimate and auto mode use) holds the wait."""
    client, _ = batching_tail(toy_bundle_dir, max_batch_size=8, wait_s=0.3)
    with client:
        answer = post(client, bundle, samples(bundle, 1)[0]).json()
    assert answer["timings_ms"]["compute"] >= 300
    assert answer["timings_ms"]["tail"] >= 300


def test_oip_and_bad_input_pass_the_batching_tail_like_the_plain_one(
    toy_bundle_dir, bundle
) -> None:
    """OIP v2 JSON rides the same batched run; a bad envelope is still problem+json 400."""
    client, sizes = batching_tail(toy_bundle_dir, max_batch_size=2, wait_s=0.01)
    x = samples(bundle, 1)[0]
    request = {
        "inputs": [
            {
                "name": "bottleneck",
                "datatype": "FP32",
                "shape": list(x.shape),
                "data": x.reshape(-1).tolist(),
            }
        ]
    }
    with client:
        answer = client.post(
            f"/v2/models/{bundle.name}/infer",
            json=request,
            headers={"Content-Type": oip.JSON_CONTENT_TYPE},
        )
        assert answer.status_code == 200, answer.text
        names = {o["name"] for o in answer.json()["outputs"]}
        assert names == {"logits_imagenet", "logits_caltech101"}
        bad = client.post(
            f"/v2/models/{bundle.name}/infer",
            content=b"not an envelope",
            headers={"Content-Type": wire.CONTENT_TYPE},
        )
        assert_problem(bad, 400)
    assert sizes == [1]  # the OIP request; the bad envelope never reached the run


def test_batching_off_is_the_plain_run() -> None:
    def run(x):
        return {"y": x}

    assert ray_app.batching(1, 0.01)(run) is run


def test_deployment_options_fixed_or_autoscaling() -> None:
    fixed = ray_app.deployment_options(replicas=2, env={"SPLITDNN_BUNDLE": "/b"})
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"]["runtime_env"] == {"env_vars": {"SPLITDNN_BUNDLE": "/b"}}
    scaled = ray_app.deployment_options(replicas=1, max_replicas=4, env={})
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"]["min_replicas"] == 1
    assert scaled["autoscaling_config"]["max_replicas"] == 4
    env = {"SPLITDNN_TOKEN": "t", "PYTHONPATH": "/src", "HOME": "/root"}
    assert ray_app.replica_env(env) == {"SPLITDNN_TOKEN": "t", "PYTHONPATH": "/src"}
