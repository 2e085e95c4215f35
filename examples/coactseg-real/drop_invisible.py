"""Drop the new lesions that a pair's simulated acquisitions erased, before the pair is preprocessed.

    python drop_invisible.py PAIR_DIR [PAIR_DIR ...] [--min-rise 0.05]

For each synthetic pair folder (as ``msnewlesion synth`` writes it), writes ``new_lesions_visible.nii.gz`` and
``lesions_followup_visible.nii.gz`` beside the originals (which are left as they are): the new lesions whose
follow-up is not at least ``--min-rise`` × the brain median brighter than the baseline are taken out of both
(:func:`msnewlesion.synth.visibility.visible_new_lesions`), and ``visibility.json`` records every lesion's rise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from msnewlesion.io import load_mask, load_volume, save_volume
from msnewlesion.io.nifti import Volume
from msnewlesion.synth.visibility import DEFAULT_MIN_RISE, visible_new_lesions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", type=Path, nargs="+")
    parser.add_argument("--min-rise", type=float, default=DEFAULT_MIN_RISE)
    args = parser.parse_args()
    kept = dropped = 0
    for pair in args.pairs:
        if (pair / "visibility.json").is_file():
            continue
        baseline = load_volume(pair / "baseline.nii.gz")
        followup = load_volume(pair / "followup.nii.gz")
        new = load_mask(pair / "new_lesions.nii.gz")
        lesions_followup = load_mask(pair / "lesions_followup.nii.gz")
        brain = (baseline.data > 0) & (followup.data > 0)
        result = visible_new_lesions(baseline.data, followup.data, new.data, brain, min_rise=args.min_rise)
        for name, data in (
            ("new_lesions_visible", result.new_lesions),
            ("lesions_followup_visible", lesions_followup.data.astype(bool) & ~result.dropped_mask),
        ):
            save_volume(Volume(data.astype(np.uint8), new.affine, new.header, None), pair / f"{name}.nii.gz")
        record = {"min_rise": args.min_rise, "rises": [round(r, 4) for r in result.rises], "dropped": result.dropped}
        (pair / "visibility.json").write_text(json.dumps(record, indent=2) + "\n")
        kept += len(result.rises) - len(result.dropped)
        dropped += len(result.dropped)
    print(f"new lesions kept {kept}, dropped {dropped} (erased by the simulated acquisitions)")


if __name__ == "__main__":
    main()
