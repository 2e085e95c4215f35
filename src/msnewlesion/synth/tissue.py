"""A tissue model of a skull-stripped FLAIR: brain, cerebrospinal fluid, white matter and its normal-appearing part.

The model is fitted on the scan itself, with no atlas: a three-class Gaussian mixture of the brain's
intensities outside the annotated lesions (FLAIR contrast: fluid darkest, white matter in the middle, grey
matter brightest), whose class probabilities are smoothed over one voxel so that isolated noisy voxels do not
flip class. It tells the generator where new lesions may be placed and which voxels are normal-appearing white
matter (NAWM) for in-painting and for the lesion contrast.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from msnewlesion.errors import InputError
from msnewlesion.io import Volume, check_same_grid
from msnewlesion.lesions import bounding_box, components

__all__ = [
    "TissueModel",
    "bounding_box",
    "brain_mask_from_flair",
    "fit_intensity_mixture",
    "fit_tissue_model",
    "label_lesions",
]

#: Voxels this close (in voxels, 26-neighbourhood steps) to an annotated lesion are not normal-appearing:
#: the consensus masks leave a partial-volume halo about one voxel wide that is still hyperintense.
NAWM_LESION_MARGIN = 2


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, list[tuple[slice, ...]], np.ndarray]:
    """Connected components of a lesion mask (26-connectivity): labels, boxes and sizes.

    Kept for callers of earlier versions: :func:`msnewlesion.lesions.components` gives the same.
    """
    found = components(mask)
    return found.labels, found.boxes, found.sizes


def brain_mask_from_flair(flair: Volume) -> np.ndarray:
    """The brain of a skull-stripped FLAIR: its non-zero voxels, with enclosed holes filled.

    Raises
    ------
    InputError
        The image is empty, or non-zero almost everywhere (it was not skull-stripped).

    Examples
    --------
    >>> data = np.zeros((20, 20, 20), dtype=np.float32)
    >>> data[5:15, 5:15, 5:15] = 80.0
    >>> int(brain_mask_from_flair(Volume(data, np.eye(4))).sum())
    1000
    """
    nonzero = np.asarray(flair.data) != 0
    fraction = float(nonzero.mean()) if nonzero.size else 0.0
    if fraction == 0.0:
        raise InputError(f"FLAIR {flair.name} is zero everywhere: there is no brain to work on")
    if fraction > 0.97:
        raise InputError(
            f"FLAIR {flair.name} is non-zero in {fraction:.0%} of its voxels: it does not look skull-stripped. "
            "Skull-strip it first (msnewlesion preprocess, or hd-bet), or pass a brain mask."
        )
    box = bounding_box(nonzero, margin=1)
    brain = np.zeros_like(nonzero)
    brain[box] = ndimage.binary_fill_holes(nonzero[box])
    return brain


def fit_intensity_mixture(
    values: np.ndarray, n_classes: int = 3, *, iterations: int = 200, bins: int = 512
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit a one-dimensional Gaussian mixture to intensities by EM on their histogram.

    Working on a fine histogram rather than on every voxel makes the fit take milliseconds on a whole brain
    and makes it deterministic. Classes are returned in increasing order of mean.

    Returns
    -------
    means, stds, weights : ndarray
        One value per class.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> values = np.concatenate([rng.normal(30, 5, 5000), rng.normal(80, 5, 20000), rng.normal(100, 5, 15000)])
    >>> means, stds, weights = fit_intensity_mixture(values)
    >>> np.round(means).tolist()
    [30.0, 80.0, 100.0]
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size < 10 * n_classes:
        raise InputError(f"too few brain voxels ({values.size}) to fit a tissue model")
    low, high = np.percentile(values, [0.1, 99.9])
    if not high > low:
        raise InputError("the brain has a single intensity: a FLAIR with tissue contrast is needed")
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    counts = counts.astype(np.float64)
    bin_variance = (edges[1] - edges[0]) ** 2 / 12
    means = np.percentile(values, np.linspace(100 / (n_classes + 1), 100 * n_classes / (n_classes + 1), n_classes))
    stds = np.full(n_classes, values.std() / n_classes)
    weights = np.full(n_classes, 1.0 / n_classes)
    for _ in range(iterations):
        log_likelihood = -0.5 * ((centres[:, None] - means) / stds) ** 2 - np.log(stds) + np.log(weights)
        log_likelihood -= log_likelihood.max(axis=1, keepdims=True)
        responsibility = np.exp(log_likelihood)
        responsibility /= responsibility.sum(axis=1, keepdims=True)
        responsibility *= counts[:, None]
        totals = np.maximum(responsibility.sum(axis=0), 1e-12)
        weights = totals / totals.sum()
        means = (responsibility * centres[:, None]).sum(axis=0) / totals
        stds = np.sqrt((responsibility * (centres[:, None] - means) ** 2).sum(axis=0) / totals + bin_variance)
    order = np.argsort(means)
    return means[order], stds[order], weights[order]


@dataclass(frozen=True, eq=False)
class TissueModel:
    """Where the brain, fluid and white matter of one scan are.

    All masks are boolean arrays on the scan's grid.

    Attributes
    ----------
    brain : ndarray
        The brain (skull-stripped FLAIR's non-zero voxels, holes filled, or the given brain mask).
    white_matter : ndarray
        Voxels whose smoothed white-matter probability exceeds one half, annotated lesions excluded.
    fluid : ndarray
        Voxels whose smoothed fluid (CSF) probability exceeds one half; the outside of the brain counts as fluid,
        so the brain's outer edge is never white matter.
    normal_white_matter : ndarray
        White matter at least two voxels away from every annotated lesion.
    class_means, class_stds, class_weights : tuple of float
        The fitted mixture (fluid, white matter, grey matter).
    white_matter_mean : float
        Mean FLAIR intensity of the normal-appearing white matter: the unit of noise and contrast.
    lesion_labels : ndarray
        Connected components of the annotated lesions (see :func:`label_lesions`).
    lesion_boxes, lesion_sizes
        Their bounding boxes and voxel counts.
    """

    brain: np.ndarray = field(repr=False)
    white_matter: np.ndarray = field(repr=False)
    fluid: np.ndarray = field(repr=False)
    normal_white_matter: np.ndarray = field(repr=False)
    class_means: tuple[float, float, float]
    class_stds: tuple[float, float, float]
    class_weights: tuple[float, float, float]
    white_matter_mean: float
    lesion_labels: np.ndarray = field(repr=False)
    lesion_boxes: list[tuple[slice, ...]] = field(repr=False)
    lesion_sizes: np.ndarray = field(repr=False)

    def summary(self) -> dict[str, object]:
        """What the model found, for the pair's JSON record."""
        return {
            "method": "3-class Gaussian mixture of brain FLAIR intensities outside lesions, "
            "class probabilities smoothed (sigma 1 voxel)",
            "class_order": ["fluid", "white matter", "grey matter"],
            "class_means": [round(v, 4) for v in self.class_means],
            "class_stds": [round(v, 4) for v in self.class_stds],
            "class_weights": [round(v, 4) for v in self.class_weights],
            "white_matter_mean": round(self.white_matter_mean, 4),
            "brain_voxels": int(self.brain.sum()),
            "white_matter_voxels": int(self.white_matter.sum()),
            "normal_white_matter_voxels": int(self.normal_white_matter.sum()),
            "lesions": len(self.lesion_boxes),
        }


def fit_tissue_model(flair: Volume, lesions: Volume, brain_mask: Volume | None = None) -> TissueModel:
    """Fit the tissue model of one skull-stripped FLAIR.

    Parameters
    ----------
    flair : Volume
        A skull-stripped FLAIR (zero outside the brain), or any FLAIR when ``brain_mask`` is given.
    lesions : Volume
        Its all-lesion mask, on the same grid.
    brain_mask : Volume, optional
        The brain; by default the FLAIR's non-zero voxels with enclosed holes filled.

    Returns
    -------
    TissueModel

    Raises
    ------
    GeometryError
        The lesion or brain mask is on another grid.
    InputError
        The FLAIR is not skull-stripped and no brain mask was given, or the brain has no contrast.

    Examples
    --------
    >>> from msnewlesion.io import load_volume, load_mask
    >>> flair = load_volume("patient07/flair.nii.gz")  # doctest: +SKIP
    >>> tissue = fit_tissue_model(flair, load_mask("patient07/lesions.nii.gz"))  # doctest: +SKIP
    >>> tissue.class_means  # doctest: +SKIP
    (37.4, 85.1, 99.6)
    """
    check_same_grid(flair, lesions, what_a="FLAIR", what_b="lesion mask")
    if brain_mask is not None:
        check_same_grid(flair, brain_mask, what_a="FLAIR", what_b="brain mask")
        brain = np.asarray(brain_mask.data) > 0
        if not brain.any():
            raise InputError(f"brain mask {brain_mask.name} is empty")
    else:
        brain = brain_mask_from_flair(flair)
    lesion_mask = (np.asarray(lesions.data) > 0) & brain
    image = np.asarray(flair.data, dtype=np.float32)

    means, stds, weights = fit_intensity_mixture(image[brain & ~lesion_mask])

    box = bounding_box(brain, margin=2)
    assert box is not None  # the brain is not empty: checked above
    crop = image[box]
    inside = brain[box]
    likelihood = [
        weights[k] / stds[k] * np.exp(-0.5 * ((crop - means[k]) / stds[k]) ** 2, dtype=np.float32) for k in range(3)
    ]
    total = likelihood[0] + likelihood[1] + likelihood[2] + np.float32(1e-30)
    fluid_probability = np.where(inside, likelihood[0] / total, np.float32(1.0))
    white_probability = np.where(inside, likelihood[1] / total, np.float32(0.0))
    fluid_crop = (ndimage.gaussian_filter(fluid_probability, 1.0) > 0.5) | ~inside
    white_crop = (ndimage.gaussian_filter(white_probability, 1.0) > 0.5) & inside & ~lesion_mask[box]

    fluid = np.ones(brain.shape, dtype=bool)
    fluid[box] = fluid_crop
    white_matter = np.zeros(brain.shape, dtype=bool)
    white_matter[box] = white_crop
    near_lesion = ndimage.maximum_filter(lesion_mask[box], size=2 * NAWM_LESION_MARGIN + 1)
    normal_white_matter = np.zeros(brain.shape, dtype=bool)
    normal_white_matter[box] = white_crop & ~near_lesion
    if not normal_white_matter.any():
        raise InputError(
            f"no normal-appearing white matter was found in {flair.name}: is it a FLAIR, and skull-stripped?"
        )
    annotated = components(lesion_mask)
    return TissueModel(
        brain=brain,
        white_matter=white_matter,
        fluid=fluid,
        normal_white_matter=normal_white_matter,
        class_means=tuple(float(v) for v in means),  # type: ignore[arg-type]
        class_stds=tuple(float(v) for v in stds),  # type: ignore[arg-type]
        class_weights=tuple(float(v) for v in weights),  # type: ignore[arg-type]
        white_matter_mean=float(image[normal_white_matter].mean()),
        lesion_labels=annotated.labels,
        lesion_boxes=annotated.boxes,
        lesion_sizes=annotated.sizes,
    )
