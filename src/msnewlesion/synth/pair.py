"""One synthetic longitudinal pair from one single-time-point scan: :func:`synthesize_pair`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from msnewlesion import __version__
from msnewlesion.errors import InputError, parameter
from msnewlesion.io import Volume, atomic_directory, check_same_grid, save_volume, write_json
from msnewlesion.lesions import CHANGE_CODES, bounding_box, components
from msnewlesion.synth.acquisition import simulate_acquisition
from msnewlesion.synth.library import LesionLibrary, LibraryLesion
from msnewlesion.synth.nuisance import (
    DRIFT_TERMS,
    drift_log_field,
    half_rigid,
    move,
    random_rigid_motion,
    rigid_matrix,
)
from msnewlesion.synth.options import SynthOptions
from msnewlesion.synth.painter import Painter, world_point
from msnewlesion.synth.painting import (
    signed_distance_mm,
    voxels_for_mm,
)
from msnewlesion.synth.tissue import TissueModel, fit_tissue_model

__all__ = [
    "MASK_DEFINITION",
    "PAIR_FILES",
    "SynthOptions",
    "SyntheticPair",
    "save_synthetic_pair",
    "synthesize_pair",
]

#: File names of a saved pair, by role.
PAIR_FILES = {
    "baseline": "baseline.nii.gz",
    "followup": "followup.nii.gz",
    "new_lesions": "new_lesions.nii.gz",
    "lesions_baseline": "lesions_baseline.nii.gz",
    "lesions_followup": "lesions_followup.nii.gz",
    "lesion_changes": "lesion_changes.nii.gz",
    "record": "synth.json",
}

MASK_DEFINITION = (
    "Each time point has a lesion-content map in [0, 1] (the fraction of a voxel that is lesion): 1 on annotated "
    "lesions, 0 on an in-painted (removed) lesion in the baseline, and 1 / (1 + exp(d / edge_softness_mm)) around "
    "an added lesion (and, at the baseline, around an enlarging lesion's core), d being the signed distance to its "
    "boundary in mm (negative inside), which is above 1/2 exactly on the library lesion's voxels. Before motion, "
    "lesions_baseline = {baseline content > 1/2}, lesions_followup = {follow-up content > 1/2} and new_lesions = "
    "the removed annotated lesions, the placed library lesions (there {follow-up content - baseline content > 1/2}) "
    "and each enlarging lesion's voxels outside its core. A resolved lesion is an annotated lesion in-painted in "
    "the follow-up (content 0 there); a shrinking lesion is an enlarging one backwards (its whole shape at the "
    "baseline, its core at both time points; nothing new). lesion_changes codes every lesion's voxels (the union "
    "of its extents at both time points) with its class: 1 new (removed and added lesions), 2 enlarging, 3 stable "
    "(the scan's other lesions), 4 shrinking, 5 resolved; it is on the follow-up. Each mask then moves with its "
    "image by "
    "nearest neighbour (a voxel is lesion when its centre, mapped back through the motion, falls in a lesion voxel). "
    "Without motion, drift and noise, the follow-up exceeds the baseline by more than half an added lesion's "
    "intensity increase exactly on its voxels, and baseline and follow-up are identical outside the changes' "
    "supports (each new lesion grown by its soft rim, rim_mm)."
)

#: The core of an enlarging lesion (present at both time points) holds at least this fraction of it.
ENLARGING_MIN_CORE = 0.3
#: ... and at most this fraction, and the rest is at least this volume: an enlarging (or shrinking) lesion at
#: least doubles (halves) by at least 20 mm³, so it passes the default enlarging rule (50 %, 10 mm³ in
#: msnewlesion.lesions.changes) with margin, and its class is known exactly.
ENLARGING_MAX_CORE = 0.5
ENLARGING_MIN_CHANGE_MM3 = 20.0

# How many random placements are tried for one added lesion: first at library lesions' own (jittered)
# locations, then at random white-matter locations.
LIBRARY_LOCATION_TRIES = 120
WHITE_MATTER_TRIES = 120


@dataclass
class SyntheticPair:
    """A synthetic longitudinal pair, every image on the grid and affine of the input FLAIR.

    Attributes
    ----------
    baseline, followup : Volume
        The two FLAIRs (float32).
    new_lesions : Volume
        The exact new-lesion mask, on the follow-up (see :data:`MASK_DEFINITION`).
    lesions_baseline, lesions_followup : Volume
        All lesions of each time point.
    lesion_changes : Volume
        The change class of every lesion (codes of :data:`msnewlesion.lesions.CHANGE_CODES`), on the follow-up.
    record : dict
        Every parameter and random choice (JSON-ready).
    """

    baseline: Volume
    followup: Volume
    new_lesions: Volume
    lesions_baseline: Volume
    lesions_followup: Volume
    lesion_changes: Volume | None = None
    record: dict[str, Any] = field(default_factory=dict)


def _voxels_for_volume(volume_mm3: float, voxel_volume: float) -> int:
    return max(math.ceil(volume_mm3 / voxel_volume - 1e-9), 1)


def _check_inputs(flair: Volume, lesions: Volume, library: LesionLibrary | Sequence[Volume]) -> None:
    check_same_grid(flair, lesions, what_a="FLAIR", what_b="lesion mask")
    if isinstance(library, LesionLibrary):
        library.check_grid(flair)
    else:
        for volume in library:
            check_same_grid(flair, volume, what_a="FLAIR", what_b=f"library lesion mask {volume.name}")


def synthesize_pair(
    flair: Volume,
    lesions: Volume,
    library: LesionLibrary | Sequence[Volume],
    options: SynthOptions,
    *,
    brain_mask: Volume | None = None,
    tissue: TissueModel | None = None,
) -> SyntheticPair:
    """Make a longitudinal pair with exactly known new lesions from one scan and its lesion mask.

    New lesions come from two sources: annotated lesions of the scan are in-painted in the baseline with the
    texture of nearby normal-appearing white matter (they remain in the follow-up: real lesions, new), and
    connected components of the library masks are added to the follow-up in white matter, at about ``contrast``
    times the local normal white matter with soft edges. Then the follow-up moves rigidly relative to the
    baseline, a smooth multiplicative intensity drift and noise are applied (split between the time points when
    ``options.symmetric``). The masks follow :data:`MASK_DEFINITION`.

    Parameters
    ----------
    flair : Volume
        A skull-stripped FLAIR (zero outside the brain), or any FLAIR with ``brain_mask``.
    lesions : Volume
        Its all-lesion mask, on the same grid.
    library : LesionLibrary or sequence of Volume
        Real lesion masks on the same grid (or a library built from them once with
        :meth:`LesionLibrary.from_volumes`, faster for many pairs). May be empty when no lesion is added.
    options : SynthOptions
    brain_mask : Volume, optional
        The brain, when the FLAIR's non-zero voxels are not it.
    tissue : TissueModel, optional
        A tissue model fitted once with :func:`fit_tissue_model`, to reuse for many pairs of one scan.

    Returns
    -------
    SyntheticPair
        Fewer lesions than asked are removed or added when the scan or the library has too few that fit; the
        record says how many were asked for and how many were made.

    Raises
    ------
    GeometryError
        The lesion mask, the brain mask or a library mask is not on the FLAIR's grid.
    InputError
        The library holds no lesion of the allowed size while lesions are to be added, or the FLAIR is not
        skull-stripped and no brain mask was given.

    Examples
    --------
    >>> from msnewlesion.io import load_volume, load_mask
    >>> from msnewlesion.synth import load_lesion_library
    >>> flair = load_volume("patient07/flair.nii.gz")  # doctest: +SKIP
    >>> lesions = load_mask("patient07/lesions.nii.gz")  # doctest: +SKIP
    >>> library = load_lesion_library("lesion_masks")  # doctest: +SKIP
    >>> pair = synthesize_pair(flair, lesions, library, SynthOptions(seed=1))  # doctest: +SKIP
    >>> pair.record["new_lesions"]["count"]  # doctest: +SKIP
    6
    """
    _check_inputs(flair, lesions, library)
    if tissue is None:
        tissue = fit_tissue_model(flair, lesions, brain_mask)
    elif tissue.brain.shape != flair.shape:
        raise InputError(f"the tissue model is for a grid of shape {tissue.brain.shape}, the FLAIR has {flair.shape}")
    voxel_volume = flair.voxel_volume
    min_voxels = _voxels_for_volume(options.min_lesion_volume_mm3, voxel_volume)
    max_voxels = max(math.floor(options.max_lesion_volume_mm3 / voxel_volume + 1e-9), min_voxels)
    library, candidates = _library_candidates(library, options, min_voxels, max_voxels)

    # Seven streams; the first five are those of pairs made before acquisitions were simulated, the sixth of
    # those made before resolved lesions (spawn(7)[:6] equals spawn(6)), so such pairs are reproduced bit for bit.
    removal_rng, addition_rng, motion_rng, drift_rng, noise_rng, acquisition_rng, resolution_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(options.seed).spawn(7)
    )
    painter = Painter(flair, tissue, options)

    # -- remove annotated lesions from the baseline ---------------------------------------------------
    removable = [label for label, size in enumerate(tissue.lesion_sizes, start=1) if min_voxels <= size <= max_voxels]
    count = min(options.removed_lesions, len(removable))
    chosen: list[int] = (
        removal_rng.choice(np.asarray(removable, dtype=np.int64), size=count, replace=False).tolist() if count else []
    )
    removed = [painter.remove(int(label), removal_rng) for label in chosen]
    # -- resolve other annotated lesions: in-painted in the follow-up ------------------------------------
    resolvable = [label for label in removable if label not in chosen]
    resolved_count = min(options.resolved_lesions, len(resolvable))
    resolved = [
        painter.remove(int(label), resolution_rng, time_point="followup")
        for label in (
            resolution_rng.choice(np.asarray(resolvable, dtype=np.int64), size=resolved_count, replace=False).tolist()
            if resolved_count
            else []
        )
    ]

    # -- add library lesions to the follow-up, and enlarging ones to both time points ----------------------
    added, enlarged, shrinking = _add_lesions(painter, candidates, flair, options, addition_rng)

    # -- motion, drift and noise ----------------------------------------------------------------------
    moved = _move(painter, flair, tissue.brain, options, motion_rng)
    drift_and_noise = _drift_and_noise(moved, tissue, options, drift_rng, noise_rng)
    baseline, followup, acquisitions = _acquire(moved, flair, tissue, options, acquisition_rng)

    new_lesions = moved.new_lesions
    record: dict[str, Any] = {
        "software": f"msnewlesion {__version__}",
        "inputs": _inputs_record(flair, lesions, brain_mask, library),
        "options": options.to_dict(),
        "random": {
            "generator": "numpy PCG64",
            "streams": "SeedSequence(seed).spawn(6): removal, addition, motion, drift, noise, acquisition "
            "(the last spawns the baseline's and the follow-up's)",
        },
        "mask_definition": MASK_DEFINITION,
        "tissue": tissue.summary(),
        "lesion_size_voxels": [min_voxels, max_voxels],
        "removed": {
            "requested": options.removed_lesions,
            "made": len(removed),
            "eligible": len(removable),
            "lesions": removed,
        },
        "added": {
            "requested": options.added_lesions,
            "made": len(added),
            "library_candidates": len(candidates),
            "lesions": added,
        },
        "enlarged": {"requested": options.enlarged_lesions, "made": len(enlarged), "lesions": enlarged},
        "shrinking": {"requested": options.shrinking_lesions, "made": len(shrinking), "lesions": shrinking},
        "resolved": {
            "requested": options.resolved_lesions,
            "made": len(resolved),
            "eligible": len(resolvable),
            "lesions": resolved,
        },
        "motion": moved.record(options.interpolation_order),
        **drift_and_noise,
        "acquisition": acquisitions,
        "new_lesions": {
            "count": len(components(new_lesions).sizes),
            "voxels": int(new_lesions.sum()),
            "volume_mm3": round(float(new_lesions.sum()) * voxel_volume, 3),
        },
        "lesion_changes": _change_counts(moved.change_codes),
        "lesions_baseline_voxels": int(moved.lesions_baseline.sum()),
        "lesions_followup_voxels": int(moved.lesions_followup.sum()),
    }

    def as_volume(data: np.ndarray) -> Volume:
        return Volume(data=data, affine=flair.affine.copy(), header=flair.header, path=None)

    return SyntheticPair(
        baseline=as_volume(baseline.astype(np.float32, copy=False)),
        followup=as_volume(followup.astype(np.float32, copy=False)),
        new_lesions=as_volume(new_lesions),
        lesions_baseline=as_volume(moved.lesions_baseline),
        lesions_followup=as_volume(moved.lesions_followup),
        lesion_changes=as_volume(moved.change_codes),
        record=record,
    )


def _change_counts(codes: np.ndarray) -> dict[str, int]:
    """Lesions of each class in a change map (26-connected components of each class's voxels)."""
    return {name: components(codes == code).count for name, code in CHANGE_CODES.items()}


def _library_candidates(
    library: LesionLibrary | Sequence[Volume], options: SynthOptions, min_voxels: int, max_voxels: int
) -> tuple[LesionLibrary | Sequence[Volume], list[LibraryLesion]]:
    """The library (built from the masks when lesions are to be added) and its lesions of an allowed size."""
    if options.added_lesions <= 0 and options.enlarged_lesions <= 0 and options.shrinking_lesions <= 0:
        return library, []
    if not isinstance(library, LesionLibrary):
        library = LesionLibrary.from_volumes(library) if len(library) else library
    if not isinstance(library, LesionLibrary) or not library.lesions:
        raise InputError(
            f"the lesion library is empty: lesions to add need a library of lesion masks ({parameter('library')})"
        )
    candidates = library.between(min_voxels, max_voxels)
    if not candidates:
        raise InputError(
            f"the lesion library holds no lesion between {options.min_lesion_volume_mm3:g} and "
            f"{options.max_lesion_volume_mm3:g} mm³ ({library.describe()}); widen the size range"
        )
    return library, candidates


def _add_lesions(
    painter: Painter,
    candidates: list[LibraryLesion],
    flair: Volume,
    options: SynthOptions,
    rng: np.random.Generator,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Library lesions added to the follow-up, then enlarging ones and shrinking ones; their records."""
    added: list[dict[str, Any]] = []
    enlarged: list[dict[str, Any]] = []
    shrinking: list[dict[str, Any]] = []
    if not (options.added_lesions or options.enlarged_lesions or options.shrinking_lesions):
        return added, enlarged, shrinking
    deep_white_matter = painter.prepare_placement()
    centres = np.flatnonzero(deep_white_matter)
    gap = voxels_for_mm(options.lesion_gap_mm, flair.spacing)
    jitter = np.asarray(voxels_for_mm(options.location_jitter_mm, flair.spacing))
    # Mirroring a shape left-right keeps it anatomically plausible; that is the array axis closest to x.
    left_right = int(np.argmax(np.abs(flair.affine[0, :3])))
    contrast_low = options.contrast - options.contrast_spread
    contrast_high = options.contrast + options.contrast_spread
    # the enlarging lesions come after the added ones, and the shrinking ones last, so pairs without them draw
    # the same numbers as before
    plan = (
        [(added, False, False)] * options.added_lesions
        + [(enlarged, True, False)] * options.enlarged_lesions
        + [(shrinking, True, True)] * options.shrinking_lesions
    )
    voxel_volume = flair.voxel_volume
    for made, growing, shrinks in plan:
        tries = (LIBRARY_LOCATION_TRIES if options.library_locations else 0) + WHITE_MATTER_TRIES
        for attempt in range(tries):
            lesion = candidates[int(rng.integers(len(candidates)))]
            if options.library_locations and attempt < LIBRARY_LOCATION_TRIES:
                placement, flipped, mask = "library location", False, lesion.mask
                origin = np.asarray(lesion.origin) + rng.integers(-jitter, jitter + 1)
            else:
                if centres.size == 0:
                    break
                placement = "white matter"
                flipped = bool(rng.integers(2))
                mask = np.flip(lesion.mask, axis=left_right) if flipped else lesion.mask
                centre = np.asarray(np.unravel_index(int(centres[rng.integers(centres.size)]), flair.shape))
                origin = centre - np.round(np.argwhere(mask).mean(axis=0)).astype(int)
            core = None
            if growing:
                shell = float(rng.uniform(*options.enlargement_mm))
                core = signed_distance_mm(mask, flair.spacing) < -shell
                # growth around a core that is not most of the lesion would be a new lesion, not an enlarging one
                if core.sum() < ENLARGING_MIN_CORE * mask.sum():
                    continue
                # and growth that the enlarging rule might not tell from a stable lesion would make the truth unsure
                if core.sum() > ENLARGING_MAX_CORE * mask.sum() or (
                    (mask.sum() - core.sum()) * voxel_volume < ENLARGING_MIN_CHANGE_MM3
                ):
                    continue
            if painter.fits(mask, origin, deep_white_matter, gap):
                contrast = float(rng.uniform(contrast_low, contrast_high))
                entry = painter.add(lesion, np.ascontiguousarray(mask), origin, contrast, core=core, shrinking=shrinks)
                entry.update(placement=placement, flipped_left_right=flipped, attempts=attempt + 1)
                if growing:
                    assert core is not None
                    entry.update(shell_mm=round(shell, 4), core_voxels=int(core.sum()))
                made.append(entry)
                break
    return added, enlarged, shrinking


@dataclass
class _Moved:
    """Both time points and their masks after the rigid motion, and the motion itself."""

    baseline: np.ndarray
    followup: np.ndarray
    lesions_baseline: np.ndarray
    lesions_followup: np.ndarray
    new_lesions: np.ndarray
    change_codes: np.ndarray
    in_brain_baseline: np.ndarray
    in_brain_followup: np.ndarray
    axis: np.ndarray
    angle: float
    translation: np.ndarray
    centre_mm: list[float]
    relative: np.ndarray
    baseline_matrix: np.ndarray
    followup_matrix: np.ndarray
    applied: bool

    def record(self, order: int) -> dict[str, Any]:
        return {
            "axis": [round(float(a), 6) for a in self.axis],
            "angle_deg": round(self.angle, 6),
            "translation_mm": [round(float(t), 6) for t in self.translation],
            "centre_mm": self.centre_mm,
            "relative_matrix": self.relative.tolist(),
            "baseline_matrix": self.baseline_matrix.tolist(),
            "followup_matrix": self.followup_matrix.tolist(),
            "applied": self.applied,
            "interpolation_order": order,
            "convention": "world (scanner mm) transforms moving content from x to M x; the follow-up relative to "
            "the baseline is relative_matrix = followup_matrix @ inverse(baseline_matrix)",
        }


def _move(
    painter: Painter, flair: Volume, brain: np.ndarray, options: SynthOptions, rng: np.random.Generator
) -> _Moved:
    """A random rigid motion of the follow-up relative to the baseline (split between both when symmetric)."""
    axis, angle, translation = random_rigid_motion(rng, options.max_rotation_deg, options.max_translation_mm)
    centre_mm = world_point(flair.affine, np.argwhere(brain).mean(axis=0))
    relative = rigid_matrix(axis, angle, translation, centre_mm)
    moving = angle > 0 or bool(np.any(translation != 0))
    if options.symmetric:
        followup_matrix = half_rigid(axis, angle, relative)
        baseline_matrix = np.linalg.inv(followup_matrix)
    else:
        followup_matrix, baseline_matrix = relative, np.eye(4)

    order = options.interpolation_order
    baseline, followup = painter.baseline, painter.followup
    # The masks are fixed before motion: {content > 1/2}. They then move with their image by nearest
    # neighbour, which moves voxel cubes exactly (no systematic shrinking, unlike thresholding an
    # interpolated mask, which loses 10-20 % of a small lesion's voxels).
    lesions_baseline = painter.content_baseline > 0.5
    lesions_followup = painter.content_followup > 0.5
    new_lesions = (painter.content_new > 0.5) & lesions_followup
    change_codes = painter.change_codes
    in_brain_baseline = in_brain_followup = brain
    if moving:
        # The brain (2) and a one-voxel rim around it (1), moved by nearest neighbour: a cheap stand-in for
        # where the moved image may be non-zero (cubic interpolation rings a little beyond the brain's edge).
        brain_box = bounding_box(brain, margin=2)
        regions = np.zeros(brain.shape, dtype=np.float32)
        regions[brain_box] = ndimage.maximum_filter(brain[brain_box], size=3).astype(np.float32) + brain[brain_box]

        def move_image(image: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            moved = move(image, flair.affine, matrix, order=order, source_box=brain_box)
            moved_regions = move(regions, flair.affine, matrix, order=0, source_box=brain_box)
            moved[moved_regions == 0] = 0
            return moved, moved_regions == 2

        followup, in_brain_followup = move_image(followup, followup_matrix)
        lesions_followup = move(lesions_followup, flair.affine, followup_matrix, order=0, sparse=True) > 0.5
        new_lesions = move(new_lesions, flair.affine, followup_matrix, order=0, sparse=True) > 0.5
        # nearest neighbour keeps the codes; the map lies on the follow-up, as the new lesions do
        change_codes = np.rint(move(change_codes, flair.affine, followup_matrix, order=0, sparse=True)).astype(np.uint8)
        if options.symmetric:
            baseline, in_brain_baseline = move_image(baseline, baseline_matrix)
            lesions_baseline = move(lesions_baseline, flair.affine, baseline_matrix, order=0, sparse=True) > 0.5
    return _Moved(
        baseline, followup, lesions_baseline, lesions_followup, new_lesions, change_codes, in_brain_baseline,
        in_brain_followup,
        axis, angle, translation, centre_mm, relative, baseline_matrix, followup_matrix, moving,
    )  # fmt: skip


def _drift_and_noise(
    moved: _Moved, tissue: TissueModel, options: SynthOptions, drift_rng: np.random.Generator,
    noise_rng: np.random.Generator,
) -> dict[str, Any]:  # fmt: skip
    """Apply a smooth multiplicative drift, then noise, to the moved pair in place; their record entries."""
    baseline, followup = moved.baseline, moved.followup
    either = moved.in_brain_baseline | moved.in_brain_followup
    box = bounding_box(either)
    assert box is not None
    amplitude = float(drift_rng.uniform(0.0, 1.0)) * options.max_drift
    log_field, coefficients = drift_log_field(drift_rng, either, box, amplitude)
    if amplitude > 0:
        if options.symmetric:
            followup[box] *= np.exp(log_field / 2)
            baseline[box] *= np.exp(-log_field / 2)
        else:
            followup[box] *= np.exp(log_field)

    noise_sigma = options.noise_std * tissue.white_matter_mean
    shape_in_box = tuple(s.stop - s.start for s in box)
    # Both draws happen whatever the options, so that the streams stay those of earlier pairs.
    followup_noise = noise_rng.standard_normal(shape_in_box, dtype=np.float32)
    baseline_noise = noise_rng.standard_normal(shape_in_box, dtype=np.float32)
    if noise_sigma > 0:
        followup[box] += np.where(moved.in_brain_followup[box], followup_noise * np.float32(noise_sigma), 0)
        if options.symmetric:
            baseline[box] += np.where(moved.in_brain_baseline[box], baseline_noise * np.float32(noise_sigma), 0)
    return {
        "drift": {
            "amplitude": round(amplitude, 6),
            "terms": list(DRIFT_TERMS),
            "coefficients": [round(c, 8) for c in coefficients],
            "box": [[s.start, s.stop] for s in box],
            "convention": "log field over the box with coordinates from -1 to 1 along each axis; the follow-up is "
            "multiplied by exp(field/2) and the baseline by exp(-field/2) when symmetric, the follow-up by "
            "exp(field) otherwise",
        },
        "noise": {
            "std": round(noise_sigma, 6),
            "relative_std": options.noise_std,
            "time_points": "both" if options.symmetric else "follow-up",
        },
    }


def _acquire(
    moved: _Moved, flair: Volume, tissue: TissueModel, options: SynthOptions, acquisition_rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None]:
    """Each time point through its own simulated acquisition (when ``options.acquisition``), and the record."""
    if options.acquisition is None:
        return moved.baseline, moved.followup, None
    baseline_rng, followup_rng = acquisition_rng.spawn(2)
    inside = moved.in_brain_baseline & moved.in_brain_followup
    baseline, baseline_acquisition = simulate_acquisition(
        moved.baseline, flair.affine, inside, baseline_rng, options.acquisition,
        fluid=tissue.fluid, white_matter_mean=tissue.white_matter_mean,
    )  # fmt: skip
    followup, followup_acquisition = simulate_acquisition(
        moved.followup, flair.affine, inside, followup_rng, options.acquisition,
        fluid=tissue.fluid, white_matter_mean=tissue.white_matter_mean,
    )  # fmt: skip
    return baseline, followup, {"baseline": baseline_acquisition, "followup": followup_acquisition}


def _inputs_record(
    flair: Volume, lesions: Volume, brain_mask: Volume | None, library: LesionLibrary | Sequence[Volume]
) -> dict[str, Any]:
    return {
        "flair": str(flair.path) if flair.path is not None else None,
        "lesions": str(lesions.path) if lesions.path is not None else None,
        "brain_mask": str(brain_mask.path) if brain_mask is not None and brain_mask.path is not None else None,
        "library": list(library.sources) if isinstance(library, LesionLibrary) else [v.name for v in library],
    }


def save_synthetic_pair(pair: SyntheticPair, directory: Path, *, overwrite: bool = False) -> dict[str, Path]:
    """Write a pair into ``directory`` (created whole or not at all).

    Images are written as float32, masks as uint8, all with the input FLAIR's header and affine; the record
    goes to ``synth.json``. The folder appears only once every file is complete.

    Returns
    -------
    dict
        The path of each file, by role (:data:`PAIR_FILES`).

    Raises
    ------
    OutputExistsError
        The folder exists and ``overwrite`` is false.
    InputError
        An input of the pair lies inside the folder.

    Examples
    --------
    >>> paths = save_synthetic_pair(pair, Path("synthetic/patient07-synth000"))  # doctest: +SKIP
    >>> sorted(paths)  # doctest: +SKIP
    ['baseline', 'followup', 'lesions_baseline', 'lesions_followup', 'new_lesions', 'record']
    """
    directory = Path(directory)
    target = directory.resolve()
    inputs = pair.record.get("inputs", {})
    for value in [inputs.get("flair"), inputs.get("lesions"), inputs.get("brain_mask")]:
        if value and target in Path(value).resolve().parents:
            raise InputError(f"refusing to write into {directory}: it holds the input {value}. Choose another folder.")
    with atomic_directory(directory, overwrite=overwrite) as temporary:
        descriptions = {
            "baseline": "msnewlesion synth: baseline FLAIR",
            "followup": "msnewlesion synth: follow-up FLAIR",
            "new_lesions": "msnewlesion synth: new lesions (follow-up)",
            "lesions_baseline": "msnewlesion synth: all lesions, baseline",
            "lesions_followup": "msnewlesion synth: all lesions, follow-up",
            "lesion_changes": "msnewlesion synth: lesion changes 1 new 2 enlarging 3 stable 4 shrinking 5 resolved",
        }
        for role, description in descriptions.items():
            volume: Volume | None = getattr(pair, role)
            if volume is None:
                continue
            if role == "lesion_changes" and volume.header is not None:
                header = volume.header.copy()
                header.set_intent("label")  # viewers show the codes as labels
                volume = Volume(volume.data, volume.affine, header)
            dtype = np.float32 if role in ("baseline", "followup") else np.uint8
            save_volume(volume, temporary / PAIR_FILES[role], dtype=dtype, description=description)
        write_json(temporary / PAIR_FILES["record"], pair.record)
    return {role: directory / name for role, name in PAIR_FILES.items()}
