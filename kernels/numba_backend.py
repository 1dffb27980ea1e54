"""The Numba backend: the NumPy backend with compiled loops where they measurably win.

Overridden: the embedding scatter-add (a plain loop instead of ``np.add.at``), the
LSTM gate backward (pure arithmetic, one fused pass), the arithmetic around the gate
forward, the float32 training and decoding LSTM steps (one pass each), the softmax
cross-entropy and its gradient (one pass per row), and Adam (one pass over each
parameter). Measured (benchmarks/HISTORY.md): the scatter-add (70x) and Adam (4x) are
clear wins; the gate and softmax kernels tie with NumPy and are kept because they
allocate no step-sized temporaries. ``error_model="numpy"`` drops the
ZeroDivisionError check on every division, which otherwise stops LLVM vectorising.

Numba's ``np.tanh`` is a scalar libm call (4.1 ms over 128x2048 float32). NumPy's
depends on the CPU: 95 us on an AVX-512 host (its SIMD tanh), 957 us on an AVX2 one,
where it is scalar too. So float32 steps use a rational tanh that LLVM vectorises
(159 us on the AVX2 host) and do a whole cell update in one pass per row: decoding's
(gather, word lookup, gates, cell: 3.1 ms a step for 3,000 rows, H=512, against 8.2 ms
through NumPy) and, since session 9, the training recurrence's forward step (0.37-0.48
ms for 128 rows against 1.55-1.85 ms; the forward recurrence of a 128-caption step
51.2 -> 36.2 ms on the AVX2 host). float64 keeps NumPy's passes.
Every kernel is compiled lazily per dtype and cached on disk (``cache=True``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kernels.numpy_backend import NumpyBackend

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@njit(**_JIT)
def _scatter_add(dW, idx, dout):
    for k in range(idx.shape[0]):
        row = idx[k]
        for j in range(dout.shape[1]):
            dW[row, j] += dout[k, j]


@njit(**_JIT)
def _lstm_forward_finish(gates, prev_c, next_c, half):
    """gates hold tanh(a/2) for i, f, o and tanh(a) for g: finish the sigmoids in place
    and write next_c = f * prev_c + i * g. (``half`` comes in the arrays' dtype: a float
    literal would promote float32 work to float64.)"""
    N, H = prev_c.shape
    for n in range(N):
        for j in range(H):
            i = half * gates[n, j] + half
            f = half * gates[n, H + j] + half
            gates[n, j] = i
            gates[n, H + j] = f
            gates[n, 2 * H + j] = half * gates[n, 2 * H + j] + half
            next_c[n, j] = f * prev_c[n, j] + i * gates[n, 3 * H + j]


@njit(inline="always", **_JIT)
def _tanh32(x):
    """tanh of a float32 as the odd rational minimax approximation (degrees 13/6) that
    Eigen and XLA use, clamped where tanh rounds to +-1. Plain arithmetic, so LLVM
    vectorises it, unlike the scalar libm call Numba makes for ``np.tanh``. Largest
    error 4e-7 over [-10, 10] (NumPy's float32 tanh: 6e-8; tests/test_backends.py)."""
    x = min(max(x, np.float32(-7.90531110763549805)), np.float32(7.90531110763549805))
    x2 = x * x
    p = x2 * np.float32(-2.76076847742355e-16) + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    q = x2 * np.float32(1.19825839466702e-06) + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    return x * p / q


@njit(fastmath={"contract"}, **_JIT)
def _lstm_decode_gates32(hw, table, words, prev_c, next_c, next_h, rows):
    """The whole float32 decoding step in one pass per row: gather, add, gates, cell."""
    N, H = next_c.shape
    half = np.float32(0.5)
    for n in range(N):
        a, x, c = hw[rows[n]], table[words[n]], prev_c[rows[n]]
        c_out, h_out = next_c[n], next_h[n]
        for j in range(H):
            i = half * _tanh32(a[j] + x[j]) + half
            f = half * _tanh32(a[H + j] + x[H + j]) + half
            o = half * _tanh32(a[2 * H + j] + x[2 * H + j]) + half
            cell = f * c[j] + i * _tanh32(a[3 * H + j] + x[3 * H + j])
            c_out[j] = cell
            h_out[j] = o * _tanh32(cell)


@njit(fastmath={"contract"}, **_JIT)
def _lstm_forward_sum32(a, a_extra, prev_c, next_c, next_h, tanh_c):
    """The float32 training step's cell in one pass per row: a += a_extra, the gates
    activated in place in a (sigmoid(x) = 0.5 tanh(x/2) + 0.5 for i, f, o; tanh for g),
    next_c, tanh(next_c) and next_h. The gates go through a row of scratch: written
    straight back into a, whose other blocks the loop reads, it is not vectorised
    (measured 1.6 ms for 128 rows, H=512, against 0.37 ms)."""
    N, H = prev_c.shape
    half = np.float32(0.5)
    gates = np.empty(a.shape[1], dtype=a.dtype)
    for n in range(N):
        x, extra, c = a[n], a_extra[n], prev_c[n]
        c_out, h_out, tc_out = next_c[n], next_h[n], tanh_c[n]
        for j in range(H):
            i = half * _tanh32(half * (x[j] + extra[j])) + half
            f = half * _tanh32(half * (x[H + j] + extra[H + j])) + half
            o = half * _tanh32(half * (x[2 * H + j] + extra[2 * H + j])) + half
            g = _tanh32(x[3 * H + j] + extra[3 * H + j])
            gates[j], gates[H + j], gates[2 * H + j], gates[3 * H + j] = i, f, o, g
            cell = f * c[j] + i * g
            tc = _tanh32(cell)
            c_out[j], tc_out[j], h_out[j] = cell, tc, o * tc
        x[:] = gates


@njit(**_JIT)
def _lstm_backward(dnext_h, dnext_c, gates, prev_c, tanh_c, da, dprev_c, one):
    N, H = prev_c.shape
    for n in range(N):
        for j in range(H):
            i = gates[n, j]
            f = gates[n, H + j]
            o = gates[n, 2 * H + j]
            g = gates[n, 3 * H + j]
            tc = tanh_c[n, j]
            dh = dnext_h[n, j]
            dc = dnext_c[n, j] + dh * o * (one - tc * tc)
            da[n, j] = dc * g * i * (one - i)
            da[n, H + j] = dc * prev_c[n, j] * f * (one - f)
            da[n, 2 * H + j] = dh * tc * o * (one - o)
            da[n, 3 * H + j] = dc * i * (one - g * g)
            dprev_c[n, j] = dc * f


@njit(**_JIT)
def _cross_entropy(probs, y, weight, n, losses):
    """probs holds exp(scores - rowmax) and losses[m] the shifted score of y[m]: turn
    probs into the gradient in place, and losses into each row's weighted -log p(y) / n."""
    M, V = probs.shape
    for m in range(M):
        total = 0.0
        for v in range(V):
            total += probs[m, v]
        scale = weight[m] / (total * n)
        for v in range(V):
            probs[m, v] *= scale
        probs[m, y[m]] -= weight[m] / n
        losses[m] = weight[m] * (np.log(total) - losses[m]) / n


@njit(**_JIT)
def _adam_kernel(w, dw, m, v, step, beta1, beta2, one_minus_beta1, one_minus_beta2,
                 eps_hat):
    # Every constant arrives in w's dtype: an integer literal here (1 - beta1) would make
    # Numba compute in float64 and lose the float32 SIMD width (measured 1.7x slower).
    # w, m and v are C-contiguous, so their ravels are views (NumbaBackend.adam_kernel).
    w, dw, m, v = w.ravel(), dw.ravel(), m.ravel(), v.ravel()
    for k in range(w.size):
        g = dw[k]
        mk = beta1 * m[k] + one_minus_beta1 * g
        vk = beta2 * v[k] + one_minus_beta2 * g * g
        m[k] = mk
        v[k] = vk
        w[k] -= step * mk / (np.sqrt(vk) + eps_hat)


class NumbaBackend(NumpyBackend):
    name = "numba"

    def embedding_backward(self, idx, dout, vocab_size: int):
        D = dout.shape[-1]
        dW = np.zeros((vocab_size, D), dtype=dout.dtype)
        _scatter_add(dW, np.ascontiguousarray(idx.reshape(-1)),
                     np.ascontiguousarray(dout.reshape(-1, D)))
        return dW

    def lstm_gates_forward(self, a, prev_c, gates, next_c, next_h, tanh_c):
        H = prev_c.shape[1]
        np.multiply(a[:, : 3 * H], 0.5, out=gates[:, : 3 * H])
        np.tanh(gates[:, : 3 * H], out=gates[:, : 3 * H])
        np.tanh(a[:, 3 * H :], out=gates[:, 3 * H :])
        _lstm_forward_finish(gates, _c(prev_c), next_c, gates.dtype.type(0.5))
        np.tanh(next_c, out=tanh_c)
        np.multiply(gates[:, 2 * H : 3 * H], tanh_c, out=next_h)

    def lstm_gates_forward_sum(self, a, a_extra, prev_c, next_c, next_h, tanh_c):
        # The training recurrence's forward step, one pass in float32 (the rational tanh);
        # float64, and arrays the kernel cannot index as rows, take NumPy's passes.
        arrays = (a, a_extra, prev_c, next_c, next_h, tanh_c)
        if (a.dtype != np.float32 or tanh_c is None
                or not all(x.flags.c_contiguous for x in arrays)):
            return super().lstm_gates_forward_sum(*arrays)
        _lstm_forward_sum32(*arrays)

    def lstm_decode_gates(self, hw, table, words, prev_c, next_c, next_h, rows):
        if hw.dtype != np.float32:  # _tanh32 is for float32; float64 takes NumPy's passes
            return super().lstm_decode_gates(hw, table, words, prev_c, next_c, next_h, rows)
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(len(hw)))
        _lstm_decode_gates32(hw, table, _c(words), prev_c, next_c, next_h, _c(rows))

    def lstm_gates_backward(self, dnext_h, dnext_c, gates, prev_c, tanh_c, da, dprev_c):
        _lstm_backward(_c(dnext_h), _c(dnext_c), _c(gates), _c(prev_c), _c(tanh_c), da,
                       dprev_c, gates.dtype.type(1))

    def finish_cross_entropy(self, probs, picked, y, weight, n: int):
        losses = picked  # a fresh array (fancy indexing); the kernel turns it into row losses
        _cross_entropy(probs, np.ascontiguousarray(y), np.ascontiguousarray(weight),
                       probs.dtype.type(n), losses)
        return losses.sum(), probs

    def adam_kernel(self, w, dw, m, v, step, eps_hat, beta1, beta2):
        if not (w.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous):
            # The compiled loop runs over ravelled views; a strided array's ravel is a
            # copy, whose update would be lost. NumPy's passes update any layout in place.
            return super().adam_kernel(w, dw, m, v, step, eps_hat, beta1, beta2)
        d = w.dtype.type
        _adam_kernel(w, _c(dw), m, v, d(step), d(beta1), d(beta2), d(1 - beta1), d(1 - beta2),
                     d(eps_hat))


def _c(a):
    """A C-contiguous view or copy, as the compiled loops index rows directly."""
    return np.ascontiguousarray(a)
