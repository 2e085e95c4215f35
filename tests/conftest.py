from __future__ import annotations

import os
from pathlib import Path

# One ITK thread: registrations give the same answer on every run (several threads sum the metric in a
# varying order and move results by hundredths of a millimetre). Set before antspyx is first imported.
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")

import pytest
import torch
from typer.testing import CliRunner

from msnewlesion.model import ModelConfig

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _small_torch() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def tiny_config() -> ModelConfig:
    return ModelConfig(name="tiny", width=4, patch_size=(32, 32, 32), spacing=(1.0, 1.0, 1.0))
