"""What every command shares: consoles, one-line errors, progress bars and common options."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from msnewlesion.errors import MsNewLesionError

# Results go to stdout (so --json can be piped); messages and progress go to stderr.
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

DEVICE_HELP = "Where the network runs: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error to stderr and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=code)


def cli_errors(func: F) -> F:
    """Turn user-facing errors into a one-line message and exit code 1 (130 on Ctrl-C)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MsNewLesionError as error:
            raise fail(str(error)) from None
        except KeyboardInterrupt:
            raise fail("interrupted; finished outputs are kept, nothing half-written was left", 130) from None

    return wrapper  # type: ignore[return-value]


def info(message: str) -> None:
    err_console.print(message, highlight=False)


def warn(message: str) -> None:
    err_console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


class ProgressBars:
    """A :class:`msnewlesion.progress.ProgressCallback` that draws one rich bar per stage."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, stage: str, completed: int, total: int) -> None:
        task = self._tasks.get(stage)
        if task is None:
            task = self._progress.add_task(stage, total=total)
            self._tasks[stage] = task
        self._progress.update(task, completed=completed, total=total)


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[ProgressBars | None]:
    """Rich progress bars on stderr (None when disabled, for example by ``--quiet``)."""
    if not enabled:
        yield None
        return
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )
    with progress:
        yield ProgressBars(progress)
