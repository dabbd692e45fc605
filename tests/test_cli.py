"""The ``splitdnn`` command line: JSON that scripts can rely on, user errors as exit code 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from splitdnn.cli import USAGE_ERROR, app

runner = CliRunner()

STUDENT_KEYS = {
    "teacher",
    "split_module",
    "bottleneck_channels",
    "input_shape",
    "bottleneck_shape",
    "data_size_percent",
    "device_macs",
    "teacher_head_macs",
    "device_macs_reduction_percent",
    "student_params",
    "teacher_head_params",
}


def test_student_json_has_the_catalogue_keys() -> None:
    result = runner.invoke(app, ["student", "efficientnet_lite0", "--bottleneck", "6", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) >= STUDENT_KEYS
    assert data["teacher"] == "efficientnet_lite0" and data["split_module"] == "_blocks.7"
    assert data["input_shape"] == [3, 224, 224] and data["bottleneck_shape"] == [6, 14, 14]
    assert data["data_size_percent"] == pytest.approx(100 * 6 * 14 * 14 / (3 * 224 * 224))
    assert 75 < data["device_macs_reduction_percent"] < 100
    assert data["teacher_head_params"] > 0 and data["student_params"] > 0


def test_student_table_without_json() -> None:
    result = runner.invoke(app, ["student", "efficientnet_lite0", "-b", "3"])
    assert result.exit_code == 0, result.output
    assert "bottleneck_shape" in result.stdout and "[3, 14, 14]" in result.stdout


def test_profile_json_and_figure(tmp_path: Path) -> None:
    png = tmp_path / "figure1.png"
    result = runner.invoke(app, ["profile", "efficientnet_lite0", "--json", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["teacher"] == "efficientnet_lite0" and data["pretrained"] is True
    rows = data["rows"]
    assert rows[0]["module"] == "input" and rows[-1]["module"] == "_avg_pooling"
    for row in rows:
        assert {
            "module",
            "output_shape",
            "output_percent",
            "cumulative_macs_percent",
            "compressed_percent",
        } <= set(row)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["plot"] == str(png.resolve())  # where it went, without spoiling the JSON
    assert f"wrote the figure to {png.resolve()}" in result.stderr


def test_profile_takes_an_image_and_defaults_torchvision_to_random_weights(
    tmp_path: Path, cat_jpeg: bytes
):
    image = tmp_path / "cat.jpg"
    image.write_bytes(cat_jpeg)
    result = runner.invoke(app, ["profile", "resnet152", "--image", str(image), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["pretrained"] is False
    assert [r["module"] for r in data["rows"]][1:3] == ["maxpool", "layer1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["student", "resnet9000", "-b", "3", "--json"], "unknown teacher"),
        (
            [
                "student",
                "efficientnet_lite2",
                "-b",
                "3",
                "--split-module",
                "_bn0",
                "--variant",
                "teacher_init",
            ],
            "no teacher_init",
        ),
        (["profile", "efficientnet_lite0", "--image", "/nonexistent.jpg"], "does not exist"),
        (["export", "run"], "Missing argument 'run_dir'"),
        (["export", "run", "/nonexistent-run", "--out", "/tmp/x"], "best.pt"),
        (["evaluate", "/nonexistent-run", "--data", "/tmp"], "does not exist"),
    ],
)
def test_user_errors_are_one_line_on_stderr_and_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == USAGE_ERROR, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_profile_of_a_non_image_is_a_user_error(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.jpg"
    bogus.write_text("not an image")
    result = runner.invoke(app, ["profile", "efficientnet_lite0", "--image", str(bogus)])
    assert result.exit_code == USAGE_ERROR
    assert "error:" in result.stderr


def test_serve_is_mounted() -> None:
    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    assert "tail" in result.stdout and "head" in result.stdout


def _command_paths(command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group of the CLI as its argv prefix (the root is ``()``)."""
    paths = [path]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        paths += _command_paths(sub, (*path, name))
    return paths


def _commands():
    import typer.main

    root = typer.main.get_command(app)
    for path in _command_paths(root):
        command = root
        for name in path:
            command = command.commands[name]
        yield path, command


@pytest.mark.parametrize("width", ["80", "100", "160"])
def test_every_help_has_whole_paragraphs_flags_without_a_type_and_whole_choices(width) -> None:
    """Docstrings are wrapped for the source; kept newlines would break sentences wherever the
    terminal wraps differently. A flag takes no value (no ``<bool>``), and a type or choice
    list in the type column is never cut in two."""
    checked = 0
    for path, command in _commands():
        for paragraph in (command.help or "").split("\n\n"):
            assert "\n" not in paragraph.strip(), (path, paragraph)
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": width})
        assert result.exit_code == 0, (path, result.output)
        assert "<bool>" not in result.output, (path, result.output)
        for line in result.output.splitlines():
            assert not re.search(r"<[^<>]*$", line), (path, line)  # a type cut in two
        checked += 1
    assert checked >= 15  # every command and group: export run|default|classes|assets, serve ...


def test_teachers_and_profile_help_say_torchvision_classifiers_are_teachers() -> None:
    for command in (["teachers"], ["profile"]):
        text = " ".join(runner.invoke(app, [*command, "--help"]).output.split())
        assert "torchvision classif" in text and "registered teacher name" not in text.lower()
    teachers = " ".join(runner.invoke(app, ["teachers", "--help"]).output.split())
    assert "1/8 of the input" in teachers  # where their students cut by default


def test_certs_makes_a_ca_and_certificates_the_services_accept(tmp_path) -> None:
    pytest.importorskip("cryptography")
    from splitdnn.tls import tls_files

    out = tmp_path / "certs"
    result = runner.invoke(app, ["certs", str(out), "--name", "tail", "--host", "edge.lan"])
    assert result.exit_code == 0, result.output
    ca = (out / "ca.pem").read_bytes()
    assert (out / "ca.key").stat().st_mode & 0o077 == 0  # the CA's key is private
    tls_files("tail", out / "tail.pem", out / "tail.key", out / "ca.pem")  # chains, not expired
    again = runner.invoke(app, ["certs", str(out), "--name", "head"])
    assert again.exit_code == 0 and (out / "ca.pem").read_bytes() == ca  # the CA is reused
    tls_files("head", out / "head.pem", out / "head.key", out / "ca.pem")


# --- NoNN from the user's side ------------------------------------------------------------------


def test_evaluate_on_a_nonn_bundle_names_the_nonn_figures_command(toy_nonn_bundle_dir) -> None:
    result = runner.invoke(app, ["evaluate", str(toy_nonn_bundle_dir), "--data", "photos"])
    assert result.exit_code == USAGE_ERROR
    assert "NoNN bundle" in result.stderr and "splitdnn nonn figures" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("source", ["run", "assets"])
def test_evaluate_on_a_nonn_run_or_its_assets_names_the_nonn_commands(tmp_path, source) -> None:
    torch = pytest.importorskip("torch")
    if source == "run":
        torch.save({"kind": "splitdnn-nonn", "student": {}}, tmp_path / "best.pt")
    else:
        (tmp_path / "nonn_student.json").write_text('{"kind": "splitdnn-nonn"}')
    result = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == USAGE_ERROR
    assert "splitdnn export nonn" in result.stderr and "splitdnn nonn figures" in result.stderr
    assert "not a splitdnn student checkpoint" not in result.stderr


def test_nonn_figures_without_the_teachers_probe_is_a_message_not_a_traceback(
    toy_nonn_bundle_dir, tmp_path
) -> None:
    config = tmp_path / "nonn.yaml"
    config.write_text("method: nonn\ndata: {root: photos}\n")
    result = runner.invoke(
        app,
        ["nonn", "figures", str(toy_nonn_bundle_dir), "--run", str(tmp_path), "--config",
         str(config)],
    )  # fmt: skip
    assert result.exit_code == USAGE_ERROR, result.output
    assert "teacher.probe_from" in result.stderr and "nonn.cache_dir" in result.stderr
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)


def test_no_command_of_the_library_parses_its_own_arguments() -> None:
    """Every command is a subcommand of `splitdnn` (Typer): no argparse in the library."""
    library = Path(__file__).resolve().parents[1] / "splitdnn"
    users = [
        p.relative_to(library)
        for p in library.rglob("*.py")
        if re.search(r"^\s*(import argparse|from argparse )", p.read_text(), re.MULTILINE)
    ]
    assert not users, f"argparse in {users}: make it a `splitdnn` subcommand"
