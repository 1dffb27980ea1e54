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

    def step(self, words: Any, bias: bool = True) -> Any:
        """Feed ``words`` (rows,) and return the next word's scores (rows, V), in a
        buffer the next call reuses; without b_vocab added if not ``bias``."""
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
        if bias:
            scores += self.p["b_vocab"]
        return scores

    def likeliest(self, words: Any) -> Any:
        """Feed ``words`` (rows,) and return the likeliest next word of each row."""
        return self.be.argmax_rows(self.step(words, bias=False), self.p["b_vocab"])

    def reorder(self, rows: Any) -> None:
        """Make the next step continue the states of ``rows`` (beam search's
        back-pointers), in that order."""
        self.parents = rows if self.parents is None else self.parents[rows]


def _check_length(max_length: int) -> None:
    if int(max_length) != max_length or max_length < 1:
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}")


def _decode_on_device(model: Any, features: Any, max_length: int, next_words) -> Any:
    """Feed back ``next_words(stepper, words)`` each step: the loop greedy and sampling
    share. Returns the captions on the device, with no host synchronisation on the way."""
    run = _Stepper(model, features)
    xp = run.xp
    n = run.h.shape[0]
    words = xp.full(n, run.start, dtype=xp.int64)
    captions = xp.full((n, max_length), run.null, dtype=xp.int64)
    done = xp.zeros(n, dtype=bool)
    for t in range(max_length):
        words = next_words(run, words)
        captions[:, t] = xp.where(done, run.null, words)
        if run.end is not None:
            done |= words == run.end
    return captions


def _decode_one_choice(model: Any, features: Any, max_length: int, next_words,
                       drop_ended: bool = True) -> np.ndarray:
    _check_length(max_length)
    if drop_ended and model.backend.xp is np:  # host arrays: which captions ended is free
        return _decode_dropping_ended(model, features, max_length, next_words)
    return model.backend.to_numpy(_decode_on_device(model, features, max_length,
                                                    next_words))


def _decode_dropping_ended(model: Any, features: Any, max_length: int, next_words
                           ) -> np.ndarray:
    """``_decode_on_device`` for a backend whose arrays live on the host: a caption that
    has ended stops being carried, and the loop stops once every caption has. The same
    captions: each row's next word depends only on its own states (and, for a sampler,
    on the draws it is given)."""
    run = _Stepper(model, features)
    n = run.h.shape[0]
    carried = np.arange(n)  # the caption each carried row writes
    words = np.full(n, run.start, dtype=np.int64)
    captions = np.full((n, max_length), run.null, dtype=np.int64)
    for t in range(max_length):
        words = next_words(run, words)
        captions[carried, t] = words
        if run.end is None:
            continue
        going = np.flatnonzero(words != run.end)
        if len(going) < len(words):
            if len(going) == 0:
                break
            carried, words = carried[going], words[going]
            run.reorder(going)
    return captions


def _likeliest(run: _Stepper, words: Any) -> Any:
    return run.likeliest(words)


def _drawn_by(choose):
    """``next_words`` for a ``choose(scores)`` that draws from the biased scores."""
    return lambda run, words: choose(run.step(words))


class _Recording:
    """One decoder over one batch shape recorded for replay (``Backend.record``: a CUDA
    graph on CuPy), so that the device, not the host issuing ~10 launches a word, paces
    it. ``decode(model, features)`` returns device arrays and must not synchronise with
    the host. It reads its features from a fixed input array and the parameters it was
    recorded with, which it holds so that their memory stays theirs."""

    def __init__(self, model: Any, shape: tuple[int, int], dtype: Any, decode) -> None:
        be = model.backend
        self.params = list(model.params.values())
        self.features = be.xp.empty(shape, dtype=dtype)
        owner = weakref.ref(model)  # a strong one would keep the model in the cache forever
        self.run = be.record(lambda: decode(owner(), self.features))

    def fits(self, model: Any) -> bool:
        return all(a is b for a, b in zip(self.params, model.params.values()))


# model -> {(decoder and its settings, rows): its recording, or None where it failed}
_RECORDINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_RECORDINGS_PER_MODEL = 8  # decoders x batch shapes kept (the oldest goes first)


def _replayed(model: Any, features: Any, settings: tuple, decode) -> Any:
    """``decode(model, features)``'s outputs as host arrays, from a recording made on
    the second call with these ``settings`` and batch shape and replayed after; None
    where the backend does not record or recording failed for them (once: a warning),
    so that the caller decodes op by op."""
    be = model.backend
    if not be.can_record:
        return None
    features = model.check_features(be.asarray(features, dtype=model.dtype))
    recordings = _RECORDINGS.setdefault(model, {})
    key = (*settings, features.shape[0])
    recording = recordings.get(key, False)
    if recording is False or (recording is not None and not recording.fits(model)):
        if key not in recordings and len(recordings) >= _RECORDINGS_PER_MODEL:
            recordings.pop(next(iter(recordings)))
        recording = recordings[key] = _Recording(model, features.shape, features.dtype,
                                                 decode)
    if recording is None:
        return None
    recording.features[...] = features
    try:
        outputs = recording.run()
    except RecordingFailed as exc:
        recordings[key] = None
        warnings.warn(f"{exc}; {settings[0]} decoding goes on op by op", RuntimeWarning,
                      stacklevel=3)
        return None
    if isinstance(outputs, tuple):
        return tuple(be.to_numpy(a) for a in outputs)
    return be.to_numpy(outputs)


def greedy_decode(model: Any, features: Any, max_length: int = 30) -> np.ndarray:
    """The most likely word at each step (the exercise's ``sample``). On a backend that
    records (CuPy), each batch shape is recorded on its second call and replayed after,
    with the same result as op by op. On a CPU backend, captions that have ended stop
    being computed, and decoding stops once all have."""
    _check_length(max_length)

    def decode(model, features):
        return _decode_on_device(model, features, max_length, _likeliest)

    captions = _replayed(model, features, ("greedy", max_length), decode)
    if captions is None:
        return _decode_one_choice(model, features, max_length, _likeliest)
    return captions


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

    # Every caption draws its noise every step, ended or not, so that a seed gives the
    # same captions on every backend.
    return _decode_one_choice(model, features, max_length, _drawn_by(choose),
                              drop_ended=False)


def policy_sample(model: Any, features: Any, max_length: int, rng: np.random.Generator
                  ) -> np.ndarray:
    """Captions drawn from the model's own distribution (temperature 1), as self-critical
    training samples them: each word by inverting the cumulative softmax at one uniform
    draw per caption still being written (on a CPU backend ended captions are no longer
    carried) from ``rng`` (the caller keeps its state), so a step costs a cumulative
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

    return _decode_one_choice(model, features, max_length, _drawn_by(choose))


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


def _check_beam(beam_size: int, max_length: int, length_penalty: float) -> None:
    _check_length(max_length)
    if int(beam_size) != beam_size or beam_size < 1:
        raise ValueError(f"beam_size must be a positive integer, got {beam_size!r}")
    if length_penalty < 0:
        raise ValueError(f"length_penalty must be non-negative, got {length_penalty!r}")


class _BeamSearch:
    """The state of a batched beam search (see ``beam_decode``), advanced a word at a
    time by ``step``, which never synchronises with the host. Its arrays have a row per
    image still carried (``image`` maps them back); an image that holds ``k`` finished
    hypotheses is *done*: its answer no longer changes, whether ``drop_done`` stops
    carrying it (op by op, which saves its work) or it is carried to the end (a
    recording, whose shapes cannot change)."""

    def __init__(self, model: Any, features: Any, k: int, max_length: int,
                 length_penalty: float) -> None:
        self.run = run = _Stepper(model, features)
        self.xp, self.k, self.max_length = run.xp, k, max_length
        self.length_penalty, self.vocab = length_penalty, model.vocab_size
        xp, n, dtype = self.xp, run.h.shape[0], run.h.dtype
        ninf = -np.inf
        self.out_captions = xp.full((n, max_length), run.null, dtype=xp.int64)
        self.out_logp = xp.full(n, ninf, dtype=dtype)
        self.image = xp.arange(n)
        self.live = xp.full((n, k), ninf, dtype=dtype)
        self.live[:, 0] = 0  # one live hypothesis to start with: identical beams repeat
        self.width = 1  # state rows per image: one until the first step has chosen k beams
        self.history = xp.full((n, k, max_length), run.null, dtype=xp.int64)
        self.best_score = xp.full(n, ninf, dtype=dtype)  # ranking score of best finished
        self.best_logp = xp.full(n, ninf, dtype=dtype)
        self.best_tokens = xp.full((n, max_length), run.null, dtype=xp.int64)
        self.finished = xp.zeros(n, dtype=xp.int64)
        self.done = xp.zeros(n, dtype=bool)
        self.word = xp.full((n, 1), run.start, dtype=xp.int64)  # the words fed next
        self.state_rows = None  # the states the next step continues (None: as they are)

    def step(self, t: int) -> None:
        """Extend every carried hypothesis by every word and keep the k best that go on;
        record the best one that ends, for the images not yet done."""
        xp, run, k, vocab, ninf = self.xp, self.run, self.k, self.vocab, -np.inf
        if self.state_rows is not None:
            run.reorder(self.state_rows.ravel())
        m, width = len(self.image), self.width
        rows = xp.arange(m)
        logp = _log_probs_inplace(xp, run.step(self.word.ravel()),
                                  self.live[:, :width].ravel())
        logp = logp.reshape(m, width, vocab)
        if width < k:  # the first step: the other beams are empty
            logp = xp.concatenate([logp, xp.full((m, k - width, vocab), ninf, logp.dtype)], 1)
        flat = logp.reshape(m, k * vocab)  # log-probabilities of every continuation
        if run.end is not None:
            ends = flat[:, run.end :: vocab].copy()  # (m, k): each beam followed by <END>
            flat[:, run.end :: vocab] = ninf
        top, values = _top(xp, flat, k)  # the k best that go on (none of them ends)
        if run.end is not None:
            ending = ends > ninf
            if t < self.max_length - 1:  # an ending one finishes if it ranks among the k
                # best candidates: fewer than k of them (the k going on and the k ending)
                # are above it. A count, not a sort, which a CUDA graph could not hold.
                candidates = xp.concatenate([values, ends], axis=1)
                above = (candidates[:, None, :] > ends[:, :, None]).sum(axis=2)
                ending &= above < k
            # (at the last step every ending hypothesis finishes)
            ranked = xp.where(ending, ends / float(t + 1) ** self.length_penalty, ninf)
            beam = ranked.argmax(axis=1)
            better = (ranked[rows, beam] > self.best_score) & ~self.done
            tokens = self.history[rows, beam].copy()
            tokens[:, t] = run.end
            self.best_tokens = xp.where(better[:, None], tokens, self.best_tokens)
            self.best_score = xp.where(better, ranked[rows, beam], self.best_score)
            self.best_logp = xp.where(better, ends[rows, beam], self.best_logp)
            self.finished += ending.sum(axis=1)
            self.done = self.finished >= k
        self.live = values
        parent, self.word = top // vocab, top % vocab
        self.history = xp.take_along_axis(self.history, parent[:, :, None], axis=1)
        self.history[:, :, t] = self.word
        self.state_rows = rows[:, None] * width + parent * (width == k)
        self.width = k

    def drop_done(self) -> bool:
        """Write the answers of the done images and stop carrying them (one host
        synchronisation); whether any image is still searching."""
        done = self.xp.nonzero(self.done)[0]  # integer indices: CuPy mixes them with others
        if len(done):
            self._answer(done)
            keep = ~self.done
            for name in ("image", "live", "history", "finished", "done", "word",
                         "state_rows", "best_score", "best_logp", "best_tokens"):
                setattr(self, name, getattr(self, name)[keep])
        return len(self.image) > 0

    def answers(self) -> tuple[Any, Any]:
        """(captions (N, max_length), log-probabilities (N,)) on the device, once every
        step has run or every image is done."""
        self._answer(slice(None))
        return self.out_captions, self.out_logp

    def _answer(self, which) -> None:
        """Write the answers of the carried rows ``which`` (indices or a slice)."""
        xp, image = self.xp, self.image[which]
        none = self.best_score[which] == -np.inf  # nothing finished: the best live one
        self.out_captions[image] = xp.where(none[:, None], self.history[which, 0],
                                            self.best_tokens[which])
        self.out_logp[image] = xp.where(none, self.live[which, 0], self.best_logp[which])


def _beam_on_device(model: Any, features: Any, k: int, max_length: int,
                    length_penalty: float) -> tuple[Any, Any]:
    """Every step for every image, done or not, with no host synchronisation: the shape
    a recording replays."""
    search = _BeamSearch(model, features, k, max_length, length_penalty)
    for t in range(max_length):
        search.step(t)
    return search.answers()


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

    Op by op, the images that are done stop being carried (a host synchronisation a
    step); on a backend that records (CuPy), each batch shape and setting is recorded on
    its second call with every image carried to the last step, and replayed after, with
    the same answers.
    """
    _check_beam(beam_size, max_length, length_penalty)

    def decode(model, features):
        return _beam_on_device(model, features, beam_size, max_length, length_penalty)

    replayed = _replayed(model, features, ("beam", beam_size, max_length, length_penalty),
                         decode)
    if replayed is not None:
        return replayed
    search = _BeamSearch(model, features, beam_size, max_length, length_penalty)
    for t in range(max_length):
        search.step(t)
        if search.run.end is not None and not search.drop_done():
            break
    captions, logp = search.answers()
    return search.run.be.to_numpy(captions), search.run.be.to_numpy(logp)
