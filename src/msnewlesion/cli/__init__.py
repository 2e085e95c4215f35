"""The ``msnewlesion`` command line: a thin typer shell over the core package."""

from typing import Optional

import typer

from msnewlesion import __version__
from msnewlesion.cli import bids as bids_cli
from msnewlesion.cli import demo, evaluate, models, predict, synth, train
from msnewlesion.cli import preprocess as preprocess_cli
from msnewlesion.cli.common import Command

app = typer.Typer(
    name="msnewlesion",
    help=(
        "Find NEW multiple sclerosis lesions in a pair of FLAIR scans (baseline and follow-up) with "
        "CoactSeg, and train and evaluate the models that do it.\n\n"
        "Run `msnewlesion COMMAND --help` for a command's options and examples."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"msnewlesion {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """msnewlesion: new MS lesions from pairs of FLAIR scans."""


app.command("predict", cls=Command)(predict.predict)
app.command("preprocess", cls=Command)(preprocess_cli.preprocess)
app.command("train", cls=Command)(train.train)
app.command("evaluate", cls=Command)(evaluate.evaluate)
app.command("synth", cls=Command)(synth.synth)
app.command("bids", cls=bids_cli.BidsCommand)(bids_cli.bids)
app.command("demo", cls=Command)(demo.demo)
app.add_typer(models.app, name="models")


def main() -> None:
    """Entry point of the ``msnewlesion`` console script."""
    app()
