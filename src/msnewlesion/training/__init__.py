"""Training CoactSeg on heterogeneous data: the manifest, patch sampling and the training loop."""

from msnewlesion.training.config import TrainConfig
from msnewlesion.training.loop import StepLog, TrainResult, train
from msnewlesion.training.manifest import Manifest, ManifestRow, check_manifest, read_manifest, validate_manifest

__all__ = [
    "Manifest",
    "ManifestRow",
    "StepLog",
    "TrainConfig",
    "TrainResult",
    "check_manifest",
    "read_manifest",
    "train",
    "validate_manifest",
]
