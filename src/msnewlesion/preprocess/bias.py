"""N4 bias-field correction (antspyx)."""

from __future__ import annotations

import numpy as np

from msnewlesion.errors import MsNewLesionError
from msnewlesion.preprocess.registration import to_ants_image

__all__ = ["BiasCorrectionError", "n4_bias_correction", "n4_shrink_factor"]

#: Iterations per resolution level and convergence tolerance of N4.
N4_ITERATIONS = (50, 50, 30, 20)
N4_TOLERANCE = 1e-6
#: N4 fits the field on the image shrunk to voxels of about this size (mm).
N4_SHRUNK_VOXEL_MM = 4.0


class BiasCorrectionError(MsNewLesionError):
    """N4 could not correct an image."""


def n4_shrink_factor(spacing: tuple[float, float, float]) -> int:
    """The shrink factor that brings voxels to about 4 mm (antspyx's default factor 4 at 1 mm).

    Examples
    --------
    >>> n4_shrink_factor((0.5, 0.75, 0.75))
    5
    """
    return max(1, round(N4_SHRUNK_VOXEL_MM / max(spacing)))


def n4_bias_correction(
    data: np.ndarray, affine: np.ndarray, mask: np.ndarray | None = None, *, what: str = "image"
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

    image = to_ants_image(data, affine)
    spacing = tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
    shrink = n4_shrink_factor(spacing)  # type: ignore[arg-type]
    settings = {
        "method": "N4 (antspyx)",
        "shrink_factor": shrink,
        "iterations": list(N4_ITERATIONS),
        "tolerance": N4_TOLERANCE,
        "mask": "head" if mask is None else "brain",
    }
    try:
        region = ants.get_mask(image).numpy() > 0 if mask is None else np.asarray(mask, dtype=bool)
        region = region & (np.asarray(data) > 0)
        if int(region.sum()) < 1000:
            raise BiasCorrectionError(
                f"bias correction of {what}: fewer than 1000 voxels with signal to estimate the bias field"
            )
        corrected = ants.n4_bias_field_correction(
            image,
            mask=to_ants_image(region.astype(np.float32), affine),
            shrink_factor=shrink,
            convergence={"iters": list(N4_ITERATIONS), "tol": N4_TOLERANCE},
        ).numpy()
    except (RuntimeError, ValueError) as error:
        raise BiasCorrectionError(f"bias correction (N4) of {what} failed in antspyx: {error}") from None
    if not np.all(np.isfinite(corrected)):
        raise BiasCorrectionError(f"bias correction (N4) of {what} produced NaN or infinite values")
    return corrected.astype(np.float32, copy=False), settings
