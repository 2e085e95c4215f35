"""Painting lesions in and out of a FLAIR: in-painting real lesions with normal-appearing white matter, and
adding library lesion shapes with soft edges.

Every change is described by a weight map in [0, 1] built from the signed distance to the lesion's boundary,
so that the voxels of the lesion are exactly those where the weight exceeds one half: that is what makes the
new-lesion mask exact (see :mod:`msnewlesion.synth`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: Weights below this are set to 0, so that every change has a finite support.
WEIGHT_FLOOR = 0.01
#: The soft edge falls below WEIGHT_FLOOR this many edge-softness lengths from the boundary: ln(1/0.01 − 1).
FLOOR_DISTANCE = math.log(1 / WEIGHT_FLOOR - 1)
#: Normal-appearing white matter texture is borrowed from at most this far away (mm).
DONOR_RADIUS_MM = 20.0
DONOR_TRIES = 200
DONOR_MIN_FRACTION = 0.9
#: Spatial correlation of the fall-back noise texture (voxels), close to that of a resampled 1 mm scan.
NOISE_TEXTURE_SIGMA = 0.6

__all__ = [
    "DONOR_RADIUS_MM",
    "FLOOR_DISTANCE",
    "WEIGHT_FLOOR",
    "expand_box",
    "inpainting_weight",
    "local_mean",
    "signed_distance_mm",
    "soft_lesion_weight",
    "voxels_for_mm",
]


def voxels_for_mm(distance_mm: float, spacing: Sequence[float]) -> tuple[int, int, int]:
    """The whole number of voxels along each axis that covers ``distance_mm``.

    Examples
    --------
    >>> voxels_for_mm(2.5, (1.0, 1.0, 3.0))
    (3, 3, 1)
    """
    return tuple(math.ceil(distance_mm / s - 1e-9) for s in spacing)  # type: ignore[return-value]


def expand_box(box: Sequence[slice], margin: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    """Grow a box by ``margin`` voxels per axis, clipped to ``shape``.

    Examples
    --------
    >>> expand_box((slice(2, 5), slice(0, 3), slice(8, 10)), (3, 3, 3), (10, 10, 10))
    (slice(0, 8, None), slice(0, 6, None), slice(5, 10, None))
    """
    return tuple(slice(max(s.start - m, 0), min(s.stop + m, n)) for s, m, n in zip(box, margin, shape, strict=True))


def signed_distance_mm(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance in mm from each voxel centre to the other side of the mask's boundary, negative inside.

    Inside voxels get minus the distance to the nearest outside voxel, outside voxels the distance to the
    nearest inside voxel; so no voxel is closer than one voxel to 0, and the sign alone gives the mask back.

    Examples
    --------
    >>> mask = np.zeros((7, 1, 1), dtype=bool)
    >>> mask[2:5] = True
    >>> signed_distance_mm(mask, (1.0, 1.0, 1.0)).ravel().tolist()
    [2.0, 1.0, -1.0, -2.0, -1.0, 1.0, 2.0]
    """
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    return (outside - inside).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


def soft_lesion_weight(distance_mm: np.ndarray, softness_mm: float) -> np.ndarray:
    """Lesion content of each voxel: 1 / (1 + exp(d / softness)), 0 below :data:`WEIGHT_FLOOR`.

    Above one half exactly inside the lesion (d < 0), below outside; ``softness_mm = 0`` gives a hard edge.

    Examples
    --------
    >>> d = np.array([-2.0, -1.0, 1.0, 2.0, 3.0])
    >>> [round(float(w), 3) for w in soft_lesion_weight(d, 0.5)]
    [0.982, 0.881, 0.119, 0.018, 0.0]
    """
    if softness_mm <= 0:
        return (distance_mm < 0).astype(np.float32)
    weight = _sigmoid(-distance_mm / softness_mm)
    weight[weight < WEIGHT_FLOOR] = 0
    return weight


def inpainting_weight(distance_mm: np.ndarray, softness_mm: float, margin_mm: float) -> np.ndarray:
    """How much of each voxel is replaced when a lesion is in-painted.

    1 on the lesion, then a soft fall centred ``margin_mm`` outside it, which also removes the partial-volume
    halo that real lesion masks leave around the lesion.

    Examples
    --------
    >>> d = np.array([-1.0, 1.0, 2.0, 3.0, 4.0])
    >>> [round(float(w), 3) for w in inpainting_weight(d, 0.5, 1.5)]
    [1.0, 0.731, 0.269, 0.047, 0.0]
    """
    if softness_mm <= 0:
        return (distance_mm <= margin_mm).astype(np.float32)
    weight = _sigmoid(-(distance_mm - margin_mm) / softness_mm)
    weight[distance_mm < 0] = 1
    weight[weight < WEIGHT_FLOOR] = 0
    return weight


def local_mean(
    image: np.ndarray,
    normal: np.ndarray,
    sigma_voxels: Sequence[float],
    fallback: float,
    needed: np.ndarray | None = None,
) -> np.ndarray:
    """The local mean of ``image`` over the ``normal`` voxels (normalised convolution).

    A Gaussian-weighted mean of the normal voxels around each voxel. Where too few normal voxels are near
    (the middle of a large lesion) the scale is doubled, up to eight times, until every ``needed`` voxel has a
    value; voxels still without one get ``fallback``.

    Examples
    --------
    >>> image = np.full((9, 9, 9), 80.0, dtype=np.float32)
    >>> image[3:6, 3:6, 3:6] = 120.0
    >>> normal = image < 100
    >>> round(float(local_mean(image, normal, (2.0, 2.0, 2.0), fallback=0.0)[4, 4, 4]), 3)
    80.0
    """
    weights = normal.astype(np.float32)
    values = np.where(normal, image, 0).astype(np.float32)
    result = np.full(image.shape, np.nan, dtype=np.float32)
    needed = np.ones(image.shape, dtype=bool) if needed is None else needed
    for factor in (1, 2, 4, 8):
        sigma = [s * factor for s in sigma_voxels]
        denominator = ndimage.gaussian_filter(weights, sigma, mode="constant")
        numerator = ndimage.gaussian_filter(values, sigma, mode="constant")
        fill = np.isnan(result) & (denominator > 0.05)
        result[fill] = numerator[fill] / denominator[fill]
        if not np.isnan(result[needed]).any():
            break
    result[np.isnan(result)] = fallback
    return result


def borrow_texture(
    residual: np.ndarray,
    normal: np.ndarray,
    support: np.ndarray,
    core: np.ndarray,
    radius_voxels: Sequence[int],
    rng: np.random.Generator,
) -> tuple[np.ndarray | None, list[int] | None]:
    """Texture for in-painting: the residual (image minus its local mean) of a nearby patch of normal tissue.

    Random offsets within ``radius_voxels`` are tried (the shifted ``support`` must stay inside the array) and
    the one whose shifted ``core`` lies most on ``normal`` voxels wins, if at least :data:`DONOR_MIN_FRACTION`
    of it does; voxels whose donor is not normal get no texture (the local mean alone).
    Real texture keeps the noise and its spatial correlation of the scan, which a model cannot tell apart from
    the surrounding tissue.

    Returns
    -------
    texture : ndarray or None
        The borrowed residual on ``support`` (0 elsewhere), or None when no offset fits.
    offset : list of int or None
        The donor's offset in voxels.
    """
    coordinates = np.nonzero(support)
    core_in_support = core[coordinates]
    shape = np.array(support.shape)
    radius = np.asarray(radius_voxels)
    best_fraction, best_offset = 0.0, None
    for _ in range(DONOR_TRIES):
        offset = rng.integers(-radius, radius + 1)
        if not offset.any():
            continue
        shifted = tuple(c + o for c, o in zip(coordinates, offset, strict=True))
        if any(s.min() < 0 or s.max() >= n for s, n in zip(shifted, shape, strict=True)):
            continue
        fraction = float(normal[shifted][core_in_support].mean())
        if fraction > best_fraction:
            best_fraction, best_offset = fraction, offset
            if fraction == 1.0:
                break
    if best_offset is None or best_fraction < DONOR_MIN_FRACTION:
        return None, None
    shifted = tuple(c + o for c, o in zip(coordinates, best_offset, strict=True))
    donor_normal = normal[shifted]
    borrowed = np.where(donor_normal, residual[shifted], 0)
    # A patch's residual need not average to 0 over a small region; centring it keeps the filled lesion at the
    # local normal-appearing mean and only borrows the texture.
    borrowed[donor_normal] -= borrowed[donor_normal & core_in_support].mean()
    texture = np.zeros(support.shape, dtype=np.float32)
    texture[coordinates] = borrowed
    return texture, [int(o) for o in best_offset]


def noise_texture(shape: Sequence[int], std: float, rng: np.random.Generator) -> np.ndarray:
    """Spatially correlated Gaussian noise of standard deviation ``std``: the fall-back in-painting texture."""
    noise = ndimage.gaussian_filter(rng.standard_normal(tuple(shape), dtype=np.float32), NOISE_TEXTURE_SIGMA)
    spread = float(noise.std())
    return noise * np.float32(std / spread) if spread > 0 else noise
