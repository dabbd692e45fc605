#!/usr/bin/env python3
"""Where this machine gets its packages, for the image builds.

The repository names no package index and no Debian mirror: builds take them from the
machine's own configuration, or from variables the user sets. This script reads that
configuration (stdlib only, so it runs on a bare host):

  scripts/package-sources.py apt-mirror [SUITE]      # the apt source serving SUITE (bookworm)
  scripts/package-sources.py apt-security [SUITE]    # the one serving SUITE-security, if any
  eval "$(scripts/package-sources.py build-env)"     # PIP_INDEX_URL ... CA_BUNDLE for compose

apt: ``DEBIAN_MIRROR`` when set, else the first ``deb`` source in /etc/apt/sources.list and
/etc/apt/sources.list.d/ (one-line ``.list`` and deb822 ``.sources``) that serves the
suite's ``main``. pip: the variables already set (``PIP_INDEX_URL``, ``PIP_EXTRA_INDEX_URL``,
``PIP_TRUSTED_HOST``, ``CA_BUNDLE``) win; the rest come from ``pip config list`` (index-url,
extra-index-url, trusted-host; local ``file:`` indexes are left out, a container cannot see
them) and the CA bundle from ``PIP_CERT`` or pip's ``cert``. Exits 1 and says what to set
when the machine has no such configuration.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

APT_DIR = Path(os.environ.get("APT_ETC", "/etc/apt"))


def _deb822(text: str) -> list[dict[str, str]]:
    stanzas, current = [], {}
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                stanzas.append(current)
            current = {}
            continue
        if line[0].isspace() and current:  # continuation of the previous field
            key = list(current)[-1]
            current[key] += " " + line.strip()
            continue
        key, _, value = line.partition(":")
        current[key.strip().lower()] = value.strip()
    return stanzas


def apt_sources(apt_dir: Path = APT_DIR) -> list[tuple[str, str, list[str]]]:
    """(uri, suite, components) of every enabled ``deb`` source, in apt's order."""
    sources: list[tuple[str, str, list[str]]] = []
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            line = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(line) >= 3 and line[0] == "deb":
                sources.append((line[1], line[2], line[3:]))
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in _deb822(path.read_text(errors="replace")):
            if "deb" not in stanza.get("types", "").split():
                continue
            if stanza.get("enabled", "yes").lower() == "no":
                continue
            for uri in stanza.get("uris", "").split():
                for suite in stanza.get("suites", "").split():
                    sources.append((uri, suite, stanza.get("components", "").split()))
    return sources


def apt_uri(suite: str, apt_dir: Path = APT_DIR) -> str | None:
    for uri, source_suite, components in apt_sources(apt_dir):
        if source_suite == suite and (not components or "main" in components):
            return uri.rstrip("/")
    return None


def pip_config() -> dict[str, str]:
    """pip's effective settings (``pip config list``), the last (strongest) one per key."""
    try:
        listed = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True, text=True, timeout=60, check=False,
        ).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return {}
    settings: dict[str, str] = {}
    for line in listed.splitlines():
        match = re.fullmatch(r"[^.]*\.([a-z-]+)='(.*)'", line.strip())
        if match:
            settings[match[1]] = match[2]
    return settings


def build_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The build variables of docker-compose.yml taken from this machine's pip setup."""
    environ = dict(os.environ if environ is None else environ)
    config = pip_config()
    remote = lambda urls: " ".join(u for u in urls.split() if not u.startswith("file:"))  # noqa: E731
    env: dict[str, str] = {}
    for var, key in (
        ("PIP_INDEX_URL", "index-url"),
        ("PIP_EXTRA_INDEX_URL", "extra-index-url"),
        ("PIP_TRUSTED_HOST", "trusted-host"),
    ):
        value = environ.get(var) or remote(config.get(key, ""))
        if value:
            env[var] = value
    cert = environ.get("CA_BUNDLE") or environ.get("PIP_CERT") or config.get("cert", "")
    if cert and Path(cert).is_file():
        env["CA_BUNDLE"] = cert
    return env


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "build-env"
    suite = argv[1] if len(argv) > 1 else "bookworm"
    if command in ("apt-mirror", "apt-security"):
        wanted = suite if command == "apt-mirror" else f"{suite}-security"
        uri = os.environ.get("DEBIAN_MIRROR") if command == "apt-mirror" else None
        uri = uri or apt_uri(wanted)
        if not uri:
            if command == "apt-security":
                return 1  # optional: the caller leaves the security suite out
            print(
                f"package-sources: no apt source of this machine serves '{wanted} main' "
                f"(read {APT_DIR}/sources.list and sources.list.d/); set DEBIAN_MIRROR to "
                "a Debian mirror",
                file=sys.stderr,
            )
            return 1
        print(uri)
        return 0
    if command == "build-env":
        for var, value in build_env().items():
            print(f"export {var}={shlex.quote(value)}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
