"""Time each preprocessing step on the real LIT raw pair, and compare QuickRigid with Rigid.

The pair (tests/data/lit/longitudinal/patient01) is two raw FLAIRs on different oblique grids
(320×320×36 at 0.72×0.72×4 mm and 320×320×46 at 0.72×0.72×3 mm), with the data set's own affine
co-registration to a common space. For each registration type this measures:

* the registration alone, of whole heads (what the default, HD-BET, path does) and with a brain
  mask on the baseline (what ``--brain-mask`` does), with its agreement with the data set's
  transforms: mean displacement over the data set's brain mask (mm) and rotation (degrees);
* the whole pipeline (``preprocess_pair`` with the brain mask given, N4 on), the seconds of each step
  from its record, and the within-brain correlation of the two time points when the follow-up is
  placed by our transform and by the data set's (same grid, same mask, raw intensities, linear).

HD-BET itself is not timed: its weights cannot be downloaded here (about 2 min per scan on a CPU
without test-time mirroring, by its authors' account). Run by hand, one core count at a time:

    python benchmarks/preprocess_speed.py                      # ITK and torch on every core
    python benchmarks/preprocess_speed.py --threads 2 --repeats 3

``--threads`` must be set before antspyx starts, so this script sets it first thing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs of each measurement (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="ITK and torch threads (default: all cores)")
    parser.add_argument("--transforms", nargs="+", default=["QuickRigid", "Rigid"])
    return parser.parse_args()


ARGUMENTS = parse_arguments()
if ARGUMENTS.threads:
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(ARGUMENTS.threads)

import numpy as np  # noqa: E402  (after the thread count is set)

from msnewlesion.io import load_mask, load_volume, save_volume  # noqa: E402
from msnewlesion.preprocess import PreprocessOptions, preprocess_pair  # noqa: E402
from msnewlesion.preprocess.geometry import Grid, mean_displacement, resample, rotation_angle_degrees  # noqa: E402
from msnewlesion.preprocess.registration import register_rigid  # noqa: E402
from msnewlesion.preprocess.transforms import lps_to_ras, read_itk_affine  # noqa: E402

PAIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "lit" / "longitudinal" / "patient01"


def dataset_map(study: int) -> np.ndarray:
    return lps_to_ras(read_itk_affine(PAIR / f"study{study}_FLAIR_to_common_space.txt"))


def correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.corrcoef(a[mask], b[mask])[0, 1])


def main() -> None:
    study1 = load_volume(PAIR / "study1_FLAIR.nii.gz")
    study2 = load_volume(PAIR / "study2_FLAIR.nii.gz")
    brain = load_mask(PAIR / "brainmask.nii.gz")
    theirs = dataset_map(2) @ np.linalg.inv(dataset_map(1))
    points = (brain.affine[:3, :3] @ np.argwhere(brain.data).T).T + brain.affine[:3, 3]
    points = (dataset_map(1)[:3, :3] @ points.T).T + dataset_map(1)[:3, 3]
    on_study1 = resample(
        brain.data, brain.affine, Grid(study1.shape, study1.affine), np.linalg.inv(dataset_map(1)), order=0
    )
    threads = os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", f"all ({os.cpu_count()})")
    print(f"ITK threads: {threads}; load average before: {os.getloadavg()[0]:.1f}; repeats: {ARGUMENTS.repeats}")

    with tempfile.TemporaryDirectory() as work:
        mask_path = save_volume(study1.with_data(on_study1), Path(work) / "brain.nii.gz", dtype=np.uint8)

        print("\n| registration | mask | seconds | mean displacement vs data set (mm) | rotation vs data set (°) |")
        print("|---|---|---|---|---|")
        for transform in ARGUMENTS.transforms:
            for mask, label in ((None, "whole head"), (on_study1, "brain")):
                seconds, displacement, rotation = [], [], []
                for _ in range(ARGUMENTS.repeats):
                    started = time.perf_counter()
                    ours = register_rigid(
                        study1.data, study1.affine, study2.data, study2.affine, transform=transform, fixed_mask=mask
                    )
                    seconds.append(time.perf_counter() - started)
                    displacement.append(mean_displacement(ours, theirs, points))
                    rotation.append(rotation_angle_degrees(np.linalg.inv(theirs) @ ours))
                print(
                    f"| {transform} | {label} | {statistics.median(seconds):.1f} | "
                    f"{min(displacement):.2f}–{max(displacement):.2f} | {min(rotation):.2f}–{max(rotation):.2f} |"
                )

        print("\nWhole pipeline (brain mask given, N4 on, 1 mm), seconds per step (median):")
        rows = {}
        for transform in ARGUMENTS.transforms:
            runs = []
            for _ in range(ARGUMENTS.repeats):
                options = PreprocessOptions(brain_mask=mask_path, transform=transform)
                pair = preprocess_pair(study1, study2, options)
                runs.append(pair)
            steps = [step["step"] for step in runs[0].record["steps"]]
            rows[transform] = {
                step: statistics.median(run.record["steps"][i]["seconds"] for run in runs)
                for i, step in enumerate(steps)
            }
            rows[transform]["total"] = statistics.median(run.record["seconds_total"] for run in runs)
            pair = runs[-1]
            baseline = resample(study1.data, study1.affine, pair.grid, pair.common_to_baseline, order=1)
            ours_followup = resample(study2.data, study2.affine, pair.grid, pair.common_to_followup, order=1)
            theirs_followup = resample(study2.data, study2.affine, pair.grid, theirs @ pair.common_to_baseline, order=1)
            mask = pair.brain_mask.data
            rows[transform]["correlation ours / data set"] = (
                f"{correlation(baseline, ours_followup, mask):.4f} / {correlation(baseline, theirs_followup, mask):.4f}"
            )
        names = list(next(iter(rows.values())))
        print("\n| step | " + " | ".join(rows) + " |")
        print("|---|" + "---|" * len(rows))
        for name in names:
            cells = [
                value if isinstance(value, str) else f"{value:.1f}" for value in (row[name] for row in rows.values())
            ]
            print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}", file=sys.stderr)


if __name__ == "__main__":
    main()
