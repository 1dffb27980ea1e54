"""``captioning train``: train (cross-entropy, or self-critical from a trained model),
checkpoint, validate, then report."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from backend import PRECISION_ENV_VAR, PRECISIONS, choose_precision
from captioning.checkpoint import load_model
from captioning.checks import cli_type, fraction, integer, positive
from captioning.cli.common import (
    add_backend,
    add_data,
    choose_backend,
    on_every_rank,
    resolve_checkpoint,
)
from captioning.cli.judge import make_report
from captioning.data.default import default_data_dir
from captioning.data.reader import read_coco_folder
from captioning.evaluation import evaluate, pick_samples
from captioning.model import CaptioningRNN, model_precision
from captioning.trainer import CaptioningTrainer
from captioning.training.data_parallel import MpiDataParallel, from_launcher
from captioning.training.run_folder import CHECKPOINT_NAME, RunFolder
from captioning.training.schedule import Every
from captioning.training.self_critical import SelfCritical

# Every setting's default. An option not given is absent from the parsed arguments
# (argparse.SUPPRESS), so a resumed run can tell "given again" from "left alone".
DEFAULTS: dict[str, Any] = {
    "data": None, "cell": "lstm", "hidden": 512, "wordvec": 256, "features": "full",
    "update_rule": "adam", "lr": 1e-3, "lr_decay": 0.95, "batch_size": 128, "epochs": 4,
    "max_train": None, "print_every": 50, "seed": 0, "backend": None, "dtype": "float32",
    "precision": None,
    "checkpoint_every": "1e", "patience": 3, "grad_clip": None, "val_max_captions": 10_000,
    "metrics_every": 2, "samples": 5, "no_report": False, "no_cuda_graph": False,
    "scst": False, "init": None, "scst_samples": 5, "baseline": "mean",
}
# Self-critical training's own defaults: fine-tuning steps, so a smaller learning rate;
# a batch counts images, each sampled scst_samples times.
SCST_DEFAULTS: dict[str, Any] = {"lr": 5e-5, "lr_decay": 1.0, "batch_size": 50,
                                 "epochs": 2}
# What an --init model fixes in a self-critical run (setting -> its config key).
_FROM_INIT = {"cell": "cell_type", "hidden": "hidden_dim", "wordvec": "wordvec_dim",
              "dtype": "dtype"}
# What makes a run the run it is: a resumed run keeps these, and giving one again with
# another value is an error. The other settings come back from run.json unless given.
FIXED_ON_RESUME = ("data", "cell", "hidden", "wordvec", "features", "update_rule", "lr",
                   "lr_decay", "batch_size", "max_train", "seed", "dtype", "grad_clip",
                   "val_max_captions", "scst", "init", "scst_samples", "baseline")
_THIS_INVOCATION = ("samples", "no_report")  # about this command's output, not the run


def _every(text: str) -> str:
    try:
        Every.parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N iterations ('500') or N epochs "
                                         f"('2e'), got {text!r}") from None
    return text


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", argument_default=argparse.SUPPRESS,
        help="train a captioning model (default: on the built-in dataset)",
        description="Train an RNN or LSTM captioning model, print the loss, check the "
        "validation loss every epoch, write checkpoints, the log and a report (loss curve, "
        "sample captions, metrics) into the run folder. Ctrl-C saves a checkpoint; "
        "--resume continues a run exactly where it stopped. One process at a time owns a "
        "run folder. With --scst --init RUN, fine-tune a trained model on the CIDEr-D of "
        "its own sampled captions (self-critical training; its defaults: "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in SCST_DEFAULTS.items())
        + ", and --batch-size counts images).",
    )

    def option(flag: str, help: str, **kwargs: Any) -> None:
        key = flag[2:].replace("-", "_")
        default = DEFAULTS[key]
        if default is not None and kwargs.get("action") != "store_true":
            help = f"{help} (default: {default})"
        p.add_argument(flag, help=help, **kwargs)

    count = cli_type(integer)
    add_data(p)
    p.add_argument("--out", help="run folder for checkpoints, train_log.jsonl and the report "
                   "(default: runs/<cell>-<date>-<time>, with a suffix if that is taken); "
                   "must not hold a run already")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in this folder; its settings come back from its "
                   f"run.json ({', '.join(FIXED_ON_RESUME)} are fixed; the others may be "
                   "given again)")
    option("--cell", "recurrent cell", choices=["rnn", "lstm"])
    option("--hidden", "hidden size H", type=count)
    option("--wordvec", "word-vector size W", type=count)
    option("--features", "4096-d fc7 features or their 512-d PCA", choices=["full", "pca"])
    option("--update-rule", "update rule", choices=["sgd", "sgd_momentum", "rmsprop", "adam"])
    option("--lr", "learning rate, > 0", type=cli_type(positive, float))
    option("--lr-decay", "learning-rate factor per epoch, in (0, 1]",
           type=cli_type(fraction, float))
    option("--batch-size", "captions per step", type=count)
    option("--epochs", "epochs in all", type=count)
    option("--max-train", "keep a random subset of this many training captions", type=count)
    option("--print-every", "iterations between loss lines", type=count)
    option("--seed", "seed of the initialisation and batches", type=cli_type(integer,
                                                                             minimum=0))
    add_backend(p)
    option("--dtype", "parameters' precision", choices=["float32", "float64"])
    option("--precision", "how float32 matrix products multiply: fp32 in full; tf32 or "
           "bf16 on the GPU's tensor cores with float32 accumulation (cupy backend only; "
           "parameters, cell state, softmax, loss and Adam stay float32, checkpoints load "
           f"anywhere) (default: ${PRECISION_ENV_VAR}, else fp32)", choices=list(PRECISIONS))
    option("--checkpoint-every", "'N' iterations or 'Ne' epochs between checkpoints",
           type=_every)
    option("--patience", "stop after this many epochs without a better validation loss "
           "(0: never)", type=cli_type(integer, minimum=0))
    option("--grad-clip", "clip gradients to this global norm, > 0",
           type=cli_type(positive, float))
    option("--val-max-captions", "validation captions used for the loss each epoch",
           type=count)
    option("--metrics-every", "epochs between validation BLEU/CIDEr checks (greedy, 500 "
           "images; 0: never)", type=cli_type(integer, minimum=0))
    option("--samples", "validation captions to print at the end",
           type=cli_type(integer, minimum=0))
    option("--no-report", "skip the report at the end", action="store_true")
    p.add_argument("--distributed", choices=["auto", "mpi", "none"], default="auto",
                   help="auto: data-parallel over MPI ranks when started by mpiexec with "
                   "more than one (default); none: one process whatever the launcher")
    option("--no-cuda-graph", "on the cupy backend, run every step op by op instead of "
           "replaying it from a CUDA graph (same maths; the graph issues a step with one "
           "launch)", action="store_true")
    g = p.add_argument_group("self-critical training (SCST: optimise CIDEr-D directly)")
    g.add_argument("--scst", action="store_true", help="self-critical training: sample "
                   "captions, reward each by its CIDEr-D, descend on -(reward - baseline) "
                   "log p(caption); needs --init; best.npz is picked by validation greedy "
                   "CIDEr-D")
    g.add_argument("--init", metavar="RUN_OR_CHECKPOINT", help="the trained model to start "
                   "from (a run folder: its best.npz, else checkpoint.npz); fixes the cell, "
                   "sizes and dtype, and the data and features unless given")
    g.add_argument("--scst-samples", type=cli_type(integer, minimum=1), metavar="K",
                   help="captions sampled per image, at least 2 with the mean baseline "
                   f"(default: {DEFAULTS['scst_samples']})")
    g.add_argument("--baseline", choices=["mean", "greedy"],
                   help="each sample's baseline: the mean reward of the image's other "
                   "samples, or the reward of its greedy caption (default: "
                   f"{DEFAULTS['baseline']})")
    p.set_defaults(run=run)


def _settings(args: argparse.Namespace, make_folder: bool = True
              ) -> tuple[RunFolder | None, dict[str, Any], bool]:
    """(run folder, settings, resuming?) from the arguments and, on --resume, run.json.
    Without ``make_folder`` a new run gets no folder (a data-parallel worker's case)."""
    given = {k: v for k, v in vars(args).items()
             if k not in ("run", "resume", "out", "command", "distributed")}
    if "data" in given:
        given["data"] = str(Path(given["data"]).resolve())
    if getattr(args, "resume", None):
        if getattr(args, "out", None):
            raise ValueError("give --resume RUN_DIR or --out DIR, not both")
        folder = RunFolder(args.resume)
        saved = folder.read_settings()
        for key in FIXED_ON_RESUME:
            if key in given and key in saved and given[key] != saved[key]:
                flag = "--" + key.replace("_", "-")
                raise ValueError(f"{flag} {given[key]} differs from the value this run was "
                                 f"started with, {saved[key]}; a resumed run keeps it "
                                 f"(leave {flag} out, or start a new run with --out)")
        return folder, {**DEFAULTS, **saved, **given}, True
    if given.get("scst"):
        settings = _self_critical_settings(given)
    else:
        scst_only = sorted({"init", "scst_samples", "baseline"} & set(given))
        if scst_only:
            raise ValueError(f"--{scst_only[0].replace('_', '-')} is for self-critical "
                             "training: add --scst")
        settings = {**DEFAULTS, **given}
    settings["data"] = str(Path(settings["data"] or default_data_dir()).resolve())
    if not make_folder:
        return None, settings, False
    if getattr(args, "out", None):
        return RunFolder(args.out), settings, False
    return RunFolder.new(Path("runs") / f"{settings['cell']}-{time.strftime('%Y%m%d-%H%M%S')}"
                         ), settings, False


def _self_critical_settings(given: dict[str, Any]) -> dict[str, Any]:
    """A new self-critical run's settings: the --init model's shape (giving another is an
    error), its run's data and features unless given, then SCST_DEFAULTS, DEFAULTS."""
    if not given.get("init"):
        raise ValueError("--scst needs --init RUN_OR_CHECKPOINT: the trained model that "
                         "self-critical training starts from")
    SelfCritical(given.get("scst_samples", DEFAULTS["scst_samples"]),
                 given.get("baseline", DEFAULTS["baseline"]))  # refused before any reading
    path, init_settings = resolve_checkpoint(given["init"])
    config = load_model(path, "numpy", "fp32").config()
    settings = {**DEFAULTS, **SCST_DEFAULTS, **given, "init": str(path.resolve())}
    for key, config_key in _FROM_INIT.items():
        if key in given and given[key] != config[config_key]:
            raise ValueError(f"--{key} {given[key]} differs from the --init model's "
                             f"{config[config_key]}; self-critical training keeps its shape")
        settings[key] = config[config_key]
    for key in ("data", "features", "max_train"):
        if key not in given and init_settings.get(key) is not None:
            settings[key] = init_settings[key]
    return settings


def run(args: argparse.Namespace) -> int:
    parallel = from_launcher(getattr(args, "distributed", "auto"))
    if parallel is None:
        return _run_owner(args, None)

    def on_this_rank() -> int:
        _default_data_first(args, parallel)
        if parallel.is_root:
            return _run_owner(args, parallel)
        # A worker trains in step with rank 0 and writes nothing.
        _, s, resuming = _settings(args, make_folder=False)
        return _train(None, s, resuming, parallel,
                      resume_from=Path(args.resume) if resuming else None)

    return on_every_rank(parallel, on_this_rank)


def _default_data_first(args: argparse.Namespace, parallel: MpiDataParallel) -> None:
    """Where no --data is given, rank 0 finds (or builds, once) the default data before
    the other ranks look for it, so ranks sharing a cache do not all build it."""
    if getattr(args, "data", None) is None and not getattr(args, "resume", None):
        if parallel.is_root:
            default_data_dir()
        parallel.barrier()


def _run_owner(args: argparse.Namespace, parallel: MpiDataParallel | None) -> int:
    """The process that owns the run folder: the only one, or rank 0."""
    folder, s, resuming = _settings(args)
    made_here = folder.made_here or not folder.path.exists()
    try:
        with folder.owned():  # before anything is written; another process here is refused
            if resuming and not folder.checkpoint.is_file():
                raise FileNotFoundError(f"{folder.path} has no {folder.checkpoint.name} to "
                                        "resume from: the run stopped before its first "
                                        "checkpoint")
            if not resuming:
                folder.refuse_existing_run()
            return _train(folder, s, resuming, parallel)
    except BaseException:
        if made_here:  # a start that failed before training leaves no empty run folder
            folder.remove_if_unused()
        raise


def _run_settings(s: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in s.items() if k not in _THIS_INVOCATION}


def _train(folder: RunFolder | None, s: dict[str, Any], resuming: bool,
           parallel: MpiDataParallel | None = None, resume_from: Path | None = None) -> int:
    """Train with settings ``s``; ``folder`` is None on a data-parallel worker (rank > 0),
    which reads a resumed run's checkpoint (in ``resume_from``) but writes nothing."""
    if parallel is not None:
        print(f"data-parallel over {parallel.size} ranks (MPI)")
    out = folder.path if folder is not None else resume_from
    backend = choose_backend(s["backend"], "--backend" if not resuming else
                             "--backend or the run's run.json")
    model_precision(s["precision"], s["dtype"])  # refused before the data is read
    backend.with_precision(choose_precision(s["precision"]))
    if parallel is not None:  # picks this rank's GPU before the model is built there
        print(parallel.attach(backend))
    np.random.seed(s["seed"])
    data = read_coco_folder(s["data"], max_train=s["max_train"],
                            pca_features=s["features"] == "pca")
    if s["scst"]:
        if parallel is not None:
            raise ValueError("self-critical training runs in one process; start it without "
                             "mpiexec (or with --distributed none)")
        model = load_model(s["init"], backend, s["precision"])
        width = data["train_features"].shape[1]
        if model.input_dim != width or model.word_to_idx != data["word_to_idx"]:
            raise ValueError(f"the --init model {s['init']} takes {model.input_dim}-d "
                             f"features and {model.vocab_size} words; the data {s['data']} "
                             f"has {width}-d features and {len(data['word_to_idx'])} words "
                             "(give the --data and --features it was trained on)")
    else:
        model = CaptioningRNN(
            data["word_to_idx"], input_dim=data["train_features"].shape[1],
            wordvec_dim=s["wordvec"], hidden_dim=s["hidden"], cell_type=s["cell"],
            dtype=np.dtype(s["dtype"]), backend=backend, seed=s["seed"],
            precision=s["precision"],
        )
    trainer = CaptioningTrainer(
        model, data, update_rule=s["update_rule"], updater_config={"learning_rate": s["lr"]},
        lr_decay=s["lr_decay"], batch_size=s["batch_size"], num_epochs=s["epochs"],
        print_every=s["print_every"], seed=s["seed"],
        progress=folder is not None and sys.stderr.isatty(),
        verbose=folder is not None, checkpoint_dir=folder,
        checkpoint_every=s["checkpoint_every"], validate=True,
        val_max_captions=s["val_max_captions"], patience=s["patience"] or None,
        grad_clip=s["grad_clip"], handle_interrupt=True, cuda_graph=not s["no_cuda_graph"],
        epoch_callback=_metrics_callback(data, s["metrics_every"]) if folder else None,
        data_parallel=parallel,
        self_critical=SelfCritical(s["scst_samples"], s["baseline"]) if s["scst"] else None,
    )
    if resuming:
        trainer.restore(out / CHECKPOINT_NAME if folder is None else folder.checkpoint)
        print(f"resuming {out} at epoch {trainer.epoch + 1}, iteration {trainer.iteration}")
    if folder is None:  # a worker: train in step with rank 0, write nothing
        trainer.train()
        return 130 if (trainer.stop_reason or "").startswith("interrupted") else 0
    folder.write_settings(_run_settings(s))  # from here on the folder holds a run
    what = (f"self-critical training ({s['scst_samples']} samples per image, "
            f"{s['baseline']} baseline) of the {s['cell']} from {s['init']}, on "
            f"{trainer.num_train} images" if s["scst"] else
            f"training a {s['cell']} (H={s['hidden']}, W={s['wordvec']}) on "
            f"{trainer.num_train} captions")
    print(f"{what} of {s['data']}, "
          f"{data['train_features'].shape[1]}-d features, backend {backend.name} "
          f"({model.precision}), "
          f"{trainer.iterations_per_epoch * s['epochs']} iterations; run folder {out}")
    start, first = time.perf_counter(), trainer.iteration
    history = trainer.train()
    elapsed = time.perf_counter() - start
    if trainer.iteration > first:
        unit = (f"images/s, {s['scst_samples']} samples each" if s["scst"]
                else "captions/s")
        print(f"trained {trainer.iteration - first} iterations in {elapsed:.1f} s "
              f"({(trainer.iteration - first) * s['batch_size'] / elapsed:.0f} {unit}); "
              f"last loss {history[-1]:.4f}")
    if trainer.stop_reason and trainer.stop_reason.startswith("interrupted"):
        print(f"stopped; continue with: captioning train --resume {out}")
        return 130
    trainer.save()
    _print_samples(model, data, s["samples"], s["seed"])
    if not s["no_report"]:
        best = load_model(resolve_checkpoint(str(out))[0], backend,  # best.npz if any
                          model.precision)
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
