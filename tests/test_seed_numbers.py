"""The exercise's fixed numbers (SEED_API.md), through the public API, on every backend."""

import numpy as np
import pytest

from captioning import (
    CaptioningRNN,
    rel_error,
    rnn_forward,
    rnn_step_forward,
    temporal_softmax_loss,
    word_embedding_forward,
)


def lin(start, stop, *shape):
    return np.linspace(start, stop, num=int(np.prod(shape))).reshape(shape)


def test_rnn_step_forward(backend):
    N, D, H = 3, 10, 4
    next_h, _ = rnn_step_forward(lin(-0.4, 0.7, N, D), lin(-0.2, 0.5, N, H),
                                 lin(-0.1, 0.9, D, H), lin(-0.3, 0.7, H, H), lin(-0.2, 0.4, H))
    expected = np.asarray([[-0.58172089, -0.50182032, -0.41232771, -0.31410098],
                           [0.66854692, 0.79562378, 0.87755553, 0.92795967],
                           [0.97934501, 0.99144213, 0.99646691, 0.99854353]])
    assert isinstance(next_h, np.ndarray)
    assert rel_error(expected, next_h) < 1e-8


def test_rnn_forward(backend):
    N, T, D, H = 2, 3, 4, 5
    h, _ = rnn_forward(lin(-0.1, 0.3, N, T, D), lin(-0.3, 0.1, N, H), lin(-0.2, 0.4, D, H),
                       lin(-0.4, 0.1, H, H), lin(-0.7, 0.1, H))
    expected = np.asarray([
        [[-0.42070749, -0.27279261, -0.11074945, 0.05740409, 0.22236251],
         [-0.39525808, -0.22554661, -0.0409454, 0.14649412, 0.32397316],
         [-0.42305111, -0.24223728, -0.04287027, 0.15997045, 0.35014525]],
        [[-0.55857474, -0.39065825, -0.19198182, 0.02378408, 0.23735671],
         [-0.27150199, -0.07088804, 0.13562939, 0.33099728, 0.50158768],
         [-0.51014825, -0.30524429, -0.06755202, 0.17806392, 0.40333043]]])
    assert rel_error(expected, h) < 1e-7


def test_word_embedding_forward(backend):
    V, D = 5, 3
    x = np.asarray([[0, 3, 1, 2], [2, 1, 0, 3]])
    W = lin(0, 1, V, D)
    out, _ = word_embedding_forward(x, W)
    assert out.shape == (2, 4, 3)
    assert rel_error(out, W[x]) < 1e-12
    assert rel_error(out[0, 1], np.asarray([0.64285714, 0.71428571, 0.78571429])) < 1e-8


def test_captioning_rnn_loss(backend):
    N, D, W, H, T = 10, 20, 30, 40, 13
    word_to_idx = {"<NULL>": 0, "cat": 2, "dog": 3}
    V = len(word_to_idx)
    model = CaptioningRNN(word_to_idx, input_dim=D, wordvec_dim=W, hidden_dim=H,
                          cell_type="rnn")
    for k, v in model.params.items():
        model.params[k] = np.linspace(-1.4, 1.3, num=v.size).reshape(*v.shape)
    features = lin(-1.5, 0.3, N, D)
    captions = (np.arange(N * T) % V).reshape(N, T)
    loss, grads = model.loss(features, captions)
    assert abs(loss - 9.83235591003) < 1e-10
    assert set(grads) == set(model.params)


@pytest.mark.parametrize(("N", "T", "V", "p", "expected"),
                         [(100, 1, 10, 1.0, 2.3), (100, 10, 10, 1.0, 23), (5000, 10, 10, 0.1, 2.3)])
def test_temporal_softmax_loss_sanity(backend, N, T, V, p, expected):
    rng = np.random.default_rng(0)
    x = 0.001 * rng.standard_normal((N, T, V))
    y = rng.integers(V, size=(N, T))
    mask = rng.random((N, T)) <= p
    loss, _ = temporal_softmax_loss(x, y, mask)
    assert loss == pytest.approx(expected, rel=0.05)
