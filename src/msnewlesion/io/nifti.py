"""NIfTI input and output that keeps geometry.

Every array travels with its affine in a :class:`Volume`. Outputs are written with the
header of the image they refer to, so that they overlay it in any viewer, and always
through a temporary name that is renamed once complete (:func:`msnewlesion.io.atomic_path`).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from msnewlesion.errors import GeometryError, InputError, parameter
from msnewlesion.io.atomic import NIFTI_SUFFIXES, atomic_path

__all__ = [
    "Volume",
    "check_same_grid",
    "describe_grid",
    "grids_match",
    "load_mask",
    "load_volume",
    "quiet_nibabel",
    "read_error_reason",
    "read_voxels",
    "save_volume",
]


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image and its geometry.

    Parameters
    ----------
    data : ndarray
        The voxel values, indexed as stored in the file (nibabel order, i, j, k).
    affine : ndarray
        4×4 matrix from voxel indices to scanner coordinates in mm (RAS+, as nibabel reports it).
    header : nibabel.Nifti1Header, optional
        The header of the file it came from; outputs referring to this image reuse it.
    path : Path, optional
        Where it was read from, for messages.
    """

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | None = field(default=None, repr=False)
    path: Path | None = None

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            raise InputError(f"a Volume must be 3D, got an array of shape {self.data.shape}")
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise InputError(f"an affine must be 4×4, got shape {affine.shape}")
        object.__setattr__(self, "affine", affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel in mm³."""
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    @property
    def orientation(self) -> str:
        """Axis codes such as ``"RAS"`` or ``"LPS"``."""
        return "".join(nib.aff2axcodes(self.affine))

    def with_data(self, data: np.ndarray) -> Volume:
        """The same grid and header with other voxel values."""
        if tuple(data.shape) != self.shape:
            raise GeometryError(f"new data of shape {data.shape} does not fit a grid of shape {self.shape}")
        return Volume(data=data, affine=self.affine, header=self.header, path=self.path)

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "image"


def describe_grid(volume: Volume) -> str:
    """A short human description of a grid: shape, spacing and orientation."""
    shape = "×".join(str(s) for s in volume.shape)
    spacing = "×".join(f"{s:.3g}" for s in volume.spacing)
    return f"{shape} voxels of {spacing} mm, {volume.orientation}"


@contextlib.contextmanager
def quiet_nibabel() -> Iterator[None]:
    """Silence nibabel's own log lines while reading a header (``pixdim[1,2,3] should be non-zero …``).

    nibabel prints them on stderr as it repairs a header; msnewlesion checks what matters itself
    and reports it in its one-line error, so the stray line only confuses.
    """
    logger = nib.imageglobals.logger
    previous = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _size_text(n_bytes: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.3g} {unit}"
    return f"{int(n_bytes)} bytes"


def read_error_reason(error: BaseException) -> str:
    """Why a file could not be read, in words (some readers raise errors with an empty message)."""
    if isinstance(error, EOFError | zlib.error | gzip.BadGzipFile):
        return f"the file is truncated or corrupt ({str(error).strip() or type(error).__name__})"
    if isinstance(error, MemoryError):
        return "not enough memory to hold its voxels"
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _read_nifti(path: Path, what: str) -> nib.Nifti1Image:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if path.is_dir():
        raise InputError(f"{what} is a folder, expected a NIfTI file (.nii or .nii.gz): {path}")
    try:
        with quiet_nibabel():
            image = nib.load(str(path))
    except Exception as error:  # nibabel raises many types for unreadable files
        raise InputError(f"could not read {what} {path} as NIfTI: {read_error_reason(error)}") from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"{what} {path} is not a NIfTI image (nibabel read it as {type(image).__name__})")
    return image


def _claimed_size(image: nib.Nifti1Image) -> tuple[str, float]:
    shape = tuple(int(s) for s in image.shape)
    dtype = np.dtype(image.get_data_dtype())
    claimed = float(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    return f"{'×'.join(map(str, shape))} voxels of {dtype.name} ({_size_text(claimed)})", claimed


def _check_claimed_size(image: nib.Nifti1Image, path: Path, what: str) -> None:
    # An uncompressed file shorter than its header says is refused before numpy tries to map it.
    if not path.name.endswith(".nii"):
        return
    claims, claimed = _claimed_size(image)
    available = path.stat().st_size - int(image.header.get_data_offset())
    if available < claimed:
        raise InputError(
            f"{what} {path} is truncated or its header is wrong: the header claims {claims} but the file holds "
            f"{_size_text(max(available, 0))} of voxel data"
        )


def _as_3d(image: nib.Nifti1Image, path: Path, what: str) -> np.ndarray:
    _check_claimed_size(image, path, what)
    try:
        data = np.asanyarray(image.dataobj)
    except MemoryError:
        claims, _ = _claimed_size(image)
        raise InputError(
            f"could not read the voxels of {what} {path}: its header claims {claims}, more than this machine can "
            "hold; the header is probably wrong (or the file truncated)"
        ) from None
    except Exception as error:
        raise InputError(f"could not read the voxels of {what} {path}: {read_error_reason(error)}") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 5 and data.shape[3] == 1 and data.shape[4] == 1:
        data = data[..., 0, 0]
    if data.ndim != 3:
        raise InputError(
            f"{what} {path} has shape {data.shape}: a 3D image is needed "
            "(a 4D file is accepted only when it holds a single volume)"
        )
    return data


def _check_affine(image: nib.Nifti1Image, path: Path, what: str) -> None:
    affine = image.affine
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(
            f"{what} {path} has a degenerate affine (zero voxel size or non-finite values): its header places no "
            "voxel in space; fix its qform/sform"
        )


def read_voxels(path: str | os.PathLike[str], *, what: str = "image") -> np.ndarray:
    """The voxels of a 3D NIfTI file as stored (no dtype change, header scaling applied).

    Raises
    ------
    InputError
        The file is missing, unreadable, truncated, claims more voxels than it holds, or is not 3D;
        the message names ``what`` and the file.
    """
    path = Path(path)
    return _as_3d(_read_nifti(path, what), path, what)


def load_volume(path: str | os.PathLike[str], *, what: str = "image", dtype: Any = np.float32) -> Volume:
    """Read a 3D NIfTI image.

    A 4D file holding one volume is accepted. The values are checked to be finite.

    Parameters
    ----------
    path : path-like
        A ``.nii`` or ``.nii.gz`` file.
    what : str
        What the file is, for error messages (``"baseline FLAIR"``).
    dtype : numpy dtype
        The dtype of the returned data (scaling in the header is applied).

    Returns
    -------
    Volume

    Raises
    ------
    InputError
        The file is missing, unreadable, not 3D, or holds NaN or infinite values.

    Examples
    --------
    >>> flair = load_volume("sub-01_ses-01_FLAIR.nii.gz", what="baseline FLAIR")  # doctest: +SKIP
    >>> flair.shape, flair.spacing  # doctest: +SKIP
    ((182, 218, 182), (1.0, 1.0, 1.0))
    """
    path = Path(path)
    image = _read_nifti(path, what)
    _check_affine(image, path, what)
    raw = _as_3d(image, path, what)
    data = np.asarray(raw, dtype=dtype)
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise InputError(
                f"{what} {path} holds {bad} NaN or infinite voxels: fix or mask them before running "
                "(for example set them to 0)"
            )
    return Volume(data=data, affine=image.affine, header=image.header.copy(), path=path)


def load_mask(
    path: str | os.PathLike[str],
    *,
    what: str = "mask",
    threshold: float | None = None,
    allow_fractions: bool = True,
) -> Volume:
    """Read a mask as booleans: every voxel with a label above 0 is foreground.

    Parameters
    ----------
    path : path-like
        A ``.nii`` or ``.nii.gz`` file.
    what : str
        What the file is, for error messages.
    threshold : float, optional
        Foreground is every voxel above this value instead (to binarise a probability map).
    allow_fractions : bool
        False refuses a file holding values that are not whole numbers (a probability map read as
        a mask would count every voxel above 0 as foreground) unless ``threshold`` is given.

    Raises
    ------
    InputError
        The file is missing, unreadable, not 3D, has a degenerate affine, holds NaN, infinite or
        negative values, or fractions when they are not allowed.
    """
    path = Path(path)
    image = _read_nifti(path, what)
    _check_affine(image, path, what)
    raw = np.asarray(_as_3d(image, path, what))
    if np.issubdtype(raw.dtype, np.floating) and not np.all(np.isfinite(raw)):
        raise InputError(f"{what} {path} holds NaN or infinite values; a mask must hold 0 and labels > 0")
    if raw.size and raw.min() < 0:
        raise InputError(f"{what} {path} holds negative values ({raw.min()}); a mask must hold 0 and labels > 0")
    if threshold is not None:
        return Volume(data=raw > threshold, affine=image.affine, header=image.header.copy(), path=path)
    if not allow_fractions and np.issubdtype(raw.dtype, np.floating):
        fractional = raw[raw != np.round(raw)]
        if fractional.size:
            low, high = float(raw[raw > 0].min()), float(raw.max())
            raise InputError(
                f"{what} {path} is not a mask of 0 and whole-number labels: it holds values from {low:.3g} to "
                f"{high:.3g} (a probability map?); pass {parameter('threshold')} (for example 0.5) to binarise it"
            )
    return Volume(data=raw > 0, affine=image.affine, header=image.header.copy(), path=path)


def grids_match(a: Volume, b: Volume, *, atol: float = 1e-3) -> bool:
    """Whether two volumes share shape and affine (to ``atol`` mm)."""
    return a.shape == b.shape and bool(np.allclose(a.affine, b.affine, atol=atol, rtol=0))


def check_same_grid(a: Volume, b: Volume, *, what_a: str, what_b: str, atol: float = 1e-3) -> None:
    """Raise a :class:`GeometryError` (one line) that names both grids unless they match."""
    if grids_match(a, b, atol=atol):
        return
    diff = float(np.max(np.abs(a.affine - b.affine))) if a.shape == b.shape else None
    detail = (
        f"the shapes differ ({a.shape} vs {b.shape})"
        if diff is None
        else f"the affines differ by up to {diff:.4g} mm (tolerance {atol:g})"
    )
    raise GeometryError(
        f"{what_a} and {what_b} are not on the same grid: {detail}; "
        f"{what_a}: {describe_grid(a)} ({a.name}); {what_b}: {describe_grid(b)} ({b.name}). "
        "Resample one onto the other's grid first."
    )


def save_volume(
    volume: Volume,
    path: str | os.PathLike[str],
    *,
    dtype: Any | None = None,
    description: str | None = None,
) -> Path:
    """Write a volume as NIfTI, atomically, with its own header and affine.

    The header of the image the volume refers to is reused (its qform/sform codes and units),
    the affine is written unchanged, and intensity scaling is dropped, so the output overlays
    its reference image exactly in any viewer.

    Parameters
    ----------
    volume : Volume
        What to write.
    path : path-like
        Destination ending in ``.nii.gz`` or ``.nii``.
    dtype : numpy dtype, optional
        On-disk dtype (``np.uint8`` for masks, ``np.float32`` for maps). Defaults to the data's.
    description : str, optional
        Put in the header's ``descrip`` field (80 characters at most).
    """
    path = Path(path)
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise InputError(f"NIfTI outputs must end in .nii.gz or .nii: {path}")
    data = np.asarray(volume.data)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if dtype is not None:
        data = data.astype(dtype)
    header = volume.header.copy() if volume.header is not None else nib.Nifti1Header()
    if not isinstance(header, nib.Nifti1Header):
        header = nib.Nifti1Header.from_header(header)
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"] = 0
    header["cal_max"] = 0
    if description is not None:
        header["descrip"] = description[:79].encode("ascii", "replace")
    qform_code = int(header["qform_code"]) or 1
    sform_code = int(header["sform_code"]) or 1
    image = nib.Nifti1Image(data, volume.affine, header=header)
    image.set_sform(volume.affine, code=sform_code)
    image.set_qform(volume.affine, code=qform_code)
    with atomic_path(path) as temporary:
        nib.save(image, str(temporary))
    return path
