"""The shortcuts that make preprocessing fast keep its answers: converged registration levels, N4 on
block means, and inputs finer than the common grid averaged down once (issue 21, issue 24 item 7)."""

from __future__ import annotations

import numpy as np
import pytest

from msnewlesion.io import Volume
from msnewlesion.preprocess import PreprocessOptions, preprocess_pair
from msnewlesion.preprocess.bias import n4_bias_correction
from msnewlesion.preprocess.geometry import block_factors, block_mean, mean_displacement, rotation_angle_degrees
from msnewlesion.preprocess.registration import RIGID_SCHEDULES, register_rigid, registration_arguments
from preprocess_helpers import brain_value, grid_affine, phantom_volume, rigid, sample

BASELINE_AFFINE = rigid((8.0, 0.0, -5.0), (1.0, -2.0, 0.5)) @ grid_affine((72, 88, 70), (2.0, 2.0, 2.0), "LPS")
FOLLOWUP_POSE = rigid((3.0, -4.0, 5.0), (4.0, -3.0, 2.0))  # follow-up world → baseline world
MOTION = np.linalg.inv(FOLLOWUP_POSE)  # baseline world → follow-up world


def _brain_points(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    index = np.argwhere(sample(brain_value, shape, affine))[::50]
    return (affine[:3, :3] @ index.T).T + affine[:3, 3]


@pytest.mark.slow
def test_rigid_registration_recovers_a_known_motion_and_stops_each_level_once_converged() -> None:
    baseline = phantom_volume((72, 88, 70), (2.0, 2.0, 2.0), affine=BASELINE_AFFINE)
    followup = phantom_volume((64, 78, 48), (2.2, 2.2, 3.0), "RAS", pose=FOLLOWUP_POSE)
    iterations: list[int] = []
    reported: list[tuple[int, int]] = []
    found = register_rigid(
        baseline.data,
        baseline.affine,
        followup.data,
        followup.affine,
        transform="Rigid",
        iterations=iterations,
        progress=lambda done, total: reported.append((done, total)),
    )
    points = _brain_points(BASELINE_AFFINE, (72, 88, 70))
    assert mean_displacement(found, MOTION, points) < 0.5  # mm
    assert rotation_angle_degrees(np.linalg.inv(MOTION) @ found) < 0.5  # degrees
    # Every level ran, and each coarse level stopped on convergence far before its most iterations.
    most = [n for stage in RIGID_SCHEDULES["Rigid"] for n in stage.iterations]
    assert len(iterations) == len(most) == 3
    assert all(0 < n < limit / 4 for n, limit in zip(iterations[:2], most[:2], strict=True)), iterations
    assert 0 < iterations[2] <= most[2]
    # Progress moved level by level.
    assert reported == [(0, 3), (1, 3), (2, 3), (3, 3)]


def test_registration_levels_follow_the_voxel_size_and_thick_slices() -> None:
    def shrink_and_fraction(spacing: tuple[float, float, float], voxels: int) -> list[tuple[str, str]]:
        arguments = registration_arguments(
            "Rigid", "F", "M", None, "/tmp/r_", 1, spacing=spacing, voxels=voxels, verbose=False
        )
        shrinks = [arguments[i + 1] for i, a in enumerate(arguments) if a == "--shrink-factors"]
        metrics = [arguments[i + 1].split(",")[-1].rstrip("]") for i, a in enumerate(arguments) if a == "--metric"]
        return list(zip(shrinks, metrics, strict=True))

    # 0.72 mm in-plane (4 mm slices: antsRegistration leaves that axis alone): about 4.3 and 2.9 mm,
    # then the full resolution on about 300,000 voxels.
    assert shrink_and_fraction((0.72, 0.72, 4.0), 320 * 320 * 36) == [("6x4", "0.2"), ("1", "0.08138")]
    # A 1 mm image: 4 and 3 mm, then one voxel in 56 of a 256³ head.
    assert shrink_and_fraction((1.0, 1.0, 1.0), 256**3) == [("4x3", "0.2"), ("1", "0.01788")]
    # A small coarse image: no level finer than its voxels, and never more than a quarter sampled.
    assert shrink_and_fraction((2.0, 2.0, 2.0), 72 * 88 * 70) == [("2x1", "0.2"), ("1", "0.25")]


def _biased_phantom() -> tuple[Volume, np.ndarray, np.ndarray]:
    clean = phantom_volume((36, 44, 35), (4.0, 4.0, 4.0), "RAS")
    field = sample(lambda p: np.exp(0.25 * p[:, 0] / 70.0 - 0.2 * p[:, 2] / 60.0 + 0.1 * (p[:, 1] / 80.0) ** 2),
                   clean.shape, clean.affine)  # fmt: skip
    brain = sample(brain_value, clean.shape, clean.affine)
    biased = Volume((clean.data * field).astype(np.float32), clean.affine)
    return biased, clean.data, brain


def _residual(corrected: np.ndarray, clean: np.ndarray, brain: np.ndarray) -> float:
    """Spread of log(corrected / clean) in the brain: 0 when the field is gone (up to a scale)."""
    return float(np.std(np.log(corrected[brain] / clean[brain])))


@pytest.mark.slow
def test_n4_on_block_means_matches_n4_on_every_voxel() -> None:
    biased, clean, brain = _biased_phantom()
    shrunk, settings = n4_bias_correction(biased.data, biased.affine, brain, block_mm=8.0)
    full, full_settings = n4_bias_correction(biased.data, biased.affine, brain, block_mm=None)
    assert settings["shrink_factor"] == [2, 2, 2] and full_settings["shrink_factor"] == [1, 1, 1]
    before = _residual(biased.data, clean, brain)
    # Both remove most of the field (0.108 → 0.043 on blocks, 0.031 on every voxel, measured; the phantom's
    # blobs are texture N4 cannot tell from a field), and they agree with each other to about 1.3 %.
    assert _residual(shrunk, clean, brain) < 0.45 * before
    assert _residual(full, clean, brain) < 0.45 * before
    assert float(np.std(np.log(shrunk[brain] / full[brain]))) < 0.02
    assert shrunk.dtype == np.float32 and shrunk.shape == biased.shape


def test_block_means_keep_the_image_where_it_was() -> None:
    fine = phantom_volume((120, 146, 116), (1.0, 1.0, 1.0), "LPS")
    assert block_factors(fine.spacing, 2.0) == (2, 2, 2)
    means, affine = block_mean(fine.data, fine.affine, (2, 2, 2))
    assert means.shape == (60, 73, 58) and np.allclose(np.linalg.norm(affine[:3, :3], axis=0), 2.0)

    def centre_of_mass(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
        index = np.argwhere(data > 0)
        weights = data[data > 0]
        return affine[:3, :3] @ (index * weights[:, None]).sum(0) / weights.sum() + affine[:3, 3]

    np.testing.assert_allclose(centre_of_mass(means, affine), centre_of_mass(fine.data, fine.affine), atol=0.05)
    assert means.sum() * 8 == pytest.approx(float(fine.data.sum()), rel=1e-4)


def test_inputs_finer_than_the_grid_are_registered_at_the_grids_resolution() -> None:
    options = PreprocessOptions(skull_strip="none", bias_correction=False, spacing=(3.0, 3.0, 3.0))
    baseline = phantom_volume(
        (96, 116, 92),
        (1.5, 1.5, 1.5),
        affine=rigid((0, 0, 0), (0, 0, 0)) @ grid_affine((96, 116, 92), (1.5, 1.5, 1.5), "LPS"),
    )
    followup = phantom_volume((64, 78, 48), (2.2, 2.2, 3.0), "RAS", pose=FOLLOWUP_POSE)
    pair = preprocess_pair(baseline, followup, options)
    registration = pair.record["registration"]
    assert registration["resolution_mm"]["baseline"] == [3.0, 3.0, 3.0]  # 1.5 mm voxels in blocks of 2
    assert registration["resolution_mm"]["followup"] == [2.2, 2.2, 3.0]  # already about as coarse
    found = np.array(registration["followup_from_baseline_ras"])
    assert mean_displacement(found, MOTION, _brain_points(baseline.affine, baseline.shape)) < 0.8
    # The native grids stay what they were: results go back onto them.
    assert pair.baseline_native.shape == (96, 116, 92)
