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

Modules: :mod:`~msnewlesion.bids.discovery` (sessions, FLAIRs and pairs),
:mod:`~msnewlesion.bids.naming` (derivative names, complete pairs),
:mod:`~msnewlesion.bids.description` (``dataset_description.json``),
:mod:`~msnewlesion.bids.participant` and :mod:`~msnewlesion.bids.group` (the two levels).
"""

from msnewlesion.bids.description import BIDSIGNORE, write_dataset_description
from msnewlesion.bids.discovery import (
    BidsSelection,
    ParticipantPlan,
    SessionPair,
    SessionScan,
    check_dataset,
    find_participants,
    normalize_participant_label,
    plan_dataset,
    plan_participant,
)
from msnewlesion.bids.group import GROUP_COLUMNS, GROUP_OUTPUT_NAMES, GroupResult, run_group_level
from msnewlesion.bids.naming import pair_is_complete, pair_outputs
from msnewlesion.bids.participant import (
    MessageCallback,
    PairResult,
    ParticipantLevelResult,
    ParticipantResult,
    run_participant_level,
)

__all__ = [
    "BIDSIGNORE",
    "GROUP_COLUMNS",
    "GROUP_OUTPUT_NAMES",
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
