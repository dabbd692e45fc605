"""schemathesis ``--checks all`` over the OpenAPI of the real apps (uvicorn subprocesses on
127.0.0.1: gateway, head and tail apart, and the device, gateway and head in one process):
no 5xx, every status, header and content type answered is documented, answers match their
schemas, invalid requests are refused and valid ones accepted.

The model name and the task are set to the bundle's (a task is a name OpenAPI cannot
list: any other string is rightly a 422). One stated allowance: a body documented as
``string``/``binary`` (an image, a msgpack envelope) cannot say "a decodable JPEG" or "a
valid envelope" in OpenAPI, so for POST operations a schema-valid body may also be refused
with the documented 400/413/415/422.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Device, Stack, running_device, running_stack

from splitdnn.bundle import load_bundle

pytest.importorskip("schemathesis")

TOKEN = "schema-token"
CONFIG = """
[parameters]
"path.name" = {name}
"query.task" = {task}

[[operations]]
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = [
  "2xx", "400", "401", "404", "409", "413", "415", "422", "503",
]
"""


@pytest.fixture(scope="module")
def stack(toy_bundle_dir) -> Iterator[Stack]:
    with running_stack(toy_bundle_dir, TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def device(toy_bundle_dir) -> Iterator[Device]:
    with running_device(toy_bundle_dir, TOKEN) as running:
        yield running


def schemathesis_cli() -> list[str]:
    st = shutil.which("st") or str(Path(sys.executable).parent / "st")
    return [st]


@pytest.mark.slow
@pytest.mark.parametrize("service", ["gateway", "head", "tail", "device"])
def test_every_check_passes_against_the_real_app(
    request, toy_bundle_dir, tmp_path, service
) -> None:
    config = tmp_path / "schemathesis.toml"
    bundle = load_bundle(toy_bundle_dir)
    config.write_text(
        CONFIG.format(name=json.dumps(bundle.name), task=json.dumps(bundle.manifest.default_task))
    )
    if service == "device":
        url = request.getfixturevalue("device").gateway
    else:
        url = getattr(request.getfixturevalue("stack"), service)
    command = [
        *schemathesis_cli(),
        "--config-file", str(config),
        "run", f"{url}/openapi.json",
        "--checks", "all",
        "--header", f"Authorization: Bearer {TOKEN}",
        "--max-examples", "25",
        "--seed", "13",
        "--no-color",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert " passed" in output
