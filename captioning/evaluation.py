"""Judging a trained model on a split: decode every image, score against all of its
references, and pick samples to show."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from captioning.data.reader import check_split
from captioning.data.vocab import decode_captions
from captioning.decoding import beam_decode, greedy_decode, sample_decode
from captioning.metrics import caption_metrics, strip_special
from captioning.report import Sample


def references_by_image(data: dict[str, Any], split: str) -> list[list[str]]:
    """For each image of ``split``, the text of all its captions (special tokens gone);
    ValueError if the data has no such split."""
    check_split(data, split)
    refs: list[list[str]] = [[] for _ in range(len(data[f"{split}_features"]))]
    texts = decode_captions(data[f"{split}_captions"], data["idx_to_word"])
    for text, image in zip(texts, data[f"{split}_image_idxs"]):
        refs[int(image)].append(strip_special(text))
    return refs


def decode(model: Any, features: Any, beam: int = 1, temperature: float | None = None,
           top_k: int | None = None, seed: int | None = 0, max_length: int = 16) -> np.ndarray:
    """Captions (N, max_length) by greedy (beam 1), beam search, or sampling."""
    if temperature is not None:
        return sample_decode(model, features, max_length, temperature, top_k, seed)
    if beam == 1:
        return greedy_decode(model, features, max_length)
    return beam_decode(model, features, beam, max_length)[0]


def evaluate(model: Any, data: dict[str, Any], split: str = "val", beams: tuple[int, ...] = (1, 3),
             max_images: int | None = None, meteor: bool = True, max_length: int = 16,
             shuffle_seed: int | None = None) -> dict[str, dict[str, float | str]]:
    """{'greedy': metrics, 'beam 3': metrics, ...} on the first ``max_images`` images
    that have references; each row also holds its decoding speed in captions/s.

    ``shuffle_seed`` gives each image the features of another (a control: a model that
    uses the image scores much lower; one that ignores it, the same)."""
    refs = references_by_image(data, split)
    images = np.array([i for i, r in enumerate(refs) if r])
    if max_images is not None:
        images = images[:max_images]
    if not len(images):
        raise ValueError(f"the {split} split has no images with reference captions")
    features = data[f"{split}_features"][images]
    if shuffle_seed is not None:
        features = features[np.random.default_rng(shuffle_seed).permutation(len(features))]
    rows: dict[str, dict[str, float | str]] = {}
    for beam in beams:
        decode(model, features[:2], beam, max_length=max_length)  # warm-up (compiles)
        start = time.perf_counter()
        captions = decode(model, features, beam, max_length=max_length)
        elapsed = time.perf_counter() - start
        texts = decode_captions(captions, data["idx_to_word"])
        scores = caption_metrics(texts, [refs[i] for i in images], meteor=meteor)
        scores["captions_per_s"] = len(images) / max(elapsed, 1e-9)
        scores["images"] = float(len(images))
        rows["greedy" if beam == 1 else f"beam {beam}"] = scores
    return rows


def pick_samples(model: Any, data: dict[str, Any], split: str = "val", count: int = 8,
                 seed: int = 0, decode_options: dict[str, Any] | None = None) -> list[Sample]:
    """``count`` random images of ``split`` (picked with ``seed``), each with a caption
    from ``decode(**decode_options)`` (default greedy) and one reference."""
    refs = references_by_image(data, split)
    candidates = [i for i, r in enumerate(refs) if r]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(candidates, min(count, len(candidates)), replace=False)
    captions = decode(model, data[f"{split}_features"][chosen], **(decode_options or {}))
    texts = decode_captions(captions, data["idx_to_word"])
    return [Sample(str(data[f"{split}_urls"][i]), strip_special(text), refs[i][0], int(i))
            for i, text in zip(chosen, texts)]
