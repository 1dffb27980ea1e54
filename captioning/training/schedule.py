"""When something recurs during training: every N iterations or every N epochs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Every:
    """``count`` ``unit``s ('iterations' or 'epochs') between two occurrences."""

    unit: str
    count: int

    @classmethod
    def parse(cls, value: Any) -> Every:
        """'500' or 500: every 500 iterations; '2e' or '2 epochs': every 2 epochs; None:
        every epoch. ValueError for anything else."""
        if value is None:
            return cls("epochs", 1)
        text = str(value).strip().lower()
        unit = "iterations"
        for suffix in ("epochs", "epoch", "e"):
            if text.endswith(suffix):
                text, unit = text[: -len(suffix)].strip(), "epochs"
                break
        try:
            count = int(text)
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(f"checkpoint_every must be a positive number of iterations "
                             f"('500') or epochs ('2e'), got {value!r}")
        return cls(unit, count)

    def due(self, unit: str, done: int) -> bool:
        """Whether it falls after ``done`` completed ``unit``s."""
        return unit == self.unit and done % self.count == 0
