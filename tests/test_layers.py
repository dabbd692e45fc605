"""The library's import structure: one-way layers (kept by the import-linter contracts in
pyproject.toml, imports inside functions included) and no import cycle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}  # grimp finds the packages by importing them
    return subprocess.run(
        [str(LINT), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_library_keeps_its_layers() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 6 kept, 0 broken." in result.stdout


def test_an_upward_import_inside_a_function_breaks_the_contract(tmp_path: Path) -> None:
    """A copy of the project where the wire format (lowest layer) imports the CLI inside a
    function: the check must fail and name the import."""
    for name in ("splitdnn", "services", "gateway"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("assets"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / "splitdnn" / "wire.py").open("a") as handle:
        handle.write("\n\ndef _upward():\n    from splitdnn import cli\n\n    return cli\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "splitdnn.wire is not allowed to import splitdnn.cli" in result.stdout


def test_the_import_graph_has_no_cycle() -> None:
    grimp = pytest.importorskip("grimp")
    nx = pytest.importorskip("networkx")
    graph = grimp.build_graph("splitdnn")
    edges = nx.DiGraph()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            edges.add_edge(module, imported)
    cycles = list(nx.simple_cycles(edges))
    assert not cycles, cycles[:5]
