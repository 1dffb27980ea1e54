"""Write a folder in the COCO captioning layout (the one ``load_coco_data`` reads).

Every file goes through a temporary name and a rename, so an interrupted write never
leaves a half-written file under a real name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from captioning.atomic import atomic_path
from captioning.data.layout import (
    CAPTIONS_FILE,
    OPTIONAL_SPLITS,
    SPLITS,
    VOCAB_FILE,
    features_file,
    urls_file,
)
from captioning.data.pca import PCA, fit_pca, write_projected


@dataclass
class SplitData:
    """One split: captions (M, L) int32, image_idxs (M,) into the rows of features
    (images, D) float32, and one URL per image."""

    captions: np.ndarray
    image_idxs: np.ndarray
    features: np.ndarray
    urls: list[str]


def write_coco_folder(out: str | os.PathLike, idx_to_word: list[str],
                      splits: dict[str, SplitData], pca_dim: int = 512) -> PCA:
    """Write ``splits`` ('train' and 'val') and the vocabulary to ``out``, with the
    features reduced to ``pca_dim`` (or fewer, if the data has fewer) by a PCA fitted on
    the training split. Returns that PCA."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not set(SPLITS) <= set(splits) <= {*SPLITS, *OPTIONAL_SPLITS}:
        raise ValueError(f"expected the splits {SPLITS} (and optionally {OPTIONAL_SPLITS}), "
                         f"got {sorted(splits)}")
    word_to_idx = {w: i for i, w in enumerate(idx_to_word)}
    with atomic_path(out / VOCAB_FILE) as tmp:
        tmp.write_text(json.dumps({"idx_to_word": idx_to_word, "word_to_idx": word_to_idx}),
                       encoding="utf-8")
    with atomic_path(out / CAPTIONS_FILE) as tmp, h5py.File(tmp, "w") as f:
        for split, data in splits.items():
            f[f"{split}_captions"] = np.asarray(data.captions, np.int32)
            f[f"{split}_image_idxs"] = np.asarray(data.image_idxs, np.int32)
    for split, data in splits.items():
        with atomic_path(out / features_file(split, pca=False)) as tmp, \
                h5py.File(tmp, "w") as f:
            f["features"] = np.asarray(data.features, np.float32)
        with atomic_path(out / urls_file(split)) as tmp:
            tmp.write_text("".join(f"{url}\n" for url in data.urls), encoding="utf-8")
    train = splits["train"].features
    pca = fit_pca(train, min(pca_dim, *train.shape))
    for split, data in splits.items():
        write_projected(pca, data.features, out / features_file(split, pca=True))
    return pca
