"""Turning image features into captions: greedy, sampled and beam-search decoding.

Every decoder runs batched over the images (and beams) on the model's backend, one
recurrent step per word, and returns host int arrays (N, max_length) in the layout of
the exercise's ``sample``: column 0 holds the first generated word, <END> is kept, and
<NULL> pads what follows it.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import numpy as np

from backend import RecordingFailed


def _row_chunks(xp, rows: int):
    """Slices covering ``rows``: on the CPU, blocks of rows small enough that a run of
    elementwise passes stays in cache (measured: the LSTM gates of 3,000 rows take half
    the time in blocks of 256); on a GPU, one block (every block is a kernel launch)."""
    step = 256 if xp is np else max(rows, 1)
    return [slice(start, start + step) for start in range(0, rows, step)]


class _Stepper:
    """The model run one word at a time: _Stepper(model, features), then step(words),
    with reorder(rows) between steps to follow beam search's back-pointers."""

    def __init__(self, model: Any, features: Any) -> None:
        be = model.backend
        self.model, self.be, self.xp = model, be, be.xp
        self.p = {k: be.asarray(v) for k, v in model.params.items()}
        features = model.check_features(be.asarray(features, dtype=model.dtype))
        self.h, _ = be.affine_forward(features, self.p["W_proj"], self.p["b_proj"])
        self.c = self.xp.zeros_like(self.h)
        # Every input is a word embedding, so its projection is one row of this table.
        self.word_inputs = be.matmul(self.p["W_embed"], self.p["Wx"]) + self.p["b"]
        self.Wh = self.p["Wh"]
        if model.cell_type == "lstm":
            # Halve the i, f, o columns (exact), so one tanh serves gates and sigmoids.
            H = self.h.shape[1]
            self.Wh = self.Wh.copy()
            for table in (self.word_inputs, self.Wh):
                table[:, : 3 * H] *= 0.5
        self.null = model.word_to_idx["<NULL>"]
        self.start = model.word_to_idx.get("<START>", self.null)
        self.end = model.word_to_idx.get("<END>")
        self._scratch: dict[str, Any] = {}
        self.parents = None  # rows the next step continues (None: each its own)
        self.flip = 0  # which buffer pair holds h and c

    def _buffer(self, name: str, rows: int, cols: int) -> Any:
        """A reused (rows, cols) work array: on the CPU, fresh 12-24 MB arrays each step
        cost beam search about 1-2 ms a step (measured) in page faults."""
        buf = self._scratch.get(name)
        if buf is None or len(buf) < rows:
            buf = self._scratch[name] = self.xp.empty((rows, cols), dtype=self.h.dtype)
        return buf[:rows]

    def step(self, words: Any) -> Any:
        """Feed ``words`` (rows,) and return the next word's scores (rows, V), in a
        buffer the next call reuses."""
        be, xp = self.be, self.xp
        parents, self.parents = self.parents, None
        rows = len(words)
        if self.model.cell_type == "rnn":
            a = be.matmul(self.h, self.Wh)  # fresh: it becomes the next hidden state
            if parents is not None:
                a = a[parents]
            a += self.word_inputs[words]  # x Wx + b, looked up rather than multiplied
            self.h = be.rnn_gates_forward(a, a)
        else:
            # The product is taken before the rows are reordered: (h Wh)[parents] is
            # h[parents] Wh, and h has fewer rows than parents after beam search's first
            # step. The new states go to the other of two buffer pairs.
            hw = be.matmul(self.h, self.Wh, self._buffer("hw", len(self.h), self.Wh.shape[1]))
            self.flip = 1 - self.flip
            h, c = (self._buffer(f"{name}{self.flip}", rows, self.h.shape[1]) for name in "hc")
            for r in _row_chunks(xp, rows):
                be.lstm_decode_gates(hw, self.word_inputs, words[r], self.c, c[r], h[r],
                                     r if parents is None else parents[r])
            self.h, self.c = h, c
        W_vocab = self.p["W_vocab"]
        scores = be.matmul(self.h, W_vocab, self._buffer("scores", rows, W_vocab.shape[1]))
        scores += self.p["b_vocab"]
        return scores

    def reorder(self, rows: Any) -> None:
        """Make the next step continue the states of ``rows`` (beam search's
        back-pointers), in that order."""
        self.parents = rows if self.parents is None else self.parents[rows]


def _check_length(max_length: int) -> None:
    if int(max_length) != max_length or max_length < 1:
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}")


def _decode_on_device(model: Any, features: Any, max_length: int, choose) -> Any:
    """Feed back ``choose(scores)`` each step: the loop greedy and sampling share.
    Returns the captions on the device, with no host synchronisation on the way."""
    run = _Stepper(model, features)
    xp = run.xp
    n = run.h.shape[0]
    words = xp.full(n, run.start, dtype=xp.int64)
    captions = xp.full((n, max_length), run.null, dtype=xp.int64)
    done = xp.zeros(n, dtype=bool)
    for t in range(max_length):
        words = choose(run.step(words))
        captions[:, t] = xp.where(done, run.null, words)
        if run.end is not None:
            done |= words == run.end
    return captions


def _decode_one_choice(model: Any, features: Any, max_length: int, choose) -> np.ndarray:
    _check_length(max_length)
    return model.backend.to_numpy(_decode_on_device(model, features, max_length, choose))


def _argmax(scores: Any) -> Any:
    return scores.argmax(axis=1)


class _GreedyRecording:
    """Greedy decoding of one batch shape recorded for replay (``Backend.record``: a
    CUDA graph on CuPy), so that the device, not the host issuing ~10 launches a word,
    paces it. It reads its features from a fixed input array and the parameters it was
    recorded with, which it holds so that their memory stays theirs."""

    def __init__(self, model: Any, shape: tuple[int, int], dtype: Any, max_length: int
                 ) -> None:
        be = model.backend
        self.params = list(model.params.values())
        self.features = be.xp.empty(shape, dtype=dtype)
        owner = weakref.ref(model)  # a strong one would keep the model in the cache forever
        self.run = be.record(lambda: _decode_on_device(owner(), self.features, max_length,
                                                       _argmax))

    def fits(self, model: Any) -> bool:
        return all(a is b for a, b in zip(self.params, model.params.values()))


# model -> {(rows, max_length): its recording, or None where recording failed}
_GREEDY_RECORDINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_RECORDINGS_PER_MODEL = 4  # batch shapes kept (the oldest goes first)


def greedy_decode(model: Any, features: Any, max_length: int = 30) -> np.ndarray:
    """The most likely word at each step (the exercise's ``sample``). On a backend that
    records (CuPy), each batch shape is recorded on its second call and replayed after,
    with the same result as op by op."""
    _check_length(max_length)
    be = model.backend
    if not be.can_record:
        return _decode_one_choice(model, features, max_length, _argmax)
    features = model.check_features(be.asarray(features, dtype=model.dtype))
    recordings = _GREEDY_RECORDINGS.setdefault(model, {})
    key = (features.shape[0], max_length)
    recording = recordings.get(key, False)
    if recording is False or (recording is not None and not recording.fits(model)):
        if key not in recordings and len(recordings) >= _RECORDINGS_PER_MODEL:
            recordings.pop(next(iter(recordings)))
        recording = recordings[key] = _GreedyRecording(model, features.shape,
                                                       features.dtype, max_length)
    if recording is None:  # recording failed once for this shape: op by op
        return _decode_one_choice(model, features, max_length, _argmax)
    recording.features[...] = features
    try:
        return be.to_numpy(recording.run())
    except RecordingFailed as exc:
        recordings[key] = None
        warnings.warn(f"{exc}; greedy decoding goes on op by op", RuntimeWarning,
                      stacklevel=2)
        return _decode_one_choice(model, features, max_length, _argmax)


def sample_decode(model: Any, features: Any, max_length: int = 30, temperature: float = 1.0,
                  top_k: int | None = None, seed: int | None = None) -> np.ndarray:
    """Each word drawn from softmax(scores / temperature), optionally only among the
    ``top_k`` most likely. The draws are Gumbel noise from a host generator (``seed``),
    so a seed gives the same captions on every backend."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    vocab_size = model.vocab_size
    if top_k is not None and not 1 <= top_k <= vocab_size:
        raise ValueError(f"top_k must be between 1 and the vocabulary size {vocab_size}, "
                         f"got {top_k!r}")
    rng = np.random.default_rng(seed)
    xp = model.backend.xp

    def choose(scores):
        scores = scores / temperature
        if top_k is not None and top_k < vocab_size:
            kth = xp.partition(scores, vocab_size - top_k, axis=1)[:, vocab_size - top_k]
            scores = xp.where(scores >= kth[:, None], scores, -xp.inf)
        gumbel = -np.log(-np.log(rng.random(scores.shape) + 1e-300) + 1e-300)
        return (scores + model.backend.asarray(gumbel, dtype=scores.dtype)).argmax(axis=1)

    return _decode_one_choice(model, features, max_length, choose)


def policy_sample(model: Any, features: Any, max_length: int, rng: np.random.Generator
                  ) -> np.ndarray:
    """Captions drawn from the model's own distribution (temperature 1), as self-critical
    training samples them: each word by inverting the cumulative softmax at one uniform
    draw per caption from ``rng`` (the caller keeps its state), so a step costs a cumulative
    sum on the device and a few bytes from the host, not a Gumbel draw per word of the
    vocabulary as ``sample_decode`` makes for its backend-independent captions. Layout as
    every decoder here: host ints (N, max_length), <END> kept, <NULL> after it."""
    xp = model.backend.xp

    def choose(scores):
        probs = xp.exp(scores - scores.max(axis=1, keepdims=True))
        cdf = xp.cumsum(probs, axis=1)
        u = model.backend.asarray(rng.random(len(cdf)), dtype=cdf.dtype) * cdf[:, -1]
        # The first word whose cumulative mass passes u; never past the last word.
        return xp.minimum((cdf < u[:, None]).sum(axis=1), cdf.shape[1] - 1)

    return _decode_one_choice(model, features, max_length, choose)


def _log_probs_inplace(xp, scores, offsets):
    """scores (rows, V) -> log-softmax(scores) + offsets[:, None] (rows,), in place, a
    cache-sized block at a time."""
    for r in _row_chunks(xp, len(scores)):
        block = scores[r]
        block -= block.max(axis=1, keepdims=True)
        norm = xp.log(xp.exp(block).sum(axis=1))
        block += (offsets[r] - norm)[:, None]
    return scores


def _stable_argsort(xp, a):
    """Row-wise argsort keeping equal keys in index order (CuPy's sort always does)."""
    return xp.argsort(a, axis=1, kind="stable") if xp is np else xp.argsort(a, axis=1)


def _top(xp, scores, m: int):
    """(indices, values) of the m largest entries of each row, largest first (ties: lower
    index). Overwrites ``scores``."""
    if m > 16:
        top = _stable_argsort(xp, -scores)[:, :m]
        return top, xp.take_along_axis(scores, top, axis=1)
    # For a few, m passes of argmax beat a partition (31 ms a step for 1000 x 3012 here).
    rows = xp.arange(scores.shape[0])
    top = xp.empty((scores.shape[0], m), dtype=xp.int64)
    values = xp.empty((scores.shape[0], m), dtype=scores.dtype)
    for j in range(m):
        top[:, j] = scores.argmax(axis=1)
        values[:, j] = scores[rows, top[:, j]]
        scores[rows, top[:, j]] = -xp.inf
    return top, values


def beam_decode(model: Any, features: Any, beam_size: int = 3, max_length: int = 30,
                length_penalty: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Beam search. Returns (captions (N, max_length), log-probabilities (N,)).

    Each step extends the ``beam_size`` live hypotheses of every image by every word and
    keeps the ``beam_size`` best continuations that do not end. A hypothesis ending in
    <END> is finished when it ranks among the ``beam_size`` best candidates of its step,
    and at the last step every one that ends is. So a beam of 1 is greedy decoding except
    at the last step: a caption that has not ended by then ends there with <END> (and its
    log-probability counts <END>) where greedy decoding writes its likeliest word.
    An image is done once it holds ``beam_size`` finished hypotheses. The answer is the
    finished one with the best log-probability / length**length_penalty (length in
    words, <END> included; 0 compares plain log-probabilities); an image with none
    (no <END> in the vocabulary, or never likely enough) gets its best live one, whole.
    """
    _check_length(max_length)
    if int(beam_size) != beam_size or beam_size < 1:
        raise ValueError(f"beam_size must be a positive integer, got {beam_size!r}")
    if length_penalty < 0:
        raise ValueError(f"length_penalty must be non-negative, got {length_penalty!r}")
    run = _Stepper(model, features)
    xp, k = run.xp, beam_size
    n, vocab, dtype = run.h.shape[0], model.vocab_size, run.h.dtype
    ninf = -np.inf
    out_captions = xp.full((n, max_length), run.null, dtype=xp.int64)
    out_logp = xp.full(n, ninf, dtype=dtype)
    # Per image still searching (rows of these arrays; ``image`` maps them back):
    image = xp.arange(n)
    live = xp.full((n, k), ninf, dtype=dtype)
    live[:, 0] = 0  # one live hypothesis to start with: identical beams would repeat
    width = 1  # state rows per image: one until the first step has chosen k beams
    history = xp.full((n, k, max_length), run.null, dtype=xp.int64)
    best_score = xp.full(n, ninf, dtype=dtype)  # ranking score of the best finished
    best_logp = xp.full(n, ninf, dtype=dtype)
    best_tokens = xp.full((n, max_length), run.null, dtype=xp.int64)
    finished = xp.zeros(n, dtype=xp.int64)
    words = xp.full(n, run.start, dtype=xp.int64)

    def retire(which) -> None:
        """Write the answers of the searching images selected by the mask ``which``."""
        which = xp.nonzero(which)[0]  # integer indices: CuPy mixes them with others
        none = best_score[which] == ninf  # nothing finished: the best live one, whole
        out_captions[image[which]] = xp.where(none[:, None], history[which, 0],
                                              best_tokens[which])
        out_logp[image[which]] = xp.where(none, live[which, 0], best_logp[which])

    for t in range(max_length):
        m = len(image)
        rows = xp.arange(m)
        logp = _log_probs_inplace(xp, run.step(words), live[:, :width].ravel())
        logp = logp.reshape(m, width, vocab)
        if width < k:  # the first step: the other beams are empty
            logp = xp.concatenate([logp, xp.full((m, k - width, vocab), ninf, dtype)], 1)
        flat = logp.reshape(m, k * vocab)  # log-probabilities of every continuation
        if run.end is not None:
            ends = flat[:, run.end :: vocab].copy()  # (m, k): each beam followed by <END>
            flat[:, run.end :: vocab] = ninf
        top, values = _top(xp, flat, k)  # the k best that go on (none of them ends)
        if run.end is not None:
            ending = ends > ninf
            if t < max_length - 1:  # an ending one finishes if it ranks among the k best
                kth = xp.sort(xp.concatenate([values, ends], axis=1), axis=1)[:, -k]
                ending &= ends >= kth[:, None]
            # (at the last step every ending hypothesis finishes)
            ranked = xp.where(ending, ends / float(t + 1) ** length_penalty, ninf)
            beam = ranked.argmax(axis=1)
            better = ranked[rows, beam] > best_score
            tokens = history[rows, beam].copy()
            tokens[:, t] = run.end
            best_tokens = xp.where(better[:, None], tokens, best_tokens)
            best_score = xp.where(better, ranked[rows, beam], best_score)
            best_logp = xp.where(better, ends[rows, beam], best_logp)
            finished += ending.sum(axis=1)
        live = values
        parent, word = top // vocab, top % vocab
        history = xp.take_along_axis(history, parent[:, :, None], axis=1)
        history[:, :, t] = word
        state_rows = rows[:, None] * width + parent * (width == k)
        width = k
        done = finished >= k
        if run.end is not None and bool(done.any()):  # one host sync a step
            retire(done)  # an image with k finished hypotheses stops searching
            keep = ~done
            image, live, history, finished, word, state_rows = (
                a[keep] for a in (image, live, history, finished, word, state_rows))
            best_score, best_logp, best_tokens = (
                a[keep] for a in (best_score, best_logp, best_tokens))
            if not len(image):
                break
        run.reorder(state_rows.ravel())
        words = word.ravel()
    if len(image):
        retire(xp.ones(len(image), dtype=bool))
    return run.be.to_numpy(out_captions), run.be.to_numpy(out_logp)
