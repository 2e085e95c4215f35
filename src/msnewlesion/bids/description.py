"""``dataset_description.json`` of the derivative dataset: created once by whichever job comes first.

Jobs for different participants may start at once in one output folder: the first creates the file
atomically (:func:`msnewlesion.io.create_exclusively`); the others check it under a lock
(:func:`msnewlesion.io.exclusive_lock`) and add their msnewlesion version when it is a new one.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from msnewlesion import __version__
from msnewlesion.bids.discovery import RAW_DATASET
from msnewlesion.bids.naming import read_json
from msnewlesion.errors import InputError
from msnewlesion.io import create_exclusively, exclusive_lock, write_json
from msnewlesion.model.checkpoint import LoadedModel
from msnewlesion.prediction_summary import ModelProvenance

__all__ = ["BIDSIGNORE", "write_dataset_description"]

BIDS_VERSION = "1.10.0"
CODE_URL = "https://github.com/msnewlesion/msnewlesion"
#: Files of this derivative dataset that the BIDS specification does not cover, for the validator.
BIDSIGNORE = """\
# msnewlesion outputs outside the BIDS specification (see docs/bids.md)
logs/
sub-*/figures/
*_newlesions.tsv
*_summary.json
group_newlesions.*
*_lesionchanges.tsv
*_dseg_itksnap.txt
*_dseg.lut
*_timeline.tsv
group_timelines.png
"""
_SHA256_IN_TEXT = re.compile(r"weights sha256 ([0-9a-f]{64})")


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


def _read_description(path: Path) -> dict[str, Any]:
    for _ in range(25):  # another job may be writing it where hard links are not available
        description = read_json(path)
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
    if not create_exclusively(path, json.dumps(wanted, indent=2, ensure_ascii=False) + "\n"):
        with exclusive_lock(output_dir / ".msnewlesion.lock"):
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
    create_exclusively(output_dir / ".bidsignore", BIDSIGNORE)
    return path
