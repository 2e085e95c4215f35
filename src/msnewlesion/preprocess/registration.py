"""Rigid registration of two scans with antspyx, returned as a point map in RAS world coordinates.

The registration is a schedule of antsRegistration stages (:data:`RIGID_SCHEDULES`), each a
multi-resolution Mattes mutual-information fit that stops at each level once the metric has stopped
improving (its convergence test over a short window of iterations), started from the alignment of
the two images' centres of mass. The coarse stage does the travelling at about 6 and 3 mm with one
voxel in five sampled; the fine stage (``Rigid`` only) polishes at the finest resolution worth
using, with one voxel in twenty: a few iterations on a sparse sample there are as accurate as many
on a dense one (docs/performance.md), at a fraction of the time.
"""

from __future__ import annotations

import atexit
import os
import pickle
import re
import select
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msnewlesion.errors import MsNewLesionError
from msnewlesion.preprocess.geometry import RAS_TO_LPS, Grid, orthonormal_affine, resample, rotation_angle_degrees
from msnewlesion.settings import TRANSFORMS

__all__ = [
    "RIGID_SCHEDULES",
    "RegistrationError",
    "RigidStage",
    "ants_transform_matrix",
    "register_rigid",
    "registration_arguments",
    "shear_correction",
    "to_ants_image",
    "without_shear",
]

@dataclass(frozen=True)
class RigidStage:
    """One antsRegistration stage: a rigid fit over one or more resolution levels.

    Parameters
    ----------
    levels_mm : tuple of float
        The voxel size of each level along the fixed image's finest axis, coarsest first (0: its
        own). antsRegistration shrinks that axis by the nearest whole factor and the others to the
        nearest matching spacing, so a thick-slice axis is shrunk less or not at all. Each level is
        smoothed with a Gaussian of half its voxel size.
    iterations : tuple of int
        Most iterations per level; a level stops earlier once converged.
    sample_fraction : float
        Fraction of the voxels (on a regular lattice, randomly jittered) the metric is computed on ...
    sample_points : int, optional
        ... or, when given, about this many voxels of the full-resolution image (at most the fraction).
    step : float
        Gradient step (antsRegistration's learning rate of the rigid transform).
    convergence_threshold, convergence_window : float, int
        A level has converged when the slope of the metric over the last ``convergence_window``
        iterations falls below ``convergence_threshold``.
    """

    levels_mm: tuple[float, ...]
    iterations: tuple[int, ...]
    sample_fraction: float
    step: float
    convergence_threshold: float
    convergence_window: int
    sample_points: int | None = None

    def arguments(self, fixed: str, moving: str, spacing: tuple[float, ...], voxels: int) -> list[str]:
        """antsRegistration's arguments for this stage (its names of the images, the fixed image's grid)."""
        finest = min(spacing)
        shrink = [max(1, round(level / finest)) for level in self.levels_mm]
        sigmas = [level / 2.0 for level in self.levels_mm]
        fraction = self.sample_fraction
        if self.sample_points is not None:
            fraction = min(fraction, self.sample_points / max(voxels, 1))
        return [
            "--transform",
            f"Rigid[{self.step:g}]",
            "--metric",
            f"mattes[{fixed},{moving},1,32,regular,{fraction:.4g}]",
            "--convergence",
            f"[{'x'.join(map(str, self.iterations))},{self.convergence_threshold:g},{self.convergence_window}]",
            "--shrink-factors",
            "x".join(map(str, shrink)),
            "--smoothing-sigmas",
            "x".join(f"{sigma:.3g}" for sigma in sigmas) + "mm",
        ]


_COARSE = RigidStage(
    levels_mm=(4.3, 2.9),
    iterations=(1000, 500),
    sample_fraction=0.2,
    step=0.25,
    convergence_threshold=1e-5,
    convergence_window=5,
)
_FINE = RigidStage(
    levels_mm=(0.0,),
    iterations=(20,),
    sample_fraction=0.25,
    sample_points=300_000,
    step=0.1,
    convergence_threshold=1e-6,
    convergence_window=5,
)
#: The stages of each registration type.
RIGID_SCHEDULES: dict[str, tuple[RigidStage, ...]] = {"QuickRigid": (_COARSE,), "Rigid": (_COARSE, _FINE)}


def registration_arguments(
    transform: str,
    fixed: str,
    moving: str,
    mask: str | None,
    output_prefix: str,
    seed: int,
    *,
    spacing: tuple[float, ...],
    voxels: int,
    verbose: bool,
) -> list[str]:
    """The whole antsRegistration command line of one registration type (antspyx's names of the images).

    The initial transform aligns the centres of mass of the two images; the result is one rigid
    transform (``0GenericAffine.mat`` after ``output_prefix``).

    Examples
    --------
    >>> args = registration_arguments(
    ...     "QuickRigid", "F", "M", None, "/tmp/r_", 1, spacing=(0.72, 0.72, 4.0), voxels=320 * 320 * 36, verbose=False
    ... )
    >>> args[args.index("--convergence") + 1], args[args.index("--shrink-factors") + 1]
    ('[1000x500,1e-05,5]', '6x4')
    """
    arguments = ["--dimensionality", "3", "--float", "1", "--collapse-output-transforms", "1"]
    arguments += ["--initial-moving-transform", f"[{fixed},{moving},1]"]
    for stage in RIGID_SCHEDULES[transform]:
        arguments += [*stage.arguments(fixed, moving, spacing, voxels), "--masks", f"[{mask or 'NA'},NA]"]
    arguments += ["--use-histogram-matching", "0", "--random-seed", str(int(seed))]
    arguments += ["--output", output_prefix, "--verbose", "1" if verbose else "0"]
    return arguments


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
        # antsRegistration's per-iteration lines (on the child's stderr) tell how far it is: read here on POSIX.
        stderr = subprocess.PIPE if os.name == "posix" else None
        return subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
        )

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def run(self, request: tuple[Any, ...], on_iteration: Callable[[int], None] | None = None) -> tuple[str, Any]:
        """Send one request and wait for its answer; ``on_iteration`` is told each iteration's number in its level."""
        with self.lock:
            if self.process is None or self.process.poll() is not None:
                self.process = self._start()
            process = self.process
            assert process.stdin is not None and process.stdout is not None
            log: list[str] = []
            try:
                pickle.dump(request, process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                process.stdin.flush()
                log = _wait_for_answer(process, on_iteration)
                return pickle.load(process.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                code = process.wait()
                self.process = None
                said = " ".join(line.strip() for line in log[-3:])
                return "error", f"the registration process stopped without an answer (exit code {code}) {said}".strip()
            except BaseException:  # Ctrl-C above all: the registration must stop now, not when it ends
                self.stop()
                raise


#: An iteration in antsRegistration's verbose output (its number; 1 starts a resolution level).
_ITERATION = re.compile(rb"DIAGNOSTIC,\s+(\d+),")


def _wait_for_answer(process: subprocess.Popen[bytes], on_iteration: Callable[[int], None] | None) -> list[str]:
    """Wait for the worker's answer in slices of 0.2 s, reading its log meanwhile; the log's last lines.

    A Ctrl-C may be delivered to any thread of this process (PyTorch's and ITK's threads do not block
    it); Python then runs its handler in the main thread only when that thread next runs bytecode, so a
    main thread blocked in one long read would notice it only when the registration ends.
    """
    tail: list[str] = []
    if os.name != "posix":
        return tail
    streams: list[Any] = [process.stdout]
    if process.stderr is not None:
        streams.append(process.stderr)
    pending = b""
    while True:
        ready = select.select(streams, [], [], 0.2)[0]
        if process.stderr is not None and process.stderr in ready:
            chunk = os.read(process.stderr.fileno(), 1 << 16)
            if not chunk:
                streams.remove(process.stderr)
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                iteration = _ITERATION.search(line)
                if iteration is not None:
                    if on_iteration is not None:
                        on_iteration(int(iteration.group(1)))
                elif line.strip() and not line.lstrip().startswith(b"DIAGNOSTIC"):
                    tail = [*tail[-19:], line.decode("utf-8", "replace")]
            continue  # the log is read up to the answer before the answer is
        if process.stdout in ready:
            return tail


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
    progress: Callable[[int, int], None] | None = None,
    iterations: list[int] | None = None,
) -> np.ndarray:
    """Rigidly register ``moving`` onto ``fixed`` (Mattes mutual information, antspyx).

    antsRegistration runs in a child process (started once, then reused), which is stopped at
    once when this process is interrupted (Ctrl-C). It works at the images' own resolution: give
    images no finer than the registration needs (:func:`msnewlesion.preprocess.geometry.block_mean`).

    Parameters
    ----------
    fixed_data, fixed_affine : ndarray
        The fixed image and its RAS affine.
    moving_data, moving_affine : ndarray
        The moving image and its RAS affine.
    transform : {"QuickRigid", "Rigid"}
        The schedule of :data:`RIGID_SCHEDULES`: the coarse stage only, or the coarse and fine stages.
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
    progress : callable, optional
        Called with (levels done, levels in all) as each resolution level starts and at the end.
    iterations : list, optional
        Filled with the iterations each resolution level ran before it converged or reached its
        most (POSIX only: read from antsRegistration's log).

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
    levels = sum(len(stage.iterations) for stage in RIGID_SCHEDULES[transform])
    per_level: list[int] = []

    def iteration_done(number: int) -> None:
        if number == 1:
            if progress is not None and len(per_level) < levels:
                progress(len(per_level), levels)
            per_level.append(0)
        if per_level:
            per_level[-1] = number

    with tempfile.TemporaryDirectory(prefix="msnewlesion-registration-", dir=scratch_dir) as workdir:
        status, value = _WORKER.run(
            (
                (np.ascontiguousarray(fixed_data, dtype=np.float32), fixed_affine_exact),
                (np.ascontiguousarray(moving_data, dtype=np.float32), moving_affine_exact),
                mask,
                transform,
                seed,
                str(Path(workdir) / "rigid_"),
                True,
            ),
            on_iteration=iteration_done,
        )
    if progress is not None:
        progress(levels, levels)
    if iterations is not None:
        iterations[:] = per_level
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
