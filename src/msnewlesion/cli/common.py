"""What every command shares: consoles, one-line errors, progress bars and common options."""

from __future__ import annotations

import errno
import functools
import inspect
import re
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
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
from typer.core import TyperArgument, TyperCommand
from typer.models import OptionInfo

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


# Core messages name parameters in backticks: `overwrite=True`, `threshold`, `skull_strip="none"`.
_PARAMETER = re.compile(r"`(?P<name>[a-z_][a-z0-9_]*)(?:=(?P<value>[^`]*))?`")
#: Core parameters whose command-line option has another name.
_ALIASES = {"registration": "space", "intensity_normalization": "normalization", "added_lesions": "added"}

_QUOTES = "\"'"
#: A command's options: parameter name → (flag, its negative form or None).
Flags = Mapping[str, tuple[str, str | None]]


def flags_of(command: Callable[..., Any]) -> dict[str, tuple[str, str | None]]:
    """The options a typer command function declares: parameter name → (long flag, negative flag)."""
    flags: dict[str, tuple[str, str | None]] = {}
    for name, parameter in inspect.signature(command).parameters.items():
        if not isinstance(parameter.default, OptionInfo):
            continue
        declared = [d for decl in parameter.default.param_decls or () for d in decl.split("/")]
        declared = [d.strip() for d in declared if d.strip()] or [f"--{name.replace('_', '-')}"]
        longs = [d for d in declared if d.startswith("--")] or declared
        negative = next((d.split("/")[1].strip() for d in parameter.default.param_decls or () if "/" in d), None)
        flags[name] = (longs[0], negative)
    return flags


def with_flags(message: str, flags: Flags) -> str:
    """A core message with each parameter it names replaced by the command's option.

    ``pass `overwrite=True` to replace them`` becomes ``pass --overwrite to replace them``; a
    parameter the command has no option for is shown by name, without the backticks.
    """

    def flag(match: re.Match[str]) -> str:
        name, value = match["name"], match["value"]
        plain = match[0].strip("`")
        option = flags.get(name) or flags.get(_ALIASES.get(name, name))
        if value == "False":  # --no-x, or the x of a --no-x option (preprocess=False is --no-preprocess)
            negative = option[1] if option is not None else None
            return negative or (flags[f"no_{name}"][0] if f"no_{name}" in flags else plain)
        if option is None:
            return plain
        if value is None or value == "True":
            return option[0]
        return f"{option[0]} {value.strip(_QUOTES)}"

    return _PARAMETER.sub(flag, message)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: stop as Ctrl-C does (a KeyboardInterrupt, so every cleanup runs)."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal_number)
        self.signal_number = signal_number


#: What SLURM, ``timeout`` and ``docker stop`` (SIGTERM) and a closed terminal (SIGHUP) send.
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _raise_terminated(signal_number: int, frame: Any) -> None:
    raise Terminated(signal_number)


@contextmanager
def _stop_signals_as_interrupts() -> Iterator[None]:
    """While a command runs, SIGTERM and SIGHUP raise :class:`Terminated` (Python would die without cleanup)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # A signal set to be ignored stays ignored: `nohup` ignores SIGHUP so that a run outlives its terminal.
    previous = {
        number: signal.signal(number, _raise_terminated)
        for number in _STOP_SIGNALS
        if signal.getsignal(number) is signal.SIG_DFL
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _os_error_message(error: OSError) -> str:
    """One line for an error of the operating system (a full disk, a folder gone, no permission)."""
    reason = error.strerror or str(error) or type(error).__name__
    where = f" {error.filename}" if error.filename else ""
    advice = "; free space there or choose another output folder" if error.errno == errno.ENOSPC else ""
    return f"could not read or write{where}: {reason}{advice}; unfinished outputs were removed"


def cli_errors(func: F) -> F:
    """Turn user-facing errors into a one-line message and exit code 1 (130 on Ctrl-C, 143 on SIGTERM, 129 on SIGHUP).

    The message names the command's options where the core's names a parameter. An error of the
    operating system (a full disk) is one line too, naming the file.
    """
    flags = flags_of(func)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _stop_signals_as_interrupts():
                return func(*args, **kwargs)
        except MsNewLesionError as error:
            raise fail(with_flags(str(error), flags)) from None
        except Terminated as stop:
            name = signal.Signals(stop.signal_number).name
            raise fail(
                f"terminated ({name}); finished outputs are kept, nothing half-written was left",
                128 + stop.signal_number,
            ) from None
        except KeyboardInterrupt:
            raise fail("interrupted; finished outputs are kept, nothing half-written was left", 130) from None
        except OSError as error:
            raise fail(_os_error_message(error)) from None

    return wrapper  # type: ignore[return-value]


class Command(TyperCommand):
    """A typer command whose usage line reads ``BASELINE FOLLOWUP`` (typer writes ``{baseline} {followup}``)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if not isinstance(param, TyperArgument):
                continue
            name = param.metavar or (param.name or "").upper()
            name = name if param.required else f"[{name}]"
            pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces


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
