"""Evaluation of predicted lesion masks against reference masks.

- :mod:`msnewlesion.metrics.case`: the metrics of one case, arrays in and numbers out (voxel
  overlap, surface distances, lesion-wise detection).
- :mod:`msnewlesion.metrics.cohort`: many cases: files matched by name or listed in a CSV, a
  cohort evaluated case by case, summaries, and the CSV and JSON writers.
- :mod:`msnewlesion.metrics.changes`: lesion changes (new, enlarging, …) scored against a change
  reference (``msnewlesion evaluate --classes``).

``docs/metrics.md`` states the definitions, the policy for empty masks, and how they differ from
MONAI and MetricsReloaded.
"""

from msnewlesion.metrics.case import (
    JSON_KEYS,
    METRICS,
    CaseResult,
    EvaluationOptions,
    evaluate_case,
    lesion_details_table,
    surface_distances,
)
from msnewlesion.metrics.changes import (
    REFERENCE_KINDS,
    change_scores,
    evaluate_change_case,
    evaluate_change_files,
    evaluate_change_pairs,
    score_of,
)
from msnewlesion.metrics.cohort import (
    CSV_COLUMNS,
    CaseFailure,
    CasePair,
    case_name,
    evaluate_files,
    evaluate_pairs,
    pairs_from_csv,
    pairs_from_directories,
    results_payload,
    results_table,
    summarise,
    write_lesion_details_csv,
    write_results_csv,
)

__all__ = [
    "CSV_COLUMNS",
    "JSON_KEYS",
    "METRICS",
    "REFERENCE_KINDS",
    "CaseFailure",
    "CasePair",
    "CaseResult",
    "EvaluationOptions",
    "case_name",
    "change_scores",
    "evaluate_case",
    "evaluate_change_case",
    "evaluate_change_files",
    "evaluate_change_pairs",
    "evaluate_files",
    "evaluate_pairs",
    "lesion_details_table",
    "pairs_from_csv",
    "pairs_from_directories",
    "results_payload",
    "results_table",
    "score_of",
    "summarise",
    "surface_distances",
    "write_lesion_details_csv",
    "write_results_csv",
]
