"""One synthetic longitudinal pair from one single-time-point scan: :func:`synthesize_pair`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from msnewlesion import __version__
from msnewlesion.errors import InputError
from msnewlesion.io import Volume, atomic_directory, check_same_grid, save_volume, write_json
from msnewlesion.synth.acquisition import AcquisitionOptions, simulate_acquisition
from msnewlesion.synth.library import LesionLibrary, LibraryLesion
from msnewlesion.synth.nuisance import (
    DRIFT_TERMS,
    drift_log_field,
    half_rigid,
    move,
    random_rigid_motion,
    rigid_matrix,
)
from msnewlesion.synth.painting import (
    DONOR_RADIUS_MM,
    FLOOR_DISTANCE,
    borrow_texture,
    expand_box,
    inpainting_weight,
    local_mean,
    noise_texture,
    signed_distance_mm,
    soft_lesion_weight,
    voxels_for_mm,
)
from msnewlesion.synth.tissue import TissueModel, bounding_box, fit_tissue_model, label_lesions

__all__ = [
    "MASK_DEFINITION",
    "PAIR_FILES",
    "SynthOptions",
    "SyntheticPair",
    "save_synthetic_pair",
    "synthesize_pair",
]

#: File names of a saved pair, by role.
PAIR_FILES = {
    "baseline": "baseline.nii.gz",
    "followup": "followup.nii.gz",
    "new_lesions": "new_lesions.nii.gz",
    "lesions_baseline": "lesions_baseline.nii.gz",
    "lesions_followup": "lesions_followup.nii.gz",
    "record": "synth.json",
}

MASK_DEFINITION = (
    "Each time point has a lesion-content map in [0, 1] (the fraction of a voxel that is lesion): 1 on annotated "
    "lesions, 0 on an in-painted (removed) lesion in the baseline, and 1 / (1 + exp(d / edge_softness_mm)) around "
    "an added lesion (and, at the baseline, around an enlarging lesion's core), d being the signed distance to its "
    "boundary in mm (negative inside), which is above 1/2 exactly on the library lesion's voxels. Before motion, "
    "lesions_baseline = {baseline content > 1/2}, lesions_followup = {follow-up content > 1/2} and new_lesions = "
    "the removed annotated lesions, the placed library lesions (there {follow-up content - baseline content > 1/2}) "
    "and each enlarging lesion's voxels outside its core. Each mask then moves with its image by "
    "nearest neighbour (a voxel is lesion when its centre, mapped back through the motion, falls in a lesion voxel). "
    "Without motion, drift and noise, the follow-up exceeds the baseline by more than half an added lesion's "
    "intensity increase exactly on its voxels, and baseline and follow-up are identical outside the changes' "
    "supports (each new lesion grown by its soft rim, rim_mm)."
)

#: The core of an enlarging lesion (present at both time points) holds at least this fraction of it.
ENLARGING_MIN_CORE = 0.3

# How many random placements are tried for one added lesion: first at library lesions' own (jittered)
# locations, then at random white-matter locations.
LIBRARY_LOCATION_TRIES = 120
WHITE_MATTER_TRIES = 120


@dataclass(frozen=True)
class SynthOptions:
    """How a synthetic pair is made. Every random choice comes from ``seed``.

    Parameters
    ----------
    seed : int
        Seeds every random choice; the same seed, inputs and options give bit-identical pairs.
    removed_lesions : int
        Annotated lesions to in-paint in the baseline (they stay in the follow-up, so they are new).
    added_lesions : int
        Library lesions to add to the follow-up.
    enlarged_lesions : int
        Enlarging lesions: a library lesion whose core (the lesion eroded by ``enlargement_mm``) is added to
        both time points and the whole shape to the follow-up; the part outside the core is new (change
        masks mark enlarging lesions so).
    enlargement_mm : (float, float)
        Range of the thickness of an enlarging lesion's new part.
    min_lesion_volume_mm3, max_lesion_volume_mm3 : float
        Only lesions of this size are removed or added.
    contrast : float
        An added lesion's intensity is this times the local normal-appearing white matter (NAWM) at its core.
    contrast_spread : float
        Each added lesion's contrast is drawn uniformly within ``contrast ± contrast_spread``.
    edge_softness_mm : float
        Width of the soft edges (the scale of the sigmoid across the boundary); 0 gives hard edges.
    inpaint_margin_mm : float
        In-painting also covers this much of the partial-volume halo around a removed lesion.
    nawm_scale_mm : float
        Gaussian scale of the local NAWM mean used for contrast and in-painting.
    lesion_gap_mm : float
        An added lesion keeps at least this far from every other lesion and from in-painted regions, so that it
        counts as a lesion of its own.
    min_depth_mm : float
        An added lesion keeps at least this far inside the brain's outer surface (away from the cortex).
    min_white_matter_fraction : float
        The fraction of an added lesion's voxels that must be white matter (none may be fluid).
    library_locations : bool
        Try the library lesions' own locations first (realistic when the library shares the scan's space, as the
        LIT masks share MNI space); random white-matter locations are used when they fail, or always when False.
    location_jitter_mm : float
        Largest shift from a library lesion's own location, along each axis.
    max_rotation_deg, max_translation_mm : float
        Limits of the random rigid motion of the follow-up relative to the baseline (0 for none).
    max_drift : float
        The largest multiplicative intensity change of the smooth drift field, as a fraction (0.05: up to ±5 %);
        the amplitude is drawn uniformly between 0 and this.
    noise_std : float
        Standard deviation of added Gaussian noise, as a fraction of the NAWM mean.
    symmetric : bool
        Split the motion and drift evenly between the time points (each moved by half) and add noise to both, so
        that neither image is systematically smoother, noisier or darker; with False only the follow-up is
        moved, drifted and made noisier.
    interpolation_order : int
        Spline order for moving images: 3 (cubic, sharp) or 1 (linear).
    acquisition : AcquisitionOptions, optional
        Give each time point its own simulated scanner acquisition (slice thickness and gaps, in-plane
        spacing, contrast, bias, Rician noise, ghosting, CSF flow artefacts), drawn independently, and bring
        it back onto the grid with the interpolation ``predict`` uses (see
        :mod:`msnewlesion.synth.acquisition`). None: both time points keep the input's resolution.
    """

    seed: int = 0
    removed_lesions: int = 3
    added_lesions: int = 3
    enlarged_lesions: int = 0
    enlargement_mm: tuple[float, float] = (1.0, 2.5)
    min_lesion_volume_mm3: float = 10.0
    max_lesion_volume_mm3: float = 1500.0
    contrast: float = 1.3
    contrast_spread: float = 0.1
    edge_softness_mm: float = 0.5
    inpaint_margin_mm: float = 1.5
    nawm_scale_mm: float = 3.0
    lesion_gap_mm: float = 2.0
    min_depth_mm: float = 3.0
    min_white_matter_fraction: float = 0.9
    library_locations: bool = True
    location_jitter_mm: float = 3.0
    max_rotation_deg: float = 2.0
    max_translation_mm: float = 2.0
    max_drift: float = 0.05
    noise_std: float = 0.02
    symmetric: bool = True
    interpolation_order: int = 3
    acquisition: AcquisitionOptions | None = None

    def __post_init__(self) -> None:
        if isinstance(self.acquisition, dict):
            object.__setattr__(self, "acquisition", AcquisitionOptions.from_dict(self.acquisition))
        problems = []

        def check(condition: bool, message: str) -> None:
            if not condition:
                problems.append(message)

        check(isinstance(self.seed, int) and self.seed >= 0, f"seed must be a whole number ≥ 0, got {self.seed}")
        object.__setattr__(self, "enlargement_mm", tuple(float(v) for v in self.enlargement_mm))
        check(
            len(self.enlargement_mm) == 2 and 0 < self.enlargement_mm[0] <= self.enlargement_mm[1],
            f"enlargement_mm must be a range (min, max) of positive mm, got {self.enlargement_mm}",
        )
        for name in ("removed_lesions", "added_lesions", "enlarged_lesions"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 0, f"{name} must be a whole number ≥ 0, got {value}")
        check(self.min_lesion_volume_mm3 > 0, f"min_lesion_volume_mm3 must be > 0, got {self.min_lesion_volume_mm3}")
        check(
            self.max_lesion_volume_mm3 >= self.min_lesion_volume_mm3,
            f"max_lesion_volume_mm3 ({self.max_lesion_volume_mm3}) is below min_lesion_volume_mm3 "
            f"({self.min_lesion_volume_mm3})",
        )
        check(self.contrast_spread >= 0, f"contrast_spread must be ≥ 0, got {self.contrast_spread}")
        check(
            self.contrast - self.contrast_spread > 1,
            f"contrast − contrast_spread must exceed 1 (a new lesion is brighter than white matter), got "
            f"{self.contrast} − {self.contrast_spread}",
        )
        for name in ("edge_softness_mm", "inpaint_margin_mm", "lesion_gap_mm", "min_depth_mm", "location_jitter_mm"):
            check(getattr(self, name) >= 0, f"{name} must be ≥ 0, got {getattr(self, name)}")
        check(self.nawm_scale_mm > 0, f"nawm_scale_mm must be > 0, got {self.nawm_scale_mm}")
        check(
            0 <= self.min_white_matter_fraction <= 1,
            f"min_white_matter_fraction must be within [0, 1], got {self.min_white_matter_fraction}",
        )
        check(0 <= self.max_rotation_deg <= 30, f"max_rotation_deg must be within [0, 30], got {self.max_rotation_deg}")
        check(self.max_translation_mm >= 0, f"max_translation_mm must be ≥ 0, got {self.max_translation_mm}")
        check(0 <= self.max_drift < 1, f"max_drift must be within [0, 1), got {self.max_drift}")
        check(self.noise_std >= 0, f"noise_std must be ≥ 0, got {self.noise_std}")
        check(self.interpolation_order in (1, 3), f"interpolation_order must be 1 or 3, got {self.interpolation_order}")
        if problems:
            raise InputError("invalid synthesis options: " + "; ".join(problems))

    def replace(self, **changes: Any) -> SynthOptions:
        """A copy with some fields changed (and checked)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["acquisition"] = self.acquisition.to_dict() if self.acquisition is not None else None
        return values


@dataclass
class SyntheticPair:
    """A synthetic longitudinal pair, every image on the grid and affine of the input FLAIR.

    Attributes
    ----------
    baseline, followup : Volume
        The two FLAIRs (float32).
    new_lesions : Volume
        The exact new-lesion mask, on the follow-up (see :data:`MASK_DEFINITION`).
    lesions_baseline, lesions_followup : Volume
        All lesions of each time point.
    record : dict
        Every parameter and random choice (JSON-ready).
    """

    baseline: Volume
    followup: Volume
    new_lesions: Volume
    lesions_baseline: Volume
    lesions_followup: Volume
    record: dict[str, Any] = field(default_factory=dict)


def _voxels_for_volume(volume_mm3: float, voxel_volume: float) -> int:
    return max(math.ceil(volume_mm3 / voxel_volume - 1e-9), 1)


def _world(affine: np.ndarray, voxel: Sequence[float]) -> list[float]:
    return [round(float(v), 3) for v in affine[:3, :3] @ np.asarray(voxel, dtype=np.float64) + affine[:3, 3]]


def _centroid(mask: np.ndarray, origin: Sequence[int]) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0) + np.asarray(origin, dtype=np.float64)


class _Painter:
    """The working state of one pair while lesions are removed and added."""

    def __init__(self, flair: Volume, tissue: TissueModel, options: SynthOptions) -> None:
        self.options = options
        self.affine = flair.affine
        self.spacing = flair.spacing
        self.shape = flair.shape
        self.tissue = tissue
        # Everything outside the brain is background in both outputs, also when a brain mask was given for an
        # image that is not skull-stripped (motion would otherwise cut the skull at the brain's box).
        self.image = np.where(tissue.brain, np.asarray(flair.data, dtype=np.float32), np.float32(0))
        self.baseline = self.image.copy()
        self.followup = self.image.copy()
        self.lesions = tissue.lesion_labels > 0
        self.content_baseline = self.lesions.astype(np.float32)
        self.content_followup = self.content_baseline.copy()
        self.content_new = np.zeros(self.shape, dtype=np.float32)
        # Lesions, in-painted regions and added lesions: what a new lesion must keep its distance from.
        self.occupied = self.lesions.copy()
        self.nawm_sigma = [options.nawm_scale_mm / s for s in self.spacing]
        self.nawm_reach = voxels_for_mm(3 * options.nawm_scale_mm, self.spacing)

    # -- removing -------------------------------------------------------------------------------------
    def remove(self, label: int, rng: np.random.Generator) -> dict[str, Any]:
        options = self.options
        rim_mm = options.inpaint_margin_mm + FLOOR_DISTANCE * options.edge_softness_mm
        rim = voxels_for_mm(rim_mm, self.spacing)
        donor_radius = voxels_for_mm(DONOR_RADIUS_MM, self.spacing)
        margin = [r + d + 1 for r, d in zip(rim, donor_radius, strict=True)]
        box = expand_box(self.tissue.lesion_boxes[label - 1], margin, self.shape)
        labels = self.tissue.lesion_labels[box]
        lesion = labels == label
        weight = inpainting_weight(
            signed_distance_mm(lesion, self.spacing), options.edge_softness_mm, options.inpaint_margin_mm
        )
        # Other annotated lesions stay exactly as they are: they are lesions at both time points.
        weight[(labels > 0) & ~lesion] = 0
        support = weight > 0

        source = self.image[box]
        normal = self.tissue.normal_white_matter[box]
        mean = local_mean(source, normal, self.nawm_sigma, self.tissue.white_matter_mean, needed=support)
        residual = source - mean
        texture, offset = borrow_texture(residual, normal, support, weight >= 0.5, donor_radius, rng)
        if texture is not None:
            texture_record: dict[str, Any] = {"source": "normal white matter nearby", "offset_voxels": offset}
        else:
            spread = float(residual[normal].std()) if normal.sum() > 10 else float(self.tissue.class_stds[1])
            texture = noise_texture(lesion.shape, spread, rng)
            texture_record = {"source": "correlated Gaussian noise", "std": round(spread, 4)}
        fill = mean + texture

        target = self.baseline[box]
        target[support] = (1 - weight[support]) * target[support] + weight[support] * fill[support]
        self.content_baseline[box][lesion] = 0
        self.content_new[box][lesion] = 1
        self.occupied[box] |= support

        origin = [s.start for s in box]
        centroid = _centroid(lesion, origin)
        voxels = int(lesion.sum())
        return {
            "label": int(label),
            "voxels": voxels,
            "volume_mm3": round(voxels * float(abs(np.linalg.det(self.affine[:3, :3]))), 3),
            "centroid_voxel": [round(float(c), 2) for c in centroid],
            "centroid_mm": _world(self.affine, centroid),
            "lesion_mean": round(float(source[lesion].mean()), 4),
            "local_nawm_mean": round(float(mean[lesion].mean()), 4),
            "inpainted_mean": round(float(target[lesion].mean()), 4),
            "texture": texture_record,
            "support_voxels": int(support.sum()),
            "rim_mm": round(rim_mm, 4),
        }

    # -- adding ---------------------------------------------------------------------------------------
    def fits(self, mask: np.ndarray, origin: np.ndarray, deep_white_matter: np.ndarray, gap: Sequence[int]) -> bool:
        stop = origin + np.asarray(mask.shape)
        if np.any(origin < 0) or np.any(stop > np.asarray(self.shape)):
            return False
        box = tuple(slice(int(a), int(b)) for a, b in zip(origin, stop, strict=True))
        if not deep_white_matter[box][mask].mean() >= self.options.min_white_matter_fraction:
            return False
        if not self.tissue.brain[box][mask].all() or self.tissue.fluid[box][mask].any():
            return False
        if not self._deep[box][mask].all():
            return False
        grown_box = expand_box(box, gap, self.shape)
        padded = np.zeros(tuple(s.stop - s.start for s in grown_box), dtype=bool)
        inner = tuple(slice(b.start - g.start, b.stop - g.start) for b, g in zip(box, grown_box, strict=True))
        padded[inner] = mask
        if any(gap):
            padded = ndimage.maximum_filter(padded, size=[2 * g + 1 for g in gap])
        return not (self.occupied[grown_box] & padded).any()

    def add(
        self,
        lesion: LibraryLesion,
        mask: np.ndarray,
        origin: np.ndarray,
        contrast: float,
        core: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Add a library lesion to the follow-up; with ``core`` (a part of ``mask``), an enlarging lesion:
        the core at both time points, the whole shape at the follow-up, the rest of it new."""
        options = self.options
        rim_mm = FLOOR_DISTANCE * options.edge_softness_mm
        reach = [r + n + 1 for r, n in zip(voxels_for_mm(rim_mm, self.spacing), self.nawm_reach, strict=True)]
        placed = tuple(slice(int(a), int(a) + n) for a, n in zip(origin, mask.shape, strict=True))
        box = expand_box(placed, reach, self.shape)
        inner = tuple(slice(p.start - b.start, p.stop - b.start) for p, b in zip(placed, box, strict=True))
        shape_in_box = np.zeros(tuple(s.stop - s.start for s in box), dtype=bool)
        shape_in_box[inner] = mask

        weight = soft_lesion_weight(signed_distance_mm(shape_in_box, self.spacing), options.edge_softness_mm)
        # Annotated lesions stay exactly as they are at both time points.
        weight[self.lesions[box]] = 0
        mean = local_mean(
            self.image[box],
            self.tissue.normal_white_matter[box],
            self.nawm_sigma,
            self.tissue.white_matter_mean,
            needed=shape_in_box,
        )
        nawm_mean = float(mean[shape_in_box].mean())
        increase = (contrast - 1.0) * nawm_mean
        self.followup[box] += weight * np.float32(increase)
        np.maximum(self.content_followup[box], weight, out=self.content_followup[box])
        if core is None:
            np.maximum(self.content_new[box], weight, out=self.content_new[box])
        else:
            core_in_box = np.zeros_like(shape_in_box)
            core_in_box[inner] = core
            core_weight = soft_lesion_weight(signed_distance_mm(core_in_box, self.spacing), options.edge_softness_mm)
            core_weight[self.lesions[box]] = 0
            self.baseline[box] += core_weight * np.float32(increase)
            np.maximum(self.content_baseline[box], core_weight, out=self.content_baseline[box])
            # the new part is exactly the library lesion's voxels outside the core
            grown = (shape_in_box & ~core_in_box).astype(np.float32)
            np.maximum(self.content_new[box], grown, out=self.content_new[box])
        self.occupied[placed] |= mask

        centroid = _centroid(mask, origin)
        voxels = int(mask.sum())
        return {
            "source": lesion.source,
            "component": lesion.index,
            "voxels": voxels,
            "volume_mm3": round(voxels * float(abs(np.linalg.det(self.affine[:3, :3]))), 3),
            "library_origin_voxel": list(lesion.origin),
            "origin_voxel": [int(o) for o in origin],
            "centroid_voxel": [round(float(c), 2) for c in centroid],
            "centroid_mm": _world(self.affine, centroid),
            "contrast": round(contrast, 6),
            "local_nawm_mean": round(nawm_mean, 4),
            "intensity_increase": round(increase, 4),
            "baseline_mean": round(float(self.image[placed][mask].mean()), 4),
            "followup_mean": round(float(self.followup[placed][mask].mean()), 4),
            "support_voxels": int((weight > 0).sum()),
            "rim_mm": round(rim_mm, 4),
        }

    def prepare_placement(self) -> np.ndarray:
        """Deep white matter: white matter at least min_depth_mm inside the brain."""
        depth = voxels_for_mm(self.options.min_depth_mm, self.spacing)
        box = bounding_box(self.tissue.brain, margin=max(depth) + 1)
        assert box is not None
        self._deep = np.zeros(self.shape, dtype=bool)
        if any(depth):
            self._deep[box] = ndimage.minimum_filter(self.tissue.brain[box], size=[2 * d + 1 for d in depth])
        else:
            self._deep[box] = self.tissue.brain[box]
        return self.tissue.white_matter & self._deep


def _check_inputs(flair: Volume, lesions: Volume, library: LesionLibrary | Sequence[Volume]) -> None:
    check_same_grid(flair, lesions, what_a="FLAIR", what_b="lesion mask")
    if isinstance(library, LesionLibrary):
        library.check_grid(flair)
    else:
        for volume in library:
            check_same_grid(flair, volume, what_a="FLAIR", what_b=f"library lesion mask {volume.name}")


def synthesize_pair(
    flair: Volume,
    lesions: Volume,
    library: LesionLibrary | Sequence[Volume],
    options: SynthOptions,
    *,
    brain_mask: Volume | None = None,
    tissue: TissueModel | None = None,
) -> SyntheticPair:
    """Make a longitudinal pair with exactly known new lesions from one scan and its lesion mask.

    New lesions come from two sources: annotated lesions of the scan are in-painted in the baseline with the
    texture of nearby normal-appearing white matter (they remain in the follow-up: real lesions, new), and
    connected components of the library masks are added to the follow-up in white matter, at about ``contrast``
    times the local normal white matter with soft edges. Then the follow-up moves rigidly relative to the
    baseline, a smooth multiplicative intensity drift and noise are applied (split between the time points when
    ``options.symmetric``). The masks follow :data:`MASK_DEFINITION`.

    Parameters
    ----------
    flair : Volume
        A skull-stripped FLAIR (zero outside the brain), or any FLAIR with ``brain_mask``.
    lesions : Volume
        Its all-lesion mask, on the same grid.
    library : LesionLibrary or sequence of Volume
        Real lesion masks on the same grid (or a library built from them once with
        :meth:`LesionLibrary.from_volumes`, faster for many pairs). May be empty when no lesion is added.
    options : SynthOptions
    brain_mask : Volume, optional
        The brain, when the FLAIR's non-zero voxels are not it.
    tissue : TissueModel, optional
        A tissue model fitted once with :func:`fit_tissue_model`, to reuse for many pairs of one scan.

    Returns
    -------
    SyntheticPair
        Fewer lesions than asked are removed or added when the scan or the library has too few that fit; the
        record says how many were asked for and how many were made.

    Raises
    ------
    GeometryError
        The lesion mask, the brain mask or a library mask is not on the FLAIR's grid.
    InputError
        The library holds no lesion of the allowed size while lesions are to be added, or the FLAIR is not
        skull-stripped and no brain mask was given.

    Examples
    --------
    >>> from msnewlesion.io import load_volume, load_mask
    >>> from msnewlesion.synth import load_lesion_library
    >>> flair = load_volume("patient07/flair.nii.gz")  # doctest: +SKIP
    >>> lesions = load_mask("patient07/lesions.nii.gz")  # doctest: +SKIP
    >>> library = load_lesion_library("lesion_masks")  # doctest: +SKIP
    >>> pair = synthesize_pair(flair, lesions, library, SynthOptions(seed=1))  # doctest: +SKIP
    >>> pair.record["new_lesions"]["count"]  # doctest: +SKIP
    6
    """
    _check_inputs(flair, lesions, library)
    if tissue is None:
        tissue = fit_tissue_model(flair, lesions, brain_mask)
    elif tissue.brain.shape != flair.shape:
        raise InputError(f"the tissue model is for a grid of shape {tissue.brain.shape}, the FLAIR has {flair.shape}")
    voxel_volume = flair.voxel_volume
    min_voxels = _voxels_for_volume(options.min_lesion_volume_mm3, voxel_volume)
    max_voxels = max(math.floor(options.max_lesion_volume_mm3 / voxel_volume + 1e-9), min_voxels)

    candidates: list[LibraryLesion] = []
    if options.added_lesions > 0 or options.enlarged_lesions > 0:
        if not isinstance(library, LesionLibrary):
            library = LesionLibrary.from_volumes(library) if len(library) else library
        if not isinstance(library, LesionLibrary) or not library.lesions:
            raise InputError("the lesion library is empty: lesions to add need a library of lesion masks (`library`)")
        candidates = library.between(min_voxels, max_voxels)
        if not candidates:
            raise InputError(
                f"the lesion library holds no lesion between {options.min_lesion_volume_mm3:g} and "
                f"{options.max_lesion_volume_mm3:g} mm³ ({library.describe()}); widen the size range"
            )

    # Six streams; the first five are those of pairs made before acquisitions were simulated (spawn(6)[:5]
    # equals spawn(5)), so such pairs are reproduced bit for bit.
    removal_rng, addition_rng, motion_rng, drift_rng, noise_rng, acquisition_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(options.seed).spawn(6)
    )
    painter = _Painter(flair, tissue, options)

    # -- remove annotated lesions from the baseline ---------------------------------------------------
    removable = [label for label, size in enumerate(tissue.lesion_sizes, start=1) if min_voxels <= size <= max_voxels]
    count = min(options.removed_lesions, len(removable))
    chosen = removal_rng.choice(np.asarray(removable, dtype=np.int64), size=count, replace=False) if count else []
    removed = [painter.remove(int(label), removal_rng) for label in chosen]

    # -- add library lesions to the follow-up, and enlarging ones to both time points ----------------------
    added: list[dict[str, Any]] = []
    enlarged: list[dict[str, Any]] = []
    if options.added_lesions or options.enlarged_lesions:
        deep_white_matter = painter.prepare_placement()
        centres = np.flatnonzero(deep_white_matter)
        gap = voxels_for_mm(options.lesion_gap_mm, flair.spacing)
        jitter = np.asarray(voxels_for_mm(options.location_jitter_mm, flair.spacing))
        # Mirroring a shape left-right keeps it anatomically plausible; that is the array axis closest to x.
        left_right = int(np.argmax(np.abs(flair.affine[0, :3])))
        contrast_low = options.contrast - options.contrast_spread
        contrast_high = options.contrast + options.contrast_spread
        # the enlarging lesions come after the added ones, so pairs without them draw the same numbers as before
        for made, growing in [(added, False)] * options.added_lesions + [(enlarged, True)] * options.enlarged_lesions:
            tries = (LIBRARY_LOCATION_TRIES if options.library_locations else 0) + WHITE_MATTER_TRIES
            for attempt in range(tries):
                lesion = candidates[int(addition_rng.integers(len(candidates)))]
                if options.library_locations and attempt < LIBRARY_LOCATION_TRIES:
                    placement, flipped, mask = "library location", False, lesion.mask
                    origin = np.asarray(lesion.origin) + addition_rng.integers(-jitter, jitter + 1)
                else:
                    if centres.size == 0:
                        break
                    placement = "white matter"
                    flipped = bool(addition_rng.integers(2))
                    mask = np.flip(lesion.mask, axis=left_right) if flipped else lesion.mask
                    centre = np.asarray(
                        np.unravel_index(int(centres[addition_rng.integers(centres.size)]), flair.shape)
                    )
                    origin = centre - np.round(np.argwhere(mask).mean(axis=0)).astype(int)
                core = None
                if growing:
                    shell = float(addition_rng.uniform(*options.enlargement_mm))
                    core = signed_distance_mm(mask, flair.spacing) < -shell
                    # growth around a core that is not most of the lesion would be a new lesion, not an enlarging one
                    if core.sum() < ENLARGING_MIN_CORE * mask.sum():
                        continue
                if painter.fits(mask, origin, deep_white_matter, gap):
                    contrast = float(addition_rng.uniform(contrast_low, contrast_high))
                    entry = painter.add(lesion, np.ascontiguousarray(mask), origin, contrast, core=core)
                    entry.update(placement=placement, flipped_left_right=flipped, attempts=attempt + 1)
                    if growing:
                        entry.update(shell_mm=round(shell, 4), core_voxels=int(core.sum()))
                    made.append(entry)
                    break

    # -- motion, drift and noise ----------------------------------------------------------------------
    axis, angle, translation = random_rigid_motion(motion_rng, options.max_rotation_deg, options.max_translation_mm)
    brain = tissue.brain
    centre_mm = _world(flair.affine, np.argwhere(brain).mean(axis=0))
    relative = rigid_matrix(axis, angle, translation, centre_mm)
    moving = angle > 0 or bool(np.any(translation != 0))
    if options.symmetric:
        followup_matrix = half_rigid(axis, angle, relative)
        baseline_matrix = np.linalg.inv(followup_matrix)
    else:
        followup_matrix, baseline_matrix = relative, np.eye(4)

    order = options.interpolation_order
    baseline, followup = painter.baseline, painter.followup
    # The masks are fixed before motion: {content > 1/2}. They then move with their image by nearest
    # neighbour, which moves voxel cubes exactly (no systematic shrinking, unlike thresholding an
    # interpolated mask, which loses 10-20 % of a small lesion's voxels).
    lesions_baseline = painter.content_baseline > 0.5
    lesions_followup = painter.content_followup > 0.5
    new_lesions = (painter.content_new > 0.5) & lesions_followup
    in_brain_baseline = in_brain_followup = brain
    if moving:
        # The brain (2) and a one-voxel rim around it (1), moved by nearest neighbour: a cheap stand-in for
        # where the moved image may be non-zero (cubic interpolation rings a little beyond the brain's edge).
        brain_box = bounding_box(brain, margin=2)
        regions = np.zeros(brain.shape, dtype=np.float32)
        regions[brain_box] = ndimage.maximum_filter(brain[brain_box], size=3).astype(np.float32) + brain[brain_box]

        def move_image(image: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            moved = move(image, flair.affine, matrix, order=order, source_box=brain_box)
            moved_regions = move(regions, flair.affine, matrix, order=0, source_box=brain_box)
            moved[moved_regions == 0] = 0
            return moved, moved_regions == 2

        followup, in_brain_followup = move_image(followup, followup_matrix)
        lesions_followup = move(lesions_followup, flair.affine, followup_matrix, order=0, sparse=True) > 0.5
        new_lesions = move(new_lesions, flair.affine, followup_matrix, order=0, sparse=True) > 0.5
        if options.symmetric:
            baseline, in_brain_baseline = move_image(baseline, baseline_matrix)
            lesions_baseline = move(lesions_baseline, flair.affine, baseline_matrix, order=0, sparse=True) > 0.5

    either = in_brain_baseline | in_brain_followup
    box = bounding_box(either)
    assert box is not None
    amplitude = float(drift_rng.uniform(0.0, 1.0)) * options.max_drift
    log_field, coefficients = drift_log_field(drift_rng, either, box, amplitude)
    if amplitude > 0:
        if options.symmetric:
            followup[box] *= np.exp(log_field / 2)
            baseline[box] *= np.exp(-log_field / 2)
        else:
            followup[box] *= np.exp(log_field)

    noise_sigma = options.noise_std * tissue.white_matter_mean
    shape_in_box = tuple(s.stop - s.start for s in box)
    followup_noise = noise_rng.standard_normal(shape_in_box, dtype=np.float32)
    baseline_noise = noise_rng.standard_normal(shape_in_box, dtype=np.float32)
    if noise_sigma > 0:
        followup[box] += np.where(in_brain_followup[box], followup_noise * np.float32(noise_sigma), 0)
        if options.symmetric:
            baseline[box] += np.where(in_brain_baseline[box], baseline_noise * np.float32(noise_sigma), 0)

    acquisitions: dict[str, Any] | None = None
    if options.acquisition is not None:
        baseline_rng, followup_rng = acquisition_rng.spawn(2)
        baseline, baseline_acquisition = simulate_acquisition(
            baseline, flair.affine, in_brain_baseline & in_brain_followup, baseline_rng, options.acquisition,
            fluid=tissue.fluid, white_matter_mean=tissue.white_matter_mean,
        )  # fmt: skip
        followup, followup_acquisition = simulate_acquisition(
            followup, flair.affine, in_brain_baseline & in_brain_followup, followup_rng, options.acquisition,
            fluid=tissue.fluid, white_matter_mean=tissue.white_matter_mean,
        )  # fmt: skip
        acquisitions = {"baseline": baseline_acquisition, "followup": followup_acquisition}

    _, _, new_sizes = label_lesions(new_lesions)

    record: dict[str, Any] = {
        "software": f"msnewlesion {__version__}",
        "inputs": {
            "flair": str(flair.path) if flair.path is not None else None,
            "lesions": str(lesions.path) if lesions.path is not None else None,
            "brain_mask": str(brain_mask.path) if brain_mask is not None and brain_mask.path is not None else None,
            "library": list(library.sources) if isinstance(library, LesionLibrary) else [v.name for v in library],
        },
        "options": options.to_dict(),
        "random": {
            "generator": "numpy PCG64",
            "streams": "SeedSequence(seed).spawn(6): removal, addition, motion, drift, noise, acquisition "
            "(the last spawns the baseline's and the follow-up's)",
        },
        "mask_definition": MASK_DEFINITION,
        "tissue": tissue.summary(),
        "lesion_size_voxels": [min_voxels, max_voxels],
        "removed": {
            "requested": options.removed_lesions,
            "made": len(removed),
            "eligible": len(removable),
            "lesions": removed,
        },
        "added": {
            "requested": options.added_lesions,
            "made": len(added),
            "library_candidates": len(candidates),
            "lesions": added,
        },
        "enlarged": {"requested": options.enlarged_lesions, "made": len(enlarged), "lesions": enlarged},
        "motion": {
            "axis": [round(float(a), 6) for a in axis],
            "angle_deg": round(angle, 6),
            "translation_mm": [round(float(t), 6) for t in translation],
            "centre_mm": centre_mm,
            "relative_matrix": relative.tolist(),
            "baseline_matrix": baseline_matrix.tolist(),
            "followup_matrix": followup_matrix.tolist(),
            "applied": moving,
            "interpolation_order": order,
            "convention": "world (scanner mm) transforms moving content from x to M x; the follow-up relative to "
            "the baseline is relative_matrix = followup_matrix @ inverse(baseline_matrix)",
        },
        "drift": {
            "amplitude": round(amplitude, 6),
            "terms": list(DRIFT_TERMS),
            "coefficients": [round(c, 8) for c in coefficients],
            "box": [[s.start, s.stop] for s in box],
            "convention": "log field over the box with coordinates from -1 to 1 along each axis; the follow-up is "
            "multiplied by exp(field/2) and the baseline by exp(-field/2) when symmetric, the follow-up by "
            "exp(field) otherwise",
        },
        "noise": {
            "std": round(noise_sigma, 6),
            "relative_std": options.noise_std,
            "time_points": "both" if options.symmetric else "follow-up",
        },
        "acquisition": acquisitions,
        "new_lesions": {
            "count": len(new_sizes),
            "voxels": int(new_lesions.sum()),
            "volume_mm3": round(float(new_lesions.sum()) * voxel_volume, 3),
        },
        "lesions_baseline_voxels": int(lesions_baseline.sum()),
        "lesions_followup_voxels": int(lesions_followup.sum()),
    }

    def as_volume(data: np.ndarray) -> Volume:
        return Volume(data=data, affine=flair.affine.copy(), header=flair.header, path=None)

    return SyntheticPair(
        baseline=as_volume(baseline.astype(np.float32, copy=False)),
        followup=as_volume(followup.astype(np.float32, copy=False)),
        new_lesions=as_volume(new_lesions),
        lesions_baseline=as_volume(lesions_baseline),
        lesions_followup=as_volume(lesions_followup),
        record=record,
    )


def save_synthetic_pair(pair: SyntheticPair, directory: Path, *, overwrite: bool = False) -> dict[str, Path]:
    """Write a pair into ``directory`` (created whole or not at all).

    Images are written as float32, masks as uint8, all with the input FLAIR's header and affine; the record
    goes to ``synth.json``. The folder appears only once every file is complete.

    Returns
    -------
    dict
        The path of each file, by role (:data:`PAIR_FILES`).

    Raises
    ------
    OutputExistsError
        The folder exists and ``overwrite`` is false.
    InputError
        An input of the pair lies inside the folder.

    Examples
    --------
    >>> paths = save_synthetic_pair(pair, Path("synthetic/patient07-synth000"))  # doctest: +SKIP
    >>> sorted(paths)  # doctest: +SKIP
    ['baseline', 'followup', 'lesions_baseline', 'lesions_followup', 'new_lesions', 'record']
    """
    directory = Path(directory)
    target = directory.resolve()
    inputs = pair.record.get("inputs", {})
    for value in [inputs.get("flair"), inputs.get("lesions"), inputs.get("brain_mask")]:
        if value and target in Path(value).resolve().parents:
            raise InputError(f"refusing to write into {directory}: it holds the input {value}. Choose another folder.")
    with atomic_directory(directory, overwrite=overwrite) as temporary:
        descriptions = {
            "baseline": "msnewlesion synth: baseline FLAIR",
            "followup": "msnewlesion synth: follow-up FLAIR",
            "new_lesions": "msnewlesion synth: new lesions (follow-up)",
            "lesions_baseline": "msnewlesion synth: all lesions, baseline",
            "lesions_followup": "msnewlesion synth: all lesions, follow-up",
        }
        for role, description in descriptions.items():
            volume: Volume = getattr(pair, role)
            dtype = np.float32 if role in ("baseline", "followup") else np.uint8
            save_volume(volume, temporary / PAIR_FILES[role], dtype=dtype, description=description)
        write_json(temporary / PAIR_FILES["record"], pair.record)
    return {role: directory / name for role, name in PAIR_FILES.items()}
