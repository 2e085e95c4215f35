"""``msnewlesion demo``: the whole prediction on the built-in example pair with the built-in model."""

import json
from pathlib import Path

import typer

from msnewlesion.cli.common import choice, cli_errors, info, progress_bars, warn
from msnewlesion.cli.predict import DEVICE, ENGINE, SKULL_STRIP_MODE
from msnewlesion.settings import SKULL_STRIP_METHODS


@cli_errors
def demo(
    output: Path = typer.Option(..., "-o", "--output", help="Folder for the results (created if needed)."),
    device: str = DEVICE,
    skull_strip: str = typer.Option(
        "none",
        "--skull-strip",
        **choice(SKULL_STRIP_METHODS),
        help="none (the example is already skull-stripped), or auto, hd-bet-v1, hd-bet to run skull stripping anyway.",
    ),
    skull_strip_mode: str = SKULL_STRIP_MODE,
    engine: str = ENGINE,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace results already in the output folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the evaluation as JSON to stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Run the full prediction on the built-in example pair with the built-in `demo` model.

    The example is a longitudinal pair made from a real FLAIR of the LIT MS database (CC-BY) with
    known new lesions; the demo model is a small CoactSeg trained on synthetic pairs (not a clinical
    model). Writes the usual `predict` outputs to OUTPUT, scores the new-lesion mask against the
    known new lesions (`demo_evaluation.json`) and prints the lesion-wise F1. Works offline.

    **Example**

        msnewlesion demo -o demo_out
    """
    from msnewlesion.demo import run_demo

    with progress_bars(not quiet) as progress:
        result = run_demo(
            output,
            device=device,
            overwrite=overwrite,
            skull_strip=skull_strip,
            skull_strip_mode=skull_strip_mode,
            engine=engine,
            progress=progress,
        )
    for message in result.summary.get("warnings", []):
        warn(message)
    evaluation = result.evaluation
    if as_json:
        typer.echo(json.dumps(evaluation.as_dict(), indent=2))
    new = result.summary["new_lesions"]
    info(
        f"{new['count']} new lesion{'s' if new['count'] != 1 else ''} found ({new['volume_mm3']:.0f} mm³) "
        f"in {result.summary['timings_s']['total']:.1f} s → {output}"
    )
    info(
        f"against the example's {evaluation.n_ref_lesions} known new lesions: lesion-wise F1 "
        f"{evaluation.lesion_f1:.2f} (sensitivity {evaluation.lesion_sensitivity:.2f}, PPV "
        f"{evaluation.lesion_ppv:.2f}), Dice {evaluation.dice:.2f}"
    )
