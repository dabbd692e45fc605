"""The product's main job, end to end with a real Docker engine.

Builds the images from docker/Dockerfile with compose, runs ``docker compose up --wait``,
classifies examples/cat.jpg through the device (gateway and head in one process) on
localhost:8000 in local, offload and split modes, checks the answers, the health, users,
threads and link shaping of the running stack, and tears everything down
(``compose down -v``) whatever happens.

Skipped, with the reason, where no Docker engine or compose plugin answers
(``scripts/ci-docker-setup.sh`` installs and starts both where it can).

Build settings come from the environment, with fallbacks for a machine without an image
registry or a PyTorch index:

* ``BASE_IMAGE``: else ``splitdnn-base:bookworm`` when that image exists
  (``scripts/build-base-image.sh``), else the compose default (python:3.11-slim-bookworm).
* ``TORCH_INDEX_URL``: else, when a directory of ``PIP_FIND_LINKS`` holds a CPU torch
  wheel for the image's Python, that wheel served on 127.0.0.1 for the build.
* ``PIP_INDEX_URL``, ``PIP_EXTRA_INDEX_URL``, ``PIP_TRUSTED_HOST``, ``CA_BUNDLE``: else this
  machine's pip configuration (``scripts/package-sources.py build-env``; the CA bundle is
  the file named by ``PIP_CERT`` or pip's ``cert``).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_helpers import answering

from benchmarks.system_tools import why_missing

pytestmark = [pytest.mark.docker, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ARM64_FILE = ROOT / "docker" / "compose.arm64.yml"
CAT = ROOT / "examples" / "cat.jpg"
PROJECT = "splitdnn-test"
GATEWAY = "http://127.0.0.1:8000"
PORTS = (8000, 8001)
#: ImageNet-1k domestic cats: tabby, tiger cat, Persian, Siamese, Egyptian cat.
CAT_CLASSES = range(281, 286)
BASE_STANDIN = "splitdnn-base:bookworm"
ARM64_STANDIN = "splitdnn-base:bookworm-arm64"
#: Cold builds export the bundle with torch: minutes on two busy cores.
BUILD_TIMEOUT_S = 2700
UP_TIMEOUT_S = 600
REQUEST_TIMEOUT_S = 180
TORCH_INDEX_PORT = 8719


def docker_unavailable() -> str | None:
    """Why the docker tests cannot run here, or None when they can."""
    if shutil.which("docker") is None:
        return "no docker CLI (bash scripts/ci-docker-setup.sh installs one)"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"no Docker engine answers ({last}); bash scripts/ci-docker-setup.sh starts one"
    compose = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    if compose.returncode != 0:
        return "no docker compose v2 plugin (bash scripts/ci-docker-setup.sh installs it)"
    return None


def run(
    args: list[str], timeout: float, env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command with a deadline; its output goes to ``log`` when given."""
    try:
        if log is None:
            return subprocess.run(
                args, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
            )
        with log.open("a") as out:
            out.write(f"\n$ {' '.join(args)}\n")
            out.flush()
            return subprocess.run(
                args, stdout=out, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                env=env, cwd=ROOT,
            )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(args)} did not finish within {timeout:.0f} s")


def tail_of(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def image_exists(name: str) -> bool:
    return run(["docker", "image", "inspect", name], timeout=30).returncode == 0


# --- build settings ---------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def find_cpu_torch_wheel(python_tag: str = "cp311") -> Path | None:
    """A CPU torch wheel for the images' Python in a PIP_FIND_LINKS directory, if any."""
    machine = {"arm64": "aarch64"}.get(platform.machine(), platform.machine())
    for entry in os.environ.get("PIP_FIND_LINKS", "").split():
        directory = Path(entry.removeprefix("file://"))
        if not directory.is_dir():
            continue
        pattern = rf"torch-[\d.]+\+cpu-{python_tag}-{python_tag}-.*{machine}\.whl"
        for wheel in sorted(directory.glob("torch-*.whl"), reverse=True):
            if re.fullmatch(pattern, wheel.name):
                return wheel
    return None


@contextlib.contextmanager
def local_torch_index(wheel: Path) -> Iterator[str]:
    """Serve ``wheel`` as a one-package simple index on 127.0.0.1 (builds use host net)."""
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp, "simple", "torch")
        project.mkdir(parents=True)
        (project / wheel.name).symlink_to(wheel)
        handler = functools.partial(_QuietHandler, directory=tmp)
        try:  # a fixed port keeps TORCH_INDEX_URL, and so the build cache, the same
            server = http.server.ThreadingHTTPServer(("127.0.0.1", TORCH_INDEX_PORT), handler)
        except OSError:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        with answering(server) as url:
            yield url + "/simple/"


def build_env(torch_index: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LINK_RATE", None)
    env.pop("LINK_DELAY", None)
    if "BASE_IMAGE" not in env and image_exists(BASE_STANDIN):
        env["BASE_IMAGE"] = BASE_STANDIN
    if torch_index and "TORCH_INDEX_URL" not in env:
        env["TORCH_INDEX_URL"] = torch_index
    for key, value in machine_package_sources().items():
        env.setdefault(key, value)
    return env


@contextlib.contextmanager
def image_build_env() -> Iterator[dict[str, str]]:
    """The environment for ``docker compose build``: :func:`build_env`, with this machine's
    CPU torch wheel served as the torch index while the build runs (unless one is set)."""
    wheel = None if "TORCH_INDEX_URL" in os.environ else find_cpu_torch_wheel()
    with contextlib.ExitStack() as resources:
        index = resources.enter_context(local_torch_index(wheel)) if wheel else None
        yield build_env(index)


def machine_package_sources() -> dict[str, str]:
    """The build variables from this machine's pip setup (the repository names no index)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "package_sources", ROOT / "scripts" / "package-sources.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_env()


def compose(*args: str) -> list[str]:
    return ["docker", "compose", "-p", PROJECT, "-f", str(COMPOSE_FILE), *args]


def ports_in_use() -> list[int]:
    import socket

    busy = []
    for port in PORTS:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


# --- the stack --------------------------------------------------------------------------


class Stack:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run(compose(*args), timeout=timeout, env=self.env)

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "40", timeout=60).stdout

    def container_env(self, service: str) -> dict[str, str]:
        """The environment of the service's main process (after the entrypoint)."""
        result = self.compose("exec", "-T", service, "cat", "/proc/1/environ", timeout=60)
        assert result.returncode == 0, result.stderr
        pairs = (item.partition("=") for item in result.stdout.split("\0") if item)
        return {key: value for key, _, value in pairs}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    busy = ports_in_use()
    if busy:
        pytest.fail(f"ports {busy} are taken; the stack needs {PORTS} (host networking)")
    log = tmp_path_factory.mktemp("docker") / "compose.log"
    with image_build_env() as env:
        stack = Stack(env, log)
        try:
            started = time.monotonic()
            built = run(compose("build"), timeout=BUILD_TIMEOUT_S, env=env, log=log)
            assert built.returncode == 0, f"docker compose build failed:\n{tail_of(log)}"
            # the gateway image (apart from a head; NoNN) is in no default service
            built = run(
                compose("--profile", "nonn", "build", "nonn-gateway"),
                timeout=BUILD_TIMEOUT_S,
                env=env,
                log=log,
            )
            assert built.returncode == 0, f"gateway image build failed:\n{tail_of(log)}"
            build_s = time.monotonic() - started
            up = run(
                compose("up", "-d", "--wait", "--wait-timeout", str(UP_TIMEOUT_S)),
                timeout=UP_TIMEOUT_S + 120,
                env=env,
                log=log,
            )
            assert up.returncode == 0, f"compose up failed:\n{tail_of(log)}\n{stack.logs()}"
            print(f"stack built in {build_s:.0f} s, up in {time.monotonic() - started:.0f} s")
            yield stack
        finally:
            down = run(
                compose("down", "-v", "--remove-orphans", "--timeout", "20"),
                timeout=180,
                env=env,
                log=log,
            )
            if down.returncode != 0:
                print(f"compose down failed:\n{tail_of(log, 20)}")


def classify(mode: str, **params: str) -> dict:
    import httpx

    response = httpx.post(
        f"{GATEWAY}/classify",
        params={"mode": mode, **params},
        files={"image": ("cat.jpg", CAT.read_bytes(), "image/jpeg")},
        timeout=REQUEST_TIMEOUT_S,
    )
    assert response.status_code == 200, f"{mode}: {response.status_code} {response.text}"
    return response.json()


def assert_a_cat(answer: dict) -> None:
    ranked = answer["top_k"]
    assert ranked[0]["index"] in CAT_CLASSES, json.dumps(answer, indent=1)
    scores = [r["score"] for r in ranked]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1


# --- tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["local", "offload", "split"])
def test_classifies_the_cat_in_each_mode(stack: Stack, mode: str):
    answer = classify(mode)
    assert answer["mode"] == mode and answer["fallback"] is False, answer
    assert_a_cat(answer)
    if mode == "local":
        assert answer["bytes_sent"] == 0
    else:
        assert answer["bytes_sent"] > 0
    if mode == "split":
        assert answer["encoding"]["quantisation"] == "uint8"


def test_split_sends_fewer_bytes_than_offload_and_agrees_with_it(stack: Stack):
    split, offload = classify("split"), classify("offload")
    assert split["bundle"] == offload["bundle"]
    assert split["bytes_sent"] < offload["bytes_sent"]
    top5 = {r["index"] for r in offload["top_k"]}
    assert split["top_k"][0]["index"] in top5


def test_readme_curl_command_works(stack: Stack):
    missing = why_missing("curl")
    if missing:
        pytest.skip(missing)
    result = run(
        ["curl", "-sS", "--max-time", "120", "-F", f"image=@{CAT}",
         f"{GATEWAY.replace('127.0.0.1', 'localhost')}/classify?mode=split"],
        timeout=150,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["mode"] == "split"
    assert_a_cat(answer)


def test_every_container_is_healthy_and_not_root(stack: Stack):
    result = stack.compose("ps", "--format", "json", timeout=60)
    assert result.returncode == 0, result.stderr
    text = result.stdout.strip()
    rows = json.loads(text) if text.startswith("[") else [json.loads(x) for x in text.splitlines()]
    assert {row["Service"] for row in rows} == {"link", "tail", "head"}
    for row in rows:
        assert row["State"] == "running" and row["Health"] == "healthy", row
        uid = stack.compose("exec", "-T", row["Service"], "id", "-u", timeout=60).stdout.strip()
        assert uid == "10001", row["Service"]


def test_thread_counts_follow_the_cpu_limits(stack: Stack):
    head = stack.container_env("head")  # HEAD_CPUS defaults to 1.0
    assert head["OMP_NUM_THREADS"] == "1"
    assert "SPLITDNN_HEAD_INTRA_OP_THREADS" not in head  # the sessions size themselves
    logs = stack.compose("logs", "head", timeout=60).stdout
    assert "ONNX Runtime threads: intra-op 1" in logs and "spinning off" in logs
    tail = stack.container_env("tail")  # TAIL_CPUS 2.0, capped by this machine's CPUs
    assert tail["OMP_NUM_THREADS"] == str(min(2, len(os.sched_getaffinity(0))))


@pytest.mark.parametrize("service", ["head", "tail", "gateway"])
def test_serving_images_hold_no_torch(stack: Stack, service: str):
    code = (
        "import importlib.util as u, sys; "
        "found = [m for m in ('torch', 'torchvision') if u.find_spec(m)]; "
        "sys.exit(f'found {found}' if found else 0)"
    )
    image = f"splitdnn-{service}:{stack.env.get('IMAGE_TAG', 'latest')}"
    result = run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "python3", image,
         "-c", code],
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    size = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", image], timeout=30).stdout)
    print(f"{image}: {size / 1e6:.0f} MB")
    # head and tail are ~670 MB: ~460 MB before numba + llvmlite (the compiled rANS coder,
    # ~210 MB); a CPU-only torch alone would add ~700 MB, which this bound still catches
    assert size < 750e6, f"{image} is {size / 1e6:.0f} MB"


def test_gateway_image_has_no_onnxruntime(stack: Stack):
    image = f"splitdnn-gateway:{stack.env.get('IMAGE_TAG', 'latest')}"
    result = run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "python3", image,
         "-c", "import importlib.util as u, sys; sys.exit(u.find_spec('onnxruntime') is not None)"],
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0


def _offload_transfer_ms(n: int = 3) -> float:
    return statistics.median(classify("offload")["timings_ms"]["transfer"] for _ in range(n))


def _set_link(stack: Stack, rate: str) -> None:
    stack.env["LINK_RATE"] = rate
    up = stack.compose("up", "-d", "--no-deps", "--wait", "--wait-timeout", "60", "link",
                       timeout=180)  # fmt: skip
    assert up.returncode == 0, up.stderr + stack.logs()


def test_link_rate_slows_only_the_device_to_edge_link(stack: Stack):
    """LINK_RATE shapes traffic to and from the tail's port; undone when it is unset."""
    baseline = _offload_transfer_ms()
    image_bytes = classify("offload")["bytes_sent"]
    rate_bits = 1_000_000
    try:
        _set_link(stack, "1mbit")
        logs = stack.compose("logs", "--no-color", "link", timeout=60).stdout
        assert "shaping lo port 8001 at 1mbit" in logs, logs
        shaped = _offload_transfer_ms()
        local = classify("local")  # not over the link: no slower than before
        assert local["timings_ms"]["transfer"] == 0
    finally:
        _set_link(stack, "")
    floor_ms = image_bytes * 8 / rate_bits * 1000
    assert shaped >= 0.7 * floor_ms, (baseline, shaped, floor_ms)
    assert shaped > baseline + 0.5 * floor_ms, (baseline, shaped, floor_ms)
    if shutil.which("tc"):
        qdisc = run(["tc", "qdisc", "show", "dev", "lo"], timeout=30).stdout
        assert "5ead:" not in qdisc, qdisc
    assert _offload_transfer_ms() < baseline + 0.5 * floor_ms


# --- the arm64 head -----------------------------------------------------------------------


def arm64_unavailable() -> str | None:
    if os.environ.get("SPLITDNN_DOCKER_ARM64") != "1":
        return "opt-in: SPLITDNN_DOCKER_ARM64=1 (pip runs under qemu: tens of minutes)"
    reason = docker_unavailable()
    if reason:
        return reason
    if platform.machine() not in ("x86_64", "amd64"):
        return "the arm64 cross-build test runs on amd64 hosts"
    binfmt = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    if not binfmt.exists() or "enabled" not in binfmt.read_text():
        return "no qemu-aarch64 binfmt handler (apt-get install qemu-user-static binfmt-support)"
    version = (
        run(["qemu-aarch64-static", "--version"], timeout=30).stdout
        if shutil.which("qemu-aarch64-static")
        else ""
    )
    major = re.search(r"version (\d+)", version)
    if not major or int(major.group(1)) < 8:
        return "ONNX Runtime needs qemu-user >= 8 (bookworm-backports; ci-docker-setup.sh)"
    if "ARM64_BASE_IMAGE" not in os.environ and not image_exists(ARM64_STANDIN):
        return f"no {ARM64_STANDIN} (bash scripts/build-base-image.sh --arch arm64)"
    return None


@pytest.mark.slow
def test_head_image_builds_and_runs_for_arm64(tmp_path: Path):
    """The head for Raspberry Pi / Jetson: built for linux/arm64, its model runs under qemu."""
    reason = arm64_unavailable()
    if reason:
        pytest.skip(reason)
    log = tmp_path / "arm64.log"
    with image_build_env() as env:
        env.setdefault("ARM64_BASE_IMAGE", ARM64_STANDIN)
        # The bundle-export stage runs on the build machine: its amd64 base.
        env.setdefault("BUILDER_IMAGE", env.get("BASE_IMAGE", BASE_STANDIN))
        args = ["docker", "compose", "-p", PROJECT, "-f", str(COMPOSE_FILE),
                "-f", str(ARM64_FILE)]  # fmt: skip
        built = run([*args, "build", "head"], timeout=BUILD_TIMEOUT_S, env=env, log=log)
        assert built.returncode == 0, f"arm64 head build failed:\n{tail_of(log)}"
    image = f"splitdnn-head:{env.get('IMAGE_TAG', 'latest')}-arm64"
    arch = run(["docker", "image", "inspect", "-f", "{{.Architecture}}", image], timeout=30)
    assert arch.stdout.strip() == "arm64"
    code = (
        "import platform, numpy as np\n"
        "from splitdnn.bundle import load_bundle\n"
        "from splitdnn.runtime import OnnxModel\n"
        "b = load_bundle()\n"
        "m = OnnxModel(b.model_path('device'))\n"
        "size = [d if isinstance(d, int) else 224 for d in m.input_shape]\n"
        "size[0] = 1\n"
        "out = m.run(np.zeros(size, np.float32))\n"
        "print(platform.machine(), {k: v.shape for k, v in out.items()})\n"
    )
    name = f"{PROJECT}-arm64-check"
    try:
        result = run(
            ["docker", "run", "--rm", "--name", name, "--platform", "linux/arm64",
             "--network", "none", "--entrypoint", "python3", image, "-c", code],
            timeout=600,
        )  # fmt: skip
    finally:  # a timed-out `docker run` leaves its container behind
        run(["docker", "rm", "-f", name], timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("aarch64 "), result.stdout
    size = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", image], timeout=30).stdout)
    print(f"{image}: {size / 1e6:.0f} MB; {result.stdout.strip()}")


RAY_FILE = ROOT / "docker" / "compose.ray.yml"


@pytest.mark.slow
def test_tail_ray_image_serves_the_tail_on_ray(tmp_path: Path):
    """The image deploy/k8s/rayservice-tail.yaml names: it builds, starts the tail on Ray as
    uid 10001 (Ray needs a writable home), and answers health and a bad envelope like the
    plain tail (problem+json)."""
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    import httpx

    from benchmarks.inputs import free_port

    log = tmp_path / "ray.log"
    with image_build_env() as env:
        args = ["docker", "compose", "-p", PROJECT, "-f", str(COMPOSE_FILE), "-f", str(RAY_FILE),
                "--profile", "ray"]  # fmt: skip
        built = run([*args, "build", "tail-ray"], timeout=BUILD_TIMEOUT_S, env=env, log=log)
        assert built.returncode == 0, f"tail-ray build failed:\n{tail_of(log)}"
    image = f"splitdnn-tail-ray:{env.get('IMAGE_TAG', 'latest')}"
    port, name = free_port(), f"{PROJECT}-tail-ray-check"
    base = f"http://127.0.0.1:{port}"
    started = run(
        ["docker", "run", "-d", "--name", name, "--network", "host", "--shm-size", "512m",
         image, "splitdnn", "serve", "tail", "--ray", "--host", "127.0.0.1",
         "--port", str(port), "--num-cpus", "1"],
        timeout=120,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stdout
        ready, deadline = None, time.monotonic() + 300
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(base + "/v2/health/ready", timeout=5)
                if ready.status_code == 200:
                    break
            time.sleep(2)
        logs = run(["docker", "logs", name], timeout=30).stdout
        assert ready is not None and ready.status_code == 200, logs[-3000:]
        manifest = run(["docker", "exec", name, "cat", "/opt/splitdnn/bundle/manifest.json"], 30)
        model = json.loads(manifest.stdout)["name"]
        bad = httpx.post(
            f"{base}/v2/models/{model}/infer",
            content=b"not an envelope",
            headers={"content-type": "application/x-msgpack"},
            timeout=30,
        )
        assert bad.status_code == 400, bad.text
        assert bad.headers["content-type"].startswith("application/problem+json")
    finally:
        run(["docker", "rm", "-f", name], timeout=60)
