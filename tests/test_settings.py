"""Every choice is defined once (msnewlesion.settings) and refused while the arguments are parsed.

The table covers every command and every setting with a fixed set of values: a bad value exits with
code 2 in well under 2 s, naming the flag and every allowed value, and never opens an input. The inputs
are named pipes, which block whoever opens them until a writer comes: a command that read one before
refusing its option would hang, and the test would see it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from msnewlesion import settings
from msnewlesion.cli import app
from msnewlesion.errors import InputError

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")

#: command → its arguments before the options ({a}, {b}: named pipes; {out}: a folder that must stay absent).
COMMANDS = {
    "predict": ["predict", "{a}", "{b}", "-o", "{out}"],
    "preprocess": ["preprocess", "{a}", "{b}", "-o", "{out}"],
    "bids": ["bids", "{a}", "{out}", "participant"],
    "train": ["train", "{a}", "-o", "{out}"],
    "demo": ["demo", "-o", "{out}"],
    "evaluate": ["evaluate", "{a}", "{b}"],
    "synth": ["synth", "{a}", "{b}", "-o", "{out}"],
    "models add": ["models", "add", "x", "{a}"],
}
DEVICES = tuple(d for d in settings.DEVICES)
PREDICT_CHOICES = {
    "--skull-strip": settings.SKULL_STRIP_METHODS,
    "--skull-strip-mode": settings.SKULL_STRIP_MODES,
    "--space": settings.REGISTRATION_SPACES,
    "--transform": settings.TRANSFORMS,
    "--precision": settings.PRECISIONS,
    "--engine": settings.ENGINES,
    "--connectivity": settings.CONNECTIVITIES,
    "--device": DEVICES,
}
#: command → flag → the allowed values (the settings' own tuples: nothing is restated here).
CHOICES = {
    "predict": PREDICT_CHOICES,
    "bids": PREDICT_CHOICES | {"--session-pairs": settings.SESSION_PAIRINGS},
    "preprocess": {
        "--skull-strip": settings.SKULL_STRIP_METHODS,
        "--skull-strip-mode": settings.SKULL_STRIP_MODES,
        "--space": settings.REGISTRATION_SPACES,
        "--transform": settings.TRANSFORMS,
        "--interpolation": settings.IMAGE_INTERPOLATIONS,
        "--normalization": settings.INTENSITY_NORMALIZATIONS,
        "--engine": settings.ENGINES,
        "--device": DEVICES,
    },
    "train": {"--precision": settings.PRECISIONS, "--device": DEVICES},
    "demo": {
        "--skull-strip": settings.SKULL_STRIP_METHODS,
        "--skull-strip-mode": settings.SKULL_STRIP_MODES,
        "--engine": settings.ENGINES,
        "--device": DEVICES,
    },
    "evaluate": {"--connectivity": settings.CONNECTIVITIES, "--units": settings.DISTANCE_UNITS},
    "synth": {"--mode": settings.SYNTH_MODES, "--split": settings.SPLITS},
}
CASES = [(command, flag) for command, flags in CHOICES.items() for flag in flags]

#: Other values a command can only refuse, each with what the message must say.
BAD_VALUES = [
    ("predict", ["--threshold", "1.5"], "--threshold", "not in (0, 1)"),
    ("predict", ["--threshold", "0"], "--threshold", "not in (0, 1)"),
    ("predict", ["--min-brightening", "nan"], "--min-brightening", "not a finite number"),
    ("predict", ["--model", "./no-such-model"], "--model", "model folder ./no-such-model does not exist"),
    ("bids", ["--model", "~/no-such-model"], "--model", "does not exist"),
    ("preprocess", ["--model", "./no-such-model/config.json"], "--model", "does not exist"),
    ("preprocess", ["--spacing", "1", "0", "1"], "--spacing", "three positive mm"),
    ("preprocess", ["--orientation", "RAA"], "--orientation", "not three axis codes"),
    ("preprocess", ["--min-registration-correlation", "1"], "--min-registration-correlation", "not in [-1, 1)"),
    ("train", ["--patch-size", "40"], "--patch-size", "not a multiple of 16"),
    ("train", ["--lr", "0"], "--lr", "not in (0, inf]"),
    ("train", ["--init-from", "./no-such-model"], "--init-from", "does not exist"),
    ("models add", ["--sha256", "abc"], "--sha256", "not a SHA-256 checksum"),
]

#: Values only the core's options can judge (they depend on each other): refused when the options are built,
#: before any input is read, with the same exit code, as a one-line error.
CORE_REFUSALS = [
    ("synth", ["--contrast", "0.8"], "contrast − contrast_spread must exceed 1"),
    ("synth", ["--min-volume", "50", "--max-volume", "20"], "is below min_lesion_volume_mm3"),
    ("synth", ["--acquisition", "--two-d-fraction", "1.5"], "invalid acquisition options"),
]


@pytest.fixture
def pipes(tmp_path: Path) -> dict[str, str]:
    paths = {"a": tmp_path / "a.nii.gz", "b": tmp_path / "b.nii.gz"}
    for path in paths.values():
        os.mkfifo(path)
    return {name: str(path) for name, path in paths.items()} | {"out": str(tmp_path / "out")}


def _refusal(command: str, options: list[str], pipes: dict[str, str]) -> tuple[int, str, float]:
    """Run the command in a thread; if it is still running after 2 s it opened a pipe: unblock it and fail."""
    arguments = [part.format(**pipes) for part in COMMANDS[command]] + options
    outcome: dict[str, object] = {}

    def run() -> None:
        outcome["result"] = CliRunner().invoke(app, arguments, env={"COLUMNS": "200"})

    started = time.perf_counter()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=2.0)
    seconds = time.perf_counter() - started
    if worker.is_alive():
        # Let a reader blocked on a pipe go on (to fail on the empty file); a writer that finds no reader is
        # refused at once (O_NONBLOCK) instead of blocking, so this never hangs.
        deadline = time.monotonic() + 60
        while worker.is_alive() and time.monotonic() < deadline:
            for name in ("a", "b"):
                with contextlib.suppress(OSError):
                    os.close(os.open(pipes[name], os.O_WRONLY | os.O_NONBLOCK))
            worker.join(timeout=0.1)
        pytest.fail(f"{' '.join(arguments)} was still running after 2 s ({seconds:.1f} s)")
    result = outcome["result"]
    message = " ".join(result.stderr.replace("│", " ").split())  # type: ignore[attr-defined]
    return result.exit_code, message, seconds  # type: ignore[attr-defined]


@pytest.mark.parametrize(("command", "flag"), CASES, ids=[f"{c}{f}" for c, f in CASES])
def test_every_choice_is_refused_while_parsing_naming_the_flag_and_the_allowed_values(
    command: str, flag: str, pipes: dict[str, str]
) -> None:
    code, message, seconds = _refusal(command, [flag, "no-such-value"], pipes)
    assert code == 2, message
    assert seconds < 2.0
    assert f"Invalid value for '{flag}'" in message and "no-such-value" in message
    for allowed in CHOICES[command][flag]:
        assert str(allowed) in message
    assert not Path(pipes["out"]).exists()


@pytest.mark.parametrize(
    ("command", "options", "flag", "says"), BAD_VALUES, ids=[f"{c}{o[0]}" for c, o, *_ in BAD_VALUES]
)
def test_other_bad_option_values_exit_2_before_any_work(
    command: str, options: list[str], flag: str, says: str, pipes: dict[str, str]
) -> None:
    code, message, seconds = _refusal(command, options, pipes)
    assert code == 2, message
    assert seconds < 2.0
    assert f"Invalid value for '{flag}'" in message and says in message
    assert not Path(pipes["out"]).exists()


@pytest.mark.parametrize(("command", "options", "says"), CORE_REFUSALS, ids=[" ".join(o) for _, o, _ in CORE_REFUSALS])
def test_settings_that_cannot_work_together_exit_2_before_any_work(
    command: str, options: list[str], says: str, pipes: dict[str, str]
) -> None:
    code, message, seconds = _refusal(command, options, pipes)
    assert code == 2, message
    assert seconds < 2.0
    assert message.startswith("error: ") and says in message
    assert not Path(pipes["out"]).exists()


@pytest.mark.parametrize("command", ["predict", "preprocess", "bids", "train"])
def test_help_lists_the_allowed_values_of_every_choice_and_keeps_option_names_whole_at_80_columns(
    command: str,
) -> None:
    from msnewlesion.cli import app as typer_app
    from msnewlesion.cli.common import flags_of

    wide = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert wide.exit_code == 0
    for flag, allowed in CHOICES[command].items():
        assert f"{flag} " in wide.output and "[" + " | ".join(str(v) for v in allowed) + "]" in wide.output, flag

    narrow = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "80"})
    assert narrow.exit_code == 0 and max(len(line) for line in narrow.output.splitlines()) <= 80
    words = set(narrow.output.replace("│", " ").split())
    function = next(c.callback for c in typer_app.registered_commands if c.name == command)
    for long_flag, negative in flags_of(function).values():
        assert long_flag in words and (negative is None or negative in words), long_flag


def test_the_core_checks_the_same_lists_when_options_are_built() -> None:
    from msnewlesion.predict import PredictOptions
    from msnewlesion.preprocess import PreprocessOptions

    with pytest.raises(InputError, match=r"registration 'mni' is not one of: halfway, baseline, followup, none"):
        PreprocessOptions(registration="mni")
    with pytest.raises(InputError, match=r"device 'gpu' is not one of: auto, cpu, cuda, cuda:N, mps"):
        PreprocessOptions(device="gpu")
    with pytest.raises(InputError, match=r"skull_strip 'bet' is not one of: auto, hd-bet, hd-bet-v1, none"):
        PredictOptions(skull_strip="bet")
    with pytest.raises(InputError, match=r"precision 'fp8' is not one of: auto, fp32, bf16, fp16"):
        PredictOptions(precision="fp8")
    with pytest.raises(InputError, match=r"space 'mni' is not one of"):
        PredictOptions(space="mni")
    assert settings.device_problem("cuda:3") is None and settings.device_problem("cuda3") is not None
