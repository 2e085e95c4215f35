"""The group level: every pair of the dataset in one table, a plot and an HTML page."""

from __future__ import annotations

import html
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from msnewlesion import __version__
from msnewlesion.bids.discovery import BidsSelection, ParticipantPlan, _check_bids_dir, _natural_key, plan_dataset
from msnewlesion.bids.naming import pair_is_complete, pair_outputs, read_json, relative_path
from msnewlesion.bids.participant import LOG_FOLDER
from msnewlesion.errors import InputError
from msnewlesion.io import atomic_path, write_json, write_text

__all__ = ["GROUP_COLUMNS", "GROUP_OUTPUT_NAMES", "GroupResult", "run_group_level"]

GROUP_OUTPUT_NAMES = {
    "table": "group_newlesions.tsv",
    "sidecar": "group_newlesions.json",
    "plot": "group_newlesions.png",
    "html": "group_newlesions.html",
    "timeline_plot": "group_timelines.png",
}

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
    "new_or_enlarging_count": "Lesions new or enlarging at the follow-up (the trials' endpoint; docs/predict.md).",
    "change_new_count": "Lesions classified new (a new lesion joined to an existing one counts as its growth).",
    "change_enlarging_count": "Lesions at both sessions that grew by the enlarging rule (summary.json has it).",
    "change_stable_count": "Lesions at both sessions that neither grew nor shrank by the rule.",
    "change_shrinking_count": "Lesions at both sessions that shrank by the rule backwards.",
    "change_resolved_count": "Lesions of the baseline session that are gone at the follow-up.",
    "new_lesion_mask": "The new-lesion mask, relative to the derivative dataset.",
    "lesion_changes": "The change classes on the follow-up's grid (dseg), relative to the derivative dataset.",
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
    status = read_json(output_dir / LOG_FOLDER / f"sub-{participant}_status.json") or {}
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
        **_change_counts(summary),
        "new_lesion_mask": listed.get("new_lesions"),
        "lesion_changes": listed.get("lesion_changes"),
        "qc": listed.get("qc"),
        "summary": relative_path(summary_path, output_dir),
        "reason": None,
    }


#: The group table's count columns of the change classes, by their key in summary.json's ``lesion_changes``.
CHANGE_COUNT_COLUMNS = {
    "new_or_enlarging_count": "new_or_enlarging",
    "change_new_count": "new",
    "change_enlarging_count": "enlarging",
    "change_stable_count": "stable",
    "change_shrinking_count": "shrinking",
    "change_resolved_count": "resolved",
}
COUNT_COLUMNS = ("new_lesion_count", "baseline_lesion_count", "followup_lesion_count", *CHANGE_COUNT_COLUMNS)

#: A participant with this many sessions or more gets a timeline.
TIMELINE_MIN_SESSIONS = 3
TIMELINE_COLUMNS = {
    "participant_id": "The participant.",
    "session_id": "The session; the first is the baseline of its first pair.",
    "acq_time": "Acquisition time of the session's FLAIR.",
    "since_session_id": "The earlier session of the pair that describes this one (n/a for the first session).",
    "lesion_count": "Number of lesions at the session.",
    "lesion_volume_mm3": "Total lesion volume at the session, mm³, on its FLAIR's grid.",
    **{column: text for column, text in GROUP_COLUMNS.items() if column in CHANGE_COUNT_COLUMNS},
}


def _change_counts(summary: dict[str, Any]) -> dict[str, Any]:
    counts = summary.get("lesion_changes", {}).get("counts", {})
    return {column: counts.get(key) for column, key in CHANGE_COUNT_COLUMNS.items()}


def timelines(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The timeline of every participant with :data:`TIMELINE_MIN_SESSIONS` sessions or more in ``table``.

    One row per session, in time order: the session's lesion count and volume, and the change counts of the
    pair that ends there (``since_session_id``). The first session's row comes from the baseline side of its
    first pair. Built from the done pairs only; where two pairs end at one session, the first in the table's
    order (consecutive pairs before pairs against the first session, by their baseline) describes it.
    """
    done = table[table["status"] == "done"]
    result = {}
    for participant, rows in done.groupby("participant_id", sort=False):
        sessions: dict[str, dict[str, Any]] = {}
        for row in rows.to_dict("records"):
            baseline = row["baseline_session_id"]
            if baseline not in sessions:
                sessions[baseline] = {
                    "participant_id": participant,
                    "session_id": baseline,
                    "acq_time": row["baseline_acq_time"],
                    "since_session_id": None,
                    "lesion_count": row["baseline_lesion_count"],
                    "lesion_volume_mm3": row["baseline_lesion_volume_mm3"],
                    **dict.fromkeys(CHANGE_COUNT_COLUMNS),
                }
            followup = row["followup_session_id"]
            if followup not in sessions or sessions[followup]["since_session_id"] is None:
                sessions[followup] = {
                    "participant_id": participant,
                    "session_id": followup,
                    "acq_time": row["followup_acq_time"],
                    "since_session_id": baseline,
                    "lesion_count": row["followup_lesion_count"],
                    "lesion_volume_mm3": row["followup_lesion_volume_mm3"],
                    **{column: row[column] for column in CHANGE_COUNT_COLUMNS},
                }
        if len(sessions) < TIMELINE_MIN_SESSIONS:
            continue
        # The first session is nobody's follow-up; the others follow their pairs' time order.
        ordered = [s for s in sessions.values() if s["since_session_id"] is None] + [
            s for s in sessions.values() if s["since_session_id"] is not None
        ]
        timeline = pd.DataFrame(ordered, columns=list(TIMELINE_COLUMNS))
        for column in ("lesion_count", *CHANGE_COUNT_COLUMNS):
            timeline[column] = timeline[column].astype("Int64")
        result[str(participant)] = timeline
    return result


def timeline_path(output_dir: Path, participant_id: str) -> Path:
    """Where a participant's timeline TSV goes: ``sub-<label>/sub-<label>_timeline.tsv``."""
    return output_dir / participant_id / f"{participant_id}_timeline.tsv"


def _timeline_plot(participant_timelines: dict[str, pd.DataFrame], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from msnewlesion.lesions import CHANGE_COLOURS

    count = len(participant_timelines)
    figure, axes = plt.subplots(count, 1, figsize=(7.0, 2.8 * count), squeeze=False)
    for axis, (participant, timeline) in zip(axes[:, 0], participant_timelines.items(), strict=True):
        x = range(len(timeline))
        volume_axis = axis.twinx()
        volume_axis.plot(x, timeline["lesion_volume_mm3"].astype(float), "k-o", markersize=4, label="lesion volume")
        volume_axis.set_ylabel("lesion volume (mm³)", fontsize=8)
        bottom = [0.0] * len(timeline)
        for name in ("new", "enlarging", "shrinking", "resolved"):
            heights = [0.0 if pd.isna(v) else float(v) for v in timeline[f"change_{name}_count"]]
            colour = tuple(c / 255 for c in CHANGE_COLOURS[name])
            axis.bar(x, heights, bottom=bottom, width=0.5, color=colour, label=name)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        axis.set_xticks(list(x))
        axis.set_xticklabels(timeline["session_id"], fontsize=8)
        axis.set_ylabel("lesions changed", fontsize=8)
        axis.set_title(f"{participant}: changes since the session before, and the lesion volume", fontsize=9)
        axis.legend(loc="upper left", fontsize=7, ncol=4)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    with atomic_path(path) as temporary:
        temporary.write_bytes(buffer.getvalue())


def _group_rows(output_dir: Path, plans: list[ParticipantPlan], selected: set[str] | None) -> list[dict[str, Any]]:
    rows = []
    seen: set[Path] = set()
    for plan in plans:
        reasons = _status_reasons(output_dir, plan.participant)
        for pair in plan.pairs:
            summary_path = pair_outputs(output_dir, pair)["summary"]
            seen.add(summary_path)
            if pair_is_complete(output_dir, pair):
                rows.append(_row_from_summary(output_dir, read_json(summary_path) or {}, summary_path))
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
        summary = read_json(summary_path)
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
    with atomic_path(path) as temporary:
        temporary.write_bytes(buffer.getvalue())


_CHANGE_NAMES = ("new", "enlarging", "stable", "shrinking", "resolved")


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _cell(value: Any) -> str:
    if _missing(value):
        return "n/a"
    if isinstance(value, float):
        return f"{value:g}"
    return html.escape(str(value))


def _group_html(table: pd.DataFrame, plot_name: str, timeline_names: dict[str, str] | None = None) -> str:
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
            f"<td>{_cell(row['new_or_enlarging_count'])}</td>"
            + "".join(f"<td>{_cell(row[f'change_{name}_count'])}</td>" for name in _CHANGE_NAMES)
            + f"""<td>{picture}</td><td>{summary}</td><td>{_cell(row["reason"]) if row["reason"] else ""}</td></tr>"""
        )
    timeline_section = ""
    if timeline_names:
        links = ", ".join(
            f'<a href="{html.escape(tsv)}">{html.escape(participant)}</a>'
            for participant, tsv in timeline_names.items()
        )
        timeline_section = (
            f"<h2>Timelines (participants with {TIMELINE_MIN_SESSIONS} or more sessions)</h2>\n"
            f"<p>Tables: {links}.</p>\n"
            f'<p><img src="{html.escape(GROUP_OUTPUT_NAMES["timeline_plot"])}" alt="timelines" '
            'style="width: auto; max-width: 100%"></p>'
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
<th>new or enlarging</th><th>new</th><th>enlarging</th><th>stable</th><th>shrinking</th><th>resolved</th>
<th>QC</th><th>details</th><th>reason</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
{timeline_section}
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
    for column in COUNT_COLUMNS:
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
    participant_timelines = timelines(table)
    timeline_names = {}
    for participant, timeline in participant_timelines.items():
        path = timeline_path(output_dir, participant)
        write_text(path, timeline.to_csv(sep="\t", index=False, na_rep="n/a"))
        outputs[f"timeline_{participant}"] = path
        timeline_names[participant] = relative_path(path, output_dir)
    if participant_timelines:
        _timeline_plot(participant_timelines, outputs["timeline_plot"])
    else:
        del outputs["timeline_plot"]
    write_text(outputs["html"], _group_html(table, outputs["plot"].name, timeline_names))
    return GroupResult(table, outputs)
