"""How a model does on the real raw longitudinal LIT pair (patient01), against its brightening changes.

The pair is two raw scanner FLAIRs (0.72×0.72×4 mm and 0.72×0.72×3 mm, not co-registered, not
skull-stripped). Its ground truth is a lesion CHANGE mask on the dataset's common grid: new and
enlarging lesions, but also shrinking and disappearing ones. Only changes that brighten from the
first to the second study are new-lesion-like, so the reference here is the set of change lesions
whose mean FLAIR intensity rises (both studies brought onto the common grid with the dataset's own
transforms and scaled by their median brain intensity).

Steps: ``msnewlesion predict`` runs on the raw pair (registration, skull stripping, N4, the model),
either with its defaults (``--brain-mask default``: HD-BET v1 makes the brain mask, as for a user) or
with the dataset's brain mask taken onto study 1's grid (``--brain-mask dataset``), or both (the
default); its new-lesion mask (on study 2's grid) is taken onto the common grid and scored lesion-wise
with ``msnewlesion evaluate``'s rules: sensitivity, PPV, F1 and the number of false-positive lesions.
Run by hand; the numbers measured are in docs/performance.md.

    python benchmarks/lit_longitudinal.py [--model coactseg-lit] [--data tests/data/lit/longitudinal/patient01]
    python benchmarks/lit_longitudinal.py --brain-mask dataset --predict-args "--min-brightening 0.5"
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    import ants
    import nibabel as nib

    from msnewlesion.metrics import EvaluationOptions, evaluate_case

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a model (default: predict's default model)")
    parser.add_argument("--brain-mask", choices=("default", "dataset", "both"), default="both")
    parser.add_argument("--data", type=Path, default=ROOT / "tests" / "data" / "lit" / "longitudinal" / "patient01")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rise", type=float, default=0.0, help="minimum relative brightening of a change lesion")
    parser.add_argument("--predict-args", default="", help="extra predict options, e.g. '--min-lesion-volume 30'")
    args = parser.parse_args()
    data = args.data
    work = Path(tempfile.mkdtemp(prefix="lit-longitudinal-"))

    common = ants.image_read(str(data / "gt.nii.gz"))
    study1 = ants.image_read(str(data / "study1_FLAIR.nii.gz"))
    study2 = ants.image_read(str(data / "study2_FLAIR.nii.gz"))
    to_common = {1: str(data / "study1_FLAIR_to_common_space.txt"), 2: str(data / "study2_FLAIR_to_common_space.txt")}
    brain_common = ants.image_read(str(data / "brainmask.nii.gz"))
    common_to_study1 = ants.read_transform(to_common[1]).invert()
    brain_study1 = common_to_study1.apply_to_image(brain_common, reference=study1, interpolation="nearestneighbor")
    ants.image_write(brain_study1, str(work / "brain_study1.nii.gz"))

    on_common = {
        index: ants.apply_transforms(
            fixed=common, moving=image, transformlist=[to_common[index]], interpolator="linear"
        ).numpy()
        for index, image in ((1, study1), (2, study2))
    }
    brain = brain_common.numpy() > 0
    scaled = {index: image / np.median(image[brain & (image > 0)]) for index, image in on_common.items()}
    change = nib.load(str(data / "gt.nii.gz"))
    change_mask = np.asarray(change.dataobj) > 0
    labels, count = ndimage.label(change_mask, np.ones((3, 3, 3)))
    rises = ndimage.mean(scaled[2] - scaled[1], labels, index=np.arange(1, count + 1))
    brightening = np.isin(labels, 1 + np.flatnonzero(np.asarray(rises) > args.rise))
    spacing = tuple(float(s) for s in change.header.get_zooms()[:3])

    reports = {}
    modes = ("default", "dataset") if args.brain_mask == "both" else (args.brain_mask,)
    for mode in modes:
        output = work / f"prediction-{mode}"
        command = [sys.executable, "-m", "msnewlesion", "predict", str(data / "study1_FLAIR.nii.gz")]
        command += [str(data / "study2_FLAIR.nii.gz"), "-o", str(output), "--device", args.device, "--quiet"]
        command += ["--model", args.model] if args.model else []
        if mode == "dataset":
            command += ["--skull-strip", "none", "--brain-mask", str(work / "brain_study1.nii.gz")]
        subprocess.run([*command, *args.predict_args.split()], check=True)
        summary = json.loads((output / "summary.json").read_text())
        predicted = ants.image_read(str(output / "new_lesions.nii.gz"))
        predicted_common = (
            ants.apply_transforms(
                fixed=common, moving=predicted, transformlist=[to_common[2]], interpolator="nearestNeighbor"
            ).numpy()
            > 0
        )
        result = evaluate_case(predicted_common, brightening, spacing, EvaluationOptions(), case="patient01")
        reports[mode] = {
            "brain_mask": "HD-BET v1 (predict's default)" if mode == "default" else "the dataset's",
            "model": summary["model"]["name"],
            "change_lesions": int(count),
            "brightening_change_lesions": int(np.sum(np.asarray(rises) > args.rise)),
            "reference_lesions_after_size_rule": result.n_ref_lesions,
            "predicted_new_lesions": summary["new_lesions"]["count"],
            "predicted_lesions_on_common_grid_after_size_rule": result.n_pred_lesions,
            "lesion_sensitivity": result.lesion_sensitivity,
            "lesion_ppv": result.lesion_ppv,
            "lesion_f1": result.lesion_f1,
            "false_positive_lesions": result.n_fp_lesions,
            "dice": result.dice,
            "lesions_baseline_ml": summary["lesions_baseline"]["volume_mm3"] / 1000,
            "lesions_followup_ml": summary["lesions_followup"]["volume_mm3"] / 1000,
            "warnings": summary["warnings"],
            "seconds": summary["timings_s"]["total"],
            "timings_s": summary["timings_s"],
            "output": str(output),
        }
    print(json.dumps(reports, indent=2))


if __name__ == "__main__":
    main()
