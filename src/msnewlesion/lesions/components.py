"""Lesions as connected components: labelling, boxes, the minimum-size rule and lesion tables.

A lesion is a connected component of a binary mask (every voxel with a label above 0 is lesion).
Components are found with 26-connectivity by default, as the CoactSeg code does; 6-connectivity
reproduces the MSSEG evaluator (Anima). Lesion ids follow :func:`label_lesions`: 1..n in the order
in which a raster scan of the array (last axis fastest) first meets each lesion.

This is the one place that labels masks and finds boxes: :func:`components` gives the labels, the
count, the sizes and the boxes of a mask's lesions, and :func:`bounding_box` the box of a mask.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
from scipy import ndimage

from msnewlesion.errors import InputError

__all__ = [
    "DEFAULT_MIN_LESION_VOLUME_MM3",
    "Components",
    "bounding_box",
    "components",
    "connectivity_structure",
    "label_lesions",
    "largest_component",
    "lesion_table",
    "min_lesion_voxels",
    "remove_small_lesions",
]

DEFAULT_MIN_LESION_VOLUME_MM3 = 3.0

LESION_TABLE_COLUMNS = (
    "id",
    "voxels",
    "volume_mm3",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "max_probability",
    "mean_probability",
)

Box = tuple[slice, ...]


def bounding_box(mask: np.ndarray, margin: int | tuple[int, ...] = 0) -> Box | None:
    """The smallest box holding every true voxel of ``mask``, grown by ``margin`` and clipped to the array.

    Parameters
    ----------
    mask : ndarray
        Any number of dimensions; voxels that are true (non-zero) count.
    margin : int or tuple of int
        Voxels added on each side, one number for every axis or one per axis.

    Returns
    -------
    tuple of slice, or None
        None when the mask is empty.

    Examples
    --------
    >>> mask = np.zeros((10, 10, 10), dtype=bool)
    >>> mask[2:4, 5, 7] = True
    >>> bounding_box(mask, margin=1)
    (slice(1, 5, None), slice(4, 7, None), slice(6, 9, None))
    """
    margins = (margin,) * mask.ndim if isinstance(margin, int) else tuple(margin)
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(np.any(mask, axis=others))
        if present.size == 0:
            return None
        start = max(int(present[0]) - margins[axis], 0)
        stop = min(int(present[-1]) + 1 + margins[axis], mask.shape[axis])
        box.append(slice(start, stop))
    return tuple(box)


def connectivity_structure(connectivity: int) -> np.ndarray:
    """The 3×3×3 neighbourhood that makes two voxels of a lesion neighbours.

    Parameters
    ----------
    connectivity : {26, 6}
        26: voxels sharing a face, an edge or a corner are connected; 6: only a face.

    Returns
    -------
    ndarray of bool, shape (3, 3, 3)

    Examples
    --------
    >>> int(connectivity_structure(26).sum()), int(connectivity_structure(6).sum())
    (27, 7)
    """
    if connectivity == 26:
        return ndimage.generate_binary_structure(3, 3)
    if connectivity == 6:
        return ndimage.generate_binary_structure(3, 1)
    raise InputError(f"connectivity must be 26 or 6, got {connectivity!r}")


def _as_binary_3d(mask: np.ndarray, what: str = "mask") -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim != 3:
        raise InputError(f"the {what} must be a 3D array, got shape {array.shape}")
    if array.dtype == bool:
        return array
    return array > 0


def label_lesions(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Split a mask into lesions (connected components).

    Parameters
    ----------
    mask : ndarray, 3D
        Voxels with a value above 0 are lesion.
    connectivity : {26, 6}
        Which neighbours join two voxels into one lesion.

    Returns
    -------
    labels : ndarray of int32
        0 for background, 1..n for the lesions, numbered in raster order (last axis fastest).
    n : int
        The number of lesions.

    Examples
    --------
    >>> mask = np.zeros((4, 4, 4), bool)
    >>> mask[0, 0, 0] = mask[1, 1, 1] = True  # touching by a corner only
    >>> label_lesions(mask, 26)[1], label_lesions(mask, 6)[1]
    (1, 2)
    """
    found = components(mask, connectivity)
    return found.labels, found.count


class Components:
    """The lesions (connected components) of a mask: labels, count, sizes and boxes.

    Made by :func:`components`. ``sizes[k - 1]`` and ``boxes[k - 1]`` describe lesion ``k``; both
    are computed when first asked for.

    Attributes
    ----------
    labels : ndarray of int32
        0 for background, 1..n for the lesions in raster order (last axis fastest).
    count : int
        The number of lesions.
    """

    def __init__(self, labels: np.ndarray, count: int, box: Box | None) -> None:
        self.labels = labels
        self.count = int(count)
        self._box = box  # around every lesion: where the labels are not all 0

    @functools.cached_property
    def sizes(self) -> np.ndarray:
        """The number of voxels of each lesion (int64, one entry per lesion)."""
        if self._box is None:
            return np.zeros(0, dtype=np.int64)
        return np.bincount(self.labels[self._box].ravel(), minlength=self.count + 1)[1:].astype(np.int64)

    @functools.cached_property
    def boxes(self) -> list[Box]:
        """The bounding box of each lesion, in the full array's indices."""
        if self._box is None:
            return []
        offsets = [s.start for s in self._box]
        return [
            tuple(slice(s.start + o, s.stop + o) for s, o in zip(found, offsets, strict=True))
            for found in ndimage.find_objects(self.labels[self._box])
        ]

    @property
    def mask(self) -> np.ndarray:
        """Every lesion voxel (bool)."""
        return self.labels > 0

    def without_small(self, min_voxels: int) -> Components:
        """The lesions of ``min_voxels`` voxels or more, renumbered 1..m in their original order.

        The result is what :func:`components` gives on the mask without the small lesions.
        """
        sizes = np.zeros(self.count + 1, dtype=np.int64)
        sizes[1:] = self.sizes
        kept = sizes >= max(min_voxels, 1)
        kept[0] = False
        if kept[1:].all():
            return self
        new_ids = np.zeros(self.count + 1, dtype=np.int32)
        new_ids[kept] = np.arange(1, int(kept.sum()) + 1, dtype=np.int32)
        kept_count = int(kept.sum())
        result = Components(new_ids[self.labels], kept_count, self._box if kept_count else None)
        result.__dict__["sizes"] = sizes[kept]
        return result


def components(mask: np.ndarray, connectivity: int = 26) -> Components:
    """Label a mask's lesions once; their sizes and boxes come with them.

    Only the box around the mask is labelled, which is many times faster on a whole head than
    labelling the full array (the labels are the same).

    Parameters
    ----------
    mask : ndarray, 3D
        Voxels with a value above 0 are lesion.
    connectivity : {26, 6}
        Which neighbours join two voxels into one lesion.

    Returns
    -------
    Components

    Examples
    --------
    >>> mask = np.zeros((6, 6, 6), dtype=bool)
    >>> mask[0, 0, 0] = mask[1, 1, 1] = mask[4, 4, 4] = True
    >>> found = components(mask)
    >>> found.count, found.sizes.tolist(), found.boxes[1]
    (2, [2, 1], (slice(4, 5, None), slice(4, 5, None), slice(4, 5, None)))
    """
    binary = _as_binary_3d(mask)
    structure = connectivity_structure(connectivity)
    labels = np.zeros(binary.shape, dtype=np.int32)
    box = bounding_box(binary)
    if box is None:
        return Components(labels, 0, None)
    cropped = np.zeros(binary[box].shape, dtype=np.int32)
    count = ndimage.label(binary[box], structure=structure, output=cropped)
    labels[box] = cropped
    return Components(labels, int(count), box)


def largest_component(mask: np.ndarray, connectivity: int = 6) -> np.ndarray:
    """The largest connected component of a mask (all False when the mask is empty).

    Examples
    --------
    >>> mask = np.zeros((5, 5, 5), bool); mask[0, 0, 0] = True; mask[2:4, 2:4, 2:4] = True
    >>> int(largest_component(mask).sum())
    8
    """
    found = components(mask, connectivity)
    if found.count <= 1:
        return found.mask
    return found.labels == int(found.sizes.argmax()) + 1


def min_lesion_voxels(voxel_volume_mm3: float, min_volume_mm3: float = DEFAULT_MIN_LESION_VOLUME_MM3) -> int:
    """The smallest lesion kept, in voxels: ``floor(min_volume / voxel_volume) + 1``.

    This is the MSSEG evaluator's rule: a lesion is kept when its volume is strictly above
    ``min_volume_mm3``. A tiny tolerance keeps exact ratios exact despite floating point
    (3 mm³ on a 0.1 mm isotropic grid is 3000 voxels, so 3001 are needed).

    Parameters
    ----------
    voxel_volume_mm3 : float
        Volume of one voxel.
    min_volume_mm3 : float
        Lesions of this volume or less are dropped; 0 keeps every lesion.

    Returns
    -------
    int

    Examples
    --------
    >>> min_lesion_voxels(0.5 * 0.75 * 0.75)
    11
    >>> min_lesion_voxels(1.0)
    4
    """
    if not voxel_volume_mm3 > 0 or not math.isfinite(voxel_volume_mm3):
        raise InputError(f"the voxel volume must be a positive number, got {voxel_volume_mm3!r}")
    if not min_volume_mm3 >= 0 or not math.isfinite(min_volume_mm3):
        raise InputError(f"the minimum lesion volume must be 0 or more mm³, got {min_volume_mm3!r}")
    ratio = min_volume_mm3 / voxel_volume_mm3
    return math.floor(ratio + 1e-9 * max(1.0, ratio)) + 1


def remove_small_lesions(mask: np.ndarray, min_voxels: int, connectivity: int = 26) -> np.ndarray:
    """The mask without its lesions of fewer than ``min_voxels`` voxels.

    Parameters
    ----------
    mask : ndarray, 3D
        Voxels with a value above 0 are lesion.
    min_voxels : int
        The smallest lesion kept (see :func:`min_lesion_voxels`).
    connectivity : {26, 6}

    Returns
    -------
    ndarray of bool

    Examples
    --------
    >>> mask = np.zeros((20, 3, 3), bool)
    >>> mask[0:10, 0, 0] = True  # 10 voxels
    >>> mask[0:11, 2, 2] = True  # 11 voxels
    >>> int(remove_small_lesions(mask, min_lesion_voxels(0.5 * 0.75 * 0.75)).sum())
    11
    """
    return components(mask, connectivity).without_small(min_voxels).mask


def lesion_table(
    mask: np.ndarray | Components,
    affine: np.ndarray,
    probability: np.ndarray | None = None,
    connectivity: int = 26,
) -> pd.DataFrame:
    """One row per lesion: size, volume, centre in scanner coordinates and probabilities.

    Parameters
    ----------
    mask : ndarray, 3D, or Components
        Voxels with a value above 0 are lesion; or the mask's :func:`components` when they are
        known already (then ``connectivity`` is theirs).
    affine : ndarray, 4×4
        Voxel indices to scanner coordinates in mm.
    probability : ndarray, optional
        A lesion probability map on the same grid; without one the probability columns are NaN.
    connectivity : {26, 6}

    Returns
    -------
    pandas.DataFrame
        Columns ``id, voxels, volume_mm3, centroid_x_mm, centroid_y_mm, centroid_z_mm,
        max_probability, mean_probability``, ordered by ``id`` (the ids of :func:`label_lesions`).

    Examples
    --------
    >>> mask = np.zeros((8, 8, 8), bool)
    >>> mask[2:4, 2:4, 2:4] = True
    >>> table = lesion_table(mask, np.diag([2.0, 1.0, 1.0, 1.0]))
    >>> table[["id", "voxels", "volume_mm3", "centroid_x_mm"]].to_dict("records")
    [{'id': 1, 'voxels': 8, 'volume_mm3': 16.0, 'centroid_x_mm': 5.0}]
    """
    found = mask if isinstance(mask, Components) else components(mask, connectivity)
    labels, count = found.labels, found.count
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise InputError(f"the affine must be 4×4, got shape {affine.shape}")
    if probability is not None:
        probability = np.asarray(probability)
        if probability.shape != labels.shape:
            raise InputError(f"the probability map has shape {probability.shape} but the mask has shape {labels.shape}")
    if count == 0:
        return pd.DataFrame({name: pd.Series(dtype=_column_dtype(name)) for name in LESION_TABLE_COLUMNS})

    voxel_volume = float(abs(np.linalg.det(affine[:3, :3])))
    foreground = np.flatnonzero(labels)
    ids = labels.ravel()[foreground]
    coordinates = np.unravel_index(foreground, labels.shape)
    voxels = np.bincount(ids, minlength=count + 1)[1:]
    centroid_index = np.stack(
        [np.bincount(ids, weights=axis, minlength=count + 1)[1:] / voxels for axis in coordinates], axis=1
    )
    centroid_mm = centroid_index @ affine[:3, :3].T + affine[:3, 3]

    if probability is None:
        max_probability = np.full(count, np.nan)
        mean_probability = np.full(count, np.nan)
    else:
        values = probability.ravel()[foreground].astype(np.float64)
        mean_probability = np.bincount(ids, weights=values, minlength=count + 1)[1:] / voxels
        max_probability = np.full(count + 1, -np.inf)
        np.maximum.at(max_probability, ids, values)
        max_probability = max_probability[1:]

    return pd.DataFrame(
        {
            "id": np.arange(1, count + 1, dtype=np.int64),
            "voxels": voxels.astype(np.int64),
            "volume_mm3": voxels * voxel_volume,
            "centroid_x_mm": centroid_mm[:, 0],
            "centroid_y_mm": centroid_mm[:, 1],
            "centroid_z_mm": centroid_mm[:, 2],
            "max_probability": max_probability,
            "mean_probability": mean_probability,
        }
    )


def _column_dtype(name: str) -> str:
    return "int64" if name in ("id", "voxels") else "float64"
