#!/usr/bin/env bash
# One call on a GPU machine (CuPy, Numba, h5py, pytest and PyTorch preinstalled, no
# network): the device check's table (CuPy vs PyTorch in fp32, tf32 and bf16), the
# products' floor, the persistent LSTM kernels' probe (benchmarks/persistent_probe.py),
# the A/Bs of any earlier trees carried (below), the GPU tests, the replayed step's
# kernel profile, the CuPy rows of the pytest-benchmark suite, the bf16-vs-fp32 accuracy
# runs on the built-in dataset, then self-critical training on CuPy. Installs nothing.
# The GPU tests' log, the benchmark JSON and the four runs' parameters go to $GPU_OUT
# (default /tmp/gpu_check): six files, 60 MB.
#   bash benchmarks/gpu_check.sh [--skip-epoch]
# With earlier commits unpacked into .ab-*/ (bash benchmarks/ab_trees.sh REV...; carried
# by the device tool), it measures their steps and this tree's in turns,
# oldest first by name (benchmarks/gpu_ab.sh; ~20 s a tree), right after the table: one
# tree per change to measure.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${GPU_OUT:-/tmp/gpu_check}"
mkdir -p "$out"
# mpi4py and MPICH are not on the GPU image: wheels carried in .whl/ (pip download
# mpi4py mpich for cp312 manylinux, see the device notes) are unpacked for the MPI tests.
if ls .whl/mpich-*.whl .whl/mpi4py-*.whl >/dev/null 2>&1; then
    python3 -m zipfile -e .whl/mpich-*.whl /tmp/mpich && python3 -m zipfile -e \
        .whl/mpi4py-*.whl /tmp/mpi4py-site && chmod +x /tmp/mpich/mpich-*.data/data/bin/*
    mpich=$(echo /tmp/mpich/mpich-*.data/data)
    export PATH="$mpich/bin:$PATH" LD_LIBRARY_PATH="$mpich/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export PYTHONPATH="$PYTHONPATH:/tmp/mpi4py-site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__)"

echo "== the device check"
timeout 200 python3 -m benchmarks.gpu_bench "$@"
bench_rc=$?
echo "== the step's products alone, per precision (bf16 operands beside tf32's float32 ones)"
timeout 60 python3 -m benchmarks.gemm_floor

echo "== the persistent LSTM kernels (Wh kept on chip, a grid barrier a step) against a"
echo "   product and a gate kernel a step, each way, at N=128 fp32"
timeout 90 python3 -m benchmarks.persistent_probe

# The unmeasured changes, apart, before the re-checks below (a timeout cuts those first).
shopt -s nullglob
trees=(.ab-*/)  # earlier commits, oldest first by name; then this tree
if [ ${#trees[@]} -gt 0 ]; then
    echo "== the CuPy step of ${trees[*]} and this tree, in turns"
    bash benchmarks/gpu_ab.sh "${trees[@]}" .
fi

echo "== GPU tests (every backend-parametrised test on cupy, plus the gpu-marked ones)"
ignore=()  # test modules whose CPU-only dependencies this machine lacks
python3 -c "import pycocoevalcap" 2>/dev/null ||
    { ignore+=(--ignore=tests/test_cider.py); echo "(no pycocoevalcap here: test_cider.py left out)"; }
python3 -c "import nbformat, nbclient" 2>/dev/null ||
    { ignore+=(--ignore=tests/test_notebooks.py); echo "(no nbclient here: test_notebooks.py left out)"; }
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests "${ignore[@]}" 2>&1 |
    tee "$out/gpu_tests.log" | tail -30
tests_rc=${PIPESTATUS[0]}

echo "== the replayed step kernel by kernel (device time per step, busy share of its span)"
if ! timeout 150 python3 -m benchmarks.kernel_profile --steps 5 --top 12 --greedy 5000 &&
        command -v nsys >/dev/null; then  # PyTorch's profiler saw nothing: Nsight's sums
    timeout 150 nsys profile -o /tmp/step-profile --force-overwrite true \
        python3 -m benchmarks.gpu_bench --parts steps --skip-torch >/dev/null 2>&1 &&
        nsys stats --report cuda_gpu_kern_sum /tmp/step-profile.nsys-rep 2>&1 | head -40
fi

echo "== pytest-benchmark, the CuPy rows (compare with a CPU run: python -m benchmarks.compare)"
timeout 120 python3 -m pytest benchmarks -q -p no:cacheprovider -k cupy \
    --benchmark-json="$out/gpu-benchmarks.json" 2>&1 | tail -3

echo "== bf16 against fp32: the default model on the built-in dataset, same seed and epochs,"
echo "   two runs of each (on a GPU one seed's runs differ: the table gradient's atomic sums)"
for precision in fp32 bf16; do
    for run in 1 2; do
        name="$precision-$run"
        rm -rf "/tmp/run-$name"
        timeout 240 python3 -m captioning train --backend cupy --precision "$precision" \
            --metrics-every 0 --no-report --samples 0 --out "/tmp/run-$name" 2>&1 | tail -2
        # The parameters alone (15 MB; best.npz with Adam's state is 45 MB, over what the
        # device tool brings back): `captioning evaluate --checkpoint F --beam 1
        # --no-meteor` scores them where pycocoevalcap is.
        python3 -c "import sys; from captioning.checkpoint import load_model, save_model; save_model(sys.argv[2], load_model(sys.argv[1], backend='numpy'))" \
            "/tmp/run-$name/best.npz" "$out/$name-model.npz"
    done
done
echo "== self-critical training on the GPU: the step's split, then 2 epochs from an fp32 run"
timeout 120 python3 -m benchmarks.scst_step --backend cupy --init /tmp/run-fp32-1
timeout 300 python3 -m captioning train --backend cupy --scst --init /tmp/run-fp32-1 \
    --metrics-every 0 --no-report --samples 0 --out /tmp/run-scst 2>&1 | tail -6
echo "tests exit $tests_rc, bench exit $bench_rc"
exit $(( tests_rc || bench_rc ))
