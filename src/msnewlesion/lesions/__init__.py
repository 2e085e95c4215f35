"""Lesions: connected components, boxes, the minimum-size rule, lesion tables and lesion-wise detection.

:mod:`msnewlesion.lesions.components` labels masks (the one place that does) and describes their
lesions; :mod:`msnewlesion.lesions.detection` matches the lesions of a prediction and a reference by
the MSSEG rule (Anima's ``animaSegPerfAnalyzer``, see ``docs/metrics.md``).
"""

from msnewlesion.lesions.components import (
    DEFAULT_MIN_LESION_VOLUME_MM3,
    Components,
    bounding_box,
    components,
    connectivity_structure,
    label_lesions,
    largest_component,
    lesion_table,
    min_lesion_voxels,
    remove_small_lesions,
)
from msnewlesion.lesions.detection import (
    DEFAULT_ALPHA,
    DEFAULT_BETA,
    DEFAULT_GAMMA,
    DetectionResult,
    LesionDetection,
    detect_lesions,
    detections_table,
)

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_BETA",
    "DEFAULT_GAMMA",
    "DEFAULT_MIN_LESION_VOLUME_MM3",
    "Components",
    "DetectionResult",
    "LesionDetection",
    "bounding_box",
    "components",
    "connectivity_structure",
    "detect_lesions",
    "detections_table",
    "label_lesions",
    "largest_component",
    "lesion_table",
    "min_lesion_voxels",
    "remove_small_lesions",
]
