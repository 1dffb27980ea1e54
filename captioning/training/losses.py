"""The per-iteration losses of a run: device scalars stay pending until someone needs
them, then cross to the host in one transfer (a device sync per step would pace a GPU)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from backend import Backend


class LossLog:
    """``history`` holds one host float per iteration, all that ``flush`` has copied."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.history: list[float] = []
        self._pending: list[Any] = []  # 0-d device arrays not yet copied

    @property
    def on_host(self) -> bool:
        """Whether the losses are host numbers already, so flushing every step is free."""
        return self.backend.xp is np

    def add(self, loss: Any) -> None:
        """Keep one iteration's loss (a 0-d array of the backend)."""
        self._pending.append(loss)

    def flush(self) -> tuple[int, float] | None:
        """Copy the pending losses to ``history``; return (iteration counted from 1,
        value) of the first of them that is not finite, else None."""
        if not self._pending:
            return None
        be = self.backend
        first = len(self.history)
        self.history.extend(float(v) for v in be.to_numpy(be.xp.stack(self._pending)))
        self._pending.clear()
        for k, value in enumerate(self.history[first:], start=first + 1):
            if not math.isfinite(value):
                return k, value
        return None
