"""Shared fixtures: one ``backend`` fixture parametrised over every known backend
(skipping, with the reason, those that cannot run here) and the CuPy backend run on the
CPU, and a tiny COCO-layout folder written by hand with h5py so that the loader is
checked against the real layout."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from backend import available_backends, get_backend, known_backends
from cuda_on_cpu import COMPILER

_STATUS = available_backends()
CUPY_ON_CPU = "cupy-on-cpu"  # the CuPy backend's code and kernels run on the CPU


def _param(name: str):
    marks = [pytest.mark.gpu] if name == "cupy" else []
    return pytest.param(name, marks=marks, id=name)


def _backend_named(request, monkeypatch):
    """The backend a fixture's parameter names (skipping, with the reason, one that
    cannot run here), made the active one through $CAPTION_BACKEND; for CUPY_ON_CPU the
    CuPy backend as written, run on the CPU (tests/cupy_stand_in.py: its CUDA kernels
    compiled for the host, cuBLAS's products by NumPy, no CUDA graphs), which no name
    selects."""
    if request.param == CUPY_ON_CPU:
        if COMPILER is None:
            pytest.skip("no C++ compiler (g++) here to run the CUDA kernels on the CPU; "
                        "apt-get install g++")
        from cupy_stand_in import cupy_backend_on_cpu

        with cupy_backend_on_cpu() as stand_in, warnings.catch_warnings():
            # Recording is refused on the CPU: the fallback's warning is expected here.
            warnings.filterwarnings("ignore", ".*capture is not emulated on the CPU",
                                    RuntimeWarning)
            yield stand_in
        return
    status = _STATUS[request.param]
    if not status.available:
        pytest.skip(f"backend {request.param} unavailable here: {status.reason}")
    monkeypatch.setenv("CAPTION_BACKEND", request.param)
    yield get_backend(request.param)


@pytest.fixture(params=[_param(name) for name in known_backends()] + [CUPY_ON_CPU])
def backend(request, monkeypatch):
    """Each backend in turn, then the CuPy backend run on the CPU."""
    yield from _backend_named(request, monkeypatch)


@pytest.fixture(params=[_param("cupy"), CUPY_ON_CPU])
def cupy_backend(request, monkeypatch):
    """The CuPy backend on a GPU, and run on the CPU: for what only it does (tensor-core
    precisions, say)."""
    yield from _backend_named(request, monkeypatch)



class Replaying:
    """A stand-in for a CUDA-graph recording that keeps its contract on the CPU: each
    call runs the function once; from the second call on it hands back the same output
    arrays (one, or a tuple of them), overwritten by each run, as a graph's replays do.
    ``refuse`` makes the second call fail as a recording that cannot be made does
    (before anything runs)."""

    def __init__(self, fn, refuse: bool) -> None:
        self.fn, self.refuse, self.calls, self.out = fn, refuse, 0, None

    def __call__(self):
        from backend import RecordingFailed

        self.calls += 1
        if self.calls == 1:
            return self.fn()
        if self.refuse:
            raise RecordingFailed("this stand-in refuses to record")
        result = self.fn()
        results = result if isinstance(result, tuple) else (result,)
        if self.out is None:
            self.out = tuple(np.array(a) for a in results)
        else:
            for kept, new in zip(self.out, results):
                kept[...] = new
        return self.out if isinstance(result, tuple) else self.out[0]


def replaying_backend(refuse: bool = False):
    """A NumPy backend that records (``Backend.record``) with ``Replaying`` stand-ins,
    which it lists in ``recordings``."""
    from kernels.numpy_backend import NumpyBackend

    class ReplayingNumpy(NumpyBackend):
        can_record = True

        def __init__(self) -> None:
            self.recordings: list[Replaying] = []

        def record(self, fn):
            self.recordings.append(Replaying(fn, refuse))
            return self.recordings[-1]

    return ReplayingNumpy()

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
