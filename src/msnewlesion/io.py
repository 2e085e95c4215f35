"""NIfTI input and output that keeps geometry, and atomic writes.

Every array travels with its affine in a :class:`Volume`. Outputs are written with the
header of the image they refer to, so that they overlay it in any viewer, and always
through a temporary name that is renamed once complete: an interrupted run never
leaves a half-written file that looks finished.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import json
import logging
import os
import secrets
import shutil
import socket
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from msnewlesion.errors import GeometryError, InputError, OutputExistsError, OutputInUseError

__all__ = [
    "OutputClaim",
    "Volume",
    "atomic_directory",
    "atomic_path",
    "check_output_location",
    "check_outputs_free",
    "check_same_grid",
    "claim_output_folder",
    "describe_grid",
    "grids_match",
    "load_mask",
    "load_volume",
    "quiet_nibabel",
    "read_error_reason",
    "read_voxels",
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
                f"{high:.3g} (a probability map?); pass `threshold` (for example 0.5) to binarise it"
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
        raise OutputExistsError(f"{target} already exists; pass `overwrite=True` to replace it")
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


def check_output_location(path: str | os.PathLike[str], *, kind: str | None = None, what: str = "output") -> Path:
    """Refuse, before any work, an output that could not be written where it is asked for.

    Parameters
    ----------
    path : path-like
        The file or folder to be written; it need not exist.
    kind : {"file", "folder"}, optional
        What ``path`` must be if it exists already (either when None).
    what : str
        What the output is, for messages (``"output folder"``).

    Returns
    -------
    Path

    Raises
    ------
    InputError
        ``path`` exists as the wrong kind, a folder above it is a file, or the nearest existing
        folder cannot be written into.
    """
    path = Path(path)
    if path.exists():
        if kind == "folder" and not path.is_dir():
            raise InputError(f"the {what} {path} is a file, not a folder: give a folder (it is created if needed)")
        if kind == "file" and path.is_dir():
            raise InputError(f"the {what} {path} is a folder: give a file name")
    # The nearest existing folder on the way to ``path`` is where the first new entry is created.
    nearest = path if path.is_dir() else path.parent
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        raise InputError(f"cannot create the {what} {path}: {nearest} is a file, not a folder")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise InputError(f"cannot write the {what} {path}: no permission to write into {nearest}")
    return path


def check_outputs_free(
    outputs: Iterable[str | os.PathLike[str]],
    *,
    inputs: Sequence[str | os.PathLike[str]] = (),
    overwrite: bool = False,
) -> None:
    """Refuse outputs that cannot be written, that would replace an input, or that exist (unless ``overwrite``).

    Raises
    ------
    InputError
        An output path is one of the inputs, or cannot be created (see :func:`check_output_location`).
    OutputExistsError
        An output exists and ``overwrite`` is false.
    """
    resolved_inputs = {Path(p).resolve() for p in inputs}
    existing = []
    for output in outputs:
        output = Path(output)
        if output.resolve() in resolved_inputs:
            raise InputError(f"refusing to write {output}: it is one of the inputs. Choose another output folder.")
        check_output_location(output)
        if output.exists():
            existing.append(output)
    if existing and not overwrite:
        names = ", ".join(str(p) for p in existing[:3]) + (" …" if len(existing) > 3 else "")
        raise OutputExistsError(f"outputs already exist ({names}); pass `overwrite=True` to replace them")


# ---------------------------------------------------------------------------------------------
# one run per output folder

#: Held (``flock``) by the run writing into a folder; removed when the run ends.
LOCK_NAME = ".msnewlesion-run.lock"
#: A run's scratch space inside its output folder (registration files); removed when the run ends.
SCRATCH_PREFIX = ".msnewlesion-scratch-"


def _is_leftover(name: str) -> bool:
    # Hidden staging names of atomic writes (".x.partial-…", ".msnewlesion-partial-…") and scratch folders.
    return name.startswith(".") and ("partial-" in name or name.startswith(SCRATCH_PREFIX))


@dataclass
class OutputClaim:
    """A run's hold on its output folder (see :func:`claim_output_folder`)."""

    directory: Path
    _scratch: Path | None = field(default=None, repr=False)

    @property
    def scratch(self) -> Path:
        """A private scratch folder inside the output folder, made on first use and removed with the claim.

        A run killed outright leaves it behind as a hidden folder that the next run in the same
        output folder removes, instead of litter in the system's temporary folder.
        """
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=self.directory))
        return self._scratch


def _make_folders(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; return those created, outermost first."""
    missing = []
    folder = directory
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    directory.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def _holder(handle: Any) -> str:
    try:
        handle.seek(0)
        holder = json.loads(handle.read() or "{}")
        return f" ({holder['command']}, process {holder['pid']} on {holder['host']}, since {holder['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _lock(directory: Path, command: str) -> Any | None:
    """Hold ``LOCK_NAME`` in ``directory``; None where locks do not exist (not POSIX, some network filesystems)."""
    try:
        import fcntl
    except ImportError:
        return None
    path = directory / LOCK_NAME
    for _ in range(10):
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held for the whole run)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle)
            handle.close()
            raise OutputInUseError(
                f"another msnewlesion run{holder} is writing into {directory}: wait for it to finish, "
                "or choose another output folder"
            ) from None
        except OSError:  # a filesystem without locks: run unprotected, as before
            handle.close()
            return None
        # Its holder may have removed the file between our open and our lock: then lock the new one.
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(current, os.fstat(handle.fileno())):
            handle.seek(0)
            handle.truncate()
            started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
            handle.write(json.dumps({"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                                     "started": started}))  # fmt: skip
            handle.flush()
            return handle
        handle.close()
    return None


def _unlock(directory: Path, handle: Any | None) -> None:
    if handle is None:
        return
    import fcntl

    with contextlib.suppress(OSError):
        (directory / LOCK_NAME).unlink()
    with contextlib.suppress(OSError):
        fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


@contextlib.contextmanager
def claim_output_folder(
    directory: str | os.PathLike[str],
    *,
    outputs: Iterable[str | os.PathLike[str]] = (),
    inputs: Sequence[str | os.PathLike[str]] = (),
    overwrite: bool = False,
    command: str = "msnewlesion",
) -> Iterator[OutputClaim]:
    """Check a run's output folder before any work, and hold it for the run.

    Before anything is written: the folder must be creatable and writable (see
    :func:`check_output_location`) and ``outputs`` free (see :func:`check_outputs_free`). Then
    the folder is created, locked against a second run writing into it at the same time, and
    cleared of what killed runs left there (hidden staging and scratch entries). When the block
    ends, the lock and the scratch space are removed, and so is the folder itself when this call
    created it and the run left it empty (a run that failed on its inputs leaves nothing behind).

    Parameters
    ----------
    directory : path-like
        The output folder.
    outputs : iterable of path-like
        The files the run will write (inside ``directory`` or not).
    inputs : sequence of path-like
        The run's input files, which no output may replace.
    overwrite : bool
        Existing ``outputs`` may be replaced.
    command : str
        Names the run to a second one that finds the folder taken.

    Yields
    ------
    OutputClaim
        With a private :attr:`~OutputClaim.scratch` folder for intermediate files.

    Raises
    ------
    InputError
        The folder cannot be created or written, or an output is an input.
    OutputExistsError
        An output exists and ``overwrite`` is false.
    OutputInUseError
        Another run holds the folder.

    Examples
    --------
    >>> with claim_output_folder("results", inputs=["t1.nii.gz", "t2.nii.gz"]) as claim:  # doctest: +SKIP
    ...     write_everything(claim.directory, scratch=claim.scratch)
    """
    directory = Path(directory)
    check_output_location(directory, kind="folder", what="output folder")
    check_outputs_free(outputs, inputs=inputs, overwrite=overwrite)
    created = _make_folders(directory)
    handle = None
    claim = OutputClaim(directory)
    try:
        handle = _lock(directory, command)
        if handle is not None:  # only a run that holds the lock may remove what others left
            for entry in directory.iterdir():
                if _is_leftover(entry.name):
                    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        yield claim
    finally:
        if claim._scratch is not None:
            shutil.rmtree(claim._scratch, ignore_errors=True)
        _unlock(directory, handle)
        for folder in reversed(created):
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
