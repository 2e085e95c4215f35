"""The participant level: predict every pair of the selected participants that is not complete yet.

The participant level is the unit of parallelism: jobs for different participants may write into
one output folder at the same time. Each job writes only its participant's files and logs
(``logs/sub-<p>.log``, ``logs/sub-<p>_status.json``); the one shared file,
``dataset_description.json``, is created atomically and updated under a lock
(:mod:`msnewlesion.bids.description`). A pair that fails is logged with its reason and the run goes on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msnewlesion import __version__
from msnewlesion.bids.description import write_dataset_description
from msnewlesion.bids.discovery import (
    BidsSelection,
    ParticipantPlan,
    SessionPair,
    SessionScan,
    check_dataset,
    plan_dataset,
)
from msnewlesion.bids.naming import pair_outputs, pair_state, read_json, relative_path
from msnewlesion.errors import InputError, MsNewLesionError, OutputInUseError, parameter
from msnewlesion.io import check_outputs_free, claim_output_folder, write_json
from msnewlesion.model.checkpoint import LoadedModel
from msnewlesion.predict import (
    ModelProvenance,
    Prediction,
    PredictionSummary,
    PredictOptions,
    predict_pair,
    write_prediction,
)
from msnewlesion.progress import ProgressCallback, report

__all__ = [
    "MessageCallback",
    "PairResult",
    "ParticipantLevelResult",
    "ParticipantResult",
    "run_participant_level",
]

LOG_FOLDER = "logs"

#: Receives (level, message) for every line written to a participant's log: level is
#: ``"info"``, ``"warning"`` or ``"error"``.
MessageCallback = Callable[[str, str], None]


@dataclass
class PairResult:
    """What happened to one pair: ``done``, ``skipped`` (complete already) or ``failed`` (``reason``)."""

    participant: str
    baseline_session: str
    followup_session: str
    status: str
    reason: str | None = None
    outputs: dict[str, Path] = field(default_factory=dict)
    new_lesion_count: int | None = None
    new_lesion_volume_mm3: float | None = None
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return f"sub-{self.participant} ses-{self.baseline_session} -> ses-{self.followup_session}"

    def as_dict(self, root: Path | None = None) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["outputs"] = {
            k: (relative_path(v, root) if root is not None else str(v)) for k, v in self.outputs.items()
        }
        return values


@dataclass
class ParticipantResult:
    plan: ParticipantPlan
    pairs: list[PairResult]
    log: Path

    @property
    def participant(self) -> str:
        return self.plan.participant

    @property
    def failed(self) -> bool:
        return bool(self.plan.problems) or any(p.status == "failed" for p in self.pairs)


@dataclass
class ParticipantLevelResult:
    """Every participant's outcome; ``failed`` is true when any participant or pair failed."""

    output_dir: Path
    participants: list[ParticipantResult]

    @property
    def pairs(self) -> list[PairResult]:
        return [pair for participant in self.participants for pair in participant.pairs]

    @property
    def failed(self) -> bool:
        return any(p.failed for p in self.participants)

    def counts(self) -> dict[str, int]:
        counts = Counter(p.status for p in self.pairs)
        return {status: counts.get(status, 0) for status in ("done", "skipped", "failed")}

    def as_dict(self) -> dict[str, Any]:
        return {
            "output_dir": str(self.output_dir),
            "failed": self.failed,
            "counts": self.counts(),
            "participants": [
                {
                    "participant": p.participant,
                    "failed": p.failed,
                    "problems": p.plan.problems,
                    "notes": p.plan.notes,
                    "log": relative_path(p.log, self.output_dir),
                    "pairs": [pair.as_dict(self.output_dir) for pair in p.pairs],
                }
                for p in self.participants
            ],
        }


class _ParticipantLog:
    """``logs/sub-<p>.log`` (appended: one job per participant, so jobs never share a log) and
    ``logs/sub-<p>_status.json`` (every pair and its status, rewritten atomically after each pair)."""

    def __init__(self, output_dir: Path, participant: str, on_message: MessageCallback | None) -> None:
        self.participant = participant
        self.path = output_dir / LOG_FOLDER / f"sub-{participant}.log"
        self.status_path = output_dir / LOG_FOLDER / f"sub-{participant}_status.json"
        self.on_message = on_message
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, level: str, message: str, details: str | None = None) -> None:
        if not message.startswith(f"sub-{self.participant}"):
            message = f"sub-{self.participant}: {message}"
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        text = f"{stamp} {level.upper():7s} {message}\n"
        if details:
            text += "".join(f"    {line}\n" for line in details.rstrip().splitlines())
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(text)
        if self.on_message is not None:
            self.on_message(level, message)

    def status(self, plan: ParticipantPlan, results: list[PairResult], output_dir: Path, model: dict[str, Any]) -> None:
        statuses = {(r.baseline_session, r.followup_session): r for r in results}
        pairs = []
        for pair in plan.pairs:
            result = statuses.get((pair.baseline.session, pair.followup.session))
            pairs.append(
                {
                    "baseline_session": pair.baseline.session,
                    "followup_session": pair.followup.session,
                    "baseline": pair.baseline.relative_path,
                    "followup": pair.followup.relative_path,
                    "status": result.status if result else "pending",
                    "reason": result.reason if result else None,
                    "summary": relative_path(pair_outputs(output_dir, pair)["summary"], output_dir),
                }
            )
        write_json(
            self.status_path,
            {
                "participant": plan.participant,
                "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "msnewlesion_version": __version__,
                "model": model,
                "session_order": plan.session_order,
                "sessions": [s.relative_path for s in plan.sessions],
                "notes": plan.notes,
                "problems": plan.problems,
                "pairs": pairs,
            },
        )


def _reason(error: BaseException) -> tuple[str, str | None]:
    """A one-line reason and, for anything but a user-facing error, the traceback."""
    if isinstance(error, MsNewLesionError):
        lines = str(error).strip().splitlines() or [type(error).__name__]
        return lines[0], "\n".join(lines[1:]) or None
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text, "".join(traceback.format_exception(type(error), error, error.__traceback__))


def _sidecar(
    kind: str, pair: SessionPair, scan: SessionScan, figures: PredictionSummary, model: dict[str, Any]
) -> dict[str, Any]:
    a, b = pair.baseline, pair.followup
    from_pair = f"from the pair ses-{a.session} -> ses-{b.session}"
    descriptions = {
        "new_lesions": f"New T2-FLAIR lesions at ses-{b.session} that were not there at ses-{a.session}",
        "lesions_followup": f"All T2-FLAIR lesions at ses-{b.session}, {from_pair}",
        "lesions_baseline": f"All T2-FLAIR lesions at ses-{a.session}, {from_pair}",
    }
    lesions = figures.lesions(kind)
    return {
        "Type": "Lesion",
        "Description": descriptions[kind] + " (msnewlesion, CoactSeg)",
        "Sources": [a.uri, b.uri],
        "SpatialReference": scan.uri,
        "BaselineSession": a.session,
        "FollowupSession": b.session,
        "DaysBetweenSessions": pair.days_between,
        "LesionCount": lesions.count,
        "LesionVolume": lesions.volume_mm3,
        "LesionVolumeUnits": "mm^3",
        "Threshold": figures.threshold,
        "Model": model,
    }


def _model_record(model: LoadedModel, provenance: ModelProvenance) -> dict[str, Any]:
    return {
        "Name": provenance.name,
        "Source": provenance.source,
        "RepoId": provenance.repo_id,
        "Revision": provenance.revision,
        "WeightsSHA256": model.weights_sha256,
    }


@dataclass(frozen=True)
class _Run:
    """What every pair of one participant-level run shares."""

    output_dir: Path
    model: LoadedModel
    provenance: ModelProvenance
    options: PredictOptions
    selection: BidsSelection
    overwrite: bool
    progress: ProgressCallback | None

    @property
    def model_record(self) -> dict[str, Any]:
        return _model_record(self.model, self.provenance)


@dataclass(frozen=True)
class _PairJob:
    """One pair of a run, with its participant's session order, log and scratch folder."""

    run: _Run
    pair: SessionPair
    session_order: str
    log: _ParticipantLog
    scratch: Path | None = None

    @property
    def inputs(self) -> list[Path]:
        return [self.pair.baseline.path, self.pair.followup.path]


def _bids_record(job: _PairJob) -> dict[str, Any]:
    pair, selection = job.pair, job.run.selection
    return {
        "participant": pair.participant,
        "baseline_session": pair.baseline.session,
        "followup_session": pair.followup.session,
        "baseline": pair.baseline.relative_path,
        "followup": pair.followup.relative_path,
        "baseline_acq_time": pair.baseline.acq_time.isoformat() if pair.baseline.acq_time else None,
        "followup_acq_time": pair.followup.acq_time.isoformat() if pair.followup.acq_time else None,
        "days_between": pair.days_between,
        "session_order": job.session_order,
        "session_pairs": selection.session_pairs,
        "flair_pattern": selection.flair_pattern,
    }


def _write_pair(job: _PairJob, prediction: Prediction, outputs: dict[str, Path]) -> None:
    """Write the prediction under its BIDS names, a JSON sidecar beside each image, the summary last."""
    pair, run = job.pair, job.run
    scans = {"new_lesions": pair.followup, "lesions_followup": pair.followup, "lesions_baseline": pair.baseline}
    sidecars = {}
    for kind, scan in scans.items():
        sidecar = _sidecar(kind, pair, scan, prediction.figures, run.model_record)
        sidecars[f"{kind}_sidecar"] = sidecar
        if run.options.save_probabilities:
            sidecars[f"{kind}_probability_sidecar"] = sidecar | {
                "Description": "Lesion probability (0 to 1) behind the mask: " + sidecar["Description"]
            }
    write_prediction(
        prediction,
        run.output_dir,
        layout=outputs,
        inputs=job.inputs,
        overwrite=True,
        save_probabilities=run.options.save_probabilities,
        extra_json=sidecars,
        extra_summary={"bids": _bids_record(job)},
    )


def _skipped(job: _PairJob, result: PairResult) -> PairResult:
    output_dir = job.run.output_dir
    summary = read_json(result.outputs["summary"]) or {}
    result.status = "skipped"
    result.outputs = {k: output_dir / v for k, v in summary.get("outputs", {}).items()}
    result.new_lesion_count = summary.get("new_lesions", {}).get("count")
    result.new_lesion_volume_mm3 = summary.get("new_lesions", {}).get("volume_mm3")
    job.log.write("info", f"{job.pair.name}: complete already, skipped ({parameter('overwrite', True)} redoes it)")
    return result


def _run_pair(job: _PairJob) -> PairResult:
    pair, run = job.pair, job.run
    outputs = pair_outputs(run.output_dir, pair, save_probabilities=run.options.save_probabilities)
    result = PairResult(pair.participant, pair.baseline.session, pair.followup.session, "done", outputs=outputs)
    state = pair_state(run.output_dir, pair)
    if state == "complete" and not run.overwrite:
        return _skipped(job, result)
    if state == "stale":
        job.log.write("warning", f"{pair.name}: the results there came from other FLAIR files; recomputing")
    elif state == "partial":
        job.log.write("info", f"{pair.name}: unfinished results of an interrupted run; recomputing")
    started = time.perf_counter()
    try:
        check_outputs_free(outputs.values(), inputs=job.inputs, overwrite=True)
        # Until the new summary is written the pair must not look complete.
        outputs["summary"].unlink(missing_ok=True)
        prediction = predict_pair(
            pair.baseline.path,
            pair.followup.path,
            run.model,
            run.options,
            provenance=run.provenance,
            progress=run.progress,
            scratch_dir=job.scratch,
        )
        for message in prediction.warnings:
            job.log.write("warning", f"{pair.name}: {message}")
        _write_pair(job, prediction, outputs)
    except Exception as error:  # one pair's failure (a corrupt file, a registration) must not stop the cohort
        reason, details = _reason(error)
        result.status, result.reason = "failed", reason
        result.seconds = round(time.perf_counter() - started, 3)
        job.log.write("error", f"{pair.name} failed: {reason}", details)
        return result
    new = prediction.figures.new_lesions
    result.new_lesion_count, result.new_lesion_volume_mm3 = new.count, float(new.volume_mm3)
    result.seconds = round(time.perf_counter() - started, 3)
    job.log.write(
        "info",
        f"{pair.name}: {new.count} new lesion{'s' if new.count != 1 else ''} ({new.volume_mm3:.1f} mm³) "
        f"in {result.seconds:.1f} s",
    )
    return result


def run_participant_level(
    bids_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    model: LoadedModel,
    *,
    provenance: ModelProvenance | None = None,
    options: PredictOptions | None = None,
    selection: BidsSelection | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    on_message: MessageCallback | None = None,
) -> ParticipantLevelResult:
    """Predict every pair of the selected participants that is not complete yet.

    The model is loaded once by the caller and used for every pair. Complete pairs are skipped
    (``overwrite`` redoes them); an interrupted pair is redone. A pair or participant that fails is
    logged with its reason (``logs/sub-<p>.log``, and ``on_message``) and the others go on.

    Parameters
    ----------
    bids_dir, output_dir : path
        The raw BIDS dataset and the derivative dataset (created if needed; not the BIDS folder).
    model : LoadedModel
        From :func:`msnewlesion.predict.open_model`.
    provenance : ModelProvenance, optional
        The model's name, source and revision, recorded in ``dataset_description.json``.
    options : PredictOptions, optional
        As for ``msnewlesion predict``; ``brain_mask`` must be None (one mask cannot fit a cohort).
    selection : BidsSelection, optional
        Participants, FLAIR pattern and session pairing.
    overwrite : bool
        Redo complete pairs.
    progress : ProgressCallback, optional
        Stage ``"pairs"`` counts the pairs; the prediction's own stages follow.
    on_message : MessageCallback, optional
        Called with every line written to a participant's log.

    Returns
    -------
    ParticipantLevelResult

    Raises
    ------
    InputError
        The BIDS folder is missing or empty, or its ``dataset_description.json`` malformed; the
        output folder is the BIDS folder, cannot be written, or holds another model's results; or
        ``options.brain_mask`` is set.

    Examples
    --------
    >>> from msnewlesion.predict import open_model
    >>> model, provenance = open_model("demo")  # doctest: +SKIP
    >>> result = run_participant_level("bids", "bids/derivatives/msnewlesion", model,
    ...                                provenance=provenance)  # doctest: +SKIP
    >>> result.counts()  # doctest: +SKIP
    {'done': 5, 'skipped': 0, 'failed': 1}
    """
    options = options or PredictOptions()
    if options.brain_mask is not None:
        raise InputError(f"{parameter('brain_mask')} fits one pair, not a dataset: leave it out for BIDS processing")
    bids_dir = check_dataset(bids_dir, output_dir)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    selection = selection or BidsSelection()
    provenance = provenance or ModelProvenance(name=model.config.name)
    plans = plan_dataset(bids_dir, selection)
    write_dataset_description(output_dir, bids_dir, model, provenance)
    run = _Run(output_dir, model, provenance, options, selection, overwrite, progress)
    model_record = run.model_record
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(options).items()}
    total = sum(len(plan.pairs) for plan in plans)
    finished = 0
    report(progress, "pairs", 0, total)
    results = []
    for plan in plans:
        log = _ParticipantLog(output_dir, plan.participant, on_message)
        with open(log.path, "a", encoding="utf-8") as handle:
            handle.write(
                f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} INFO    msnewlesion {__version__} "
                f"participant level, model {provenance.name} (sha256 {model.weights_sha256[:12]}), "
                f"session pairs {selection.session_pairs}, flair pattern {selection.flair_pattern}, "
                f"overwrite {overwrite}, settings {json.dumps(settings)}\n"
            )
        for problem in plan.problems:
            log.write("error", problem)
        for note in plan.notes:
            log.write("warning", note)
        pair_results: list[PairResult] = []
        log.status(plan, pair_results, output_dir, model_record)
        try:
            # Jobs for different participants share the output folder; one participant is one job's at a time.
            with claim_output_folder(output_dir / f"sub-{plan.participant}", command="bids participant") as claim:
                for pair in plan.pairs:
                    pair_results.append(_run_pair(_PairJob(run, pair, plan.session_order, log, claim.scratch)))
                    log.status(plan, pair_results, output_dir, model_record)
                    finished += 1
                    report(progress, "pairs", finished, total)
        except OutputInUseError as error:
            plan.problems.append(str(error))
            log.write("error", str(error))
            finished += len(plan.pairs) - len(pair_results)
            report(progress, "pairs", finished, total)
        results.append(ParticipantResult(plan, pair_results, log.path))
    return ParticipantLevelResult(output_dir, results)
