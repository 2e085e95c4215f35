"""Exceptions that carry a message meant for the user.

The command line prints these as one line, without a traceback, and exits non-zero.
Anything else that escapes is a bug and keeps its traceback.

Messages name the Python parameter a caller can change, in backticks (`` `overwrite=True` ``,
`` `threshold` ``): a library caller has no command-line flags. The command line shows the
matching flag instead (``--overwrite``, ``--threshold``; see :mod:`msnewlesion.cli.common`).
"""

from __future__ import annotations


class MsNewLesionError(Exception):
    """A problem the user can fix: bad input, a missing file, a model this version cannot run."""


class InputError(MsNewLesionError):
    """An input file or argument is missing, unreadable or inconsistent."""


class GeometryError(InputError):
    """Two images that must share a grid do not."""


class ModelError(MsNewLesionError):
    """A model folder, config or weight file is missing or does not match."""


class OutputExistsError(MsNewLesionError):
    """An output already exists and overwriting it was not asked for."""


class OutputInUseError(MsNewLesionError):
    """Another run is writing into the same output folder."""
