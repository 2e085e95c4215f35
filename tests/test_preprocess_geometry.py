"""Grids, rigid transforms, resampling, ITK transform files and intensity normalisation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from msnewlesion.errors import InputError
from msnewlesion.preprocess.geometry import (
    RAS_TO_LPS,
    Grid,
    check_orientation,
    common_grid,
    fov_corners,
    half_transform,
    resample,
    rotation_angle_degrees,
)
from msnewlesion.preprocess.intensity import check_image_content, normalize_intensity
from msnewlesion.preprocess.transforms import read_itk_affine, write_itk_affine
from preprocess_helpers import LIT_PAIR, grid_affine, rigid, sample


def test_orientation_codes_any_axis_order_and_no_repeats() -> None:
    assert check_orientation("ras") == "RAS"
    assert check_orientation("PSL") == "PSL"
    for bad in ("RRS", "RA", "XYZ", "RASP"):
        with pytest.raises(InputError, match="axis codes"):
            check_orientation(bad)


@pytest.mark.parametrize("seed", range(5))
def test_half_transform_twice_is_the_transform_and_halves_the_angle(seed: int) -> None:
    rng = np.random.default_rng(seed)
    transform = rigid(tuple(rng.uniform(-40, 40, 3)), tuple(rng.uniform(-30, 30, 3)))
    half = half_transform(transform)
    np.testing.assert_allclose(half @ half, transform, atol=1e-10)
    np.testing.assert_allclose(half[:3, :3] @ half[:3, :3].T, np.eye(3), atol=1e-12)
    assert rotation_angle_degrees(half) == pytest.approx(rotation_angle_degrees(transform) / 2, abs=1e-9)


def test_resample_on_the_same_lattice_copies_exactly_and_pads_with_zero() -> None:
    rng = np.random.default_rng(0)
    data = rng.random((6, 7, 8)).astype(np.float32)
    affine = grid_affine(data.shape, (1.5, 1.5, 2.0), "LPS")
    shifted = Grid((6, 7, 8), affine @ _shift((2, -1, 0)))
    for order in (0, 1, 3):
        out = resample(data, affine, shifted, order=order)
        np.testing.assert_array_equal(out[:4, 1:, :], data[2:, :6, :])
        assert not out[4:].any() and not out[:, 0].any()


def test_reorientation_alone_moves_voxels_without_changing_values() -> None:
    rng = np.random.default_rng(1)
    data = rng.random((9, 10, 11)).astype(np.float32)
    lps = grid_affine(data.shape, (1.0, 1.2, 1.5), "LPS")
    ras = common_grid(fov_corners(data.shape, lps), orientation="RAS", spacing=(1.0, 1.2, 1.5), anchor=lps[:3, 3])
    out = resample(data, lps, ras, order=3)
    np.testing.assert_allclose(out, data[::-1, ::-1, :], atol=1e-5)
    assert "".join(nib.aff2axcodes(ras.affine)) == "RAS"


def test_linear_and_bspline_reproduce_a_linear_image_on_an_oblique_grid() -> None:
    source_affine = rigid((10, -5, 20), (3, 1, -2)) @ grid_affine((30, 32, 28), (1.1, 1.0, 1.3), "LPI")

    def ramp(points: np.ndarray) -> np.ndarray:
        return 2.0 * points[:, 0] - 1.5 * points[:, 1] + 0.5 * points[:, 2] + 100.0

    data = sample(ramp, (30, 32, 28), source_affine).astype(np.float32)
    target = Grid((12, 12, 12), grid_affine((12, 12, 12), (1.0, 1.0, 1.0), "RAS"))
    expected = sample(ramp, target.shape, target.affine)
    for order, tolerance in ((1, 1e-3), (3, 0.05)):
        np.testing.assert_allclose(resample(data, source_affine, target, order=order), expected, atol=tolerance)


def test_points_outside_the_field_of_view_are_zero() -> None:
    data = np.ones((4, 4, 4), dtype=np.float32)
    target = Grid((10, 1, 1), _shift((-3, 1, 1)))
    for order in (0, 1, 3):
        # Voxel centres -3..6 along x: the field of view spans -0.5..3.5, so 0..3 are inside.
        np.testing.assert_array_equal(
            resample(data, np.eye(4), target, order=order)[:, 0, 0], [0, 0, 0] + [1] * 4 + [0] * 3
        )


def test_common_grid_reproduces_a_grid_that_already_fits() -> None:
    affine = grid_affine((20, 30, 25), (0.5, 0.75, 0.75), "RAS")
    grid = common_grid(
        fov_corners((20, 30, 25), affine), orientation="RAS", spacing=(0.5, 0.75, 0.75), anchor=affine[:3, 3]
    )
    assert grid.shape == (20, 30, 25)
    np.testing.assert_allclose(grid.affine, affine, atol=1e-12)


def test_common_grid_refuses_absurd_sizes() -> None:
    with pytest.raises(InputError, match="too large"):
        common_grid(
            np.array([[0, 0, 0], [300, 300, 300.0]]), orientation="RAS", spacing=(0.01, 0.01, 0.01), anchor=np.zeros(3)
        )


def test_itk_file_reads_back_in_ants_and_maps_points_like_ours(tmp_path) -> None:
    import ants

    matrix_lps = rigid((12, -7, 30), (5, -9, 14))
    path = write_itk_affine(tmp_path / "t.txt", matrix_lps)
    np.testing.assert_allclose(read_itk_affine(path), matrix_lps, atol=1e-12)
    transform = ants.read_transform(str(path))
    for point in ([0, 0, 0], [10, -20, 30], [-55.5, 12.25, 80]):
        np.testing.assert_allclose(transform.apply_to_point(point), (matrix_lps @ np.r_[point, 1.0])[:3], atol=1e-6)


def test_reading_the_lit_transforms_with_their_centre_matches_ants() -> None:
    import ants

    for name in ("study1_FLAIR_to_common_space.txt", "study2_FLAIR_to_common_space.txt"):
        ours = read_itk_affine(LIT_PAIR / name)
        theirs = ants.read_transform(str(LIT_PAIR / name))
        for point in ([0, 0, 0], [40, -60, 20], [-80, 10, -30]):
            np.testing.assert_allclose(theirs.apply_to_point(point), (ours @ np.r_[point, 1.0])[:3], atol=1e-4)


def test_ants_image_geometry_is_the_nifti_affine_in_lps() -> None:
    import ants

    from msnewlesion.preprocess.registration import to_ants_image

    affine = rigid((15, 5, -10), (7, -3, 12)) @ grid_affine((5, 6, 7), (0.7, 0.8, 3.0), "LPS")
    data = np.random.default_rng(2).random((5, 6, 7)).astype(np.float32)
    image = to_ants_image(data, affine)
    np.testing.assert_array_equal(image.numpy(), data)
    for index in ((0, 0, 0), (4, 5, 6), (2, 1, 3)):
        expected = (RAS_TO_LPS @ affine @ np.r_[index, 1.0])[:3]
        np.testing.assert_allclose(ants.transform_index_to_physical_point(image, index), expected, atol=1e-4)


def test_zscore_inside_the_brain_and_the_published_box_recipe() -> None:
    rng = np.random.default_rng(3)
    image = rng.normal(300.0, 40.0, (20, 20, 20))
    brain = np.zeros(image.shape, dtype=bool)
    brain[5:15, 4:16, 6:14] = True

    inside, stats = normalize_intensity(image, brain, "zscore-brain")
    assert inside.dtype == np.float32
    assert inside[brain].mean() == pytest.approx(0.0, abs=1e-5) and inside[brain].std() == pytest.approx(1.0, abs=1e-5)
    assert not inside[~brain].any()
    assert stats["mean"] == pytest.approx(image[brain].mean())

    box, stats = normalize_intensity(image, brain, "zscore-brain-box")
    assert box.mean() == pytest.approx(0.0, abs=1e-5) and box.std() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(box[~brain], -stats["mean"] / stats["std"], rtol=1e-5)

    masked, stats = normalize_intensity(image, brain, "none")
    np.testing.assert_allclose(masked, np.where(brain, image, 0), rtol=1e-6)
    assert stats == {}


def test_a_constant_brain_cannot_be_normalised() -> None:
    with pytest.raises(InputError, match="constant inside the brain mask"):
        normalize_intensity(np.full((5, 5, 5), 7.0), np.ones((5, 5, 5), dtype=bool), "zscore-brain", what="x.nii")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros((4, 4, 4)), "empty"),
        (np.full((4, 4, 4), 3.0), "constant"),
        (np.where(np.eye(4, dtype=bool)[..., None], np.nan, 1.0) * np.ones((4, 4, 4)), "NaN or infinite"),
    ],
)
def test_image_content_checks_name_the_file(data: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        check_image_content(data, "baseline FLAIR scan01.nii.gz")
    assert "scan01.nii.gz" in str(caught.value)


def _shift(voxels: tuple[float, float, float]) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = voxels
    return matrix
