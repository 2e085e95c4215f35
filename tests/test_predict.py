from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from analytic_model import save_analytic_model
from msnewlesion.cli import app
from msnewlesion.io import Volume
from preprocess_helpers import grid_affine, phantom_value, rigid, sample

# A new lesion: a bright ball in the follow-up only (phantom coordinates, mm)
LESION_CENTRE = np.array([12.0, -10.0, 8.0])
LESION_RADIUS = 6.0


def followup_value(points: np.ndarray) -> np.ndarray:
    value = phantom_value(points)
    inside = np.sum((points - LESION_CENTRE) ** 2, axis=1) <= LESION_RADIUS**2
    return value + 1.5 * inside


def oblique_affine(shape, spacing) -> np.ndarray:
    affine = grid_affine(shape, spacing, "RAS")
    return rigid((8.0, -5.0, 12.0), (1.5, -2.0, 3.0)) @ affine


def write_scan(path: Path, function, shape, affine, pose=None, qform_code=1, sform_code=2) -> Path:
    data = (500.0 * sample(function, shape, affine, pose)).astype(np.float32)
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=qform_code)
    image.set_sform(affine, code=sform_code)
    nib.save(image, str(path))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_analytic_model(tmp_path_factory.mktemp("model") / "analytic")


@pytest.fixture(scope="module")
def raw_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """Baseline on an LPS grid; follow-up on an oblique grid of another spacing, the head moved."""
    folder = tmp_path_factory.mktemp("raw")
    baseline = write_scan(
        folder / "ses-01_FLAIR.nii.gz", phantom_value, (84, 104, 64), grid_affine((84, 104, 64), (1.6, 1.6, 2.0), "LPS")
    )
    pose = rigid((3.0, -2.0, 4.0), (2.0, -1.5, 1.0))  # follow-up world → phantom world
    followup = write_scan(
        folder / "ses-02_FLAIR.nii.gz",
        followup_value,
        (96, 110, 48),
        oblique_affine((96, 110, 48), (1.4, 1.5, 2.6)),
        pose,
    )
    lesion_in_followup_world = (np.linalg.inv(pose) @ np.append(LESION_CENTRE, 1.0))[:3]
    return baseline, followup, lesion_in_followup_world


PREDICT_FAST = ["--skull-strip", "none", "--transform", "QuickRigid", "--no-bias-correction", "--quiet"]


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory, raw_pair, model: Path) -> Path:
    baseline, followup, _ = raw_pair
    output = tmp_path_factory.mktemp("predicted") / "out"
    result = CliRunner().invoke(
        app,
        [
            "predict",
            str(baseline),
            str(followup),
            "-o",
            str(output),
            "--model",
            str(model),
            "--save-probabilities",
            *PREDICT_FAST,
        ],
    )
    assert result.exit_code == 0, result.output
    return output


def test_outputs_land_on_each_inputs_exact_grid(predicted: Path, raw_pair) -> None:
    baseline, followup, _ = raw_pair
    expected = {
        "new_lesions.nii.gz": followup,
        "lesions_followup.nii.gz": followup,
        "lesions_baseline.nii.gz": baseline,
        "new_lesions_probability.nii.gz": followup,
        "lesions_baseline_probability.nii.gz": baseline,
    }
    for name, reference_path in expected.items():
        output, reference = nib.load(str(predicted / name)), nib.load(str(reference_path))
        assert output.shape == reference.shape, name
        assert np.array_equal(output.affine, reference.affine), name  # to the last digit
        assert np.array_equal(output.get_sform(), reference.get_sform()), name
        assert int(output.header["sform_code"]) == int(reference.header["sform_code"]), name
        assert int(output.header["qform_code"]) == int(reference.header["qform_code"]), name
        assert nib.aff2axcodes(output.affine) == nib.aff2axcodes(reference.affine), name
    mask = nib.load(str(predicted / "new_lesions.nii.gz"))
    assert mask.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    assert nib.aff2axcodes(nib.load(str(predicted / "lesions_baseline.nii.gz")).affine) == ("L", "P", "S")


def test_the_new_lesion_is_found_where_it_appeared(predicted: Path, raw_pair) -> None:
    _, _, centre = raw_pair
    summary = json.loads((predicted / "summary.json").read_text())
    assert summary["new_lesions"]["count"] == 1
    table = pd.read_csv(predicted / "new_lesions.tsv", sep="\t")
    found = table[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].to_numpy()[0]
    assert np.linalg.norm(found - centre) < 2.5  # mm, in the follow-up's scanner coordinates
    ball = 4 / 3 * np.pi * LESION_RADIUS**3
    assert 0.6 * ball < summary["new_lesions"]["volume_mm3"] < 1.4 * ball


def test_table_and_summary_agree_with_the_masks(predicted: Path) -> None:
    summary = json.loads((predicted / "summary.json").read_text())
    table = pd.read_csv(predicted / "new_lesions.tsv", sep="\t")
    image = nib.load(str(predicted / "new_lesions.nii.gz"))
    mask = np.asarray(image.dataobj) > 0
    labels, count = ndimage.label(mask, np.ones((3, 3, 3)))
    voxel_volume = abs(np.linalg.det(image.affine[:3, :3]))
    assert len(table) == count == summary["new_lesions"]["count"]
    assert table["voxels"].sum() == mask.sum() == summary["new_lesions"]["voxels"]
    assert table["volume_mm3"].sum() == pytest.approx(summary["new_lesions"]["volume_mm3"], abs=0.01)
    assert summary["new_lesions"]["volume_mm3"] == pytest.approx(mask.sum() * voxel_volume, abs=0.01)
    for row in table.itertuples():
        centre_voxel = np.array(ndimage.center_of_mass(labels == row.id))
        centre_mm = image.affine[:3, :3] @ centre_voxel + image.affine[:3, 3]
        assert np.allclose([row.centroid_x_mm, row.centroid_y_mm, row.centroid_z_mm], centre_mm, atol=1e-3)
        probability = np.asarray(nib.load(str(predicted / "new_lesions_probability.nii.gz")).dataobj)
        assert row.max_probability == pytest.approx(probability[labels == row.id].max(), abs=1e-4)
    for key in ("lesions_baseline", "lesions_followup"):
        other = np.asarray(nib.load(str(predicted / f"{key}.nii.gz")).dataobj) > 0
        assert summary[key]["voxels"] == other.sum()
        assert summary[key]["count"] == ndimage.label(other, np.ones((3, 3, 3)))[1]


def test_summary_records_model_settings_and_timings(predicted: Path, model: Path) -> None:
    summary = json.loads((predicted / "summary.json").read_text())
    assert summary["model"]["name"] == "analytic"
    assert len(summary["model"]["weights_sha256"]) == 64
    assert summary["settings"]["skull_strip"] == "none" and summary["settings"]["transform"] == "QuickRigid"
    assert summary["settings"]["sliding_window"]["blending"] == "gaussian"
    for stage in ("load", "preprocess", "network", "map_back", "write", "total"):
        assert summary["timings_s"][stage] >= 0
    steps = summary["timings_s"]["preprocess_steps"]
    assert list(steps) == ["read", "registration", "skull_strip", "reorient_and_resample", "bias_correction",
                           "normalisation"]  # fmt: skip
    assert sum(steps.values()) <= summary["timings_s"]["preprocess"] + 0.01
    assert summary["preprocessing"]["common_grid"]["space"] == "halfway space"
    assert summary["outputs"]["new_lesions"] == "new_lesions.nii.gz"
    assert (predicted / "qc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pairs_already_on_one_grid_skip_preprocessing(tmp_path: Path, model: Path, runner: CliRunner) -> None:
    shape, affine = (70, 80, 44), oblique_affine((70, 80, 44), (1.8, 1.7, 2.4))
    baseline = write_scan(tmp_path / "t1.nii.gz", phantom_value, shape, affine)
    followup = write_scan(tmp_path / "t2.nii.gz", followup_value, shape, affine)
    result = runner.invoke(
        app,
        [
            "predict",
            str(baseline),
            str(followup),
            "-o",
            str(tmp_path / "out"),
            "--model",
            str(model),
            "--no-preprocess",
            "--quiet",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["new_lesions"]["count"] == 1
    assert summary["preprocessing"]["options"]["registration"] == "none"
    output = nib.load(str(tmp_path / "out" / "new_lesions.nii.gz"))
    assert output.shape == shape and np.array_equal(output.affine, nib.load(str(followup)).affine)


@pytest.mark.slow
def test_paper_mode_runs_the_published_procedure(tmp_path: Path, model: Path, raw_pair, runner: CliRunner) -> None:
    baseline, followup, _ = raw_pair
    result = runner.invoke(
        app,
        [
            "predict",
            str(baseline),
            str(followup),
            "-o",
            str(tmp_path / "paper"),
            "--model",
            str(model),
            "--paper-mode",
            "--json",
            *PREDICT_FAST,
        ],
    )
    assert result.exit_code == 0, result.output
    settings = json.loads(result.stdout)["settings"]
    window = settings["sliding_window"]
    assert window["patch_size"] == [80, 80, 80] and window["step"] == 20
    assert window["blending"] == "constant" and window["placement"] == "reference"
    assert settings["autocast"] == "fp32" and settings["threshold_used"] == 0.5
    assert settings["min_lesion_volume_used_mm3"] == 0.0
    assert json.loads(result.stdout)["new_lesions"]["count"] == 1


def test_existing_results_are_kept_unless_asked(predicted: Path, raw_pair, model: Path, runner: CliRunner) -> None:
    baseline, followup, _ = raw_pair
    before = (predicted / "summary.json").read_bytes()
    args = ["predict", str(baseline), str(followup), "-o", str(predicted), "--model", str(model), *PREDICT_FAST]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1
    assert "already holds results" in refused.output and "--overwrite" in refused.output
    skipped = runner.invoke(app, [*args, "--skip-existing"])
    assert skipped.exit_code == 0
    assert (predicted / "summary.json").read_bytes() == before


def test_an_output_never_replaces_an_input(tmp_path: Path, raw_pair, model: Path, runner: CliRunner) -> None:
    baseline, followup, _ = raw_pair
    folder = tmp_path / "inputs"
    folder.mkdir()
    trap = folder / "new_lesions.nii.gz"
    trap.write_bytes(Path(followup).read_bytes())
    result = runner.invoke(
        app,
        ["predict", str(baseline), str(trap), "-o", str(folder), "--model", str(model), "--overwrite", *PREDICT_FAST],
    )
    assert result.exit_code == 1
    assert "it is one of the inputs" in result.output
    assert trap.read_bytes() == Path(followup).read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == ["new_lesions.nii.gz"]


def test_bad_inputs_give_one_line_errors(tmp_path: Path, raw_pair, model: Path, runner: CliRunner) -> None:
    baseline, _, _ = raw_pair
    four_d = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20, 2), np.float32), np.eye(4)), str(four_d))
    cases = {
        str(tmp_path / "missing.nii.gz"): "follow-up FLAIR not found",
        str(four_d): "a 3D image is needed",
    }
    for followup, message in cases.items():
        result = runner.invoke(
            app, ["predict", str(baseline), followup, "-o", str(tmp_path / "out"), "--model", str(model), *PREDICT_FAST]
        )
        assert result.exit_code == 1, result.output
        assert message in " ".join(result.output.split())
        assert "Traceback" not in result.output
        assert not (tmp_path / "out" / "summary.json").exists()
    unknown = runner.invoke(
        app, ["predict", str(baseline), str(baseline), "-o", str(tmp_path / "o2"), "--model", "no-such-model"]
    )
    assert unknown.exit_code == 1 and "no-such-model" in unknown.output


def test_a_model_this_version_cannot_run_is_refused(tmp_path: Path, raw_pair, model: Path, runner: CliRunner) -> None:
    baseline, followup, _ = raw_pair
    future = tmp_path / "future"
    future.mkdir()
    for name in ("config.json", "model.safetensors"):
        (future / name).write_bytes((model / name).read_bytes())
    config = json.loads((future / "config.json").read_text())
    config["format_version"] = 99
    (future / "config.json").write_text(json.dumps(config))
    result = runner.invoke(
        app, ["predict", str(baseline), str(followup), "-o", str(tmp_path / "out"), "--model", str(future)]
    )
    assert result.exit_code == 1
    assert "upgrade msnewlesion" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


def test_predict_accepts_a_volume_in_python(raw_pair, model: Path) -> None:
    from msnewlesion.io import load_volume
    from msnewlesion.model.checkpoint import load_model
    from msnewlesion.predict import PredictOptions, predict_pair

    baseline, followup, _ = raw_pair
    options = PredictOptions(skull_strip="none", transform="QuickRigid", bias_correction=False)
    result = predict_pair(load_volume(baseline), load_volume(followup), load_model(model), options)
    assert isinstance(result.new_lesions, Volume)
    assert result.summary["new_lesions"]["count"] == 1


def test_lesion_changes_lie_on_the_followup_grid_with_their_colour_tables(predicted: Path, raw_pair) -> None:
    _, followup, centre = raw_pair
    image, reference = nib.load(str(predicted / "lesion_changes.nii.gz")), nib.load(str(followup))
    assert image.shape == reference.shape and np.array_equal(image.affine, reference.affine)
    assert image.get_data_dtype() == np.uint8
    assert image.header.get_intent()[0] == "label"  # viewers show it as labels, not intensities
    codes = np.asarray(image.dataobj)
    summary = json.loads((predicted / "summary.json").read_text())
    changes = summary["lesion_changes"]
    # The phantom has bright voxels at the baseline where the lesion appears: by the matching rule the lesion
    # is their growth (enlarging); either way it is one "new or enlarging" lesion.
    assert changes["counts"]["new"] + changes["counts"]["enlarging"] == changes["counts"]["new_or_enlarging"] == 1
    assert changes["codes"] == {"new": 1, "enlarging": 2, "stable": 3, "shrinking": 4, "resolved": 5}
    assert changes["rule"] == {"relative": 0.5, "absolute_mm3": 10.0}
    new_mask = np.asarray(nib.load(str(predicted / "new_lesions.nii.gz")).dataobj) > 0
    assert np.mean(np.isin(codes[new_mask], (1, 2))) > 0.9
    table = pd.read_csv(predicted / "lesion_changes.tsv", sep="\t")
    classes = ("new", "enlarging", "stable", "shrinking", "resolved")
    expected = {k: v for k, v in changes["counts"].items() if v and k in classes}
    assert table["change"].value_counts().to_dict() == expected
    new_row = table[table["change"].isin(("new", "enlarging"))].iloc[0]
    assert new_row["volume_change_mm3"] > 0.5 * summary["new_lesions"]["volume_mm3"]
    found = new_row[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].to_numpy(dtype=float)
    assert np.linalg.norm(found - centre) < 2.5  # mm, in the follow-up's scanner coordinates
    # the colour tables name every code the map can hold, for ITK-SNAP and FSLeyes
    itksnap = (predicted / "lesion_changes_itksnap.txt").read_text()
    lut = (predicted / "lesion_changes.lut").read_text()
    for code, name in enumerate(("new", "enlarging", "stable", "shrinking", "resolved"), start=1):
        assert f'"{name}"' in itksnap and f"{code} " in itksnap
        assert any(line.split()[0] == str(code) and line.split()[-1] == name for line in lut.splitlines())
    assert summary["outputs"]["lesion_changes"] == "lesion_changes.nii.gz"
