"""Preprocessing of a pair of raw FLAIRs: reorientation, N4, rigid registration to a halfway space,
resampling, skull stripping (HD-BET), cropping and intensity normalisation, with every transform kept.

:mod:`~msnewlesion.preprocess.options` says what is done, :mod:`~msnewlesion.preprocess.pipeline`
does it, and :mod:`~msnewlesion.preprocess.pair` holds the result, maps results back to each native
grid and writes it. antspyx, HD-BET and torch are imported only by the steps that need them.
"""

from msnewlesion.preprocess.options import PreprocessOptions
from msnewlesion.preprocess.pair import (
    OUTPUT_NAMES,
    NativeGrid,
    PreprocessedPair,
    preprocessed_outputs,
    save_preprocessed,
    to_common,
    to_native,
)
from msnewlesion.preprocess.pipeline import preprocess_pair

__all__ = [
    "OUTPUT_NAMES",
    "NativeGrid",
    "PreprocessOptions",
    "PreprocessedPair",
    "preprocess_pair",
    "preprocessed_outputs",
    "save_preprocessed",
    "to_common",
    "to_native",
]
