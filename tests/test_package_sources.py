"""No package index and no Debian mirror is named anywhere in the repository.

Builds take their package sources from the machine's own configuration (pip's index and
certificate, the machine's apt sources; ``scripts/package-sources.py``) or from variables
the user sets. The hosts below are written as patterns so this file names none either.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Public package registries, their file hosts and OS package mirrors.
PACKAGE_HOSTS = re.compile(
    r"(?<![\w.-])(?:[\w-]+\.)*(?:"
    + "|".join(
        (
            r"pypi\.org",
            r"pypi\.python\.org",
            r"pythonhosted\.org",
            r"pytorch\.org",
            r"debian\.org",
            r"ubuntu\.com",
            r"anaconda\.(?:org|com)",
            r"npmjs\.(?:org|com)",
            r"alpinelinux\.org",
            r"fedoraproject\.org",
            r"centos\.org",
            r"nvidia\.com/compute",
        )
    )
    + r")",
    re.IGNORECASE,
)


def repository_files() -> list[Path]:
    """Tracked files (a fresh clone), or every file outside hidden and venv directories."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if listed.returncode == 0 and listed.stdout:
        return [ROOT / name for name in listed.stdout.split("\0") if name]
    skip = {".git", ".venv", "__pycache__", "node_modules"}
    return [
        path
        for path in ROOT.rglob("*")
        if path.is_file() and not skip.intersection(path.relative_to(ROOT).parts)
    ]


def test_no_package_index_or_mirror_host_is_written_in_the_repository():
    found = []
    for path in repository_files():
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            for match in PACKAGE_HOSTS.finditer(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {match.group(0)}")
    assert not found, "package-source hosts written in the repository:\n" + "\n".join(found)


def test_the_host_patterns_catch_what_they_are_for():
    host = "deb." + "debian" + ".org"
    assert PACKAGE_HOSTS.search(f"http://{host}/debian bookworm main")
    assert PACKAGE_HOSTS.search("https://files." + "pythonhosted" + ".org/packages/x.whl")
    assert not PACKAGE_HOSTS.search("http://mirror.internal/debian and PyPI, the index")


# --- scripts/package-sources.py ---------------------------------------------------------


@pytest.fixture(scope="module")
def sources():
    spec = importlib.util.spec_from_file_location(
        "package_sources", ROOT / "scripts" / "package-sources.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_apt_mirror_comes_from_the_machines_deb822_and_one_line_sources(sources, tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64] http://one-line.example/debian/ bookworm-updates main\n"
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    assert sources.apt_uri("bookworm", tmp_path) == "http://mirror.example/debian"
    assert sources.apt_uri("bookworm-updates", tmp_path) == "http://one-line.example/debian"
    assert (
        sources.apt_uri("bookworm-security", tmp_path) == "http://security.example/debian-security"
    )
    assert sources.apt_uri("trixie", tmp_path) is None


def test_build_env_takes_pips_configuration_but_no_local_file_index(sources, monkeypatch, tmp_path):
    cert = tmp_path / "ca.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setattr(
        sources,
        "pip_config",
        lambda: {
            "index-url": "https://index.example/simple",
            "extra-index-url": "file:///opt/local/simple https://extra.example/simple",
            "cert": str(cert),
        },
    )
    env = sources.build_env({})
    assert env == {
        "PIP_INDEX_URL": "https://index.example/simple",
        "PIP_EXTRA_INDEX_URL": "https://extra.example/simple",
        "CA_BUNDLE": str(cert),
    }
    assert (
        sources.build_env({"PIP_INDEX_URL": "http://mine.example/simple"})["PIP_INDEX_URL"]
        == "http://mine.example/simple"
    )
