"""Train the CuPy backend on the CPU, over the test suite's stand-in for CuPy (its CUDA
kernels compiled by g++ and emulated, cuBLAS's products by NumPy with bfloat16 and TF32
rounding; tests/cupy_stand_in.py), in one precision: a check, where no GPU is, that a
change to the reduced-precision step leaves training where it was. A small LSTM (W=64,
H=128) on the first captions of the built-in dataset; prints the mean training loss of
the last 20 steps and the validation loss. About a minute per run on 2 cores.

    python -m benchmarks.standin_training --precision bf16 --seed 0
    python -m benchmarks.standin_training --tree /tmp/before --precision bf16 --seed 0

``--tree`` runs another source tree of this project (``git worktree add /tmp/before
REV``), so two commits can be compared side by side.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="bf16",
                        help="of the float32 products, as on a GPU (default bf16)")
    parser.add_argument("--seed", type=int, default=0, help="of the weights and batches")
    parser.add_argument("--captions", type=int, default=6000,
                        help="training captions taken from the dataset (default 6000)")
    parser.add_argument("--epochs", type=int, default=4, help="(default 4)")
    parser.add_argument("--tree", type=Path, default=None,
                        help="another source tree of this project to run (default: this one)")
    args = parser.parse_args(argv)
    if args.captions < 100 or args.epochs < 1:
        parser.error(f"--captions must be at least 100 (one batch) and --epochs at least 1; "
                     f"got {args.captions} and {args.epochs}")
    tree = (args.tree or Path(__file__).resolve().parents[1]).resolve()
    if not (tree / "tests" / "cupy_stand_in.py").exists():
        parser.error(f"--tree {tree} is not a source tree of this project with the CuPy "
                     "stand-in (tests/cupy_stand_in.py)")
    # That tree's package and stand-in, not this one's.
    for name in [m for m in sys.modules if m.split(".")[0] in ("captioning", "backend",
                                                                "kernels")]:
        del sys.modules[name]
    sys.path[:0] = [str(tree), str(tree / "tests")]
    stand_in = importlib.import_module("cupy_stand_in")
    captioning = importlib.import_module("captioning")
    data = importlib.import_module("captioning.data.default").load_coco_data(
        max_train=args.captions)
    with stand_in.cupy_backend_on_cpu() as backend, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (no CUDA graphs on the CPU)
        model = captioning.CaptioningRNN(
            data["word_to_idx"], input_dim=data["train_features"].shape[1], wordvec_dim=64,
            hidden_dim=128, cell_type="lstm", dtype=np.float32, backend=backend,
            seed=args.seed, precision=args.precision)
        trainer = captioning.CaptioningTrainer(
            model, data, batch_size=100, num_epochs=args.epochs, verbose=False,
            seed=args.seed, updater_config={"learning_rate": 5e-3}, validate=True,
            val_max_captions=2000)
        losses = trainer.train()
        print(f"{tree} {args.precision} seed {args.seed}: train loss "
              f"{np.mean(losses[-20:]):.4f}, validation loss {trainer.validation_loss():.4f}")


if __name__ == "__main__":
    main()
