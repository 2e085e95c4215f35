"""Which synthetic new lesions a simulated acquisition left visible.

A new lesion painted at 1 mm and then acquired with a 6 mm slice profile, a bias field and noise can end up
no brighter at the follow-up than the same voxels at baseline. Its label then asks the network to find what
the images do not show, which teaches it to call lesions where there is nothing. :func:`visible_new_lesions`
keeps the new lesions whose follow-up brightening is measurable and drops the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from msnewlesion.lesions.components import label_lesions

__all__ = ["DEFAULT_MIN_RISE", "Visibility", "visible_new_lesions"]

#: Smallest brightening, as a fraction of the brain's median intensity, for a new lesion to count as visible:
#: about the spread of a normal-appearing tissue's intensity between two acquisitions of the same brain.
DEFAULT_MIN_RISE = 0.05


@dataclass(frozen=True)
class Visibility:
    """The new lesions kept and dropped, with each lesion's brightening (fraction of the brain median).

    ``dropped_mask`` holds the voxels of the dropped lesions, to take out of the follow-up's all-lesion mask
    too; ``dropped`` their numbers among ``rises`` (1-based, in :func:`label_lesions` order).
    """

    new_lesions: np.ndarray
    dropped_mask: np.ndarray
    rises: tuple[float, ...]
    dropped: tuple[int, ...]


def visible_new_lesions(
    baseline: np.ndarray,
    followup: np.ndarray,
    new_lesions: np.ndarray,
    brain: np.ndarray,
    *,
    min_rise: float = DEFAULT_MIN_RISE,
) -> Visibility:
    """Keep the new lesions that brighten by at least ``min_rise`` × the brain's median intensity.

    Each time point is divided by its own median inside the brain (acquisitions differ in scale); a lesion's
    rise is the mean of follow-up minus baseline over its voxels (the pair is on one grid, as synth writes it).

    Parameters
    ----------
    baseline, followup : ndarray, 3D
        The pair's images, one grid, positive intensities inside the brain.
    new_lesions : ndarray of bool, 3D
        The new-lesion label.
    brain : ndarray of bool, 3D
        The brain mask.
    min_rise : float
        The smallest rise kept.

    Returns
    -------
    Visibility

    Examples
    --------
    >>> baseline = np.full((20, 20, 20), 100.0)
    >>> followup = baseline.copy()
    >>> followup[2:5, 2:5, 2:5] = 140.0  # clearly brighter: kept
    >>> followup[10:13, 10:13, 10:13] = 101.0  # erased by the acquisition: dropped
    >>> label = followup > 100.5
    >>> result = visible_new_lesions(baseline, followup, label, np.ones(label.shape, bool))
    >>> int(result.new_lesions.sum()), len(result.dropped), [round(r, 2) for r in result.rises]
    (27, 1, [0.4, 0.01])
    """
    if not (baseline.shape == followup.shape == new_lesions.shape == brain.shape):
        raise ValueError("baseline, followup, new_lesions and brain must be arrays of one shape")
    inside = brain.astype(bool) & (baseline > 0) & (followup > 0)
    if not inside.any():
        raise ValueError("the brain mask holds no voxel with positive intensity at both time points")
    change = followup / float(np.median(followup[inside])) - baseline / float(np.median(baseline[inside]))
    labels, count = label_lesions(new_lesions.astype(bool))
    if count == 0:
        return Visibility(new_lesions.astype(bool), np.zeros(new_lesions.shape, bool), (), ())
    rises = np.asarray(ndimage.mean(change, labels, index=np.arange(1, count + 1)), dtype=float)
    dropped = tuple(int(i) for i in 1 + np.flatnonzero(rises < min_rise))
    dropped_mask = np.isin(labels, dropped)
    return Visibility(new_lesions.astype(bool) & ~dropped_mask, dropped_mask, tuple(float(r) for r in rises), dropped)
