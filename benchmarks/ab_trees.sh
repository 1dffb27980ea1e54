#!/usr/bin/env bash
# Unpack commits, oldest first, into .ab-1/, .ab-2/, ... at the repository root (git
# ignores them) for an A/B on a GPU machine, which has no git: benchmarks/gpu_check.sh
# (and benchmarks/gpu_ab.sh) measure each of them and this tree, in turns. Removes the
# .ab-*/ trees left from before, then prints the device tool's carry list (with .whl/ where
# it holds the MPI wheels gpu_check.sh installs).
#   bash benchmarks/ab_trees.sh d5adf74 c5eb58d ...
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [ $# -gt 9 ]; then  # (gpu_check.sh orders the trees by name: .ab-1..9)
    echo "usage: bash benchmarks/ab_trees.sh REV [REV ...] (1 to 9 commits, oldest first)" >&2
    exit 2
fi
for rev in "$@"; do
    git rev-parse --quiet --verify "$rev^{commit}" >/dev/null ||
        { echo "ab_trees.sh: $rev is not a commit of this repository" >&2; exit 2; }
done
rm -rf .ab-*/
carry=()
n=0
for rev in "$@"; do
    n=$((n + 1))
    mkdir ".ab-$n"
    git archive "$rev" | tar -x -C ".ab-$n"
    echo ".ab-$n: $(git log -1 --format='%h %s' "$rev")"
    carry+=("\".ab-$n\"")
done
# MPICH and mpi4py wheels for gpu_check.sh's MPI tests, where they were downloaded
ls .whl/mpich-*.whl .whl/mpi4py-*.whl >/dev/null 2>&1 && carry+=('".whl"')
echo "carry: [$(IFS=,; echo "${carry[*]}" | sed 's/,/, /g')]"
