"""Shared fixtures: one ``backend`` fixture parametrised over every known backend
(skipping, with the reason, those that cannot run here), and a tiny COCO-layout folder
written by hand with h5py so that the loader is checked against the real layout."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from backend import available_backends, get_backend, known_backends

_STATUS = available_backends()


def _param(name: str):
    marks = [pytest.mark.gpu] if name == "cupy" else []
    return pytest.param(name, marks=marks, id=name)


@pytest.fixture(params=[_param(name) for name in known_backends()])
def backend(request, monkeypatch):
    """Each backend in turn, made the active one through $CAPTION_BACKEND."""
    status = _STATUS[request.param]
    if not status.available:
        pytest.skip(f"backend {request.param} unavailable here: {status.reason}")
    monkeypatch.setenv("CAPTION_BACKEND", request.param)
    return get_backend(request.param)


VOCAB = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "red", "blue", "circle", "square",
         "on", "the", "left", "right", "big", "small"]


def random_captions(rng: np.random.Generator, count: int, length: int = 17,
                    vocab_size: int = len(VOCAB)) -> np.ndarray:
    """<START> words <END> <NULL>..., int32 (count, length), 2 to length-2 words each."""
    captions = np.zeros((count, length), dtype=np.int32)
    for row in captions:
        n = int(rng.integers(2, length - 1))
        row[0] = 1
        row[1 : n + 1] = rng.integers(4, vocab_size, n)
        row[n + 1] = 2
    return captions


def write_tiny_coco(root: Path, *, num_train_images: int = 6, num_val_images: int = 4,
                    captions_per_image: int = 2, feature_dim: int = 16, pca_dim: int = 8,
                    seed: int = 0) -> Path:
    """A complete, valid folder in the COCO captioning layout, written key by key."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "coco2014_captions.h5", "w") as f:
        for split, images in (("train", num_train_images), ("val", num_val_images)):
            count = images * captions_per_image
            f[f"{split}_captions"] = random_captions(rng, count)
            f[f"{split}_image_idxs"] = np.repeat(np.arange(images, dtype=np.int32),
                                                 captions_per_image)
    for split, images in (("train", num_train_images), ("val", num_val_images)):
        for suffix, dim in (("", feature_dim), ("_pca", pca_dim)):
            with h5py.File(root / f"{split}2014_vgg16_fc7{suffix}.h5", "w") as f:
                f["features"] = rng.random((images, dim)).astype(np.float32)
        (root / f"{split}2014_urls.txt").write_text(
            "".join(f"http://images.example/{split}/{i}.jpg\n" for i in range(images))
        )
    vocab = {"idx_to_word": VOCAB, "word_to_idx": {w: i for i, w in enumerate(VOCAB)}}
    (root / "coco2014_vocab.json").write_text(json.dumps(vocab))
    return root


@pytest.fixture
def tiny_coco(tmp_path) -> Path:
    return write_tiny_coco(tmp_path / "coco")


@pytest.fixture(scope="session")
def small_shapes(tmp_path_factory) -> Path:
    """A 1200 + 200 image built-in dataset, written once per test session (a few s)."""
    from captioning.data.shapes import write_shapes_dataset

    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), train=1200, val=200, seed=0)
