"""What differs between two real scans of an unchanged brain: head position, intensity drift and noise."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from msnewlesion.lesions import bounding_box, components

__all__ = [
    "DRIFT_TERMS",
    "drift_log_field",
    "half_rigid",
    "move",
    "random_rigid_motion",
    "rigid_matrix",
    "rotation_matrix",
]

#: The smooth field is a second-order polynomial of the position: a gain, linear ramps and curvature.
DRIFT_TERMS = ("1", "x", "y", "z", "x^2", "y^2", "z^2", "xy", "xz", "yz")


def rotation_matrix(axis: npt.ArrayLike, angle_deg: float) -> np.ndarray:
    """The 3×3 rotation by ``angle_deg`` degrees about ``axis`` (right-hand rule, Rodrigues' formula).

    Examples
    --------
    >>> rotation_matrix([0, 0, 1], 90).round(6).tolist()
    [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    """
    unit = np.asarray(axis, dtype=np.float64)
    unit = unit / np.linalg.norm(unit)
    angle = math.radians(angle_deg)
    cross = np.array([[0, -unit[2], unit[1]], [unit[2], 0, -unit[0]], [-unit[1], unit[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def rigid_matrix(
    axis: npt.ArrayLike, angle_deg: float, translation_mm: npt.ArrayLike, centre_mm: npt.ArrayLike
) -> np.ndarray:
    """The 4×4 world transform that rotates about ``centre_mm`` and then translates: x ↦ R (x − c) + c + t.

    Examples
    --------
    >>> matrix = rigid_matrix([0, 0, 1], 90, [1, 0, 0], [10, 0, 0])
    >>> (matrix @ [11, 0, 0, 1]).round(6).tolist()
    [11.0, 1.0, 0.0, 1.0]
    """
    rotation = rotation_matrix(axis, angle_deg)
    centre = np.asarray(centre_mm, dtype=np.float64)
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre - rotation @ centre + np.asarray(translation_mm, dtype=np.float64)
    return matrix


def half_rigid(axis: npt.ArrayLike, angle_deg: float, matrix: np.ndarray) -> np.ndarray:
    """The rigid transform S with S ∘ S = ``matrix`` (half the rotation about the same axis).

    Examples
    --------
    >>> full = rigid_matrix([1, 2, 3], 2.0, [1.0, -0.5, 0.3], [5, 6, 7])
    >>> half = half_rigid([1, 2, 3], 2.0, full)
    >>> bool(np.allclose(half @ half, full))
    True
    """
    half = np.eye(4)
    half[:3, :3] = rotation_matrix(axis, angle_deg / 2) if angle_deg else np.eye(3)
    # S(x) = R_h x + t_h, and S(S(x)) = R x + (R_h + I) t_h must equal R x + t.
    half[:3, 3] = np.linalg.solve(half[:3, :3] + np.eye(3), matrix[:3, 3])
    return half


def random_rigid_motion(
    rng: np.random.Generator, max_rotation_deg: float, max_translation_mm: float
) -> tuple[np.ndarray, float, np.ndarray]:
    """A random head motion: an axis uniform on the sphere, an angle uniform in [0, max_rotation_deg], and a
    translation of uniform direction and a length uniform in [0, max_translation_mm].

    The same number of random values is drawn whatever the limits, so a limit of 0 changes nothing else.

    Returns
    -------
    axis : ndarray
        Unit vector.
    angle_deg : float
    translation_mm : ndarray
    """
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = float(rng.uniform(0.0, 1.0)) * max_rotation_deg
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    translation = direction * float(rng.uniform(0.0, 1.0)) * max_translation_mm
    return axis, angle, translation


def move(
    data: np.ndarray,
    affine: np.ndarray,
    world_matrix: np.ndarray,
    *,
    order: int,
    source_box: tuple[slice, ...] | None = None,
    sparse: bool = False,
) -> np.ndarray:
    """Resample ``data`` after moving its content by ``world_matrix`` (scanner mm), on the same grid.

    The output at voxel v is the input at A⁻¹ W⁻¹ A v (A the affine, W the motion), computed only over the box
    the moved content can reach; everything else is 0.

    Parameters
    ----------
    data : ndarray
        The content, zero outside ``source_box``.
    affine : ndarray
        Voxel-to-world matrix of the grid.
    world_matrix : ndarray
        4×4 rigid motion in world coordinates (points move from x to W x).
    order : int
        Spline order: 0 (nearest), 1 (linear) or 3 (cubic).
    source_box : tuple of slice, optional
        A box holding every non-zero voxel (computed when not given).
    sparse : bool
        Move each connected blob of non-zero voxels on its own (the same result, much faster for a few small
        blobs such as lesion maps).

    Returns
    -------
    ndarray of float32

    Examples
    --------
    >>> data = np.zeros((8, 8, 8), dtype=np.float32)
    >>> data[2, 3, 4] = 1.0
    >>> shift = np.eye(4)
    >>> shift[0, 3] = 2.0
    >>> moved = move(data, np.eye(4), shift, order=1)
    >>> np.argwhere(moved > 0.5).tolist()
    [[4, 3, 4]]
    """
    result = np.zeros(data.shape, dtype=np.float32)
    output_to_input = np.linalg.inv(affine) @ np.linalg.inv(world_matrix) @ affine
    if sparse:
        for box in components(data != 0).boxes:
            _move_box(data, output_to_input, box, order, result)
        return result
    if source_box is None:
        source_box = bounding_box(data != 0)
        if source_box is None:
            return result
    _move_box(data, output_to_input, source_box, order, result)
    return result


def _move_box(
    data: np.ndarray, output_to_input: np.ndarray, source_box: tuple[slice, ...], order: int, result: np.ndarray
) -> None:
    """Write into ``result`` the resampled values over the box that ``source_box`` moves to.

    The input read is the whole neighbourhood each output voxel needs, so the values written are exact even
    where the boxes of several calls overlap.
    """
    target_box = _box_through(np.linalg.inv(output_to_input), source_box, data.shape, margin=order + 1)
    if target_box is None:
        return
    input_box = _box_through(output_to_input, target_box, data.shape, margin=order + 2)
    if input_box is None:
        return
    output_origin = np.array([s.start for s in target_box], dtype=np.float64)
    input_origin = np.array([s.start for s in input_box], dtype=np.float64)
    offset = output_to_input[:3, :3] @ output_origin + output_to_input[:3, 3] - input_origin
    result[target_box] = ndimage.affine_transform(
        np.asarray(data[input_box], dtype=np.float32),
        output_to_input[:3, :3],
        offset=offset,
        output_shape=tuple(s.stop - s.start for s in target_box),
        output=np.float32,
        order=order,
        mode="constant",
        cval=0.0,
        prefilter=order > 1,
    )


def _box_through(
    matrix: np.ndarray, box: Sequence[slice], shape: Sequence[int], *, margin: int
) -> tuple[slice, ...] | None:
    """The grid box holding the image of ``box`` under the voxel map ``matrix``, grown and clipped."""
    corners = np.array(
        [
            [b.start if pick == 0 else b.stop - 1 for b, pick in zip(box, picks, strict=True)]
            for picks in np.ndindex(2, 2, 2)
        ],
        dtype=np.float64,
    )
    mapped = corners @ matrix[:3, :3].T + matrix[:3, 3]
    low = np.floor(mapped.min(axis=0)).astype(int) - margin
    high = np.ceil(mapped.max(axis=0)).astype(int) + margin + 1
    low = np.maximum(low, 0)
    high = np.minimum(high, np.asarray(shape))
    if np.any(high <= low):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))


def drift_log_field(
    rng: np.random.Generator, brain: np.ndarray, box: tuple[slice, ...], amplitude: float
) -> tuple[np.ndarray, list[float]]:
    """A smooth random log-intensity field over ``box``, scaled so that its largest magnitude on ``brain`` is
    ``amplitude``.

    The field is a second-order polynomial (:data:`DRIFT_TERMS`) of the position normalised to [−1, 1] across
    the box, with standard normal coefficients before scaling: a global gain plus bias-like ramps and bowls.
    Multiplying an image by ``exp(field)`` changes its intensities by at most a factor ``exp(±amplitude)``.

    Returns
    -------
    field : ndarray of float32
        On the box.
    coefficients : list of float
        The scaled coefficients, in the order of :data:`DRIFT_TERMS`.
    """
    coefficients = rng.standard_normal(len(DRIFT_TERMS))
    axes = []
    for axis, s in enumerate(box):
        length = s.stop - s.start
        coordinate = np.linspace(-1.0, 1.0, length, dtype=np.float32) if length > 1 else np.zeros(1, np.float32)
        shape = [1, 1, 1]
        shape[axis] = length
        axes.append(coordinate.reshape(shape))
    x, y, z = axes
    terms = (1.0, x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
    field = np.zeros(tuple(s.stop - s.start for s in box), dtype=np.float32)
    for coefficient, term in zip(coefficients, terms, strict=True):
        field += np.float32(coefficient) * term
    largest = float(np.abs(field[brain[box]]).max()) if brain[box].any() else 0.0
    scale = amplitude / largest if largest > 0 else 0.0
    field *= np.float32(scale)
    return field, [float(c * scale) for c in coefficients]
