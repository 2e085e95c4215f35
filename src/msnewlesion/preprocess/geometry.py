"""Grids, rigid transforms and resampling in world coordinates.

World coordinates are nibabel's: millimetres, RAS+ (x grows to the Right, y to the Anterior,
z to the Superior). ITK and ANTs use LPS+; :data:`RAS_TO_LPS` converts between the two (it is
its own inverse). A transform here is a 4×4 matrix that maps *points*; resampling an image onto
a grid needs the transform from the grid's world to the image's world, so that each output voxel
knows where to read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from msnewlesion.errors import GeometryError, InputError
from msnewlesion.settings import orientation_problem

__all__ = [
    "INTERPOLATION_ORDERS",
    "RAS_TO_LPS",
    "Grid",
    "axis_directions",
    "check_orientation",
    "common_grid",
    "fov_corners",
    "half_transform",
    "mean_displacement",
    "orthonormal_affine",
    "resample",
    "rotation_angle_degrees",
]

#: Flips x and y: RAS+ (nibabel) ↔ LPS+ (ITK, ANTs). Its own inverse.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Spline order of each interpolation name.
INTERPOLATION_ORDERS = {"nearest": 0, "linear": 1, "bspline": 3}

_AXIS_UNIT = {
    "R": (1.0, 0.0, 0.0),
    "L": (-1.0, 0.0, 0.0),
    "A": (0.0, 1.0, 0.0),
    "P": (0.0, -1.0, 0.0),
    "S": (0.0, 0.0, 1.0),
    "I": (0.0, 0.0, -1.0),
}

# A grid larger than this (about 1 GB per float32 image) is a mistake in the spacing, not a brain.
_MAX_VOXELS = 256 * 1024 * 1024


def check_orientation(codes: str) -> str:
    """Validate three axis codes such as ``"RAS"`` or ``"LPI"`` and return them upper-cased.

    Raises
    ------
    InputError
        The codes are not one of R/L, one of A/P and one of S/I, in any order.

    Examples
    --------
    >>> check_orientation("ras")
    'RAS'
    """
    problem = orientation_problem(codes)
    if problem is not None:
        raise InputError(problem)
    return str(codes).upper()


def axis_directions(codes: str) -> np.ndarray:
    """The 3×3 matrix whose columns are the world (RAS) unit vectors of the array axes.

    Examples
    --------
    >>> axis_directions("LPS")[:, 0]
    array([-1.,  0.,  0.])
    """
    codes = check_orientation(codes)
    return np.array([_AXIS_UNIT[c] for c in codes], dtype=np.float64).T


@dataclass(frozen=True, eq=False)
class Grid:
    """A voxel grid: a shape and the affine from voxel indices to world (RAS, mm).

    Examples
    --------
    >>> grid = Grid((10, 10, 10), np.eye(4))
    >>> grid.crop((2, 2, 2), (5, 6, 7)).affine[:3, 3]
    array([2., 2., 2.])
    """

    shape: tuple[int, int, int]
    affine: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "affine", np.asarray(self.affine, dtype=np.float64))

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def crop(self, start: tuple[int, int, int], stop: tuple[int, int, int]) -> Grid:
        """The sub-grid of voxels ``start`` (inclusive) to ``stop`` (exclusive) along each axis."""
        shift = np.eye(4)
        shift[:3, 3] = start
        shape = (int(stop[0] - start[0]), int(stop[1] - start[1]), int(stop[2] - start[2]))
        return Grid(shape, self.affine @ shift)

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "affine": self.affine.round(6).tolist(), "spacing_mm": list(self.spacing)}


def fov_corners(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """World coordinates (N×3) of the 8 outer corners of a grid's field of view (voxel edges, not centres)."""
    lows = np.full(3, -0.5)
    highs = np.asarray(shape, dtype=np.float64) - 0.5
    corners = np.array([[(highs if (i >> axis) & 1 else lows)[axis] for axis in range(3)] for i in range(8)])
    return (affine[:3, :3] @ corners.T).T + affine[:3, 3]


def common_grid(
    points: np.ndarray,
    *,
    orientation: str,
    spacing: tuple[float, float, float],
    anchor: np.ndarray,
) -> Grid:
    """The grid aligned with ``orientation``, at ``spacing``, whose voxel centres cover ``points``.

    Voxel centres sit on the lattice through ``anchor`` (a world point), so a grid that already has
    this orientation and spacing is reproduced voxel for voxel when its first voxel centre is the anchor.

    Raises
    ------
    InputError
        The grid would hold more than 2²⁸ voxels (a spacing far too small for the field of view).
    """
    spacing_array = np.asarray(spacing, dtype=np.float64)
    if spacing_array.shape != (3,) or np.any(spacing_array <= 0) or not np.all(np.isfinite(spacing_array)):
        raise InputError(f"spacing must be three positive numbers (mm), got {spacing}")
    directions = axis_directions(orientation) * spacing_array
    inverse = np.linalg.inv(directions)
    lattice = (inverse @ (np.asarray(points, dtype=np.float64) - anchor).T).T
    # Tolerance so that a field-of-view edge that falls on a voxel centre is kept despite rounding.
    low = np.ceil(lattice.min(axis=0) - 1e-6)
    high = np.floor(lattice.max(axis=0) + 1e-6)
    shape = tuple(int(h - lo + 1) for lo, h in zip(low, high, strict=True))
    if min(shape) < 1:
        raise GeometryError("the images' fields of view do not cover a single voxel of the common grid")
    if np.prod(shape, dtype=np.float64) > _MAX_VOXELS:
        raise InputError(
            f"a common grid of {'×'.join(map(str, shape))} voxels at {tuple(spacing)} mm is too large: "
            "check the spacing (it is in mm)"
        )
    affine = np.eye(4)
    affine[:3, :3] = directions
    affine[:3, 3] = anchor + directions @ low
    return Grid(shape, affine)  # type: ignore[arg-type]


def orthonormal_affine(affine: np.ndarray) -> np.ndarray:
    """The nearest affine whose axes are orthogonal, with the same voxel sizes and origin.

    ITK (and so ANTs) stores an image's geometry as origin, spacing and an orthonormal direction
    matrix; a NIfTI sform may carry a small shear that ITK cannot represent. The difference is
    kept explicitly by the callers, so no geometry is lost.
    """
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    u, _, vt = np.linalg.svd(affine[:3, :3] / spacing)
    result = np.eye(4)
    result[:3, :3] = (u @ vt) * spacing
    result[:3, 3] = affine[:3, 3]
    return result


def _rigid_parts(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u, _, vt = np.linalg.svd(matrix[:3, :3])
    rotation = u @ vt
    if np.linalg.det(rotation) < 0:
        raise GeometryError("a registration transform flips the image (negative determinant); it cannot be rigid")
    return rotation, matrix[:3, 3]


def half_transform(matrix: np.ndarray) -> np.ndarray:
    """The rigid transform ``H`` with ``H @ H == matrix``: half the rotation angle about the same axis.

    Parameters
    ----------
    matrix : ndarray
        A 4×4 rigid transform (rotation below 180°).

    Returns
    -------
    ndarray
        Its principal square root, itself rigid.

    Examples
    --------
    >>> shift = np.eye(4); shift[:3, 3] = (4.0, 0.0, -2.0)
    >>> half_transform(shift)[:3, 3]
    array([ 2.,  0., -1.])
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    rotation, translation = _rigid_parts(matrix)
    half_rotation = Rotation.from_rotvec(Rotation.from_matrix(rotation).as_rotvec() / 2.0).as_matrix()
    # H(x) = R½ x + t½ and H(H(x)) = R x + (R½ + I) t½, so t½ solves (R½ + I) t½ = t.
    half_translation = np.linalg.solve(half_rotation + np.eye(3), translation)
    result = np.eye(4)
    result[:3, :3] = half_rotation
    result[:3, 3] = half_translation
    return result


def rotation_angle_degrees(matrix: np.ndarray) -> float:
    """Rotation angle (degrees) of the rotation nearest to a 4×4 or 3×3 transform's linear part.

    Examples
    --------
    >>> round(rotation_angle_degrees(np.eye(4)), 6)
    0.0
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    rotation, _ = _rigid_parts(matrix if matrix.shape == (4, 4) else np.pad(matrix, ((0, 1), (0, 1))))
    return float(np.degrees(np.linalg.norm(Rotation.from_matrix(rotation).as_rotvec())))


def mean_displacement(a: np.ndarray, b: np.ndarray, points: np.ndarray) -> float:
    """Mean distance (mm) between where two 4×4 transforms send the same points (N×3)."""
    homogeneous = np.c_[points, np.ones(len(points))].T
    return float(np.linalg.norm(((a - b) @ homogeneous)[:3], axis=0).mean())


def _integer_shift(index_map: np.ndarray) -> np.ndarray | None:
    if not np.allclose(index_map[:3, :3], np.eye(3), atol=1e-6):
        return None
    offset = index_map[:3, 3]
    rounded = np.round(offset)
    return rounded.astype(int) if np.allclose(offset, rounded, atol=1e-4) else None


def _copy_shifted(data: np.ndarray, shift: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    out = np.zeros(shape, dtype=data.dtype)
    target = []
    source = []
    for axis in range(3):
        start = max(0, -shift[axis])
        stop = min(shape[axis], data.shape[axis] - shift[axis])
        if stop <= start:
            return out
        target.append(slice(start, stop))
        source.append(slice(start + shift[axis], stop + shift[axis]))
    out[tuple(target)] = data[tuple(source)]
    return out


def resample(
    data: np.ndarray,
    affine: np.ndarray,
    grid: Grid,
    grid_to_data_world: np.ndarray | None = None,
    *,
    order: int,
) -> np.ndarray:
    """Sample an image onto a grid.

    Each voxel of ``grid`` is taken to world coordinates by ``grid.affine``, then to the image's
    world by ``grid_to_data_world`` (identity when None), then read from ``data`` by interpolation.
    Voxels whose point falls outside the image's field of view (beyond half a voxel past its edge
    voxels) are 0. When the grid is the image's own lattice, shifted by whole voxels, values are
    copied exactly, with no interpolation.

    Parameters
    ----------
    data : ndarray
        The image's voxels (bool arrays are resampled as masks).
    affine : ndarray
        Its voxel-to-world affine.
    grid : Grid
        Where to sample.
    grid_to_data_world : ndarray, optional
        4×4 map from the grid's world points to the image's world points.
    order : {0, 1, 3}
        Nearest neighbour, linear or cubic B-spline. Cubic B-spline results are clipped to the
        input's range (no overshoot beyond the darkest and brightest voxel).

    Returns
    -------
    ndarray
        Of shape ``grid.shape``; float32 for orders 1 and 3, the input's dtype for order 0.

    Examples
    --------
    >>> image = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    >>> resample(image, np.eye(4), Grid((3, 3, 3), np.eye(4)), order=3)[1, 1, 1]
    np.float32(13.0)
    """
    world = np.eye(4) if grid_to_data_world is None else np.asarray(grid_to_data_world, dtype=np.float64)
    index_map = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ world @ grid.affine
    is_mask = data.dtype == bool
    source = data.astype(np.uint8) if is_mask else data
    if order not in (0, 1, 3):
        raise InputError(f"interpolation order must be 0, 1 or 3, got {order}")
    shift = _integer_shift(index_map)
    if shift is not None:
        copied = _copy_shifted(source, shift, grid.shape)
        result = copied if order == 0 else copied.astype(np.float32)
    elif order == 0:
        result = ndimage.affine_transform(
            source,
            index_map[:3, :3],
            offset=index_map[:3, 3],
            output_shape=grid.shape,
            order=0,
            mode="grid-constant",
            cval=0,
        )
    else:
        source = np.asarray(source, dtype=np.float32)
        values = ndimage.affine_transform(
            source,
            index_map[:3, :3],
            offset=index_map[:3, 3],
            output_shape=grid.shape,
            output=np.float32,
            order=order,
            mode="nearest",
        )
        inside = ndimage.affine_transform(
            np.ones(source.shape, dtype=np.uint8),
            index_map[:3, :3],
            offset=index_map[:3, 3],
            output_shape=grid.shape,
            order=0,
            mode="grid-constant",
            cval=0,
        )
        values *= inside
        if order == 3 and source.size:
            np.clip(values, min(float(source.min()), 0.0), float(source.max()), out=values)
        result = values
    return result.astype(bool) if (is_mask and order == 0) else result
