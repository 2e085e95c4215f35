"""Preprocessing of a pair of raw FLAIRs: reorientation, N4, rigid registration to a halfway space,
resampling, skull stripping (HD-BET), cropping and intensity normalisation, with every transform kept.

antspyx, HD-BET and torch are imported only by the steps that need them.
"""

from msnewlesion.preprocess.pipeline import (
    DEFAULT_TRANSFORM,
    OUTPUT_NAMES,
    REGISTRATION_SPACES,
    SKULL_STRIP_METHODS,
    NativeGrid,
    PreprocessedPair,
    PreprocessOptions,
    preprocess_pair,
    preprocessed_outputs,
    save_preprocessed,
    to_common,
    to_native,
)

__all__ = [
    "DEFAULT_TRANSFORM",
    "OUTPUT_NAMES",
    "REGISTRATION_SPACES",
    "SKULL_STRIP_METHODS",
    "NativeGrid",
    "PreprocessOptions",
    "PreprocessedPair",
    "preprocess_pair",
    "preprocessed_outputs",
    "save_preprocessed",
    "to_common",
    "to_native",
]
