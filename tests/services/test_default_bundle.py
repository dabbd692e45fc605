"""The embedded default bundle, exported from the committed weights, served for real.

What the README promises about the default: split inference answers like the assembled torch
model (student head + teacher tail), the 8-bit envelope is at most a tenth of the JPEG that
offload sends and the 4-bit one it sends by default a twentieth, and the example cat comes
back as a cat in both tasks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import running_stack

from splitdnn.bundle import load_bundle
from splitdnn.imaging import load_input
from splitdnn.runtime import softmax

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cat.jpg"
IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger, Persian, Siamese, Egyptian


@pytest.fixture(scope="module")
def default_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from splitdnn.checkpoints import DEFAULT_ASSETS
    from splitdnn.export import export_default

    out = tmp_path_factory.mktemp("default-bundle")
    export_default(DEFAULT_ASSETS, out)
    return out


@pytest.fixture(scope="module")
def client(default_bundle) -> Iterator[httpx.Client]:
    with (
        running_stack(default_bundle, None, ready_timeout=180) as stack,
        httpx.Client(base_url=stack.gateway, timeout=60) as c,
    ):
        yield c


def classify(client: httpx.Client, **params) -> dict:
    files = {"image": ("cat.jpg", EXAMPLE.read_bytes(), "image/jpeg")}
    response = client.post("/classify", params=params, files=files)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def reference(default_bundle) -> dict[str, np.ndarray]:
    """Softmax scores of the assembled torch model, per task, run in process."""
    import torch
    from safetensors.torch import load_file

    from splitdnn.checkpoints import DEFAULT_ASSETS
    from splitdnn.models import get_teacher
    from splitdnn.students import build_student
    from splitdnn.teacher import TeacherParts

    bundle = load_bundle(default_bundle)
    spec = get_teacher(bundle.manifest.teacher)
    parts = TeacherParts(spec, spec.build(True), bundle.manifest.split_module)
    variant = json.loads((DEFAULT_ASSETS / "default.json").read_text())["variant"]
    student = build_student(spec.name, bundle.manifest.bottleneck.shape[0], variant).eval()
    student.load_state_dict(load_file(DEFAULT_ASSETS / "student.safetensors"))
    probe = torch.nn.Linear(parts.num_features, 101)
    probe.load_state_dict(load_file(DEFAULT_ASSETS / "caltech101_probe.safetensors"))
    x = torch.from_numpy(load_input(EXAMPLE.read_bytes(), bundle.preprocessing))
    with torch.no_grad():
        features = parts.features(student(x))
        return {
            "imagenet": softmax(parts.classifier(features).numpy()[0]),
            "caltech101": softmax(probe(features).numpy()[0]),
        }


@pytest.mark.parametrize("task", ["imagenet", "caltech101"])
def test_split_fp32_answers_like_the_assembled_model(client, reference, task) -> None:
    answer = classify(client, mode="split", quantisation="fp32", task=task, top_k=5)
    indices = [entry["index"] for entry in answer["top_k"]]
    scores = np.array([entry["score"] for entry in answer["top_k"]])
    assert indices[0] == int(reference[task].argmax())
    np.testing.assert_allclose(scores, reference[task][indices], atol=1e-4)


@pytest.mark.parametrize("task", ["imagenet", "caltech101"])
def test_split_uint8_keeps_the_top_1(client, reference, task) -> None:
    answer = classify(client, mode="split", quantisation="uint8", task=task)
    assert answer["top_k"][0]["index"] == int(reference[task].argmax())


def test_the_cat_is_a_cat_in_every_mode(client) -> None:
    for mode in ("split", "local", "offload"):
        imagenet = classify(client, mode=mode, task="imagenet")
        assert imagenet["top_k"][0]["index"] in IMAGENET_CATS, (mode, imagenet["top_k"])
        caltech = classify(client, mode=mode, task="caltech101")
        assert caltech["top_k"][0]["label"] == "wild_cat", (mode, caltech["top_k"])


def test_split_uint8_sends_at_most_a_tenth_of_offload(client) -> None:
    split = classify(client, mode="split", quantisation="uint8")
    offload = classify(client, mode="offload")
    assert offload["bytes_sent"] == EXAMPLE.stat().st_size
    assert 0 < split["bytes_sent"] <= offload["bytes_sent"] / 10


def test_split_sends_4_bits_by_default_a_twentieth_of_offload_same_top_1(client) -> None:
    """The committed held-out figures chose uint4 (accuracy.json): the manifest names it."""
    default = classify(client, mode="split")
    assert default["encoding"]["quantisation"] == "uint4", default["encoding"]
    eight = classify(client, mode="split", quantisation="uint8")
    assert default["top_k"][0]["index"] == eight["top_k"][0]["index"]
    assert 0 < default["bytes_sent"] <= min(EXAMPLE.stat().st_size / 20, eight["bytes_sent"] / 2)
