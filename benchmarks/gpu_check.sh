#!/usr/bin/env bash
# One call on a GPU machine (CuPy, Numba, h5py, pytest and PyTorch preinstalled, no
# network): the GPU tests, then the GPU benchmark table. Installs nothing.
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__)"
echo "== GPU tests (every backend-parametrised test on cupy, plus the gpu-marked ones)"
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -25
tests_rc=${PIPESTATUS[0]}
echo "== benchmarks"
timeout 200 python3 -m benchmarks.gpu_bench "$@"
bench_rc=$?
echo "tests exit $tests_rc, bench exit $bench_rc"
exit $(( tests_rc || bench_rc ))
