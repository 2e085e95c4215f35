"""Lesion changes between two time points: new, enlarging, stable, shrinking and resolved lesions.

:func:`classify_changes` takes masks of a pair on one grid: all lesions at the baseline, all lesions at the
follow-up, the new lesions (what appeared) and, optionally, the faded lesions (what went: the new lesions of
the pair played backwards). It gives every lesion one class:

new
    nothing of it was there at the baseline (a lesion of the new-lesion mask);
enlarging
    there at both time points and grown by at least ``relative`` (50 %) of its baseline volume and by at
    least ``absolute_mm3`` (10 mm³);
stable
    there at both time points and neither grown nor shrunk by that much;
shrinking
    there at both time points and shrunk by the mirror of the enlarging rule (its baseline volume at least
    ``1 + relative`` times its follow-up volume, and at least ``absolute_mm3`` more);
resolved
    nothing of it is left at the follow-up.

**Matching.** Lesions are connected components of each mask. Lesions of any of the masks belong to one
*lesion over time* when they share at least one voxel, directly or through a chain of such overlaps; a
change (a lesion of the new or the faded mask) also joins the lesions it touches (neighbouring voxels, by
``connectivity``), since the part of a lesion that grew or went lies beside the part that stayed. Lesions of
the two all-lesion masks that only touch are not matched. So:

- *merge*: two baseline lesions that overlap one follow-up lesion are one lesion over time, counted once,
  with the two baseline volumes summed;
- *split*: one baseline lesion that overlaps two follow-up lesions is one lesion over time, counted once,
  with the two follow-up volumes summed;
- a new-lesion component that overlaps or touches a lesion that was there at the baseline (or is joined to
  it through a follow-up lesion) is that lesion's growth, not a new lesion;
- several new-lesion components joined only through follow-up lesions (nothing there at the baseline) stay
  separate new lesions: a new lesion is a component of the new-lesion mask.

**Extents.** A lesion over time's volume at each time point is that of its voxels there. Without the faded
mask, the all-lesion masks say where the lesions are: at the baseline the baseline mask, at the follow-up the
follow-up mask and the new lesions; a follow-up lesion with nothing at the baseline and no new-lesion voxel is
counted *stable* (the new-lesion mask, which compares both images, did not call it new; ``matched`` says so).
With the faded mask, the two change masks say what changed, and every other lesion voxel of either time
point was there at both: at the baseline ``baseline | faded | (followup & ~new)``, at the follow-up
``followup | new | (baseline & ~faded)``. A lesion is then new or resolved only when a change mask saw it
appear or go, which keeps an all-lesion mask that misses a lesion at one time point from making it new or
resolved.

**The rule for enlarging.** Trials count "new or enlarging T2 lesions"; an enlarging lesion must
grow by more than the measurement's variability. Repeated measurements of the same lesions vary by
up to about 45 % of the volume for small lesions and 24 % for large ones ("Magnetic resonance
imaging lesion enlargement in multiple sclerosis: disease-related activity, chance occurrence, or
measurement artifact?", Arch Neurol 1992;49(3):261-263, doi:10.1001/archneur.1992.00530270075021),
so the default asks for a 50 % increase, and for at least 10 mm³ (ten 1 mm voxels), so that a
one-voxel rim on a small lesion is not called enlargement. Both numbers are options
(:class:`ChangeRule`). The shrinking rule is the same rule with the time points swapped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from msnewlesion.errors import InputError
from msnewlesion.lesions.components import _as_binary_3d, components, connectivity_structure

__all__ = [
    "CHANGE_CLASSES",
    "CHANGE_CODES",
    "CHANGE_COLOURS",
    "CHANGE_GROUPS",
    "CHANGE_TABLE_COLUMNS",
    "DEFAULT_ENLARGING_ABSOLUTE_MM3",
    "DEFAULT_ENLARGING_RELATIVE",
    "ChangeRule",
    "LesionChange",
    "LesionChanges",
    "change_counts",
    "classify_changes",
    "fsleyes_lookup_table",
    "itksnap_label_descriptions",
]

#: The classes, in the order of their codes in ``lesion_changes.nii.gz`` (1..5; 0 is background).
CHANGE_CLASSES = ("new", "enlarging", "stable", "shrinking", "resolved")
CHANGE_CODES = {name: code for code, name in enumerate(CHANGE_CLASSES, start=1)}
#: Colours (RGB 0-255) of the classes in the colour tables and the QC picture.
CHANGE_COLOURS = {
    "new": (255, 0, 0),
    "enlarging": (255, 140, 0),
    "stable": (0, 200, 255),
    "shrinking": (160, 80, 255),
    "resolved": (0, 200, 0),
}
#: Classes scored together: the trials' endpoint, the lesions that got smaller or went, and every change.
CHANGE_GROUPS = {
    "new_or_enlarging": ("new", "enlarging"),
    "shrinking_or_resolved": ("shrinking", "resolved"),
    "changed": ("new", "enlarging", "shrinking", "resolved"),
}

DEFAULT_ENLARGING_RELATIVE = 0.5
DEFAULT_ENLARGING_ABSOLUTE_MM3 = 10.0

CHANGE_TABLE_COLUMNS = (
    "id",
    "change",
    "volume_baseline_mm3",
    "volume_followup_mm3",
    "volume_change_mm3",
    "baseline_lesions",
    "followup_lesions",
    "new_lesions",
    "faded_lesions",
    "matched",
)


@dataclass(frozen=True)
class ChangeRule:
    """When a lesion present at both time points is enlarging or shrinking.

    Enlarging: ``after >= (1 + relative) * before`` and ``after - before >= absolute_mm3``.
    Shrinking: the same with ``before`` and ``after`` swapped. Otherwise stable.

    Parameters
    ----------
    relative : float
        The relative volume increase needed (0.5: 50 %); above 0.
    absolute_mm3 : float
        The absolute volume increase needed, mm³; 0 or more.

    Examples
    --------
    >>> rule = ChangeRule()
    >>> rule.classify(40.0, 60.0), rule.classify(40.0, 59.0), rule.classify(60.0, 40.0), rule.classify(10.0, 18.0)
    ('enlarging', 'stable', 'shrinking', 'stable')
    """

    relative: float = DEFAULT_ENLARGING_RELATIVE
    absolute_mm3: float = DEFAULT_ENLARGING_ABSOLUTE_MM3

    def __post_init__(self) -> None:
        if not (math.isfinite(self.relative) and self.relative > 0):
            raise InputError(f"the enlarging rule's relative increase must be above 0, got {self.relative}")
        if not (math.isfinite(self.absolute_mm3) and self.absolute_mm3 >= 0):
            raise InputError(f"the enlarging rule's absolute increase must be 0 or more mm³, got {self.absolute_mm3}")

    def classify(self, before_mm3: float, after_mm3: float) -> str:
        """``enlarging``, ``shrinking`` or ``stable`` for a lesion of these volumes at the two time points."""
        # A relative tolerance keeps exact ratios exact (40 -> 60 mm³ is 50 %) despite floating point.
        tolerance = 1e-9 * max(before_mm3, after_mm3, 1.0)
        if after_mm3 + tolerance >= (1 + self.relative) * before_mm3 and after_mm3 - before_mm3 + tolerance >= (
            self.absolute_mm3
        ):
            return "enlarging"
        if before_mm3 + tolerance >= (1 + self.relative) * after_mm3 and before_mm3 - after_mm3 + tolerance >= (
            self.absolute_mm3
        ):
            return "shrinking"
        return "stable"

    def as_dict(self) -> dict[str, float]:
        return {"relative": self.relative, "absolute_mm3": self.absolute_mm3}


@dataclass(frozen=True)
class LesionChange:
    """One lesion over time (see the matching rule in :mod:`msnewlesion.lesions.changes`).

    Attributes
    ----------
    id : int
        1..n, in the order of the lesions' first voxel in a raster scan (last axis fastest).
    change : str
        One of :data:`CHANGE_CLASSES`.
    baseline_voxels, followup_voxels : int
        Its size at each time point: its baseline lesions, and its follow-up and new-lesion voxels.
    baseline_lesions, followup_lesions, new_lesions, faded_lesions : tuple of int
        The ids of the components of each mask that make it up (raster order in each mask).
    matched : str
        Where it is: ``both`` (time points), ``baseline only``, ``follow-up only``, or
        ``follow-up only, not new`` (the stable-by-default case without the faded mask).
    """

    id: int
    change: str
    baseline_voxels: int
    followup_voxels: int
    baseline_lesions: tuple[int, ...]
    followup_lesions: tuple[int, ...]
    new_lesions: tuple[int, ...]
    matched: str
    faded_lesions: tuple[int, ...] = ()


@dataclass
class LesionChanges:
    """Every lesion of a pair with its change class, and the maps of them.

    Attributes
    ----------
    labels : ndarray of int32
        The lesion id (1..n) of every voxel of a lesion at either time point, 0 elsewhere.
    lesions : tuple of LesionChange
        ``lesions[k - 1]`` is lesion ``k``.
    voxel_volume_mm3 : float
    rule : ChangeRule
    """

    labels: np.ndarray
    lesions: tuple[LesionChange, ...]
    voxel_volume_mm3: float
    rule: ChangeRule

    @property
    def code_of_id(self) -> np.ndarray:
        """The class code of each lesion id (index 0: background, code 0)."""
        codes = np.zeros(len(self.lesions) + 1, dtype=np.uint8)
        codes[1:] = [CHANGE_CODES[lesion.change] for lesion in self.lesions]
        return codes

    @property
    def codes(self) -> np.ndarray:
        """The class code of every voxel (uint8: 0 background, 1..5 as :data:`CHANGE_CODES`)."""
        return self.code_of_id[self.labels]

    def counts(self) -> dict[str, int]:
        """The number of lesions of each class, and ``new_or_enlarging``."""
        return change_counts(lesion.change for lesion in self.lesions)

    def table(self) -> pd.DataFrame:
        """One row per lesion: :data:`CHANGE_TABLE_COLUMNS` (volumes in mm³ on this grid)."""
        if not self.lesions:
            return pd.DataFrame({name: pd.Series(dtype=_column_dtype(name)) for name in CHANGE_TABLE_COLUMNS})
        rows = []
        for lesion in self.lesions:
            before = lesion.baseline_voxels * self.voxel_volume_mm3
            after = lesion.followup_voxels * self.voxel_volume_mm3
            rows.append(
                {
                    "id": lesion.id,
                    "change": lesion.change,
                    "volume_baseline_mm3": before,
                    "volume_followup_mm3": after,
                    "volume_change_mm3": after - before,
                    "baseline_lesions": " ".join(str(i) for i in lesion.baseline_lesions),
                    "followup_lesions": " ".join(str(i) for i in lesion.followup_lesions),
                    "new_lesions": " ".join(str(i) for i in lesion.new_lesions),
                    "faded_lesions": " ".join(str(i) for i in lesion.faded_lesions),
                    "matched": lesion.matched,
                }
            )
        return pd.DataFrame(rows, columns=list(CHANGE_TABLE_COLUMNS))

    def volumes_mm3(self) -> dict[str, dict[str, float]]:
        """The total volume of each class's lesions at each time point."""
        totals = {name: {"baseline": 0.0, "followup": 0.0} for name in CHANGE_CLASSES}
        for lesion in self.lesions:
            totals[lesion.change]["baseline"] += lesion.baseline_voxels * self.voxel_volume_mm3
            totals[lesion.change]["followup"] += lesion.followup_voxels * self.voxel_volume_mm3
        return {name: {k: round(v, 3) for k, v in value.items()} for name, value in totals.items()}


def _column_dtype(name: str) -> str:
    if name == "id":
        return "int64"
    if name.endswith("_mm3"):
        return "float64"
    return "object"


def change_counts(classes: object) -> dict[str, int]:
    """How many of each class in ``classes`` (an iterable of class names), and ``new_or_enlarging``.

    Examples
    --------
    >>> change_counts(["new", "stable", "enlarging", "new"])
    {'new': 2, 'enlarging': 1, 'stable': 1, 'shrinking': 0, 'resolved': 0, 'new_or_enlarging': 3}
    """
    counts = dict.fromkeys(CHANGE_CLASSES, 0)
    for name in classes:  # type: ignore[attr-defined]
        counts[name] += 1
    counts["new_or_enlarging"] = counts["new"] + counts["enlarging"]
    return counts


class _UnionFind:
    def __init__(self, size: int) -> None:
        self.parent = np.arange(size)

    def find(self, node: int) -> int:
        root = node
        while self.parent[root] != root:
            root = int(self.parent[root])
        while self.parent[node] != root:  # path compression
            self.parent[node], node = root, int(self.parent[node])
        return root

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


def _overlapping_pairs(labels_a: np.ndarray, labels_b: np.ndarray) -> np.ndarray:
    """The (id in a, id in b) pairs of lesions that share at least one voxel, shape (k, 2)."""
    both = np.flatnonzero((labels_a > 0) & (labels_b > 0))
    if both.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.stack([labels_a.ravel()[both], labels_b.ravel()[both]], axis=1).astype(np.int64)
    return np.unique(pairs, axis=0)


def classify_changes(
    baseline: np.ndarray,
    followup: np.ndarray,
    new: np.ndarray,
    *,
    voxel_volume_mm3: float,
    faded: np.ndarray | None = None,
    rule: ChangeRule | None = None,
    connectivity: int = 26,
) -> LesionChanges:
    """Match the lesions of two time points by overlap and give each one its change class.

    The rules are those of :mod:`msnewlesion.lesions.changes`.

    Parameters
    ----------
    baseline, followup : ndarray, 3D
        All lesions at each time point, on one grid (voxels above 0 are lesion).
    new : ndarray, 3D
        The new lesions (what appeared), on the same grid.
    voxel_volume_mm3 : float
        The volume of one voxel, for the enlarging rule and the table.
    faded : ndarray, 3D, optional
        What went: the new lesions of the pair played backwards. With it, the change masks decide what
        changed and the all-lesion masks only add what did not (see the module's "Extents").
    rule : ChangeRule, optional
        When a lesion is enlarging or shrinking (50 % and 10 mm³ by default).
    connectivity : {26, 6}
        Which neighbours join voxels into one lesion, in each mask.

    Returns
    -------
    LesionChanges

    Examples
    --------
    >>> baseline = np.zeros((12, 12, 12), bool); followup = np.zeros_like(baseline); new = np.zeros_like(baseline)
    >>> baseline[1:3, 1:3, 1:3] = True; followup[1:4, 1:4, 1:4] = True   # 8 -> 27 voxels: enlarging
    >>> baseline[8:10, 8:10, 8:10] = True                                 # gone: resolved
    >>> followup[1:3, 8:10, 8:10] = new[1:3, 8:10, 8:10] = True           # new
    >>> changes = classify_changes(baseline, followup, new, voxel_volume_mm3=1.0)
    >>> [lesion.change for lesion in changes.lesions]
    ['enlarging', 'new', 'resolved']
    """
    rule = rule or ChangeRule()
    given = [(baseline, "baseline"), (followup, "follow-up"), (new, "new")]
    if faded is not None:
        given.append((faded, "faded"))
    masks = [_as_binary_3d(m, what) for m, what in given]
    if len({m.shape for m in masks}) != 1:
        raise InputError(
            "the baseline, follow-up and change masks differ in shape: " + ", ".join(str(m.shape) for m in masks)
        )
    if not (math.isfinite(voxel_volume_mm3) and voxel_volume_mm3 > 0):
        raise InputError(f"the voxel volume must be above 0 mm³, got {voxel_volume_mm3}")
    before_mask, after_mask = _extents(masks)
    found = [components(m, connectivity) for m in masks]
    # One node per lesion of each mask, mask after mask.
    offsets = np.cumsum([0] + [f.count for f in found])
    nodes = _UnionFind(int(offsets[-1]))
    # A change (a new or faded lesion) also joins the lesions it touches: growth lies beside what grew.
    structure = connectivity_structure(connectivity)
    reach = [f.labels if k < 2 else ndimage.grey_dilation(f.labels, footprint=structure) for k, f in enumerate(found)]
    for a in range(len(masks)):
        for b in range(a + 1, len(masks)):
            for id_a, id_b in _overlapping_pairs(found[a].labels, reach[b]):
                nodes.union(int(offsets[a] + id_a - 1), int(offsets[b] + id_b - 1))
    groups: dict[int, list[list[int]]] = {}
    for mask_index in range(len(masks)):
        for lesion_id in range(1, found[mask_index].count + 1):
            root = nodes.find(int(offsets[mask_index] + lesion_id - 1))
            groups.setdefault(root, [[] for _ in masks])[mask_index].append(lesion_id)
    members = list(groups.values())

    # Each group's extent at each time point decides whether it is split into its new lesions.
    group_labels = _paint(found, [[m[k] for m in members] for k in range(len(masks))], masks[0].shape)
    group_before = np.bincount(group_labels[before_mask], minlength=len(members) + 1)
    units: list[list[list[int]]] = []
    for index, ids in enumerate(members, start=1):
        new_ids = ids[2]
        if group_before[index] == 0 and len(new_ids) > 1:
            # No lesion before: each new lesion is a lesion of its own; the rest of the group goes with the first.
            units.append([ids[0], ids[1], [new_ids[0]], *ids[3:]])
            units += [[[], [], [new_id], *([[]] * (len(ids) - 3))] for new_id in new_ids[1:]]
        else:
            units.append(ids)
    unit_labels = _paint(found, [[u[k] for u in units] for k in range(len(masks))], masks[0].shape)

    # Lesion ids in the raster order of each lesion's first voxel, whatever the order of the groups.
    flat = unit_labels.ravel()
    foreground = np.flatnonzero(flat)
    first_voxel = np.full(len(units) + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_voxel, flat[foreground], foreground)
    order = np.argsort(first_voxel[1:], kind="stable")
    renumber = np.zeros(len(units) + 1, dtype=np.int32)
    renumber[order + 1] = np.arange(1, len(units) + 1, dtype=np.int32)
    labels = renumber[unit_labels]

    before_voxels = np.bincount(labels[before_mask], minlength=len(units) + 1)
    after_voxels = np.bincount(labels[after_mask], minlength=len(units) + 1)
    lesions = []
    for lesion_id, unit_index in enumerate(order, start=1):
        ids = units[unit_index]
        before, after = int(before_voxels[lesion_id]), int(after_voxels[lesion_id])
        if before == 0 and not ids[2]:
            # At the follow-up only, yet the new-lesion mask, which compares both images, did not call it new.
            change, matched = "stable", "follow-up only, not new"
        elif before == 0:
            change, matched = "new", "follow-up only"
        elif after == 0:
            change, matched = "resolved", "baseline only"
        else:
            change, matched = rule.classify(before * voxel_volume_mm3, after * voxel_volume_mm3), "both"
        lesions.append(
            LesionChange(
                id=lesion_id,
                change=change,
                baseline_voxels=before,
                followup_voxels=after,
                baseline_lesions=tuple(ids[0]),
                followup_lesions=tuple(ids[1]),
                new_lesions=tuple(ids[2]),
                faded_lesions=tuple(ids[3]) if len(ids) > 3 else (),
                matched=matched,
            )
        )
    return LesionChanges(labels=labels, lesions=tuple(lesions), voxel_volume_mm3=float(voxel_volume_mm3), rule=rule)


def _extents(masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Where each lesion is at the baseline and at the follow-up (see the module's "Extents")."""
    baseline, followup, new = masks[:3]
    if len(masks) == 3:
        # The all-lesion masks say where lesions are; the new lesions are at the follow-up.
        return baseline, followup | new
    faded = masks[3]
    # The change masks say what changed; every other lesion voxel of either time point is at both.
    return baseline | faded | (followup & ~new), followup | new | (baseline & ~faded)


def _paint(found: list, ids_per_mask: list[list[list[int]]], shape: tuple[int, ...]) -> np.ndarray:
    """A label map: unit ``u`` (1-based) on the voxels of its lesions of every mask.

    ``ids_per_mask[k][u - 1]`` are unit ``u``'s lesion ids in mask ``k``. Masks are painted follow-up first,
    then baseline, faded and new lesions, so that where masks overlap a new lesion keeps its own unit.
    """
    lookups = [np.zeros(f.count + 1, dtype=np.int32) for f in found]
    for mask_index, per_unit in enumerate(ids_per_mask):
        for unit_index, ids in enumerate(per_unit, start=1):
            lookups[mask_index][ids] = unit_index
    labels = np.zeros(shape, dtype=np.int32)
    for mask_index in [1, 0, *range(3, len(found)), 2]:
        present = found[mask_index].labels > 0
        labels[present] = lookups[mask_index][found[mask_index].labels[present]]
    return labels


def itksnap_label_descriptions() -> str:
    """The colour table as an ITK-SNAP label description file (Segmentation > Import Label Descriptions).

    Examples
    --------
    >>> itksnap_label_descriptions().splitlines()[-1]
    '    5   0 200   0        1  1  1    "resolved"'
    """
    lines = [
        "# ITK-SnAP Label Description File (msnewlesion lesion changes)",
        "# Columns: IDX -R- -G- -B- -A-- VIS MSH LABEL",
        '    0     0    0    0        0  0  0    "Clear Label"',
    ]
    for name in CHANGE_CLASSES:
        red, green, blue = CHANGE_COLOURS[name]
        lines.append(f'    {CHANGE_CODES[name]} {red:3d} {green:3d} {blue:3d}        1  1  1    "{name}"')
    return "\n".join(lines) + "\n"


def fsleyes_lookup_table() -> str:
    """The colour table as an FSLeyes lookup table (``.lut``: code, then red, green, blue in 0-1, then name).

    Examples
    --------
    >>> fsleyes_lookup_table().splitlines()[0]
    '1 1.000000 0.000000 0.000000 new'
    """
    lines = []
    for name in CHANGE_CLASSES:
        red, green, blue = (channel / 255 for channel in CHANGE_COLOURS[name])
        lines.append(f"{CHANGE_CODES[name]} {red:.6f} {green:.6f} {blue:.6f} {name}")
    return "\n".join(lines) + "\n"
