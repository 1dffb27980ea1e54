"""Can a persistent kernel beat cuBLAS at the small float32 step's recurrence? A probe,
run on a GPU machine before any such kernel goes into the library.

    python -m benchmarks.persistent_probe [--batch 128] [--hidden 512] [--repeats 20]

At N=128 the float32 step (1.10 ms on an H200, session 13) spends ~0.5 ms in its 32
recurrent products (128 x 512 x 2048, ~15 us each against the 4 us that the card's
FP32 peak allows) and more in the gate kernel and the graph's gap after each. Issue
17's 4x PyTorch needs ~0.7 ms. The lever it names first: a persistent kernel that keeps
Wh on chip across the time steps, with a grid-wide barrier between steps.

``lstm_persistent_forward`` below is the forward half of that: each block owns 16 hidden
units (their four gates: 64 columns of Wh, kept in shared memory for the whole launch,
128 KiB at H = 512) for 32 rows of the batch, so N=128, H=512 is 4 x 32 = 128 blocks,
one per SM; a thread makes 2 rows x 2 units x 4 gates (16 sums; per step of K two
16-byte loads of Wh and one 8-byte load of h from shared memory for 16 FMAs), adds the
input projection, applies the cell and keeps c in registers for the next step. The
previous step's h (from every block) is read through L2 in chunks of 32 of K, double
buffered. Counted at N=128, H=512 per step: 134 M FMAs, 4.1 us at an H100/H200's FP32
peak (~60% of it is a good SIMT tile: ~7 us), plus h's 8 MB of L2 reads (~1.5 us,
overlapped) and the barrier (~1-2 us).

The probe times, each replayed from a CUDA graph, median of ``--repeats``:
- the library's packed forward (one product and one gate kernel a step: what the
  training step runs now);
- this kernel launched once a step (Wh's slice loaded again each step, no barrier);
- this kernel once for all the steps (persistent; a cooperative launch, so that every
  block runs at once);
and checks the kernel's h, c and gates against the library's (float32; the sums' order
differs from cuBLAS's). If the persistent row wins by what the counts say, the library
gets it (and its backward twin); if not, the printed figures say where it stands.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

ROWS_PER_BLOCK = 32
UNITS_PER_BLOCK = 16
THREADS = 128  # 16 pairs of rows x 8 pairs of units
K_CHUNK = 32  # of h's columns staged in shared memory at a time
H_STRIDE = ROWS_PER_BLOCK + 2  # a staged chunk's row pitch (floats): even, few conflicts

SOURCE = r"""
#define PF_ROWS 32
#define PF_UNITS 16
#define PF_THREADS 128
#define PF_K 32
#define PF_STRIDE 34

#ifdef __CUDACC__
// Every block of a cooperative launch waits here until all have arrived; arrived counts
// arrivals over the launch and starts at 0. A block's stores before it are seen by every
// block after it (fences either side of the count, as cooperative groups' grid sync).
__device__ void grid_sync(unsigned int* arrived) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        const unsigned int ticket = atomicAdd(arrived, 1u);
        const unsigned int goal = (ticket / gridDim.x + 1) * gridDim.x;
        while ((int)(goal - *(volatile unsigned int*)arrived) > 0) {}
        __threadfence();
    }
    __syncthreads();
}
#endif

__device__ __forceinline__ float sigmoid_of(float x) { return 1 / (1 + exp(-x)); }

// Stage h rows row0 .. row0 + 31 (zeros from row n on), columns k0 .. k0 + 31, of prev
// (rows of H floats) into registers: thread i takes elements i, i + 128, ... of the
// 32 x 32 chunk, row by row, so that a warp reads one row's 128 contiguous bytes.
__device__ __forceinline__ void load_chunk(const float* prev, int row0, int n, int H, int k0,
                                           float (&staged)[8]) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int e = threadIdx.x + PF_THREADS * j, r = e / PF_K, k = e % PF_K;
        staged[j] = row0 + r < n ? __ldcg(prev + (long long)(row0 + r) * H + k0 + k) : 0.0f;
    }
}

__device__ __forceinline__ void store_chunk(float* h_s, const float (&staged)[8]) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int e = threadIdx.x + PF_THREADS * j, r = e / PF_K, k = e % PF_K;
        h_s[k * PF_STRIDE + r] = staged[j];
    }
}

extern "C" __global__ void __launch_bounds__(PF_THREADS)
lstm_persistent_forward(const float* a, const long long* words, const float* h0,
                        const float* Wh, const long long* starts, float* hs, float* cs,
                        float* gates, unsigned int* arrived, int first_step, int last_step,
                        int H) {
    // The LSTM forward over packed steps first_step .. last_step - 1 (step t's rows are
    // starts[t] .. starts[t + 1] - 1, at most as many as step t - 1's), float32, all
    // arrays C-contiguous: gates (P, 4H) = the activated gates of a (P, 4H) pre-
    // activations (a table (V, 4H) looked up by words (P,) where words is not null) +
    // prev_h Wh (Wh (H, 4H)); cs, hs (P, H) the cell and hidden states; prev_h is h0
    // (N, H) at step 0, else the step before's rows of hs, and prev_c zero at step 0,
    // else the step before's rows of cs. Blocks: (rows / 32) x (H / 16), block b taking
    // rows 32 (b / (H / 16)) .. + 31 and units 16 (b % (H / 16)) .. + 15; dynamic shared
    // memory (H * 64 + 2 * 32 * 34) floats. Over several steps, a cooperative launch
    // (grid_sync between steps), arrived zero.
    extern __shared__ float shared[];
    float* w_s = shared;                  // [k][2 halves][8 units][4 gates]
    float* h_s = shared + H * 4 * PF_UNITS;  // two chunks [k][row], row pitch PF_STRIDE
    const int groups = H / PF_UNITS;
    const int row0 = blockIdx.x / groups * PF_ROWS, unit0 = blockIdx.x % groups * PF_UNITS;
    const int pair = threadIdx.x % 8, rows2 = threadIdx.x / 8;  // units pair, pair + 8
    for (int e = threadIdx.x; e < H * 4 * PF_UNITS; e += PF_THREADS) {
        // (read along Wh's rows: 16 units of a gate are 64 contiguous bytes)
        const int k = e / (4 * PF_UNITS), g = e / PF_UNITS % 4, u = e % PF_UNITS;
        w_s[k * 4 * PF_UNITS + u / 8 * 32 + u % 8 * 4 + g] =
            Wh[(long long)k * 4 * H + g * H + unit0 + u];
    }
    float c_kept[2][2];  // this thread's cells, carried from step to step in registers
    for (int t = first_step; t < last_step; ++t) {
        const long long start = starts[t];
        const int n = (int)(starts[t + 1] - start);
        const float* prev = t ? hs + starts[t - 1] * H : h0;
        if (t == first_step) {
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const int row = row0 + 2 * rows2 + i, unit = unit0 + pair + 8 * j;
                    c_kept[i][j] = t && row < n ? cs[(starts[t - 1] + row) * H + unit] : 0.0f;
                }
        }
        __syncthreads();  // (w_s written; the last step's chunks all read)
        if (row0 < n) {  // (the whole block alike: its barriers are all or none)
            float sum[2][2][4] = {};
            float staged[8];
            load_chunk(prev, row0, n, H, 0, staged);
            store_chunk(h_s, staged);
            __syncthreads();
            const int chunks = H / PF_K;
            for (int c = 0; c < chunks; ++c) {
                if (c + 1 < chunks) load_chunk(prev, row0, n, H, (c + 1) * PF_K, staged);
                const float* h_c = h_s + (c % 2) * PF_K * PF_STRIDE;
                const float* w_c = w_s + c * PF_K * 4 * PF_UNITS;
#pragma unroll 8
                for (int k = 0; k < PF_K; ++k) {
                    const float2 h = *(const float2*)(h_c + k * PF_STRIDE + 2 * rows2);
                    const float4 w0 = *(const float4*)(w_c + k * 4 * PF_UNITS + pair * 4);
                    const float4 w1 = *(const float4*)(w_c + k * 4 * PF_UNITS + 32 + pair * 4);
                    sum[0][0][0] += h.x * w0.x; sum[0][0][1] += h.x * w0.y;
                    sum[0][0][2] += h.x * w0.z; sum[0][0][3] += h.x * w0.w;
                    sum[0][1][0] += h.x * w1.x; sum[0][1][1] += h.x * w1.y;
                    sum[0][1][2] += h.x * w1.z; sum[0][1][3] += h.x * w1.w;
                    sum[1][0][0] += h.y * w0.x; sum[1][0][1] += h.y * w0.y;
                    sum[1][0][2] += h.y * w0.z; sum[1][0][3] += h.y * w0.w;
                    sum[1][1][0] += h.y * w1.x; sum[1][1][1] += h.y * w1.y;
                    sum[1][1][2] += h.y * w1.z; sum[1][1][3] += h.y * w1.w;
                }
                if (c + 1 < chunks) store_chunk(h_s + ((c + 1) % 2) * PF_K * PF_STRIDE, staged);
                __syncthreads();
            }
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int row = row0 + 2 * rows2 + i;
                if (row >= n) continue;
                const long long p = start + row;
                const float* x = a + (words ? words[p] : p) * 4 * H;
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const int unit = unit0 + pair + 8 * j;
                    const float ig = sigmoid_of(x[unit] + sum[i][j][0]);
                    const float fg = sigmoid_of(x[H + unit] + sum[i][j][1]);
                    const float og = sigmoid_of(x[2 * H + unit] + sum[i][j][2]);
                    const float gg = tanh(x[3 * H + unit] + sum[i][j][3]);
                    const float c = fg * c_kept[i][j] + ig * gg;
                    c_kept[i][j] = c;
                    cs[p * H + unit] = c;
                    hs[p * H + unit] = og * tanh(c);
                    float* out = gates + p * 4 * H + unit;
                    out[0] = ig;
                    out[H] = fg;
                    out[2 * H] = og;
                    out[3 * H] = gg;
                }
            }
        }
        if (t + 1 < last_step) grid_sync(arrived);
    }
}
"""


def shared_bytes(H: int) -> int:
    """The kernel's dynamic shared memory at hidden size H: Wh's slice and two chunks."""
    return 4 * (H * 4 * UNITS_PER_BLOCK + 2 * K_CHUNK * H_STRIDE)


def blocks(rows: int, H: int) -> int:
    """The kernel's grid for steps of at most ``rows`` rows."""
    return -(-rows // ROWS_PER_BLOCK) * (H // UNITS_PER_BLOCK)


def check_sizes(step_rows: tuple[int, ...], H: int) -> None:
    """ValueError unless the kernel takes these sizes."""
    if H % UNITS_PER_BLOCK or H % K_CHUNK or H < K_CHUNK:
        raise ValueError(f"hidden size {H}: the persistent kernel takes multiples of "
                         f"{max(UNITS_PER_BLOCK, K_CHUNK)}")
    if any(later > earlier for earlier, later in zip(step_rows, step_rows[1:])):
        raise ValueError(f"step rows {step_rows}: expected a packing (non-increasing)")


def step_starts(step_rows: tuple[int, ...]) -> np.ndarray:
    """(T + 1,) int64: each step's first packed row, then the rows in all (the kernel's
    ``starts``; uploaded once, outside any graph capture)."""
    return np.concatenate([[0], np.cumsum(step_rows)]).astype(np.int64)


def forward(module, a, words, h0, Wh, step_rows: tuple[int, ...], starts, xp,
            persistent: bool):
    """The kernel's forward (``module``: a RawModule of SOURCE, cooperative where
    ``persistent``) -> hs, cs, gates (P, H), (P, H), (P, 4H); a (P or V, 4H), words (P,)
    int64 or None, h0 (N, H), Wh (H, 4H) float32 and starts (``step_starts``) device
    arrays. One launch for every step where ``persistent``, else one a step."""
    H = Wh.shape[0]
    check_sizes(step_rows, H)
    if any(x.dtype != np.float32 for x in (a, h0, Wh)):
        raise ValueError(f"a, h0, Wh are {a.dtype}, {h0.dtype}, {Wh.dtype}: the kernel takes "
                         "float32")
    P = sum(step_rows)
    hs, cs = xp.empty((P, H), np.float32), xp.empty((P, H), np.float32)
    gates = xp.empty((P, 4 * H), np.float32)
    arrived = xp.zeros(1, np.uint32)
    kernel = module.get_function("lstm_persistent_forward")
    kernel.max_dynamic_shared_size_bytes = shared_bytes(H)
    grid = (blocks(step_rows[0], H),)
    null = np.uint64(0)

    def launch(first: int, last: int) -> None:
        kernel(grid, (THREADS,), (a, null if words is None else words, h0, Wh, starts, hs,
                                  cs, gates, arrived, np.int32(first), np.int32(last),
                                  np.int32(H)), shared_mem=shared_bytes(H))

    if persistent:
        launch(0, len(step_rows))
    else:
        for t in range(len(step_rows)):
            launch(t, t + 1)
    return hs, cs, gates


def _median_ms(cp, fn, repeats: int) -> tuple[float, str]:
    """Median milliseconds of ``fn`` (run once first, so that everything compiles outside
    a capture) replayed from a CUDA graph, or, where it cannot be captured, issued by
    the host; and which of the two."""
    fn()
    stream = cp.cuda.Stream(non_blocking=True)
    try:
        with stream:
            stream.begin_capture()
            try:
                fn()
            finally:
                graph = stream.end_capture()
        run, how = (lambda: graph.launch(stream)), "replayed from a graph"
    except Exception as exc:  # a capture refused is a finding too: say it, time plainly
        print(f"  (not captured: {type(exc).__name__}: {exc})")
        run, how = fn, "issued by the host"
    run()
    stream.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with stream:
            run()
        stream.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times)), how


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128, help="captions (default 128)")
    parser.add_argument("--hidden", type=int, default=512, help="H (default 512)")
    parser.add_argument("--repeats", type=int, default=20, help="replays timed (default 20)")
    args = parser.parse_args(argv)
    import cupy as cp

    from backend import get_backend
    from benchmarks.workload import Sizes, synthetic_data
    from captioning.packing import longest_first, scored_lengths

    be = get_backend("cupy")
    sizes = Sizes(N=args.batch, H=args.hidden)
    data = synthetic_data(sizes)
    idx = np.random.default_rng(1).integers(0, len(data["train_captions"]), sizes.N)
    _, step_rows = longest_first(scored_lengths(data["train_captions"][idx], 0), sizes.T)
    H, V, P = sizes.H, sizes.V, sum(step_rows)
    rng = np.random.default_rng(0)
    table = cp.asarray(rng.standard_normal((V, 4 * H)).astype(np.float32) / 2)
    words = cp.asarray(rng.integers(0, V, P).astype(np.int64))
    h0 = cp.asarray(rng.standard_normal((sizes.N, H)).astype(np.float32) / 2)
    Wh = cp.asarray((rng.standard_normal((H, 4 * H)) / np.sqrt(H)).astype(np.float32))
    print(f"N={sizes.N} H={H} step rows {step_rows} (P={P}), "
          f"{blocks(step_rows[0], H)} blocks of {THREADS}, "
          f"{shared_bytes(H) // 1024} KiB shared memory a block, "
          f"{cp.cuda.Device().attributes['MultiProcessorCount']} SMs")
    starts = cp.asarray(step_starts(step_rows))
    library = be.lstm_forward_packed(table, h0, Wh, step_rows, words)
    want = [be.to_numpy(x) for x in (library[1][3], library[1][4], library[1][5])]
    rows = {"library (product + gate kernel a step)":
            lambda: be.lstm_forward_packed(table, h0, Wh, step_rows, words)}
    modules = {}
    for persistent in (False, True):
        name = ("this kernel, one launch for all steps (persistent)" if persistent
                else "this kernel, one launch a step")
        try:
            modules[persistent] = cp.RawModule(code=SOURCE, options=("-std=c++14",),
                                               enable_cooperative_groups=persistent)
            got = forward(modules[persistent], table, words, h0, Wh, step_rows, starts, cp,
                          persistent)
        except Exception as exc:  # a compile or launch failure is a result here
            print(f"{name}: failed: {type(exc).__name__}: {exc}")
            continue
        errors = [float(np.abs(cp.asnumpy(g) - w).max() / np.abs(w).max())
                  for g, w in zip(got, want)]
        print(f"{name}: largest error against the library's, relative to each array's "
              f"largest value: h {errors[0]:.1e}, c {errors[1]:.1e}, gates {errors[2]:.1e}")
        rows[name] = (lambda p=persistent: forward(modules[p], table, words, h0, Wh,
                                                   step_rows, starts, cp, p))
    steps = len(step_rows)
    for name, fn in rows.items():
        ms, how = _median_ms(cp, fn, args.repeats)
        print(f"{name}: {ms:.3f} ms for {steps} steps ({how}), "
              f"{1e3 * ms / steps:.1f} us a step")


if __name__ == "__main__":
    main()
