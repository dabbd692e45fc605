"""The NoNN latency benchmark's set-up and arithmetic, without root: the members' commands and
environment, and the summary of tiny made-up records (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.cgroup import CpuGroup
from benchmarks.netns import Link
from benchmarks.nonn_latency import markdown, summarise
from benchmarks.stack import device_stack

LINK = Link("ns-test", "ns-test-h", "ns-test-n", "10.9.9.1", "10.9.9.2", 20.0)


def groups(k: int) -> list[CpuGroup]:
    return [CpuGroup(Path(f"/sys/fs/cgroup/cpu/test-m{i}")) for i in range(k)]


def test_each_member_runs_in_its_cpu_group_and_the_namespace_seeing_its_quota(
    toy_bundle_dir: Path, toy_nonn_bundle_dir: Path
) -> None:
    stack = device_stack(LINK, toy_bundle_dir, CpuGroup(None), 0, path="classify",
                         nonn=toy_nonn_bundle_dir, member_groups=groups(2))  # fmt: skip
    for i in range(2):
        argv = stack.children[f"member{i}"].argv
        assert argv[0] == "sh" and f"test-m{i}/cgroup.procs" in argv[2]
        # not `ip netns exec`: its own /sys hides the cgroup fs, so the member would not
        # see its quota and would run two spinning threads in 0.11 core
        assert argv[4:6] == ["nsenter", "--net=/var/run/netns/ns-test"]
        assert stack.urls[f"member{i}"].startswith("http://10.9.9.2:")
    assert list(stack.children) == ["tail", "member0", "member1", "head"]  # members first


def test_the_device_gateway_serves_nonn_from_the_members_behind_the_link(
    toy_bundle_dir: Path, toy_nonn_bundle_dir: Path
) -> None:
    stack = device_stack(LINK, toy_bundle_dir, CpuGroup(None), 0, path="classify",
                         nonn=toy_nonn_bundle_dir, member_groups=groups(2))  # fmt: skip
    env = stack.children["head"].env
    assert json.loads(env["SPLITDNN_GATEWAY_MEMBER_URLS"]) == [
        stack.urls["member0"],
        stack.urls["member1"],
    ]
    assert env["SPLITDNN_NONN_BUNDLE"] == str(toy_nonn_bundle_dir)
    plain = device_stack(LINK, toy_bundle_dir, CpuGroup(None), 0, path="classify")
    assert "SPLITDNN_NONN_BUNDLE" not in plain.children["head"].env


def test_member_groups_without_a_nonn_bundle_are_refused(toy_bundle_dir: Path) -> None:
    with pytest.raises(ValueError, match="NoNN bundle"):
        device_stack(LINK, toy_bundle_dir, CpuGroup(None), 0, member_groups=groups(1))


def _record(cell: str, image: str, latency: float, error: str | None = None) -> dict:
    r = {"cell": cell, "image": image, "latency_ms": latency, "error": error, "bytes": 100}
    if cell == "nonn":
        r |= {"join_ms": 1.0, "slowest_round_trip_ms": latency - 11.0,
              "members": [{"index": i, "round_trip_ms": latency - 11.0 - i, "compute_ms": 50.0 + i,
                           "bytes_received": 50} for i in range(2)]}  # fmt: skip
    else:
        r |= {"head_ms": 40.0, "head_model_ms": 30.0, "transfer_ms": 5.0, "tail_ms": 5.0}
    return r


def made_up_result() -> dict:
    records = []
    for n, image in enumerate(("a", "b", "c")):
        records += [_record("local", image, 100.0 + n), _record("split", image, 80.0 + n),
                    _record("nonn", image, 150.0 + 10 * n)]  # fmt: skip
    records.append(_record("nonn", "d", 0.0, error="RuntimeError"))
    stages = [[{"decode": 10.0, "member": 40.0 + i, "total": 55.0} for i in range(2)]] * 3
    return {
        "name": "test", "profile": "pi4", "cpu_share": 0.11, "period_us": 10000,
        "rate_mbit": 20.0, "calibration": {"payload_mbit": 19.0},
        "nonn": {"members": 2, "student": "toy", "bundle": "b", "trained": False, "costs": None},
        "photos": {"count": 3}, "note": "", "load_after": [1.0, 1.0, 1.0],
        "records": records, "member_stages": stages,
    }  # fmt: skip


def test_the_summary_splits_nonn_time_into_members_join_and_gateway() -> None:
    s = summarise(made_up_result())
    nonn = s["cells"]["nonn"]
    assert nonn["n"] == 3 and nonn["errors"] == 1 and nonn["p50_ms"] == 160.0
    assert nonn["slowest_member_round_trip_ms"] == 149.0
    assert nonn["join_ms"] == 1.0 and nonn["gateway_rest_ms"] == 10.0
    member1 = s["members"][1]
    assert member1["compute_ms"] == 51.0 and member1["transfer_ms"] == 97.0  # 148 - 51
    assert member1["model_ms"] == 41.0 and member1["decode_ms"] == 10.0
    assert s["cells"]["local"]["device_rest_ms"] == 51.0  # 101 - 40 - 5 - 5
    assert s["ratios"]["nonn_over_local"]["ratio"] == pytest.approx(160 / 101, abs=1e-3)
    assert s["ratios"]["nonn_over_split"]["photos"] == 3


def test_the_report_renders_every_mode_and_member() -> None:
    result = made_up_result()
    result["summary"] = summarise(result)
    text = "\n".join(markdown(result))
    assert "| nonn | 3 | 160.0 |" in text and "nonn / local" in text
    assert "untrained" in text


def test_the_kernel_layout_counts_every_convolution_of_a_member(
    toy_nonn_bundle_dir: Path,
) -> None:
    from benchmarks.nonn_latency import kernel_layout

    layout = kernel_layout(toy_nonn_bundle_dir / "member0.onnx")  # two convolutions
    assert layout["convs"] == 2 == layout["blocked"] + layout["plain"]
    assert layout["reorders"] >= 0


def test_the_teacher_and_local_model_are_timed_alone_on_every_photo_in_the_group(
    toy_bundle_dir: Path, cat_jpeg: bytes
) -> None:
    from benchmarks.nonn_latency import models_alone

    photos = [("cat.jpg", cat_jpeg), ("cat2.jpg", cat_jpeg), ("cat3.jpg", cat_jpeg)]
    alone = models_alone(CpuGroup(None), toy_bundle_dir, photos)  # a process of its own
    assert set(alone) == {"offload", "local"}
    for role in alone.values():
        assert len(role["model_ms"]) == 3 and all(t > 0 for t in role["model_ms"])
        assert "intra" in role["threads"]


def test_a_failing_model_timer_says_why(tmp_path: Path, cat_jpeg: bytes) -> None:
    from benchmarks.nonn_latency import models_alone

    with pytest.raises(RuntimeError, match="model_alone failed"):
        models_alone(CpuGroup(None), tmp_path, [("cat.jpg", cat_jpeg)])  # not a bundle


def test_the_report_sets_the_teacher_alone_beside_the_members() -> None:
    result = made_up_result()
    plan = "1 intra-op thread"
    result["models_alone"] = {
        "offload": {"model_ms": [300.0, 310.0, 320.0], "threads": plan},
        "local": {"model_ms": [90.0, 95.0, 99.0], "threads": plan},
    }
    result["summary"] = summarise(result)
    assert result["summary"]["models_alone"]["offload"]["model_ms"] == 310.0
    assert result["summary"]["models_alone"]["local"] == {"model_ms": 95.0, "n": 3, "threads": plan}
    text = "\n".join(markdown(result))
    assert "the teacher (the split bundle's offload model) **310.0 ms**" in text
    assert "the local model 95.0 ms" in text
    assert "Alone on the same profile" not in "\n".join(markdown(made_up_result() | {
        "summary": summarise(made_up_result())}))  # fmt: skip
