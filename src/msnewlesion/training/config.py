"""Training settings: a YAML file whose defaults are the paper's."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from msnewlesion.errors import InputError
from msnewlesion.settings import (
    BEST_METRICS,
    INTENSITY_NORMALIZATIONS,
    LR_SCHEDULES,
    NORM_LAYERS,
    PRECISIONS,
    choice_problem,
)

__all__ = ["TrainConfig"]

_KIND_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _as_type(value: Any, kind: type) -> Any:
    """``value`` as ``kind``: numbers written as text (``"1e-3"``, ``"20_000"``) included, nothing lossy."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(value)
    if kind is str:
        if value is None:
            return ""
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise TypeError(value)
    if isinstance(value, bool) or value is None:  # True is an int to Python, never a number of iterations
        raise TypeError(value)
    number = float(value.strip()) if isinstance(value, str) else value
    if not isinstance(number, int | float):
        raise TypeError(value)
    if kind is float:
        return float(number)
    if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
        raise ValueError(value)
    return int(number)


_DOMAIN_KEYS = ("slice_thickness_mm", "in_plane_spacing_mm")


def _input_domain_problems(domain: Any) -> list[str]:
    if not isinstance(domain, dict):
        return []  # reported by the type check
    problems = [f"input_domain has an unknown key {key!r} (known: {', '.join(_DOMAIN_KEYS)})"
                for key in domain if key not in _DOMAIN_KEYS]  # fmt: skip
    for key in _DOMAIN_KEYS:
        if key not in domain:
            continue
        value = domain[key]
        try:
            low, high = (float(v) for v in value)
        except (TypeError, ValueError):
            problems.append(f"input_domain.{key} must be [min, max] in mm, got {value!r}")
            continue
        if not 0 <= low <= high:
            problems.append(f"input_domain.{key} must be [min, max] with 0 ≤ min ≤ max, got {value!r}")
    return problems


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Defaults reproduce the published CoactSeg training.

    Parameters
    ----------
    iterations : int
        Optimiser steps in all (20k in the paper).
    batch_size : int
        Patches per step (8: 4 two-time-point + 4 single-time-point).
    longitudinal_fraction : float
        Share of each batch taken from two-time-point samples when both kinds exist.
    patch_size : int
        Edge of the cubic training patch, a multiple of 16 (80).
    width, norm, dropout
        The network (16, batch norm, 0.5 is the published one).
    lr, lr_schedule, weight_decay
        Adam with a constant learning rate of 1e-2 (the reference code); ``poly`` decays it as
        ``(1 − it / iterations) ** 0.9``.
    new_lesion_weight, relation_weight, relation_start
        λ1, λ2 and the iteration from which λ2 applies (counting from 1): 1, 1 and 10k.
    cross_entropy_weight : float
        Binary cross-entropy added to each head's soft Dice loss, with this weight (0 in the paper): it
        penalises scattered false positives and a head that calls everything lesion, which Dice barely sees.
    crop_shift : int
        The weighted crop centres on a random label voxel shifted by up to this many voxels per axis.
    flip_rot90 : bool
        Random flips along each axis and 90° rotations in the first plane, the identity included.
    rotation_degrees : float
        Random rotation up to this angle in the first plane (0: off).
    intensity_jitter : float
        Random intensity scale and shift up to this fraction (0: off), the same at both time points.
    time_point_jitter : float
        Random intensity scale and shift up to this fraction, drawn for each time point on its own (0: off):
        teaches that two acquisitions normalised separately differ without a lesion.
    random_crop_fraction : float
        Share of the crops of samples with lesions that are centred anywhere in the brain instead of on a
        lesion (0: the paper's lesion-weighted crops only).
    swap_fraction : float
        Share of the pairs with known all-lesion masks that are played backwards (follow-up first): their
        new lesions become disappearing ones, so their new-lesion label is empty and the all-lesion masks
        trade places (0: off).
    init_from : str
        A model (folder, registry name or Hub repository) whose weights initialise the network (fine-tuning;
        the architecture and width must match); empty: random initialisation.
    val_every, save_every : int
        Validate and checkpoint every so many iterations (and always at the end).
    best_metric : str
        Validation metric that picks ``best/``: one of :data:`msnewlesion.settings.BEST_METRICS`.
    val_overlap : float
        Sliding-window overlap during validation.
    seed : int
        Seeds every random choice (1337).
    workers : int
        Threads that draw upcoming batches while the network trains (0: draw each batch in turn).
        Batches depend only on (seed, iteration, rank), so this never changes the result.
    precision : {"auto", "fp32", "bf16", "fp16"}
        Autocast during training: ``auto`` is bf16 on CUDA GPUs (fp16 with loss scaling where bf16 is
        unsupported) and fp32 on the CPU.
    intensity_normalization : str
        How the (preprocessed) training images were normalised; recorded in the model's config.
    model_name, description, training_data, license : str
        Recorded in the trained model's ``config.json`` (the sample counts are added to ``training_data``).
    input_domain : dict
        What the training images were like, recorded in the model's ``config.json`` (``extra.input_domain``)
        for ``predict``'s out-of-domain warnings: ``slice_thickness_mm`` and ``in_plane_spacing_mm`` as
        [min, max] of the acquisitions the training data simulated or held.
    """

    iterations: int = 20_000
    batch_size: int = 8
    longitudinal_fraction: float = 0.5
    patch_size: int = 80
    width: int = 16
    norm: str = "batch"
    dropout: float = 0.5
    lr: float = 1e-2
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    new_lesion_weight: float = 1.0
    relation_weight: float = 1.0
    relation_start: int = 10_000
    cross_entropy_weight: float = 0.0
    crop_shift: int = 10
    flip_rot90: bool = True
    rotation_degrees: float = 0.0
    intensity_jitter: float = 0.0
    time_point_jitter: float = 0.0
    random_crop_fraction: float = 0.0
    swap_fraction: float = 0.0
    init_from: str = ""
    val_every: int = 1_000
    save_every: int = 1_000
    best_metric: str = "new_lesion_dice"
    val_overlap: float = 0.5
    seed: int = 1337
    workers: int = 1
    precision: str = "auto"
    intensity_normalization: str = "zscore-brain"
    model_name: str = "coactseg"
    description: str = ""
    training_data: str = ""
    license: str = ""
    input_domain: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = self._coerce()
        if problems:  # the range checks below need the declared types
            raise InputError("invalid training config: " + "; ".join(problems))
        for name in ("iterations", "batch_size", "val_every", "save_every", "width"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.workers < 0:
            problems.append(f"workers must not be negative, got {self.workers}")
        if self.patch_size < 16 or self.patch_size % 16:
            problems.append(f"patch_size must be a multiple of 16 (four poolings), got {self.patch_size}")
        if not 0.0 <= self.longitudinal_fraction <= 1.0:
            problems.append(f"longitudinal_fraction must be in [0, 1], got {self.longitudinal_fraction}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0:
            problems.append(f"lr must be positive, got {self.lr}")
        choices = {
            "norm": NORM_LAYERS,
            "lr_schedule": LR_SCHEDULES,
            "best_metric": BEST_METRICS,
            "precision": PRECISIONS,
            "intensity_normalization": INTENSITY_NORMALIZATIONS,
        }
        found = [choice_problem(name, getattr(self, name), allowed) for name, allowed in choices.items()]
        problems += [problem for problem in found if problem is not None]
        if self.cross_entropy_weight < 0:
            problems.append(f"cross_entropy_weight must not be negative, got {self.cross_entropy_weight}")
        if min(self.crop_shift, self.rotation_degrees, self.intensity_jitter, self.time_point_jitter) < 0:
            problems.append("crop_shift, rotation_degrees, intensity_jitter and time_point_jitter must not be negative")
        if not 0.0 <= self.random_crop_fraction <= 1.0:
            problems.append(f"random_crop_fraction must be in [0, 1], got {self.random_crop_fraction}")
        if not 0.0 <= self.swap_fraction <= 1.0:
            problems.append(f"swap_fraction must be in [0, 1], got {self.swap_fraction}")
        problems.extend(_input_domain_problems(self.input_domain))
        if problems:
            raise InputError("invalid training config: " + "; ".join(problems))

    def _coerce(self) -> list[str]:
        """Give every field its declared type, naming each one that cannot be (YAML reads ``1e-3`` as text)."""
        problems = []
        hints = typing.get_type_hints(type(self))
        for name, kind in hints.items():
            value = getattr(self, name)
            if typing.get_origin(kind) is dict:
                if value is None:
                    object.__setattr__(self, name, {})
                elif not isinstance(value, dict):
                    problems.append(f"{name} must be a mapping of keys to values, got {value!r}")
                continue
            try:
                object.__setattr__(self, name, _as_type(value, kind))
            except (TypeError, ValueError):
                problems.append(f"{name} must be {_KIND_NAMES[kind]}, got {value!r}")
        return problems

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with the given fields changed; None values are ignored (unset command-line flags)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "training config") -> TrainConfig:
        if not isinstance(data, dict):
            raise InputError(f"{source} must be a mapping of settings, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"{source} has unknown settings: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        try:
            return cls(**data)
        except TypeError as error:
            raise InputError(f"{source} is malformed: {error}") from None
        except InputError as error:  # name the file as well as the key
            raise InputError(f"{source}: {error}") from None

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a YAML file; missing keys keep the paper's defaults."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise InputError(f"training config not found: {path}") from None
        except (OSError, yaml.YAMLError) as error:
            raise InputError(f"could not read training config {path}: {error}") from None
        return cls.from_dict(data, source=str(path))
