"""``msnewlesion bids``: BIDS-App batch processing, the participant and group levels."""

import json
from collections.abc import Collection, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from msnewlesion.cli.common import (
    Command,
    choice,
    cli_errors,
    err_console,
    fail,
    info,
    progress_bars,
    warn,
)
from msnewlesion.cli.predict import (
    BATCH_SIZE,
    CONNECTIVITY,
    DEVICE,
    ENGINE,
    ENLARGING_MIN_MM3,
    ENLARGING_RELATIVE,
    MIN_BRIGHTENING,
    MIN_LESION_VOLUME,
    MODEL,
    NO_BIAS_CORRECTION,
    NO_PREPROCESS,
    OVERLAP,
    PAPER_MODE,
    PRECISION,
    SAVE_PROBABILITIES,
    SKULL_STRIP,
    SKULL_STRIP_MODE,
    SPACE,
    THRESHOLD,
    TRANSFORM,
    TTA,
    predict_options,
)
from msnewlesion.settings import SESSION_PAIRINGS

LABEL_OPTIONS = ("--participant-label", "--participant_label")
#: predict options that describe one pair and mean nothing for a dataset (bids skips complete pairs itself).
PAIR_ONLY_OPTIONS = ("--output", "-o", "--skip-existing", "--brain-mask")
_POSITIONALS = 3  # BIDS_DIR OUTPUT_DIR LEVEL


class Level(str, Enum):
    participant = "participant"
    group = "group"


def spread_participant_labels(
    args: Sequence[str], value_options: Collection[str], positionals: int = _POSITIONALS
) -> list[str]:
    """Rewrite the BIDS-App form ``--participant_label 01 02`` as ``--participant-label 01 --participant-label 02``.

    Labels run until the next option. When fewer than ``positionals`` arguments would be left
    outside the labels (``--participant-label 01 02 BIDS OUT participant``), the last words of the
    labels are given back as the positional arguments.

    Examples
    --------
    >>> spread_participant_labels(["bids", "out", "participant", "--participant_label", "01", "02"], set())
    ['bids', 'out', 'participant', '--participant-label', '01', '--participant-label', '02']
    """
    items: list[tuple[str, list[str]]] = []
    tail: list[str] = []
    index = 0
    while index < len(args):
        token = args[index]
        if token == "--":
            tail = list(args[index:])
            break
        name, equals, value = token.partition("=")
        if name in LABEL_OPTIONS:
            labels = [value] if equals else []
            index += 1
            while index < len(args) and not args[index].startswith("-"):
                labels.append(args[index])
                index += 1
            items.append(("labels", labels))
            continue
        if token.startswith("-") and len(token) > 1:
            takes_value = name in value_options and not equals and index + 1 < len(args)
            items.append(("option", list(args[index : index + 1 + takes_value])))
            index += 1 + takes_value
            continue
        items.append(("free", [token]))
        index += 1
    missing = positionals - sum(len(t) for kind, t in items if kind == "free") - max(len(tail) - 1, 0)
    for position in range(len(items) - 1, -1, -1):
        kind, tokens = items[position]
        if missing <= 0:
            break
        if kind != "labels":
            continue
        given = min(missing, len(tokens))
        items[position] = ("labels", tokens[: len(tokens) - given])
        items.insert(position + 1, ("free", tokens[len(tokens) - given :]))
        missing -= given
    spread: list[str] = []
    for kind, tokens in items:
        if kind == "labels":
            spread += [LABEL_OPTIONS[0]] if not tokens else [t for label in tokens for t in (LABEL_OPTIONS[0], label)]
        else:
            spread += tokens
    return spread + tail


class BidsCommand(Command):
    """Accepts several participant labels after one ``--participant-label``, as BIDS Apps do."""

    # typer.Context is click's Context, which typer vendors under another name: mypy sees two classes.
    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        value_options = {
            name
            for param in self.params
            if param.param_type_name == "option" and not getattr(param, "is_flag", False)
            and not getattr(param, "count", False)
            for name in param.opts
        }
        return super().parse_args(ctx, spread_participant_labels(args, value_options))


def _print_message(level: str, message: str) -> None:
    if level == "error":
        err_console.print(f"[bold red]failed:[/] {escape(message)}", highlight=False, soft_wrap=True)
    elif level == "warning":
        warn(message)


def _group(bids_dir: Path, output_dir: Path, selection: Any, as_json: bool) -> None:
    from msnewlesion.bids import run_group_level

    group = run_group_level(bids_dir, output_dir, selection)
    table = group.table
    if as_json:
        typer.echo(table.astype(object).where(table.notna(), None).to_json(orient="records", indent=2))
    counts = table["status"].value_counts()
    info(
        f"{len(table)} pairs ({counts.get('done', 0)} done, {counts.get('failed', 0)} failed, "
        f"{counts.get('missing', 0)} missing) → {group.outputs['table']}, {group.outputs['plot'].name}, "
        f"{group.outputs['html'].name}"
    )
    for row in group.incomplete.itertuples():
        pair = f"{row.participant_id} {row.baseline_session_id} -> {row.followup_session_id}"
        warn(f"{pair}: {row.status} ({row.reason})")
    if not counts.get("done", 0):
        # A group table without a single result is no success, even though it was written.
        raise fail(
            f"none of the {len(table)} pairs in {output_dir} has results: run the participant level first, "
            "or see logs/ for why it failed"
        )


@cli_errors
def bids(
    bids_dir: Path = typer.Argument(..., help="Root of the BIDS dataset (only read)."),
    output_dir: Path = typer.Argument(
        ..., help="The derivative dataset, for example BIDS_DIR/derivatives/msnewlesion (created if needed)."
    ),
    level: Level = typer.Argument(
        ...,
        case_sensitive=False,
        help="participant: predict every session pair of the selected participants. "
        "group: collect every pair into one table, a plot and an HTML page.",
    ),
    participant_label: Optional[list[str]] = typer.Option(
        None,
        LABEL_OPTIONS[0],  # BidsCommand reads the BIDS-App spelling --participant_label as this one
        help="Participants to process, with or without sub- (several after one flag: 01 02 03). Default: all.",
    ),
    session_pairs: str = typer.Option(
        "consecutive",
        "--session-pairs",
        **choice(SESSION_PAIRINGS),
        help="consecutive: each session against the one before it; first: each session against the first.",
    ),
    flair_pattern: Optional[str] = typer.Option(
        None,
        "--flair-pattern",
        help="Keep only FLAIRs whose file name matches this glob, such as `*_acq-3D_*` (docs/bids.md "
        "gives the rule among several).",
    ),
    session_order: Optional[str] = typer.Option(
        None,
        "--session-order",
        metavar="LABEL,LABEL,...",
        help="Session labels in time order, such as pre,post, for every participant: needed when sessions have no "
        "acq_time and their labels follow no known order (numbers, dates, pre/post, baseline/follow-up; docs/bids.md).",
    ),
    model: str = MODEL,
    no_preprocess: bool = NO_PREPROCESS,
    skull_strip: str = SKULL_STRIP,
    skull_strip_mode: str = SKULL_STRIP_MODE,
    space: str = SPACE,
    transform: Optional[str] = TRANSFORM,
    no_bias_correction: bool = NO_BIAS_CORRECTION,
    overlap: float = OVERLAP,
    batch_size: int = BATCH_SIZE,
    tta: bool = TTA,
    precision: str = PRECISION,
    engine: str = ENGINE,
    paper_mode: bool = PAPER_MODE,
    threshold: Optional[float] = THRESHOLD,
    min_lesion_volume: float = MIN_LESION_VOLUME,
    connectivity: str = CONNECTIVITY,
    device: str = DEVICE,
    save_probabilities: bool = SAVE_PROBABILITIES,
    min_brightening: Optional[float] = MIN_BRIGHTENING,
    enlarging_relative: float = ENLARGING_RELATIVE,
    enlarging_min_mm3: float = ENLARGING_MIN_MM3,
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo pairs whose results are complete already."),
    as_json: bool = typer.Option(
        False, "--json", help="Print every pair and its status (participant) or the group table (group) as JSON."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Find new lesions in every session pair of a BIDS dataset (a BIDS App).

    **participant** level: for each participant, the FLAIR of every session
    (`sub-*/ses-*/anat/*_FLAIR.nii.gz`), sessions ordered by `acq_time` (`*_scans.tsv`, `*_sessions.tsv` or
    the JSON sidecars) when every session has one, else by what the labels say (numbers, dates, pre/post,
    baseline/follow-up; labels that say nothing need `--session-order`), then each consecutive pair (or
    each session against the first) goes through `msnewlesion predict` with the model loaded once; every
    predict option is
    accepted. Writes a BIDS derivative dataset: the new-lesion mask on the later session's grid
    (`sub-01_ses-02_space-orig_label-newlesion_desc-since01_mask.nii.gz`), each session's all-lesion
    mask, the lesion table, the summary (written last: a pair is complete once it is there) and the
    QC picture. Complete pairs are skipped, so a rerun resumes. A pair that fails is logged with its
    reason (`OUTPUT_DIR/logs/sub-<label>.log`, and a line here), the others go on, and the exit code
    is 1. Run one job per participant to go parallel: they can share OUTPUT_DIR.

    **group** level: `group_newlesions.tsv` (every pair: sessions, days between scans, new-lesion
    count and volume, all-lesion volumes, status), `group_newlesions.png` and `group_newlesions.html`
    (with each pair's QC picture). Naming and rules: docs/bids.md.

    **Examples**

        msnewlesion bids /data/cohort /data/cohort/derivatives/msnewlesion participant --participant-label 01 02

        msnewlesion bids /data/cohort /data/cohort/derivatives/msnewlesion participant --session-pairs first

        msnewlesion bids /data/cohort /data/cohort/derivatives/msnewlesion group
    """
    from msnewlesion.bids import BidsSelection, check_dataset, run_participant_level

    selection = BidsSelection(
        participant_labels=participant_label or (),
        session_pairs=session_pairs,
        flair_pattern=flair_pattern,
        session_order=(session_order,) if session_order else (),
    )
    if level == Level.group:
        _group(bids_dir, output_dir, selection, as_json)
        return
    options = predict_options(
        no_preprocess=no_preprocess,
        skull_strip=skull_strip,
        skull_strip_mode=skull_strip_mode,
        brain_mask=None,  # one mask cannot fit a whole cohort
        space=space,
        transform=transform,
        no_bias_correction=no_bias_correction,
        overlap=overlap,
        batch_size=batch_size,
        tta=tta,
        precision=precision,
        engine=engine,
        paper_mode=paper_mode,
        threshold=threshold,
        min_lesion_volume=min_lesion_volume,
        connectivity=connectivity,
        device=device,
        save_probabilities=save_probabilities,
        min_brightening=min_brightening,
        enlarging_relative=enlarging_relative,
        enlarging_min_mm3=enlarging_min_mm3,
    )
    check_dataset(bids_dir, output_dir)  # a wrong BIDS or output folder fails before the model is loaded
    from msnewlesion.predict import open_model

    with progress_bars(not quiet) as progress:
        loaded, provenance = open_model(model, device=device, progress=progress)
        result = run_participant_level(
            bids_dir,
            output_dir,
            loaded,
            provenance=provenance,
            options=options,
            selection=selection,
            overwrite=overwrite,
            progress=progress,
            on_message=_print_message,
        )
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
    counts = result.counts()
    info(
        f"{len(result.pairs)} pair{'s' if len(result.pairs) != 1 else ''}: {counts['done']} done, "
        f"{counts['skipped']} complete already, {counts['failed']} failed → {output_dir}"
    )
    if result.failed:
        err_console.print(
            f"[bold red]error:[/] something failed; reasons in {escape(str(Path(output_dir) / 'logs'))} "
            "(rerun to retry: complete pairs are skipped)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)
