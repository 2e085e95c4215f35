"""Skull stripping through HD-BET's real code path, with a stand-in checkpoint instead of its weights.

The stand-in (tests/preprocess_helpers.py) is a tiny nnU-Net model laid out exactly like HD-BET's
weights folder, whose network is hand-set to call brain every voxel whose z-score exceeds 0.5. So
the mask HD-BET returns is known in advance, and any axis mix-up between our arrays, our files,
nnU-Net's reader and writer shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("HD_BET", reason="HD-BET is an optional extra (msnewlesion[hdbet])")

from msnewlesion.preprocess import PreprocessOptions, preprocess_pair
from msnewlesion.preprocess.skullstrip import SkullStripError, hdbet_brain_mask, hdbet_weights_folder
from preprocess_helpers import (
    brain_value,
    phantom_value,
    phantom_volume,
    rigid,
    sample,
    save_nifti,
    standin_expected_mask,
    write_standin_hdbet,
)

SPACING = 2.0


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A home folder holding the stand-in weights where HD-BET looks for its own."""
    home = tmp_path_factory.mktemp("home")
    write_standin_hdbet(home / "hd-bet_params" / "release_2.0.0", SPACING)
    return home


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("scans")
    baseline = phantom_volume((72, 86, 68), (SPACING,) * 3, "LAS")
    followup = phantom_volume((66, 80, 46), (2.2, 2.2, 3.0), "RAS", pose=rigid((2.0, 3.0, -4.0), (3.0, -2.0, 1.0)))
    return save_nifti(baseline, folder / "ses-01.nii.gz"), save_nifti(followup, folder / "ses-02.nii.gz")


@pytest.fixture
def weights_in(monkeypatch):
    """Point HD-BET (already imported in this process, so HOME is read) at a folder."""
    import HD_BET.paths

    saved = sys.stdout
    import HD_BET.hd_bet_prediction as prediction  # binds the folder when imported; it also rebinds sys.stdout

    sys.stdout = saved

    def point(folder: Path) -> None:
        monkeypatch.setattr(HD_BET.paths, "folder_with_parameter_files", str(folder))
        monkeypatch.setattr(prediction, "folder_with_parameter_files", str(folder))

    return point


@pytest.fixture
def no_download(monkeypatch):
    """Fail the test if anything reaches HD-BET's downloader."""
    import HD_BET.checkpoint_download as download

    def refuse(*args, **kwargs):
        raise AssertionError("HD-BET's weights download was triggered")

    monkeypatch.setattr(download, "maybe_download_parameters", refuse)
    monkeypatch.setattr(download, "download_file", refuse)


def test_missing_weights_stop_before_any_work_and_say_where_they_go(
    pair_files, tmp_path, weights_in, no_download, monkeypatch
) -> None:
    import msnewlesion.preprocess.registration as registration

    folder = tmp_path / "hd-bet_params" / "release_2.0.0"
    weights_in(folder)
    monkeypatch.setattr(registration, "register_rigid", lambda *a, **k: pytest.fail("registration ran first"))
    with pytest.raises(SkullStripError) as caught:
        preprocess_pair(*pair_files, PreprocessOptions(skull_strip="hd-bet", bias_correction=False))
    message = str(caught.value)
    assert str(folder / "fold_all" / "checkpoint_final.pth") in message
    assert "never downloads" in message and "unzip it into" in message
    # The core names the parameters (a library caller has no flags; the command line names its flags).
    assert '`skull_strip="none"`' in message and "`brain_mask`" in message
    assert '`skull_strip="hd-bet-v1"`' in message  # the weights that come with msnewlesion
    assert not folder.exists()


def test_without_hdbet_installed_the_message_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "HD_BET", None)
    with pytest.raises(SkullStripError, match=r"pip install 'msnewlesion\[hdbet\]'"):
        hdbet_weights_folder()


def test_the_standin_checkpoint_runs_through_hdbet_and_returns_the_expected_mask(
    home, weights_in, no_download, capsys
) -> None:
    weights_in(home / "hd-bet_params" / "release_2.0.0")
    image = phantom_volume((70, 84, 66), (SPACING,) * 3, "LPS")
    mask, settings = hdbet_brain_mask(image.data, image.affine, device="cpu")

    expected = standin_expected_mask(image.data)
    assert mask.shape == image.shape and mask.dtype == bool
    assert 2 * (mask & expected).sum() / (mask.sum() + expected.sum()) > 0.99
    assert settings["weights"] == str(home / "hd-bet_params" / "release_2.0.0")
    assert settings["device"] == "cpu" and settings["tta"] is False
    assert capsys.readouterr().out == ""  # HD-BET's and nnU-Net's chatter went to stderr
    assert "torchvision" not in sys.modules and "timm" not in sys.modules


@pytest.mark.slow
def test_cli_with_hdbet_in_a_fresh_process_reads_the_weights_from_home(home, pair_files, tmp_path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "msnewlesion", "preprocess", *map(str, pair_files), "-o", str(out)]
    command += ["--skull-strip", "hd-bet", "--device", "cpu", "--no-bias-correction", "--spacing", "2", "2", "2"]
    completed = subprocess.run(
        [*command, "--json", "--quiet"],
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    payload = json.loads(completed.stdout)  # nothing but our JSON on stdout
    record = payload["record"]
    assert record["brain_mask"]["method"] == "HD-BET 2 on the baseline in the common space"
    assert record["brain_mask"]["weights"] == str(home / "hd-bet_params" / "release_2.0.0")
    assert record["software"]["hd-bet"]

    # The stand-in calls bright tissue brain: it must cover the phantom's brain and stay inside its head.
    mask_image = nib.load(str(out / "brain_mask.nii.gz"))
    brain = np.asarray(mask_image.dataobj) > 0
    common_to_baseline = np.array(record["transforms"]["common_to_baseline_ras"])
    truth = sample(brain_value, brain.shape, mask_image.affine, common_to_baseline)
    head = sample(lambda p: phantom_value(p) > 0, brain.shape, mask_image.affine, common_to_baseline)
    assert (brain & truth).sum() > 0.8 * truth.sum()
    assert (brain & ~head).sum() < 0.01 * brain.sum()
    baseline = np.asarray(nib.load(str(out / "baseline.nii.gz")).dataobj)
    assert not baseline[~brain].any()


@pytest.mark.slow
def test_auto_runs_hdbet2_when_its_weights_are_in_place(home, pair_files, tmp_path) -> None:
    # The phantom's air is exactly 0 around a 1.2 l head: auto would keep it as already stripped. A scanner's
    # air holds noise.
    noisy = []
    for path in pair_files:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
        data[data == 0] = np.random.default_rng(0).uniform(0.5, 5.0, int(np.count_nonzero(data == 0)))
        noisy.append(tmp_path / path.name)
        nib.save(nib.Nifti1Image(data, image.affine, header=image.header), str(noisy[-1]))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "msnewlesion", "preprocess", *map(str, noisy), "-o", str(out)]
    command += ["--device", "cpu", "--no-bias-correction", "--spacing", "2", "2", "2", "--json", "--quiet"]
    completed = subprocess.run(
        command, env={**os.environ, "HOME": str(home)}, capture_output=True, text=True, check=False, timeout=300
    )
    assert completed.returncode == 0, completed.stderr
    method = json.loads(completed.stdout)["record"]["brain_mask"]["method"]
    assert method == "HD-BET 2 on the baseline in the common space"
