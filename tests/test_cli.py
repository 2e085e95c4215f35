from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from msnewlesion import __version__
from msnewlesion.cli import app


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"msnewlesion {__version__}"


def test_python_dash_m_runs_the_same_app() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "msnewlesion", "--version"], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0
    assert completed.stdout.strip() == f"msnewlesion {__version__}"


def test_help_lists_the_commands(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    # The first word of each row of the Commands panel: the description above it names most commands too,
    # so only the panel's own rows say that every command is listed, and nothing else.
    panel = result.output.split("Commands")[1].split("╰")[0]
    listed = [row.strip("│ ").split()[0] for row in panel.splitlines()[1:] if row.strip("│ ") and row[2] != " "]
    expected = ["predict", "preprocess", "train", "evaluate", "synth", "bids", "demo", "models"]
    assert listed == expected
    registered = [command.name for command in app.registered_commands] + [g.name for g in app.registered_groups]
    assert sorted(registered) == sorted(expected)
