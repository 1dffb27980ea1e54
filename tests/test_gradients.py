"""The exercise's gradient checks against centred differences, float64, every backend."""

import numpy as np
import pytest

from captioning import (
    CaptioningRNN,
    eval_numerical_gradient,
    eval_numerical_gradient_array,
    lstm_backward,
    lstm_forward,
    lstm_step_backward,
    lstm_step_forward,
    rel_error,
    rnn_backward,
    rnn_forward,
    rnn_step_backward,
    rnn_step_forward,
    temporal_affine_backward,
    temporal_affine_forward,
    temporal_softmax_loss,
    word_embedding_backward,
    word_embedding_forward,
)

rng = np.random  # the exercise draws from NumPy's global generator, seeded with 231


@pytest.fixture(autouse=True)
def same_draws_for_every_backend():
    """Reseed before each test, so every backend is checked on the book's inputs."""
    np.random.seed(231)


def randn(*shape):
    return np.random.randn(*shape)


def check(analytic, numeric, tol, noise=2e-10):
    """The exercise's relative error below ``tol`` on every element, except elements whose
    absolute error is below the centred difference's own rounding noise (about
    eps * |f| / h): a gradient element near 1e-5 cannot be checked to 1e-6 of itself."""
    analytic = np.asarray(analytic)
    err = np.abs(numeric - analytic)
    relative = err / np.maximum(1e-8, np.abs(numeric) + np.abs(analytic))
    assert np.all((relative < tol) | (err < noise)), rel_error(numeric, analytic)


def test_rnn_step_backward(backend):
    N, D, H = 4, 5, 6
    x, h, Wx, Wh, b = randn(N, D), randn(N, H), randn(D, H), randn(H, H), randn(H)
    out, cache = rnn_step_forward(x, h, Wx, Wh, b)
    dnext_h = randn(*out.shape)
    grads = rnn_step_backward(dnext_h, cache)
    for value, analytic in zip((x, h, Wx, Wh, b), grads):
        numeric = eval_numerical_gradient_array(
            lambda _: rnn_step_forward(x, h, Wx, Wh, b)[0], value, dnext_h)
        check(analytic, numeric, 1e-8)


def test_rnn_backward(backend):
    N, D, T, H = 2, 3, 10, 5
    x, h0, Wx, Wh, b = randn(N, T, D), randn(N, H), randn(D, H), randn(H, H), randn(H)
    out, cache = rnn_forward(x, h0, Wx, Wh, b)
    dout = randn(*out.shape)
    grads = rnn_backward(dout, cache)
    for value, analytic in zip((x, h0, Wx, Wh, b), grads):
        numeric = eval_numerical_gradient_array(
            lambda _: rnn_forward(x, h0, Wx, Wh, b)[0], value, dout)
        check(analytic, numeric, 1e-6)


def test_word_embedding_backward(backend):
    N, T, V, D = 50, 3, 5, 6
    x = rng.randint(V, size=(N, T))
    W = randn(V, D)
    out, cache = word_embedding_forward(x, W)
    dout = randn(*out.shape)
    dW = word_embedding_backward(dout, cache)
    numeric = eval_numerical_gradient_array(lambda w: word_embedding_forward(x, w)[0], W, dout)
    check(dW, numeric, 1e-11)


def test_temporal_affine_backward(backend):
    N, T, D, M = 2, 3, 4, 5
    x, w, b = randn(N, T, D), randn(D, M), randn(M)
    out, cache = temporal_affine_forward(x, w, b)
    dout = randn(*out.shape)
    grads = temporal_affine_backward(dout, cache)
    for value, analytic in zip((x, w, b), grads):
        numeric = eval_numerical_gradient_array(
            lambda _: temporal_affine_forward(x, w, b)[0], value, dout)
        check(analytic, numeric, 1e-9)


def test_lstm_step_backward(backend):
    N, D, H = 4, 5, 6
    x, h, c = randn(N, D), randn(N, H), randn(N, H)
    Wx, Wh, b = randn(D, 4 * H), randn(H, 4 * H), randn(4 * H)
    next_h, next_c, cache = lstm_step_forward(x, h, c, Wx, Wh, b)
    dnext_h, dnext_c = randn(*next_h.shape), randn(*next_c.shape)
    grads = lstm_step_backward(dnext_h, dnext_c, cache)
    for value, analytic in zip((x, h, c, Wx, Wh, b), grads):
        def f(_, k=0):
            return lstm_step_forward(x, h, c, Wx, Wh, b)[k]

        numeric = (eval_numerical_gradient_array(lambda v: f(v, 0), value, dnext_h)
                   + eval_numerical_gradient_array(lambda v: f(v, 1), value, dnext_c))
        check(analytic, numeric, 1e-7)


def test_lstm_backward(backend):
    N, D, T, H = 2, 3, 10, 6
    x, h0 = randn(N, T, D), randn(N, H)
    Wx, Wh, b = randn(D, 4 * H), randn(H, 4 * H), randn(4 * H)
    out, cache = lstm_forward(x, h0, Wx, Wh, b)
    dout = randn(*out.shape)
    grads = lstm_backward(dout, cache)
    for value, analytic in zip((x, h0, Wx, Wh, b), grads):
        numeric = eval_numerical_gradient_array(
            lambda _: lstm_forward(x, h0, Wx, Wh, b)[0], value, dout)
        check(analytic, numeric, 1e-6)


def test_temporal_softmax_loss_gradient(backend):
    N, T, V = 7, 8, 9
    x = 0.001 * randn(N, T, V)
    y = rng.randint(V, size=(N, T))
    mask = rng.rand(N, T) > 0.5
    loss, dx = temporal_softmax_loss(x, y, mask, verbose=False)
    numeric = eval_numerical_gradient(lambda x: temporal_softmax_loss(x, y, mask)[0], x,
                                      verbose=False)
    check(dx, numeric, 1e-7)
    assert np.all(dx[~mask] == 0)


def _book_model(cell_type):
    """The exercise's gradient-check cell: batch 2, T 3, input 4, wordvec 5, hidden 6,
    drawn from NumPy's global generator seeded with 231, float64 by default."""
    np.random.seed(231)
    word_to_idx = {"<NULL>": 0, "cat": 2, "dog": 3}
    captions = np.random.randint(len(word_to_idx), size=(2, 3))
    features = np.random.randn(2, 4)
    model = CaptioningRNN(word_to_idx, input_dim=4, wordvec_dim=5, hidden_dim=6,
                          cell_type=cell_type)
    model.params = {k: model.backend.to_numpy(v) for k, v in model.params.items()}
    return model, features, captions


def _numeric(model, features, captions, name, h):
    return eval_numerical_gradient(lambda _: model.loss(features, captions)[0],
                                   model.params[name], verbose=False, h=h)


def test_captioning_rnn_gradients(backend):
    model, features, captions = _book_model("rnn")
    _, grads = model.loss(features, captions)
    assert set(grads) == set(model.params)
    for name in sorted(model.params):
        assert rel_error(_numeric(model, features, captions, name, 1e-6), grads[name]) < 1e-5


def test_captioning_lstm_gradients(backend):
    """With h=1e-6 a centred difference of a loss near 3 carries about ulp(3)/h = 4e-10 of
    rounding noise, and this LSTM's smallest Wx gradients are near 1e-7, so the relative
    error at h=1e-6 is bounded by that noise, not by the maths: check the absolute error
    against that floor (gradients here reach 7e-2), and the relative error on every
    parameter whose gradients stand well above it."""
    model, features, captions = _book_model("lstm")
    _, grads = model.loss(features, captions)
    for name in sorted(model.params):
        numeric = _numeric(model, features, captions, name, 1e-6)
        assert np.abs(numeric - grads[name]).max() < 2e-9, name
        if np.abs(grads[name]).min() > 1e-4:
            assert rel_error(numeric, grads[name]) < 1e-5, name


def test_caption_weights_scale_each_captions_part(backend):
    """Per-caption weights (any sign) through the fused loss: the numerical gradient of
    the weighted loss, K times the plain loss for weights K, and a weight of 0 dropping a
    caption (the loss still divides by the whole batch's N)."""
    model, features, captions = _book_model("lstm")
    weights = np.array([0.7, -1.3])
    loss, grads = model.loss(features, captions, caption_weights=weights)
    for name in sorted(model.params):
        numeric = eval_numerical_gradient(
            lambda _: model.loss(features, captions, caption_weights=weights)[0],
            model.params[name], verbose=False, h=1e-6)
        assert np.abs(numeric - grads[name]).max() < 2e-9, name
    plain, plain_grads = model.loss(features, captions)
    tripled, tripled_grads = model.loss(features, captions, caption_weights=np.full(2, 3.0))
    assert float(tripled) == pytest.approx(3 * float(plain), rel=1e-12)
    for name, g in plain_grads.items():
        np.testing.assert_allclose(tripled_grads[name], 3 * g, rtol=1e-10, atol=1e-15)
    first_only = model.loss(features, captions, caption_weights=np.array([1.0, 0.0]))[0]
    alone = model.loss(features[:1], captions[:1])[0]
    assert float(first_only) == pytest.approx(float(alone) / 2, rel=1e-12)
    with pytest.raises(ValueError, match=r"caption_weights have shape \(3,\); expected \(2,\)"):
        model.loss(features, captions, caption_weights=np.ones(3))
