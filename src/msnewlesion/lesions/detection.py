"""Lesion-wise detection by the rule of the MSSEG-2016 and MSSEG-2 challenges (Anima's ``animaSegPerfAnalyzer``).

See :func:`detect_lesions` and ``docs/metrics.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from msnewlesion.errors import InputError
from msnewlesion.lesions.components import _as_binary_3d, components

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_BETA",
    "DEFAULT_GAMMA",
    "DetectionResult",
    "LesionDetection",
    "detect_lesions",
    "detections_table",
]

DEFAULT_ALPHA = 0.10
DEFAULT_BETA = 0.70
DEFAULT_GAMMA = 0.65

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

    reference_found = components(referenced, connectivity).without_small(min_voxels)
    prediction_found = components(predicted, connectivity).without_small(min_voxels)
    reference_labels, n_reference = reference_found.labels, reference_found.count
    prediction_labels, n_prediction = prediction_found.labels, prediction_found.count

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
