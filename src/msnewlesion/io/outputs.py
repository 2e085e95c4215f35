"""Outputs checked before any work, and one run per output folder.

:func:`check_outputs_free` refuses outputs that cannot be written, would replace an input or exist
already; :func:`claim_output_folder` holds a folder for one run (a lock, a scratch folder, and the
removal of what killed runs left behind).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msnewlesion.errors import InputError, OutputExistsError, OutputInUseError, parameter

__all__ = [
    "LOCK_NAME",
    "SCRATCH_PREFIX",
    "OutputClaim",
    "check_output_location",
    "check_outputs_free",
    "claim_output_folder",
]


def check_output_location(path: str | os.PathLike[str], *, kind: str | None = None, what: str = "output") -> Path:
    """Refuse, before any work, an output that could not be written where it is asked for.

    Parameters
    ----------
    path : path-like
        The file or folder to be written; it need not exist.
    kind : {"file", "folder"}, optional
        What ``path`` must be if it exists already (either when None).
    what : str
        What the output is, for messages (``"output folder"``).

    Returns
    -------
    Path

    Raises
    ------
    InputError
        ``path`` exists as the wrong kind, a folder above it is a file, or the nearest existing
        folder cannot be written into.
    """
    path = Path(path)
    if path.exists():
        if kind == "folder" and not path.is_dir():
            raise InputError(f"the {what} {path} is a file, not a folder: give a folder (it is created if needed)")
        if kind == "file" and path.is_dir():
            raise InputError(f"the {what} {path} is a folder: give a file name")
    # The nearest existing folder on the way to ``path`` is where the first new entry is created.
    nearest = path if path.is_dir() else path.parent
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        raise InputError(f"cannot create the {what} {path}: {nearest} is a file, not a folder")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise InputError(f"cannot write the {what} {path}: no permission to write into {nearest}")
    return path


def check_outputs_free(
    outputs: Iterable[str | os.PathLike[str]],
    *,
    inputs: Sequence[str | os.PathLike[str]] = (),
    overwrite: bool = False,
) -> None:
    """Refuse outputs that cannot be written, that would replace an input, or that exist (unless ``overwrite``).

    Raises
    ------
    InputError
        An output path is one of the inputs, or cannot be created (see :func:`check_output_location`).
    OutputExistsError
        An output exists and ``overwrite`` is false.
    """
    resolved_inputs = {Path(p).resolve() for p in inputs}
    existing = []
    for output in outputs:
        output = Path(output)
        if output.resolve() in resolved_inputs:
            raise InputError(f"refusing to write {output}: it is one of the inputs. Choose another output folder.")
        check_output_location(output)
        if output.exists():
            existing.append(output)
    if existing and not overwrite:
        names = ", ".join(str(p) for p in existing[:3]) + (" …" if len(existing) > 3 else "")
        raise OutputExistsError(f"outputs already exist ({names}); pass {parameter('overwrite', True)} to replace them")


# ---------------------------------------------------------------------------------------------
# one run per output folder

#: Held (``flock``) by the run writing into a folder; removed when the run ends.
LOCK_NAME = ".msnewlesion-run.lock"
#: A run's scratch space inside its output folder (registration files); removed when the run ends.
SCRATCH_PREFIX = ".msnewlesion-scratch-"


def _is_leftover(name: str) -> bool:
    # Hidden staging names of atomic writes (".x.partial-…", ".msnewlesion-partial-…") and scratch folders.
    return name.startswith(".") and ("partial-" in name or name.startswith(SCRATCH_PREFIX))


@dataclass
class OutputClaim:
    """A run's hold on its output folder (see :func:`claim_output_folder`)."""

    directory: Path
    _scratch: Path | None = field(default=None, repr=False)

    @property
    def scratch(self) -> Path:
        """A private scratch folder inside the output folder, made on first use and removed with the claim.

        A run killed outright leaves it behind as a hidden folder that the next run in the same
        output folder removes, instead of litter in the system's temporary folder.
        """
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=self.directory))
        return self._scratch


def _make_folders(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; return those created, outermost first."""
    missing = []
    folder = directory
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    directory.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def _holder(handle: Any) -> str:
    try:
        handle.seek(0)
        holder = json.loads(handle.read() or "{}")
        return f" ({holder['command']}, process {holder['pid']} on {holder['host']}, since {holder['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _lock(directory: Path, command: str) -> Any | None:
    """Hold ``LOCK_NAME`` in ``directory``; None where locks do not exist (not POSIX, some network filesystems)."""
    try:
        import fcntl
    except ImportError:
        return None
    path = directory / LOCK_NAME
    for _ in range(10):
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held for the whole run)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle)
            handle.close()
            raise OutputInUseError(
                f"another msnewlesion run{holder} is writing into {directory}: wait for it to finish, "
                "or choose another output folder"
            ) from None
        except OSError:  # a filesystem without locks: run unprotected, as before
            handle.close()
            return None
        # Its holder may have removed the file between our open and our lock: then lock the new one.
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(current, os.fstat(handle.fileno())):
            handle.seek(0)
            handle.truncate()
            started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
            handle.write(json.dumps({"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                                     "started": started}))  # fmt: skip
            handle.flush()
            return handle
        handle.close()
    return None


def _unlock(directory: Path, handle: Any | None) -> None:
    if handle is None:
        return
    import fcntl

    with contextlib.suppress(OSError):
        (directory / LOCK_NAME).unlink()
    with contextlib.suppress(OSError):
        fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


@contextlib.contextmanager
def claim_output_folder(
    directory: str | os.PathLike[str],
    *,
    outputs: Iterable[str | os.PathLike[str]] = (),
    inputs: Sequence[str | os.PathLike[str]] = (),
    overwrite: bool = False,
    command: str = "msnewlesion",
) -> Iterator[OutputClaim]:
    """Check a run's output folder before any work, and hold it for the run.

    Before anything is written: the folder must be creatable and writable (see
    :func:`check_output_location`) and ``outputs`` free (see :func:`check_outputs_free`). Then
    the folder is created, locked against a second run writing into it at the same time, and
    cleared of what killed runs left there (hidden staging and scratch entries). When the block
    ends, the lock and the scratch space are removed, and so is the folder itself when this call
    created it and the run left it empty (a run that failed on its inputs leaves nothing behind).

    Parameters
    ----------
    directory : path-like
        The output folder.
    outputs : iterable of path-like
        The files the run will write (inside ``directory`` or not).
    inputs : sequence of path-like
        The run's input files, which no output may replace.
    overwrite : bool
        Existing ``outputs`` may be replaced.
    command : str
        Names the run to a second one that finds the folder taken.

    Yields
    ------
    OutputClaim
        With a private :attr:`~OutputClaim.scratch` folder for intermediate files.

    Raises
    ------
    InputError
        The folder cannot be created or written, or an output is an input.
    OutputExistsError
        An output exists and ``overwrite`` is false.
    OutputInUseError
        Another run holds the folder.

    Examples
    --------
    >>> with claim_output_folder("results", inputs=["t1.nii.gz", "t2.nii.gz"]) as claim:  # doctest: +SKIP
    ...     write_everything(claim.directory, scratch=claim.scratch)
    """
    directory = Path(directory)
    check_output_location(directory, kind="folder", what="output folder")
    check_outputs_free(outputs, inputs=inputs, overwrite=overwrite)
    created = _make_folders(directory)
    handle = None
    claim = OutputClaim(directory)
    try:
        handle = _lock(directory, command)
        if handle is not None:  # only a run that holds the lock may remove what others left
            for entry in directory.iterdir():
                if _is_leftover(entry.name):
                    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        yield claim
    finally:
        if claim._scratch is not None:
            shutil.rmtree(claim._scratch, ignore_errors=True)
        _unlock(directory, handle)
        for folder in reversed(created):
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
