"""Checkpoints load on any backend and refuse what is not one of theirs."""

import numpy as np
import pytest

from captioning.checkpoint import load_model, save_model
from captioning.model import CaptioningRNN
from conftest import random_captions

VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, **{f"w{i}": i for i in range(3, 12)}}


def test_saved_on_any_backend_loads_on_numpy_with_the_same_loss(backend, tmp_path):
    model = CaptioningRNN(VOCAB, input_dim=6, wordvec_dim=5, hidden_dim=7, cell_type="lstm",
                          seed=1, backend=backend)
    rng = np.random.default_rng(0)
    features, captions = rng.standard_normal((3, 6)), random_captions(rng, 3, 9, len(VOCAB))
    loss, _ = model.loss(features, captions)
    path = save_model(tmp_path / "model.npz", model)
    restored = load_model(path, backend="numpy")
    assert restored.config() == model.config()
    assert restored.loss(features, captions)[0] == pytest.approx(float(loss), rel=1e-12)
    assert list(tmp_path.iterdir()) == [path]  # no temporary left behind


def test_refuses_truncated_and_mismatched_files(tmp_path):
    model = CaptioningRNN(VOCAB, input_dim=6, wordvec_dim=5, hidden_dim=7, seed=1)
    path = save_model(tmp_path / "model.npz", model)
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_model(tmp_path / "cut.npz")
    arrays = dict(np.load(path))
    arrays["param/Wh"] = np.zeros((3, 3))
    np.savez(tmp_path / "other.npz", **arrays)
    with pytest.raises(ValueError, match=r"parameter Wh is of shape \(3, 3\); expected \(7, 7\)"):
        load_model(tmp_path / "other.npz")
