"""Model checkpoints: one ``.npz`` of host arrays (no pickle), written atomically.

A checkpoint holds every parameter as ``param/NAME``, the model's configuration as JSON
and the vocabulary, so a model trained on one backend loads on any other.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from backend import Backend
from captioning.model import CaptioningRNN

FORMAT = "captioning-checkpoint-1"


def save_model(path: str | os.PathLike, model: CaptioningRNN) -> Path:
    """Write ``model`` to ``path`` through a temporary file in the same folder, renamed
    into place, so a crash mid-write leaves any earlier file intact."""
    path = Path(path)
    be = model.backend
    words = [model.idx_to_word[i] for i in sorted(model.idx_to_word)]
    arrays = {f"param/{k}": be.to_numpy(v) for k, v in model.params.items()}
    arrays["config"] = np.array(json.dumps({"format": FORMAT, **model.config()}))
    arrays["vocab_words"] = np.array(words)
    arrays["vocab_indices"] = np.array(sorted(model.idx_to_word), dtype=np.int64)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_model(path: str | os.PathLike, backend: str | Backend | None = None) -> CaptioningRNN:
    """Rebuild the model saved at ``path`` on ``backend``. Raises ValueError naming the
    file and what is wrong if it is not a complete checkpoint of this format."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, EOFError, ValueError...
        raise ValueError(f"{path}: not a readable checkpoint ({exc})") from exc
    try:
        config = json.loads(str(arrays["config"]))
        words, indices = arrays["vocab_words"], arrays["vocab_indices"]
    except KeyError as exc:
        raise ValueError(f"{path}: checkpoint lacks {exc}") from exc
    if config.pop("format", None) != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format (expected {FORMAT})")
    model = CaptioningRNN(
        {str(w): int(i) for w, i in zip(words, indices)}, input_dim=config["input_dim"],
        wordvec_dim=config["wordvec_dim"], hidden_dim=config["hidden_dim"],
        cell_type=config["cell_type"], dtype=np.dtype(config["dtype"]), backend=backend,
        seed=0,
    )
    for name, value in model.params.items():
        stored = arrays.get(f"param/{name}")
        if stored is None or stored.shape != value.shape:
            raise ValueError(
                f"{path}: parameter {name} is "
                f"{'missing' if stored is None else f'of shape {stored.shape}'}; expected "
                f"{tuple(value.shape)}"
            )
        model.params[name] = model.backend.asarray(stored, dtype=model.dtype)
    return model
