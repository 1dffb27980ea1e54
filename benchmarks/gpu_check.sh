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
# The whole log goes to $GPU_LOG_DIR (default /tmp); the last lines are shown here.
log="${GPU_LOG_DIR:-/tmp}/gpu_tests.log"
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tee "$log" | tail -30
tests_rc=${PIPESTATUS[0]}
echo "== benchmarks"
timeout 170 python3 -m benchmarks.gpu_bench "$@"
bench_rc=$?
echo "== the same with TF32 matmuls allowed in CuPy (CUPY_TF32=1), as cuDNN allows by default"
CUPY_TF32=1 timeout 60 python3 -m benchmarks.gpu_bench --skip-torch --skip-epoch --steps-only
echo "tests exit $tests_rc, bench exit $bench_rc"
exit $(( tests_rc || bench_rc ))
