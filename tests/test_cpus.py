"""The CPU a process may really use (splitdnn.cpus) on fake /proc and cgroup trees, and the
ONNX Runtime sessions sized from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitdnn import cpus
from splitdnn.cpus import CpuBudget, cgroup_quota, plan_threads, thread_count


def fake_proc(tmp_path: Path, cgroup: str, mounts: list[tuple[str, str, str, str]]) -> Path:
    """A /proc/self with ``cgroup`` and a mountinfo of (root, mount point, fstype, options)."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    lines = [
        f"{30 + i} 23 0:{40 + i} {root} {point} rw,relatime - {fstype} cgroup rw,{options}"
        for i, (root, point, fstype, options) in enumerate(mounts)
    ]
    (proc / "mountinfo").write_text("\n".join(lines) + "\n")
    return proc


def v1_group(path: Path, quota: int, period: int = 100_000) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (path / "cpu.cfs_period_us").write_text(f"{period}\n")


def test_v1_quota_is_read_from_the_process_own_group_not_the_root(tmp_path):
    cpu = tmp_path / "cpu,cpuacct"
    v1_group(cpu, -1)
    v1_group(cpu / "threads-dev", 2_500, 10_000)
    proc = fake_proc(
        tmp_path,
        "4:memory:/\n3:cpu,cpuacct:/threads-dev\n0::/\n",
        [("/", str(cpu), "cgroup", "cpu,cpuacct")],
    )
    quota, source = cgroup_quota(proc)
    assert quota == pytest.approx(0.25)
    assert "threads-dev" in source


def test_a_parent_group_quota_limits_its_children(tmp_path):
    cpu = tmp_path / "cpu"
    v1_group(cpu / "slice", 50_000)
    v1_group(cpu / "slice" / "service", -1)
    proc = fake_proc(tmp_path, "1:cpu:/slice/service\n", [("/", str(cpu), "cgroup", "cpu")])
    assert cgroup_quota(proc)[0] == pytest.approx(0.5)


def test_v2_cpu_max_is_read_from_the_process_own_group(tmp_path):
    unified = tmp_path / "unified"
    group = unified / "system.slice" / "splitdnn-head.service"
    group.mkdir(parents=True)
    (group / "cpu.max").write_text("150000 100000\n")
    (group.parent / "cpu.max").write_text("max 100000\n")
    proc = fake_proc(
        tmp_path, "0::/system.slice/splitdnn-head.service\n", [("/", str(unified), "cgroup2", "")]
    )
    assert cgroup_quota(proc)[0] == pytest.approx(1.5)


def test_no_quota_anywhere_means_none(tmp_path):
    cpu, unified = tmp_path / "cpu", tmp_path / "unified"
    v1_group(cpu / "a", -1)
    (unified / "a").mkdir(parents=True)
    (unified / "a" / "cpu.max").write_text("max 100000\n")
    proc = fake_proc(
        tmp_path,
        "1:cpu:/a\n0::/a\n",
        [("/", str(cpu), "cgroup", "cpu"), ("/", str(unified), "cgroup2", "")],
    )
    assert cgroup_quota(proc)[0] is None


def test_a_container_without_its_cgroup_namespace_reads_its_mount_point(tmp_path):
    """Docker on cgroup v1 mounts the container's own group at /sys/fs/cgroup/cpu while
    /proc/self/cgroup still names the host's path."""
    cpu = tmp_path / "cpu"
    v1_group(cpu, 150_000)
    proc = fake_proc(
        tmp_path, "2:cpu:/docker/abc123\n", [("/docker/abc123", str(cpu), "cgroup", "cpu")]
    )
    assert cgroup_quota(proc)[0] == pytest.approx(1.5)


def test_missing_proc_files_mean_no_quota(tmp_path):
    assert cgroup_quota(tmp_path / "nothing")[0] is None


@pytest.mark.parametrize(
    ("quota", "affinity", "threads"),
    [(None, 4, 4), (1.5, 4, 1), (2.0, 4, 2), (0.25, 4, 1), (8.0, 2, 2), (None, 1, 1)],
)
def test_threads_are_the_whole_cores_of_quota_within_the_affinity(quota, affinity, threads):
    assert thread_count(CpuBudget(quota, affinity)) == threads


def test_spinning_is_off_under_a_quota_and_on_without():
    under = plan_threads(CpuBudget(0.25, 2, "cgroup v1 /x: 2500/10000 us"))
    assert (under.intra_op, under.inter_op, under.spinning) == (1, 1, False)
    assert "0.25" in under.describe() and "spinning off" in under.describe()
    free = plan_threads(CpuBudget(None, 2))
    assert (free.intra_op, free.spinning) == (2, True)


def test_threads_set_by_hand_are_kept_and_still_do_not_spin_under_a_quota():
    plan = plan_threads(CpuBudget(0.25, 2), intra_op=3, inter_op=2)
    assert (plan.intra_op, plan.inter_op, plan.spinning) == (3, 2, False)


def test_cpu_budget_counts_the_affinity_mask(monkeypatch, tmp_path):
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 3, 5})
    budget = cpus.cpu_budget(tmp_path / "no-proc")
    assert (budget.quota, budget.affinity, budget.cores) == (None, 3, 3.0)
