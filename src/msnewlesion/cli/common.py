"""What every command shares: consoles, one-line errors, progress bars and common options."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
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
from rich.table import Table
from rich.text import Text
from typer import rich_utils as typer_rich_utils
from typer.core import TyperArgument, TyperCommand
from typer.models import OptionInfo

from msnewlesion.errors import NO_VALUE, MsNewLesionError, OptionError, spelling_parameters
from msnewlesion.settings import DEVICES, device_problem

# Results go to stdout (so --json can be piped); messages and progress go to stderr.
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

DEVICE_HELP = "Where the network runs: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."
#: How ``--help`` shows the devices (``cuda:N`` is not a fixed choice, so they are checked by :func:`device_value`).
DEVICE_METAVAR = "[" + " | ".join(DEVICES) + "]"


def choice(values: Iterable[object]) -> dict[str, Any]:
    """``typer.Option`` arguments that allow only ``values`` (a tuple of :mod:`msnewlesion.settings`).

    A value not among them is refused while the arguments are parsed (exit code 2, before any work),
    and ``--help`` shows them all as the option's metavar.
    """
    allowed = [str(value) for value in values]

    def parse(value: str) -> str:
        if value not in allowed:
            raise typer.BadParameter(f"{value!r} is not one of: {', '.join(allowed)}")
        return value

    return {"parser": parse, "metavar": "[" + " | ".join(allowed) + "]"}


def number_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """A ``typer.Option`` parser of a finite number in [``low``, ``high``] (open at the ends said): exit 2 otherwise."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise typer.BadParameter(f"{text} is not a finite number")
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if below or above:
            bounds = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise typer.BadParameter(f"{text} is not in {bounds}")
        return value

    return parse


def device_value(value: str) -> str:
    """Option callback: refuse a device that no machine has (``gpu``, ``cuda0``) while parsing, with exit code 2."""
    problem = device_problem(value)
    if problem is not None:
        raise typer.BadParameter(problem)
    return value


def model_value(value: str | None) -> str | None:
    """Option callback: refuse a local-looking model path that does not exist while parsing (not after a Hub try)."""
    if value is None:
        return None
    from msnewlesion.hub.registry import local_model_problem

    problem = local_model_problem(value)
    if problem is not None:
        raise typer.BadParameter(problem)
    return value


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error to stderr and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=code)


#: The one mapping between the core's names and the command line's: core parameters whose option has
#: another name (``PreprocessOptions.registration`` is ``--space``). Every other setting has one name.
CORE_TO_OPTION = {"registration": "space", "intensity_normalization": "normalization", "added_lesions": "added"}

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


def flag_spelling(flags: Flags) -> Callable[[str, object], str]:
    """How a command names a core setting in messages (see :func:`msnewlesion.errors.parameter`): by its flag.

    ``("overwrite", True)`` is ``--overwrite``; ``("transform", "Rigid")`` is ``--transform Rigid``;
    ``("preprocess", False)`` is ``--no-preprocess``; a setting the command has no option for keeps its name.
    """

    def spell(name: str, value: object) -> str:
        option = flags.get(name) or flags.get(CORE_TO_OPTION.get(name, name))
        if value is False:  # --no-x, or the x of a --no-x option (preprocess=False is --no-preprocess)
            negative = option[1] if option is not None else None
            return negative or (flags[f"no_{name}"][0] if f"no_{name}" in flags else f"{name}=False")
        if option is None:
            return name if value is NO_VALUE else f"{name}={value}"
        if value is NO_VALUE or value is True:
            return option[0]
        return f"{option[0]} {value}"

    return spell


def cli_errors(func: F) -> F:
    """Turn user-facing errors into a one-line message and exit code 1 (2 for a setting, 130 on Ctrl-C).

    While the command runs, core messages name settings by the command's options (``--overwrite``),
    not by the Python parameters a library caller sees.
    """
    spell = flag_spelling(flags_of(func))

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with spelling_parameters(spell):
                return func(*args, **kwargs)
        except OptionError as error:  # a setting that cannot work: exit 2, as for a flag refused while parsing
            raise fail(str(error), 2) from None
        except MsNewLesionError as error:
            raise fail(str(error)) from None
        except KeyboardInterrupt:
            raise fail("interrupted; finished outputs are kept, nothing half-written was left", 130) from None

    return wrapper  # type: ignore[return-value]


class _WholeNamesTable(Table):
    """Rich's table as typer lays out ``--help``, with the option names never wrapped or cut.

    Typer lets rich shrink every column alike on a narrow terminal, which cuts long option names
    (``--min-registration-correlation`` became ``--min-registration-…`` at 80 columns); here only
    the type and help columns, the last two, give up width.
    """

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        cells = list(renderables)
        if len(cells) in (6, 7) and all(isinstance(cell, Text) for cell in cells[-6:-2]):
            # An option's row: [required], long, short, negative long, negative short, type, help. A negative
            # (--any-white-matter) goes under its option rather than in a column of its own, which left the
            # help a few letters wide.
            first = len(cells) - 6
            long, short, negative_long, negative_short = cells[first : first + 4]
            names = Text.assemble(long, "\n", negative_long) if negative_long.plain else long
            shorts = Text.assemble(short, "\n", negative_short) if negative_short.plain else short
            cells = [*cells[:first], names, shorts, *cells[first + 4 :]]
        super().add_row(*cells, **kwargs)
        for column in self.columns[: max(len(self.columns) - 2, 0)]:
            column.no_wrap = True


class Command(TyperCommand):
    """A typer command whose usage line reads ``BASELINE FOLLOWUP`` (typer writes ``{baseline} {followup}``),
    and whose ``--help`` keeps every option name whole at any width (80 columns included)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        table = typer_rich_utils.Table
        typer_rich_utils.Table = _WholeNamesTable  # type: ignore[misc]  # typer builds its tables by this name
        try:
            super().format_help(ctx, formatter)
        finally:
            typer_rich_utils.Table = table  # type: ignore[misc]

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
