"""``captioning data shapes | build | pca``: make folders in the COCO captioning layout."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from captioning.checks import cli_type, integer
from captioning.cli.common import HelpFormatter
from captioning.data.annotations import build_dataset
from captioning.data.pca import pca_folder
from captioning.data.shapes import builtin_dataset_dir, write_shapes_dataset


def add_parser(sub: argparse._SubParsersAction) -> None:
    fmt = HelpFormatter
    count = cli_type(integer)
    data = sub.add_parser("data", help="make datasets in the COCO captioning layout",
                          description="Make datasets in the COCO captioning layout.")
    kinds = data.add_subparsers(dest="data_command", metavar="WHAT", required=True)

    p = kinds.add_parser("shapes", formatter_class=fmt,
                         help="the built-in dataset: scenes of coloured shapes",
                         description="Generate the built-in dataset: 64x64 scenes of one "
                         "to three coloured shapes, five captions each, 4096-d features "
                         "computed from the pixels and their 512-d PCA. Without --out it "
                         "fills (or reuses) the cache that every command uses by default.")
    p.add_argument("--out", help="folder to write (default: the cache, printed)")
    p.add_argument("--train", type=count, default=8000, help="training images")
    p.add_argument("--val", type=count, default=1000, help="validation images")
    p.add_argument("--seed", type=cli_type(integer, minimum=0), default=0)
    p.set_defaults(run=run_shapes)

    p = kinds.add_parser("build", formatter_class=fmt,
                         help="COCO layout from caption annotations and image features",
                         description="Tokenise caption annotations (COCO captions_*.json, "
                         "or a Karpathy dataset_coco.json), build the vocabulary from the "
                         "training split, and write the COCO layout with the given image "
                         "features (HDF5 with datasets 'features' and 'image_ids', or .npy "
                         "with <stem>_ids.npy / <stem>_ids.txt beside it) and their PCA.")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--features", nargs="+", required=True, help="feature files")
    p.add_argument("--karpathy", help="dataset_coco.json (train + restval -> train, val)")
    p.add_argument("--coco-train", help="captions_train2014.json")
    p.add_argument("--coco-val", help="captions_val2014.json")
    p.add_argument("--min-count", type=count, default=5,
                   help="words seen fewer times in training become <UNK>")
    p.add_argument("--max-length", type=count, default=15, help="words kept per caption")
    p.add_argument("--pca-dim", type=count, default=512)
    p.add_argument("--skip-missing", action="store_true",
                   help="leave out images without features instead of stopping")
    p.set_defaults(run=run_build)

    p = kinds.add_parser("pca", formatter_class=fmt,
                         help="write the _pca.h5 features of a COCO-layout folder",
                         description="Fit a PCA on the training features (read in chunks, "
                         "so the 1.36 GB COCO file is never held whole) and write both "
                         "splits' _pca.h5 files.")
    p.add_argument("folder")
    p.add_argument("--dim", type=count, default=512)
    p.set_defaults(run=run_pca)


def run_shapes(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.out:
        folder = write_shapes_dataset(Path(args.out), args.train, args.val, args.seed,
                                      progress=sys.stderr.isatty())
    else:
        folder = builtin_dataset_dir(args.train, args.val, args.seed)
    print(f"{folder} ({time.perf_counter() - start:.1f} s)")
    return 0


def run_build(args: argparse.Namespace) -> int:
    report = build_dataset(args.out, args.features, coco_train=args.coco_train,
                           coco_val=args.coco_val, karpathy=args.karpathy,
                           min_count=args.min_count, max_length=args.max_length,
                           pca_dim=args.pca_dim, skip_missing=args.skip_missing,
                           progress=sys.stderr.isatty())
    print("\n".join(report.lines()))
    print(f"wrote {args.out}")
    return 0


def run_pca(args: argparse.Namespace) -> int:
    pca = pca_folder(args.folder, args.dim, progress=sys.stderr.isatty())
    print(f"{args.dim} components keep {100 * pca.explained.sum():.1f}% of the training "
          f"variance; wrote the _pca.h5 files in {args.folder}")
    return 0
