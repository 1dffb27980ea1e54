"""Memory and start-up costs, each measured in a fresh process (peak RSS is per process).

    python -m benchmarks.resources step            # peak RSS of one training step, per backend
    python -m benchmarks.resources numba-compile   # first use (compiling) vs warm cache
    python -m benchmarks.resources full-size DIR   # the real COCO training size: loading
                                                   # and training memory, time per epoch

``full-size`` writes a synthetic stand-in of the real training split into DIR (400,135
captions, 82,783 x 4096 float32 features: 1.36 GB; 5,000 validation images) unless it
is there already; delete it afterwards.
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

from backend import available_backends

FULL_IMAGES, FULL_CAPTIONS, FULL_VAL_IMAGES = 82_783, 400_135, 5_000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _child(args: list[str], env: dict | None = None) -> dict:
    """Run this module's hidden ``child`` command in a fresh process; its JSON result."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.resources", "child", *args],
                         capture_output=True, text=True, env={**os.environ, **(env or {})})
    if out.returncode:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ what children do

def child_step(backend: str) -> dict:
    from benchmarks.workload import Sizes, library_step, synthetic_data

    before = peak_rss_mb()
    step = library_step(backend, Sizes(), synthetic_data(Sizes()))
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    start = time.perf_counter()
    step()
    return {"rss_after_imports_mb": before, "peak_rss_mb": peak_rss_mb(),
            "first_step_s": first, "second_step_s": time.perf_counter() - start}


def child_load(folder: str) -> dict:
    from captioning import load_coco_data

    before = peak_rss_mb()
    start = time.perf_counter()
    data = load_coco_data(folder, pca_features=False)
    return {"rss_before_mb": before, "peak_rss_mb": peak_rss_mb(),
            "seconds": time.perf_counter() - start,
            "features_mb": data["train_features"].nbytes / 2**20}


def child_train(folder: str, backend: str, iterations: int) -> dict:
    from captioning import load_coco_data
    from captioning.model import CaptioningRNN
    from captioning.trainer import CaptioningTrainer

    data = load_coco_data(folder, pca_features=False)
    model = CaptioningRNN(data["word_to_idx"], input_dim=4096, wordvec_dim=256, hidden_dim=512,
                          cell_type="lstm", dtype=np.float32, backend=backend, seed=0)
    trainer = CaptioningTrainer(model, data, batch_size=128, num_epochs=1, verbose=False,
                                seed=0)
    draws = np.random.default_rng(0).integers(0, trainer.num_train, (iterations + 3, 128))
    for k in range(3):  # warm-up (Numba compiles)
        trainer.step(draws[k])
    trainer.losses()
    start = time.perf_counter()
    for k in range(3, iterations + 3):
        trainer.step(draws[k])
    trainer.losses()
    per_iteration = (time.perf_counter() - start) / iterations
    return {"peak_rss_mb": peak_rss_mb(), "seconds_per_iteration": per_iteration,
            "epoch_s": per_iteration * trainer.iterations_per_epoch,
            "iterations_per_epoch": trainer.iterations_per_epoch}


# ------------------------------------------------------------------ the stand-in

def write_full_size(folder: Path) -> None:
    """A COCO-layout folder with the real training split's sizes (random content)."""
    import h5py

    from captioning.data.layout import CAPTIONS_FILE, features_file

    if (folder / CAPTIONS_FILE).is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = ["<NULL>", "<START>", "<END>", "<UNK>"] + [f"w{i}" for i in range(4, 1004)]
    (folder / "coco2014_vocab.json").write_text(json.dumps(
        {"idx_to_word": words, "word_to_idx": {w: i for i, w in enumerate(words)}}))
    with h5py.File(folder / CAPTIONS_FILE, "w") as f:
        for split, captions, images in (("train", FULL_CAPTIONS, FULL_IMAGES),
                                        ("val", 5 * FULL_VAL_IMAGES, FULL_VAL_IMAGES)):
            rows = rng.integers(4, 1004, (captions, 17)).astype(np.int32)
            rows[:, 0], rows[:, 12], rows[:, 13:] = 1, 2, 0
            f[f"{split}_captions"] = rows
            f[f"{split}_image_idxs"] = rng.integers(0, images, captions).astype(np.int32)
    for split, images in (("train", FULL_IMAGES), ("val", FULL_VAL_IMAGES)):
        for pca, dim in ((False, 4096), (True, 512)):
            with h5py.File(folder / features_file(split, pca), "w") as f:
                ds = f.create_dataset("features", (images, dim), dtype=np.float32)
                for start in range(0, images, 8192):
                    n = min(8192, images - start)
                    ds[start : start + n] = rng.random((n, dim), dtype=np.float32)
        (folder / f"{split}2014_urls.txt").write_text(
            "".join(f"http://example/{i}.jpg\n" for i in range(images)))


# ------------------------------------------------------------------ commands

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("step")
    sub.add_parser("numba-compile")
    full = sub.add_parser("full-size")
    full.add_argument("folder", type=Path)
    full.add_argument("--iterations", type=int, default=30)
    child = sub.add_parser("child")
    child.add_argument("task")
    child.add_argument("rest", nargs="*")
    args = parser.parse_args(argv)
    cpu = [n for n, s in available_backends().items() if s.available and n != "cupy"]

    if args.what == "child":
        if args.task == "step":
            result = child_step(*args.rest)
        elif args.task == "load":
            result = child_load(*args.rest)
        else:
            result = child_train(args.rest[0], args.rest[1], int(args.rest[2]))
        print(json.dumps(result))
    elif args.what == "step":
        print("one float32 LSTM training step, N=128 T=16 D=4096 W=256 H=512 V=1004, "
              "fresh process each")
        for name in cpu:
            r = _child(["step", name])
            print(f"  {name:6s} peak RSS {r['peak_rss_mb']:6.0f} MB (after imports "
                  f"{r['rss_after_imports_mb']:.0f} MB); first step {r['first_step_s']:.2f} s, "
                  f"second {r['second_step_s']:.2f} s")
    elif args.what == "numba-compile":
        with tempfile.TemporaryDirectory() as cache:
            env = {"NUMBA_CACHE_DIR": cache}
            cold = _child(["step", "numba"], env)
            warm = _child(["step", "numba"], env)
        numpy_row = _child(["step", "numpy"])
        print("first training step in a fresh process (N=128 ... V=1004):")
        print(f"  numba, empty cache (compiles):  {cold['first_step_s']:.2f} s")
        print(f"  numba, warm cache (loads):      {warm['first_step_s']:.2f} s")
        print(f"  numpy (nothing to compile):     {numpy_row['first_step_s']:.2f} s")
        print(f"  compile cost ~ {cold['first_step_s'] - warm['first_step_s']:.2f} s; a "
              f"steady step takes {warm['second_step_s']:.2f} s")
    else:
        start = time.perf_counter()
        write_full_size(args.folder)
        print(f"stand-in ready in {args.folder} ({time.perf_counter() - start:.0f} s)")
        r = _child(["load", str(args.folder)])
        print(f"load_coco_data(pca_features=False): peak RSS {r['peak_rss_mb']:.0f} MB for "
              f"{r['features_mb']:.0f} MB of training features (before loading "
              f"{r['rss_before_mb']:.0f} MB), {r['seconds']:.1f} s")
        for name in cpu:
            r = _child(["train", str(args.folder), name, str(args.iterations)])
            print(f"training, {name}: peak RSS {r['peak_rss_mb']:.0f} MB; "
                  f"{r['seconds_per_iteration'] * 1e3:.0f} ms/iteration at batch 128, so one "
                  f"epoch ({r['iterations_per_epoch']} iterations) ~ {r['epoch_s'] / 60:.1f} "
                  f"min (from {args.iterations} iterations)")


if __name__ == "__main__":
    main()
