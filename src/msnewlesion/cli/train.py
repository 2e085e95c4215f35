"""``msnewlesion train``: CoactSeg training on a manifest of heterogeneous samples."""

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from msnewlesion.cli.common import (
    DEVICE_HELP,
    DEVICE_METAVAR,
    choice,
    cli_errors,
    device_value,
    err_console,
    info,
    model_value,
    number_in,
    progress_bars,
)
from msnewlesion.settings import PRECISIONS


def _patch_size_value(value: Optional[int]) -> Optional[int]:
    if value is not None and value % 16:
        raise typer.BadParameter(f"{value} is not a multiple of 16 (the network pools four times)")
    return value


@cli_errors
def train(
    manifest: Path = typer.Argument(
        ..., help="Training manifest (CSV: subject, kind, baseline, followup, label, brain_mask, split)."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Run folder: checkpoints (last/, best/), log.csv."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML training config (defaults: the paper's)."),
    iterations: Optional[int] = typer.Option(None, "--iterations", min=1, help="Optimiser steps in all."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Patches per step."),
    patch_size: Optional[int] = typer.Option(
        None, "--patch-size", min=16, callback=_patch_size_value, help="Patch edge (multiple of 16)."
    ),
    width: Optional[int] = typer.Option(None, "--width", min=1, help="Network width (16 is the published one)."),
    lr: Optional[float] = typer.Option(
        None, "--lr", parser=number_in(0.0, math.inf, low_open=True), help="Learning rate (positive)."
    ),
    val_every: Optional[int] = typer.Option(None, "--val-every", min=1, help="Validate every N iterations."),
    save_every: Optional[int] = typer.Option(None, "--save-every", min=1, help="Checkpoint every N iterations."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
    precision: Optional[str] = typer.Option(
        None,
        "--precision",
        **choice(PRECISIONS),
        help="Autocast (default: the config's, auto: bf16 on CUDA GPUs, fp32 on CPUs).",
    ),
    init_from: Optional[str] = typer.Option(
        None,
        "--init-from",
        callback=model_value,
        help="Start from this model's weights (a folder, registry name or Hub repo): fine-tuning.",
    ),
    device: str = typer.Option("auto", "--device", metavar=DEVICE_METAVAR, callback=device_value, help=DEVICE_HELP),
    time_limit: Optional[float] = typer.Option(
        None,
        "--time-limit",
        min=0.0,
        help="Minutes of training after which the run stops cleanly, checkpointed "
        "for --resume (for cluster job limits).",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUTPUT exactly where it stopped."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start again, replacing the run in OUTPUT."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Check every row of the manifest, list every problem, and stop."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train CoactSeg on longitudinal pairs (new-lesion labels) and single scans (all-lesion labels).

    The manifest lists preprocessed images (see `msnewlesion preprocess`); relative paths are relative
    to its folder. Settings come from `--config` (YAML; every key is optional and defaults to the
    paper's: 80³ patches, batch 8 = 4 + 4, Adam lr 1e-2, 20k iterations, relation regulariser from
    10k, seed 1337), then from the flags. `--resume` continues a run with its saved settings (flags
    still override, e.g. more `--iterations`), bit-for-bit as if it had never stopped on a CPU.

    Under `torchrun --nproc_per_node N` the same command trains with DistributedDataParallel.

    **Examples**

        msnewlesion train manifest.csv -o runs/exp1 --dry-run

        msnewlesion train manifest.csv -o runs/exp1 --config train.yaml --device cuda

        msnewlesion train manifest.csv -o runs/exp1 --resume

        torchrun --nproc_per_node 4 -m msnewlesion train manifest.csv -o runs/exp1
    """
    from msnewlesion.io import claim_output_folder
    from msnewlesion.training import TrainConfig, check_manifest
    from msnewlesion.training import train as run_training

    if dry_run:
        with progress_bars(not quiet) as progress:
            parsed, problems = check_manifest(manifest, progress=progress)
        if problems:
            # One line per problem, each naming the manifest: every problem at once, grep-able.
            for problem in problems:
                err_console.print(
                    f"[bold red]error:[/] {escape(str(manifest))}: {escape(problem)}", highlight=False, soft_wrap=True
                )
            raise typer.Exit(code=1)
        train_rows, val_rows = parsed.split("train"), parsed.split("val")
        n_long = sum(r.longitudinal for r in train_rows)
        info(
            f"manifest OK: {len(parsed.rows)} samples: {n_long} longitudinal + {len(train_rows) - n_long} single "
            f"for training, {len(val_rows)} for validation"
        )
        return

    overrides = {
        "iterations": iterations,
        "batch_size": batch_size,
        "patch_size": patch_size,
        "width": width,
        "lr": lr,
        "val_every": val_every,
        "save_every": save_every,
        "seed": seed,
        "precision": precision,
        "init_from": init_from,
    }
    if resume and config is None:
        saved = output / "train_config.yaml"
        base = TrainConfig.load(saved) if saved.exists() else TrainConfig()
    else:
        base = TrainConfig.load(config) if config is not None else TrainConfig()
    settings = base.replace(**overrides)

    # Under torchrun only rank 0 reports (and holds the run folder); the other ranks train silently.
    main_rank = os.environ.get("RANK", "0") == "0"
    quiet = quiet or not main_rank
    claim = claim_output_folder(output, inputs=[manifest], command="train") if main_rank else contextlib.nullcontext()
    with claim, _TrainingBar(settings.iterations, enabled=not quiet) as bar, progress_bars(not quiet) as progress:
        result = run_training(
            manifest,
            output,
            settings,
            resume=resume,
            overwrite=overwrite,
            device=device,
            on_step=bar.update,
            progress=progress,
            time_limit=time_limit * 60 if time_limit is not None else None,
        )
    best = (
        f"; best {result.best_metric} {result.best_value:.4f} at iteration {result.best_iteration} → {result.best}"
        if result.best is not None and result.best_value is not None
        else "; no validation split, so no best/ model"
    )
    if main_rank:
        info(f"trained {result.iterations_done} iterations in {result.seconds:.0f} s → {result.last}{best}")
        if result.iterations_done < result.iterations:
            info(
                f"stopped at iteration {result.iterations_done} of {result.iterations} (--time-limit); "
                f"continue with: msnewlesion train {manifest} -o {output} --resume"
            )


class _TrainingBar:
    """A rich progress bar with loss, learning rate, iterations per second and ETA."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("lr {task.fields[lr]}"),
            TextColumn("{task.fields[speed]} it/s"),
            TextColumn("{task.fields[val]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=err_console,
        )
        self.task: TaskID | None = None
        self.started = time.perf_counter()
        self.first_iteration: int | None = None
        self.last_validation = ""

    def __enter__(self) -> "_TrainingBar":
        if self.enabled:
            self.progress.start()
            self.task = self.progress.add_task("training", total=self.total, loss="-", lr="-", speed="-", val="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.stop()

    def update(self, step) -> None:
        if self.first_iteration is None:
            self.first_iteration = step.iteration - 1
            self.started = time.perf_counter() - step.seconds
        done = step.iteration - self.first_iteration
        speed = done / max(time.perf_counter() - self.started, 1e-9)
        if step.validation:
            shown = {k.replace("val_", ""): v for k, v in step.validation.items() if v == v}
            self.last_validation = " ".join(f"{k} {v:.3f}" for k, v in shown.items())
        if self.task is not None:
            self.progress.update(
                self.task,
                completed=step.iteration,
                loss=f"{step.loss:.4f}",
                lr=f"{step.lr:.2g}",
                speed=f"{speed:.2f}",
                val=self.last_validation,
            )
