"""BIDS-App batch processing: new lesions for every session pair of every participant of a BIDS dataset.

Discovery (:func:`plan_participant`) finds each participant's FLAIR per session, orders the sessions
(by acquisition time from ``*_scans.tsv`` or ``*_sessions.tsv`` when every session has one, else by
session label) and pairs them, each session with the one before it (``consecutive``) or each with
the first (``first``). :func:`run_participant_level` predicts every pair that is not complete yet
and writes a BIDS derivatives dataset whose names :func:`pair_outputs` builds (documented in
``docs/bids.md``). A pair that fails is logged with its reason in ``logs/sub-<label>.log`` and the
run goes on. :func:`run_group_level` collects every pair into one table, a plot and an HTML page.

The participant level is the unit of parallelism: jobs for different participants may write into
one output folder at the same time. Each job writes only its participant's files and logs; the one
shared file, ``dataset_description.json``, is created atomically and updated under a lock.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import fnmatch
import html
import itertools
import json
import os
import re
import secrets
import shutil
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msnewlesion import __version__
from msnewlesion.errors import InputError, MsNewLesionError, OutputInUseError
from msnewlesion.io import (
    check_output_location,
    check_outputs_free,
    claim_output_folder,
    quiet_nibabel,
    write_json,
    write_text,
)
from msnewlesion.model.checkpoint import LoadedModel
from msnewlesion.predict import ModelProvenance, PredictOptions, predict_pair, write_prediction
from msnewlesion.progress import ProgressCallback, report

__all__ = [
    "BIDSIGNORE",
    "GROUP_COLUMNS",
    "GROUP_OUTPUT_NAMES",
    "SESSION_PAIRINGS",
    "BidsSelection",
    "GroupResult",
    "MessageCallback",
    "PairResult",
    "ParticipantLevelResult",
    "ParticipantPlan",
    "ParticipantResult",
    "SessionPair",
    "SessionScan",
    "check_dataset",
    "find_participants",
    "normalize_participant_label",
    "pair_is_complete",
    "pair_outputs",
    "plan_dataset",
    "plan_participant",
    "run_group_level",
    "run_participant_level",
    "write_dataset_description",
]

SESSION_PAIRINGS = ("consecutive", "first")
BIDS_VERSION = "1.10.0"
CODE_URL = "https://github.com/msnewlesion/msnewlesion"
#: The name under which BIDS URIs in sidecars refer to the raw dataset (``DatasetLinks``).
RAW_DATASET = "raw"
FLAIR_SUFFIXES = ("_FLAIR.nii.gz", "_FLAIR.nii")
LOG_FOLDER = "logs"
GROUP_OUTPUT_NAMES = {
    "table": "group_newlesions.tsv",
    "sidecar": "group_newlesions.json",
    "plot": "group_newlesions.png",
    "html": "group_newlesions.html",
}
#: Files of this derivative dataset that the BIDS specification does not cover, for the validator.
BIDSIGNORE = """\
# msnewlesion outputs outside the BIDS specification (see docs/bids.md)
logs/
sub-*/figures/
*_newlesions.tsv
*_summary.json
group_newlesions.*
"""
_LABEL = re.compile(r"[A-Za-z0-9]+")
_SHA256_IN_TEXT = re.compile(r"weights sha256 ([0-9a-f]{64})")

#: Receives (level, message) for every line written to a participant's log: level is
#: ``"info"``, ``"warning"`` or ``"error"``.
MessageCallback = Callable[[str, str], None]


# ---------------------------------------------------------------------------------------------
# discovery


@dataclass(frozen=True)
class BidsSelection:
    """Which participants, which FLAIR and which session pairs.

    Parameters
    ----------
    participant_labels : sequence of str
        Participants to process, with or without ``sub-``; empty for all.
    session_pairs : {"consecutive", "first"}
        Each session against the one before it, or each against the first session.
    flair_pattern : str, optional
        A glob matched against FLAIR file names (``*_FLAIR.nii[.gz]``) that keeps only the matching
        ones, such as ``"*_acq-3D_*"``.

    Examples
    --------
    >>> BidsSelection(participant_labels=["sub-01", "02"]).participant_labels
    ('01', '02')
    """

    participant_labels: Sequence[str] = ()
    session_pairs: str = "consecutive"
    flair_pattern: str | None = None

    def __post_init__(self) -> None:
        labels = tuple(dict.fromkeys(normalize_participant_label(label) for label in self.participant_labels))
        object.__setattr__(self, "participant_labels", labels)
        if self.session_pairs not in SESSION_PAIRINGS:
            raise InputError(f"`session_pairs` must be {' or '.join(SESSION_PAIRINGS)}, got {self.session_pairs!r}")
        if self.flair_pattern is not None and not self.flair_pattern.strip():
            raise InputError("`flair_pattern` is empty: give a glob such as '*_acq-3D_*', or leave it out")


@dataclass(frozen=True)
class SessionScan:
    """The FLAIR chosen for one session of one participant."""

    participant: str
    session: str
    path: Path
    relative_path: str
    entities: tuple[tuple[str, str], ...] = ()
    acq_time: dt.datetime | None = None

    @property
    def uri(self) -> str:
        """The file as a BIDS URI into the raw dataset (``bids:raw:sub-01/ses-01/anat/…``)."""
        return f"bids:{RAW_DATASET}:{self.relative_path}"

    @property
    def prefix(self) -> str:
        """``sub-<p>_ses-<s>`` followed by the FLAIR's other entities (``_acq-3D``, ``_run-2`` …)."""
        parts = [f"sub-{self.participant}", f"ses-{self.session}"]
        parts += [f"{key}-{value}" for key, value in self.entities]
        return "_".join(parts)


@dataclass(frozen=True)
class SessionPair:
    """An earlier and a later session of one participant."""

    participant: str
    baseline: SessionScan
    followup: SessionScan

    @property
    def days_between(self) -> float | None:
        """Days from the baseline to the follow-up scan, when both acquisition times are known."""
        if self.baseline.acq_time is None or self.followup.acq_time is None:
            return None
        return round((self.followup.acq_time - self.baseline.acq_time).total_seconds() / 86400.0, 2)

    @property
    def name(self) -> str:
        return f"sub-{self.participant} ses-{self.baseline.session} -> ses-{self.followup.session}"


@dataclass
class ParticipantPlan:
    """What the participant level will do for one participant.

    ``notes`` are facts worth a warning (a session without a FLAIR, the FLAIR chosen among several);
    ``problems`` are failures that stop this participant (it is not in the dataset).
    """

    participant: str
    sessions: list[SessionScan] = field(default_factory=list)
    pairs: list[SessionPair] = field(default_factory=list)
    session_order: str = "label"
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def normalize_participant_label(label: str) -> str:
    """A participant label without its ``sub-`` prefix, checked to be a BIDS label.

    Raises
    ------
    InputError
        The label holds anything but letters and digits.

    Examples
    --------
    >>> normalize_participant_label("sub-01"), normalize_participant_label("02")
    ('01', '02')
    """
    text = str(label).strip()
    text = text[len("sub-") :] if text.startswith("sub-") else text
    if not _LABEL.fullmatch(text):
        raise InputError(
            f"participant label {label!r} is not a BIDS label: letters and digits only, with or without sub- "
            "(for example 01 or sub-01)"
        )
    return text


def _natural_key(label: str) -> tuple:
    # Session and participant labels compare number by number: ses-2 before ses-10.
    return tuple(
        (0, int(chunk), chunk) if chunk.isdigit() else (1, 0, chunk.lower()) for chunk in re.findall(r"\d+|\D+", label)
    )


def _check_bids_dir(bids_dir: str | os.PathLike[str]) -> Path:
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise InputError(f"BIDS folder not found: {bids_dir}")
    if not any(child.is_dir() and child.name.startswith("sub-") for child in bids_dir.iterdir()):
        raise InputError(f"{bids_dir} holds no sub-* folder: give the root of a BIDS dataset")
    description = bids_dir / "dataset_description.json"
    if description.exists():
        # Read only to be checked: a broken one marks a dataset whose other metadata cannot be trusted either.
        try:
            content = json.loads(description.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise InputError(
                f"{description} is not valid JSON ({error}): fix it, every BIDS dataset needs a readable one"
            ) from None
        if not isinstance(content, dict):
            raise InputError(f"{description} must hold a JSON object, found a {type(content).__name__}: fix it")
    return bids_dir


def check_dataset(bids_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str]) -> Path:
    """Check, before any work, a BIDS dataset and the folder its derivatives go to.

    Returns
    -------
    Path
        The BIDS folder.

    Raises
    ------
    InputError
        The BIDS folder is missing, holds no ``sub-*`` folder or a malformed
        ``dataset_description.json``; the output folder is the BIDS folder, or cannot be created
        or written (a file, or a file on its way).
    """
    bids_dir = _check_bids_dir(bids_dir)
    output_dir = Path(output_dir)
    if output_dir.resolve() == bids_dir.resolve():
        raise InputError(
            f"the output folder is the BIDS folder ({bids_dir}): derivatives go elsewhere, "
            "for example BIDS_DIR/derivatives/msnewlesion"
        )
    check_output_location(output_dir, kind="folder", what="output folder")
    return bids_dir


def find_participants(bids_dir: str | os.PathLike[str]) -> list[str]:
    """The participant labels of a BIDS dataset (its ``sub-*`` folders), in natural order.

    Examples
    --------
    >>> find_participants("/data/ms-cohort")  # doctest: +SKIP
    ['01', '02', '10']
    """
    bids_dir = _check_bids_dir(bids_dir)
    labels = [
        child.name[len("sub-") :]
        for child in bids_dir.iterdir()
        if child.is_dir() and child.name.startswith("sub-") and _LABEL.fullmatch(child.name[len("sub-") :])
    ]
    return sorted(labels, key=_natural_key)


def _parse_flair_name(name: str) -> tuple[dict[str, str], tuple[tuple[str, str], ...]] | None:
    suffix = next((s for s in FLAIR_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        return None
    parts = name[: -len(suffix)].split("_")
    entities: dict[str, str] = {}
    for part in parts:
        key, dash, value = part.partition("-")
        if not dash or not _LABEL.fullmatch(key) or not _LABEL.fullmatch(value) or key in entities:
            return None
        entities[key] = value
    others = tuple((k, v) for k, v in entities.items() if k not in ("sub", "ses"))
    return entities, others


def _read_tsv(path: Path, notes: list[str]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return [
                {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                for row in csv.DictReader(handle, delimiter="\t")
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        notes.append(f"could not read {path.name} ({error}); acquisition times from it are ignored")
        return []


def _parse_acq_time(text: str) -> dt.datetime | None:
    text = text.strip()
    if not text or text.lower() == "n/a":
        return None
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        # Python 3.10 reads only 3 or 6 fraction digits; BIDS allows any number.
        match = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)\.(\d+)(.*)", text)
        if match is None:
            return None
        try:
            value = dt.datetime.fromisoformat(f"{match[1]}.{match[2][:6].ljust(6, '0')}{match[3]}")
        except ValueError:
            return None
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


class _TimeTables:
    """The acquisition times a participant's ``*_scans.tsv`` and ``*_sessions.tsv`` files give."""

    def __init__(self, participant_dir: Path, participant: str, notes: list[str]) -> None:
        self.files: dict[str, str] = {}  # path relative to the participant folder → acq_time
        self.sessions: dict[str, str] = {}
        self.listed: dict[str, list[str]] = {}  # session → FLAIR names its scans.tsv lists
        scans = [(participant_dir / f"sub-{participant}_scans.tsv", "")]
        scans += [
            (folder / f"sub-{participant}_{folder.name}_scans.tsv", f"{folder.name}/")
            for folder in participant_dir.glob("ses-*")
            if folder.is_dir()
        ]
        for path, prefix in scans:
            if not path.is_file():
                continue
            for row in _read_tsv(path, notes):
                filename = row.get("filename", "").replace("\\", "/").lstrip("./")
                if not filename:
                    continue
                relative = prefix + filename
                self.files[relative] = row.get("acq_time", "")
                session, _, rest = relative.partition("/")
                if rest.startswith("anat/") and "/" not in rest[len("anat/") :]:
                    self.listed.setdefault(session, []).append(rest[len("anat/") :])
        sessions_file = participant_dir / f"sub-{participant}_sessions.tsv"
        if sessions_file.is_file():
            for row in _read_tsv(sessions_file, notes):
                session = row.get("session_id", "")
                if session:
                    self.sessions[session if session.startswith("ses-") else f"ses-{session}"] = row.get("acq_time", "")

    def acq_time(self, session: str, name: str, notes: list[str]) -> dt.datetime | None:
        for text, source in (
            (self.files.get(f"ses-{session}/anat/{name}"), "scans.tsv"),
            (self.sessions.get(f"ses-{session}"), "sessions.tsv"),
        ):
            if text is None or not text.strip() or text.strip().lower() == "n/a":
                continue
            value = _parse_acq_time(text)
            if value is None:
                notes.append(f"ses-{session}: acq_time {text!r} in {source} is not an ISO date and time; ignored")
                continue
            return value
        return None


def _voxel_volume(path: Path) -> float:
    import nibabel as nib

    try:
        with quiet_nibabel():
            zooms = nib.load(str(path)).header.get_zooms()[:3]
        return float(np.prod(zooms))
    except Exception:  # an unreadable candidate is chosen last; reading it later says why
        return float("inf")


def _run_index(entities: tuple[tuple[str, str], ...]) -> int:
    run = dict(entities).get("run", "")
    return int(run) if run.isdigit() else -1


def _choose_flair(
    session: str,
    candidates: list[tuple[str, tuple[tuple[str, str], ...]]],
    acquisitions: Counter,
    folder: Path,
    notes: list[str],
) -> tuple[str, tuple[tuple[str, str], ...]]:
    if len(candidates) == 1:
        return candidates[0]

    def rank(candidate: tuple[str, tuple[tuple[str, str], ...]]) -> tuple:
        name, entities = candidate
        return (
            -acquisitions[dict(entities).get("acq", "")],
            _voxel_volume(folder / name),
            -_run_index(entities),
            name,
        )

    ordered = sorted(candidates, key=rank)
    others = ", ".join(name for name, _ in ordered[1:])
    notes.append(
        f"ses-{session}: {len(candidates)} FLAIRs; chose {ordered[0][0]} (the acquisition most sessions share, "
        f"then the finest voxels, then the highest run) over {others}; `flair_pattern` chooses otherwise"
    )
    return ordered[0]


def plan_participant(
    bids_dir: str | os.PathLike[str], participant: str, selection: BidsSelection | None = None
) -> ParticipantPlan:
    """Find one participant's FLAIR per session, order the sessions and pair them.

    Rules (``docs/bids.md``): a session's FLAIR is ``ses-<s>/anat/sub-<p>_ses-<s>[_…]_FLAIR.nii[.gz]``
    (also when only its ``*_scans.tsv`` lists it: a file not fetched yet fails that pair, loudly);
    ``--flair-pattern`` keeps the names it matches; among several, the acquisition (``acq-``) most
    sessions share wins, then the finest voxels, then the highest ``run-``, then the name.
    Sessions are ordered by acquisition time when every one has an ``acq_time`` (the FLAIR's row in
    ``*_scans.tsv``, else ``*_sessions.tsv``), otherwise by session label, numbers compared as numbers.
    Sessions without a FLAIR are left out with a note.

    Examples
    --------
    >>> plan = plan_participant("/data/ms-cohort", "sub-01")  # doctest: +SKIP
    >>> [(p.baseline.session, p.followup.session) for p in plan.pairs]  # doctest: +SKIP
    [('01', '02'), ('02', '03')]
    """
    selection = selection or BidsSelection()
    bids_dir = Path(bids_dir)
    participant = normalize_participant_label(participant)
    plan = ParticipantPlan(participant)
    folder = bids_dir / f"sub-{participant}"
    if not folder.is_dir():
        plan.problems.append(f"sub-{participant} is not in {bids_dir} (no folder sub-{participant})")
        return plan
    session_dirs = sorted(
        (d for d in folder.iterdir() if d.is_dir() and d.name.startswith("ses-") and _LABEL.fullmatch(d.name[4:])),
        key=lambda d: _natural_key(d.name[4:]),
    )
    if not session_dirs:
        plan.notes.append(
            f"sub-{participant} has no ses-* folders: one time point, nothing to compare (new lesions need sessions)"
        )
        return plan
    times = _TimeTables(folder, participant, plan.notes)
    found: dict[str, list[tuple[str, tuple[tuple[str, str], ...]]]] = {}
    for session_dir in session_dirs:
        session = session_dir.name[4:]
        anat = session_dir / "anat"
        names = {p.name for p in anat.iterdir() if not p.name.startswith(".")} if anat.is_dir() else set()
        names |= set(times.listed.get(session_dir.name, []))
        candidates = []
        for name in sorted(names):
            parsed = _parse_flair_name(name)
            if parsed is None:
                continue
            entities, others = parsed
            if entities.get("sub") != participant or entities.get("ses") != session:
                plan.notes.append(f"ses-{session}: {name} names another participant or session; ignored")
                continue
            candidates.append((name, others))
        if selection.flair_pattern is not None:
            matching = [c for c in candidates if fnmatch.fnmatchcase(c[0], selection.flair_pattern)]
            if candidates and not matching:
                plan.notes.append(
                    f"ses-{session}: no FLAIR matches `flair_pattern` {selection.flair_pattern!r} "
                    f"({', '.join(c[0] for c in candidates)}); session left out"
                )
            candidates = matching
        elif not candidates:
            plan.notes.append(f"ses-{session} has no FLAIR (anat/*_FLAIR.nii[.gz]); session left out")
        if candidates:
            found[session] = candidates
    acquisitions = Counter(
        acq for candidates in found.values() for acq in {dict(e).get("acq", "") for _, e in candidates}
    )
    scans = []
    for session, candidates in found.items():
        name, entities = _choose_flair(
            session, candidates, acquisitions, folder / f"ses-{session}" / "anat", plan.notes
        )
        scans.append(
            SessionScan(
                participant=participant,
                session=session,
                path=folder / f"ses-{session}" / "anat" / name,
                relative_path=f"sub-{participant}/ses-{session}/anat/{name}",
                entities=entities,
                acq_time=times.acq_time(session, name, plan.notes),
            )
        )
    known = [s.acq_time is not None for s in scans]
    if scans and all(known):
        scans.sort(key=lambda s: (s.acq_time, _natural_key(s.session)))
        plan.session_order = "acq_time"
    else:
        scans.sort(key=lambda s: _natural_key(s.session))
        if any(known):
            missing = ", ".join(f"ses-{s.session}" for s in scans if s.acq_time is None)
            plan.notes.append(f"no acq_time for {missing}: sessions ordered by label, not by acquisition time")
    plan.sessions = scans
    if len(scans) < 2:
        listed = ", ".join(f"ses-{s.session}" for s in scans) or "none"
        plan.notes.append(f"new lesions need two sessions with a FLAIR; sub-{participant} has {listed}")
        return plan
    if selection.session_pairs == "first":
        plan.pairs = [SessionPair(participant, scans[0], later) for later in scans[1:]]
    else:
        plan.pairs = [SessionPair(participant, a, b) for a, b in itertools.pairwise(scans)]
    return plan


def plan_dataset(bids_dir: str | os.PathLike[str], selection: BidsSelection | None = None) -> list[ParticipantPlan]:
    """Plans for the selected participants (every participant when none is named).

    A named participant that is not in the dataset gets a plan whose ``problems`` say so.

    Raises
    ------
    InputError
        ``bids_dir`` is missing or holds no ``sub-*`` folder.

    Examples
    --------
    >>> plans = plan_dataset("/data/ms-cohort", BidsSelection(participant_labels=["01"]))  # doctest: +SKIP
    >>> sum(len(plan.pairs) for plan in plans)  # doctest: +SKIP
    2
    """
    selection = selection or BidsSelection()
    bids_dir = _check_bids_dir(bids_dir)
    labels = selection.participant_labels or tuple(find_participants(bids_dir))
    plans = []
    for label in labels:
        try:
            plans.append(plan_participant(bids_dir, label, selection))
        except OSError as error:  # an unreadable folder stops that participant, not the others
            plans.append(ParticipantPlan(label, problems=[f"could not read sub-{label}: {error}"]))
    return plans


# ---------------------------------------------------------------------------------------------
# derivative names


def _name(
    scan: SessionScan, suffix: str, *, label: str | None = None, desc: str | None = None, space: bool = True
) -> str:
    parts = [scan.prefix]
    if space:
        parts.append("space-orig")
    if label is not None:
        parts.append(f"label-{label}")
    if desc is not None:
        parts.append(f"desc-{desc}")
    return "_".join(parts) + "_" + suffix


def pair_outputs(
    output_dir: str | os.PathLike[str], pair: SessionPair, *, save_probabilities: bool = False
) -> dict[str, Path]:
    """The files the participant level writes for one pair (the naming of ``docs/bids.md``).

    For the pair (A, B), B the later session, everything describing B lies in B's ``anat`` folder
    with ``desc-since<A>``; A's all-lesion mask lies in A's folder with ``desc-before<B>``; the QC
    picture lies in ``sub-<p>/figures``. Keys are those of :func:`msnewlesion.predict.prediction_outputs`;
    ``<key>_sidecar`` is the JSON beside each image.

    Examples
    --------
    >>> a = SessionScan("01", "01", Path("a"), "sub-01/ses-01/anat/sub-01_ses-01_FLAIR.nii.gz")
    >>> b = SessionScan("01", "02", Path("b"), "sub-01/ses-02/anat/sub-01_ses-02_FLAIR.nii.gz")
    >>> pair_outputs("out", SessionPair("01", a, b))["new_lesions"].as_posix()
    'out/sub-01/ses-02/anat/sub-01_ses-02_space-orig_label-newlesion_desc-since01_mask.nii.gz'
    """
    output_dir = Path(output_dir)
    a, b = pair.baseline, pair.followup
    since, before = f"since{a.session}", f"before{b.session}"
    later = output_dir / f"sub-{pair.participant}" / f"ses-{b.session}" / "anat"
    earlier = output_dir / f"sub-{pair.participant}" / f"ses-{a.session}" / "anat"
    images = {
        "new_lesions": (later, b, "newlesion", since),
        "lesions_baseline": (earlier, a, "lesion", before),
        "lesions_followup": (later, b, "lesion", since),
    }
    outputs: dict[str, Path] = {}
    for key, (folder, scan, label, desc) in images.items():
        outputs[key] = folder / _name(scan, "mask.nii.gz", label=label, desc=desc)
        outputs[f"{key}_sidecar"] = folder / _name(scan, "mask.json", label=label, desc=desc)
    if save_probabilities:
        for key, (folder, scan, label, desc) in images.items():
            outputs[f"{key}_probability"] = folder / _name(scan, "probseg.nii.gz", label=label, desc=desc)
            outputs[f"{key}_probability_sidecar"] = folder / _name(scan, "probseg.json", label=label, desc=desc)
    outputs["table"] = later / _name(b, "newlesions.tsv", desc=since, space=False)
    outputs["qc"] = output_dir / f"sub-{pair.participant}" / "figures" / _name(b, "qc.png", desc=since, space=False)
    outputs["summary"] = later / _name(b, "summary.json", desc=since, space=False)
    return outputs


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _pair_state(output_dir: Path, pair: SessionPair) -> str:
    # "complete", "absent", "partial" (files but no summary: an interrupted run), or "stale"
    # (complete, but from other input files: the FLAIR choice changed since).
    summary_path = pair_outputs(output_dir, pair)["summary"]
    summary = _read_json(summary_path)
    if summary is None:
        folder = summary_path.parent
        return "partial" if folder.is_dir() and any(folder.glob(f"*desc-since{pair.baseline.session}_*")) else "absent"
    bids = summary.get("bids", {})
    if (bids.get("baseline"), bids.get("followup")) != (pair.baseline.relative_path, pair.followup.relative_path):
        return "stale"
    listed = summary.get("outputs", {})
    if not all((output_dir / relative).exists() for relative in listed.values()):
        return "partial"
    return "complete"


def pair_is_complete(output_dir: str | os.PathLike[str], pair: SessionPair) -> bool:
    """Whether the pair's results are all there: its summary (written last) exists, names the pair's
    current input files, and every file it lists exists.

    Examples
    --------
    >>> plan = plan_participant("/data/ms-cohort", "01")  # doctest: +SKIP
    >>> pair_is_complete("/data/ms-cohort/derivatives/msnewlesion", plan.pairs[0])  # doctest: +SKIP
    True
    """
    return _pair_state(Path(output_dir), pair) == "complete"


# ---------------------------------------------------------------------------------------------
# dataset_description.json, written once by whichever job comes first


def _raw_link(output_dir: Path, bids_dir: Path) -> str:
    output_dir, bids_dir = output_dir.resolve(), bids_dir.resolve()
    if bids_dir in output_dir.parents:
        return os.path.relpath(bids_dir, output_dir).replace(os.sep, "/") + "/"
    return bids_dir.as_uri()


def _model_entry(model: LoadedModel, provenance: ModelProvenance) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "Name": provenance.name,
        "Version": provenance.revision or f"sha256:{model.weights_sha256[:12]}",
        "Description": (
            f"CoactSeg model run by msnewlesion ({provenance.source}); weights sha256 {model.weights_sha256}. "
            f"{model.config.description}".strip()
        ),
    }
    if provenance.repo_id:
        revision = f"/tree/{provenance.revision}" if provenance.revision else ""
        entry["CodeURL"] = f"https://huggingface.co/{provenance.repo_id}{revision}"
    return entry


def _tool_entry(model: LoadedModel, provenance: ModelProvenance) -> dict[str, Any]:
    revision = f" at revision {provenance.revision}" if provenance.revision else ""
    return {
        "Name": "msnewlesion",
        "Version": __version__,
        "Description": (
            "New multiple sclerosis lesions between FLAIR sessions (CoactSeg); "
            f"model {provenance.name}{revision}, weights sha256 {model.weights_sha256}"
        ),
        "CodeURL": CODE_URL,
    }


def _dataset_description(
    output_dir: Path, bids_dir: Path, model: LoadedModel, provenance: ModelProvenance
) -> dict[str, Any]:
    raw = _raw_link(output_dir, bids_dir)
    return {
        "Name": f"msnewlesion: new MS lesions of {bids_dir.resolve().name}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [_tool_entry(model, provenance), _model_entry(model, provenance)],
        "SourceDatasets": [{"URL": raw}],
        "DatasetLinks": {RAW_DATASET: raw},
    }


def _create_exclusively(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text`` unless it exists; True when this call created it.

    The content is complete before the name appears (a hard link is created atomically, even on
    NFS), so a concurrent reader never sees a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial-{secrets.token_hex(4)}")
    try:
        with open(temporary, "x", encoding="utf-8") as stream:
            stream.write(text)
        try:
            os.link(temporary, path)
            return True
        except FileExistsError:
            return False
        except OSError:
            # Filesystems without hard links: exclusive creation, then the content.
            try:
                with open(path, "x", encoding="utf-8") as stream:
                    stream.write(text)
                return True
            except FileExistsError:
                return False
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: writes stay atomic, only a concurrent update could be lost
        yield
        return
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # a filesystem without locks (some Lustre mounts): as above
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_description(path: Path) -> dict[str, Any]:
    for _ in range(25):  # another job may be writing it where hard links are not available
        description = _read_json(path)
        if description is not None:
            return description
        time.sleep(0.2)
    raise InputError(f"{path} is not a readable JSON object: fix or remove it, or choose another output folder")


def write_dataset_description(
    output_dir: str | os.PathLike[str],
    bids_dir: str | os.PathLike[str],
    model: LoadedModel,
    provenance: ModelProvenance | None = None,
) -> Path:
    """Create ``dataset_description.json`` (and ``.bidsignore``), or check and update an existing one.

    Safe when many participant jobs start at once: the first creates the file atomically; the
    others check, under a lock, that it describes the same model and add their msnewlesion version
    to ``GeneratedBy`` when it is a new one.

    Raises
    ------
    InputError
        The folder holds another pipeline's derivatives, or results of another model (a different
        weights sha256): mixing models in one derivative dataset would make it meaningless.

    Examples
    --------
    >>> write_dataset_description("derivatives/msnewlesion", "bids", model)  # doctest: +SKIP
    PosixPath('derivatives/msnewlesion/dataset_description.json')
    """
    output_dir, bids_dir = Path(output_dir), Path(bids_dir)
    provenance = provenance or ModelProvenance(name=model.config.name)
    path = output_dir / "dataset_description.json"
    wanted = _dataset_description(output_dir, bids_dir, model, provenance)
    if not _create_exclusively(path, json.dumps(wanted, indent=2, ensure_ascii=False) + "\n"):
        with _exclusive_lock(output_dir / ".msnewlesion.lock"):
            existing = _read_description(path)
            entries = existing.get("GeneratedBy")
            entries = entries if isinstance(entries, list) else []
            tools = [e for e in entries if isinstance(e, dict) and e.get("Name") == "msnewlesion"]
            if not tools:
                names = ", ".join(str(e.get("Name")) for e in entries if isinstance(e, dict)) or "no GeneratedBy"
                raise InputError(
                    f"{output_dir} holds another derivative dataset ({names}): choose an empty folder, "
                    "for example BIDS_DIR/derivatives/msnewlesion"
                )
            recorded = {
                m
                for e in entries
                if isinstance(e, dict)
                for m in _SHA256_IN_TEXT.findall(str(e.get("Description", "")))
            }
            if recorded and model.weights_sha256 not in recorded:
                raise InputError(
                    f"{output_dir} holds results of another model (weights sha256 "
                    f"{', '.join(sorted(recorded))[:16]}…); "
                    f"this run uses {provenance.name} (sha256 {model.weights_sha256[:16]}…). "
                    "Write to another output folder: one derivative dataset holds one model's results"
                )
            if not any(e.get("Version") == __version__ for e in tools):
                existing["GeneratedBy"] = [*entries, _tool_entry(model, provenance)]
                write_json(path, existing)
    _create_exclusively(output_dir / ".bidsignore", BIDSIGNORE)
    return path


# ---------------------------------------------------------------------------------------------
# the participant level


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
        values["outputs"] = {k: (_relative(v, root) if root is not None else str(v)) for k, v in self.outputs.items()}
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
                    "log": _relative(p.log, self.output_dir),
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
                    "summary": _relative(pair_outputs(output_dir, pair)["summary"], output_dir),
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
    kind: str, pair: SessionPair, scan: SessionScan, prediction_summary: dict[str, Any], model: dict[str, Any]
) -> dict[str, Any]:
    a, b = pair.baseline, pair.followup
    from_pair = f"from the pair ses-{a.session} -> ses-{b.session}"
    descriptions = {
        "new_lesions": f"New T2-FLAIR lesions at ses-{b.session} that were not there at ses-{a.session}",
        "lesions_followup": f"All T2-FLAIR lesions at ses-{b.session}, {from_pair}",
        "lesions_baseline": f"All T2-FLAIR lesions at ses-{a.session}, {from_pair}",
    }
    figures = prediction_summary.get(kind, {})
    return {
        "Type": "Lesion",
        "Description": descriptions[kind] + " (msnewlesion, CoactSeg)",
        "Sources": [a.uri, b.uri],
        "SpatialReference": scan.uri,
        "BaselineSession": a.session,
        "FollowupSession": b.session,
        "DaysBetweenSessions": pair.days_between,
        "LesionCount": figures.get("count"),
        "LesionVolume": figures.get("volume_mm3"),
        "LesionVolumeUnits": "mm^3",
        "Threshold": prediction_summary.get("settings", {}).get("threshold_used"),
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


def _write_pair(
    prediction: Any,
    pair: SessionPair,
    outputs: dict[str, Path],
    output_dir: Path,
    options: PredictOptions,
    selection: BidsSelection,
    session_order: str,
    model_record: dict[str, Any],
) -> None:
    staging_parent = output_dir / f"sub-{pair.participant}"
    staging_parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".msnewlesion-partial-", dir=staging_parent))
    try:
        written = write_prediction(
            prediction,
            staging,
            inputs=[pair.baseline.path, pair.followup.path],
            overwrite=True,
            save_probabilities=options.save_probabilities,
        )
        summary = json.loads(written["summary"].read_text(encoding="utf-8"))
        scans = {"new_lesions": pair.followup, "lesions_followup": pair.followup, "lesions_baseline": pair.baseline}
        for key, source in written.items():
            if key == "summary":
                continue
            outputs[key].parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, outputs[key])
            kind = key.removesuffix("_probability")
            if kind in scans:
                sidecar = _sidecar(kind, pair, scans[kind], summary, model_record)
                if key.endswith("_probability"):
                    sidecar["Description"] = "Lesion probability (0 to 1) behind the mask: " + sidecar["Description"]
                write_json(outputs[f"{key}_sidecar"], sidecar)
        summary["bids"] = {
            "participant": pair.participant,
            "baseline_session": pair.baseline.session,
            "followup_session": pair.followup.session,
            "baseline": pair.baseline.relative_path,
            "followup": pair.followup.relative_path,
            "baseline_acq_time": pair.baseline.acq_time.isoformat() if pair.baseline.acq_time else None,
            "followup_acq_time": pair.followup.acq_time.isoformat() if pair.followup.acq_time else None,
            "days_between": pair.days_between,
            "session_order": session_order,
            "session_pairs": selection.session_pairs,
            "flair_pattern": selection.flair_pattern,
        }
        summary["outputs"] = {key: _relative(path, output_dir) for key, path in outputs.items()}
        write_json(outputs["summary"], summary)  # last: from now on the pair is complete
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _run_pair(
    pair: SessionPair,
    output_dir: Path,
    model: LoadedModel,
    provenance: ModelProvenance,
    options: PredictOptions,
    selection: BidsSelection,
    session_order: str,
    overwrite: bool,
    log: _ParticipantLog,
    progress: ProgressCallback | None,
    scratch_dir: Path | None = None,
) -> PairResult:
    outputs = pair_outputs(output_dir, pair, save_probabilities=options.save_probabilities)
    result = PairResult(pair.participant, pair.baseline.session, pair.followup.session, "done", outputs=outputs)
    state = _pair_state(output_dir, pair)
    if state == "complete" and not overwrite:
        summary = _read_json(outputs["summary"]) or {}
        result.status = "skipped"
        result.outputs = {k: output_dir / v for k, v in summary.get("outputs", {}).items()}
        result.new_lesion_count = summary.get("new_lesions", {}).get("count")
        result.new_lesion_volume_mm3 = summary.get("new_lesions", {}).get("volume_mm3")
        log.write("info", f"{pair.name}: complete already, skipped (`overwrite=True` redoes it)")
        return result
    if state == "stale":
        log.write("warning", f"{pair.name}: the results there came from other FLAIR files; recomputing")
    elif state == "partial":
        log.write("info", f"{pair.name}: unfinished results of an interrupted run; recomputing")
    started = time.perf_counter()
    try:
        check_outputs_free(outputs.values(), inputs=[pair.baseline.path, pair.followup.path], overwrite=True)
        # Until the new summary is written the pair must not look complete.
        outputs["summary"].unlink(missing_ok=True)
        prediction = predict_pair(
            pair.baseline.path,
            pair.followup.path,
            model,
            options,
            provenance=provenance,
            progress=progress,
            scratch_dir=scratch_dir,
        )
        for message in prediction.warnings:
            log.write("warning", f"{pair.name}: {message}")
        _write_pair(
            prediction, pair, outputs, output_dir, options, selection, session_order, _model_record(model, provenance)
        )
    except Exception as error:  # one pair's failure (a corrupt file, a registration) must not stop the cohort
        reason, details = _reason(error)
        result.status, result.reason = "failed", reason
        result.seconds = round(time.perf_counter() - started, 3)
        log.write("error", f"{pair.name} failed: {reason}", details)
        return result
    new = prediction.summary["new_lesions"]
    result.new_lesion_count, result.new_lesion_volume_mm3 = int(new["count"]), float(new["volume_mm3"])
    result.seconds = round(time.perf_counter() - started, 3)
    log.write(
        "info",
        f"{pair.name}: {new['count']} new lesion{'s' if new['count'] != 1 else ''} ({new['volume_mm3']:.1f} mm³) "
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
        raise InputError("`brain_mask` fits one pair, not a dataset: leave it out for BIDS processing")
    bids_dir = check_dataset(bids_dir, output_dir)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    selection = selection or BidsSelection()
    provenance = provenance or ModelProvenance(name=model.config.name)
    plans = plan_dataset(bids_dir, selection)
    write_dataset_description(output_dir, bids_dir, model, provenance)
    model_record = _model_record(model, provenance)
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
                    pair_results.append(
                        _run_pair(
                            pair,
                            output_dir,
                            model,
                            provenance,
                            options,
                            selection,
                            plan.session_order,
                            overwrite,
                            log,
                            progress,
                            claim.scratch,
                        )
                    )
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


# ---------------------------------------------------------------------------------------------
# the group level

GROUP_COLUMNS = {
    "participant_id": "The participant (sub-<label>).",
    "baseline_session_id": "The earlier session of the pair.",
    "followup_session_id": "The later session of the pair; the new-lesion mask lies on its FLAIR's grid.",
    "baseline_acq_time": "Acquisition time of the baseline FLAIR (from *_scans.tsv or *_sessions.tsv).",
    "followup_acq_time": "Acquisition time of the follow-up FLAIR.",
    "days_between": "Days from the baseline to the follow-up scan (n/a when a time is unknown).",
    "status": "done (results complete), failed (see reason and logs/) or missing (not run yet).",
    "new_lesion_count": "Number of new lesions (connected components of the new-lesion mask).",
    "new_lesion_volume_mm3": "Total volume of the new lesions, mm³, on the follow-up's grid.",
    "baseline_lesion_count": "Number of lesions at the baseline session.",
    "baseline_lesion_volume_mm3": "Total lesion volume at the baseline session, mm³.",
    "followup_lesion_count": "Number of lesions at the follow-up session.",
    "followup_lesion_volume_mm3": "Total lesion volume at the follow-up session, mm³.",
    "new_lesion_mask": "The new-lesion mask, relative to the derivative dataset.",
    "qc": "The QC picture, relative to the derivative dataset.",
    "summary": "The pair's summary (every setting and timing), relative to the derivative dataset.",
    "reason": "Why the pair failed.",
}


@dataclass
class GroupResult:
    """The group table (one row per pair) and the files written."""

    table: pd.DataFrame
    outputs: dict[str, Path]

    @property
    def incomplete(self) -> pd.DataFrame:
        return self.table[self.table["status"] != "done"]


def _status_reasons(output_dir: Path, participant: str) -> dict[tuple[str, str], tuple[str, str | None]]:
    status = _read_json(output_dir / LOG_FOLDER / f"sub-{participant}_status.json") or {}
    return {
        (str(p.get("baseline_session")), str(p.get("followup_session"))): (str(p.get("status")), p.get("reason"))
        for p in status.get("pairs", [])
        if isinstance(p, dict)
    }


def _row_from_summary(output_dir: Path, summary: dict[str, Any], summary_path: Path) -> dict[str, Any]:
    bids = summary.get("bids", {})
    listed = summary.get("outputs", {})
    return {
        "participant_id": f"sub-{bids.get('participant')}",
        "baseline_session_id": f"ses-{bids.get('baseline_session')}",
        "followup_session_id": f"ses-{bids.get('followup_session')}",
        "baseline_acq_time": bids.get("baseline_acq_time"),
        "followup_acq_time": bids.get("followup_acq_time"),
        "days_between": bids.get("days_between"),
        "status": "done",
        "new_lesion_count": summary.get("new_lesions", {}).get("count"),
        "new_lesion_volume_mm3": summary.get("new_lesions", {}).get("volume_mm3"),
        "baseline_lesion_count": summary.get("lesions_baseline", {}).get("count"),
        "baseline_lesion_volume_mm3": summary.get("lesions_baseline", {}).get("volume_mm3"),
        "followup_lesion_count": summary.get("lesions_followup", {}).get("count"),
        "followup_lesion_volume_mm3": summary.get("lesions_followup", {}).get("volume_mm3"),
        "new_lesion_mask": listed.get("new_lesions"),
        "qc": listed.get("qc"),
        "summary": _relative(summary_path, output_dir),
        "reason": None,
    }


def _group_rows(output_dir: Path, plans: list[ParticipantPlan], selected: set[str] | None) -> list[dict[str, Any]]:
    rows = []
    seen: set[Path] = set()
    for plan in plans:
        reasons = _status_reasons(output_dir, plan.participant)
        for pair in plan.pairs:
            summary_path = pair_outputs(output_dir, pair)["summary"]
            seen.add(summary_path)
            if pair_is_complete(output_dir, pair):
                rows.append(_row_from_summary(output_dir, _read_json(summary_path) or {}, summary_path))
                continue
            status, reason = reasons.get((pair.baseline.session, pair.followup.session), ("missing", None))
            row = dict.fromkeys(GROUP_COLUMNS)
            row |= {
                "participant_id": f"sub-{pair.participant}",
                "baseline_session_id": f"ses-{pair.baseline.session}",
                "followup_session_id": f"ses-{pair.followup.session}",
                "baseline_acq_time": pair.baseline.acq_time.isoformat() if pair.baseline.acq_time else None,
                "followup_acq_time": pair.followup.acq_time.isoformat() if pair.followup.acq_time else None,
                "days_between": pair.days_between,
                "status": "failed" if status == "failed" else "missing",
                "reason": reason if status == "failed" else "no complete results: the participant level has not run it",
            }
            rows.append(row)
    # Complete pairs that the current selection does not plan (another --session-pairs, a FLAIR
    # since removed): they are results in this dataset, so the table lists them too.
    for summary_path in sorted(output_dir.glob("sub-*/ses-*/anat/*_summary.json")):
        if summary_path in seen:
            continue
        summary = _read_json(summary_path)
        if summary is None or "bids" not in summary:
            continue
        if selected is not None and str(summary["bids"].get("participant")) not in selected:
            continue
        if all((output_dir / p).exists() for p in summary.get("outputs", {}).values()):
            rows.append(_row_from_summary(output_dir, summary, summary_path))
    rows.sort(
        key=lambda r: (
            _natural_key(str(r["participant_id"])[4:]),
            r["followup_acq_time"] or "",
            _natural_key(str(r["followup_session_id"])[4:]),
            _natural_key(str(r["baseline_session_id"])[4:]),
        )
    )
    return rows


def _group_plot(table: pd.DataFrame, path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    participants = list(dict.fromkeys(table["participant_id"]))
    figure, axis = plt.subplots(figsize=(min(max(6.0, 0.45 * len(participants) + 2.0), 40.0), 4.2))
    colours = plt.get_cmap("viridis")
    most = max([1, *table.groupby("participant_id").size().tolist()]) if len(table) else 1
    failed_drawn = False
    for x, participant in enumerate(participants):
        rows = table[table["participant_id"] == participant].reset_index(drop=True)
        width = 0.8 / len(rows)
        for i, row in rows.iterrows():
            position = x - 0.4 + width * (i + 0.5)
            if row["status"] == "done":
                axis.bar(position, row["new_lesion_count"], width=width * 0.9, color=colours(i / max(most - 1, 1)))
            else:
                axis.plot(
                    position, 0, "x", color="crimson", markersize=8, label=None if failed_drawn else "failed or missing"
                )
                failed_drawn = True
    axis.set_xticks(range(len(participants)))
    axis.set_xticklabels(participants, rotation=90 if len(participants) > 12 else 0, fontsize=8)
    axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel("new lesions")
    axis.set_title("New lesions per participant: one bar per session pair, in time order", fontsize=10)
    axis.set_xlim(-0.6, max(len(participants) - 0.4, 0.6))
    if failed_drawn:
        axis.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    from msnewlesion.io import atomic_path

    with atomic_path(path) as temporary:
        temporary.write_bytes(buffer.getvalue())


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _cell(value: Any) -> str:
    if _missing(value):
        return "n/a"
    if isinstance(value, float):
        return f"{value:g}"
    return html.escape(str(value))


def _group_html(table: pd.DataFrame, plot_name: str) -> str:
    counts = Counter(table["status"])
    heading = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("done", "failed", "missing"))
    rows = []
    for row in table.to_dict("records"):
        row = {k: (None if _missing(v) else v) for k, v in row.items()}
        picture = (
            f'<a href="{html.escape(row["qc"])}"><img src="{html.escape(row["qc"])}" alt="QC" loading="lazy"></a>'
            if row["status"] == "done" and row.get("qc")
            else ""
        )
        summary = (
            f'<a href="{html.escape(row["summary"])}">summary</a>'
            if row.get("summary") and row["status"] == "done"
            else ""
        )
        rows.append(
            f'<tr class="{html.escape(row["status"])}"><td>{_cell(row["participant_id"])}</td>'
            f"<td>{_cell(row['baseline_session_id'])} → {_cell(row['followup_session_id'])}</td>"
            f"<td>{_cell(row['days_between'])}</td><td>{_cell(row['status'])}</td>"
            f"<td>{_cell(row['new_lesion_count'])}</td><td>{_cell(row['new_lesion_volume_mm3'])}</td>"
            f"<td>{_cell(row['baseline_lesion_volume_mm3'])}</td><td>{_cell(row['followup_lesion_volume_mm3'])}</td>"
            f"<td>{picture}</td><td>{summary}</td><td>{_cell(row['reason']) if row['reason'] else ''}</td></tr>"
        )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>msnewlesion: new lesions, every session pair</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }}
tr.failed td, tr.missing td {{ background: #fde8e8; }}
img {{ width: 260px; }}
</style>
</head>
<body>
<h1>New lesions, every session pair</h1>
<p>{len(table)} pairs: {heading}. msnewlesion {html.escape(__version__)}. Click a picture for full size.</p>
<p><img src="{html.escape(plot_name)}" alt="new lesions per participant" style="width: auto; max-width: 100%"></p>
<table>
<thead><tr><th>participant</th><th>sessions</th><th>days</th><th>status</th><th>new lesions</th>
<th>new volume (mm³)</th><th>baseline lesion volume (mm³)</th><th>follow-up lesion volume (mm³)</th>
<th>QC</th><th>details</th><th>reason</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
</body>
</html>
"""


def run_group_level(
    bids_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    selection: BidsSelection | None = None,
) -> GroupResult:
    """Collect every pair into ``group_newlesions.tsv`` (+ ``.json``), ``.png`` and ``.html``.

    The pairs are those the participant level plans with the same ``selection`` (each ``done``,
    ``failed`` with the reason from the participant's log, or ``missing``), plus any other complete
    pair in ``output_dir`` (for example from another ``--session-pairs``).

    Raises
    ------
    InputError
        Either folder is missing or the BIDS folder holds no ``sub-*`` folder.

    Examples
    --------
    >>> group = run_group_level("bids", "bids/derivatives/msnewlesion")  # doctest: +SKIP
    >>> group.table[["participant_id", "followup_session_id", "new_lesion_count"]]  # doctest: +SKIP
    """
    selection = selection or BidsSelection()
    bids_dir = _check_bids_dir(bids_dir)
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise InputError(f"output folder not found: {output_dir} (run the participant level first)")
    plans = plan_dataset(bids_dir, selection)
    selected = set(selection.participant_labels) if selection.participant_labels else None
    table = pd.DataFrame(_group_rows(output_dir, plans, selected), columns=list(GROUP_COLUMNS))
    for column in ("new_lesion_count", "baseline_lesion_count", "followup_lesion_count"):
        table[column] = table[column].astype("Int64")
    outputs = {key: output_dir / name for key, name in GROUP_OUTPUT_NAMES.items()}
    write_text(outputs["table"], table.to_csv(sep="\t", index=False, na_rep="n/a"))
    write_json(
        outputs["sidecar"],
        {
            column: {"Description": text} | ({"Units": "mm^3"} if column.endswith("_mm3") else {})
            for column, text in GROUP_COLUMNS.items()
        },
    )
    _group_plot(table, outputs["plot"])
    write_text(outputs["html"], _group_html(table, outputs["plot"].name))
    return GroupResult(table, outputs)
