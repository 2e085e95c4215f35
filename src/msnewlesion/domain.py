"""Is a pair, and what the model made of it, within what the model knows? Warnings, not refusals.

A model gives confident nonsense outside the images it learnt from: a 2D FLAIR with 7 mm slices for a
model trained up to 6 mm, two scans that do not look like one head, or a result no brain holds
(hundreds of new lesions, lesions over a tenth of the brain). Each function here returns the
warnings (one line each, saying what is off and what to do) that ``predict`` writes into
``summary.json`` and prints on stderr.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from msnewlesion.model.config import ModelConfig

__all__ = [
    "HEAD_CORRELATION_WARNING",
    "MAX_LESION_FRACTION",
    "MAX_NEW_LESIONS",
    "InputDomain",
    "acquisition_warnings",
    "lesion_load_warnings",
    "pair_warnings",
    "registration_warnings",
]

#: Two scans of one head correlate at 0.9 or more after rigid registration (0.967 on the real LIT pair, on
#: a 3 mm grid inside the heads); the registration refuses pairs under 0.6. Between the two, warn.
HEAD_CORRELATION_WARNING = 0.85
#: All lesions of one time point over this fraction of the brain's volume is not a brain a FLAIR shows.
MAX_LESION_FRACTION = 0.10
#: More new lesions than this between two scans is far beyond a relapse: an artefact or a domain problem.
MAX_NEW_LESIONS = 50
#: New lesions over this fraction of the brain's volume, likewise.
MAX_NEW_LESION_FRACTION = 0.02


@dataclass(frozen=True)
class InputDomain:
    """The acquisitions a model was trained on: ranges of slice thickness and in-plane voxel size (mm).

    Read from the model's ``config.json`` (``extra.input_domain``, written by ``msnewlesion train`` from
    the training config). A model without that record is taken to know scans up to one and a half
    times its own voxel size.

    Examples
    --------
    >>> InputDomain.of(ModelConfig(spacing=(1.0, 1.0, 1.0))).slice_thickness_mm
    (0.0, 1.5)
    """

    slice_thickness_mm: tuple[float, float]
    in_plane_spacing_mm: tuple[float, float]
    recorded: bool = True

    @classmethod
    def of(cls, config: ModelConfig) -> InputDomain:
        recorded = config.extra.get("input_domain") or {}
        coarsest = 1.5 * max(config.spacing)
        thickness = recorded.get("slice_thickness_mm", (0.0, coarsest))
        in_plane = recorded.get("in_plane_spacing_mm", (0.0, coarsest))
        return cls(
            slice_thickness_mm=(float(thickness[0]), float(thickness[1])),
            in_plane_spacing_mm=(float(in_plane[0]), float(in_plane[1])),
            recorded=bool(recorded),
        )


def acquisition_warnings(spacings: dict[str, tuple[float, ...]], domain: InputDomain, model: str) -> list[str]:
    """Warnings for input scans whose slices or in-plane voxels lie outside the model's training range.

    Parameters
    ----------
    spacings : dict
        Name of each input (``"baseline FLAIR"``) → its voxel size (mm); the largest is taken as its slice
        thickness, the smallest as its in-plane voxel size.
    domain : InputDomain
    model : str
        The model's name, for the message.

    Examples
    --------
    >>> domain = InputDomain((0.8, 6.0), (0.5, 1.3))
    >>> acquisition_warnings({"baseline FLAIR": (0.5, 0.5, 7.0)}, domain, "m")[0][:60]
    'the baseline FLAIR has 7 mm slices; the model m learnt from '
    """
    warnings = []
    tolerance = 0.25  # scanners round; 6.2 mm against 6 mm is not a different acquisition
    for name, spacing in spacings.items():
        thickness, in_plane = max(spacing), min(spacing)
        if thickness > domain.slice_thickness_mm[1] + tolerance:
            warnings.append(
                f"the {name} has {thickness:.3g} mm slices; the model {model} learnt from slices of "
                f"{domain.slice_thickness_mm[1]:g} mm at most: partial volume across such slices can look like "
                "new lesions. Check the result against the images, or use a model trained for thick slices."
            )
        if in_plane > domain.in_plane_spacing_mm[1] + tolerance:
            warnings.append(
                f"the {name} has {in_plane:.3g} mm voxels in-plane; the model {model} learnt from "
                f"{domain.in_plane_spacing_mm[1]:g} mm at most: small lesions may be missed or misplaced."
            )
    return warnings


def pair_warnings(baseline: np.ndarray, followup: np.ndarray, brain: np.ndarray) -> list[str]:
    """A warning when the registered pair looks wrong: no brain, a constant scan, or two scans that disagree.

    Examples
    --------
    >>> brain = np.ones((10, 10, 10), bool)
    >>> pair_warnings(np.zeros((10, 10, 10)), np.ones((10, 10, 10)), brain)
    ['one of the scans is constant inside the brain']
    """
    if brain.sum() < 100:
        return ["the brain mask holds almost nothing: check the inputs and the skull stripping"]
    a = baseline[brain].astype(np.float64)
    b = followup[brain].astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return ["one of the scans is constant inside the brain"]
    correlation = float(np.corrcoef(a, b)[0, 1])
    if correlation < 0.5:
        return [
            f"the two scans agree poorly inside the brain after registration (correlation {correlation:.2f}): "
            "check that they are the same subject and both FLAIR"
        ]
    return []


def registration_warnings(record: dict[str, Any]) -> list[str]:
    """A warning when the registered heads correlate less than two scans of one head usually do."""
    correlation = record.get("head_correlation")
    if correlation is None or not correlation < HEAD_CORRELATION_WARNING:
        return []
    return [
        f"after registration the two heads correlate at {correlation:.2f}, below the {HEAD_CORRELATION_WARNING:g} "
        "of two scans of one head: check that both files are FLAIRs of the same patient and that the registration "
        "is right (qc.png); new lesions may be differences between two people or a misalignment."
    ]


def lesion_load_warnings(
    brain_volume_mm3: float,
    new_count: int,
    new_volume_mm3: float,
    lesion_volumes_mm3: dict[str, float],
) -> list[str]:
    """Warnings for results no brain holds: hundreds of new lesions, lesions over a tenth of the brain.

    Examples
    --------
    >>> lesion_load_warnings(1.2e6, 348, 23_700.0, {"baseline": 5_000.0})[0][:40]
    '348 new lesions (23700 mm³) is implausib'
    """
    warnings: list[str] = []
    if brain_volume_mm3 <= 0:
        return warnings
    if new_count > MAX_NEW_LESIONS or new_volume_mm3 > MAX_NEW_LESION_FRACTION * brain_volume_mm3:
        warnings.append(
            f"{new_count} new lesions ({new_volume_mm3:.0f} mm³) is implausible between two scans of one patient: "
            "the scans probably differ in acquisition (slice thickness, contrast, artefacts) more than the model "
            "knows. Check qc.png before using the numbers."
        )
    for which, volume in lesion_volumes_mm3.items():
        if volume > MAX_LESION_FRACTION * brain_volume_mm3:
            warnings.append(
                f"the {which} all-lesion mask covers {100 * volume / brain_volume_mm3:.0f} % of the brain "
                f"({volume / 1000:.1f} ml): implausible for MS; the scan is probably outside what the model knows."
            )
    return warnings
