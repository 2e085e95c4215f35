"""A library of real lesion shapes: the connected components of lesion masks of other patients.

The masks must be on the grid of the scans that receive the lesions (for the LIT data, the MNI 1 mm grid),
so that each shape also carries a realistic location: where it was found in its own patient.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from msnewlesion.errors import InputError, parameter
from msnewlesion.io import NIFTI_SUFFIXES, Volume, check_same_grid, describe_grid, load_mask
from msnewlesion.lesions import components
from msnewlesion.progress import ProgressCallback, report

__all__ = ["LesionLibrary", "LibraryLesion", "find_library_files", "load_lesion_library"]


@dataclass(frozen=True, eq=False)
class LibraryLesion:
    """One real lesion: its shape and where it sat on the library's grid.

    Attributes
    ----------
    source : str
        The file it came from (name only).
    index : int
        Its component number in that file (1-based, 26-connectivity, in scan order).
    mask : ndarray of bool
        The lesion in its bounding box.
    origin : tuple of int
        Grid index of the box's first corner.
    """

    source: str
    index: int
    mask: np.ndarray = field(repr=False)
    origin: tuple[int, int, int]

    @property
    def voxels(self) -> int:
        return int(self.mask.sum())


@dataclass(frozen=True, eq=False)
class LesionLibrary:
    """Real lesion shapes and locations from lesion masks on one grid.

    Build it once with :meth:`from_volumes` and reuse it for many pairs.

    Attributes
    ----------
    lesions : list of LibraryLesion
        Every connected component of every mask.
    grid : Volume
        An empty stand-in carrying the library's shape and affine, for grid checks.
    sources : list of str
        The masks it was built from.
    """

    lesions: list[LibraryLesion] = field(repr=False)
    grid: Volume = field(repr=False)
    sources: list[str]

    @classmethod
    def from_volumes(cls, volumes: Sequence[Volume], *, progress: ProgressCallback | None = None) -> LesionLibrary:
        """Split lesion masks into their connected components.

        Raises
        ------
        InputError
            No volume was given.
        GeometryError
            The masks are not all on one grid.

        Examples
        --------
        >>> mask = np.zeros((20, 20, 20), dtype=bool)
        >>> mask[2:5, 2:5, 2:5] = mask[10:12, 10:12, 10:12] = True
        >>> library = LesionLibrary.from_volumes([Volume(mask, np.eye(4))])
        >>> [lesion.voxels for lesion in library.lesions]
        [27, 8]
        """
        if not volumes:
            raise InputError(f"the lesion library is empty: give at least one lesion mask ({parameter('library')})")
        reference = volumes[0]
        lesions: list[LibraryLesion] = []
        sources = []
        for number, volume in enumerate(volumes):
            check_same_grid(reference, volume, what_a="library mask", what_b="library mask")
            source = volume.path.name if volume.path is not None else f"mask{number}"
            sources.append(source)
            found = components(np.asarray(volume.data) > 0)
            labels = found.labels
            for index, box in enumerate(found.boxes, start=1):
                lesions.append(
                    LibraryLesion(
                        source=source,
                        index=index,
                        mask=labels[box] == index,
                        origin=tuple(s.start for s in box),  # type: ignore[arg-type]
                    )
                )
            report(progress, "reading lesion library", number + 1, len(volumes))
        grid = Volume(
            data=np.broadcast_to(np.zeros((), dtype=bool), reference.shape),
            affine=reference.affine,
            header=reference.header,
            path=reference.path,
        )
        return cls(lesions=lesions, grid=grid, sources=sources)

    def check_grid(self, flair: Volume) -> None:
        """Raise a :class:`~msnewlesion.errors.GeometryError` unless the library is on the FLAIR's grid."""
        check_same_grid(flair, self.grid, what_a="FLAIR", what_b="lesion library")

    def between(self, min_voxels: int, max_voxels: int) -> list[LibraryLesion]:
        """The lesions with at least ``min_voxels`` and at most ``max_voxels`` voxels."""
        return [lesion for lesion in self.lesions if min_voxels <= lesion.voxels <= max_voxels]

    def describe(self) -> str:
        return f"{len(self.lesions)} lesions from {len(self.sources)} masks on a grid of {describe_grid(self.grid)}"


def find_library_files(entries: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The NIfTI files named by folders and files, sorted within each folder.

    Raises
    ------
    InputError
        An entry does not exist, or nothing NIfTI was found.

    Examples
    --------
    >>> [path.name for path in find_library_files("tests/data/lit/lesion_masks")][:2]  # doctest: +SKIP
    ['patient01.nii.gz', 'patient02.nii.gz']
    """
    if isinstance(entries, str | os.PathLike):
        entries = [entries]
    files: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
            if not found:
                raise InputError(f"the lesion library folder {path} holds no .nii or .nii.gz file")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise InputError(f"lesion library entry not found: {path}")
    if not files:
        raise InputError(
            f"the lesion library is empty: give a folder of lesion masks or mask files ({parameter('library')})"
        )
    return files


def load_lesion_library(
    entries: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    progress: ProgressCallback | None = None,
) -> list[Volume]:
    """Read the lesion masks of a library from folders and files.

    Examples
    --------
    >>> masks = load_lesion_library("tests/data/lit/lesion_masks")  # doctest: +SKIP
    >>> len(masks)  # doctest: +SKIP
    27
    """
    files = find_library_files(entries)
    volumes = []
    for number, path in enumerate(files):
        volumes.append(load_mask(path, what="library lesion mask"))
        report(progress, "reading lesion library", number + 1, len(files))
    return volumes
