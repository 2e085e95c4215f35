"""New lesions for one pair of FLAIR scans: preprocess, run the network, map back, describe.

:func:`predict_pair` does the work in memory and returns a :class:`Prediction`;
:func:`write_prediction` writes it (masks on each input's own grid, the lesion table, the
summary and the QC picture), each file atomically and ``summary.json`` last, so a folder with a
summary is a complete result.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from msnewlesion.device import resolve_device, resolve_precision
from msnewlesion.domain import (
    InputDomain,
    acquisition_warnings,
    lesion_load_warnings,
    pair_warnings,
    registration_warnings,
)
from msnewlesion.engines import resolve_engine
from msnewlesion.errors import InputError, OptionError, parameter
from msnewlesion.inference import HeadProbabilities, SlidingWindowOptions, sliding_window_predict
from msnewlesion.io import Volume, check_outputs_free, load_volume, save_volume, staged_outputs, write_json, write_text
from msnewlesion.lesions import (
    CHANGE_CODES,
    ChangeRule,
    Components,
    LesionChanges,
    classify_changes,
    components,
    fsleyes_lookup_table,
    itksnap_label_descriptions,
    lesion_table,
    min_lesion_voxels,
    remove_small_lesions,
)
from msnewlesion.model.checkpoint import LoadedModel
from msnewlesion.model.config import ModelConfig
from msnewlesion.prediction_summary import LesionSummary, ModelProvenance, PredictionSummary, summary_record
from msnewlesion.preprocess import PreprocessedPair, PreprocessOptions, preprocess_pair, to_native
from msnewlesion.preprocess.coverage import Coverage, coverage_warnings, pair_coverage
from msnewlesion.progress import ProgressCallback, report
from msnewlesion.report import save_qc_figure
from msnewlesion.settings import (
    CONNECTIVITIES,
    ENGINES,
    PRECISIONS,
    REGISTRATION_SPACES,
    SKULL_STRIP_METHODS,
    SKULL_STRIP_MODES,
    TRANSFORMS,
    choice_problem,
    device_problem,
)

__all__ = [
    "OUTPUT_NAMES",
    "PAPER_WINDOW_OPTIONS",
    "LesionSummary",
    "ModelProvenance",
    "PredictOptions",
    "Prediction",
    "PredictionSummary",
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
    "lesion_changes": "lesion_changes.nii.gz",
    "lesion_changes_table": "lesion_changes.tsv",
    "lesion_changes_itksnap": "lesion_changes_itksnap.txt",
    "lesion_changes_lut": "lesion_changes.lut",
}
#: Written only when one scan does not show all of the other's brain (see msnewlesion.preprocess.coverage).
NOT_ASSESSED_NAMES = {
    "not_assessed_baseline": "not_assessed_baseline.nii.gz",
    "not_assessed_followup": "not_assessed_followup.nii.gz",
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
    space : {"halfway", "baseline", "followup", "none"}
        The common space of the two time points (``none``: they already share one grid).
    transform : str, optional
        ``QuickRigid`` or ``Rigid``; the preprocessing default when None.
    bias_correction : bool
        N4 bias-field correction before registration.
    overlap, batch_size, tta, precision
        Sliding-window settings (see :class:`~msnewlesion.inference.SlidingWindowOptions`).
    engine : {"auto", "torch", "openvino"}
        What runs the networks' forward passes, the lesion network's and the skull stripping's
        (:mod:`msnewlesion.engines`): ``auto`` is the engine measured fastest (PyTorch).
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
    enlarging_relative, enlarging_min_mm3 : float
        A lesion present at both time points is enlarging when it grew by at least this fraction of its
        baseline volume and by at least this many mm³ (shrinking: the same rule backwards); see
        :mod:`msnewlesion.lesions.changes`.
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
    enlarging_relative: float = 0.5
    enlarging_min_mm3: float = 10.0

    def __post_init__(self) -> None:
        choices: dict[str, Sequence[object]] = {
            "skull_strip": SKULL_STRIP_METHODS,
            "skull_strip_mode": SKULL_STRIP_MODES,
            "space": REGISTRATION_SPACES,
            "transform": (None, *TRANSFORMS),
            "precision": PRECISIONS,
            "engine": ENGINES,
            "connectivity": CONNECTIVITIES,
        }
        found = [choice_problem(name, getattr(self, name), allowed) for name, allowed in choices.items()]
        problems = [problem for problem in [*found, device_problem(self.device)] if problem is not None]
        if not 0.0 <= self.overlap < 1.0:
            problems.append(f"overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be at least 1, got {self.batch_size}")
        if problems:
            raise OptionError("invalid prediction options: " + "; ".join(problems))
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise OptionError(f"{parameter('threshold')} must be between 0 and 1, got {self.threshold}")
        if self.min_lesion_volume < 0:
            raise OptionError(f"{parameter('min_lesion_volume')} must be ≥ 0 mm³, got {self.min_lesion_volume}")
        if self.min_brightening is not None and not np.isfinite(self.min_brightening):
            raise OptionError(f"{parameter('min_brightening')} must be a finite number, got {self.min_brightening}")
        try:
            self.change_rule()  # a bad enlarging rule is refused before any work
        except InputError as error:
            raise OptionError(str(error)) from None

    def change_rule(self) -> ChangeRule:
        """When a lesion is enlarging or shrinking (see :class:`~msnewlesion.lesions.ChangeRule`)."""
        return ChangeRule(relative=self.enlarging_relative, absolute_mm3=self.enlarging_min_mm3)

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


@dataclass
class Prediction:
    """Everything a prediction produced, in memory.

    ``figures`` holds what callers read (counts, volumes, the threshold); ``summary`` is the full
    record that ``summary.json`` holds.
    """

    new_lesions: Volume
    lesions_baseline: Volume
    lesions_followup: Volume
    probabilities: dict[str, Volume]
    table: pd.DataFrame
    summary: dict[str, Any]
    figures: PredictionSummary
    common: PreprocessedPair
    new_lesions_common: np.ndarray
    warnings: list[str] = field(default_factory=list)
    lesions_common: tuple[np.ndarray, np.ndarray] | None = None  # baseline's and follow-up's, for the QC picture
    coverage: Coverage | None = None
    lesion_changes: Volume | None = None  # class codes on the follow-up's grid
    changes_table: pd.DataFrame | None = None  # one row per lesion over time
    changes_common: np.ndarray | None = None  # class codes on the common grid, for the QC picture


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
) -> tuple[Volume, Components]:
    """The mask of ``probability > threshold`` without lesions of ``min_volume`` mm³ or less, and its lesions."""
    found = components(probability.data > threshold, connectivity)
    min_voxels = min_lesion_voxels(probability.voxel_volume, min_volume) if min_volume > 0 else 1
    if min_voxels > 1:
        found = found.without_small(min_voxels)
    return probability.with_data(found.mask.astype(np.uint8)), found


@dataclass
class _MappedBack:
    """The network's maps on each input's grid, thresholded, and the common-grid masks for the QC picture."""

    probabilities: dict[str, Volume]
    masks: dict[str, Volume]
    lesions: dict[str, Components]
    common: tuple[np.ndarray, np.ndarray, np.ndarray]  # new, baseline's and follow-up's lesions
    min_brightening: dict[str, Any] | None


def _map_back(
    maps: HeadProbabilities,
    pair: PreprocessedPair,
    options: PredictOptions,
    threshold: float,
    min_volume: float,
    progress: ProgressCallback | None,
) -> _MappedBack:
    report(progress, "map back to the input grids", 0, 3)
    rejected: dict[str, Any] | None = None
    if options.min_brightening is not None and not options.paper_mode:
        new_map, rejected = _require_brightening(maps.new, pair, threshold, options)
        maps = HeadProbabilities(maps.baseline, maps.followup, new_map)
    probabilities = {
        "new_lesions": to_native(maps.new, pair, "followup", kind="probability"),
        "lesions_baseline": to_native(maps.baseline, pair, "baseline", kind="probability"),
        "lesions_followup": to_native(maps.followup, pair, "followup", kind="probability"),
    }
    report(progress, "map back to the input grids", 2, 3)
    masks, lesions = {}, {}
    for key, volume in probabilities.items():
        masks[key], lesions[key] = _mask_from_probability(volume, threshold, min_volume, options.connectivity)
    common = [m > threshold for m in (maps.new, maps.baseline, maps.followup)]
    if min_volume > 0:
        common_min_voxels = min_lesion_voxels(pair.baseline.voxel_volume, min_volume)
        common = [remove_small_lesions(m, common_min_voxels, options.connectivity) for m in common]
    return _MappedBack(probabilities, masks, lesions, (common[0], common[1], common[2]), rejected)


def _load_pair(
    baseline: Volume | str | os.PathLike[str], followup: Volume | str | os.PathLike[str]
) -> tuple[Volume, Volume]:
    if not isinstance(baseline, Volume):
        baseline = load_volume(baseline, what="baseline FLAIR")
    if not isinstance(followup, Volume):
        followup = load_volume(followup, what="follow-up FLAIR")
    return baseline, followup


def _input_warnings(
    pair: PreprocessedPair, baseline: Volume, followup: Volume, config: ModelConfig, model_name: str
) -> list[str]:
    warnings = pair_warnings(pair.baseline.data, pair.followup.data, pair.brain_mask.data.astype(bool))
    warnings += acquisition_warnings(
        {"baseline FLAIR": baseline.spacing, "follow-up FLAIR": followup.spacing},
        InputDomain.of(config),
        model_name,
    )
    warnings += registration_warnings(pair.record.get("registration", {}))
    warnings += pair.record.get("warnings", [])
    return warnings


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
    >>> result.figures.new_lesions.count  # doctest: +SKIP
    3
    """
    options = options or PredictOptions()
    provenance = provenance or ModelProvenance(name=model.config.name)
    timings: dict[str, float] = {}
    started = clock = time.perf_counter()
    baseline, followup = _load_pair(baseline, followup)
    timings["load"] = time.perf_counter() - clock

    device = resolve_device(options.device)
    engine = resolve_engine(options.engine, device)  # before any work: an engine asked for must exist
    clock = time.perf_counter()
    pair = preprocess_pair(
        baseline, followup, options.preprocess_options(model.config), progress=progress, scratch_dir=scratch_dir
    )
    timings["preprocess"] = time.perf_counter() - clock
    warnings = _input_warnings(pair, baseline, followup, model.config, provenance.name)
    coverage = pair_coverage(baseline, followup, pair)
    warnings += coverage_warnings(coverage)

    clock = time.perf_counter()
    maps = _run_network(model, pair, options, device, progress)
    timings["network"] = time.perf_counter() - clock

    clock = time.perf_counter()
    threshold = 0.5 if options.paper_mode else (options.threshold or model.config.threshold)
    min_volume = 0.0 if options.paper_mode else options.min_lesion_volume
    mapped = _map_back(maps, pair, options, threshold, min_volume, progress)
    table = lesion_table(
        mapped.lesions["new_lesions"],
        mapped.masks["new_lesions"].affine,
        probability=mapped.probabilities["new_lesions"].data,
    )
    timings["map_back"] = time.perf_counter() - clock
    report(progress, "map back to the input grids", 3, 3)
    timings["total"] = time.perf_counter() - started

    figures = PredictionSummary(
        **{key: LesionSummary.of(mapped.masks[key], mapped.lesions[key].count) for key in mapped.masks},
        threshold=threshold,
        min_lesion_volume_mm3=min_volume,
    )
    warnings += lesion_load_warnings(
        float(np.count_nonzero(pair.brain_mask.data)) * pair.baseline.voxel_volume,
        figures.new_lesions.count,
        figures.new_lesions.volume_mm3,
        {"baseline": figures.lesions_baseline.volume_mm3, "follow-up": figures.lesions_followup.volume_mm3},
    )
    window_options = options.window_options(model.config)
    summary = summary_record(
        figures=figures,
        baseline=baseline,
        followup=followup,
        model=model,
        provenance=provenance,
        options=options,
        window_options=window_options,
        device=device,
        autocast=resolve_precision(window_options.precision, device),
        engine=engine,
        pair=pair,
        timings=timings,
        min_brightening=mapped.min_brightening,
        warnings=warnings,
    )
    summary["coverage"] = coverage.record()
    new_common, lesions_baseline_common, lesions_followup_common = mapped.common
    clock = time.perf_counter()
    changes = _classify_changes(model, pair, options, device, threshold, min_volume, new_common, progress)
    changes_native, changes_table = _changes_on_followup(changes, pair)
    summary["lesion_changes"] = _changes_record(changes)
    summary["timings_s"]["lesion_changes"] = round(time.perf_counter() - clock, 3)
    return Prediction(
        new_lesions=mapped.masks["new_lesions"],
        lesions_baseline=mapped.masks["lesions_baseline"],
        lesions_followup=mapped.masks["lesions_followup"],
        probabilities=mapped.probabilities,
        table=table,
        summary=summary,
        figures=figures,
        common=pair,
        new_lesions_common=new_common,
        warnings=warnings,
        lesions_common=(lesions_baseline_common, lesions_followup_common),
        coverage=coverage,
        lesion_changes=changes_native,
        changes_table=changes_table,
        changes_common=changes.codes,
    )


def _classify_changes(
    model: LoadedModel,
    pair: PreprocessedPair,
    options: PredictOptions,
    device: torch.device,
    threshold: float,
    min_volume: float,
    new_common: np.ndarray,
    progress: ProgressCallback | None,
) -> LesionChanges:
    """Every lesion's change class, from three more passes of the network on the common grid.

    What went is the new-lesion head on the pair played backwards (follow-up first): a lesion that
    resolved, or the rim a shrinking lesion lost, appears there as a new lesion does forwards. Where the
    lesions are at each time point comes from a pass on that time point alone, fed as a single scan is in
    training: measured on synthetic pairs, the all-lesion heads of the ``demo`` model mark 46 % of the brain
    on a pair (its follow-up head never learnt pairs) and only clean lesions on a single scan
    (docs/predict.md, "Lesion changes").
    """
    config = model.config
    brain = _array_to_layout(pair.brain_mask.data.astype(bool), config)
    window_options = options.window_options(config)
    baseline = _array_to_layout(pair.baseline.data, config)
    followup = _array_to_layout(pair.followup.data, config)

    def run(first: np.ndarray, second: np.ndarray | None, stage: str) -> HeadProbabilities:
        maps = sliding_window_predict(
            model.network,
            first,
            second,
            options=window_options,
            brain_mask=brain,
            device=device,
            progress=progress,
            stage=stage,
        )
        return HeadProbabilities(
            *(_array_from_layout(np.where(brain, m, 0.0).astype(np.float32), config) for m in maps)
        )

    backwards = run(followup, baseline, "lesion changes (the pair backwards)")
    alone = [
        run(image, None, f"lesion changes ({name} alone)")
        for image, name in ((baseline, "baseline"), (followup, "follow-up"))
    ]
    min_voxels = min_lesion_voxels(pair.baseline.voxel_volume, min_volume) if min_volume > 0 else 1

    def mask(probability: np.ndarray) -> np.ndarray:
        return remove_small_lesions(probability > threshold, min_voxels, options.connectivity)

    return classify_changes(
        mask(alone[0].baseline),
        mask(alone[1].baseline),
        new_common,
        faded=mask(backwards.new),
        voxel_volume_mm3=pair.baseline.voxel_volume,
        rule=options.change_rule(),
        connectivity=options.connectivity,
    )


def _changes_on_followup(changes: LesionChanges, pair: PreprocessedPair) -> tuple[Volume, pd.DataFrame]:
    """The change classes on the follow-up's grid, and the lesion table with centroids in its scanner mm."""
    ids = to_native(changes.labels, pair, "followup", kind="mask")
    codes = ids.with_data(changes.code_of_id[ids.data])
    header = codes.header.copy() if codes.header is not None else None
    if header is not None:
        header.set_intent("label")
        codes = Volume(codes.data, codes.affine, header)
    table = changes.table()
    count = len(changes.lesions)
    # Centroids where the lesion lies on the follow-up's grid (NaN for a lesion too small to keep a voxel there).
    flat = ids.data.ravel()
    foreground = np.flatnonzero(flat)
    labels = flat[foreground]
    voxels = np.bincount(labels, minlength=count + 1)[1:].astype(np.float64)
    index = np.unravel_index(foreground, ids.data.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        centroid_index = (
            np.stack([np.bincount(labels, weights=axis, minlength=count + 1)[1:] / voxels for axis in index], axis=1)
            if count
            else np.zeros((0, 3))
        )
    centroid_mm = centroid_index @ ids.affine[:3, :3].T + ids.affine[:3, 3]
    for axis, name in enumerate(("x", "y", "z")):
        table.insert(table.columns.get_loc("baseline_lesions"), f"centroid_{name}_mm", centroid_mm[:, axis])
    return codes, table


def _changes_record(changes: LesionChanges) -> dict[str, Any]:
    return {
        "counts": changes.counts(),
        "volumes_mm3": changes.volumes_mm3(),
        "rule": changes.rule.as_dict(),
        "codes": {lesion_class: code for lesion_class, code in CHANGE_CODES.items()},
        "grid": "classified on the common grid (volumes there); lesion_changes.nii.gz is on the follow-up's grid",
        "masks": "new: the new-lesion mask; faded: the new-lesion head on the pair backwards; all lesions at each "
        "time point: the baseline head on that time point alone",
    }


def _require_brightening(
    new: np.ndarray, pair: PreprocessedPair, threshold: float, options: PredictOptions
) -> tuple[np.ndarray, dict[str, Any]]:
    """Set to 0 the probabilities of candidate new lesions that are not brighter at the follow-up.

    A candidate is a connected component of ``new > threshold`` on the common grid; it stays when its
    mean follow-up − baseline difference (normalised units) is at least ``options.min_brightening``.
    """
    assert options.min_brightening is not None
    candidates = components(new > threshold, options.connectivity)
    labels, count = candidates.labels, candidates.count
    if count == 0:
        return new, {"threshold": options.min_brightening, "candidates": 0, "rejected": 0}
    difference = pair.followup.data.astype(np.float64) - pair.baseline.data.astype(np.float64)
    means = np.asarray(ndimage.mean(difference, labels, index=np.arange(1, count + 1)))
    rejected = np.flatnonzero(means < options.min_brightening) + 1
    kept = np.where(np.isin(labels, rejected), np.float32(0), new).astype(np.float32)
    record = {"threshold": options.min_brightening, "candidates": int(count), "rejected": int(rejected.size)}
    return kept, record


def prediction_outputs(directory: str | os.PathLike[str], *, save_probabilities: bool = False) -> dict[str, Path]:
    """The files :func:`write_prediction` writes into ``directory`` by default (its output layout)."""
    directory = Path(directory)
    names = dict(OUTPUT_NAMES) | NOT_ASSESSED_NAMES
    if save_probabilities:
        names |= {f"{key}_probability": name for key, name in PROBABILITY_NAMES.items()}
    return {key: directory / name for key, name in names.items()}


_DESCRIPTIONS = {
    "new_lesions": "msnewlesion new lesions",
    "lesions_baseline": "msnewlesion all lesions (baseline)",
    "lesions_followup": "msnewlesion all lesions (follow-up)",
}


def write_prediction(
    prediction: Prediction,
    directory: str | os.PathLike[str],
    *,
    layout: Mapping[str, Path] | None = None,
    inputs: Sequence[str | os.PathLike[str]] = (),
    overwrite: bool = False,
    save_probabilities: bool = False,
    extra_json: Mapping[str, dict[str, Any]] | None = None,
    extra_summary: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the masks, table, QC picture and summary (last) of a prediction.

    Everything is staged and moved into place with ``summary.json`` last
    (:func:`msnewlesion.io.staged_outputs`): a result with a summary is complete.

    Parameters
    ----------
    prediction : Prediction
        From :func:`predict_pair`.
    directory : path-like
        The result's folder; the summary lists every output relative to it.
    layout : mapping of str to Path, optional
        Where each output goes, by kind (the keys of :func:`prediction_outputs`, which gives the
        default: today's names in ``directory``). Keys beyond those name ``extra_json`` files.
    inputs : sequence of path-like
        The prediction's inputs, which no output may replace.
    overwrite : bool
        Replace the outputs of a complete result (those of an unfinished one are always replaced).
    save_probabilities : bool
        Also write the three probability maps (``<kind>_probability`` in ``layout``).
    extra_json : mapping of str to dict, optional
        More JSON files written with the result (before the summary), by their key in ``layout``.
    extra_summary : mapping, optional
        Entries added to the summary after ``outputs``.

    Returns
    -------
    dict of str to Path
        ``layout``: every file written.

    Raises
    ------
    OutputExistsError
        The folder already holds results and ``overwrite`` is false.
    InputError
        An output would overwrite one of ``inputs``.
    """
    directory = Path(directory)
    if layout is None:
        layout = prediction_outputs(directory, save_probabilities=save_probabilities)
    outputs = dict(layout)
    # Files beside a missing summary.json are leftovers of an interrupted run, never a result.
    complete = outputs["summary"].exists()
    check_outputs_free(outputs.values(), inputs=inputs, overwrite=overwrite or not complete)
    # Remove a previous summary first: until the new one is written, the result is not "complete".
    outputs["summary"].unlink(missing_ok=True)
    clock = time.perf_counter()
    with staged_outputs(outputs, manifest="summary") as staged:
        for key, description in _DESCRIPTIONS.items():
            save_volume(getattr(prediction, key), staged[key], dtype=np.uint8, description=description)
        if save_probabilities:
            for key, volume in prediction.probabilities.items():
                save_volume(volume, staged[f"{key}_probability"], dtype=np.float32, description=f"{key} probability")
        write_text(staged["table"], prediction.table.to_csv(sep="\t", index=False, float_format="%.4f"))
        if prediction.lesion_changes is not None and "lesion_changes" in staged:
            _write_changes(prediction, staged)
        common = prediction.common
        save_qc_figure(
            common.baseline.data,
            common.followup.data,
            prediction.new_lesions_common,
            staged["qc"],
            brain_mask=common.brain_mask.data.astype(bool),
            spacing=common.baseline.spacing,
            title="msnewlesion",
            lesion_count=prediction.figures.new_lesions.count,
            lesions=prediction.lesions_common,
            changes=prediction.changes_common,
            change_counts=prediction.summary.get("lesion_changes", {}).get("counts"),
        )
        for key, payload in (extra_json or {}).items():
            write_json(staged[key], payload)
        # Only a pair whose scans do not show each other's whole brain has voxels that were not assessed.
        partial = prediction.coverage is not None and prediction.coverage.partial
        for key in NOT_ASSESSED_NAMES:
            if key not in outputs:
                continue
            if partial:
                save_volume(getattr(prediction.coverage, key), staged[key], dtype=np.uint8, description="not assessed")
            else:
                outputs[key].unlink(missing_ok=True)  # a previous result's, now replaced
                del outputs[key]
        summary = dict(prediction.summary)
        summary["timings_s"] = dict(summary["timings_s"], write=round(time.perf_counter() - clock, 3))
        summary["outputs"] = {key: path.relative_to(directory).as_posix() for key, path in outputs.items()}
        summary |= extra_summary or {}
        write_json(staged["summary"], summary)
    return outputs


def _write_changes(prediction: Prediction, staged: Mapping[str, Path]) -> None:
    """The change-class map with its colour tables beside it, and the table of every lesion over time."""
    assert prediction.lesion_changes is not None and prediction.changes_table is not None
    save_volume(
        prediction.lesion_changes,
        staged["lesion_changes"],
        dtype=np.uint8,
        description="msnewlesion lesion changes: 1 new 2 enlarging 3 stable 4 shrinking 5 resolved",
    )
    if "lesion_changes_table" in staged:
        write_text(
            staged["lesion_changes_table"],
            prediction.changes_table.to_csv(sep="\t", index=False, float_format="%.4f", na_rep="n/a"),
        )
    if "lesion_changes_itksnap" in staged:
        write_text(staged["lesion_changes_itksnap"], itksnap_label_descriptions())
    if "lesion_changes_lut" in staged:
        write_text(staged["lesion_changes_lut"], fsleyes_lookup_table())


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
