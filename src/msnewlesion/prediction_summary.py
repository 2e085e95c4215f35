"""What a prediction found, typed, and the ``summary.json`` record built from it.

:class:`PredictionSummary` holds the figures callers read (lesion counts and volumes of each output
mask, the threshold used); :func:`summary_record` builds the full record that
:func:`msnewlesion.predict.write_prediction` writes as ``summary.json`` (inputs, model, settings,
timings, preprocessing, environment, warnings).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msnewlesion import __version__
from msnewlesion.inference import SlidingWindowOptions
from msnewlesion.io import Volume
from msnewlesion.model.checkpoint import LoadedModel
from msnewlesion.preprocess import PreprocessedPair

__all__ = ["MASK_KINDS", "LesionSummary", "ModelProvenance", "PredictionSummary", "summary_record"]

#: The three masks of a prediction, in the order the summary lists them.
MASK_KINDS = ("new_lesions", "lesions_baseline", "lesions_followup")


@dataclass(frozen=True)
class ModelProvenance:
    """Where the model came from, for the summary."""

    name: str
    source: str = "local"
    repo_id: str | None = None
    revision: str | None = None


@dataclass(frozen=True)
class LesionSummary:
    """The lesions of one output mask: how many, and their size on the mask's own grid.

    Examples
    --------
    >>> LesionSummary(count=2, voxels=30, volume_mm3=30.0).as_dict()
    {'count': 2, 'voxels': 30, 'volume_mm3': 30.0}
    """

    count: int
    voxels: int
    volume_mm3: float

    @classmethod
    def of(cls, mask: Volume, count: int) -> LesionSummary:
        """The summary of a mask whose lesions number ``count``; the volume is rounded to 0.001 mm³."""
        voxels = int(np.count_nonzero(mask.data))
        return cls(count=int(count), voxels=voxels, volume_mm3=round(voxels * mask.voxel_volume, 3))

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "voxels": self.voxels, "volume_mm3": self.volume_mm3}


@dataclass(frozen=True)
class PredictionSummary:
    """The figures of one prediction, as ``summary.json`` records them.

    Attributes
    ----------
    new_lesions, lesions_baseline, lesions_followup : LesionSummary
        The lesions of each output mask (on the follow-up's, the baseline's and the follow-up's grid).
    threshold : float
        The probability threshold used.
    min_lesion_volume_mm3 : float
        Lesions of this volume or less were dropped (0: none).
    """

    new_lesions: LesionSummary
    lesions_baseline: LesionSummary
    lesions_followup: LesionSummary
    threshold: float
    min_lesion_volume_mm3: float

    def lesions(self, kind: str) -> LesionSummary:
        """The summary of the mask ``kind`` (one of :data:`MASK_KINDS`)."""
        if kind not in MASK_KINDS:
            raise KeyError(f"no mask {kind!r}: one of {', '.join(MASK_KINDS)}")
        summary: LesionSummary = getattr(self, kind)
        return summary


def _plain_options(options: Any) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(options).items()}


def _inputs_record(baseline: Volume, followup: Volume) -> dict[str, Any]:
    return {
        "baseline": str(baseline.path) if baseline.path else None,
        "followup": str(followup.path) if followup.path else None,
        "baseline_grid": {"shape": list(baseline.shape), "spacing_mm": list(baseline.spacing)},
        "followup_grid": {"shape": list(followup.shape), "spacing_mm": list(followup.spacing)},
    }


def _model_record(model: LoadedModel, provenance: ModelProvenance) -> dict[str, Any]:
    return {
        "name": provenance.name,
        "source": provenance.source,
        "repo_id": provenance.repo_id,
        "revision": provenance.revision,
        "weights_sha256": model.weights_sha256,
        "path": str(model.path),
        "description": model.config.description,
        "spacing_mm": list(model.config.spacing),
        "patch_size": list(model.config.patch_size),
    }


def _settings_record(
    options: Any,
    figures: PredictionSummary,
    window_options: SlidingWindowOptions,
    device: torch.device,
    autocast: torch.dtype | None,
    engine: str,
) -> dict[str, Any]:
    return {
        **_plain_options(options),
        "threshold_used": figures.threshold,
        "min_lesion_volume_used_mm3": figures.min_lesion_volume_mm3,
        "device_used": str(device),
        "autocast": str(autocast).replace("torch.", "") if autocast is not None else "fp32",
        "engine_used": engine,
        "sliding_window": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(window_options).items()
        },
    }


def summary_record(
    *,
    figures: PredictionSummary,
    baseline: Volume,
    followup: Volume,
    model: LoadedModel,
    provenance: ModelProvenance,
    options: Any,
    window_options: SlidingWindowOptions,
    device: torch.device,
    autocast: torch.dtype | None,
    engine: str,
    pair: PreprocessedPair,
    timings: Mapping[str, float],
    min_brightening: dict[str, Any] | None,
    warnings: list[str],
) -> dict[str, Any]:
    """The record ``summary.json`` holds (less ``outputs`` and the write time, which the writer adds).

    ``options`` is the prediction's :class:`~msnewlesion.predict.PredictOptions`, recorded field by field.
    """
    return {
        "msnewlesion_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": _inputs_record(baseline, followup),
        **{kind: figures.lesions(kind).as_dict() for kind in MASK_KINDS},
        "model": _model_record(model, provenance),
        "settings": _settings_record(options, figures, window_options, device, autocast, engine),
        "timings_s": {
            **{k: round(v, 3) for k, v in timings.items()},
            "preprocess_steps": {step["step"]: step["seconds"] for step in pair.record["steps"]},
        },
        "preprocessing": pair.record,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        "post_processing": {"min_brightening": min_brightening},
        "warnings": warnings,
    }
