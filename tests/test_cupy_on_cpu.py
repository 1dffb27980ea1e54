"""The CuPy backend, as written, run on the CPU (tests/cupy_stand_in.py) with its CUDA C
kernels compiled for the host (tests/cuda_on_cpu.py). The ``backend`` fixture runs every
backend test on it (as ``cupy-on-cpu``) against the textbook; here: that those tests
really run the kernels (not NumPy's maths in their place), that its training steps
follow NumPy's, and that the emulator refuses what a GPU would get wrong silently."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import cuda_on_cpu
from backend import get_backend
from captioning import CaptioningRNN, CaptioningTrainer
from captioning.decoding import beam_decode, sample_decode
from cuda_on_cpu import COMPILER, EmulatedModule, EmulationError
from kernels.cuda_sources import MODULES, SORT_MOST_WORDS, SORT_THREADS, name_expressions

pytestmark = pytest.mark.skipif(COMPILER is None, reason="no C++ compiler (g++) here to run "
                                "the CUDA kernels on the CPU; apt-get install g++")

NUMPY = get_backend("numpy")
WORDS = {"<NULL>": 0, "<START>": 1, "<END>": 2, **{f"w{i}": i for i in range(3, 40)}}


@pytest.fixture(scope="module")
def cupy():
    from cupy_stand_in import cupy_backend_on_cpu

    with cupy_backend_on_cpu() as backend:
        yield backend


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


def _models(cupy, dtype=np.float64, cell="lstm"):
    kwargs = dict(input_dim=20, wordvec_dim=6, hidden_dim=10, cell_type=cell, dtype=dtype,
                  seed=3)
    return CaptioningRNN(WORDS, backend=NUMPY, **kwargs), CaptioningRNN(WORDS, backend=cupy,
                                                                        **kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_step_and_decoding_launch_every_kernel_of_the_backend(cupy, dtype):
    """Every raw kernel of kernels/cuda_sources.py and every elementwise kernel runs in
    the losses (the bf16 twin's too), greedy, beam and sampled decoding, and Adam: no
    fallback bypasses one. (Only float32 is stored as bfloat16: the double instances of
    the kernels for stored operands are compiled with their modules, and never
    launched.)"""
    features, captions = _odd_batch(np.random.default_rng(6))
    features = features.astype(dtype)
    _, lstm = _models(cupy, dtype)
    _, rnn = _models(cupy, dtype, cell="rnn")
    cuda_on_cpu.launches.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no recording was tried and refused
        if dtype == np.float32:  # more positions than words: the word table's path
            CaptioningRNN(WORDS, input_dim=20, wordvec_dim=6, hidden_dim=10, cell_type="lstm",
                          dtype=dtype, seed=3, backend=cupy, precision="bf16"
                          ).loss(np.tile(features, (6, 1)), np.tile(captions, (6, 1)))
        _, grads = lstm.loss(features, captions)
        # 32 float32 units: the forward steps in one persistent kernel
        CaptioningRNN(WORDS, input_dim=20, wordvec_dim=6, hidden_dim=32, cell_type="lstm",
                      dtype=np.float32, seed=3, backend=cupy
                      ).loss(features.astype(np.float32), captions)
        rnn.loss(features, captions)
        lstm.sample(features, 9)
        beam_decode(lstm, features, 3, 9)
        sample_decode(lstm, features, 9, temperature=1.0, seed=0)
    # decoding takes the halved cell alone only for rows of another layout
    cell = np.zeros((2, 10), dtype)
    cupy.lstm_gates_forward_halved(np.ones((2, 40), dtype), cell, cell, np.empty_like(cell))
    w, m, v = (np.zeros_like(grads["Wh"]) for _ in range(3))
    cupy.adam_update(w, grads["Wh"], m, v, 1, 1e-3, 0.9, 0.999, 1e-8)
    cupy.adam_update_device(w, grads["Wh"], m, v, np.array([1e-3, 1e-8, 0.9, 0.999], dtype))
    cupy.adam_update_device_many([tuple(cupy.asarray(a) for a in (w, grads["Wh"], m, v))],
                                 cupy.asarray(np.array([[1e-3, 1e-8, 0.9, 0.999]], dtype)))
    # a vocabulary too large to sort by word is scattered in the rows' order
    words, rows = np.array([3, SORT_MOST_WORDS, 3]), np.ones((3, 2), dtype)
    cupy.embedding_backward(words, rows, SORT_MOST_WORDS + 1)
    if dtype == np.float32:
        bf16 = cupy.with_precision("bf16")
        bf16.embedding_backward(words, bf16.as_operand(rows), SORT_MOST_WORDS + 1)
    ctype = "float" if dtype == np.float32 else "double"
    raw = {e for _, kernels in MODULES.values() for e in name_expressions(kernels)
           if e.endswith(f"<{ctype}>") or "<" not in e}
    raw -= {"round_to_bf16<double>", "scatter_add_bf16_rows<double>",
            "scatter_add_sorted_bf16_rows<double>", "caption_xent_bf16<double>"}
    elementwise = {"caption_tanh_backward", "caption_adam", "caption_adam_device"}
    assert not (raw | elementwise) - set(cuda_on_cpu.launches)


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
        np.testing.assert_allclose(cupy.to_numpy(trained["cupy"].model.params[name]), value,
                                   rtol=1e-9, atol=1e-12, err_msg=name)


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
__global__ void block_sum(const float* x, float* out, int synchronised) {
    __shared__ float values[64];
    values[threadIdx.x] = x[threadIdx.x];
    if (synchronised) __syncthreads();
    if (threadIdx.x == 0) {
        float sum = 0;
        for (int i = 0; i < 64; ++i) sum += values[i];
        out[0] = sum;
    }
}
"""
_TOY_KERNELS = ["fill<float>", "divergent_sync", "block_sum"]


@pytest.mark.parametrize(("rows", "V"), [(1, 1), (300, 7), (9_000, 1004),
                                         (2_000, SORT_MOST_WORDS)])
def test_sort_rows_by_word_files_each_row_once_under_its_word(rows, V):
    """The scatter's counting sort, one block: words ascending, order a permutation of
    the rows, each row filed under its own word (negative indices from the end, words
    outside [0, V) last, as V). More rows than its threads load at once, a word as
    frequent as every caption's <START>, and the largest vocabulary it sorts."""
    rng = np.random.default_rng(rows)
    idx = rng.integers(-V, V, rows)
    idx[: rows // 3] = 0
    idx[rows // 2 :: 7] = rng.choice([V, 5 * V, -V - 1], len(idx[rows // 2 :: 7]))
    sort = EmulatedModule(*MODULES["scatter"], name_expressions=name_expressions(
        MODULES["scatter"][1])).get_function("sort_rows_by_word")
    order, words = np.full(rows, -1, np.int32), np.full(rows, -1, np.int32)
    sort((1,), (SORT_THREADS,), (idx, order, words, np.int32(rows), np.int32(V)))
    binned = np.where(idx < 0, idx + V, idx)
    binned[(binned < 0) | (binned >= V)] = V
    assert np.array_equal(np.sort(order), np.arange(rows))
    assert np.array_equal(words, np.sort(binned))
    assert np.array_equal(binned[order], words)


def test_the_emulator_refuses_arguments_a_gpu_would_misread():
    module = EmulatedModule(_TOY, name_expressions=_TOY_KERNELS)
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


def test_the_emulator_catches_a_missing_barrier():
    """Threads run in a shuffled order: thread 0 reading its block's shared values
    without waiting for them is wrong on some launch, as it could be on a GPU."""
    block_sum = EmulatedModule(_TOY, name_expressions=_TOY_KERNELS).get_function("block_sum")
    out = np.zeros(1, np.float32)
    sums = {}
    for synchronised in (1, 0):
        sums[synchronised] = []
        for launch in range(5):  # new values each launch: no earlier one's are left right
            x = np.arange(64, dtype=np.float32) + 100 * (launch + 10 * synchronised)
            block_sum((1,), (64,), (x, out, np.int32(synchronised)))
            sums[synchronised].append(float(out[0]) == float(x.sum()))
    assert all(sums[1]) and not all(sums[0])


_GRID = r"""
extern "C" __global__ void rotate(const int* x, int* out, unsigned int* arrived, int rounds) {
    // Each block keeps its value in dynamic shared memory and, each round, takes the next
    // block's: right only if every block has written before any reads (grid_sync).
    extern __shared__ int kept[];
    const int b = blockIdx.x, next = (b + 1) % gridDim.x;
    if (threadIdx.x == 0) kept[0] = x[b];
    __syncthreads();
    for (int round = 0; round < rounds; ++round) {
        if (threadIdx.x == 0) out[b] = kept[0];
        grid_sync(arrived);
        if (threadIdx.x == 0) kept[0] = out[next];
        grid_sync(arrived);
    }
    if (threadIdx.x == 0) out[b] = kept[0];
}
"""


def test_the_emulator_runs_a_cooperative_grid_with_each_blocks_shared_memory():
    """A cooperative launch (the compiled function's flag, as CuPy's) runs every block at
    once, each with dynamic shared memory of its own, and grid_sync makes them all wait;
    elsewhere grid_sync fails the launch (a GPU could hang), as does more dynamic shared
    memory than the kernel allows, or a cooperative launch from a module with a static
    __shared__ array."""
    x = np.arange(10, 70, 10, dtype=np.int32)
    arrived = np.zeros(1, np.uint32)
    rotate = EmulatedModule(_GRID).get_function("rotate")
    for rounds in (0, 1, 4):
        out = np.zeros_like(x)
        rotate.kernel((len(x),), (64,), (x, out, arrived, np.int32(rounds)), shared_mem=4,
                      enable_cooperative_groups=True)
        assert out.tolist() == np.roll(x, -rounds).tolist()
    with pytest.raises(EmulationError, match="grid_sync in a launch that is not cooperative"):
        rotate((len(x),), (64,), (x, np.zeros_like(x), arrived, np.int32(1)), shared_mem=4)
    with pytest.raises(EmulationError, match="grid_sync in a launch that is not cooperative"):
        rotate.kernel((len(x),), (64,), (x, np.zeros_like(x), arrived, np.int32(1)),
                      shared_mem=4)
    with pytest.raises(EmulationError, match="set the kernel's max_dynamic_shared_size_bytes"):
        rotate((2,), (64,), (x, np.zeros_like(x), arrived, np.int32(0)), shared_mem=64 << 10)
    with pytest.raises(EmulationError, match="over the 232448 bytes this GPU gives"):
        rotate.max_dynamic_shared_size_bytes = 232448 + 4
    rotate.max_dynamic_shared_size_bytes = 64 << 10
    rotate((2,), (64,), (x, np.zeros_like(x), arrived, np.int32(0)), shared_mem=64 << 10)
    fill = EmulatedModule(_TOY, name_expressions=_TOY_KERNELS).get_function("fill<float>")
    out = np.zeros(4, np.float32)
    fill((1,), (32,), (out, np.int64(4), np.int32(5)))  # (a plain launch takes it)
    with pytest.raises(EmulationError, match="static __shared__"):
        fill.kernel((1,), (32,), (out, np.int64(4), np.int32(5)),
                    enable_cooperative_groups=True)
