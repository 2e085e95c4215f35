"""``msnewlesion preprocess``: a raw pair of FLAIRs to a co-registered, skull-stripped, normalised pair."""

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from msnewlesion.cli.common import (
    DEVICE_HELP,
    DEVICE_METAVAR,
    choice,
    cli_errors,
    console,
    device_value,
    model_value,
    number_in,
    progress_bars,
)
from msnewlesion.cli.predict import ENGINE, SKULL_STRIP, SKULL_STRIP_MODE
from msnewlesion.settings import (
    CONFIG_FILE,
    DEFAULT_TRANSFORM,
    IMAGE_INTERPOLATIONS,
    INTENSITY_NORMALIZATIONS,
    REGISTRATION_SPACES,
    TRANSFORMS,
    orientation_problem,
)

if TYPE_CHECKING:
    from msnewlesion.model.config import ModelConfig


def _model_config(model: str) -> "ModelConfig":
    """The config of a model named as predict names it (registry name, folder, Hub repository) or of a config.json."""
    from msnewlesion.hub import find_model, resolve_model
    from msnewlesion.model.config import ModelConfig

    given = Path(model).expanduser()
    if given.is_file() and given.name == CONFIG_FILE:
        return ModelConfig.load(given)
    if (given / CONFIG_FILE).is_file() and find_model(model) is None:  # a folder's config is enough, no weights
        return ModelConfig.load(given / CONFIG_FILE)
    return ModelConfig.load(resolve_model(model).path / CONFIG_FILE)


def _spacing_value(value: Optional[tuple[float, float, float]]) -> Optional[tuple[float, float, float]]:
    if value is not None and not all(math.isfinite(s) and s > 0 for s in value):
        raise typer.BadParameter(f"{' '.join(f'{s:g}' for s in value)}: the voxel size must be three positive mm")
    return value


def _orientation_value(value: Optional[str]) -> Optional[str]:
    problem = None if value is None else orientation_problem(value)
    if problem is not None:
        raise typer.BadParameter(problem)
    return value


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


_LABEL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def _label_files(given: dict[str, list[str]]) -> dict[str, tuple[str, Path]]:
    """Output name → (the time point whose grid the mask is on, its path), from ``[NAME=]MASK`` values."""
    from msnewlesion.errors import InputError

    labels: dict[str, tuple[str, Path]] = {}
    for which, values in given.items():
        for value in values:
            name, separator, path = value.partition("=")
            if not separator or not _LABEL_NAME.fullmatch(name):
                name, path = f"{which}_label", value
            if name in labels:
                raise InputError(f"two labels would both be written as {name}.nii.gz: give them distinct NAME=")
            labels[name] = (which, Path(path))
    return labels


@cli_errors
def preprocess(
    baseline: Path = typer.Argument(..., help="Baseline FLAIR (.nii or .nii.gz), on any grid, in any orientation."),
    followup: Path = typer.Argument(..., help="Follow-up FLAIR of the same patient."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for the outputs (created if needed)."),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        callback=model_value,
        help="A model as predict takes it (registry name, Hub repo owner/name, folder) or its "
        "config.json: take the spacing, orientation, intensity normalisation and crop margin from it. Options "
        "given explicitly win.",
    ),
    spacing: Optional[tuple[float, float, float]] = typer.Option(
        None,
        "--spacing",
        metavar="X Y Z",
        callback=_spacing_value,
        help="Voxel size of the common grid in mm (default 1 1 1, or the model's).",
    ),
    orientation: Optional[str] = typer.Option(
        None,
        "--orientation",
        callback=_orientation_value,
        help="Axis codes of the common grid, e.g. RAS or LPS (default RAS, or the model's).",
    ),
    skull_strip: str = SKULL_STRIP,
    skull_strip_mode: str = SKULL_STRIP_MODE,
    brain_mask: Optional[Path] = typer.Option(
        None, "--brain-mask", help="A brain mask on the baseline's grid, used instead of skull stripping."
    ),
    space: str = typer.Option(
        "halfway",
        "--space",
        **choice(REGISTRATION_SPACES),
        help="Common space: halfway (each scan moved half way, neither favoured), baseline, followup, or none "
        "(the scans already share one grid; no registration).",
    ),
    transform: Optional[str] = typer.Option(
        None,
        "--transform",
        **choice(TRANSFORMS),
        help=f"Rigid registration: {DEFAULT_TRANSFORM} (default) or QuickRigid (faster, coarser).",
    ),
    no_bias_correction: bool = typer.Option(False, "--no-bias-correction", help="Skip N4 bias-field correction."),
    interpolation: str = typer.Option(
        "bspline",
        "--interpolation",
        **choice(IMAGE_INTERPOLATIONS),
        help="For images: bspline or linear (masks: always nearest neighbour).",
    ),
    normalization: Optional[str] = typer.Option(
        None,
        "--normalization",
        **choice(INTENSITY_NORMALIZATIONS),
        help="zscore-brain (default), zscore-brain-box (the published CoactSeg recipe) or none.",
    ),
    crop_margin: Optional[int] = typer.Option(
        None, "--crop-margin", min=0, help="Voxels kept around the brain box (default 15, or the model's)."
    ),
    device: str = typer.Option(
        "auto",
        "--device",
        metavar=DEVICE_METAVAR,
        callback=device_value,
        help="Where the skull stripping runs. " + DEVICE_HELP,
    ),
    engine: str = ENGINE,
    seed: int = typer.Option(1337, "--seed", help="Seed of the registration's random sampling."),
    min_registration_correlation: float = typer.Option(
        0.6,
        "--min-registration-correlation",
        parser=number_in(-1.0, 1.0, high_open=True),
        help="Refuse a registration after which the two heads correlate less than this (it landed far off).",
    ),
    baseline_label: Optional[list[str]] = typer.Option(
        None,
        "--baseline-label",
        metavar="[NAME=]MASK",
        help="A mask on the baseline's grid to carry into the common space (nearest neighbour), written as "
        "NAME.nii.gz (default NAME: baseline_label): e.g. its all-lesion mask, for training. Repeatable.",
    ),
    followup_label: Optional[list[str]] = typer.Option(
        None,
        "--followup-label",
        metavar="[NAME=]MASK",
        help="A mask on the follow-up's grid to carry into the common space, written as NAME.nii.gz (default "
        "NAME: followup_label): e.g. its new-lesion mask, for training. Repeatable.",
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

        msnewlesion preprocess t1.nii.gz t2.nii.gz -o prep --space none --followup-label new=new_lesions.nii.gz
        --followup-label all_followup=lesions_followup.nii.gz --baseline-label all_baseline=lesions_baseline.nii.gz
    """
    import time

    from msnewlesion.io import claim_output_folder, load_mask, load_volume
    from msnewlesion.preprocess import (
        NativeGrid,
        PreprocessOptions,
        preprocess_pair,
        preprocessed_outputs,
        save_preprocessed,
        to_common,
    )
    from msnewlesion.preprocess.pair import check_on_native_grid

    started = time.perf_counter()
    explicit: dict[str, Any] = {
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
        "engine": engine,
        "seed": seed,
        "min_registration_correlation": min_registration_correlation,
    }
    options = (
        PreprocessOptions.for_model(_model_config(model), **values)
        if model is not None
        else PreprocessOptions(**values)
    )
    label_files = _label_files({"baseline": baseline_label or [], "followup": followup_label or []})
    inputs = [baseline, followup, *(path for _, path in label_files.values())]
    inputs += [brain_mask] if brain_mask is not None else []
    planned = [*preprocessed_outputs(output).values(), *(output / f"{name}.nii.gz" for name in label_files)]
    with claim_output_folder(
        output, outputs=planned, inputs=inputs, overwrite=overwrite, command="preprocess"
    ) as claim:
        label_masks = {
            name: (which, load_mask(path, what=f"{which} label {name}")) for name, (which, path) in label_files.items()
        }
        scans: dict[str, Any] = {"baseline": baseline, "followup": followup}
        if label_masks:  # a label on the wrong grid fails now, not after the registration
            scans = {
                "baseline": load_volume(baseline, what="baseline FLAIR"),
                "followup": load_volume(followup, what="follow-up FLAIR"),
            }
            for which, mask in label_masks.values():
                check_on_native_grid(mask, NativeGrid.of(scans[which]), which)
        with progress_bars(not quiet) as progress:
            pair = preprocess_pair(
                scans["baseline"], scans["followup"], options, progress=progress, scratch_dir=claim.scratch
            )
            labels = {name: to_common(mask, pair, which, kind="mask") for name, (which, mask) in label_masks.items()}
            written = save_preprocessed(pair, output, overwrite=overwrite, labels=labels)
    if json_output:
        console.print_json(json.dumps({"files": [str(p) for p in written], "record": pair.record}, default=str))
    else:
        console.print(_summary(pair, output, time.perf_counter() - started), highlight=False, soft_wrap=True)
