"""Shared test code lives in helper modules (``tests/*_helpers.py``, ``tests/services/
helpers.py``, ``tests/toy_bundle.py``), never in a test module another one imports: pytest
would collect the imported module's tests twice and its fixtures would leak into the
importer. Imports are read from the syntax tree, as ``test_system_tools.py`` reads commands.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The one file allowed to touch sys.path: it puts tests/ there for the helper modules.
PATH_SETTER = ROOT / "tests" / "conftest.py"


def _imported_modules(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
            if node.module is None or node.level:  # from . import test_x
                names += [alias.name for alias in node.names]
    return names


def imported_test_modules(source: str) -> list[str]:
    """The test modules ``source`` imports (``test_x``, ``tests.test_x``, ``.test_x``)."""
    modules = _imported_modules(ast.parse(source))
    return [m for m in modules if m.rsplit(".", 1)[-1].startswith("test_")]


def _sys_path_changes(tree: ast.AST) -> int:
    return sum(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("insert", "append")
        and ast.unparse(node.func.value) == "sys.path"
        for node in ast.walk(tree)
    )


def test_the_scan_sees_every_way_of_importing_a_test_module() -> None:
    source = (
        "from tests.test_a import x\nfrom .test_b import y\nimport test_c\nfrom . import test_d\n"
    )
    assert imported_test_modules(source) == ["tests.test_a", "test_b", "test_c", "test_d"]
    assert imported_test_modules("from helpers import x\nimport testing\n") == []


def test_no_test_module_imports_another_test_module() -> None:
    found = {
        str(path.relative_to(ROOT)): imported
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if (imported := imported_test_modules(path.read_text()))
    }
    assert found == {}, "move the shared code into a helper module: " + str(found)


def test_only_conftest_puts_a_folder_on_sys_path() -> None:
    """Benchmarks run as ``python -m benchmarks.X`` and pytest's ``pythonpath`` holds the
    repository root, so no script or test inserts it by hand."""
    found = [
        str(path.relative_to(ROOT))
        for folder in ("tests", "benchmarks")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != PATH_SETTER and _sys_path_changes(ast.parse(path.read_text()))
    ]
    assert found == []
