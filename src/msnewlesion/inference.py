"""Sliding-window inference for the three-head CoactSeg network.

The volume is covered by overlapping patches; each patch's lesion probabilities are added into
full-size accumulators with an importance weight (a Gaussian that trusts patch centres more than
their borders, or a constant for a plain mean), so memory stays bounded by the volume, never by the
number of windows. Windows that hold no brain are skipped, windows are batched, and the network
can run in reduced precision where the hardware makes it pay.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from msnewlesion.device import resolve_precision
from msnewlesion.engines import BatchRunner, openvino_runner, resolve_engine, torch_runner
from msnewlesion.errors import InputError, OptionError
from msnewlesion.model.network import CoactSeg, fold_batch_norm, lesion_probabilities
from msnewlesion.progress import ProgressCallback, report
from msnewlesion.settings import ENGINES, PRECISIONS, choice_problem

__all__ = [
    "HeadProbabilities",
    "SlidingWindowOptions",
    "gaussian_importance",
    "sliding_window_predict",
    "window_starts",
]

BLENDINGS = ("gaussian", "constant")


class HeadProbabilities(NamedTuple):
    """Lesion probability maps of the three heads, float32, on the input grid."""

    baseline: np.ndarray
    followup: np.ndarray
    new: np.ndarray


@dataclass(frozen=True)
class SlidingWindowOptions:
    """How the volume is tiled and the network run.

    Parameters
    ----------
    patch_size : tuple of 3 ints
        Window size in voxels (the model's patch size).
    overlap : float
        Fraction of a window shared with its neighbour along each axis, in [0, 1). 0.5 by default.
    step : int, optional
        Stride in voxels; overrides ``overlap`` (the published procedure uses 20 with 80³ windows).
    blending : {"gaussian", "constant"}
        Gaussian importance weighting (σ = patch / 8) or the plain mean of overlapping windows.
    placement : {"even", "reference"}
        ``even`` spreads the windows evenly from edge to edge; ``reference`` places them at
        multiples of the step and clamps the last one to the edge, as the CoactSeg code does.
    batch_size : int
        Windows per forward pass.
    mirror : bool
        Test-time augmentation: average over the 8 mirrorings of each window (8× slower).
    skip_empty : bool
        Skip windows that hold no brain-mask voxel (their probabilities are 0).
    precision : {"auto", "fp32", "bf16", "fp16"}
        Autocast dtype. ``auto``: on CUDA, fp32 (TF32 tensor cores) on Ampere and newer GPUs and fp16 on
        older ones; on CPUs, bf16 where they have native bf16 instructions, else fp32. The same for both
        engines.
    engine : {"auto", "torch", "openvino"}
        What runs the forward pass (:mod:`msnewlesion.engines`): ``auto`` is the engine measured fastest,
        PyTorch; ``openvino`` runs on the CPU. Only the forward pass changes; tiling, blending, mirroring and
        window skipping are the same.
    """

    patch_size: tuple[int, int, int] = (80, 80, 80)
    overlap: float = 0.5
    step: int | None = None
    blending: str = "gaussian"
    placement: str = "even"
    batch_size: int = 2
    mirror: bool = False
    skip_empty: bool = True
    precision: str = "auto"
    engine: str = "torch"

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise OptionError(f"patch size must be 3 positive integers, got {self.patch_size}")
        if not 0.0 <= self.overlap < 1.0:
            raise OptionError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.step is not None and self.step < 1:
            raise OptionError(f"step must be a positive number of voxels, got {self.step}")
        if self.blending not in BLENDINGS:
            raise OptionError(f"blending must be one of {', '.join(BLENDINGS)}, got {self.blending!r}")
        if self.placement not in ("even", "reference"):
            raise OptionError(f"placement must be 'even' or 'reference', got {self.placement!r}")
        if self.batch_size < 1:
            raise OptionError(f"batch size must be at least 1, got {self.batch_size}")
        for problem in (choice_problem("precision", self.precision, PRECISIONS),
                        choice_problem("engine", self.engine, ENGINES)):  # fmt: skip
            if problem is not None:
                raise OptionError(problem)

    def steps(self) -> tuple[int, int, int]:
        if self.step is not None:
            return (self.step,) * 3  # type: ignore[return-value]
        return tuple(max(1, round(p * (1.0 - self.overlap))) for p in self.patch_size)  # type: ignore[return-value]


def window_starts(size: int, patch: int, step: int, placement: str = "even") -> list[int]:
    """Start indices of the windows along one axis of length ``size`` (≥ ``patch``).

    Examples
    --------
    >>> window_starts(160, 80, 40)
    [0, 40, 80]
    >>> window_starts(100, 80, 40)
    [0, 20]
    >>> window_starts(100, 80, 40, placement="reference")
    [0, 20]
    >>> window_starts(130, 80, 20, placement="reference")
    [0, 20, 40, 50]
    """
    if size <= patch:
        return [0]
    count = math.ceil((size - patch) / step) + 1
    if placement == "reference":
        return [min(step * i, size - patch) for i in range(count)]
    return [round(i * (size - patch) / (count - 1)) for i in range(count)]


def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """A Gaussian weight map of ``patch_size``, 1 at the centre, never 0 (σ = ``sigma_scale`` × patch)."""
    axes = []
    for size in patch_size:
        coordinates = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
        sigma = max(size * sigma_scale, 1e-6)
        axes.append(np.exp(-0.5 * (coordinates / sigma) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weights /= weights.max()
    # The far corners underflow towards 0; a floor keeps every voxel of a window contributing.
    weights = np.maximum(weights, weights[weights > 0].min(), out=weights)
    return weights.astype(np.float32)


def _pad_to_patch(array: np.ndarray, patch: Sequence[int], value: float) -> tuple[np.ndarray, tuple[slice, ...]]:
    padding = []
    for size, window in zip(array.shape, patch, strict=True):
        missing = max(window - size, 0)
        padding.append((missing // 2, missing - missing // 2))
    if not any(before or after for before, after in padding):
        return array, tuple(slice(None) for _ in array.shape)
    padded = np.pad(array, padding, mode="constant", constant_values=value)
    crop = tuple(slice(before, before + size) for (before, _), size in zip(padding, array.shape, strict=True))
    return padded, crop


def _windows(
    shape: Sequence[int], options: SlidingWindowOptions, mask: np.ndarray | None
) -> Iterator[tuple[slice, slice, slice]]:
    starts = [
        window_starts(size, patch, step, options.placement)
        for size, patch, step in zip(shape, options.patch_size, options.steps(), strict=True)
    ]
    for x, y, z in itertools.product(*starts):
        window = (
            slice(x, x + options.patch_size[0]),
            slice(y, y + options.patch_size[1]),
            slice(z, z + options.patch_size[2]),
        )
        if mask is not None and options.skip_empty and not mask[window].any():
            continue
        yield window


_MIRROR_AXES = [axes for r in range(4) for axes in itertools.combinations((2, 3, 4), r)]


class _HeadProbabilities(nn.Module):
    """A CoactSeg network whose output is the (B, 3, X, Y, Z) lesion probabilities of its three heads."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([lesion_probabilities(head.float()) for head in self.network(x)], dim=1)


def _forward_probabilities(run: BatchRunner, batch: torch.Tensor, mirror: bool) -> torch.Tensor:
    """(B, 3, X, Y, Z) float32 lesion probabilities of the baseline, follow-up and new-lesion heads."""
    variants = _MIRROR_AXES if mirror else [()]
    total: torch.Tensor | None = None
    for axes in variants:
        inputs = torch.flip(batch, dims=axes) if axes else batch
        (probabilities,) = run(inputs)
        if axes:
            probabilities = torch.flip(probabilities, dims=axes)
        total = probabilities if total is None else total + probabilities
    assert total is not None
    return total / len(variants)


def sliding_window_predict(
    network: nn.Module,
    baseline: np.ndarray,
    followup: np.ndarray | None = None,
    *,
    options: SlidingWindowOptions | None = None,
    brain_mask: np.ndarray | None = None,
    device: torch.device | str | None = None,
    pad_value: float | None = None,
    progress: ProgressCallback | None = None,
    stage: str = "network",
) -> HeadProbabilities:
    """Run the three-head network over a whole volume with overlapping windows.

    The network sees (baseline, follow-up, follow-up − baseline); without a follow-up, the single
    scan ``x`` is fed as (x, x, 0).

    Parameters
    ----------
    network : nn.Module
        A CoactSeg network; it runs as an eval-mode copy (batch norms folded) and is not changed.
    baseline, followup : ndarray
        Normalised 3D images on one grid, in the layout the network expects.
    options : SlidingWindowOptions, optional
        Tiling, blending, batching, mirroring and precision.
    brain_mask : ndarray of bool, optional
        Windows without a single brain voxel are skipped when ``options.skip_empty``.
    device : torch.device or str, optional
        Defaults to the network's device.
    pad_value : float, optional
        Fills the margin when the volume is smaller than a window along an axis. By default the
        normalised background: the median of the baseline outside the brain mask (0 without a mask).
    progress : ProgressCallback, optional
        Called with (stage, windows done, windows in all).

    Returns
    -------
    HeadProbabilities
        Float32 maps of the input's shape; 0 where no window was run.

    Examples
    --------
    >>> import numpy as np
    >>> from msnewlesion.model import CoactSeg, ModelConfig
    >>> net = CoactSeg(ModelConfig(width=4, patch_size=(32, 32, 32)))
    >>> image = np.zeros((40, 40, 40), np.float32)
    >>> maps = sliding_window_predict(net, image, image, options=SlidingWindowOptions(patch_size=(32, 32, 32)))
    >>> maps.new.shape
    (40, 40, 40)
    """
    options = options or SlidingWindowOptions()
    if baseline.ndim != 3:
        raise InputError(f"sliding-window inference needs a 3D image, got shape {baseline.shape}")
    if followup is not None and followup.shape != baseline.shape:
        raise InputError(f"baseline {baseline.shape} and follow-up {followup.shape} must share one grid")
    if brain_mask is not None and brain_mask.shape != baseline.shape:
        raise InputError(f"brain mask {brain_mask.shape} and images {baseline.shape} must share one grid")
    if device is None:
        device = next(network.parameters()).device
    device = torch.device(device)
    autocast_dtype = resolve_precision(options.precision, device)
    engine = resolve_engine(options.engine, device)
    if pad_value is None:
        outside = baseline[~brain_mask.astype(bool)] if brain_mask is not None else np.zeros(0)
        pad_value = float(np.median(outside)) if outside.size else 0.0
    # An inference copy with batch norms folded into the convolutions; the caller's network is left untouched.
    inference_copy = fold_batch_norm(network) if isinstance(network, CoactSeg) else copy.deepcopy(network).eval()
    probabilities = _HeadProbabilities(inference_copy).eval()
    if engine == "openvino":
        run = openvino_runner(probabilities.cpu(), (options.batch_size, 3, *options.patch_size), autocast_dtype)
    else:
        run = torch_runner(probabilities.to(device), device, autocast_dtype)
    return _predict_windows(run, baseline, followup, options, brain_mask, device, pad_value, progress, stage)


def _predict_windows(
    run: BatchRunner,
    baseline: np.ndarray,
    followup: np.ndarray | None,
    options: SlidingWindowOptions,
    brain_mask: np.ndarray | None,
    device: torch.device,
    pad_value: float,
    progress: ProgressCallback | None,
    stage: str,
) -> HeadProbabilities:

    base, crop = _pad_to_patch(np.asarray(baseline, dtype=np.float32), options.patch_size, pad_value)
    follow = (
        base if followup is None else _pad_to_patch(np.asarray(followup, np.float32), options.patch_size, pad_value)[0]
    )
    mask = None if brain_mask is None else _pad_to_patch(np.asarray(brain_mask, bool), options.patch_size, False)[0]
    shape = base.shape

    importance = (
        gaussian_importance(options.patch_size)
        if options.blending == "gaussian"
        else np.ones(options.patch_size, np.float32)
    )
    accumulate_on = device if device.type == "cuda" else torch.device("cpu")
    weights_patch = torch.from_numpy(importance).to(accumulate_on)
    sums = torch.zeros((3, *shape), dtype=torch.float32, device=accumulate_on)
    weights = torch.zeros(shape, dtype=torch.float32, device=accumulate_on)

    windows = list(_windows(shape, options, mask))
    total = len(windows)
    report(progress, stage, 0, total)
    base_tensor = torch.from_numpy(base)
    follow_tensor = base_tensor if followup is None else torch.from_numpy(follow)
    done = 0
    with torch.inference_mode():
        for first in range(0, total, options.batch_size):
            batch_windows = windows[first : first + options.batch_size]
            patches = []
            for window in batch_windows:
                b = base_tensor[window]
                f = follow_tensor[window]
                patches.append(torch.stack((b, f, f - b)))
            batch = torch.stack(patches).to(device)
            probabilities = _forward_probabilities(run, batch, options.mirror).to(accumulate_on)
            for index, window in enumerate(batch_windows):
                every_head = (slice(None), *window)
                sums[every_head] += probabilities[index] * weights_patch
                weights[window] += weights_patch
            done += len(batch_windows)
            report(progress, stage, done, total)

    covered = weights > 0
    result = torch.where(
        covered, sums / torch.where(covered, weights, torch.ones_like(weights)), torch.zeros_like(sums)
    )
    every_head_cropped = (slice(None), *crop)
    maps = result.cpu().numpy()[every_head_cropped]
    return HeadProbabilities(
        baseline=np.ascontiguousarray(maps[0]),
        followup=np.ascontiguousarray(maps[1]),
        new=np.ascontiguousarray(maps[2]),
    )
