"""The LSTM's steps at a small float32 batch: the persistent kernels against a product
and a gate kernel a step, each way, each replayed from a CUDA graph.

    python -m benchmarks.persistent_probe [--batch 128] [--hidden 512] [--repeats 20]

At N=128 the float32 step (1.10 ms on an H200, session 13) spent ~0.5 ms in its 32
recurrent products (128 x 512 x 2048, ~15 us each against the 4 us that the card's
FP32 peak allows) and more in the gate kernel and the graph's gap after each; issue
17's 4x PyTorch needs ~0.7 ms. Its first lever: a persistent kernel that keeps Wh on
chip across the time steps, with a grid-wide barrier between steps.

The CuPy backend now does that for such batches (``lstm_persistent_forward``,
kernels/cuda_sources.py; ``CupyBackend.lstm_steps_forward``): each block keeps 16 hidden
units' slice of Wh (64 columns, 128 KiB at H = 512) in shared memory for the whole
launch and makes 32 rows of them, so N=128, H=512 is 4 x 32 = 128 blocks, one an SM; a
thread makes 2 rows x 2 units x 4 gates (16 sums; per step of K two 16-byte loads of Wh
and one 8-byte load of h from shared memory for 16 FMAs), adds the input projection,
applies the cell and keeps c in registers for the next step; the previous step's h comes
through L2 in chunks of 32 of K, two chunks on their way while one is used. Counted at
N=128, H=512, per step: 134 M FMAs, 4.1 us at an H100/H200's FP32 peak (~5 us with the
shared-memory loads beside them), h's 8 MB of L2 reads (overlapped), the barrier (~1-2
us): ~7-9 us, against ~15 us of product, a gate kernel and two graph gaps (~21 us).

The backward (``lstm_persistent_backward``) is its twin: a block keeps its 16 units'
rows of Wh (2,048 columns, 128 KiB at H = 512), reads the later step's whole da rows (32
x 2,048) through L2 in chunks of 64 (two on their way while one is used), its four warps
each take a quarter of K with 4 rows x 4 units a thread, and the cells' gradient stays
in registers; after step 0 one more product gives dh0. Counted per step: the same 134 M
FMAs (~5 us), 32 MB of L2 reads (~5.5 us at L2's bandwidth, more if its latency is not
hidden), the barrier: ~7-12 us.

Printed, median of ``--repeats`` replays each, forward and backward (with dWh's
product): the backend with ``persistent_steps`` off (a product and a gate kernel a step,
what the step ran before) and as it is (one cooperative launch each way); and the
forward kernel launched once a step (Wh's slice loaded again each step, no barrier: the
difference is what keeping Wh on chip and the launches saved). And the persistent
path's largest differences from the per-step one (float32: the sums go in another order
than cuBLAS's).
"""

from __future__ import annotations

import argparse
import copy

import numpy as np

from backend import RecordingFailed
from benchmarks.workload import median_time, synced
from kernels.cuda_sources import (
    MODULES,
    OPTIONS,
    PERSISTENT_K,
    PERSISTENT_THREADS,
    PERSISTENT_UNITS,
    persistent_grid,
    persistent_shared_bytes,
)

SOURCE = MODULES["persistent"][0]  # the library's kernel (kernels/cuda_sources.py)


def check_sizes(step_rows: tuple[int, ...], H: int) -> None:
    """ValueError unless the kernel takes these sizes."""
    if H % PERSISTENT_UNITS or H % PERSISTENT_K or H < PERSISTENT_K:
        raise ValueError(f"hidden size {H}: the persistent kernel takes multiples of "
                         f"{max(PERSISTENT_UNITS, PERSISTENT_K)}")
    if any(later > earlier for earlier, later in zip(step_rows, step_rows[1:])):
        raise ValueError(f"step rows {step_rows}: expected a packing (non-increasing)")


def forward_a_launch_a_step(module, a, words, h0, Wh, step_rows: tuple[int, ...], starts,
                            xp):
    """The kernel launched once for each step (``module``: a RawModule of SOURCE, not
    cooperative: no grid barrier is reached) -> hs, cs, gates (P, H), (P, H), (P, 4H);
    a (P or V, 4H), words (P,) int64 or None, h0 (N, H), Wh (H, 4H) float32 and starts
    (PackedRows.starts) device arrays."""
    H = Wh.shape[0]
    check_sizes(step_rows, H)
    if any(x.dtype != np.float32 for x in (a, h0, Wh)):
        raise ValueError(f"a, h0, Wh are {a.dtype}, {h0.dtype}, {Wh.dtype}: the kernel takes "
                         "float32")
    P = sum(step_rows)
    hs, cs = xp.empty((P, H), np.float32), xp.empty((P, H), np.float32)
    gates = xp.empty((P, 4 * H), np.float32)
    kernel = module.get_function("lstm_persistent_forward")
    kernel.max_dynamic_shared_size_bytes = persistent_shared_bytes(H)
    unused = xp.zeros(1, np.uint32)  # (the grid barrier's count)
    null = np.uint64(0)
    for t in range(len(step_rows)):
        kernel((persistent_grid(step_rows[0], H),), (PERSISTENT_THREADS,),
               (a, null if words is None else words, h0, Wh, starts, hs, cs, gates, unused,
                np.int32(t), np.int32(t + 1), np.int32(H)),
               shared_mem=persistent_shared_bytes(H))
    return hs, cs, gates


def _median_ms(backend, fn, repeats: int) -> tuple[float, str]:
    """Median milliseconds of ``fn`` replayed from a CUDA graph as the training step is
    (``backend.record``: once op by op, then recorded), or, where it cannot be
    recorded, issued by the host; and which of the two."""
    run, how = backend.record(fn), "replayed from a graph"
    try:
        run()
        run()
    except RecordingFailed as exc:  # a capture refused is a finding too: say it
        print(f"  (not recorded: {exc})")
        run, how = fn, "issued by the host"
    return 1e3 * median_time(synced(backend, run), repeats=repeats), how


def main(argv: list[str] | None = None, backend=None) -> None:
    """The probe's command; ``backend`` a CuPy backend to run it on (default: the
    registry's ``cupy``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128, help="captions (default 128)")
    parser.add_argument("--hidden", type=int, default=512, help="H (default 512)")
    parser.add_argument("--repeats", type=int, default=20, help="replays timed (default 20)")
    args = parser.parse_args(argv)
    import cupy as cp

    from backend import get_backend
    from benchmarks.workload import Sizes, synthetic_data
    from captioning.packing import Packing, longest_first, scored_lengths
    from kernels.cupy_backend import persistent_blocks

    persistent = backend or get_backend("cupy")
    per_step = copy.copy(persistent)
    per_step.persistent_steps = False
    sizes = Sizes(N=args.batch, H=args.hidden)
    data = synthetic_data(sizes)
    idx = np.random.default_rng(1).integers(0, len(data["train_captions"]), sizes.N)
    _, step_rows = longest_first(scored_lengths(data["train_captions"][idx], 0), sizes.T)
    check_sizes(step_rows, sizes.H)
    H, V, P = sizes.H, sizes.V, sum(step_rows)
    layout = Packing.of(step_rows, persistent).layout
    rng = np.random.default_rng(0)
    table = cp.asarray(rng.standard_normal((V, 4 * H)).astype(np.float32) / 2)
    words = cp.asarray(rng.integers(0, V, P).astype(np.int64))
    h0 = cp.asarray(rng.standard_normal((sizes.N, H)).astype(np.float32) / 2)
    Wh = cp.asarray((rng.standard_normal((H, 4 * H)) / np.sqrt(H)).astype(np.float32))
    print(f"N={sizes.N} H={H} step rows {step_rows} (P={P}): "
          f"{persistent_grid(step_rows[0], H)} "
          f"blocks of {PERSISTENT_THREADS}, {persistent_shared_bytes(H) // 1024} KiB of "
          f"shared memory a block, {cp.cuda.Device().attributes['MultiProcessorCount']} SMs")
    if not persistent_blocks(step_rows[0], H, persistent_shared_bytes(H)):
        print("  (more blocks than this GPU runs at once, or too much shared memory: the "
              "backend takes a product and a gate kernel a step here too)")

    dh = cp.asarray(rng.standard_normal((P, H)).astype(np.float32))

    def forward_on(backend):
        return lambda: backend.lstm_forward_packed(table, h0, Wh, step_rows, words, layout)

    outputs, backward = {}, {}
    for name, backend in (("per step", per_step), ("persistent", persistent)):
        _, cache = forward_on(backend)()
        grads = backend.lstm_backward_packed(dh, cache)
        outputs[name] = [cp.asnumpy(x) for x in (cache[3], cache[4], cache[5], *grads)]
        backward[name] = (lambda b=backend, c=cache: b.lstm_backward_packed(dh, c))
    errors = [float(np.abs(got - want).max() / np.abs(want).max())
              for got, want in zip(outputs["persistent"], outputs["per step"])]
    print("persistent against per step, largest difference relative to each array's "
          "largest value: " + ", ".join(f"{name} {error:.1e}" for name, error in zip(
              ("h", "c", "gates", "da", "dh0", "dWh"), errors)))
    plain = cp.RawModule(code=SOURCE, options=OPTIONS)
    rows = {"forward, a product and a gate kernel a step (persistent_steps off)":
            forward_on(per_step),
            "forward, one cooperative launch (the backend now)": forward_on(persistent),
            "forward, the same kernel launched once a step": lambda: forward_a_launch_a_step(
                plain, table, words, h0, Wh, step_rows, layout.starts, cp),
            "backward and dWh, a gate kernel and a product a step (persistent_steps off)":
            backward["per step"],
            "backward and dWh, one cooperative launch (the backend now)":
            backward["persistent"]}
    steps = len(step_rows)
    for name, fn in rows.items():
        ms, how = _median_ms(persistent, fn, args.repeats)
        print(f"{name}: {ms:.3f} ms for {steps} steps ({how}), "
              f"{1e3 * ms / steps:.1f} us a step")


if __name__ == "__main__":
    main()
