"""Training-step throughput on this CPU, every formulation in one run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.throughput [--repeats 7]

Prints captions per second and effective GFLOP/s (the model's matrix-product FLOPs, as
the exercise counts them, over the step's time) for each available CPU backend, the
textbook formulation, PyTorch (if installed; padded, every step of every caption, and
packed with pack_padded_sequence, the scored steps only, as the library computes) and
the bare matrix products of the library's step (its floor: it multiplies each word's
input projection once per vocabulary word, not at every position, and only the packed
positions), and the ratios between them.
"""

from __future__ import annotations

import argparse

from backend import available_backends
from benchmarks.workload import (
    Sizes,
    gemm_floor_step,
    interleaved_medians,
    library_step,
    synthetic_data,
    textbook_step,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per formulation")
    parser.add_argument("--cell", choices=["lstm"], default="lstm")
    args = parser.parse_args(argv)
    sizes = Sizes(cell=args.cell)
    data = synthetic_data(sizes)
    steps = {"GEMM floor": gemm_floor_step(sizes), "textbook": textbook_step(sizes, data)}
    for name, status in available_backends().items():
        if status.available and name != "cupy":
            steps[f"backend {name}"] = library_step(name, sizes, data)
    try:
        from benchmarks.torch_reference import torch_step

        steps["PyTorch nn.LSTM"] = torch_step(sizes, data)
        steps["PyTorch packed"] = torch_step(sizes, data, packed=True)
    except ImportError:
        print("PyTorch not installed: skipped (pip install -e '.[bench-peers]')")
    print(f"one float32 training step, N={sizes.N} T={sizes.T} D={sizes.D} W={sizes.W} "
          f"H={sizes.H} V={sizes.V}: {sizes.flops() / 1e9:.1f} GFLOP in the model's matrix "
          f"products ({sizes.library_flops() / 1e9:.1f} in the library's); "
          f"median of {args.repeats}, timed in turns, after warm-up")
    times = interleaved_medians(steps, repeats=args.repeats, warmup=4)
    base = times["textbook"]
    print(f"{'formulation':18s} {'ms/step':>8s} {'captions/s':>11s} {'GFLOP/s':>8s} "
          f"{'vs textbook':>11s} {'of floor':>9s}")
    for name, t in times.items():
        print(f"{name:18s} {t * 1e3:8.1f} {sizes.N / t:11.0f} {sizes.flops() / t / 1e9:8.1f} "
              f"{base / t:10.2f}x {times['GEMM floor'] / t:8.0%}")


if __name__ == "__main__":
    main()
