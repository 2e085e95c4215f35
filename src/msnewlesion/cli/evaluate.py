"""``msnewlesion evaluate``: compare predicted lesion masks with reference masks."""

import json
import math
from pathlib import Path
from typing import Any, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from msnewlesion.cli.common import choice, cli_errors, console, err_console, fail, progress_bars, warn
from msnewlesion.errors import InputError
from msnewlesion.settings import CHANGE_REFERENCE_KINDS, CONNECTIVITIES, DISTANCE_UNITS


@cli_errors
def evaluate(
    prediction: Optional[Path] = typer.Argument(
        None, metavar="PRED", help="Predicted mask (NIfTI). Give it with GT, or use --pred-dir/--gt-dir or --pairs."
    ),
    reference: Optional[Path] = typer.Argument(None, metavar="GT", help="Reference (ground-truth) mask (NIfTI)."),
    pred_dir: Optional[Path] = typer.Option(
        None, "--pred-dir", help="Folder of predicted masks, matched to --gt-dir by file name (.nii = .nii.gz)."
    ),
    gt_dir: Optional[Path] = typer.Option(None, "--gt-dir", help="Folder of reference masks; one case per file."),
    pairs: Optional[Path] = typer.Option(
        None,
        "--pairs",
        help="CSV file with columns prediction, reference and optionally case (paths relative to the CSV's folder).",
    ),
    min_lesion_volume: float = typer.Option(
        3.0,
        "--min-lesion-volume",
        min=0.0,
        help="Lesions of this volume (mm³) or less are left out of the lesion-wise scores, in both masks: "
        "floor(v / voxel volume) + 1 voxels are needed (11 on a 0.5×0.75×0.75 mm grid). 0 keeps every lesion.",
    ),
    min_lesion_voxels: Optional[int] = typer.Option(
        None, "--min-lesion-voxels", min=0, help="The same rule in voxels: lesions of fewer voxels are left out."
    ),
    connectivity: str = typer.Option(
        "26",
        "--connectivity",
        **choice(CONNECTIVITIES),
        help="Voxels touching by a face, edge or corner (26, as in the CoactSeg paper) or by a face only "
        "(6, as in the MSSEG evaluator Anima) belong to one lesion.",
    ),
    units: str = typer.Option(
        "mm",
        "--units",
        **choice(DISTANCE_UNITS),
        help="Distances in mm (using the image spacing) or in voxels (as the paper reported).",
    ),
    threshold: Optional[float] = typer.Option(
        None,
        "--threshold",
        min=0.0,
        help="Binarise masks that hold fractions (probability maps): voxels above this value are lesion. "
        "Without it such a file is refused.",
    ),
    classes: bool = typer.Option(
        False,
        "--classes",
        help="PRED is a lesion_changes map (1 new, 2 enlarging, 3 stable, 4 shrinking, 5 resolved): score "
        "new-or-enlarging and each class the reference holds, lesion-wise (docs/metrics.md).",
    ),
    reference_kind: str = typer.Option(
        "classes",
        "--reference-kind",
        **choice(CHANGE_REFERENCE_KINDS),
        help="With --classes: classes (GT holds the same codes, as synth writes) or change (GT is a plain "
        "change mask, every value above 0 a change of any class: scored against every class but stable).",
    ),
    output: Optional[Path] = typer.Option(
        None, "-o", "--output", help="Write a CSV: one row per case, then a row of means."
    ),
    lesions_csv: Optional[Path] = typer.Option(
        None, "--lesions-csv", help="Write a CSV of the per-lesion detection results of every case."
    ),
    json_output: bool = typer.Option(
        False, "--json", help="Print the results as JSON on stdout (the table then goes to stderr)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No table and no progress bar."),
) -> None:
    """Score predicted lesion masks against reference masks: Dice, distances and lesion-wise detection.

    Every voxel with a label above 0 is lesion, in both masks; both masks must share a grid. A mask
    holding fractions (a probability map) is refused unless `--threshold` says where to cut it.

    * Dice and Jaccard on the masks as given (1 when both are empty).
    * HD95, ASD (prediction → reference) and ASSD as medpy defines them, in mm by default
      (`--units voxel` gives the paper's voxel numbers); missing, with the reason, when a mask is empty.
    * Lesion-wise sensitivity, PPV and F1 by the MSSEG rule (α 0.10, β 0.70, γ 0.65), after
      removing lesions at or under `--min-lesion-volume` from both masks; and the number and volume
      of false-positive lesions, the scores of a case with no new lesion.

    Means say how many cases they cover. Exit code 0 only when every case was evaluated.
    Definitions: docs/metrics.md.

    **Example**

        msnewlesion evaluate out/sub-01_new-lesions.nii.gz gt/sub-01.nii.gz

        msnewlesion evaluate --pred-dir predictions --gt-dir ground_truth -o results.csv

        msnewlesion evaluate --pairs pairs.csv --units voxel --connectivity 6 --json > results.json

        msnewlesion evaluate --classes out/lesion_changes.nii.gz synthetic/pair000/lesion_changes.nii.gz
    """
    from msnewlesion.io import check_outputs_free
    from msnewlesion.metrics import (
        CaseFailure,
        CasePair,
        EvaluationOptions,
        case_name,
        evaluate_change_pairs,
        evaluate_pairs,
        pairs_from_csv,
        pairs_from_directories,
        results_payload,
        score_of,
        summarise,
        write_lesion_details_csv,
        write_results_csv,
    )

    options = EvaluationOptions(
        min_lesion_volume_mm3=min_lesion_volume,
        min_lesion_voxels=min_lesion_voxels,
        connectivity=int(connectivity),
        units=units,
        threshold=threshold,
    )
    single = prediction is not None or reference is not None
    folders = pred_dir is not None or gt_dir is not None
    if sum((single, folders, pairs is not None)) != 1:
        raise InputError(
            "give the cases one way: PRED GT, or --pred-dir and --gt-dir, or --pairs FILE.csv "
            "(see msnewlesion evaluate --help)"
        )
    failures: list[CaseFailure] = []
    if single:
        if prediction is None or reference is None:
            raise InputError("give both masks: msnewlesion evaluate PRED GT")
        case_pairs = [CasePair(case_name(prediction), prediction, reference)]
    elif folders:
        if pred_dir is None or gt_dir is None:
            raise InputError("--pred-dir and --gt-dir go together: give both folders")
        case_pairs, failures, unmatched = pairs_from_directories(pred_dir, gt_dir)
        for path in unmatched:
            warn(f"{path.name} in {pred_dir} has no reference in {gt_dir}; it is not evaluated")
    else:
        assert pairs is not None
        case_pairs = pairs_from_csv(pairs)

    outputs = [path for path in (output, lesions_csv) if path is not None]
    inputs = [path for pair in case_pairs for path in (pair.prediction, pair.reference)]
    check_outputs_free(outputs, inputs=inputs, overwrite=overwrite)
    if output is not None and lesions_csv is not None and output.resolve() == lesions_csv.resolve():
        raise InputError("-o and --lesions-csv must be different files")

    if reference_kind != "classes" and not classes:
        raise InputError("--reference-kind goes with --classes: add --classes to score lesion changes")
    with progress_bars(enabled=not quiet and len(case_pairs) > 1) as progress:
        if classes:
            results, evaluation_failures = evaluate_change_pairs(
                case_pairs, options, reference_kind=reference_kind, progress=progress
            )
        else:
            results, evaluation_failures = evaluate_pairs(case_pairs, options, progress=progress)
    failures.extend(evaluation_failures)
    if single and failures:
        raise fail(failures[0].error)

    if output is not None:
        write_results_csv(output, results, failures)
    if lesions_csv is not None:
        try:
            write_lesion_details_csv(lesions_csv, results)
        except OSError:  # a full disk: one CSV without the other is no result
            if output is not None:
                output.unlink(missing_ok=True)
            raise
    if json_output:
        typer.echo(json.dumps(results_payload(results, failures), indent=2, ensure_ascii=False, allow_nan=False))
    if not quiet:
        screen = err_console if json_output else console
        if classes:
            # One table per score: a mean over different classes would mean nothing.
            for score in dict.fromkeys(score_of(result) for result in results):
                chosen = [result for result in results if score_of(result) == score]
                _print_table(screen, chosen, summarise(chosen), units, heading=score)
        else:
            _print_table(screen, results, summarise(results), units)
        for written, what in ((output, "results"), (lesions_csv, "per-lesion results")):
            if written is not None:
                err_console.print(f"{what} written to {escape(str(written))}", highlight=False)

    for failure in failures:
        err_console.print(f"[bold red]error:[/] {escape(failure.case)}: {escape(failure.error)}", soft_wrap=True)
    if failures:
        total = len(results) + len(failures)
        raise fail(f"{len(failures)} of {total} cases could not be evaluated (see above)")


# Jaccard is left off the screen (it follows from Dice) to fit 80 columns; the CSV and JSON have it.
_COLUMNS = (
    ("dice", "Dice", 3),
    ("hd95", "HD95", 2),
    ("asd", "ASD", 2),
    ("assd", "ASSD", 2),
    ("lesion_sensitivity", "sens", 2),
    ("lesion_ppv", "PPV", 2),
    ("lesion_f1", "F1", 2),
)


def _number(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "[dim]–[/]"
    return f"{value:.{digits}f}"


def _count(value: float, mean: bool) -> str:
    return f"{value:.1f}" if mean else str(int(value))


def _lesion_cells(values: Any, mean: bool) -> tuple[str, str]:
    lesions = f"{_count(values['n_ref_lesions'], mean)}/{_count(values['n_pred_lesions'], mean)}"
    false_positives = f"{_count(values['n_fp_lesions'], mean)}/{values['fp_volume_mm3']:.0f}"
    return lesions, false_positives


def _print_table(screen: Console, results: list, summary: dict, units: str, heading: str | None = None) -> None:
    title = f"Distances in {units}; sens, PPV, F1 lesion-wise; lesions in reference/prediction"
    table = Table(
        title=f"{escape(heading)}: {title}" if heading else title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        pad_edge=False,
    )
    table.add_column("case", overflow="fold", ratio=1)
    for _, header, _ in _COLUMNS:
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("lesions", justify="right", no_wrap=True)
    table.add_column("FP n/mm³", justify="right", no_wrap=True)
    for result in results:
        values = {key: getattr(result, key) for key in ("n_ref_lesions", "n_pred_lesions", "n_fp_lesions")}
        values["fp_volume_mm3"] = result.fp_volume_mm3
        table.add_row(
            escape(result.case),
            *(_number(getattr(result, key), digits) for key, _, digits in _COLUMNS),
            *_lesion_cells(values, mean=False),
        )
    if len(results) > 1:
        table.add_section()
        table.add_row(
            "[bold]mean[/]",
            *(_number(summary["mean"][key], digits) for key, _, digits in _COLUMNS),
            *_lesion_cells(summary["mean"], mean=True),
        )
        table.add_row(
            "[dim]cases[/]", *(f"[dim]{summary['n'][key]}[/]" for key, _, _ in _COLUMNS), *(["[dim]all[/]"] * 2)
        )
    screen.print(table)
    for result in results:
        if result.missing:
            screen.print(f"[dim]{escape(result.case)}: {escape(result.notes)}[/]", highlight=False, soft_wrap=True)
    empty = summary["empty_reference"]
    if empty["n_cases"] and len(results) > 1:
        screen.print(
            f"{empty['n_cases']} case(s) without reference lesion: on average "
            f"{empty['mean_n_fp_lesions']:.2f} false-positive lesions, {empty['mean_fp_volume_mm3']:.1f} mm³",
            highlight=False,
        )
