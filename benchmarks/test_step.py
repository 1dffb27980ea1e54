"""pytest-benchmark suite: one float32 LSTM training step at N=128, T=16, D=4096, W=256,
H=512, V=1004 for every available backend (CuPy included where a GPU is, timed to the
device's end of work), beside the textbook formulation and the GEMM floor, in one run
(group "train-step"); plus the scatter-add beside 2-D np.add.at. Each benchmark records
how many captions one call handles (``extra_info["captions"]``), from which
``benchmarks.compare`` reports captions per second.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest benchmarks -q
    python -m pytest benchmarks --benchmark-save=NAME   # then: python -m benchmarks.compare
"""

import numpy as np
import pytest

from backend import get_backend
from benchmarks.workload import (
    BENCHMARKED_BACKENDS,
    Sizes,
    gemm_floor_step,
    library_step,
    synced,
    synthetic_data,
    textbook_step,
)

SIZES = Sizes()


@pytest.fixture(scope="module")
def data():
    return synthetic_data(SIZES)


@pytest.mark.benchmark(group="train-step", warmup=True, warmup_iterations=3)
@pytest.mark.parametrize("name", BENCHMARKED_BACKENDS)
def test_library_step(benchmark, data, name):
    benchmark.extra_info["captions"] = SIZES.N
    benchmark.pedantic(library_step(name, SIZES, data), rounds=7, warmup_rounds=3)


@pytest.mark.benchmark(group="train-step")
def test_textbook_step(benchmark, data):
    benchmark.extra_info["captions"] = SIZES.N
    benchmark.pedantic(textbook_step(SIZES, data), rounds=7, warmup_rounds=3)


@pytest.mark.benchmark(group="train-step")
def test_gemm_floor(benchmark):
    benchmark.extra_info["captions"] = SIZES.N
    benchmark.pedantic(gemm_floor_step(SIZES), rounds=7, warmup_rounds=3)


@pytest.mark.benchmark(group="scatter-add")
@pytest.mark.parametrize("name", BENCHMARKED_BACKENDS + ["np.add.at-2d"])
def test_scatter_add(benchmark, name):
    benchmark.extra_info["captions"] = SIZES.N
    rng = np.random.default_rng(0)
    idx = rng.integers(0, SIZES.V, (SIZES.N, SIZES.T))
    dout = rng.standard_normal((SIZES.N, SIZES.T, SIZES.W)).astype(np.float32)
    if name == "np.add.at-2d":
        def run():
            dW = np.zeros((SIZES.V, SIZES.W), np.float32)
            np.add.at(dW, idx, dout)
    else:
        be = get_backend(name)
        idx, dout = be.asarray(idx), be.asarray(dout)
        run = synced(be, lambda: be.embedding_backward(idx, dout, SIZES.V))
    benchmark.pedantic(run, rounds=50, warmup_rounds=5)
