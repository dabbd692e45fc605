"""Distillation configs: every mistake is a ConfigError (CLI: exit 2) that names the key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from splitdnn.distill.config import load_config, parse_config
from splitdnn.errors import ConfigError

pytest.importorskip("torch")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_minimal_config_fills_defaults_and_resolves_data_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(_write(tmp_path, "data: {root: images}\n"))
    assert config.method == "hnd"
    assert config.teacher.name == "efficientnet_lite2"
    assert config.kd.student == "efficientnet_lite0_last2"
    assert config.data.root == (tmp_path / "images").resolve()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("data: {root: x}\ntrain: {epoch: 3}\n", "train.epoch: unknown key"),
        ("data: {root: x}\ntrain: {epochs: ten}\n", "train.epochs"),
        ('data: {root: x}\ntrain: {epochs: "ten"}\n', "train.epochs"),
        ("data: {root: x}\nteacher: {name: resnet9000}\n", "teacher.name"),
        ("data: {root: x}\nkd: {student: big_cnn}\n", "kd.student"),
        ("data: {root: x}\nmethod: magic\n", "method"),
        ("data: {root: x}\nkd: {alpha: 1.5}\n", "kd.alpha"),
        ("train: {epochs: 3}\n", "data: Field required"),
        (
            "data: {root: x}\naugmentation: {random_crop: {min_scal: 0.5}}\n",
            "augmentation.random_crop.min_scal: unknown key",
        ),
        (
            "data: {root: x}\naugmentation: {random_crop: {probability: 0}}\n",
            "augmentation.random_crop.probability",
        ),
        (
            "data: {root: x}\nteacher: {classifier: imagenet, probe_from: runs/a}\n",
            "teacher: Value error, probe_from needs",
        ),
        ("data: {root: x}\ntrain: {logits_temperature: 0}\n", "train.logits_temperature"),
        # Refused when the config is read, not after the teacher pass and the probe fit.
        ("data: {root: x}\nsplit_module: nowhere\n", "split_module: 'nowhere' is not a split"),
        (
            "data: {root: x}\nsplit_module: _bn0\nstudent: {variant: teacher_init}\n",
            "split_module: no teacher_init student for efficientnet_lite2 at '_bn0'",
        ),
        (
            "data: {root: x}\nteacher: {name: inception_v3}\nstudent: {variant: teacher_init}\n",
            "student.variant: no teacher_init student for inception_v3 at 'maxpool2'",
        ),
    ],
)
def test_bad_values_are_config_errors_naming_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(_write(tmp_path, text))


def test_unknown_teacher_error_lists_registered_teachers():
    with pytest.raises(ConfigError, match="efficientnet_lite0") as info:
        parse_config({"data": {"root": "x"}, "teacher": {"name": "resnet9000"}})
    assert "teacher.name" in str(info.value)


def test_python_object_tags_are_rejected_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    text = f'data: !!python/object/apply:os.system ["touch {marker}"]\n'
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, text))
    assert not marker.exists()


def test_a_config_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


# -- the CLI -----------------------------------------------------------------------------------


def test_cli_config_error_goes_to_stderr_with_exit_code_2(tmp_path):
    from splitdnn.cli import app

    path = _write(tmp_path, "data: {root: x}\ntrain: {epoch: 3}\n")
    result = CliRunner().invoke(app, ["distill", str(path)])
    assert result.exit_code == 2
    assert "train.epoch: unknown key" in result.stderr
    assert "Traceback" not in result.output


def test_cli_default_run_dir_is_runs_slash_config_stem(tmp_path, monkeypatch):
    from splitdnn import methods
    from splitdnn.cli import app

    seen: dict = {}

    def fake_run(config, run_dir, resume=False, progress=True, force=False):
        seen.update(run_dir=Path(run_dir), resume=resume, method=config.method)
        return {"ok": True}

    monkeypatch.setattr(methods, "run_config", fake_run)
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, "method: kd\ndata: {root: x}\n")
    result = CliRunner().invoke(app, ["distill", str(path), "--resume", "--quiet"])
    assert result.exit_code == 0, result.output
    assert seen == {"run_dir": Path("runs") / "config", "resume": True, "method": "kd"}
    assert '"ok": true' in result.stdout


ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ASSETS = ROOT / "splitdnn/assets/default"


RECIPE = sorted((ROOT / "configs").glob("*.yaml"))
EXPERIMENTS = sorted((ROOT / "configs" / "experiments").glob("*.yaml"))


#: The stage each stage starts from: the one before, except the two after stage 5 — stage 6
#: (measured, not adopted) and stage 7 (the default's last stage) both start from stage 5.
PREVIOUS_STAGE = {6: 5, 7: 5}
LAST_STAGE = ROOT / "configs/lite2-stage7-both-tasks.yaml"


@pytest.mark.parametrize("path", RECIPE, ids=lambda p: p.name)
def test_committed_configs_are_valid_and_chain_their_stages(path, monkeypatch):
    """The default's recipe parses, each later stage starts from the stage before it, and every
    stage distils towards stage 1's probe (one Caltech-101 teacher)."""
    monkeypatch.chdir(ROOT)
    config = load_config(path)
    assert config.student.variant == "teacher_init"
    stage = re.search(r"stage(\d+)", path.name)
    if stage:
        n = int(stage[1])
        previous = PREVIOUS_STAGE.get(n, n - 1)
        assert config.train.init_from == ROOT / f"runs/lite2-caltech101-stage{previous}"
        assert config.teacher.probe_from == ROOT / "runs/lite2-caltech101-stage1"
    else:
        assert config.train.init_from is None and config.teacher.probe_from is None


def test_the_committed_default_ran_the_recipes_last_stage(monkeypatch):
    """The committed assets record the config they were trained with: the last stage's."""
    monkeypatch.chdir(ROOT)
    shipped = json.loads((DEFAULT_ASSETS / "default.json").read_text())["config"]
    last = load_config(LAST_STAGE)
    keys = ("epochs", "milestones", "logits_loss_weight", "imagenet_logits_loss_weight", "keep")
    assert {k: shipped["train"][k] for k in keys} == {k: getattr(last.train, k) for k in keys}
    unlabelled = [Path(u["root"]).name for u in shipped["data"]["unlabelled"]]
    assert unlabelled == [Path(u.root).name for u in last.data.unlabelled]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_configs_start_from_a_recipe_stage(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = load_config(path)
    stages = {ROOT / "runs/lite2-caltech101-stage1"} | {
        ROOT / f"runs/{p.stem}" for p in RECIPE if "stage" in p.stem
    }
    assert config.train.init_from in stages
    assert config.teacher.probe_from == ROOT / "runs/lite2-caltech101-stage1"


FINETUNE = {p.stem: p for p in (ROOT / "configs" / "finetune").glob("*.yaml")}


def test_fine_tuning_configs_give_every_mode_the_same_budget(monkeypatch):
    """Server-side fine-tuning is compared across modes only if data, images, optimiser and
    epochs are the same; split starts from the shipped device part, each from its served
    classifier, and validation images pick no checkpoint."""
    monkeypatch.chdir(ROOT)
    configs = {mode: load_config(path) for mode, path in FINETUNE.items()}
    assert set(configs) == {"split", "offload", "local"}
    shared = {
        mode: (c.method, c.data, c.augmentation, c.train, c.seed) for mode, c in configs.items()
    }
    assert shared["split"] == shared["offload"] == shared["local"]
    assert configs["split"].train.keep == "last"
    assert configs["split"].kd.device_from == DEFAULT_ASSETS
    assert configs["offload"].kd.device_from is None and configs["local"].kd.device_from is None
    assert configs["split"].kd.probe_from == DEFAULT_ASSETS / "caltech101_probe.safetensors"
    assert configs["offload"].kd.probe_from == configs["split"].kd.probe_from
    assert configs["local"].kd.probe_from == DEFAULT_ASSETS / "lite0_caltech101_probe.safetensors"


def test_nonn_defaults_the_flip_off_and_flips_only_members_that_see_the_image(tmp_path):
    """NoNN caches unflipped maps once: its default is no flip (the other methods keep
    theirs); an explicit flip stays, and is refused, naming the key, for members that see the
    cached activations of a frozen prefix rather than the image."""
    from splitdnn.nonn.method import NoNNDistillation

    assert parse_config({"method": "nonn", "data": {"root": "x"}}).augmentation.hflip is False
    assert parse_config({"method": "kd", "data": {"root": "x"}}).augmentation.hflip is True
    flips = {"method": "nonn", "data": {"root": "x"}, "augmentation": {"hflip": True}}
    assert parse_config(flips).augmentation.hflip is True
    narrow = parse_config({**flips, "nonn": {"student": "efficientnet_lite0_narrow"}})
    NoNNDistillation(narrow, tmp_path / "narrow", progress=False)
    prefix = parse_config({**flips, "nonn": {"student": "efficientnet_lite0_slice"}})
    with pytest.raises(ConfigError, match=r"augmentation\.hflip.*_blocks"):
        NoNNDistillation(prefix, tmp_path / "prefix", progress=False)


def test_an_unknown_nonn_member_family_is_a_config_error_listing_the_registered_ones(tmp_path):
    from splitdnn.nonn.method import NoNNDistillation

    config = parse_config({"method": "nonn", "data": {"root": "x"}, "nonn": {"student": "big"}})
    with pytest.raises(ConfigError, match=r"nonn\.student.*efficientnet_lite0_slice"):
        NoNNDistillation(config, tmp_path / "run", progress=False)
