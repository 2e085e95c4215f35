"""Labels drawn on a native scan are carried into the common space (for training data)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from msnewlesion.cli import app
from msnewlesion.errors import GeometryError
from msnewlesion.io import Volume, load_mask, load_volume
from msnewlesion.preprocess import PreprocessOptions, preprocess_pair, to_common, to_native
from preprocess_helpers import grid_affine, phantom_value, rigid, sample


def _scan(path: Path, shape, affine, pose=None) -> Path:
    nib.save(nib.Nifti1Image((500 * sample(phantom_value, shape, affine, pose)).astype(np.float32), affine), str(path))
    return path


def _ball(shape, affine, centre_world, radius) -> np.ndarray:
    index = np.indices(shape).reshape(3, -1).T
    points = index @ affine[:3, :3].T + affine[:3, 3]
    return (np.linalg.norm(points - centre_world, axis=1) <= radius).reshape(shape)


def test_a_followup_label_lands_where_it_was_drawn(tmp_path: Path, runner: CliRunner) -> None:
    base_affine = grid_affine((80, 96, 60), (1.6, 1.6, 2.0), "LPS")
    follow_affine = grid_affine((90, 100, 50), (1.5, 1.5, 2.5), "RAS")
    pose = rigid((2.0, -3.0, 2.0), (1.5, 2.0, -1.0))
    baseline = _scan(tmp_path / "t1.nii.gz", (80, 96, 60), base_affine)
    followup = _scan(tmp_path / "t2.nii.gz", (90, 100, 50), follow_affine, pose)
    centre_followup = np.array([10.0, -8.0, 5.0])
    label = _ball((90, 100, 50), follow_affine, centre_followup, 7.0)
    nib.save(nib.Nifti1Image(label.astype(np.uint8), follow_affine), str(tmp_path / "new.nii.gz"))

    result = runner.invoke(
        app,
        [
            "preprocess",
            str(baseline),
            str(followup),
            "-o",
            str(tmp_path / "prep"),
            "--skull-strip",
            "none",
            "--transform",
            "QuickRigid",
            "--no-bias-correction",
            "--spacing",
            "2",
            "2",
            "2",
            "--followup-label",
            str(tmp_path / "new.nii.gz"),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    carried = nib.load(str(tmp_path / "prep" / "followup_label.nii.gz"))
    common = nib.load(str(tmp_path / "prep" / "followup.nii.gz"))
    assert carried.shape == common.shape and np.array_equal(carried.affine, common.affine)
    assert carried.get_data_dtype() == np.uint8

    # the same pair in Python: the carried label is where the ball is in the common space
    pair = preprocess_pair(
        load_volume(baseline),
        load_volume(followup),
        PreprocessOptions(skull_strip="none", transform="QuickRigid", bias_correction=False, spacing=(2.0, 2.0, 2.0)),
    )
    in_common = to_common(load_mask(tmp_path / "new.nii.gz"), pair, "followup", kind="mask")
    centre_common = (np.linalg.inv(pair.common_to_followup) @ np.append(centre_followup, 1.0))[:3]
    expected = _ball(pair.grid.shape, pair.grid.affine, centre_common, 7.0)
    overlap = 2 * np.sum(expected & in_common.data) / (expected.sum() + in_common.data.sum())
    assert overlap > 0.85
    # and back again onto the follow-up's grid
    back = to_native(in_common.data, pair, "followup", kind="mask")
    assert 2 * np.sum(back.data & label) / (back.data.sum() + label.sum()) > 0.85

    with pytest.raises(GeometryError, match="not on the baseline scan's grid"):
        to_common(Volume(label, follow_affine), pair, "baseline", kind="mask")


def test_several_named_labels_per_time_point(tmp_path: Path, runner: CliRunner) -> None:
    affine = grid_affine((64, 72, 56), (2.0, 2.0, 2.0), "RAS")
    baseline = _scan(tmp_path / "t1.nii.gz", (64, 72, 56), affine)
    followup = _scan(tmp_path / "t2.nii.gz", (64, 72, 56), affine)
    small = _ball((64, 72, 56), affine, np.array([0.0, 0.0, 0.0]), 5.0)
    large = _ball((64, 72, 56), affine, np.array([0.0, 0.0, 0.0]), 9.0)
    for name, mask in (("small", small), ("large", large)):
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), str(tmp_path / f"{name}.nii.gz"))
    out = tmp_path / "prep"
    command = ["preprocess", str(baseline), str(followup), "-o", str(out), "--space", "none", "--skull-strip", "none"]
    command += ["--no-bias-correction", "--spacing", "2", "2", "2", "--quiet"]
    labels = ["--followup-label", f"new_lesions={tmp_path / 'small.nii.gz'}"]
    labels += ["--followup-label", f"lesions_followup={tmp_path / 'large.nii.gz'}"]
    labels += ["--baseline-label", str(tmp_path / "small.nii.gz")]
    result = runner.invoke(app, [*command, *labels])
    assert result.exit_code == 0, result.output
    # no registration, same grid: the labels are copied voxel for voxel (cropped to the brain's box)
    assert load_mask(out / "new_lesions.nii.gz").data.sum() == small.sum()
    assert load_mask(out / "lesions_followup.nii.gz").data.sum() == large.sum()
    assert load_mask(out / "baseline_label.nii.gz").data.sum() == small.sum()  # unnamed: the old default name

    clash = ["--followup-label", f"x={tmp_path / 'small.nii.gz'}"]
    clash += ["--baseline-label", f"x={tmp_path / 'large.nii.gz'}"]
    result = runner.invoke(app, [*command[:4], str(tmp_path / "other"), *command[5:], *clash])
    assert result.exit_code == 1 and "both be written as x.nii.gz" in result.stderr


def test_a_label_on_the_wrong_grid_is_refused_before_the_registration(
    tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    affine = grid_affine((64, 72, 56), (2.0, 2.0, 2.0), "RAS")
    baseline = _scan(tmp_path / "t1.nii.gz", (64, 72, 56), affine)
    followup = _scan(tmp_path / "t2.nii.gz", (64, 72, 56), affine)
    nib.save(nib.Nifti1Image(np.zeros((64, 72, 50), np.uint8), affine), str(tmp_path / "cut.nii.gz"))

    def no_registration(*args: object, **kwargs: object) -> None:
        raise AssertionError("the preprocessing started before the label was checked")

    monkeypatch.setattr("msnewlesion.preprocess.preprocess_pair", no_registration)
    out = tmp_path / "prep"
    command = ["preprocess", str(baseline), str(followup), "-o", str(out), "--quiet"]
    result = runner.invoke(app, [*command, "--followup-label", f"new={tmp_path / 'cut.nii.gz'}"])
    assert result.exit_code == 1, result.output
    assert "cut.nii.gz is not on the followup scan's grid" in result.stderr
    assert not out.exists() or not any(out.iterdir())
