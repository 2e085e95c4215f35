"""Time ``msnewlesion.metrics.evaluate_case`` against medpy on brain-sized masks, and check the values agree.

The references are real lesion masks (LIT, 182×218×182 at 1 mm, in tests/data/lit/lesion_masks);
each prediction is made from its reference the way models err: lesions dilated or eroded by a
voxel, some missed, the whole mask shifted by a voxel, and a few false-positive blobs added. The
same pairs are also upsampled to the MICCAI-21 grid (0.5×0.75×0.75 mm, 364×291×243 voxels).

medpy (GPL) is only a reference here; the package never imports it. medpy is timed computing
what the paper's code computed plus ASSD (dc, jc, hd95, asd, assd); ours also does the
lesion-wise detection in the same time. Run by hand:

    python benchmarks/evaluate_speed.py            # both grids, 4 cases each
    python benchmarks/evaluate_speed.py --cases 8 --grid mni

It prints, per grid, the time per case of each, the speed ratio, and the largest absolute
difference between medpy's value and ours for each metric.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from medpy.metric import binary as medpy_binary
from scipy import ndimage

from msnewlesion.metrics import EvaluationOptions, evaluate_case

MASKS = Path(__file__).resolve().parents[1] / "tests" / "data" / "lit" / "lesion_masks"
METRICS = ("dice", "jaccard", "hd95", "asd", "assd")


def realistic_prediction(reference: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A prediction with the errors a model makes: wrong borders, missed lesions, a shift, false positives."""
    labels, count = ndimage.label(reference, structure=np.ones((3, 3, 3)))
    keep = rng.random(count + 1) > 0.2  # miss a fifth of the lesions
    keep[0] = False
    prediction = keep[labels]
    grow = rng.random(count + 1) < 0.5
    grow[0] = False
    dilated = ndimage.binary_dilation(prediction)
    prediction = np.where(grow[ndimage.label(dilated, structure=np.ones((3, 3, 3)))[0]], dilated, prediction)
    prediction = np.roll(prediction, shift=int(rng.integers(-1, 2)), axis=int(rng.integers(0, 3)))
    brain = np.argwhere(ndimage.binary_dilation(reference, iterations=8))
    for centre in brain[rng.choice(len(brain), size=5, replace=False)]:
        radius = rng.uniform(1.0, 3.0)
        lo = np.maximum(centre - 4, 0)
        hi = np.minimum(centre + 5, reference.shape)
        grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        ball = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2
        prediction[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] |= ball
    return prediction


def medpy_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    return {
        "dice": medpy_binary.dc(prediction, reference),
        "jaccard": medpy_binary.jc(prediction, reference),
        "hd95": medpy_binary.hd95(prediction, reference, voxelspacing=spacing),
        "asd": medpy_binary.asd(prediction, reference, voxelspacing=spacing),
        "assd": medpy_binary.assd(prediction, reference, voxelspacing=spacing),
    }


def load_cases(count: int, grid: str, rng: np.random.Generator) -> list[tuple[str, np.ndarray, np.ndarray]]:
    cases = []
    for path in sorted(MASKS.glob("*.nii.gz"))[:count]:
        reference = np.asanyarray(nib.load(str(path)).dataobj) > 0
        prediction = realistic_prediction(reference, rng)
        if grid == "msseg":
            # 1 mm → 0.5×0.75×0.75 mm by nearest neighbour: the same lesions on the MICCAI-21 grid.
            zoom = (2.0, 4.0 / 3.0, 4.0 / 3.0)
            reference = ndimage.zoom(reference, zoom, order=0)
            prediction = ndimage.zoom(prediction, zoom, order=0)
        cases.append((path.name.split(".")[0], prediction, reference))
    return cases


def run(grid: str, count: int, repeats: int, seed: int) -> None:
    spacing = (1.0, 1.0, 1.0) if grid == "mni" else (0.5, 0.75, 0.75)
    rng = np.random.default_rng(seed)
    cases = load_cases(count, grid, rng)
    shape = "×".join(str(s) for s in cases[0][2].shape)
    print(f"\n{grid}: {len(cases)} cases of {shape} voxels at {'×'.join(str(s) for s in spacing)} mm")
    print(f"{'case':<11}{'lesions ref/pred':>17}{'medpy s':>10}{'ours s':>9}{'ratio':>8}")
    largest = dict.fromkeys(METRICS, 0.0)
    ratios, medpy_times, our_times = [], [], []
    options = EvaluationOptions()
    for name, prediction, reference in cases:
        start = time.perf_counter()
        expected = medpy_metrics(prediction, reference, spacing)
        medpy_time = time.perf_counter() - start
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            result = evaluate_case(prediction, reference, spacing, options, case=name)
            timings.append(time.perf_counter() - start)
        our_time = min(timings)
        for metric in METRICS:
            largest[metric] = max(largest[metric], abs(getattr(result, metric) - expected[metric]))
        ratios.append(medpy_time / our_time)
        medpy_times.append(medpy_time)
        our_times.append(our_time)
        lesions = f"{result.n_ref_lesions}/{result.n_pred_lesions}"
        print(f"{name:<11}{lesions:>17}{medpy_time:>10.3f}{our_time:>9.3f}{medpy_time / our_time:>7.1f}×")
    print(
        f"median time per case: medpy {statistics.median(medpy_times):.3f} s, "
        f"ours {statistics.median(our_times):.3f} s; "
        f"speed ratio median {statistics.median(ratios):.1f}×, min {min(ratios):.1f}×"
    )
    print("largest |medpy − ours|: " + ", ".join(f"{metric} {largest[metric]:.2e}" for metric in METRICS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4, help="How many lesion masks to use per grid.")
    parser.add_argument("--grid", choices=("mni", "msseg", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=3, help="Our timing is the best of this many runs.")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    grids = ("mni", "msseg") if arguments.grid == "both" else (arguments.grid,)
    for grid in grids:
        run(grid, arguments.cases, arguments.repeats, arguments.seed)


if __name__ == "__main__":
    main()
