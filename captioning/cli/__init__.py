"""The ``captioning`` command line (also ``python -m captioning``).

    captioning train      train a model (default: the built-in shapes dataset)
    captioning evaluate   COCO caption metrics of a checkpoint, greedy and beam search
    captioning sample     print generated captions next to their references
    captioning report     loss curve, sample grid, metrics and an HTML page
    captioning caption    caption every row of a features file
    captioning data ...   the built-in dataset, COCO layout from annotations, PCA
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys

from captioning.cli import caption, data, judge, train
from captioning.cli.host_memory import keep_freed_memory


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captioning",
        description="Image captioning with RNN/LSTM models on NumPy, Numba or CuPy kernels. "
        "Every command works on the built-in shapes dataset unless given --data DIR (a "
        "folder in the COCO captioning layout) or $CAPTION_DATA.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train.add_parser(sub)
    judge.add_parsers(sub)
    caption.add_parser(sub)
    data.add_parser(sub)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("captioning-kernels")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed; run from a source tree)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    keep_freed_memory()
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
