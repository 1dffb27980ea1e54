"""The ``captioning`` command line (also ``python -m captioning``)."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a captioning model on a COCO-layout folder",
        description="Train an RNN or LSTM captioning model on a folder in the COCO "
        "captioning layout, print the loss every few iterations, then print sampled "
        "validation captions next to their ground truth.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", help="COCO-layout folder (default: $CAPTION_DATA, else the "
                   "built-in dataset, generated on first use)")
    p.add_argument("--cell", choices=["rnn", "lstm"], default="lstm", help="recurrent cell")
    p.add_argument("--hidden", type=int, default=512, help="hidden size H")
    p.add_argument("--wordvec", type=int, default=256, help="word-vector size W")
    p.add_argument("--features", choices=["full", "pca"], default="full",
                   help="4096-d fc7 features or their 512-d PCA")
    p.add_argument("--update-rule", default="adam",
                   choices=["sgd", "sgd_momentum", "rmsprop", "adam"])
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    p.add_argument("--lr-decay", type=float, default=0.95, help="learning-rate factor per epoch")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-train", type=int, help="keep a random subset of the training captions")
    p.add_argument("--print-every", type=int, default=50, help="iterations between loss lines")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and batches")
    p.add_argument("--backend", help="numpy, numba or cupy (default: $CAPTION_BACKEND, "
                   "else numpy)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--samples", type=int, default=5, help="validation captions to print")
    p.set_defaults(run=_train)


def _train(args: argparse.Namespace) -> int:
    from backend import get_backend
    from captioning.coco import decode_captions, load_coco_data
    from captioning.model import CaptioningRNN
    from captioning.trainer import CaptioningTrainer

    backend = get_backend(args.backend)
    np.random.seed(args.seed)
    data = load_coco_data(args.data, max_train=args.max_train,
                          pca_features=args.features == "pca")
    model = CaptioningRNN(
        data["word_to_idx"], input_dim=data["train_features"].shape[1],
        wordvec_dim=args.wordvec, hidden_dim=args.hidden, cell_type=args.cell,
        dtype=np.dtype(args.dtype), backend=backend, seed=args.seed,
    )
    trainer = CaptioningTrainer(
        model, data, update_rule=args.update_rule,
        updater_config={"learning_rate": args.lr}, lr_decay=args.lr_decay,
        batch_size=args.batch_size, num_epochs=args.epochs, print_every=args.print_every,
        seed=args.seed, progress=sys.stderr.isatty(),
    )
    print(f"training a {args.cell} (H={args.hidden}, W={args.wordvec}) on "
          f"{trainer.num_train} captions, {data['train_features'].shape[1]}-d features, "
          f"backend {backend.name}, {trainer.iterations_per_epoch * args.epochs} iterations")
    start = time.perf_counter()
    history = trainer.train()
    elapsed = time.perf_counter() - start
    if history:
        print(f"trained in {elapsed:.1f} s ({len(history) * args.batch_size / elapsed:.0f} "
              f"captions/s); final loss {history[-1]:.4f}")

    count = min(args.samples, len(data["val_captions"]))
    if count:
        rows = np.random.default_rng(args.seed).choice(len(data["val_captions"]), count,
                                                       replace=False)
        image_idxs = data["val_image_idxs"][rows]
        generated = decode_captions(model.sample(data["val_features"][image_idxs]),
                                    data["idx_to_word"])
        truth = decode_captions(data["val_captions"][rows], data["idx_to_word"])
        print("\nvalidation samples:")
        for url, gen, gt in zip(data["val_urls"][image_idxs], generated, truth):
            print(f"  {url}\n    generated: {gen}\n    reference: {gt}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captioning",
        description="Image captioning with RNN/LSTM models on NumPy, Numba or CuPy kernels.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
