"""The exercise's layer functions (``rnn_layers`` in the textbook), on the active backend.

Each function has the seed's name and signature and runs on ``get_backend()``
(``$CAPTION_BACKEND``, default numpy). Arrays come back where they went in: NumPy
inputs give NumPy outputs on every backend, so a notebook's checks against NumPy
expectations run unchanged; device inputs stay on the device. Caches are opaque.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backend import get_backend


def _call(op: str, *args: Any, outputs: int) -> Any:
    """Run backend method ``op``; when host arrays went to a device backend, bring the
    first ``outputs`` results back to the host (the rest, caches, stay where they are)."""
    be = get_backend()
    on_host = [isinstance(a, np.ndarray) and not be.owns(a) for a in args]
    moved = any(on_host)
    if moved:
        args = tuple(be.asarray(a) if h else a for a, h in zip(args, on_host))
    result = getattr(be, op)(*args)
    if not moved:
        return result
    if not isinstance(result, tuple):
        return be.to_numpy(result)
    return tuple(be.to_numpy(r) if k < outputs else r for k, r in enumerate(result))


def rnn_step_forward(x, prev_h, Wx, Wh, b):
    """x (N, D), prev_h (N, H), Wx (D, H), Wh (H, H), b (H,) -> (next_h, cache)."""
    return _call("rnn_step_forward", x, prev_h, Wx, Wh, b, outputs=1)


def rnn_step_backward(dnext_h, cache):
    """dnext_h (N, H) -> (dx, dprev_h, dWx, dWh, db)."""
    return _call("rnn_step_backward", dnext_h, cache, outputs=5)


def rnn_forward(x, h0, Wx, Wh, b):
    """x (N, T, D), h0 (N, H) -> (h (N, T, H), cache)."""
    return _call("rnn_forward", x, h0, Wx, Wh, b, outputs=1)


def rnn_backward(dh, cache):
    """dh (N, T, H), the upstream gradient of every state -> (dx, dh0, dWx, dWh, db)."""
    return _call("rnn_backward", dh, cache, outputs=5)


def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    """x (N, D), prev_h, prev_c (N, H), Wx (D, 4H), Wh (H, 4H), b (4H,)
    -> (next_h, next_c, cache); gate blocks i, f, o, g."""
    return _call("lstm_step_forward", x, prev_h, prev_c, Wx, Wh, b, outputs=2)


def lstm_step_backward(dnext_h, dnext_c, cache):
    """-> (dx, dprev_h, dprev_c, dWx, dWh, db)."""
    return _call("lstm_step_backward", dnext_h, dnext_c, cache, outputs=6)


def lstm_forward(x, h0, Wx, Wh, b):
    """x (N, T, D), h0 (N, H) -> (h (N, T, H), cache); the initial cell state is zero."""
    return _call("lstm_forward", x, h0, Wx, Wh, b, outputs=1)


def lstm_backward(dh, cache):
    """dh (N, T, H) -> (dx, dh0, dWx, dWh, db)."""
    return _call("lstm_backward", dh, cache, outputs=5)


def word_embedding_forward(x, W):
    """x int (N, T), W (V, D) -> (out (N, T, D), cache)."""
    return _call("word_embedding_forward", x, W, outputs=1)


def word_embedding_backward(dout, cache):
    """dout (N, T, D) -> dW (V, D); repeated indices accumulate."""
    return _call("word_embedding_backward", dout, cache, outputs=1)


def temporal_affine_forward(x, w, b):
    """x (N, T, D), w (D, M), b (M,) -> (out (N, T, M), cache)."""
    return _call("temporal_affine_forward", x, w, b, outputs=1)


def temporal_affine_backward(dout, cache):
    """dout (N, T, M) -> (dx (N, T, D), dw (D, M), db (M,))."""
    return _call("temporal_affine_backward", dout, cache, outputs=3)


def affine_forward(x, w, b):
    """x (N, d_1..d_k) flattened to (N, D), w (D, M), b (M,) -> (out (N, M), cache)."""
    return _call("affine_forward", x, w, b, outputs=1)


def affine_backward(dout, cache):
    """dout (N, M) -> (dx, dw (D, M), db (M,))."""
    return _call("affine_backward", dout, cache, outputs=3)


def sigmoid(x):
    """Logistic function, numerically stable for large positive and negative x."""
    return _call("sigmoid", x, outputs=1)


def temporal_softmax_loss(x, y, mask, verbose: bool = False):
    """x (N, T, V) scores, y int (N, T) targets, mask bool (N, T) -> (loss, dx).

    The loss sums -log p(y) over positions where mask is true and divides by N;
    dx is zero where mask is false.
    """
    loss, dx = _call("softmax_loss", x, y, mask, outputs=2)
    if verbose:
        print("dx shape:", dx.shape)
    if isinstance(dx, np.ndarray):
        loss = loss.dtype.type(loss)  # a NumPy scalar, as the exercise returned
    return loss, dx
