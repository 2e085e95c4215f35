"""The preprocessed pair: both time points on one grid, the way back to each native grid, and its files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from msnewlesion.errors import GeometryError, InputError
from msnewlesion.io import (
    Volume,
    check_outputs_free,
    describe_grid,
    save_volume,
    staged_outputs,
    write_json,
)
from msnewlesion.preprocess.geometry import (
    RAS_TO_LPS,
    Grid,
    resample,
)
from msnewlesion.preprocess.registration import shear_correction
from msnewlesion.preprocess.transforms import write_itk_affine

__all__ = [
    "OUTPUT_NAMES",
    "NativeGrid",
    "PreprocessedPair",
    "check_on_native_grid",
    "preprocessed_outputs",
    "save_preprocessed",
    "to_common",
    "to_native",
]

#: Files written by :func:`save_preprocessed`.
OUTPUT_NAMES = {
    "baseline": "baseline.nii.gz",
    "followup": "followup.nii.gz",
    "brain_mask": "brain_mask.nii.gz",
    "baseline_transform": "baseline_to_common.txt",
    "followup_transform": "followup_to_common.txt",
    "record": "preprocess.json",
}


@dataclass(frozen=True, eq=False)
class NativeGrid:
    """Where an input scan lives: its exact shape, affine and header as read from its file."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    header: nib.Nifti1Header | None = field(default=None, repr=False)
    path: Path | None = None

    @classmethod
    def of(cls, volume: Volume) -> NativeGrid:
        header = volume.header.copy() if volume.header is not None else None
        return cls(volume.shape, volume.affine.copy(), header, volume.path)

    @property
    def grid(self) -> Grid:
        return Grid(self.shape, self.affine)


@dataclass
class PreprocessedPair:
    """The two time points on one grid, their brain mask, and how to go back to each native grid.

    Attributes
    ----------
    baseline, followup : Volume
        Normalised float32 images on the common grid (same shape and affine).
    brain_mask : Volume
        bool, on the common grid.
    record : dict
        What ``preprocess.json`` holds: steps, parameters, software versions, seconds per step.
    baseline_native, followup_native : NativeGrid
        Each input's grid and header.
    common_to_baseline, common_to_followup : ndarray
        4×4 maps from common-space world points to each scan's world points (RAS, mm).
    """

    baseline: Volume
    followup: Volume
    brain_mask: Volume
    record: dict
    baseline_native: NativeGrid
    followup_native: NativeGrid
    common_to_baseline: np.ndarray
    common_to_followup: np.ndarray

    @property
    def grid(self) -> Grid:
        """The common grid."""
        return Grid(self.baseline.shape, self.baseline.affine)

    def native(self, which: str) -> tuple[NativeGrid, np.ndarray]:
        """The native grid of ``"baseline"`` or ``"followup"`` and the map from the common space to it."""
        if which == "baseline":
            return self.baseline_native, self.common_to_baseline
        if which == "followup":
            return self.followup_native, self.common_to_followup
        raise InputError(f"which must be 'baseline' or 'followup', got {which!r}")


def to_native(data: np.ndarray, pair: PreprocessedPair, which: str, *, kind: str) -> Volume:
    """Map an array on the common grid back onto the native grid of one input.

    Parameters
    ----------
    data : ndarray
        On ``pair``'s common grid (``pair.grid.shape``).
    pair : PreprocessedPair
        From :func:`preprocess_pair`.
    which : {"baseline", "followup"}
        Which input's grid.
    kind : {"mask", "probability"}
        ``mask``: nearest neighbour, labels and dtype kept. ``probability``: linear, float32.
        Native voxels outside the common grid get 0.

    Returns
    -------
    Volume
        With that input's exact shape, affine and header, so it overlays the original scan.

    Examples
    --------
    >>> new_lesions = to_native(probabilities > 0.5, pair, "followup", kind="mask")  # doctest: +SKIP
    >>> new_lesions.shape == pair.followup_native.shape  # doctest: +SKIP
    True
    """
    if kind not in ("mask", "probability"):
        raise InputError(f"kind must be 'mask' or 'probability', got {kind!r}")
    native, common_to_native = pair.native(which)
    data = np.asarray(data)
    if data.shape != pair.grid.shape:
        raise GeometryError(
            f"an array of shape {data.shape} is not on the common grid ({pair.grid.shape}); cannot map it back"
        )
    if kind == "mask":
        mapped = resample(data, pair.grid.affine, native.grid, np.linalg.inv(common_to_native), order=0)
    else:
        mapped = resample(
            data.astype(np.float32), pair.grid.affine, native.grid, np.linalg.inv(common_to_native), order=1
        )
    return Volume(mapped, native.affine, native.header)


def check_on_native_grid(volume: Volume, native: NativeGrid, which: str) -> None:
    """Refuse a label that is not on the native grid of the scan ``which`` (same shape, affine within 1e-3).

    :func:`to_common` needs it; callers check it before the preprocessing, so that a wrong label fails at once.

    Raises
    ------
    GeometryError
        Another shape or affine.
    """
    if volume.shape != native.shape or not np.allclose(volume.affine, native.affine, atol=1e-3):
        raise GeometryError(
            f"{volume.name} is not on the {which} scan's grid ({describe_grid(volume)} vs "
            f"{'×'.join(map(str, native.shape))} voxels); a label must share the grid of the scan it was drawn on"
        )


def to_common(volume: Volume, pair: PreprocessedPair, which: str, *, kind: str) -> Volume:
    """Map an image or mask on one input's native grid onto the pair's common grid.

    The inverse of :func:`to_native`: used to carry labels drawn on a native scan (a new-lesion
    mask on the follow-up, an all-lesion mask on the baseline) into the space the network sees.

    Parameters
    ----------
    volume : Volume
        On the native grid of ``which`` (same shape and affine as that input).
    pair : PreprocessedPair
    which : {"baseline", "followup"}
    kind : {"mask", "probability"}
        ``mask``: nearest neighbour, dtype kept. ``probability``: linear, float32.

    Examples
    --------
    >>> label = to_common(load_mask("new_lesions.nii.gz"), pair, "followup", kind="mask")  # doctest: +SKIP
    >>> label.shape == pair.baseline.shape  # doctest: +SKIP
    True
    """
    if kind not in ("mask", "probability"):
        raise InputError(f"kind must be 'mask' or 'probability', got {kind!r}")
    native, common_to_native = pair.native(which)
    check_on_native_grid(volume, native, which)
    data = volume.data if kind == "mask" else volume.data.astype(np.float32)
    mapped = resample(data, native.affine, pair.grid, common_to_native, order=0 if kind == "mask" else 1)
    return Volume(mapped, pair.grid.affine, pair.baseline.header)


def preprocessed_outputs(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """The files :func:`save_preprocessed` writes into ``directory``, by role."""
    directory = Path(directory)
    return {key: directory / name for key, name in OUTPUT_NAMES.items()}


def save_preprocessed(
    pair: PreprocessedPair,
    directory: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    labels: dict[str, Volume] | None = None,
) -> list[Path]:
    """Write the preprocessed pair, its brain mask, the transforms and ``preprocess.json``.

    Files: ``baseline.nii.gz`` and ``followup.nii.gz`` (float32, same grid), ``brain_mask.nii.gz``
    (uint8), ``baseline_to_common.txt`` and ``followup_to_common.txt`` (ITK affine transforms in
    ITK's convention: each maps points of the common grid to points of that native scan, so
    ``antsApplyTransforms -r baseline.nii.gz -i NATIVE -t baseline_to_common.txt`` reproduces the
    resampling) and ``preprocess.json``. Everything is written to a hidden folder inside
    ``directory`` first and moved into place once complete, ``preprocess.json`` last
    (:func:`msnewlesion.io.staged_outputs`); other files in ``directory`` are left alone.

    ``labels`` (name → mask on the common grid, see :func:`to_common`) are written as
    ``<name>.nii.gz`` (uint8) with the rest.

    Raises
    ------
    OutputExistsError
        One of the files exists and ``overwrite`` is false.
    InputError
        One of the files would replace an input.

    Examples
    --------
    >>> save_preprocessed(pair, "derivatives/sub-01")  # doctest: +SKIP
    """
    directory = Path(directory)
    labels = labels or {}
    clashing = sorted(set(labels) & set(OUTPUT_NAMES))
    if clashing:
        raise InputError(f"label names {', '.join(clashing)} clash with the preprocessing's own outputs")
    outputs = preprocessed_outputs(directory) | {name: directory / f"{name}.nii.gz" for name in labels}
    inputs = [p for p in (pair.baseline_native.path, pair.followup_native.path) if p is not None]
    mask_input = pair.record.get("inputs", {}).get("brain_mask")
    if mask_input:
        inputs.append(Path(mask_input))
    if directory.exists() and not directory.is_dir():
        raise InputError(f"the output {directory} is a file; give a folder for the preprocessed pair")
    check_outputs_free(outputs.values(), inputs=inputs, overwrite=overwrite)
    with staged_outputs(outputs, manifest="record") as staged:
        for name, label in labels.items():
            save_volume(label, staged[name], dtype=np.uint8)
        save_volume(pair.baseline, staged["baseline"], dtype=np.float32)
        save_volume(pair.followup, staged["followup"], dtype=np.float32)
        save_volume(pair.brain_mask, staged["brain_mask"], dtype=np.uint8)
        for which in ("baseline", "followup"):
            native, common_to_native = pair.native(which)
            # ITK reads the native file with orthogonal axes: fold the (tiny) shear back in.
            itk_map = RAS_TO_LPS @ np.linalg.inv(shear_correction(native.affine)) @ common_to_native @ RAS_TO_LPS
            write_itk_affine(staged[f"{which}_transform"], itk_map)
        record = dict(pair.record)
        record["files"] = {key: path.name for key, path in outputs.items()}
        write_json(staged["record"], record)
    return list(outputs.values())
