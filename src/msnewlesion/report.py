"""Quality-control pictures a reader can check at a glance."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from scipy import ndimage

from msnewlesion.io import atomic_path
from msnewlesion.lesions import CHANGE_CODES, CHANGE_COLOURS, bounding_box, components

__all__ = ["choose_qc_slices", "save_qc_figure"]


def choose_qc_slices(mask: np.ndarray, brain: np.ndarray | None = None, count: int = 4) -> list[int]:
    """Axial (last-axis) slices to show: through the largest lesions of ``mask``, else through the brain.

    Examples
    --------
    >>> mask = np.zeros((10, 10, 10), bool); mask[2:4, 2:4, 7] = True
    >>> choose_qc_slices(mask, count=2)
    [7]
    """
    found = components(mask)
    labels, count_found = found.labels, found.count
    if count_found:
        order = np.argsort(-found.sizes, kind="stable")
        slices: list[int] = []
        for index in order:
            centre = ndimage.center_of_mass(labels == index + 1)
            z = round(centre[2])
            if all(abs(z - s) > 1 for s in slices):
                slices.append(z)
            if len(slices) == count:
                break
        return sorted(slices)
    reference = brain if brain is not None and brain.any() else np.ones(mask.shape, bool)
    zs = np.nonzero(reference.any(axis=(0, 1)))[0]
    return sorted({int(z) for z in np.percentile(zs, np.linspace(30, 70, count))})


#: The change classes outlined in the QC picture (new lesions are the red outline already; stable ones the cyan).
_CHANGE_OUTLINES = {"enlarging": "solid", "shrinking": "solid", "resolved": "dashed"}


def _change_counts_text(changes: np.ndarray, counts: Mapping[str, int] | None) -> str:
    if counts is None:
        counts = {name: components(changes == code).count for name, code in CHANGE_CODES.items()}
    return ", ".join(f"{counts.get(name, 0)} {name}" for name in CHANGE_CODES)


def _display(slice_2d: np.ndarray) -> np.ndarray:
    # Arrays are (x, y) in RAS order. Radiological convention: the patient's right (high x) on the
    # viewer's left, anterior (high y) at the top.
    return slice_2d.T[::-1, ::-1]


def save_qc_figure(
    baseline: np.ndarray,
    followup: np.ndarray,
    new_lesions: np.ndarray,
    path: str | Path,
    *,
    brain_mask: np.ndarray | None = None,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    title: str = "",
    count: int = 4,
    lesion_count: int | None = None,
    lesions: tuple[np.ndarray, np.ndarray] | None = None,
    changes: np.ndarray | None = None,
    change_counts: Mapping[str, int] | None = None,
) -> Path:
    """Write a PNG: rows of axial slices, baseline beside follow-up, new lesions outlined in red.

    The outline is solid red on the follow-up; a faint dotted yellow trace marks the same place on
    the baseline, so the reader can check that the lesion was not there before. ``lesions`` (the
    all-lesion masks of the baseline and of the follow-up) are outlined thinly in cyan on their own
    image. Without new lesions, the slices go through the follow-up's largest lesions.

    ``changes`` (the class codes of :mod:`msnewlesion.lesions.changes` on the same grid) adds the lesions
    that enlarged (orange), shrank (purple) or resolved (green, dashed), outlined on both images in their
    class's colour, and the count of every class under the title (``change_counts``, or the connected
    components of each class's voxels when not given); the slices then also go through them.

    The images must share one grid in RAS orientation (the preprocessing's common space), so the
    same slice shows the same anatomy at both time points.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    chooser = new_lesions if new_lesions.any() or lesions is None else lesions[1]
    changed = None
    if changes is not None:
        changed = np.isin(changes, [CHANGE_CODES[name] for name in _CHANGE_OUTLINES])
        if changed.any():
            chooser = new_lesions | changed
    slices = choose_qc_slices(chooser, brain_mask, count=count)
    rows = max(len(slices), 1)
    found = lesion_count if lesion_count is not None else components(new_lesions).count
    brain = brain_mask if brain_mask is not None and brain_mask.any() else np.ones(followup.shape, bool)
    lo, hi = np.percentile(followup[brain], (1, 99.5))
    # Show only the brain's bounding box (plus a little), with everything outside the brain black.
    box = bounding_box(np.asarray(brain.any(axis=2)), margin=4) or ()
    aspect = spacing[1] / spacing[0]
    figure, axes = plt.subplots(rows, 2, figsize=(8.0, 4.1 * rows), squeeze=False, facecolor="black")
    for row, z in enumerate(slices):
        for column, (image, label) in enumerate(((baseline, "baseline"), (followup, "follow-up"))):
            axis = axes[row][column]
            shown = np.where(brain[:, :, z], image[:, :, z], lo)[box]
            axis.imshow(_display(shown), cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
            if lesions is not None:
                known = _display(ndimage.binary_dilation(lesions[column][:, :, z][box]).astype(float))
                if known.any():
                    axis.contour(known, levels=[0.5], colors="cyan", linewidths=0.5, alpha=0.8)
            # drawn one voxel outside the lesion, so the line surrounds it instead of covering it
            outline = _display(ndimage.binary_dilation(new_lesions[:, :, z][box]).astype(float))
            if outline.any():
                # solid red on the follow-up; a faint dotted trace on the baseline marks the same place
                style = (
                    {"colors": "red", "linewidths": 1.0}
                    if column == 1
                    else {"colors": "yellow", "linewidths": 0.8, "linestyles": "dotted", "alpha": 0.8}
                )
                axis.contour(outline, levels=[0.5], **style)
            if changes is not None and changed is not None and changed[:, :, z].any():
                for name, linestyle in _CHANGE_OUTLINES.items():
                    shown_class = ndimage.binary_dilation(changes[:, :, z][box] == CHANGE_CODES[name])
                    if shown_class.any():
                        colour = tuple(c / 255 for c in CHANGE_COLOURS[name])
                        axis.contour(
                            _display(shown_class.astype(float)),
                            levels=[0.5],
                            colors=[colour],
                            linewidths=1.0,
                            linestyles=linestyle,
                        )
            axis.set_title(f"{label}, slice {z}", color="white", fontsize=9)
            axis.axis("off")
    heading = title or "new lesions"
    summary = (
        f"{found} new lesion{'s' if found != 1 else ''} (red on the follow-up)" if found else "no new lesion found"
    )
    if changes is not None:
        summary += "\n" + _change_counts_text(changes, change_counts)
    figure.suptitle(f"{heading}: {summary}", color="white", fontsize=10)
    legend = "R on the left (radiological view)" + ("; all lesions in cyan" if lesions is not None else "")
    if changes is not None:
        legend += "; enlarging orange, shrinking purple, resolved green (dashed)"
    figure.text(0.5, 0.005, legend, color="gray", fontsize=7, ha="center")
    figure.tight_layout(rect=(0, 0.02, 1, 0.97))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, facecolor="black")
    plt.close(figure)
    with atomic_path(path) as temporary:
        temporary.write_bytes(buffer.getvalue())
    return Path(path)
