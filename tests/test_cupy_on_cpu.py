"""The CuPy backend, as written, and its CUDA C kernels, run on the CPU
(tests/cupy_stand_in.py, tests/cuda_on_cpu.py): every operation that launches a kernel
against the NumPy backend in float32 and float64 at shapes that are not multiples of a
block, then the model's packed loss, gradients, decoding and training steps through
them. Here a machine without a GPU checks what a kernel computes and how the backend
launches it; the ``gpu`` tests check the same on a GPU, with cuBLAS and CUDA graphs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from backend import get_backend
from captioning import CaptioningRNN, CaptioningTrainer
from captioning.decoding import beam_decode
from cuda_on_cpu import COMPILER, EmulatedModule, EmulationError

pytestmark = pytest.mark.skipif(COMPILER is None, reason="no C++ compiler (g++) here to run "
                                "the CUDA kernels on the CPU; apt-get install g++")

NUMPY = get_backend("numpy")
DTYPES = [np.float32, np.float64]
WORDS = {"<NULL>": 0, "<START>": 1, "<END>": 2, **{f"w{i}": i for i in range(3, 40)}}


@pytest.fixture(scope="module")
def cupy():
    from cupy_stand_in import cupy_backend_on_cpu

    with cupy_backend_on_cpu() as backend:
        yield backend


def _close(dtype):
    return {"rtol": 2e-5, "atol": 2e-6} if dtype == np.float32 else {"rtol": 1e-12,
                                                                      "atol": 1e-14}


def _random(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, H", [(37, 24), (5, 40)])
def test_the_lstm_gate_kernels_match_numpy(cupy, dtype, N, H):
    rng = np.random.default_rng(N + H)
    a, a_extra = _random(rng, (N, 4 * H), dtype, 2), _random(rng, (N, 4 * H), dtype)
    prev_c = _random(rng, (N, H), dtype)
    outputs = {}
    for name, be in (("numpy", NUMPY), ("cupy", cupy)):
        gates, next_c, next_h, tanh_c = (np.empty_like(x) for x in (a, prev_c, prev_c, prev_c))
        be.lstm_gates_forward(a.copy(), prev_c, gates, next_c, next_h, tanh_c)
        summed = a.copy()
        c2, h2, t2 = (np.empty_like(prev_c) for _ in range(3))
        be.lstm_gates_forward_sum(summed, a_extra, prev_c, c2, h2, t2)
        halved_c, halved_h = np.empty_like(prev_c), np.empty_like(prev_c)
        be.lstm_gates_forward_halved(a.copy(), prev_c, halved_c, halved_h)
        outputs[name] = (gates, next_c, next_h, tanh_c, summed, c2, h2, t2, halved_c, halved_h)
    for ours, want in zip(outputs["cupy"], outputs["numpy"]):
        np.testing.assert_allclose(ours, want, **_close(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_lstm_backward_kernel_matches_numpy_with_a_strided_upstream(cupy, dtype):
    N, T, H = 19, 3, 24
    rng = np.random.default_rng(1)
    gates = rng.uniform(0.05, 0.95, (N, 4 * H)).astype(dtype)
    prev_c, tanh_c, dnext_c = (_random(rng, (N, H), dtype) for _ in range(3))
    dh_all = _random(rng, (N, T, H), dtype)  # the step functions' dh[:, t]: rows T*H apart
    dh_extra = _random(rng, (N, H), dtype)
    outputs = {}
    for name, be in (("numpy", NUMPY), ("cupy", cupy)):
        da, dprev_c = np.empty_like(gates), np.empty_like(prev_c)
        be.lstm_gates_backward(dh_all[:, 1], dnext_c, gates, prev_c, tanh_c, da, dprev_c)
        da_sum, carried = np.empty_like(gates), dnext_c.copy()
        be.lstm_gates_backward_sum(dh_all[:, 1], dh_extra, carried, gates, prev_c, tanh_c,
                                   da_sum)
        outputs[name] = (da, dprev_c, da_sum, carried)
    for ours, want in zip(outputs["cupy"], outputs["numpy"]):
        np.testing.assert_allclose(ours, want, **_close(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_decodings_cell_kernel_matches_numpy_for_slices_and_back_pointers(cupy, dtype):
    M, N, H, V = 11, 7, 24, 13
    rng = np.random.default_rng(2)
    hw, table = _random(rng, (M, 4 * H), dtype), _random(rng, (V, 4 * H), dtype)
    prev_c, words = _random(rng, (M, H), dtype), rng.integers(0, V, N)
    for rows in (slice(3, 3 + N), np.array([4, 4, 0, 10, 2, 2, 9])):
        outputs = {}
        for name, be in (("numpy", NUMPY), ("cupy", cupy)):
            next_c, next_h = np.empty((N, H), dtype), np.empty((N, H), dtype)
            be.lstm_decode_gates(hw.copy(), table, words, prev_c, next_c, next_h, rows)
            outputs[name] = (next_c, next_h)
        for ours, want in zip(outputs["cupy"], outputs["numpy"]):
            np.testing.assert_allclose(ours, want, **_close(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_cross_entropy_kernel_matches_numpy_with_any_row_weights(cupy, dtype):
    M, V = 41, 300  # V past a block of 256 threads
    rng = np.random.default_rng(3)
    scores = _random(rng, (M, V), dtype, 3)
    y = rng.integers(0, V, M)
    weight = rng.uniform(-1, 2, M).astype(dtype)
    weight[::5] = 0  # unscored rows
    loss, grad = cupy.cross_entropy(scores.copy(), y, weight, 7)
    want_loss, want_grad = NUMPY.cross_entropy(scores.copy(), y, weight, 7)
    np.testing.assert_allclose(float(loss), float(want_loss), **_close(dtype))
    np.testing.assert_allclose(grad, want_grad, **_close(dtype))
    empty_loss, empty_grad = cupy.cross_entropy(scores[:0], y[:0], weight[:0], 7)
    assert float(empty_loss) == 0 and empty_grad.shape == (0, V)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_scatter_kernel_sums_runs_negative_indices_and_zero_rows(cupy, dtype):
    D, V = 7, 9
    # time-major <START> rows (a run of 40), a negative index, rows of zeros, and a count
    # that is not a multiple of a thread's 32 rows
    idx = np.concatenate([np.ones(40, int), [3, -1, 3, 3, 0, 0, 8, -9], np.arange(29) % V])
    dout = _random(np.random.default_rng(4), (len(idx), D), dtype)
    dout[44:46] = 0
    want = np.zeros((V, D), dtype)
    np.add.at(want, idx, dout)
    np.testing.assert_allclose(cupy.embedding_backward(idx, dout, V), want, **_close(dtype))
    strided = np.asfortranarray(dout)  # not C-contiguous: CuPy's own add.at
    np.testing.assert_allclose(cupy.embedding_backward(idx, strided, V), want, **_close(dtype))
    assert not cupy.embedding_backward(idx[:0], dout[:0], V).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [5, 70])
def test_the_argmax_kernel_picks_the_first_maximum_and_any_nan(cupy, dtype, V):
    M = 50  # more rows than a block's 8 warps
    rng = np.random.default_rng(V)
    scores = rng.integers(-3, 3, (M, V)).astype(dtype)  # many ties
    bias = rng.integers(-1, 2, V).astype(dtype)
    scores[7, V // 2] = np.nan
    scores[8, [1, V - 1]] = np.nan  # of two NaNs, the first
    want = NUMPY.argmax_rows(scores.copy(), bias)
    ours = cupy.argmax_rows(scores.copy(), bias)
    assert ours.dtype == np.int64 and ours.tolist() == want.tolist()
    assert cupy.argmax_rows(scores[:0].copy(), bias).shape == (0,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_elementwise_kernels_match_numpy(cupy, dtype):
    rng = np.random.default_rng(5)
    dnext_h, next_h = _random(rng, (9, 13), dtype), np.tanh(_random(rng, (9, 13), dtype))
    np.testing.assert_allclose(cupy.rnn_gates_backward(dnext_h, next_h, np.empty_like(next_h)),
                               NUMPY.rnn_gates_backward(dnext_h, next_h, np.empty_like(next_h)),
                               **_close(dtype))
    w, dw, m = (_random(rng, (6, 5), dtype) for _ in range(3))
    v = np.abs(_random(rng, (6, 5), dtype))
    hyper = np.array([1e-2, 1e-8, 0.9, 0.999], dtype)
    for update in ("adam_update", "adam_update_device"):
        states = {}
        for name, be in (("numpy", NUMPY), ("cupy", cupy)):
            state = [w.copy(), dw, m.copy(), v.copy()]
            if update == "adam_update":
                be.adam_update(*state, 3, 1e-2, 0.9, 0.999, 1e-8)
            else:
                be.adam_update_device(*state, hyper)
            states[name] = state
        for ours, want in zip(states["cupy"], states["numpy"]):
            np.testing.assert_allclose(ours, want, **_close(dtype))


def _odd_batch(rng, N=9, T=7):
    """Unsorted captions of every length, one with a <NULL> inside and one with nothing
    scored, and their features."""
    captions = rng.integers(3, 40, (N, T + 1))
    captions[:, 0] = 1
    for n in range(N):
        end = int(rng.integers(2, T + 1))
        captions[n, end:] = 0
        captions[n, end - 1] = 2
    captions[2, 3] = 0
    captions[4, 1:] = 0
    return rng.standard_normal((N, 20)), captions


def _models(cupy, dtype, cell):
    kwargs = dict(input_dim=20, wordvec_dim=6, hidden_dim=10, cell_type=cell, dtype=dtype,
                  seed=3)
    return CaptioningRNN(WORDS, backend=NUMPY, **kwargs), CaptioningRNN(WORDS, backend=cupy,
                                                                        **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_the_models_packed_loss_and_gradients_match_numpy(cupy, dtype, cell):
    features, captions = _odd_batch(np.random.default_rng(6))
    weights = np.linspace(-1, 2, len(captions))  # self-critical advantages: any sign
    reference, ours = _models(cupy, dtype, cell)
    want_loss, want = reference.loss(features.astype(dtype), captions, caption_weights=weights)
    loss, grads = ours.loss(features.astype(dtype), captions, caption_weights=weights)
    np.testing.assert_allclose(loss, want_loss, **_close(dtype))
    for name, value in want.items():
        scale = np.abs(value).max()
        np.testing.assert_allclose(grads[name] / scale, value / scale, **_close(dtype),
                                   err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_greedy_and_beam_decoding_give_numpys_captions(cupy, dtype):
    features, _ = _odd_batch(np.random.default_rng(7), N=6)
    reference, ours = _models(cupy, dtype, "lstm")
    features = features.astype(dtype)
    want_greedy = reference.sample(features, 9)
    want_beam = beam_decode(reference, features, 3, 9)
    # The first call runs the decoder a recording would replay (every row every step);
    # the second would record it, which the stand-in refuses: op by op, with a warning.
    for call in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if call else "error", RuntimeWarning)
            np.testing.assert_array_equal(ours.sample(features, 9), want_greedy)
            captions, logp = beam_decode(ours, features, 3, 9)
        np.testing.assert_array_equal(captions, want_beam[0])
        np.testing.assert_allclose(logp, want_beam[1], **_close(dtype))


def test_training_steps_on_the_device_path_match_numpy(cupy):
    """The first step runs what a recording holds (the device batch, the recorded
    packing's spare rows, Adam's device scalars); the second, refused a recording, goes
    on op by op. Both as on NumPy."""
    rng = np.random.default_rng(8)
    features, captions = _odd_batch(rng, N=40)
    data = {"word_to_idx": WORDS, "train_captions": captions.astype(np.int32),
            "train_image_idxs": np.arange(40, dtype=np.int32), "train_features": features}
    batches = [rng.integers(0, 40, 16) for _ in range(3)]
    trained = {}
    for name, be in (("numpy", NUMPY), ("cupy", cupy)):
        model = CaptioningRNN(WORDS, input_dim=20, wordvec_dim=6, hidden_dim=10,
                              dtype=np.float64, seed=3, backend=be)
        trainer = CaptioningTrainer(model, data, batch_size=16, verbose=False,
                                    optim_config={"learning_rate": 1e-2}, cuda_graph=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for batch in batches:
                trainer.step(batch)
        trained[name] = trainer
    assert trained["cupy"].training_step.recording_off  # refused, as the stand-in does
    np.testing.assert_allclose(trained["cupy"].losses(), trained["numpy"].losses(), rtol=1e-10)
    for name, value in trained["numpy"].model.params.items():
        np.testing.assert_allclose(trained["cupy"].model.params[name], value, rtol=1e-9,
                                   atol=1e-12, err_msg=name)


# The emulator's own checks: what a GPU would get wrong silently is an error here.
_TOY = r"""
template <typename T>
__global__ void fill(T* out, long long n, int value) {
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < n;
         k += (long long)gridDim.x * blockDim.x) out[k] = value;
}
__global__ void divergent_sync(int* out) {
    if (threadIdx.x < 16) __syncthreads();
    out[threadIdx.x] = 1;
}
"""


def test_the_emulator_refuses_arguments_a_gpu_would_misread():
    module = EmulatedModule(_TOY, name_expressions=["fill<float>", "divergent_sync"])
    fill = module.get_function("fill<float>")
    out = np.zeros(1000, np.float32)
    fill((2,), (128,), (out, np.int64(out.size), np.int32(7)))  # a grid-stride loop
    assert (out == 7).all()
    with pytest.raises(TypeError, match=r"argument 2 \(value, int\) is int64"):
        fill((1,), (32,), (out, np.int64(out.size), 7))  # a Python int is 8 bytes
    with pytest.raises(TypeError, match="array of float64; expected float32"):
        fill((1,), (32,), (out.astype(np.float64), np.int64(10), np.int32(1)))
    with pytest.raises(TypeError, match="takes 3 arguments"):
        fill((1,), (32,), (out, np.int64(10)))
    with pytest.raises(KeyError, match="name expressions"):
        module.get_function("fill<double>")
    with pytest.raises(EmulationError, match="not all of them reach"):
        module.get_function("divergent_sync")((1,), (64,), (np.zeros(64, np.int32),))
    fill((1,), (32,), (out, np.int64(3), np.int32(5)))  # and it goes on working after
    assert out[:4].tolist() == [5, 5, 5, 7]
