"""The CoactSeg training loop: mixed batches, checkpoints, exact resume, validation, DDP.

Runs on a CPU, one GPU, or several GPUs (or CPU processes) under ``torchrun``, where it uses
DistributedDataParallel (NCCL on GPUs, gloo on CPUs). Rank 0 writes everything.

A run folder holds:

- ``train_config.yaml``: the settings of the run (what ``--resume`` continues with);
- ``last/``: a model folder (``config.json``, ``model.safetensors``) plus ``training_state.pt``
  (optimizer, scheduler, RNG and iteration), rewritten atomically every ``save_every`` iterations;
- ``best/``: the model folder with the best validation metric so far;
- ``log.csv``: one row per iteration, with validation metrics on validation iterations;
- ``train_summary.json``: the outcome (and ``tensorboard/`` when TensorBoard is installed).
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from msnewlesion import __version__
from msnewlesion.device import resolve_device
from msnewlesion.errors import InputError, OutputExistsError
from msnewlesion.inference import SlidingWindowOptions, sliding_window_predict
from msnewlesion.io import atomic_directory, write_json, write_text
from msnewlesion.model.checkpoint import WEIGHTS_NAME, load_model, write_model_files
from msnewlesion.model.config import ModelConfig
from msnewlesion.model.losses import LossWeights, coactseg_loss
from msnewlesion.model.network import CoactSeg
from msnewlesion.progress import ProgressCallback
from msnewlesion.training.config import TrainConfig
from msnewlesion.training.data import TrainingSample, batches, load_samples
from msnewlesion.training.manifest import Manifest, read_manifest, validate_manifest

__all__ = ["StepLog", "TrainResult", "train"]

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


@dataclass(frozen=True)
class StepLog:
    """What one iteration did, for progress displays."""

    iteration: int
    iterations: int
    loss: float
    all_lesion: float
    new_lesion: float
    relation: float
    relation_weight: float
    lr: float
    seconds: float
    validation: dict[str, float] | None = None
    checkpoint: bool = False


@dataclass
class TrainResult:
    run_dir: Path
    iterations: int
    iterations_done: int
    last: Path
    best: Path | None
    best_metric: str
    best_value: float | None
    best_iteration: int | None
    seconds: float
    world_size: int
    rank_checksums: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_name: str) -> tuple[_Distributed, torch.device]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _Distributed(), resolve_device(device_name)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wants_cuda = (device_name in ("auto", "cuda") and torch.cuda.is_available()) or device_name.startswith("cuda")
    if wants_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return _Distributed(rank=rank, world_size=world_size, local_rank=local_rank), device


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "fp16" or (precision == "auto" and not torch.cuda.is_bf16_supported()):
            return torch.float16
        return torch.bfloat16
    if device.type == "cpu":
        if precision == "fp16":
            raise InputError('fp16 training is not supported on the CPU: use `precision="bf16"` or fp32')
        return torch.bfloat16 if precision == "bf16" else None
    return None


def _iteration_seed(seed: int, iteration: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, iteration, rank, 7]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _lr_factor(config: TrainConfig) -> Callable[[int], float]:
    if config.lr_schedule == "poly":
        return lambda step: max(1.0 - step / config.iterations, 0.0) ** 0.9
    return lambda step: 1.0


def _checksum(network: nn.Module) -> str:
    # Parameters only: under DDP each rank's batch-norm statistics follow its own last batch until
    # rank 0's are broadcast again at the next forward pass (rank 0's are the ones saved).
    digest = hashlib.sha256()
    for name, tensor in sorted(network.named_parameters()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _out_of_time(started: float, limit: float | None, dist_info: _Distributed) -> bool:
    if limit is None:
        return False
    decision = torch.tensor([time.perf_counter() - started >= limit], dtype=torch.int32)
    if dist_info.enabled:
        # every rank must stop at the same iteration: rank 0's clock decides
        if dist.get_backend() == "nccl":
            decision = decision.cuda()
        dist.broadcast(decision, src=0)
    return bool(decision.item())


def _prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
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
            f"{run_dir} already holds a training run ({', '.join(existing)}); pass `resume=True` to continue it "
            "or `overwrite=True` to start again"
        )
    for name in existing:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def _model_config(config: TrainConfig, spacing: tuple[float, ...], manifest: Manifest) -> ModelConfig:
    train_rows = manifest.split("train")
    n_long = sum(row.longitudinal for row in train_rows)
    n_single = len(train_rows) - n_long
    return ModelConfig(
        name=config.model_name,
        width=config.width,
        norm=config.norm,
        dropout=config.dropout,
        spacing=tuple(spacing),
        patch_size=(config.patch_size,) * 3,
        intensity_normalization=config.intensity_normalization,
        description=config.description or f"CoactSeg trained with msnewlesion {__version__}",
        training_data=" ".join(
            part
            for part in (
                config.training_data,
                f"{n_long} two-time-point pair(s) with new-lesion labels and {n_single} single-time-point "
                f"scan(s) with all-lesion labels, from {manifest.path.name}.",
            )
            if part
        ),
        license=config.license,
        extra={
            "training": {"iterations": config.iterations, "seed": config.seed, "init_from": config.init_from or None},
            **({"input_domain": dict(config.input_domain)} if config.input_domain else {}),
        },
    )


def _initialise_from(network: CoactSeg, spec: str) -> None:
    """Start from another model's weights (fine-tuning): same architecture and width, loaded strictly.

    ``spec`` is a model folder, a registry name or a Hub repository, as for ``predict --model``.
    """
    from msnewlesion.hub import resolve_model

    folder = resolve_model(spec).path
    start = load_model(folder)
    ours, theirs = network.config, start.config
    different = [
        name for name in ("architecture", "width", "norm", "in_channels", "num_classes")
        if getattr(ours, name) != getattr(theirs, name)
    ]  # fmt: skip
    if different:
        listed = ", ".join(
            f"{name} {getattr(theirs, name)!r} (this run: {getattr(ours, name)!r})" for name in different
        )
        raise InputError(f"init_from {spec} ({folder}) cannot start this run: its {listed}")
    network.load_state_dict(start.network.state_dict())


def _save_checkpoint(
    run_dir: Path,
    network: CoactSeg,
    model_config: ModelConfig,
    state: dict[str, Any],
) -> None:
    with atomic_directory(run_dir / "last", overwrite=True) as temporary:
        write_model_files(network, temporary, config=model_config)
        torch.save(state, temporary / STATE_NAME)


def _save_best(run_dir: Path, network: CoactSeg, model_config: ModelConfig, metrics: dict[str, Any]) -> None:
    with atomic_directory(run_dir / "best", overwrite=True) as temporary:
        write_model_files(network, temporary, config=model_config)
        write_json(temporary / "validation.json", metrics)


def _validate(
    network: CoactSeg, samples: list[TrainingSample], config: TrainConfig, device: torch.device
) -> dict[str, float]:
    from msnewlesion.metrics import evaluate_case

    options = SlidingWindowOptions(
        patch_size=(config.patch_size,) * 3,
        overlap=config.val_overlap,
        precision="fp32" if device.type == "cpu" else "auto",
    )
    new_dice, new_f1, all_dice = [], [], []
    detected_ref = refs = detected_pred = preds = false_positives = 0
    # sliding_window_predict runs an eval-mode copy: the training network's state is never touched
    for sample in samples:
        maps = sliding_window_predict(
            network,
            sample.baseline,
            sample.followup if sample.longitudinal else None,
            options=options,
            brain_mask=sample.brain,
            device=device,
        )
        if sample.longitudinal:
            result = evaluate_case(maps.new > 0.5, sample.label > 0, sample.spacing)
            detected_ref += result.n_detected_ref_lesions
            refs += result.n_ref_lesions
            detected_pred += result.n_detected_pred_lesions
            preds += result.n_pred_lesions
            false_positives += result.n_fp_lesions
            if result.n_ref_lesions:  # pairs without new lesions count by their false positives only
                new_dice.append(result.dice)
                new_f1.append(result.lesion_f1)
        else:
            result = evaluate_case(maps.baseline > 0.5, sample.label > 0, sample.spacing)
            all_dice.append(result.dice)

    def mean(values: list[float]) -> float:
        finite = [v for v in values if v is not None and math.isfinite(v)]
        return float(np.mean(finite)) if finite else float("nan")

    sensitivity = detected_ref / refs if refs else float("nan")
    ppv = detected_pred / preds if preds else (1.0 if refs else float("nan"))
    pooled_f1 = 2 * sensitivity * ppv / (sensitivity + ppv) if sensitivity + ppv > 0 else 0.0
    metrics = {
        "val_new_lesion_dice": mean(new_dice),
        "val_new_lesion_f1": mean(new_f1),
        "val_new_lesion_pooled_f1": pooled_f1 if refs else float("nan"),
        "val_false_positive_lesions": float(false_positives),
        "val_all_lesion_dice": mean(all_dice),
    }
    present = [v for v in (metrics["val_new_lesion_dice"], metrics["val_all_lesion_dice"]) if math.isfinite(v)]
    metrics["val_mean_dice"] = float(np.mean(present)) if present else float("nan")
    return metrics


def _truncate_log(path: Path, last_iteration: int) -> None:
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["iteration"]) <= last_iteration]
    _write_log(path, rows)


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    lines = [",".join(LOG_COLUMNS)]
    lines += [",".join(str(row.get(column, "")) for column in LOG_COLUMNS) for row in rows]
    write_text(path, "\n".join(lines) + "\n")


def _append_log(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        if new:
            handle.write(",".join(LOG_COLUMNS) + "\n")
        handle.write(",".join(_format(row.get(column, "")) for column in LOG_COLUMNS) + "\n")


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def train(
    manifest_path: str | Path,
    run_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    on_step: Callable[[StepLog], None] | None = None,
    progress: ProgressCallback | None = None,
    time_limit: float | None = None,
) -> TrainResult:
    """Train CoactSeg on a manifest of heterogeneous samples.

    Parameters
    ----------
    manifest_path : path-like
        The training manifest (see :mod:`msnewlesion.training.manifest`).
    run_dir : path-like
        Where checkpoints and logs go.
    config : TrainConfig, optional
        The settings (paper defaults). With ``resume``, ``None`` continues with the saved settings.
    resume : bool
        Continue from ``run_dir/last`` exactly where it stopped.
    overwrite : bool
        Replace an existing run in ``run_dir``.
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (under torchrun, each rank takes its local GPU).
    on_step : callable, optional
        Called after each iteration with a :class:`StepLog` (rank 0 only).
    progress : ProgressCallback, optional
        Reports loading and checking.
    time_limit : float, optional
        Seconds of training after which the run stops cleanly: it validates, writes ``last/`` and
        returns (with ``completed`` false), ready for ``resume`` in a later job. For clusters with
        job time limits.

    Returns
    -------
    TrainResult

    Examples
    --------
    >>> result = train("manifest.csv", "runs/demo", TrainConfig(iterations=200, width=8))  # doctest: +SKIP
    >>> result.best  # doctest: +SKIP
    PosixPath('runs/demo/best')
    """
    run_dir = Path(run_dir)
    dist_info, torch_device = _setup_distributed(device)
    try:
        return _train(
            manifest_path, run_dir, config, resume, overwrite, torch_device, dist_info, on_step, progress, time_limit
        )
    finally:
        if dist_info.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    manifest_path: str | Path,
    run_dir: Path,
    config: TrainConfig | None,
    resume: bool,
    overwrite: bool,
    device: torch.device,
    dist_info: _Distributed,
    on_step: Callable[[StepLog], None] | None,
    progress: ProgressCallback | None,
    time_limit: float | None,
) -> TrainResult:
    started = time.perf_counter()
    if dist_info.main:
        _prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    if dist_info.enabled:
        dist.barrier()
    if resume:
        saved = TrainConfig.load(run_dir / "train_config.yaml")
        config = saved if config is None else config
    config = config or TrainConfig()

    manifest = read_manifest(manifest_path)
    # Image values are checked as the samples load; reading every image twice would double start-up.
    problems = validate_manifest(manifest, check_images=False, progress=progress if dist_info.main else None)
    if problems:
        raise InputError(
            f"manifest {manifest.path} has {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems)
        )
    train_rows, val_rows = manifest.split("train"), manifest.split("val")
    samples = load_samples(train_rows, config.patch_size, progress, workers=config.workers)
    longitudinal = [s for s in samples if s.longitudinal]
    single = [s for s in samples if not s.longitudinal]
    validation = load_samples(val_rows, config.patch_size, progress, workers=config.workers) if dist_info.main else []
    model_config = _model_config(config, samples[0].spacing, manifest)

    torch.manual_seed(config.seed)
    network = CoactSeg(model_config).to(device)
    if config.init_from and not resume:
        _initialise_from(network, config.init_from)
    # oneDNN trains 3D convolutions about twice as fast on channels-last tensors
    channels_last = device.type == "cpu"
    if channels_last:
        network = network.to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config))
    autocast_dtype = _autocast_dtype(config.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype is torch.float16)
    weights = LossWeights(
        config.new_lesion_weight, config.relation_weight, config.relation_start, config.cross_entropy_weight
    )

    start = 0
    best_value: float | None = None
    best_iteration: int | None = None
    if resume:
        checkpoint = load_model(run_dir / "last", device=device)
        network.load_state_dict(checkpoint.network.state_dict())
        state = torch.load(run_dir / "last" / STATE_NAME, map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("grad_scaler"):
            scaler.load_state_dict(state["grad_scaler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        start = int(state["iteration"])
        best_value = state.get("best_value")
        best_iteration = state.get("best_iteration")
        if start >= config.iterations:
            raise InputError(
                f"the run in {run_dir} already reached iteration {start}; raise `iterations` to train further"
            )
    if dist_info.main:
        write_text(run_dir / "train_config.yaml", config.to_yaml())
        if resume:
            _truncate_log(run_dir / "log.csv", start)
    writer = _tensorboard(run_dir) if dist_info.main else None

    model: nn.Module = network
    if dist_info.enabled:
        model = nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None
        )
    network.train()
    clock = training_started = time.perf_counter()
    last_iteration = start
    for iteration, batch in batches(
        longitudinal, single, config, start=start, stop=config.iterations, rank=dist_info.rank, workers=config.workers
    ):
        torch.manual_seed(_iteration_seed(config.seed, iteration, dist_info.rank))
        inputs = batch.inputs.to(device, non_blocking=True)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
        target = batch.target.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            output = model(inputs)
        terms = coactseg_loss(
            output,
            target,
            batch.longitudinal,
            iteration=iteration,
            weights=weights,
            lesions=batch.lesions.to(device, non_blocking=True) if batch.lesions is not None else None,
            lesions_known=batch.lesions_known,
        )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(terms.total).backward()
        scaler.step(optimizer)
        scaler.update()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        loss = float(terms.total.detach())
        if not math.isfinite(loss):
            raise InputError(
                f"the loss became {loss} at iteration {iteration}: lower the learning rate (`lr`) or check "
                "the inputs' normalisation"
            )

        out_of_time = _out_of_time(training_started, time_limit, dist_info)
        is_last = iteration == config.iterations or out_of_time
        metrics: dict[str, float] | None = None
        if (iteration % config.val_every == 0 or is_last) and validation and dist_info.main:
            metrics = _validate(network, validation, config, device)
            value = metrics[f"val_{config.best_metric}"]
            if math.isfinite(value) and (best_value is None or value > best_value):
                best_value, best_iteration = value, iteration
                _save_best(run_dir, network, model_config, {"iteration": iteration, **metrics})
        saving = iteration % config.save_every == 0 or is_last
        if saving and dist_info.main:
            state = {
                "format": 1,
                "iteration": iteration,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "grad_scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "torch_rng": torch.get_rng_state(),
                "best_value": best_value,
                "best_iteration": best_iteration,
                "world_size": dist_info.world_size,
                "msnewlesion_version": __version__,
            }
            _save_checkpoint(run_dir, network, model_config, state)
        seconds = time.perf_counter() - clock
        clock = time.perf_counter()
        if dist_info.main:
            row = {
                "iteration": iteration,
                "loss": loss,
                "all_lesion_loss": terms.all_lesion,
                "new_lesion_loss": terms.new_lesion,
                "relation_loss": terms.relation,
                "relation_weight": terms.relation_weight,
                "lr": lr,
                "seconds": round(seconds, 4),
                **(metrics or {}),
            }
            _append_log(run_dir / "log.csv", row)
            if writer is not None:
                writer.add_scalar("loss/total", loss, iteration)
                writer.add_scalar("loss/all_lesion", terms.all_lesion, iteration)
                writer.add_scalar("loss/new_lesion", terms.new_lesion, iteration)
                writer.add_scalar("loss/relation", terms.relation, iteration)
                writer.add_scalar("lr", lr, iteration)
                for key, value in (metrics or {}).items():
                    writer.add_scalar(f"validation/{key}", value, iteration)
            if on_step is not None:
                on_step(
                    StepLog(
                        iteration=iteration,
                        iterations=config.iterations,
                        loss=loss,
                        all_lesion=terms.all_lesion,
                        new_lesion=terms.new_lesion,
                        relation=terms.relation,
                        relation_weight=terms.relation_weight,
                        lr=lr,
                        seconds=seconds,
                        validation=metrics,
                        checkpoint=saving,
                    )
                )
        if dist_info.enabled and (saving or iteration % config.val_every == 0):
            dist.barrier()
        last_iteration = iteration
        if out_of_time:
            break
    if writer is not None:
        writer.close()

    checksums = [_checksum(network)]
    if dist_info.enabled:
        gathered: list[str | None] = [None] * dist_info.world_size
        dist.all_gather_object(gathered, checksums[0])
        checksums = [str(c) for c in gathered]
    result = TrainResult(
        run_dir=run_dir,
        iterations=config.iterations,
        iterations_done=last_iteration,
        last=run_dir / "last",
        best=run_dir / "best" if (run_dir / "best" / WEIGHTS_NAME).exists() else None,
        best_metric=config.best_metric,
        best_value=best_value,
        best_iteration=best_iteration,
        seconds=time.perf_counter() - started,
        world_size=dist_info.world_size,
        rank_checksums=checksums,
    )
    if dist_info.main:
        write_json(
            run_dir / "train_summary.json",
            {
                "iterations": config.iterations,
                "iterations_done": last_iteration,
                "stopped_by_time_limit": last_iteration < config.iterations,
                "resumed_from": start if resume else None,
                "best_metric": config.best_metric,
                "best_value": best_value,
                "best_iteration": best_iteration,
                "seconds_this_session": round(result.seconds, 2),
                "world_size": dist_info.world_size,
                "rank_weight_checksums": checksums,
                "ranks_in_sync": len(set(checksums)) == 1,
                "device": str(device),
                "precision": str(autocast_dtype).replace("torch.", "") if autocast_dtype else "fp32",
                "tensorboard": writer is not None,
                "msnewlesion_version": __version__,
            },
        )
    if len(set(checksums)) != 1:
        raise RuntimeError(f"the ranks ended with different weights: {checksums}")
    return result
