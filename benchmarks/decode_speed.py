"""Decoding speed on this CPU: captions per second for 1,000 images, 16 steps, float32,
D=4096, W=256, H=512, V=1004, every formulation in one run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.decode_speed

Rows: the exercise's batched greedy loop (the baseline), the library's greedy and beam
search (beam 3) on each available CPU backend, and PyTorch nn.LSTM greedy if installed.
"""

from __future__ import annotations

import argparse

from backend import available_backends
from benchmarks.workload import (
    DECODE_IMAGES,
    Sizes,
    decode_model,
    interleaved_medians,
    library_decode,
    textbook_greedy,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    sizes = Sizes()
    runs = {"textbook greedy loop": textbook_greedy(sizes)}
    for name, status in available_backends().items():
        if status.available and name != "cupy":
            runs[f"{name} greedy"] = library_decode(name, sizes, beam=1)
            runs[f"{name} beam 3"] = library_decode(name, sizes, beam=3)
    try:
        from benchmarks.torch_reference import torch_greedy

        runs["PyTorch nn.LSTM greedy"] = torch_greedy(sizes, decode_model("numpy", sizes)[1])
    except ImportError:
        print("PyTorch not installed: skipped (pip install -e '.[bench-peers]')")
    times = interleaved_medians(runs, repeats=args.repeats, warmup=2)
    base = times["textbook greedy loop"]
    print(f"decoding {DECODE_IMAGES} images x {sizes.T} steps, float32, H={sizes.H}, "
          f"V={sizes.V}; median of {args.repeats}, timed in turns")
    print(f"{'decoder':24s} {'s':>7s} {'captions/s':>11s} {'vs textbook':>12s}")
    for name, t in times.items():
        print(f"{name:24s} {t:7.3f} {DECODE_IMAGES / t:11.0f} {base / t:11.2f}x")


if __name__ == "__main__":
    main()
