"""Metrics of one case: a predicted and a reference mask (arrays) in, numbers out.

Voxel overlap (Dice, Jaccard), surface distances (95 % Hausdorff distance, average surface distance
and its symmetric version) and lesion-wise detection (sensitivity, positive predictive value, F1 and
false-positive lesions). The definitions are those of ``medpy.metric.binary``, which the CoactSeg
paper used, and of the MSSEG challenges' evaluator; ``docs/metrics.md`` states them, the policy for
empty masks, and how they differ from MONAI and MetricsReloaded.

Distances are in mm by default (the image spacing is used), or in voxels with ``units="voxel"``,
which reproduces the numbers of the paper's code. They are computed only on the box that holds
both masks, and with a k-d tree over the border voxels rather than a distance transform of the
whole volume, which gives medpy's values far faster.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from msnewlesion.errors import InputError, OptionError, parameter
from msnewlesion.lesions import (
    DEFAULT_ALPHA,
    DEFAULT_BETA,
    DEFAULT_GAMMA,
    DEFAULT_MIN_LESION_VOLUME_MM3,
    DetectionResult,
    LesionDetection,
    bounding_box,
    connectivity_structure,
    detect_lesions,
    detections_table,
    min_lesion_voxels,
)
from msnewlesion.settings import DISTANCE_UNITS, check_choice

__all__ = [
    "JSON_KEYS",
    "METRICS",
    "CaseResult",
    "EvaluationOptions",
    "evaluate_case",
    "lesion_details_table",
    "surface_distances",
]

METRICS = (
    "dice",
    "jaccard",
    "hd95",
    "asd",
    "assd",
    "lesion_sensitivity",
    "lesion_ppv",
    "lesion_f1",
    "n_ref_lesions",
    "n_pred_lesions",
    "n_fp_lesions",
    "fp_volume_mm3",
)
JSON_KEYS = ("case", *METRICS, "units")

# medpy takes the border as the mask minus its erosion by the 6-neighbourhood, whatever the lesion connectivity.
_BORDER_STRUCTURE = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class EvaluationOptions:
    """How a case is evaluated.

    Attributes
    ----------
    min_lesion_volume_mm3 : float
        Lesions of this volume or less are left out of the lesion-wise detection, in both masks
        (3 mm³ by default: 11 voxels on a 0.5×0.75×0.75 mm grid). 0 keeps every lesion.
    min_lesion_voxels : int, optional
        The same rule in voxels (lesions of fewer voxels are left out); overrides the volume.
    connectivity : {26, 6}
        Neighbourhood that joins voxels into a lesion: 26 as in the CoactSeg paper, 6 as in Anima.
    units : {"mm", "voxel"}
        Units of the surface distances. "voxel" ignores the spacing, as the paper's code did.
    alpha, beta, gamma : float
        Thresholds of the MSSEG detection rule (see :func:`msnewlesion.lesions.detect_lesions`).
    threshold : float, optional
        Mask files holding fractions (probability maps) are binarised at this value: voxels above it
        are lesion. Without it such a file is refused, since every voxel above 0 would count.

    Examples
    --------
    >>> EvaluationOptions(connectivity=6, units="voxel").min_voxels(0.5 * 0.75 * 0.75)
    11
    >>> EvaluationOptions(min_lesion_voxels=5).min_voxels(1.0)
    5
    """

    min_lesion_volume_mm3: float = DEFAULT_MIN_LESION_VOLUME_MM3
    min_lesion_voxels: int | None = None
    connectivity: int = 26
    units: str = "mm"
    alpha: float = DEFAULT_ALPHA
    beta: float = DEFAULT_BETA
    gamma: float = DEFAULT_GAMMA
    threshold: float | None = None

    def __post_init__(self) -> None:
        connectivity_structure(self.connectivity)  # raises on anything but 26 or 6
        check_choice("units", self.units, DISTANCE_UNITS)
        if not (math.isfinite(self.min_lesion_volume_mm3) and self.min_lesion_volume_mm3 >= 0):
            raise OptionError(f"the minimum lesion volume must be 0 or more mm³, got {self.min_lesion_volume_mm3}")
        if self.min_lesion_voxels is not None and self.min_lesion_voxels < 0:
            raise OptionError(f"the minimum lesion size must be 0 or more voxels, got {self.min_lesion_voxels}")
        for name in ("alpha", "beta", "gamma"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise OptionError(f"{name} must lie between 0 and 1, got {value}")
        if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise OptionError(f"{parameter('threshold')} must be a number ≥ 0, got {self.threshold}")

    def min_voxels(self, voxel_volume_mm3: float) -> int:
        """The smallest lesion kept, in voxels, for voxels of this volume."""
        if self.min_lesion_voxels is not None:
            return max(int(self.min_lesion_voxels), 1)
        return min_lesion_voxels(voxel_volume_mm3, self.min_lesion_volume_mm3)


@dataclass(frozen=True)
class CaseResult:
    """The evaluation of one case.

    Missing values are NaN and ``missing`` says why (for example an empty mask has no surface).

    Attributes
    ----------
    case : str
    dice, jaccard : float
        Voxel overlap of the masks as given (before the minimum lesion size); 1 when both are empty.
    hd95 : float
        95th percentile of the distances from each mask's border to the other's, both directions pooled.
    asd : float
        Mean distance from the prediction's border to the reference's (directed).
    assd : float
        Mean of the distances of both directions pooled.
    lesion_sensitivity : float
        Detected reference lesions / reference lesions.
    lesion_ppv : float
        Detected predicted lesions / predicted lesions.
    lesion_f1 : float
        Harmonic mean of the two; 0 when either is 0.
    n_ref_lesions, n_pred_lesions : int
        Lesions of at least ``min_lesion_voxels`` voxels in each mask.
    n_fp_lesions : int
        Predicted lesions that match no reference lesion (MSSEG-2's nFP on cases without new lesions).
    fp_volume_mm3 : float
        Their total volume (MSSEG-2's VFP).
    units : str
        Units of the distances, "mm" or "voxel".
    n_detected_ref_lesions, n_detected_pred_lesions : int
    ref_volume_mm3, pred_volume_mm3 : float
        Total volume of each mask as given.
    min_lesion_voxels : int
    connectivity : int
    spacing : tuple of float
        Voxel size in mm along each array axis.
    missing : dict
        Metric name → the reason it has no value.
    reference_lesions, predicted_lesions : tuple of LesionDetection
        The per-lesion detection results.
    prediction, reference : str, optional
        The files, when the case was read from files.
    """

    case: str
    dice: float
    jaccard: float
    hd95: float
    asd: float
    assd: float
    lesion_sensitivity: float
    lesion_ppv: float
    lesion_f1: float
    n_ref_lesions: int
    n_pred_lesions: int
    n_fp_lesions: int
    fp_volume_mm3: float
    units: str
    n_detected_ref_lesions: int
    n_detected_pred_lesions: int
    ref_volume_mm3: float
    pred_volume_mm3: float
    min_lesion_voxels: int
    connectivity: int
    spacing: tuple[float, float, float]
    missing: Mapping[str, str] = field(default_factory=dict, hash=False)
    reference_lesions: tuple[LesionDetection, ...] = field(default=(), repr=False)
    predicted_lesions: tuple[LesionDetection, ...] = field(default=(), repr=False)
    prediction: str | None = None
    reference: str | None = None

    @property
    def notes(self) -> str:
        """The reasons for missing values, in one line."""
        by_reason: dict[str, list[str]] = {}
        for name, reason in self.missing.items():
            by_reason.setdefault(reason, []).append(name)
        return "; ".join(f"{', '.join(names)} missing: {reason}" for reason, names in by_reason.items())

    def as_dict(self, *, lesions: bool = False) -> dict[str, Any]:
        """The result as plain JSON-ready values (missing values are None).

        The keys of :data:`JSON_KEYS` come first, then the details; ``lesions`` adds the
        per-lesion detection results.
        """
        payload: dict[str, Any] = {key: _plain(getattr(self, key)) for key in JSON_KEYS}
        payload.update(
            {
                "n_detected_ref_lesions": self.n_detected_ref_lesions,
                "n_detected_pred_lesions": self.n_detected_pred_lesions,
                "ref_volume_mm3": _plain(self.ref_volume_mm3),
                "pred_volume_mm3": _plain(self.pred_volume_mm3),
                "min_lesion_voxels": self.min_lesion_voxels,
                "connectivity": self.connectivity,
                "spacing": [float(s) for s in self.spacing],
                "missing": dict(self.missing),
                "prediction": self.prediction,
                "reference": self.reference,
            }
        )
        if lesions:
            payload["lesions"] = [
                {key: _plain(value) for key, value in row.items()}
                for row in lesion_details_table([self]).drop(columns=["case"]).to_dict("records")
            ]
        return payload


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _border_points(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    # Voxels outside the array count as background (scipy's border_value=0, as in medpy), so a
    # crop that holds the whole mask gives the same border as the full volume.
    border = mask & ~ndimage.binary_erosion(mask, structure=_BORDER_STRUCTURE, border_value=0)
    return np.argwhere(border) * spacing


def surface_distances(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each border voxel of one mask to the nearest border voxel of the other.

    The border of a mask is the mask minus its erosion by the 6-neighbourhood (voxels beyond the
    array count as background), as in ``medpy.metric.binary``.

    Parameters
    ----------
    prediction, reference : ndarray, 3D, same shape, not empty
        Voxels with a value above 0 are lesion.
    spacing : sequence of 3 floats
        Voxel size along each array axis; distances come in its units.

    Returns
    -------
    prediction_to_reference, reference_to_prediction : ndarray of float64
        One distance per border voxel of the first mask, then of the second.

    Raises
    ------
    InputError
        A mask is empty (it has no surface) or the shapes differ.

    Examples
    --------
    >>> reference = np.zeros((6, 6, 6), bool)
    >>> reference[1:3, 1:3, 1:3] = True
    >>> prediction = np.roll(reference, 2, axis=0)
    >>> forward, backward = surface_distances(prediction, reference, spacing=(2.0, 1.0, 1.0))
    >>> sorted(set(forward.tolist()))
    [2.0, 4.0]
    """
    predicted = np.asarray(prediction) > 0
    referenced = np.asarray(reference) > 0
    if predicted.shape != referenced.shape:
        raise InputError(f"prediction and reference differ in shape: {predicted.shape} vs {referenced.shape}")
    if not predicted.any() or not referenced.any():
        raise InputError("surface distances need two non-empty masks")
    if predicted.ndim != 3:
        raise InputError(f"masks must be 3D, got shape {predicted.shape}")
    spacing_array = np.asarray(_check_spacing(spacing), dtype=np.float64)
    box = bounding_box(predicted | referenced) or ()
    return _surface_distances_in_box(predicted[box], referenced[box], spacing_array)


def _surface_distances_in_box(
    predicted: np.ndarray, referenced: np.ndarray, spacing: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    # The nearest border voxel found by a k-d tree on mm coordinates is what medpy's Euclidean
    # distance transform finds, without transforming every voxel of the volume.
    prediction_points = _border_points(predicted, spacing)
    reference_points = _border_points(referenced, spacing)
    prediction_to_reference, _ = cKDTree(reference_points).query(prediction_points, k=1)
    reference_to_prediction, _ = cKDTree(prediction_points).query(reference_points, k=1)
    return np.asarray(prediction_to_reference, dtype=np.float64), np.asarray(reference_to_prediction, dtype=np.float64)


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise InputError(f"the spacing must be three positive numbers (mm per voxel), got {tuple(spacing)}")
    return values  # type: ignore[return-value]


def _harmonic_mean(sensitivity: float, ppv: float) -> float:
    if sensitivity == 0 or ppv == 0:
        return 0.0
    if math.isnan(sensitivity) or math.isnan(ppv):
        return math.nan
    return 2 * sensitivity * ppv / (sensitivity + ppv)


def evaluate_case(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: tuple[float, float, float],
    options: EvaluationOptions = EvaluationOptions(),
    case: str = "case",
) -> CaseResult:
    """Evaluate a predicted mask against a reference mask on the same grid.

    Parameters
    ----------
    prediction, reference : ndarray, 3D, same shape
        Voxels with a value above 0 are lesion.
    spacing : tuple of 3 floats
        Voxel size in mm along each array axis. Used for volumes and, with ``units="mm"``, distances.
    options : EvaluationOptions
    case : str
        A name for the case.

    Returns
    -------
    CaseResult

    Notes
    -----
    Empty masks: Dice and Jaccard are 1 when both masks are empty and 0 when only one is; the
    surface distances are missing (NaN, with the reason in ``missing``) when either is empty;
    sensitivity is missing when the reference has no lesion, PPV when the prediction has none,
    and F1 when neither has any (it is 0 when only one has lesions). ``n_fp_lesions`` and
    ``fp_volume_mm3`` are always defined; they are the scores of a case with no new lesion.

    Examples
    --------
    >>> reference = np.zeros((20, 20, 20), bool)
    >>> reference[5:10, 5:10, 5:10] = True
    >>> prediction = np.roll(reference, 1, axis=2)
    >>> result = evaluate_case(prediction, reference, spacing=(0.5, 0.75, 0.75))
    >>> round(result.dice, 3), result.hd95, result.lesion_f1, result.n_fp_lesions
    (0.8, 0.75, 1.0, 0)
    """
    spacing = _check_spacing(spacing)
    predicted = np.asarray(prediction)
    referenced = np.asarray(reference)
    if predicted.ndim != 3 or referenced.ndim != 3:
        raise InputError(f"masks must be 3D, got shapes {predicted.shape} and {referenced.shape}")
    if predicted.shape != referenced.shape:
        raise InputError(f"prediction and reference differ in shape: {predicted.shape} vs {referenced.shape}")
    predicted = predicted if predicted.dtype == bool else predicted > 0
    referenced = referenced if referenced.dtype == bool else referenced > 0

    voxel_volume = spacing[0] * spacing[1] * spacing[2]
    min_voxels = options.min_voxels(voxel_volume)
    box = bounding_box(predicted | referenced)
    offset = tuple(part.start for part in box) if box is not None else (0, 0, 0)
    # Everything below only needs the box that holds both masks (one voxel when both are empty).
    box = box if box is not None else (slice(0, 1),) * 3
    predicted = predicted[box]
    referenced = referenced[box]

    n_predicted = int(np.count_nonzero(predicted))
    n_referenced = int(np.count_nonzero(referenced))
    n_both = int(np.count_nonzero(predicted & referenced))
    if n_predicted + n_referenced == 0:
        dice = jaccard = 1.0
    else:
        dice = 2.0 * n_both / (n_predicted + n_referenced)
        jaccard = n_both / (n_predicted + n_referenced - n_both)

    missing: dict[str, str] = {}
    if n_predicted and n_referenced:
        distance_spacing = np.asarray(spacing if options.units == "mm" else (1.0, 1.0, 1.0))
        forward, backward = _surface_distances_in_box(predicted, referenced, distance_spacing)
        pooled = np.concatenate([forward, backward])
        hd95 = float(np.percentile(pooled, 95))
        asd = float(forward.mean())
        assd = float(pooled.mean())
    else:
        hd95 = asd = assd = math.nan
        if not n_predicted and not n_referenced:
            reason = "both masks are empty"
        elif not n_predicted:
            reason = "the prediction is empty"
        else:
            reason = "the reference is empty"
        for name in ("hd95", "asd", "assd"):
            missing[name] = reason

    detection = detect_lesions(
        predicted,
        referenced,
        min_voxels=min_voxels,
        connectivity=options.connectivity,
        voxel_volume_mm3=voxel_volume,
        alpha=options.alpha,
        beta=options.beta,
        gamma=options.gamma,
        offset=offset,
    )
    sensitivity, ppv, f1 = _detection_scores(detection, missing)
    false_positives = detection.false_positives

    return CaseResult(
        case=case,
        dice=dice,
        jaccard=jaccard,
        hd95=hd95,
        asd=asd,
        assd=assd,
        lesion_sensitivity=sensitivity,
        lesion_ppv=ppv,
        lesion_f1=f1,
        n_ref_lesions=detection.n_reference,
        n_pred_lesions=detection.n_prediction,
        n_fp_lesions=len(false_positives),
        fp_volume_mm3=float(sum(lesion.voxels for lesion in false_positives) * voxel_volume),
        units=options.units,
        n_detected_ref_lesions=detection.n_detected_reference,
        n_detected_pred_lesions=detection.n_detected_prediction,
        ref_volume_mm3=n_referenced * voxel_volume,
        pred_volume_mm3=n_predicted * voxel_volume,
        min_lesion_voxels=min_voxels,
        connectivity=options.connectivity,
        spacing=spacing,
        missing=missing,
        reference_lesions=detection.reference,
        predicted_lesions=detection.prediction,
    )


def _detection_scores(detection: DetectionResult, missing: dict[str, str]) -> tuple[float, float, float]:
    size_rule = f"of at least {detection.min_voxels} voxels"
    if detection.n_reference:
        sensitivity = detection.n_detected_reference / detection.n_reference
    else:
        sensitivity = math.nan
        missing["lesion_sensitivity"] = f"the reference has no lesion {size_rule}"
    if detection.n_prediction:
        ppv = detection.n_detected_prediction / detection.n_prediction
    else:
        ppv = math.nan
        missing["lesion_ppv"] = f"the prediction has no lesion {size_rule}"
    f1 = _harmonic_mean(sensitivity, ppv)
    if math.isnan(f1):
        missing["lesion_f1"] = f"neither mask has a lesion {size_rule}"
    return sensitivity, ppv, f1


def lesion_details_table(results: Sequence[CaseResult]) -> pd.DataFrame:
    """The per-lesion detection results of many cases, one row per lesion, with a ``case`` column.

    Examples
    --------
    >>> mask = np.zeros((8, 8, 8), bool)
    >>> mask[2:5, 2:5, 2:5] = True
    >>> lesion_details_table([evaluate_case(mask, mask, (1, 1, 1), case="a")])[["case", "mask", "detected"]].shape
    (2, 3)
    """
    frames = []
    for result in results:
        detection = DetectionResult(
            reference=result.reference_lesions,
            prediction=result.predicted_lesions,
            min_voxels=result.min_lesion_voxels,
            connectivity=result.connectivity,
        )
        frame = detections_table(detection)
        frame.insert(0, "case", result.case)
        frames.append(frame)
    if not frames:
        empty = detections_table(DetectionResult((), (), 1, 26))
        empty.insert(0, "case", pd.Series(dtype=object))
        return empty
    return pd.concat(frames, ignore_index=True)
