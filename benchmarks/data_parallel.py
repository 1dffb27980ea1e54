"""Data-parallel training steps on this machine: one process with two BLAS threads against
two MPI ranks with one each, the same global batch (the benchmark's step: N=128, T=16,
D=4096, H=512, float32, Adam), plus the flat gradient's size for the scaling model in
HISTORY.md (session 5).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.data_parallel

Each configuration runs in its own launch (``--worker``); rank 0 reports the median
step time after warm-up.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.workload import Sizes, synthetic_data
from captioning import CaptioningRNN, CaptioningTrainer
from captioning.training.data_parallel import MpiDataParallel, launched_ranks


def worker(backend: str, steps: int, warmup: int) -> None:
    sizes = Sizes()
    data = synthetic_data(sizes)
    parallel = MpiDataParallel() if launched_ranks() > 1 else None
    model = CaptioningRNN(data["word_to_idx"], input_dim=sizes.D, wordvec_dim=sizes.W,
                          hidden_dim=sizes.H, cell_type="lstm", dtype=np.float32,
                          backend=backend, seed=0)
    trainer = CaptioningTrainer(model, data, batch_size=sizes.N, verbose=False, seed=0,
                                data_parallel=parallel)
    batches = np.random.default_rng(1).integers(0, len(data["train_captions"]),
                                                (warmup + steps, sizes.N))
    times = []
    for k, batch in enumerate(batches):
        start = time.perf_counter()
        trainer.step(batch)
        if k >= warmup:
            times.append(time.perf_counter() - start)
    if parallel is None or parallel.is_root:
        gradient_bytes = sum(int(v.nbytes) for v in model.params.values())
        print(f"{float(np.median(times))} {gradient_bytes}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.backend, args.steps, args.warmup)
        return
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "benchmarks.data_parallel", "--worker", "--backend",
               args.backend, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    mpiexec = str(Path(sys.executable).with_name("mpiexec"))
    runs = {"1 process, 2 BLAS threads": (command, "2"),
            "2 MPI ranks, 1 BLAS thread each": ([mpiexec, "-n", "2", *command], "1")}
    print(f"one float32 LSTM training step, global batch {Sizes().N}, backend {args.backend}, "
          f"median of {args.steps}")
    for name, (argv_, threads) in runs.items():
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads,
               "NUMBA_NUM_THREADS": threads, "PYTHONPATH": str(root)}
        out = subprocess.run(argv_, env=env, cwd=root, capture_output=True, text=True,
                             timeout=600, check=True).stdout.split()
        seconds, gradient_bytes = float(out[0]), int(out[1])
        print(f"{name:32s} {seconds * 1e3:8.1f} ms/step {1 / seconds:6.2f} steps/s "
              f"{Sizes().N / seconds:7.0f} captions/s")
    print(f"flat gradient per Allreduce: {gradient_bytes / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
