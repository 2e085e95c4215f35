"""Seconds per training iteration of CoactSeg, for the tiny test config and the published one.

Times the real training step (mixed 4 + 4 batch from `draw_batch`, forward, CoactSeg loss, backward,
Adam) on synthetic in-memory samples, so it measures the network and the optimiser, not the disk.

    python benchmarks/train_speed.py                      # CPU: tiny and full width
    python benchmarks/train_speed.py --device cuda        # GPU, fp32 and mixed precision
    python benchmarks/train_speed.py --configs full --precisions fp32 bf16

Run by hand; the numbers measured are in docs/training.md.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from msnewlesion.device import resolve_device
from msnewlesion.model import CoactSeg, ModelConfig
from msnewlesion.model.losses import coactseg_loss
from msnewlesion.training.config import TrainConfig
from msnewlesion.training.data import TrainingSample, draw_batch

CONFIGS = {
    "tiny": TrainConfig(width=4, patch_size=32, batch_size=4),
    "demo": TrainConfig(width=8, patch_size=80, batch_size=8),
    "full": TrainConfig(width=16, patch_size=80, batch_size=8),
}


def synthetic_samples(shape: tuple[int, int, int], count: int, longitudinal: bool) -> list[TrainingSample]:
    rng = np.random.default_rng(0)
    samples = []
    for index in range(count):
        image = rng.normal(size=shape).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        label[40:50, 40:50, 40:50] = 1
        samples.append(
            TrainingSample(
                subject=f"s{index}",
                longitudinal=longitudinal,
                baseline=image,
                followup=image + label if longitudinal else image,
                label=label,
                brain=np.ones(shape, bool),
                foreground=np.flatnonzero(label),
                spacing=(1.0, 1.0, 1.0),
                original_shape=shape,
            )
        )
    return samples


def time_config(name: str, config: TrainConfig, device: torch.device, precision: str, steps: int) -> float:
    torch.manual_seed(0)
    network = CoactSeg(ModelConfig(width=config.width, patch_size=(config.patch_size,) * 3)).to(device).train()
    channels_last = device.type == "cpu"  # as the training loop does
    if channels_last:
        network = network.to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)
    shape = (max(config.patch_size + 16, 96),) * 3
    longitudinal = synthetic_samples(shape, 4, True)
    single = synthetic_samples(shape, 4, False)

    def step(iteration: int) -> None:
        batch = draw_batch(longitudinal, single, config, iteration=iteration)
        inputs, target = batch.inputs.to(device), batch.target.to(device)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            output = network(inputs)
        loss = coactseg_loss(output, target, batch.longitudinal, iteration=iteration).total
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step(1)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for iteration in range(2, steps + 2):
        step(iteration)
    seconds = (time.perf_counter() - started) / steps
    memory = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else ""
    print(
        f"{name:5s} width {config.width:2d}, {config.batch_size} × {config.patch_size}³, {precision}: "
        f"{seconds:.3f} s per iteration{memory}",
        flush=True,
    )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", nargs="+", default=["tiny", "full"], choices=sorted(CONFIGS))
    parser.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    device = resolve_device(args.device)
    precisions = args.precisions or (["fp32", "bf16"] if device.type != "cpu" else ["fp32"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    for config_name in args.configs:
        for precision in precisions:
            time_config(config_name, CONFIGS[config_name], device, precision, args.steps)


if __name__ == "__main__":
    main()
