"""The CUDA C sources of the CuPy backend's raw kernels, as plain strings, with the
template instances each module is compiled for. Kept apart from kernels/cupy_backend.py
(which compiles them with CuPy on first use) so that they can be compiled without CuPy or
a GPU: tests/test_cuda_sources.py compiles every one with NVRTC for the GPU generations
this project runs on, which is how a machine without a GPU (CI, most sessions) catches a
kernel that would not build.
"""

from __future__ import annotations

CTYPES = {"float32": "float", "float64": "double"}  # dtype name -> the template's T

# bfloat16 as the products' operands (the bf16 twin's ``operand_dtype``): NumPy and CuPy
# have no bfloat16 dtype, so its values live as their bit patterns in uint16 arrays,
# the upper half of a float32's bits, rounded to nearest (ties to even); a NaN stays a
# NaN. Prepended to each module that writes or reads them.
BF16_SOURCE = r"""
__device__ __forceinline__ unsigned short to_bf16(float x) {
    unsigned int bits = __float_as_uint(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((bits >> 16) | 0x40u);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (unsigned short)(bits >> 16);
}

// A value read for a sum: float and double as they are, bfloat16 bits widened (exact).
__device__ __forceinline__ float widened(unsigned short bits) {
    return __uint_as_float((unsigned int)bits << 16);
}
__device__ __forceinline__ float widened(float x) { return x; }
__device__ __forceinline__ double widened(double x) { return x; }
"""

# The gates' sigmoid, one definition for every kernel that makes gates (lstm_forward,
# lstm_backward, lstm_persistent_forward): the backward that activates kept
# pre-activations again must make the forward's gates bit for bit.
SIGMOID_SOURCE = r"""
template <typename T>
__device__ __forceinline__ T sigmoid(T x) { return 1 / (1 + exp(-x)); }
"""

# The LSTM gate kernels, one thread per (row n, hidden unit j) handling that unit's four
# gates (blocks i, f, o, g). Raw kernels rather than ElementwiseKernels: a small batch is
# paced by the host's launches, and a raw launch costs the host less. (N, H) operands
# are C-contiguous; ``dh`` may be a strided (N, H) view (row stride dh_ld elements).
GATES_SOURCE = r"""
template <typename T>
__global__ void round_to_bf16(const T* x, unsigned short* out, long long rows, int cols,
                              int out_cols) {
    // A product's operand stored apart: out (rows, out_cols) = x (rows, cols), both
    // C-contiguous, as bfloat16, and zeros in out's columns from cols on.
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < rows * out_cols;
         k += (long long)gridDim.x * blockDim.x) {
        const long long r = k / out_cols;
        const int c = k % out_cols;
        out[k] = c < cols ? to_bf16((float)x[r * cols + c]) : (unsigned short)0;
    }
}

// The recurrent product a gate kernel adds, "extra": parts (0 for none) arrays of
// extra_rows C-contiguous rows, extra_stride elements apart, whose sum is the product (a
// product split along K has several; rows from extra_rows on have none); or, where
// extra16 is not null, the product whole as bfloat16 (the bf16 twin's, as cuBLAS
// rounded it) in extra16, and extra null.
template <typename T>
__device__ __forceinline__ T extra_sum(const T* extra, const unsigned short* extra16,
                                       int parts, long long stride, long long at) {
    if (extra16) return widened(extra16[at]);
    T sum = extra[at];
    for (int p = 1; p < parts; ++p) sum += extra[p * stride + at];
    return sum;
}

template <typename T>
__global__ void lstm_forward(const T* a, const long long* words, const T* extra,
                             const unsigned short* extra16, int extra_parts,
                             long long extra_stride, long long extra_rows,
                             const T* prev_c, T* gates, unsigned short* gates16,
                             T* next_c, T* next_h, T* tanh_c, unsigned short* next_h16,
                             long long NH, int H) {
    // Pre-activation a (+ extra, the recurrent product) -> the activated gates into
    // gates (may be a), or the pre-activations rounded to bfloat16 into gates16 (the
    // bf16 twin's; the gates are then made from the rounded values, as lstm_backward
    // makes them again): one of the two is null; c; and h into next_h, or as bfloat16
    // into next_h16 (the products' stored operand): one of the two is null; tanh(c)
    // into tanh_c where it is kept (not null).
    // With words (not null), a is a table and row n's pre-activation is its row words[n]
    // (the training step's input projections, looked up here rather than copied first).
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < NH;
         k += (long long)gridDim.x * blockDim.x) {
        const long long n = k / H, j = k % H, base = n * 4 * H + j;
        const T* x = a + (words ? words[n] * 4 * H + j : base);
        T ai = x[0], af = x[H], ao = x[2 * H], ag = x[3 * H];
        const T pc = prev_c[k];  // (read with the rest: after the gates' stores it could
                                 // not be, as they might alias it)
        if (extra_parts && n < extra_rows) {
            ai += extra_sum(extra, extra16, extra_parts, extra_stride, base);
            af += extra_sum(extra, extra16, extra_parts, extra_stride, base + H);
            ao += extra_sum(extra, extra16, extra_parts, extra_stride, base + 2 * H);
            ag += extra_sum(extra, extra16, extra_parts, extra_stride, base + 3 * H);
        }
        if (gates16) {  // kept rounded, and so used: the backward's gates are these
            const unsigned short bi = to_bf16((float)ai), bf = to_bf16((float)af);
            const unsigned short bo = to_bf16((float)ao), bg = to_bf16((float)ag);
            gates16[base] = bi;
            gates16[base + H] = bf;
            gates16[base + 2 * H] = bo;
            gates16[base + 3 * H] = bg;
            ai = widened(bi);
            af = widened(bf);
            ao = widened(bo);
            ag = widened(bg);
        }
        const T ig = sigmoid(ai), fg = sigmoid(af), og = sigmoid(ao), gg = tanh(ag);
        if (gates) {
            gates[base] = ig;
            gates[base + H] = fg;
            gates[base + 2 * H] = og;
            gates[base + 3 * H] = gg;
        }
        const T c = fg * pc + ig * gg;
        const T tc = tanh(c);
        next_c[k] = c;
        if (tanh_c) tanh_c[k] = tc;
        if (next_h) next_h[k] = og * tc;
        else next_h16[k] = to_bf16((float)(og * tc));
    }
}

__global__ void previous_states(const unsigned int* h0, const unsigned int* hs,
                                const long long* previous, unsigned int* out, long long rows,
                                int width) {
    // Backend.previous_states' gather: out (rows, width) row p = hs row previous[p] where
    // that is >= 0, else h0 row -1 - previous[p]; rows of width 4-byte words (the bits of
    // any dtype's values), all C-contiguous.
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < rows * width;
         k += (long long)gridDim.x * blockDim.x) {
        const long long source = previous[k / width], j = k % width;
        out[k] = source < 0 ? h0[(-1 - source) * width + j] : hs[source * width + j];
    }
}

template <typename T>
__global__ void lstm_forward_halved(const T* a, const T* prev_c, T* next_c, T* next_h,
                                    long long NH, int H) {
    // Decoding: a's i, f, o blocks hold half their pre-activations, so
    // sigmoid(x) = 0.5 tanh(x / 2) + 0.5 takes one tanh; nothing is kept for backward.
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < NH;
         k += (long long)gridDim.x * blockDim.x) {
        const long long n = k / H, j = k % H, base = n * 4 * H + j;
        const T half = 0.5;
        const T ig = half * tanh(a[base]) + half, fg = half * tanh(a[base + H]) + half;
        const T og = half * tanh(a[base + 2 * H]) + half;
        const T c = fg * prev_c[k] + ig * tanh(a[base + 3 * H]);
        next_c[k] = c;
        next_h[k] = og * tanh(c);
    }
}

template <typename T>
__global__ void lstm_decode(const T* hw, const T* table, const long long* words,
                            const long long* rows, long long first_row, const T* prev_c,
                            T* next_c, T* next_h, long long NH, int H) {
    // Decoding's whole step (Backend.lstm_decode_gates): new row n continues row
    // rows[n] (or first_row + n when rows is null) of hw and prev_c, adds word words[n]'s
    // row of the table, and takes the halved gates as lstm_forward_halved does.
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < NH;
         k += (long long)gridDim.x * blockDim.x) {
        const long long n = k / H, j = k % H;
        const long long r = rows ? rows[n] : first_row + n;
        const T* a = hw + r * 4 * H + j;
        const T* x = table + words[n] * 4 * H + j;
        const T half = 0.5;
        const T ig = half * tanh(a[0] + x[0]) + half, fg = half * tanh(a[H] + x[H]) + half;
        const T og = half * tanh(a[2 * H] + x[2 * H]) + half;
        const T c = fg * prev_c[r * H + j] + ig * tanh(a[3 * H] + x[3 * H]);
        next_c[k] = c;
        next_h[k] = og * tanh(c);
    }
}

template <typename T>
__global__ void lstm_backward(const T* dh, long long dh_ld, const T* extra,
                              const unsigned short* extra16, int extra_parts,
                              long long extra_stride, long long extra_rows,
                              const T* dnext_c, const T* gates,
                              const unsigned short* gates16, const T* prev_c,
                              const T* next_c, const T* tanh_c, T* da,
                              unsigned short* da16, T* dprev_c, long long NH, int H) {
    // dnext_h = dh (+ extra, the gradient carried back by the recurrent product) ->
    // dprev_c (may be dnext_c), and da, or da as bfloat16 into da16 (the products'
    // stored operand): one of the two is null. The gates as lstm_forward kept them:
    // activated in gates, or pre-activations in gates16 (activated here, as there);
    // tanh(c) from tanh_c where it was kept (not null), else made again from next_c.
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < NH;
         k += (long long)gridDim.x * blockDim.x) {
        const long long n = k / H, j = k % H, base = n * 4 * H + j;
        T dnext_h = dh[n * dh_ld + j];
        if (extra_parts && n < extra_rows)
            dnext_h += extra_sum(extra, extra16, extra_parts, extra_stride, k);
        T ig, fg, og, gg;
        if (gates) {
            ig = gates[base];
            fg = gates[base + H];
            og = gates[base + 2 * H];
            gg = gates[base + 3 * H];
        } else {
            ig = sigmoid((T)widened(gates16[base]));
            fg = sigmoid((T)widened(gates16[base + H]));
            og = sigmoid((T)widened(gates16[base + 2 * H]));
            gg = tanh((T)widened(gates16[base + 3 * H]));
        }
        const T tc = tanh_c ? tanh_c[k] : tanh(next_c[k]);
        const T dc = dnext_c[k] + dnext_h * og * (1 - tc * tc);
        const T di = dc * gg * ig * (1 - ig), df = dc * prev_c[k] * fg * (1 - fg);
        const T d_o = dnext_h * tc * og * (1 - og), dg = dc * ig * (1 - gg * gg);
        if (da) {
            da[base] = di;
            da[base + H] = df;
            da[base + 2 * H] = d_o;
            da[base + 3 * H] = dg;
        } else {
            da16[base] = to_bf16((float)di);
            da16[base + H] = to_bf16((float)df);
            da16[base + 2 * H] = to_bf16((float)d_o);
            da16[base + 3 * H] = to_bf16((float)dg);
        }
        dprev_c[k] = dc * fg;
    }
}
"""
GATE_KERNELS = ("round_to_bf16", "lstm_forward", "lstm_forward_halved", "lstm_decode",
                "lstm_backward", "previous_states")

XENT_SOURCE = r"""
template <typename T, typename S>
__device__ T biased(const S* s, const T* bias, int v) {  // (a bfloat16 score widened)
    const T x = widened(s[v]);
    return bias ? x + bias[v] : x;
}

// A gradient written where its score was: as it is, or as bfloat16 over a bfloat16 one.
__device__ __forceinline__ void store(float* s, int v, float g) { s[v] = g; }
__device__ __forceinline__ void store(double* s, int v, double g) { s[v] = g; }
template <typename T>
__device__ __forceinline__ void store(unsigned short* s, int v, T g) {
    s[v] = to_bf16((float)g);
}

template <typename T>
__device__ T warp_max(T x) {  // every lane gets the warp's largest x
    for (int offset = 16; offset > 0; offset >>= 1)
        x = max(x, __shfl_xor_sync(0xffffffffu, x, offset));
    return x;
}

template <typename T>
__device__ T warp_sum(T x) {  // every lane gets the warp's sum of x
    for (int offset = 16; offset > 0; offset >>= 1)
        x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

// A lane's scores of one row held in registers at once: a row of up to 32 x 32 = 1,024
// scores (the exercise's 1,004 words) is read from memory once, every load in flight
// together; a longer row is read in chunks of 1,024, all but the last again by the
// later passes.
#define XENT_VALUES 32

template <typename T, typename S>
__device__ void xent_rows(S* scores, const long long scores_pitch, const T* bias,
                          const int* y, const T* weight, const T inv_n, const int V,
                          const long long M, T* row_loss) {
    // One warp per row m of scores (M, V; rows scores_pitch elements apart; float, or
    // bfloat16 bits): scores[m] (+ bias, where not null, added as each score is read)
    // becomes the gradient, in place (as bfloat16 over bfloat16 scores, the sums in T);
    // row_loss[m] gets weight[m] * -log softmax(scores[m] + bias)[y[m]] / n. A warp's
    // reductions need no barrier: a block per row spent most of its time at 16 of them.
    const int lane = threadIdx.x % 32;
    const long long warps = (long long)gridDim.x * (blockDim.x / 32);
    const int chunk = 32 * XENT_VALUES, last = (V - 1) / chunk * chunk;
    for (long long m = blockIdx.x * (long long)(blockDim.x / 32) + threadIdx.x / 32; m < M;
         m += warps) {
        S* s = scores + m * scores_pitch;
        const int target = y[m];
        const T picked = biased(s, bias, target);
        T x[XENT_VALUES];  // after the first pass: the last chunk's scores, this lane's
        T mx = picked;
        for (int c = 0; c < V; c += chunk) {
#pragma unroll
            for (int i = 0; i < XENT_VALUES; ++i) {
                const int v = c + 32 * i + lane;
                x[i] = v < V ? biased(s, bias, v) : picked;  // (picked leaves the max)
                mx = max(mx, x[i]);
            }
        }
        mx = warp_max(mx);
        T sum = 0;
        for (int c = 0; c < V; c += chunk) {
#pragma unroll
            for (int i = 0; i < XENT_VALUES; ++i) {
                const int v = c + 32 * i + lane;
                if (v < V) sum += exp((c == last ? x[i] : biased(s, bias, v)) - mx);
            }
        }
        sum = warp_sum(sum);
        const T w = weight[m] * inv_n;
        const T scale = w / sum;
        for (int c = 0; c < V; c += chunk) {
#pragma unroll
            for (int i = 0; i < XENT_VALUES; ++i) {
                const int v = c + 32 * i + lane;
                if (v >= V) continue;
                T g = exp((c == last ? x[i] : biased(s, bias, v)) - mx) * scale;
                if (v == target) g -= w;
                store(s, v, g);
            }
        }
        if (lane == 0) row_loss[m] = w * (log(sum) - (picked - mx));
    }
}

template <typename T>
__global__ void caption_xent(T* scores, const long long scores_pitch, const T* bias,
                             const int* y, const T* weight, const T inv_n, const int V,
                             const long long M, T* row_loss) {
    xent_rows(scores, scores_pitch, bias, y, weight, inv_n, V, M, row_loss);
}

template <typename T>
__global__ void caption_xent_bf16(unsigned short* scores, const long long scores_pitch,
                                  const T* bias, const int* y, const T* weight,
                                  const T inv_n, const int V, const long long M,
                                  T* row_loss) {
    // The same over scores stored in bfloat16 (the bf16 twin's).
    xent_rows(scores, scores_pitch, bias, y, weight, inv_n, V, M, row_loss);
}
"""
XENT_KERNELS = ("caption_xent", "caption_xent_bf16")

# sort_rows_by_word: the threads of its one block, and the most words it sorts (bins
# V + 1 counts, beside the threads' sums, in the 48 KB of shared memory a block gets
# without asking for more); the CuPy backend scatters larger vocabularies unsorted.
SORT_THREADS = 1024
SORT_MOST_WORDS = 11_000

SCATTER_SOURCE = r"""
// Rows a scatter thread loads before it sums them: eight loads in flight at once, where
// a sum that read a row, then added it (and perhaps flushed a run with an atomicAdd,
// which the next load may not pass), kept one in flight and was paced by memory latency.
constexpr int SCATTER_BATCH = 8;

// sort_rows_by_word's block, and the words it can sort (its counts in shared memory,
// within the 48 KB a block may have without asking).
constexpr int SORT_THREADS = """ + str(SORT_THREADS) + r""";
constexpr int SORT_MOST_WORDS = """ + str(SORT_MOST_WORDS) + r""";
constexpr int SORT_BATCH = 8;  // rows a sorting thread loads at once

// A word as a counting sort files it: idx as np.add.at reads it, outside [0, V) as V.
__device__ __forceinline__ int bin(long long index, int V) {
    const long long w = index < 0 ? index + V : index;
    return w >= 0 && w < V ? (int)w : V;
}

// The word of each row of a scatter, in the rows' order: idx[r], binned.
struct RowsInOrder {
    const long long* idx;
    int V;
    __device__ int word(long long r) const { return bin(idx[r], V); }
    __device__ long long row(long long r) const { return r; }
};

// The same rows sorted by word (sort_rows_by_word): the k-th has word words[k] and is
// row order[k] of the values.
struct RowsByWord {
    const int* order;
    const int* words;
    __device__ int word(long long r) const { return words[r]; }
    __device__ long long row(long long r) const { return order[r]; }
};

template <typename T>
__device__ __forceinline__ void add_run(T* out, int word, int V, int D, long long j, T sum) {
    // A run's sum into out[word, j]: skipped where it is exactly zero (adding zero
    // changes nothing, and padding's gradient is zero) or the word is V (out of range).
    if (sum != 0 && word < V) atomicAdd(out + (long long)word * D + j, sum);
}

template <typename T, typename S, typename Rows>
__device__ void scatter_runs(const Rows rows_of, const S* __restrict__ values,
                             T* __restrict__ out, long long rows, int D, int V,
                             int rows_per_thread) {
    // out[word(r), j] += values[row(r), j] for r < rows (out (V, D), values (rows, D),
    // C-contiguous). Thread (row block b, column j) walks r = b*R .. b*R+R-1 (R =
    // rows_per_thread) in column j and adds each run of r naming the same word with one
    // atomicAdd: runs are where atomics contend (a word's rows sorted together; in
    // caption order, every caption's <START> at t = 0).
    const long long blocks = (rows + rows_per_thread - 1) / rows_per_thread;
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < blocks * D;
         k += (long long)gridDim.x * blockDim.x) {
        const long long j = k % D, first = (k / D) * rows_per_thread;
        const long long last = min(first + rows_per_thread, rows);
        int word = rows_of.word(first);
        T sum = 0;
        for (long long batch = first; batch < last; batch += SCATTER_BATCH) {
            int words[SCATTER_BATCH];
            S picked[SCATTER_BATCH];
#pragma unroll
            for (int u = 0; u < SCATTER_BATCH; ++u) {  // (past the end: the last row again)
                const long long r = min(batch + u, last - 1);
                words[u] = rows_of.word(r);
                picked[u] = values[rows_of.row(r) * D + j];
            }
#pragma unroll
            for (int u = 0; u < SCATTER_BATCH; ++u) {
                if (batch + u >= last) break;
                if (words[u] != word) {
                    add_run(out, word, V, D, j, sum);
                    word = words[u];
                    sum = 0;
                }
                sum += widened(picked[u]);
            }
        }
        add_run(out, word, V, D, j, sum);
    }
}

template <typename T>
__global__ void scatter_add_rows(const long long* idx, const T* values, T* out,
                                 long long rows, int D, int V, int rows_per_thread) {
    scatter_runs(RowsInOrder{idx, V}, values, out, rows, D, V, rows_per_thread);
}

template <typename T>
__global__ void scatter_add_bf16_rows(const long long* idx, const unsigned short* values,
                                      T* out, long long rows, int D, int V,
                                      int rows_per_thread) {
    // The same, of stored bfloat16 values (a gradient kept as a products' operand).
    scatter_runs(RowsInOrder{idx, V}, values, out, rows, D, V, rows_per_thread);
}

template <typename T>
__global__ void scatter_add_sorted_rows(const int* order, const int* words, const T* values,
                                        T* out, long long rows, int D, int V,
                                        int rows_per_thread) {
    // The same over rows sorted by word: a word's rows make one run, so a column makes
    // about one atomicAdd per word and per R rows, where rows in caption order make one
    // per row for all but <START>.
    scatter_runs(RowsByWord{order, words}, values, out, rows, D, V, rows_per_thread);
}

template <typename T>
__global__ void scatter_add_sorted_bf16_rows(const int* order, const int* words,
                                             const unsigned short* values, T* out,
                                             long long rows, int D, int V,
                                             int rows_per_thread) {
    scatter_runs(RowsByWord{order, words}, values, out, rows, D, V, rows_per_thread);
}

// The words of rows batch, batch + blockDim.x, ... (SORT_BATCH of them), loaded at once
// so that their loads are in flight together; -1 for rows past the end.
__device__ __forceinline__ void load_words(const long long* idx, int batch, int rows, int V,
                                           int (&w)[SORT_BATCH]) {
#pragma unroll
    for (int u = 0; u < SORT_BATCH; ++u) {
        const int r = batch + u * blockDim.x;
        w[u] = r < rows ? bin(idx[r], V) : -1;
    }
}

__global__ void sort_rows_by_word(const long long* idx, int* order, int* words,
                                  int rows, int V) {
    // A counting sort of rows 0 .. rows-1 by their word idx[r] (negative counting from
    // the end; a word outside [0, V) sorts last, as V, which a scatter skips), by one
    // block of SORT_THREADS threads: words (rows) the words in ascending order, order
    // (rows) the row each came from. A word's rows come in no fixed order (as the
    // atomicAdds that sum them would add in none). Needs V <= SORT_MOST_WORDS and at
    // most SORT_THREADS threads.
    __shared__ int start[SORT_MOST_WORDS + 1];  // per word: its count, then its next slot
    __shared__ int partial[SORT_THREADS];  // per thread: its bins' count, then scanned
    const int bins = V + 1, t = threadIdx.x;
    for (int w = t; w < bins; w += blockDim.x) start[w] = 0;
    __syncthreads();
    int batch_words[SORT_BATCH];  // a batch of the thread's rows' words (-1 past the end)
    for (int batch = t; batch < rows; batch += SORT_BATCH * blockDim.x) {
        load_words(idx, batch, rows, V, batch_words);
#pragma unroll
        for (int u = 0; u < SORT_BATCH; ++u)
            if (batch_words[u] >= 0) atomicAdd(&start[batch_words[u]], 1);
    }
    __syncthreads();
    // Each thread's bins' first slot: the thread sums its chunk of bins, the chunks'
    // sums are scanned (Hillis-Steele, in place), and the thread walks its chunk again.
    const int chunk = (bins + blockDim.x - 1) / blockDim.x;
    const int first = min(t * chunk, bins), last = min(first + chunk, bins);
    int own = 0;
    for (int w = first; w < last; ++w) own += start[w];
    partial[t] = own;
    __syncthreads();
    for (int step = 1; step < blockDim.x; step *= 2) {
        const int before = t >= step ? partial[t - step] : 0;
        __syncthreads();
        partial[t] += before;
        __syncthreads();
    }
    int slot = partial[t] - own;
    for (int w = first; w < last; ++w) {
        const int count = start[w];
        start[w] = slot;
        slot += count;
    }
    __syncthreads();
    for (int batch = t; batch < rows; batch += SORT_BATCH * blockDim.x) {
        load_words(idx, batch, rows, V, batch_words);
#pragma unroll
        for (int u = 0; u < SORT_BATCH; ++u) {
            if (batch_words[u] < 0) continue;
            const int k = atomicAdd(&start[batch_words[u]], 1);
            order[k] = batch + u * blockDim.x;
            words[k] = batch_words[u];
        }
    }
}
"""
SCATTER_KERNELS = ("scatter_add_rows", "scatter_add_bf16_rows", "scatter_add_sorted_rows",
                   "scatter_add_sorted_bf16_rows", "sort_rows_by_word")

DECODE_SOURCE = r"""
template <typename T>
__device__ bool ranks_above(T a, long long ia, T b, long long ib) {
    // (a at column ia) before (b at column ib) in argmax's order: larger first, a NaN
    // before any number, and of equals the lower column.
    const bool nan_a = a != a, nan_b = b != b;
    if (nan_a || nan_b) return nan_a && (!nan_b || ia < ib);
    return a > b || (a == b && ia < ib);
}

template <typename T>
__global__ void argmax_rows(const T* scores, const T* bias, long long* out, long long M,
                            int V) {
    // One warp per row m: out[m] = argmax over v of scores[m, v] + bias[v] (scores
    // C-contiguous), in one read of the row and without writing the biased scores.
    const int lane = threadIdx.x % 32;
    const long long warps = (long long)gridDim.x * (blockDim.x / 32);
    for (long long m = blockIdx.x * (long long)(blockDim.x / 32) + threadIdx.x / 32; m < M;
         m += warps) {
        const T* row = scores + m * V;
        T best = 0;
        long long at = -1;  // none yet: ranks below everything
        for (int v = lane; v < V; v += 32) {
            const T x = row[v] + bias[v];
            if (at < 0 || ranks_above(x, (long long)v, best, at)) {
                best = x;
                at = v;
            }
        }
        for (int offset = 16; offset > 0; offset >>= 1) {
            const T other = __shfl_down_sync(0xffffffffu, best, offset);
            const long long other_at = __shfl_down_sync(0xffffffffu, at, offset);
            if (other_at >= 0 && (at < 0 || ranks_above(other, other_at, best, at))) {
                best = other;
                at = other_at;
            }
        }
        if (lane == 0) out[m] = at;
    }
}
"""
DECODE_KERNELS = ("argmax_rows",)

# Adam over several parameters in one launch (Backend.adam_update_device_many): each
# tensor's four arrays by address, its size and where its blocks end, as plain arguments
# (a recorded step's gradients are made inside the recording, so no table of them can be
# uploaded first). A block picks its tensor by comparing its index with the arguments,
# one branch per tensor: copied into local arrays to be indexed instead, they gave each
# thread a 320-byte stack frame to fill, which made the kernel 145-157 us on the H200
# against 54 us for one launch per tensor.
ADAM_TENSORS = 8  # per launch; a longer list takes several
_ADAM_PARAMS = ",\n    ".join(
    f"unsigned long long w{i}, unsigned long long dw{i}, unsigned long long m{i}, "
    f"unsigned long long v{i}, long long n{i}, int block_end{i}" for i in range(ADAM_TENSORS))
_ADAM_PICK = "\n    else ".join(
    f"if (blockIdx.x < block_end{i}) "
    f"{{ s = {i}; first = {f'block_end{i - 1}' if i else '0'}; end = block_end{i}; "
    f"w = w{i}; dw = dw{i}; m = m{i}; v = v{i}; n = n{i}; }}" for i in range(ADAM_TENSORS))
ADAM_SOURCE = f"""
template <typename T>
__global__ void adam_many(const T* hyper,
    {_ADAM_PARAMS}) {{
    // Tensor s of w, dw, m, v (C-contiguous, n elements) takes the Adam step with hyper's
    // row s: (step size, eps_hat, beta1, beta2), as caption_adam_device, in blocks
    // [block_end(s - 1), block_end(s)) of the grid (the ends of unused slots repeat the
    // last).
    int s, first, end;
    unsigned long long w, dw, m, v;
    long long n;
    {_ADAM_PICK}
    else return;
    T* wp = (T*)w;
    const T* dwp = (const T*)dw;
    T* mp = (T*)m;
    T* vp = (T*)v;
    const long long stride = (long long)(end - first) * blockDim.x;
    const T step = hyper[4 * s], eps_hat = hyper[4 * s + 1];
    const T beta1 = hyper[4 * s + 2], beta2 = hyper[4 * s + 3];
    for (long long e = (long long)(blockIdx.x - first) * blockDim.x + threadIdx.x; e < n;
         e += stride) {{
        const T g = dwp[e];
        const T mk = beta1 * mp[e] + (1 - beta1) * g;
        const T vk = beta2 * vp[e] + (1 - beta2) * g * g;
        mp[e] = mk;
        vp[e] = vk;
        wp[e] -= step * mk / (sqrt(vk) + eps_hat);
    }}
}}
"""
ADAM_KERNELS = ("adam_many",)

# The LSTM's packed steps in one launch each way, for a small float32 batch
# (CupyBackend.lstm_steps_forward / _backward): a block keeps its slice of Wh
# (PERSISTENT_UNITS hidden units' four gates; backward, those units' rows) in dynamic
# shared memory for the whole launch, makes PERSISTENT_ROWS rows of those units (forward,
# each thread 2 rows x 2 units x 4 gates), keeps their cells (their gradient) in
# registers, and waits for every other block between steps: a cooperative launch (the
# launch's flag; the module is built as any other, as its own grid_sync needs none of
# cooperative groups' device runtime).
PERSISTENT_ROWS = 32
PERSISTENT_UNITS = 16
PERSISTENT_THREADS = 128  # (PERSISTENT_ROWS / 2) x (PERSISTENT_UNITS / 2)
PERSISTENT_K = 32  # columns of h staged in shared memory at a time
PERSISTENT_STRIDE = PERSISTENT_ROWS + 2  # a staged chunk's pitch: even, 2-way conflicts


PERSISTENT_BACKWARD_K = 64  # columns of da (4H of them) staged at a time
PERSISTENT_BACKWARD_STRIDE = PERSISTENT_ROWS + 4  # a multiple of 4: 4 rows a 16-byte load


def persistent_grid(rows: int, H: int) -> int:
    """A persistent kernel's blocks for steps of at most ``rows`` rows at hidden size H
    (a multiple of PERSISTENT_UNITS): PERSISTENT_ROWS rows x PERSISTENT_UNITS units each."""
    return -(-rows // PERSISTENT_ROWS) * (H // PERSISTENT_UNITS)


def persistent_shared_bytes(H: int) -> int:
    """lstm_persistent_forward's dynamic shared memory at hidden size H (Wh's slice and
    two staged chunks of h)."""
    return 4 * (H * 4 * PERSISTENT_UNITS + 2 * PERSISTENT_K * PERSISTENT_STRIDE)


def persistent_backward_shared_bytes(H: int) -> int:
    """lstm_persistent_backward's: Wh's rows of a block's units, two staged chunks of da,
    and the four quarters' sums."""
    return 4 * (H * 4 * PERSISTENT_UNITS + 2 * PERSISTENT_BACKWARD_K * PERSISTENT_BACKWARD_STRIDE
                + 4 * PERSISTENT_ROWS * PERSISTENT_UNITS)


PERSISTENT_SOURCE = f"""
#define PF_ROWS {PERSISTENT_ROWS}
#define PF_UNITS {PERSISTENT_UNITS}
#define PF_THREADS {PERSISTENT_THREADS}
#define PF_K {PERSISTENT_K}
#define PF_STRIDE {PERSISTENT_STRIDE}
#define PB_K {PERSISTENT_BACKWARD_K}
#define PB_STRIDE {PERSISTENT_BACKWARD_STRIDE}
""" + r"""

#ifdef __CUDACC__
// Every block of a cooperative launch waits here until all have arrived; arrived counts
// arrivals over the launch and starts at 0. A block's stores before it are seen by every
// block after it (fences either side of the count, as cooperative groups' grid sync).
// A wait of over GRID_SYNC_PATIENCE clock cycles (~5 s; a step's takes microseconds)
// can only be a block that never arrives: the kernel traps, and the launch fails with
// an error where it would hang the process.
#define GRID_SYNC_PATIENCE 10000000000ll
__device__ void grid_sync(unsigned int* arrived) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        const unsigned int ticket = atomicAdd(arrived, 1u);
        const unsigned int goal = (ticket / gridDim.x + 1) * gridDim.x;
        const long long give_up = clock64() + GRID_SYNC_PATIENCE;
        while ((int)(goal - *(volatile unsigned int*)arrived) > 0) {
            if (clock64() > give_up) __trap();
        }
        __threadfence();
    }
    __syncthreads();
}
#endif

// A chunk of a block's rows of a matrix that other blocks write (h forward, da
// backward): rows row0 .. row0 + 31 (zeros from row n on) of the rows at src, each
// width floats, columns k0 .. k0 + KC - 1, into registers. Thread i takes elements i,
// i + 128, ... row by row, so that a warp reads one row's contiguous floats, from L2
// (__ldcg: this SM's L1 may hold none of another block's writes).
template <int KC>
__device__ __forceinline__ void load_rows(const float* src, int row0, int n, int width, int k0,
                                          float (&staged)[PF_ROWS * KC / PF_THREADS]) {
#pragma unroll
    for (int j = 0; j < PF_ROWS * KC / PF_THREADS; ++j) {
        const int e = threadIdx.x + PF_THREADS * j, r = e / KC, k = e % KC;
        staged[j] = row0 + r < n ? __ldcg(src + (long long)(row0 + r) * width + k0 + k) : 0.0f;
    }
}

// The chunk from registers into shared memory, transposed: [k][row], row pitch PITCH.
template <int KC, int PITCH>
__device__ __forceinline__ void store_rows(float* s,
                                           const float (&staged)[PF_ROWS * KC / PF_THREADS]) {
#pragma unroll
    for (int j = 0; j < PF_ROWS * KC / PF_THREADS; ++j) {
        const int e = threadIdx.x + PF_THREADS * j, r = e / KC, k = e % KC;
        s[k * PITCH + r] = staged[j];
    }
}

// One chunk of over_chunks: chunk c + 2's loads sent (into ``spare``, whose chunk is
// in shared memory already), chunk c used, chunk c + 1 (``next``) put in shared memory.
template <int KC, int PITCH, typename Use>
__device__ __forceinline__ void chunk_step(const float* src, int row0, int n, int width,
                                           int chunks, float* stage, int c,
                                           float (&spare)[PF_ROWS * KC / PF_THREADS],
                                           const float (&next)[PF_ROWS * KC / PF_THREADS],
                                           Use& use) {
    if (c + 2 < chunks) load_rows<KC>(src, row0, n, width, (c + 2) * KC, spare);
    use(c, (const float*)(stage + (c % 2) * KC * PITCH));
    if (c + 1 < chunks) store_rows<KC, PITCH>(stage + ((c + 1) % 2) * KC * PITCH, next);
    __syncthreads();
}

// use(c, chunk) for the chunks c = 0 .. chunks - 1 (columns c KC .. c KC + KC - 1) of
// the block's rows at src, each in shared memory as [k][row] (stage: two chunks' room,
// 2 KC PITCH floats) when used. Two chunks are on their way from L2 while one is used
// (their registers alternate, so the loop goes two chunks a turn): L2's latency under
// the load of every SM (~0.3-0.5 us) is longer than one chunk's arithmetic. The whole
// block calls it (its barriers).
template <int KC, int PITCH, typename Use>
__device__ __forceinline__ void over_chunks(const float* src, int row0, int n, int width,
                                            int chunks, float* stage, Use use) {
    float even[PF_ROWS * KC / PF_THREADS], odd[PF_ROWS * KC / PF_THREADS];
    load_rows<KC>(src, row0, n, width, 0, even);
    if (chunks > 1) load_rows<KC>(src, row0, n, width, KC, odd);
    store_rows<KC, PITCH>(stage, even);
    __syncthreads();
    for (int c = 0; c < chunks; c += 2) {
        chunk_step<KC, PITCH>(src, row0, n, width, chunks, stage, c, even, odd, use);
        if (c + 1 < chunks)
            chunk_step<KC, PITCH>(src, row0, n, width, chunks, stage, c + 1, odd, even, use);
    }
}

extern "C" __global__ void __launch_bounds__(PF_THREADS, 1)
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
            over_chunks<PF_K, PF_STRIDE>(prev, row0, n, H, H / PF_K, h_s,
                                         [&](int c, const float* h_c) {
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
            });
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int row = row0 + 2 * rows2 + i;
                if (row >= n) continue;
                const long long p = start + row;
                const float* x = a + (words ? words[p] : p) * 4 * H;
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const int unit = unit0 + pair + 8 * j;
                    const float ig = sigmoid(x[unit] + sum[i][j][0]);
                    const float fg = sigmoid(x[H + unit] + sum[i][j][1]);
                    const float og = sigmoid(x[2 * H + unit] + sum[i][j][2]);
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

// carry[i][j] = (da's rows row0 + 2 rows2 + i) . (Wh's row of unit unit0 + pair + 8 j),
// the gradient the later step carries back to this block's rows and units, from the n
// rows of da at src (4H wide; rows from n on count as zero). The block's threads split
// K four ways (a warp each), each making 4 rows x 4 units, then add their four parts
// through shared memory. The whole block calls it (its barriers).
__device__ void carried(const float* src, int row0, int n, int H, const float* w_s,
                        float* d_s, float* r_s, float (&carry)[2][2]) {
    const int quarter = threadIdx.x / 32, tile = threadIdx.x % 32;
    const int rows4 = tile / 4, units4 = tile % 4;
    const int K = 4 * H;
    float sum[4][4] = {};
    over_chunks<PB_K, PB_STRIDE>(src, row0, n, K, K / PB_K, d_s, [&](int c, const float* d_c) {
        const float* w_c = w_s + c * PB_K * PF_UNITS;
#pragma unroll 4
        for (int kk = 0; kk < PB_K / 4; ++kk) {
            const int k = quarter * (PB_K / 4) + kk;
            const float4 d = *(const float4*)(d_c + k * PB_STRIDE + 4 * rows4);
            const float4 w = *(const float4*)(w_c + k * PF_UNITS + 4 * units4);
            sum[0][0] += d.x * w.x; sum[0][1] += d.x * w.y; sum[0][2] += d.x * w.z;
            sum[0][3] += d.x * w.w; sum[1][0] += d.y * w.x; sum[1][1] += d.y * w.y;
            sum[1][2] += d.y * w.z; sum[1][3] += d.y * w.w; sum[2][0] += d.z * w.x;
            sum[2][1] += d.z * w.y; sum[2][2] += d.z * w.z; sum[2][3] += d.z * w.w;
            sum[3][0] += d.w * w.x; sum[3][1] += d.w * w.y; sum[3][2] += d.w * w.z;
            sum[3][3] += d.w * w.w;
        }
    });
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
            r_s[(quarter * PF_ROWS + 4 * rows4 + i) * PF_UNITS + 4 * units4 + j] = sum[i][j];
    __syncthreads();
    const int pair = threadIdx.x % 8, rows2 = threadIdx.x / 8;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int at = (2 * rows2 + i) * PF_UNITS + pair + 8 * j;
            carry[i][j] = r_s[at] + r_s[PF_ROWS * PF_UNITS + at]
                          + r_s[2 * PF_ROWS * PF_UNITS + at] + r_s[3 * PF_ROWS * PF_UNITS + at];
        }
    __syncthreads();  // (r_s and d_s free for the next call)
}

extern "C" __global__ void __launch_bounds__(PF_THREADS, 1)
lstm_persistent_backward(const float* dh, const float* gates, const float* cs,
                         const float* Wh, const long long* starts, float* da, float* dh0,
                         unsigned int* arrived, int steps, int H) {
    // The LSTM backward over packed steps steps - 1 down to 0 (step t's rows starts[t]
    // .. starts[t + 1] - 1, as lstm_persistent_forward takes them), float32, all arrays
    // C-contiguous, in one cooperative launch: from dh (P, H), every packed state's
    // upstream gradient, the activated gates (P, 4H) and cell states cs (P, H) that the
    // forward kept, and Wh (H, 4H) -> da (P, 4H), the gates' pre-activations' gradient,
    // and dh0 (N, H) rows 0 .. starts[1] - 1, the initial states' (the rest left as they
    // are: zeros). The carried dc stays in registers; tanh(c) is made again from c.
    // Blocks as the forward's (rows / 32) x (H / 16); dynamic shared memory
    // (64 H + 2 * PB_K * PB_STRIDE + 4 * 32 * 16) floats: Wh's rows of the block's units.
    extern __shared__ float shared[];
    float* w_s = shared;                          // [k < 4H][16 units]
    float* d_s = shared + 4 * H * PF_UNITS;       // two chunks of da [k][row]
    float* r_s = d_s + 2 * PB_K * PB_STRIDE;      // [4 quarters][32 rows][16 units]
    const int groups = H / PF_UNITS;
    const int row0 = blockIdx.x / groups * PF_ROWS, unit0 = blockIdx.x % groups * PF_UNITS;
    const int pair = threadIdx.x % 8, rows2 = threadIdx.x / 8;  // units pair, pair + 8
    for (int e = threadIdx.x; e < 4 * H * PF_UNITS; e += PF_THREADS) {
        const int u = e / (4 * H), k = e % (4 * H);  // (read along Wh's rows)
        w_s[k * PF_UNITS + u] = Wh[(long long)(unit0 + u) * 4 * H + k];
    }
    __syncthreads();
    float dnext_c[2][2] = {};  // the cells' gradient carried from the later step
    for (int t = steps - 1; t >= -1; --t) {
        // t = -1: dh0 from step 0's da, the last carried product.
        const int later = t + 1 < steps ? (int)(starts[t + 2] - starts[t + 1]) : 0;
        float carry[2][2] = {};
        if (row0 < later)  // (the whole block alike)
            carried(da + starts[t + 1] * 4 * H, row0, later, H, w_s, d_s, r_s, carry);
        if (t < 0) {
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const int row = row0 + 2 * rows2 + i;
                    if (row < later) dh0[(long long)row * H + unit0 + pair + 8 * j] = carry[i][j];
                }
            break;
        }
        const long long start = starts[t];
        const int n = (int)(starts[t + 1] - start);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int row = row0 + 2 * rows2 + i;
            if (row >= n) continue;
            const long long p = start + row;
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const int unit = unit0 + pair + 8 * j;
                const float* g = gates + p * 4 * H + unit;
                const float ig = g[0], fg = g[H], og = g[2 * H], gg = g[3 * H];
                const float tc = tanh(cs[p * H + unit]);
                const float pc = t ? cs[(starts[t - 1] + row) * H + unit] : 0.0f;
                const float dnext_h = dh[p * H + unit] + carry[i][j];
                const float dc = dnext_c[i][j] + dnext_h * og * (1 - tc * tc);
                float* d = da + p * 4 * H + unit;
                d[0] = dc * gg * ig * (1 - ig);
                d[H] = dc * pc * fg * (1 - fg);
                d[2 * H] = dnext_h * tc * og * (1 - og);
                d[3 * H] = dc * ig * (1 - gg * gg);
                dnext_c[i][j] = dc * fg;
            }
        }
        grid_sync(arrived);  // (step t's da whole before any block reads it)
    }
}
"""
PERSISTENT_KERNELS = ("lstm_persistent_forward", "lstm_persistent_backward")

# Every module: (source, its kernels), each kernel instantiated for every type in CTYPES.
MODULES = {"gates": (BF16_SOURCE + SIGMOID_SOURCE + GATES_SOURCE, GATE_KERNELS),
           "xent": (BF16_SOURCE + XENT_SOURCE, XENT_KERNELS),
           "scatter": (BF16_SOURCE + SCATTER_SOURCE, SCATTER_KERNELS),
           "decode": (DECODE_SOURCE, DECODE_KERNELS), "adam": (ADAM_SOURCE, ADAM_KERNELS),
           "persistent": (SIGMOID_SOURCE + PERSISTENT_SOURCE, PERSISTENT_KERNELS)}
OPTIONS = ("-std=c++14",)


# Kernels that are not templates (they touch no float data).
UNTYPED_KERNELS = frozenset({"sort_rows_by_word", "previous_states",
                             "lstm_persistent_forward", "lstm_persistent_backward"})


def name_expressions(kernels: tuple[str, ...]) -> list[str]:
    """The instances compiled for ``kernels``: each template for float and double, each
    of UNTYPED_KERNELS as it is."""
    expressions = []
    for kernel in kernels:
        if kernel in UNTYPED_KERNELS:
            expressions.append(kernel)
        else:
            expressions += [f"{kernel}<{ctype}>" for ctype in CTYPES.values()]
    return expressions
