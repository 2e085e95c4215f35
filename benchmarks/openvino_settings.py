"""OpenVINO's settings against PyTorch for one batch of 80³ windows of the full-width network.

Tries batches of 1, 2 and 4 windows with OpenVINO's latency hint, its throughput hint (for one window:
two streams fed asynchronously) and in fp32, next to PyTorch as ``--engine torch`` runs it (batch norms
folded, channels-last, autocast). Prints seconds per window, best of 3 after a warm-up. Run by hand on a
quiet machine; the numbers measured are in docs/performance.md.

    python benchmarks/openvino_settings.py [--width 16]
"""

from __future__ import annotations

import argparse
import time

import torch


def best_of(function, *arguments, repeats: int = 3) -> float:
    function(*arguments)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(*arguments)
        times.append(time.perf_counter() - start)
    return min(times)


def six_windows(queue, batch) -> None:
    for _ in range(6):
        queue.start_async({0: batch})
    queue.wait_all()


def main() -> None:
    import openvino as ov

    from msnewlesion.engines import _openvino_model, network_fingerprint, torch_runner
    from msnewlesion.inference import _HeadProbabilities
    from msnewlesion.model import CoactSeg, ModelConfig
    from msnewlesion.model.network import fold_batch_norm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    network = _HeadProbabilities(fold_batch_norm(CoactSeg(ModelConfig(width=args.width)).eval())).eval()
    threads = torch.get_num_threads()
    print(f"width {args.width}, {threads} threads, torch {torch.__version__}, openvino {ov.__version__}")
    core = ov.Core()
    for precision, autocast in (("bf16", torch.bfloat16), ("f32", None)):
        batch = torch.randn(2, 3, 80, 80, 80)
        run = torch_runner(network, torch.device("cpu"), autocast)
        with torch.inference_mode():
            print(f"PyTorch {precision}, batch 2: {best_of(run, batch) / 2:.3f} s per window")
        for size in (1, 2, 4):
            batch = torch.randn(size, 3, 80, 80, 80).numpy()
            model = _openvino_model(network, torch.zeros(size, 3, 80, 80, 80), network_fingerprint(network))
            model.reshape([size, 3, 80, 80, 80])
            common = {"INFERENCE_PRECISION_HINT": precision}
            latency = core.compile_model(model, "CPU", {**common, "PERFORMANCE_HINT": "LATENCY"})
            seconds = best_of(latency, batch) / size
            print(f"OpenVINO {precision}, batch {size}, latency hint: {seconds:.3f} s per window")
            if size == 1:
                throughput = core.compile_model(model, "CPU", {**common, "PERFORMANCE_HINT": "THROUGHPUT"})
                queue = ov.AsyncInferQueue(throughput, 2)

                seconds = best_of(six_windows, queue, batch, repeats=2) / 6
                print(f"OpenVINO {precision}, batch 1, throughput hint: {seconds:.3f} s per window")


if __name__ == "__main__":
    main()
