"""The COCO captioning layout: its file names, splits and special tokens, the one rule
every caption array obeys (word indices inside the vocabulary), and opening its HDF5
files with an error that names the file.

A folder holds coco2014_captions.h5 (train/val captions and image indices),
{train,val}2014_vgg16_fc7.h5 and their _pca.h5 versions (dataset ``features``),
coco2014_vocab.json (idx_to_word, word_to_idx) and {train,val}2014_urls.txt.

The bottom of the data package: it imports nothing of the project.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

SPLITS = ("train", "val")  # every folder has these
OPTIONAL_SPLITS = ("test",)  # the Karpathy test split, where data build wrote one
CAPTIONS_FILE = "coco2014_captions.h5"
VOCAB_FILE = "coco2014_vocab.json"
SPECIAL_TOKENS = ("<NULL>", "<START>", "<END>", "<UNK>")  # indices 0..3 in files we write


def features_file(split: str, pca: bool) -> str:
    """The name of a split's feature file: full fc7 features, or their PCA."""
    return f"{split}2014_vgg16_fc7{'_pca' if pca else ''}.h5"


def urls_file(split: str) -> str:
    """The name of a split's file of image URLs, one per feature row."""
    return f"{split}2014_urls.txt"


def check_word_indices(captions: np.ndarray, vocab_size: int, what: str) -> None:
    """Raise ValueError naming ``what`` if any index lies outside [0, vocab_size)."""
    if captions.size and (captions.min() < 0 or captions.max() >= vocab_size):
        bad = captions[(captions < 0) | (captions >= vocab_size)][0]
        raise ValueError(
            f"{what} hold word index {int(bad)}, outside the vocabulary of {vocab_size} words "
            f"(expected 0..{vocab_size - 1})"
        )


def open_hdf5(path: Path) -> h5py.File:
    """``path`` opened for reading; ValueError naming it if it is not a readable HDF5
    file (truncated, or something else)."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc}); it may be truncated or "
                         "not HDF5 at all") from exc
