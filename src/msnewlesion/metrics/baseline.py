"""A reference baseline for all-lesion segmentation: the brightness rule.

MS lesions are hyperintense on FLAIR, so the voxels much brighter than the rest of the brain are a crude
all-lesion mask that needs no training. A model that scores below this rule on a real scan has not learnt MS
lesions; ``benchmarks/real_checks.py`` reports both side by side.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["brightness_rule"]

#: scales the median absolute deviation to the standard deviation of a normal distribution
_MAD_TO_SD = 1.4826


def brightness_rule(
    image: np.ndarray,
    brain: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    robust_sds: float = 2.0,
    smoothing_mm: float = 0.5,
    erosion_mm: float = 3.0,
) -> np.ndarray:
    """Voxels brighter than the brain's median + ``robust_sds`` robust standard deviations.

    The image is smoothed (Gaussian, σ ``smoothing_mm`` along each axis) and the statistics and the mask are
    taken inside the brain eroded by ``erosion_mm`` (the brain's rim is bright on FLAIR: cortex, partial
    volume with CSF). The robust standard deviation is 1.4826 × the median absolute deviation.

    Parameters
    ----------
    image : ndarray, 3D
        A FLAIR, any intensity scale.
    brain : ndarray of bool, 3D
        Its brain mask, same shape.
    spacing : tuple of 3 floats
        Voxel size in mm along the array axes (anisotropic voxels are handled).
    robust_sds, smoothing_mm, erosion_mm : float
        The rule's settings; the defaults are those of the real checks.

    Returns
    -------
    ndarray of bool
        The rule's lesion mask (empty when the eroded brain is).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> image = rng.normal(100, 5, (40, 40, 40)).astype(np.float32)
    >>> image[18:23, 18:23, 18:23] = 160
    >>> mask = brightness_rule(image, np.ones(image.shape, bool), (1.0, 1.0, 1.0))
    >>> bool(mask[20, 20, 20]), bool(mask[5, 5, 5])
    (True, False)
    """
    if image.ndim != 3 or image.shape != brain.shape:
        raise ValueError(f"image and brain must be 3D arrays of one shape, got {image.shape} and {brain.shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive voxel sizes in mm, got {spacing}")
    smooth = ndimage.gaussian_filter(image.astype(np.float32), [smoothing_mm / s for s in spacing])
    inner = ndimage.distance_transform_edt(brain.astype(bool), sampling=spacing) > erosion_mm
    if not inner.any():
        return np.zeros(image.shape, bool)
    values = smooth[inner]
    median = float(np.median(values))
    robust_sd = _MAD_TO_SD * float(np.median(np.abs(values - median)))
    return inner & (smooth > median + robust_sds * robust_sd)
