"""The real raw LIT pair (patient01): 3-4 mm slices on different oblique grids, with the data set's
own affine co-registration to a common space (``studyN_FLAIR_to_common_space.txt``) to compare with."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from msnewlesion.io import load_mask, load_volume, save_volume
from msnewlesion.preprocess import PreprocessOptions, preprocess_pair, to_native
from msnewlesion.preprocess.geometry import Grid, mean_displacement, resample, rotation_angle_degrees
from msnewlesion.preprocess.transforms import lps_to_ras, read_itk_affine
from preprocess_helpers import LIT_PAIR

STUDY1 = LIT_PAIR / "study1_FLAIR.nii.gz"
STUDY2 = LIT_PAIR / "study2_FLAIR.nii.gz"


# Every test shares the real LIT pair preprocessed at 1 mm (half a minute): the whole module is slow.
pytestmark = pytest.mark.slow


def _dataset_map(study: int) -> np.ndarray:
    """The data set's map from its common space to study N's world (RAS), read from its ITK file."""
    return lps_to_ras(read_itk_affine(LIT_PAIR / f"study{study}_FLAIR_to_common_space.txt"))


@pytest.fixture(scope="module")
def lit(tmp_path_factory):
    """Our preprocessing of the pair, with the data set's brain mask moved onto the baseline's grid.

    Registration with the default transform (Rigid); no N4, so that intensities compare with the data
    set's co-registration of the raw scans.
    """
    folder = tmp_path_factory.mktemp("lit")
    study1 = load_volume(STUDY1)
    brain = load_mask(LIT_PAIR / "brainmask.nii.gz")
    on_study1 = resample(
        brain.data, brain.affine, Grid(study1.shape, study1.affine), np.linalg.inv(_dataset_map(1)), order=0
    )
    mask_path = save_volume(study1.with_data(on_study1), folder / "brain_on_study1.nii.gz", dtype=np.uint8)
    options = PreprocessOptions(brain_mask=mask_path, bias_correction=False)
    pair = preprocess_pair(STUDY1, STUDY2, options)
    return pair, mask_path


def test_both_outputs_share_shape_and_affine_on_a_1mm_ras_grid(lit) -> None:
    pair, _ = lit
    assert pair.baseline.shape == pair.followup.shape == pair.brain_mask.shape
    np.testing.assert_array_equal(pair.baseline.affine, pair.followup.affine)
    assert pair.baseline.orientation == "RAS" and pair.baseline.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert pair.record["inputs"]["baseline"]["orientation"] == "LPS"  # reoriented
    assert pair.record["registration"]["transform"] == "Rigid"


def test_rigid_registration_agrees_with_the_datasets_transforms(lit) -> None:
    """Within 1 mm of mean displacement over the brain and 1° of rotation (measured: 0.16 mm, 0.07°)."""
    pair, _ = lit
    ours = np.array(pair.record["registration"]["followup_from_baseline_ras"])
    theirs = _dataset_map(2) @ np.linalg.inv(_dataset_map(1))  # study1 world → study2 world
    brain = load_mask(LIT_PAIR / "brainmask.nii.gz")
    points = (brain.affine[:3, :3] @ np.argwhere(brain.data).T).T + brain.affine[:3, 3]
    points_study1 = (_dataset_map(1)[:3, :3] @ points.T).T + _dataset_map(1)[:3, 3]
    assert mean_displacement(ours, theirs, points_study1) < 1.0
    assert rotation_angle_degrees(np.linalg.inv(theirs) @ ours) < 1.0
    # The scans really moved: about 10 mm and 7° apart in scanner coordinates.
    assert mean_displacement(np.eye(4), theirs, points_study1) > 8.0


def _correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.corrcoef(a[mask], b[mask])[0, 1])


def test_within_brain_correlation_is_as_high_as_with_the_datasets_coregistration(lit) -> None:
    pair, _ = lit
    study1, study2 = load_volume(STUDY1), load_volume(STUDY2)
    ours = _correlation(pair.baseline.data, pair.followup.data, pair.brain_mask.data)

    # The data set's own co-registration, in its own common space and brain mask (measured: 0.9272 against our
    # 0.9279 with antspyx's full-resolution Rigid, 0.9258 with the faster multi-resolution schedule of issue 21,
    # whose registration lands 0.015 mm further from the data set's: the price of its speed, within 0.002).
    brain = load_mask(LIT_PAIR / "brainmask.nii.gz")
    grid = Grid(brain.shape, brain.affine)
    theirs_own_space = _correlation(
        resample(study1.data, study1.affine, grid, _dataset_map(1), order=3),
        resample(study2.data, study2.affine, grid, _dataset_map(2), order=3),
        brain.data,
    )
    assert ours >= theirs_own_space - 0.002

    # Registration alone, on our grid and mask: the follow-up placed by the data set's transform instead of ours.
    # Theirs is a 12-parameter affine (it scales by up to 0.5 %), ours is rigid: equal within 0.0025.
    theirs_study1_to_study2 = _dataset_map(2) @ np.linalg.inv(_dataset_map(1))
    baseline = resample(study1.data, study1.affine, pair.grid, pair.common_to_baseline, order=1)
    followup_ours = resample(study2.data, study2.affine, pair.grid, pair.common_to_followup, order=1)
    followup_theirs = resample(
        study2.data, study2.affine, pair.grid, theirs_study1_to_study2 @ pair.common_to_baseline, order=3
    )
    mask = pair.brain_mask.data
    assert _correlation(baseline, followup_ours, mask) >= _correlation(baseline, followup_theirs, mask) - 0.0025


@pytest.mark.parametrize(
    ("which", "study", "name", "min_dice"), [("followup", 2, "gt", 0.90), ("baseline", 1, "brainmask", 0.99)]
)
def test_a_mask_goes_to_the_common_grid_and_back_up_to_its_border(
    lit, which: str, study: int, name: str, min_dice: float
) -> None:
    """Native (0.72×0.72×3-4 mm) → common (1 mm) → native, nearest neighbour both ways.

    Measured: Dice 0.92 for the small lesion-change masks (gt), 0.995 for the brain mask; every voxel
    that changes lies within 1.02 mm of the mask's border. Half a common voxel's diagonal plus half a
    native in-plane diagonal is 1.38 mm: nothing further from the border may change.
    """
    pair, _ = lit
    native = load_volume(STUDY1 if study == 1 else STUDY2)
    reference = load_mask(LIT_PAIR / f"{name}.nii.gz")
    mask = resample(
        reference.data, reference.affine, Grid(native.shape, native.affine), np.linalg.inv(_dataset_map(study)), order=0
    )
    _, common_to_native = pair.native(which)
    on_common = resample(mask, native.affine, pair.grid, common_to_native, order=0)
    back = to_native(on_common, pair, which, kind="mask").data
    assert 2 * (back & mask).sum() / (back.sum() + mask.sum()) >= min_dice
    distance_to_border = np.where(
        mask,
        ndimage.distance_transform_edt(mask, sampling=native.spacing),
        ndimage.distance_transform_edt(~mask, sampling=native.spacing),
    )
    assert distance_to_border[back ^ mask].max() <= 1.38


def test_results_mapped_back_overlay_the_original_files(lit, tmp_path: Path) -> None:
    pair, _ = lit
    probability = pair.brain_mask.data.astype(np.float32) * 0.8
    for which, path in (("baseline", STUDY1), ("followup", STUDY2)):
        original = nib.load(str(path))
        mapped = to_native(probability, pair, which, kind="probability")
        assert mapped.shape == original.shape
        np.testing.assert_array_equal(mapped.affine, original.affine)
        assert mapped.header["qform_code"] == original.header["qform_code"]
        assert mapped.header["sform_code"] == original.header["sform_code"]
        written = nib.load(str(save_volume(mapped, tmp_path / f"{which}_map.nii.gz")))
        np.testing.assert_allclose(written.affine, original.affine, atol=1e-4)
        assert written.shape == original.shape
        assert 0.0 < mapped.data.max() <= 0.8 + 1e-6
