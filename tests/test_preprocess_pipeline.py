"""The preprocessing pipeline on an analytic head phantom whose motion between the sessions is known."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from msnewlesion.errors import GeometryError, InputError, OutputExistsError
from msnewlesion.io import Volume, load_volume
from msnewlesion.model.config import ModelConfig
from msnewlesion.preprocess import (
    OUTPUT_NAMES,
    NativeGrid,
    PreprocessOptions,
    preprocess_pair,
    save_preprocessed,
    to_native,
)
from msnewlesion.preprocess.geometry import Grid, mean_displacement, resample, rotation_angle_degrees
from msnewlesion.preprocess.registration import RegistrationError
from msnewlesion.preprocess.transforms import lps_to_ras, read_itk_affine
from preprocess_helpers import brain_value, grid_affine, phantom_volume, rigid, sample, save_nifti

BASELINE_AFFINE = rigid((8.0, 0.0, -5.0), (1.0, -2.0, 0.5)) @ grid_affine((72, 88, 70), (2.0, 2.0, 2.0), "LPS")
# Where the head is at follow-up: this maps the follow-up scanner's world to the baseline's.
FOLLOWUP_POSE = rigid((3.0, -4.0, 5.0), (4.0, -3.0, 2.0))
MOTION = np.linalg.inv(FOLLOWUP_POSE)  # baseline world → follow-up world

FAST = {"skull_strip": "none", "bias_correction": False, "spacing": (2.0, 2.0, 2.0)}


@pytest.fixture(scope="module")
def phantom_pair(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("phantom")
    baseline = phantom_volume((72, 88, 70), (2.0, 2.0, 2.0), affine=BASELINE_AFFINE)
    followup = phantom_volume((64, 78, 48), (2.2, 2.2, 3.0), "RAS", pose=FOLLOWUP_POSE)
    return save_nifti(baseline, folder / "ses-01.nii.gz"), save_nifti(followup, folder / "ses-02.nii.gz")


@pytest.fixture(scope="module")
def halfway(phantom_pair):
    return preprocess_pair(*phantom_pair, PreprocessOptions(**FAST))


def _brain_points(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    inside = sample(brain_value, shape, affine)
    index = np.argwhere(inside)[::50]
    return (affine[:3, :3] @ index.T).T + affine[:3, 3]


def test_registration_recovers_the_known_head_motion(halfway) -> None:
    found = np.array(halfway.record["registration"]["followup_from_baseline_ras"])
    points = _brain_points(BASELINE_AFFINE, (72, 88, 70))
    assert mean_displacement(found, MOTION, points) < 0.5
    assert rotation_angle_degrees(np.linalg.inv(MOTION) @ found) < 0.5  # 0.35° measured (2 mm phantom)


def test_halfway_space_moves_each_scan_by_half(halfway) -> None:
    to_baseline, to_followup = halfway.common_to_baseline, halfway.common_to_followup
    found = np.array(halfway.record["registration"]["followup_from_baseline_ras"])
    np.testing.assert_allclose(to_followup, found @ to_baseline, atol=1e-7)
    angle = rotation_angle_degrees(found)
    assert rotation_angle_degrees(to_baseline) == pytest.approx(angle / 2, abs=1e-6)
    assert rotation_angle_degrees(to_followup) == pytest.approx(angle / 2, abs=1e-6)
    # Both maps are H⁻¹ and H: the same rotation, undone and done, and translations of one length.
    np.testing.assert_allclose(to_baseline[:3, :3], to_followup[:3, :3].T, atol=1e-7)
    assert np.linalg.norm(to_baseline[:3, 3]) == pytest.approx(np.linalg.norm(to_followup[:3, 3]), rel=1e-6)


def test_outputs_share_one_canonical_grid_and_are_normalised_inside_the_brain(halfway) -> None:
    baseline, followup, brain = halfway.baseline, halfway.followup, halfway.brain_mask
    assert baseline.shape == followup.shape == brain.shape
    np.testing.assert_array_equal(baseline.affine, followup.affine)
    np.testing.assert_array_equal(baseline.affine, brain.affine)
    assert baseline.orientation == "RAS" and baseline.spacing == pytest.approx((2.0, 2.0, 2.0))
    assert baseline.data.dtype == np.float32 and brain.data.dtype == bool
    for image in (baseline, followup):
        inside = image.data[brain.data]
        assert inside.mean() == pytest.approx(0.0, abs=1e-4) and inside.std() == pytest.approx(1.0, abs=1e-4)
        assert not image.data[~brain.data].any()
    # The grid is the brain's box plus 15 voxels wherever the field of view allows it.
    box = np.argwhere(brain.data)
    assert (np.array(brain.shape) - 1 - box.max(axis=0) <= 15).all()
    clipped = np.array(halfway.record["steps"][3]["crop_start_voxels"]) == 0
    np.testing.assert_array_equal(box.min(axis=0)[~clipped], 15)
    assert (box.min(axis=0)[clipped] <= 15).all()


def test_registered_time_points_agree_inside_the_brain(halfway) -> None:
    brain = halfway.brain_mask.data
    correlation = np.corrcoef(halfway.baseline.data[brain], halfway.followup.data[brain])[0, 1]
    assert correlation > 0.99


def test_common_grid_holds_the_phantom_where_the_registration_says(halfway) -> None:
    # Mapped to the baseline world by common_to_baseline, the common grid must hold the phantom's brain
    # inside the mask; with skull_strip="none" the mask is the non-zero head (an ellipsoid of 1.18 litres).
    truth = sample(brain_value, halfway.grid.shape, halfway.grid.affine, halfway.common_to_baseline)
    assert truth.sum() > 0 and not truth[~halfway.brain_mask.data].any()
    head_ml = 4 / 3 * np.pi * 62 * 76 * 60 / 1000
    assert halfway.record["brain_mask"]["volume_ml"] == pytest.approx(head_ml, rel=0.05)


def test_to_native_gives_the_exact_input_geometry_and_brings_a_mask_back(phantom_pair, halfway) -> None:
    for which, path in zip(("baseline", "followup"), phantom_pair, strict=True):
        original = nib.load(str(path))
        _, to_world = halfway.native(which)
        truth = sample(brain_value, original.shape, original.affine, None if which == "baseline" else FOLLOWUP_POSE)
        on_common = resample(truth, original.affine, halfway.grid, to_world, order=0)
        back = to_native(on_common, halfway, which, kind="mask")
        assert back.shape == original.shape and back.data.dtype == bool
        np.testing.assert_array_equal(back.affine, original.affine)
        assert back.header["pixdim"].tolist() == original.header["pixdim"].tolist()
        dice = 2 * (back.data & truth).sum() / (back.data.sum() + truth.sum())
        assert dice > 0.97
        probability = to_native(on_common.astype(np.float32), halfway, which, kind="probability")
        assert probability.data.dtype == np.float32 and 0.0 <= probability.data.min() <= probability.data.max() <= 1.0


def test_to_native_refuses_arrays_of_another_grid(halfway) -> None:
    with pytest.raises(GeometryError, match="not on the common grid"):
        to_native(np.zeros((3, 3, 3)), halfway, "followup", kind="mask")
    with pytest.raises(InputError, match="kind"):
        to_native(halfway.brain_mask.data, halfway, "followup", kind="labels")


def test_space_baseline_and_orientation_lps(phantom_pair) -> None:
    pair = preprocess_pair(*phantom_pair, PreprocessOptions(**FAST, registration="baseline", orientation="LPS"))
    np.testing.assert_array_equal(pair.common_to_baseline, np.eye(4))
    found = np.array(pair.record["registration"]["followup_from_baseline_ras"])
    np.testing.assert_allclose(pair.common_to_followup, found, atol=1e-8)
    assert pair.baseline.orientation == "LPS"
    assert pair.baseline.header["sform_code"] == 1  # the baseline scanner's own world


def test_without_registration_a_fitting_grid_is_used_voxel_for_voxel(tmp_path) -> None:
    affine = grid_affine((60, 70, 56), (2.0, 2.0, 2.0), "RAS")
    baseline = phantom_volume((60, 70, 56), (2.0, 2.0, 2.0), "RAS")
    followup = Volume(baseline.data * 1.1 + 5.0 * (baseline.data > 0), affine, baseline.header)
    path_b = save_nifti(baseline, tmp_path / "b.nii.gz")
    path_f = save_nifti(followup, tmp_path / "f.nii.gz")
    options = PreprocessOptions(**{**FAST, "registration": "none"}, intensity_normalization="none")
    pair = preprocess_pair(path_b, path_f, options)

    start = np.round(np.linalg.inv(affine) @ pair.grid.affine[:, 3])[:3].astype(int)
    np.testing.assert_allclose(pair.grid.affine[:3, :3], affine[:3, :3])
    crop = tuple(slice(s, s + n) for s, n in zip(start, pair.grid.shape, strict=True))
    brain = pair.brain_mask.data
    np.testing.assert_array_equal(brain, baseline.data[crop] != 0)
    np.testing.assert_array_equal(pair.baseline.data, np.where(brain, baseline.data[crop], 0))
    back = to_native(brain, pair, "followup", kind="mask")
    np.testing.assert_array_equal(back.data, baseline.data != 0)
    assert pair.record["registration"] == {"space": "none", "enabled": False}


def test_without_registration_the_grids_must_match(phantom_pair) -> None:
    with pytest.raises(GeometryError, match="share one grid"):
        preprocess_pair(*phantom_pair, PreprocessOptions(**{**FAST, "registration": "none"}))


def test_a_users_brain_mask_is_used_and_must_fit_the_baseline(phantom_pair, tmp_path) -> None:
    baseline = nib.load(str(phantom_pair[0]))
    brain = sample(brain_value, baseline.shape, baseline.affine)
    mask_path = tmp_path / "brain.nii.gz"
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), baseline.affine), str(mask_path))
    pair = preprocess_pair(*phantom_pair, PreprocessOptions(**FAST, brain_mask=mask_path))
    truth = sample(brain_value, pair.grid.shape, pair.grid.affine, pair.common_to_baseline)
    assert 2 * (pair.brain_mask.data & truth).sum() / (pair.brain_mask.data.sum() + truth.sum()) > 0.97
    assert pair.record["registration"]["fixed_mask"] == "the brain mask given"

    nib.save(nib.Nifti1Image(brain[:-1].astype(np.uint8), baseline.affine), str(tmp_path / "short.nii.gz"))
    with pytest.raises(GeometryError, match="brain mask and the baseline FLAIR are not on the same grid"):
        preprocess_pair(*phantom_pair, PreprocessOptions(**FAST, brain_mask=tmp_path / "short.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros(baseline.shape, np.uint8), baseline.affine), str(tmp_path / "empty.nii.gz"))
    with pytest.raises(InputError, match="empty"):
        preprocess_pair(*phantom_pair, PreprocessOptions(**FAST, brain_mask=tmp_path / "empty.nii.gz"))


def test_saved_files_read_back_and_the_transforms_reproduce_the_resampling_in_ants(halfway, phantom_pair, tmp_path):
    import ants

    written = save_preprocessed(halfway, tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(OUTPUT_NAMES.values())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(OUTPUT_NAMES.values())
    baseline = load_volume(tmp_path / "out" / "baseline.nii.gz")
    followup = load_volume(tmp_path / "out" / "followup.nii.gz")
    mask = nib.load(str(tmp_path / "out" / "brain_mask.nii.gz"))
    np.testing.assert_allclose(baseline.affine, halfway.grid.affine, atol=1e-5)
    np.testing.assert_array_equal(followup.data, halfway.followup.data)
    assert mask.get_data_dtype() == np.uint8 and np.array_equal(np.asarray(mask.dataobj) > 0, halfway.brain_mask.data)

    for which, native_path in zip(("baseline", "followup"), phantom_pair, strict=True):
        transform_file = tmp_path / "out" / f"{which}_to_common.txt"
        _, common_to_native = halfway.native(which)
        np.testing.assert_allclose(lps_to_ras(read_itk_affine(transform_file)), common_to_native, atol=1e-6)
        native = load_volume(native_path)
        by_ants = ants.apply_transforms(
            fixed=ants.image_read(str(tmp_path / "out" / "baseline.nii.gz")),
            moving=ants.image_read(str(native_path)),
            transformlist=[str(transform_file)],
            interpolator="linear",
        ).numpy()
        ours = resample(native.data, native.affine, halfway.grid, common_to_native, order=1)
        inside = resample(np.ones(native.shape, bool), native.affine, halfway.grid, common_to_native, order=0)
        inside &= halfway.brain_mask.data
        assert np.abs(by_ants[inside] - ours[inside]).max() < 1e-2 * ours.max()

    record = json.loads((tmp_path / "out" / "preprocess.json").read_text())
    steps = [step["step"] for step in record["steps"]]
    assert steps == ["read", "registration", "skull_strip", "reorient_and_resample", "bias_correction", "normalisation"]
    assert all(step["seconds"] >= 0 for step in record["steps"])
    assert record["software"]["antspyx"] and record["software"]["numpy"] == np.__version__
    assert record["options"]["transform"] == "Rigid"
    assert record["files"]["baseline_transform"] == "baseline_to_common.txt"


def test_saving_refuses_existing_files_and_inputs(halfway, tmp_path) -> None:
    out = tmp_path / "out"
    save_preprocessed(halfway, out)
    before = (out / "baseline.nii.gz").stat().st_mtime_ns
    with pytest.raises(OutputExistsError, match="`overwrite=True`"):
        save_preprocessed(halfway, out)
    assert (out / "baseline.nii.gz").stat().st_mtime_ns == before
    (out / "notes.txt").write_text("mine")
    save_preprocessed(halfway, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    with pytest.raises(InputError, match="is a file"):
        save_preprocessed(halfway, out / "notes.txt")
    # A pair whose baseline was read from the output folder must not be written over it.
    reread = dataclasses.replace(
        halfway, baseline_native=NativeGrid((2, 2, 2), np.eye(4), None, out / "baseline.nii.gz")
    )
    with pytest.raises(InputError, match="one of the inputs"):
        save_preprocessed(reread, out, overwrite=True)


@pytest.mark.slow
def test_bias_correction_removes_most_of_a_smooth_field() -> None:
    clean = phantom_volume((30, 36, 28), (5.0, 5.0, 5.0), "RAS")
    field = sample(lambda p: 1.0 + 0.4 * p[:, 0] / 70.0 - 0.25 * p[:, 2] / 60.0, clean.shape, clean.affine)
    biased = Volume((clean.data * field).astype(np.float32), clean.affine, clean.header)
    options = {**FAST, "registration": "none", "spacing": (5.0, 5.0, 5.0), "intensity_normalization": "none"}
    pair = preprocess_pair(biased, biased, PreprocessOptions(**{**options, "bias_correction": True}))
    brain = pair.brain_mask.data
    truth = resample(clean.data, clean.affine, pair.grid, order=0)[brain]
    before = resample(biased.data, clean.affine, pair.grid, order=0)[brain] / truth
    after = pair.baseline.data[brain] / truth
    # What is left of the field, relative to its size (a uniform scale does not matter).
    assert after.std() / after.mean() < 0.5 * before.std() / before.mean()
    assert pair.record["steps"][4]["enabled"] is True and pair.record["steps"][4]["shrink_factor"] == [1, 1, 1]


def test_a_registration_that_lands_far_off_is_refused(phantom_pair, monkeypatch) -> None:
    import msnewlesion.preprocess.registration as registration

    monkeypatch.setattr(registration, "register_rigid", lambda *a, **k: MOTION @ rigid((0, 0, 0), (25.0, 0, 0)))
    with pytest.raises(RegistrationError, match="landed far off") as caught:
        preprocess_pair(*phantom_pair, PreprocessOptions(**FAST))
    assert "ses-01.nii.gz" in str(caught.value) and "ses-02.nii.gz" in str(caught.value)
    # Only the coarse QuickRigid has a finer transform to suggest (issue 14, item 7).
    assert ("try `transform=\"Rigid\"`" in str(caught.value)) == (FAST.get("transform") == "QuickRigid")
    for transform, advice in (("Rigid", False), ("QuickRigid", True)):
        with pytest.raises(RegistrationError, match="landed far off") as caught:
            preprocess_pair(*phantom_pair, PreprocessOptions(**{**FAST, "transform": transform}))
        assert ("try `transform=\"Rigid\"`" in str(caught.value)) is advice, str(caught.value)
        assert ("Rigid transform" in str(caught.value)) is False

    monkeypatch.setattr(registration, "register_rigid", lambda *a, **k: rigid((0, 0, 50.0), (0, 0, 0)))
    with pytest.raises(RegistrationError, match=r"rotated the scans by 50\.0°"):
        preprocess_pair(*phantom_pair, PreprocessOptions(**FAST))


def test_an_ants_failure_names_both_files_and_the_step(phantom_pair, monkeypatch) -> None:
    import msnewlesion.preprocess.registration as registration
    from msnewlesion.preprocess import _registration_worker

    def fail(*args, **kwargs):
        raise RuntimeError("Registration failed with error code 1")

    # antsRegistration runs in a child process: its failure comes back as an answer ...
    monkeypatch.setattr(_registration_worker, "run_ants_registration", fail)
    request = ((np.ones((4, 4, 4), np.float32), np.eye(4)), (np.ones((4, 4, 4), np.float32), np.eye(4)), None,
               "QuickRigid", 1, "/nonexistent/rigid_", False)  # fmt: skip
    assert _registration_worker._register(request) == ("error", "Registration failed with error code 1")
    # ... that the parent turns into an error naming both files and the step.
    answer = ("error", "Registration failed with error code 1")
    monkeypatch.setattr(registration._WORKER, "run", lambda request, on_iteration=None: answer)
    with pytest.raises(RegistrationError, match=r"registration of the follow-up FLAIR .*ses-02.nii.gz.* failed"):
        preprocess_pair(*phantom_pair, PreprocessOptions(**FAST))


def _write(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def test_bad_inputs_are_refused_naming_the_file(phantom_pair, tmp_path) -> None:
    good = phantom_pair[0]
    (tmp_path / "notnifti.nii.gz").write_text("hello")
    cases = {
        _write(tmp_path / "four_d.nii.gz", np.ones((8, 8, 8, 2), np.float32)): "a 3D image is needed",
        _write(tmp_path / "nan.nii.gz", np.where(np.arange(512).reshape(8, 8, 8) == 3, np.nan, 1.0)): "NaN",
        _write(tmp_path / "empty.nii.gz", np.zeros((8, 8, 8), np.float32)): "empty",
        _write(tmp_path / "flat.nii.gz", np.full((8, 8, 8), 4.0, np.float32)): "constant",
        tmp_path / "notnifti.nii.gz": "could not read",
        tmp_path / "missing.nii.gz": "not found",
    }
    for path, message in cases.items():
        with pytest.raises(InputError, match=message) as caught:
            preprocess_pair(good, path, PreprocessOptions(**FAST))
        assert path.name in str(caught.value)


def test_a_4d_file_holding_one_volume_is_accepted(tmp_path) -> None:
    volume = phantom_volume((40, 48, 38), (3.6, 3.6, 3.6), "RAS")
    path = _write(tmp_path / "one.nii.gz", volume.data[..., None], volume.affine)
    options = PreprocessOptions(**{**FAST, "registration": "none", "spacing": (3.6, 3.6, 3.6)})
    pair = preprocess_pair(path, path, options)
    assert pair.baseline_native.shape == (40, 48, 38)


def test_options_are_checked_and_follow_the_model() -> None:
    with pytest.raises(InputError) as caught:
        PreprocessOptions(spacing=(1, 0, 1), orientation="XYZ", registration="mni", transform="SyN")
    message = str(caught.value)
    for part in ("spacing", "orientation", "registration", "transform"):
        assert part in message
    config = ModelConfig(
        spacing=(0.5, 0.75, 0.75), orientation="LPS", intensity_normalization="zscore-brain-box", box_margin=10
    )
    options = PreprocessOptions.for_model(config, skull_strip="none", crop_margin=4)
    assert options.spacing == (0.5, 0.75, 0.75) and options.orientation == "LPS"
    assert options.intensity_normalization == "zscore-brain-box" and options.crop_margin == 4
    assert options.skull_strip == "none" and options.registration == "halfway"


def test_native_grids_keep_the_original_header(phantom_pair, halfway) -> None:
    original = nib.load(str(phantom_pair[1]))
    assert halfway.followup_native.shape == original.shape
    np.testing.assert_array_equal(halfway.followup_native.affine, original.affine)
    assert halfway.followup_native.header["srow_x"].tolist() == original.header["srow_x"].tolist()
    assert halfway.followup_native.path == phantom_pair[1]
    grid = halfway.followup_native.grid
    assert isinstance(grid, Grid) and grid.shape == original.shape


def test_a_sheared_affine_is_registered_exactly() -> None:
    """ITK cannot hold a shear: such a scan is resampled onto an orthogonal grid before registration."""
    from msnewlesion.preprocess.registration import register_rigid

    baseline = phantom_volume((72, 88, 70), (2.0, 2.0, 2.0), "RAS")
    sheared = grid_affine((64, 78, 48), (2.2, 2.2, 3.0), "RAS")
    sheared[0, 2] += 0.15  # x moves 0.15 mm per slice: 7 mm over the stack
    followup = phantom_volume((64, 78, 48), (2.2, 2.2, 3.0), affine=sheared)
    found = register_rigid(baseline.data, baseline.affine, followup.data, followup.affine, transform="Rigid")
    assert mean_displacement(found, np.eye(4), _brain_points(baseline.affine, baseline.shape)) < 0.2
