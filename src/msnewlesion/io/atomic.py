"""Atomic writes: a file, a folder, a result of several files, and the one file many jobs share.

Nothing msnewlesion writes can look finished before it is: every file is written under a hidden
temporary name and renamed once complete (:func:`atomic_path`); a result made of several files is
staged in a hidden folder and moved into place with its manifest last (:func:`staged_outputs`), so a
folder whose manifest exists is complete; a file that concurrent jobs race to create appears whole
or not at all (:func:`create_exclusively`), and updates to it are serialised (:func:`exclusive_lock`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from msnewlesion.errors import OutputExistsError, parameter

__all__ = [
    "NIFTI_SUFFIXES",
    "STAGING_PREFIX",
    "atomic_directory",
    "atomic_path",
    "create_exclusively",
    "exclusive_lock",
    "staged_outputs",
    "write_json",
    "write_text",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: The hidden folder in which :func:`staged_outputs` writes a result before moving it into place.
STAGING_PREFIX = ".msnewlesion-partial-"

def _hidden_temporary_name(path: Path) -> Path:
    suffix = next((s for s in NIFTI_SUFFIXES if path.name.endswith(s)), path.suffix)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    token = secrets.token_hex(4)
    # The real extension stays last so that writers that look at it (nibabel) still work.
    return path.with_name(f".{stem}.partial-{token}{suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write to; rename it to ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = _hidden_temporary_name(target)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it becomes ``path`` once the block succeeds.

    With ``overwrite`` an existing folder is replaced only after the new one is complete.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} already exists; pass {parameter('overwrite', True)} to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield temporary
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, retired / "old")
            os.replace(temporary, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(temporary, target)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write JSON (indented, UTF-8, NaN written as null) atomically."""
    return write_text(path, json.dumps(_json_safe(payload), indent=2, ensure_ascii=False) + "\n")


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


@contextlib.contextmanager
def staged_outputs(outputs: Mapping[str, Path], *, manifest: str = "summary") -> Iterator[dict[str, Path]]:
    """Stage, replace, manifest last: how a result made of several files is written.

    Yields, for every key of ``outputs``, a path with the same file name in a hidden folder
    (``.msnewlesion-partial-…``) made in the deepest folder holding all the outputs, so each move
    is a rename on one filesystem. The caller writes the files there. When the block ends without
    an error, the manifest's destination is removed first (from then on the result does not look
    complete), every other staged file replaces its destination, in the order of ``outputs``, and
    the manifest comes last. Keys the caller left unwritten are not moved. The staging folder is
    removed in every case, so an error leaves the destinations as they were (less the manifest,
    when the error came while moving).

    Parameters
    ----------
    outputs : mapping of str to Path
        Destination of each file, by kind.
    manifest : str
        The key of the file written last, whose presence says that the result is complete.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with staged_outputs({"data": folder / "data.txt", "summary": folder / "summary.json"}) as staged:
    ...     _ = staged["data"].write_text("42")
    ...     _ = staged["summary"].write_text("{}")
    >>> sorted(p.name for p in folder.iterdir())
    ['data.txt', 'summary.json']
    """
    destinations = {key: Path(path) for key, path in outputs.items()}
    if manifest not in destinations:
        raise ValueError(f"the manifest {manifest!r} is not one of the outputs")
    names = [path.name for path in destinations.values()]
    if len(set(names)) != len(names):
        raise ValueError("staged outputs need distinct file names")
    parent = Path(os.path.commonpath([str(path.parent.absolute()) for path in destinations.values()]))
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent))
    try:
        staged = {key: staging / path.name for key, path in destinations.items()}
        yield staged
        destinations[manifest].unlink(missing_ok=True)
        for key in [k for k in destinations if k != manifest] + [manifest]:
            if staged[key].exists():
                destinations[key].parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged[key], destinations[key])
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def create_exclusively(path: str | os.PathLike[str], text: str) -> bool:
    """Create ``path`` holding ``text`` unless it exists; True when this call created it.

    The content is complete before the name appears (a hard link is created atomically, even on
    NFS), so a concurrent reader never sees a half-written file.
    """
    path = Path(path)
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
def exclusive_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the block.

    Where locks do not exist (not POSIX, some Lustre mounts) the block runs unlocked: writes stay
    atomic, only a concurrent update could be lost.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
