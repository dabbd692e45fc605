"""ONNX Runtime sessions get threads sized to the CPU the process really has: with a fake
budget, and in a real process started in a cgroup v1 group with a quarter core."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from splitdnn import runtime
from splitdnn.cpus import CpuBudget
from splitdnn.runtime import OnnxModel, Threads

ROOT = Path(__file__).resolve().parents[1]

#: Run in a child process: open a session with default (auto) threads and report what it got.
PROBE = """
import json, os, sys
from pathlib import Path
from splitdnn.runtime import OnnxModel, Threads
before = len(os.listdir("/proc/self/task"))
model = OnnxModel(Path(sys.argv[1]), Threads())
added = len(os.listdir("/proc/self/task")) - before
options = model.session.get_session_options()
try:
    spinning = options.get_session_config_entry("session.intra_op.allow_spinning")
except RuntimeError:  # not set: onnxruntime's default, spinning on
    spinning = None
print(json.dumps({"intra_op": options.intra_op_num_threads, "allow_spinning": spinning,
                  "threads_added": added}))
"""


def session_options(model: OnnxModel) -> tuple[int, str | None]:
    options = model.session.get_session_options()
    try:
        spinning = options.get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:
        spinning = None
    return options.intra_op_num_threads, spinning


def test_auto_threads_follow_a_quota_and_turn_spinning_off(monkeypatch, toy_bundle_dir):
    monkeypatch.setattr(runtime, "process_budget", lambda: CpuBudget(0.25, 4, "fake"))
    model = OnnxModel(toy_bundle_dir / "device.onnx", Threads())
    assert session_options(model) == (1, "0")


def test_auto_threads_without_a_quota_use_the_affinity_and_may_spin(monkeypatch, toy_bundle_dir):
    monkeypatch.setattr(runtime, "process_budget", lambda: CpuBudget(None, 3))
    model = OnnxModel(toy_bundle_dir / "device.onnx", Threads())
    assert session_options(model) == (3, None)


def test_threads_set_by_hand_win_over_the_budget(monkeypatch, toy_bundle_dir):
    monkeypatch.setattr(runtime, "process_budget", lambda: CpuBudget(0.25, 4))
    model = OnnxModel(toy_bundle_dir / "server.onnx", Threads(intra_op=2, inter_op=1))
    assert session_options(model) == (2, "0")


def test_each_thread_plan_is_logged_once(monkeypatch, toy_bundle_dir, caplog):
    budget = CpuBudget(0.5, 2, "cgroup v1 /sys/fs/cgroup/cpu/threads-log: 5000/10000 us")
    monkeypatch.setattr(runtime, "process_budget", lambda: budget)
    monkeypatch.setattr(runtime, "_logged_plans", set())
    with caplog.at_level("INFO", logger="splitdnn.runtime"):
        OnnxModel(toy_bundle_dir / "device.onnx")
        OnnxModel(toy_bundle_dir / "local.onnx")
    lines = [r.getMessage() for r in caplog.records if r.name == "splitdnn.runtime"]
    assert len(lines) == 1
    assert "intra-op 1" in lines[0] and "threads-log" in lines[0] and "spinning off" in lines[0]


def _probe(model: Path, wrap=list) -> dict:
    """Run :data:`PROBE` in a new process (``wrap`` starts it in a cgroup)."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run(
        wrap([sys.executable, "-c", PROBE, str(model)]),
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.cgroup
def test_a_process_in_a_quarter_core_group_runs_one_thread_without_spinning(toy_bundle_dir):
    from benchmarks import cgroup
    from splitdnn import devices

    reason = cgroup.why_unavailable()
    if reason:
        pytest.skip(reason)
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: threads that ignore the quota would choose 1 as well")
    model = toy_bundle_dir / "device.onnx"
    quarter = dataclasses.replace(devices.get("pi4"), cpu_share=0.25, period_us=10_000)
    free = _probe(model)
    with cgroup.cpu_group(f"threads-test-{os.getpid()}", quarter) as group:
        limited = _probe(model, group.wrap)
    assert limited["intra_op"] == 1
    assert limited["allow_spinning"] == "0"
    # the control: without the quota the same code takes the affinity's CPUs and spins
    assert free["intra_op"] == len(os.sched_getaffinity(0))
    assert free["allow_spinning"] is None
    assert limited["threads_added"] < free["threads_added"]
