"""How a synthetic pair is made: :class:`SynthOptions` (every random choice comes from its seed)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from msnewlesion.errors import OptionError
from msnewlesion.synth.acquisition import AcquisitionOptions

__all__ = ["SynthOptions"]


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
        Range of the thickness of an enlarging lesion's new part (and of the part a shrinking lesion loses).
    shrinking_lesions : int
        Shrinking lesions: a library lesion whose whole shape is added to the baseline and whose core to both
        time points (the mirror of an enlarging lesion; nothing new).
    resolved_lesions : int
        Annotated lesions of the scan in-painted in the follow-up: present at the baseline only.
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
    shrinking_lesions: int = 0
    resolved_lesions: int = 0
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
        for name in ("removed_lesions", "added_lesions", "enlarged_lesions", "shrinking_lesions", "resolved_lesions"):
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
            raise OptionError("invalid synthesis options: " + "; ".join(problems))

    def replace(self, **changes: Any) -> SynthOptions:
        """A copy with some fields changed (and checked)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["acquisition"] = self.acquisition.to_dict() if self.acquisition is not None else None
        return values
