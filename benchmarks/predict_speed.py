"""The network part of predict: default settings against --paper-mode, and the whole predict.

1. A brain-sized pair at 1 mm (the built-in example, preprocessed by msnewlesion and padded to
   160×192×160) runs through the sliding-window predictor with the default settings (80³ windows,
   overlap 0.5, Gaussian blending, brain-window skipping, automatic precision) and with the
   published procedure (80³ windows at stride 20, plain mean, fp32, plus the second (fu, fu, 0)
   pass), each in its own process so that its peak memory is its own. It prints the time of each,
   the speed ratio, the peak resident memory, and the Dice between the two new-lesion masks.
   Timings use the full-width network (width 16); the agreement needs a trained model, so it uses
   the built-in demo model.
2. The whole ``msnewlesion predict`` (QuickRigid registration, no skull stripping) on the example.
3. ``--engines``: the two inference engines in one process, on the same volume and settings (default,
   automatic precision): PyTorch against OpenVINO, for the full-width network and for the default model,
   best of 2 after a warm-up; and the agreement of their masks on the trained default model, in fp32
   and in the automatic precision.
4. ``--before CHECKOUT``: the whole default predict, before and after, in one run: the code of another
   checkout (``CHECKOUT/src``, e.g. ``git worktree add /tmp/speed-base 2b60a3f``) and this one, each in
   its own process and alternating, on the raw LIT pair (patient 01) and the built-in example pair:
   wall and CPU seconds, seconds per stage, and what changed: the registration's distance from the data
   set's expert transforms (mean and 95th percentile over its brain mask, mm), the Dice of the brain
   masks and of the lesion masks (with the lesion counts).

    python benchmarks/predict_speed.py             # everything (paper mode takes minutes on 2 cores)
    python benchmarks/predict_speed.py --skip-paper
    python benchmarks/predict_speed.py --engines   # only the engine comparison
    python benchmarks/predict_speed.py --before /tmp/speed-base [--rounds 2] [--pairs lit]

Run by hand; the numbers measured are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (160, 192, 160)


def prepared_pair(folder: Path) -> Path:
    """The example pair preprocessed (halfway space, 1 mm, z-score), padded to SHAPE, saved as .npz."""
    from msnewlesion.demo import example_pair
    from msnewlesion.preprocess import PreprocessOptions, preprocess_pair

    pair = example_pair()
    prepared = preprocess_pair(pair.baseline, pair.followup, PreprocessOptions(skull_strip="none"))
    arrays = {}
    for name, volume in (
        ("baseline", prepared.baseline),
        ("followup", prepared.followup),
        ("brain", prepared.brain_mask),
    ):
        data = volume.data
        padding = [((t - s) // 2, t - s - (t - s) // 2) for s, t in zip(data.shape, SHAPE, strict=True)]
        arrays[name] = np.pad(data, [(max(a, 0), max(b, 0)) for a, b in padding])[tuple(slice(0, t) for t in SHAPE)]
    path = folder / "pair.npz"
    np.savez(path, **arrays)
    return path


def run_mode(pair: Path, mode: str, model: str, output: Path) -> None:
    """Child process: one mode, one network; prints a JSON line."""
    import torch

    from msnewlesion.inference import HeadProbabilities, SlidingWindowOptions, sliding_window_predict
    from msnewlesion.model import CoactSeg, ModelConfig
    from msnewlesion.predict import PAPER_WINDOW_OPTIONS, open_model

    arrays = np.load(pair)
    if model == "full-random":
        torch.manual_seed(0)
        network = CoactSeg(ModelConfig(width=16)).eval()
    else:
        network = open_model(model)[0].network
    options = PAPER_WINDOW_OPTIONS if mode == "paper" else SlidingWindowOptions(patch_size=(80, 80, 80))
    # oneDNN builds its kernels on the first call of each shape: time that apart
    started = time.perf_counter()
    sliding_window_predict(
        network, arrays["baseline"][:80, :80, :80], arrays["followup"][:80, :80, :80], options=options
    )
    warm_up = time.perf_counter() - started
    started = time.perf_counter()
    maps = sliding_window_predict(
        network, arrays["baseline"], arrays["followup"], options=options, brain_mask=arrays["brain"]
    )
    if mode == "paper":
        second = sliding_window_predict(network, arrays["followup"], None, options=options, brain_mask=arrays["brain"])
        maps = HeadProbabilities(maps.baseline, second.followup, maps.new)
    seconds = time.perf_counter() - started
    np.save(output, maps.new > 0.5)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB → MB on Linux
    print(json.dumps({"mode": mode, "model": model, "seconds": seconds, "warm_up": warm_up, "peak_mb": peak}))


def child(pair: Path, mode: str, model: str, folder: Path) -> dict:
    output = folder / f"{mode}-{model}.npy"
    completed = subprocess.run(
        [sys.executable, __file__, "--child", str(pair), mode, model, str(output)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["mask"] = np.load(output)
    return result


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def compare_engines(pair: Path) -> None:
    """PyTorch against OpenVINO in this one process: network time and the agreement of the masks."""
    import torch

    from msnewlesion.hub import DEFAULT_MODEL
    from msnewlesion.inference import SlidingWindowOptions, sliding_window_predict
    from msnewlesion.model import CoactSeg, ModelConfig
    from msnewlesion.predict import open_model

    arrays = np.load(pair)
    torch.manual_seed(0)
    networks = {
        "full-random": CoactSeg(ModelConfig(width=16)).eval(),
        DEFAULT_MODEL: open_model(DEFAULT_MODEL)[0].network,
    }
    for name, network in networks.items():
        seconds: dict[str, float] = {}
        for engine in ("torch", "openvino"):
            options = SlidingWindowOptions(patch_size=(80, 80, 80), engine=engine)
            sliding_window_predict(network, arrays["baseline"][:80, :80, :80], arrays["followup"][:80, :80, :80],
                                   options=options)  # fmt: skip  # warm-up: kernels, conversion, compilation
        for _ in range(2):
            for engine in ("torch", "openvino"):
                options = SlidingWindowOptions(patch_size=(80, 80, 80), engine=engine)
                started = time.perf_counter()
                sliding_window_predict(network, arrays["baseline"], arrays["followup"], options=options,
                                       brain_mask=arrays["brain"])  # fmt: skip
                elapsed = time.perf_counter() - started
                seconds[engine] = min(seconds.get(engine, elapsed), elapsed)
        print(
            f"{name:13s} network over {'×'.join(map(str, SHAPE))}: torch {seconds['torch']:.2f} s, openvino "
            f"{seconds['openvino']:.2f} s ({seconds['torch'] / seconds['openvino']:.2f}× faster)"
        )
    network = networks[DEFAULT_MODEL]
    for precision in ("fp32", "auto"):
        masks = {}
        for engine in ("torch", "openvino"):
            options = SlidingWindowOptions(patch_size=(80, 80, 80), engine=engine, precision=precision)
            maps = sliding_window_predict(network, arrays["baseline"], arrays["followup"], options=options,
                                          brain_mask=arrays["brain"])  # fmt: skip
            masks[engine] = {head: getattr(maps, head) > 0.5 for head in ("new", "baseline", "followup")}
        agreement = ", ".join(
            f"{head} {dice(masks['torch'][head], masks['openvino'][head]):.4f}"
            for head in ("new", "baseline", "followup")
        )
        print(f"{DEFAULT_MODEL}: Dice between the engines' masks, {precision}: {agreement}")


LIT_PAIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "lit" / "longitudinal" / "patient01"
STAGES = ("registration", "skull_strip", "reorient_and_resample", "bias_correction", "normalisation")


def whole_predict_child(baseline: str, followup: str, output: Path) -> None:
    """Child process: what ``msnewlesion predict BASE FU -o OUT`` does, keeping the brain mask as well."""
    from msnewlesion.hub import DEFAULT_MODEL
    from msnewlesion.predict import open_model, predict_pair, write_prediction

    model, provenance = open_model(DEFAULT_MODEL)
    prediction = predict_pair(baseline, followup, model, provenance=provenance, scratch_dir=output.parent)
    write_prediction(prediction, output, inputs=[Path(baseline), Path(followup)])
    brain = prediction.common.brain_mask
    np.savez_compressed(
        output / "brain.npz",
        brain=brain.data.astype(bool),
        affine=brain.affine,
        to_baseline=prediction.common.common_to_baseline,
    )


def _run_whole(source: Path, pair: tuple[str, str], output: Path) -> dict:
    code = f"import sys; from pathlib import Path; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
    code += f"import predict_speed; predict_speed.whole_predict_child({pair[0]!r}, {pair[1]!r}, Path({str(output)!r}))"
    environment = {**os.environ, "PYTHONPATH": str(source / "src")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=environment, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    summary = json.loads((output / "summary.json").read_text())
    return {"wall": wall, "cpu": cpu, "summary": summary, "folder": output}


def _expert_distances(summary: dict) -> tuple[float, float]:
    """Mean and 95th percentile (mm) of |ours − data set's| over the data set's brain mask."""
    from msnewlesion.io import load_mask
    from msnewlesion.preprocess.transforms import lps_to_ras, read_itk_affine

    def to_study(study: int) -> np.ndarray:  # common space of the data set → study's world
        return lps_to_ras(read_itk_affine(LIT_PAIR / f"study{study}_FLAIR_to_common_space.txt"))

    theirs = to_study(2) @ np.linalg.inv(to_study(1))
    ours = np.array(summary["preprocessing"]["registration"]["followup_from_baseline_ras"])
    brain = load_mask(LIT_PAIR / "brainmask.nii.gz")
    points = np.c_[np.argwhere(brain.data), np.ones(int(brain.data.sum()))].T
    points = to_study(1) @ brain.affine @ points  # on study 1's world
    distances = np.linalg.norm(((ours - theirs) @ points)[:3], axis=0)
    return float(distances.mean()), float(np.percentile(distances, 95))


def _brain_dice(old: Path, new: Path) -> float:
    """Dice of two brain masks on their common grids, the old one carried through the baseline's world."""
    from msnewlesion.preprocess.geometry import Grid, resample

    a, b = np.load(old / "brain.npz"), np.load(new / "brain.npz")
    grid = Grid(b["brain"].shape, b["affine"])
    carried = resample(a["brain"], a["affine"], grid, np.linalg.inv(a["to_baseline"]) @ b["to_baseline"], order=0)
    return dice(carried, b["brain"])


def _mask_dice(old: Path, new: Path, name: str) -> float:
    import nibabel as nib

    return dice(np.asarray(nib.load(str(old / name)).dataobj) > 0, np.asarray(nib.load(str(new / name)).dataobj) > 0)


def before_and_after(checkout: Path, rounds: int, pairs: list[str]) -> None:
    """The whole default predict with the code of ``checkout`` and with this one, alternating."""
    from msnewlesion.demo import example_pair

    example = example_pair()
    inputs = {
        "lit": (str(LIT_PAIR / "study1_FLAIR.nii.gz"), str(LIT_PAIR / "study2_FLAIR.nii.gz")),
        "example": (str(example.baseline), str(example.followup)),
    }
    sources = {"before": checkout.resolve(), "after": Path(__file__).resolve().parents[1]}
    folder = Path(tempfile.mkdtemp(prefix="predict-before-after-"))
    threads = os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "default (all cores)")
    print(f"ITK threads {threads}; load average {os.getloadavg()[0]:.1f}; outputs in {folder}")
    for pair in pairs:
        runs: dict[str, list[dict]] = {"before": [], "after": []}
        for index in range(rounds):
            order = ("before", "after") if index % 2 == 0 else ("after", "before")
            for which in order:
                output = folder / f"{pair}-{which}-{index}"
                runs[which].append(_run_whole(sources[which], inputs[pair], output))
                result = runs[which][-1]
                print(f"{pair} {which} round {index + 1}: {result['wall']:.1f} s wall, {result['cpu']:.1f} s CPU")
        print(f"\n{pair}: median of {rounds}, seconds")
        print("| run | wall | CPU | " + " | ".join(STAGES) + " | network | map back | write |")
        print("|---|" + "---|" * (len(STAGES) + 5))
        medians = {}
        for which, results in runs.items():
            timings = [r["summary"]["timings_s"] for r in results]
            row = [float(np.median([r["wall"] for r in results])), float(np.median([r["cpu"] for r in results]))]
            row += [float(np.median([t["preprocess_steps"][stage] for t in timings])) for stage in STAGES]
            row += [float(np.median([t[key] for t in timings])) for key in ("network", "map_back", "write")]
            medians[which] = row
            print(f"| {which} | " + " | ".join(f"{v:.1f}" for v in row) + " |")
        print(
            f"ratio before/after: wall {medians['before'][0] / medians['after'][0]:.2f}, "
            f"CPU {medians['before'][1] / medians['after'][1]:.2f}"
        )
        old, new = runs["before"][0], runs["after"][0]
        if pair == "lit":
            for which, result in (("before", old), ("after", new)):
                mean, p95 = _expert_distances(result["summary"])
                print(
                    f"registration {which} vs the expert transforms: mean {mean:.3f} mm, 95th percentile {p95:.3f} mm"
                )
        print(f"brain mask Dice before/after: {_brain_dice(old['folder'], new['folder']):.4f}")
        for name, key in (
            ("new_lesions.nii.gz", "new_lesions"),
            ("lesions_baseline.nii.gz", "lesions_baseline"),
            ("lesions_followup.nii.gz", "lesions_followup"),
        ):
            counts = [r["summary"][key]["count"] for r in (old, new)]
            print(
                f"{name}: Dice {_mask_dice(old['folder'], new['folder'], name):.4f}, lesions before {counts[0]}, "
                f"after {counts[1]}"
            )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        run_mode(Path(sys.argv[2]), sys.argv[3], sys.argv[4], Path(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-paper", action="store_true", help="only the default settings")
    parser.add_argument("--engines", action="store_true", help="only the comparison of the engines")
    parser.add_argument("--before", type=Path, help="a checkout of the code to compare the whole predict with")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each code per pair (with --before)")
    parser.add_argument("--pairs", nargs="+", default=["lit", "example"], choices=["lit", "example"])
    args = parser.parse_args()
    if args.before is not None:
        before_and_after(args.before, args.rounds, args.pairs)
        return
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    folder = Path(tempfile.mkdtemp(prefix="predict-speed-"))
    pair = prepared_pair(folder)
    if args.engines:
        compare_engines(pair)
        return
    modes = ["default"] if args.skip_paper else ["default", "paper"]
    for model in ("full-random", "demo"):
        results = {mode: child(pair, mode, model, folder) for mode in modes}
        for mode, result in results.items():
            print(
                f"{model:11s} {mode:7s}: network {result['seconds']:7.1f} s (after a {result['warm_up']:.1f} s first "
                f"call), peak memory {result['peak_mb']:.0f} MB"
            )
        if "paper" in results:
            ratio = results["paper"]["seconds"] / results["default"]["seconds"]
            agreement = dice(results["default"]["mask"], results["paper"]["mask"])
            print(f"{model:11s} speed ratio paper/default {ratio:.1f}×, Dice between new-lesion masks {agreement:.3f}")
    # precision: the default (automatic: bf16 where the CPU has it) against fp32, on the trained model
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import numpy as np, time;"
                "from msnewlesion.inference import SlidingWindowOptions, sliding_window_predict;"
                "from msnewlesion.predict import open_model;"
                f"a = np.load('{pair}'); net = open_model('demo')[0].network;"
                "out = {};"
                "[out.__setitem__(p, sliding_window_predict(net, a['baseline'], a['followup'], brain_mask=a['brain'],"
                " options=SlidingWindowOptions(precision=p)).new > 0.5) for p in ('fp32', 'auto')];"
                "d = 2 * (out['fp32'] & out['auto']).sum() / max(out['fp32'].sum() + out['auto'].sum(), 1);"
                "print(f'demo: Dice between fp32 and automatic-precision new-lesion masks {d:.4f}')"
            ),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    print(completed.stdout.strip())
    # the whole predict on the example pair
    from msnewlesion.demo import example_pair

    example = example_pair()
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "msnewlesion",
            "predict",
            str(example.baseline),
            str(example.followup),
            "-o",
            str(folder / "whole"),
            "--skull-strip",
            "none",
            "--transform",
            "QuickRigid",
            "--quiet",
        ],
        check=True,
    )
    summary = json.loads((folder / "whole" / "summary.json").read_text())
    print(
        f"whole predict (QuickRigid, no skull stripping, 1 mm pair): {time.perf_counter() - started:.1f} s "
        f"wall, stages {summary['timings_s']}"
    )


if __name__ == "__main__":
    main()
