"""Where a self-critical step's time goes: sampling, CIDEr-D rewards, the baseline, the
loss and gradients, the update, on the built-in dataset at 128 images x K=5 samples.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.scst_step \
        [--init RUN] [--backend numba] [--baseline mean] [--images 128] [--samples 5]

With --init, the model of a cross-entropy run (its captions are what training samples);
without, the default model freshly initialised (random captions run to full length, so
rewards cost the most). Each part is timed in a real step's order on that step's own
arrays, then whole steps; prints one table of medians and the step's captions per second.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from backend import get_backend
from captioning.checkpoint import load_model
from captioning.cli.common import resolve_checkpoint
from captioning.data.default import default_data_dir
from captioning.data.reader import read_coco_folder
from captioning.decoding import policy_sample
from captioning.model import CaptioningRNN
from captioning.trainer import CaptioningTrainer
from captioning.training.self_critical import SelfCritical


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", help="a run folder or checkpoint (default: a fresh model)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--baseline", choices=["mean", "greedy"], default="mean")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    be = get_backend(args.backend)
    data = read_coco_folder(default_data_dir(), pca_features=False)
    if args.init:
        model = load_model(resolve_checkpoint(args.init)[0], be)
    else:
        model = CaptioningRNN(data["word_to_idx"], input_dim=4096, wordvec_dim=256,
                              hidden_dim=512, cell_type="lstm", dtype=np.float32, backend=be,
                              seed=0)
    trainer = CaptioningTrainer(model, data, batch_size=args.images, verbose=False, seed=0,
                                updater_config={"learning_rate": 5e-5},
                                self_critical=SelfCritical(args.samples, args.baseline))
    step = trainer.self_critical
    k, rows = args.samples, args.images * args.samples
    rng = np.random.default_rng(0)
    parts: dict[str, list[float]] = {}

    def timed(name: str, fn, *fn_args, **fn_kwargs):
        be.synchronize()
        start = time.perf_counter()
        out = fn(*fn_args, **fn_kwargs)
        be.synchronize()
        parts.setdefault(name, []).append(time.perf_counter() - start)
        return out

    for repeat in range(args.steps + 1):  # the first is a warm-up (Numba compiles)
        batch = rng.integers(0, len(step.rewards), args.images)
        which = np.repeat(batch, k)
        features = trainer.training_step.data.features[be.asarray(step.rewards.images[which])]
        sampled = timed("sample K captions per image", policy_sample, model, features,
                        step.max_length, step.rng)
        reward = timed("CIDEr-D rewards", step.rewards, sampled, which)
        base = timed(f"baseline ({args.baseline})", step.baseline, reward, batch,
                     features[::k])
        captions = be.asarray(np.concatenate([np.full((rows, 1), step.start), sampled], 1))
        loss, grads = timed("loss and gradients (weighted softmax loss)", model.loss,
                            features, captions, caption_weights=reward - base)
        timed("update (Adam)", step.training_step.descend, loss, grads)
        timed("whole step", step, be.asarray(batch))
        if repeat == 0:
            parts.clear()
    medians = {name: float(np.median(t)) for name, t in parts.items()}
    whole = medians.pop("whole step")
    origin = f"from {args.init}" if args.init else "fresh"
    print(f"self-critical step, backend {be.name}, {args.images} images x K={k} = {rows} "
          f"samples, {args.baseline} baseline, model {origin}, median of {args.steps} steps")
    print("| part | ms | share of the step |\n|---|---|---|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds * 1e3:.1f} | {seconds / whole * 100:.1f}% |")
    print(f"| whole step (timed alone) | {whole * 1e3:.1f} | 100% |")
    print(f"parts sum to {sum(medians.values()) * 1e3:.1f} ms; {rows / whole:,.0f} sampled "
          f"captions/s, {args.images / whole:,.1f} images/s")


if __name__ == "__main__":
    main()
