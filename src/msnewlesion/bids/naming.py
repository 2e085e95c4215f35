"""Derivative names: where the participant level puts each output of a pair, and whether a pair is complete.

For the pair (A, B), B the later session, everything describing B lies in B's ``anat`` folder with
``desc-since<A>``; A's all-lesion mask lies in A's folder with ``desc-before<B>``; the QC picture
lies in ``sub-<p>/figures`` (``docs/bids.md``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from msnewlesion.bids.discovery import SessionPair, SessionScan

__all__ = ["pair_is_complete", "pair_outputs", "pair_state", "read_json", "relative_path"]


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
    # Written only when one scan does not show all of the other's brain (docs/predict.md, coverage).
    outputs["not_assessed_baseline"] = earlier / _name(a, "mask.nii.gz", label="notassessed", desc=before)
    outputs["not_assessed_followup"] = later / _name(b, "mask.nii.gz", label="notassessed", desc=since)
    outputs["table"] = later / _name(b, "newlesions.tsv", desc=since, space=False)
    # The change classes on B's grid (a discrete segmentation), their colour tables and the lesion table.
    outputs["lesion_changes"] = later / _name(b, "dseg.nii.gz", label="lesionchange", desc=since)
    outputs["lesion_changes_itksnap"] = later / _name(b, "dseg_itksnap.txt", label="lesionchange", desc=since)
    outputs["lesion_changes_lut"] = later / _name(b, "dseg.lut", label="lesionchange", desc=since)
    outputs["lesion_changes_table"] = later / _name(b, "lesionchanges.tsv", desc=since, space=False)
    outputs["qc"] = output_dir / f"sub-{pair.participant}" / "figures" / _name(b, "qc.png", desc=since, space=False)
    outputs["summary"] = later / _name(b, "summary.json", desc=since, space=False)
    return outputs


def relative_path(path: Path, root: Path) -> str:
    """``path`` below ``root``, with forward slashes (as the derivative's JSON files record paths)."""
    return path.relative_to(root).as_posix()


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is missing, unreadable or not an object (an unfinished write)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def pair_state(output_dir: Path, pair: SessionPair) -> str:
    """What the derivative holds for ``pair``: "complete", "absent", "partial" (files but no summary: an
    interrupted run), or "stale" (complete, but from other input files: the FLAIR choice changed since)."""
    summary_path = pair_outputs(output_dir, pair)["summary"]
    summary = read_json(summary_path)
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
    return pair_state(Path(output_dir), pair) == "complete"
