"""Packed batches: captions sorted longest first and laid out time-major without their
padding, as cuDNN packs sequences, so that the recurrences, the vocabulary layer and
the embedding gradients skip every position after a caption's last scored word.

A caption's *scored length* is one past its last position whose target word is not
<NULL> (0 if it has none). Past it, the loss and every gradient are exactly zero, so
those positions need not be computed at all. With a batch's captions sorted by scored
length, longest first, time step t computes only its first step_rows[t] captions
(``backend.base.packed_steps``). Computing more rows than are scored (a recording's
fixed capacity) changes nothing either: those rows' targets are <NULL>, weighted 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend import Backend, PackedRows

ROW_QUANTUM = 16  # a recording's step rows are rounded up to a multiple of this
CAPACITY_SIGMAS = 4.0  # a recording's headroom above a random batch's expected rows


def scored_lengths(captions: np.ndarray, null: int) -> np.ndarray:
    """captions int (N, T+1) on the host -> (N,) int64, each caption's scored length:
    one past the last position t whose target captions[:, t + 1] is not ``null``."""
    scored = np.asarray(captions)[:, 1:] != null
    T = scored.shape[1]
    last = T - np.argmax(scored[:, ::-1], axis=1)
    return np.where(scored.any(axis=1), last, 0).astype(np.int64)


def longest_first(lengths: np.ndarray, T: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Scored lengths (N,) in 0..T -> (order, step_rows): the stable order that sorts
    them longest first, and how many captions are still scored at each of the T steps."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    return order, step_rows_of(lengths, T)


def step_rows_of(lengths: np.ndarray, T: int) -> tuple[int, ...]:
    """(N,) scored lengths in 0..T -> (T,) the number of them longer than t, each t."""
    at_most = np.cumsum(np.bincount(lengths, minlength=T + 1)[:T])
    return tuple(int(len(lengths) - k) for k in at_most)


def capacity(lengths: np.ndarray, batch: int, T: int,
             at_least: tuple[int, ...] = ()) -> tuple[int, ...]:
    """Step rows for a recorded step that serves batches of ``batch`` captions drawn
    with replacement from captions of scored ``lengths`` (the whole training split):
    per step, the expected number of captions still scored plus CAPACITY_SIGMAS
    standard deviations (a binomial draw's), rounded up to ROW_QUANTUM, at most
    ``batch``, and at least ``at_least`` (a batch that went past an earlier capacity).
    A step no training caption reaches gets no rows."""
    rows = []
    for t, longer in enumerate(step_rows_of(lengths, T)):
        p = longer / max(len(lengths), 1)
        expected = batch * p + CAPACITY_SIGMAS * math.sqrt(batch * p * (1 - p))
        need = max(math.ceil(expected), at_least[t] if t < len(at_least) else 0)
        rows.append(0 if need == 0 else min(batch, -(-need // ROW_QUANTUM) * ROW_QUANTUM))
    return tuple(rows)


def covers(capacity_rows: tuple[int, ...], step_rows: tuple[int, ...]) -> bool:
    """Whether a step of ``capacity_rows`` computes every row that ``step_rows`` scores."""
    return len(capacity_rows) == len(step_rows) and all(
        c >= s for c, s in zip(capacity_rows, step_rows))


@dataclass(frozen=True)
class Packing:
    """Where each packed row of a batch of N captions (C-contiguous (N, T+1), sorted
    longest first) comes from: ``step_rows`` (T,) host ints, the captions computed at
    each step; ``positions`` (P,) device ints, packed row p's flat index n*(T+1) + t
    into the captions (its input word), and ``target_positions`` (P,) the same plus one
    (its target word); ``caption`` (P,) device ints, its caption n; ``layout`` the
    backend's PackedRows (each step's first row; the row of each row's state before
    it: at t = 0 row n of the initial states, written -1 - n, else its caption's packed
    row at step t - 1). Made once per step_rows on the host and moved to the device, so
    a recorded step reads them as fixed arrays."""

    step_rows: tuple[int, ...]
    positions: Any
    target_positions: Any
    caption: Any
    layout: PackedRows

    @classmethod
    def of(cls, step_rows: tuple[int, ...], backend: Backend) -> Packing:
        T = len(step_rows)
        caption = np.concatenate([np.arange(n, dtype=np.int64) for n in step_rows]
                                 or [np.zeros(0, np.int64)])
        step = np.repeat(np.arange(T, dtype=np.int64), step_rows)
        starts = np.concatenate([[0], np.cumsum(step_rows, dtype=np.int64)])
        previous = np.where(step == 0, -1 - caption, starts[np.maximum(step - 1, 0)] + caption)
        positions = caption * (T + 1) + step
        return cls(tuple(int(n) for n in step_rows), backend.asarray(positions),
                   backend.asarray(positions + 1), backend.asarray(caption),
                   PackedRows(backend.asarray(starts), backend.asarray(previous)))
