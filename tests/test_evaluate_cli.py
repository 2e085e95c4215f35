from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from evaluation_helpers import boxes, write_mask
from msnewlesion.cli import app
from msnewlesion.metrics import JSON_KEYS, EvaluationOptions, evaluate_case

SHAPE = (16, 16, 16)
SPACING = (0.5, 0.75, 0.75)
AFFINE = np.diag([*SPACING, 1.0])
REFERENCE = boxes(SHAPE, np.s_[2:8, 2:8, 2:8], np.s_[10:14, 10:14, 10:14])
PREDICTION = boxes(SHAPE, np.s_[2:8, 2:8, 3:9])  # finds the first lesion, one voxel off along a 0.75 mm axis


@pytest.fixture
def case_files(tmp_path: Path) -> tuple[Path, Path]:
    return (
        write_mask(tmp_path / "sub-01_pred.nii.gz", PREDICTION, AFFINE),
        write_mask(tmp_path / "sub-01_gt.nii.gz", REFERENCE, AFFINE),
    )


@pytest.fixture
def case_folders(tmp_path: Path) -> tuple[Path, Path]:
    predictions, references = tmp_path / "pred", tmp_path / "gt"
    predictions.mkdir()
    references.mkdir()
    write_mask(predictions / "sub-01.nii.gz", PREDICTION, AFFINE)
    write_mask(references / "sub-01.nii.gz", REFERENCE, AFFINE)
    write_mask(predictions / "sub-02.nii.gz", PREDICTION, AFFINE)
    write_mask(references / "sub-02.nii.gz", np.zeros(SHAPE, bool), AFFINE)  # no new lesion
    return predictions, references


def test_one_pair_prints_a_table_and_exits_zero(runner: CliRunner, case_files: tuple[Path, Path]) -> None:
    result = runner.invoke(app, ["evaluate", *map(str, case_files)])
    assert result.exit_code == 0, result.output
    assert "sub-01_pred" in result.stdout
    assert "0.726" in result.stdout  # Dice: 2 × 180 / (216 + 280)
    assert "Distances in mm" in result.stdout


def test_json_on_stdout_is_pure_json_with_the_documented_keys(runner: CliRunner, case_files: tuple[Path, Path]) -> None:
    result = runner.invoke(app, ["evaluate", *map(str, case_files), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    (case,) = payload["cases"]
    assert set(JSON_KEYS) <= set(case)
    assert case["dice"] == pytest.approx(2 * 180 / (216 + 216 + 64))
    assert case["hd95"] == pytest.approx(evaluate_case(PREDICTION, REFERENCE, SPACING).hd95)
    assert (case["n_ref_lesions"], case["n_pred_lesions"], case["n_fp_lesions"]) == (2, 1, 0)
    assert (case["lesion_sensitivity"], case["lesion_ppv"]) == (0.5, 1.0)
    assert case["units"] == "mm"
    assert payload["failed"] == []
    assert "Distances in mm" in result.stderr  # the table moved out of the way


def test_units_voxel_reports_the_papers_numbers(runner: CliRunner, case_files: tuple[Path, Path]) -> None:
    result = runner.invoke(app, ["evaluate", *map(str, case_files), "--json", "--units", "voxel", "-q"])
    assert result.exit_code == 0, result.output
    case = json.loads(result.stdout)["cases"][0]
    in_voxels = evaluate_case(PREDICTION, REFERENCE, SPACING, EvaluationOptions(units="voxel"))
    assert case["hd95"] == pytest.approx(in_voxels.hd95)
    assert case["hd95"] != pytest.approx(evaluate_case(PREDICTION, REFERENCE, SPACING).hd95)
    assert case["units"] == "voxel"


def test_lesion_size_and_connectivity_options_reach_the_evaluation(
    runner: CliRunner, case_files: tuple[Path, Path]
) -> None:
    result = runner.invoke(
        app, ["evaluate", *map(str, case_files), "--json", "-q", "--min-lesion-voxels", "65", "--connectivity", "6"]
    )
    assert result.exit_code == 0, result.output
    case = json.loads(result.stdout)["cases"][0]
    # The 64-voxel reference lesion is now too small: only the detected one is left.
    assert (case["n_ref_lesions"], case["lesion_f1"], case["min_lesion_voxels"], case["connectivity"]) == (
        1,
        1.0,
        65,
        6,
    )
    result = runner.invoke(app, ["evaluate", *map(str, case_files), "--json", "-q", "--min-lesion-volume", "24"])
    # 24 mm³ / 0.28125 mm³ = 85.3 voxels: lesions need 86.
    assert json.loads(result.stdout)["cases"][0]["min_lesion_voxels"] == 86


def test_folders_write_a_csv_with_a_mean_row(
    runner: CliRunner, case_folders: tuple[Path, Path], tmp_path: Path
) -> None:
    output = tmp_path / "results.csv"
    result = runner.invoke(
        app, ["evaluate", "--pred-dir", str(case_folders[0]), "--gt-dir", str(case_folders[1]), "-o", str(output)]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(output.open()))
    assert [row["case"] for row in rows] == ["sub-01", "sub-02", "mean"]
    no_new_lesion = rows[1]
    assert (no_new_lesion["n_fp_lesions"], no_new_lesion["hd95"]) == ("1", "")
    assert float(no_new_lesion["fp_volume_mm3"]) == pytest.approx(216 * 0.28125)
    assert "the reference is empty" in no_new_lesion["notes"]
    assert float(rows[2]["hd95"]) == pytest.approx(float(rows[0]["hd95"]))
    assert "hd95 over 1" in rows[2]["notes"]


def test_a_missing_case_fails_the_run_but_the_others_are_written(
    runner: CliRunner, case_folders: tuple[Path, Path], tmp_path: Path
) -> None:
    write_mask(case_folders[1] / "sub-03.nii.gz", REFERENCE, AFFINE)
    output = tmp_path / "results.csv"
    result = runner.invoke(
        app, ["evaluate", "--pred-dir", str(case_folders[0]), "--gt-dir", str(case_folders[1]), "-o", str(output)]
    )
    assert result.exit_code == 1
    assert "sub-03" in result.stderr and "1 of 3 cases could not be evaluated" in result.stderr
    rows = {row["case"]: row for row in csv.DictReader(output.open())}
    assert set(rows) == {"sub-01", "sub-02", "sub-03", "mean"}
    assert "no prediction" in rows["sub-03"]["error"]


def test_pairs_file(runner: CliRunner, case_files: tuple[Path, Path], tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"case,prediction,reference\nalpha,{case_files[0].name},{case_files[1].name}\n")
    result = runner.invoke(app, ["evaluate", "--pairs", str(pairs), "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["cases"][0]["case"] == "alpha"


def test_masks_on_different_grids_give_a_one_line_error_naming_both(runner: CliRunner, tmp_path: Path) -> None:
    prediction = write_mask(tmp_path / "pred.nii.gz", PREDICTION, np.eye(4))
    reference = write_mask(tmp_path / "gt.nii.gz", REFERENCE, AFFINE)
    result = runner.invoke(app, ["evaluate", str(prediction), str(reference)])
    assert result.exit_code == 1
    assert "not on the same grid" in result.stderr
    assert "1×1×1 mm" in result.stderr and "0.5×0.75×0.75 mm" in result.stderr
    assert "Traceback" not in result.output


def test_outputs_are_not_overwritten_without_asking(
    runner: CliRunner, case_files: tuple[Path, Path], tmp_path: Path
) -> None:
    output = tmp_path / "results.csv"
    output.write_text("keep me")
    result = runner.invoke(app, ["evaluate", *map(str, case_files), "-o", str(output)])
    assert result.exit_code == 1 and output.read_text() == "keep me"
    result = runner.invoke(app, ["evaluate", *map(str, case_files), "-o", str(output), "--overwrite", "-q"])
    assert result.exit_code == 0 and output.read_text().startswith("case,dice")
    result = runner.invoke(app, ["evaluate", *map(str, case_files), "-o", str(case_files[1]), "--overwrite"])
    assert result.exit_code == 1 and "one of the inputs" in result.stderr


def test_per_lesion_results_csv(runner: CliRunner, case_files: tuple[Path, Path], tmp_path: Path) -> None:
    lesions = tmp_path / "lesions.csv"
    result = runner.invoke(app, ["evaluate", *map(str, case_files), "--lesions-csv", str(lesions), "-q"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(lesions.open()))
    assert [(row["mask"], row["id"], row["detected"]) for row in rows] == [
        ("reference", "1", "True"),
        ("reference", "2", "False"),
        ("prediction", "1", "True"),
    ]


def test_inputs_must_be_given_exactly_one_way(runner: CliRunner, case_files: tuple[Path, Path]) -> None:
    assert runner.invoke(app, ["evaluate"]).exit_code == 1
    assert runner.invoke(app, ["evaluate", str(case_files[0])]).exit_code == 1
    mixed = runner.invoke(app, ["evaluate", *map(str, case_files), "--pairs", "x.csv"])
    assert mixed.exit_code == 1 and "one way" in mixed.stderr


def test_help_states_the_label_rule_and_has_examples(runner: CliRunner) -> None:
    result = runner.invoke(app, ["evaluate", "--help"])
    assert result.exit_code == 0
    assert "label above 0 is lesion" in result.stdout
    assert "msnewlesion evaluate --pred-dir" in result.stdout
