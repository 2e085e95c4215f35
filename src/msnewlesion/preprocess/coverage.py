"""Coverage: how much of each scan's brain the other scan shows, and where lesions were not assessed.

A new lesion can only be found where both scans show the brain. When a follow-up covers half the
head (a thin slab, a cut field of view, a half-stripped scan), the masks are 0 in the other half
because nothing was looked at there, not because nothing is there. :func:`pair_coverage` measures
each scan's brain that the other shows and marks the rest as *not assessed*, on each input's own
grid (``docs/predict.md``).

What a scan *shows*: its field of view, and within it, for a scan with a constant background (a
skull-stripped scan, or one whose scanner set the air to 0), its non-background voxels. Each
scan's *brain*: for a scan with a constant background, its non-background voxels; otherwise the
brain mask of the preprocessing carried onto its grid, and for the follow-up also its own head
tissue where the baseline does not reach (the brain mask comes from the baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from msnewlesion.io import Volume
from msnewlesion.preprocess.geometry import Grid, resample
from msnewlesion.preprocess.pair import PreprocessedPair, to_native

__all__ = ["COVERAGE_WARNING_FRACTION", "Coverage", "coverage_warnings", "pair_coverage"]

#: A scan whose brain the other shows less of than this is reported with a warning.
COVERAGE_WARNING_FRACTION = 0.95
#: At least this share of the field of view at one value makes that value a background (as for stripped inputs).
_CONSTANT_BACKGROUND = 0.3
#: Below this share of a scan's brain unseen, the scans cover each other (the masks are not written).
_FULL_COVERAGE = 0.995
#: Voxels of tolerance where the two scans' edges meet.
_EDGE_VOXELS = 2


@dataclass(frozen=True, eq=False)
class Coverage:
    """Each scan's brain seen by the other, and the voxels of each grid that were not assessed.

    Attributes
    ----------
    baseline_seen : float
        Share of the baseline's brain that the follow-up shows (0 to 1).
    followup_seen : float
        Share of the follow-up's brain that the baseline shows.
    not_assessed_baseline : Volume
        On the baseline's grid: 1 where the baseline shows brain and the follow-up does not.
    not_assessed_followup : Volume
        On the follow-up's grid: 1 where the follow-up shows brain and the baseline does not.
    """

    baseline_seen: float
    followup_seen: float
    not_assessed_baseline: Volume
    not_assessed_followup: Volume

    @property
    def partial(self) -> bool:
        """Whether either scan's brain is not all seen by the other (then the masks are written)."""
        return min(self.baseline_seen, self.followup_seen) < _FULL_COVERAGE

    def record(self) -> dict[str, Any]:
        """What ``summary.json`` holds under ``coverage``."""
        return {
            "baseline_brain_seen_by_followup": round(self.baseline_seen, 4),
            "followup_brain_seen_by_baseline": round(self.followup_seen, 4),
            "not_assessed_baseline_ml": round(_volume_ml(self.not_assessed_baseline), 3),
            "not_assessed_followup_ml": round(_volume_ml(self.not_assessed_followup), 3),
            "warning_below": COVERAGE_WARNING_FRACTION,
        }


def _volume_ml(mask: Volume) -> float:
    return float(np.count_nonzero(mask.data)) * mask.voxel_volume / 1000.0


def _background(data: np.ndarray) -> np.ndarray | None:
    """The voxels at the value most frequent on the faces, when they fill enough of the field of view."""
    faces = np.concatenate(
        [face.ravel() for axis in range(3) for face in (np.take(data, 0, axis), np.take(data, -1, axis))]
    )
    values, counts = np.unique(faces, return_counts=True)
    background = data == values[int(counts.argmax())]
    return background if background.mean() >= _CONSTANT_BACKGROUND else None


def _head(data: np.ndarray) -> np.ndarray:
    positive = data[data > 0]
    if positive.size == 0:
        return np.zeros(data.shape, dtype=bool)
    return data > 0.1 * float(np.percentile(positive, 99))


def pair_coverage(baseline: Volume, followup: Volume, pair: PreprocessedPair) -> Coverage:
    """How much of each scan's brain the other shows, and the not-assessed voxels of each grid.

    Parameters
    ----------
    baseline, followup : Volume
        The inputs on their native grids, as the preprocessing read them.
    pair : PreprocessedPair
        Its result: the brain mask and the maps between the common space and each scan.

    Returns
    -------
    Coverage

    Examples
    --------
    >>> coverage = pair_coverage(baseline, followup, pair)  # doctest: +SKIP
    >>> coverage.baseline_seen  # doctest: +SKIP
    0.52
    """
    base_background, follow_background = _background(baseline.data), _background(followup.data)
    base_shows = ~base_background if base_background is not None else np.ones(baseline.shape, dtype=bool)
    follow_shows = ~follow_background if follow_background is not None else np.ones(followup.shape, dtype=bool)
    # World maps between the two scans, through the common space.
    base_to_follow = pair.common_to_followup @ np.linalg.inv(pair.common_to_baseline)
    seen_on_base = resample(
        follow_shows, followup.affine, Grid(baseline.shape, baseline.affine), base_to_follow, order=0
    ).astype(bool)
    seen_on_follow = resample(
        base_shows, baseline.affine, Grid(followup.shape, followup.affine), np.linalg.inv(base_to_follow), order=0
    ).astype(bool)
    brain = pair.brain_mask.data.astype(bool)
    if base_background is not None:
        base_brain = base_shows
    else:
        base_brain = to_native(brain, pair, "baseline", kind="mask").data.astype(bool)
    if follow_background is not None:
        follow_brain = follow_shows
    else:
        carried = to_native(brain, pair, "followup", kind="mask").data.astype(bool)
        follow_brain = carried | (_head(followup.data) & ~seen_on_follow)
    # Two scans' edges meet within a voxel or two after resampling: only what lies beyond that is unseen.
    base_unseen = base_brain & ~ndimage.binary_dilation(seen_on_base, iterations=_EDGE_VOXELS)
    follow_unseen = follow_brain & ~ndimage.binary_dilation(seen_on_follow, iterations=_EDGE_VOXELS)
    return Coverage(
        baseline_seen=_share_seen(base_brain, base_unseen),
        followup_seen=_share_seen(follow_brain, follow_unseen),
        not_assessed_baseline=Volume(base_unseen.astype(np.uint8), baseline.affine, baseline.header, baseline.path),
        not_assessed_followup=Volume(follow_unseen.astype(np.uint8), followup.affine, followup.header, followup.path),
    )


def _share_seen(brain: np.ndarray, unseen: np.ndarray) -> float:
    total = int(np.count_nonzero(brain))
    return 1.0 if total == 0 else 1.0 - float(np.count_nonzero(unseen)) / total


def coverage_warnings(coverage: Coverage) -> list[str]:
    """A warning for each scan whose brain the other shows less than :data:`COVERAGE_WARNING_FRACTION` of."""
    warnings = []
    for seen, scan, other, name in (
        (coverage.baseline_seen, "baseline", "follow-up", "not_assessed_baseline.nii.gz"),
        (coverage.followup_seen, "follow-up", "baseline", "not_assessed_followup.nii.gz"),
    ):
        if seen < COVERAGE_WARNING_FRACTION:
            warnings.append(
                f"the {other} FLAIR shows only {100 * seen:.0f} % of the {scan}'s brain: lesions in the rest were not "
                f"assessed (not absent); {name} marks where, and summary.json's coverage gives the figures"
            )
    return warnings
