"""Synthetic longitudinal pairs (msnewlesion.synth and ``msnewlesion synth``), on crops of a real LIT scan."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from msnewlesion.cli import app
from msnewlesion.errors import GeometryError, InputError, OutputExistsError
from msnewlesion.io import Volume, load_mask, load_volume, save_volume
from msnewlesion.synth import (
    MANIFEST_COLUMNS,
    LesionLibrary,
    SynthOptions,
    default_subject,
    find_library_files,
    fit_tissue_model,
    save_synthetic_pair,
    synthesize_pair,
)
from msnewlesion.synth.nuisance import half_rigid, rigid_matrix

LIT = Path(__file__).parent / "data" / "lit"
# 80×48×30 voxels through the centrum semiovale of patient07, with the brain's lateral edge, 7 lesions of
# 10 mm³ or more and a few hundred library lesions whose own location falls inside.
CROP = (slice(16, 96), slice(84, 132), slice(78, 108))
QUIET = {"max_rotation_deg": 0.0, "max_translation_mm": 0.0, "max_drift": 0.0, "noise_std": 0.0}


def crop(volume: Volume, box: tuple[slice, ...] = CROP) -> Volume:
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ [s.start for s in box] + volume.affine[:3, 3]
    return Volume(np.ascontiguousarray(volume.data[box]), affine, volume.header, volume.path)


@pytest.fixture(scope="module")
def scan() -> SimpleNamespace:
    flair = crop(load_volume(LIT / "cross_sectional" / "patient07" / "flair.nii.gz"))
    lesions = crop(load_mask(LIT / "cross_sectional" / "patient07" / "lesions.nii.gz"))
    library_volumes = [crop(load_mask(path)) for path in find_library_files(LIT / "lesion_masks")]
    return SimpleNamespace(
        flair=flair,
        lesions=lesions,
        library_volumes=library_volumes,
        library=LesionLibrary.from_volumes(library_volumes),
        tissue=fit_tissue_model(flair, lesions),
    )


def make(scan: SimpleNamespace, **options: object):
    return synthesize_pair(scan.flair, scan.lesions, scan.library, SynthOptions(**options), tissue=scan.tissue)


def kmeans_white_matter(image: np.ndarray, lesions: np.ndarray) -> tuple[np.ndarray, float, float]:
    """An estimate of white matter independent of the package's: 3-means of the brain's intensities (no
    mixture model, no smoothing); the middle cluster is white matter on FLAIR. Also its mean and std."""
    brain = image != 0
    values = image[brain & ~lesions]
    centres = np.percentile(values, [15, 50, 85])
    for _ in range(50):
        nearest = np.argmin(np.abs(values[:, None] - centres), axis=1)
        centres = np.array([values[nearest == k].mean() for k in range(3)])
    centres.sort()
    nearest = np.argmin(np.abs(image[..., None] - centres), axis=-1)
    white = (nearest == 1) & brain & ~lesions
    return white, float(image[white].mean()), float(image[white].std())


def component_masks(mask: np.ndarray) -> list[np.ndarray]:
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    return [labels == k for k in range(1, count + 1)]


# ---------------------------------------------------------------------------------------------------------
# reproducibility


ROLES = ("baseline", "followup", "new_lesions", "lesions_baseline", "lesions_followup")


def test_the_same_seed_gives_identical_pairs_and_another_seed_a_different_one(scan: SimpleNamespace) -> None:
    first = make(scan, seed=5)
    again = make(scan, seed=5)
    # built from the raw library masks and without a prefitted tissue model: still the same pair
    from_scratch = synthesize_pair(scan.flair, scan.lesions, scan.library_volumes, SynthOptions(seed=5))
    other = make(scan, seed=6)
    for role in ROLES:
        assert np.array_equal(getattr(first, role).data, getattr(again, role).data), role
        assert np.array_equal(getattr(first, role).data, getattr(from_scratch, role).data), role
    assert json.dumps(first.record, sort_keys=True) == json.dumps(again.record, sort_keys=True)
    assert not np.array_equal(first.baseline.data, other.baseline.data)
    assert not np.array_equal(first.new_lesions.data, other.new_lesions.data)
    assert first.record["motion"]["angle_deg"] != other.record["motion"]["angle_deg"]


# ---------------------------------------------------------------------------------------------------------
# the new-lesion mask is exact


def test_without_motion_drift_and_noise_the_pair_differs_exactly_at_the_new_lesions(scan: SimpleNamespace) -> None:
    pair = make(scan, seed=2, removed_lesions=3, added_lesions=3, **QUIET)
    record = pair.record
    assert record["removed"]["made"] == 3 and record["added"]["made"] == 3
    lesions = scan.lesions.data
    baseline, followup, new = pair.baseline.data, pair.followup.data, pair.new_lesions.data

    removed = np.isin(scan.tissue.lesion_labels, [entry["label"] for entry in record["removed"]["lesions"]])
    added = new & ~lesions
    # the new lesions are exactly the removed annotated lesions plus the placed library lesions
    assert np.array_equal(new & lesions, removed)
    assert int(added.sum()) == sum(entry["voxels"] for entry in record["added"]["lesions"])
    assert len(component_masks(new)) == 6 == record["new_lesions"]["count"]
    assert np.array_equal(pair.lesions_followup.data, lesions | added)
    assert np.array_equal(pair.lesions_baseline.data, lesions & ~removed)

    # baseline and follow-up differ at every new-lesion voxel and nowhere beyond the soft rims
    changed = baseline != followup
    assert changed[new].all()
    distance_to_removed = ndimage.distance_transform_edt(~removed)
    distance_to_added = ndimage.distance_transform_edt(~added)
    removed_rim = record["removed"]["lesions"][0]["rim_mm"]
    added_rim = record["added"]["lesions"][0]["rim_mm"]
    within_rims = (distance_to_removed <= removed_rim) | (distance_to_added <= added_rim)
    assert not (changed & ~within_rims).any()
    assert np.array_equal(baseline[~within_rims], scan.flair.data[~within_rims])

    # an added lesion raises the follow-up by more than half its intensity increase exactly on its voxels
    increases = []
    for mask in component_masks(added):
        centroid = np.argwhere(mask).mean(axis=0)
        entry = min(record["added"]["lesions"], key=lambda e: np.abs(np.asarray(e["centroid_voxel"]) - centroid).sum())
        assert np.allclose(entry["centroid_voxel"], centroid, atol=0.01)
        assert (followup - baseline)[mask].min() > entry["intensity_increase"] / 2
        increases.append(entry["intensity_increase"])
    away_from_removed = distance_to_removed > removed_rim
    outside = away_from_removed & ~new
    assert (followup - baseline)[outside].max() < min(increases) / 2
    contrasts = [entry["contrast"] for entry in record["added"]["lesions"]]
    assert min(contrasts) >= 1.2 and max(contrasts) <= 1.4  # the default 1.3 ± 0.1


def test_hard_edges_change_only_the_new_lesion_voxels_of_added_lesions(scan: SimpleNamespace) -> None:
    pair = make(scan, seed=3, removed_lesions=0, added_lesions=3, edge_softness_mm=0.0, **QUIET)
    changed = pair.baseline.data != pair.followup.data
    assert np.array_equal(changed, pair.new_lesions.data)
    assert pair.record["added"]["made"] == 3


# ---------------------------------------------------------------------------------------------------------
# realism: where lesions go, what in-painting leaves


def test_added_lesions_lie_inside_white_matter_away_from_other_lesions(scan: SimpleNamespace) -> None:
    image, lesions = scan.flair.data, scan.lesions.data
    white, white_mean, white_std = kmeans_white_matter(image, lesions)
    brain = image != 0
    depth = ndimage.distance_transform_edt(brain)
    distance_to_lesions = ndimage.distance_transform_edt(~lesions)
    options = SynthOptions()
    for seed in (11, 12, 13):
        pair = make(scan, seed=seed, removed_lesions=0, added_lesions=4, **QUIET)
        added = pair.new_lesions.data
        assert pair.record["added"]["made"] == 4
        assert not (added & ~brain).any(), "an added lesion reaches the background"
        assert not (added & lesions).any(), "an added lesion overlaps an annotated one"
        assert distance_to_lesions[added].min() > options.lesion_gap_mm
        assert depth[added].min() > options.min_depth_mm
        assert white[added].mean() >= 0.85, f"seed {seed}: {white[added].mean():.0%} in white matter"
        assert abs(image[added].mean() - white_mean) < white_std
        for mask in component_masks(added):
            assert white[mask].mean() >= 0.6
        # the package's own tissue model agrees
        assert scan.tissue.white_matter[added].mean() >= options.min_white_matter_fraction
        assert not scan.tissue.fluid[added].any()


def test_library_locations_are_used_first_and_white_matter_when_asked(scan: SimpleNamespace) -> None:
    at_home = make(scan, seed=4, removed_lesions=0, added_lesions=3, **QUIET)
    for entry in at_home.record["added"]["lesions"]:
        assert entry["placement"] == "library location"
        shift = np.subtract(entry["origin_voxel"], entry["library_origin_voxel"])
        assert np.abs(shift).max() <= 3
    anywhere = make(scan, seed=4, removed_lesions=0, added_lesions=3, library_locations=False, **QUIET)
    assert {entry["placement"] for entry in anywhere.record["added"]["lesions"]} == {"white matter"}
    assert anywhere.record["added"]["made"] == 3


def test_removed_lesions_are_inpainted_like_the_nearby_normal_white_matter(scan: SimpleNamespace) -> None:
    image, lesions = scan.flair.data, scan.lesions.data
    white, _, _ = kmeans_white_matter(image, lesions)
    distance_to_lesions = ndimage.distance_transform_edt(~lesions)
    checked = 0
    for seed in (21, 22):
        pair = make(scan, seed=seed, removed_lesions=4, added_lesions=0, **QUIET)
        baseline = pair.baseline.data
        assert pair.record["removed"]["made"] == 4
        for entry in pair.record["removed"]["lesions"]:
            lesion = scan.tissue.lesion_labels == entry["label"]
            distance = ndimage.distance_transform_edt(~lesion)
            shell = (distance > 2) & (distance <= 6) & white & (distance_to_lesions > 2)
            nawm_mean, nawm_std = image[shell].mean(), image[shell].std()
            assert image[lesion].mean() > 1.15 * nawm_mean  # it was a visible lesion
            assert abs(baseline[lesion].mean() - nawm_mean) < 0.04 * nawm_mean
            assert baseline[lesion].std() > 0.3 * nawm_std  # textured, not a flat fill
            assert np.array_equal(pair.followup.data[lesion], image[lesion])  # still there in the follow-up
            checked += 1
        others = lesions & ~pair.new_lesions.data
        assert np.array_equal(baseline[others], image[others])  # other lesions untouched
    assert checked == 8


def test_fewer_lesions_than_asked_are_recorded_not_invented(scan: SimpleNamespace) -> None:
    pair = make(scan, seed=1, removed_lesions=50, added_lesions=0, **QUIET)
    removed = pair.record["removed"]
    assert removed["requested"] == 50
    assert removed["made"] == removed["eligible"] == 7
    big = make(scan, seed=1, removed_lesions=2, added_lesions=0, min_lesion_volume_mm3=100, **QUIET)
    assert big.record["removed"]["made"] == 1  # the crop holds one lesion of 100 mm³ or more
    assert big.record["removed"]["lesions"][0]["voxels"] >= 100


# ---------------------------------------------------------------------------------------------------------
# geometry, motion, drift and noise


def test_every_output_is_on_the_input_grid_and_affine(scan: SimpleNamespace, tmp_path: Path) -> None:
    pair = make(scan, seed=7)
    for role in ROLES:
        volume = getattr(pair, role)
        assert volume.shape == scan.flair.shape, role
        assert np.array_equal(volume.affine, scan.flair.affine), role
    assert pair.baseline.data.dtype == np.float32 and pair.new_lesions.data.dtype == bool

    source = tmp_path / "flair.nii.gz"
    save_volume(scan.flair, source)
    paths = save_synthetic_pair(pair, tmp_path / "pair")
    reference = nib.load(str(source))
    for role in ROLES:
        image = nib.load(str(paths[role]))
        assert image.shape == reference.shape
        assert np.array_equal(image.affine, reference.affine), role
        assert np.array_equal(image.header.get_sform(), reference.header.get_sform()), role
        expected = np.float32 if role in ("baseline", "followup") else np.uint8
        assert image.get_data_dtype() == expected, role
    assert np.array_equal(np.asarray(nib.load(str(paths["new_lesions"])).dataobj) > 0, pair.new_lesions.data)
    assert json.loads(paths["record"].read_text())["options"]["seed"] == 7


def test_an_anisotropic_grid_keeps_the_guarantees(scan: SimpleNamespace) -> None:
    def every_other_slice(volume: Volume) -> Volume:
        affine = volume.affine.copy()
        affine[:3, 2] *= 2
        return Volume(np.ascontiguousarray(volume.data[:, :, ::2]), affine, volume.header, volume.path)

    flair, lesions = every_other_slice(scan.flair), every_other_slice(scan.lesions)
    library = [every_other_slice(volume) for volume in scan.library_volumes]
    assert flair.spacing == (1.0, 1.0, 2.0)
    pair = synthesize_pair(flair, lesions, library, SynthOptions(seed=1, **QUIET))
    new = pair.new_lesions.data
    assert pair.record["removed"]["made"] + pair.record["added"]["made"] == pair.record["new_lesions"]["count"] > 0
    assert pair.record["new_lesions"]["volume_mm3"] == 2.0 * new.sum()
    assert (pair.baseline.data != pair.followup.data)[new].all()
    assert np.array_equal(pair.followup.affine, flair.affine) and pair.followup.shape == flair.shape


def world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return affine[:3, :3] @ np.argwhere(mask).mean(axis=0) + affine[:3, 3]


def test_motion_moves_the_followup_by_the_recorded_transform(scan: SimpleNamespace) -> None:
    motionless = {"max_rotation_deg": 0.0, "max_translation_mm": 0.0}
    common = {"seed": 0, "removed_lesions": 4, "added_lesions": 4, "symmetric": False, "max_drift": 0.0,
              "noise_std": 0.0, "interpolation_order": 1}  # fmt: skip
    still = make(scan, **common, **motionless)
    moved = make(scan, **common)
    motion = moved.record["motion"]
    # seed 0 draws a motion near the limits: 1.41° and 1.90 mm
    assert motion["applied"] and 1.0 < motion["angle_deg"] <= 2.0
    assert 1.0 < np.linalg.norm(motion["translation_mm"]) <= 2.0
    relative = np.asarray(motion["relative_matrix"])
    assert np.allclose(
        relative, rigid_matrix(motion["axis"], motion["angle_deg"], motion["translation_mm"], motion["centre_mm"])
    )
    # the same lesions were painted: only the follow-up moved
    assert np.array_equal(moved.baseline.data, still.baseline.data)

    # resampling the still follow-up through the recorded transform, independently, gives the moved one
    affine = scan.flair.affine
    grid = np.indices(scan.flair.shape).reshape(3, -1).astype(np.float64)
    source = (np.linalg.inv(affine) @ np.linalg.inv(relative) @ affine) @ np.vstack([grid, np.ones(grid.shape[1])])
    expected = ndimage.map_coordinates(still.followup.data, source[:3], order=1, mode="constant").reshape(
        scan.flair.shape
    )
    inside = moved.followup.data != 0
    assert np.abs(moved.followup.data - expected)[inside].max() < 1e-3
    assert np.abs(moved.followup.data - still.followup.data)[inside].mean() > 1.0  # it really moved

    # each new lesion (away from the crop's border, which content leaves) moved with the recorded transform
    def moved_centre(mask: np.ndarray) -> np.ndarray:
        return relative[:3, :3] @ world_centroid(mask, affine) + relative[:3, 3]

    border = np.ones(scan.flair.shape, dtype=bool)
    border[2:-2, 2:-2, 2:-2] = False
    before = [mask for mask in component_masks(still.new_lesions.data) if not (mask & border).any()]
    after = component_masks(moved.new_lesions.data)
    assert len(before) >= 3
    for mask in before:
        distances = [np.linalg.norm(world_centroid(m, affine) - moved_centre(mask)) for m in after]
        assert min(distances) < 0.8  # nearest-neighbour masks: centres within a voxel
        assert np.linalg.norm(world_centroid(mask, affine) - moved_centre(mask)) > 1.0  # a real displacement
        nearest = after[int(np.argmin(distances))]
        assert abs(int(nearest.sum()) - int(mask.sum())) <= max(2, 0.1 * mask.sum())  # moved, not shrunk

    # the mask moves by nearest neighbour: lesion where the centre maps back into a lesion voxel (compared away
    # from the array's faces, where points that map just outside it count as outside)
    back = np.floor(source[:3] + 0.5).astype(int)
    valid = np.all((back >= 0) & (back < np.array(scan.flair.shape)[:, None]), axis=0)
    expected_mask = np.zeros(back.shape[1], dtype=bool)
    expected_mask[valid] = still.new_lesions.data[tuple(back[:, valid])]
    expected_mask = expected_mask.reshape(scan.flair.shape)
    assert expected_mask[~border].sum() > 100
    assert np.array_equal(moved.new_lesions.data[~border], expected_mask[~border])


def test_symmetric_motion_splits_the_transform_between_time_points(scan: SimpleNamespace) -> None:
    pair = make(scan, seed=3, max_drift=0.0, noise_std=0.0)  # seed 3: 1.78° and 1.34 mm
    motion = pair.record["motion"]
    relative = np.asarray(motion["relative_matrix"])
    followup_matrix, baseline_matrix = np.asarray(motion["followup_matrix"]), np.asarray(motion["baseline_matrix"])
    assert np.allclose(followup_matrix @ np.linalg.inv(baseline_matrix), relative)
    assert np.allclose(followup_matrix @ followup_matrix, relative)
    assert np.allclose(half_rigid(motion["axis"], motion["angle_deg"], relative), followup_matrix)
    # the baseline moved through the recorded relative transform lines up with the follow-up; the inverse does not
    affine = scan.flair.affine
    grid = np.indices(scan.flair.shape).reshape(3, -1).astype(np.float64)
    homogeneous = np.vstack([grid, np.ones(grid.shape[1])])

    def baseline_moved_by(matrix: np.ndarray) -> np.ndarray:
        source = (np.linalg.inv(affine) @ np.linalg.inv(matrix) @ affine) @ homogeneous
        return ndimage.map_coordinates(pair.baseline.data, source[:3], order=3, mode="nearest").reshape(
            scan.flair.shape
        )

    interior = np.zeros(scan.flair.shape, dtype=bool)
    interior[4:-4, 4:-4, 4:-4] = True
    compared = interior & ndimage.binary_erosion(scan.flair.data != 0, iterations=3) & ~pair.new_lesions.data
    followup = pair.followup.data

    def misfit(image: np.ndarray) -> float:
        return float(np.abs(followup - image)[compared].mean())

    assert misfit(baseline_moved_by(relative)) < 0.4 * misfit(pair.baseline.data)
    assert misfit(baseline_moved_by(relative)) < 0.4 * misfit(baseline_moved_by(np.linalg.inv(relative)))


def test_drift_is_a_smooth_multiplicative_field_of_the_recorded_size(scan: SimpleNamespace) -> None:
    pair = make(scan, seed=12, max_drift=0.2, max_rotation_deg=0.0, max_translation_mm=0.0, noise_std=0.0)
    amplitude = pair.record["drift"]["amplitude"]
    assert 0 < amplitude <= 0.2
    plain = make(scan, seed=12, **QUIET)
    unchanged = (scan.flair.data != 0) & (plain.baseline.data == plain.followup.data)
    log_ratio = np.zeros(scan.flair.shape)
    log_ratio[unchanged] = np.log(pair.followup.data[unchanged] / pair.baseline.data[unchanged])
    assert np.abs(log_ratio[unchanged]).max() <= amplitude + 1e-4
    assert np.abs(log_ratio[unchanged]).max() > 0.8 * amplitude
    # smooth: neighbouring voxels differ by a tiny fraction of the amplitude
    both = unchanged[1:] & unchanged[:-1]
    assert np.abs(np.diff(log_ratio, axis=0))[both].max() < 0.05 * amplitude + 1e-4
    # symmetric: the baseline carries half of the field, inverted
    assert np.allclose(
        np.log(pair.baseline.data[unchanged] / plain.baseline.data[unchanged]), -log_ratio[unchanged] / 2, atol=1e-4
    )


def test_noise_has_the_recorded_strength_and_stays_inside_the_brain(scan: SimpleNamespace) -> None:
    pair = make(scan, seed=13, noise_std=0.05, max_drift=0.0, max_rotation_deg=0.0, max_translation_mm=0.0)
    plain = make(scan, seed=13, **QUIET)
    sigma = pair.record["noise"]["std"]
    assert sigma == pytest.approx(0.05 * scan.tissue.white_matter_mean, rel=1e-4)
    brain = scan.flair.data != 0
    unchanged = brain & (plain.baseline.data == plain.followup.data)
    difference = (pair.followup.data - pair.baseline.data)[unchanged]
    assert difference.std() == pytest.approx(np.sqrt(2) * sigma, rel=0.03)
    assert abs(difference.mean()) < 0.05 * sigma
    assert not pair.baseline.data[~brain].any() and not pair.followup.data[~brain].any()


# ---------------------------------------------------------------------------------------------------------
# bad inputs


def test_a_lesion_mask_on_another_grid_is_refused(scan: SimpleNamespace) -> None:
    shifted = crop(load_mask(LIT / "cross_sectional" / "patient07" / "lesions.nii.gz"), (slice(17, 97), *CROP[1:]))
    with pytest.raises(GeometryError, match="FLAIR and lesion mask are not on the same grid"):
        synthesize_pair(scan.flair, shifted, scan.library, SynthOptions())
    smaller = Volume(scan.lesions.data[:-1], scan.lesions.affine)
    with pytest.raises(GeometryError, match=r"shapes differ \(\(80, 48, 30\) vs \(79, 48, 30\)\)"):
        synthesize_pair(scan.flair, smaller, scan.library, SynthOptions())


def test_a_library_on_another_grid_or_empty_is_refused(scan: SimpleNamespace, tmp_path: Path) -> None:
    whole = load_mask(LIT / "lesion_masks" / "patient01.nii.gz")
    with pytest.raises(GeometryError, match=r"library lesion mask .*patient01\.nii\.gz"):
        synthesize_pair(scan.flair, scan.lesions, [whole], SynthOptions())
    with pytest.raises(GeometryError, match="FLAIR and lesion library are not on the same grid"):
        synthesize_pair(scan.flair, scan.lesions, LesionLibrary.from_volumes([whole]), SynthOptions())
    with pytest.raises(InputError, match="lesion library is empty"):
        synthesize_pair(scan.flair, scan.lesions, [], SynthOptions(added_lesions=2))
    with pytest.raises(InputError, match="holds no lesion between 200000 and 300000 mm³"):
        make(scan, min_lesion_volume_mm3=200_000, max_lesion_volume_mm3=300_000)
    # no library is needed when nothing is added
    assert synthesize_pair(scan.flair, scan.lesions, [], SynthOptions(added_lesions=0)).record["removed"]["made"] == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"holds no \.nii or \.nii\.gz file"):
        find_library_files(tmp_path / "empty")
    with pytest.raises(InputError, match="not found"):
        find_library_files(tmp_path / "missing")


def test_bad_options_and_images_are_refused_with_every_problem_named(scan: SimpleNamespace) -> None:
    with pytest.raises(InputError) as error:
        SynthOptions(contrast=1.05, removed_lesions=-1, interpolation_order=2)
    message = str(error.value)
    assert "contrast − contrast_spread must exceed 1" in message
    assert "removed_lesions must be a whole number ≥ 0" in message
    assert "interpolation_order must be 1 or 3" in message
    empty = Volume(np.zeros(scan.flair.shape, np.float32), scan.flair.affine)
    with pytest.raises(InputError, match="zero everywhere"):
        synthesize_pair(empty, scan.lesions, scan.library, SynthOptions())
    unstripped = Volume(scan.flair.data + 5.0, scan.flair.affine)
    with pytest.raises(InputError, match="does not look skull-stripped"):
        synthesize_pair(unstripped, scan.lesions, scan.library, SynthOptions())
    # with a brain mask it is fine
    brain = Volume(scan.flair.data != 0, scan.flair.affine)
    pair = synthesize_pair(unstripped, scan.lesions, scan.library, SynthOptions(**QUIET), brain_mask=brain)
    assert pair.record["new_lesions"]["count"] == 6


def test_saving_refuses_existing_folders_and_input_folders(scan: SimpleNamespace, tmp_path: Path) -> None:
    pair = make(scan, seed=1)
    save_synthetic_pair(pair, tmp_path / "pair")
    with pytest.raises(OutputExistsError, match="already exists"):
        save_synthetic_pair(pair, tmp_path / "pair")
    save_synthetic_pair(pair, tmp_path / "pair", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "pair").iterdir()) == sorted(
        ["baseline.nii.gz", "followup.nii.gz", "new_lesions.nii.gz", "lesions_baseline.nii.gz",
         "lesions_followup.nii.gz", "lesion_changes.nii.gz", "synth.json"]
    )  # fmt: skip
    pair.record["inputs"]["flair"] = str(tmp_path / "pair" / "flair.nii.gz")
    with pytest.raises(InputError, match="holds the input"):
        save_synthetic_pair(pair, tmp_path / "pair", overwrite=True)


def test_default_subject_names() -> None:
    assert default_subject("data/patient07/flair.nii.gz") == "patient07"
    assert default_subject("sub-01_ses-01_FLAIR.nii.gz") == "sub-01_ses-01"
    assert default_subject("scan3.nii") == "scan3"


# ---------------------------------------------------------------------------------------------------------
# command line


@pytest.fixture(scope="module")
def files(scan: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("synth-inputs")
    (root / "patient07").mkdir()
    flair = save_volume(scan.flair, root / "patient07" / "flair.nii.gz")
    lesions = save_volume(scan.lesions, root / "patient07" / "lesions.nii.gz", dtype=np.uint8)
    library = root / "lesion_masks"
    library.mkdir()
    for volume in scan.library_volumes:
        save_volume(volume, library / volume.path.name, dtype=np.uint8)
    return SimpleNamespace(flair=flair, lesions=lesions, library=library, root=root)


def synth_args(files: SimpleNamespace, output: Path, *extra: str) -> list[str]:
    return ["synth", str(files.flair), str(files.lesions), "--library", str(files.library), "-o", str(output),
            "--quiet", *extra]  # fmt: skip


def read_rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="") as handle:
        return list(csv.DictReader(handle))


def test_cli_writes_pairs_and_a_training_manifest(files: SimpleNamespace, tmp_path: Path, runner: CliRunner) -> None:
    from msnewlesion.training.manifest import read_manifest, validate_manifest

    output = tmp_path / "synthetic"
    result = runner.invoke(app, synth_args(files, output, "--pairs", "2", "--seed", "4"))
    assert result.exit_code == 0, result.output
    assert "patient07-synth000" in result.stdout and "patient07-synth001" in result.stdout
    for name in ("patient07-synth000", "patient07-synth001"):
        assert sorted(p.name for p in (output / name).iterdir()) == sorted(
            ["baseline.nii.gz", "followup.nii.gz", "new_lesions.nii.gz", "lesions_baseline.nii.gz",
             "lesions_followup.nii.gz", "lesion_changes.nii.gz", "synth.json"]
        )  # fmt: skip
    manifest = output / "manifest.csv"
    with open(manifest, newline="") as handle:
        assert tuple(next(csv.reader(handle))) == MANIFEST_COLUMNS
    rows = read_rows(manifest)
    assert rows[0] == {
        "subject": "patient07-synth000",
        "kind": "longitudinal",
        "baseline": "patient07-synth000/baseline.nii.gz",
        "followup": "patient07-synth000/followup.nii.gz",
        "label": "patient07-synth000/new_lesions.nii.gz",
        "brain_mask": "",
        "split": "train",
        "baseline_lesions": "patient07-synth000/lesions_baseline.nii.gz",
        "followup_lesions": "patient07-synth000/lesions_followup.nii.gz",
    }
    assert [row["subject"] for row in rows] == ["patient07-synth000", "patient07-synth001"]
    # the training command's own reader accepts it, with no problem
    assert validate_manifest(read_manifest(manifest)) == []
    record = json.loads((output / "patient07-synth001" / "synth.json").read_text())
    assert record["options"]["seed"] == 5 and record["pair"] == {
        "subject": "patient07-synth001",
        "index": 1,
        "split": "train",
    }
    # outputs are on the input's grid, exactly
    reference = nib.load(str(files.flair))
    assert np.array_equal(nib.load(str(output / "patient07-synth000" / "new_lesions.nii.gz")).affine, reference.affine)

    # pair 1 alone, rebuilt from its index: the same files, bit for bit
    alone = tmp_path / "alone"
    result = runner.invoke(app, synth_args(files, alone, "--start", "1", "--seed", "4"))
    assert result.exit_code == 0, result.output
    for role in ROLES:
        name = f"{role}.nii.gz"
        first = np.asarray(nib.load(str(output / "patient07-synth001" / name)).dataobj)
        second = np.asarray(nib.load(str(alone / "patient07-synth001" / name)).dataobj)
        assert np.array_equal(first, second), role


def test_cli_appends_to_the_manifest_and_refuses_to_overwrite(
    files: SimpleNamespace, tmp_path: Path, runner: CliRunner
) -> None:
    output = tmp_path / "synthetic"
    assert runner.invoke(app, synth_args(files, output, "--mode", "remove")).exit_code == 0
    result = runner.invoke(app, synth_args(files, output, "--start", "1", "--split", "val", "--subject", "p07"))
    assert result.exit_code == 0, result.output
    rows = read_rows(output / "manifest.csv")
    assert [(row["subject"], row["split"]) for row in rows] == [
        ("patient07-synth000", "train"),
        ("p07-synth001", "val"),
    ]
    before = (output / "manifest.csv").read_text()

    result = runner.invoke(app, synth_args(files, output))
    assert result.exit_code == 1
    assert "already exist" in result.output and "--overwrite" in result.output
    assert "Traceback" not in result.output
    assert (output / "manifest.csv").read_text() == before

    result = runner.invoke(app, synth_args(files, output, "--overwrite", "--seed", "8", "--mode", "add"))
    assert result.exit_code == 0, result.output
    rows = read_rows(output / "manifest.csv")
    assert [row["subject"] for row in rows] == ["patient07-synth000", "p07-synth001"]
    record = json.loads((output / "patient07-synth000" / "synth.json").read_text())
    assert record["options"]["seed"] == 8 and record["removed"]["made"] == 0 and record["added"]["made"] == 3

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.csv").write_text("name,path\na,b\n")
    result = runner.invoke(app, synth_args(files, tmp_path / "other"))
    assert result.exit_code == 1 and "is not a training manifest" in result.output


def test_cli_reports_bad_inputs_in_one_line(files: SimpleNamespace, tmp_path: Path, runner: CliRunner) -> None:
    other_grid = files.root / "lesions_other_grid.nii.gz"
    volume = load_mask(files.lesions)
    save_volume(Volume(volume.data[:, :, :-2], volume.affine, volume.header), other_grid, dtype=np.uint8)
    result = runner.invoke(
        app, ["synth", str(files.flair), str(other_grid), "--library", str(files.library), "-o", str(tmp_path / "a")]
    )
    assert result.exit_code == 1
    assert "FLAIR and lesion mask are not on the same grid" in result.output
    assert "Traceback" not in result.output

    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(
        app, ["synth", str(files.flair), str(files.lesions), "--library", str(empty), "-o", str(tmp_path / "b")]
    )
    assert result.exit_code == 1 and "holds no .nii or .nii.gz file" in result.output

    result = runner.invoke(app, ["synth", str(files.flair), str(files.lesions), "-o", str(tmp_path / "c")])
    assert result.exit_code == 1 and "no lesion library was given" in result.output
    result = runner.invoke(app, synth_args(files, tmp_path / "d", "--contrast", "0.8"))
    assert result.exit_code == 2 and "must exceed 1" in result.output  # a setting that cannot work
    assert not (tmp_path / "a").exists() and not (tmp_path / "d").exists()


def test_cli_json_summary_and_help(files: SimpleNamespace, tmp_path: Path, runner: CliRunner) -> None:
    result = runner.invoke(app, synth_args(files, tmp_path / "out", "--json", "--max-rotation", "0"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary[0]["subject"] == "patient07-synth000"
    assert summary[0]["removed"] == 3 and summary[0]["added"] == 3 and summary[0]["new_lesions"] == 6
    help_text = runner.invoke(app, ["synth", "--help"]).output
    assert "Example" in help_text and "--library" in help_text
    assert "synth" in runner.invoke(app, ["--help"]).output


# ---------------------------------------------------------------------------------------------------------
# every change class, with exact truth


def test_every_change_class_is_made_with_an_exact_change_map(scan: SimpleNamespace) -> None:
    from msnewlesion.lesions import CHANGE_CODES, classify_changes

    options = {"removed_lesions": 1, "added_lesions": 1, "enlarged_lesions": 1, "shrinking_lesions": 1}
    pair = make(scan, seed=4, resolved_lesions=1, **options, **QUIET)
    plain = make(scan, seed=4, **options | {"shrinking_lesions": 0}, **QUIET)
    record = pair.record
    for kind in ("removed", "added", "enlarged", "shrinking", "resolved"):
        assert record[kind]["made"] == 1, kind
    # shrinking and resolved lesions are drawn last: the other changes are those of a pair without them
    assert record["added"]["lesions"] == plain.record["added"]["lesions"]
    assert record["removed"]["lesions"] == plain.record["removed"]["lesions"]
    assert np.array_equal(pair.new_lesions.data, plain.new_lesions.data)  # shrinking and resolved add nothing new

    codes = pair.lesion_changes.data
    before, after, new = pair.lesions_baseline.data, pair.lesions_followup.data, pair.new_lesions.data
    assert record["lesion_changes"] == {"new": 2, "enlarging": 1, "stable": record["lesion_changes"]["stable"],
                                        "shrinking": 1, "resolved": 1}  # fmt: skip
    resolved = codes == CHANGE_CODES["resolved"]
    assert before[resolved].all() and not after[resolved].any()
    label = record["resolved"]["lesions"][0]["label"]
    assert np.array_equal(resolved, scan.tissue.lesion_labels == label)
    shrinking = codes == CHANGE_CODES["shrinking"]
    assert np.array_equal(shrinking, before & shrinking) and 0 < (after & shrinking).sum() <= 0.5 * shrinking.sum()
    assert not (new & shrinking).any()
    enlarging = codes == CHANGE_CODES["enlarging"]
    assert after[enlarging].all() and 0 < (before & enlarging).sum() <= 0.5 * enlarging.sum()
    assert np.array_equal(codes > 0, before | after)  # every lesion of either time point has its class

    # the classification of predict, run on the exact masks, gives back the exact change map
    changes = classify_changes(before, after, new, voxel_volume_mm3=scan.flair.voxel_volume)
    assert np.array_equal(changes.codes, codes)
    # and so does the classification from the change masks (what appeared, what went) with the all-lesion masks
    faded = before & ~after
    changes = classify_changes(before, after, new, faded=faded, voxel_volume_mm3=scan.flair.voxel_volume)
    assert np.array_equal(changes.codes, codes)


def test_the_change_map_moves_with_the_followup(scan: SimpleNamespace, tmp_path: Path) -> None:
    import nibabel as nib

    from msnewlesion.synth import save_synthetic_pair

    pair = make(scan, seed=8, resolved_lesions=1, shrinking_lesions=1, max_drift=0.0, noise_std=0.0)
    assert pair.record["motion"]["applied"]
    codes = pair.lesion_changes.data
    # on the follow-up: its lesions (all but the resolved ones) are coded where the follow-up's mask has them
    present = np.isin(codes, [1, 2, 3])
    assert np.array_equal(present & pair.lesions_followup.data, present)
    paths = save_synthetic_pair(pair, tmp_path / "pair")
    image = nib.load(str(paths["lesion_changes"]))
    assert image.header.get_intent()[0] == "label" and image.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(image.dataobj), codes)
