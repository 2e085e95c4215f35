"""Lesions: connected components, boxes, the minimum-size rule, lesion tables and lesion-wise detection.

:mod:`msnewlesion.lesions.components` labels masks (the one place that does) and describes their
lesions; :mod:`msnewlesion.lesions.detection` matches the lesions of a prediction and a reference by
the MSSEG rule (Anima's ``animaSegPerfAnalyzer``, see ``docs/metrics.md``);
:mod:`msnewlesion.lesions.changes` matches the lesions of two time points and classifies them (new,
enlarging, stable, shrinking, resolved).
"""

from msnewlesion.lesions.changes import (
    CHANGE_CLASSES,
    CHANGE_CODES,
    CHANGE_COLOURS,
    CHANGE_GROUPS,
    ChangeRule,
    LesionChange,
    LesionChanges,
    change_counts,
    classify_changes,
    fsleyes_lookup_table,
    itksnap_label_descriptions,
)
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
    "CHANGE_CLASSES",
    "CHANGE_CODES",
    "CHANGE_COLOURS",
    "CHANGE_GROUPS",
    "DEFAULT_ALPHA",
    "DEFAULT_BETA",
    "DEFAULT_GAMMA",
    "DEFAULT_MIN_LESION_VOLUME_MM3",
    "ChangeRule",
    "Components",
    "DetectionResult",
    "LesionChange",
    "LesionChanges",
    "LesionDetection",
    "bounding_box",
    "change_counts",
    "classify_changes",
    "components",
    "connectivity_structure",
    "detect_lesions",
    "detections_table",
    "fsleyes_lookup_table",
    "itksnap_label_descriptions",
    "label_lesions",
    "largest_component",
    "lesion_table",
    "min_lesion_voxels",
    "remove_small_lesions",
]
