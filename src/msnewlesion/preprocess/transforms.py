"""Reading and writing affine transforms as ITK text files (what ANTs, SimpleITK and 3D Slicer read).

ITK's convention: a transform file holds the map from points of the *fixed* (reference) space to
points of the *moving* image, in LPS millimetres, the one a resampler needs. So the file written
for "native scan → common grid" maps common-grid points to native-scan points, exactly like
``antsApplyTransforms -r common.nii.gz -i native.nii.gz -t file.txt`` expects, and like the
``*_to_common_space.txt`` files of the LIT longitudinal data set.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from msnewlesion.errors import InputError
from msnewlesion.io import write_text
from msnewlesion.preprocess.geometry import RAS_TO_LPS

__all__ = ["lps_to_ras", "ras_to_lps", "read_itk_affine", "write_itk_affine"]

_HEADER = "#Insight Transform File V1.0"
_AFFINE_TYPES = (
    "AffineTransform_double_3_3",
    "AffineTransform_float_3_3",
    "MatrixOffsetTransformBase_double_3_3",
    "MatrixOffsetTransformBase_float_3_3",
)


def ras_to_lps(matrix: np.ndarray) -> np.ndarray:
    """The same point map expressed in LPS coordinates (ITK's) instead of RAS (nibabel's)."""
    return RAS_TO_LPS @ np.asarray(matrix, dtype=np.float64) @ RAS_TO_LPS


def lps_to_ras(matrix: np.ndarray) -> np.ndarray:
    """The same point map expressed in RAS coordinates (nibabel's) instead of LPS (ITK's)."""
    return ras_to_lps(matrix)


def write_itk_affine(path: str | os.PathLike[str], matrix_lps: np.ndarray) -> Path:
    """Write a 4×4 LPS point map as an ITK ``AffineTransform_double_3_3`` text file (atomically).

    Examples
    --------
    >>> shift = np.eye(4); shift[:3, 3] = (1.0, 2.0, 3.0)
    >>> write_itk_affine("shift.txt", shift)  # doctest: +SKIP
    """
    matrix_lps = np.asarray(matrix_lps, dtype=np.float64)
    if matrix_lps.shape != (4, 4) or not np.allclose(matrix_lps[3], (0, 0, 0, 1)):
        raise InputError(f"an affine transform must be a 4×4 matrix with last row 0 0 0 1, got {matrix_lps}")
    parameters = [*matrix_lps[:3, :3].ravel(), *matrix_lps[:3, 3]]
    text = "\n".join(
        [
            _HEADER,
            "#Transform 0",
            "Transform: AffineTransform_double_3_3",
            "Parameters: " + " ".join(repr(float(p)) for p in parameters),
            "FixedParameters: 0 0 0",
            "",
        ]
    )
    return write_text(path, text)


def read_itk_affine(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a single affine ITK text transform file as a 4×4 LPS point map.

    The centre of rotation (``FixedParameters``) is folded into the translation.

    Raises
    ------
    InputError
        The file is missing, holds something other than one 3D affine transform, or is malformed.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise InputError(f"could not read transform file {path}: {error}") from None
    fields: dict[str, str] = {}
    for line in lines:
        if ":" in line and not line.startswith("#"):
            key, value = line.split(":", 1)
            if key.strip() in fields:
                raise InputError(f"{path} holds more than one transform; only a single 3D affine can be read")
            fields[key.strip()] = value.strip()
    kind = fields.get("Transform")
    if kind not in _AFFINE_TYPES:
        raise InputError(f"{path} holds a {kind or 'unknown'} transform; expected one of {', '.join(_AFFINE_TYPES)}")
    try:
        parameters = np.array(fields["Parameters"].split(), dtype=np.float64)
        centre = np.array(fields.get("FixedParameters", "0 0 0").split(), dtype=np.float64)
    except (KeyError, ValueError) as error:
        raise InputError(f"{path} is not a readable ITK transform file: {error}") from None
    if parameters.shape != (12,) or centre.shape != (3,):
        raise InputError(f"{path}: expected 12 parameters and a 3D centre, got {parameters.size} and {centre.size}")
    linear = parameters[:9].reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = parameters[9:] + centre - linear @ centre
    return matrix
