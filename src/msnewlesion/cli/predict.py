"""``msnewlesion predict``: new lesions for one pair of FLAIR scans."""

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from msnewlesion.cli.common import (
    DEVICE_HELP,
    DEVICE_METAVAR,
    choice,
    cli_errors,
    console,
    device_value,
    info,
    model_value,
    number_in,
    progress_bars,
    warn,
)
from msnewlesion.settings import (
    CONNECTIVITIES,
    DEFAULT_MODEL,
    DEFAULT_TRANSFORM,
    ENGINES,
    PRECISIONS,
    REGISTRATION_SPACES,
    SKULL_STRIP_METHODS,
    SKULL_STRIP_MODES,
    TRANSFORMS,
)

if TYPE_CHECKING:
    from msnewlesion.predict import PredictOptions

# Option declarations shared with the commands that run predict on many pairs (bids, demo). Every choice
# comes from msnewlesion.settings, so that typer refuses a bad value while parsing and --help lists them.
MODEL = typer.Option(
    DEFAULT_MODEL,
    "--model",
    "-m",
    callback=model_value,
    help="Model: a registry name (see `models list`), a Hub repo (owner/name, @revision optional) or a local "
    "model folder.",
)
NO_PREPROCESS = typer.Option(
    False,
    "--no-preprocess",
    help="The pair is already co-registered on one grid and skull-stripped: skip "
    "registration, skull stripping and bias correction (resampling and normalisation still happen).",
)
SKULL_STRIP = typer.Option(
    "auto",
    "--skull-strip",
    **choice(SKULL_STRIP_METHODS),
    help="auto (inputs found already skull-stripped are kept as they are; others: HD-BET 2 when its weights are in "
    "place, else HD-BET v1, which ships with msnewlesion), hd-bet (HD-BET 2), hd-bet-v1, or none for inputs that are "
    "already stripped.",
)
SKULL_STRIP_MODE = typer.Option(
    "auto",
    "--skull-strip-mode",
    **choice(SKULL_STRIP_MODES),
    help="HD-BET v1: fast (one fold), accurate (five folds, mirrored) or auto (fast on a CPU, accurate on a GPU).",
)
BRAIN_MASK = typer.Option(
    None, "--brain-mask", help="A brain mask on the baseline's grid (instead of skull stripping)."
)
SPACE = typer.Option(
    "halfway",
    "--space",
    **choice(REGISTRATION_SPACES),
    help="Common space of the two scans: halfway, baseline, followup, or none (they already share one grid).",
)
TRANSFORM = typer.Option(
    None,
    "--transform",
    **choice(TRANSFORMS),
    help=f"Rigid registration: {DEFAULT_TRANSFORM} (default) or QuickRigid (faster, coarser).",
)
NO_BIAS_CORRECTION = typer.Option(False, "--no-bias-correction", help="Skip N4 bias-field correction.")
OVERLAP = typer.Option(0.5, "--overlap", min=0.0, max=0.95, help="Overlap of neighbouring windows (0 to 0.95).")
BATCH_SIZE = typer.Option(2, "--batch-size", min=1, help="Windows per forward pass.")
TTA = typer.Option(False, "--tta", help="Average over the 8 mirrorings of each window (8× slower).")
PRECISION = typer.Option(
    "auto",
    "--precision",
    **choice(PRECISIONS),
    help="auto: bf16 on CPUs with native bf16, else fp32; fp32/TF32 on recent NVIDIA GPUs, fp16 on older ones.",
)
ENGINE = typer.Option(
    "auto",
    "--engine",
    **choice(ENGINES),
    help="What runs the networks: auto (the engine measured fastest: PyTorch), torch, or openvino "
    "(CPU only; needs the optional openvino extra of msnewlesion).",
)
PAPER_MODE = typer.Option(
    False,
    "--paper-mode",
    help="The published inference: 80³ windows at stride 20, plain "
    "mean, fp32, threshold 0.5, no size filter; follow-up map from a (fu, fu, 0) pass.",
)
THRESHOLD = typer.Option(
    None,
    "--threshold",
    parser=number_in(0.0, 1.0, low_open=True, high_open=True),
    help="Lesion probability threshold, between 0 and 1 (default: the model's).",
)
MIN_LESION_VOLUME = typer.Option(
    3.0,
    "--min-lesion-volume",
    min=0.0,
    help="Drop lesions smaller than this many mm³ (MSSEG rule: floor(v / voxel volume) + 1 voxels); 0 keeps all.",
)
CONNECTIVITY = typer.Option(
    "26", "--connectivity", **choice(CONNECTIVITIES), help="Voxel connectivity of a lesion: 26 or 6."
)
DEVICE = typer.Option("auto", "--device", metavar=DEVICE_METAVAR, callback=device_value, help=DEVICE_HELP)
SAVE_PROBABILITIES = typer.Option(False, "--save-probabilities", help="Also write the three probability maps.")
MIN_BRIGHTENING = typer.Option(
    None,
    "--min-brightening",
    parser=number_in(-math.inf, math.inf),
    help="Keep only new lesions whose mean follow-up intensity exceeds the baseline's there by this much (brain "
    "standard deviations); off by default (docs/predict.md).",
)

ENLARGING_RELATIVE = typer.Option(
    0.5,
    "--enlarging-relative",
    parser=number_in(0.0, math.inf, low_open=True),
    help="A lesion present at both time points is enlarging when it grew by at least this fraction of its "
    "baseline volume (0.5: 50 %) and by --enlarging-min-mm3; shrinking by the same rule backwards.",
)
ENLARGING_MIN_MM3 = typer.Option(
    10.0, "--enlarging-min-mm3", min=0.0, help="The volume (mm³) an enlarging lesion must gain at least."
)


def predict_options(
    *,
    no_preprocess: bool,
    skull_strip: str,
    skull_strip_mode: str,
    brain_mask: Path | None,
    space: str,
    transform: str | None,
    no_bias_correction: bool,
    overlap: float,
    batch_size: int,
    tta: bool,
    precision: str,
    engine: str,
    paper_mode: bool,
    threshold: float | None,
    min_lesion_volume: float,
    connectivity: str,
    device: str,
    save_probabilities: bool,
    min_brightening: float | None,
    enlarging_relative: float,
    enlarging_min_mm3: float,
) -> "PredictOptions":
    """The core's PredictOptions from the predict options a command declares (the --no-x flags turned around)."""
    from msnewlesion.predict import PredictOptions

    return PredictOptions(
        preprocess=not no_preprocess,
        skull_strip=skull_strip,
        skull_strip_mode=skull_strip_mode,
        brain_mask=brain_mask,
        space=space,
        transform=transform,
        bias_correction=not no_bias_correction,
        overlap=overlap,
        batch_size=batch_size,
        tta=tta,
        precision=precision,
        engine=engine,
        paper_mode=paper_mode,
        threshold=threshold,
        min_lesion_volume=min_lesion_volume,
        connectivity=int(connectivity),
        device=device,
        save_probabilities=save_probabilities,
        min_brightening=min_brightening,
        enlarging_relative=enlarging_relative,
        enlarging_min_mm3=enlarging_min_mm3,
    )


@cli_errors
def predict(
    baseline: Path = typer.Argument(..., help="Baseline FLAIR (.nii or .nii.gz)."),
    followup: Path = typer.Argument(..., help="Follow-up FLAIR (.nii or .nii.gz)."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for the results (created if needed)."),
    model: str = MODEL,
    no_preprocess: bool = NO_PREPROCESS,
    skull_strip: str = SKULL_STRIP,
    skull_strip_mode: str = SKULL_STRIP_MODE,
    brain_mask: Optional[Path] = BRAIN_MASK,
    space: str = SPACE,
    transform: Optional[str] = TRANSFORM,
    no_bias_correction: bool = NO_BIAS_CORRECTION,
    overlap: float = OVERLAP,
    batch_size: int = BATCH_SIZE,
    tta: bool = TTA,
    precision: str = PRECISION,
    engine: str = ENGINE,
    paper_mode: bool = PAPER_MODE,
    threshold: Optional[float] = THRESHOLD,
    min_lesion_volume: float = MIN_LESION_VOLUME,
    connectivity: str = CONNECTIVITY,
    device: str = DEVICE,
    save_probabilities: bool = SAVE_PROBABILITIES,
    min_brightening: Optional[float] = MIN_BRIGHTENING,
    enlarging_relative: float = ENLARGING_RELATIVE,
    enlarging_min_mm3: float = ENLARGING_MIN_MM3,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace results already in the output folder."),
    skip_existing: bool = typer.Option(
        False, "--skip-existing", help="Exit successfully without work when the folder already holds a result."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json to stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Find new lesions between two FLAIR scans of the same patient.

    Writes into OUTPUT, on each input's own grid (same shape and affine, so they overlay in any viewer):
    `new_lesions.nii.gz` (follow-up grid), `lesions_baseline.nii.gz`, `lesions_followup.nii.gz`,
    `new_lesions.tsv` (one row per new lesion: voxels, mm³, centroid in scanner mm, probabilities),
    `lesion_changes.nii.gz` (follow-up grid: 1 new, 2 enlarging, 3 stable, 4 shrinking, 5 resolved; colour
    tables `lesion_changes_itksnap.txt` and `lesion_changes.lut` beside it), `lesion_changes.tsv` (one row
    per lesion: class, volume at each time point),
    `summary.json` (counts, volumes, model, every setting, time per stage) and `qc.png`. `summary.json`
    is written last: a folder holding it is a complete result.

    **Examples**

        msnewlesion predict ses-01_FLAIR.nii.gz ses-02_FLAIR.nii.gz -o results/

        msnewlesion predict t1.nii.gz t2.nii.gz -o out --no-preprocess --model ./my-model --device cuda

        msnewlesion predict t1.nii.gz t2.nii.gz -o out --skull-strip none --json > summary.json
    """
    from msnewlesion.io import claim_output_folder
    from msnewlesion.predict import open_model, predict_pair, prediction_outputs, write_prediction

    options = predict_options(
        no_preprocess=no_preprocess,
        skull_strip=skull_strip,
        skull_strip_mode=skull_strip_mode,
        brain_mask=brain_mask,
        space=space,
        transform=transform,
        no_bias_correction=no_bias_correction,
        overlap=overlap,
        batch_size=batch_size,
        tta=tta,
        precision=precision,
        engine=engine,
        paper_mode=paper_mode,
        threshold=threshold,
        min_lesion_volume=min_lesion_volume,
        connectivity=connectivity,
        device=device,
        save_probabilities=save_probabilities,
        min_brightening=min_brightening,
        enlarging_relative=enlarging_relative,
        enlarging_min_mm3=enlarging_min_mm3,
    )
    outputs = prediction_outputs(output, save_probabilities=save_probabilities)
    if outputs["summary"].exists() and not overwrite:
        if skip_existing:
            info(f"{output} already holds a result (summary.json); skipped")
            if as_json:
                console.print_json(outputs["summary"].read_text())
            return
        from msnewlesion.errors import OutputExistsError

        raise OutputExistsError(f"{output} already holds results; pass --overwrite to replace them or --skip-existing")
    inputs = [p for p in (baseline, followup, brain_mask) if p is not None]
    # Checked and held before any work; files beside a missing summary.json are an interrupted run's leftovers.
    with claim_output_folder(
        output, outputs=outputs.values(), inputs=inputs, overwrite=True, command="predict"
    ) as claim:
        with progress_bars(not quiet) as progress:
            loaded, provenance = open_model(model, device=device, progress=progress)
            prediction = predict_pair(
                baseline, followup, loaded, options, provenance=provenance, progress=progress, scratch_dir=claim.scratch
            )
        for message in prediction.warnings:
            warn(message)
        write_prediction(prediction, output, inputs=inputs, overwrite=overwrite, save_probabilities=save_probabilities)
    summary = prediction.summary
    if as_json:
        typer.echo(json.dumps(json.loads(outputs["summary"].read_text()), indent=2))
    else:
        new = summary["new_lesions"]
        info(
            f"{new['count']} new lesion{'s' if new['count'] != 1 else ''} ({new['volume_mm3']:.1f} mm³) "
            f"→ {output} [{summary['timings_s']['total']:.1f} s]"
        )
