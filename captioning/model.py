"""CaptioningRNN: image features set the first hidden state of an RNN or LSTM that
writes the caption one word at a time.

Shape letters: N images, T time steps, D feature size (input_dim), W word-vector size,
H hidden size, V vocabulary size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backend import Backend, choose_precision, get_backend
from captioning.data.layout import check_word_indices
from captioning.decoding import greedy_decode
from captioning.packing import Packing, longest_first, scored_lengths

CELL_WIDTH = {"rnn": 1, "lstm": 4}  # how many H-wide blocks the recurrence's Wx has


class CaptioningRNN:
    """The exercise's captioning model, computed on a Backend.

    ``params`` holds W_proj (D, H), b_proj (H,), W_embed (V, W), Wx (W, kH), Wh (H, kH),
    b (kH,), W_vocab (H, V), b_vocab (V,), with k = 1 for 'rnn' and 4 for 'lstm'.
    Parameters are initialised on the host (``seed`` picks a private generator; without
    it NumPy's global one is used, as in the exercise) and then moved to the backend, so
    one seed gives one model on every backend.

    ``precision`` (fp32, tf32 or bf16; default ``$CAPTION_PRECISION``, else fp32) is how
    the matrix products of a float32 model multiply: tf32 and bf16 use the GPU's tensor
    cores (cupy backend only) with float32 accumulation, while the parameters, the cell
    state, the softmax, the loss and the update stay float32. It is not part of the
    model's ``config``: a checkpoint loads anywhere.
    """

    def __init__(
        self,
        word_to_idx: dict[str, int],
        input_dim: int = 512,
        wordvec_dim: int = 128,
        hidden_dim: int = 128,
        cell_type: str = "rnn",
        dtype: Any = np.float64,
        *,
        backend: str | Backend | None = None,
        seed: int | None = None,
        precision: str | None = None,
    ) -> None:
        if cell_type not in CELL_WIDTH:
            raise ValueError(f"invalid cell_type {cell_type!r}; expected 'rnn' or 'lstm'")
        if "<NULL>" not in word_to_idx:
            raise ValueError("the vocabulary word_to_idx has no '<NULL>' token, which is required")
        for name, size in (("input_dim", input_dim), ("wordvec_dim", wordvec_dim),
                           ("hidden_dim", hidden_dim)):
            if int(size) != size or size < 1:
                raise ValueError(f"{name} must be a positive integer, got {size!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.cell_type = cell_type
        self.word_to_idx = dict(word_to_idx)
        self.idx_to_word = {i: w for w, i in word_to_idx.items()}
        self.input_dim, self.wordvec_dim, self.hidden_dim = input_dim, wordvec_dim, hidden_dim
        self.vocab_size = len(word_to_idx)  # as in the exercise, whatever the indices
        self._null = word_to_idx["<NULL>"]
        self.precision = model_precision(precision, self.dtype)
        self.backend = get_backend(backend).with_precision(self.precision)
        self.params = {
            name: self.backend.asarray(value)
            for name, value in init_params(
                input_dim, wordvec_dim, hidden_dim, self.vocab_size, CELL_WIDTH[cell_type],
                self.dtype, seed,
            ).items()
        }

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this model's shapes (for checkpoints)."""
        return {
            "cell_type": self.cell_type, "input_dim": self.input_dim,
            "wordvec_dim": self.wordvec_dim, "hidden_dim": self.hidden_dim,
            "dtype": self.dtype.name,
        }

    # ------------------------------------------------------------------ training loss
    def loss(self, features, captions, *, grads: bool = True, caption_weights=None,
             packing: Packing | None = None):
        """features (N, D), captions int (N, T+1) -> (loss, grads keyed like params).

        With ``grads=False`` only the loss is returned and no backward pass is run
        (validation). ``caption_weights`` (N,) multiplies each caption's part of the loss
        and the gradients (any sign; self-critical training's advantages).

        The input words are captions[:, :-1], the targets captions[:, 1:]; targets equal
        to <NULL> are masked out. The batch is computed packed (captioning/packing.py):
        sorted longest first, each time step only the captions still scored, so padding
        costs nothing. ``packing`` is that layout for a batch that is already sorted
        (the training step's, made once per layout); without it the model sorts the
        batch and packs exactly its scored positions, reading the captions' lengths on
        the host. Results come back where the features came from: host features give a
        host loss and host gradients; device features leave both on the device.
        """
        be, xp = self.backend, self.backend.xp
        host = isinstance(features, np.ndarray) and not be.owns(features)
        p = {k: be.asarray(v) for k, v in self.params.items()}
        on_host = captions if isinstance(captions, np.ndarray) else None
        features, captions = self._check_inputs(features, captions)
        N, T = captions.shape[0], captions.shape[1] - 1
        if caption_weights is not None:
            caption_weights = be.asarray(caption_weights, dtype=self.dtype)
            if caption_weights.shape != (N,):
                raise ValueError(f"caption_weights have shape {caption_weights.shape}; "
                                 f"expected ({N},), one per caption")
        if packing is None:
            order, step_rows = longest_first(
                scored_lengths(be.to_numpy(captions) if on_host is None else on_host,
                               self._null), T)
            if np.any(order != np.arange(N)):
                order = be.asarray(order)
                features, captions = features[order], captions[order]
                if caption_weights is not None:
                    caption_weights = caption_weights[order]
            packing = Packing.of(step_rows, be)
        elif len(packing.step_rows) != T or any(n > N for n in packing.step_rows):
            raise ValueError(f"a packing of step rows {packing.step_rows} does not fit "
                             f"{N} captions of {T} steps: expected {T} counts of at most {N}")
        flat = xp.ascontiguousarray(captions).reshape(-1)
        words, targets = flat[packing.positions], flat[packing.target_positions]
        weight = (targets != self._null).astype(self.dtype)
        if caption_weights is not None:
            weight *= caption_weights[packing.caption]

        h0, proj_cache = be.affine_forward(features, p["W_proj"], p["b_proj"])
        a, lookup, input_backward = self._input_projections(p, words)
        forward, backward = self._recurrence()
        h, rec_cache = forward(a, h0, p["Wh"], packing.step_rows, lookup,
                               packing.layout)  # (P, H)
        loss, dh, vocab_weight_grads = be.vocab_loss(h, p["W_vocab"], p["b_vocab"], targets,
                                                     weight, N)
        if not grads:
            vocab_weight_grads()  # (joined, so that no work is left running beside)
            return be.to_numpy(loss)[()] if host else loss
        grads = {}
        da, dh0, grads["Wh"] = backward(dh, rec_cache)  # (a GPU runs the two side by side)
        grads["W_vocab"], grads["b_vocab"] = vocab_weight_grads()
        grads["W_embed"], grads["Wx"], grads["b"] = input_backward(da)
        grads["W_proj"] = be.matmul(features.T, dh0)  # the features need no gradient
        grads["b_proj"] = dh0.sum(axis=0)
        if host:
            return be.to_numpy(loss)[()], {k: be.to_numpy(g) for k, g in grads.items()}
        return loss, grads

    # ------------------------------------------------------------------ decoding
    def sample(self, features, max_length: int = 30) -> np.ndarray:
        """Greedy decoding. features (N, D) -> int array (N, max_length) on the host.

        The first input word is <START>; column 0 holds the first generated word; after
        <END> a caption is padded with <NULL>. Beam search and sampling with a
        temperature are in ``captioning.decoding``.
        """
        return greedy_decode(self, features, max_length)

    # ------------------------------------------------------------------ helpers
    def _input_projections(self, p, words):
        """words int (P,) -> (a, lookup, backward): a (P, kH), each packed position's
        W_embed[w] Wx + b, fresh, and lookup None; or a the table (V, kH) of every
        word's projection and lookup ``words``, the rows the recurrence reads from it;
        backward a function da (P, kH) -> (dW_embed, dWx, db).

        The projection depends only on the word, so when the vocabulary has fewer words
        than the batch has positions it is made once per word (V x W x kH multiply-adds,
        not P x W x kH) and looked up, and its gradient is scatter-added into that
        table; else each position's embedding is multiplied. The same maths either way.
        """
        be = self.backend
        if self.vocab_size < words.size:
            table, table_cache = be.affine_forward(p["W_embed"], p["Wx"], p["b"])  # (V, kH)

            def backward(da):
                dtable = be.embedding_backward(words, da, self.vocab_size)
                return be.affine_backward(dtable, table_cache)
            return table, words, backward
        x, embed_cache = be.word_embedding_forward(words, p["W_embed"])  # (P, W)
        a, affine_cache = be.affine_forward(x, p["Wx"], p["b"])

        def backward(da):
            dx, dWx, db = be.affine_backward(da, affine_cache)
            return be.word_embedding_backward(dx, embed_cache), dWx, db
        return a, None, backward

    def _recurrence(self):
        """The cell's recurrence over packed input projections: (forward, backward)."""
        be = self.backend
        if self.cell_type == "rnn":
            return be.rnn_forward_packed, be.rnn_backward_packed
        return be.lstm_forward_packed, be.lstm_backward_packed

    def check_features(self, features):
        """``features`` if they are (N, input_dim), else ValueError naming the width
        this model expects."""
        if features.ndim != 2 or features.shape[1] != self.input_dim:
            raise ValueError(
                f"features have shape {tuple(features.shape)}; this model expects "
                f"(N, {self.input_dim}) (input_dim={self.input_dim}: use the PCA or the full "
                "features the model was built for)"
            )
        return features

    def _check_inputs(self, features, captions):
        """(features, captions) on the backend, once both are checked: host captions
        for their word indices (device captions were checked once, on loading)."""
        features = self.check_features(self.backend.asarray(features))
        if not hasattr(captions, "ndim"):
            captions = np.asarray(captions)
        if captions.ndim != 2 or captions.shape[0] != features.shape[0] or captions.shape[1] < 2:
            raise ValueError(
                f"captions have shape {tuple(captions.shape)}; expected ({features.shape[0]}, "
                "T+1) with T >= 1, one row per feature row"
            )
        if captions.dtype.kind not in "iu":
            raise ValueError(f"captions must hold integer word indices, got dtype {captions.dtype}")
        if isinstance(captions, np.ndarray):
            check_word_indices(captions, self.vocab_size, "captions")
        return features, self.backend.asarray(captions)


def model_precision(precision: str | None, dtype: Any) -> str:
    """The precision a model of ``dtype`` multiplies in: ``precision``, else
    ``$CAPTION_PRECISION``, else fp32. ValueError for an unknown one, and for tf32 or
    bf16 with a dtype other than float32."""
    chosen = choose_precision(precision)
    if chosen != "fp32" and np.dtype(dtype) != np.float32:
        raise ValueError(f"precision {chosen!r} is for float32 models; this one is "
                         f"{np.dtype(dtype)} (use precision fp32)")
    return chosen


def init_params(input_dim: int, wordvec_dim: int, hidden_dim: int, vocab_size: int,
                k: int, dtype: Any, seed: int | None) -> dict[str, np.ndarray]:
    """The exercise's initialisation, on the host, in the seed's drawing order."""
    rng = np.random.default_rng(seed) if seed is not None else None

    def normal(*shape: int, scale: float) -> np.ndarray:
        draw = np.random.randn(*shape) if rng is None else rng.standard_normal(shape)
        return (draw / scale).astype(dtype)

    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, dtype=dtype)

    return {
        "W_embed": normal(vocab_size, wordvec_dim, scale=100),
        "W_proj": normal(input_dim, hidden_dim, scale=np.sqrt(input_dim)),
        "b_proj": zeros(hidden_dim),
        "Wx": normal(wordvec_dim, k * hidden_dim, scale=np.sqrt(wordvec_dim)),
        "Wh": normal(hidden_dim, k * hidden_dim, scale=np.sqrt(hidden_dim)),
        "b": zeros(k * hidden_dim),
        "W_vocab": normal(hidden_dim, vocab_size, scale=np.sqrt(hidden_dim)),
        "b_vocab": zeros(vocab_size),
    }
