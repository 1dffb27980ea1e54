"""``captioning data build``: raw caption annotations + image features -> the COCO layout.

Reads COCO caption files (``captions_train2014.json``: ``images`` with ``id``,
``annotations`` with ``image_id`` and ``caption``) or a Karpathy-split
``dataset_coco.json`` (``images[]`` with ``split``, ``cocoid``/``imgid`` and
``sentences[].tokens``), and feature files holding the image ids they belong to.
The vocabulary comes from the training split only.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from captioning.data.features import FeatureFile
from captioning.data.vocab import EncodeStats, build_vocab, encode_captions, tokenize
from captioning.data.writer import SplitData, write_coco_folder

KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
COCO_IMAGE_ROOT = "http://images.cocodataset.org"


@dataclass
class Image:
    image_id: int
    url: str
    captions: list[list[str]] = field(default_factory=list)


@dataclass
class BuildReport:
    """What ``build_dataset`` read, dropped and wrote, for the user to check."""

    images: dict[str, int] = field(default_factory=dict)
    encode: dict[str, EncodeStats] = field(default_factory=dict)
    vocab_size: int = 0
    skipped: Counter = field(default_factory=Counter)
    pca_explained: float = 0.0

    def lines(self) -> list[str]:
        out = [f"vocabulary: {self.vocab_size} words (training split only)"]
        for split, count in self.images.items():
            out.append(f"{split}: {count} images, {self.encode[split]}")
        out += [f"skipped {n} {what}" for what, n in self.skipped.items() if n]
        out.append(f"PCA keeps {100 * self.pca_explained:.1f}% of the training variance")
        return out


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: expected a JSON object with an 'images' list (a COCO "
                         "captions file or a Karpathy dataset_coco.json)")
    return data


def read_coco_captions(path: str | os.PathLike, skipped: Counter) -> list[Image]:
    """One split from a COCO ``captions_*.json``. Annotations naming an image the file
    does not list, and captions with no words, are counted in ``skipped``."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: no 'annotations' list (expected a COCO captions file "
                         "with images and annotations)")
    images: dict[int, Image] = {}
    for entry in data["images"]:
        if not isinstance(entry, dict) or "id" not in entry:
            raise ValueError(f"{path}: an image entry has no 'id': {entry!r:.200}")
        image_id = _integer_id(path, entry["id"], "an image's 'id'")
        url = entry.get("coco_url") or entry.get("flickr_url") or entry.get("file_name", "")
        images[image_id] = Image(image_id, str(url))
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raise ValueError(f"{path}: an annotation lacks 'image_id' or 'caption': "
                             f"{ann!r:.200}")
        image = images.get(_integer_id(path, ann["image_id"], "an annotation's image_id"))
        if image is None:
            skipped["captions of unknown image ids"] += 1
            continue
        caption = _text(path, ann["caption"], f"the caption of image {image.image_id}")
        _add_caption(image, tokenize(caption), skipped)
    return list(images.values())


def read_karpathy(path: str | os.PathLike, skipped: Counter) -> dict[str, list[Image]]:
    """train (train + restval), val and test from a Karpathy ``dataset_coco.json`` (test
    left out when the file has none)."""
    path = Path(path)
    splits: dict[str, list[Image]] = {"train": [], "val": [], "test": []}
    for entry in _load_json(path)["images"]:
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: an entry of 'images' is {entry!r:.100}; expected an "
                             "object with split, cocoid and sentences")
        split = KARPATHY_SPLITS.get(entry.get("split"))
        if split is None:
            skipped[f"{entry.get('split')!s} images"] += 1
            continue
        image_id = entry.get("cocoid", entry.get("imgid"))
        if image_id is None or not isinstance(entry.get("sentences"), list):
            raise ValueError(f"{path}: an image has no 'cocoid'/'imgid' or no 'sentences': "
                             f"{entry!r:.200}")
        url = f"{COCO_IMAGE_ROOT}/{entry.get('filepath', '')}/{entry.get('filename', '')}"
        image = Image(_integer_id(path, image_id, "an image's cocoid"), url)
        for sentence in entry["sentences"]:
            what = f"a sentence of image {image.image_id}"
            if not isinstance(sentence, dict):
                raise ValueError(f"{path}: {what} is {sentence!r:.100}; expected an object "
                                 "with 'tokens' or 'raw'")
            if sentence.get("tokens") is not None:
                tokens = sentence["tokens"]
                if not isinstance(tokens, list):
                    raise ValueError(f"{path}: {what} has tokens {tokens!r:.100}; expected a "
                                     "list of strings")
                text = " ".join(_text(path, t, f"a token of {what}") for t in tokens)
            else:
                text = _text(path, sentence.get("raw", ""), f"the raw text of {what}")
            _add_caption(image, tokenize(text), skipped)
        splits[split].append(image)
    if not splits["test"]:
        del splits["test"]
    return splits


def _text(path: Path, value: object, what: str) -> str:
    """``value`` if it is a string; else ValueError naming the file and what it is."""
    if not isinstance(value, str):
        raise ValueError(f"{path}: {what} is {value!r:.100} ({type(value).__name__}); "
                         "expected a string")
    return value


def _integer_id(path: Path, value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) \
            or not str(value).strip().lstrip("-").isdigit():
        raise ValueError(f"{path}: {what} is {value!r:.100}; expected an integer image id")
    return int(value)


def _add_caption(image: Image, words: list[str], skipped: Counter) -> None:
    if words:
        image.captions.append(words)
    else:
        skipped["empty captions"] += 1


class FeatureIndex:
    """Image id -> feature row across several files (``FeatureFile``: HDF5 with datasets
    ``features`` and ``image_ids``, or ``.npy`` with the ids beside it)."""

    def __init__(self, paths: Iterable[str | os.PathLike]) -> None:
        self.sources: list[tuple[Path, np.ndarray]] = []
        self.where: dict[int, tuple[int, int]] = {}
        self.dim: int | None = None
        for path in map(Path, paths):
            with FeatureFile(path) as source:
                # HDF5 features are read whole (one read); a .npy stays memory-mapped.
                features = source.features if path.suffix == ".npy" else source.features[()]
                ids = source.ids
            if self.dim is not None and features.shape[1] != self.dim:
                raise ValueError(f"{path}: {features.shape[1]}-d features, but earlier files "
                                 f"hold {self.dim}-d ones")
            self.dim = features.shape[1]
            self.sources.append((path, features))
            for row, image_id in enumerate(ids.tolist()):
                self.where[int(image_id)] = (len(self.sources) - 1, row)
        if not self.sources:
            raise ValueError("no feature files given (expected --features FILE ...)")

    def gather(self, image_ids: list[int], progress: bool = False) -> np.ndarray:
        """(len(image_ids), D) float32, rows in the order given; every id must be known."""
        out = np.empty((len(image_ids), self.dim or 0), np.float32)
        for i, image_id in enumerate(tqdm(image_ids, desc="features", unit="image",
                                          leave=False, disable=not progress,
                                          file=sys.stderr)):
            source, row = self.where[image_id]
            out[i] = self.sources[source][1][row]
        if not np.isfinite(out).all():
            bad = image_ids[int(np.argwhere(~np.isfinite(out))[0, 0])]
            raise ValueError(f"the features of image id {bad} hold NaN or infinite values")
        return out


def build_dataset(out: str | os.PathLike, features: list[str | os.PathLike], *,
                  coco_train: str | None = None, coco_val: str | None = None,
                  karpathy: str | None = None, min_count: int = 1, max_length: int = 15,
                  pca_dim: int = 512, skip_missing: bool = False,
                  progress: bool = False) -> BuildReport:
    """Write the COCO layout to ``out`` from annotations and features.

    Give either ``coco_train`` and ``coco_val`` or ``karpathy``. Images without captions
    are left out; images without features are an error unless ``skip_missing``.
    ``progress`` shows a bar while the features are gathered.
    """
    report = BuildReport()
    if karpathy is not None:
        if coco_train or coco_val:
            raise ValueError("give either the Karpathy file or the COCO caption files, "
                             "not both")
        splits = read_karpathy(karpathy, report.skipped)
    elif coco_train and coco_val:
        splits = {"train": read_coco_captions(coco_train, report.skipped),
                  "val": read_coco_captions(coco_val, report.skipped)}
    else:
        raise ValueError("annotations missing: give --karpathy FILE, or both --coco-train "
                         "and --coco-val")
    index = FeatureIndex(features)
    for split, images in splits.items():
        kept = [im for im in images if im.captions]
        report.skipped[f"{split} images without captions"] = len(images) - len(kept)
        missing = [im.image_id for im in kept if im.image_id not in index.where]
        if missing and not skip_missing:
            raise ValueError(f"{len(missing)} {split} images have no features (ids "
                             f"{missing[:5]}...); give the feature files that hold them, "
                             "or --skip-missing to leave them out")
        report.skipped[f"{split} images without features"] = len(missing)
        splits[split] = [im for im in kept if im.image_id in index.where]
        if not splits[split]:
            raise ValueError(f"no {split} images left with both captions and features")
    idx_to_word = build_vocab((c for im in splits["train"] for c in im.captions), min_count)
    word_to_idx = {w: i for i, w in enumerate(idx_to_word)}
    report.vocab_size = len(idx_to_word)
    data = {}
    for split, images in splits.items():
        captions, report.encode[split] = encode_captions(
            [c for im in images for c in im.captions], word_to_idx, max_length)
        image_idxs = np.repeat(np.arange(len(images), dtype=np.int32),
                               [len(im.captions) for im in images])
        data[split] = SplitData(captions, image_idxs,
                                index.gather([im.image_id for im in images], progress),
                                [im.url for im in images])
        report.images[split] = len(images)
    pca = write_coco_folder(out, idx_to_word, data, pca_dim)
    report.pca_explained = float(pca.explained.sum())
    return report
