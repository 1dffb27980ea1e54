"""The one reader of the COCO captioning layout (``layout.py``), its checks, and the
exercise's minibatch draw. Every folder the project reads goes through here."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from captioning.data.layout import (
    CAPTIONS_FILE,
    OPTIONAL_SPLITS,
    SPLITS,
    VOCAB_FILE,
    check_word_indices,
    features_file,
    open_hdf5,
    urls_file,
)

_FINITE_CHECK_ROWS = 8192  # rows per chunk when scanning features for NaN / inf


def read_coco_folder(base_dir: str | os.PathLike, max_train: int | None = None,
                     pca_features: bool = True) -> dict[str, Any]:
    """Read and check one folder in the COCO captioning layout.

    Returns train_captions / val_captions (M, 17) int32, train_image_idxs / val_image_idxs
    (M,) int32, train_features / val_features (images, 512 or 4096) float32,
    idx_to_word (list), word_to_idx (dict), train_urls / val_urls (str arrays), and the
    same test_* keys where the folder holds a test split.
    ``max_train`` keeps a random subset (NumPy's global generator) of the training
    captions with their image indices; features stay whole.
    Raises FileNotFoundError or ValueError naming the file, key and what was expected.
    """
    base = Path(base_dir)
    if not base.is_dir():
        raise FileNotFoundError(f"data folder {base} does not exist (expected a folder in the "
                                "COCO captioning layout; see the README)")
    data: dict[str, Any] = {}
    captions_path = _require(base / CAPTIONS_FILE)
    with open_hdf5(captions_path) as f:
        present = [*SPLITS, *(s for s in OPTIONAL_SPLITS if f"{s}_captions" in f)]
        for split in present:
            captions = _read(f, captions_path, f"{split}_captions", ndim=2, kind="iu")
            idxs = _read(f, captions_path, f"{split}_image_idxs", ndim=1, kind="iu")
            if len(idxs) != len(captions):
                raise ValueError(
                    f"{captions_path}: {split}_image_idxs has {len(idxs)} entries but "
                    f"{split}_captions has {len(captions)} rows (expected one image index "
                    "per caption)"
                )
            data[f"{split}_captions"] = captions.astype(np.int32, copy=False)
            data[f"{split}_image_idxs"] = idxs.astype(np.int32, copy=False)

    vocab_path = _require(base / VOCAB_FILE)
    data["idx_to_word"], data["word_to_idx"] = read_vocab(vocab_path)
    vocab_size = len(data["idx_to_word"])

    for split in present:
        path = _require(base / features_file(split, pca_features))
        data[f"{split}_features"] = read_features(path)
        num_images = len(data[f"{split}_features"])
        idxs = data[f"{split}_image_idxs"]
        if idxs.size and (idxs.min() < 0 or idxs.max() >= num_images):
            raise ValueError(
                f"{captions_path}: {split}_image_idxs reach index {int(idxs.max())} (min "
                f"{int(idxs.min())}) but {path.name} holds {num_images} feature rows (expected "
                f"indices 0..{num_images - 1})"
            )
        check_word_indices(data[f"{split}_captions"], vocab_size,
                           f"{captions_path}: {split}_captions (vocabulary {vocab_path.name})")
        url_path = _require(base / urls_file(split))
        urls = np.asarray(url_path.read_text(encoding="utf-8").splitlines())
        if len(urls) != num_images:
            raise ValueError(f"{url_path}: {len(urls)} lines, expected one URL per image "
                             f"({num_images}, the rows of {path.name})")
        data[f"{split}_urls"] = urls

    if max_train is not None:
        num_train = len(data["train_captions"])
        if int(max_train) != max_train or max_train < 1:
            raise ValueError(f"max_train must be a positive integer, got {max_train!r}")
        if max_train < num_train:
            keep = np.random.choice(num_train, int(max_train), replace=False)
            data["train_captions"] = data["train_captions"][keep]
            data["train_image_idxs"] = data["train_image_idxs"][keep]
    return data


def read_vocab(path: Path) -> tuple[list[str], dict[str, int]]:
    """idx_to_word and word_to_idx from a vocabulary JSON, checked for consistency."""
    try:
        vocab = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(vocab, dict):
        raise ValueError(f"{path}: expected a JSON object with idx_to_word and word_to_idx, "
                         f"got a {type(vocab).__name__}")
    for key, kind in (("idx_to_word", list), ("word_to_idx", dict)):
        if not isinstance(vocab.get(key), kind):
            raise ValueError(f"{path}: key {key!r} missing or not a {kind.__name__} "
                             "(expected idx_to_word as a list and word_to_idx as a dict)")
    idx_to_word, word_to_idx = vocab["idx_to_word"], vocab["word_to_idx"]
    if "<NULL>" not in word_to_idx:
        raise ValueError(f"{path}: the vocabulary has no '<NULL>' token (expected it at index 0)")
    mismatched = [w for i, w in enumerate(idx_to_word) if word_to_idx.get(w) != i]
    if mismatched or len(word_to_idx) != len(idx_to_word):
        raise ValueError(
            f"{path}: idx_to_word and word_to_idx disagree (e.g. {mismatched[:3]}); expected "
            "word_to_idx[idx_to_word[i]] == i for every i"
        )
    return idx_to_word, word_to_idx


def read_features(path: Path) -> np.ndarray:
    """The ``features`` dataset of an HDF5 file as one float32 array (no second copy),
    checked to be 2-D and finite."""
    with open_hdf5(path) as f:
        ds = f.get("features")
        if not isinstance(ds, h5py.Dataset):
            raise ValueError(f"{path}: no dataset 'features' (found keys {sorted(f.keys())})")
        if ds.ndim != 2 or ds.dtype.kind != "f":
            raise ValueError(f"{path}: 'features' is {ds.dtype} with shape {ds.shape}; "
                             "expected a 2-D float array (images, feature size)")
        features = np.empty(ds.shape, dtype=np.float32)
        if features.size:
            ds.read_direct(features)
    for start in range(0, len(features), _FINITE_CHECK_ROWS):
        chunk = features[start : start + _FINITE_CHECK_ROWS]
        if not np.isfinite(chunk).all():
            row = start + int(np.argwhere(~np.isfinite(chunk))[0, 0])
            raise ValueError(f"{path}: 'features' row {row} holds NaN or infinite values "
                             "(expected finite numbers)")
    return features


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"missing file {path.name} in {path.parent} (the COCO captioning layout needs "
            f"{CAPTIONS_FILE}, {VOCAB_FILE}, the feature .h5 files and the url .txt files)"
        )
    return path


def check_split(data: dict[str, Any], split: str) -> None:
    """ValueError unless ``data`` (from ``read_coco_folder``) holds ``split``."""
    held = [s for s in (*SPLITS, *OPTIONAL_SPLITS) if f"{s}_captions" in data]
    if split not in held:
        raise ValueError(f"no {split!r} split in this data (it holds {held}; `captioning "
                         "data build --karpathy` writes the test split)")


def _read(f: h5py.File, path: Path, key: str, ndim: int, kind: str) -> np.ndarray:
    if key not in f:
        raise ValueError(f"{path}: missing HDF5 key {key!r} (found {sorted(f.keys())})")
    array = f[key][()]
    if array.ndim != ndim or array.dtype.kind not in kind:
        raise ValueError(f"{path}: {key!r} is {array.dtype} with shape {array.shape}; "
                         f"expected a {ndim}-D integer array")
    return array


def sample_coco_minibatch(data: dict[str, Any], batch_size: int = 100,
                          split: str = "train") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random batch (drawn with replacement) -> (captions, image features, urls)."""
    check_split(data, split)
    mask = np.random.choice(len(data[f"{split}_captions"]), batch_size)
    captions = data[f"{split}_captions"][mask]
    image_idxs = data[f"{split}_image_idxs"][mask]
    return captions, data[f"{split}_features"][image_idxs], data[f"{split}_urls"][image_idxs]
