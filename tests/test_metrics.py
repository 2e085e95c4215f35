from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from medpy.metric import binary as medpy_binary
from scipy import ndimage

from evaluation_helpers import MSSEG_SPACING, blobs, boxes, literal_msseg_detection, real_mask, write_mask
from msnewlesion.errors import GeometryError, InputError
from msnewlesion.metrics import (
    JSON_KEYS,
    CaseResult,
    EvaluationOptions,
    evaluate_case,
    evaluate_files,
    evaluate_pairs,
    pairs_from_csv,
    pairs_from_directories,
    results_payload,
    results_table,
    summarise,
    surface_distances,
)

DISTANCES = ("hd95", "asd", "assd")


def medpy_values(prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    return {
        "dice": medpy_binary.dc(prediction, reference),
        "jaccard": medpy_binary.jc(prediction, reference),
        "hd95": medpy_binary.hd95(prediction, reference, voxelspacing=spacing),
        "asd": medpy_binary.asd(prediction, reference, voxelspacing=spacing),
        "assd": medpy_binary.assd(prediction, reference, voxelspacing=spacing),
    }


def assert_agrees_with_medpy(result: CaseResult, expected: dict[str, float]) -> None:
    for metric, value in expected.items():
        assert getattr(result, metric) == pytest.approx(value, abs=1e-9), metric


# ---------------------------------------------------------------------------------------------
# known answers


def test_a_shifted_cube_on_an_anisotropic_grid_has_known_distances_in_mm_and_voxels() -> None:
    # A 3×3×3 cube and the same cube moved one voxel along the first axis, on a 2 × 0.5 × 1 mm grid.
    # Each border has 26 voxels. From the prediction's border: its back face (9 voxels) is 2 mm from
    # the reference's face; the centre of its front face lies inside the reference, 0.5 mm (one step
    # along the 0.5 mm axis) from the reference's border; the other 16 voxels are on that border.
    reference = boxes((6, 6, 6), np.s_[1:4, 1:4, 1:4])
    prediction = boxes((6, 6, 6), np.s_[2:5, 1:4, 1:4])
    spacing = (2.0, 0.5, 1.0)

    in_mm = evaluate_case(prediction, reference, spacing)
    assert in_mm.dice == pytest.approx(2 / 3)
    assert in_mm.jaccard == pytest.approx(1 / 2)
    assert in_mm.asd == pytest.approx((9 * 2.0 + 0.5) / 26)
    assert in_mm.assd == pytest.approx(2 * (9 * 2.0 + 0.5) / 52)
    # Pooled: 32 zeros, two 0.5 and eighteen 2.0; the 95th percentile falls among the 2.0s.
    assert in_mm.hd95 == 2.0
    assert in_mm.units == "mm"

    in_voxels = evaluate_case(prediction, reference, spacing, EvaluationOptions(units="voxel"))
    assert in_voxels.asd == pytest.approx(10 / 26)
    assert in_voxels.hd95 == 1.0
    assert in_voxels.units == "voxel"
    assert in_voxels.dice == in_mm.dice

    assert_agrees_with_medpy(in_mm, medpy_values(prediction, reference, spacing))
    assert_agrees_with_medpy(in_voxels, medpy_values(prediction, reference, (1.0, 1.0, 1.0)))


def test_asd_is_directed_from_the_prediction_to_the_reference() -> None:
    reference = boxes((9, 9, 9), np.s_[1:8, 1:8, 1:8])
    prediction = boxes((9, 9, 9), np.s_[3:6, 3:6, 3:6])  # a small cube deep inside
    forward = evaluate_case(prediction, reference, (1.0, 1.0, 1.0))
    backward = evaluate_case(reference, prediction, (1.0, 1.0, 1.0))
    # Every border voxel of the small cube is exactly 2 voxels from the big cube's border.
    assert forward.asd == 2.0
    assert backward.asd > forward.asd
    assert forward.assd == backward.assd
    assert forward.hd95 == backward.hd95


def test_the_image_edge_counts_as_background_for_the_border_as_in_medpy() -> None:
    reference = np.ones((5, 5, 5), dtype=bool)  # fills the array: only its outer faces are border
    prediction = boxes((5, 5, 5), np.s_[1:4, 1:4, 1:4])
    result = evaluate_case(prediction, reference, (1.0, 1.0, 1.0))
    assert result.asd == 1.0
    assert_agrees_with_medpy(result, medpy_values(prediction, reference, (1.0, 1.0, 1.0)))


def test_lesions_of_10_and_11_voxels_on_the_msseg_grid() -> None:
    reference = boxes((30, 8, 8), np.s_[0:10, 1, 1], np.s_[0:11, 5, 5], np.s_[20:30, 5, 5])
    prediction = boxes((30, 8, 8), np.s_[0:11, 5, 5], np.s_[20:30, 5, 5])
    result = evaluate_case(prediction, reference, MSSEG_SPACING)
    assert result.min_lesion_voxels == 11
    assert (result.n_ref_lesions, result.n_pred_lesions) == (1, 1)
    assert result.lesion_f1 == 1.0
    # Dice is on the masks as given: the 10-voxel lesions still count there.
    assert result.dice == pytest.approx(2 * 21 / (31 + 21))
    with_voxels = evaluate_case(prediction, reference, MSSEG_SPACING, EvaluationOptions(min_lesion_voxels=10))
    assert (with_voxels.n_ref_lesions, with_voxels.n_pred_lesions) == (3, 2)
    assert with_voxels.lesion_sensitivity == pytest.approx(2 / 3)


def test_corner_touching_lesions_under_6_and_26_connectivity() -> None:
    reference = boxes((8, 8, 8), np.s_[0:3, 0:3, 0:3], np.s_[3:6, 3:6, 3:6])
    prediction = boxes((8, 8, 8), np.s_[0:3, 0:3, 0:3])
    with_26 = evaluate_case(prediction, reference, (1.0, 1.0, 1.0))
    with_6 = evaluate_case(prediction, reference, (1.0, 1.0, 1.0), EvaluationOptions(connectivity=6))
    assert (with_26.n_ref_lesions, with_26.lesion_sensitivity, with_26.lesion_f1) == (1, 1.0, 1.0)
    assert (with_6.n_ref_lesions, with_6.lesion_sensitivity) == (2, 0.5)
    assert with_6.lesion_f1 == pytest.approx(2 / 3)
    assert with_6.dice == with_26.dice


# ---------------------------------------------------------------------------------------------
# empty masks


def test_empty_reference_reports_false_positive_lesions_and_no_distances() -> None:
    shape = (20, 20, 20)
    prediction = boxes(shape, np.s_[1:4, 1:4, 1:4], np.s_[10:12, 10:12, 10:13], np.s_[18, 18, 18])
    result = evaluate_case(prediction, np.zeros(shape, bool), (1.0, 1.0, 1.0))
    # Two lesions above the 4-voxel minimum (27 and 12 voxels); the single voxel is below it.
    assert (result.n_ref_lesions, result.n_pred_lesions, result.n_fp_lesions) == (0, 2, 2)
    assert result.fp_volume_mm3 == 39.0
    assert result.dice == 0.0 and result.lesion_ppv == 0.0 and result.lesion_f1 == 0.0
    assert math.isnan(result.lesion_sensitivity)
    for metric in DISTANCES:
        assert math.isnan(getattr(result, metric))
        assert result.missing[metric] == "the reference is empty"
    assert "no lesion" in result.missing["lesion_sensitivity"]


def test_empty_prediction_scores_zero_and_reports_distances_as_missing() -> None:
    reference = boxes((10, 10, 10), np.s_[2:5, 2:5, 2:5])
    result = evaluate_case(np.zeros_like(reference), reference, (1.0, 1.0, 1.0))
    assert (result.dice, result.jaccard, result.lesion_sensitivity, result.lesion_f1) == (0.0, 0.0, 0.0, 0.0)
    assert math.isnan(result.lesion_ppv) and "prediction has no lesion" in result.missing["lesion_ppv"]
    assert result.missing["hd95"] == "the prediction is empty"
    assert (result.n_fp_lesions, result.fp_volume_mm3) == (0, 0.0)


def test_both_empty_gives_dice_one_and_everything_else_missing_with_a_reason() -> None:
    empty = np.zeros((10, 10, 10), dtype=np.uint8)
    result = evaluate_case(empty, empty, (1.0, 1.0, 1.0))
    assert (result.dice, result.jaccard) == (1.0, 1.0)
    assert (result.n_fp_lesions, result.fp_volume_mm3, result.n_ref_lesions) == (0, 0.0, 0)
    for metric in (*DISTANCES, "lesion_sensitivity", "lesion_ppv", "lesion_f1"):
        assert math.isnan(getattr(result, metric))
        assert result.missing[metric]
    assert result.missing["hd95"] == "both masks are empty"
    payload = result.as_dict()
    assert payload["hd95"] is None and payload["dice"] == 1.0


def test_surface_distances_refuse_an_empty_mask_instead_of_crashing() -> None:
    with pytest.raises(InputError, match="non-empty"):
        surface_distances(np.zeros((4, 4, 4)), np.ones((4, 4, 4)))


# ---------------------------------------------------------------------------------------------
# agreement with medpy and with the whole volume


def test_agrees_with_medpy_on_random_masks_and_anisotropic_spacings() -> None:
    rng = np.random.default_rng(2024)
    checked = 0
    for _ in range(25):
        shape = tuple(int(s) for s in rng.integers(6, 28, 3))
        prediction, reference = blobs(shape, rng), blobs(shape, rng)
        if not prediction.any() or not reference.any():
            continue
        spacing = tuple(float(s) for s in rng.choice([0.5, 0.75, 0.8, 1.0, 1.2, 3.0], 3))
        result = evaluate_case(prediction, reference, spacing)
        assert_agrees_with_medpy(result, medpy_values(prediction, reference, spacing))
        checked += 1
    assert checked >= 20


def test_small_masks_in_a_large_volume_give_the_same_result_as_on_their_own() -> None:
    rng = np.random.default_rng(5)
    prediction, reference = blobs((16, 14, 12), rng), blobs((16, 14, 12), rng)
    large_prediction = np.zeros((80, 90, 70), bool)
    large_reference = np.zeros_like(large_prediction)
    large_prediction[40:56, 30:44, 50:62] = prediction
    large_reference[40:56, 30:44, 50:62] = reference
    small = evaluate_case(prediction, reference, MSSEG_SPACING)
    large = evaluate_case(large_prediction, large_reference, MSSEG_SPACING)
    for metric in (*DISTANCES, "dice", "lesion_f1", "n_ref_lesions", "n_pred_lesions", "fp_volume_mm3"):
        assert getattr(large, metric) == getattr(small, metric)
    shift = np.array([40, 30, 50])
    for small_lesion, large_lesion in zip(small.reference_lesions, large.reference_lesions, strict=True):
        np.testing.assert_allclose(np.array(large_lesion.centroid_voxel) - small_lesion.centroid_voxel, shift)


def test_labels_above_zero_count_as_lesion() -> None:
    rng = np.random.default_rng(9)
    prediction, reference = blobs((15, 15, 15), rng), blobs((15, 15, 15), rng)
    labelled = prediction.astype(np.int16) * rng.integers(1, 5, prediction.shape)
    assert evaluate_case(labelled, reference, (1, 1, 1)).assd == evaluate_case(prediction, reference, (1, 1, 1)).assd


@pytest.mark.parametrize("copy", ["dilated", "shifted"])
def test_real_lesion_mask_against_a_dilated_or_shifted_copy(copy: str) -> None:
    reference, _ = real_mask("patient03")
    prediction = ndimage.binary_dilation(reference) if copy == "dilated" else np.roll(reference, 1, axis=1)
    result = evaluate_case(prediction, reference, (1.0, 1.0, 1.0))
    # medpy on the box around both masks plus a margin (zero padding changes none of its values).
    box = ndimage.find_objects((prediction | reference).astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in box)
    assert_agrees_with_medpy(result, medpy_values(prediction[box], reference[box], (1.0, 1.0, 1.0)))
    detected = literal_msseg_detection(prediction[box], reference[box], result.min_lesion_voxels)
    assert ([x.detected for x in result.reference_lesions], [x.detected for x in result.predicted_lesions]) == detected
    if copy == "shifted":
        # A one-voxel shift moves no border further than one voxel and keeps every lesion's shape; thin
        # lesions, though, end up mostly outside their original and are not detected.
        assert result.hd95 == 1.0 and result.n_pred_lesions == result.n_ref_lesions == 17
        assert result.lesion_sensitivity == pytest.approx(14 / 17)
    else:
        assert result.asd == 1.0  # every dilated border voxel is one voxel from the original border


def test_a_real_mask_against_itself_is_perfect() -> None:
    reference, _ = real_mask("patient29")
    result = evaluate_case(reference, reference, (1.0, 1.0, 1.0))
    sizes = np.bincount(ndimage.label(reference, structure=np.ones((3, 3, 3)))[0].ravel())[1:]
    assert (result.dice, result.hd95, result.asd, result.lesion_f1) == (1.0, 0.0, 0.0, 1.0)
    assert result.n_ref_lesions == result.n_pred_lesions == int((sizes >= 4).sum())
    assert result.n_fp_lesions == 0


# ---------------------------------------------------------------------------------------------
# files, pairs and summaries


def anisotropic_affine() -> np.ndarray:
    return np.array([[-0.5, 0, 0, 90], [0, 0.75, 0, -100], [0, 0, 0.75, -50], [0, 0, 0, 1]], dtype=float)


def test_evaluate_files_uses_the_spacing_of_the_images(tmp_path: Path) -> None:
    reference = boxes((12, 12, 12), np.s_[2:6, 2:6, 2:6])
    prediction = boxes((12, 12, 12), np.s_[2:6, 2:6, 4:8])  # moved 2 voxels along a 0.75 mm axis
    write_mask(tmp_path / "pred.nii.gz", prediction * 3, anisotropic_affine())  # label 3 is lesion too
    write_mask(tmp_path / "gt.nii.gz", reference, anisotropic_affine())
    result = evaluate_files(tmp_path / "pred.nii.gz", tmp_path / "gt.nii.gz")
    assert result.case == "pred"
    assert result.spacing == pytest.approx(MSSEG_SPACING)
    assert result.hd95 == pytest.approx(1.5)
    assert result.prediction == str(tmp_path / "pred.nii.gz")
    assert_agrees_with_medpy(result, medpy_values(prediction, reference, MSSEG_SPACING))


def test_evaluate_files_names_both_grids_when_they_differ(tmp_path: Path) -> None:
    mask = boxes((12, 12, 12), np.s_[2:6, 2:6, 2:6])
    write_mask(tmp_path / "pred.nii.gz", mask, np.eye(4))
    write_mask(tmp_path / "gt.nii.gz", mask, anisotropic_affine())
    with pytest.raises(GeometryError) as error:
        evaluate_files(tmp_path / "pred.nii.gz", tmp_path / "gt.nii.gz")
    message = str(error.value)
    assert "not on the same grid" in message
    assert "1×1×1 mm" in message and "0.5×0.75×0.75 mm" in message


def test_pairs_from_directories_matches_names_and_reports_the_unmatched(tmp_path: Path) -> None:
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    mask = boxes((8, 8, 8), np.s_[2:5, 2:5, 2:5])
    for name in ("a.nii", "b.nii.gz", "extra.nii.gz"):
        write_mask(tmp_path / "pred" / name, mask, np.eye(4))
    for name in ("a.nii.gz", "b.nii.gz", "c.nii.gz"):
        write_mask(tmp_path / "gt" / name, mask, np.eye(4))
    (tmp_path / "gt" / "notes.txt").write_text("not a mask")
    pairs, failures, unmatched = pairs_from_directories(tmp_path / "pred", tmp_path / "gt")
    assert [(pair.case, pair.prediction.name, pair.reference.name) for pair in pairs] == [
        ("a", "a.nii", "a.nii.gz"),
        ("b", "b.nii.gz", "b.nii.gz"),
    ]
    assert [failure.case for failure in failures] == ["c"]
    assert [path.name for path in unmatched] == ["extra.nii.gz"]


def test_pairs_from_csv_resolves_relative_paths_and_checks_columns(tmp_path: Path) -> None:
    (tmp_path / "pairs.csv").write_text("case,prediction,reference\nsub-01,p/one.nii.gz,/data/gt/one.nii.gz\n")
    (pair,) = pairs_from_csv(tmp_path / "pairs.csv")
    assert (pair.case, pair.prediction, pair.reference) == (
        "sub-01",
        tmp_path / "p/one.nii.gz",
        Path("/data/gt/one.nii.gz"),
    )
    (tmp_path / "short.csv").write_text("pred,gt\nx.nii.gz,y.nii.gz\n")
    assert pairs_from_csv(tmp_path / "short.csv")[0].case == "x"
    (tmp_path / "bad.csv").write_text("prediction,mask\nx.nii.gz,y.nii.gz\n")
    with pytest.raises(InputError, match="reference column"):
        pairs_from_csv(tmp_path / "bad.csv")
    (tmp_path / "twice.csv").write_text("pred,gt\nx.nii.gz,y.nii.gz\nx.nii.gz,z.nii.gz\n")
    with pytest.raises(InputError, match="twice"):
        pairs_from_csv(tmp_path / "twice.csv")


def test_evaluate_pairs_keeps_going_past_a_broken_case(tmp_path: Path) -> None:
    mask = boxes((8, 8, 8), np.s_[2:5, 2:5, 2:5])
    write_mask(tmp_path / "p.nii.gz", mask, np.eye(4))
    write_mask(tmp_path / "g.nii.gz", mask, np.eye(4))
    (tmp_path / "pairs.csv").write_text("case,pred,gt\nok,p.nii.gz,g.nii.gz\nbroken,missing.nii.gz,g.nii.gz\n")
    calls = []
    results, failures = evaluate_pairs(
        pairs_from_csv(tmp_path / "pairs.csv"), progress=lambda stage, done, total: calls.append((done, total))
    )
    assert [result.case for result in results] == ["ok"] and results[0].dice == 1.0
    assert [failure.case for failure in failures] == ["broken"] and "not found" in failures[0].error
    assert calls[-1] == (2, 2)


def test_summaries_say_how_many_cases_each_mean_covers() -> None:
    lesion = boxes((12, 12, 12), np.s_[2:6, 2:6, 2:6])
    empty = np.zeros_like(lesion)
    results = [
        evaluate_case(lesion, lesion, (1, 1, 1), case="perfect"),
        evaluate_case(np.roll(lesion, 2, axis=0), lesion, (1, 1, 1), case="shifted"),
        evaluate_case(lesion, empty, (1, 1, 1), case="false alarm"),
        evaluate_case(empty, empty, (1, 1, 1), case="nothing"),
    ]
    summary = summarise(results)
    assert summary["n_cases"] == 4
    assert summary["n"]["dice"] == 4 and summary["mean"]["dice"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert summary["n"]["hd95"] == 2 and summary["mean"]["hd95"] == pytest.approx(results[1].hd95 / 2)
    assert summary["n"]["lesion_sensitivity"] == 2 and summary["n"]["lesion_ppv"] == 3
    assert summary["empty_reference"] == {"n_cases": 2, "mean_n_fp_lesions": 0.5, "mean_fp_volume_mm3": 32.0}
    assert summary["total"]["n_fp_lesions"] == 1

    table = results_table(results)
    assert table["case"].tolist()[-1] == "mean"
    assert table["dice"].iloc[-1] == pytest.approx(summary["mean"]["dice"])
    assert "hd95 over 2" in table["notes"].iloc[-1]
    payload = results_payload(results)
    assert [list(case)[: len(JSON_KEYS)] for case in payload["cases"]] == [list(JSON_KEYS)] * 4
    assert payload["summary"]["mean"]["hd95"] == pytest.approx(results[1].hd95 / 2)
    lesions = results_payload(results[:1], lesions=True)["cases"][0]["lesions"]
    assert [(row["mask"], row["voxels"], row["detected"]) for row in lesions] == [
        ("reference", 64, True),
        ("prediction", 64, True),
    ]


def test_options_refuse_values_that_make_no_sense() -> None:
    with pytest.raises(InputError, match="26 or 6"):
        EvaluationOptions(connectivity=8)
    with pytest.raises(InputError, match="units"):
        EvaluationOptions(units="cm")
    with pytest.raises(InputError):
        EvaluationOptions(min_lesion_volume_mm3=-1)
    with pytest.raises(InputError):
        evaluate_case(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), (1, 1, 1))
    with pytest.raises(InputError, match="spacing"):
        evaluate_case(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), (1, 0, 1))
