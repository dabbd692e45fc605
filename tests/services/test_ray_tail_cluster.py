"""The tail on a real two-node Ray cluster: the head reaches it by URL like the plain tail,
and a replica killed mid-run costs no request.

Slow (a minute or two: two Ray nodes start, two replicas load, a replica is restarted);
skipped with the reason when Ray is not installed or the cluster cannot start here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest
from helpers import free_port

pytest.importorskip("ray", reason="needs the ray extra (pip install 'splitdnn[ray]')")
pytest.importorskip("ray.serve", reason="needs the ray extra (pip install 'splitdnn[ray]')")

from benchmarks import loadgen
from benchmarks.raycluster import ClusterError, LocalRayCluster
from splitdnn import serve

pytestmark = pytest.mark.slow

REQUESTS, RATE, KILL_AT = 200, 16.0, 60


@pytest.fixture(scope="module")
def cluster():
    try:
        with LocalRayCluster(nodes=2, cpus_per_node=1) as running:
            yield running
    except ClusterError as exc:
        pytest.skip(f"a two-node Ray cluster cannot start here: {exc}")


@pytest.fixture(scope="module")
def ray_tail(cluster, toy_bundle_dir):
    try:
        # a long batching wait keeps each request ~0.25 s inside a replica, so the kill
        # surely catches some in flight (the toy model alone answers in a millisecond)
        with cluster.tail(toy_bundle_dir, replicas=2, batch_max_size=8, batch_wait_ms=250) as url:
            yield url
    except ClusterError as exc:
        pytest.skip(f"the Ray tail cannot be deployed here: {exc}")


@pytest.fixture(scope="module")
def head(ray_tail, toy_bundle_dir, tmp_path_factory):
    """The plain head service, pointed at the Ray tail's URL like at any tail; its log is
    ``head.log`` (the test counts the tail requests it tried again)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("head") / "head.log"
    env = {
        **os.environ,
        **serve.head_env(ray_tail, toy_bundle_dir),
        "SPLITDNN_HEAD_INTRA_OP_THREADS": "1",
        "SPLITDNN_HEAD_MAX_IN_FLIGHT": "32",
        "SPLITDNN_HEAD_TAIL_TIMEOUT_S": "20",
        "SPLITDNN_HEAD_TAIL_RETRIES": os.environ.get("SPLITDNN_TEST_HEAD_RETRIES", "1"),
    }
    command = serve.uvicorn_command(serve.HEAD_APP, "127.0.0.1", port, "warning")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        assert serve.wait_ready(url + "/v2/health/ready", 120, process), "head not ready"
        yield url, log_path
    finally:
        serve.stop_processes([process])


def test_the_ray_tail_serves_the_same_routes_and_problems(ray_tail, toy_bundle_dir) -> None:
    from splitdnn.bundle import load_bundle

    bundle = load_bundle(toy_bundle_dir)
    with httpx.Client(base_url=ray_tail, timeout=30) as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        meta = client.get(f"/v2/models/{bundle.name}").json()
        assert meta["bundle"] == bundle.id
        bad = client.post(
            f"/v2/models/{bundle.name}/infer",
            content=b"not an envelope",
            headers={"Content-Type": "application/x-splitdnn-envelope"},
        )
        assert bad.status_code == 400
        assert bad.headers["content-type"].startswith("application/problem+json")
        assert client.get("/v2/models/nope").status_code == 404


def test_status_shows_the_replica_count_without_the_dashboard(cluster, ray_tail) -> None:
    """The cluster runs without a dashboard (Ray's `serve status` fails there); `splitdnn
    serve status` reads the deployment through the cluster itself."""
    command = [sys.executable, "-m", "splitdnn.cli", "serve", "status", "--json",
               "--address", cluster.address]  # fmt: skip
    done = subprocess.run(command, env=cluster.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    (application,) = report["applications"].values()
    (deployment,) = application["deployments"].values()
    assert deployment["running"] == 2 and deployment["replicas"]["RUNNING"] == 2
    assert "Traceback" not in done.stderr


def test_a_replica_killed_mid_run_fails_no_request(cluster, head, cat_jpeg) -> None:
    """Split requests from the head (no fallback allowed) at a steady rate; one replica is
    SIGKILLed a third of the way in. Every request must get a split answer, and Ray must
    bring the deployment back to two replicas."""
    head, log_path = head
    before = set(cluster.replica_pids())
    assert len(before) == 2
    killed: dict[str, float] = {}

    def kill_one() -> None:
        victim = cluster.replica_pids(node=1)[0]  # the worker node's replica
        psutil.Process(victim).kill()
        killed["pid"], killed["at"] = victim, time.monotonic()

    client = httpx.Client(timeout=60)

    def send(i: int) -> loadgen.Reply:
        if i == KILL_AT:
            threading.Thread(target=kill_one).start()
        response = client.post(
            f"{head}/infer/split",
            params={"fallback": "false"},
            content=cat_jpeg,
            headers={"Content-Type": "image/jpeg"},
        )
        if response.status_code != 200:
            return loadgen.Reply(f"http_{response.status_code}", {"detail": response.text[:300]})
        answer = response.json()
        return loadgen.Reply(None, {"mode": answer["mode"], "fallback": answer["fallback"]})

    summary = loadgen.run(send, rate=RATE, count=REQUESTS, workers=32)
    client.close()
    failed = [r for r in summary["records"] if r["error"]]
    assert killed, "the replica was not killed"
    assert not failed, failed[:3]
    assert all(r["mode"] == "split" and r["fallback"] is False for r in summary["records"])

    deadline = time.monotonic() + 120  # a bound on waiting, not a speed claim
    while time.monotonic() < deadline:
        now = set(cluster.replica_pids())
        if len(now) == 2 and killed["pid"] not in now:
            break
        time.sleep(0.2)
    recovered = set(cluster.replica_pids())
    assert len(recovered) == 2 and killed["pid"] not in recovered
    retried = log_path.read_text().count("trying again")
    print(
        f"replica {killed['pid']} killed at request {KILL_AT}: {retried} tail requests tried "
        f"again by the head, {len(failed)} failed of "
        f"{summary['requests']}, p99 {summary['p99_ms']} ms, replacement process after "
        f"{time.monotonic() - killed['at']:.1f} s (or less: polled after the run)"
    )
