"""The training manifest: a CSV listing every training and validation sample.

Columns: ``subject, kind, baseline, followup, label, brain_mask, split`` and, optionally,
``baseline_lesions, followup_lesions``.

- ``kind`` is ``longitudinal`` (a baseline and a follow-up on one grid, with a NEW-lesion label) or
  ``single`` (one scan in ``baseline``, ``followup`` empty, with an ALL-lesion label).
- ``baseline_lesions`` and ``followup_lesions`` (longitudinal rows only, optional): ALL-lesion masks of
  each time point, when known (synthetic pairs know them exactly). They supervise the two all-lesion
  heads on that pair as well.
- ``brain_mask`` is optional; without it the brain is the image's nonzero voxels.
- ``split`` is ``train`` or ``val``.
- Relative paths are relative to the manifest's folder.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np

from msnewlesion.errors import InputError
from msnewlesion.io import quiet_nibabel, read_error_reason, read_voxels
from msnewlesion.progress import ProgressCallback, report
from msnewlesion.settings import SPLITS

__all__ = [
    "COLUMNS",
    "KINDS",
    "LESION_COLUMNS",
    "Manifest",
    "ManifestRow",
    "check_manifest",
    "read_manifest",
    "read_manifest_table",
    "validate_manifest",
]

COLUMNS = ("subject", "kind", "baseline", "followup", "label", "brain_mask", "split")
#: Optional columns: the all-lesion masks of a longitudinal pair's two time points.
LESION_COLUMNS = ("baseline_lesions", "followup_lesions")
REQUIRED_COLUMNS = ("subject", "kind", "baseline", "label")
KINDS = ("longitudinal", "single")


@dataclass(frozen=True)
class ManifestRow:
    """One sample of the manifest, with paths made absolute."""

    line: int
    subject: str
    kind: str
    baseline: Path
    followup: Path | None
    label: Path
    brain_mask: Path | None
    split: str
    baseline_lesions: Path | None = None
    followup_lesions: Path | None = None

    @property
    def longitudinal(self) -> bool:
        return self.kind == "longitudinal"

    @property
    def has_all_lesion_labels(self) -> bool:
        """Whether this row supervises the all-lesion heads (single scans always do)."""
        return not self.longitudinal or (self.baseline_lesions is not None and self.followup_lesions is not None)

    def where(self) -> str:
        return f"line {self.line} ({self.subject})"


@dataclass(frozen=True)
class Manifest:
    path: Path
    rows: tuple[ManifestRow, ...]

    def split(self, name: str) -> list[ManifestRow]:
        return [row for row in self.rows if row.split == name]


def _resolve(value: str, root: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root / path)


def read_manifest_table(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and rows of a manifest as text, whitespace stripped (extra columns kept).

    Raises
    ------
    InputError
        The file cannot be read as CSV, or a required column is absent.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fieldnames = [name.strip() for name in (reader.fieldnames or [])]
            records = [{(k or "").strip(): (v or "").strip() for k, v in record.items()} for record in reader]
    except (OSError, csv.Error, UnicodeDecodeError) as error:
        raise InputError(f"could not read manifest {path}: {error}") from None
    missing = [column for column in REQUIRED_COLUMNS if column not in fieldnames]
    if missing:
        raise InputError(
            f"manifest {path} lacks the column(s) {', '.join(missing)}; expected the columns {', '.join(COLUMNS)}"
        )
    return fieldnames, records


def _parse_manifest(path: Path) -> tuple[Manifest, list[str], set[int]]:
    """The rows, the problems of their fields, and the lines whose files cannot be checked (empty fields)."""
    if not path.is_file():
        raise InputError(f"manifest not found: {path}")
    _, records = read_manifest_table(path)
    root = path.parent
    rows: list[ManifestRow] = []
    problems: list[str] = []
    incomplete: set[int] = set()
    lines_of: dict[str, list[int]] = {}
    for number, record in enumerate(records, start=2):
        subject = record.get("subject", "") or f"row{number}"
        lines_of.setdefault(subject, []).append(number)
        where = f"line {number} ({subject})"
        kind = record.get("kind", "").lower()
        split = (record.get("split", "") or "train").lower()
        if kind not in KINDS:
            problems.append(f"{where}: kind {kind!r} is not longitudinal or single")
        if split not in SPLITS:
            problems.append(f"{where}: split {split!r} is not train or val")
        for column in ("baseline", "label"):
            if not record.get(column):
                problems.append(f"{where}: {column} is empty")
                incomplete.add(number)
        followup = record.get("followup", "")
        if kind == "longitudinal" and not followup:
            problems.append(f"{where}: a longitudinal sample needs a follow-up image")
        if kind == "single" and followup:
            problems.append(f"{where}: a single sample has its one image in 'baseline' and an empty 'followup'")
        mask = record.get("brain_mask", "")
        lesion_masks = {column: record.get(column, "") for column in LESION_COLUMNS}
        if kind == "single" and any(lesion_masks.values()):
            problems.append(
                f"{where}: a single sample has its all-lesion mask in 'label'; "
                f"leave {' and '.join(LESION_COLUMNS)} empty"
            )
        elif sum(bool(value) for value in lesion_masks.values()) == 1:
            problems.append(f"{where}: give both {' and '.join(LESION_COLUMNS)}, or neither")
        rows.append(
            ManifestRow(
                line=number,
                subject=subject,
                kind=kind,
                baseline=_resolve(record.get("baseline", ""), root),
                followup=_resolve(followup, root) if followup else None,
                label=_resolve(record.get("label", ""), root),
                brain_mask=_resolve(mask, root) if mask else None,
                split=split,
                **{
                    column: _resolve(value, root) if value and kind == "longitudinal" else None
                    for column, value in lesion_masks.items()
                },
            )
        )
    for subject, lines in lines_of.items():
        if len(lines) > 1:
            # A sample listed twice weighs double, and one in both splits is validated on what it trained on.
            problems.append(
                f"subject {subject!r} is on lines {', '.join(map(str, lines))}: give each sample its own subject name"
            )
    if not rows:
        problems.append("the manifest has no rows")
    return Manifest(path=path, rows=tuple(rows)), problems, incomplete


def read_manifest(path: str | Path) -> Manifest:
    """Parse a manifest, listing every structural problem at once.

    Raises
    ------
    InputError
        The file is missing or unreadable, a required column is absent, or rows have an unknown
        kind or split, empty required fields, a follow-up missing (longitudinal) or present
        (single), or a subject name used twice.

    Examples
    --------
    >>> manifest = read_manifest("data/manifest.csv")  # doctest: +SKIP
    >>> len(manifest.split("train")), len(manifest.split("val"))  # doctest: +SKIP
    (62, 16)
    """
    path = Path(path)
    manifest, problems, _ = _parse_manifest(path)
    if problems:
        raise InputError(_problem_list(path, problems))
    return manifest


def check_manifest(
    path: str | Path,
    *,
    check_values: bool = True,
    check_images: bool = True,
    progress: ProgressCallback | None = None,
) -> tuple[Manifest, list[str]]:
    """Every problem of a manifest at once: its rows' fields, then each row's files (see :func:`validate_manifest`).

    Returns
    -------
    manifest : Manifest
        Every row as read, problems or not.
    problems : list of str
        Empty when the manifest can be trained on.

    Raises
    ------
    InputError
        Only when the manifest itself is missing, unreadable, or lacks a required column.

    Examples
    --------
    >>> manifest, problems = check_manifest("data/manifest.csv")  # doctest: +SKIP
    >>> problems  # doctest: +SKIP
    ["line 4 (s03): label data/s03_label.nii.gz is not binary (values 0, 1, 2); use 0 and 1"]
    """
    path = Path(path)
    manifest, problems, incomplete = _parse_manifest(path)
    if manifest.rows:
        checkable = Manifest(path=path, rows=tuple(row for row in manifest.rows if row.line not in incomplete))
        problems += validate_manifest(
            checkable, check_values=check_values, check_images=check_images, progress=progress
        )
    return manifest, problems


def _problem_list(path: Path, problems: Sequence[str]) -> str:
    return f"manifest {path} has {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems)


def _header_geometry(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    with quiet_nibabel():
        image = cast(nib.Nifti1Image, nib.load(str(path)))  # any spatial image has shape and affine
    shape = tuple(int(s) for s in image.shape[:3])
    if len(image.shape) > 3 and any(s != 1 for s in image.shape[3:]):
        raise ValueError(f"has shape {image.shape}; a 3D image is needed")
    return shape, image.affine


def validate_manifest(
    manifest: Manifest,
    *,
    check_values: bool = True,
    check_images: bool = True,
    progress: ProgressCallback | None = None,
) -> list[str]:
    """Check every row and return every problem found (an empty list when all is well).

    Checks that files exist and read as 3D NIfTI, that each row's images, label and mask share one
    grid, that labels are binary (0/1) and images finite and not constant, that all samples share
    one voxel spacing (the model's), and that the train split has samples. ``check_values=False``
    reads headers only; ``check_images=False`` reads the labels' values but not the images'.
    """
    problems: list[str] = []
    spacings: dict[tuple[float, ...], str] = {}
    rows = manifest.rows
    for index, row in enumerate(rows):
        report(progress, "checking the manifest", index, len(rows))
        files = {
            "baseline": row.baseline,
            "followup": row.followup,
            "label": row.label,
            "brain_mask": row.brain_mask,
            **{column: getattr(row, column) for column in LESION_COLUMNS},
        }
        geometries = {}
        for column, path in files.items():
            if path is None:
                continue
            if not path.is_file():
                problems.append(f"{row.where()}: {column} not found: {path}")
                continue
            try:
                geometries[column] = _header_geometry(path)
            except Exception as error:
                problems.append(
                    f"{row.where()}: {column} {path} cannot be read as 3D NIfTI: {read_error_reason(error)}"
                )
        if "baseline" in geometries:
            shape, affine = geometries["baseline"]
            for column, (other_shape, other_affine) in geometries.items():
                if column == "baseline":
                    continue
                if other_shape != shape or not np.allclose(other_affine, affine, atol=1e-3):
                    problems.append(
                        f"{row.where()}: {column} is not on the baseline's grid "
                        f"({'×'.join(map(str, other_shape))} vs {'×'.join(map(str, shape))} voxels"
                        f"{'' if other_shape != shape else ', affines differ'})"
                    )
            spacing = tuple(round(float(s), 3) for s in np.linalg.norm(affine[:3, :3], axis=0))
            spacings.setdefault(spacing, row.where())
        if check_values:
            problems.extend(_value_problems(row, geometries, check_images=check_images))
    report(progress, "checking the manifest", len(rows), len(rows))
    if len(spacings) > 1:
        listed = ", ".join(
            f"{'×'.join(f'{s:g}' for s in spacing)} mm (first at {where})" for spacing, where in spacings.items()
        )
        problems.append(f"the samples do not share one voxel spacing: {listed}; preprocess them to one spacing")
    if not manifest.split("train"):
        problems.append("no sample has split 'train'")
    return problems


def _value_problems(row: ManifestRow, readable: dict, *, check_images: bool) -> list[str]:
    problems = []
    for column in ("label", *LESION_COLUMNS):
        if column not in readable:
            continue
        path = getattr(row, column)
        try:
            label = read_voxels(path, what=column)
        except InputError as error:  # a truncated or corrupt file: its header read, its voxels do not
            problems.append(f"{row.where()}: {error}")
            continue
        values = np.unique(label)
        if not np.all(np.isin(values, (0, 1))):
            shown = ", ".join(f"{v:g}" for v in values[:6]) + (" …" if values.size > 6 else "")
            problems.append(f"{row.where()}: {column} {path} is not binary (values {shown}); use 0 and 1")
    for column in ("baseline", "followup") if check_images else ():
        if column in readable:
            path = getattr(row, column)
            try:
                data = read_voxels(path, what=column)
            except InputError as error:
                problems.append(f"{row.where()}: {error}")
                continue
            if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
                problems.append(f"{row.where()}: {column} {path} holds NaN or infinite voxels")
            elif data.size and data.min() == data.max():
                problems.append(f"{row.where()}: {column} {path} is constant")
    return problems
