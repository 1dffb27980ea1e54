"""The benchmarked workload: one float32 training step at fixed sizes, for every
formulation, plus the floor set by the step's matrix products.

Sizes (the issue's): N=128 captions, T=16 steps, D=4096 features, W=256, H=512, V=1004.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from backend import Backend, available_backends, get_backend
from captioning.model import CELL_WIDTH, CaptioningRNN
from captioning.packing import Packing, longest_first, scored_lengths
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
    # The share of the N*T positions a packed batch computes: synthetic_data's captions
    # are scored for 8 to 16 steps, 12 of T=16 on average.
    scored: float = 0.75

    @property
    def k(self) -> int:
        return CELL_WIDTH[self.cell]

    def gemms(self, per_position: bool) -> list[tuple[int, int, int, int]]:
        """The step's matrix products (m, n, k, count). ``per_position``: the exercise's
        and PyTorch's, at every position of every step. Else the library's: packed, so
        the recurrence and the vocabulary layer compute only the scored positions
        (``scored`` of them; a step's product has their mean rows), and each vocabulary
        word's input projection is made once when V < positions (the table W_embed Wx,
        then dW_embed and dWx from the table's gradient)."""
        N, T, D, W, H, V, k = self.N, self.T, self.D, self.W, self.H, self.V, self.k
        P = N * T if per_position else round(self.scored * N * T)  # positions computed
        rows = P if per_position else min(V, P)  # CaptioningRNN._input_projections
        return [
            (N, H, D, 1),          # h0 = features W_proj
            (rows, k * H, W, 1),   # x Wx for all steps (or each word's W_embed Wx)
            (P // T, k * H, H, T),  # h Wh, per step
            (P, V, H, 1),          # scores
            (P, H, V, 1),          # dh from dscores
            (H, V, P, 1),          # dW_vocab
            (P // T, H, k * H, T),  # da Wh^T, per step
            (rows, W, k * H, 1),   # dx (or dW_embed from the table's gradient)
            (W, k * H, rows, 1),   # dWx
            (H, k * H, P, 1),      # dWh
            (D, H, N, 1),          # dW_proj
        ]

    def flops(self) -> float:
        """The model's FLOPs per step, as the exercise and PyTorch multiply it (every
        position's input projection): the work every formulation is credited with."""
        return _flops(self.gemms(per_position=True))

    def library_flops(self) -> float:
        """The FLOPs of the products this library's step actually runs."""
        return _flops(self.gemms(per_position=False))


def _flops(gemms: list[tuple[int, int, int, int]]) -> float:
    return float(sum(2 * m * n * kk * c for m, n, kk, c in gemms))


# Every backend that runs here, in the pytest-benchmark suite (CuPy where a GPU is).
BENCHMARKED_BACKENDS = [n for n, s in available_backends().items() if s.available]

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


def synced(backend: Backend, fn: Callable[..., object]) -> Callable[..., None]:
    """``fn`` followed by waiting for the device's queued work, so that timing it times
    the work on a GPU backend (as on the CPU, where work is done when a call returns)."""
    def run(*args: object) -> None:
        fn(*args)
        backend.synchronize()

    return run


def library_step(backend: str | Backend, sizes: Sizes, data: dict | None = None,
                 synchronize: bool = True, cuda_graph: bool = True,
                 precision: str = "fp32") -> Callable[[], None]:
    """One training step of the library (gather, forward, backward, in-place Adam);
    ``synchronize=False`` returns as soon as the host has issued the work;
    ``cuda_graph=False`` runs a GPU step op by op instead of replaying its recording;
    ``precision`` is the model's (tf32 and bf16 on cupy)."""
    be = get_backend(backend)
    data = data or synthetic_data(sizes)
    model = CaptioningRNN(data["word_to_idx"], input_dim=sizes.D, wordvec_dim=sizes.W,
                          hidden_dim=sizes.H, cell_type=sizes.cell, dtype=np.float32,
                          backend=be, seed=0, precision=precision)
    be = model.backend
    trainer = CaptioningTrainer(model, data, batch_size=sizes.N, verbose=False, seed=0,
                                cuda_graph=cuda_graph)
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, len(data["train_captions"]), sizes.N) for _ in range(8)]
    counter = iter(range(10**12))

    def step() -> None:
        trainer.training_step(batches[next(counter) % len(batches)])
        if synchronize:
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
    """Only the library step's matrix products, on preallocated operands: its floor."""
    rng = np.random.default_rng(0)
    operands = []
    for m, n, kk, count in sizes.gemms(per_position=False):
        a = rng.standard_normal((m, kk)).astype(dtype)
        b = rng.standard_normal((kk, n)).astype(dtype)
        operands.append((a, b, np.empty((m, n), dtype=dtype), count))

    def step() -> None:
        for a, b, out, count in operands:
            for _ in range(count):
                np.matmul(a, b, out=out)

    return step


def interleaved_medians(fns: dict[str, Callable[[], None]], repeats: int = 7,
                        warmup: int = 2) -> dict[str, float]:
    """Median wall time of each function, timed in turns (one call of each per round),
    so that a slow spell of a shared machine falls on every row alike. A short pause
    before each call lets the previous one's thread pool (OpenBLAS, PyTorch's OpenMP)
    stop spinning, which would otherwise slow whichever row comes next."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(0.05)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


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


def step_breakdown(backend: str | Backend, sizes: Sizes, data: dict | None = None,
                   repeats: int = 7, precision: str = "fp32") -> dict[str, float]:
    """Median seconds of each part of one training step, timed alone on the step's real
    inputs (with a device synchronisation after each): where the step's time goes."""
    data = data or synthetic_data(sizes)
    model = CaptioningRNN(data["word_to_idx"], input_dim=sizes.D, wordvec_dim=sizes.W,
                          hidden_dim=sizes.H, cell_type=sizes.cell, dtype=np.float32,
                          backend=backend, seed=0, precision=precision)
    be = model.backend
    p = model.params
    idx = np.random.default_rng(1).integers(0, len(data["train_captions"]), sizes.N)
    order, step_rows = longest_first(scored_lengths(data["train_captions"][idx], 0), sizes.T)
    idx = idx[order]
    features = be.asarray(data["train_features"][data["train_image_idxs"][idx]])
    captions = be.asarray(data["train_captions"][idx])
    packing = Packing.of(step_rows, be)
    flat = captions.reshape(-1)
    words, targets = flat[packing.positions], flat[packing.target_positions]
    weight = (targets != 0).astype(np.float32)
    forward, backward = ((be.lstm_forward_packed, be.lstm_backward_packed)
                         if sizes.cell == "lstm"
                         else (be.rnn_forward_packed, be.rnn_backward_packed))
    # The model's own sequence (CaptioningRNN.loss), part by part, on its packed batch.
    h0, _ = be.affine_forward(features, p["W_proj"], p["b_proj"])
    table, table_cache = be.affine_forward(p["W_embed"], p["Wx"], p["b"])
    h, cache = forward(table, h0, p["Wh"], step_rows, words, packing.layout)
    _, dh, weight_grads = be.vocab_loss(h, p["W_vocab"], p["b_vocab"], targets, weight,
                                        sizes.N)
    weight_grads()
    da, dh0, _ = backward(dh, cache)
    _, grads = model.loss(features, captions, packing=packing)
    states = {k: (be.xp.zeros_like(v), be.xp.zeros_like(v)) for k, v in p.items()}
    updated = {k: v.copy() for k, v in p.items()}  # Adam works in place on these

    def timed(fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            fn()
            be.synchronize()
        return run

    def adam() -> None:
        for k, w in updated.items():
            be.adam_update(w, grads[k], *states[k], 1, 1e-3, 0.9, 0.999, 1e-8)

    def table_grads() -> None:
        dtable = be.embedding_backward(words, da, len(table))
        be.affine_backward(dtable, table_cache)
        be.matmul(features.T, dh0)

    parts = {
        "h0 + every word's input projection (table)": lambda: (
            be.affine_forward(features, p["W_proj"], p["b_proj"]),
            be.affine_forward(p["W_embed"], p["Wx"], p["b"])),
        "table lookup + recurrence forward (16 steps)": lambda: forward(
            table, h0, p["Wh"], step_rows, words, packing.layout),
        "vocabulary scores + softmax loss (fwd + bwd)": lambda: be.vocab_loss(
            h, p["W_vocab"], p["b_vocab"], targets, weight, sizes.N)[2](),
        "recurrence backward (16 steps) + dWh": lambda: backward(dh, cache),
        "table scatter-add + W_embed, Wx, b, W_proj grads": table_grads,
        "Adam (every parameter)": adam,
        "whole step (loss + grads + Adam)": library_step(be, sizes, data,
                                                         precision=precision),
    }
    return {name: median_time(timed(fn), repeats=repeats, warmup=2)
            for name, fn in parts.items()}


DECODE_IMAGES = 1000  # the decoding benchmark: 1,000 images, 16 steps, no early stop


def decode_model(backend: str | Backend, sizes: Sizes, images: int = DECODE_IMAGES,
                 precision: str = "fp32") -> tuple[CaptioningRNN, np.ndarray]:
    """A float32 model at the benchmark sizes (no <END>, so every caption runs all 16
    steps) and 1,000 fc7-like feature rows."""
    words = ["<NULL>", "<START>"] + [f"w{i}" for i in range(2, sizes.V)]
    model = CaptioningRNN({w: i for i, w in enumerate(words)}, input_dim=sizes.D,
                          wordvec_dim=sizes.W, hidden_dim=sizes.H, cell_type=sizes.cell,
                          dtype=np.float32, backend=backend, seed=0, precision=precision)
    features = np.random.default_rng(0).random((images, sizes.D), dtype=np.float32)
    return model, features


def library_decode(backend: str | Backend, sizes: Sizes, beam: int = 1,
                   images: int = DECODE_IMAGES, precision: str = "fp32"
                   ) -> Callable[[], None]:
    """Greedy (beam 1) or beam-search decoding of ``images`` images (1,000), T steps, by
    the library, its products in ``precision``."""
    from captioning.decoding import beam_decode, greedy_decode

    model, features = decode_model(backend, sizes, images, precision)
    features = model.backend.asarray(features)
    if beam == 1:
        return lambda: greedy_decode(model, features, sizes.T)
    return lambda: beam_decode(model, features, beam, sizes.T)


def textbook_greedy(sizes: Sizes) -> Callable[[], None]:
    """The exercise's batched greedy loop, as a student writes it (benchmarks/textbook)."""
    from benchmarks.textbook import textbook_sample

    model, features = decode_model("numpy", sizes)
    return lambda: textbook_sample(model.params, features, sizes.T)
