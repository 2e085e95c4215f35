"""Lesions as connected components: labelling, the minimum-size rule, lesion tables and detection.

A lesion is a connected component of a binary mask (every voxel with a label above 0 is lesion).
Components are found with 26-connectivity by default, as the CoactSeg code does; 6-connectivity
reproduces the MSSEG evaluator (Anima). Lesion ids follow :func:`label_lesions`: 1..n in the order
in which a raster scan of the array (last axis fastest) first meets each lesion.

Lesion-wise detection follows the rule of the MSSEG-2016 and MSSEG-2 challenges (Anima's
``animaSegPerfAnalyzer``), see :func:`detect_lesions` and ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage, sparse

from msnewlesion.errors import InputError

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_BETA",
    "DEFAULT_GAMMA",
    "DEFAULT_MIN_LESION_VOLUME_MM3",
    "DetectionResult",
    "LesionDetection",
    "connectivity_structure",
    "detect_lesions",
    "detections_table",
    "label_lesions",
    "largest_component",
    "lesion_table",
    "min_lesion_voxels",
    "remove_small_lesions",
]

DEFAULT_MIN_LESION_VOLUME_MM3 = 3.0
DEFAULT_ALPHA = 0.10
DEFAULT_BETA = 0.70
DEFAULT_GAMMA = 0.65

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
    binary = _as_binary_3d(mask)
    labels = np.zeros(binary.shape, dtype=np.int32)
    count = ndimage.label(binary, structure=connectivity_structure(connectivity), output=labels)
    return labels, int(count)


def largest_component(mask: np.ndarray, connectivity: int = 6) -> np.ndarray:
    """The largest connected component of a mask (all False when the mask is empty).

    Examples
    --------
    >>> mask = np.zeros((5, 5, 5), bool); mask[0, 0, 0] = True; mask[2:4, 2:4, 2:4] = True
    >>> int(largest_component(mask).sum())
    8
    """
    labels, count = label_lesions(mask, connectivity)
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


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


def _keep_large(labels: np.ndarray, count: int, min_voxels: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Drop components under ``min_voxels`` and renumber the others 1..m in their original order."""
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    kept = sizes >= max(min_voxels, 1)
    kept[0] = False
    if kept[1:].all():
        return labels, count, sizes[1:]
    new_ids = np.zeros(count + 1, dtype=np.int32)
    new_ids[kept] = np.arange(1, int(kept.sum()) + 1, dtype=np.int32)
    return new_ids[labels], int(kept.sum()), sizes[kept]


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
    labels, count = label_lesions(mask, connectivity)
    kept_labels, _, _ = _keep_large(labels, count, min_voxels)
    return kept_labels > 0


def lesion_table(
    mask: np.ndarray,
    affine: np.ndarray,
    probability: np.ndarray | None = None,
    connectivity: int = 26,
) -> pd.DataFrame:
    """One row per lesion: size, volume, centre in scanner coordinates and probabilities.

    Parameters
    ----------
    mask : ndarray, 3D
        Voxels with a value above 0 are lesion.
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
    labels, count = label_lesions(mask, connectivity)
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


# ---------------------------------------------------------------------------------------------
# lesion-wise detection


@dataclass(frozen=True)
class LesionDetection:
    """How one lesion of one mask fared against the lesions of the other mask.

    Attributes
    ----------
    id : int
        The lesion's id among the kept lesions of its mask (raster order, as :func:`label_lesions`
        numbers the mask once lesions under the minimum size are removed).
    voxels : int
        Its size.
    volume_mm3 : float
        Its volume.
    centroid_voxel : tuple of float
        Its centre in voxel indices (array order), to find it in a viewer.
    overlap_fraction : float
        The fraction of its voxels covered by lesions of the other mask (the α test).
    overlapping_ids : tuple of int
        The ids of the other mask's lesions that overlap it, largest overlap first.
    detected : bool
        Whether it passes the detection rule.
    """

    id: int
    voxels: int
    volume_mm3: float
    centroid_voxel: tuple[float, float, float]
    overlap_fraction: float
    overlapping_ids: tuple[int, ...]
    detected: bool


@dataclass(frozen=True)
class DetectionResult:
    """Lesion-wise detection of a prediction against a reference.

    Attributes
    ----------
    reference : tuple of LesionDetection
        One entry per reference lesion; ``detected`` means found by the prediction (a true positive).
    prediction : tuple of LesionDetection
        One entry per predicted lesion; ``detected`` means it matches the reference (not a false positive).
    min_voxels : int
        The minimum lesion size that was applied to both masks.
    connectivity : int
    """

    reference: tuple[LesionDetection, ...]
    prediction: tuple[LesionDetection, ...]
    min_voxels: int
    connectivity: int

    @property
    def n_reference(self) -> int:
        return len(self.reference)

    @property
    def n_prediction(self) -> int:
        return len(self.prediction)

    @property
    def n_detected_reference(self) -> int:
        return sum(lesion.detected for lesion in self.reference)

    @property
    def n_detected_prediction(self) -> int:
        return sum(lesion.detected for lesion in self.prediction)

    @property
    def false_positives(self) -> tuple[LesionDetection, ...]:
        """The predicted lesions that match no reference lesion."""
        return tuple(lesion for lesion in self.prediction if not lesion.detected)


@dataclass(frozen=True)
class _Overlaps:
    """The lesions of the other mask that overlap one lesion, largest overlap first (ties in id order)."""

    ids: np.ndarray
    voxels: np.ndarray
    outside_voxels: int  # voxels of the lesion outside every lesion of the other mask

    @property
    def covered(self) -> int:
        return int(self.voxels.sum())


def _overlaps_by_lesion(table: sparse.csr_matrix) -> list[_Overlaps]:
    """Row ``i`` of an overlap table (column 0 = the other mask's background) for every lesion ``i >= 1``."""
    found = []
    for row in range(1, table.shape[0]):
        columns = table.indices[table.indptr[row] : table.indptr[row + 1]]
        counts = table.data[table.indptr[row] : table.indptr[row + 1]]
        lesion = columns > 0
        ids, voxels = columns[lesion], counts[lesion]
        order = np.lexsort((ids, -voxels))
        found.append(_Overlaps(ids=ids[order], voxels=voxels[order], outside_voxels=int(counts[~lesion].sum())))
    return found


def _passes_detection_rule(
    overlaps: _Overlaps, outside_fraction_of_other: np.ndarray, alpha: float, beta: float, gamma: float
) -> bool:
    """Anima's test for one lesion; ``outside_fraction_of_other[k]``: how much of the other mask's lesion k
    lies outside every lesion of this mask."""
    covered = overlaps.covered
    size = covered + overlaps.outside_voxels
    if size == 0 or covered / size <= alpha:
        return False
    accounted = 0
    for other, voxels in zip(overlaps.ids, overlaps.voxels, strict=True):
        if accounted / covered >= gamma:
            break
        if outside_fraction_of_other[other] > beta:
            return False
        accounted += int(voxels)
    return True


def _lesion_entries(
    overlaps: list[_Overlaps],
    centroids: np.ndarray,
    voxel_volume: float,
    detected: list[bool],
) -> tuple[LesionDetection, ...]:
    entries = []
    for index, (lesion, is_detected) in enumerate(zip(overlaps, detected, strict=True), start=1):
        size = lesion.covered + lesion.outside_voxels
        entries.append(
            LesionDetection(
                id=index,
                voxels=size,
                volume_mm3=size * voxel_volume,
                centroid_voxel=tuple(float(c) for c in centroids[index - 1]),  # type: ignore[arg-type]
                overlap_fraction=lesion.covered / size,
                overlapping_ids=tuple(int(i) for i in lesion.ids),
                detected=bool(is_detected),
            )
        )
    return tuple(entries)


def _centroids(labels: np.ndarray, count: int, offset: Sequence[int]) -> np.ndarray:
    if count == 0:
        return np.zeros((0, 3))
    foreground = np.flatnonzero(labels)
    ids = labels.ravel()[foreground]
    sizes = np.bincount(ids, minlength=count + 1)[1:]
    coordinates = np.unravel_index(foreground, labels.shape)
    return np.stack(
        [
            np.bincount(ids, weights=axis, minlength=count + 1)[1:] / sizes + start
            for axis, start in zip(coordinates, offset, strict=True)
        ],
        axis=1,
    )


def detect_lesions(
    prediction: np.ndarray,
    reference: np.ndarray,
    *,
    min_voxels: int,
    connectivity: int = 26,
    voxel_volume_mm3: float = 1.0,
    alpha: float = DEFAULT_ALPHA,
    beta: float = DEFAULT_BETA,
    gamma: float = DEFAULT_GAMMA,
    offset: Sequence[int] = (0, 0, 0),
) -> DetectionResult:
    """Lesion-wise detection by the MSSEG rule (Anima's ``animaSegPerfAnalyzer``).

    Both masks are split into lesions and lesions of fewer than ``min_voxels`` voxels are removed
    from both. A reference lesion is detected when

    1. more than ``alpha`` of its voxels are covered by predicted lesions, and
    2. going through the predicted lesions that overlap it, largest overlap first, until they
       account for ``gamma`` of its covered voxels, none of them lies more than ``beta`` outside
       the reference (outside every reference lesion).

    The mirror test, with the roles swapped, tells which predicted lesions are detected; the others
    are false positives. Ties between equal overlaps are taken in id order.

    Parameters
    ----------
    prediction, reference : ndarray, 3D, same shape
        Voxels with a value above 0 are lesion.
    min_voxels : int
        Smallest lesion kept in either mask (see :func:`min_lesion_voxels`).
    connectivity : {26, 6}
    voxel_volume_mm3 : float
        Volume of one voxel, for the lesion volumes reported.
    alpha, beta, gamma : float
        The rule's thresholds (0.10, 0.70 and 0.65 in MSSEG-2).
    offset : sequence of 3 ints
        Added to the reported centroids: where ``prediction[0, 0, 0]`` lies in a larger volume
        when the masks are crops of it.

    Returns
    -------
    DetectionResult

    Examples
    --------
    >>> reference = np.zeros((10, 10, 10), bool)
    >>> reference[1:4, 1:4, 1:4] = True
    >>> reference[6:9, 6:9, 6:9] = True
    >>> prediction = np.zeros_like(reference)
    >>> prediction[1:4, 1:4, 2:5] = True  # finds the first lesion, misses the second
    >>> result = detect_lesions(prediction, reference, min_voxels=1)
    >>> result.n_detected_reference, result.n_reference, result.n_detected_prediction
    (1, 2, 1)
    """
    predicted = _as_binary_3d(prediction, "prediction")
    referenced = _as_binary_3d(reference, "reference")
    if predicted.shape != referenced.shape:
        raise InputError(f"prediction and reference differ in shape: {predicted.shape} vs {referenced.shape}")
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not 0.0 <= value <= 1.0:
            raise InputError(f"{name} must lie between 0 and 1, got {value}")

    reference_labels, n_reference, _ = _keep_large(*label_lesions(referenced, connectivity), min_voxels)
    prediction_labels, n_prediction, _ = _keep_large(*label_lesions(predicted, connectivity), min_voxels)

    # table[i, j]: voxels in reference lesion i and predicted lesion j; row and column 0 are background.
    # Sparse, because a noisy prediction can hold tens of thousands of lesions.
    either = np.flatnonzero((reference_labels > 0) | (prediction_labels > 0))
    pair_index = (
        reference_labels.ravel()[either].astype(np.int64) * (n_prediction + 1) + prediction_labels.ravel()[either]
    )
    pairs, counts = np.unique(pair_index, return_counts=True)
    rows, columns = np.divmod(pairs, n_prediction + 1)
    table = sparse.csr_matrix((counts, (rows, columns)), shape=(n_reference + 1, n_prediction + 1), dtype=np.int64)
    reference_overlaps = _overlaps_by_lesion(table)
    prediction_overlaps = _overlaps_by_lesion(table.T.tocsr())

    # How much of each lesion lies outside every lesion of the other mask (index 0 unused).
    prediction_outside = np.zeros(n_prediction + 1)
    prediction_outside[1:] = [o.outside_voxels / (o.covered + o.outside_voxels) for o in prediction_overlaps]
    reference_outside = np.zeros(n_reference + 1)
    reference_outside[1:] = [o.outside_voxels / (o.covered + o.outside_voxels) for o in reference_overlaps]

    reference_detected = [_passes_detection_rule(o, prediction_outside, alpha, beta, gamma) for o in reference_overlaps]
    prediction_detected = [
        _passes_detection_rule(o, reference_outside, alpha, beta, gamma) for o in prediction_overlaps
    ]
    return DetectionResult(
        reference=_lesion_entries(
            reference_overlaps, _centroids(reference_labels, n_reference, offset), voxel_volume_mm3, reference_detected
        ),
        prediction=_lesion_entries(
            prediction_overlaps,
            _centroids(prediction_labels, n_prediction, offset),
            voxel_volume_mm3,
            prediction_detected,
        ),
        min_voxels=int(min_voxels),
        connectivity=int(connectivity),
    )


def detections_table(detection: DetectionResult) -> pd.DataFrame:
    """The per-lesion detection results as a table, reference lesions first.

    Columns: ``mask`` ("reference" or "prediction"), ``id``, ``voxels``, ``volume_mm3``,
    ``centroid_i``, ``centroid_j``, ``centroid_k`` (voxel indices), ``overlap_fraction``,
    ``overlapping_ids`` (space-separated ids of the other mask's lesions), ``detected``.

    Examples
    --------
    >>> reference = np.zeros((6, 6, 6), bool)
    >>> reference[1:4, 1:4, 1:4] = True
    >>> detections_table(detect_lesions(reference, reference, min_voxels=1))[["mask", "id", "detected"]].values.tolist()
    [['reference', 1, True], ['prediction', 1, True]]
    """
    rows = [
        {
            "mask": mask,
            "id": lesion.id,
            "voxels": lesion.voxels,
            "volume_mm3": lesion.volume_mm3,
            "centroid_i": lesion.centroid_voxel[0],
            "centroid_j": lesion.centroid_voxel[1],
            "centroid_k": lesion.centroid_voxel[2],
            "overlap_fraction": lesion.overlap_fraction,
            "overlapping_ids": " ".join(str(i) for i in lesion.overlapping_ids),
            "detected": lesion.detected,
        }
        for mask, lesions in (("reference", detection.reference), ("prediction", detection.prediction))
        for lesion in lesions
    ]
    columns = [
        "mask",
        "id",
        "voxels",
        "volume_mm3",
        "centroid_i",
        "centroid_j",
        "centroid_k",
        "overlap_fraction",
        "overlapping_ids",
        "detected",
    ]
    return pd.DataFrame(rows, columns=columns)
