"""Rigid registration of two scans with antspyx, returned as a point map in RAS world coordinates."""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import select
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from msnewlesion.errors import MsNewLesionError
from msnewlesion.preprocess.geometry import RAS_TO_LPS, Grid, orthonormal_affine, resample, rotation_angle_degrees
from msnewlesion.settings import TRANSFORMS

__all__ = [
    "RegistrationError",
    "ants_transform_matrix",
    "register_rigid",
    "shear_correction",
    "to_ants_image",
    "without_shear",
]

class RegistrationError(MsNewLesionError):
    """The registration of the two time points failed or gave an implausible answer."""


def to_ants_image(data: np.ndarray, affine: np.ndarray):  # -> ants.ANTsImage (antspyx is imported lazily)
    """An ANTs image with the voxels and geometry of a NIfTI array (RAS affine → ITK's LPS geometry).

    ITK needs orthogonal axes: an affine with a shear is given the nearest orthogonal geometry
    (see :func:`without_shear` to resample such an image exactly first).
    """
    import ants

    geometry = RAS_TO_LPS @ orthonormal_affine(affine)
    spacing = np.linalg.norm(geometry[:3, :3], axis=0)
    return ants.from_numpy(
        np.ascontiguousarray(data, dtype=np.float32),
        origin=tuple(float(v) for v in geometry[:3, 3]),
        spacing=tuple(float(v) for v in spacing),
        direction=geometry[:3, :3] / spacing,
    )


def shear_correction(affine: np.ndarray) -> np.ndarray:
    """Map from the world of :func:`to_ants_image`'s orthogonal geometry to the affine's own world (≈ identity)."""
    return np.asarray(affine, dtype=np.float64) @ np.linalg.inv(orthonormal_affine(affine))


def without_shear(data: np.ndarray, affine: np.ndarray, *, order: int) -> tuple[np.ndarray, np.ndarray]:
    """The image on the orthogonal grid nearest its own, so that ITK places every voxel exactly.

    Returned unchanged when the affine has no shear (the usual case).
    """
    orthogonal = orthonormal_affine(affine)
    if np.allclose(orthogonal, affine, atol=1e-6, rtol=0):
        return data, affine
    return resample(data, affine, Grid(data.shape, orthogonal), order=order), orthogonal


def ants_transform_matrix(transform) -> np.ndarray:
    """The 4×4 LPS point map of an affine ANTs transform (of any affine type), by mapping four points."""
    base = np.array([[0.0, 0.0, 0.0], [100.0, 0.0, 0.0], [0.0, 100.0, 0.0], [0.0, 0.0, 100.0]])
    mapped = np.array([transform.apply_to_point(tuple(point)) for point in base], dtype=np.float64)
    matrix = np.eye(4)
    matrix[:3, 3] = mapped[0]
    matrix[:3, :3] = (mapped[1:] - mapped[0]).T / 100.0
    return matrix


@contextlib.contextmanager
def _ants_seed(seed: int) -> Iterator[None]:
    # antspyx passes --random-seed to antsRegistration only through this module-level setting.
    import ants.config

    previous = ants.config._random_seed
    ants.config._random_seed = int(seed)
    try:
        yield
    finally:
        ants.config._random_seed = previous


class _Worker:
    """antsRegistration in a long-lived child process, so that Ctrl-C stops a registration at once.

    antspyx holds the interpreter lock for the whole registration (tens of seconds): run in this
    process, a Ctrl-C would only be noticed once it returned. The child imports antspyx once and
    then serves one registration at a time (they held the lock, so ran one at a time, before too);
    requests and answers are pickles on its stdin and stdout. It is a plain ``python -c`` process,
    not ``multiprocessing``, so a caller's script is never imported again in the child.
    """

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """Start afresh: in a forked child the parent's worker and lock are the parent's, not ours."""
        self.lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        import msnewlesion

        # Appended, not prepended: this process's msnewlesion is found even when it is not installed,
        # and nothing the child would import otherwise is shadowed.
        root = str(Path(msnewlesion.__file__).resolve().parents[1])
        code = (
            f"import sys; sys.path.append({root!r}); "
            "from msnewlesion.preprocess._registration_worker import serve; serve()"
        )
        return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def run(self, request: tuple[Any, ...]) -> tuple[str, Any]:
        with self.lock:
            if self.process is None or self.process.poll() is not None:
                self.process = self._start()
            process = self.process
            assert process.stdin is not None and process.stdout is not None
            try:
                pickle.dump(request, process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                process.stdin.flush()
                _wait_until_readable(process.stdout)
                return pickle.load(process.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                code = process.wait()
                self.process = None
                return "error", f"the registration process stopped without an answer (exit code {code})"
            except BaseException:  # Ctrl-C above all: the registration must stop now, not when it ends
                self.stop()
                raise


def _wait_until_readable(stream: Any) -> None:
    """Wait for the worker's answer in slices of 0.2 s.

    A Ctrl-C may be delivered to any thread of this process (PyTorch's and ITK's threads do not block
    it); Python then runs its handler in the main thread only when that thread next runs bytecode, so a
    main thread blocked in one long read would notice it only when the registration ends.
    """
    if os.name != "posix":
        return
    while not select.select([stream], [], [], 0.2)[0]:
        pass


_WORKER = _Worker()
atexit.register(_WORKER.stop)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_WORKER.forget)


def register_rigid(
    fixed_data: np.ndarray,
    fixed_affine: np.ndarray,
    moving_data: np.ndarray,
    moving_affine: np.ndarray,
    *,
    transform: str = "QuickRigid",
    seed: int = 1337,
    fixed_mask: np.ndarray | None = None,
    describe: str = "the registration",
    scratch_dir: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """Rigidly register ``moving`` onto ``fixed`` (Mattes mutual information, antspyx).

    antsRegistration runs in a child process (started once, then reused), which is stopped at
    once when this process is interrupted (Ctrl-C).

    Parameters
    ----------
    fixed_data, fixed_affine : ndarray
        The fixed image and its RAS affine.
    moving_data, moving_affine : ndarray
        The moving image and its RAS affine.
    transform : {"QuickRigid", "Rigid"}
        antspyx ``type_of_transform``.
    seed : int
        Seed of the metric's random sampling. With one ITK thread
        (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``) results are then identical run to run; with
        several they differ by hundredths of a millimetre.
    fixed_mask : ndarray of bool, optional
        Where the metric is computed, on the fixed image's grid.
    describe : str
        Names the two images in error messages.
    scratch_dir : path-like, optional
        Folder for antsRegistration's files while it runs (a new folder in it, removed afterwards);
        the system's temporary folder when None.

    Returns
    -------
    ndarray
        4×4 rigid map from fixed world points to the matching moving world points (RAS, mm).

    Raises
    ------
    RegistrationError
        antspyx fails, or returns a transform that is not finite.

    Examples
    --------
    >>> matrix = register_rigid(base.data, base.affine, follow.data, follow.affine)  # doctest: +SKIP
    >>> rotation_angle_degrees(matrix)  # doctest: +SKIP
    2.7
    """
    if transform not in TRANSFORMS:  # both rigid (6 degrees of freedom); QuickRigid stops two levels early
        raise RegistrationError(f"unknown registration transform {transform!r}: choose {' or '.join(TRANSFORMS)}")
    fixed_data, fixed_affine_exact = without_shear(fixed_data, fixed_affine, order=1)
    moving_data, moving_affine_exact = without_shear(moving_data, moving_affine, order=1)
    mask = None
    if fixed_mask is not None:
        mask_data, _ = without_shear(np.asarray(fixed_mask, dtype=bool), fixed_affine, order=0)
        mask = mask_data.astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="msnewlesion-registration-", dir=scratch_dir) as workdir:
        status, value = _WORKER.run(
            (
                (np.ascontiguousarray(fixed_data, dtype=np.float32), fixed_affine_exact),
                (np.ascontiguousarray(moving_data, dtype=np.float32), moving_affine_exact),
                mask,
                transform,
                seed,
                str(Path(workdir) / "rigid_"),
            )
        )
    if status == "error":
        raise RegistrationError(f"{describe} failed in antspyx: {value}")
    if status != "ok":  # a bug in the child: keep its traceback
        raise RuntimeError(f"the registration process failed:\n{value}")
    matrix_lps = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(matrix_lps)):
        raise RegistrationError(f"{describe} returned a transform that is not finite")
    matrix = RAS_TO_LPS @ matrix_lps @ RAS_TO_LPS
    # Touch the rotation once here so that a reflection fails as a registration error, naming the images.
    try:
        rotation_angle_degrees(matrix)
    except MsNewLesionError as error:
        raise RegistrationError(f"{describe}: {error}") from None
    return matrix
