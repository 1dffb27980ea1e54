"""CaptioningRNN, the update rules and the trainer: behaviour, dtypes and bad input."""

import numpy as np
import pytest

from captioning import CaptioningRNN, CaptioningSolver, CaptioningTrainer, adam, rmsprop, sgd
from captioning.optim import sgd_momentum
from conftest import random_captions

VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, **{f"w{i}": i for i in range(4, 30)}}


def overfit_data(rng, count=50, dim=512):
    return {
        "train_captions": random_captions(rng, count, vocab_size=len(VOCAB)),
        "train_image_idxs": np.arange(count, dtype=np.int32),
        "train_features": rng.standard_normal((count, dim)).astype(np.float32),
    }


@pytest.mark.parametrize(("cell_type", "lr_decay", "target"),
                         [("rnn", 0.95, 0.1), ("lstm", 0.995, 0.5)])
def test_overfits_fifty_captions(backend, cell_type, lr_decay, target, capsys):
    """The exercise's overfit check: hidden 512, wordvec 256, adam 5e-3, batch 25,
    50 epochs (100 iterations), on 50 captions."""
    np.random.seed(231)
    data = overfit_data(np.random.default_rng(1))
    model = CaptioningRNN(VOCAB, input_dim=512, wordvec_dim=256, hidden_dim=512,
                          cell_type=cell_type, dtype=np.float32)
    solver = CaptioningSolver(model, data, update_rule="adam",
                              optim_config={"learning_rate": 5e-3}, lr_decay=lr_decay,
                              num_epochs=50, batch_size=25, print_every=10, verbose=True)
    history = solver.train()
    assert len(history) == 100 and solver.loss_history is history
    assert history[-1] < target
    out = capsys.readouterr().out
    assert "(Iteration 1 / 100) loss: " in out and "(Iteration 91 / 100) loss: " in out


def test_sample_is_greedy_and_padded(backend):
    model = CaptioningRNN(VOCAB, input_dim=8, wordvec_dim=6, hidden_dim=10, cell_type="lstm",
                          seed=3)
    features = np.random.default_rng(0).standard_normal((5, 8))
    captions = model.sample(features, max_length=7)
    assert captions.shape == (5, 7) and isinstance(captions, np.ndarray)
    # Greedy by hand: step the layer functions, feeding each argmax back in.
    p = {k: model.backend.to_numpy(v) for k, v in model.params.items()}
    h, c = features @ p["W_proj"] + p["b_proj"], np.zeros((5, 10))
    word, done = np.full(5, 1), np.zeros(5, bool)
    from captioning import lstm_step_forward
    for t in range(7):
        h, c, _ = lstm_step_forward(p["W_embed"][word], h, c, p["Wx"], p["Wh"], p["b"])
        word = (h @ p["W_vocab"] + p["b_vocab"]).argmax(1)
        np.testing.assert_array_equal(captions[:, t], np.where(done, 0, word))
        done |= word == 2


def test_float32_stays_float32(backend):
    """No float64 temporaries in a float32 run: every output and gradient is float32."""
    model = CaptioningRNN(VOCAB, input_dim=16, wordvec_dim=8, hidden_dim=12, cell_type="lstm",
                          dtype=np.float32, seed=0)
    rng = np.random.default_rng(0)
    loss, grads = model.loss(rng.standard_normal((4, 16)).astype(np.float32),
                             random_captions(rng, 4, vocab_size=len(VOCAB)))
    assert np.asarray(loss).dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())
    assert all(p.dtype == np.float32 for p in model.params.values())


def test_same_seed_same_parameters(backend):
    a = CaptioningRNN(VOCAB, input_dim=6, cell_type="lstm", seed=7)
    b = CaptioningRNN(VOCAB, input_dim=6, cell_type="lstm", seed=7, backend="numpy")
    for name in a.params:
        np.testing.assert_array_equal(a.backend.to_numpy(a.params[name]), b.params[name])
    assert a.params["Wx"].shape == (128, 512) and a.params["W_vocab"].shape == (128, len(VOCAB))
    assert np.all(a.backend.to_numpy(a.params["b"]) == 0)


# ---------------------------------------------------------------- update rules
def textbook_adam(w, dw, m, v, t, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    m = b1 * m + (1 - b1) * dw
    v = b2 * v + (1 - b2) * dw**2
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    return w - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


def test_adam_matches_the_textbook_formula(backend):
    rng = np.random.default_rng(0)
    w, config = rng.standard_normal((4, 5)), None
    ref_w, m, v = w.copy(), np.zeros_like(w), np.zeros_like(w)
    for t in range(1, 4):
        dw = rng.standard_normal(w.shape)
        w_in, w_before = w, w.copy()
        w, config = adam(w_in, dw, config)
        np.testing.assert_array_equal(w_in, w_before)  # the input was not mutated
        ref_w, m, v = textbook_adam(ref_w, dw, m, v, t)
        np.testing.assert_allclose(w, ref_w, rtol=1e-12)
    assert config["t"] == 3
    np.testing.assert_allclose(config["m"], m, rtol=1e-12)


def test_other_rules_match_their_formulas():
    rng = np.random.default_rng(0)
    w, dw = rng.standard_normal(6), rng.standard_normal(6)
    np.testing.assert_allclose(sgd(w, dw)[0], w - 1e-2 * dw)
    next_w, config = sgd_momentum(w, dw)
    np.testing.assert_allclose(next_w, w - 1e-2 * dw)
    np.testing.assert_allclose(sgd_momentum(next_w, dw, config)[0], next_w - 1.9e-2 * dw)
    cache = 0.01 * dw**2
    np.testing.assert_allclose(rmsprop(w, dw)[0], w - 1e-2 * dw / (np.sqrt(cache) + 1e-8))
    w_copy = w.copy()
    sgd(w, dw, inplace=True)
    np.testing.assert_allclose(w, w_copy - 1e-2 * dw)


# ---------------------------------------------------------------- bad input
def test_bad_cell_type():
    with pytest.raises(ValueError, match="invalid cell_type 'gru'"):
        CaptioningRNN(VOCAB, cell_type="gru")


def test_vocabulary_without_null():
    with pytest.raises(ValueError, match="no '<NULL>' token"):
        CaptioningRNN({"<START>": 0, "cat": 1})


def test_wrong_feature_width():
    model = CaptioningRNN(VOCAB, input_dim=512, hidden_dim=8, wordvec_dim=4)
    with pytest.raises(ValueError, match=r"expects \(N, 512\)"):
        model.loss(np.zeros((2, 4096)), np.ones((2, 5), int))
    with pytest.raises(ValueError, match=r"expects \(N, 512\)"):
        model.sample(np.zeros((2, 4096)))


def test_caption_indices_outside_vocabulary():
    model = CaptioningRNN(VOCAB, input_dim=4, hidden_dim=8, wordvec_dim=4)
    with pytest.raises(ValueError, match="word index 99, outside the vocabulary of 30"):
        model.loss(np.zeros((2, 4)), np.array([[1, 4, 99], [1, 2, 0]]))


def test_unknown_update_rule_or_keyword():
    model = CaptioningRNN(VOCAB, input_dim=512, hidden_dim=8, wordvec_dim=4)
    data = overfit_data(np.random.default_rng(0), count=4)
    with pytest.raises(ValueError, match="unknown update rule 'adagrad'"):
        CaptioningTrainer(model, data, update_rule="adagrad")
    with pytest.raises(ValueError, match=r"unrecognised arguments \['learning_rate'\]"):
        CaptioningTrainer(model, data, learning_rate=1e-3)


def test_trainer_checks_its_data():
    model = CaptioningRNN(VOCAB, input_dim=512, hidden_dim=8, wordvec_dim=4)
    data = overfit_data(np.random.default_rng(0), count=4)
    data["train_image_idxs"] = data["train_image_idxs"][:3]
    with pytest.raises(ValueError, match="4 train_captions and 3 train_image_idxs"):
        CaptioningTrainer(model, data)
    data = overfit_data(np.random.default_rng(0), count=4, dim=16)
    with pytest.raises(ValueError, match=r"expects \(images, 512\)"):
        CaptioningTrainer(model, data)


def test_epoch_length_and_lr_decay():
    model = CaptioningRNN(VOCAB, input_dim=512, hidden_dim=8, wordvec_dim=4, seed=0)
    data = overfit_data(np.random.default_rng(0), count=10)
    trainer = CaptioningTrainer(model, data, batch_size=4, num_epochs=3, lr_decay=0.5,
                                updater_config={"learning_rate": 0.1}, verbose=False, seed=0)
    assert len(trainer.train()) == 3 * (10 // 4)
    assert all(c["learning_rate"] == pytest.approx(0.0125) for c in trainer.optim_configs.values())
