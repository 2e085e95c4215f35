"""Training samples in memory, lesion-weighted patch sampling and augmentation.

Every random choice of a batch comes from a generator seeded by (seed, iteration, rank), so a
batch depends only on those three numbers: a resumed run draws exactly the batches the
uninterrupted run would have drawn.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from msnewlesion.io import load_mask, load_volume
from msnewlesion.model.network import make_input
from msnewlesion.progress import ProgressCallback, report
from msnewlesion.training.config import TrainConfig
from msnewlesion.training.manifest import ManifestRow

__all__ = ["Batch", "TrainingSample", "augment", "batches", "draw_batch", "load_samples", "sample_patch"]


@dataclass
class TrainingSample:
    """One manifest row loaded in memory (padded to at least one patch)."""

    subject: str
    longitudinal: bool
    baseline: np.ndarray
    followup: np.ndarray
    label: np.ndarray
    brain: np.ndarray
    foreground: np.ndarray  # flat indices of label voxels
    spacing: tuple[float, float, float]
    original_shape: tuple[int, int, int]


def _pad_to(array: np.ndarray, minimum: int, value: float) -> np.ndarray:
    padding = [(max(minimum - s, 0) // 2, max(minimum - s, 0) - max(minimum - s, 0) // 2) for s in array.shape]
    if not any(a or b for a, b in padding):
        return array
    return np.pad(array, padding, mode="constant", constant_values=value)


def load_sample(row: ManifestRow, patch_size: int) -> TrainingSample:
    baseline_volume = load_volume(row.baseline, what=f"baseline of {row.where()}")
    baseline = baseline_volume.data
    followup = load_volume(row.followup, what=f"follow-up of {row.where()}").data if row.followup else baseline
    label = load_mask(row.label, what=f"label of {row.where()}").data
    brain = load_mask(row.brain_mask, what=f"brain mask of {row.where()}").data if row.brain_mask else baseline != 0
    outside = baseline[~brain]
    background = float(np.median(outside)) if outside.size else 0.0
    baseline = _pad_to(baseline, patch_size, background)
    followup = baseline if row.followup is None else _pad_to(followup, patch_size, background)
    label = _pad_to(label.astype(np.uint8), patch_size, 0)
    brain = _pad_to(brain, patch_size, False)
    return TrainingSample(
        subject=row.subject,
        longitudinal=row.longitudinal,
        baseline=baseline,
        followup=followup,
        label=label,
        brain=brain,
        foreground=np.flatnonzero(label),
        spacing=baseline_volume.spacing,
        original_shape=baseline_volume.shape,
    )


def load_samples(
    rows: Sequence[ManifestRow], patch_size: int, progress: ProgressCallback | None = None, *, workers: int = 0
) -> list[TrainingSample]:
    """Load every row, in ``workers`` threads (decompression runs outside the GIL), in manifest order."""
    report(progress, "loading samples", 0, len(rows))
    if workers <= 0:
        samples = []
        for index, row in enumerate(rows):
            samples.append(load_sample(row, patch_size))
            report(progress, "loading samples", index + 1, len(rows))
        return samples
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="msnewlesion-load") as pool:
        futures = [pool.submit(load_sample, row, patch_size) for row in rows]
        samples = []
        for index, future in enumerate(futures):
            samples.append(future.result())
            report(progress, "loading samples", index + 1, len(rows))
    return samples


def sample_patch(
    sample: TrainingSample, patch_size: int, rng: np.random.Generator, crop_shift: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A lesion-weighted crop: centred on a random label voxel moved by up to ``crop_shift`` voxels.

    A sample without label voxels gives a uniformly random crop.
    """
    shape = np.array(sample.label.shape)
    if sample.foreground.size:
        centre = np.array(np.unravel_index(sample.foreground[rng.integers(sample.foreground.size)], shape))
        centre = centre + rng.integers(-crop_shift, crop_shift + 1, size=3)
        start = np.clip(centre - patch_size // 2, 0, shape - patch_size)
    else:
        start = np.array([rng.integers(0, s - patch_size + 1) for s in shape])
    window = tuple(slice(int(s), int(s) + patch_size) for s in start)
    return sample.baseline[window], sample.followup[window], sample.label[window]


def augment(
    baseline: np.ndarray,
    followup: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    config: TrainConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random flips and 90° rotations (the identity among them), small rotations and intensity jitter.

    The same geometric change is applied to both time points and the label, and the same intensity
    change to both time points, so the difference channel keeps its meaning.
    """
    arrays = [baseline, followup, label]
    if config.flip_rot90:
        turns = int(rng.integers(0, 4))
        flips = [axis for axis in range(3) if rng.random() < 0.5]
        arrays = [np.rot90(a, k=turns, axes=(0, 1)) for a in arrays]
        arrays = [np.flip(a, axis=tuple(flips)) if flips else a for a in arrays]
    if config.rotation_degrees > 0:
        angle = float(rng.uniform(-config.rotation_degrees, config.rotation_degrees))
        arrays = [
            ndimage.rotate(a, angle, axes=(0, 1), reshape=False, order=0 if i == 2 else 1, mode="nearest")
            for i, a in enumerate(arrays)
        ]
    base, follow, lab = (np.ascontiguousarray(a) for a in arrays)
    if config.intensity_jitter > 0:
        scale = 1.0 + float(rng.uniform(-config.intensity_jitter, config.intensity_jitter))
        shift = float(rng.uniform(-config.intensity_jitter, config.intensity_jitter))
        base = base * scale + shift
        follow = follow * scale + shift
    return base.astype(np.float32, copy=False), follow.astype(np.float32, copy=False), lab


@dataclass
class Batch:
    inputs: torch.Tensor  # (N, 3, P, P, P)
    target: torch.Tensor  # (N, P, P, P) float
    longitudinal: torch.Tensor  # (N,) bool
    subjects: list[str]


def batch_counts(config: TrainConfig, has_longitudinal: bool, has_single: bool) -> tuple[int, int]:
    """How many two-time-point and single-time-point patches make one batch."""
    if has_longitudinal and has_single:
        longitudinal = round(config.batch_size * config.longitudinal_fraction)
        longitudinal = min(max(longitudinal, 1), config.batch_size - 1) if config.batch_size > 1 else 1
        return longitudinal, config.batch_size - longitudinal
    return (config.batch_size, 0) if has_longitudinal else (0, config.batch_size)


def draw_batch(
    longitudinal: Sequence[TrainingSample],
    single: Sequence[TrainingSample],
    config: TrainConfig,
    *,
    iteration: int,
    rank: int = 0,
) -> Batch:
    """The batch of ``iteration`` on ``rank``: a pure function of (seed, iteration, rank)."""
    rng = np.random.default_rng([config.seed, iteration, rank])
    n_long, n_single = batch_counts(config, bool(longitudinal), bool(single))
    chosen: list[TrainingSample] = []
    for pool, count in ((longitudinal, n_long), (single, n_single)):
        if count:
            indices = rng.choice(len(pool), size=count, replace=len(pool) < count)
            chosen.extend(pool[int(i)] for i in indices)
    bases, follows, labels = [], [], []
    for sample in chosen:
        b, f, y = sample_patch(sample, config.patch_size, rng, config.crop_shift)
        b, f, y = augment(b, f, y, rng, config)
        bases.append(b)
        follows.append(f)
        labels.append(y)
    baseline = torch.from_numpy(np.stack(bases))
    followup = torch.from_numpy(np.stack(follows))
    return Batch(
        inputs=make_input(baseline, followup),
        target=torch.from_numpy(np.stack(labels).astype(np.float32)),
        longitudinal=torch.tensor([s.longitudinal for s in chosen], dtype=torch.bool),
        subjects=[s.subject for s in chosen],
    )


def batches(
    longitudinal: Sequence[TrainingSample],
    single: Sequence[TrainingSample],
    config: TrainConfig,
    *,
    start: int,
    stop: int,
    rank: int = 0,
    workers: int = 0,
) -> Iterator[tuple[int, Batch]]:
    """The batches of iterations ``start + 1`` to ``stop``.

    With ``workers`` > 0, upcoming batches are drawn ahead in that many threads while the network
    trains; since a batch depends only on (seed, iteration, rank), they are the same batches.
    """
    if workers <= 0:
        for iteration in range(start + 1, stop + 1):
            yield iteration, draw_batch(longitudinal, single, config, iteration=iteration, rank=rank)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="msnewlesion-batches") as pool:
        pending: deque[tuple[int, Future[Batch]]] = deque()
        upcoming = start + 1
        while True:
            while upcoming <= stop and len(pending) < 2 * workers:
                pending.append(
                    (upcoming, pool.submit(draw_batch, longitudinal, single, config, iteration=upcoming, rank=rank))
                )
                upcoming += 1
            if not pending:
                return
            iteration, future = pending.popleft()
            yield iteration, future.result()
