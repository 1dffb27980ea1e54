"""Write a small demo dataset in the COCO captioning layout: images of one of 8 colours
and 6 shapes, described by templated captions, with features that encode the colour and
shape (a fixed random projection, plus noise) and nothing of the caption text.

    python -m benchmarks.make_demo_data OUT_DIR [--train 2000] [--val 200] [--seed 0]

A stand-in until the built-in grounded dataset lands: enough to see the main job learn.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "ring"]
TEMPLATES = ["a {c} {s}", "a picture of a {c} {s}", "there is a {c} {s} here",
             "one {c} {s} on a plain background", "the {s} is {c}"]
SPECIAL = ["<NULL>", "<START>", "<END>", "<UNK>"]


def write_demo(out: Path, train: int, val: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    words = sorted({w for t in TEMPLATES for w in t.split() if "{" not in w}
                   | set(COLOURS) | set(SHAPES))
    idx_to_word = SPECIAL + words
    word_to_idx = {w: i for i, w in enumerate(idx_to_word)}
    classes = len(COLOURS) + len(SHAPES)
    full_proj = rng.standard_normal((classes, 4096)).astype(np.float32)
    pca_proj = rng.standard_normal((classes, 512)).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    captions_file = {}
    for split, count in (("train", train), ("val", val)):
        colour = rng.integers(0, len(COLOURS), count)
        shape = rng.integers(0, len(SHAPES), count)
        onehot = np.zeros((count, classes), np.float32)
        onehot[np.arange(count), colour] = 1
        onehot[np.arange(count), len(COLOURS) + shape] = 1
        for suffix, proj in (("", full_proj), ("_pca", pca_proj)):
            feats = onehot @ proj + 0.3 * rng.standard_normal((count, proj.shape[1]))
            if not suffix:
                feats = np.maximum(feats, 0)  # fc7 features are non-negative
            with h5py.File(out / f"{split}2014_vgg16_fc7{suffix}.h5", "w") as f:
                f["features"] = feats.astype(np.float32)
        rows, image_idxs = [], []
        for i in range(count):
            for template in rng.choice(TEMPLATES, 3, replace=False):
                text = template.format(c=COLOURS[colour[i]], s=SHAPES[shape[i]]).split()
                row = np.zeros(17, np.int32)
                row[: len(text) + 2] = [1, *(word_to_idx[w] for w in text), 2]
                rows.append(row)
                image_idxs.append(i)
        captions_file[f"{split}_captions"] = np.stack(rows)
        captions_file[f"{split}_image_idxs"] = np.asarray(image_idxs, np.int32)
        (out / f"{split}2014_urls.txt").write_text(
            "".join(f"demo://{split}/{i}/{COLOURS[colour[i]]}-{SHAPES[shape[i]]}\n"
                    for i in range(count)))
    with h5py.File(out / "coco2014_captions.h5", "w") as f:
        for key, value in captions_file.items():
            f[key] = value
    (out / "coco2014_vocab.json").write_text(
        json.dumps({"idx_to_word": idx_to_word, "word_to_idx": word_to_idx}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write (created if missing)")
    parser.add_argument("--train", type=int, default=2000, help="training images")
    parser.add_argument("--val", type=int, default=200, help="validation images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_demo(args.out, args.train, args.val, args.seed)
    print(f"wrote a demo COCO-layout dataset to {args.out}")


if __name__ == "__main__":
    main()
