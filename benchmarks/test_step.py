"""pytest-benchmark suite: one float32 LSTM training step at N=128, T=16, D=4096, W=256,
H=512, V=1004 for every available backend, beside the textbook formulation and the
GEMM floor, in one run (group "train-step"); plus the scatter-add beside 2-D np.add.at.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest benchmarks -q
"""

import numpy as np
import pytest

from backend import available_backends, get_backend
from benchmarks.workload import Sizes, gemm_floor_step, library_step, synthetic_data, textbook_step

SIZES = Sizes()
CPU_BACKENDS = [n for n, s in available_backends().items() if s.available and n != "cupy"]


@pytest.fixture(scope="module")
def data():
    return synthetic_data(SIZES)


@pytest.mark.benchmark(group="train-step", warmup=True, warmup_iterations=3)
@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_library_step(benchmark, data, name):
    benchmark.extra_info["captions_per_step"] = SIZES.N
    benchmark.pedantic(library_step(name, SIZES, data), rounds=7, warmup_rounds=3)


@pytest.mark.benchmark(group="train-step")
def test_textbook_step(benchmark, data):
    benchmark.pedantic(textbook_step(SIZES, data), rounds=7, warmup_rounds=3)


@pytest.mark.benchmark(group="train-step")
def test_gemm_floor(benchmark):
    benchmark.pedantic(gemm_floor_step(SIZES), rounds=7, warmup_rounds=3)


@pytest.mark.benchmark(group="scatter-add")
@pytest.mark.parametrize("name", CPU_BACKENDS + ["np.add.at-2d"])
def test_scatter_add(benchmark, name):
    rng = np.random.default_rng(0)
    idx = rng.integers(0, SIZES.V, (SIZES.N, SIZES.T))
    dout = rng.standard_normal((SIZES.N, SIZES.T, SIZES.W)).astype(np.float32)
    if name == "np.add.at-2d":
        def run():
            dW = np.zeros((SIZES.V, SIZES.W), np.float32)
            np.add.at(dW, idx, dout)
    else:
        be = get_backend(name)

        def run():
            be.embedding_backward(idx, dout, SIZES.V)
    benchmark.pedantic(run, rounds=50, warmup_rounds=5)
