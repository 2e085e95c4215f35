"""Many cases: matching predictions with references, evaluating a cohort, summaries and writers.

Cases come from two folders matched by file name (:func:`pairs_from_directories`) or from a CSV
(:func:`pairs_from_csv`); :func:`evaluate_pairs` evaluates each (a case that fails is reported, not
raised), :func:`summarise` averages them, and the writers give the CSV and JSON files of
``msnewlesion evaluate``. The metrics themselves are :mod:`msnewlesion.metrics.case`'s.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msnewlesion.errors import InputError, MsNewLesionError
from msnewlesion.io import NIFTI_SUFFIXES, check_same_grid, load_mask, write_text
from msnewlesion.metrics.case import (
    METRICS,
    CaseResult,
    EvaluationOptions,
    _plain,
    evaluate_case,
    lesion_details_table,
)
from msnewlesion.progress import ProgressCallback, report

__all__ = [
    "CSV_COLUMNS",
    "CaseFailure",
    "CasePair",
    "case_name",
    "evaluate_files",
    "evaluate_pairs",
    "pairs_from_csv",
    "pairs_from_directories",
    "results_payload",
    "results_table",
    "summarise",
    "write_lesion_details_csv",
    "write_results_csv",
]

CSV_COLUMNS = (
    "case",
    *METRICS,
    "units",
    "n_detected_ref_lesions",
    "n_detected_pred_lesions",
    "ref_volume_mm3",
    "pred_volume_mm3",
    "min_lesion_voxels",
    "connectivity",
    "prediction",
    "reference",
    "notes",
    "error",
)


@dataclass(frozen=True)
class CasePair:
    """A prediction and the reference it is compared with."""

    case: str
    prediction: Path
    reference: Path


@dataclass(frozen=True)
class CaseFailure:
    """A case that could not be evaluated, and why."""

    case: str
    prediction: Path | None
    reference: Path | None
    error: str


def evaluate_files(
    prediction_path: str | os.PathLike[str],
    reference_path: str | os.PathLike[str],
    options: EvaluationOptions = EvaluationOptions(),
    case: str | None = None,
) -> CaseResult:
    """Evaluate a predicted mask file against a reference mask file.

    Every voxel with a label above 0 is lesion (label values are not told apart); negative, NaN or
    infinite values are refused, and so are fractions (a probability map) unless ``options.threshold``
    says where to cut. Both files must share a grid (shape, and affine to 1e-3 mm).

    Parameters
    ----------
    prediction_path, reference_path : path-like
        NIfTI masks.
    options : EvaluationOptions
    case : str, optional
        Defaults to the prediction's file name without its extension.

    Returns
    -------
    CaseResult
        With ``prediction`` and ``reference`` set to the paths.

    Raises
    ------
    InputError
        A file is missing or unreadable, or not a mask (fractions without ``options.threshold``).
    GeometryError
        The masks are not on the same grid; the message describes both grids.

    Examples
    --------
    >>> result = evaluate_files("pred/sub-01.nii.gz", "gt/sub-01.nii.gz")  # doctest: +SKIP
    >>> result.dice, result.hd95, result.units  # doctest: +SKIP
    (0.71, 2.24, 'mm')
    """
    prediction = load_mask(prediction_path, what="prediction", threshold=options.threshold, allow_fractions=False)
    reference = load_mask(reference_path, what="reference", threshold=options.threshold, allow_fractions=False)
    check_same_grid(prediction, reference, what_a="prediction", what_b="reference")
    name = case if case is not None else case_name(Path(prediction_path))
    result = evaluate_case(prediction.data, reference.data, reference.spacing, options, case=name)
    return replace(result, prediction=str(prediction_path), reference=str(reference_path))


def case_name(path: str | os.PathLike[str]) -> str:
    """A case's name from its file: the file name without ``.nii.gz`` or ``.nii``.

    Examples
    --------
    >>> case_name("predictions/sub-01_ses-02.nii.gz")
    'sub-01_ses-02'
    """
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _nifti_files(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"{what} folder not found: {folder}")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or not path.name.endswith(NIFTI_SUFFIXES):
            continue
        name = case_name(path)
        if name in found:
            raise InputError(f"{what} folder {folder} holds both {found[name].name} and {path.name}: keep one per case")
        found[name] = path
    return found


def pairs_from_directories(
    prediction_dir: str | os.PathLike[str], reference_dir: str | os.PathLike[str]
) -> tuple[list[CasePair], list[CaseFailure], list[Path]]:
    """Match the NIfTI files of two folders by file name (``.nii`` and ``.nii.gz`` match each other).

    Parameters
    ----------
    prediction_dir, reference_dir : path-like

    Returns
    -------
    pairs : list of CasePair
        One per reference file that has a prediction, in file-name order.
    failures : list of CaseFailure
        One per reference file without a prediction (a case that cannot be evaluated).
    unmatched_predictions : list of Path
        Predictions without a reference (not cases; worth a warning).

    Raises
    ------
    InputError
        A folder is missing, or the reference folder holds no NIfTI file.

    Examples
    --------
    >>> pairs, failures, extra = pairs_from_directories("predictions", "ground_truth")  # doctest: +SKIP
    """
    prediction_dir, reference_dir = Path(prediction_dir), Path(reference_dir)
    predictions = _nifti_files(prediction_dir, "prediction")
    references = _nifti_files(reference_dir, "reference")
    if not references:
        raise InputError(f"no NIfTI file (.nii or .nii.gz) in the reference folder {reference_dir}")
    pairs = [CasePair(name, predictions[name], path) for name, path in references.items() if name in predictions]
    failures = [
        CaseFailure(name, None, path, f"no prediction named {name}.nii.gz or {name}.nii in {prediction_dir}")
        for name, path in references.items()
        if name not in predictions
    ]
    unmatched = [path for name, path in predictions.items() if name not in references]
    return pairs, failures, unmatched


_PREDICTION_HEADERS = ("prediction", "pred", "predicted", "segmentation")
_REFERENCE_HEADERS = ("reference", "gt", "ground_truth", "truth", "label")


def pairs_from_csv(path: str | os.PathLike[str]) -> list[CasePair]:
    """Read the cases to evaluate from a CSV file.

    The file has a header row with a prediction column (``prediction`` or ``pred``), a reference
    column (``reference``, ``gt`` or ``ground_truth``) and optionally ``case``. Relative paths are
    taken relative to the CSV file's folder. Without a ``case`` column cases are named after the
    prediction files.

    Raises
    ------
    InputError
        The file is missing, lacks a column, has an empty cell, or names a case twice.

    Examples
    --------
    A file such as::

        case,prediction,reference
        sub-01,out/sub-01_new.nii.gz,/data/gt/sub-01.nii.gz

    >>> pairs = pairs_from_csv("pairs.csv")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"pairs file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"could not read the pairs file {path}: {error}") from None
    reader = csv.DictReader(io.StringIO(text))
    headers = {name.strip().lower(): name for name in (reader.fieldnames or []) if name}

    def column(options: Sequence[str], what: str) -> str:
        for option in options:
            if option in headers:
                return headers[option]
        raise InputError(
            f"the pairs file {path} needs a {what} column named {' or '.join(options[:3])} "
            f"(its header is: {', '.join(headers.values()) or 'empty'})"
        )

    prediction_column = column(_PREDICTION_HEADERS, "prediction")
    reference_column = column(_REFERENCE_HEADERS, "reference")
    case_column = headers.get("case")
    pairs: list[CasePair] = []
    seen: set[str] = set()
    for line, row in enumerate(reader, start=2):
        values = {key: (row.get(key) or "").strip() for key in (prediction_column, reference_column)}
        if not any(values.values()) and not (case_column and (row.get(case_column) or "").strip()):
            continue
        if not all(values.values()):
            raise InputError(f"{path}, line {line}: both a prediction and a reference path are needed")
        prediction = _relative_to(Path(values[prediction_column]), path.parent)
        reference = _relative_to(Path(values[reference_column]), path.parent)
        case = (row.get(case_column) or "").strip() if case_column else ""
        case = case or case_name(prediction)
        if case in seen:
            raise InputError(f"{path}, line {line}: the case {case!r} appears twice; give each case its own name")
        seen.add(case)
        pairs.append(CasePair(case, prediction, reference))
    if not pairs:
        raise InputError(f"the pairs file {path} lists no case")
    return pairs


def _relative_to(path: Path, folder: Path) -> Path:
    return path if path.is_absolute() else folder / path


def evaluate_pairs(
    pairs: Sequence[CasePair],
    options: EvaluationOptions = EvaluationOptions(),
    *,
    progress: ProgressCallback | None = None,
) -> tuple[list[CaseResult], list[CaseFailure]]:
    """Evaluate many cases; a case that cannot be read is recorded as a failure, the others go on.

    Parameters
    ----------
    pairs : sequence of CasePair
    options : EvaluationOptions
    progress : ProgressCallback, optional
        Called with stage "evaluating" after each case.

    Returns
    -------
    results : list of CaseResult
    failures : list of CaseFailure
        The cases whose files are missing, unreadable or on different grids, with the message.

    Examples
    --------
    >>> results, failures = evaluate_pairs(pairs_from_csv("pairs.csv"))  # doctest: +SKIP
    >>> summarise(results)["mean"]["dice"]  # doctest: +SKIP
    0.64
    """
    results: list[CaseResult] = []
    failures: list[CaseFailure] = []
    report(progress, "evaluating", 0, len(pairs))
    for done, pair in enumerate(pairs, start=1):
        try:
            results.append(evaluate_files(pair.prediction, pair.reference, options, case=pair.case))
        except MsNewLesionError as error:
            failures.append(CaseFailure(pair.case, pair.prediction, pair.reference, str(error)))
        report(progress, "evaluating", done, len(pairs))
    return results, failures


def summarise(results: Sequence[CaseResult]) -> dict[str, Any]:
    """Means over cases, and how many cases each mean covers.

    A metric missing in a case (an empty mask has no surface distance) is left out of its mean,
    so ``n[metric]`` can be below ``n_cases``. Cases whose reference has no lesion are also
    summarised apart by their false-positive lesions, as MSSEG-2 scores them.

    Parameters
    ----------
    results : sequence of CaseResult

    Returns
    -------
    dict
        ``n_cases``; ``units``; ``mean`` and ``n`` (metric → mean, metric → cases covered);
        ``total`` (lesion counts and false-positive volume summed over cases); ``empty_reference``
        (``n_cases``, ``mean_n_fp_lesions``, ``mean_fp_volume_mm3`` over cases without reference lesion).
        Missing means are NaN.

    Examples
    --------
    >>> empty = np.zeros((8, 8, 8), bool)
    >>> lesion = empty.copy()
    >>> lesion[2:5, 2:5, 2:5] = True
    >>> summary = summarise([evaluate_case(lesion, lesion, (1, 1, 1)), evaluate_case(lesion, empty, (1, 1, 1))])
    >>> summary["mean"]["dice"], summary["n"]["dice"], summary["n"]["hd95"]
    (0.5, 2, 1)
    """
    mean: dict[str, float] = {}
    count: dict[str, int] = {}
    for metric in METRICS:
        values = np.array([float(getattr(result, metric)) for result in results], dtype=np.float64)
        defined = values[np.isfinite(values)]
        count[metric] = int(defined.size)
        mean[metric] = float(defined.mean()) if defined.size else math.nan
    empty_reference = [result for result in results if result.n_ref_lesions == 0]
    units = sorted({result.units for result in results})
    return {
        "n_cases": len(results),
        "units": units[0] if len(units) == 1 else ",".join(units),
        "mean": mean,
        "n": count,
        "total": {
            "n_ref_lesions": int(sum(result.n_ref_lesions for result in results)),
            "n_pred_lesions": int(sum(result.n_pred_lesions for result in results)),
            "n_fp_lesions": int(sum(result.n_fp_lesions for result in results)),
            "fp_volume_mm3": float(sum(result.fp_volume_mm3 for result in results)),
        },
        "empty_reference": {
            "n_cases": len(empty_reference),
            "mean_n_fp_lesions": (
                float(np.mean([result.n_fp_lesions for result in empty_reference])) if empty_reference else math.nan
            ),
            "mean_fp_volume_mm3": (
                float(np.mean([result.fp_volume_mm3 for result in empty_reference])) if empty_reference else math.nan
            ),
        },
    }


def results_payload(
    results: Sequence[CaseResult], failures: Iterable[CaseFailure] = (), *, lesions: bool = False
) -> dict[str, Any]:
    """Everything about an evaluation as JSON-ready values (missing values are None).

    Returns
    -------
    dict
        ``cases`` (one :meth:`CaseResult.as_dict` per case), ``summary`` (:func:`summarise`, plus
        ``note``, how many cases each mean covers, in words) and ``failed`` (case, files and error of
        each case that could not be evaluated).

    Examples
    --------
    >>> mask = np.zeros((8, 8, 8), bool)
    >>> payload = results_payload([evaluate_case(mask, mask, (1, 1, 1), case="a")])
    >>> payload["cases"][0]["dice"], payload["cases"][0]["hd95"], payload["summary"]["n"]["hd95"]
    (1.0, None, 0)
    """
    summary = summarise(results)
    summary["note"] = _coverage_note(summary)
    return {
        "cases": [result.as_dict(lesions=lesions) for result in results],
        "summary": _json_ready(summary),
        "failed": [
            {
                "case": failure.case,
                "prediction": str(failure.prediction) if failure.prediction else None,
                "reference": str(failure.reference) if failure.reference else None,
                "error": failure.error,
            }
            for failure in failures
        ],
    }


def _json_ready(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    return _plain(value)


def _coverage_note(summary: Mapping[str, Any]) -> str:
    total = summary["n_cases"]
    partial = [f"{metric} over {n}" for metric, n in summary["n"].items() if n != total]
    note = f"mean over {total} case{'s' if total != 1 else ''}"
    return note + (f" ({', '.join(partial)})" if partial else "")


def results_table(results: Sequence[CaseResult], failures: Iterable[CaseFailure] = ()) -> pd.DataFrame:
    """One row per case (failed cases included, with their error), then a row of means.

    The mean row has ``case`` "mean" and says in ``notes`` how many cases each mean covers.

    Examples
    --------
    >>> mask = np.zeros((8, 8, 8), bool)
    >>> mask[2:5, 2:5, 2:5] = True
    >>> table = results_table([evaluate_case(mask, mask, (1, 1, 1), case="a")])
    >>> table["case"].tolist(), table["dice"].tolist()
    (['a', 'mean'], [1.0, 1.0])
    """
    rows: list[dict[str, Any]] = []
    for result in results:
        row = {column: getattr(result, column, None) for column in CSV_COLUMNS}
        row["notes"] = result.notes
        row["error"] = ""
        rows.append(row)
    for failure in failures:
        row = dict.fromkeys(CSV_COLUMNS)
        row.update(
            case=failure.case,
            prediction=str(failure.prediction) if failure.prediction else "",
            reference=str(failure.reference) if failure.reference else "",
            notes="",
            error=failure.error,
        )
        rows.append(row)
    summary = summarise(results)
    mean_row: dict[str, Any] = dict.fromkeys(CSV_COLUMNS)
    mean_row.update(summary["mean"])
    mean_row.update(case="mean", units=summary["units"], notes=_coverage_note(summary), error="")
    rows.append(mean_row)
    table = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    for metric in METRICS:
        table[metric] = pd.to_numeric(table[metric], errors="coerce")
    return table


def write_results_csv(
    path: str | os.PathLike[str], results: Sequence[CaseResult], failures: Iterable[CaseFailure] = ()
) -> Path:
    """Write :func:`results_table` as CSV, atomically (missing values are empty cells).

    Examples
    --------
    >>> write_results_csv("results.csv", results, failures)  # doctest: +SKIP
    """
    text = results_table(results, failures).to_csv(index=False, float_format="%.10g", lineterminator="\n")
    return write_text(path, text)


def write_lesion_details_csv(path: str | os.PathLike[str], results: Sequence[CaseResult]) -> Path:
    """Write :func:`lesion_details_table` as CSV, atomically.

    Examples
    --------
    >>> write_lesion_details_csv("lesions.csv", results)  # doctest: +SKIP
    """
    text = lesion_details_table(results).to_csv(index=False, float_format="%.10g", lineterminator="\n")
    return write_text(path, text)
