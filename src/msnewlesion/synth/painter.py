"""The working state of one synthetic pair while lesions are removed from the baseline and added to the follow-up.

:class:`Painter` in-paints annotated lesions with the texture of nearby normal-appearing white matter and adds
library lesions with soft edges, keeping the lesion content of each time point (the masks' definition,
:data:`msnewlesion.synth.pair.MASK_DEFINITION`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from msnewlesion.io import Volume
from msnewlesion.lesions import CHANGE_CODES, bounding_box
from msnewlesion.synth.library import LibraryLesion
from msnewlesion.synth.options import SynthOptions
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
from msnewlesion.synth.tissue import TissueModel

__all__ = ["Painter", "world_point"]


def world_point(affine: np.ndarray, voxel: npt.ArrayLike) -> list[float]:
    return [round(float(v), 3) for v in affine[:3, :3] @ np.asarray(voxel, dtype=np.float64) + affine[:3, 3]]


def _centroid(mask: np.ndarray, origin: npt.ArrayLike) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0) + np.asarray(origin, dtype=np.float64)


class Painter:
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
        # The change class of every lesion voxel (msnewlesion.lesions.CHANGE_CODES), on the union of its extents
        # at both time points: the scan's lesions are stable until one is removed, resolved or joined by others.
        self.change_codes = np.where(self.lesions, np.uint8(CHANGE_CODES["stable"]), np.uint8(0))
        # Lesions, in-painted regions and added lesions: what a new lesion must keep its distance from.
        self.occupied = self.lesions.copy()
        self.nawm_sigma = [options.nawm_scale_mm / s for s in self.spacing]
        self.nawm_reach = voxels_for_mm(3 * options.nawm_scale_mm, self.spacing)

    # -- removing -------------------------------------------------------------------------------------
    def remove(self, label: int, rng: np.random.Generator, time_point: str = "baseline") -> dict[str, Any]:
        """In-paint annotated lesion ``label`` in the baseline (a new lesion) or the follow-up (a resolved one)."""
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

        target = (self.baseline if time_point == "baseline" else self.followup)[box]
        target[support] = (1 - weight[support]) * target[support] + weight[support] * fill[support]
        if time_point == "baseline":
            self.content_baseline[box][lesion] = 0
            self.content_new[box][lesion] = 1
            self.change_codes[box][lesion] = CHANGE_CODES["new"]
        else:
            self.content_followup[box][lesion] = 0
            self.change_codes[box][lesion] = CHANGE_CODES["resolved"]
        self.occupied[box] |= support

        origin = [s.start for s in box]
        centroid = _centroid(lesion, origin)
        voxels = int(lesion.sum())
        return {
            "label": int(label),
            "voxels": voxels,
            "volume_mm3": round(voxels * float(abs(np.linalg.det(self.affine[:3, :3]))), 3),
            "centroid_voxel": [round(float(c), 2) for c in centroid],
            "centroid_mm": world_point(self.affine, centroid),
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
        shrinking: bool = False,
    ) -> dict[str, Any]:
        """Add a library lesion to the follow-up; with ``core`` (a part of ``mask``), an enlarging lesion:
        the core at both time points, the whole shape at the follow-up, the rest of it new; with ``shrinking``
        too, a shrinking lesion: the whole shape at the baseline, the core at both (nothing new)."""
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
        whole, kept = (self.baseline, self.content_baseline) if shrinking else (self.followup, self.content_followup)
        whole[box] += weight * np.float32(increase)
        np.maximum(kept[box], weight, out=kept[box])
        if core is None:
            np.maximum(self.content_new[box], weight, out=self.content_new[box])
            self.change_codes[placed][mask] = CHANGE_CODES["new"]
        elif shrinking:
            core_in_box = np.zeros_like(shape_in_box)
            core_in_box[inner] = core
            core_weight = soft_lesion_weight(signed_distance_mm(core_in_box, self.spacing), options.edge_softness_mm)
            core_weight[self.lesions[box]] = 0
            self.followup[box] += core_weight * np.float32(increase)
            np.maximum(self.content_followup[box], core_weight, out=self.content_followup[box])
            self.change_codes[placed][mask] = CHANGE_CODES["shrinking"]
        else:
            self.change_codes[placed][mask] = CHANGE_CODES["enlarging"]
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
            "centroid_mm": world_point(self.affine, centroid),
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
