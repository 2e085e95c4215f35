"""Project hygiene that a user relies on: the README's test command and a lint-clean tree."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_gives_one_test_command_that_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- test-command -->\s*```bash\n(.+?)\n```", readme)
    assert match, "README.md must give the test command after <!-- test-command -->"
    assert match.group(1).startswith("python -m pytest")
    assert "test-command" in (ROOT / ".ci" / "run").read_text()


def _tool(name: str) -> list[str]:
    # The test's own interpreter runs the tool: the suite also checks when its virtual environment is not
    # activated (``.venv/bin/python -m pytest``), where the tool's script is not on the PATH.
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is installed with the test extras")
    return [sys.executable, "-m", name]


def test_ruff_is_clean() -> None:
    completed = subprocess.run([*_tool("ruff"), "check", str(ROOT)], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr


@pytest.mark.slow
def test_mypy_finds_no_type_errors() -> None:
    # The package ships py.typed: its annotations are a promise to its users' type checkers.
    completed = subprocess.run(_tool("mypy"), cwd=ROOT, capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_changelog_follows_keep_a_changelog() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog
    assert "keepachangelog.com" in changelog
