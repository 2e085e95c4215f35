"""The real annotated scans of the three training sites, as the loaders and the held-out checks meet them.

Small crops of the held-out scans (tests/data/README.md has their licences and attribution): a raw clinical
2D FLAIR from Tabriz (int16, negative background, 7.2 mm slices) and an MNI 1 mm FLAIR from MSLesSeg with its
expert mask stored as 0/1 floats. The whole-scan numbers are in benchmarks/real_checks.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from msnewlesion.io import load_mask, load_volume
from msnewlesion.lesions import components
from msnewlesion.metrics import evaluate_case
from msnewlesion.metrics.baseline import brightness_rule
from msnewlesion.training.data import load_sample
from msnewlesion.training.manifest import read_manifest

DATA = Path(__file__).parent / "data"
TABRIZ_FLAIR = DATA / "tabriz" / "105911_flair_crop.nii.gz"
TABRIZ_LESIONS = DATA / "tabriz" / "105911_lesions_crop.nii.gz"
MSLESSEG_FLAIR = DATA / "mslesseg" / "P39_FLAIR_crop.nii.gz"
MSLESSEG_MASK = DATA / "mslesseg" / "P39_MASK_crop.nii.gz"


def test_raw_clinical_flair_keeps_its_negative_background_and_thick_slices() -> None:
    flair = load_volume(TABRIZ_FLAIR)
    assert flair.shape == (112, 112, 20)
    assert flair.spacing == pytest.approx((0.8984, 0.8984, 7.2), abs=1e-3)
    assert flair.data.dtype == np.float32
    assert float(flair.data.min()) == -867.0  # the scanner's background, not clipped on reading

    lesions = load_mask(TABRIZ_LESIONS)
    assert lesions.shape == flair.shape
    np.testing.assert_allclose(lesions.affine, flair.affine, atol=1e-4)
    assert int(lesions.data.sum()) == 393
    assert len(components(lesions.data).sizes) == 15


def test_expert_mask_stored_as_floats_reads_as_a_binary_mask() -> None:
    mask = load_mask(MSLESSEG_MASK, threshold=0.5)
    assert mask.data.dtype == bool
    assert int(mask.data.sum()) == 49418
    assert len(components(mask.data).sizes) == 18


def test_float_expert_mask_is_a_single_time_point_training_sample(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        f"subject,kind,baseline,followup,label,brain_mask,split\np39,single,{MSLESSEG_FLAIR},,{MSLESSEG_MASK},,train\n"
    )
    (row,) = read_manifest(manifest).rows
    sample = load_sample(row, patch_size=64)
    assert not sample.longitudinal
    assert sample.label.dtype == np.uint8
    assert set(np.unique(sample.label)) == {0, 1}
    assert int(sample.label.sum()) == 49418
    assert sample.lesions is not None and sample.lesions[0] is sample.label  # both all-lesion heads supervised
    assert int(sample.brain.sum()) == int((load_volume(MSLESSEG_FLAIR).data != 0).sum())


@pytest.mark.parametrize(
    ("flair", "lesions", "expected_dice"),
    [(MSLESSEG_FLAIR, MSLESSEG_MASK, 0.8736), (TABRIZ_FLAIR, TABRIZ_LESIONS, 0.0368)],
    ids=["mslesseg", "tabriz"],
)
def test_brightness_rule_scores_as_measured(flair: Path, lesions: Path, expected_dice: float) -> None:
    image = load_volume(flair)
    reference = load_mask(lesions, threshold=0.5)
    # the MNI scan is skull-stripped; the raw crop has no brain mask, so its brightest 70 % stand in for one
    brain = image.data > 0 if "mslesseg" in flair.parts else image.data > np.percentile(image.data, 30)
    rule = brightness_rule(image.data, brain, image.spacing)
    assert evaluate_case(rule, reference.data, image.spacing).dice == pytest.approx(expected_dice, abs=0.005)


def test_brightness_rule_refuses_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="one shape"):
        brightness_rule(np.zeros((4, 4, 4)), np.zeros((4, 4, 3), bool), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="positive voxel sizes"):
        brightness_rule(np.zeros((4, 4, 4)), np.zeros((4, 4, 4), bool), (1.0, 0.0, 1.0))


def test_builtin_real_model_on_a_held_out_crop_of_another_site(tmp_path: Path, runner) -> None:
    """coactseg-real never saw MSLesSeg P39: on an 80³ crop fed against itself it calls no new lesion and its
    all-lesion head finds the expert lesions (measured: Dice 0.37, 6 of 16 lesions; whole scan: Dice 0.70)."""
    from msnewlesion.cli import app

    out = tmp_path / "p39"
    result = runner.invoke(
        app,
        ["predict", str(MSLESSEG_FLAIR), str(MSLESSEG_FLAIR), "-o", str(out), "--model", "coactseg-real",
         "--no-preprocess", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not load_mask(out / "new_lesions.nii.gz").data.any()
    reference = load_mask(MSLESSEG_MASK, threshold=0.5)
    found = evaluate_case(load_mask(out / "lesions_baseline.nii.gz").data, reference.data, reference.spacing)
    assert found.dice > 0.3
    assert found.n_detected_ref_lesions >= 5


def test_builtin_real_model_card_names_every_site_and_licence() -> None:
    from msnewlesion.hub import resolve_model

    folder = resolve_model("coactseg-real").path
    assert folder is not None
    card = (folder / "README.md").read_text()
    for words in ("CC-BY", "CC BY 4.0", "MIT", "Lesjak", "Guarnera", "Bashiri Bawil", "Not a medical device"):
        assert words in card
