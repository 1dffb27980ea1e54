"""The NumPy backend: the base class's vectorised reference on the host."""

from __future__ import annotations

import numpy as np

from backend.base import Backend


class NumpyBackend(Backend):
    name = "numpy"
    xp = np

    def embedding_backward(self, idx, dout, vocab_size: int):
        """Scatter-add through the flattened 1-D ``np.add.at``, about 5x faster than the
        2-D form (which NumPy runs row by row), with the same summation order."""
        D = dout.shape[-1]
        dW = np.zeros((vocab_size, D), dtype=dout.dtype)
        flat_idx = (idx.reshape(-1, 1) * D + np.arange(D)).reshape(-1)
        np.add.at(dW.reshape(-1), flat_idx, dout.reshape(-1))
        return dW
