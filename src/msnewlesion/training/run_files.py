"""A training run's folder: its files, checkpoints written atomically, and the per-iteration log."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from msnewlesion.errors import InputError, OutputExistsError, parameter
from msnewlesion.io import atomic_directory, write_json, write_text
from msnewlesion.model.checkpoint import write_model_files
from msnewlesion.model.config import ModelConfig
from msnewlesion.model.network import CoactSeg

__all__ = [
    "LOG_COLUMNS",
    "RUN_FILES",
    "STATE_NAME",
    "append_log",
    "prepare_run_dir",
    "save_best",
    "save_checkpoint",
    "tensorboard_writer",
    "truncate_log",
]

STATE_NAME = "training_state.pt"
LOG_COLUMNS = (
    "iteration",
    "loss",
    "all_lesion_loss",
    "new_lesion_loss",
    "relation_loss",
    "relation_weight",
    "lr",
    "seconds",
    "val_new_lesion_dice",
    "val_new_lesion_f1",
    "val_new_lesion_pooled_f1",
    "val_false_positive_lesions",
    "val_all_lesion_dice",
    "val_mean_dice",
)
RUN_FILES = ("last", "best", "log.csv", "train_config.yaml", "train_summary.json", "tensorboard")


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    # A run killed while writing a checkpoint leaves a hidden temporary folder, never a finished-looking one.
    for leftover in [*run_dir.glob(".last.*"), *run_dir.glob(".best.*")]:
        shutil.rmtree(leftover, ignore_errors=True)
    if resume:
        if not (run_dir / "last" / STATE_NAME).is_file():
            raise InputError(f"nothing to resume in {run_dir}: it holds no last/{STATE_NAME}")
        return
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{run_dir} already holds a training run ({', '.join(existing)}); pass {parameter('resume', True)} to "
            f"continue it or {parameter('overwrite', True)} to start again"
        )
    for name in existing:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def save_checkpoint(
    run_dir: Path,
    network: CoactSeg,
    model_config: ModelConfig,
    state: dict[str, Any],
) -> None:
    with atomic_directory(run_dir / "last", overwrite=True) as temporary:
        write_model_files(network, temporary, config=model_config)
        torch.save(state, temporary / STATE_NAME)


def save_best(run_dir: Path, network: CoactSeg, model_config: ModelConfig, metrics: dict[str, Any]) -> None:
    with atomic_directory(run_dir / "best", overwrite=True) as temporary:
        write_model_files(network, temporary, config=model_config)
        write_json(temporary / "validation.json", metrics)


def truncate_log(path: Path, last_iteration: int) -> None:
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["iteration"]) <= last_iteration]
    _write_log(path, rows)


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    lines = [",".join(LOG_COLUMNS)]
    lines += [",".join(str(row.get(column, "")) for column in LOG_COLUMNS) for row in rows]
    write_text(path, "\n".join(lines) + "\n")


def append_log(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        if new:
            handle.write(",".join(LOG_COLUMNS) + "\n")
        handle.write(",".join(_format(row.get(column, "")) for column in LOG_COLUMNS) + "\n")


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def tensorboard_writer(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
