"""Greedy, sampled and beam-search decoding, on every backend, against brute force."""

import itertools

import numpy as np
import pytest

from captioning import CaptioningRNN
from captioning.decoding import beam_decode, greedy_decode, sample_decode
from conftest import replaying_backend

FIVE = {"<NULL>": 0, "<START>": 1, "<END>": 2, "a": 3, "b": 4}


def _model(backend, vocab=FIVE, cell="lstm", seed=0, scale=3.0, end_bias=0.0):
    model = CaptioningRNN(vocab, input_dim=6, wordvec_dim=5, hidden_dim=7, cell_type=cell,
                          seed=seed, backend=backend)
    rng = np.random.default_rng(seed)
    be = model.backend
    # Larger weights than the initialisation, so the distributions are far from uniform.
    model.params["W_vocab"] = be.asarray(scale * rng.standard_normal((7, len(vocab))))
    b_vocab = np.zeros(len(vocab))
    if "<END>" in vocab:
        b_vocab[vocab["<END>"]] = end_bias
    model.params["b_vocab"] = be.asarray(b_vocab)
    return model, rng.standard_normal((4, 6))


def _log_prob(model, features, words):
    """Log-probability of ``words`` (ending wherever it ends), by the plain step loop."""
    p = {k: model.backend.to_numpy(v) for k, v in model.params.items()}
    h = features @ p["W_proj"] + p["b_proj"]
    c = np.zeros_like(h)
    total, prev = 0.0, model.word_to_idx.get("<START>", 0)
    H = h.shape[0]
    for word in words:
        a = p["W_embed"][prev] @ p["Wx"] + h @ p["Wh"] + p["b"]
        if model.cell_type == "rnn":
            h = np.tanh(a)
        else:
            i, f, o = (1 / (1 + np.exp(-a[k * H : (k + 1) * H])) for k in range(3))
            c = f * c + i * np.tanh(a[3 * H :])
            h = o * np.tanh(c)
        scores = h @ p["W_vocab"] + p["b_vocab"]
        total += scores[word] - np.log(np.exp(scores - scores.max()).sum()) - scores.max()
        prev = word
    return total


def _trim(row, end):
    row = list(row)
    return row[: row.index(end) + 1] if end in row else row


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_wide_beam_finds_the_best_caption_of_exhaustive_search(backend, seed):
    model, features = _model(backend, seed=seed)
    end, max_length = FIVE["<END>"], 3
    others = [w for w in range(5) if w != end]
    finished = [(*prefix, end) for n in range(max_length)
                for prefix in itertools.product(others, repeat=n)]
    for image, feats in enumerate(features):
        scored = {seq: _log_prob(model, feats, seq) for seq in finished}
        best = max(scored, key=scored.get)
        captions, logp = beam_decode(model, features[image : image + 1], beam_size=25,
                                     max_length=max_length)
        assert tuple(_trim(captions[0], end)) == best
        assert logp[0] == pytest.approx(scored[best], abs=1e-9)
        for beam in (1, 2, 3, 5):  # a narrower beam: a true log-probability, never above
            narrow, narrow_logp = beam_decode(model, features[image : image + 1], beam,
                                              max_length)
            found = tuple(_trim(narrow[0], end))
            assert narrow_logp[0] == pytest.approx(scored[found], abs=1e-9)
            assert scored[found] <= scored[best]


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_beam_of_one_is_greedy_and_returns_true_log_probabilities(backend, cell):
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, **{f"w{i}": i for i in range(3, 12)}}
    model, features = _model(backend, vocab, cell, seed=5, end_bias=2.0)
    greedy = greedy_decode(model, features, max_length=12)
    captions, logp = beam_decode(model, features, beam_size=1, max_length=12)
    np.testing.assert_array_equal(captions, greedy)
    assert (greedy == 2).any(axis=1).all()  # every greedy caption ended, the case compared
    for feats, row, value in zip(features, captions, logp):
        assert value == pytest.approx(_log_prob(model, feats, _trim(row, 2)), abs=1e-9)
    wider = beam_decode(model, features, beam_size=4, max_length=12)[1]
    assert (wider >= logp - 1e-9).all()  # a wider beam never finds worse here


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_beam_of_one_ends_an_unfinished_caption_at_the_last_step(backend, cell):
    """Where greedy decoding writes its likeliest last word, a beam of 1 finishes the
    hypothesis with <END> (every hypothesis that ends at the last step is finished)."""
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, **{f"w{i}": i for i in range(3, 12)}}
    model, features = _model(backend, vocab, cell, seed=5, end_bias=-30.0)
    greedy = greedy_decode(model, features, max_length=6)
    assert not (greedy == 2).any()  # the case: no greedy caption ends by itself
    captions, logp = beam_decode(model, features, beam_size=1, max_length=6)
    np.testing.assert_array_equal(captions[:, :-1], greedy[:, :-1])
    assert (captions[:, -1] == 2).all()
    for feats, row, value in zip(features, captions, logp):
        assert value == pytest.approx(_log_prob(model, feats, row), abs=1e-9)


def test_beam_search_layout_and_length_penalty(backend):
    model, features = _model(backend, seed=7)
    captions, _ = beam_decode(model, features, beam_size=3, max_length=6)
    assert captions.shape == (4, 6)
    for row in captions:  # <NULL> only after <END>
        if 2 in row:
            assert (row[list(row).index(2) + 1 :] == 0).all()
    long = beam_decode(model, features, beam_size=3, max_length=6, length_penalty=1.0)[0]
    assert ((long != 0).sum(axis=1) >= (captions != 0).sum(axis=1)).all()
    with pytest.raises(ValueError, match="beam_size"):
        beam_decode(model, features, beam_size=0)
    with pytest.raises(ValueError, match="max_length"):
        beam_decode(model, features, max_length=0)


def test_a_vocabulary_without_start_or_end_decodes_whole_captions(backend):
    vocab = {"<NULL>": 0, "x": 1, "y": 2, "z": 3}
    model, features = _model(backend, vocab)
    captions, logp = beam_decode(model, features, beam_size=3, max_length=5)
    assert captions.shape == (4, 5)
    for feats, row, value in zip(features, captions, logp):  # all 5 words count
        assert value == pytest.approx(_log_prob(model, feats, row), abs=1e-9)
    greedy = greedy_decode(model, features, 5)
    np.testing.assert_array_equal(beam_decode(model, features, 1, 5)[0], greedy)


def test_sampling_near_zero_temperature_or_top_1_is_greedy(backend):
    model, features = _model(backend, seed=3)
    greedy = greedy_decode(model, features, 8)
    np.testing.assert_array_equal(sample_decode(model, features, 8, temperature=1e-6), greedy)
    np.testing.assert_array_equal(sample_decode(model, features, 8, top_k=1, seed=4), greedy)
    a = sample_decode(model, features, 8, temperature=1.5, seed=1)
    np.testing.assert_array_equal(a, sample_decode(model, features, 8, temperature=1.5, seed=1))
    with pytest.raises(ValueError, match="temperature"):
        sample_decode(model, features, temperature=0)
    with pytest.raises(ValueError, match="top_k"):
        sample_decode(model, features, top_k=99)


def test_sampling_draws_from_the_model_distribution():
    model, features = _model("numpy", seed=2, scale=1.0)
    first_words = sample_decode(model, np.repeat(features[:1], 4000, axis=0), 1, seed=0)[:, 0]
    p = model.params
    h = features[0] @ p["W_proj"] + p["b_proj"]
    a = p["W_embed"][1] @ p["Wx"] + h @ p["Wh"] + p["b"]
    H = 7
    i, f, o = (1 / (1 + np.exp(-a[k * H : (k + 1) * H])) for k in range(3))
    h = o * np.tanh(i * np.tanh(a[3 * H :]))
    scores = h @ p["W_vocab"] + p["b_vocab"]
    expected = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    observed = np.bincount(first_words, minlength=5) / 4000
    np.testing.assert_allclose(observed, expected, atol=0.03)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_beam_search_of_fixed_shape_answers_as_the_one_that_drops_done_images(backend, cell):
    """What a recording replays (every image carried to the last step, no host
    synchronisation) gives the answers of op by op (done images dropped each step)."""
    from captioning.decoding import _beam_on_device

    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, **{f"w{i}": i for i in range(3, 12)}}
    model, _ = _model(backend, vocab, cell, seed=12, scale=2.0)
    features = np.random.default_rng(3).standard_normal((40, 6))
    be = model.backend
    # (a strong length penalty: a done image would otherwise still take a longer one)
    for beam, penalty in [(1, 0.0), (3, 0.0), (3, 1.0), (5, 0.5), (2, 2.0)]:
        captions, logp = beam_decode(model, features, beam, 12, penalty)
        ends = [list(row).index(2) for row in captions if 2 in row]
        assert len(set(ends)) > 2 and min(ends) < 5  # images finish at different steps
        fixed = _beam_on_device(model, be.asarray(features), beam, 12, penalty)
        np.testing.assert_array_equal(be.to_numpy(fixed[0]), captions)
        np.testing.assert_array_equal(be.to_numpy(fixed[1]), logp)


def test_decoders_recorded_per_shape_and_setting_answer_as_op_by_op():
    """The recordings' bookkeeping, on the CPU through a stand-in that records (the GPU
    test replays real CUDA graphs): one recording per decoder, setting and batch shape,
    made again when a parameter array is replaced, the oldest dropped past a bound."""
    from captioning import decoding

    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, **{f"w{i}": i for i in range(3, 12)}}
    be = replaying_backend()
    recorded, plain = (_model(backend, vocab, seed=12, scale=2.0)[0]
                       for backend in (be, "numpy"))
    rng = np.random.default_rng(0)

    def agree(rows: int = 9) -> None:
        features = rng.standard_normal((rows, 6))
        np.testing.assert_array_equal(greedy_decode(recorded, features, 8),
                                      greedy_decode(plain, features, 8))
        for a, b in zip(beam_decode(recorded, features, 3, 8, 1.0),
                        beam_decode(plain, features, 3, 8, 1.0)):
            np.testing.assert_array_equal(a, b)

    for _ in range(3):  # op by op, recorded, replayed
        agree()
    recordings = decoding._RECORDINGS[recorded]
    assert sorted(recordings, key=str) == [("beam", 3, 8, 1.0, 9), ("greedy", 8, 9)]
    assert [r.calls for r in be.recordings] == [3, 3]
    recorded.params["Wh"] = recorded.params["Wh"].copy()  # a new array: recorded anew
    plain.params["Wh"] = plain.params["Wh"].copy()
    agree()
    assert len(be.recordings) == 4 and len(recordings) == 2
    for rows in range(1, 6):  # more shapes than are kept: the oldest go first
        agree(rows)
    assert len(recordings) == decoding._RECORDINGS_PER_MODEL
    assert ("greedy", 8, 9) not in recordings and ("beam", 3, 8, 1.0, 5) in recordings


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_greedy_stops_carrying_ended_captions_with_the_same_answers(cell):
    """On the CPU, captions that have ended are no longer computed: the same captions as
    the dense decoding a recording replays (every caption, every step), for captions
    that end at many different steps and some that never do."""
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, **{f"w{i}": i for i in range(3, 12)}}
    be = replaying_backend()
    recorded, plain = (_model(backend, vocab, cell=cell, seed=12, scale=2.0)[0]
                       for backend in (be, "numpy"))
    features = np.random.default_rng(0).standard_normal((40, 6))
    for _ in range(2):  # the stand-in runs the recorded (dense) decoding each call
        dense = greedy_decode(recorded, features, 10)
    assert [r.calls for r in be.recordings] == [2]
    captions = greedy_decode(plain, features, 10)
    np.testing.assert_array_equal(captions, dense)
    ends = {list(row).index(2) if 2 in row else None for row in captions}
    assert len(ends) >= 3 and None in ends


def test_a_decoder_that_cannot_be_recorded_warns_once_and_decodes_op_by_op():
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, **{f"w{i}": i for i in range(3, 12)}}
    be = replaying_backend(refuse=True)
    refused, plain = (_model(backend, vocab, seed=12, scale=2.0)[0]
                      for backend in (be, "numpy"))
    features = np.random.default_rng(1).standard_normal((7, 6))
    expected = beam_decode(plain, features, 2, 8)
    beam_decode(refused, features, 2, 8)  # the first call runs op by op
    with pytest.warns(RuntimeWarning, match="refuses to record; beam decoding goes on op"):
        answers = beam_decode(refused, features, 2, 8)
    for _ in range(2):  # no second try, no second warning
        for a, b in zip(answers, expected):
            np.testing.assert_array_equal(a, b)
        answers = beam_decode(refused, features, 2, 8)
    assert len(be.recordings) == 1 and be.recordings[0].calls == 2
