"""The textbook formulation of one LSTM captioning training step: the baseline.

Written as the exercise teaches it, float32 throughout: a Python loop of per-step
forward functions, a per-step backward that computes dWx, dWh and db inside the loop,
the 2-D ``np.add.at`` scatter-add, the three-pass softmax and the textbook Adam.
Nothing here is used by the library.
"""

from __future__ import annotations

import numpy as np


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    H = prev_h.shape[1]
    a = x @ Wx + prev_h @ Wh + b
    i, f, o, g = _sigmoid(a[:, :H]), _sigmoid(a[:, H:2 * H]), _sigmoid(a[:, 2 * H:3 * H]), \
        np.tanh(a[:, 3 * H:])
    next_c = f * prev_c + i * g
    next_h = o * np.tanh(next_c)
    return next_h, next_c, (x, prev_h, prev_c, i, f, o, g, next_c)


def _lstm_step_backward(dnext_h, dnext_c, cache, Wx, Wh):
    x, prev_h, prev_c, i, f, o, g, next_c = cache
    tc = np.tanh(next_c)
    dc = dnext_c + dnext_h * o * (1 - tc**2)
    da = np.hstack([dc * g * i * (1 - i), dc * prev_c * f * (1 - f),
                    dnext_h * tc * o * (1 - o), dc * i * (1 - g**2)])
    return da @ Wx.T, da @ Wh.T, dc * f, x.T @ da, prev_h.T @ da, da.sum(axis=0)


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
        mask = cout != self.null
        N, T = cin.shape
        H = p["Wh"].shape[0]
        h0 = features @ p["W_proj"] + p["b_proj"]
        x = p["W_embed"][cin]
        h, c = h0, np.zeros_like(h0)
        hs, caches = np.zeros((N, T, H), dtype=h0.dtype), []
        for t in range(T):
            h, c, cache = _lstm_step_forward(x[:, t], h, c, p["Wx"], p["Wh"], p["b"])
            hs[:, t], _ = h, caches.append(cache)
        scores = (hs.reshape(N * T, H) @ p["W_vocab"] + p["b_vocab"]).reshape(N, T, -1)
        # softmax loss, three passes
        V = scores.shape[2]
        flat, yf, mf = scores.reshape(N * T, V), cout.reshape(N * T), mask.reshape(N * T)
        probs = np.exp(flat - flat.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        loss = -np.sum(mf * np.log(probs[np.arange(N * T), yf])) / N
        dflat = probs.copy()
        dflat[np.arange(N * T), yf] -= 1
        dflat /= N
        dflat *= mf[:, None]
        grads = {"W_vocab": hs.reshape(N * T, H).T @ dflat, "b_vocab": dflat.sum(axis=0)}
        dhs = (dflat @ p["W_vocab"].T).reshape(N, T, H)
        dx = np.zeros_like(x)
        dprev_h, dprev_c = np.zeros_like(h0), np.zeros_like(h0)
        grads["Wx"], grads["Wh"], grads["b"] = (np.zeros_like(p[k]) for k in ("Wx", "Wh", "b"))
        for t in reversed(range(T)):
            dx[:, t], dprev_h, dprev_c, dWx, dWh, db = _lstm_step_backward(
                dhs[:, t] + dprev_h, dprev_c, caches[t], p["Wx"], p["Wh"])
            grads["Wx"] += dWx
            grads["Wh"] += dWh
            grads["b"] += db
        dW_embed = np.zeros_like(p["W_embed"])
        np.add.at(dW_embed, cin, dx)
        grads["W_embed"] = dW_embed
        grads["W_proj"] = features.T @ dprev_h
        grads["b_proj"] = dprev_h.sum(axis=0)
        return loss, grads

    def step(self, features, captions, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        loss, grads = self.loss(features, captions)
        for k, w in self.params.items():
            s, dw = self.adam[k], grads[k]
            s["t"] += 1
            s["m"] = beta1 * s["m"] + (1 - beta1) * dw
            s["v"] = beta2 * s["v"] + (1 - beta2) * dw**2
            m_hat = s["m"] / (1 - beta1 ** s["t"])
            v_hat = s["v"] / (1 - beta2 ** s["t"])
            self.params[k] = w - lr * m_hat / (np.sqrt(v_hat) + eps)
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
        h, c, _ = _lstm_step_forward(x, h, c, p["Wx"], p["Wh"], p["b"])
        words = (h @ p["W_vocab"] + p["b_vocab"]).argmax(axis=1)
        captions[:, t] = words
    return captions
