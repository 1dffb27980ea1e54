"""``captioning evaluate``, ``sample`` and ``report``: judging a trained model."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

from captioning.atomic import atomic_path
from captioning.checkpoint import load_checkpoint, load_model
from captioning.checks import cli_type, integer, positive
from captioning.cli.common import (
    HelpFormatter,
    add_backend,
    add_data,
    add_precision,
    choose_backend,
    load_data_for,
    resolve_checkpoint,
)
from captioning.evaluation import evaluate, pick_samples, references_by_image
from captioning.metrics import format_metrics
from captioning.report import Curves, write_report
from captioning.training.run_folder import RunFolder, RunFolderBusy

_CHECKPOINT_HELP = ("a checkpoint .npz, or a run folder (its best.npz, else "
                    "checkpoint.npz)")


def _add_model_source(p: argparse.ArgumentParser) -> None:
    """--checkpoint, --data, --backend and --precision, which every command here takes."""
    p.add_argument("--checkpoint", required=True, help=_CHECKPOINT_HELP)
    add_data(p)
    add_backend(p)
    add_precision(p)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    fmt = HelpFormatter
    count = cli_type(integer)
    p = sub.add_parser("evaluate", formatter_class=fmt,
                       help="BLEU-1..4, ROUGE-L, CIDEr-D (and METEOR with Java) of a model",
                       description="Decode every image of a split greedily and with beam "
                       "search, score the captions against all references of each image "
                       "with pycocoevalcap, print a table and write it as JSON.")
    _add_model_source(p)
    p.add_argument("--split", choices=["train", "val", "test"], default="val",
                   help="test: where data build --karpathy wrote one")
    p.add_argument("--beam", type=count, default=3, help="beam size of the second row (1: "
                   "greedy only)")
    p.add_argument("--max-images", type=count, help="score only the first N images")
    p.add_argument("--max-length", type=count, default=16, help="words per caption at most")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (it needs Java)")
    p.add_argument("--shuffled", action="store_true",
                   help="a control: caption each image from another image's features")
    p.add_argument("--json", help="where to write the table (default: metrics-<split>.json "
                   "beside the checkpoint)")
    p.set_defaults(run=run_evaluate)

    p = sub.add_parser("sample", formatter_class=fmt,
                       help="print generated captions next to their references",
                       description="Caption random images of a split and print each "
                       "caption with the image's references.")
    _add_model_source(p)
    p.add_argument("--split", choices=["train", "val", "test"], default="val")
    p.add_argument("--n", type=count, default=8, help="images to caption")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--beam", type=count, default=1, help="beam size (1: greedy)")
    how.add_argument("--temperature", type=cli_type(positive, float),
                     help="sample with this temperature (> 0)")
    p.add_argument("--top-k", type=count, help="with --temperature: only the K likeliest words")
    p.add_argument("--max-length", type=count, default=16, help="words per caption at most")
    p.add_argument("--seed", type=cli_type(integer, minimum=0), default=0,
                   help="picks the images and the samples")
    p.set_defaults(run=run_sample)

    p = sub.add_parser("report", formatter_class=fmt,
                       help="write loss.png, samples.png, metrics.json and index.html",
                       description="Write a run's report folder: its loss curves, a grid "
                       "of validation images titled with generated and reference captions, "
                       "the metrics (greedy and beam 3) and an index.html tying them up.")
    _add_model_source(p)
    p.add_argument("--out", help="report folder (default: report/ beside the checkpoint)")
    p.add_argument("--images", type=count, default=12, help="images in the sample grid")
    p.add_argument("--max-images", type=count, default=1000, help="images scored")
    p.set_defaults(run=run_report)


def _load(args: argparse.Namespace) -> tuple[Any, dict[str, Any], Path, Path]:
    """(model on --backend in --precision, its data, the checkpoint file, the data
    folder)."""
    path, settings = resolve_checkpoint(args.checkpoint)
    model = load_model(path, choose_backend(args.backend), args.precision)
    data, data_dir = load_data_for(model.input_dim, args.data, settings)
    if data["word_to_idx"] != model.word_to_idx:
        raise ValueError(f"{path} was trained with another vocabulary than the data in "
                         f"{data_dir}")
    return model, data, path, data_dir


def run_evaluate(args: argparse.Namespace) -> int:
    model, data, path, _ = _load(args)
    beams = (1,) if args.beam == 1 else (1, args.beam)
    rows = evaluate(model, data, args.split, beams, args.max_images, not args.no_meteor,
                    max_length=args.max_length, shuffle_seed=0 if args.shuffled else None)
    print(f"{path}, {args.split} split, {int(rows['greedy']['images'])} images"
          + (", features shuffled between images (control)" if args.shuffled else ""))
    print(format_metrics(rows))
    for name, scores in rows.items():
        print(f"{name}: {scores['captions_per_s']:.0f} captions/s"
              + (f"; METEOR {scores['METEOR']}" if isinstance(scores["METEOR"], str) else ""))
    suffix = "-shuffled" if args.shuffled else ""
    target = (Path(args.json) if args.json
              else path.parent / f"metrics-{args.split}{suffix}.json")
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    print(f"wrote {target}")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    if args.top_k is not None and args.temperature is None:
        raise ValueError("--top-k applies to sampling: give --temperature too")
    model, data, _, _ = _load(args)
    options: dict[str, Any] = {"beam": args.beam, "max_length": args.max_length}
    if args.temperature is not None:
        options = {"temperature": args.temperature, "top_k": args.top_k, "seed": args.seed,
                   "max_length": args.max_length}
    refs = references_by_image(data, args.split)
    for sample in pick_samples(model, data, args.split, args.n, args.seed, options):
        print(f"{sample.url}\n  generated: {sample.generated}")
        for ref in refs[sample.image]:
            print(f"  reference: {ref}")
    return 0


def make_report(model: Any, run_dir: Path, data: dict, data_dir: Path,
                out: Path | None = None, images: int = 12, max_images: int = 1000) -> Path:
    """Evaluate ``model`` (greedy and beam 3) and write the report folder of the run in
    ``run_dir``, its loss curves read from the run's checkpoint.npz when there is one."""
    state, arrays = {}, {}
    checkpoint = RunFolder(run_dir).checkpoint
    if checkpoint.is_file():
        _, saved_state, arrays = load_checkpoint(checkpoint)
        state = saved_state or {}
    metrics = evaluate(model, data, "val", (1, 3), max_images)
    samples = pick_samples(model, data, "val", images)
    per_epoch = max(state.get("num_train", 1) // max(state.get("batch_size", 1), 1), 1)
    if state.get("objective") == "self-critical":
        curves = Curves(list(arrays.get("reward_history", [])), state.get("val_history", []),
                        per_epoch, "mean sampled reward", "validation greedy CIDEr-D",
                        "CIDEr-D", "Reward")
    else:
        curves = Curves(list(arrays.get("loss_history", [])), state.get("val_history", []),
                        per_epoch)
    return write_report(out or run_dir / "report", samples, data_dir, metrics, curves,
                        title=f"Captioning run {run_dir}")


def run_report(args: argparse.Namespace) -> int:
    model, data, path, data_dir = _load(args)
    out = Path(args.out) if args.out else None
    run = RunFolder(path.parent)
    # Into the run's own report/ only while holding its folder: not while its training
    # (or another report) writes there.
    owner = run.owned() if out is None and run.holds_run() else contextlib.nullcontext()
    try:
        with owner:
            index = make_report(model, path.parent, data, data_dir, out, args.images,
                                args.max_images)
    except RunFolderBusy as exc:
        raise RunFolderBusy(f"{exc}; or write this report elsewhere with --out") from None
    print(f"wrote {index}")
    return 0
