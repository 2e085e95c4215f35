"""Checks of image content and intensity normalisation inside the brain."""

from __future__ import annotations

import numpy as np

from msnewlesion.errors import InputError
from msnewlesion.settings import INTENSITY_NORMALIZATIONS, check_choice

__all__ = ["check_image_content", "normalize_intensity"]


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
