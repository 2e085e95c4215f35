"""NIfTI input and output that keeps geometry, and atomic writes.

Every array travels with its affine in a :class:`Volume`. Outputs are written with the
header of the image they refer to, so that they overlay it in any viewer, and always
through a temporary name that is renamed once complete: an interrupted run never
leaves a half-written file that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from msnewlesion.errors import GeometryError, InputError, OutputExistsError

__all__ = [
    "Volume",
    "atomic_directory",
    "atomic_path",
    "check_outputs_free",
    "check_same_grid",
    "describe_grid",
    "grids_match",
    "load_mask",
    "load_volume",
    "save_volume",
    "write_json",
    "write_text",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


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


def _read_nifti(path: Path, what: str) -> nib.Nifti1Image:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if path.is_dir():
        raise InputError(f"{what} is a folder, expected a NIfTI file (.nii or .nii.gz): {path}")
    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises many types for unreadable files
        raise InputError(f"could not read {what} {path} as NIfTI: {error}") from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"{what} {path} is not a NIfTI image (nibabel read it as {type(image).__name__})")
    return image


def _as_3d(image: nib.Nifti1Image, path: Path, what: str) -> np.ndarray:
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as error:
        raise InputError(f"could not read the voxels of {what} {path}: {error}") from None
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


def load_mask(path: str | os.PathLike[str], *, what: str = "mask") -> Volume:
    """Read a mask as booleans: every voxel with a label above 0 is foreground.

    Raises
    ------
    InputError
        The file is missing, unreadable, not 3D, or holds NaN, infinite or negative values.
    """
    path = Path(path)
    image = _read_nifti(path, what)
    raw = np.asarray(_as_3d(image, path, what))
    if np.issubdtype(raw.dtype, np.floating) and not np.all(np.isfinite(raw)):
        raise InputError(f"{what} {path} holds NaN or infinite values; a mask must hold 0 and labels > 0")
    if raw.size and raw.min() < 0:
        raise InputError(f"{what} {path} holds negative values ({raw.min()}); a mask must hold 0 and labels > 0")
    return Volume(data=raw > 0, affine=image.affine, header=image.header.copy(), path=path)


def grids_match(a: Volume, b: Volume, *, atol: float = 1e-3) -> bool:
    """Whether two volumes share shape and affine (to ``atol`` mm)."""
    return a.shape == b.shape and bool(np.allclose(a.affine, b.affine, atol=atol, rtol=0))


def check_same_grid(a: Volume, b: Volume, *, what_a: str, what_b: str, atol: float = 1e-3) -> None:
    """Raise a :class:`GeometryError` that names both grids unless they match."""
    if grids_match(a, b, atol=atol):
        return
    diff = float(np.max(np.abs(a.affine - b.affine))) if a.shape == b.shape else None
    detail = (
        f"the shapes differ ({a.shape} vs {b.shape})"
        if diff is None
        else f"the affines differ by up to {diff:.4g} mm (tolerance {atol:g})"
    )
    raise GeometryError(
        f"{what_a} and {what_b} are not on the same grid: {detail}.\n"
        f"  {what_a}: {describe_grid(a)} ({a.name})\n"
        f"  {what_b}: {describe_grid(b)} ({b.name})\n"
        "Resample one onto the other's grid first."
    )


# ---------------------------------------------------------------------------------------------
# atomic output


def _hidden_temporary_name(path: Path) -> Path:
    suffix = next((s for s in NIFTI_SUFFIXES if path.name.endswith(s)), path.suffix)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    token = secrets.token_hex(4)
    # The real extension stays last so that writers that look at it (nibabel) still work.
    return path.with_name(f".{stem}.partial-{token}{suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write to; rename it to ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = _hidden_temporary_name(target)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it becomes ``path`` once the block succeeds.

    With ``overwrite`` an existing folder is replaced only after the new one is complete.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} already exists; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield temporary
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, retired / "old")
            os.replace(temporary, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(temporary, target)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write JSON (indented, UTF-8, NaN written as null) atomically."""
    return write_text(path, json.dumps(_json_safe(payload), indent=2, ensure_ascii=False) + "\n")


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


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


def check_outputs_free(
    outputs: Iterable[str | os.PathLike[str]],
    *,
    inputs: Sequence[str | os.PathLike[str]] = (),
    overwrite: bool = False,
) -> None:
    """Refuse to write over an input, and over existing outputs unless ``overwrite``.

    Raises
    ------
    InputError
        An output path is one of the inputs.
    OutputExistsError
        An output exists and ``overwrite`` is false.
    """
    resolved_inputs = {Path(p).resolve() for p in inputs}
    existing = []
    for output in outputs:
        output = Path(output)
        if output.resolve() in resolved_inputs:
            raise InputError(f"refusing to write {output}: it is one of the inputs. Choose another output folder.")
        if output.exists():
            existing.append(output)
    if existing and not overwrite:
        names = ", ".join(str(p) for p in existing[:3]) + (" …" if len(existing) > 3 else "")
        raise OutputExistsError(f"outputs already exist ({names}); pass --overwrite to replace them")
