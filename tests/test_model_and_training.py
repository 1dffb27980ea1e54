"""CaptioningRNN, the update rules and the trainer: behaviour, dtypes and bad input."""

import numpy as np
import pytest

from benchmarks import textbook
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("count", "length", "vocab_size"),
                         [(2, 5, 200), (16, 17, 30), (37, 9, 12)])
def test_loss_and_gradients_match_the_textbook_model(backend, count, length, vocab_size,
                                                      dtype):
    """With more positions than vocabulary words the model projects each word once and
    looks the rows up (a table of V rows, its gradient a scatter-add), with fewer it
    multiplies at every position as the exercise does: the same loss and gradients
    either way, padding included."""
    rng = np.random.default_rng(count)
    word_to_idx = {"<NULL>": 0, "<START>": 1, "<END>": 2,
                   **{f"w{i}": i for i in range(3, vocab_size)}}
    captions = random_captions(rng, count, length, vocab_size)
    features = rng.standard_normal((count, 20)).astype(dtype)
    model = CaptioningRNN(word_to_idx, input_dim=20, wordvec_dim=6, hidden_dim=7,
                          cell_type="lstm", dtype=dtype, seed=3)
    for name in ("b", "b_proj", "b_vocab"):  # initialised to zero: make them count
        model.params[name] = rng.standard_normal(model.params[name].shape).astype(dtype)
    loss, grads = model.loss(features, captions)
    host = model.backend.to_numpy
    ref_loss, ref_grads = textbook.TextbookLSTM(
        {k: host(v).astype(np.float64) for k, v in model.params.items()}).loss(
            features.astype(np.float64), captions)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    assert abs(float(loss) - ref_loss) <= tol * abs(ref_loss)
    assert set(grads) == set(ref_grads)
    for name, ref in ref_grads.items():
        assert grads[name].dtype == dtype
        assert np.abs(host(grads[name]) - ref).max() <= tol * np.abs(ref).max(), name


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
def test_adam_matches_the_textbook_formula(backend):
    """The exercise's adam(w, dw, config) on this backend's arrays (the rule runs on the
    backend that holds w)."""
    rng = np.random.default_rng(0)
    host_w = rng.standard_normal((4, 5))
    w, config = backend.asarray(host_w), None
    ref_w, m, v = host_w.copy(), np.zeros_like(host_w), np.zeros_like(host_w)
    for t in range(1, 4):
        dw = rng.standard_normal(host_w.shape)
        w_in, w_before = w, backend.to_numpy(w).copy()
        w, config = adam(w_in, backend.asarray(dw), config)
        assert backend.owns(w) and backend.owns(config["m"])
        np.testing.assert_array_equal(backend.to_numpy(w_in), w_before)  # input not mutated
        ref_w, m, v = textbook.adam(ref_w, dw, m, v, t)
        np.testing.assert_allclose(backend.to_numpy(w), ref_w, rtol=1e-12)
    assert config["t"] == 3
    np.testing.assert_allclose(backend.to_numpy(config["m"]), m, rtol=1e-12)


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


def test_reduce_gradients_sits_between_the_backward_pass_and_the_update(backend):
    """The data-parallel hook: what it leaves in the gradients is what the update uses
    (clipping included), and the loss it returns is the step's loss."""
    rng = np.random.default_rng(3)
    data = overfit_data(rng, count=8, dim=6)
    calls = []

    def twice(loss, grads):  # as if a second process had computed the same gradients
        calls.append(sorted(grads))
        for g in grads.values():
            g *= 2
        return loss * 2

    runs = {}
    for name, lr, reducer in (("plain", 1.0, None), ("reduced", 0.5, twice)):
        model = CaptioningRNN(VOCAB, input_dim=6, wordvec_dim=4, hidden_dim=5,
                              cell_type="lstm", seed=0, backend=backend)
        trainer = CaptioningTrainer(model, data, update_rule="sgd", batch_size=4, num_epochs=2,
                                    verbose=False, seed=0, reduce_gradients=reducer,
                                    updater_config={"learning_rate": lr})
        runs[name] = (trainer.train(), model)
    assert calls == [sorted(runs["plain"][1].params)] * 4
    np.testing.assert_allclose(runs["reduced"][0], 2 * np.asarray(runs["plain"][0]), rtol=1e-10)
    for name, value in runs["plain"][1].params.items():
        np.testing.assert_allclose(backend.to_numpy(runs["reduced"][1].params[name]),
                                   backend.to_numpy(value), rtol=1e-10, atol=1e-12)

    def huge(loss, grads):
        for g in grads.values():
            g *= 1e6
        return loss

    model = CaptioningRNN(VOCAB, input_dim=6, wordvec_dim=4, hidden_dim=5, cell_type="lstm",
                          seed=0, backend=backend)
    before = {k: backend.to_numpy(v).copy() for k, v in model.params.items()}
    trainer = CaptioningTrainer(model, data, update_rule="sgd", grad_clip=1e-3, verbose=False,
                                reduce_gradients=huge, updater_config={"learning_rate": 1.0})
    trainer.step(np.arange(4))  # clipped after the reduction: the update's norm is the clip
    change = np.sqrt(sum(((backend.to_numpy(model.params[k]) - before[k]) ** 2).sum()
                         for k in before))
    assert change == pytest.approx(1e-3, rel=1e-6)


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
