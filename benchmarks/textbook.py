"""The textbook formulation: the exercise's layers as it teaches them, written
independently of the library. Two uses: the baseline the benchmarks time, and the
reference the tests compare every backend with (numpy included, so that a mistake in
the base class that the numpy backend is cannot hide behind itself).

A Python loop of per-step forward functions, a per-step backward that computes dWx, dWh
and db inside the loop, the 2-D ``np.add.at`` scatter-add, the three-pass softmax and
the textbook Adam. Every function computes in the dtype of its inputs. Nothing here is
used by the library.
"""

from __future__ import annotations

import numpy as np


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


# ---------------------------------------------------------------- vanilla RNN
def rnn_step_forward(x, prev_h, Wx, Wh, b):
    next_h = np.tanh(x @ Wx + prev_h @ Wh + b)
    return next_h, (x, prev_h, Wx, Wh, next_h)


def rnn_step_backward(dnext_h, cache):
    """-> dx, dprev_h, dWx, dWh, db."""
    x, prev_h, Wx, Wh, next_h = cache
    da = dnext_h * (1 - next_h**2)
    return da @ Wx.T, da @ Wh.T, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def rnn_forward(x, h0, Wx, Wh, b):
    """x (N, T, D) -> h (N, T, H), one step at a time."""
    h, hs, caches = h0, [], []
    for t in range(x.shape[1]):
        h, cache = rnn_step_forward(x[:, t], h, Wx, Wh, b)
        hs.append(h)
        caches.append(cache)
    return np.stack(hs, axis=1), caches


def rnn_backward(dh, caches):
    """-> dx, dh0, dWx, dWh, db, the weight gradients summed step by step."""
    dx, dprev_h = [], np.zeros_like(dh[:, 0])
    dWx, dWh, db = 0, 0, 0
    for t in reversed(range(dh.shape[1])):
        dx_t, dprev_h, dWx_t, dWh_t, db_t = rnn_step_backward(dh[:, t] + dprev_h, caches[t])
        dx.append(dx_t)
        dWx, dWh, db = dWx + dWx_t, dWh + dWh_t, db + db_t
    return np.stack(dx[::-1], axis=1), dprev_h, dWx, dWh, db


# ---------------------------------------------------------------- LSTM
def lstm_cell(a, prev_c):
    """Pre-activation a (N, 4H) in blocks i, f, o, g and prev_c (N, H) ->
    (next_h, next_c, (i, f, o, g))."""
    H = prev_c.shape[1]
    i, f, o = (sigmoid(a[:, k * H : (k + 1) * H]) for k in range(3))
    g = np.tanh(a[:, 3 * H :])
    next_c = f * prev_c + i * g
    return o * np.tanh(next_c), next_c, (i, f, o, g)


def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    next_h, next_c, gates = lstm_cell(x @ Wx + prev_h @ Wh + b, prev_c)
    return next_h, next_c, (x, prev_h, prev_c, Wx, Wh, gates, next_c)


def lstm_cell_backward(dnext_h, dnext_c, gates, prev_c, next_c):
    """Through one cell update, given its gates (i, f, o, g): -> (da (N, 4H), dprev_c)."""
    i, f, o, g = gates
    tc = np.tanh(next_c)
    dc = dnext_c + dnext_h * o * (1 - tc**2)
    da = np.hstack([dc * g * i * (1 - i), dc * prev_c * f * (1 - f),
                    dnext_h * tc * o * (1 - o), dc * i * (1 - g**2)])
    return da, dc * f


def lstm_step_backward(dnext_h, dnext_c, cache):
    """-> dx, dprev_h, dprev_c, dWx, dWh, db."""
    x, prev_h, prev_c, Wx, Wh, gates, next_c = cache
    da, dprev_c = lstm_cell_backward(dnext_h, dnext_c, gates, prev_c, next_c)
    return da @ Wx.T, da @ Wh.T, dprev_c, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def lstm_forward(x, h0, Wx, Wh, b):
    """x (N, T, D) -> h (N, T, H), one step at a time; the cell state starts at zero."""
    h, c, hs, caches = h0, np.zeros_like(h0), [], []
    for t in range(x.shape[1]):
        h, c, cache = lstm_step_forward(x[:, t], h, c, Wx, Wh, b)
        hs.append(h)
        caches.append(cache)
    return np.stack(hs, axis=1), caches


def lstm_backward(dh, caches):
    """-> dx, dh0, dWx, dWh, db, the weight gradients summed step by step."""
    dx, dprev_h, dprev_c = [], np.zeros_like(dh[:, 0]), np.zeros_like(dh[:, 0])
    dWx, dWh, db = 0, 0, 0
    for t in reversed(range(dh.shape[1])):
        dx_t, dprev_h, dprev_c, dWx_t, dWh_t, db_t = lstm_step_backward(
            dh[:, t] + dprev_h, dprev_c, caches[t])
        dx.append(dx_t)
        dWx, dWh, db = dWx + dWx_t, dWh + dWh_t, db + db_t
    return np.stack(dx[::-1], axis=1), dprev_h, dWx, dWh, db


# ---------------------------------------------------------------- embedding, loss, Adam
def embedding_backward(idx, dout, vocab_size):
    """The 2-D ``np.add.at`` scatter-add: dW[idx[...]] += dout[...]."""
    dW = np.zeros((vocab_size, dout.shape[-1]), dtype=dout.dtype)
    np.add.at(dW, idx, dout)
    return dW


def temporal_softmax_loss(x, y, mask):
    """Three passes (softmax, loss, gradient); the loss is divided by N."""
    N, T, V = x.shape
    flat, yf, mf = x.reshape(N * T, V), y.reshape(N * T), mask.reshape(N * T)
    probs = np.exp(flat - flat.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    loss = -np.sum(mf * np.log(probs[np.arange(N * T), yf])) / N
    dx = probs.copy()
    dx[np.arange(N * T), yf] -= 1
    dx /= N
    dx *= mf[:, None]
    return loss, dx.reshape(N, T, V)


def adam(w, dw, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    """Step ``t`` (from 1) with bias-corrected moments -> (next_w, next_m, next_v)."""
    m = beta1 * m + (1 - beta1) * dw
    v = beta2 * v + (1 - beta2) * dw**2
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    return w - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


# ---------------------------------------------------------------- the whole model
class TextbookLSTM:
    """The exercise's LSTM captioning model and Adam, for timing one training step."""

    def __init__(self, params: dict[str, np.ndarray], null: int = 0) -> None:
        self.params = {k: v.copy() for k, v in params.items()}
        self.null = null
        self.adam = {k: {"m": np.zeros_like(v), "v": np.zeros_like(v), "t": 0}
                     for k, v in params.items()}

    def loss(self, features, captions):
        p = self.params
        cin, cout = captions[:, :-1], captions[:, 1:]
        N, T = cin.shape
        H = p["Wh"].shape[0]
        h0 = features @ p["W_proj"] + p["b_proj"]
        x = p["W_embed"][cin]
        hs, caches = lstm_forward(x, h0, p["Wx"], p["Wh"], p["b"])
        scores = (hs.reshape(N * T, H) @ p["W_vocab"] + p["b_vocab"]).reshape(N, T, -1)
        loss, dscores = temporal_softmax_loss(scores, cout, cout != self.null)
        dflat = dscores.reshape(N * T, -1)
        grads = {"W_vocab": hs.reshape(N * T, H).T @ dflat, "b_vocab": dflat.sum(axis=0)}
        dhs = (dflat @ p["W_vocab"].T).reshape(N, T, H)
        dx, dh0, grads["Wx"], grads["Wh"], grads["b"] = lstm_backward(dhs, caches)
        grads["W_embed"] = embedding_backward(cin, dx, p["W_embed"].shape[0])
        grads["W_proj"] = features.T @ dh0
        grads["b_proj"] = dh0.sum(axis=0)
        return loss, grads

    def step(self, features, captions, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        loss, grads = self.loss(features, captions)
        for k, w in self.params.items():
            s = self.adam[k]
            s["t"] += 1
            self.params[k], s["m"], s["v"] = adam(w, grads[k], s["m"], s["v"], s["t"], lr,
                                                  beta1, beta2, eps)
        return loss


def textbook_sample(params: dict[str, np.ndarray], features: np.ndarray, max_length: int,
                    start: int = 1) -> np.ndarray:
    """The exercise's greedy ``sample``: a batched loop of lstm_step_forward and argmax."""
    p = params
    h = features @ p["W_proj"] + p["b_proj"]
    c = np.zeros_like(h)
    words = np.full(len(features), start)
    captions = np.zeros((len(features), max_length), dtype=np.int64)
    for t in range(max_length):
        x = p["W_embed"][words]
        h, c, _ = lstm_step_forward(x, h, c, p["Wx"], p["Wh"], p["b"])
        words = (h @ p["W_vocab"] + p["b_vocab"]).argmax(axis=1)
        captions[:, t] = words
    return captions
