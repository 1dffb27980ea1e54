"""The benchmarked workload: one float32 training step at fixed sizes, for every
formulation, plus the floor set by the step's matrix products.

Sizes (the issue's): N=128 captions, T=16 steps, D=4096 features, W=256, H=512, V=1004.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from backend import Backend, get_backend
from captioning.model import CELL_WIDTH, CaptioningRNN
from captioning.trainer import CaptioningTrainer


@dataclass(frozen=True)
class Sizes:
    N: int = 128
    T: int = 16
    D: int = 4096
    W: int = 256
    H: int = 512
    V: int = 1004
    cell: str = "lstm"

    @property
    def k(self) -> int:
        return CELL_WIDTH[self.cell]

    def gemms(self) -> list[tuple[int, int, int, int]]:
        """The step's matrix products (m, n, k, count) in the hoisted formulation."""
        N, T, D, W, H, V, k = self.N, self.T, self.D, self.W, self.H, self.V, self.k
        NT = N * T
        return [
            (N, H, D, 1),          # h0 = features W_proj
            (NT, k * H, W, 1),     # x Wx for all steps
            (N, k * H, H, T),      # h Wh, per step
            (NT, V, H, 1),         # scores
            (NT, H, V, 1),         # dh from dscores
            (H, V, NT, 1),         # dW_vocab
            (N, H, k * H, T),      # da Wh^T, per step
            (NT, W, k * H, 1),     # dx
            (W, k * H, NT, 1),     # dWx
            (H, k * H, NT, 1),     # dWh
            (D, H, N, 1),          # dW_proj
        ]

    def flops(self) -> float:
        return float(sum(2 * m * n * kk * c for m, n, kk, c in self.gemms()))


VOCAB_TOKENS = ("<NULL>", "<START>", "<END>", "<UNK>")


def synthetic_data(sizes: Sizes, num_captions: int = 1024, num_images: int = 256,
                   seed: int = 0) -> dict:
    """Random captions of length T+1 (with <NULL> padding) and random fc7-like features."""
    rng = np.random.default_rng(seed)
    captions = rng.integers(4, sizes.V, (num_captions, sizes.T + 1)).astype(np.int32)
    captions[:, 0] = 1
    lengths = rng.integers(8, sizes.T + 1, num_captions)
    captions[np.arange(num_captions), lengths] = 2
    captions[np.arange(sizes.T + 1) > lengths[:, None]] = 0
    words = list(VOCAB_TOKENS) + [f"w{i}" for i in range(4, sizes.V)]
    return {
        "train_captions": captions,
        "train_image_idxs": rng.integers(0, num_images, num_captions).astype(np.int32),
        "train_features": rng.random((num_images, sizes.D), dtype=np.float32),
        "word_to_idx": {w: i for i, w in enumerate(words)},
    }


def library_step(backend: str | Backend, sizes: Sizes, data: dict | None = None
                 ) -> Callable[[], None]:
    """One training step of the library (gather, forward, backward, in-place Adam)."""
    be = get_backend(backend)
    data = data or synthetic_data(sizes)
    model = CaptioningRNN(data["word_to_idx"], input_dim=sizes.D, wordvec_dim=sizes.W,
                          hidden_dim=sizes.H, cell_type=sizes.cell, dtype=np.float32,
                          backend=be, seed=0)
    trainer = CaptioningTrainer(model, data, batch_size=sizes.N, verbose=False, seed=0)
    rng = np.random.default_rng(1)
    batches = [be.asarray(rng.integers(0, len(data["train_captions"]), sizes.N))
               for _ in range(8)]
    counter = iter(range(10**12))

    def step() -> None:
        trainer._step(batches[next(counter) % len(batches)])
        trainer._pending.clear()
        be.synchronize()

    return step


def textbook_step(sizes: Sizes, data: dict | None = None) -> Callable[[], None]:
    """One training step of the textbook formulation (benchmarks/textbook.py)."""
    from benchmarks.textbook import TextbookLSTM

    if sizes.cell != "lstm":
        raise ValueError("the textbook baseline is written for the LSTM")
    data = data or synthetic_data(sizes)
    model = CaptioningRNN(data["word_to_idx"], input_dim=sizes.D, wordvec_dim=sizes.W,
                          hidden_dim=sizes.H, cell_type="lstm", dtype=np.float32,
                          backend="numpy", seed=0)
    textbook = TextbookLSTM(model.params)
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(8):
        idx = rng.integers(0, len(data["train_captions"]), sizes.N)
        batches.append((data["train_features"][data["train_image_idxs"][idx]],
                        data["train_captions"][idx]))
    counter = iter(range(10**12))

    def step() -> None:
        textbook.step(*batches[next(counter) % len(batches)])

    return step


def gemm_floor_step(sizes: Sizes, dtype=np.float32) -> Callable[[], None]:
    """Only the step's matrix products, on preallocated operands: the floor."""
    rng = np.random.default_rng(0)
    operands = []
    for m, n, kk, count in sizes.gemms():
        a = rng.standard_normal((m, kk)).astype(dtype)
        b = rng.standard_normal((kk, n)).astype(dtype)
        operands.append((a, b, np.empty((m, n), dtype=dtype), count))

    def step() -> None:
        for a, b, out, count in operands:
            for _ in range(count):
                np.matmul(a, b, out=out)

    return step


def median_time(fn: Callable[[], None], repeats: int = 7, warmup: int = 2) -> float:
    """Median wall time of ``fn`` in seconds after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))
