"""One real annotated scan as ``msnewlesion synth`` takes it: skull-stripped FLAIR (zero outside the brain),
positive intensities, and a binary all-lesion mask on the same grid.

    python prepare_real.py --image FLAIR --lesions MASK [--brain-mask MASK] -o OUT_DIR

MSLesSeg masks are stored as 0/1 floats and Tabriz images as int16 with a negative background: the mask is
thresholded at 0.5, and the image is set to zero outside the brain (the given mask, else its positive voxels)
and clipped at zero. The image's and mask's grids are checked to be the same. Writes OUT_DIR/flair.nii.gz,
OUT_DIR/lesions.nii.gz and OUT_DIR/brain_mask.nii.gz with the image's header geometry.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--lesions", type=Path, required=True)
    parser.add_argument("--brain-mask", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()

    image = nib.load(args.image)
    lesions = nib.load(args.lesions)
    if image.shape[:3] != lesions.shape[:3] or not np.allclose(image.affine, lesions.affine, atol=1e-3):
        raise SystemExit(f"{args.lesions} is not on the grid of {args.image}")
    data = np.asarray(image.dataobj, dtype=np.float32)
    brain = np.asarray(nib.load(args.brain_mask).dataobj) > 0 if args.brain_mask is not None else data > 0
    lesion = (np.asarray(lesions.dataobj, dtype=np.float32) > 0.5) & brain
    data = np.where(brain, np.clip(data, 0, None), 0).astype(np.float32)

    args.output.mkdir(parents=True, exist_ok=True)
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    nib.save(nib.Nifti1Image(data, image.affine, header), args.output / "flair.nii.gz")
    for name, mask in (("lesions", lesion), ("brain_mask", brain)):
        mask_header = image.header.copy()
        mask_header.set_data_dtype(np.uint8)
        mask_header.set_slope_inter(1, 0)
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), image.affine, mask_header), args.output / f"{name}.nii.gz")
    print(f"{args.output}: brain {brain.sum() / 1000:.0f} ml, lesions {lesion.sum()} voxels")


if __name__ == "__main__":
    main()
