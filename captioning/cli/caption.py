"""``captioning caption``: caption every row of a features file."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from captioning.caption_files import FORMATS, caption_feature_file, default_output
from captioning.checkpoint import load_model
from captioning.checks import cli_type, integer
from captioning.cli.common import (
    HelpFormatter,
    add_backend,
    add_precision,
    choose_backend,
    on_every_rank,
    resolve_checkpoint,
)
from captioning.training.data_parallel import MpiDataParallel, from_launcher


def add_parser(sub: argparse._SubParsersAction) -> None:
    count = cli_type(integer)
    p = sub.add_parser(
        "caption", formatter_class=HelpFormatter,
        help="caption every row of a features file (your own images, a test split)",
        description="Caption each row of a features file with a trained model, in chunks "
        "(memory stays flat however many rows), in input order, as JSON lines "
        '{"image_id", "caption", "logp"} or, with --format coco, the results list the COCO '
        "caption evaluation tools read. The file is HDF5 with a 'features' dataset (and "
        "'image_ids'), or .npy (ids in <stem>_ids.npy or <stem>_ids.txt beside it); without "
        "ids the rows are numbered from 0. The features must be the kind the model was "
        "trained on (full 4096-d or PCA).")
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint .npz, or a run folder (its best.npz, else checkpoint.npz)")
    p.add_argument("--features", required=True, help="the features file")
    p.add_argument("--out", help="where to write (default: captions.jsonl, or captions.json "
                   "with --format coco, in the current folder)")
    p.add_argument("--format", choices=FORMATS, default="jsonl", dest="output_format")
    p.add_argument("--beam", type=count, default=1, help="beam size (1: greedy, each caption "
                   "ended with <END>)")
    p.add_argument("--max-length", type=count, default=16, help="words per caption at most")
    p.add_argument("--chunk", type=count, default=2048, help="rows decoded at a time")
    add_backend(p)
    add_precision(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    parallel = from_launcher()
    return on_every_rank(parallel, lambda: _caption(args, parallel))


def _caption(args: argparse.Namespace, parallel: MpiDataParallel | None) -> int:
    if parallel is not None:
        print(f"captioning over {parallel.size} ranks (MPI)")
    path, _ = resolve_checkpoint(args.checkpoint)
    model = load_model(path, choose_backend(args.backend), args.precision)
    out = Path(args.out) if args.out else default_output(args.output_format)
    start = time.perf_counter()
    rows = caption_feature_file(model, args.features, out, args.beam, args.max_length,
                                args.output_format, args.chunk,
                                progress=sys.stderr.isatty() and parallel is None,
                                parallel=parallel)
    elapsed = time.perf_counter() - start
    print(f"captioned {rows} rows of {args.features} in {elapsed:.1f} s "
          f"({rows / max(elapsed, 1e-9):.0f} captions/s, beam {args.beam}, "
          f"{model.precision}); wrote {out}")
    return 0
