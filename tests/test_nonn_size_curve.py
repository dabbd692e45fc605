"""benchmarks/nonn_size_curve.py: the points it reads from figures files and the report it
writes (the figures themselves are the committed ones in benchmarks/results/nonn)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.nonn_size_curve import COMMITTED, NONN_RESULTS, curve, main


def _figures(macs: list[int], top1: float, teacher_macs: int | None, down=()) -> dict:
    members = [{"macs": m, "params": m // 100} for m in macs]
    figures = {
        "bundle": f"b{top1}",
        "served": {
            "images": 578,
            "top1": top1,
            "ci95": [top1 - 3, top1 + 3],
            "one_member_down": [{"member": k, "top1": t} for k, t in enumerate(down)],
        },
        "teacher": {"images": 578, "top1": 95.33},
    }
    if teacher_macs is None:  # the first figures files: member costs at the top level
        figures["members"] = members
    else:
        figures["costs"] = {"members": members, "teacher": {"macs": teacher_macs}}
    return figures


def test_points_read_each_files_largest_member_against_the_teachers_macs(tmp_path):
    files = {
        tmp_path / "k4.json": _figures([100, 120, 110, 100], 94.0, 1000, down=[90.0, 80.0]),
        tmp_path / "k2-old.json": _figures([400, 400], 95.0, None),
        tmp_path / "k2.json": _figures([200, 250], 92.0, 1000),
    }
    for path, figures in files.items():
        path.write_text(json.dumps(figures))
    result = curve({path: path.stem for path in files})
    rows = [(p["label"], p["members"], p["member_macs_percent"]) for p in result["points"]]
    assert rows == [("k2", 2, 25.0), ("k2-old", 2, 40.0), ("k4", 4, 12.0)]
    k2, _, k4 = result["points"]
    assert k2["points_below_teacher"] == pytest.approx(3.33) and k2["worst_one_down"] is None
    assert k4["worst_one_down"] == 80.0 and k4["member_fp16_bytes"] == 2
    assert [p["number"] for p in result["points"]] == [1, 2, 3]


def test_the_report_says_which_target_each_point_meets_and_draws_the_chart(tmp_path):
    near = tmp_path / "near.json"
    near.write_text(json.dumps(_figures([240, 250], 93.5, 1000)))  # 25 %, 1.83 below
    far = tmp_path / "far.json"
    far.write_text(json.dumps(_figures([130, 125, 120, 110], 92.0, 1000)))  # 13 %, 3.33 below
    assert main(["--point", f"{near}=near", "--point", f"{far}=far", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "size_curve.md").read_text()
    assert "| 1 | 2 | near | 0.0 M (25.0 %) |" in table and "| yes / yes |" in table
    assert "| 2 | 4 | far |" in table and "| no / yes |" in table
    assert (tmp_path / "size_curve.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "size_curve.json").read_text())["teacher_macs"] == 1000


def test_a_point_without_a_label_or_a_teacher_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--point", "figures.json", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "FILE=LABEL" in capsys.readouterr().err
    old = tmp_path / "old.json"
    old.write_text(json.dumps(_figures([400, 400], 95.0, None)))
    with pytest.raises(ValueError, match="teacher's MACs"):
        curve({old: "old"})


@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_every_committed_point_is_a_figures_file_of_held_out_images(name):
    figures = json.loads((NONN_RESULTS / name).read_text())
    assert figures.get("split", "val") == "val"  # never the trained-on images
    assert figures["served"]["images"] == figures["teacher"]["images"] > 0


def test_the_committed_curve_is_the_one_its_script_writes():
    committed = json.loads((NONN_RESULTS / "size_curve.json").read_text())
    fresh = curve({NONN_RESULTS / name: label for name, label in COMMITTED.items()})
    assert committed["points"] == fresh["points"]
    assert Path(NONN_RESULTS / "size_curve.png").exists()
