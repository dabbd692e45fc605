"""The ``splitdnn`` command line: thin Typer commands over the library.

User errors (a bad config key, a missing data folder, an unknown name) become one line on
stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from splitdnn.cli_serve import serve_app
from splitdnn.errors import SplitDNNError

app = typer.Typer(
    help="Split inference with head network distillation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(serve_app, name="serve")


@app.callback()
def main() -> None:
    """Split inference with head network distillation."""


# ==============================================================================================
# distill (issue #3): train a student from a YAML config
# ==============================================================================================


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
    quiet: Annotated[
        bool, typer.Option("--quiet", help="No progress bars or per-epoch lines.")
    ] = False,
) -> None:
    """Train a student: hnd (bottleneck head), kd or labels (whole local-mode student)."""
    import json

    from splitdnn.distill.config import load_config
    from splitdnn.distill.kd import run_config

    try:
        cfg = load_config(config)
        result = run_config(
            cfg, run_dir or Path("runs") / config.stem, resume=resume, progress=not quiet
        )
    except SplitDNNError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(json.dumps(result, default=str))
