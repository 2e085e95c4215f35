"""How long-running core functions report progress without knowing about any display.

A function that takes a while accepts ``progress: ProgressCallback | None`` and calls it with
the name of the stage, the units done and the units in all. The command line turns these
calls into progress bars; library users can pass any callable, or nothing.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["ProgressCallback", "report"]


class ProgressCallback(Protocol):
    def __call__(self, stage: str, completed: int, total: int) -> None: ...


def report(progress: ProgressCallback | None, stage: str, completed: int, total: int) -> None:
    """Call ``progress`` if there is one."""
    if progress is not None:
        progress(stage, completed, total)
