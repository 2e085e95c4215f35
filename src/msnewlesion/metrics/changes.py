"""Lesion changes scored lesion-wise: a predicted change-class map against a change reference.

The prediction is a ``lesion_changes.nii.gz`` (codes of :data:`msnewlesion.lesions.CHANGE_CODES`: 1 new,
2 enlarging, 3 stable, 4 shrinking, 5 resolved). The reference is one of two kinds
(:data:`REFERENCE_KINDS`):

``classes``
    a map with the same codes (what ``msnewlesion synth`` writes as ``lesion_changes.nii.gz``). Scored:
    ``new_or_enlarging`` (codes 1 and 2 in both maps: the trials' endpoint), and each class the reference
    holds, alone (code k in both maps).
``change``
    a plain change mask, any value above 0 a change of any kind, the classes not told apart (the LIT
    longitudinal database's ``gt.nii.gz``). Scored: ``changed`` (codes 1, 2, 4 and 5 of the prediction:
    every class but stable) against the reference.

Each score is :func:`msnewlesion.metrics.evaluate_case` on the two masks it selects, so it has every metric of
``msnewlesion evaluate`` (lesion-wise sensitivity, PPV and F1 by the MSSEG rule, Dice, distances).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from msnewlesion.errors import InputError, MsNewLesionError
from msnewlesion.io import check_same_grid, load_mask, read_voxels
from msnewlesion.lesions import CHANGE_CLASSES, CHANGE_CODES, CHANGE_GROUPS
from msnewlesion.metrics.case import CaseResult, EvaluationOptions, evaluate_case
from msnewlesion.metrics.cohort import CaseFailure, CasePair, case_name
from msnewlesion.progress import ProgressCallback, report
from msnewlesion.settings import CHANGE_REFERENCE_KINDS

__all__ = [
    "REFERENCE_KINDS",
    "change_scores",
    "evaluate_change_case",
    "evaluate_change_files",
    "evaluate_change_pairs",
    "score_of",
]

REFERENCE_KINDS = CHANGE_REFERENCE_KINDS
_VALID_CODES = (0, *CHANGE_CODES.values())


def _check_codes(codes: np.ndarray, what: str) -> np.ndarray:
    values = np.unique(codes)
    unknown = [v for v in values.tolist() if v not in _VALID_CODES]
    if unknown:
        shown = ", ".join(f"{v:g}" for v in unknown[:5])
        raise InputError(
            f"the {what} holds values ({shown}) that are not change classes (0, and 1 new … 5 resolved); "
            "give a lesion_changes map, or --reference-kind change for a plain change mask"
        )
    return codes.astype(np.uint8)


def _codes_of(names: Sequence[str]) -> list[int]:
    return [CHANGE_CODES[name] for name in names]


def change_scores(
    prediction: np.ndarray, reference: np.ndarray, reference_kind: str = "classes"
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The (predicted mask, reference mask) of every score, by its name.

    Parameters
    ----------
    prediction : ndarray, 3D
        Change-class codes (0..5).
    reference : ndarray, 3D
        Codes (``reference_kind="classes"``) or a change mask (``"change"``: above 0 is a change).
    reference_kind : {"classes", "change"}

    Examples
    --------
    >>> prediction = np.array([1, 2, 3, 4, 5, 0]).reshape(1, 1, 6)
    >>> reference = np.array([1, 1, 3, 0, 0, 0]).reshape(1, 1, 6)
    >>> {name: (int(p.sum()), int(r.sum())) for name, (p, r) in change_scores(prediction, reference).items()}
    {'new_or_enlarging': (2, 2), 'new': (1, 2), 'stable': (1, 1)}
    >>> list(change_scores(prediction, reference > 0, "change"))
    ['changed']
    """
    if reference_kind not in REFERENCE_KINDS:
        raise InputError(f"the reference kind must be one of {', '.join(REFERENCE_KINDS)}, got {reference_kind!r}")
    prediction = _check_codes(np.asarray(prediction), "prediction")
    reference = np.asarray(reference)
    if reference_kind == "change":
        changed = _codes_of(CHANGE_GROUPS["changed"])
        return {"changed": (np.isin(prediction, changed), reference > 0)}
    reference = _check_codes(reference, "reference")
    endpoint = _codes_of(CHANGE_GROUPS["new_or_enlarging"])
    scores = {"new_or_enlarging": (np.isin(prediction, endpoint), np.isin(reference, endpoint))}
    present = set(np.unique(reference).tolist())
    for name in CHANGE_CLASSES:
        if CHANGE_CODES[name] in present:
            scores[name] = (prediction == CHANGE_CODES[name], reference == CHANGE_CODES[name])
    return scores


def score_of(result: CaseResult) -> str:
    """The score a result of :func:`evaluate_change_case` is for (its case name ends in ``:score``)."""
    return result.case.rsplit(":", 1)[-1]


def evaluate_change_case(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: tuple[float, float, float],
    options: EvaluationOptions = EvaluationOptions(),
    case: str = "case",
    reference_kind: str = "classes",
) -> list[CaseResult]:
    """Every score of :func:`change_scores`, as a :class:`CaseResult` named ``<case>:<score>``.

    Examples
    --------
    >>> prediction = np.zeros((12, 12, 12), np.uint8); reference = np.zeros_like(prediction)
    >>> prediction[1:4, 1:4, 1:4] = reference[1:4, 1:4, 1:4] = 1      # a new lesion, found
    >>> prediction[6:9, 6:9, 6:9] = 2; reference[6:9, 6:9, 6:9] = 1   # a new lesion called enlarging
    >>> results = evaluate_change_case(prediction, reference, (1.0, 1.0, 1.0), case="pair")
    >>> [(r.case, r.lesion_f1) for r in results]
    [('pair:new_or_enlarging', 1.0), ('pair:new', 0.6666666666666666)]
    """
    return [
        evaluate_case(predicted, referenced, spacing, options, case=f"{case}:{name}")
        for name, (predicted, referenced) in change_scores(prediction, reference, reference_kind).items()
    ]


def evaluate_change_files(
    prediction_path: str | os.PathLike[str],
    reference_path: str | os.PathLike[str],
    options: EvaluationOptions = EvaluationOptions(),
    case: str | None = None,
    reference_kind: str = "classes",
) -> list[CaseResult]:
    """:func:`evaluate_change_case` on two NIfTI files on one grid.

    Raises
    ------
    InputError
        A file is missing or unreadable, or holds values that are not change classes.
    GeometryError
        The files are not on the same grid.
    """
    # load_mask checks the files (readable, 3D, no NaN, no negative values, no fractions) and gives the grid
    prediction = load_mask(prediction_path, what="prediction", allow_fractions=False)
    reference = load_mask(reference_path, what="reference", threshold=options.threshold, allow_fractions=False)
    check_same_grid(prediction, reference, what_a="prediction", what_b="reference")
    prediction_codes = np.asarray(read_voxels(prediction_path, what="prediction"))
    reference_values = (
        reference.data if options.threshold is not None else np.asarray(read_voxels(reference_path, what="reference"))
    )
    name = case if case is not None else case_name(Path(prediction_path))
    results = evaluate_change_case(
        np.rint(prediction_codes), np.rint(reference_values), reference.spacing, options, name, reference_kind
    )
    return [replace(r, prediction=str(prediction_path), reference=str(reference_path)) for r in results]


def evaluate_change_pairs(
    pairs: Sequence[CasePair],
    options: EvaluationOptions = EvaluationOptions(),
    *,
    reference_kind: str = "classes",
    progress: ProgressCallback | None = None,
) -> tuple[list[CaseResult], list[CaseFailure]]:
    """:func:`evaluate_change_files` on many cases; a case that cannot be read is a failure, the others go on."""
    if reference_kind not in REFERENCE_KINDS:
        raise InputError(f"the reference kind must be one of {', '.join(REFERENCE_KINDS)}, got {reference_kind!r}")
    results: list[CaseResult] = []
    failures: list[CaseFailure] = []
    report(progress, "evaluating", 0, len(pairs))
    for done, pair in enumerate(pairs, start=1):
        try:
            results += evaluate_change_files(pair.prediction, pair.reference, options, pair.case, reference_kind)
        except MsNewLesionError as error:
            failures.append(CaseFailure(pair.case, pair.prediction, pair.reference, str(error)))
        report(progress, "evaluating", done, len(pairs))
    return results, failures
