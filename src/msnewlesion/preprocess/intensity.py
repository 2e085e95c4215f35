"""Checks of image content and intensity normalisation inside the brain."""

from __future__ import annotations

import numpy as np

from msnewlesion.errors import InputError
from msnewlesion.settings import INTENSITY_NORMALIZATIONS, check_choice

__all__ = [
    "OUTLIER_SPANS",
    "check_image_content",
    "clip_outliers",
    "normalize_intensity",
    "registration_intensities",
]

#: Voxels further than this many robust ranges (0.1th to 99.9th percentile) beyond that range are not signal.
OUTLIER_SPANS = 10.0


def check_image_content(data: np.ndarray, what: str) -> None:
    """Refuse images that cannot be a scan: non-finite, empty (all zero) or constant.

    Raises
    ------
    InputError
        Naming ``what`` (the file) and what is wrong.

    Examples
    --------
    >>> check_image_content(np.zeros((4, 4, 4)), "baseline FLAIR a.nii.gz")
    Traceback (most recent call last):
    ...
    msnewlesion.errors.InputError: baseline FLAIR a.nii.gz is empty (every voxel is 0): nothing to process
    """
    if data.ndim != 3:
        raise InputError(f"{what} has shape {data.shape}: a 3D image is needed")
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise InputError(f"{what} holds {bad} NaN or infinite voxels: fix or mask them before running")
    if data.size == 0:
        raise InputError(f"{what} holds no voxels (shape {data.shape})")
    low, high = float(data.min()), float(data.max())
    if low == high == 0:
        raise InputError(f"{what} is empty (every voxel is 0): nothing to process")
    if low == high:
        raise InputError(f"{what} is constant (every voxel is {low:g}): it holds no image")


def normalize_intensity(
    image: np.ndarray, brain: np.ndarray, method: str, *, what: str = "image"
) -> tuple[np.ndarray, dict[str, float]]:
    """Mask an image with the brain and normalise its intensities.

    Parameters
    ----------
    image : ndarray
        The image (already cropped to the brain box plus margin).
    brain : ndarray of bool
        The brain mask on the same grid.
    method : {"zscore-brain", "zscore-brain-box", "none"}
        ``zscore-brain``: subtract the mean and divide by the standard deviation of the voxels
        inside the brain; outside stays 0. ``zscore-brain-box``: the published CoactSeg recipe:
        image × mask, then z-scored with the statistics of the whole box, background included
        (the background becomes −mean/std). ``none``: image × mask.
    what : str
        Names the image in error messages.

    Returns
    -------
    normalised : ndarray
        float32.
    stats : dict
        ``mean`` and ``std`` that were used (absent for ``none``).

    Raises
    ------
    InputError
        The image is constant inside the brain, or the method is unknown.

    Examples
    --------
    >>> image = np.array([[[0.0, 2.0], [4.0, 9.0]]])
    >>> brain = np.array([[[False, True], [True, False]]])
    >>> normalize_intensity(image, brain, "zscore-brain")[0].tolist()
    [[[0.0, -1.0], [1.0, 0.0]]]
    """
    check_choice("intensity_normalization", method, INTENSITY_NORMALIZATIONS)
    brain = brain.astype(bool)
    masked = np.where(brain, image, 0).astype(np.float64)
    if method == "none":
        return masked.astype(np.float32), {}
    values = masked[brain] if method == "zscore-brain" else masked.ravel()
    mean = float(values.mean())
    std = float(values.std())
    if not std > 1e-6 * max(abs(mean), 1.0):
        raise InputError(
            f"intensity normalisation of {what}: the image is constant inside the brain mask "
            f"(value {mean:g}); check the scan and the brain mask"
        )
    normalised = (masked - mean) / std
    if method == "zscore-brain":
        normalised[~brain] = 0.0
    return normalised.astype(np.float32), {"mean": mean, "std": std}


def clip_outliers(data: np.ndarray, what: str) -> tuple[np.ndarray, str | None]:
    """Clip the few voxels whose values no scanner measures (1e30 in a scan of 0 to 1000) and say so.

    The limits lie :data:`OUTLIER_SPANS` robust ranges (the 0.1th to the 99.9th percentile) beyond
    that range, far from any real tissue or lesion; a handful of wild voxels (fewer than 0.1 % of the
    image) would otherwise dominate the registration's metric, the skull stripping's standardisation
    and N4.

    Returns
    -------
    data : ndarray
        The image, clipped (the same array when nothing was).
    warning : str or None
        How many voxels were clipped to what, naming ``what``.

    Examples
    --------
    >>> image = np.linspace(0.0, 100.0, 8000).reshape(20, 20, 20)
    >>> image[0, 0, :5] = 1e30
    >>> clipped, warning = clip_outliers(image, "follow-up FLAIR b.nii.gz")
    >>> float(clipped.max()) < 1100, warning.split(";")[0]
    (True, 'follow-up FLAIR b.nii.gz holds 5 voxels far outside its intensity range (up to 1e+30')
    """
    low, high = (float(v) for v in np.percentile(data, [0.1, 99.9]))
    span = max(high - low, abs(high), 1e-6)
    floor, ceiling = low - OUTLIER_SPANS * span, high + OUTLIER_SPANS * span
    outside = (data < floor) | (data > ceiling)
    count = int(np.count_nonzero(outside))
    if count == 0:
        return data, None
    extreme = float(data[outside][np.argmax(np.abs(data[outside]))])
    warning = (
        f"{what} holds {count} voxel{'s' if count != 1 else ''} far outside its intensity range (up to {extreme:.3g}; "
        f"99.9 % of the voxels lie within {low:.4g} to {high:.4g}): clipped to {floor:.4g} to {ceiling:.4g} before "
        "processing; check the scan for corrupt voxels"
    )
    return np.clip(data, floor, ceiling).astype(data.dtype, copy=False), warning


def registration_intensities(data: np.ndarray) -> np.ndarray:
    """The image rescaled linearly to 0…1, as the registration is given it.

    antsRegistration's QuickRigid returned transforms with a scale of 1.28 and shifts of 10⁹ mm for two
    z-scored images (negative values; msnewlesion's own preprocessed output, fed back in). Mattes mutual
    information bins intensities between each image's minimum and maximum, so a linear rescaling leaves
    it unchanged for every other image.

    Examples
    --------
    >>> registration_intensities(np.array([[[-2.0, 0.0, 2.0]]])).tolist()
    [[[0.0, 0.5, 1.0]]]
    """
    low, high = float(data.min()), float(data.max())
    return ((np.asarray(data, dtype=np.float32) - low) / (high - low if high > low else 1.0)).astype(np.float32)
