"""Skull stripping with HD-BET 2 (an nnU-Net model), run in-process on one image.

HD-BET is an optional extra (``pip install 'msnewlesion[hdbet]'``) and is imported only when a
brain mask is asked of it. Its weights live in ``~/hd-bet_params/release_2.0.0/`` (HD-BET reads
that path from ``HD_BET.paths``); HD-BET downloads them on first use, which this package never
triggers: when they are missing, it stops and says how to place them.

HD-BET's own ``hdbet_predict`` starts a pool of preprocessing workers and another of eight export
workers for a single image. For one image in a pipeline that already runs on every core, this
module builds HD-BET's predictor with HD-BET's own function and runs nnU-Net's sequential file
prediction on it: the same reader, preprocessing, network and export, in one process.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

from msnewlesion.errors import MsNewLesionError
from msnewlesion.io import Volume, save_volume

__all__ = ["HDBET_CHECKPOINT", "SkullStripError", "hdbet_brain_mask", "hdbet_version", "hdbet_weights_folder"]

#: Where HD-BET expects its checkpoint, relative to its weights folder.
HDBET_CHECKPOINT = Path("fold_all") / "checkpoint_final.pth"
_HDBET_FILES = (Path("dataset.json"), Path("plans.json"), HDBET_CHECKPOINT)


class SkullStripError(MsNewLesionError):
    """HD-BET is missing, has no weights, or failed."""


_ALTERNATIVES = (
    "Or skip HD-BET: --skull-strip none when both scans are already skull-stripped, "
    "or --brain-mask FILE with a brain mask on the baseline's grid."
)


def hdbet_weights_folder() -> Path:
    """The folder HD-BET loads its weights from, after checking that they are there.

    Raises
    ------
    SkullStripError
        HD-BET is not installed, or its weights are not in place (never downloads them).

    Examples
    --------
    >>> hdbet_weights_folder()  # doctest: +SKIP
    PosixPath('/home/me/hd-bet_params/release_2.0.0')
    """
    try:
        from HD_BET import paths
    except ImportError:
        raise SkullStripError(
            "skull stripping needs HD-BET, which is not installed: pip install 'msnewlesion[hdbet]' "
            f"(or pip install hd-bet). {_ALTERNATIVES}"
        ) from None
    folder = Path(paths.folder_with_parameter_files)
    missing = [str(folder / name) for name in _HDBET_FILES if not (folder / name).is_file()]
    if missing:
        url = getattr(paths, "ZENODO_DOWNLOAD_URL", "the HD-BET release on Zenodo")
        raise SkullStripError(
            f"HD-BET's weights are not in place: missing {', '.join(missing)}. HD-BET keeps them in {folder} "
            f"(dataset.json, plans.json and {HDBET_CHECKPOINT}); msnewlesion never downloads them. On a machine "
            f"with internet access, download {url} and unzip it into {folder} (or run hd-bet there once and copy "
            f"its {folder.name} folder), then place that folder at {folder} on this machine. {_ALTERNATIVES}"
        )
    return folder


def hdbet_version() -> str | None:
    """The installed HD-BET version, or None."""
    from importlib import metadata

    try:
        return metadata.version("hd-bet")
    except metadata.PackageNotFoundError:
        return None


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    # HD-BET and nnU-Net print to stdout, which belongs to results (--json); their chatter goes to stderr.
    # HD_BET.hd_bet_prediction also rebinds sys.stdout while it is imported: put ours back afterwards.
    saved = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout = saved


def hdbet_brain_mask(
    data: np.ndarray,
    affine: np.ndarray,
    *,
    device: str = "auto",
    tta: bool | None = None,
    what: str = "image",
) -> tuple[np.ndarray, dict]:
    """Brain mask of one image by HD-BET.

    Parameters
    ----------
    data : ndarray
        The image (a FLAIR, T1, T2 …, with skull), any grid: HD-BET resamples internally and its
        mask comes back on this grid.
    affine : ndarray
        Its RAS affine.
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    tta : bool, optional
        HD-BET's test-time mirroring; by default on a GPU only (HD-BET advises against it on a CPU).
    what : str
        Names the image in error messages.

    Returns
    -------
    mask : ndarray of bool
        On the image's grid.
    settings : dict
        Device, mirroring and weights folder used (for the record).

    Raises
    ------
    SkullStripError
        HD-BET is missing, has no weights, or fails.

    Examples
    --------
    >>> mask, used = hdbet_brain_mask(flair.data, flair.affine, device="cpu")  # doctest: +SKIP
    """
    import torch

    from msnewlesion.device import resolve_device

    folder = hdbet_weights_folder()
    torch_device = resolve_device(device)
    use_tta = torch_device.type != "cpu" if tta is None else bool(tta)
    threads = torch.get_num_threads()
    try:
        with _stdout_to_stderr():
            from HD_BET.hd_bet_prediction import get_hdbet_predictor
        with _stdout_to_stderr(), tempfile.TemporaryDirectory(prefix="msnewlesion-hdbet-") as work:
            image_path = Path(work) / "image.nii.gz"
            save_volume(Volume(np.asarray(data, dtype=np.float32), affine), image_path)
            predictor = get_hdbet_predictor(use_tta=use_tta, device=torch_device, verbose=False)
            predictor.allow_tqdm = False
            predictor.predict_from_files_sequential(
                [[str(image_path)]], [str(Path(work) / "brain")], save_probabilities=False, overwrite=True
            )
            result = nib.load(str(Path(work) / "brain.nii.gz"))
            mask = np.asarray(result.dataobj) > 0
            result_affine = result.affine
    except MsNewLesionError:
        raise
    except Exception as error:  # HD-BET and nnU-Net raise anything from AssertionError to pickling errors
        raise SkullStripError(f"skull stripping (HD-BET) of {what} failed: {type(error).__name__}: {error}") from None
    finally:
        torch.set_num_threads(threads)
    if mask.shape != data.shape or not np.allclose(result_affine, affine, atol=1e-3):
        raise SkullStripError(
            f"skull stripping (HD-BET) of {what} returned a mask on another grid ({mask.shape}) than its input "
            f"({data.shape})"
        )
    settings = {"device": str(torch_device), "tta": use_tta, "weights": str(folder), "version": hdbet_version()}
    return mask, settings
