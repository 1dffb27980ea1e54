#!/usr/bin/env bash
# The CuPy training step of two or more source trees on one GPU, in turns (A B C, A B C),
# so that each change's effect on the step is measured side by side on the same card and
# call, the tree before it being the one named before it:
#   bash benchmarks/ab_trees.sh <commit> <commit>   # unpacks them into .ab-1/, .ab-2/
#   bash benchmarks/gpu_ab.sh .ab-1 .ab-2 .   # /.ab-*/ is ignored by git, so the device
#                                             # tool can carry them: carry [".ab-1", ...]
# Each turn prints gpu_bench's per-batch, per-precision step times (PyTorch left out).
set -uo pipefail
if [ $# -lt 2 ]; then
    echo "usage: bash benchmarks/gpu_ab.sh TREE_A TREE_B [TREE_C ...] (source trees of" \
         "this project, oldest first)" >&2
    exit 2
fi
for tree in "$@"; do
    if [ ! -d "$tree/benchmarks" ]; then
        echo "gpu_ab.sh: $tree is not a source tree of this project (no benchmarks/)" >&2
        exit 2
    fi
done
status=0
for turn in 1 2; do
    for tree in "$@"; do
        echo "== turn $turn: $tree"
        (cd "$tree" && PYTHONPATH="$PWD" timeout 240 python3 -m benchmarks.gpu_bench \
            --parts steps --skip-torch) | grep -E "^N=" || status=1
    done
done
exit $status
