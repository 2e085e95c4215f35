"""``msnewlesion models``: the model registry and the official-checkpoint converter."""

from pathlib import Path

import typer

from msnewlesion.cli.common import cli_errors, info

app = typer.Typer(
    help="Models: convert the official CoactSeg checkpoint.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


@app.command("convert-coactseg")
@cli_errors
def convert_coactseg(
    checkpoint: Path = typer.Argument(
        ..., help="The official CoactSeg state dict (vnet_best_model.pth from github.com/ycwu1997/CoactSeg)."
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", help="Model folder to create (config.json + model.safetensors)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output folder if it exists."),
) -> None:
    """Convert the official CoactSeg checkpoint into a model folder of this package.

    The file is read with torch.load(weights_only=True), so nothing in it can run code, and it is
    loaded strictly: every one of its 230 tensors must map onto the network and fill it. The
    folder records the official model's spacing (0.5×0.75×0.75 mm in x, y, z), patch size (80)
    and intensity normalisation, so predict feeds it the way it was trained.

    **Example**

        msnewlesion models convert-coactseg vnet_best_model.pth -o models/coactseg-official
    """
    from msnewlesion.model.convert import convert_official_checkpoint

    destination = convert_official_checkpoint(checkpoint, output, overwrite=overwrite)
    info(f"converted {checkpoint} → {destination} (use it with --model {destination})")
