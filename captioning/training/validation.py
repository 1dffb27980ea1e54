"""The evaluation done during training: the validation loss on a fixed subset of the
validation captions, and early stopping on it (or on another figure, such as a
self-critical run's greedy CIDEr-D)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from captioning import checks
from captioning.model import CaptioningRNN

BATCH = 512  # captions per forward pass


class ValidationSet:
    """At most ``max_captions`` validation captions, the same subset every epoch and in
    every run of the same data (drawn with a fixed seed), kept on the host."""

    def __init__(self, data: dict[str, Any], max_captions: int) -> None:
        for key in ("val_captions", "val_image_idxs", "val_features"):
            if key not in data:
                raise ValueError(f"validation needs data[{key!r}], which is missing")
        count = len(data["val_captions"])
        keep = np.sort(np.random.default_rng(0).permutation(count)[:max_captions])
        self.features = data["val_features"][data["val_image_idxs"][keep]]
        self.captions = np.asarray(data["val_captions"])[keep]

    def __len__(self) -> int:
        return len(self.captions)

    def loss(self, model: CaptioningRNN, share: slice | None = None,
             sum_over_ranks: Callable[[np.ndarray], np.ndarray] | None = None) -> float:
        """Mean loss per caption (the model's loss is a sum over captions / batch size).
        Data-parallel: this rank scores the captions of ``share`` and ``sum_over_ranks``
        adds up every rank's (total, count)."""
        first, last, _ = (share or slice(None)).indices(len(self.captions))
        total = 0.0
        for start in range(first, last, BATCH):
            stop = min(start + BATCH, last)
            loss = model.loss(self.features[start:stop], self.captions[start:stop],
                              grads=False)
            total += float(loss) * (stop - start)
        sums = np.array([total, last - first], dtype=np.float64)
        if sum_over_ranks is not None:
            sums = sum_over_ranks(sums)
        return float(sums[0] / max(sums[1], 1))


class EarlyStopping:
    """Tracks the best validation figure (the lowest loss, or with ``higher_is_better``
    the highest score); ``exhausted`` once ``patience`` epochs in a row brought no better
    one (never, when patience is None)."""

    def __init__(self, patience: int | None, higher_is_better: bool = False) -> None:
        self.patience = None if patience is None else checks.integer("patience", patience)
        self.higher_is_better = higher_is_better
        self.best = -math.inf if higher_is_better else math.inf
        self.epochs_without_improvement = 0

    def update(self, value: float) -> bool:
        """Record one epoch's validation figure; True if it is the best so far."""
        if value > self.best if self.higher_is_better else value < self.best:
            self.best, self.epochs_without_improvement = value, 0
            return True
        self.epochs_without_improvement += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.patience is not None and self.epochs_without_improvement >= self.patience
