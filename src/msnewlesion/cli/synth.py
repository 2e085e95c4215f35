"""``msnewlesion synth``: synthetic longitudinal training pairs with known new lesions."""

import json
from pathlib import Path
from typing import Optional

import typer

from msnewlesion.cli.common import choice, cli_errors, console, info, progress_bars, warn
from msnewlesion.settings import SPLITS, SYNTH_MODES


@cli_errors
def synth(
    flair: Path = typer.Argument(..., help="Skull-stripped FLAIR (zero outside the brain), NIfTI."),
    lesions: Path = typer.Argument(..., help="Its all-lesion mask, on the same grid."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for the pair folders and manifest.csv."),
    library: Optional[list[Path]] = typer.Option(
        None,
        "--library",
        help="Folder of real lesion masks on the FLAIR's grid, or mask files (repeat the option). "
        "Needed to add lesions.",
    ),
    pairs: int = typer.Option(1, "--pairs", min=1, help="How many pairs to make."),
    start: int = typer.Option(0, "--start", min=0, help="Index of the first pair (to extend a series)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of pair 0; pair i uses seed + i."),
    mode: str = typer.Option(
        "both",
        "--mode",
        **choice(SYNTH_MODES),
        help="New lesions by removing lesions from the baseline, adding to the follow-up, or both; none makes null "
        "pairs (one brain, no new lesion: with --acquisition, two acquisitions of an unchanged brain).",
    ),
    removed: int = typer.Option(
        3, "--removed", min=0, help="Lesions to remove from the baseline (modes remove, both)."
    ),
    added: int = typer.Option(3, "--added", min=0, help="Library lesions to add to the follow-up (modes add, both)."),
    enlarged: int = typer.Option(
        0,
        "--enlarged",
        min=0,
        help="Lesions of the scan made to enlarge: their outer shell (--enlargement mm) is in-painted in the baseline "
        "and is new at the follow-up.",
    ),
    enlargement: tuple[float, float] = typer.Option(
        (1.0, 2.5), "--enlargement", metavar="MIN MAX", help="Thickness of an enlarging lesion's new shell, mm."
    ),
    shrinking: int = typer.Option(
        0,
        "--shrinking",
        min=0,
        help="Library lesions that shrink: the whole shape at the baseline, its core (the lesion without a "
        "--enlargement mm shell) at both time points.",
    ),
    resolved: int = typer.Option(
        0, "--resolved", min=0, help="Lesions of the scan in-painted in the follow-up: present at the baseline only."
    ),
    min_volume: float = typer.Option(10.0, "--min-volume", help="Smallest lesion to remove or add, mm³."),
    max_volume: float = typer.Option(1500.0, "--max-volume", help="Largest lesion to remove or add, mm³."),
    contrast: float = typer.Option(1.3, "--contrast", help="Added lesion intensity / local normal white matter."),
    contrast_spread: float = typer.Option(0.1, "--contrast-spread", help="Each lesion's contrast is drawn in ± this."),
    edge_softness: float = typer.Option(0.5, "--edge-softness", help="Soft-edge width, mm (0: hard edges)."),
    lesion_gap: float = typer.Option(2.0, "--lesion-gap", help="Least distance of an added lesion to others, mm."),
    min_depth: float = typer.Option(
        3.0, "--min-depth", help="Least depth of an added lesion below the brain surface, mm."
    ),
    white_matter_fraction: float = typer.Option(
        0.9, "--white-matter-fraction", help="Least fraction of an added lesion in white matter."
    ),
    library_locations: bool = typer.Option(
        True,
        "--library-locations/--any-white-matter",
        help="Place added lesions at their own library location first (the library shares the scan's space), "
        "or anywhere in white matter.",
    ),
    max_rotation: float = typer.Option(2.0, "--max-rotation", help="Largest rotation between time points, degrees."),
    max_translation: float = typer.Option(
        2.0, "--max-translation", help="Largest translation between time points, mm."
    ),
    max_drift: float = typer.Option(
        0.05, "--max-drift", help="Largest smooth multiplicative intensity drift, as a fraction (0.05 = ±5 %)."
    ),
    noise: float = typer.Option(0.02, "--noise", help="Added noise std, as a fraction of the white-matter mean."),
    symmetric: bool = typer.Option(
        True,
        "--symmetric/--followup-only",
        help="Split motion and drift between both time points and add noise to both, or change the follow-up only.",
    ),
    interpolation: int = typer.Option(3, "--interpolation", help="Spline order for motion: 3 (cubic) or 1 (linear)."),
    acquisition: bool = typer.Option(
        False,
        "--acquisition",
        help="Give each time point its own simulated scanner acquisition (2D thick slices or 3D, in-plane spacing, "
        "contrast, bias, Rician noise, ghosting, CSF flow artefacts), drawn independently (docs/synth.md).",
    ),
    slice_thickness: tuple[float, float] = typer.Option(
        (2.0, 6.0), "--slice-thickness", metavar="MIN MAX", help="With --acquisition: slice thickness of 2D scans, mm."
    ),
    in_plane_spacing: tuple[float, float] = typer.Option(
        (0.5, 1.3), "--in-plane-spacing", metavar="MIN MAX", help="With --acquisition: in-plane voxel size, mm."
    ),
    two_d_fraction: float = typer.Option(
        0.65, "--two-d-fraction", help="With --acquisition: share of time points acquired as 2D thick-slice scans."
    ),
    brain_mask: Optional[Path] = typer.Option(
        None, "--brain-mask", help="Brain mask, when the FLAIR's non-zero voxels are not the brain."
    ),
    subject: Optional[str] = typer.Option(
        None, "--subject", help="Name prefix of the pairs (default: from the FLAIR's file or folder name)."
    ),
    split: str = typer.Option(
        "train", "--split", **choice(SPLITS), help="The manifest's split column for these pairs."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing pair folders and their manifest rows."),
    as_json: bool = typer.Option(False, "--json", help="Print the pairs made as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Make longitudinal training pairs with exactly known new lesions from one single-time-point scan.

    New lesions are real lesions of the scan in-painted away in the baseline (with the texture of nearby
    normal-appearing white matter) and real lesion shapes from the library added to the follow-up's white
    matter (about 1.3 × the local white matter, soft edges). Then a small rigid motion, a smooth intensity
    drift and noise separate the time points. Each pair goes to OUTPUT/SUBJECT-synthNNN/ (baseline, followup,
    new_lesions, lesions_baseline, lesions_followup .nii.gz on the FLAIR's grid, and synth.json recording every
    random choice); OUTPUT/manifest.csv lists the pairs for msnewlesion train (rows of an existing manifest are
    kept; rows of replaced pairs are updated). Pair NNN is made with seed + NNN: the same command makes the same
    files, bit for bit.

    **Example**

        msnewlesion synth p07/flair.nii.gz p07/lesions.nii.gz --library lesion_masks/ -o synthetic --pairs 20
        msnewlesion synth p26/flair.nii.gz p26/lesions.nii.gz --library lesion_masks/ -o synthetic --split val

        msnewlesion synth p07/flair.nii.gz p07/lesions.nii.gz --library lesion_masks/ -o real-like --acquisition

        msnewlesion synth p07/flair.nii.gz p07/lesions.nii.gz -o null-pairs --mode none --acquisition --pairs 10
    """
    from msnewlesion.io import claim_output_folder
    from msnewlesion.synth import AcquisitionOptions, SynthOptions, write_synthetic_pairs

    acquisition_options = (
        AcquisitionOptions(
            two_d_probability=two_d_fraction,
            slice_thickness_mm=slice_thickness,
            in_plane_spacing_mm=in_plane_spacing,
        )
        if acquisition
        else None
    )
    options = SynthOptions(
        seed=seed,
        removed_lesions=removed if mode in ("remove", "both") else 0,
        added_lesions=added if mode in ("add", "both") else 0,
        enlarged_lesions=enlarged if mode != "none" else 0,
        shrinking_lesions=shrinking if mode != "none" else 0,
        resolved_lesions=resolved if mode != "none" else 0,
        enlargement_mm=enlargement,
        min_lesion_volume_mm3=min_volume,
        max_lesion_volume_mm3=max_volume,
        contrast=contrast,
        contrast_spread=contrast_spread,
        edge_softness_mm=edge_softness,
        lesion_gap_mm=lesion_gap,
        min_depth_mm=min_depth,
        min_white_matter_fraction=white_matter_fraction,
        library_locations=library_locations,
        max_rotation_deg=max_rotation,
        max_translation_mm=max_translation,
        max_drift=max_drift,
        noise_std=noise,
        symmetric=symmetric,
        interpolation_order=interpolation,
        acquisition=acquisition_options,
    )
    inputs = [flair, lesions, *(library or []), *([brain_mask] if brain_mask is not None else [])]
    with claim_output_folder(output, inputs=inputs, command="synth"), progress_bars(not quiet) as bars:
        summaries = write_synthetic_pairs(
            flair,
            lesions,
            output,
            options,
            library=library or None,
            pairs=pairs,
            start=start,
            subject=subject,
            split=split,
            brain_mask_path=brain_mask,
            overwrite=overwrite,
            progress=bars,
        )
    for summary in summaries:
        if summary.removed < summary.removed_requested:
            warn(
                f"{summary.subject}: removed {summary.removed} of {summary.removed_requested} lesions "
                "(too few annotated lesions of the allowed size)"
            )
        if summary.added < summary.added_requested:
            warn(
                f"{summary.subject}: added {summary.added} of {summary.added_requested} lesions "
                "(no more room that fits in white matter)"
            )
    if as_json:
        console.print_json(json.dumps([summary.to_dict() for summary in summaries]))
        return
    for summary in summaries:
        console.print(
            f"{summary.directory}  seed {summary.seed}  new lesions {summary.new_lesions} "
            f"({summary.removed} removed, {summary.added} added, {summary.new_lesion_volume_mm3:g} mm³)",
            highlight=False,
            soft_wrap=True,
        )
    info(f"manifest: {output / 'manifest.csv'}")
