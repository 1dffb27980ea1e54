"""``captioning train``: train, checkpoint, validate, then report."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from backend import get_backend
from captioning.checkpoint import load_model
from captioning.cli.common import add_backend, add_data, resolve_checkpoint
from captioning.cli.judge import make_report
from captioning.data.default import default_data_dir
from captioning.data.reader import read_coco_folder
from captioning.evaluation import evaluate, pick_samples
from captioning.model import CaptioningRNN
from captioning.trainer import CaptioningTrainer
from captioning.training.run_folder import RunFolder

# Settings a resumed run takes from its run.json; the others may be given again.
_FIXED_ON_RESUME = ("data", "cell", "hidden", "wordvec", "features", "update_rule", "lr",
                    "lr_decay", "batch_size", "max_train", "seed", "dtype", "grad_clip",
                    "val_max_captions")
DEFAULT_EPOCHS = 4


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a captioning model (default: on the built-in dataset)",
        description="Train an RNN or LSTM captioning model, print the loss, check the "
        "validation loss every epoch, write checkpoints, the log and a report (loss curve, "
        "sample captions, metrics) into the run folder. Ctrl-C saves a checkpoint; "
        "--resume continues a run exactly where it stopped.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data(p)
    p.add_argument("--out", help="run folder for checkpoints, train_log.jsonl and the report "
                   "(default: runs/<cell>-<date>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in this folder with its own settings (--epochs, "
                   "--backend, --print-every and --patience may change)")
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
    p.add_argument("--epochs", type=int, help=f"epochs in all (default {DEFAULT_EPOCHS})")
    p.add_argument("--max-train", type=int, help="keep a random subset of the training captions")
    p.add_argument("--print-every", type=int, default=50, help="iterations between loss lines")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and batches")
    add_backend(p)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--checkpoint-every", default="1e",
                   help="'N' iterations or 'Ne' epochs between checkpoints")
    p.add_argument("--patience", type=int, default=3,
                   help="stop after this many epochs without a better validation loss "
                   "(0: never)")
    p.add_argument("--grad-clip", type=float, help="clip gradients to this global norm")
    p.add_argument("--val-max-captions", type=int, default=10_000,
                   help="validation captions used for the loss each epoch")
    p.add_argument("--metrics-every", type=int, default=2,
                   help="epochs between validation BLEU/CIDEr checks (greedy, 500 images; "
                   "0: never)")
    p.add_argument("--samples", type=int, default=5, help="validation captions to print")
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    p.add_argument("--no-cuda-graph", action="store_true",
                   help="on the cupy backend, run every step op by op instead of replaying "
                   "it from a CUDA graph (same maths; the graph issues a step with one launch)")
    p.set_defaults(run=run)


def _settings(args: argparse.Namespace) -> tuple[RunFolder, dict[str, Any], bool]:
    """(run folder, settings, resuming?) from the arguments and, on --resume, run.json."""
    given = {k: v for k, v in vars(args).items()
             if k not in ("run", "resume", "out", "command")}
    if args.resume:
        folder = RunFolder(args.resume)
        saved = folder.read_settings()
        settings = {**given, **{k: saved[k] for k in _FIXED_ON_RESUME if k in saved}}
        settings["epochs"] = args.epochs or saved.get("epochs", DEFAULT_EPOCHS)
        return folder, settings, True
    given["data"] = str(Path(args.data or default_data_dir()).resolve())
    given["epochs"] = args.epochs or DEFAULT_EPOCHS
    folder = RunFolder(args.out or f"runs/{args.cell}-{time.strftime('%Y%m%d-%H%M%S')}")
    if folder.checkpoint.exists():
        raise ValueError(f"{folder.path} already holds a run; continue it with --resume "
                         f"{folder.path} or choose another --out")
    return folder, given, False


def run(args: argparse.Namespace) -> int:
    folder, s, resuming = _settings(args)
    out = folder.path
    backend = get_backend(s["backend"])
    np.random.seed(s["seed"])
    data = read_coco_folder(s["data"], max_train=s["max_train"],
                            pca_features=s["features"] == "pca")
    model = CaptioningRNN(
        data["word_to_idx"], input_dim=data["train_features"].shape[1],
        wordvec_dim=s["wordvec"], hidden_dim=s["hidden"], cell_type=s["cell"],
        dtype=np.dtype(s["dtype"]), backend=backend, seed=s["seed"],
    )
    trainer = CaptioningTrainer(
        model, data, update_rule=s["update_rule"], updater_config={"learning_rate": s["lr"]},
        lr_decay=s["lr_decay"], batch_size=s["batch_size"], num_epochs=s["epochs"],
        print_every=s["print_every"], seed=s["seed"], progress=sys.stderr.isatty(),
        checkpoint_dir=out, checkpoint_every=s["checkpoint_every"], validate=True,
        val_max_captions=s["val_max_captions"], patience=s["patience"] or None,
        grad_clip=s["grad_clip"], handle_interrupt=True, cuda_graph=not s["no_cuda_graph"],
        epoch_callback=_metrics_callback(data, s["metrics_every"]),
    )
    if resuming:
        trainer.restore(folder.checkpoint)
        print(f"resuming {out} at epoch {trainer.epoch + 1}, iteration {trainer.iteration}")
    folder.write_settings({k: v for k, v in s.items() if k != "no_report"})
    print(f"training a {s['cell']} (H={s['hidden']}, W={s['wordvec']}) on "
          f"{trainer.num_train} captions of {s['data']}, "
          f"{data['train_features'].shape[1]}-d features, backend {backend.name}, "
          f"{trainer.iterations_per_epoch * s['epochs']} iterations; run folder {out}")
    start, first = time.perf_counter(), trainer.iteration
    history = trainer.train()
    elapsed = time.perf_counter() - start
    if trainer.iteration > first:
        print(f"trained {trainer.iteration - first} iterations in {elapsed:.1f} s "
              f"({(trainer.iteration - first) * s['batch_size'] / elapsed:.0f} captions/s); "
              f"last loss {history[-1]:.4f}")
    if trainer.stop_reason and trainer.stop_reason.startswith("interrupted"):
        print(f"stopped; continue with: captioning train --resume {out}")
        return 130
    trainer.save()
    _print_samples(model, data, s["samples"], s["seed"])
    if not s["no_report"]:
        best = load_model(resolve_checkpoint(str(out))[0], backend)  # best.npz if any
        index = make_report(best, out, data, Path(s["data"]), max_images=1000)
        print(f"report: {index}")
    return 0


def _metrics_callback(data: dict, every: int):
    """Every ``every`` epochs, add greedy BLEU/ROUGE/CIDEr on 500 validation images to
    the epoch's log record."""
    if not every:
        return None

    def callback(trainer, record: dict) -> None:
        if trainer.epoch % every:
            return
        scores = evaluate(trainer.model, data, beams=(1,), max_images=500, meteor=False)
        record["val_metrics"] = {k: v for k, v in scores["greedy"].items()
                                 if isinstance(v, float)}
        if trainer.verbose:
            print(f"(Epoch {trainer.epoch}) greedy on 500 val images: " + ", ".join(
                f"{k} {scores['greedy'][k]:.3f}" for k in ("BLEU-4", "CIDEr-D")))

    return callback


def _print_samples(model, data: dict, count: int, seed: int) -> None:
    if count < 1:
        return
    print("\nvalidation samples:")
    for sample in pick_samples(model, data, "val", count, seed):
        print(f"  {sample.url}\n    generated: {sample.generated}\n"
              f"    reference: {sample.reference}")
