"""The Backend base class: every hot operation written once against an array namespace.

Shape letters: N batch, T time steps, D input size, H hidden size, V vocabulary size.
Every operation works for float32 and float64 and never promotes a float32 input to
float64 (Python scalars are "weak" under NumPy 2's promotion rules; NumPy scalars such
as ``np.sqrt(n)`` are not, so none appear here).

The sequence functions hoist the input projection out of the time loop: ``x @ Wx`` for
all T steps is one matrix product, and in the backward pass ``dx``, ``dWx``, ``dWh`` and
``db`` are one product each after the loop. Only ``h @ Wh`` (forward) and ``da @ Wh.T``
(backward) stay inside it. ``*_forward_packed`` / ``*_backward_packed`` are the loops
alone, over packed sequences (``packed_steps``: sorted longest first, each step only
the sequences still running, so padding costs nothing), from input projections the
caller made (the model looks them up from a table of every word's projection) and back
to their gradient; the exercise's dense functions are the case where every sequence
runs every step. The per-step gate maths
lives in ``rnn_gates_*`` and ``lstm_gates_*``, which both the step functions and the
sequence loops call, so a subclass that fuses the gates speeds up both.

Caches are opaque tuples that belong to the backend that made them.

How a backend subclass speeds things up: it overrides any operation of the contract
(the layers, the gates, ``embedding_backward``, ``matmul``, ``adam_update_device``...),
and these extension points, which exist only to be overridden and which nothing outside
a backend calls:

- ``lstm_steps_forward`` / ``lstm_steps_backward``: the LSTM's packed steps whole, each
  way (the CuPy backend: one persistent kernel for a small float32 batch), and
  ``previous_states``: dWh's left operand (the CuPy backend: one gather by the batch's
  PackedRows);
- ``recurrent_product``: a packed loop's per-step recurrent product, which a backend may
  hand its gate calls in a form of its own (the CuPy backend: a small step's product in
  parts along K; on its bf16 twin, the product in bfloat16);
- ``lstm_gates_forward_sum`` / ``lstm_gates_backward_sum``: the sequence loops' gate
  calls, with the pre-activation (upstream gradient) in two parts, so one fused kernel
  can add them and apply the gates;
- ``lookup_gates``: the buffer in which the looked-up steps keep their gates for the
  backward, in a form of the backend's own (the CuPy bf16 twin: pre-activations in
  bfloat16); ``keeps_tanh_c``: whether the LSTM loops keep tanh(c) for the backward or
  it is made again from c;
- ``cross_entropy`` (the whole softmax cross-entropy and its gradient) or just
  ``finish_cross_entropy`` (from the exp-shifted scores on);
- ``adam_kernel``: the Adam update once its scalars are known, which both
  ``adam_update`` and ``adam_update_device`` call; ``adam_update_device_many``: that of
  several parameters (a GPU makes it one launch);
- ``sum_rows``: the bias gradients' sums over rows;
- ``operand_dtype`` / ``as_operand`` / ``widen``: the dtype the big products' float32
  operands are stored in where it is not their own (bfloat16 on the CuPy backend's bf16
  twin): the LSTM loops then keep their hidden states and gates' gradients in it (the
  gate kernels write them so), and the vocabulary layer its operands;
- ``beside``: work that may overlap what follows it (the vocabulary layer's weight
  gradients, beside the backward recurrence: a second stream on a GPU);
- ``can_record`` / ``record``: replaying a function's device work (a CUDA graph).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np


class BackendUnavailable(RuntimeError):
    """A known backend that cannot run on this machine (package or device missing)."""


class RecordingFailed(RuntimeError):
    """A backend could not record a function for replay (see ``Backend.can_record``);
    nothing of the call that raised it has run."""


PRECISIONS = ("fp32", "tf32", "bf16")  # how float32 matrix products are multiplied


def check_precision(precision: str) -> str:
    """``precision`` if it is one of PRECISIONS, else ValueError naming them."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of "
                         f"{', '.join(PRECISIONS)}")
    return precision


class PackedRows(NamedTuple):
    """A packed batch's layout as device arrays, made once per step_rows (captioning's
    Packing makes them): ``starts`` int64 (T + 1,), each step's first packed row, then
    P; ``previous`` int64 (P,), the row holding each packed row's state before it: hs
    row previous[p] where that is >= 0, else h0 row -1 - previous[p]. A backend that
    indexes rows on the device takes them (a gather, a kernel over every step); the
    base class works from step_rows alone."""

    starts: Any
    previous: Any


class Backend:
    """Reference implementation of the backend contract over ``xp`` (numpy or cupy)."""

    name: str = "base"
    xp: Any = np
    precision: str = "fp32"  # of float32 matrix products; see with_precision

    # ------------------------------------------------------------------ transfer
    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """Host (or device) array -> array of this backend; no copy when nothing changes."""
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a: Any) -> np.ndarray:
        """Array of this backend -> host NumPy array."""
        return np.asarray(a)

    def synchronize(self) -> None:
        """Wait for queued device work (a barrier for timing); a no-op on the CPU."""

    def owns(self, a: Any) -> bool:
        """True when ``a`` is an array of this backend's namespace."""
        return isinstance(a, self.xp.ndarray)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def upload(self, dst: Any, host: np.ndarray) -> None:
        """Copy the host array ``host`` into the existing array ``dst`` (same shape)."""
        dst[...] = host

    # Extension point: a backend that can record a function's device work once and
    # replay it (a CUDA graph) sets this and provides ``record(fn)``, a callable that
    # runs fn's work once per call (kernels/cuda_graph.py has the contract;
    # captioning/training/step.py uses it).
    can_record = False

    # Extension point: a backend whose gate kernel reads each packed row's input
    # projection from the word table itself (``lstm_gates_forward_lookup``) sets this;
    # else the rows are copied out of the table once, before the recurrence (on a CPU
    # that one copy is faster than one per step).
    looks_rows_up_in_gates = False

    # Extension point: whether the packed LSTM loops keep tanh(c) of every packed row for
    # the backward (a CPU spares the backward a tanh per unit). A backend that clears it
    # is given None for the loops' ``tanh_c`` and makes it again from ``next_c`` (a GPU's
    # gate kernels are paced by the bytes they move: a kept tanh(c) is written, then read
    # back, 4 bytes a unit each way in float32).
    keeps_tanh_c = True

    # Extension point: the dtype in which the LSTM recurrence and the vocabulary layer
    # store the float32 operands of their products (None: they multiply the float32 or
    # float64 arrays themselves). A backend that sets it provides ``as_operand`` and
    # ``widen``, a ``matmul`` and ``sum_rows`` that take such operands (converting a
    # float32 partner; the result is float32), an ``embedding_backward`` that scatters
    # them, and gate kernels that write them.
    operand_dtype: Any = None

    # Extension points for data-parallel runs on accelerators (CPU backends have none).
    def device_count(self) -> int:
        """How many devices this backend can compute on here (0: it runs on the host)."""
        return 0

    def use_device(self, index: int) -> None:
        """Make device ``index`` the one this process computes on (arrays made after)."""
        raise ValueError(f"backend {self.name!r} has no devices to choose from")

    def device_allreduce(self, comm: Any) -> tuple[Any, str]:
        """(function summing a flat array of this backend in place over the ranks of the
        MPI communicator ``comm`` without leaving the device, or None; why not, if None).
        Collective: every rank of ``comm`` calls it together."""
        return None, f"backend {self.name!r} computes on the host"

    # ------------------------------------------------------------------ products
    def with_precision(self, precision: str) -> Backend:
        """This backend with its float32 matrix products multiplied in ``precision``:
        "fp32" (full float32), "tf32" or "bf16" (tensor cores, float32 accumulation and
        results; everything else stays float32). Only a GPU backend has the last two;
        this one raises ValueError for them."""
        if check_precision(precision) == "fp32":
            return self
        raise ValueError(f"precision {precision!r} needs the cupy backend (tensor-core "
                         f"products on an NVIDIA GPU); backend {self.name!r} multiplies in "
                         f"full float32 or float64: use precision fp32")

    def matmul(self, a, b, out=None):
        """a (M, K) @ b (K, N) -> (M, N), written into ``out`` when given.

        Every matrix product of training goes through here (``@`` appears nowhere in
        the maths), so a backend can issue them its own way.
        """
        return self.xp.matmul(a, b, out=out)

    def as_operand(self, x):
        """x as a product's operand is stored (see ``operand_dtype``): x itself here."""
        return x

    def widen(self, x):
        """A stored operand back as float32 values (x itself here, and for any array
        that is not one)."""
        return x

    def stored_dtype(self, dtype: Any) -> Any:
        """The dtype in which a product operand of ``dtype`` is kept: ``operand_dtype``
        for float32 where the backend stores operands apart, else ``dtype`` itself."""
        if self.operand_dtype is not None and np.dtype(dtype) == np.float32:
            return self.operand_dtype
        return np.dtype(dtype)

    def sum_rows(self, x):
        """x (M, K) -> (K,): the sum over rows (every bias gradient). Extension point: a
        GPU reduces down a column badly where a matrix-vector product does not."""
        return x.sum(axis=0)

    # ------------------------------------------------------------------ plain layers
    def affine_forward(self, x, w, b):
        """x (N, D...) flattened to (N, D), w (D, M), b (M,) -> out (N, M)."""
        x2 = x.reshape(x.shape[0], w.shape[0])
        return self.matmul(x2, w) + b, (x, w)

    def affine_backward(self, dout, cache):
        """dout (N, M) -> dx (shape of x), dw (D, M), db (M,)."""
        x, w = cache
        x2 = x.reshape(x.shape[0], w.shape[0])
        return (self.matmul(dout, w.T).reshape(x.shape), self.matmul(x2.T, dout),
                self.sum_rows(dout))

    def temporal_affine_forward(self, x, w, b):
        """x (N, T, D), w (D, M), b (M,) -> out (N, T, M): one matrix product for all T."""
        N, T, D = x.shape
        out = self.matmul(x.reshape(N * T, D), w)
        out += b
        return out.reshape(N, T, -1), (x, w)

    def temporal_affine_backward(self, dout, cache):
        """dout (N, T, M) -> dx (N, T, D), dw (D, M), db (M,) summed over N and T."""
        x, w = cache
        N, T, D = x.shape
        d2 = dout.reshape(N * T, -1)
        dx = self.matmul(d2, w.T).reshape(N, T, D)
        return dx, self.matmul(x.reshape(N * T, D).T, d2), self.sum_rows(d2)

    def word_embedding_forward(self, x, W):
        """x int (N, T), W (V, D) -> out (N, T, D), the rows of W that x names."""
        return W[x], (x, W.shape[0])

    def word_embedding_backward(self, dout, cache):
        """dout (N, T, D) -> dW (V, D)."""
        x, vocab_size = cache
        return self.embedding_backward(x, dout, vocab_size)

    def embedding_backward(self, idx, dout, vocab_size: int):
        """Scatter-add: dW[idx[n, t]] += dout[n, t]; repeated indices accumulate.

        idx int (N, T) or (K,), dout (..., D) -> dW (vocab_size, D) in dout's dtype.
        """
        D = dout.shape[-1]
        dW = self.xp.zeros((vocab_size, D), dtype=dout.dtype)
        self.xp.add.at(dW, idx.reshape(-1), dout.reshape(-1, D))
        return dW

    # ------------------------------------------------------------------ gates
    def sigmoid(self, x, out=None):
        """Logistic function, stable for any x: 0.5 * tanh(x / 2) + 0.5 (no exp overflow)."""
        xp = self.xp
        out = xp.multiply(x, 0.5, out=out)
        xp.tanh(out, out=out)
        out *= 0.5
        out += 0.5
        return out

    def rnn_gates_forward(self, a, next_h):
        """a (N, H) pre-activation -> next_h = tanh(a), written into next_h."""
        return self.xp.tanh(a, out=next_h)

    def rnn_gates_backward(self, dnext_h, next_h, da):
        """da = dnext_h * (1 - next_h**2), written into da (N, H)."""
        xp = self.xp
        xp.multiply(next_h, next_h, out=da)
        xp.subtract(1, da, out=da)
        da *= dnext_h
        return da

    def lstm_gates_forward(self, a, prev_c, gates, next_c, next_h, tanh_c):
        """One LSTM cell update from its pre-activations.

        a (N, 4H) = x Wx + prev_h Wh + b in blocks i, f, o, g; prev_c (N, H).
        Writes the activated gates (N, 4H), next_c, next_h and tanh(next_c) (N, H each).
        ``gates`` may be ``a`` itself.
        """
        H = prev_c.shape[1]
        self.sigmoid(a[:, : 3 * H], out=gates[:, : 3 * H])
        self.xp.tanh(a[:, 3 * H :], out=gates[:, 3 * H :])
        i, f, o, g = (gates[:, k * H : (k + 1) * H] for k in range(4))
        self.xp.multiply(f, prev_c, out=next_c)
        next_c += i * g
        self.xp.tanh(next_c, out=tanh_c)
        self.xp.multiply(o, tanh_c, out=next_h)

    def lstm_gates_forward_halved(self, a, prev_c, next_c, next_h):
        """The cell update for decoding, where nothing is kept for a backward pass.

        a (N, 4H) holds the g block's pre-activation and *half* of the i, f, o blocks'
        (decoding halves those weight columns once; scaling by 0.5 is exact, so the
        result is bit for bit that of ``lstm_gates_forward``). One tanh over all of a
        then gives tanh(a/2) for the sigmoids (sigmoid(x) = 0.5 tanh(x/2) + 0.5) and
        tanh(a) for g. Overwrites a; writes next_c and next_h (N, H); next_c may be
        prev_c itself (each unit reads its old cell before writing the new one).
        """
        xp, H = self.xp, prev_c.shape[1]
        xp.tanh(a, out=a)
        ifo = a[:, : 3 * H]
        ifo *= 0.5
        ifo += 0.5
        i, f, o, g = (a[:, k * H : (k + 1) * H] for k in range(4))
        xp.multiply(f, prev_c, out=next_c)
        next_c += i * g
        xp.tanh(next_c, out=next_h)
        next_h *= o

    def lstm_decode_gates(self, hw, table, words, prev_c, next_c, next_h, rows):
        """Decoding's LSTM step for new rows that each continue an earlier row (beam
        search's back-pointers), with the word inputs looked up, not multiplied.

        hw (M, 4H): the earlier rows' hidden states times Wh; table (V, 4H): every
        word's input projection (W_embed Wx + b); both with the i, f, o columns halved
        as ``lstm_gates_forward_halved`` expects. New row n continues row rows[n] of hw
        and prev_c (M, H) (``rows`` an index array or a slice) and reads words[n]
        (N,). Writes next_c and next_h (N, H), which must not overlap hw or prev_c.
        May overwrite hw.
        """
        a = hw[rows]  # a view for a slice (then hw is overwritten), else a copy
        a += table[words]
        self.lstm_gates_forward_halved(a, prev_c[rows], next_c, next_h)

    def argmax_rows(self, scores, bias):
        """Greedy decoding's choice: the index of each row's largest score once ``bias``
        is added. scores (M, V), bias (V,) -> int64 (M,); of equal maxima the first, and
        a NaN counts as the largest, as in ``argmax``. May overwrite ``scores``."""
        scores += bias
        return scores.argmax(axis=1)

    def lstm_gates_backward(self, dnext_h, dnext_c, gates, prev_c, tanh_c, da, dprev_c):
        """Gradient through one LSTM cell update, down to its pre-activations.

        dnext_h, dnext_c, prev_c, tanh_c (N, H); gates (N, 4H) as written by
        ``lstm_gates_forward``. Writes da (N, 4H) and dprev_c (N, H). ``dprev_c`` may be
        ``dnext_c`` itself.
        """
        H = prev_c.shape[1]
        i, f, o, g = (gates[:, k * H : (k + 1) * H] for k in range(4))
        da_i, da_f, da_o, da_g = (da[:, k * H : (k + 1) * H] for k in range(4))
        dc = dnext_c + dnext_h * o * (1 - tanh_c * tanh_c)
        self.xp.multiply(dnext_h * tanh_c, o * (1 - o), out=da_o)
        self.xp.multiply(dc * g, i * (1 - i), out=da_i)
        self.xp.multiply(dc * prev_c, f * (1 - f), out=da_f)
        self.xp.multiply(dc * i, 1 - g * g, out=da_g)
        self.xp.multiply(dc, f, out=dprev_c)

    # Extension points of the recurrences' per-step calls: the pre-activation and the
    # upstream gradient arrive in two parts, so a backend can add them inside its gate
    # kernel (one launch fewer per step each way, which bounds small batches on a GPU).
    def lstm_gates_forward_sum(self, a, a_extra, prev_c, next_c, next_h, tanh_c):
        """Extension point: lstm_gates_forward on a + a_extra, activating the gates in
        place in a. ``next_h`` may be a stored operand (``stored_dtype``): then the
        state is written as one. ``tanh_c`` is None where it is not kept
        (``keeps_tanh_c``)."""
        if tanh_c is None:
            tanh_c = self.xp.empty_like(next_c)
        a += a_extra
        h = next_h if next_h.dtype == a.dtype else self.xp.empty(next_h.shape, a.dtype)
        self.lstm_gates_forward(a, prev_c, a, next_c, h, tanh_c)
        if h is not next_h:
            next_h[...] = self.as_operand(h)

    def lstm_gates_forward_lookup(self, table, words, a_extra, prev_c, gates, next_c, next_h,
                                  tanh_c):
        """Extension point: lstm_gates_forward_sum on table[words] + a_extra, the gates
        written to ``gates``. table (V, 4H), words int64 (N,), the rest (N, ...)."""
        gates[...] = table[words]
        self.lstm_gates_forward_sum(gates, a_extra, prev_c, next_c, next_h, tanh_c)

    def lookup_gates(self, rows: int, width: int, dtype: Any) -> Any:
        """Extension point: the (rows, width) buffer in which a packed loop's looked-up
        steps (``lstm_gates_forward_lookup``) keep their gates for
        ``lstm_gates_backward_sum``: here the activated gates, of ``dtype``. A backend
        may keep them in a form of its own, which those two methods write and read."""
        return self.xp.empty((rows, width), dtype)

    def recurrent_product(self, x, w, out):
        """Extension point: a packed loop's recurrent product x (m, K) @ w (K, n), for the
        gate call that follows it. Here it is written into ``out`` (m, n) and None is
        returned; a backend may return it instead in a form of its own, which its gate
        methods then take as their ``a_extra`` / ``dh_extra`` (``out`` left as it was)."""
        self.matmul(x, w, out)

    def lstm_gates_backward_sum(self, dh, dh_extra, dnext_c, gates, prev_c, next_c, tanh_c,
                                da):
        """Extension point: lstm_gates_backward with dnext_h = dh + dh_extra; dprev_c
        overwrites dnext_c. ``da`` may be a stored operand: then it is written as one.
        ``next_c`` is the step's cell state, from which tanh_c is made where it is None
        (not kept: ``keeps_tanh_c``)."""
        if tanh_c is None:
            tanh_c = self.xp.tanh(next_c)
        d = da if da.dtype == gates.dtype else self.xp.empty(da.shape, gates.dtype)
        self.lstm_gates_backward(dh + dh_extra, dnext_c, gates, prev_c, tanh_c, d, dnext_c)
        if d is not da:
            da[...] = self.as_operand(d)

    # ------------------------------------------------------------------ vanilla RNN
    def rnn_step_forward(self, x, prev_h, Wx, Wh, b):
        """x (N, D), prev_h (N, H) -> next_h (N, H) = tanh(x Wx + prev_h Wh + b)."""
        a = self.matmul(x, Wx)
        a += self.matmul(prev_h, Wh)
        a += b
        next_h = self.rnn_gates_forward(a, a)
        return next_h, (x, prev_h, Wx, Wh, next_h)

    def rnn_step_backward(self, dnext_h, cache):
        """dnext_h (N, H) -> dx (N, D), dprev_h (N, H), dWx (D, H), dWh (H, H), db (H,)."""
        x, prev_h, Wx, Wh, next_h = cache
        da = self.rnn_gates_backward(dnext_h, next_h, self.xp.empty_like(next_h))
        return self._step_weight_grads(da, x, prev_h, Wx, Wh)

    def rnn_forward(self, x, h0, Wx, Wh, b):
        """x (N, T, D), h0 (N, H) -> h (N, T, H), every hidden state.

        Works time-major inside (the recurrence over N full-length sequences), so each
        step's operands are contiguous; h is an (N, T, H) view of the (T, N, H) states.
        """
        a, x_tm = self._project_inputs(x, Wx, b)  # (T*N, H)
        N, T = x.shape[:2]
        hs, cache = self.rnn_forward_packed(a, h0, Wh, (N,) * T)
        return hs.reshape(T, N, -1).transpose(1, 0, 2), (x_tm, Wx, cache)

    def rnn_backward(self, dh, cache):
        """dh (N, T, H), upstream gradient of every state -> dx, dh0, dWx, dWh, db."""
        x_tm, Wx, inner = cache
        da, dh0, dWh = self.rnn_backward_packed(_time_major(self.xp, dh), inner)
        dx, dWx, db = self._input_grads(da, x_tm, Wx, dh.shape[0])
        return dx, dh0, dWx, dWh, db

    def rnn_forward_packed(self, a, h0, Wh, step_rows, words=None, layout=None):
        """The vanilla RNN's recurrence over packed sequences (see ``packed_steps``)
        from their input projections: a (P, H), x Wx + b of every packed row
        (overwritten: it becomes the pre-activations), h0 (N, H), step_rows (T,) ->
        (hs (P, H), every packed row's hidden state; cache). With ``words`` int (P,),
        a is a table (V, H) and row p's projection is a[words[p]]. ``layout`` (a
        PackedRows of these step_rows, or None) is kept for the backward."""
        if words is not None:
            a = a[words]
        steps = packed_steps(step_rows, len(a), len(h0))
        hs = self.xp.empty_like(a)
        buf = self.xp.empty_like(h0)
        prev_h = h0
        for rows in steps:
            n = rows.stop - rows.start
            a[rows] += self.matmul(prev_h[:n], Wh, buf[:n])
            self.rnn_gates_forward(a[rows], hs[rows])
            prev_h = hs[rows]
        return hs, (Wh, h0, hs, steps, layout)

    def rnn_backward_packed(self, dh, cache):
        """dh (P, H), the upstream gradient of every packed state -> da (P, H), the
        gradient of rnn_forward_packed's input projections; dh0 (N, H); dWh (H, H)."""
        Wh, h0, hs, steps, layout = cache
        da = self.xp.empty_like(hs)
        dnext_h = self.xp.zeros_like(h0)  # rows past a step's count stay zero
        for rows in reversed(steps):
            n = rows.stop - rows.start
            self.rnn_gates_backward(dh[rows] + dnext_h[:n], hs[rows], da[rows])
            self.matmul(da[rows], Wh.T, dnext_h[:n])
        return da, dnext_h, self._recurrent_grad(da, h0, hs, steps, layout)

    # ------------------------------------------------------------------ LSTM
    def lstm_step_forward(self, x, prev_h, prev_c, Wx, Wh, b):
        """x (N, D), prev_h, prev_c (N, H) -> next_h, next_c (N, H)."""
        a = self.matmul(x, Wx)
        a += self.matmul(prev_h, Wh)
        a += b
        xp = self.xp
        next_c, next_h, tanh_c = (xp.empty_like(prev_c) for _ in range(3))
        self.lstm_gates_forward(a, prev_c, a, next_c, next_h, tanh_c)
        return next_h, next_c, (x, prev_h, prev_c, Wx, Wh, a, tanh_c)

    def lstm_step_backward(self, dnext_h, dnext_c, cache):
        """-> dx (N, D), dprev_h, dprev_c (N, H), dWx (D, 4H), dWh (H, 4H), db (4H,)."""
        x, prev_h, prev_c, Wx, Wh, gates, tanh_c = cache
        da = self.xp.empty_like(gates)
        dprev_c = self.xp.empty_like(prev_c)
        self.lstm_gates_backward(dnext_h, dnext_c, gates, prev_c, tanh_c, da, dprev_c)
        dx, dprev_h, dWx, dWh, db = self._step_weight_grads(da, x, prev_h, Wx, Wh)
        return dx, dprev_h, dprev_c, dWx, dWh, db

    def lstm_forward(self, x, h0, Wx, Wh, b):
        """x (N, T, D), h0 (N, H) -> h (N, T, H); the cell state starts at zero.

        Time-major inside, like rnn_forward; the gates are activated in place in the
        (T*N, 4H) buffer of the hoisted input projection.
        """
        a, x_tm = self._project_inputs(x, Wx, b)  # (T*N, 4H)
        N, T = x.shape[:2]
        hs, cache = self.lstm_forward_packed(a, h0, Wh, (N,) * T)
        return self.widen(hs).reshape(T, N, -1).transpose(1, 0, 2), (x_tm, Wx, cache)

    def lstm_backward(self, dh, cache):
        """dh (N, T, H) -> dx (N, T, D), dh0 (N, H), dWx (D, 4H), dWh (H, 4H), db (4H,)."""
        x_tm, Wx, inner = cache
        da, dh0, dWh = self.lstm_backward_packed(_time_major(self.xp, dh), inner)
        dx, dWx, db = self._input_grads(da, x_tm, Wx, dh.shape[0])
        return dx, dh0, dWx, dWh, db

    def lstm_forward_packed(self, a, h0, Wh, step_rows, words=None, layout=None):
        """The LSTM recurrence over packed sequences (see ``packed_steps``) from their
        input projections: a (P, 4H), x Wx + b of every packed row (overwritten: the
        gates are activated in place in it), h0 (N, H), step_rows (T,) -> (hs (P, H),
        every packed row's hidden state; cache). The cell state starts at zero.
        With ``words`` int (P,), a is a table (V, 4H) of every word's projection and
        packed row p's is a[words[p]] (the table is left as it is): looked up as each
        step's gates are made where the backend's gate kernel reads the table
        (``looks_rows_up_in_gates``), else copied out of it once, first.
        Where the backend stores float32 operands apart (``stored_dtype``), hs are
        stored so (the gate kernels write them so), and the products read a copy of Wh
        and of h0 made once. ``layout`` as rnn_forward_packed takes it; the steps are
        ``lstm_steps_forward``'s."""
        xp = self.xp
        if words is not None and not self.looks_rows_up_in_gates:
            a, words = a[words], None
        P = len(a) if words is None else len(words)
        steps = packed_steps(step_rows, P, len(h0))
        H = h0.shape[1]
        cs = xp.empty((P, H), dtype=a.dtype)
        tanh_c = xp.empty((P, H), dtype=a.dtype) if self.keeps_tanh_c else None
        hs = xp.empty((P, H), dtype=self.stored_dtype(a.dtype))
        if hs.dtype != a.dtype:
            Wh, h0 = self.as_operand(Wh), self.as_operand(h0)
        c0 = xp.zeros((len(h0), H), dtype=a.dtype)
        gates = a
        if words is not None:
            gates = self.lookup_gates(P, a.shape[1], a.dtype)
            words = words.astype(np.int64, copy=False)
        self.lstm_steps_forward(a, words, h0, c0, Wh, steps, layout, gates, cs, hs, tanh_c)
        return hs, (Wh, h0, c0, hs, cs, gates, tanh_c, steps, layout)

    def lstm_steps_forward(self, a, words, h0, c0, Wh, steps, layout, gates, cs, hs,
                           tanh_c) -> None:
        """Extension point: lstm_forward_packed's steps (``steps``, packed_steps' slices;
        ``layout`` a PackedRows or None), filling gates (a itself where words is None),
        cs, hs and tanh_c (where not None) row by row from a (or the table a and words),
        h0, c0 and Wh as lstm_forward_packed prepared them. Here a step is one
        recurrent product (``recurrent_product``) and one gate kernel."""
        buf = self.xp.empty((len(h0), a.shape[1]), dtype=a.dtype)
        prev_h, prev_c = h0, c0
        for rows in steps:
            n = rows.stop - rows.start
            product = self.recurrent_product(prev_h[:n], Wh, buf[:n])
            extra = buf[:n] if product is None else product
            step_tanh_c = None if tanh_c is None else tanh_c[rows]
            if words is None:
                self.lstm_gates_forward_sum(a[rows], extra, prev_c[:n], cs[rows], hs[rows],
                                            step_tanh_c)
            else:
                self.lstm_gates_forward_lookup(a, words[rows], extra, prev_c[:n],
                                               gates[rows], cs[rows], hs[rows], step_tanh_c)
            prev_h, prev_c = hs[rows], cs[rows]

    def lstm_backward_packed(self, dh, cache):
        """dh (P, H), the upstream gradient of every packed state -> da (P, 4H), the
        gradient of lstm_forward_packed's input projections (stored as the forward's hs
        were: ``stored_dtype``); dh0 (N, H); dWh (H, 4H). The steps are
        ``lstm_steps_backward``'s."""
        Wh, h0, c0, hs, cs, gates, tanh_c, steps, layout = cache  # Wh, h0 stored as hs are
        da = self.xp.empty(gates.shape, dtype=hs.dtype)
        dh0 = self.xp.zeros_like(c0)  # rows past the first step's count stay zero
        self.lstm_steps_backward(dh, gates, cs, c0, Wh, steps, layout, tanh_c, da, dh0)
        return da, dh0, self._recurrent_grad(da, h0, hs, steps, layout)

    def lstm_steps_backward(self, dh, gates, cs, c0, Wh, steps, layout, tanh_c, da,
                            dh0) -> None:
        """Extension point: lstm_backward_packed's steps, last first, filling da row by
        row and dh0 (zeros on entry) from dh and what the forward kept (gates, cs,
        tanh_c; c0 the zero initial cells). Here a step is one gate kernel and one
        recurrent product (the carried gradient, in dh0's buffer until the last product
        writes dh0 itself)."""
        dnext_h = dh0  # rows past a step's count stay zero
        dnext_c = self.xp.zeros_like(c0)
        product = None  # the later step's carried gradient, where not in dnext_h
        for t in reversed(range(len(steps))):
            rows = steps[t]
            n = rows.stop - rows.start
            prev_c = cs[steps[t - 1]][:n] if t else c0[:n]
            self.lstm_gates_backward_sum(dh[rows], dnext_h[:n] if product is None else product,
                                          dnext_c[:n], gates[rows], prev_c, cs[rows],
                                          None if tanh_c is None else tanh_c[rows], da[rows])
            if t:
                product = self.recurrent_product(da[rows], Wh.T, dnext_h[:n])
            else:  # dh0, whole
                self.matmul(da[rows], Wh.T, dnext_h[:n])

    # ------------------------------------------------------------------ shared gradient tails
    def _step_weight_grads(self, da, x, prev_h, Wx, Wh):
        """Gradients of a = x Wx + prev_h Wh + b given da: dx, dprev_h, dWx, dWh, db."""
        mm = self.matmul
        return mm(da, Wx.T), mm(da, Wh.T), mm(x.T, da), mm(prev_h.T, da), self.sum_rows(da)

    def _project_inputs(self, x, Wx, b):
        """x (N, T, D) -> (x Wx + b as (T*N, kH), x time-major as (T*N, D)): the input
        projection of every step in one matrix product."""
        x_tm = _time_major(self.xp, x)
        a = self.matmul(x_tm, Wx)
        a += b
        return a, x_tm

    def _input_grads(self, da, x_tm, Wx, N: int):
        """After the backward loop: dx (N, T, D), dWx, db from da (T*N, kH) and the
        time-major inputs x_tm (T*N, D), one matrix product each."""
        dx = self.matmul(da, Wx.T).reshape(-1, N, x_tm.shape[1]).transpose(1, 0, 2)
        return dx, self.matmul(x_tm.T, da), self.sum_rows(da)

    def _recurrent_grad(self, da, h0, hs, steps, layout):
        """dWh from da (P, kH) in one matrix product, each packed row's da paired with
        the state before it (``previous_states``)."""
        return self.matmul(self.previous_states(h0, hs, steps, layout).T, da)

    def previous_states(self, h0, hs, steps, layout=None):
        """Each packed row's state before it, (P, H) as hs (the left operand of dWh =
        previous^T da): its sequence's row of the step before (of h0 at the first); a
        backend that gathers rows in one pass takes ``layout.previous`` (PackedRows).
        Here the rows are copied into place a run of steps at a time, from ``steps``
        alone: after the first step of a run with equal row counts, each step's previous
        states are the whole step before it, so the rest of the run is one block (a
        dense batch: two copies, not T)."""
        prev = self.xp.empty((len(hs), h0.shape[1]), dtype=hs.dtype)
        t = 0
        while t < len(steps):
            n = steps[t].stop - steps[t].start
            end = t + 1  # the run is steps t .. end - 1, all of n rows
            while end < len(steps) and steps[end].stop - steps[end].start == n:
                end += 1
            prev[steps[t]] = hs[steps[t - 1]][:n] if t else h0[:n]
            if end > t + 1:
                prev[steps[t + 1].start : steps[end - 1].stop] = (
                    hs[steps[t].start : steps[end - 2].stop])
            t = end
        return prev

    # ------------------------------------------------------------------ loss and update
    def softmax_loss(self, x, y, mask):
        """Temporal softmax loss. x (N, T, V) scores, y int (N, T), mask (N, T).

        Returns (loss, dx): loss is the sum of -log p(y) over masked-in positions divided
        by N, as a 0-d array of x's dtype left on the device; dx (N, T, V) is zero where
        the mask is false.
        """
        N, T, V = x.shape
        weight = mask.reshape(N * T).astype(x.dtype)
        loss, dx = self.cross_entropy(x.reshape(N * T, V), y.reshape(N * T), weight, N)
        return loss, dx.reshape(N, T, V)

    def cross_entropy(self, scores, y, weight, n: int, overwrite: bool = False, bias=None):
        """Extension point (the CuPy backend fuses it into one kernel).

        scores (M, V), y int (M,), weight (M,), bias (V,) or None, added to every row of
        scores first -> (sum of weighted -log p(y) / n, dscores (M, V)). The gradient
        reuses one (M, V) buffer: ``scores`` itself when ``overwrite`` allows it, else a
        new one."""
        if bias is not None and overwrite:
            scores += bias
        elif bias is not None:
            scores, overwrite = scores + bias, True
        probs, picked = self._shifted_exp(scores, y, overwrite)
        return self.finish_cross_entropy(probs, picked, y, weight, n)

    def _shifted_exp(self, scores, y, overwrite: bool):
        """(exp(scores - rowmax), the shifted score of each row's target y)."""
        probs = scores if overwrite else scores.copy()
        probs -= scores.max(axis=1, keepdims=True)
        picked = probs[self.xp.arange(len(y)), y]
        self.xp.exp(probs, out=probs)
        return probs, picked

    def finish_cross_entropy(self, probs, picked, y, weight, n: int):
        """Extension point (the Numba backend compiles it): turn exp-shifted scores
        ``probs`` (M, V) into the gradient in place, with ``picked`` (M,) the shifted
        score of each row's target; return (loss, gradient)."""
        xp = self.xp
        sums = probs.sum(axis=1)
        loss = -((picked - xp.log(sums)) * weight).sum() / n
        probs *= (weight / (sums * n))[:, None]
        probs[xp.arange(len(y)), y] -= weight / n
        return loss, probs

    def vocab_loss(self, h, W_vocab, b_vocab, y, weight, n: int):
        """Scores over the vocabulary, the softmax cross-entropy, and their gradients.

        h (M, H) hidden states, W_vocab (H, V), b_vocab (V,), y int (M,) the target
        words, weight (M,) each row's weight (0 for a row that is not scored; a
        caption's weight in self-critical training, of any sign), n the divisor (the
        batch's caption count) -> (loss = sum of weight * -log p(y) / n, dh (M, H),
        weight_grads), where weight_grads() returns (dW_vocab (H, V), db_vocab (V,)):
        they are issued ``beside`` what the caller does next (the backward recurrence,
        on a GPU) and waited for when it calls. Where the backend stores operands apart
        (``operand_dtype``), h may be stored so (the LSTM loop's states are), and the
        products read stored copies of everything else too.
        """
        h_op, W_op = self.as_operand(h), self.as_operand(W_vocab)
        scores = self.matmul(h_op, W_op)
        loss, dscores = self.cross_entropy(scores, y, weight, n, overwrite=True, bias=b_vocab)
        dscores = self.as_operand(dscores)
        dh = self.matmul(dscores, W_op.T)
        weight_grads = self.beside(lambda: (self.matmul(h_op.T, dscores),
                                            self.sum_rows(dscores)))
        return loss, dh, weight_grads

    def beside(self, work: Callable[[], Any]) -> Callable[[], Any]:
        """Issue ``work`` (device work that returns the arrays it made) so that the
        device may run it beside the work issued after it; returns ``join``, whose call
        makes the work issued after that wait for it, and returns what ``work``
        returned. What ``work`` reads must not change until then. Here (one stream of
        work) it runs at once."""
        result = work()
        return lambda: result

    def adam_update(self, w, dw, m, v, t: int, learning_rate: float, beta1: float,
                    beta2: float, epsilon: float) -> None:
        """One Adam step, in place on w, m and v (all the same shape and dtype).

        ``t`` is the step number after incrementing (1 on the first step); the bias
        corrections are folded into one step size (``adam_scalars``).
        """
        step, eps_hat = adam_scalars(t, learning_rate, beta1, beta2, epsilon)
        self.adam_kernel(w, dw, m, v, step, eps_hat, beta1, beta2)

    def adam_update_device(self, w, dw, m, v, hyper) -> None:
        """adam_update with its scalars read from the array ``hyper`` (4,) of w's dtype:
        (step size, eps_hat, beta1, beta2) as ``adam_table`` writes them. A recorded
        step replays fixed kernel arguments, so what changes each step must be data."""
        self.adam_kernel(w, dw, m, v, hyper[0], hyper[1], hyper[2], hyper[3])

    def adam_update_device_many(self, tensors: list[tuple[Any, Any, Any, Any]],
                                hyper) -> None:
        """adam_update_device of every (w, dw, m, v) in ``tensors``, the i-th with row i
        of ``hyper`` (len(tensors), 4), as ``adam_table`` writes it. Extension point: a
        parameter at a time here."""
        for slot, (w, dw, m, v) in enumerate(tensors):
            self.adam_update_device(w, dw, m, v, hyper[slot])

    def adam_kernel(self, w, dw, m, v, step, eps_hat, beta1, beta2) -> None:
        """Extension point (fused by the Numba and CuPy backends): the Adam update in
        place on w, m, v, with the bias corrections folded into ``step`` and ``eps_hat``;
        the scalars are Python floats or 0-d arrays of w's dtype."""
        m *= beta1
        m += (1 - beta1) * dw
        v *= beta2
        v += (1 - beta2) * (dw * dw)
        denom = self.xp.sqrt(v)
        denom += eps_hat
        w -= step * (m / denom)


def adam_scalars(t: int, learning_rate: float, beta1: float, beta2: float,
                 epsilon: float) -> tuple[float, float]:
    """Adam's bias corrections folded into (step size, eps_hat) for step ``t`` (from 1):
    w -= step * m / (sqrt(v) + eps_hat) with step = lr sqrt(1 - beta2^t) / (1 - beta1^t)
    and eps_hat = eps sqrt(1 - beta2^t) equals the textbook lr m_hat / (sqrt(v_hat) + eps).
    """
    c2 = (1 - beta2**t) ** 0.5
    return learning_rate * c2 / (1 - beta1**t), epsilon * c2



def packed_steps(step_rows: Any, packed: int, batch: int) -> list[slice]:
    """Each time step's rows of a batch of packed sequences.

    Packed, as cuDNN packs them: ``batch`` sequences sorted longest first and laid out
    time-major with only the sequences still running at each step, step t holding the
    first step_rows[t] of them, so that no padding is stored or computed. Step t's rows
    are the returned slice t of a (packed, ...) array; steps of no rows are left out.
    Dense (N, T) sequences are step_rows = (N,) * T. ValueError unless step_rows do not
    increase, lie within 0..batch and add up to ``packed``.
    """
    rows = [int(r) for r in step_rows]
    if (any(r < 0 or r > batch for r in rows) or any(b > a for a, b in zip(rows, rows[1:]))
            or sum(rows) != packed):
        raise ValueError(f"step_rows {rows} do not pack {packed} rows of a batch of {batch}: "
                         f"expected non-increasing counts within 0..{batch} that add up to "
                         f"{packed}")
    stops = np.cumsum(rows, dtype=np.int64)
    return [slice(int(stop) - r, int(stop)) for stop, r in zip(stops, rows) if r]


def _time_major(xp: Any, x: Any) -> Any:
    """x (N, T, D) -> its (T*N, D) time-major copy: row t*N + n is x[n, t]."""
    N, T, D = x.shape
    return xp.ascontiguousarray(x.transpose(1, 0, 2)).reshape(T * N, D)
