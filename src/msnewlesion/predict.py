"""New lesions for one pair of FLAIR scans: preprocess, run the network, map back, describe.

:func:`predict_pair` does the work in memory and returns a :class:`Prediction`;
:func:`write_prediction` writes it (masks on each input's own grid, the lesion table, the
summary and the QC picture), each file atomically and ``summary.json`` last, so a folder with a
summary is a complete result.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from msnewlesion import __version__
from msnewlesion.device import resolve_device
from msnewlesion.domain import InputDomain, acquisition_warnings, lesion_load_warnings, registration_warnings
from msnewlesion.engines import resolve_engine
from msnewlesion.errors import InputError
from msnewlesion.inference import HeadProbabilities, SlidingWindowOptions, resolve_precision, sliding_window_predict
from msnewlesion.io import Volume, check_outputs_free, load_volume, save_volume, write_json, write_text
from msnewlesion.lesions import label_lesions, lesion_table, min_lesion_voxels, remove_small_lesions
from msnewlesion.model.checkpoint import LoadedModel
from msnewlesion.model.config import ModelConfig
from msnewlesion.preprocess import PreprocessedPair, PreprocessOptions, preprocess_pair, to_native
from msnewlesion.progress import ProgressCallback, report
from msnewlesion.report import save_qc_figure

__all__ = [
    "OUTPUT_NAMES",
    "PAPER_WINDOW_OPTIONS",
    "ModelProvenance",
    "PredictOptions",
    "Prediction",
    "open_model",
    "predict_pair",
    "prediction_outputs",
    "write_prediction",
]

#: The published inference: 80³ windows at stride 20 placed as the reference code does, plain mean.
PAPER_WINDOW_OPTIONS = SlidingWindowOptions(
    patch_size=(80, 80, 80),
    step=20,
    blending="constant",
    placement="reference",
    batch_size=1,
    mirror=False,
    skip_empty=False,
    precision="fp32",
)

OUTPUT_NAMES = {
    "new_lesions": "new_lesions.nii.gz",
    "lesions_baseline": "lesions_baseline.nii.gz",
    "lesions_followup": "lesions_followup.nii.gz",
    "table": "new_lesions.tsv",
    "qc": "qc.png",
    "summary": "summary.json",
}
PROBABILITY_NAMES = {
    "new_lesions": "new_lesions_probability.nii.gz",
    "lesions_baseline": "lesions_baseline_probability.nii.gz",
    "lesions_followup": "lesions_followup_probability.nii.gz",
}


@dataclass(frozen=True)
class PredictOptions:
    """Settings of one prediction (everything is recorded in ``summary.json``).

    Parameters
    ----------
    preprocess : bool
        False for pairs already co-registered on one grid and skull-stripped: registration,
        skull stripping and bias correction are skipped; resampling to the model's spacing, the
        model's intensity normalisation and the mapping back to the input grid still happen.
    skull_strip : {"auto", "hd-bet", "hd-bet-v1", "none"}
        How the brain mask is made when ``preprocess`` (``none``: the inputs are already stripped); see
        :class:`~msnewlesion.preprocess.PreprocessOptions`.
    skull_strip_mode : {"auto", "fast", "accurate"}
        How much of HD-BET v1 runs (folds and mirroring).
    brain_mask : Path, optional
        A brain mask on the baseline's grid, used instead of skull stripping.
    space : {"halfway", "baseline", "followup"}
        The common space of the two time points.
    transform : str, optional
        ``QuickRigid`` or ``Rigid``; the preprocessing default when None.
    bias_correction : bool
        N4 bias-field correction before registration.
    overlap, batch_size, tta, precision
        Sliding-window settings (see :class:`~msnewlesion.inference.SlidingWindowOptions`).
    engine : {"auto", "torch", "openvino"}
        What runs the networks' forward passes, the lesion network's and the skull stripping's
        (:mod:`msnewlesion.engines`): ``auto`` is OpenVINO on the CPU when installed, PyTorch elsewhere.
    paper_mode : bool
        The published inference: 80³ windows, stride 20, plain mean, fp32, threshold 0.5, no lesion
        size filter, and the follow-up all-lesion map from a second pass on (follow-up, follow-up, 0).
    threshold : float, optional
        Lesion probability threshold; the model's when None.
    min_lesion_volume : float
        Lesions smaller than this (mm³, on each output grid) are dropped from the masks and tables,
        following the MSSEG rule (floor(v / voxel volume) + 1 voxels); 0 keeps everything.
    connectivity : {26, 6}
        Voxel connectivity that defines one lesion.
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    save_probabilities : bool
        Also write the three probability maps.
    min_brightening : float, optional
        Keep only new lesions whose mean follow-up intensity exceeds the mean baseline intensity at the same
        voxels by at least this much (in the normalised images' units: brain standard deviations); the
        probabilities of the others are set to 0. None: no such rule (the default; see docs/predict.md for
        what it was measured to do).
    """

    preprocess: bool = True
    skull_strip: str = "auto"
    skull_strip_mode: str = "auto"
    brain_mask: Path | None = None
    space: str = "halfway"
    transform: str | None = None
    bias_correction: bool = True
    overlap: float = 0.5
    batch_size: int = 2
    tta: bool = False
    precision: str = "auto"
    engine: str = "auto"
    paper_mode: bool = False
    threshold: float | None = None
    min_lesion_volume: float = 3.0
    connectivity: int = 26
    device: str = "auto"
    save_probabilities: bool = False
    min_brightening: float | None = None

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise InputError(f"`threshold` must be between 0 and 1, got {self.threshold}")
        if self.min_lesion_volume < 0:
            raise InputError(f"`min_lesion_volume` must be ≥ 0 mm³, got {self.min_lesion_volume}")
        if self.connectivity not in (6, 26):
            raise InputError(f"`connectivity` must be 6 or 26, got {self.connectivity}")
        if self.min_brightening is not None and not np.isfinite(self.min_brightening):
            raise InputError(f"`min_brightening` must be a finite number, got {self.min_brightening}")

    def preprocess_options(self, config: ModelConfig) -> PreprocessOptions:
        overrides: dict[str, Any] = {"device": self.device, "engine": self.engine}
        if self.preprocess:
            overrides |= {
                "skull_strip": self.skull_strip,
                "skull_strip_mode": self.skull_strip_mode,
                "brain_mask": self.brain_mask,
                "registration": self.space,
                "bias_correction": self.bias_correction,
            }
            if self.transform is not None:
                overrides["transform"] = self.transform
        else:
            overrides |= {
                "skull_strip": "none",
                "brain_mask": self.brain_mask,
                "registration": "none",
                "bias_correction": False,
            }
        return PreprocessOptions.for_model(config, **overrides)

    def window_options(self, config: ModelConfig) -> SlidingWindowOptions:
        if self.paper_mode:
            return dataclasses.replace(PAPER_WINDOW_OPTIONS, engine=self.engine)
        return SlidingWindowOptions(
            patch_size=_to_layout(config.patch_size, config),
            overlap=self.overlap,
            blending="gaussian",
            batch_size=self.batch_size,
            mirror=self.tta,
            skip_empty=True,
            precision=self.precision,
            engine=self.engine,
        )


@dataclass(frozen=True)
class ModelProvenance:
    """Where the model came from, for the summary."""

    name: str
    source: str = "local"
    repo_id: str | None = None
    revision: str | None = None


@dataclass
class Prediction:
    """Everything a prediction produced, in memory."""

    new_lesions: Volume
    lesions_baseline: Volume
    lesions_followup: Volume
    probabilities: dict[str, Volume]
    table: pd.DataFrame
    summary: dict[str, Any]
    common: PreprocessedPair
    new_lesions_common: np.ndarray
    warnings: list[str] = field(default_factory=list)
    lesions_common: tuple[np.ndarray, np.ndarray] | None = None  # baseline's and follow-up's, for the QC picture


def _to_layout(values: Sequence[Any], config: ModelConfig) -> tuple:
    return tuple(values[::-1]) if config.axis_order == "zyx" else tuple(values)


def _array_to_layout(array: np.ndarray, config: ModelConfig) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(2, 1, 0)) if config.axis_order == "zyx" else array


def _array_from_layout(array: np.ndarray, config: ModelConfig) -> np.ndarray:
    return _array_to_layout(array, config)  # reversing the axes is its own inverse


def _run_network(
    model: LoadedModel,
    pair: PreprocessedPair,
    options: PredictOptions,
    device: torch.device,
    progress: ProgressCallback | None,
) -> HeadProbabilities:
    config = model.config
    baseline = _array_to_layout(pair.baseline.data, config)
    followup = _array_to_layout(pair.followup.data, config)
    brain = _array_to_layout(pair.brain_mask.data.astype(bool), config)
    window_options = options.window_options(config)
    maps = sliding_window_predict(
        model.network,
        baseline,
        followup,
        options=window_options,
        brain_mask=brain,
        device=device,
        progress=progress,
    )
    if options.paper_mode:
        # The reference code takes the follow-up's all-lesion map from a second pass on (fu, fu, 0).
        second = sliding_window_predict(
            model.network,
            followup,
            None,
            options=window_options,
            brain_mask=brain,
            device=device,
            progress=progress,
            stage="network (follow-up pass)",
        )
        maps = HeadProbabilities(baseline=maps.baseline, followup=second.followup, new=maps.new)
    else:
        # Lesions cannot lie outside the brain: windows there were skipped or see only background.
        maps = HeadProbabilities(*(np.where(brain, m, 0.0).astype(np.float32) for m in maps))
    return HeadProbabilities(*(_array_from_layout(m, config) for m in maps))


def _mask_from_probability(
    probability: Volume, threshold: float, min_volume: float, connectivity: int
) -> tuple[Volume, int]:
    mask = probability.data > threshold
    min_voxels = min_lesion_voxels(probability.voxel_volume, min_volume) if min_volume > 0 else 1
    if min_voxels > 1:
        mask = remove_small_lesions(mask, min_voxels, connectivity)
    count = label_lesions(mask, connectivity)[1]
    return probability.with_data(mask.astype(np.uint8)), count


def predict_pair(
    baseline: Volume | str | os.PathLike[str],
    followup: Volume | str | os.PathLike[str],
    model: LoadedModel,
    options: PredictOptions | None = None,
    *,
    provenance: ModelProvenance | None = None,
    progress: ProgressCallback | None = None,
    scratch_dir: str | os.PathLike[str] | None = None,
) -> Prediction:
    """Predict new lesions (and all lesions at each time point) for one pair of FLAIR scans.

    Parameters
    ----------
    baseline, followup : Volume or path
        The two FLAIRs, each on its own native grid (or on one grid with ``preprocess=False``).
    model : LoadedModel
        From :func:`msnewlesion.model.checkpoint.load_model`.
    options : PredictOptions, optional
        Preprocessing, inference and output settings.
    provenance : ModelProvenance, optional
        Name, source and revision of the model, for the summary.
    progress : ProgressCallback, optional
        Reports each stage.
    scratch_dir : path-like, optional
        Where the registration keeps its files while it runs (the system's temporary folder when None).

    Returns
    -------
    Prediction
        Masks on each input's native grid (new lesions on the follow-up's), probability maps, the
        new-lesion table and the summary.

    Examples
    --------
    >>> from msnewlesion.model.checkpoint import load_model
    >>> model = load_model("models/demo")  # doctest: +SKIP
    >>> result = predict_pair("ses-01_FLAIR.nii.gz", "ses-02_FLAIR.nii.gz", model)  # doctest: +SKIP
    >>> result.summary["new_lesions"]["count"]  # doctest: +SKIP
    3
    """
    options = options or PredictOptions()
    provenance = provenance or ModelProvenance(name=model.config.name)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    clock = time.perf_counter()
    if not isinstance(baseline, Volume):
        baseline = load_volume(baseline, what="baseline FLAIR")
    if not isinstance(followup, Volume):
        followup = load_volume(followup, what="follow-up FLAIR")
    timings["load"] = time.perf_counter() - clock

    device = resolve_device(options.device)
    engine = resolve_engine(options.engine, device)  # before any work: an engine asked for must exist
    clock = time.perf_counter()
    pair = preprocess_pair(
        baseline, followup, options.preprocess_options(model.config), progress=progress, scratch_dir=scratch_dir
    )
    timings["preprocess"] = time.perf_counter() - clock
    warnings = _pair_warnings(pair)
    warnings += acquisition_warnings(
        {"baseline FLAIR": baseline.spacing, "follow-up FLAIR": followup.spacing},
        InputDomain.of(model.config),
        provenance.name,
    )
    warnings += registration_warnings(pair.record.get("registration", {}))

    clock = time.perf_counter()
    maps = _run_network(model, pair, options, device, progress)
    timings["network"] = time.perf_counter() - clock

    clock = time.perf_counter()
    report(progress, "map back to the input grids", 0, 3)
    threshold = 0.5 if options.paper_mode else (options.threshold or model.config.threshold)
    min_volume = 0.0 if options.paper_mode else options.min_lesion_volume
    rejected: dict[str, Any] | None = None
    if options.min_brightening is not None and not options.paper_mode:
        new_map, rejected = _require_brightening(maps.new, pair, threshold, options)
        maps = HeadProbabilities(maps.baseline, maps.followup, new_map)
    probability = {
        "new_lesions": to_native(maps.new, pair, "followup", kind="probability"),
        "lesions_baseline": to_native(maps.baseline, pair, "baseline", kind="probability"),
        "lesions_followup": to_native(maps.followup, pair, "followup", kind="probability"),
    }
    report(progress, "map back to the input grids", 2, 3)
    masks = {}
    counts = {}
    for key, volume in probability.items():
        masks[key], counts[key] = _mask_from_probability(volume, threshold, min_volume, options.connectivity)
    table = lesion_table(
        masks["new_lesions"].data.astype(bool),
        masks["new_lesions"].affine,
        probability=probability["new_lesions"].data,
        connectivity=options.connectivity,
    )
    common_masks = [m > threshold for m in (maps.new, maps.baseline, maps.followup)]
    if min_volume > 0:
        common_min_voxels = min_lesion_voxels(pair.baseline.voxel_volume, min_volume)
        common_masks = [remove_small_lesions(m, common_min_voxels, options.connectivity) for m in common_masks]
    new_common, lesions_baseline_common, lesions_followup_common = common_masks
    timings["map_back"] = time.perf_counter() - clock
    report(progress, "map back to the input grids", 3, 3)
    timings["total"] = time.perf_counter() - started

    window_options = options.window_options(model.config)
    autocast = resolve_precision(window_options.precision, device)
    volumes = {key: _volume_summary(masks[key], counts[key]) for key in masks}
    warnings += lesion_load_warnings(
        float(np.count_nonzero(pair.brain_mask.data)) * pair.baseline.voxel_volume,
        volumes["new_lesions"]["count"],
        volumes["new_lesions"]["volume_mm3"],
        {"baseline": volumes["lesions_baseline"]["volume_mm3"], "follow-up": volumes["lesions_followup"]["volume_mm3"]},
    )
    summary = {
        "msnewlesion_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": {
            "baseline": str(baseline.path) if baseline.path else None,
            "followup": str(followup.path) if followup.path else None,
            "baseline_grid": {"shape": list(baseline.shape), "spacing_mm": list(baseline.spacing)},
            "followup_grid": {"shape": list(followup.shape), "spacing_mm": list(followup.spacing)},
        },
        "new_lesions": volumes["new_lesions"],
        "lesions_baseline": volumes["lesions_baseline"],
        "lesions_followup": volumes["lesions_followup"],
        "model": {
            "name": provenance.name,
            "source": provenance.source,
            "repo_id": provenance.repo_id,
            "revision": provenance.revision,
            "weights_sha256": model.weights_sha256,
            "path": str(model.path),
            "description": model.config.description,
            "spacing_mm": list(model.config.spacing),
            "patch_size": list(model.config.patch_size),
        },
        "settings": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(options).items()},
            "threshold_used": threshold,
            "min_lesion_volume_used_mm3": min_volume,
            "device_used": str(device),
            "autocast": str(autocast).replace("torch.", "") if autocast is not None else "fp32",
            "engine_used": engine,
            "sliding_window": {
                k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(window_options).items()
            },
        },
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
        "post_processing": {"min_brightening": rejected},
        "warnings": warnings,
    }
    return Prediction(
        new_lesions=masks["new_lesions"],
        lesions_baseline=masks["lesions_baseline"],
        lesions_followup=masks["lesions_followup"],
        probabilities=probability,
        table=table,
        summary=summary,
        common=pair,
        new_lesions_common=new_common,
        warnings=warnings,
        lesions_common=(lesions_baseline_common, lesions_followup_common),
    )


def _require_brightening(
    new: np.ndarray, pair: PreprocessedPair, threshold: float, options: PredictOptions
) -> tuple[np.ndarray, dict[str, Any]]:
    """Set to 0 the probabilities of candidate new lesions that are not brighter at the follow-up.

    A candidate is a connected component of ``new > threshold`` on the common grid; it stays when its
    mean follow-up − baseline difference (normalised units) is at least ``options.min_brightening``.
    """
    assert options.min_brightening is not None
    labels, count = label_lesions(new > threshold, options.connectivity)
    if count == 0:
        return new, {"threshold": options.min_brightening, "candidates": 0, "rejected": 0}
    difference = pair.followup.data.astype(np.float64) - pair.baseline.data.astype(np.float64)
    means = np.asarray(ndimage.mean(difference, labels, index=np.arange(1, count + 1)))
    rejected = np.flatnonzero(means < options.min_brightening) + 1
    kept = np.where(np.isin(labels, rejected), np.float32(0), new).astype(np.float32)
    record = {"threshold": options.min_brightening, "candidates": int(count), "rejected": int(rejected.size)}
    return kept, record


def _volume_summary(mask: Volume, count: int) -> dict[str, Any]:
    voxels = int(np.count_nonzero(mask.data))
    return {"count": int(count), "voxels": voxels, "volume_mm3": round(voxels * mask.voxel_volume, 3)}


def _pair_warnings(pair: PreprocessedPair) -> list[str]:
    brain = pair.brain_mask.data.astype(bool)
    if brain.sum() < 100:
        return ["the brain mask holds almost nothing: check the inputs and the skull stripping"]
    a = pair.baseline.data[brain].astype(np.float64)
    b = pair.followup.data[brain].astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return ["one of the scans is constant inside the brain"]
    correlation = float(np.corrcoef(a, b)[0, 1])
    if correlation < 0.5:
        return [
            f"the two scans agree poorly inside the brain after registration (correlation {correlation:.2f}): "
            "check that they are the same subject and both FLAIR"
        ]
    return []


def prediction_outputs(directory: str | os.PathLike[str], *, save_probabilities: bool = False) -> dict[str, Path]:
    """The files :func:`write_prediction` writes into ``directory``."""
    directory = Path(directory)
    names = dict(OUTPUT_NAMES)
    if save_probabilities:
        names |= {f"{key}_probability": name for key, name in PROBABILITY_NAMES.items()}
    return {key: directory / name for key, name in names.items()}


def write_prediction(
    prediction: Prediction,
    directory: str | os.PathLike[str],
    *,
    inputs: Sequence[str | os.PathLike[str]] = (),
    overwrite: bool = False,
    save_probabilities: bool = False,
) -> dict[str, Path]:
    """Write the masks, table, QC picture and summary (last) into ``directory``.

    Raises
    ------
    OutputExistsError
        The folder already holds results and ``overwrite`` is false.
    InputError
        An output would overwrite one of ``inputs``.
    """
    outputs = prediction_outputs(directory, save_probabilities=save_probabilities)
    # Files beside a missing summary.json are leftovers of an interrupted run, never a result.
    complete = outputs["summary"].exists()
    check_outputs_free(outputs.values(), inputs=inputs, overwrite=overwrite or not complete)
    # Remove a previous summary first: until the new one is written, the folder is not "complete".
    if outputs["summary"].exists():
        outputs["summary"].unlink()
    clock = time.perf_counter()
    descriptions = {
        "new_lesions": "msnewlesion new lesions",
        "lesions_baseline": "msnewlesion all lesions (baseline)",
        "lesions_followup": "msnewlesion all lesions (follow-up)",
    }
    for key, description in descriptions.items():
        save_volume(getattr(prediction, key), outputs[key], dtype=np.uint8, description=description)
    if save_probabilities:
        for key, volume in prediction.probabilities.items():
            save_volume(volume, outputs[f"{key}_probability"], dtype=np.float32, description=f"{key} probability")
    write_text(outputs["table"], prediction.table.to_csv(sep="\t", index=False, float_format="%.4f"))
    common = prediction.common
    save_qc_figure(
        common.baseline.data,
        common.followup.data,
        prediction.new_lesions_common,
        outputs["qc"],
        brain_mask=common.brain_mask.data.astype(bool),
        spacing=common.baseline.spacing,
        title="msnewlesion",
        lesion_count=int(prediction.summary["new_lesions"]["count"]),
        lesions=prediction.lesions_common,
    )
    summary = dict(prediction.summary)
    summary["timings_s"] = dict(summary["timings_s"], write=round(time.perf_counter() - clock, 3))
    summary["outputs"] = {key: path.name for key, path in outputs.items()}
    write_json(outputs["summary"], summary)
    return outputs


def open_model(
    spec: str, *, device: str | torch.device = "cpu", progress: ProgressCallback | None = None
) -> tuple[LoadedModel, ModelProvenance]:
    """Resolve a model name, Hub repo or folder (see :func:`msnewlesion.hub.resolve_model`) and load it.

    Raises
    ------
    ModelError
        The model cannot be found, downloaded or loaded, or its weights do not match the registry's sha256.
    """
    from msnewlesion.hub import resolve_model
    from msnewlesion.model.checkpoint import load_model

    resolved = resolve_model(spec, progress=progress)
    if isinstance(device, str):
        device = resolve_device(device)
    model = load_model(resolved.path, device=device)
    provenance = ModelProvenance(
        name=resolved.name, source=resolved.source, repo_id=resolved.repo_id, revision=resolved.revision
    )
    return model, provenance
