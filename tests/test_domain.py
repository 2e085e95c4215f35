"""Out-of-domain warnings, the brightening rule and the QC picture's all-lesion outlines."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from analytic_model import save_analytic_model
from msnewlesion.cli import app
from msnewlesion.domain import (
    InputDomain,
    acquisition_warnings,
    lesion_load_warnings,
    registration_warnings,
)
from msnewlesion.model.config import ModelConfig
from msnewlesion.report import save_qc_figure
from preprocess_helpers import grid_affine, phantom_value
from test_predict import followup_value, write_scan

FAST = ["--skull-strip", "none", "--transform", "QuickRigid", "--no-bias-correction", "--quiet"]


def test_the_input_domain_comes_from_the_model_or_its_spacing() -> None:
    recorded = ModelConfig(extra={"input_domain": {"slice_thickness_mm": [0.8, 6], "in_plane_spacing_mm": [0.5, 1.3]}})
    assert InputDomain.of(recorded) == InputDomain((0.8, 6.0), (0.5, 1.3), True)
    unrecorded = InputDomain.of(ModelConfig(spacing=(0.5, 0.75, 0.75)))
    assert unrecorded.slice_thickness_mm == (0.0, 1.125) and not unrecorded.recorded


def test_slices_thicker_than_the_model_knows_are_named() -> None:
    domain = InputDomain((0.8, 6.0), (0.5, 1.3))
    assert acquisition_warnings({"baseline FLAIR": (0.72, 0.72, 4.0), "follow-up FLAIR": (1, 1, 1)}, domain, "m") == []
    assert acquisition_warnings({"baseline FLAIR": (0.5, 0.5, 6.2)}, domain, "m") == []  # scanners round
    warnings = acquisition_warnings({"follow-up FLAIR": (0.45, 0.45, 7.0)}, domain, "m")
    assert len(warnings) == 1 and "follow-up FLAIR has 7 mm slices" in warnings[0] and "6 mm at most" in warnings[0]
    coarse = acquisition_warnings({"baseline FLAIR": (2.0, 2.0, 2.0)}, domain, "m")
    assert len(coarse) == 1 and "2 mm voxels in-plane" in coarse[0]


def test_registration_and_lesion_load_warnings() -> None:
    assert registration_warnings({"head_correlation": 0.967}) == []
    assert registration_warnings({"enabled": False}) == []
    assert "same patient" in registration_warnings({"head_correlation": 0.66})[0]
    brain = 1.2e6
    assert lesion_load_warnings(brain, 6, 450.0, {"baseline": 5_000.0, "follow-up": 6_000.0}) == []
    many = lesion_load_warnings(brain, 348, 23_700.0, {"baseline": 5_000.0})
    assert len(many) == 1 and "348 new lesions" in many[0]
    huge = lesion_load_warnings(brain, 2, 100.0, {"follow-up": 535_000.0})
    assert len(huge) == 1 and "covers 45 % of the brain" in huge[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_analytic_model(tmp_path_factory.mktemp("model") / "analytic")


@pytest.fixture(scope="module")
def thick_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A pair with 6 mm slices (the analytic model works at 2 mm, so it knows up to 3 mm)."""
    folder = tmp_path_factory.mktemp("thick")
    shape, spacing = (84, 104, 24), (1.6, 1.6, 6.0)
    affine = grid_affine(shape, spacing, "RAS")
    return (
        write_scan(folder / "t1.nii.gz", phantom_value, shape, affine),
        write_scan(folder / "t2.nii.gz", followup_value, shape, affine),
    )


def test_predict_warns_about_thick_slices_in_the_summary_and_on_stderr(model: Path, thick_pair, tmp_path) -> None:
    output = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["predict", *map(str, thick_pair), "-o", str(output), "--model", str(model), *FAST]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((output / "summary.json").read_text())
    thick = [w for w in summary["warnings"] if "6 mm slices" in w]
    assert len(thick) == 2  # both time points
    assert result.stderr.count("warning:") >= 2 and "6 mm slices" in result.stderr


@pytest.mark.slow
def test_the_brightening_rule_keeps_brightened_lesions_and_drops_the_rest(model: Path, thick_pair, tmp_path) -> None:
    counts = {}
    for name, value in (("off", None), ("kept", "0.5"), ("strict", "100")):
        output = tmp_path / name
        command = ["predict", *map(str, thick_pair), "-o", str(output), "--model", str(model), *FAST]
        result = CliRunner().invoke(app, command + (["--min-brightening", value] if value else []))
        assert result.exit_code == 0, result.output
        summary = json.loads((output / "summary.json").read_text())
        counts[name] = (summary["new_lesions"]["count"], summary["post_processing"]["min_brightening"])
    assert counts["off"][0] >= 1 and counts["off"][1] is None
    # the analytic model calls lesion only where the follow-up brightened, so 0.5 keeps them all
    assert counts["kept"][0] == counts["off"][0] and counts["kept"][1]["rejected"] == 0
    assert counts["strict"][0] == 0 and counts["strict"][1]["rejected"] == counts["strict"][1]["candidates"] >= 1


def test_the_qc_picture_outlines_all_lesions_in_cyan(tmp_path) -> None:
    import matplotlib.image

    image = np.zeros((40, 40, 20), np.float32)
    image[5:35, 5:35, :] = 1.0
    lesions = np.zeros(image.shape, bool)
    lesions[12:18, 12:18, 8:12] = True
    none = np.zeros(image.shape, bool)
    with_outline = save_qc_figure(image, image, none, tmp_path / "qc.png", lesions=(lesions, lesions))
    without = save_qc_figure(image, image, none, tmp_path / "plain.png")

    def cyan_pixels(path: Path) -> int:
        rgb = matplotlib.image.imread(io.BytesIO(path.read_bytes()), format="png")[..., :3]
        return int(np.sum((rgb[..., 0] < 0.4) & (rgb[..., 1] > 0.6) & (rgb[..., 2] > 0.6)))

    assert cyan_pixels(with_outline) > 20 and cyan_pixels(without) == 0
