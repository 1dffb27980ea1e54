"""The CuPy backend: the base class's maths on an NVIDIA GPU, with fused kernels where
the per-step work is small enough that kernel launches dominate.

Overridden: one elementwise kernel per step for the LSTM gates forward and one for
their backward (blocks i, f, o, g), each also adding the two parts of its input (the
recurrent product and the hoisted input projection; the upstream and the carried
gradient) so that a time step costs one matrix product and one kernel each way; one
for the RNN's tanh backward, the embedding scatter-add (``cupy.add.at``, atomicAdd),
the softmax cross-entropy and its gradient (one block per row, in place), and Adam
(one kernel per parameter). The
vocabulary layer works densely (``compact_masked_positions = False``): finding the
scored rows would cost a host synchronisation per step. Nothing here synchronises with
the host; kernels compile once per dtype and are cached by CuPy.
"""

from __future__ import annotations

import os

import cupy as cp
import numpy as np
from cupy_backends.cuda.libs import cublas

from backend.base import Backend, BackendUnavailable


def _lstm_forward_kernel(two_parts: bool) -> cp.ElementwiseKernel:
    """The LSTM gates forward over (N, H) threads; with two_parts the pre-activation is
    a + a_extra, summed here rather than in a launch of its own."""
    read = "(a[{i}] + a_extra[{i}])" if two_parts else "a[{i}]"
    gate = [read.format(i=f"base + {k} * H") for k in range(4)]
    return cp.ElementwiseKernel(
        "raw T a, " + ("raw T a_extra, " if two_parts else "") + "T prev_c, int32 H",
        "raw T gates, T next_c, T next_h, T tanh_c",
        f"""
        const ptrdiff_t n = i / H, j = i % H, base = n * 4 * H + j;
        const T ig = 1 / (1 + exp(-{gate[0]}));
        const T fg = 1 / (1 + exp(-{gate[1]}));
        const T og = 1 / (1 + exp(-{gate[2]}));
        const T gg = tanh({gate[3]});
        gates[base] = ig;
        gates[base + H] = fg;
        gates[base + 2 * H] = og;
        gates[base + 3 * H] = gg;
        next_c = fg * prev_c + ig * gg;
        tanh_c = tanh(next_c);
        next_h = og * tanh_c;
        """,
        "caption_lstm_forward" + ("_sum" if two_parts else ""),
    )


def _lstm_backward_kernel(two_parts: bool) -> cp.ElementwiseKernel:
    """The LSTM gates backward; with two_parts dnext_h = dh + dh_extra, summed here."""
    return cp.ElementwiseKernel(
        ("T dh, T dh_extra" if two_parts else "T dnext_h")
        + ", T dnext_c, raw T gates, T prev_c, T tanh_c, int32 H",
        "raw T da, T dprev_c",
        ("const T dnext_h = dh + dh_extra;" if two_parts else "")
        + """
        const ptrdiff_t n = i / H, j = i % H, base = n * 4 * H + j;
        const T ig = gates[base], fg = gates[base + H], og = gates[base + 2 * H];
        const T gg = gates[base + 3 * H];
        const T dc = dnext_c + dnext_h * og * (1 - tanh_c * tanh_c);
        da[base] = dc * gg * ig * (1 - ig);
        da[base + H] = dc * prev_c * fg * (1 - fg);
        da[base + 2 * H] = dnext_h * tanh_c * og * (1 - og);
        da[base + 3 * H] = dc * ig * (1 - gg * gg);
        dprev_c = dc * fg;
        """,
        "caption_lstm_backward" + ("_sum" if two_parts else ""),
    )


_LSTM_FORWARD, _LSTM_FORWARD_SUM = _lstm_forward_kernel(False), _lstm_forward_kernel(True)

_LSTM_FORWARD_HALVED = cp.ElementwiseKernel(
    "raw T a, T prev_c, int32 H",
    "T next_c, T next_h",
    """
    // a's i, f, o blocks hold half their pre-activations: sigmoid(x) = 0.5 tanh(x/2) + 0.5
    const ptrdiff_t n = i / H, j = i % H, base = n * 4 * H + j;
    const T ig = 0.5 * tanh(a[base]) + 0.5;
    const T fg = 0.5 * tanh(a[base + H]) + 0.5;
    const T og = 0.5 * tanh(a[base + 2 * H]) + 0.5;
    next_c = fg * prev_c + ig * tanh(a[base + 3 * H]);
    next_h = og * tanh(next_c);
    """,
    "caption_lstm_forward_halved",
)
_LSTM_BACKWARD, _LSTM_BACKWARD_SUM = _lstm_backward_kernel(False), _lstm_backward_kernel(True)

_TANH_BACKWARD = cp.ElementwiseKernel(
    "T dnext_h, T next_h", "T da", "da = dnext_h * (1 - next_h * next_h)",
    "caption_tanh_backward",
)

_ADAM = cp.ElementwiseKernel(
    "T dw, T step, T beta1, T beta2, T eps_hat",
    "T w, T m, T v",
    """
    m = beta1 * m + (1 - beta1) * dw;
    v = beta2 * v + (1 - beta2) * dw * dw;
    w -= step * m / (sqrt(v) + eps_hat);
    """,
    "caption_adam",
)

_XENT_SOURCE = r"""
template <typename T>
__global__ void caption_xent(T* scores, const int* y, const T* weight, const T inv_n,
                             const int V, T* row_loss) {
    // One block per row: scores[m] becomes the gradient in place; row_loss[m] gets
    // weight[m] * -log softmax(scores[m])[y[m]] / n.
    __shared__ T red[256];
    const int tid = threadIdx.x;
    T* s = scores + (long long)blockIdx.x * V;
    const int target = y[blockIdx.x];
    const T picked = s[target];
    T mx = s[0];
    for (int v = tid; v < V; v += blockDim.x) mx = max(mx, s[v]);
    red[tid] = mx;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (tid < k) red[tid] = max(red[tid], red[tid + k]);
        __syncthreads();
    }
    mx = red[0];
    __syncthreads();
    T sum = 0;
    for (int v = tid; v < V; v += blockDim.x) sum += exp(s[v] - mx);
    red[tid] = sum;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (tid < k) red[tid] += red[tid + k];
        __syncthreads();
    }
    sum = red[0];
    const T w = weight[blockIdx.x] * inv_n;
    const T scale = w / sum;
    for (int v = tid; v < V; v += blockDim.x) s[v] = exp(s[v] - mx) * scale;
    __syncthreads();
    if (tid == 0) {
        s[target] -= w;
        row_loss[blockIdx.x] = w * (log(sum) - (picked - mx));
    }
}
"""
_XENT_THREADS = 256
_XENT = cp.RawModule(code=_XENT_SOURCE, options=("-std=c++14",),
                     name_expressions=("caption_xent<float>", "caption_xent<double>"))
_XENT_NAME = {"float32": "caption_xent<float>", "float64": "caption_xent<double>"}


_RAW_GEMM = {"f": cublas.sgemm, "d": cublas.dgemm}
_SCALARS = {c: (np.ones((), c), np.zeros((), c)) for c in "fd"}  # host alpha, beta
_TF32 = os.environ.get("CUPY_TF32") == "1"


class CupyBackend(Backend):
    name = "cupy"
    xp = cp
    compact_masked_positions = False

    def __init__(self) -> None:
        try:
            count = cp.cuda.runtime.getDeviceCount()
        except cp.cuda.runtime.CUDARuntimeError as exc:
            raise BackendUnavailable(
                f"backend 'cupy': CuPy is installed but no CUDA device or driver is usable "
                f"here ({exc}); run on a machine with an NVIDIA GPU and its driver"
            ) from exc
        if count == 0:
            raise BackendUnavailable("backend 'cupy': CuPy is installed but this machine has "
                                     "no CUDA device")

    def to_numpy(self, a):
        return cp.asnumpy(a)

    def synchronize(self) -> None:
        cp.cuda.get_current_stream().synchronize()

    def _step_matmul(self, a, b, out, transpose_b: bool = False):
        """out = a @ b (or a @ b.T) by one cuBLAS call: in the time loops, cupy.matmul's
        checks and dispatch cost more host time than a small batch's product takes on
        the GPU. Operands are C-contiguous; row-major C = A op(B) is column-major
        C^T = op(B)^T A^T. (With CUPY_TF32=1, cupy.matmul, which honours it.)"""
        gemm = _RAW_GEMM.get(a.dtype.char)
        if gemm is None or _TF32 or not (a.flags.c_contiguous and b.flags.c_contiguous
                                         and out.flags.c_contiguous):
            return super()._step_matmul(a, b, out, transpose_b)
        m, k = a.shape
        n = b.shape[0] if transpose_b else b.shape[1]
        one, zero = _SCALARS[a.dtype.char]
        handle = cp.cuda.device.get_cublas_handle()
        cublas.setStream(handle, cp.cuda.get_current_stream().ptr)
        cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
        gemm(handle, cublas.CUBLAS_OP_T if transpose_b else cublas.CUBLAS_OP_N,
             cublas.CUBLAS_OP_N, n, m, k, one.ctypes.data, b.data.ptr,
             k if transpose_b else n, a.data.ptr, k, zero.ctypes.data, out.data.ptr, n)
        return out

    def embedding_backward(self, idx, dout, vocab_size: int):
        D = dout.shape[-1]
        dW = cp.zeros((vocab_size, D), dtype=dout.dtype)
        cp.add.at(dW, idx.reshape(-1), dout.reshape(-1, D))
        return dW

    def rnn_gates_backward(self, dnext_h, next_h, da):
        return _TANH_BACKWARD(dnext_h, next_h, da)

    def lstm_gates_forward(self, a, prev_c, gates, next_c, next_h, tanh_c):
        H = prev_c.shape[1]
        _LSTM_FORWARD(cp.ascontiguousarray(a), prev_c, H, gates, next_c, next_h, tanh_c)

    def lstm_gates_forward_halved(self, a, prev_c, next_c, next_h):
        _LSTM_FORWARD_HALVED(cp.ascontiguousarray(a), prev_c, prev_c.shape[1], next_c, next_h)

    def lstm_gates_backward(self, dnext_h, dnext_c, gates, prev_c, tanh_c, da, dprev_c):
        H = prev_c.shape[1]
        _LSTM_BACKWARD(dnext_h, dnext_c, cp.ascontiguousarray(gates), prev_c, tanh_c, H,
                       da, dprev_c)

    def _lstm_gates_forward_sum(self, a, a_extra, prev_c, next_c, next_h, tanh_c):
        # a (a time step of the contiguous (T, N, 4H) buffer) and a_extra are contiguous.
        _LSTM_FORWARD_SUM(a, a_extra, prev_c, prev_c.shape[1], a, next_c, next_h, tanh_c)

    def _lstm_gates_backward_sum(self, dh, dh_extra, dnext_c, gates, prev_c, tanh_c, da):
        _LSTM_BACKWARD_SUM(dh, dh_extra, dnext_c, gates, prev_c, tanh_c, prev_c.shape[1],
                           da, dnext_c)

    def _cross_entropy(self, scores, y, weight, n: int, overwrite: bool = False):
        M, V = scores.shape
        grad = scores if overwrite and scores.flags.c_contiguous else scores.copy(order="C")
        row_loss = cp.empty(M, dtype=scores.dtype)
        kernel = _XENT.get_function(_XENT_NAME[scores.dtype.name])
        kernel((M,), (_XENT_THREADS,),
               (grad, cp.ascontiguousarray(y, dtype=cp.int32),
                cp.ascontiguousarray(weight, dtype=scores.dtype), scores.dtype.type(1 / n),
                cp.int32(V), row_loss))
        return row_loss.sum(), grad

    def adam_update(self, w, dw, m, v, t, learning_rate, beta1, beta2, epsilon):
        c2 = (1 - beta2**t) ** 0.5
        dtype = w.dtype.type
        _ADAM(dw, dtype(learning_rate * c2 / (1 - beta1**t)), dtype(beta1), dtype(beta2),
              dtype(epsilon * c2), w, m, v)
