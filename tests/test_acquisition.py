"""Simulated scanner acquisitions (msnewlesion.synth.acquisition) and acquisition-aware synthetic pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from msnewlesion.errors import InputError
from msnewlesion.synth import AcquisitionOptions, SynthOptions, simulate_acquisition, synthesize_pair
from test_synth import QUIET, scan  # noqa: F401  (the fixture: crops of the real LIT patient 07)

#: Only the geometry varies: no contrast change, bias, noise, ghost or flow artefact.
GEOMETRY_ONLY = {
    "gamma": (1.0, 1.0),
    "gain": (1.0, 1.0),
    "max_bias": 0.0,
    "noise": (0.0, 0.0),
    "ghost_probability": 0.0,
    "flow_artefacts": (0, 0),
    "max_tilt_deg": 0.0,
}


def slab_phantom() -> tuple[np.ndarray, np.ndarray]:
    """A 1 mm box of 100 inside a brain; its faces are sharp edges along x and along z."""
    image = np.zeros((48, 48, 48), np.float32)
    image[12:36, 12:36, 12:36] = 100.0
    brain = np.zeros(image.shape, bool)
    brain[4:44, 4:44, 4:44] = True
    return image, brain


def edge_width(profile: np.ndarray) -> int:
    """Voxels over which a rising edge goes from 10 % to 90 % of its top."""
    top = profile.max()
    return int(np.argmax(profile >= 0.9 * top) - np.argmax(profile >= 0.1 * top))


def test_a_thick_slice_acquisition_blurs_across_slices_only() -> None:
    image, brain = slab_phantom()
    options = AcquisitionOptions(
        two_d_probability=1.0, slice_thickness_mm=(5.0, 5.0), slice_gap=(0.0, 0.0), in_plane_spacing_mm=(1.0, 1.0),
        axial_probability=1.0, **GEOMETRY_ONLY,
    )  # fmt: skip
    result, record = simulate_acquisition(image, np.eye(4), brain, np.random.default_rng(0), options)
    assert record["geometry"]["kind"] == "2D" and record["geometry"]["slice_direction"] == "z"
    assert record["geometry"]["slice_thickness_mm"] == pytest.approx(5.0)
    along_z = result[24, 24, :24]
    along_x = result[:24, 24, 24]
    assert edge_width(along_z) >= 3  # a 5 mm slice profile spreads the edge over several millimetres
    assert edge_width(along_x) <= 2  # in-plane, 1 mm voxels keep it sharp
    assert result[24, 24, 24] == pytest.approx(100.0, rel=0.02)  # the middle of the box is untouched


def test_a_1mm_3d_acquisition_without_changes_keeps_the_image() -> None:
    image, brain = slab_phantom()
    smooth = image.copy()
    options = AcquisitionOptions(two_d_probability=0.0, in_plane_spacing_mm=(1.0, 1.0), **GEOMETRY_ONLY)
    result, record = simulate_acquisition(smooth, np.eye(4), brain, np.random.default_rng(3), options)
    assert record["geometry"]["kind"] == "3D" and record["geometry"]["slice_thickness_mm"] == pytest.approx(1.0)
    inside = image > 0
    # only the sampling phase (≤ half a voxel) separates the two; the box's inside (beyond the cubic
    # B-spline's ringing near its faces) is unchanged
    core = np.zeros_like(inside)
    core[16:32, 16:32, 16:32] = True
    assert np.abs(result[core] - 100.0).max() < 1.0
    assert np.corrcoef(result[brain], image[brain])[0, 1] > 0.95


def test_each_draw_is_reproducible_and_stays_in_the_brain_on_the_same_grid(scan) -> None:  # noqa: F811
    options = AcquisitionOptions()
    affine = scan.flair.affine
    brain = scan.tissue.brain
    first, record = simulate_acquisition(
        scan.flair.data, affine, brain, np.random.default_rng(11), options, fluid=scan.tissue.fluid
    )
    again, record_again = simulate_acquisition(
        scan.flair.data, affine, brain, np.random.default_rng(11), options, fluid=scan.tissue.fluid
    )
    other, _ = simulate_acquisition(scan.flair.data, affine, brain, np.random.default_rng(12), options)
    assert first.shape == scan.flair.shape and first.dtype == np.float32
    assert np.array_equal(first, again) and record == record_again
    assert not np.array_equal(first, other)
    assert not first[~brain].any()
    json.dumps(record)  # the record is JSON-ready
    for key in ("geometry", "contrast", "bias", "noise", "ghost", "flow_artefacts"):
        assert key in record


def test_contrast_noise_and_flow_artefacts_follow_the_options(scan) -> None:  # noqa: F811
    brain, fluid, image = scan.tissue.brain, scan.tissue.fluid, scan.flair.data
    plain = dict(GEOMETRY_ONLY, two_d_probability=0.0, in_plane_spacing_mm=(1.0, 1.0))
    reference, _ = simulate_acquisition(
        image, scan.flair.affine, brain, np.random.default_rng(1), AcquisitionOptions(**plain)
    )
    steep, record = simulate_acquisition(
        image, scan.flair.affine, brain, np.random.default_rng(1), AcquisitionOptions(**dict(plain, gamma=(1.6, 1.6)))
    )
    assert record["contrast"]["gamma"] == pytest.approx(1.6)
    white = scan.tissue.white_matter & brain
    bright = np.percentile(reference[brain], 99)
    # a steeper curve darkens white matter relative to the brightest tissue
    assert np.median(steep[white]) / np.percentile(steep[brain], 99) < np.median(reference[white]) / bright - 0.05

    noisy, record = simulate_acquisition(
        image, scan.flair.affine, brain, np.random.default_rng(1), AcquisitionOptions(**dict(plain, noise=(0.05, 0.05)))
    )
    assert record["noise"]["relative_std"] == pytest.approx(0.05, rel=1e-3)
    assert np.std(noisy[white] - reference[white]) > 0.5 * 0.05 * np.median(image[brain])

    flows = dict(plain, two_d_probability=1.0, slice_thickness_mm=(1.0, 1.0), flow_artefacts=(3, 3))
    _, record = simulate_acquisition(
        image, scan.flair.affine, brain, np.random.default_rng(1), AcquisitionOptions(**flows), fluid=fluid,
        white_matter_mean=scan.tissue.white_matter_mean,
    )  # fmt: skip
    assert len(record["flow_artefacts"]) == 3
    for artefact in record["flow_artefacts"]:
        assert fluid[tuple(artefact["voxel"])]  # placed in the fluid spaces


def test_bad_ranges_are_refused_with_every_problem_named() -> None:
    with pytest.raises(InputError) as error:
        AcquisitionOptions(slice_thickness_mm=(6.0, 2.0), two_d_probability=1.5, max_bias=1.0)
    message = str(error.value)
    assert "slice_thickness_mm" in message and "two_d_probability" in message and "max_bias" in message


# ---------------------------------------------------------------------------------------------------------
# pairs


def test_each_time_point_gets_its_own_acquisition_and_the_masks_stay_exact(scan) -> None:  # noqa: F811
    def make(**options):
        return synthesize_pair(scan.flair, scan.lesions, scan.library, SynthOptions(**options), tissue=scan.tissue)

    plain = make(seed=4, **QUIET)
    acquired = make(seed=4, acquisition=AcquisitionOptions(), **QUIET)
    for role in ("new_lesions", "lesions_baseline", "lesions_followup"):
        assert np.array_equal(getattr(plain, role).data, getattr(acquired, role).data), role
    record = acquired.record["acquisition"]
    assert record["baseline"] != record["followup"]  # drawn independently
    assert not np.array_equal(plain.followup.data, acquired.followup.data)
    # one brain for both time points, as predict applies one mask
    assert np.array_equal(acquired.baseline.data != 0, acquired.followup.data != 0) or (
        ((acquired.baseline.data != 0) ^ (acquired.followup.data != 0)).mean() < 0.001
    )
    assert plain.record["acquisition"] is None
    assert SynthOptions(acquisition=AcquisitionOptions()).to_dict()["acquisition"]["gamma"] == [0.75, 1.35]


def test_a_null_pair_has_no_new_lesion_but_two_different_acquisitions(scan) -> None:  # noqa: F811
    pair = synthesize_pair(
        scan.flair, scan.lesions, [], SynthOptions(seed=9, removed_lesions=0, added_lesions=0,
                                                   acquisition=AcquisitionOptions(), **QUIET), tissue=scan.tissue,
    )  # fmt: skip
    assert not pair.new_lesions.data.any()
    assert pair.record["new_lesions"]["count"] == 0
    assert not np.array_equal(pair.baseline.data, pair.followup.data)
    assert pair.lesions_baseline.data.sum() == pair.lesions_followup.data.sum() > 0


def test_enlarging_lesions_grow_around_a_core_present_at_both_time_points(scan) -> None:  # noqa: F811
    # seed 4: two enlarging lesions that at least double find room in this small crop
    options = SynthOptions(seed=4, removed_lesions=1, added_lesions=1, enlarged_lesions=2, **QUIET)
    pair = synthesize_pair(scan.flair, scan.lesions, scan.library, options, tissue=scan.tissue)
    plain = synthesize_pair(scan.flair, scan.lesions, scan.library, options.replace(enlarged_lesions=0),
                            tissue=scan.tissue)  # fmt: skip
    record = pair.record["enlarged"]
    assert record["made"] == 2
    # the other changes are drawn first and are the same as without enlarging lesions
    assert pair.record["added"]["lesions"] == plain.record["added"]["lesions"]
    before, after, new = (pair.lesions_baseline.data, pair.lesions_followup.data, pair.new_lesions.data)
    assert np.array_equal(after, before | new) and not (before & new).any()
    for lesion in record["lesions"]:
        origin = np.asarray(lesion["origin_voxel"])
        # its core is a lesion at the baseline already, and the new part surrounds it at the follow-up
        region = tuple(slice(max(o - 1, 0), o + 40) for o in origin)
        assert before[region].sum() >= lesion["core_voxels"] > 0.3 * lesion["voxels"] - 1
        # and it at least doubles, so that the enlarging rule (50 %) calls it enlarging with margin
        assert lesion["core_voxels"] <= 0.5 * lesion["voxels"]
    grown = pair.record["new_lesions"]["voxels"] - plain.record["new_lesions"]["voxels"]
    assert grown == sum(lesion["voxels"] - lesion["core_voxels"] for lesion in record["lesions"])
    # the new part is brighter at the follow-up than at the baseline
    only_grown = new & ~plain.new_lesions.data
    difference = pair.followup.data - pair.baseline.data
    assert difference[only_grown].mean() > 0.1 * np.median(scan.flair.data[scan.tissue.brain])
