"""Shared pieces of the evaluation tests: hand-built masks and a literal reading of the MSSEG rule."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

LESION_MASKS = Path(__file__).parent / "data" / "lit" / "lesion_masks"
MSSEG_SPACING = (0.5, 0.75, 0.75)


def boxes(shape: tuple[int, int, int], *regions: tuple[slice, slice, slice]) -> np.ndarray:
    """A boolean mask that is True on each of the given boxes."""
    mask = np.zeros(shape, dtype=bool)
    for region in regions:
        mask[region] = True
    return mask


def blobs(shape: tuple[int, ...], rng: np.random.Generator, threshold: float = 0.53) -> np.ndarray:
    """Random smooth blobs, lesion-like, some touching the array's edges."""
    return ndimage.gaussian_filter(rng.random(shape), 1.5) > threshold


def write_mask(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.uint8), affine), str(path))
    return path


def real_mask(name: str) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(LESION_MASKS / f"{name}.nii.gz"))
    return np.asanyarray(image.dataobj) > 0, image.affine


def literal_msseg_detection(
    prediction: np.ndarray,
    reference: np.ndarray,
    min_voxels: int,
    connectivity: int = 26,
    alpha: float = 0.10,
    beta: float = 0.70,
    gamma: float = 0.65,
) -> tuple[list[bool], list[bool]]:
    """The detection rule written out lesion by lesion with whole-mask operations (slow, obvious).

    Returns whether each reference lesion and each predicted lesion is detected, in label order.
    """
    structure = ndimage.generate_binary_structure(3, 3 if connectivity == 26 else 1)

    def lesions(mask: np.ndarray) -> list[np.ndarray]:
        labels, count = ndimage.label(mask, structure=structure)
        found = [labels == i for i in range(1, count + 1)]
        return [lesion for lesion in found if lesion.sum() >= min_voxels]

    reference_lesions = lesions(reference)
    prediction_lesions = lesions(prediction)

    def detected(lesion: np.ndarray, others: list[np.ndarray], own_lesions: list[np.ndarray]) -> bool:
        own_union = np.zeros_like(lesion)
        for own in own_lesions:
            own_union |= own
        overlaps = [int((lesion & other).sum()) for other in others]
        covered = sum(overlaps)
        if covered / lesion.sum() <= alpha:
            return False
        order = sorted((k for k in range(len(others)) if overlaps[k] > 0), key=lambda k: (-overlaps[k], k))
        weight = 0.0
        for k in order:
            if weight >= gamma:
                break
            outside = (others[k] & ~own_union).sum() / others[k].sum()
            if outside > beta:
                return False
            weight += overlaps[k] / covered
        return True

    return (
        [detected(lesion, prediction_lesions, reference_lesions) for lesion in reference_lesions],
        [detected(lesion, reference_lesions, prediction_lesions) for lesion in prediction_lesions],
    )
