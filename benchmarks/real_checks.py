"""Every real check of a model, in one run: the numbers a model card reports (issue 19's scheme).

1. **All lesions on the held-out annotated scan of each site** (never trained on; used to choose the model):
   LIT patient 26 and MSLesSeg P39 (skull-stripped, MNI 1 mm: ``predict --skull-strip none``) and Tabriz 105911
   (a raw clinical 2D FLAIR with skull and 7.2 mm slices: default predict, HD-BET v1 and all). Each scan is fed
   as (x, x); ``lesions_baseline`` on the scan's own grid is scored against the expert mask: Dice, lesion-wise
   sensitivity, PPV, F1 and false-positive lesions (``msnewlesion evaluate``'s rules). Beside it, the
   **brightness rule**: voxels brighter than the brain's median + 2 robust SD (1.4826 × MAD), after a light
   smoothing (Gaussian, σ 0.5 mm), inside the brain mask eroded by 3 mm: a network that loses to it has not
   learnt MS lesions.
2. **False new lesions on real acquisitions**: the three raw unlabelled LIT scans
   (``lit/longitudinal_singles``) each fed against itself with default predict; the truth is zero.
3. **The real raw pair LIT patient01** (validation only): ``benchmarks/lit_longitudinal.py`` with predict's
   defaults (its brightening change lesions as the reference).
4. **The built-in example pair**, and the same resliced to 0.5 × 0.5 × 6 mm (``benchmarks/model_checks.py``).

    python benchmarks/real_checks.py --model coactseg-real [--data ../shared/data] [--skip example] [-o out.json]

Run by hand (about 10 minutes a model on 2 CPU cores); the numbers measured are in docs/performance.md and the
model cards. The brain mask of the Tabriz scan for the brightness rule is the one HD-BET v1 makes in predict's
preprocessing (``preprocess`` of the scan, taken back to its grid by nearest neighbour).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_checks import predict  # noqa: E402  (the same predict call as the other checks)

#: name, site, flair, lesion mask (relative to --data), already skull-stripped
HELD_OUT = (
    (
        "lit-p26",
        "LIT",
        "lit/cross_sectional/patient26/flair.nii.gz",
        "lit/cross_sectional/patient26/lesions.nii.gz",
        True,
    ),
    ("mslesseg-p39", "MSLesSeg", "mslesseg/P39_T1_FLAIR.nii.gz", "mslesseg/P39_T1_MASK.nii.gz", True),
    ("tabriz-105911", "Tabriz", "tabriz/105911_flair.nii.gz", "tabriz/105911_lesions.nii.gz", False),
)
UNLABELLED = (
    "lit/longitudinal_singles/patient04/study1_FLAIR.nii.gz",
    "lit/longitudinal_singles/patient09/study2_FLAIR.nii.gz",
    "lit/longitudinal_singles/patient20/study2_FLAIR.nii.gz",
)


def msnewlesion(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "msnewlesion", *args], check=True, capture_output=True, text=True)


def scores(predicted: np.ndarray, reference: np.ndarray, spacing: tuple[float, float, float], case: str) -> dict:
    from msnewlesion.metrics import EvaluationOptions, evaluate_case

    result = evaluate_case(predicted, reference, spacing, EvaluationOptions(), case=case)
    return {
        "dice": round(result.dice, 4),
        "lesion_sensitivity": round(result.lesion_sensitivity, 4),
        "lesion_ppv": round(result.lesion_ppv, 4) if np.isfinite(result.lesion_ppv) else None,
        "lesion_f1": round(result.lesion_f1, 4),
        "false_positive_lesions": result.n_fp_lesions,
        "reference_lesions": result.n_ref_lesions,
        "predicted_lesions": result.n_pred_lesions,
        "predicted_ml": round(float(predicted.sum()) * float(np.prod(spacing)) / 1000, 2),
    }


def held_out_scan(work: Path, data: Path, model: str | None, entry: tuple) -> dict:
    from msnewlesion.io import load_mask, load_volume
    from msnewlesion.preprocess.geometry import Grid, resample

    name, site, flair, lesions, stripped = entry
    output = work / name
    extra = ["--skull-strip", "none"] if stripped else []
    summary = predict(data / flair, data / flair, output, model, extra)
    truth = load_mask(data / lesions, threshold=0.5)
    reference = truth.data > 0
    predicted = load_mask(output / "lesions_baseline.nii.gz").data > 0
    image = load_volume(data / flair)
    if stripped:
        brain = image.data > 0
    else:
        prep = work / f"{name}-prep"
        if not (prep / "brain_mask.nii.gz").is_file():
            msnewlesion("preprocess", str(data / flair), str(data / flair), "-o", str(prep), "--space", "none",
                        "--normalization", "none", "--no-bias-correction", "--quiet", "--overwrite")  # fmt: skip
        mask = load_mask(prep / "brain_mask.nii.gz")
        brain = resample(mask.data > 0, mask.affine, Grid(image.shape, image.affine), order=0) > 0
    from msnewlesion.metrics.baseline import brightness_rule

    rule = brightness_rule(image.data, brain, image.spacing)
    return {
        "site": site,
        "reference_ml": round(float(reference.sum()) * float(np.prod(image.spacing)) / 1000, 2),
        "model": scores(predicted, reference, image.spacing, name),
        "brightness_rule": scores(rule, reference, image.spacing, name),
        "predicted_new_lesions_against_itself": summary["new_lesions"]["count"],
    }


def unlabelled_against_itself(work: Path, data: Path, model: str | None) -> dict:
    result = {}
    for relative in UNLABELLED:
        scan = data / relative
        name = scan.parent.name
        summary = predict(scan, scan, work / f"self-{name}", model, [])
        result[name] = {"predicted_new_lesions": summary["new_lesions"]["count"], "warnings": summary["warnings"]}
    return result


def patient01(data: Path, model: str | None) -> dict:
    command = [sys.executable, str(ROOT / "benchmarks" / "lit_longitudinal.py"), "--brain-mask", "default"]
    command += ["--data", str(data / "lit" / "longitudinal" / "patient01")]
    command += ["--model", model] if model else []
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    report = json.loads(out[out.index("{") :])["default"]
    keep = ("model", "reference_lesions_after_size_rule", "predicted_new_lesions", "lesion_sensitivity", "lesion_ppv",
            "lesion_f1", "false_positive_lesions", "dice", "lesions_baseline_ml", "lesions_followup_ml")  # fmt: skip
    return {key: report[key] for key in keep}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a model (default: predict's default model)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="the real data folder")
    parser.add_argument("--work", type=Path, default=None, help="where predictions go (kept)")
    parser.add_argument("--skip", nargs="*", default=[], choices=("held-out", "unlabelled", "patient01", "example"))
    parser.add_argument("-o", "--output", type=Path, default=None, help="also write the report here (JSON)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="real-checks-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"model": args.model or "predict's default"}
    if "held-out" not in args.skip:
        report["held_out_all_lesions"] = {
            entry[0]: held_out_scan(work, args.data, args.model, entry) for entry in HELD_OUT
        }
    if "unlabelled" not in args.skip:
        report["unlabelled_against_itself"] = unlabelled_against_itself(work, args.data, args.model)
    if "patient01" not in args.skip:
        report["patient01"] = patient01(args.data, args.model)
    if "example" not in args.skip:
        from model_checks import example_resliced

        report["example"] = example_resliced(work, args.model)
    text = json.dumps(report, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
