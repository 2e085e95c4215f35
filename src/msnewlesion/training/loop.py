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

import hashlib
import math
import os
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
from msnewlesion.device import resolve_device, resolve_precision
from msnewlesion.errors import InputError, parameter
from msnewlesion.io import write_json, write_text
from msnewlesion.model.checkpoint import load_model
from msnewlesion.model.config import ModelConfig
from msnewlesion.model.losses import LossWeights, coactseg_loss
from msnewlesion.model.network import CoactSeg
from msnewlesion.progress import ProgressCallback
from msnewlesion.settings import WEIGHTS_FILE
from msnewlesion.training.config import TrainConfig
from msnewlesion.training.data import TrainingSample, batches, load_samples
from msnewlesion.training.manifest import Manifest, read_manifest, validate_manifest
from msnewlesion.training.run_files import (
    STATE_NAME,
    append_log,
    prepare_run_dir,
    save_best,
    save_checkpoint,
    tensorboard_writer,
    truncate_log,
)
from msnewlesion.training.validation import validate

__all__ = ["StepLog", "TrainResult", "train"]

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


def _model_config(config: TrainConfig, spacing: tuple[float, ...], manifest: Manifest) -> ModelConfig:
    train_rows = manifest.split("train")
    n_long = sum(row.longitudinal for row in train_rows)
    n_single = len(train_rows) - n_long
    return ModelConfig(
        name=config.model_name,
        width=config.width,
        norm=config.norm,
        dropout=config.dropout,
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
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
    session = _Session(run_dir, torch_device, dist_info, resume, overwrite, on_step, progress, time_limit)
    try:
        return _train(session, manifest_path, config)
    finally:
        if dist_info.enabled and dist.is_initialized():
            dist.destroy_process_group()


@dataclass(frozen=True)
class _Session:
    """How this process takes part in the run: where, on which device and rank, and who is told."""

    run_dir: Path
    device: torch.device
    dist_info: _Distributed
    resume: bool
    overwrite: bool
    on_step: Callable[[StepLog], None] | None
    progress: ProgressCallback | None
    time_limit: float | None


@dataclass
class _Data:
    manifest: Manifest
    longitudinal: list[TrainingSample]
    single: list[TrainingSample]
    validation: list[TrainingSample]
    spacing: tuple[float, ...]


def _load_data(manifest_path: str | Path, config: TrainConfig, session: _Session) -> _Data:
    progress = session.progress
    manifest = read_manifest(manifest_path)
    # Image values are checked as the samples load; reading every image twice would double start-up.
    problems = validate_manifest(manifest, check_images=False, progress=progress if session.dist_info.main else None)
    if problems:
        raise InputError(
            f"manifest {manifest.path} has {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems)
        )
    train_rows, val_rows = manifest.split("train"), manifest.split("val")
    samples = load_samples(train_rows, config.patch_size, progress, workers=config.workers)
    validation = (
        load_samples(val_rows, config.patch_size, progress, workers=config.workers) if session.dist_info.main else []
    )
    return _Data(
        manifest=manifest,
        longitudinal=[s for s in samples if s.longitudinal],
        single=[s for s in samples if not s.longitudinal],
        validation=validation,
        spacing=samples[0].spacing,
    )


@dataclass
class _Optimisation:
    """The network and everything that updates it, with the best validation so far."""

    network: CoactSeg
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    autocast_dtype: torch.dtype | None
    channels_last: bool
    start: int = 0
    best_value: float | None = None
    best_iteration: int | None = None

    def state(self, iteration: int, world_size: int) -> dict[str, Any]:
        """What ``training_state.pt`` holds, to resume exactly after ``iteration``."""
        return {
            "format": 1,
            "iteration": iteration,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "torch_rng": torch.get_rng_state(),
            "best_value": self.best_value,
            "best_iteration": self.best_iteration,
            "world_size": world_size,
            "msnewlesion_version": __version__,
        }

    def restore(self, run_dir: Path, device: torch.device, iterations: int) -> None:
        """Continue from ``run_dir/last`` exactly where it stopped."""
        checkpoint = load_model(run_dir / "last", device=device)
        self.network.load_state_dict(checkpoint.network.state_dict())
        state = torch.load(run_dir / "last" / STATE_NAME, map_location=device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self.start = int(state["iteration"])
        self.best_value = state.get("best_value")
        self.best_iteration = state.get("best_iteration")
        if self.start >= iterations:
            raise InputError(
                f"the run in {run_dir} already reached iteration {self.start}; raise {parameter('iterations')} "
                "to train further"
            )


def _optimisation(config: TrainConfig, model_config: ModelConfig, session: _Session) -> _Optimisation:
    device = session.device
    torch.manual_seed(config.seed)
    network = CoactSeg(model_config).to(device)
    if config.init_from and not session.resume:
        _initialise_from(network, config.init_from)
    # oneDNN trains 3D convolutions about twice as fast on channels-last tensors
    channels_last = device.type == "cpu"
    if channels_last:
        network = network.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]  # torch's stubs omit Module.to(memory_format=)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config))
    autocast_dtype = resolve_precision(config.precision, device, training=True)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype is torch.float16)
    optimisation = _Optimisation(network, optimizer, scheduler, scaler, autocast_dtype, channels_last)
    if session.resume:
        optimisation.restore(session.run_dir, device, config.iterations)
    return optimisation


def _report_step(session: _Session, writer: Any, step: StepLog) -> None:
    """The iteration's row in ``log.csv``, TensorBoard and ``on_step`` (rank 0 only)."""
    row = {
        "iteration": step.iteration,
        "loss": step.loss,
        "all_lesion_loss": step.all_lesion,
        "new_lesion_loss": step.new_lesion,
        "relation_loss": step.relation,
        "relation_weight": step.relation_weight,
        "lr": step.lr,
        "seconds": round(step.seconds, 4),
        **(step.validation or {}),
    }
    append_log(session.run_dir / "log.csv", row)
    if writer is not None:
        writer.add_scalar("loss/total", step.loss, step.iteration)
        writer.add_scalar("loss/all_lesion", step.all_lesion, step.iteration)
        writer.add_scalar("loss/new_lesion", step.new_lesion, step.iteration)
        writer.add_scalar("loss/relation", step.relation, step.iteration)
        writer.add_scalar("lr", step.lr, step.iteration)
        for key, value in (step.validation or {}).items():
            writer.add_scalar(f"validation/{key}", value, step.iteration)
    if session.on_step is not None:
        session.on_step(step)


def _train(session: _Session, manifest_path: str | Path, config: TrainConfig | None) -> TrainResult:
    started = time.perf_counter()
    run_dir, device, dist_info = session.run_dir, session.device, session.dist_info
    if dist_info.main:
        prepare_run_dir(run_dir, resume=session.resume, overwrite=session.overwrite)
    if dist_info.enabled:
        dist.barrier()
    if session.resume:
        saved = TrainConfig.load(run_dir / "train_config.yaml")
        config = saved if config is None else config
    config = config or TrainConfig()

    data = _load_data(manifest_path, config, session)
    model_config = _model_config(config, data.spacing, data.manifest)
    optimisation = _optimisation(config, model_config, session)
    network, optimizer, scheduler, scaler = (
        optimisation.network, optimisation.optimizer, optimisation.scheduler, optimisation.scaler
    )  # fmt: skip
    autocast_dtype, start = optimisation.autocast_dtype, optimisation.start
    weights = LossWeights(
        config.new_lesion_weight, config.relation_weight, config.relation_start, config.cross_entropy_weight
    )
    if dist_info.main:
        write_text(run_dir / "train_config.yaml", config.to_yaml())
        if session.resume:
            truncate_log(run_dir / "log.csv", start)
    writer = tensorboard_writer(run_dir) if dist_info.main else None

    model: nn.Module = network
    if dist_info.enabled:
        model = nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None
        )
    network.train()
    clock = training_started = time.perf_counter()
    last_iteration = start
    for iteration, batch in batches(
        data.longitudinal, data.single, config, start=start, stop=config.iterations, rank=dist_info.rank,
        workers=config.workers,
    ):  # fmt: skip
        torch.manual_seed(_iteration_seed(config.seed, iteration, dist_info.rank))
        inputs = batch.inputs.to(device, non_blocking=True)
        if optimisation.channels_last:
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
                f"the loss became {loss} at iteration {iteration}: lower the learning rate ({parameter('lr')}) or "
                "check the inputs' normalisation"
            )

        out_of_time = _out_of_time(training_started, session.time_limit, dist_info)
        is_last = iteration == config.iterations or out_of_time
        metrics: dict[str, float] | None = None
        if (iteration % config.val_every == 0 or is_last) and data.validation and dist_info.main:
            metrics = validate(network, data.validation, config, device)
            value = metrics[f"val_{config.best_metric}"]
            if math.isfinite(value) and (optimisation.best_value is None or value > optimisation.best_value):
                optimisation.best_value, optimisation.best_iteration = value, iteration
                save_best(run_dir, network, model_config, {"iteration": iteration, **metrics})
        saving = iteration % config.save_every == 0 or is_last
        if saving and dist_info.main:
            save_checkpoint(run_dir, network, model_config, optimisation.state(iteration, dist_info.world_size))
        seconds = time.perf_counter() - clock
        clock = time.perf_counter()
        if dist_info.main:
            step = StepLog(
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
            _report_step(session, writer, step)
        if dist_info.enabled and (saving or iteration % config.val_every == 0):
            dist.barrier()
        last_iteration = iteration
        if out_of_time:
            break
    if writer is not None:
        writer.close()
    return _finish(session, config, optimisation, last_iteration, started, tensorboard=writer is not None)


def _finish(
    session: _Session, config: TrainConfig, optimisation: _Optimisation, last_iteration: int, started: float,
    *, tensorboard: bool,
) -> TrainResult:  # fmt: skip
    """Check that every rank holds the same weights, and write ``train_summary.json``."""
    run_dir, dist_info = session.run_dir, session.dist_info
    checksums = [_checksum(optimisation.network)]
    if dist_info.enabled:
        gathered: list[str | None] = [None] * dist_info.world_size
        dist.all_gather_object(gathered, checksums[0])
        checksums = [str(c) for c in gathered]
    result = TrainResult(
        run_dir=run_dir,
        iterations=config.iterations,
        iterations_done=last_iteration,
        last=run_dir / "last",
        best=run_dir / "best" if (run_dir / "best" / WEIGHTS_FILE).exists() else None,
        best_metric=config.best_metric,
        best_value=optimisation.best_value,
        best_iteration=optimisation.best_iteration,
        seconds=time.perf_counter() - started,
        world_size=dist_info.world_size,
        rank_checksums=checksums,
    )
    autocast_dtype = optimisation.autocast_dtype
    if dist_info.main:
        write_json(
            run_dir / "train_summary.json",
            {
                "iterations": config.iterations,
                "iterations_done": last_iteration,
                "stopped_by_time_limit": last_iteration < config.iterations,
                "resumed_from": optimisation.start if session.resume else None,
                "best_metric": config.best_metric,
                "best_value": optimisation.best_value,
                "best_iteration": optimisation.best_iteration,
                "seconds_this_session": round(result.seconds, 2),
                "world_size": dist_info.world_size,
                "rank_weight_checksums": checksums,
                "ranks_in_sync": len(set(checksums)) == 1,
                "device": str(session.device),
                "precision": str(autocast_dtype).replace("torch.", "") if autocast_dtype else "fp32",
                "tensorboard": tensorboard,
                "msnewlesion_version": __version__,
            },
        )
    if len(set(checksums)) != 1:
        raise RuntimeError(f"the ranks ended with different weights: {checksums}")
    return result
