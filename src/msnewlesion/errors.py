"""Exceptions that carry a message meant for the user.

The command line prints these as one line, without a traceback, and exits non-zero.
Anything else that escapes is a bug and keeps its traceback.

A message names a setting the caller can change with :func:`parameter`: for a library caller the
Python parameter in backticks (`` `overwrite=True` ``, `` `threshold` ``); while a command runs, the
command line's flag (``--overwrite``, ``--threshold``), which :func:`spelling_parameters` asks for
(see :mod:`msnewlesion.cli.common`). The message is written with the right name in the first place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = [
    "GeometryError",
    "InputError",
    "ModelError",
    "MsNewLesionError",
    "OptionError",
    "OutputExistsError",
    "OutputInUseError",
    "parameter",
    "spelling_parameters",
]

#: Says no value: ``parameter("threshold")`` names the setting alone.
NO_VALUE = object()
#: How a parameter is named in messages: (name, value or NO_VALUE) → text. None: the Python spelling.
_SPELLING: ContextVar[Callable[[str, object], str] | None] = ContextVar("msnewlesion_spelling", default=None)


def parameter(name: str, value: object = NO_VALUE) -> str:
    """How a message names the setting ``name`` (set to ``value``, when given) for whoever called.

    Examples
    --------
    >>> parameter("overwrite", True)
    '`overwrite=True`'
    >>> parameter("skull_strip", "none")
    '`skull_strip="none"`'
    >>> parameter("threshold")
    '`threshold`'
    """
    spell = _SPELLING.get()
    if spell is not None:
        return spell(name, value)
    if value is NO_VALUE:
        return f"`{name}`"
    return f'`{name}="{value}"`' if isinstance(value, str) else f"`{name}={value!r}`"


@contextmanager
def spelling_parameters(spell: Callable[[str, object], str]) -> Iterator[None]:
    """Within the block, :func:`parameter` names settings with ``spell`` (the command line: its flags)."""
    token = _SPELLING.set(spell)
    try:
        yield
    finally:
        _SPELLING.reset(token)


class MsNewLesionError(Exception):
    """A problem the user can fix: bad input, a missing file, a model this version cannot run."""


class InputError(MsNewLesionError):
    """An input file or argument is missing, unreadable or inconsistent."""


class OptionError(InputError):
    """A setting has a value it cannot take: refused when the options are built, before any work.

    The command line exits with code 2 for it, as for a bad flag value it refuses while parsing.
    """


class GeometryError(InputError):
    """Two images that must share a grid do not."""


class ModelError(MsNewLesionError):
    """A model folder, config or weight file is missing or does not match."""


class OutputExistsError(MsNewLesionError):
    """An output already exists and overwriting it was not asked for."""


class OutputInUseError(MsNewLesionError):
    """Another run is writing into the same output folder."""
