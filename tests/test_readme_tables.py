"""The README's two maps of the code match the code: "Where things are" names every library
module and links only to files that exist; the layer table holds every module of the
import-linter contracts, in the contracts' order. A module added without its row fails here."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(heading: str, until: str) -> str:
    start = README.index(heading)
    return README[start : README.index(until, start)]


def _table_after(marker: str) -> list[str]:
    """The rows of the Markdown table that starts at the line holding ``marker``."""
    lines = README[README.index(marker) :].splitlines()
    rows = []
    for line in lines[2:]:  # header and separator
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def _contract(contract_id: str) -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = next(c for c in config["contracts"] if c["id"] == contract_id)
    return [[name.strip() for name in re.split(r"[|:]", layer)] for layer in contract["layers"]]


def library_modules() -> list[str]:
    library = ROOT / "splitdnn"
    modules = [p.stem for p in library.glob("*.py") if p.stem != "__init__"]
    modules += [p.name for p in library.iterdir() if (p / "__init__.py").is_file()]
    return sorted(modules)


def test_where_things_are_names_every_library_module_and_links_only_real_files():
    table = _section("## Where things are", "The library is cut")
    missing = [
        m
        for m in library_modules()
        if f"splitdnn/{m}.py" not in table and f"splitdnn/{m}/" not in table
    ]
    assert not missing, f"modules without a row in README's 'Where things are': {missing}"
    broken = [link for link in re.findall(r"\]\(([^)#]+)\)", table) if not (ROOT / link).exists()]
    assert not broken, f"links to files that do not exist: {broken}"


def test_the_layer_table_follows_the_import_contracts():
    rows = [set(re.findall(r"`([a-z_]+)/?`", row)) for row in _table_after("| layer (high → low)")]
    row_of: dict[str, int] = {}
    for index, names in enumerate(rows):
        for name in names:
            assert name not in row_of, f"{name} stands in two rows of the layer table"
            row_of[name] = index
    layers = _contract("layers")
    for module in library_modules():
        assert any(module in layer for layer in layers), f"{module} is in no layer of the contract"
    last_row = 0
    for layer in layers:
        for module in layer:
            assert module in row_of, f"{module} (layer {layer}) is missing from the layer table"
        first = min(row_of[m] for m in layer)
        assert first >= last_row, f"layer {layer} is above a higher layer in the README's table"
        last_row = max(row_of[m] for m in layer)
    distill = {m for layer in _contract("distill-layers") for m in layer}
    assert distill <= set(row_of), f"distill modules missing: {sorted(distill - set(row_of))}"


def test_the_nonn_row_lists_the_nonn_contract_in_its_order():
    row = next(r for r in _table_after("| layer (high → low)") if "`nonn/`" in r)
    listed = re.findall(r"`nonn\.([a-z_]+)`", row)
    flat = [m for layer in _contract("nonn-layers") for m in layer]
    assert sorted(listed) == sorted(flat), f"NoNN row {listed} vs contract {flat}"
    position = {m: i for i, m in enumerate(listed)}
    assert [position[layer[0]] for layer in _contract("nonn-layers")] == sorted(
        position[layer[0]] for layer in _contract("nonn-layers")
    ), "the NoNN row's order differs from the nonn-layers contract"
    library = ROOT / "splitdnn" / "nonn"
    modules = sorted(p.stem for p in library.glob("*.py") if p.stem != "__init__")
    assert sorted(flat) == modules, f"nonn modules {modules} vs the contract {flat}"
