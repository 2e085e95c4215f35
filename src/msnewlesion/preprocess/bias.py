"""N4 bias-field correction (antspyx), fitted on a shrunken image and applied at full resolution.

The bias field is smooth (a few B-spline elements across the head), so it is fitted where that is
cheap: on block means of the image over about 6 mm cubes inside the mask (N4's own shrinking keeps one
voxel of each block and drops the rest). The fitted log-field is then brought back to every voxel of
the full image by linear interpolation, and the image is divided by it once.
"""

from __future__ import annotations

import numpy as np

from msnewlesion.errors import MsNewLesionError
from msnewlesion.preprocess.geometry import block_affine
from msnewlesion.preprocess.registration import to_ants_image

__all__ = ["BiasCorrectionError", "n4_bias_correction", "n4_shrink_factor"]

#: Iterations per resolution level (B-spline meshes of 1, 2 and 4 elements across the image) and
#: convergence tolerance of N4. A fourth level (8 elements, about 2 cm) starts fitting anatomy: on a
#: synthetic field it leaves more of the field than three (docs/performance.md).
N4_ITERATIONS = (50, 50, 30)
N4_TOLERANCE = 1e-6
#: N4 fits the field on block means of the image over cubes of about this size (mm).
N4_SHRUNK_VOXEL_MM = 6.0


class BiasCorrectionError(MsNewLesionError):
    """N4 could not correct an image."""


def n4_shrink_factor(spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    """The block size per axis (voxels) that makes blocks of about 6 mm.

    Examples
    --------
    >>> n4_shrink_factor((0.5, 0.75, 0.75))
    (12, 8, 8)
    >>> n4_shrink_factor((1.0, 1.0, 5.0))
    (6, 6, 1)
    """
    return tuple(max(1, round(N4_SHRUNK_VOXEL_MM / s)) for s in spacing)  # type: ignore[return-value]


def _block_means(data: np.ndarray, weight: np.ndarray, factors: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Weighted means of ``data`` over blocks of ``factors`` voxels (zero where no weight), and each block's weight."""
    padding = [(0, -n % f) for n, f in zip(data.shape, factors, strict=True)]
    weighted = np.pad(data * weight, padding)
    weight = np.pad(weight, padding)
    blocks = tuple(n // f for n, f in zip(weighted.shape, factors, strict=True))
    axes = (1, 3, 5)
    split = (blocks[0], factors[0], blocks[1], factors[1], blocks[2], factors[2])
    sums = weighted.reshape(split).sum(axis=axes, dtype=np.float64)
    weights = weight.reshape(split).sum(axis=axes, dtype=np.float64)
    means = np.divide(sums, weights, out=np.zeros_like(sums), where=weights > 0)
    return means.astype(np.float32), weights / float(np.prod(factors))


def _to_full_grid(blocks: np.ndarray, factors: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Linear interpolation of values at block centres onto every voxel (held constant past the outer centres)."""
    result = blocks
    for axis, (n, f) in enumerate(zip(shape, factors, strict=True)):
        where = np.clip((np.arange(n) - (f - 1) / 2.0) / f, 0, blocks.shape[axis] - 1)
        below = np.floor(where).astype(int)
        above = np.minimum(below + 1, blocks.shape[axis] - 1)
        weight = (where - below).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        result = np.take(result, below, axis=axis) * (1 - weight) + np.take(result, above, axis=axis) * weight
    return result


def n4_bias_correction(
    data: np.ndarray,
    affine: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    what: str = "image",
    block_mm: float | None = N4_SHRUNK_VOXEL_MM,
) -> tuple[np.ndarray, dict]:
    """Remove the smooth intensity bias of an MR image with N4 (Tustison et al. 2010).

    Parameters
    ----------
    data : ndarray
        The image.
    affine : ndarray
        Its RAS affine (N4's B-spline field is fitted in millimetres).
    mask : ndarray of bool, optional
        Where the field is estimated (the brain); by default the head (voxels above the mean,
        cleaned by morphology). Only voxels above 0 are used: N4 works on log intensities.
    what : str
        Names the image in error messages.
    block_mm : float or None
        The field is fitted on block means over cubes of about this size and interpolated back to
        every voxel; None fits it on the full image (slower, the same field to within about 1 %).

    Returns
    -------
    corrected : ndarray
        float32, same shape: the image divided by the estimated field, everywhere.
    settings : dict
        The N4 settings used (for the record).

    Raises
    ------
    BiasCorrectionError
        Too few voxels to estimate a field, antspyx fails, or it returns non-finite values.

    Examples
    --------
    >>> corrected, used = n4_bias_correction(flair.data, flair.affine, brain)  # doctest: +SKIP
    """
    import ants

    data = np.asarray(data, dtype=np.float32)
    spacing = tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
    factors = (1, 1, 1) if block_mm is None else tuple(max(1, round(block_mm / s)) for s in spacing)
    settings = {
        "method": "N4 (antspyx), fitted on block means, applied at full resolution",
        "shrink_factor": list(factors),
        "iterations": list(N4_ITERATIONS),
        "tolerance": N4_TOLERANCE,
        "mask": "head" if mask is None else "brain",
    }
    try:
        if mask is None:
            region = ants.get_mask(to_ants_image(data, affine)).numpy() > 0
        else:
            region = np.asarray(mask, dtype=bool)
        region = region & (data > 0)
        if int(region.sum()) < 1000:
            raise BiasCorrectionError(
                f"bias correction of {what}: fewer than 1000 voxels with signal to estimate the bias field"
            )
        small, weight = _block_means(data, region.astype(np.float32), factors)
        # A block takes part when mostly inside the region: its mean is then the region's signal.
        small_region = (weight >= 0.5) & (small > 0)
        small_affine = block_affine(np.asarray(affine, dtype=np.float64), factors)
        field = ants.n4_bias_field_correction(
            to_ants_image(small, small_affine),
            mask=to_ants_image(small_region.astype(np.float32), small_affine),
            shrink_factor=1,
            convergence={"iters": list(N4_ITERATIONS), "tol": N4_TOLERANCE},
            return_bias_field=True,
        ).numpy()
        if not np.all(np.isfinite(field)) or float(field.min()) <= 0:
            raise BiasCorrectionError(f"bias correction (N4) of {what} produced a field that is not positive")
        log_field = _to_full_grid(np.log(field).astype(np.float32), factors, data.shape)
        corrected = data / np.exp(log_field)
    except (RuntimeError, ValueError) as error:
        raise BiasCorrectionError(f"bias correction (N4) of {what} failed in antspyx: {error}") from None
    if not np.all(np.isfinite(corrected)):
        raise BiasCorrectionError(f"bias correction (N4) of {what} produced NaN or infinite values")
    return corrected.astype(np.float32, copy=False), settings
