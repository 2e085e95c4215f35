"""A simulated scanner acquisition of a 1 mm FLAIR: what makes two scans of an unchanged brain differ.

Real longitudinal pairs are rarely two identical 3D acquisitions. A clinic's baseline may be a 2D FLAIR
with 5 mm slices and its follow-up a 3D FLAIR at 1 mm, from another scanner, with another contrast and
another bias field. After registration and resampling onto one grid, every one of these differences shows
in the follow-up − baseline channel, and a model trained on pairs that differ only by new lesions takes
them for new lesions. :func:`simulate_acquisition` gives one time point its own acquisition, drawn at
random within :class:`AcquisitionOptions`:

1. CSF flow artefacts (2D FLAIRs only): bright blobs inside the fluid spaces near the brain's centre,
   where inflowing, non-inverted CSF lights up on 2D FLAIRs;
2. contrast: a gamma curve on the brain's intensities (changes the grey/white/lesion contrast) and a gain;
3. a smooth multiplicative bias field (what N4 leaves behind);
4. the slice profile and the voxel size: a Gaussian blur of the slice thickness along the slice direction
   (and of the in-plane voxel size within the slice), then sampling on a grid tilted by a few degrees
   with that in-plane spacing and slices of the thickness plus a gap, mostly axial;
5. Rician noise on the acquired voxels and, sometimes, a faint ghost of the head shifted along the
   phase-encoding direction;
6. the trip back to the working grid through :func:`msnewlesion.preprocess.geometry.resample` with cubic
   B-splines: the same interpolation that ``predict`` applies to a native scan.

The image keeps its grid and affine; voxels outside the brain are 0 (the brain mask is applied to both
time points of a pair, as ``predict`` does with its one mask).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from msnewlesion.errors import InputError, OptionError
from msnewlesion.lesions import bounding_box
from msnewlesion.preprocess.geometry import Grid, resample
from msnewlesion.synth.nuisance import drift_log_field, rotation_matrix

__all__ = ["AcquisitionOptions", "simulate_acquisition"]

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclass(frozen=True)
class AcquisitionOptions:
    """The ranges a simulated acquisition is drawn from (each time point draws its own).

    Parameters
    ----------
    two_d_probability : float
        Probability that a time point is a 2D (thick-slice) acquisition; otherwise a 3D one whose slice
        thickness equals its in-plane spacing.
    slice_thickness_mm : (float, float)
        Range of the slice thickness of 2D acquisitions.
    slice_gap : (float, float)
        Range of the gap between 2D slices, as a fraction of the thickness.
    in_plane_spacing_mm : (float, float)
        Range of the in-plane voxel size (3D acquisitions: the isotropic voxel size, at least 0.8 mm).
    axial_probability : float
        Probability that the slices are axial; otherwise sagittal or coronal, equally likely.
    max_tilt_deg : float
        The acquisition grid is tilted by up to this angle about a random axis.
    gamma : (float, float)
        Range of the exponent of the contrast curve applied to the brain's intensities.
    gain : (float, float)
        Range of the overall intensity factor.
    max_bias : float
        Largest magnitude of the log bias field on the brain (0.1: up to about ±10 %).
    noise : (float, float)
        Range of the Rician noise level, as a fraction of the white-matter mean, on the acquired voxels.
    ghost_probability : float
        Probability of a ghost: the head shifted by half the field of view along the phase-encoding axis.
    ghost_intensity : (float, float)
        Range of the ghost's intensity relative to the image.
    flow_artefacts : (int, int)
        Range of the number of CSF flow artefacts of a 2D acquisition (0 to disable).
    """

    two_d_probability: float = 0.65
    slice_thickness_mm: tuple[float, float] = (2.0, 6.0)
    slice_gap: tuple[float, float] = (0.0, 0.3)
    in_plane_spacing_mm: tuple[float, float] = (0.5, 1.3)
    axial_probability: float = 0.8
    max_tilt_deg: float = 12.0
    gamma: tuple[float, float] = (0.75, 1.35)
    gain: tuple[float, float] = (0.8, 1.25)
    max_bias: float = 0.12
    noise: tuple[float, float] = (0.005, 0.04)
    ghost_probability: float = 0.2
    ghost_intensity: tuple[float, float] = (0.02, 0.06)
    flow_artefacts: tuple[int, int] = (0, 3)

    def __post_init__(self) -> None:
        problems = []
        ranges = {
            "slice_thickness_mm": (0.3, 12.0),
            "slice_gap": (0.0, 1.0),
            "in_plane_spacing_mm": (0.2, 3.0),
            "gamma": (0.2, 5.0),
            "gain": (0.1, 10.0),
            "noise": (0.0, 0.5),
            "ghost_intensity": (0.0, 0.5),
            "flow_artefacts": (0, 20),
        }
        for name, (low, high) in ranges.items():
            value = tuple(getattr(self, name))
            if len(value) != 2 or not low <= value[0] <= value[1] <= high:
                problems.append(f"{name} must be a range (min, max) within [{low}, {high}], got {value}")
            else:
                object.__setattr__(self, name, value)
        for name in ("two_d_probability", "axial_probability", "ghost_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be within [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.max_tilt_deg <= 45.0:
            problems.append(f"max_tilt_deg must be within [0, 45], got {self.max_tilt_deg}")
        if not 0.0 <= self.max_bias < 1.0:
            problems.append(f"max_bias must be within [0, 1), got {self.max_bias}")
        if problems:
            raise OptionError("invalid acquisition options: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AcquisitionOptions:
        converted: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**converted)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _flow_artefacts(
    image: np.ndarray,
    fluid: np.ndarray,
    brain: np.ndarray,
    count: int,
    white_matter_mean: float,
    spacing: tuple[float, ...],
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """Add ``count`` bright blobs inside the fluid near the brain's centre (where the ventricles are)."""
    box = bounding_box(brain)
    if box is None or count == 0:
        return []
    centre = np.array([(s.start + s.stop) / 2.0 for s in box])
    half = np.array([(s.stop - s.start) / 2.0 for s in box])
    candidates = np.argwhere(fluid)
    if candidates.size == 0:
        return []
    # the central third of the brain's box: ventricles, foramina and the third ventricle, not cortical sulci
    central = np.all(np.abs(candidates - centre) <= half / 3.0, axis=1)
    candidates = candidates[central]
    made = []
    for _ in range(count):
        if candidates.size == 0:
            break
        seed = candidates[rng.integers(len(candidates))]
        radius_mm = _uniform(rng, (2.0, 5.0))
        reach = [math.ceil(2 * radius_mm / s) + 1 for s in spacing]
        region = tuple(
            slice(max(int(c) - r, 0), min(int(c) + r + 1, n)) for c, r, n in zip(seed, reach, image.shape, strict=True)
        )
        grids = np.meshgrid(*[np.arange(s.start, s.stop) for s in region], indexing="ij")
        distance2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, seed, spacing, strict=True))
        strength = _uniform(rng, (0.6, 1.3)) * white_matter_mean
        blob = np.exp(-0.5 * distance2 / (radius_mm / 2.0) ** 2).astype(np.float32)
        image[region] += np.where(fluid[region], blob * np.float32(strength), np.float32(0))
        made.append({"voxel": [int(c) for c in seed], "radius_mm": round(radius_mm, 3), "strength": round(strength, 4)})
    return made


def _acquisition_grid(
    shape: tuple[int, ...], affine: np.ndarray, region: tuple[slice, ...], rotation: np.ndarray, spacing: np.ndarray
) -> Grid:
    """A grid with axes ``rotation``'s columns and voxel sizes ``spacing`` covering ``region`` of the image."""
    corners = np.array(
        [[s.start - 0.5 if pick == 0 else s.stop - 0.5 for s, pick in zip(region, picks, strict=True)]
         for picks in np.ndindex(2, 2, 2)],
        dtype=np.float64,
    )  # fmt: skip
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    local = world @ rotation  # coordinates along the acquisition axes
    low, high = local.min(axis=0), local.max(axis=0)
    counts = np.maximum(np.ceil((high - low) / spacing).astype(int), 1)
    origin_local = low + spacing / 2.0
    grid_affine = np.eye(4)
    grid_affine[:3, :3] = rotation * spacing
    grid_affine[:3, 3] = rotation @ origin_local
    return Grid((int(counts[0]), int(counts[1]), int(counts[2])), grid_affine)


def simulate_acquisition(
    image: np.ndarray,
    affine: np.ndarray,
    brain: np.ndarray,
    rng: np.random.Generator,
    options: AcquisitionOptions | None = None,
    *,
    fluid: np.ndarray | None = None,
    white_matter_mean: float | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One time point as a scanner would have acquired it, brought back onto its own grid.

    Parameters
    ----------
    image : ndarray
        A skull-stripped FLAIR (0 outside the brain) on a fine grid (1 mm or finer).
    affine : ndarray
        Its voxel-to-world affine.
    brain : ndarray of bool
        The brain mask; the result is 0 outside it.
    rng : numpy.random.Generator
        Every random choice comes from it.
    options : AcquisitionOptions, optional
        The ranges; the defaults when None.
    fluid : ndarray of bool, optional
        The cerebrospinal fluid, where flow artefacts may appear (none without it).
    white_matter_mean : float, optional
        Scale of the noise and of the artefacts; the median of the brain's non-zero voxels when None.

    Returns
    -------
    image : ndarray of float32
        On the input's grid.
    record : dict
        Every choice made (JSON-ready).

    Examples
    --------
    >>> image = np.zeros((40, 40, 40), np.float32); image[8:32, 8:32, 8:32] = 100
    >>> result, record = simulate_acquisition(image, np.eye(4), image > 0, np.random.default_rng(0))
    >>> result.shape, sorted(record)[:3]
    ((40, 40, 40), ['bias', 'contrast', 'flow_artefacts'])
    """
    options = options or AcquisitionOptions()
    brain = np.asarray(brain, dtype=bool)
    region = bounding_box(brain, margin=2)
    if region is None:
        raise InputError("cannot simulate an acquisition of an image without brain voxels")
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    work = np.where(brain, np.asarray(image, dtype=np.float32), np.float32(0))
    inside = work[brain]
    positive = inside[inside > 0]
    scale = float(white_matter_mean) if white_matter_mean else float(np.median(positive)) if positive.size else 1.0
    record: dict[str, Any] = {}

    # -- the acquisition's geometry (drawn first: flow artefacts appear on 2D FLAIRs only) ----------------
    two_d = bool(rng.random() < options.two_d_probability)
    in_plane = _uniform(rng, options.in_plane_spacing_mm)
    if two_d:
        thickness = _uniform(rng, options.slice_thickness_mm)
        gap = thickness * _uniform(rng, options.slice_gap)
    else:
        in_plane = max(in_plane, 0.8)
        thickness, gap = in_plane, 0.0
    slice_axis = 2 if rng.random() < options.axial_probability else int(rng.integers(2))
    tilt_axis = rng.standard_normal(3)
    tilt = _uniform(rng, (0.0, options.max_tilt_deg))
    # world axes: x (R), y (A), z (S); the slice direction is the third column of the rotation
    order = [a for a in range(3) if a != slice_axis] + [slice_axis]
    base = np.eye(3)[:, order]
    rotation = rotation_matrix(tilt_axis, tilt) @ base

    # -- 1. CSF flow artefacts ------------------------------------------------------------------------------
    flows: list[dict[str, Any]] = []
    if two_d and fluid is not None:
        count = int(rng.integers(options.flow_artefacts[0], options.flow_artefacts[1] + 1))
        flows = _flow_artefacts(work, np.asarray(fluid, bool) & brain, brain, count, scale, spacing, rng)
    record["flow_artefacts"] = flows

    # -- 2. contrast ------------------------------------------------------------------------------------------
    gamma = _uniform(rng, options.gamma)
    gain = _uniform(rng, options.gain)
    top = float(np.percentile(inside, 99.5)) or 1.0
    work = np.where(brain, gain * top * np.power(np.clip(work / top, 0.0, None), gamma), 0.0).astype(np.float32)
    record["contrast"] = {"gamma": round(gamma, 4), "gain": round(gain, 4), "reference_intensity": round(top, 4)}

    # -- 3. bias field --------------------------------------------------------------------------------------
    amplitude = _uniform(rng, (0.0, options.max_bias))
    box = bounding_box(brain)
    assert box is not None
    log_field, coefficients = drift_log_field(rng, brain, box, amplitude)
    work[box] *= np.exp(log_field)
    record["bias"] = {"amplitude": round(amplitude, 5), "coefficients": [round(c, 6) for c in coefficients]}

    # -- 4. slice profile, voxel size and sampling --------------------------------------------------------------
    spacing_acquired = np.array([in_plane, in_plane, thickness + gap])
    blur_mm = np.zeros(3)
    # the blur each image axis needs: the slice thickness along the image axis closest to the slice direction,
    # the in-plane voxel size along the others (less what the source voxels already integrate)
    closest = int(np.argmax(np.abs(np.linalg.inv(affine[:3, :3]) @ rotation[:, 2] * spacing)))
    for axis in range(3):
        width = thickness if axis == closest else in_plane
        blur_mm[axis] = math.sqrt(max(width**2 - spacing[axis] ** 2, 0.0))
    sigma = [b * _FWHM_TO_SIGMA / s for b, s in zip(blur_mm, spacing, strict=True)]
    if any(s > 0.05 for s in sigma):
        work = ndimage.gaussian_filter(work, sigma=sigma, mode="constant", truncate=3.0)
    acquired_grid = _acquisition_grid(work.shape, affine, region, rotation, spacing_acquired)
    # a random phase of the slice positions relative to the anatomy
    shift = np.eye(4)
    shift[:3, 3] = rotation @ (rng.uniform(-0.5, 0.5, 3) * spacing_acquired)
    acquired_grid = Grid(acquired_grid.shape, shift @ acquired_grid.affine)
    acquired = resample(work, affine, acquired_grid, order=1)

    # -- 5. noise and ghost on the acquired voxels --------------------------------------------------------------
    noise = _uniform(rng, options.noise) * scale
    if noise > 0:
        real = acquired + rng.standard_normal(acquired.shape, dtype=np.float32) * np.float32(noise)
        imaginary = rng.standard_normal(acquired.shape, dtype=np.float32) * np.float32(noise)
        acquired = np.sqrt(real * real + imaginary * imaginary)
    ghost: dict[str, Any] | None = None
    if rng.random() < options.ghost_probability:
        phase_axis = int(rng.integers(2))  # one of the two in-plane axes
        strength = _uniform(rng, options.ghost_intensity)
        acquired = acquired + np.float32(strength) * np.roll(acquired, acquired.shape[phase_axis] // 2, phase_axis)
        ghost = {"phase_axis": phase_axis, "intensity": round(strength, 4)}
    record["noise"] = {"rician_std": round(noise, 5), "relative_std": round(noise / scale, 5)}
    record["ghost"] = ghost

    # -- 6. back onto the working grid, as predict resamples a native scan ---------------------------------------
    result = resample(acquired, acquired_grid.affine, Grid(work.shape, affine), order=3)
    result = np.where(brain, result, np.float32(0)).astype(np.float32)
    record["geometry"] = {
        "kind": "2D" if two_d else "3D",
        "slice_thickness_mm": round(thickness, 4),
        "slice_gap_mm": round(gap, 4),
        "in_plane_spacing_mm": round(in_plane, 4),
        "slice_direction": "xyz"[slice_axis],
        "tilt_deg": round(tilt, 4),
        "acquired_grid_shape": list(acquired_grid.shape),
        "acquired_affine": acquired_grid.affine.round(6).tolist(),
        "resampling_back": "cubic B-spline (msnewlesion.preprocess.geometry.resample, order 3)",
    }
    return result, record
