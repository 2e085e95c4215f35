"""Synthetic longitudinal pairs with exactly known new lesions, made from single-time-point scans.

New-lesion labels on pairs of scans are the scarcest data in the field; single scans with all-lesion masks
are common. From one skull-stripped FLAIR, its lesion mask and a library of real lesion masks on the same
grid, :func:`synthesize_pair` makes a baseline and a follow-up that differ by known new lesions:

- removed lesions: annotated lesions in-painted in the baseline with the texture of nearby normal-appearing
  white matter; the follow-up keeps them, so they are new (real lesions: the most realistic case);
- added lesions: real lesion shapes from the library put into the follow-up's white matter (at their own
  location in the library when it fits), about 1.3 times as bright as the local normal white matter, with
  soft edges;

then a small rigid motion, a smooth multiplicative intensity drift and noise between the time points, and,
when asked, each time point's own simulated scanner acquisition (:mod:`msnewlesion.synth.acquisition`).
:data:`MASK_DEFINITION` says exactly what the masks are. :func:`write_synthetic_pairs` writes many pairs and
a training manifest; ``msnewlesion synth`` is its command line.
"""

from msnewlesion.synth.acquisition import AcquisitionOptions, simulate_acquisition
from msnewlesion.synth.dataset import (
    MANIFEST_COLUMNS,
    MANIFEST_NAME,
    PairSummary,
    default_subject,
    update_manifest,
    write_synthetic_pairs,
)
from msnewlesion.synth.library import LesionLibrary, LibraryLesion, find_library_files, load_lesion_library
from msnewlesion.synth.pair import (
    MASK_DEFINITION,
    PAIR_FILES,
    SyntheticPair,
    SynthOptions,
    save_synthetic_pair,
    synthesize_pair,
)
from msnewlesion.synth.tissue import TissueModel, fit_tissue_model

__all__ = [
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "MASK_DEFINITION",
    "PAIR_FILES",
    "AcquisitionOptions",
    "LesionLibrary",
    "LibraryLesion",
    "PairSummary",
    "SynthOptions",
    "SyntheticPair",
    "TissueModel",
    "default_subject",
    "find_library_files",
    "fit_tissue_model",
    "load_lesion_library",
    "save_synthetic_pair",
    "simulate_acquisition",
    "synthesize_pair",
    "update_manifest",
    "write_synthetic_pairs",
]
