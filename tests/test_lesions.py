from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from evaluation_helpers import MSSEG_SPACING, blobs, boxes, literal_msseg_detection, real_mask
from msnewlesion.errors import InputError
from msnewlesion.lesions import (
    detect_lesions,
    detections_table,
    label_lesions,
    lesion_table,
    min_lesion_voxels,
    remove_small_lesions,
)

CORNER_TOUCHING = boxes((8, 8, 8), np.s_[0:3, 0:3, 0:3], np.s_[3:6, 3:6, 3:6])


def test_lesions_touching_by_a_corner_are_one_lesion_under_26_and_two_under_6_connectivity() -> None:
    labels_26, count_26 = label_lesions(CORNER_TOUCHING, connectivity=26)
    labels_6, count_6 = label_lesions(CORNER_TOUCHING, connectivity=6)
    assert (count_26, count_6) == (1, 2)
    assert labels_26.dtype == np.int32
    assert np.count_nonzero(labels_26 == 1) == 54
    # Raster order: the box at the origin is met first.
    assert labels_6[0, 0, 0] == 1 and labels_6[5, 5, 5] == 2


def test_label_lesions_treats_every_label_above_zero_as_lesion_and_refuses_other_connectivities() -> None:
    mask = np.zeros((5, 5, 5), dtype=np.int16)
    mask[0, 0, 0] = 3
    mask[0, 0, 1] = 7
    mask[4, 4, 4] = -2
    assert label_lesions(mask)[1] == 1
    with pytest.raises(InputError, match="26 or 6"):
        label_lesions(mask, connectivity=18)


@pytest.mark.parametrize(
    ("voxel_volume", "min_volume", "expected"),
    [
        (0.5 * 0.75 * 0.75, 3.0, 11),  # the paper's "fewer than 11 voxels" rule
        (1.0, 3.0, 4),  # strictly above 3 mm³
        (0.1**3, 3.0, 3001),  # an exact ratio stays exact despite floating point
        (0.8**3, 3.0, 6),
        (1.0, 0.0, 1),  # keep everything
    ],
)
def test_min_lesion_voxels_follows_the_msseg_rule(voxel_volume: float, min_volume: float, expected: int) -> None:
    assert min_lesion_voxels(voxel_volume, min_volume) == expected


def test_min_lesion_voxels_refuses_nonsense() -> None:
    with pytest.raises(InputError):
        min_lesion_voxels(0.0)
    with pytest.raises(InputError):
        min_lesion_voxels(1.0, -1.0)


def test_a_10_voxel_lesion_is_dropped_and_an_11_voxel_lesion_kept_on_the_msseg_grid() -> None:
    mask = boxes((20, 5, 5), np.s_[0:10, 0, 0], np.s_[0:11, 3, 3])
    kept = remove_small_lesions(mask, min_lesion_voxels(float(np.prod(MSSEG_SPACING))))
    assert kept.sum() == 11
    assert kept[0:11, 3, 3].all() and not kept[:, 0, 0].any()


def test_lesion_table_reports_volumes_and_centroids_in_scanner_coordinates() -> None:
    mask = boxes((10, 12, 14), np.s_[1:3, 1:3, 1:3], np.s_[6:9, 8:10, 10:11])
    # Anisotropic, flipped first axis and translated: centroids must go through the whole affine.
    affine = np.array([[-0.5, 0.0, 0.0, 90.0], [0.0, 0.75, 0.0, -120.0], [0.0, 0.0, 0.75, -60.0], [0.0, 0.0, 0.0, 1.0]])
    probability = np.zeros(mask.shape, dtype=np.float32)
    probability[1:3, 1:3, 1:3] = 0.6
    probability[1, 1, 1] = 0.9
    probability[6:9, 8:10, 10:11] = 0.7
    table = lesion_table(mask, affine, probability)

    assert table["id"].tolist() == [1, 2]
    assert table["voxels"].tolist() == [8, 6]
    voxel_volume = 0.5 * 0.75 * 0.75
    np.testing.assert_allclose(table["volume_mm3"], [8 * voxel_volume, 6 * voxel_volume])
    # Lesion 1: voxel centre (1.5, 1.5, 1.5); lesion 2: (7, 8.5, 10).
    np.testing.assert_allclose(table["centroid_x_mm"], [90 - 0.5 * 1.5, 90 - 0.5 * 7])
    np.testing.assert_allclose(table["centroid_y_mm"], [-120 + 0.75 * 1.5, -120 + 0.75 * 8.5])
    np.testing.assert_allclose(table["centroid_z_mm"], [-60 + 0.75 * 1.5, -60 + 0.75 * 10])
    np.testing.assert_allclose(table["max_probability"], [0.9, 0.7], rtol=1e-6)
    np.testing.assert_allclose(table["mean_probability"], [(7 * 0.6 + 0.9) / 8, 0.7], rtol=1e-6)


def test_lesion_table_without_probability_or_lesions() -> None:
    mask = boxes((6, 6, 6), np.s_[1:3, 1:3, 1:3])
    table = lesion_table(mask, np.eye(4))
    assert table["max_probability"].isna().all() and table["mean_probability"].isna().all()
    empty = lesion_table(np.zeros((6, 6, 6), bool), np.eye(4))
    assert len(empty) == 0
    assert list(empty.columns) == list(table.columns)


def test_lesion_table_ids_follow_label_lesions() -> None:
    rng = np.random.default_rng(3)
    mask = blobs((20, 20, 20), rng, threshold=0.55)
    labels, count = label_lesions(mask, connectivity=6)
    table = lesion_table(mask, np.eye(4), connectivity=6)
    assert len(table) == count > 3
    assert table["voxels"].tolist() == [int((labels == i).sum()) for i in range(1, count + 1)]


# ---------------------------------------------------------------------------------------------
# the MSSEG detection rule


SLAB = np.s_[0:10, 0:10, 5:6]  # a 100-voxel reference lesion


@pytest.mark.parametrize(("covered", "detected"), [(10, False), (11, True)])
def test_a_reference_lesion_must_be_covered_by_more_than_alpha(covered: int, detected: bool) -> None:
    shape = (20, 20, 10)
    reference = boxes(shape, SLAB)
    prediction = np.zeros(shape, bool)
    prediction.reshape(-1)[np.flatnonzero(reference)[:covered]] = True  # the first rows of the slab
    result = detect_lesions(prediction, reference, min_voxels=1)
    assert result.reference[0].overlap_fraction == pytest.approx(covered / 100)
    assert result.reference[0].detected is detected


@pytest.mark.parametrize(("outside", "reference_detected"), [(70, True), (80, False)])
def test_a_predicted_lesion_more_than_beta_outside_the_reference_does_not_detect_it(
    outside: int, reference_detected: bool
) -> None:
    shape = (20, 30, 10)
    reference = boxes(shape, SLAB)
    # 30 voxels inside the slab, `outside` voxels beyond it, one lesion.
    prediction = boxes(shape, np.s_[0:10, 7 : 10 + outside // 10, 5:6])
    result = detect_lesions(prediction, reference, min_voxels=1)
    assert result.prediction[0].overlap_fraction == pytest.approx(30 / (30 + outside))
    assert result.reference[0].detected is reference_detected
    # The mirror test: 70 % of the reference lies outside the prediction, which is not more than beta.
    assert result.prediction[0].detected is True


def test_gamma_stops_the_search_once_enough_of_the_covered_part_is_accounted_for() -> None:
    shape = (20, 30, 10)
    reference = boxes(shape, np.s_[0:20, 0:5, 5:6])  # 100 voxels
    good = np.s_[0:13, 0:5, 5:6]  # 65 inside, nothing outside
    bad_inside, bad_outside = np.s_[15:20, 0:5, 5:6], np.s_[15:20, 5:25, 5:6]  # 25 inside, 100 outside
    prediction = boxes(shape, good, bad_inside, bad_outside)
    result = detect_lesions(prediction, reference, min_voxels=1)
    # 65 of the 90 covered voxels (72 % ≥ 65 %) come from the good lesion: the bad one is never looked at.
    assert result.reference[0].overlapping_ids == (1, 2)
    assert result.reference[0].detected is True


def test_a_bad_lesion_within_the_first_gamma_of_the_overlap_spoils_detection() -> None:
    shape = (20, 30, 10)
    reference = boxes(shape, np.s_[0:20, 0:5, 5:6])
    good = np.s_[0:10, 0:5, 5:6]  # 50 inside
    bad_inside, bad_outside = np.s_[12:20, 0:5, 5:6], np.s_[12:20, 5:30, 5:6]  # 40 inside, 200 outside
    result = detect_lesions(boxes(shape, good, bad_inside, bad_outside), reference, min_voxels=1)
    # 50/90 < 65 %, so the bad lesion (83 % outside) is checked, and fails the reference lesion.
    assert result.reference[0].detected is False
    assert [lesion.detected for lesion in result.prediction] == [True, True]


def test_detection_under_6_and_26_connectivity_of_corner_touching_lesions() -> None:
    prediction = boxes(CORNER_TOUCHING.shape, np.s_[0:3, 0:3, 0:3])
    with_26 = detect_lesions(prediction, CORNER_TOUCHING, min_voxels=1, connectivity=26)
    with_6 = detect_lesions(prediction, CORNER_TOUCHING, min_voxels=1, connectivity=6)
    assert (with_26.n_reference, with_26.n_detected_reference) == (1, 1)
    assert (with_6.n_reference, with_6.n_detected_reference) == (2, 1)
    assert with_6.n_detected_prediction == with_26.n_detected_prediction == 1


def test_small_lesions_are_removed_from_both_masks_before_detection() -> None:
    shape = (20, 20, 20)
    reference = boxes(shape, np.s_[0:3, 0:3, 0:3], np.s_[10:20, 10, 10])  # 27 voxels and 10 voxels
    prediction = boxes(shape, np.s_[0:3, 0:3, 0:3], np.s_[10:20, 15, 15], np.s_[10:21, 5, 5])  # 27, 10, 10
    result = detect_lesions(prediction, reference, min_voxels=11, voxel_volume_mm3=float(np.prod(MSSEG_SPACING)))
    assert (result.n_reference, result.n_prediction) == (1, 1)
    assert result.reference[0].volume_mm3 == pytest.approx(27 * 0.28125)
    assert result.false_positives == ()


def test_per_lesion_results_say_where_each_lesion_is_and_what_it_overlaps() -> None:
    shape = (12, 12, 12)
    reference = boxes(shape, np.s_[1:4, 1:4, 1:4], np.s_[8:11, 8:11, 8:11])
    prediction = boxes(shape, np.s_[1:4, 1:4, 2:5], np.s_[8:11, 1:3, 1:3])
    result = detect_lesions(prediction, reference, min_voxels=1, offset=(100, 0, 0))
    found, missed = result.reference
    assert (found.detected, missed.detected) == (True, False)
    assert found.centroid_voxel == (102.0, 2.0, 2.0)
    assert found.overlapping_ids == (1,) and missed.overlapping_ids == ()
    assert found.overlap_fraction == pytest.approx(18 / 27) and missed.overlap_fraction == 0.0
    assert [lesion.detected for lesion in result.false_positives] == [False]
    table = detections_table(result)
    assert table["mask"].tolist() == ["reference", "reference", "prediction", "prediction"]
    assert table["detected"].tolist() == [True, False, True, False]
    assert table["overlapping_ids"].tolist() == ["1", "", "1", ""]


@pytest.mark.parametrize("connectivity", [26, 6])
def test_detection_matches_a_literal_reading_of_the_rule_on_random_masks(connectivity: int) -> None:
    rng = np.random.default_rng(11 + connectivity)
    for _ in range(12):
        shape = tuple(int(s) for s in rng.integers(12, 26, 3))
        reference = blobs(shape, rng, threshold=0.54)
        prediction = blobs(shape, rng, threshold=0.54) | (reference & (rng.random(shape) < 0.8))
        result = detect_lesions(prediction, reference, min_voxels=3, connectivity=connectivity)
        expected_reference, expected_prediction = literal_msseg_detection(prediction, reference, 3, connectivity)
        assert [lesion.detected for lesion in result.reference] == expected_reference
        assert [lesion.detected for lesion in result.prediction] == expected_prediction


def test_detection_on_a_real_lesion_mask_against_a_dilated_copy() -> None:
    reference, _ = real_mask("patient02")
    box = ndimage.find_objects(reference.astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 3, 0), s.stop + 3) for s in box)
    reference = reference[box]
    prediction = ndimage.binary_dilation(reference)
    result = detect_lesions(prediction, reference, min_voxels=4)
    labels, _ = ndimage.label(reference, structure=np.ones((3, 3, 3)))
    assert result.n_reference == int((np.bincount(labels.ravel())[1:] >= 4).sum())
    detected = ([lesion.detected for lesion in result.reference], [lesion.detected for lesion in result.prediction])
    assert detected == literal_msseg_detection(prediction, reference, 4)
    # A dilated copy covers every reference lesion completely.
    assert all(lesion.overlap_fraction == 1.0 for lesion in result.reference)
