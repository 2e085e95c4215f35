"""The held-out checks of a model that the real LIT pair (benchmarks/lit_longitudinal.py) does not cover.

1. **All lesions on a real scan it never saw**: LIT cross-sectional patient 26 (skull-stripped, 1 mm MNI),
   fed as (x, x) through ``msnewlesion predict --no-preprocess``; Dice of ``lesions_baseline`` and
   ``lesions_followup`` against the consensus mask, and their volumes.
2. **The built-in example pair resliced to 0.5×0.5×6 mm** (a common 2D FLAIR): each time point blurred by a
   6 mm slice profile along z and sampled on a 0.5×0.5×6 mm grid; ``msnewlesion predict`` (default
   settings, ``--skull-strip none``: the example is stripped); its new-lesion mask brought back onto the
   example's 1 mm grid (nearest neighbour) and scored against the example's 6 known new lesions; plus the
   all-lesion volumes of the unchanged example.
3. **The synthetic held-out set**: 8 pairs made from patient 26 with the lesion shapes of patients 17–30
   (seeds 9000–9007, as examples/demo's test set), full predict, lesion-wise F1; and the same 8 pairs made
   with ``--acquisition`` (each time point its own simulated acquisition).

    python benchmarks/model_checks.py [--model coactseg-lit] [--work /tmp/checks] [--skip synthetic]

Run by hand; the numbers measured are in docs/performance.md and the model's README. Synthetic pairs are
kept in ``--work`` and reused by later runs.
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
LIT = ROOT / "tests" / "data" / "lit"


def run(command: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "msnewlesion", *command], check=True)


def predict(baseline: Path, followup: Path, output: Path, model: str | None, extra: list[str]) -> dict:
    command = ["predict", str(baseline), str(followup), "-o", str(output), "--quiet", "--overwrite", *extra]
    run(command + (["--model", model] if model else []))
    return json.loads((output / "summary.json").read_text())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0


def all_lesions_on_patient26(work: Path, model: str | None) -> dict:
    from msnewlesion.io import load_mask

    scan = LIT / "cross_sectional" / "patient26"
    summary = predict(scan / "flair.nii.gz", scan / "flair.nii.gz", work / "patient26", model, ["--no-preprocess"])
    truth = load_mask(scan / "lesions.nii.gz").data.astype(bool)
    result = {"consensus_ml": round(float(truth.sum()) / 1000, 2)}
    for key in ("lesions_baseline", "lesions_followup"):
        predicted = load_mask(work / "patient26" / f"{key}.nii.gz").data.astype(bool)
        result[key] = {"dice": round(dice(predicted, truth), 4), "ml": round(float(predicted.sum()) / 1000, 2)}
    result["new_lesions"] = summary["new_lesions"]["count"]
    result["warnings"] = summary["warnings"]
    return result


def reslice(volume, spacing: tuple[float, float, float], slice_mm: float, *, mask: bool = False):
    """The volume as a 2D acquisition would record it: a Gaussian slice profile of ``slice_mm`` along z."""
    from msnewlesion.io import Volume
    from msnewlesion.preprocess.geometry import Grid, common_grid, fov_corners, resample

    data = volume.data.astype(np.float32)
    if not mask:
        sigma_z = np.sqrt(max(slice_mm**2 - volume.spacing[2] ** 2, 0.0)) / 2.3548 / volume.spacing[2]
        data = ndimage.gaussian_filter1d(data, sigma_z, axis=2, mode="constant")
    grid: Grid = common_grid(
        fov_corners(volume.shape, volume.affine), orientation="RAS", spacing=spacing, anchor=volume.affine[:3, 3]
    )
    resliced = resample(volume.data.astype(bool) if mask else data, volume.affine, grid, order=0 if mask else 1)
    return Volume(resliced, grid.affine)


def example_resliced(work: Path, model: str | None) -> dict:
    from msnewlesion.demo import example_pair
    from msnewlesion.io import load_mask, load_volume, save_volume
    from msnewlesion.metrics import EvaluationOptions, evaluate_case
    from msnewlesion.preprocess.geometry import Grid, resample

    pair = example_pair()
    folder = work / "example-6mm"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for which in ("baseline", "followup"):
        volume = load_volume(getattr(pair, which))
        paths[which] = save_volume(reslice(volume, (0.5, 0.5, 6.0), 6.0), folder / f"{which}.nii.gz")
    summary = predict(paths["baseline"], paths["followup"], folder / "prediction", model, ["--skull-strip", "none"])
    reference = load_mask(pair.new_lesions)
    predicted = load_mask(folder / "prediction" / "new_lesions.nii.gz")
    on_reference = resample(predicted.data, predicted.affine, Grid(reference.shape, reference.affine), order=0)
    result = evaluate_case(on_reference, reference.data, reference.spacing, EvaluationOptions(), case="example-6mm")
    plain = predict(pair.baseline, pair.followup, work / "example", model, ["--skull-strip", "none"])
    return {
        "resliced": {
            "new_lesions_found": f"{result.n_detected_ref_lesions} of {result.n_ref_lesions}",
            "predicted_new_lesions": summary["new_lesions"]["count"],
            "false_positive_lesions": result.n_fp_lesions,
            "lesion_f1": round(result.lesion_f1, 4),
            "lesions_baseline_ml": round(summary["lesions_baseline"]["volume_mm3"] / 1000, 2),
            "lesions_followup_ml": round(summary["lesions_followup"]["volume_mm3"] / 1000, 2),
            "warnings": summary["warnings"],
        },
        "example_1mm": {
            "predicted_new_lesions": plain["new_lesions"]["count"],
            "lesions_baseline_ml": round(plain["lesions_baseline"]["volume_mm3"] / 1000, 2),
            "lesions_baseline_pieces": plain["lesions_baseline"]["count"],
            "lesions_followup_ml": round(plain["lesions_followup"]["volume_mm3"] / 1000, 2),
            "lesions_followup_pieces": plain["lesions_followup"]["count"],
            "seconds": plain["timings_s"]["total"],
        },
    }


def synthetic_held_out(work: Path, model: str | None, acquisition: bool) -> dict:
    from msnewlesion.io import load_mask
    from msnewlesion.metrics import EvaluationOptions, evaluate_case

    name = "synth-test-acquisition" if acquisition else "synth-test"
    folder = work / name
    scan = LIT / "cross_sectional" / "patient26"
    if not (folder / "manifest.csv").is_file():
        library = []
        for mask in sorted((LIT / "lesion_masks").glob("patient*.nii.gz")):
            if int(mask.name[7:9]) >= 17:
                library += ["--library", str(mask)]
        command = ["synth", str(scan / "flair.nii.gz"), str(scan / "lesions.nii.gz"), *library, "-o", str(folder)]
        command += ["--subject", "test", "--pairs", "8", "--seed", "9000", "--mode", "both", "--quiet"]
        run(command + (["--acquisition"] if acquisition else []))
    detected = references = detected_pred = predictions = 0
    cases = []
    for pair in sorted(folder.glob("test-synth*")):
        output = work / f"{name}-predictions" / pair.name
        predict(pair / "baseline.nii.gz", pair / "followup.nii.gz", output, model, ["--skull-strip", "none"])
        reference = load_mask(pair / "new_lesions.nii.gz")
        predicted = load_mask(output / "new_lesions.nii.gz")
        result = evaluate_case(predicted.data, reference.data, reference.spacing, EvaluationOptions(), case=pair.name)
        cases.append({"case": pair.name, "f1": round(result.lesion_f1, 4), "dice": round(result.dice, 4),
                      "ref": result.n_ref_lesions, "pred": result.n_pred_lesions})  # fmt: skip
        detected += result.n_detected_ref_lesions
        references += result.n_ref_lesions
        detected_pred += result.n_detected_pred_lesions
        predictions += result.n_pred_lesions
    sensitivity = detected / references if references else float("nan")
    ppv = detected_pred / predictions if predictions else float("nan")
    return {
        "mean_lesion_f1": round(float(np.mean([c["f1"] for c in cases])), 4),
        "mean_dice": round(float(np.mean([c["dice"] for c in cases])), 4),
        "pooled_sensitivity": round(sensitivity, 4),
        "pooled_ppv": round(ppv, 4),
        "cases": cases,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a model (default: predict's default model)")
    parser.add_argument("--work", type=Path, default=None, help="where pairs and predictions go (kept)")
    parser.add_argument("--skip", nargs="*", default=[], choices=("patient26", "example", "synthetic"))
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="model-checks-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"model": args.model or "predict's default", "work": str(work)}
    if "patient26" not in args.skip:
        report["all_lesions_patient26"] = all_lesions_on_patient26(work, args.model)
    if "example" not in args.skip:
        report["example"] = example_resliced(work, args.model)
    if "synthetic" not in args.skip:
        report["synthetic_held_out"] = synthetic_held_out(work, args.model, acquisition=False)
        report["synthetic_held_out_acquisition"] = synthetic_held_out(work, args.model, acquisition=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
