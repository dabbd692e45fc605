"""Print the pip requirements of splitdnn's core plus some extras, read from pyproject.toml.

The Dockerfile installs these in a layer of their own, before the code is copied, so a
code change does not reinstall the dependencies. pyproject.toml stays the one list.

    python3 requirements.py pyproject.toml --extra serve --exclude onnxruntime
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import tomllib


def _name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"cannot read a package name from {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(pyproject: Path, extras: list[str], exclude: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    unknown = sorted(set(extras) - set(optional))
    if unknown:
        raise SystemExit(f"unknown extras {unknown}; pyproject has {sorted(optional)}")
    wanted = list(project.get("dependencies", []))
    for extra in extras:
        wanted += optional[extra]
    skip = {_name(name) for name in exclude}
    seen: set[str] = set()
    out = []
    for requirement in wanted:
        name = _name(requirement)
        if name in skip or requirement in seen:
            continue
        seen.add(requirement)
        out.append(requirement)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extra", action="append", default=[], help="an extra to include")
    parser.add_argument("--exclude", nargs="*", default=[], help="package names to leave out")
    args = parser.parse_args(argv)
    sys.stdout.write(
        "".join(f"{r}\n" for r in requirements(args.pyproject, args.extra, args.exclude))
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
