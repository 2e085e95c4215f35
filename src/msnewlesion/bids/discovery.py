"""Discovery: each participant's FLAIR per session, the sessions in time order, and the pairs to compare.

A session's FLAIR is ``ses-<s>/anat/sub-<p>_ses-<s>[_…]_FLAIR.nii[.gz]``; sessions are ordered by
acquisition time from ``*_scans.tsv`` or ``*_sessions.tsv`` when every session has one, else by
session label, and paired each with the one before it (``consecutive``) or each with the first
(``first``). See :func:`plan_participant` and ``docs/bids.md``.
"""

from __future__ import annotations

import csv
import datetime as dt
import fnmatch
import itertools
import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from msnewlesion.errors import InputError, parameter
from msnewlesion.io import check_output_location, quiet_nibabel
from msnewlesion.settings import SESSION_PAIRINGS, check_choice

__all__ = [
    "BidsSelection",
    "ParticipantPlan",
    "SessionPair",
    "SessionScan",
    "check_dataset",
    "find_participants",
    "normalize_participant_label",
    "plan_dataset",
    "plan_participant",
]

#: The name under which BIDS URIs in sidecars refer to the raw dataset (``DatasetLinks``).
RAW_DATASET = "raw"
FLAIR_SUFFIXES = ("_FLAIR.nii.gz", "_FLAIR.nii")
_LABEL = re.compile(r"[A-Za-z0-9]+")


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
        check_choice("session_pairs", self.session_pairs, SESSION_PAIRINGS)
        if self.flair_pattern is not None and not self.flair_pattern.strip():
            raise InputError(
                f"{parameter('flair_pattern')} is empty: give a glob such as '*_acq-3D_*', or leave it out"
            )


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
            zooms = cast(nib.Nifti1Image, nib.load(str(path))).header.get_zooms()[:3]
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
        f"then the finest voxels, then the highest run) over {others}; {parameter('flair_pattern')} chooses otherwise"
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
                    f"ses-{session}: no FLAIR matches {parameter('flair_pattern')} {selection.flair_pattern!r} "
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
        name, flair_entities = _choose_flair(
            session, candidates, acquisitions, folder / f"ses-{session}" / "anat", plan.notes
        )
        scans.append(
            SessionScan(
                participant=participant,
                session=session,
                path=folder / f"ses-{session}" / "anat" / name,
                relative_path=f"sub-{participant}/ses-{session}/anat/{name}",
                entities=flair_entities,
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
