"""Lesion changes between two time points: the matching rules on tiny hand-made masks, and the colour tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

from msnewlesion.errors import InputError
from msnewlesion.lesions import (
    CHANGE_CODES,
    ChangeRule,
    classify_changes,
    fsleyes_lookup_table,
    itksnap_label_descriptions,
)

SHAPE = (16, 16, 16)


def empty() -> np.ndarray:
    return np.zeros(SHAPE, dtype=bool)


def classify(baseline, followup, new=None, **kwargs):
    return classify_changes(baseline, followup, empty() if new is None else new, voxel_volume_mm3=1.0, **kwargs)


def classes(changes) -> list[str]:
    return [lesion.change for lesion in changes.lesions]


def test_empty_masks_give_no_lesion_and_zero_counts() -> None:
    changes = classify(empty(), empty())
    assert changes.lesions == ()
    assert not changes.codes.any()
    assert changes.counts() == {
        "new": 0, "enlarging": 0, "stable": 0, "shrinking": 0, "resolved": 0, "new_or_enlarging": 0
    }  # fmt: skip
    assert list(changes.table().columns)[:4] == ["id", "change", "volume_baseline_mm3", "volume_followup_mm3"]
    assert len(changes.table()) == 0


def test_each_class_by_its_volumes_and_codes_on_the_union_of_both_time_points() -> None:
    baseline, followup, new = empty(), empty(), empty()
    baseline[1:3, 1:3, 1:6] = True  # 20 voxels
    followup[1:4, 1:3, 1:6] = True  # 30 voxels: +50 % and +10 mm³, enlarging
    baseline[6:8, 1:3, 1:6] = True
    followup[6:8, 1:3, 1:5] = True  # 20 -> 16: stable
    baseline[10:13, 1:3, 1:6] = True  # 30 voxels
    followup[10:12, 1:3, 1:6] = True  # 20: shrinking (30 >= 1.5 × 20, 10 mm³ less)
    baseline[1:3, 10:12, 10:12] = True  # gone: resolved
    followup[10:12, 10:12, 10:12] = new[10:12, 10:12, 10:12] = True  # new
    changes = classify(baseline, followup, new)
    assert sorted(classes(changes)) == ["enlarging", "new", "resolved", "shrinking", "stable"]
    table = changes.table().set_index("change")
    assert table.loc["enlarging", ["volume_baseline_mm3", "volume_followup_mm3"]].tolist() == [20.0, 30.0]
    assert table.loc["shrinking", ["volume_baseline_mm3", "volume_followup_mm3"]].tolist() == [30.0, 20.0]
    assert table.loc["resolved", ["volume_baseline_mm3", "volume_followup_mm3"]].tolist() == [8.0, 0.0]
    assert table.loc["new", ["volume_baseline_mm3", "volume_followup_mm3"]].tolist() == [0.0, 8.0]
    codes = changes.codes
    assert codes[3, 1, 1] == CHANGE_CODES["enlarging"]  # the grown part carries the lesion's class
    assert codes[12, 1, 1] == CHANGE_CODES["shrinking"]  # and so does the part that went
    assert codes[1, 10, 10] == CHANGE_CODES["resolved"]
    assert codes[10, 10, 10] == CHANGE_CODES["new"]
    assert set(np.unique(codes)) == {0, 1, 2, 3, 4, 5}
    assert changes.counts()["new_or_enlarging"] == 2


def test_the_enlarging_rule_needs_both_the_relative_and_the_absolute_increase() -> None:
    baseline, followup = empty(), empty()
    baseline[1:3, 1:3, 1:3] = True  # 8 voxels
    followup[1:3, 1:3, 1:5] = True  # 16 voxels: +100 % but only +8 mm³
    assert classes(classify(baseline, followup)) == ["stable"]
    assert classes(classify(baseline, followup, rule=ChangeRule(relative=0.5, absolute_mm3=8.0))) == ["enlarging"]
    assert classes(classify(baseline, followup, rule=ChangeRule(relative=1.5, absolute_mm3=0.0))) == ["stable"]
    with pytest.raises(InputError, match="relative"):
        ChangeRule(relative=0.0)
    with pytest.raises(InputError, match="absolute"):
        ChangeRule(absolute_mm3=-1.0)


def test_two_baseline_lesions_that_merge_are_one_lesion_with_their_volumes_summed() -> None:
    baseline, followup = empty(), empty()
    baseline[2:4, 2:4, 2:5] = True  # 12 voxels
    baseline[2:4, 2:4, 8:11] = True  # 12 voxels, apart
    followup[2:4, 2:4, 2:11] = True  # 36 voxels, one lesion joining both
    changes = classify(baseline, followup)
    assert len(changes.lesions) == 1
    lesion = changes.lesions[0]
    assert (lesion.baseline_lesions, lesion.followup_lesions) == ((1, 2), (1,))
    assert (lesion.baseline_voxels, lesion.followup_voxels, lesion.change) == (24, 36, "enlarging")


def test_a_baseline_lesion_that_splits_is_one_lesion_with_its_parts_summed() -> None:
    baseline, followup = empty(), empty()
    baseline[2:4, 2:4, 2:11] = True  # 36 voxels
    followup[2:4, 2:4, 2:5] = True
    followup[2:4, 2:4, 8:11] = True  # two parts of 12 voxels
    changes = classify(baseline, followup)
    assert len(changes.lesions) == 1
    lesion = changes.lesions[0]
    assert (lesion.baseline_lesions, lesion.followup_lesions) == ((1,), (1, 2))
    assert (lesion.baseline_voxels, lesion.followup_voxels, lesion.change) == (36, 24, "shrinking")


def test_lesions_of_the_all_lesion_masks_that_only_touch_are_not_matched() -> None:
    baseline, followup = empty(), empty()
    baseline[2:4, 2:4, 2:4] = True
    followup[4:6, 4:6, 4:6] = True  # touches the baseline lesion by a corner only
    assert classes(classify(baseline, followup)) == ["resolved", "stable"]


def test_a_new_lesion_that_touches_an_existing_one_is_its_growth() -> None:
    baseline, followup, new = empty(), empty(), empty()
    baseline[2:5, 2:5, 2:5] = followup[2:5, 2:5, 2:5] = True  # 27 voxels at both time points
    new[2:5, 2:5, 5:8] = True  # 27 voxels beside it, sharing a face but no voxel
    changes = classify(baseline, followup, new, faded=empty())
    assert classes(changes) == ["enlarging"]
    assert (changes.lesions[0].baseline_voxels, changes.lesions[0].followup_voxels) == (27, 54)
    new[:] = False
    new[2:5, 2:5, 6:9] = True  # one voxel of gap: a lesion of its own
    assert classes(classify(baseline, followup, new, faded=empty())) == ["stable", "new"]


def test_touching_lesions_of_one_mask_are_one_lesion_under_26_connectivity_and_two_under_6() -> None:
    baseline, followup = empty(), empty()
    baseline[2:4, 2:4, 2:4] = baseline[4:6, 4:6, 4:6] = True  # two cubes touching by a corner
    assert classes(classify(baseline, followup, connectivity=26)) == ["resolved"]
    assert classes(classify(baseline, followup, connectivity=6)) == ["resolved", "resolved"]


def test_new_lesion_voxels_at_an_existing_lesion_are_its_growth_not_a_new_lesion() -> None:
    baseline, followup, new = empty(), empty(), empty()
    baseline[4:7, 4:7, 4:7] = True  # 27 voxels
    followup[3:8, 3:8, 3:8] = True  # 125 voxels
    new[3:8, 3:8, 3:8] = True
    new[4:7, 4:7, 4:7] = False  # the new-lesion head marks the rim that grew
    changes = classify(baseline, followup, new)
    assert classes(changes) == ["enlarging"]
    assert (changes.lesions[0].baseline_voxels, changes.lesions[0].followup_voxels) == (27, 125)
    assert changes.counts()["new"] == 0 and changes.counts()["new_or_enlarging"] == 1


def test_new_lesions_joined_by_a_follow_up_lesion_stay_separate_new_lesions() -> None:
    baseline, followup, new = empty(), empty(), empty()
    followup[2:4, 2:4, 2:12] = True
    new[2:4, 2:4, 2:4] = new[2:4, 2:4, 9:12] = True  # the new-lesion head finds two lesions in it
    changes = classify(baseline, followup, new)
    assert classes(changes) == ["new", "new"]
    # every follow-up voxel is coded new, and the volumes add up to the follow-up lesion
    assert (changes.codes[followup] == CHANGE_CODES["new"]).all()
    assert sum(lesion.followup_voxels for lesion in changes.lesions) == int(followup.sum())


def test_a_follow_up_lesion_the_new_lesion_head_does_not_call_new_is_stable() -> None:
    baseline, followup = empty(), empty()
    followup[2:5, 2:5, 2:5] = True
    changes = classify(baseline, followup)
    assert classes(changes) == ["stable"]
    assert changes.lesions[0].matched == "follow-up only, not new"


def test_with_the_faded_mask_the_change_masks_decide_what_changed() -> None:
    baseline, followup, new, faded = empty(), empty(), empty(), empty()
    # a shrinking lesion: the all-lesion masks see only its core, the faded mask the rim that went
    baseline[3:6, 3:6, 3:6] = followup[3:6, 3:6, 3:6] = True  # 27 voxels
    faded[2:7, 2:7, 2:7] = True
    faded[3:6, 3:6, 3:6] = False  # 98 voxels around it
    # a resolved lesion that neither all-lesion mask saw
    faded[10:13, 2:5, 2:5] = True
    # a baseline lesion that the follow-up's mask missed, with no change seen: stable, not resolved
    baseline[10:13, 10:13, 10:13] = True
    # a new lesion
    new[2:4, 10:13, 10:13] = followup[2:4, 10:13, 10:13] = True
    changes = classify(baseline, followup, new, faded=faded)
    by_class = {lesion.change: lesion for lesion in changes.lesions}
    assert sorted(by_class) == ["new", "resolved", "shrinking", "stable"]
    assert (by_class["shrinking"].baseline_voxels, by_class["shrinking"].followup_voxels) == (125, 27)
    assert (by_class["resolved"].baseline_voxels, by_class["resolved"].followup_voxels) == (27, 0)
    assert (by_class["stable"].baseline_voxels, by_class["stable"].followup_voxels) == (27, 27)
    assert by_class["shrinking"].faded_lesions == (1,)
    # without the faded mask the all-lesion masks decide: the missed lesion is resolved, the shrinking one stable
    assert sorted(classes(classify(baseline, followup, new))) == ["new", "resolved", "stable"]


def test_masks_of_different_shapes_are_refused() -> None:
    with pytest.raises(InputError, match="differ in shape"):
        classify_changes(empty(), np.zeros((4, 4, 4), bool), empty(), voxel_volume_mm3=1.0)


def test_colour_tables_name_every_class_with_its_code() -> None:
    itksnap = [line for line in itksnap_label_descriptions().splitlines() if not line.startswith("#")]
    entries = {int(line.split()[0]): line.split('"')[1] for line in itksnap}
    assert entries == {0: "Clear Label", 1: "new", 2: "enlarging", 3: "stable", 4: "shrinking", 5: "resolved"}
    # ITK-SNAP's columns: index, R, G, B (0-255), alpha, visibility, mesh visibility, "label"
    assert all(len(line.split('"')[0].split()) == 7 for line in itksnap)
    lut = [line.split() for line in fsleyes_lookup_table().splitlines()]
    assert [(int(row[0]), row[4]) for row in lut] == [(code, name) for name, code in CHANGE_CODES.items()]
    assert all(0.0 <= float(value) <= 1.0 for row in lut for value in row[1:4])


# ---------------------------------------------------------------------------------------------
# evaluate --classes


def write_codes(path, codes: np.ndarray):
    import nibabel as nib

    nib.save(nib.Nifti1Image(codes.astype(np.uint8), np.eye(4)), str(path))
    return path


def test_evaluate_classes_scores_new_or_enlarging_and_each_class_of_the_reference(tmp_path, runner) -> None:
    from msnewlesion.cli import app

    reference, prediction = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    reference[1:4, 1:4, 1:4] = prediction[1:4, 1:4, 1:4] = CHANGE_CODES["new"]  # found
    reference[6:9, 1:4, 1:4] = CHANGE_CODES["enlarging"]
    prediction[6:9, 1:4, 1:4] = CHANGE_CODES["new"]  # found as new-or-enlarging, wrong class
    reference[11:14, 1:4, 1:4] = prediction[11:14, 1:4, 1:4] = CHANGE_CODES["resolved"]
    reference[1:4, 8:11, 8:11] = CHANGE_CODES["stable"]  # missed: the prediction has nothing there
    paths = write_codes(tmp_path / "pred.nii.gz", prediction), write_codes(tmp_path / "gt.nii.gz", reference)
    result = runner.invoke(app, ["evaluate", "--classes", *map(str, paths), "--json", "--min-lesion-volume", "0"])
    assert result.exit_code == 0, result.output
    scores = {case["case"].split(":")[1]: case for case in json.loads(result.stdout)["cases"]}
    assert list(scores) == ["new_or_enlarging", "new", "enlarging", "stable", "resolved"]
    assert scores["new_or_enlarging"]["lesion_f1"] == 1.0
    assert (scores["new"]["n_ref_lesions"], scores["new"]["n_pred_lesions"], scores["new"]["lesion_ppv"]) == (1, 2, 0.5)
    assert scores["enlarging"]["lesion_sensitivity"] == 0.0
    assert scores["resolved"]["lesion_f1"] == 1.0
    assert scores["stable"]["lesion_sensitivity"] == 0.0
    assert "new_or_enlarging" in result.stderr  # one table per score


def test_evaluate_classes_with_a_plain_change_mask_scores_every_change_but_stable(tmp_path, runner) -> None:
    from msnewlesion.cli import app

    reference, prediction = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    reference[1:4, 1:4, 1:4] = reference[11:14, 1:4, 1:4] = 1  # a change mask: the classes are not told apart
    prediction[1:4, 1:4, 1:4] = CHANGE_CODES["enlarging"]
    prediction[11:14, 1:4, 1:4] = CHANGE_CODES["resolved"]
    prediction[1:4, 8:11, 8:11] = CHANGE_CODES["stable"]  # not a change: no false positive
    paths = write_codes(tmp_path / "pred.nii.gz", prediction), write_codes(tmp_path / "gt.nii.gz", reference)
    arguments = ["evaluate", "--classes", "--reference-kind", "change", *map(str, paths), "--json"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    (case,) = json.loads(result.stdout)["cases"]
    assert case["case"] == "pred:changed" and case["lesion_f1"] == 1.0 and case["n_fp_lesions"] == 0


def test_evaluate_classes_refuses_maps_that_are_not_change_classes(tmp_path, runner) -> None:
    from msnewlesion.cli import app

    codes = np.zeros(SHAPE, np.uint8)
    codes[1:4, 1:4, 1:4] = 7
    paths = write_codes(tmp_path / "pred.nii.gz", codes), write_codes(tmp_path / "gt.nii.gz", codes)
    result = runner.invoke(app, ["evaluate", "--classes", *map(str, paths)])
    assert result.exit_code != 0
    assert "not change classes" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["evaluate", "--reference-kind", "change", *map(str, paths)])
    assert result.exit_code != 0 and "--classes" in result.output


def test_the_qc_picture_outlines_the_change_classes(tmp_path) -> None:
    import matplotlib.image

    from msnewlesion.report import save_qc_figure

    shape = (32, 32, 12)
    baseline = np.zeros(shape, np.float32)
    baseline[4:28, 4:28, :] = 1.0
    followup = baseline.copy()
    new, codes = np.zeros(shape, bool), np.zeros(shape, np.uint8)
    codes[8:12, 8:12, 5:8] = CHANGE_CODES["enlarging"]
    codes[18:22, 18:22, 5:8] = CHANGE_CODES["resolved"]
    counts = {"new": 0, "enlarging": 1, "stable": 0, "shrinking": 0, "resolved": 1}
    plain = save_qc_figure(baseline, followup, new, tmp_path / "plain.png")
    with_changes = save_qc_figure(
        baseline, followup, new, tmp_path / "changes.png", changes=codes, change_counts=counts
    )
    picture = matplotlib.image.imread(str(with_changes))[..., :3]
    # orange (enlarging) and green (resolved) outlines are drawn; the picture without changes has neither
    orange = (picture[..., 0] > 0.9) & (np.abs(picture[..., 1] - 140 / 255) < 0.1) & (picture[..., 2] < 0.1)
    green = (picture[..., 0] < 0.1) & (np.abs(picture[..., 1] - 200 / 255) < 0.1) & (picture[..., 2] < 0.1)
    assert orange.sum() > 20 and green.sum() > 5
    plain_picture = matplotlib.image.imread(str(plain))[..., :3]
    assert not ((plain_picture[..., 0] > 0.9) & (np.abs(plain_picture[..., 1] - 140 / 255) < 0.1)).any()
