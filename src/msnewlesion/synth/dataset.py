"""Many synthetic pairs from one scan, written as folders plus a training manifest."""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msnewlesion.errors import InputError, OutputExistsError, parameter
from msnewlesion.io import check_same_grid, load_mask, load_volume, write_text
from msnewlesion.progress import ProgressCallback, report
from msnewlesion.settings import SPLITS
from msnewlesion.synth.library import LesionLibrary, load_lesion_library
from msnewlesion.synth.pair import PAIR_FILES, SynthOptions, save_synthetic_pair, synthesize_pair
from msnewlesion.synth.tissue import fit_tissue_model
from msnewlesion.training.manifest import COLUMNS, LESION_COLUMNS, read_manifest_table

__all__ = [
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "PairSummary",
    "default_subject",
    "update_manifest",
    "write_synthetic_pairs",
]

#: Columns of the training manifest (see docs/training.md).
MANIFEST_COLUMNS = COLUMNS + LESION_COLUMNS
MANIFEST_NAME = "manifest.csv"


@dataclass(frozen=True)
class PairSummary:
    """What one written pair holds."""

    subject: str
    directory: Path
    seed: int
    removed: int
    added: int
    removed_requested: int
    added_requested: int
    new_lesions: int
    new_lesion_volume_mm3: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "directory": str(self.directory),
            "seed": self.seed,
            "removed": self.removed,
            "added": self.added,
            "removed_requested": self.removed_requested,
            "added_requested": self.added_requested,
            "new_lesions": self.new_lesions,
            "new_lesion_volume_mm3": self.new_lesion_volume_mm3,
        }


def default_subject(flair_path: str | os.PathLike[str]) -> str:
    """A subject name from a FLAIR's file name: the name without its extension and a trailing ``flair``;
    the folder's name when nothing is left (``patient07/flair.nii.gz`` → ``patient07``).

    Examples
    --------
    >>> default_subject("data/patient07/flair.nii.gz")
    'patient07'
    >>> default_subject("sub-01_ses-01_FLAIR.nii.gz")
    'sub-01_ses-01'
    """
    path = Path(flair_path)
    name = re.sub(r"\.nii(\.gz)?$", "", path.name)
    name = re.sub(r"[_\-.]?flair$", "", name, flags=re.IGNORECASE)
    if not name:
        name = path.resolve().parent.name or "scan"
    return name


def _read_manifest(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and rows of an existing manifest (refused unless it is a training manifest)."""
    try:
        return read_manifest_table(path)
    except InputError as error:
        raise InputError(
            f"{path} exists but is not a training manifest ({error}): choose another output folder or move it away"
        ) from None


def update_manifest(path: str | os.PathLike[str], rows: Sequence[dict[str, str]]) -> Path:
    """Add rows to a training manifest, creating it if needed.

    Existing rows are kept in their order, with any extra columns they have; a row whose subject is among the
    new rows is replaced in place, the other new rows are appended. The file is rewritten atomically.

    Raises
    ------
    InputError
        The file exists but is not a manifest (it lacks a required column).

    Examples
    --------
    >>> update_manifest("synthetic/manifest.csv", [{"subject": "p07-synth000", "kind": "longitudinal",
    ...     "baseline": "p07-synth000/baseline.nii.gz", "followup": "p07-synth000/followup.nii.gz",
    ...     "label": "p07-synth000/new_lesions.nii.gz", "brain_mask": "", "split": "train"}])  # doctest: +SKIP
    PosixPath('synthetic/manifest.csv')
    """
    path = Path(path)
    columns, existing = _read_manifest(path) if path.exists() else ([], [])
    fieldnames = list(MANIFEST_COLUMNS) + [column for column in columns if column not in MANIFEST_COLUMNS]
    incoming = {row["subject"]: row for row in rows}
    merged = []
    for row in existing:
        replacement = incoming.pop(row.get("subject", ""), None)
        merged.append(replacement if replacement is not None else row)
    merged.extend(row for row in rows if row["subject"] in incoming)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    for row in merged:
        writer.writerow({column: row.get(column, "") for column in fieldnames})
    return write_text(path, buffer.getvalue())


def write_synthetic_pairs(
    flair_path: str | os.PathLike[str],
    lesions_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    options: SynthOptions,
    *,
    library: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    pairs: int = 1,
    start: int = 0,
    subject: str | None = None,
    split: str = "train",
    brain_mask_path: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> list[PairSummary]:
    """Write ``pairs`` synthetic pairs of one scan and list them in ``OUTPUT_DIR/manifest.csv``.

    Pair ``i`` (``start ≤ i < start + pairs``) goes to ``OUTPUT_DIR/<subject>-synth<i:03d>/`` and is made with
    seed ``options.seed + i``, so any pair can be rebuilt alone and a later run with a higher ``start`` extends
    the same series. The scan's tissue model and the library are prepared once. The manifest is updated after
    each pair, so an interrupted run lists exactly the pairs that are complete.

    Parameters
    ----------
    flair_path, lesions_path : path-like
        The skull-stripped FLAIR and its all-lesion mask.
    output_dir : path-like
        Where pair folders and ``manifest.csv`` go.
    options : SynthOptions
        The seed in it is that of pair 0.
    library : path-like or sequence of path-like, optional
        Folders of lesion masks and mask files; needed when lesions are added.
    pairs, start : int
        How many pairs, and the index of the first.
    subject : str, optional
        Prefix of the pair names; by default :func:`default_subject` of the FLAIR.
    split : str
        ``train`` or ``val``, for the manifest.
    brain_mask_path : path-like, optional
        The brain, when the FLAIR's non-zero voxels are not it.
    overwrite : bool
        Replace existing pair folders (and their manifest rows).
    progress : ProgressCallback, optional
        Called once per pair.

    Returns
    -------
    list of PairSummary

    Raises
    ------
    OutputExistsError
        A pair folder exists and ``overwrite`` is false (checked before any work).
    InputError, GeometryError
        Bad inputs (see :func:`synthesize_pair`) or arguments.

    Examples
    --------
    >>> write_synthetic_pairs("patient07/flair.nii.gz", "patient07/lesions.nii.gz", "synthetic",
    ...                       SynthOptions(seed=1), library="lesion_masks", pairs=10)  # doctest: +SKIP
    """
    if pairs < 1:
        raise InputError(f"the number of pairs must be at least 1, got {pairs}")
    if start < 0:
        raise InputError(f"the first pair index must be ≥ 0, got {start}")
    if split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    subject = subject if subject is not None else default_subject(flair_path)
    if not subject or re.search(r"[\\/,\s]", subject):
        raise InputError(f"the subject name {subject!r} must be non-empty, without spaces, commas or slashes")
    if (options.added_lesions > 0 or options.enlarged_lesions > 0 or options.shrinking_lesions > 0) and library is None:
        raise InputError(
            f"lesions are to be added but no lesion library was given: pass {parameter('library')} with a folder "
            f"of lesion masks, or add none ({parameter('added_lesions', 0)})"
        )

    output_dir = Path(output_dir)
    names = [f"{subject}-synth{index:03d}" for index in range(start, start + pairs)]
    existing = [name for name in names if (output_dir / name).exists()]
    if existing and not overwrite:
        listed = ", ".join(existing[:3]) + (" …" if len(existing) > 3 else "")
        raise OutputExistsError(
            f"pair folders already exist in {output_dir} ({listed}); pass {parameter('overwrite', True)} to replace "
            f"them, or {parameter('start')} to continue the series after them"
        )
    manifest_path = output_dir / MANIFEST_NAME
    if manifest_path.exists():
        _read_manifest(manifest_path)

    flair = load_volume(flair_path, what="FLAIR")
    lesions = load_mask(lesions_path, what="lesion mask")
    check_same_grid(flair, lesions, what_a="FLAIR", what_b="lesion mask")
    brain_mask = load_mask(brain_mask_path, what="brain mask") if brain_mask_path is not None else None
    lesion_library = None
    if library is not None and (
        options.added_lesions > 0 or options.enlarged_lesions > 0 or options.shrinking_lesions > 0
    ):
        volumes = load_lesion_library(library, progress=progress)
        for volume in volumes:
            check_same_grid(flair, volume, what_a="FLAIR", what_b=f"library lesion mask {volume.name}")
        lesion_library = LesionLibrary.from_volumes(volumes)
    tissue = fit_tissue_model(flair, lesions, brain_mask)

    summaries = []
    report(progress, "synthesising pairs", 0, pairs)
    for number, (index, name) in enumerate(zip(range(start, start + pairs), names, strict=True)):
        pair_options = options.replace(seed=options.seed + index)
        pair = synthesize_pair(flair, lesions, lesion_library or [], pair_options, brain_mask=brain_mask, tissue=tissue)
        pair.record["pair"] = {"subject": name, "index": index, "split": split}
        directory = output_dir / name
        save_synthetic_pair(pair, directory, overwrite=overwrite)
        update_manifest(
            manifest_path,
            [
                {
                    "subject": name,
                    "kind": "longitudinal",
                    "baseline": f"{name}/{PAIR_FILES['baseline']}",
                    "followup": f"{name}/{PAIR_FILES['followup']}",
                    "label": f"{name}/{PAIR_FILES['new_lesions']}",
                    "brain_mask": "",
                    "split": split,
                    "baseline_lesions": f"{name}/{PAIR_FILES['lesions_baseline']}",
                    "followup_lesions": f"{name}/{PAIR_FILES['lesions_followup']}",
                }
            ],
        )
        record = pair.record
        summaries.append(
            PairSummary(
                subject=name,
                directory=directory,
                seed=pair_options.seed,
                removed=record["removed"]["made"],
                added=record["added"]["made"],
                removed_requested=record["removed"]["requested"],
                added_requested=record["added"]["requested"],
                new_lesions=record["new_lesions"]["count"],
                new_lesion_volume_mm3=record["new_lesions"]["volume_mm3"],
            )
        )
        report(progress, "synthesising pairs", number + 1, pairs)
    return summaries
