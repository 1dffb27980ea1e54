#!/usr/bin/env bash
# The CuPy training step of two source trees on one GPU, in turns (A B A B), so that a
# change's effect on the step is measured side by side on the same card and call:
#   mkdir .ab-before && git archive <commit> | tar -x -C .ab-before
#   bash benchmarks/gpu_ab.sh .ab-before .    # /.ab-*/ is ignored by git, so the device
#                                             # tool can carry it: carry [".ab-before"]
# Each turn prints gpu_bench's per-batch, per-precision step times (PyTorch left out).
set -uo pipefail
if [ $# -ne 2 ] || [ ! -d "$1/benchmarks" ] || [ ! -d "$2/benchmarks" ]; then
    echo "usage: bash benchmarks/gpu_ab.sh TREE_A TREE_B (two source trees of this project)" >&2
    exit 2
fi
status=0
for turn in 1 2; do
    for tree in "$1" "$2"; do
        echo "== turn $turn: $tree"
        (cd "$tree" && PYTHONPATH="$PWD" timeout 240 python3 -m benchmarks.gpu_bench \
            --parts steps --skip-torch) | grep -E "^N=" || status=1
    done
done
exit $status
