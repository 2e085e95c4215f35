"""``msnewlesion preprocess`` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from msnewlesion.cli import app
from msnewlesion.model.config import ModelConfig
from msnewlesion.preprocess import OUTPUT_NAMES
from msnewlesion.settings import DEFAULT_TRANSFORM
from preprocess_helpers import phantom_volume, rigid, save_nifti

FAST = ["--skull-strip", "none", "--no-bias-correction", "--quiet"]


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("scans")
    baseline = phantom_volume((72, 88, 70), (2.0, 2.0, 2.0), "LPS")
    followup = phantom_volume((64, 78, 48), (2.2, 2.2, 3.0), "RAS", pose=rigid((3.0, -2.0, 4.0), (2.0, 3.0, -1.0)))
    return save_nifti(baseline, folder / "ses-01.nii.gz"), save_nifti(followup, folder / "ses-02.nii.gz")


def test_preprocess_writes_every_output_and_a_one_line_summary(runner: CliRunner, scans, tmp_path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    ModelConfig(spacing=(2.0, 2.0, 2.0), intensity_normalization="zscore-brain-box", box_margin=6).save(
        model / "config.json"
    )
    out = tmp_path / "out"
    result = runner.invoke(app, ["preprocess", *map(str, scans), "-o", str(out), "--model", str(model), *FAST])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES.values())
    summary = result.stdout.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith(f"preprocessed → {out}")
    assert "2×2×2 mm RAS (halfway space)" in summary[0]

    image = nib.load(str(out / "baseline.nii.gz"))
    assert image.header.get_zooms() == (2.0, 2.0, 2.0)
    record = json.loads((out / "preprocess.json").read_text())
    assert record["options"]["intensity_normalization"] == "zscore-brain-box"
    assert record["options"]["crop_margin"] == 6 and record["options"]["transform"] == DEFAULT_TRANSFORM

    # Existing outputs are refused before any work, then replaced on request.
    again = runner.invoke(app, ["preprocess", *map(str, scans), "-o", str(out), *FAST])
    assert again.exit_code == 1
    assert "already exist" in again.stderr and "--overwrite" in again.stderr and "Traceback" not in again.output
    options = ["--spacing", "3", "3", "3", "--space", "baseline", "--orientation", "LPS", "--interpolation", "linear"]
    replaced = runner.invoke(
        app, ["preprocess", *map(str, scans), "-o", str(out), *FAST, *options, "--overwrite", "--json"]
    )
    assert replaced.exit_code == 0, replaced.output
    payload = json.loads(replaced.stdout)
    assert [Path(p).name for p in payload["files"]] == list(OUTPUT_NAMES.values())
    assert payload["record"]["common_grid"]["spacing_mm"] == [3.0, 3.0, 3.0]
    assert payload["record"]["registration"]["space"] == "baseline"
    assert "".join(nib.aff2axcodes(nib.load(str(out / "followup.nii.gz")).affine)) == "LPS"


def test_a_bad_input_exits_1_naming_the_file_and_writes_nothing(runner: CliRunner, scans, tmp_path) -> None:
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    out = tmp_path / "out"
    result = runner.invoke(app, ["preprocess", str(scans[0]), str(broken), "-o", str(out), *FAST])
    assert result.exit_code == 1
    assert "broken.nii.gz" in result.stderr and "follow-up FLAIR" in result.stderr
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())


def test_constant_and_4d_inputs_are_refused(runner: CliRunner, scans, tmp_path) -> None:
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.full((10, 10, 10), 3.0, np.float32), np.eye(4)), str(flat))
    series = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10, 3), np.float32), np.eye(4)), str(series))
    for path, message in ((flat, "constant"), (series, "3D image is needed")):
        result = runner.invoke(app, ["preprocess", str(path), str(scans[1]), "-o", str(tmp_path / "out"), *FAST])
        assert result.exit_code == 1 and message in result.stderr and path.name in result.stderr


def test_without_hdbet2_weights_asking_for_hdbet2_stops_and_says_what_to_do(
    runner: CliRunner, scans, tmp_path, monkeypatch
) -> None:
    paths = pytest.importorskip("HD_BET.paths")
    monkeypatch.setattr(paths, "folder_with_parameter_files", str(tmp_path / "hd-bet_params" / "release_2.0.0"))
    out = tmp_path / "out"
    result = runner.invoke(app, ["preprocess", *map(str, scans), "-o", str(out), "--skull-strip", "hd-bet", "--quiet"])
    assert result.exit_code == 1
    assert "HD-BET's weights are not in place" in result.stderr and "--skull-strip none" in result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_invalid_options_are_refused_while_parsing_naming_the_flag(runner: CliRunner, scans, tmp_path) -> None:
    result = runner.invoke(app, ["preprocess", *map(str, scans), "-o", str(tmp_path / "o"), "--space", "mni"])
    message = " ".join(result.stderr.replace("│", " ").split())  # the error box wraps lines
    assert result.exit_code == 2
    assert "'--space': 'mni' is not one of: halfway, baseline, followup, none" in message
    assert "registration" not in message  # the core's name for the setting stays out of the command line
    assert not (tmp_path / "o").exists()


def test_help_names_every_switch_and_the_default_transform(runner: CliRunner) -> None:
    result = runner.invoke(app, ["preprocess", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in (
        "--skull-strip",
        "--brain-mask",
        "--space",
        "--transform",
        "--spacing",
        "--model",
        "--no-bias-correction",
        "--interpolation",
        "--normalization",
        "--device",
        "--overwrite",
    ):
        assert option in result.output
    assert f"{DEFAULT_TRANSFORM} (default)" in result.output
    assert "Example" in result.output
    assert "preprocess" in runner.invoke(app, ["--help"]).output


def test_model_is_resolved_as_predict_resolves_it(runner: CliRunner, scans, tmp_path) -> None:
    # A registry name (it was taken for a folder and refused); options given explicitly still win.
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["preprocess", *map(str, scans), "-o", str(out), "--model", "demo", "--spacing", "3", "3", "3", *FAST]
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / "preprocess.json").read_text())
    assert record["common_grid"]["spacing_mm"] == [3.0, 3.0, 3.0] and record["options"]["crop_margin"] == 15
