"""The model configuration stored as ``config.json`` beside the weights."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msnewlesion.errors import ModelError
from msnewlesion.settings import INTENSITY_NORMALIZATIONS, NORM_LAYERS, choice_problem

__all__ = ["CONFIG_FORMAT_VERSION", "ModelConfig"]

#: Version of the config.json layout written by this package; loading refuses newer ones.
CONFIG_FORMAT_VERSION = 1

AXIS_ORDERS = ("xyz", "zyx")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a CoactSeg network and to feed it the way it was trained.

    Parameters
    ----------
    name : str
        Short model name (``"demo"``, ``"coactseg-official"``).
    width : int
        Channels of the first level; the levels have width × (1, 2, 4, 8, 16). 16 is the published network.
    norm : {"batch", "instance"}
        Normalisation layer after each convolution.
    dropout : float
        Dropout3d probability on the bottleneck and on each head's features (training only).
    spacing : tuple of 3 floats
        Voxel size in mm the network expects, along x, y, z of the image in ``orientation``.
    orientation : str
        Axis codes of the arrays the network was trained on (after reorientation), e.g. ``"RAS"``.
    axis_order : {"xyz", "zyx"}
        How the arrays are laid out for the network: ``"zyx"`` reverses the axes, as SimpleITK's
        ``GetArrayFromImage`` does (what the official checkpoint saw).
    patch_size : tuple of 3 ints
        Sliding-window and training patch size, along x, y, z.
    intensity_normalization : str
        One of :data:`msnewlesion.settings.INTENSITY_NORMALIZATIONS`. ``zscore-brain``: mean and standard
        deviation of the voxels inside the brain mask, background 0. ``zscore-brain-box``: the published
        CoactSeg recipe: image × brain mask, cropped to the mask's bounding box plus a margin, z-scored with
        the statistics of the whole box (background included).
    box_margin : int
        Voxels added around the brain box by ``zscore-brain-box``.
    threshold : float
        Probability above which a voxel is called lesion.
    """

    name: str = "coactseg"
    architecture: str = "coactseg"
    in_channels: int = 3
    num_classes: int = 2
    width: int = 16
    norm: str = "batch"
    dropout: float = 0.5
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    orientation: str = "RAS"
    axis_order: str = "xyz"
    patch_size: tuple[int, int, int] = (80, 80, 80)
    intensity_normalization: str = "zscore-brain"
    box_margin: int = 15
    threshold: float = 0.5
    description: str = ""
    training_data: str = ""
    license: str = ""
    clinical_use: str = "Research use only; not a medical device."
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = CONFIG_FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "patch_size", tuple(int(s) for s in self.patch_size))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ModelError` listing every value this version cannot use."""
        problems = []
        if self.format_version > CONFIG_FORMAT_VERSION:
            problems.append(
                f"format_version {self.format_version} is newer than this msnewlesion understands "
                f"({CONFIG_FORMAT_VERSION}); upgrade msnewlesion"
            )
        if self.architecture != "coactseg":
            problems.append(f"architecture {self.architecture!r} is not supported (only 'coactseg')")
        if self.in_channels != 3 or self.num_classes != 2:
            problems.append(
                f"in_channels={self.in_channels}, num_classes={self.num_classes}: CoactSeg takes 3 channels "
                "and gives 2 classes"
            )
        if not isinstance(self.width, int) or self.width < 1:
            problems.append(f"width must be a positive integer, got {self.width!r}")
        if (problem := choice_problem("norm", self.norm, NORM_LAYERS)) is not None:
            problems.append(problem)
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            problems.append(f"spacing must be 3 positive numbers (mm), got {self.spacing}")
        if len(self.patch_size) != 3 or any(p < 16 or p % 16 for p in self.patch_size):
            problems.append(f"patch_size must be 3 multiples of 16 (4 poolings), got {self.patch_size}")
        if self.axis_order not in AXIS_ORDERS:
            problems.append(f"axis_order {self.axis_order!r} is not one of {', '.join(AXIS_ORDERS)}")
        if len(self.orientation) != 3 or set(self.orientation) - set("RLAPSI"):
            problems.append(f"orientation must be three axis codes like 'RAS', got {self.orientation!r}")
        normalization = choice_problem(
            "intensity_normalization", self.intensity_normalization, INTENSITY_NORMALIZATIONS
        )
        if normalization is not None:
            problems.append(normalization)
        if not 0.0 < self.threshold < 1.0:
            problems.append(f"threshold must be between 0 and 1, got {self.threshold}")
        if problems:
            raise ModelError(f"model config {self.name!r} cannot be used: " + "; ".join(problems))

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["spacing"] = list(self.spacing)
        data["patch_size"] = list(self.patch_size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> ModelConfig:
        """Build a config from parsed JSON, naming unknown or ill-typed keys."""
        if not isinstance(data, dict):
            raise ModelError(f"{source} must hold a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(
                f"{source} has keys this msnewlesion version does not know: {', '.join(unknown)} "
                "(a model made by a newer version? upgrade msnewlesion)"
            )
        try:
            return cls(**data)
        except TypeError as error:
            raise ModelError(f"{source} is malformed: {error}") from None

    def save(self, path: str | Path) -> None:
        from msnewlesion.io import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(f"model config not found: {path}") from None
        except (OSError, json.JSONDecodeError) as error:
            raise ModelError(f"could not read model config {path}: {error}") from None
        return cls.from_dict(data, source=str(path))
