"""pytest-benchmark, one group per operation of the training step, every available
backend side by side (CuPy timed to the device's end of work), at the step's sizes
(N=128, T=16, W=256, H=512, V=1004, float32); plus decoding's cell update, and greedy
and beam-3 decoding of 1,000 images beside the exercise's greedy loop.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest benchmarks -q
"""

import numpy as np
import pytest

from backend import get_backend
from benchmarks.workload import BENCHMARKED_BACKENDS, Sizes, library_decode, synced, textbook_greedy

SIZES = Sizes()
N, T, W, H, V = SIZES.N, SIZES.T, SIZES.W, SIZES.H, SIZES.V


def _inputs(name, cell):
    be = get_backend(name)
    rng = np.random.default_rng(0)
    k = 4 if cell == "lstm" else 1

    def f32(*shape, scale=0.1):
        return be.asarray((scale * rng.standard_normal(shape)).astype(np.float32))

    return be, f32(N, T, W), f32(N, H), f32(W, k * H), f32(H, k * H), f32(k * H)


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
@pytest.mark.parametrize("name", BENCHMARKED_BACKENDS)
def test_recurrence_forward(benchmark, name, cell):
    benchmark.group = f"{cell}-forward"
    benchmark.extra_info["captions"] = N
    be, x, h0, Wx, Wh, b = _inputs(name, cell)
    forward = be.lstm_forward if cell == "lstm" else be.rnn_forward
    benchmark.pedantic(synced(be, forward), (x, h0, Wx, Wh, b), rounds=10, warmup_rounds=2)


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
@pytest.mark.parametrize("name", BENCHMARKED_BACKENDS)
def test_recurrence_backward(benchmark, name, cell):
    benchmark.group = f"{cell}-backward"
    benchmark.extra_info["captions"] = N
    be, x, h0, Wx, Wh, b = _inputs(name, cell)
    forward, backward = ((be.lstm_forward, be.lstm_backward) if cell == "lstm"
                         else (be.rnn_forward, be.rnn_backward))
    h, cache = forward(x, h0, Wx, Wh, b)
    dh = be.asarray(np.random.default_rng(1).standard_normal(h.shape).astype(np.float32))
    benchmark.pedantic(synced(be, backward), (dh, cache), rounds=10, warmup_rounds=2)


@pytest.mark.benchmark(group="softmax-loss")
@pytest.mark.parametrize("name", BENCHMARKED_BACKENDS)
def test_vocab_softmax_loss(benchmark, name):
    """The scored positions of a packed batch: 12 of T=16 a caption, the synthetic
    captions' mean (the padding is never scored)."""
    benchmark.extra_info["captions"] = N
    be = get_backend(name)
    rng = np.random.default_rng(0)
    M = 12 * N
    h = (0.1 * rng.standard_normal((M, H))).astype(np.float32)
    W_vocab = (0.05 * rng.standard_normal((H, V))).astype(np.float32)
    b_vocab = np.zeros(V, np.float32)
    y = rng.integers(0, V, M)
    args = tuple(be.asarray(a) for a in (h, W_vocab, b_vocab, y, np.ones(M, np.float32)))

    def vocab_loss(*args):
        return be.vocab_loss(*args, N)[2]()  # the weight gradients too

    benchmark.pedantic(synced(be, vocab_loss), args, rounds=10, warmup_rounds=2)


@pytest.mark.benchmark(group="adam")
@pytest.mark.parametrize("name", BENCHMARKED_BACKENDS)
def test_adam_step(benchmark, name):
    benchmark.extra_info["captions"] = N  # one step's update, for a batch of N
    be = get_backend(name)
    rng = np.random.default_rng(0)
    shapes = [(4096, H), (H,), (V, W), (W, 4 * H), (H, 4 * H), (4 * H,), (H, V), (V,)]
    params = [be.asarray(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    grads = [be.asarray(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    states = [(be.xp.zeros_like(p), be.xp.zeros_like(p)) for p in params]

    def run():
        for w, dw, (m, v) in zip(params, grads, states):
            be.adam_update(w, dw, m, v, 1, 1e-3, 0.9, 0.999, 1e-8)

    benchmark.pedantic(synced(be, run), rounds=20, warmup_rounds=3)


@pytest.mark.benchmark(group="decode-step-gates-3000-rows")
@pytest.mark.parametrize("name", BENCHMARKED_BACKENDS)
def test_decode_step_gates(benchmark, name):
    """Beam search's cell update for 1,000 images x 3 beams: gather, lookup, gates."""
    benchmark.extra_info["captions"] = 1000
    be = get_backend(name)
    rng = np.random.default_rng(0)
    rows = 3000
    hw, table = (be.asarray(rng.standard_normal((n, 4 * H)).astype(np.float32))
                 for n in (rows // 3, V))
    prev_c = be.asarray(rng.standard_normal((rows // 3, H)).astype(np.float32))
    words, parents = (be.asarray(rng.integers(0, n, rows)) for n in (V, rows // 3))
    next_c, next_h = (be.xp.empty((rows, H), np.float32) for _ in range(2))

    def run():  # in blocks of 256 rows, as decoding calls it on the CPU
        for r in (slice(s, s + 256) for s in range(0, rows, 256)):
            be.lstm_decode_gates(hw, table, words[r], prev_c, next_c[r], next_h[r], parents[r])

    benchmark.pedantic(synced(be, run), rounds=20, warmup_rounds=2)


@pytest.mark.benchmark(group="decode-1000-images")
@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("name", BENCHMARKED_BACKENDS)
def test_library_decode(benchmark, name, beam):
    benchmark.extra_info["captions"] = 1000
    benchmark.pedantic(library_decode(name, SIZES, beam), rounds=3, warmup_rounds=1)


@pytest.mark.benchmark(group="decode-1000-images")
def test_textbook_greedy_loop(benchmark):
    benchmark.extra_info["captions"] = 1000
    benchmark.pedantic(textbook_greedy(SIZES), rounds=3, warmup_rounds=1)
