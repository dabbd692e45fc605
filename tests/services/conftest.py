"""Fixtures for the service tests: a second bundle and problem+json checks."""

from __future__ import annotations

import warnings

import pytest

# Starlette's TestClient warns about its httpx backend; that is not our concern here.
warnings.filterwarnings("ignore", message=".*httpx.*", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*httpx2.*")


@pytest.fixture(scope="session")
def other_bundle_dir(tmp_path_factory: pytest.TempPathFactory):
    """Same architecture, other weights: a different bundle id (for 409 tests)."""
    from toy_bundle import build_toy_bundle

    directory = tmp_path_factory.mktemp("other-bundle")
    build_toy_bundle(directory, seed=1)
    return directory
