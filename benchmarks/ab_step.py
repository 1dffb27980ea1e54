"""The library's training step (or decoding) from two source trees, timed in turns in
one run: did a change move its rate?

    git worktree add /tmp/before HEAD~1
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.ab_step /tmp/before . \\
        --backends numpy numba --repeats 15 [--work greedy|beam [--checkpoint RUN/best.npz]]

Each tree runs in a worker process of its own, importing its own code (its
``benchmarks.workload.library_step``, or ``library_decode`` of 1,000 images greedily or
with beam 3, at the benchmark's sizes), and the workers take
turns (A then B, then B then A, ...), with a short pause before each step, so machine
drift and the cost of going second fall on both alike. Prints the median ms per step of
each and the ratio B/A.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

_WORKER = """
import sys, time
from benchmarks.workload import Sizes, library_decode, library_step
backend, warmup, batch, work = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
checkpoint, max_length = sys.argv[5], int(sys.argv[6])
if work == "step":
    step = library_step(backend, Sizes(N=batch))
elif checkpoint:  # a trained model on its validation images: captions end as they do
    from captioning import load_coco_data
    from captioning.checkpoint import load_model
    from captioning.decoding import beam_decode, greedy_decode
    model = load_model(checkpoint, backend=backend)
    features = load_coco_data(pca_features=model.input_dim < 4096)["val_features"][:1000]
    if work == "greedy":
        step = lambda: greedy_decode(model, features, max_length)
    else:
        step = lambda: beam_decode(model, features, 3, max_length)
else:
    step = library_decode(backend, Sizes(), {"greedy": 1, "beam": 3}[work])
for _ in range(warmup):
    step()
print("ready", flush=True)
for line in sys.stdin:
    start = time.perf_counter()
    step()
    print(time.perf_counter() - start, flush=True)
"""


class Worker:
    """A process running one tree's step on request."""

    def __init__(self, tree: Path, backend: str, warmup: int, batch: int, work: str,
                 checkpoint: str = "", max_length: int = 16) -> None:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER, backend, str(warmup),
                                      str(batch), work, checkpoint, str(max_length)],
                                     cwd=tree, env=env, text=True, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the worker for {tree} ({backend}) did not start")

    def time_one(self) -> float:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tree_a", type=Path, help="the baseline source tree")
    parser.add_argument("tree_b", type=Path, help="the changed source tree")
    parser.add_argument("--backends", nargs="+", default=["numpy", "numba"])
    parser.add_argument("--repeats", type=int, default=15, help="timed steps of each")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128,
                        help="captions per step (the benchmark's other sizes stay)")
    parser.add_argument("--work", choices=["step", "greedy", "beam"], default="step",
                        help="what is timed: a training step, or decoding 1,000 images "
                        "greedily or with beam 3 (--batch is then unused)")
    parser.add_argument("--checkpoint", type=Path,
                        help="with --work greedy|beam: decode this trained model's first "
                        "1,000 validation images of the built-in dataset (captions that "
                        "end, as real ones do) instead of the benchmark's model")
    parser.add_argument("--max-length", type=int, default=16,
                        help="words per caption at most, with --checkpoint (default 16)")
    args = parser.parse_args(argv)
    for name in ("repeats", "batch", "max_length"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.checkpoint is not None:
        if args.work == "step":
            parser.error("--checkpoint is for --work greedy or beam")
        if not args.checkpoint.is_file():
            parser.error(f"--checkpoint {args.checkpoint}: no such file")
    what = (f"steps of {args.batch} captions each" if args.work == "step" else
            f"{args.work} decodings of 1,000 images"
            + (f" by {args.checkpoint}, {args.max_length} words at most"
               if args.checkpoint else ""))
    print(f"A = {args.tree_a.resolve()}, B = {args.tree_b.resolve()}; median of "
          f"{args.repeats} {what}, in turns")
    print(f"{'backend':8s} {'A ms':>10s} {'B ms':>10s} {'B/A':>6s}")
    for backend in args.backends:
        workers = [Worker(tree.resolve(), backend, args.warmup, args.batch, args.work,
                          str(args.checkpoint.resolve()) if args.checkpoint else "",
                          args.max_length)
                   for tree in (args.tree_a, args.tree_b)]
        times: list[list[float]] = [[], []]
        try:
            for round_ in range(args.repeats):
                for k in (0, 1) if round_ % 2 == 0 else (1, 0):  # the second of a turn
                    time.sleep(0.05)  # runs ~2% slower here, so the order alternates
                    times[k].append(workers[k].time_one())
        finally:
            for worker in workers:
                worker.close()
        a, b = (float(np.median(t)) for t in times)
        print(f"{backend:8s} {a * 1e3:10.1f} {b * 1e3:10.1f} {b / a:6.3f}")


if __name__ == "__main__":
    main()
