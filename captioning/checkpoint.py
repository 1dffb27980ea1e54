"""Checkpoints: one ``.npz`` of host arrays (no pickle), written atomically.

A checkpoint holds every parameter as ``param/NAME``, the model's configuration as JSON
and the vocabulary, so a model trained on one backend loads on any other. A training
checkpoint adds the trainer's state: JSON ``state`` (epoch, iteration, RNG, history,
settings) and arrays such as the update rule's buffers under their own names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from backend import Backend, get_backend
from captioning.atomic import atomic_path
from captioning.model import CaptioningRNN, model_precision

FORMAT = "captioning-checkpoint-1"
_MODEL_KEYS = ("config", "vocab_words", "vocab_indices", "state")


def save_checkpoint(path: str | os.PathLike, model: CaptioningRNN,
                    state: dict[str, Any] | None = None,
                    arrays: dict[str, np.ndarray] | None = None) -> Path:
    """Write ``model`` (and a trainer's JSON ``state`` and extra host ``arrays``) to
    ``path`` through a temporary file renamed into place, so a crash or a full disk
    mid-write leaves any earlier file intact."""
    path = Path(path)
    be = model.backend
    words = [model.idx_to_word[i] for i in sorted(model.idx_to_word)]
    out = {f"param/{k}": be.to_numpy(v) for k, v in model.params.items()}
    out["config"] = np.array(json.dumps({"format": FORMAT, **model.config()}))
    out["vocab_words"] = np.array(words)
    out["vocab_indices"] = np.array(sorted(model.idx_to_word), dtype=np.int64)
    if state is not None:
        out["state"] = np.array(json.dumps(state))
    for key, value in (arrays or {}).items():
        if key in out or key.startswith("param/"):
            raise ValueError(f"extra checkpoint array {key!r} would overwrite a model entry")
        out[key] = value
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **out)
    return path


def save_model(path: str | os.PathLike, model: CaptioningRNN) -> Path:
    """The model alone (what evaluation and sampling need)."""
    return save_checkpoint(path, model)


def load_checkpoint(path: str | os.PathLike, backend: str | Backend | None = None,
                    precision: str | None = None
                    ) -> tuple[CaptioningRNN, dict[str, Any] | None, dict[str, np.ndarray]]:
    """(model on ``backend`` multiplying in ``precision``, trainer state or None, the
    other arrays). Raises ValueError naming the file and what is wrong if it is not a
    complete checkpoint. Checkpoints hold float32 or float64 parameters whatever
    precision trained them, so any loads on any backend."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # zipfile.BadZipFile, EOFError, a CRC error, ValueError...
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc}); "
                         "it may be truncated or not a checkpoint at all") from exc
    try:
        config = json.loads(str(arrays["config"]))
        words, indices = arrays["vocab_words"], arrays["vocab_indices"]
        state = json.loads(str(arrays["state"])) if "state" in arrays else None
    except KeyError as exc:
        raise ValueError(f"{path}: checkpoint lacks {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: its configuration or state is not valid JSON ({exc})") \
            from exc
    if state is not None and not isinstance(state, dict):
        raise ValueError(f"{path}: its training state is not a JSON object")
    if not isinstance(config, dict) or config.pop("format", None) != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format (expected {FORMAT})")
    if (words.ndim != 1 or indices.shape != words.shape
            or sorted(indices.tolist()) != list(range(len(words)))
            or len(set(words.tolist())) != len(words)):
        raise ValueError(f"{path}: the vocabulary is not {len(words)} distinct words with "
                         "the indices 0..V-1 each once")
    try:
        precision = model_precision(precision, config.get("dtype"))
        backend = get_backend(backend).with_precision(precision)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    try:
        model = CaptioningRNN(
            {str(w): int(i) for w, i in zip(words, indices)}, input_dim=config["input_dim"],
            wordvec_dim=config["wordvec_dim"], hidden_dim=config["hidden_dim"],
            cell_type=config["cell_type"], dtype=np.dtype(config["dtype"]), backend=backend,
            seed=0, precision=precision,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: its model configuration {config} is not one training "
                         f"writes ({type(exc).__name__}: {exc})") from exc
    for name, value in model.params.items():
        stored = arrays.get(f"param/{name}")
        if stored is None or stored.shape != value.shape:
            raise ValueError(
                f"{path}: parameter {name} is "
                f"{'missing' if stored is None else f'of shape {stored.shape}'}; expected "
                f"{tuple(value.shape)} (from its configuration and vocabulary)"
            )
        if stored.dtype.kind != "f" or not np.isfinite(stored).all():
            what = "NaN or infinite values" if stored.dtype.kind == "f" else stored.dtype
            raise ValueError(f"{path}: parameter {name} holds {what}; expected finite "
                             "floats (training never saves other values)")
        model.params[name] = model.backend.asarray(stored, dtype=model.dtype)
    extra = {k: v for k, v in arrays.items()
             if not k.startswith("param/") and k not in _MODEL_KEYS}
    return model, state, extra


def load_model(path: str | os.PathLike, backend: str | Backend | None = None,
               precision: str | None = None) -> CaptioningRNN:
    """Rebuild the model saved at ``path`` on ``backend``, multiplying in ``precision``."""
    return load_checkpoint(path, backend, precision)[0]
