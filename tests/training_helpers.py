"""A tiny heterogeneous training set written to disk, for the training tests."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

SHAPE = (48, 48, 48)
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def _background(rng: np.random.Generator) -> np.ndarray:
    image = ndimage.gaussian_filter(rng.normal(size=SHAPE), 2.0) * 3.0
    brain = np.zeros(SHAPE, bool)
    brain[4:-4, 4:-4, 4:-4] = True
    return np.where(brain, image, 0.0).astype(np.float32), brain


def _blobs(rng: np.random.Generator, count: int, avoid: np.ndarray | None = None) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    grid = np.indices(SHAPE)
    placed = 0
    while placed < count:
        centre = rng.integers(10, SHAPE[0] - 10, size=3)
        radius = rng.uniform(2.0, 3.5)
        blob = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2
        if avoid is not None and (ndimage.binary_dilation(avoid, iterations=2) & blob).any():
            continue
        mask |= blob
        placed += 1
    return mask


def _save(array: np.ndarray, path: Path) -> str:
    nib.save(nib.Nifti1Image(array, AFFINE), str(path))
    return path.name


def make_dataset(folder: Path, *, n_longitudinal: int = 3, n_single: int = 3, n_val: int = 1, seed: int = 0) -> Path:
    """Write images, labels and ``manifest.csv`` into ``folder``; return the manifest's path."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(n_longitudinal + n_val):
        split = "train" if index < n_longitudinal else "val"
        image, brain = _background(rng)
        old = _blobs(rng, 2)
        new = _blobs(rng, 2, avoid=old)
        baseline = image + 4.0 * old
        followup = image + 4.0 * (old | new) + rng.normal(scale=0.1, size=SHAPE).astype(np.float32)
        name = f"long{index}"
        rows.append(
            {
                "subject": name,
                "kind": "longitudinal",
                "baseline": _save(baseline.astype(np.float32), folder / f"{name}_t1.nii.gz"),
                "followup": _save(followup.astype(np.float32), folder / f"{name}_t2.nii.gz"),
                "label": _save(new.astype(np.uint8), folder / f"{name}_new.nii.gz"),
                "brain_mask": _save(brain.astype(np.uint8), folder / f"{name}_brain.nii.gz"),
                "split": split,
            }
        )
    for index in range(n_single + n_val):
        split = "train" if index < n_single else "val"
        image, brain = _background(rng)
        lesions = _blobs(rng, 3)
        name = f"single{index}"
        rows.append(
            {
                "subject": name,
                "kind": "single",
                "baseline": _save((image + 4.0 * lesions).astype(np.float32), folder / f"{name}.nii.gz"),
                "followup": "",
                "label": _save(lesions.astype(np.uint8), folder / f"{name}_lesions.nii.gz"),
                "brain_mask": "",
                "split": split,
            }
        )
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest
