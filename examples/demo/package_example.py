"""Package a synthetic pair as the built-in example: crop to the head, store compactly, keep the attribution.

    python examples/demo/package_example.py WORK/synth-test/test-synth000 src/msnewlesion/data/example

Both time points and the new-lesion mask are cropped to the same box (the union of the two
scans' non-zero voxels plus a margin), so they stay on one grid with a correct affine, and the
images are stored as int16 with a scale factor (0.05 intensity units, far below the noise).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

SCALE = 0.05
MARGIN = 6

ATTRIBUTION = """# The built-in example pair

`baseline.nii.gz` and `followup.nii.gz` are a synthetic longitudinal pair made by `msnewlesion synth` from a
real FLAIR of the Ljubljana (LIT) cross-sectional MS database (patient 26: skull-stripped, N4-corrected,
on the MNI 1 mm grid), cropped to the head and stored as int16. Three of the patient's own lesions were
in-painted from the baseline and three real lesion shapes of other LIT patients (13, never used to train
the demo model) were added to the follow-up, with a small rigid motion, an intensity drift and noise
between the time points. `new_lesions.nii.gz` marks exactly those six new lesions; `example.json` records
how the pair was made. The demo model never saw patient 26.

The LIT data are released under Creative Commons Attribution (CC-BY). Please cite:

- Lesjak Ž, Pernuš F, Likar B, Špiclin Ž. "A Novel Public MR Image Dataset of Multiple Sclerosis
  Patients With Lesion Segmentations Based on Multi-rater Consensus." Neuroinformatics (2017),
  doi:10.1007/s12021-017-9348-7 (cross-sectional database).
- Lesjak Ž, Pernuš F, Likar B, Špiclin Ž. "Validation of White-Matter Lesion Change Detection
  Methods on a Novel Publicly Available MRI Image Database." Neuroinformatics (2016)
  (longitudinal database).
"""


def crop_box(*arrays: np.ndarray, margin: int) -> tuple[slice, ...]:
    present = np.zeros(arrays[0].shape, bool)
    for array in arrays:
        present |= array != 0
    indices = np.nonzero(present)
    return tuple(
        slice(max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, size))
        for i, size in zip(indices, present.shape, strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pair", type=Path, help="a folder written by msnewlesion synth")
    parser.add_argument("destination", type=Path)
    args = parser.parse_args()
    images = {name: nib.load(str(args.pair / f"{name}.nii.gz")) for name in ("baseline", "followup", "new_lesions")}
    box = crop_box(*(np.asarray(images[n].dataobj) for n in ("baseline", "followup")), margin=MARGIN)
    args.destination.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        cropped = image.slicer[box]
        data = np.asarray(cropped.dataobj)
        if name == "new_lesions":
            out = nib.Nifti1Image(data.astype(np.uint8), cropped.affine)
        else:
            out = nib.Nifti1Image(np.round(data / SCALE).astype(np.int16), cropped.affine)
            out.header.set_slope_inter(SCALE, 0.0)
        out.set_qform(cropped.affine, code=1)
        out.set_sform(cropped.affine, code=1)
        nib.save(out, str(args.destination / f"{name}.nii.gz"))
    record = json.loads((args.pair / "synth.json").read_text())
    mask = np.asarray(images["new_lesions"].dataobj) > 0
    info = {
        "source": "LIT cross-sectional database, patient 26 (CC-BY; see README.md)",
        "made_with": "msnewlesion synth (see examples/demo/build_demo.sh: the held-out test pair test-synth000)",
        "synth_options": record["options"],
        "new_lesions": record["new_lesions"],
        "removed_lesions": len(record["removed"]["lesions"]),
        "added_lesions": len(record["added"]["lesions"]),
        "new_lesion_voxels": int(mask.sum()),
        "crop": [[s.start, s.stop] for s in box],
        "intensity_scale": SCALE,
    }
    (args.destination / "example.json").write_text(json.dumps(info, indent=2) + "\n")
    (args.destination / "README.md").write_text(ATTRIBUTION)
    print(f"example written to {args.destination}: {args.pair.name} cropped to {[s.stop - s.start for s in box]}")


if __name__ == "__main__":
    main()
