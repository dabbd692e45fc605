"""The one list of system commands (scripts/system-tools.txt): every command that tests/,
benchmarks/ and scripts/ start is on it, with who installs it, and a missing one makes the
tests that need it skip with its package named instead of failing mid-test."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from benchmarks import netns, system_tools

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("tests", "benchmarks", "scripts")
#: Functions that take an argv list first: subprocess's, and the project's thin wrappers.
RUNNERS = {"run", "Popen", "call", "check_call", "check_output", "_run", "exec_argv"}
#: Names an argv list is assigned to before it is run.
ARGV_NAMES = {"argv", "cmd", "command"}


def _first_word(node: ast.expr) -> str | None:
    if isinstance(node, ast.List) and node.elts:
        first = node.elts[0]
        # an option first ("--out") is a program's arguments without the program: no command
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return None if first.value.startswith("-") else first.value
    return None


def _callee(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    if isinstance(node.func, ast.Name):
        return node.func.id
    return None


def commands_called(source: str) -> set[str]:
    """Literal first words of argv lists that are run or assigned to an argv name, and the
    names given to ``shutil.which``: what a fresh machine must have for this file to run."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and node.args:
            callee = _callee(node)
            first = node.args[0]
            if callee in RUNNERS and (word := _first_word(first)):
                found.add(word)
            if (
                callee == "which"
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                found.add(first.value)
        if (
            isinstance(node, ast.Assign)
            and (word := _first_word(node.value))
            and any(isinstance(t, ast.Name) and t.id in ARGV_NAMES for t in node.targets)
        ):
            found.add(word)
    return found


def called_by_the_suite() -> dict[str, list[str]]:
    """command -> the files that call it, over tests/, benchmarks/ and scripts/."""
    callers: dict[str, list[str]] = {}
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for command in commands_called(path.read_text()):
                callers.setdefault(command, []).append(str(path.relative_to(ROOT)))
    return callers


def test_the_scanner_sees_each_way_a_command_is_started():
    source = """
import shutil, subprocess
subprocess.run(["ethtool", "-K", "veth0"])
subprocess.Popen(["tc", "qdisc"], stdout=None)
argv = ["ip", "link"]
_run(["debootstrap", "bookworm"])
shutil.which("curl")
subprocess.run([sys.executable, "-c", "pass"])
argv = ["--from-json", "run.json"]
"""
    assert commands_called(source) == {"ethtool", "tc", "ip", "debootstrap", "curl"}


def test_every_command_the_suite_calls_is_on_the_list():
    listed = system_tools.load()
    unlisted = {
        command: files for command, files in called_by_the_suite().items() if command not in listed
    }
    assert not unlisted, (
        f"commands called by the suite but not in {system_tools.LIST.name} (so nothing "
        f"installs them on a fresh machine): {unlisted}"
    )


def test_the_netns_tools_are_on_the_list_and_installed_by_the_test_command():
    tools = system_tools.load()
    for command in ("ip", "tc", "ethtool"):
        assert tools[command].installed_by == "test", command
    assert "scripts/system-tools.sh test" in (ROOT / "scripts" / "test.sh").read_text()
    assert "scripts/system-tools.sh docker" in (ROOT / "scripts" / "ci-docker-setup.sh").read_text()


def test_pip_rows_name_a_package_of_the_dev_extra():
    pyproject = (ROOT / "pyproject.toml").read_text()
    for tool in system_tools.load().values():
        if tool.installed_by == "pip":
            assert f'"{tool.package}' in pyproject, tool


def test_a_malformed_row_is_refused(tmp_path):
    bad = tmp_path / "tools.txt"
    bad.write_text("ethtool ethtool by-hand benchmarks/netns.py\n")
    with pytest.raises(ValueError, match="by-hand"):
        system_tools.load(bad)
    bad.write_text("ethtool ethtool test a\nethtool ethtool test b\n")
    with pytest.raises(ValueError, match="listed twice"):
        system_tools.load(bad)


def test_a_missing_tool_is_named_with_its_package(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(
        system_tools.shutil, "which", lambda c: None if c == "ethtool" else real_which(c)
    )
    reason = system_tools.why_missing("ethtool")
    assert reason is not None and "ethtool" in reason and "Debian package ethtool" in reason
    assert "scripts/test.sh" in reason
    with pytest.raises(KeyError, match="add a row"):
        system_tools.why_missing("not-a-listed-tool")


def test_netns_tests_skip_naming_ethtool_when_it_is_missing(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(
        system_tools.shutil, "which", lambda c: None if c == "ethtool" else real_which(c)
    )
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)
    reason = netns.why_unavailable()
    assert reason is not None and "ethtool" in reason
