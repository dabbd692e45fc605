"""``splitdnn serve ...``: options become environment and one ``uvicorn.run`` call."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from splitdnn import serve
from splitdnn.cli_serve import serve_app

runner = CliRunner()


@pytest.fixture
def calls(monkeypatch) -> list[tuple[tuple, dict]]:
    """Record uvicorn.run instead of serving; keep os.environ changes local to the test."""
    import uvicorn

    recorded: list[tuple[tuple, dict]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: recorded.append((a, k)))
    monkeypatch.setattr(os, "environ", dict(os.environ))
    return recorded


def test_serve_tail_runs_the_tail_factory(calls, toy_bundle_dir) -> None:
    result = runner.invoke(
        serve_app, ["tail", "--port", "9101", "--bundle", str(toy_bundle_dir), "--token", "t"]
    )
    assert result.exit_code == 0, result.output
    ((args, kwargs),) = calls
    assert args == ("services.tail.app:create_app",)
    assert kwargs["factory"] is True and kwargs["port"] == 9101
    assert os.environ["SPLITDNN_BUNDLE"] == str(toy_bundle_dir)
    assert os.environ["SPLITDNN_TOKEN"] == "t"


def test_serve_head_passes_the_tail_url(calls, toy_bundle_dir) -> None:
    result = runner.invoke(
        serve_app,
        ["head", "--port", "9102", "--tail-url", "http://edge:1", "--bundle", str(toy_bundle_dir),
         "--quantisation", "fp16"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert calls[0][0] == ("services.head.app:create_app",)
    assert os.environ["SPLITDNN_HEAD_TAIL_URL"] == "http://edge:1"
    assert os.environ["SPLITDNN_HEAD_QUANTISATION"] == "fp16"


def test_serve_gateway_passes_both_urls(calls) -> None:
    result = runner.invoke(
        serve_app,
        ["gateway", "--port", "9100", "--head-url", "http://h:2", "--tail-url", "http://t:3"],
    )
    assert result.exit_code == 0, result.output
    assert calls[0][0] == ("gateway.app:create_app",) and calls[0][1]["port"] == 9100
    assert os.environ["SPLITDNN_GATEWAY_HEAD_URL"] == "http://h:2"
    assert os.environ["SPLITDNN_GATEWAY_TAIL_URL"] == "http://t:3"


def test_missing_bundle_is_a_message_and_exit_code(calls, tmp_path) -> None:
    result = runner.invoke(serve_app, ["tail", "--bundle", str(tmp_path)])
    assert result.exit_code == 2 and not calls
    assert "export default" in result.output


def test_bad_quantisation_is_refused(calls, toy_bundle_dir) -> None:
    result = runner.invoke(
        serve_app, ["head", "--bundle", str(toy_bundle_dir), "--quantisation", "int4"]
    )
    assert result.exit_code == 2 and not calls


@pytest.mark.parametrize("quantisation", ["entropy", "bundle"])
def test_serve_head_may_send_entropy_or_as_the_bundle_says(
    calls, toy_bundle_dir, quantisation
) -> None:
    args = ["head", "--bundle", str(toy_bundle_dir), "--quantisation", quantisation]
    result = runner.invoke(serve_app, args)
    assert result.exit_code == 0, result.output
    assert os.environ["SPLITDNN_HEAD_QUANTISATION"] == quantisation


def test_serve_device_runs_gateway_and_head_in_one_process(calls, toy_bundle_dir) -> None:
    result = runner.invoke(
        serve_app,
        ["device", "--port", "9103", "--tail-url", "http://edge:1", "--bundle", str(toy_bundle_dir),
         "--default-mode", "auto"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert calls[0][0] == ("gateway.app:create_device_app",) and calls[0][1]["port"] == 9103
    assert os.environ["SPLITDNN_HEAD_TAIL_URL"] == "http://edge:1"
    assert os.environ["SPLITDNN_BUNDLE"] == str(toy_bundle_dir)
    assert os.environ["SPLITDNN_GATEWAY_DEFAULT_MODE"] == "auto"


def test_serve_all_plans_the_tail_and_the_device_wired(monkeypatch, toy_bundle_dir) -> None:
    started: list[tuple[list[str], dict]] = []

    class FakeProcess:
        def __init__(self, command, env):
            started.append((command, env))

        def poll(self):
            return 3  # every child "exits" at once, so serve_all returns

        def wait(self, timeout=None):
            return 3

    monkeypatch.setattr(serve.subprocess, "Popen", FakeProcess)
    monkeypatch.setattr(serve, "wait_ready", lambda *a, **k: True)
    monkeypatch.setattr(serve, "ports_in_use", lambda host, ports: [])
    code = serve.serve_all(bundle=toy_bundle_dir, tail_port=1, gateway_port=3)
    assert code == 3
    apps = [command[3] for command, _ in started]
    assert apps == [serve.TAIL_APP, serve.DEVICE_APP]
    device_env = started[1][1]
    assert device_env["SPLITDNN_HEAD_TAIL_URL"] == "http://127.0.0.1:1"
    assert started[1][0][started[1][0].index("--port") + 1] == "3"


def test_library_imports_no_web_stack_and_wire_latency_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import splitdnn.wire, splitdnn.latency\n"
        "assert 'torch' not in sys.modules, 'wire/latency imported torch'\n"
        "import splitdnn.bundle, splitdnn.runtime, splitdnn.serve, splitdnn.cli_serve\n"
        "bad = {m.split('.')[0] for m in sys.modules} & {'fastapi', 'uvicorn', 'httpx',"
        " 'starlette', 'services', 'gateway', 'torch', 'onnxruntime'}\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("command", ["tail", "head", "all"])
@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "edge.example"])
def test_a_non_loopback_bind_without_a_token_is_refused(
    calls, toy_bundle_dir, monkeypatch, command, host
) -> None:
    monkeypatch.delenv("SPLITDNN_TOKEN", raising=False)
    args = [command, "--host", host, "--bundle", str(toy_bundle_dir)]
    result = runner.invoke(serve_app, args)
    assert result.exit_code == 2 and not calls
    assert "without a token" in result.output and "--insecure" in result.output
    if command != "all":  # with a token, or with --insecure, it starts
        assert runner.invoke(serve_app, [*args, "--token", "t"]).exit_code == 0
        assert runner.invoke(serve_app, [*args, "--insecure"]).exit_code == 0
        assert len(calls) == 2


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_binds_need_no_token(calls, toy_bundle_dir, monkeypatch, host) -> None:
    monkeypatch.delenv("SPLITDNN_TOKEN", raising=False)
    result = runner.invoke(serve_app, ["tail", "--host", host, "--bundle", str(toy_bundle_dir)])
    assert result.exit_code == 0, result.output


def test_the_gateway_is_public_and_forwards_the_token(calls) -> None:
    result = runner.invoke(serve_app, ["gateway", "--host", "0.0.0.0", "--token", "t"])
    assert result.exit_code == 0, result.output
    assert os.environ["SPLITDNN_TOKEN"] == "t"


def test_serve_tail_ray_deploys_through_the_ray_app(calls, toy_bundle_dir, monkeypatch) -> None:
    """``--ray`` hands the options to services.tail.ray_app.run (by import string) and the
    batching settings to the replicas' environment; uvicorn is not started."""
    ray_app = pytest.importorskip("services.tail.ray_app", reason="needs the ray extra")
    deployed: list[dict] = []
    monkeypatch.setattr(ray_app, "run", lambda **options: deployed.append(options))
    result = runner.invoke(
        serve_app,
        ["tail", "--ray", "--replicas", "2", "--max-replicas", "4", "--address", "h:6379",
         "--batch-max-size", "8", "--batch-wait-ms", "2.5", "--bundle", str(toy_bundle_dir)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert calls == []
    ((options),) = deployed
    assert options["replicas"] == 2 and options["max_replicas"] == 4
    assert options["address"] == "h:6379"
    assert os.environ["SPLITDNN_TAIL_BATCH_MAX_SIZE"] == "8"
    assert os.environ["SPLITDNN_TAIL_BATCH_WAIT_MS"] == "2.5"
    assert os.environ["SPLITDNN_BUNDLE"] == str(toy_bundle_dir)


def test_serve_tail_ray_refuses_bad_replica_counts(calls, toy_bundle_dir) -> None:
    result = runner.invoke(
        serve_app,
        ["tail", "--ray", "--replicas", "3", "--max-replicas", "2",
         "--bundle", str(toy_bundle_dir)],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "max_replicas" in result.output


@pytest.mark.parametrize("address", ["auto", "closed-port"])
def test_ray_tail_status_without_a_cluster_is_one_line_not_a_traceback(
    tmp_path, monkeypatch, address
) -> None:
    """Issue #22 item 9: Ray's own ``serve status`` ends in a traceback without the
    dashboard; ours says what is missing, at once (``ray.init`` on a dead address retries
    for minutes)."""
    pytest.importorskip("ray.serve", reason="needs the ray extra (pip install 'splitdnn[ray]')")
    from helpers import free_port

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # no cluster of this machine is found
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if address == "closed-port":
        address = f"127.0.0.1:{free_port()}"
    result = runner.invoke(serve_app, ["status", "--address", address])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Ray" in result.stderr


# --- NoNN: members, the gateway's flags, serve all --nonn ---------------------------------------


def test_serve_member_runs_member_index_on_its_default_port(calls, toy_nonn_bundle_dir) -> None:
    result = runner.invoke(
        serve_app, ["member", "--nonn", str(toy_nonn_bundle_dir), "--index", "1"]
    )
    assert result.exit_code == 0, result.output
    ((args, kwargs),) = calls
    assert args == (serve.MEMBER_APP,) and kwargs["port"] == serve.DEFAULT_PORTS["member"] + 1
    assert os.environ["SPLITDNN_NONN_BUNDLE"] == str(toy_nonn_bundle_dir)
    assert os.environ["SPLITDNN_MEMBER_INDEX"] == "1"


def test_serve_member_refuses_a_member_the_bundle_does_not_have(calls, toy_nonn_bundle_dir):
    result = runner.invoke(
        serve_app, ["member", "--nonn", str(toy_nonn_bundle_dir), "--index", "2"]
    )
    assert result.exit_code == 2 and not calls
    assert "has 2 members" in result.stderr


def test_serve_gateway_with_nonn_and_no_head_url_serves_nonn_only(calls, toy_nonn_bundle_dir):
    result = runner.invoke(
        serve_app,
        ["gateway", "--nonn", str(toy_nonn_bundle_dir), "--member-url", "http://m0:1",
         "--member-url", "http://m1:2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert calls[0][0] == (serve.GATEWAY_APP,)
    assert os.environ["SPLITDNN_NONN_BUNDLE"] == str(toy_nonn_bundle_dir)
    assert json.loads(os.environ["SPLITDNN_GATEWAY_MEMBER_URLS"]) == ["http://m0:1", "http://m1:2"]
    assert "SPLITDNN_GATEWAY_HEAD_URL" not in os.environ
    from gateway.settings import GatewaySettings

    assert GatewaySettings().head_url is None  # what the gateway reads: no head


def test_serve_gateway_refuses_member_urls_that_do_not_fit_the_bundle(calls, toy_nonn_bundle_dir):
    args = ["gateway", "--nonn", str(toy_nonn_bundle_dir), "--member-url", "http://m0:1"]
    result = runner.invoke(serve_app, args)
    assert result.exit_code == 2 and not calls
    assert "2 members" in result.stderr and "--member-url" in result.stderr


def test_serve_all_with_nonn_starts_the_members_and_wires_them_to_the_device(
    monkeypatch, toy_bundle_dir, toy_nonn_bundle_dir
) -> None:
    started: list[tuple[list[str], dict]] = []

    class FakeProcess:
        def __init__(self, command, env):
            started.append((command, env))

        def poll(self):
            return 3

        def wait(self, timeout=None):
            return 3

    monkeypatch.setattr(serve.subprocess, "Popen", FakeProcess)
    monkeypatch.setattr(serve, "wait_ready", lambda *a, **k: True)
    monkeypatch.setattr(serve, "ports_in_use", lambda host, ports: [])
    code = serve.serve_all(
        bundle=toy_bundle_dir, tail_port=1, gateway_port=3, nonn_bundle=toy_nonn_bundle_dir
    )
    assert code == 3
    apps = [command[3] for command, _ in started]
    assert apps == [serve.TAIL_APP, serve.MEMBER_APP, serve.MEMBER_APP, serve.DEVICE_APP]
    assert [env["SPLITDNN_MEMBER_INDEX"] for _, env in started[1:3]] == ["0", "1"]
    device = started[3][1]
    assert json.loads(device["SPLITDNN_GATEWAY_MEMBER_URLS"]) == serve.member_urls("127.0.0.1", 2)
    assert device["SPLITDNN_NONN_BUNDLE"] == str(toy_nonn_bundle_dir)
