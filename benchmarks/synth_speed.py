"""Time ``msnewlesion synth`` on a whole 182×218×182 LIT scan, stage by stage.

Uses the real patient07 FLAIR and lesion mask and the 27 library masks in tests/data/lit. Reports the
one-off costs (reading the library and splitting it into lesions, fitting the tissue model) and, per pair,
the synthesis with the default options and the writing of the five NIfTI files and the record. Run by hand:

    python benchmarks/synth_speed.py              # 5 pairs
    python benchmarks/synth_speed.py --pairs 10 --interpolation 1 --followup-only
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from msnewlesion.io import load_mask, load_volume
from msnewlesion.synth import (
    LesionLibrary,
    SynthOptions,
    fit_tissue_model,
    load_lesion_library,
    save_synthetic_pair,
    synthesize_pair,
)

LIT = Path(__file__).resolve().parents[1] / "tests" / "data" / "lit"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--interpolation", type=int, default=3, choices=(1, 3))
    parser.add_argument("--followup-only", action="store_true", help="move, drift and add noise to the follow-up only")
    arguments = parser.parse_args()

    start = time.perf_counter()
    flair = load_volume(LIT / "cross_sectional" / "patient07" / "flair.nii.gz")
    lesions = load_mask(LIT / "cross_sectional" / "patient07" / "lesions.nii.gz")
    volumes = load_lesion_library(LIT / "lesion_masks")
    read = time.perf_counter() - start

    start = time.perf_counter()
    library = LesionLibrary.from_volumes(volumes)
    split = time.perf_counter() - start

    start = time.perf_counter()
    tissue = fit_tissue_model(flair, lesions)
    fit = time.perf_counter() - start

    synthesis, writing = [], []
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(arguments.pairs):
            options = SynthOptions(
                seed=seed, interpolation_order=arguments.interpolation, symmetric=not arguments.followup_only
            )
            start = time.perf_counter()
            pair = synthesize_pair(flair, lesions, library, options, tissue=tissue)
            synthesis.append(time.perf_counter() - start)
            start = time.perf_counter()
            save_synthetic_pair(pair, Path(folder) / f"pair{seed}")
            writing.append(time.perf_counter() - start)

    print(f"grid {flair.shape}, library {library.describe()}")
    print(f"read FLAIR, mask and {len(volumes)} library masks: {read:.2f} s")
    print(f"split the library into {len(library.lesions)} lesions:  {split:.2f} s")
    print(f"fit the tissue model:                {fit:.2f} s")
    print(
        f"per pair ({arguments.pairs} pairs, interpolation {arguments.interpolation}, "
        f"{'follow-up only' if arguments.followup_only else 'symmetric'}): synthesis median "
        f"{statistics.median(synthesis):.2f} s (min {min(synthesis):.2f}, max {max(synthesis):.2f}), "
        f"writing median {statistics.median(writing):.2f} s"
    )


if __name__ == "__main__":
    main()
