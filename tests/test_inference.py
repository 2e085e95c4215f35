from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from msnewlesion.device import resolve_precision
from msnewlesion.errors import InputError
from msnewlesion.inference import (
    SlidingWindowOptions,
    gaussian_importance,
    sliding_window_predict,
    window_starts,
)
from msnewlesion.model import CoactSeg, ModelConfig, lesion_probabilities, make_input

PATCH = (32, 32, 32)


@pytest.fixture(scope="module")
def network() -> CoactSeg:
    torch.manual_seed(1)
    net = CoactSeg(ModelConfig(width=4, patch_size=PATCH))
    # non-trivial batch-norm statistics so the outputs vary across the volume
    net.train()
    with torch.no_grad():
        net(torch.randn(2, 3, *PATCH))
    return net.eval()


def images(shape=(64, 64, 64), seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    baseline = rng.normal(size=shape).astype(np.float32)
    followup = baseline + rng.normal(scale=0.3, size=shape).astype(np.float32)
    return baseline, followup


def fp32(**kwargs) -> SlidingWindowOptions:
    return SlidingWindowOptions(patch_size=PATCH, precision="fp32", **kwargs)


def test_window_starts_cover_the_axis() -> None:
    for size in (32, 33, 64, 100, 161):
        for step in (8, 16, 20):
            for placement in ("even", "reference"):
                starts = window_starts(size, 32, step, placement)
                assert starts[0] == 0 and starts[-1] == max(size - 32, 0)
                assert all(b - a <= step for a, b in itertools.pairwise(starts))
    # the published procedure: 80³ windows at stride 20 over 160 voxels
    assert window_starts(160, 80, 20, "reference") == [0, 20, 40, 60, 80]


def test_gaussian_importance_peaks_at_the_centre_and_never_vanishes() -> None:
    weights = gaussian_importance((32, 32, 32))
    assert weights.max() == 1.0 and weights.min() > 0
    assert np.unravel_index(np.argmax(weights), weights.shape) in {(15, 15, 15), (16, 16, 16), (15, 15, 16)}


def test_single_window_equals_a_direct_forward_pass(network: CoactSeg) -> None:
    baseline, followup = images(PATCH)
    maps = sliding_window_predict(network, baseline, followup, options=fp32())
    with torch.no_grad():
        out = network(make_input(torch.from_numpy(baseline)[None], torch.from_numpy(followup)[None]))
    for head, logits in zip(maps, out, strict=True):
        np.testing.assert_allclose(head, lesion_probabilities(logits)[0].numpy(), atol=1e-5)


def test_gaussian_and_constant_blending_agree_without_overlap(network: CoactSeg) -> None:
    baseline, followup = images((64, 64, 32))
    gaussian = sliding_window_predict(network, baseline, followup, options=fp32(overlap=0.0, blending="gaussian"))
    constant = sliding_window_predict(network, baseline, followup, options=fp32(overlap=0.0, blending="constant"))
    for a, b in zip(gaussian, constant, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_gaussian_and_constant_differ_where_windows_overlap(network: CoactSeg) -> None:
    baseline, followup = images((48, 48, 48))
    gaussian = sliding_window_predict(network, baseline, followup, options=fp32(blending="gaussian"))
    constant = sliding_window_predict(network, baseline, followup, options=fp32(blending="constant"))
    assert np.abs(gaussian.new - constant.new).max() > 1e-4


@pytest.mark.slow
def test_skipping_windows_outside_the_brain_changes_nothing_inside(network: CoactSeg) -> None:
    baseline, followup = images((80, 64, 64))
    brain = np.zeros(baseline.shape, bool)
    brain[5:30, 10:40, 8:30] = True
    full = sliding_window_predict(network, baseline, followup, options=fp32(skip_empty=False), brain_mask=brain)
    calls: list[tuple[str, int, int]] = []
    skipped = sliding_window_predict(
        network,
        baseline,
        followup,
        options=fp32(skip_empty=True),
        brain_mask=brain,
        progress=lambda stage, done, total: calls.append((stage, done, total)),
    )
    total_full = len(list(window_starts(80, 32, 16))) * len(window_starts(64, 32, 16)) ** 2
    assert calls[-1][2] < total_full  # some windows were really skipped
    assert calls[-1][1] == calls[-1][2]
    for a, b in zip(full, skipped, strict=True):
        np.testing.assert_allclose(a[brain], b[brain], atol=1e-5)
    # far from the brain nothing was computed
    assert np.all(skipped.new[70:, 50:, 50:] == 0)


def test_volumes_smaller_than_a_window_are_padded_and_cropped_back(network: CoactSeg) -> None:
    baseline, followup = images((20, 40, 33))
    maps = sliding_window_predict(network, baseline, followup, options=fp32())
    assert maps.new.shape == (20, 40, 33)
    assert np.all((maps.new >= 0) & (maps.new <= 1))


def test_single_scan_is_fed_as_x_x_zero(network: CoactSeg) -> None:
    baseline, _ = images((40, 40, 40))
    alone = sliding_window_predict(network, baseline, None, options=fp32())
    twice = sliding_window_predict(network, baseline, baseline.copy(), options=fp32())
    for a, b in zip(alone, twice, strict=True):
        np.testing.assert_array_equal(a, b)


def test_mirroring_averages_the_eight_flips(network: CoactSeg) -> None:
    small = (16, 16, 16)
    baseline, followup = images(small)
    options = SlidingWindowOptions(patch_size=small, precision="fp32", mirror=True)
    mirrored = sliding_window_predict(network, baseline, followup, options=options)
    expected = np.zeros(small, np.float32)
    with torch.no_grad():
        x = make_input(torch.from_numpy(baseline)[None], torch.from_numpy(followup)[None])
        for axes in [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]:
            out = network(torch.flip(x, axes) if axes else x).new
            p = lesion_probabilities(out)
            expected += (torch.flip(p, [a - 1 for a in axes]) if axes else p)[0].numpy() / 8
    np.testing.assert_allclose(mirrored.new, expected, atol=1e-5)


def test_bf16_stays_close_to_fp32(network: CoactSeg) -> None:
    baseline, followup = images((48, 48, 48))
    reference = sliding_window_predict(network, baseline, followup, options=fp32())
    reduced = sliding_window_predict(
        network, baseline, followup, options=SlidingWindowOptions(patch_size=PATCH, precision="bf16")
    )
    assert np.abs(reference.new - reduced.new).max() < 0.05


def test_precision_choices() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    with pytest.raises(InputError, match="fp16 is not supported on the CPU"):
        resolve_precision("fp16", cpu)


def test_bad_options_are_explained() -> None:
    with pytest.raises(InputError, match="overlap"):
        SlidingWindowOptions(overlap=1.0)
    with pytest.raises(InputError, match="blending"):
        SlidingWindowOptions(blending="median")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_the_cpu(network: CoactSeg) -> None:
    baseline, followup = images((48, 48, 48))
    cpu = sliding_window_predict(network, baseline, followup, options=fp32(), device="cpu")
    gpu32 = sliding_window_predict(network, baseline, followup, options=fp32(), device="cuda")
    gpu_auto = sliding_window_predict(
        network, baseline, followup, options=SlidingWindowOptions(patch_size=PATCH), device="cuda"
    )
    network.to("cpu")
    for a, b, c in zip(cpu, gpu32, gpu_auto, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3)
        assert np.abs(a - c).max() < 0.05
