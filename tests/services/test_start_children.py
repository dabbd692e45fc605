"""``serve.start_children``: the one way the tests and the benchmarks start services."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import free_port

from splitdnn import serve

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
QUITTER = [sys.executable, "-c", "raise SystemExit(3)"]


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen]:
    """Every process ``start_children`` starts during the test."""
    processes: list[subprocess.Popen] = []
    popen = subprocess.Popen

    def recording(*args: object, **kwargs: object) -> subprocess.Popen:
        processes.append(popen(*args, **kwargs))
        return processes[-1]

    monkeypatch.setattr(serve.subprocess, "Popen", recording)
    yield processes
    serve.stop_processes(processes)


def test_a_child_that_exits_before_ready_is_named_and_the_others_are_stopped(started) -> None:
    children = {
        "quitter": serve.Child(QUITTER, {}, f"http://127.0.0.1:{free_port()}/ready"),
        "sleeper": serve.Child(SLEEPER, {}, f"http://127.0.0.1:{free_port()}/ready"),
    }
    with pytest.raises(RuntimeError, match="quitter did not become ready"):
        serve.start_children(children, ready_timeout=30)
    assert len(started) == 2
    assert all(process.poll() is not None for process in started)


def test_children_get_our_environment_plus_their_own(started, tmp_path) -> None:
    out = tmp_path / "env.txt"
    port = free_port()
    server = (
        "import os, http.server, sys\n"
        f"open({str(out)!r}, 'w').write(os.environ['OWN'] + ' ' + os.environ['PATH'][:1])\n"
        f"http.server.HTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler)"
        ".serve_forever()\n"
    )
    child = serve.Child([sys.executable, "-c", server], {"OWN": "yes"}, f"http://127.0.0.1:{port}/")
    with serve.running_children({"server": child}, ready_timeout=30) as processes:
        assert processes["server"].poll() is None
        assert out.read_text().startswith("yes ")
    assert processes["server"].poll() is not None
