"""``msnewlesion preprocess``: a raw pair of FLAIRs to a co-registered, skull-stripped, normalised pair."""

import json
from pathlib import Path
from typing import Optional

import typer

from msnewlesion.cli.common import DEVICE_HELP, cli_errors, console, progress_bars
from msnewlesion.cli.predict import SKULL_STRIP, SKULL_STRIP_MODE


def _model_config(model: Path):  # -> ModelConfig (imported lazily: it brings torch)
    from msnewlesion.errors import InputError
    from msnewlesion.model.config import ModelConfig

    config_path = model / "config.json" if model.is_dir() else model
    if not config_path.is_file():
        raise InputError(f"--model {model}: no config.json there (give a model folder or its config.json)")
    return ModelConfig.load(config_path)


def _summary(pair, output: Path, seconds: float) -> str:
    grid = pair.grid
    record = pair.record
    shape = "×".join(str(s) for s in grid.shape)
    spacing = "×".join(f"{s:g}" for s in grid.spacing)
    registration = record["registration"]
    moved = (
        f", follow-up {registration['rotation_degrees']:.1f}° / "
        f"{registration['displacement_at_baseline_centre_mm']:.1f} mm from the baseline"
        if registration.get("enabled")
        else ""
    )
    return (
        f"preprocessed → {output}: {shape} voxels of {spacing} mm {record['common_grid']['orientation']} "
        f"({record['common_grid']['space']}), brain {record['brain_mask']['volume_ml']:.0f} ml{moved}, "
        f"{seconds:.0f} s"
    )


@cli_errors
def preprocess(
    baseline: Path = typer.Argument(..., help="Baseline FLAIR (.nii or .nii.gz), on any grid, in any orientation."),
    followup: Path = typer.Argument(..., help="Follow-up FLAIR of the same patient."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for the outputs (created if needed)."),
    model: Optional[Path] = typer.Option(
        None,
        "--model",
        help="A model folder (or its config.json): take the spacing, orientation, intensity normalisation and "
        "crop margin from it. Options given explicitly win.",
    ),
    spacing: Optional[tuple[float, float, float]] = typer.Option(
        None, "--spacing", metavar="X Y Z", help="Voxel size of the common grid in mm (default 1 1 1, or the model's)."
    ),
    orientation: Optional[str] = typer.Option(
        None, "--orientation", help="Axis codes of the common grid, e.g. RAS or LPS (default RAS, or the model's)."
    ),
    skull_strip: str = SKULL_STRIP,
    skull_strip_mode: str = SKULL_STRIP_MODE,
    brain_mask: Optional[Path] = typer.Option(
        None, "--brain-mask", help="A brain mask on the baseline's grid, used instead of skull stripping."
    ),
    space: str = typer.Option(
        "halfway",
        "--space",
        help="Common space: halfway (each scan moved half way, neither favoured), baseline, followup, or none "
        "(the scans already share one grid; no registration).",
    ),
    transform: Optional[str] = typer.Option(
        None, "--transform", help="Rigid registration: Rigid (default) or QuickRigid (faster, coarser)."
    ),
    no_bias_correction: bool = typer.Option(False, "--no-bias-correction", help="Skip N4 bias-field correction."),
    interpolation: str = typer.Option(
        "bspline", "--interpolation", help="For images: bspline or linear (masks: always nearest neighbour)."
    ),
    normalization: Optional[str] = typer.Option(
        None,
        "--normalization",
        help="zscore-brain (default), zscore-brain-box (the published CoactSeg recipe) or none.",
    ),
    crop_margin: Optional[int] = typer.Option(
        None, "--crop-margin", min=0, help="Voxels kept around the brain box (default 15, or the model's)."
    ),
    device: str = typer.Option("auto", "--device", help="Where the skull stripping runs. " + DEVICE_HELP),
    seed: int = typer.Option(1337, "--seed", help="Seed of the registration's random sampling."),
    min_registration_correlation: float = typer.Option(
        0.6,
        "--min-registration-correlation",
        help="Refuse a registration after which the two heads correlate less than this (it landed far off).",
    ),
    baseline_label: Optional[Path] = typer.Option(
        None,
        "--baseline-label",
        help="A mask on the baseline's grid to carry into the common space "
        "(nearest neighbour), written as baseline_label.nii.gz: e.g. its all-lesion mask, for training.",
    ),
    followup_label: Optional[Path] = typer.Option(
        None,
        "--followup-label",
        help="A mask on the follow-up's grid to carry into the common space, "
        "written as followup_label.nii.gz: e.g. its new-lesion mask, for training.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    json_output: bool = typer.Option(False, "--json", help="Print preprocess.json and the files written to stdout."),
) -> None:
    """Preprocess a pair of raw FLAIRs: reorient, register, skull-strip, bias-correct, resample, normalise.

    Both scans go into one common space (by default HALFWAY between them, so neither is favoured)
    at the model's spacing, with one brain mask for both. Writes `baseline.nii.gz`,
    `followup.nii.gz` and `brain_mask.nii.gz` (same grid), the transforms from each native scan
    to that grid as ITK files (`baseline_to_common.txt`, `followup_to_common.txt`, readable by
    ANTs and SimpleITK) and `preprocess.json` (steps, parameters, software versions, seconds per
    step). Skull stripping runs HD-BET v1, whose weights come with msnewlesion, or HD-BET 2 when its
    weights are in ~/hd-bet_params/release_2.0.0 (see docs/preprocessing.md).

    **Example**

        msnewlesion preprocess ses-01_FLAIR.nii.gz ses-02_FLAIR.nii.gz -o prep

        msnewlesion preprocess t1.nii.gz t2.nii.gz -o prep --skull-strip none --spacing 0.5 0.75 0.75 --space baseline

        msnewlesion preprocess t1.nii.gz t2.nii.gz -o prep --skull-strip none --followup-label new_lesions.nii.gz
    """
    import time

    from msnewlesion.io import claim_output_folder, load_mask
    from msnewlesion.preprocess import (
        PreprocessOptions,
        preprocess_pair,
        preprocessed_outputs,
        save_preprocessed,
        to_common,
    )

    started = time.perf_counter()
    explicit = {
        "spacing": spacing,
        "orientation": orientation,
        "intensity_normalization": normalization,
        "crop_margin": crop_margin,
        "transform": transform,
    }
    values = {key: value for key, value in explicit.items() if value is not None}
    values |= {
        "skull_strip": skull_strip,
        "skull_strip_mode": skull_strip_mode,
        "brain_mask": brain_mask,
        "registration": space,
        "bias_correction": not no_bias_correction,
        "interpolation": interpolation,
        "device": device,
        "seed": seed,
        "min_registration_correlation": min_registration_correlation,
    }
    options = (
        PreprocessOptions.for_model(_model_config(model), **values)
        if model is not None
        else PreprocessOptions(**values)
    )
    label_files = {"baseline_label": baseline_label, "followup_label": followup_label}
    label_files = {name: path for name, path in label_files.items() if path is not None}
    inputs = [baseline, followup, *label_files.values()] + ([brain_mask] if brain_mask is not None else [])
    planned = [*preprocessed_outputs(output).values(), *(output / f"{name}.nii.gz" for name in label_files)]
    with claim_output_folder(
        output, outputs=planned, inputs=inputs, overwrite=overwrite, command="preprocess"
    ) as claim:
        label_masks = {name: load_mask(path, what=name.replace("_", " ")) for name, path in label_files.items()}
        with progress_bars(not quiet) as progress:
            pair = preprocess_pair(baseline, followup, options, progress=progress, scratch_dir=claim.scratch)
            labels = {
                name: to_common(mask, pair, name.removesuffix("_label"), kind="mask")
                for name, mask in label_masks.items()
            }
            written = save_preprocessed(pair, output, overwrite=overwrite, labels=labels)
    if json_output:
        console.print_json(json.dumps({"files": [str(p) for p in written], "record": pair.record}, default=str))
    else:
        console.print(_summary(pair, output, time.perf_counter() - started), highlight=False, soft_wrap=True)
