"""Training samples in memory, lesion-weighted patch sampling and augmentation.

Every random choice of a batch comes from a generator seeded by (seed, iteration, rank), so a
batch depends only on those three numbers: a resumed run draws exactly the batches the
uninterrupted run would have drawn.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from msnewlesion.io import load_mask, load_volume
from msnewlesion.lesions import bounding_box
from msnewlesion.model.network import make_input
from msnewlesion.progress import ProgressCallback, report
from msnewlesion.training.config import TrainConfig
from msnewlesion.training.manifest import ManifestRow

__all__ = [
    "Batch",
    "TrainingSample",
    "augment",
    "batches",
    "draw_batch",
    "load_samples",
    "sample_patch",
    "swap_time_points",
]


@dataclass
class TrainingSample:
    """One manifest row loaded in memory (padded to at least one patch).

    ``label`` is the new-lesion mask of a longitudinal sample, the all-lesion mask of a single one.
    ``lesions`` holds the all-lesion masks of the two time points when known: (baseline, follow-up); a
    single scan's are its label twice; None for a longitudinal sample without them.
    """

    subject: str
    longitudinal: bool
    baseline: np.ndarray
    followup: np.ndarray
    label: np.ndarray
    brain: np.ndarray
    foreground: np.ndarray  # flat indices of label voxels
    spacing: tuple[float, float, float]
    lesions: tuple[np.ndarray, np.ndarray] | None = None

    @functools.cached_property
    def brain_extent(self) -> tuple[np.ndarray, np.ndarray]:
        """First and last voxel of the brain's box (the whole array when the brain mask is empty)."""
        box = bounding_box(self.brain)
        if box is None:
            return np.zeros(3, dtype=int), np.array(self.brain.shape) - 1
        return np.array([b.start for b in box]), np.array([b.stop - 1 for b in box])


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
    lesions: tuple[np.ndarray, np.ndarray] | None = None
    if not row.longitudinal:
        lesions = (label, label)
    elif row.baseline_lesions is not None and row.followup_lesions is not None:
        lesions = (
            _pad_to(load_mask(row.baseline_lesions, what=f"baseline lesions of {row.where()}").data, patch_size, 0)
            .astype(np.uint8),
            _pad_to(load_mask(row.followup_lesions, what=f"follow-up lesions of {row.where()}").data, patch_size, 0)
            .astype(np.uint8),
        )  # fmt: skip
    return TrainingSample(
        subject=row.subject,
        longitudinal=row.longitudinal,
        baseline=baseline,
        followup=followup,
        label=label,
        brain=brain,
        foreground=np.flatnonzero(label),
        spacing=baseline_volume.spacing,
        lesions=lesions,
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


def _brain_box_starts(sample: TrainingSample, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The range of window starts whose window centre lies in the brain's box."""
    shape = np.array(sample.label.shape)
    first, last = sample.brain_extent
    low = np.clip(first - patch_size // 2, 0, shape - patch_size)
    high = np.clip(last - patch_size // 2, low, shape - patch_size)
    return low, high


def sample_patch(
    sample: TrainingSample,
    patch_size: int,
    rng: np.random.Generator,
    crop_shift: int,
    random_crop_fraction: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """A lesion-weighted crop: centred on a random label voxel moved by up to ``crop_shift`` voxels.

    A sample without label voxels, and a share ``random_crop_fraction`` of the others, gives a crop
    centred anywhere in the brain's box instead.

    Returns
    -------
    baseline, followup : ndarray
        The two time points' patches.
    labels : list of ndarray
        The label's patch, then the two all-lesion masks' patches when the sample has them.
    """
    shape = np.array(sample.label.shape)
    lesion_centred = bool(sample.foreground.size) and not rng.random() < random_crop_fraction
    if lesion_centred:
        centre = np.array(np.unravel_index(sample.foreground[rng.integers(sample.foreground.size)], shape))
        centre = centre + rng.integers(-crop_shift, crop_shift + 1, size=3)
        start = np.clip(centre - patch_size // 2, 0, shape - patch_size)
    else:
        low, high = _brain_box_starts(sample, patch_size)
        start = np.array([rng.integers(a, b + 1) for a, b in zip(low, high, strict=True)])
    window = tuple(slice(int(s), int(s) + patch_size) for s in start)
    labels = [sample.label[window]]
    if sample.lesions is not None:
        labels += [sample.lesions[0][window], sample.lesions[1][window]]
    return sample.baseline[window], sample.followup[window], labels


def swap_time_points(
    baseline: np.ndarray, followup: np.ndarray, labels: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """A pair played backwards: its new lesions become disappearing (or shrinking) ones, so it has none.

    ``labels`` are (new lesions, baseline's lesions, follow-up's lesions); the result's new-lesion label is
    empty and the two all-lesion masks trade places. Synthetic pairs only ever gain lesions; played
    backwards they teach that a lesion fading or shrinking is not a new one, and they keep the two
    all-lesion heads from learning that the follow-up holds more lesions than the baseline.
    """
    new, lesions_baseline, lesions_followup = labels
    return followup, baseline, [np.zeros_like(new), lesions_followup, lesions_baseline]


def augment(
    baseline: np.ndarray,
    followup: np.ndarray,
    labels: list[np.ndarray],
    rng: np.random.Generator,
    config: TrainConfig,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Random flips and 90° rotations (the identity among them), small rotations and intensity jitter.

    The same geometric change is applied to both time points and every label. ``intensity_jitter``
    changes both time points alike, so the difference channel keeps its meaning;
    ``time_point_jitter`` then changes each time point's scale and offset on its own, as two
    acquisitions normalised separately differ.
    """
    arrays = [baseline, followup, *labels]
    if config.flip_rot90:
        turns = int(rng.integers(0, 4))
        flips = [axis for axis in range(3) if rng.random() < 0.5]
        arrays = [np.rot90(a, k=turns, axes=(0, 1)) for a in arrays]
        arrays = [np.flip(a, axis=tuple(flips)) if flips else a for a in arrays]
    if config.rotation_degrees > 0:
        angle = float(rng.uniform(-config.rotation_degrees, config.rotation_degrees))
        arrays = [
            ndimage.rotate(a, angle, axes=(0, 1), reshape=False, order=0 if i >= 2 else 1, mode="nearest")
            for i, a in enumerate(arrays)
        ]
    base, follow, *labs = (np.ascontiguousarray(a) for a in arrays)
    if config.intensity_jitter > 0:
        scale = 1.0 + float(rng.uniform(-config.intensity_jitter, config.intensity_jitter))
        shift = float(rng.uniform(-config.intensity_jitter, config.intensity_jitter))
        base = base * scale + shift
        follow = follow * scale + shift
    if config.time_point_jitter > 0:
        jitter = config.time_point_jitter
        base = base * (1.0 + float(rng.uniform(-jitter, jitter))) + float(rng.uniform(-jitter, jitter))
        follow = follow * (1.0 + float(rng.uniform(-jitter, jitter))) + float(rng.uniform(-jitter, jitter))
    return base.astype(np.float32, copy=False), follow.astype(np.float32, copy=False), labs


@dataclass
class Batch:
    """One training batch.

    ``target`` holds each sample's label (new lesions, or all lesions of a single scan);
    ``lesions`` the all-lesion targets of the baseline and follow-up heads, (2, N, P, P, P), where
    ``lesions_known`` says which samples have them (single scans, and pairs whose manifest row gives
    them); zeros elsewhere.
    """

    inputs: torch.Tensor  # (N, 3, P, P, P)
    target: torch.Tensor  # (N, P, P, P) float
    longitudinal: torch.Tensor  # (N,) bool
    lesions: torch.Tensor | None = None  # (2, N, P, P, P) float
    lesions_known: torch.Tensor | None = None  # (N,) bool


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
    bases, follows, labels, lesions, known = [], [], [], [], []
    for sample in chosen:
        b, f, patches = sample_patch(sample, config.patch_size, rng, config.crop_shift, config.random_crop_fraction)
        swappable = sample.longitudinal and len(patches) == 3
        if config.swap_fraction > 0 and swappable and rng.random() < config.swap_fraction:
            b, f, patches = swap_time_points(b, f, patches)
        b, f, patches = augment(b, f, patches, rng, config)
        bases.append(b)
        follows.append(f)
        labels.append(patches[0])
        known.append(len(patches) == 3)
        empty = np.zeros_like(patches[0])
        lesions.append(np.stack(patches[1:] if len(patches) == 3 else [empty, empty]))
    baseline = torch.from_numpy(np.stack(bases))
    followup = torch.from_numpy(np.stack(follows))
    return Batch(
        inputs=make_input(baseline, followup),
        target=torch.from_numpy(np.stack(labels).astype(np.float32)),
        longitudinal=torch.tensor([s.longitudinal for s in chosen], dtype=torch.bool),
        lesions=torch.from_numpy(np.stack(lesions, axis=1).astype(np.float32)),
        lesions_known=torch.tensor(known, dtype=torch.bool),
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
