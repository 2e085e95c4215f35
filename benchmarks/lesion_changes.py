"""Lesion changes (new, enlarging, stable, shrinking, resolved) scored per class: synthetic pairs and the LIT pair.

``synthetic``: ``msnewlesion synth`` makes held-out pairs with every class from a scan and lesion shapes the
``demo`` model never saw (LIT patient 26 and the shapes of patients 17-30, as the demo's own held-out test in
examples/demo/build_demo.sh), each with its exact change map; ``msnewlesion predict`` (the default model,
``--skull-strip none``, otherwise predict's defaults) runs on each, and its ``lesion_changes.nii.gz`` is scored
lesion-wise per class against the truth (``msnewlesion evaluate --classes``'s rules). Prints a table: per class,
the reference and predicted lesions pooled over the pairs, sensitivity, PPV and F1 of the pooled counts.

``lit``: ``msnewlesion predict`` on the real raw LIT longitudinal pair (patient01; predict's defaults), its
change map taken onto the dataset's common grid (the dataset's transforms, nearest neighbour), and the counts
per class next to the dataset's change mask split into brightening and fading change lesions (mean intensity
rising or falling from study 1 to study 2, as benchmarks/lit_longitudinal.py does); the lesion-wise scores of
new-or-enlarging against the brightening changes, shrinking-or-resolved against the fading ones, and every
change against the whole mask.

    python benchmarks/lesion_changes.py synthetic [--pairs 5] [--seed 9100] [--work DIR]
    python benchmarks/lesion_changes.py lit [--data tests/data/lit/longitudinal/patient01]

Run by hand; the numbers measured are in docs/predict.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LIT = ROOT / "tests" / "data" / "lit"
CLASSES = ("new", "enlarging", "stable", "shrinking", "resolved")


def msnewlesion(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "msnewlesion", *args], check=True)


def pooled(results: list) -> dict[str, float]:
    n_ref = sum(r.n_ref_lesions for r in results)
    n_pred = sum(r.n_pred_lesions for r in results)
    found = sum(r.n_detected_ref_lesions for r in results)
    matched = sum(r.n_detected_pred_lesions for r in results)
    sensitivity = found / n_ref if n_ref else float("nan")
    ppv = matched / n_pred if n_pred else float("nan")
    f1 = 2 * sensitivity * ppv / (sensitivity + ppv) if n_ref and n_pred and sensitivity + ppv else 0.0
    return {"reference": n_ref, "predicted": n_pred, "found": found, "sensitivity": sensitivity, "ppv": ppv, "f1": f1}


def synthetic(args: argparse.Namespace) -> None:
    from msnewlesion.metrics import EvaluationOptions, evaluate_change_files, score_of

    work = args.work or Path(tempfile.mkdtemp(prefix="lesion-changes-"))
    scan = LIT / "cross_sectional" / "patient26"
    library = [f"--library={m}" for m in sorted((LIT / "lesion_masks").glob("patient*.nii.gz"))
               if int(m.name[7:9]) > 16]  # fmt: skip
    if not (work / "synth" / "manifest.csv").exists():
        msnewlesion(
            "synth", str(scan / "flair.nii.gz"), str(scan / "lesions.nii.gz"), *library, "-o", str(work / "synth"),
            "--subject", "test", "--pairs", str(args.pairs), "--seed", str(args.seed), "--removed", "2",
            "--added", "2", "--enlarged", "2", "--shrinking", "2", "--resolved", "2", "--quiet",
        )  # fmt: skip
    by_score: dict[str, list] = {}
    seconds = []
    pairs = sorted(p for p in (work / "synth").iterdir() if p.is_dir())
    if args.only:
        pairs = [p for p in pairs if p.name in args.only.split(",")]
    for pair in pairs:
        output = work / "predicted" / pair.name
        if not (output / "summary.json").exists():
            started = time.perf_counter()
            msnewlesion(
                "predict", str(pair / "baseline.nii.gz"), str(pair / "followup.nii.gz"), "-o", str(output),
                "--skull-strip", "none", "--quiet", "--overwrite", *args.predict_args.split(),
            )  # fmt: skip
            seconds.append(time.perf_counter() - started)
        results = evaluate_change_files(
            output / "lesion_changes.nii.gz", pair / "lesion_changes.nii.gz", EvaluationOptions(), case=pair.name
        )
        for result in results:
            by_score.setdefault(score_of(result), []).append(result)
        truth = json.loads((pair / "synth.json").read_text())["lesion_changes"]
        counts = json.loads((output / "summary.json").read_text())["lesion_changes"]["counts"]
        print(pair.name, "truth", truth, "predicted", counts, flush=True)
    report = {score: pooled(results) for score, results in by_score.items()}
    report["_seconds_per_predict"] = seconds  # type: ignore[assignment]
    print(json.dumps(report, indent=2))
    print("\n| class | reference lesions | predicted lesions | found | sensitivity | PPV | F1 |")
    print("|---|---|---|---|---|---|---|")
    for score in ("new_or_enlarging", *CLASSES):
        if score in report:
            r = report[score]
            print(f"| {score} | {r['reference']} | {r['predicted']} | {r['found']} | {r['sensitivity']:.2f} | "
                  f"{r['ppv']:.2f} | {r['f1']:.2f} |")  # fmt: skip
    print(f"\nwork folder: {work}")


def lit(args: argparse.Namespace) -> None:
    import ants
    import nibabel as nib
    from scipy import ndimage

    from msnewlesion.lesions import CHANGE_CODES, CHANGE_GROUPS
    from msnewlesion.metrics import EvaluationOptions, evaluate_case

    data = args.data
    work = args.work or Path(tempfile.mkdtemp(prefix="lesion-changes-lit-"))
    output = work / "prediction"
    if not (output / "summary.json").exists():
        started = time.perf_counter()
        msnewlesion(
            "predict", str(data / "study1_FLAIR.nii.gz"), str(data / "study2_FLAIR.nii.gz"), "-o", str(output),
            "--quiet", "--overwrite", *args.predict_args.split(),
        )  # fmt: skip
        print(f"predict: {time.perf_counter() - started:.1f} s", flush=True)
    summary = json.loads((output / "summary.json").read_text())

    common = ants.image_read(str(data / "gt.nii.gz"))
    to_common = {1: str(data / "study1_FLAIR_to_common_space.txt"), 2: str(data / "study2_FLAIR_to_common_space.txt")}
    brain = ants.image_read(str(data / "brainmask.nii.gz")).numpy() > 0
    on_common = {
        index: ants.apply_transforms(
            fixed=common, moving=ants.image_read(str(data / f"study{index}_FLAIR.nii.gz")),
            transformlist=[to_common[index]], interpolator="linear",
        ).numpy()
        for index in (1, 2)
    }  # fmt: skip
    scaled = {index: image / np.median(image[brain & (image > 0)]) for index, image in on_common.items()}
    change = nib.load(str(data / "gt.nii.gz"))
    change_mask = np.asarray(change.dataobj) > 0
    labels, count = ndimage.label(change_mask, np.ones((3, 3, 3)))
    rises = np.asarray(ndimage.mean(scaled[2] - scaled[1], labels, index=np.arange(1, count + 1)))
    brightening = np.isin(labels, 1 + np.flatnonzero(rises > 0))
    fading = change_mask & ~brightening
    spacing = tuple(float(s) for s in change.header.get_zooms()[:3])

    predicted = ants.apply_transforms(
        fixed=common, moving=ants.image_read(str(output / "lesion_changes.nii.gz")),
        transformlist=[to_common[2]], interpolator="nearestNeighbor",
    ).numpy().round().astype(np.uint8)  # fmt: skip
    in_brain = predicted * brain

    def codes(group: str) -> np.ndarray:
        return np.isin(in_brain, [CHANGE_CODES[name] for name in CHANGE_GROUPS[group]])

    options = EvaluationOptions()
    scores = {
        "new_or_enlarging vs brightening": evaluate_case(codes("new_or_enlarging"), brightening, spacing, options),
        "shrinking_or_resolved vs fading": evaluate_case(codes("shrinking_or_resolved"), fading, spacing, options),
        "changed vs the whole change mask": evaluate_case(codes("changed"), change_mask, spacing, options),
    }
    report = {
        "reference": {
            "change_lesions": int(count),
            "brightening": int(np.sum(rises > 0)),
            "fading": int(np.sum(rises <= 0)),
        },
        "predicted_counts": summary["lesion_changes"]["counts"],
        "predicted_new_lesions_head": summary["new_lesions"]["count"],
        "scores": {
            name: {
                "reference_lesions": r.n_ref_lesions,
                "predicted_lesions": r.n_pred_lesions,
                "found": r.n_detected_ref_lesions,
                "sensitivity": r.lesion_sensitivity,
                "ppv": r.lesion_ppv,
                "f1": r.lesion_f1,
                "false_positive_lesions": r.n_fp_lesions,
            }
            for name, r in scores.items()
        },
        "model": summary["model"]["name"],
        "seconds": summary["timings_s"]["total"],
        "output": str(output),
    }
    print(json.dumps(report, indent=2, default=float))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    synthetic_parser = sub.add_parser("synthetic", help="held-out synthetic pairs with every class")
    synthetic_parser.add_argument("--pairs", type=int, default=5)
    synthetic_parser.add_argument("--seed", type=int, default=9100)
    synthetic_parser.add_argument("--work", type=Path, default=None)
    synthetic_parser.add_argument("--predict-args", default="", help="extra predict options")
    synthetic_parser.add_argument("--only", default="", help="comma-separated pair folders (to run in parts)")
    lit_parser = sub.add_parser("lit", help="the real LIT longitudinal pair")
    lit_parser.add_argument("--data", type=Path, default=LIT / "longitudinal" / "patient01")
    lit_parser.add_argument("--work", type=Path, default=None)
    lit_parser.add_argument("--predict-args", default="", help="extra predict options")
    args = parser.parse_args()
    synthetic(args) if args.what == "synthetic" else lit(args)


if __name__ == "__main__":
    main()
