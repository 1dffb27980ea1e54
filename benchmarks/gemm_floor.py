"""The training step's matrix products alone, per precision: the floor the products set.

    python -m benchmarks.gemm_floor [--batch 128 1024] [--device cuda] [--repeats 20]

Runs every product of the library's packed step (``Sizes.gemms``: the per-step
recurrent products T times, the rest once; untransposed operands, so a lower bound
on what the step's own transposed calls can reach) with PyTorch on the device, in fp32
(TF32 off), tf32 (float32 operands, TF32 allowed) and bf16 (bfloat16 operands, as a
step that stored its activations and a weight copy in bfloat16 would multiply), and
prints per batch and precision the products' time per step and their TFLOP/s. On a GPU
the products are recorded once as a CUDA graph and replayed, as the library's step is,
so launch costs do not count. The difference between the tf32 and bf16 rows is what
storing the products' operands in bfloat16 could save at most: cuBLAS computes "bf16"
products of float32 operands with TF32 kernels, so the library's bf16 twin stores the
LSTM step's big operands in bfloat16 (kernels/cupy_backend.py).
"""

from __future__ import annotations

import argparse
import time

from benchmarks.workload import Sizes

PRECISIONS = ("fp32", "tf32", "bf16")


def products_time(sizes: Sizes, precision: str, device: str, repeats: int) -> float:
    """Median seconds of one step's products (``sizes.gemms(per_position=False)``) in
    ``precision`` on ``device``."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    operands = [(torch.randn(m, k, device=device, dtype=dtype, generator=gen),
                 torch.randn(k, n, device=device, dtype=dtype, generator=gen), count)
                for m, n, k, count in sizes.gemms(per_position=False)]

    def products() -> None:
        for a, b, count in operands:
            for _ in range(count):
                torch.matmul(a, b)

    run = products
    if device.startswith("cuda"):
        products()  # cuBLAS picks and loads its kernels outside the recording
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            products()
        run = graph.replay
    times = []
    for _ in range(repeats + 3):  # the first three warm up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times = sorted(times[3:])
    return times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 1024],
                        help="captions per step (the other sizes are the benchmark's)")
    parser.add_argument("--device", default="cuda", help="a torch device (default: cuda)")
    parser.add_argument("--repeats", type=int, default=20, help="timed replays (median)")
    args = parser.parse_args()
    if any(n < 16 for n in args.batch):
        parser.error(f"--batch {args.batch}: each must be at least 16 (one row per step)")
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: expected at least 1")
    print("| N | precision | products ms per step | TFLOP/s (library's count) |")
    print("|---|---|---|---|")
    for n in args.batch:
        sizes = Sizes(N=n)
        for precision in PRECISIONS:
            seconds = products_time(sizes, precision, args.device, args.repeats)
            print(f"| {n} | {precision} | {seconds * 1e3:.3f} | "
                  f"{sizes.library_flops() / seconds / 1e12:.1f} |", flush=True)


if __name__ == "__main__":
    main()
