"""The system commands the tests and benchmarks call, read from the one list that
``scripts/test.sh`` also installs from (``scripts/system-tools.txt``).

A test or benchmark that needs, say, ``ethtool`` asks :func:`why_missing` instead of
checking ``shutil.which`` itself, so a machine without the tool gets a skip that names the
Debian package to install, never a ``FileNotFoundError`` in the middle of a test.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

LIST = Path(__file__).resolve().parent.parent / "scripts" / "system-tools.txt"

#: Who puts a listed command on the machine (the list's third column).
INSTALLERS = {
    "base": "any machine that cloned the repository",
    "test": "scripts/test.sh",
    "docker": "scripts/ci-docker-setup.sh",
    "opt-in": "scripts/ci-docker-setup.sh with its opt-in variable",
    "pip": "the dev extra (pip install -e '.[dev]')",
}


@dataclass(frozen=True)
class SystemTool:
    command: str
    package: str
    installed_by: str
    called_by: str


def load(path: Path = LIST) -> dict[str, SystemTool]:
    """The list as command -> row; a malformed row is an error, not a silent skip."""
    tools: dict[str, SystemTool] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(None, 3)
        if len(fields) != 4 or fields[2] not in INSTALLERS:
            raise ValueError(
                f"{path}:{number}: want 'command package installer called-by' with installer "
                f"one of {sorted(INSTALLERS)}, got {line!r}"
            )
        tool = SystemTool(*fields)
        if tool.command in tools:
            raise ValueError(f"{path}:{number}: {tool.command} is listed twice")
        tools[tool.command] = tool
    return tools


def why_missing(*commands: str) -> str | None:
    """None when every command is on PATH, else a reason naming each missing one, its
    package and what installs it (for pytest skips and benchmark refusals)."""
    tools = load()
    missing = []
    for command in commands:
        if command not in tools:
            raise KeyError(f"{command} is not in {LIST.name}: add a row for it")
        if shutil.which(command) is None:
            tool = tools[command]
            missing.append(
                f"{command} not found (Debian package {tool.package}; "
                f"installed by {INSTALLERS[tool.installed_by]})"
            )
    return "; ".join(missing) or None
