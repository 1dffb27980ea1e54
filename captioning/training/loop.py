"""The epoch loop: where a run is, each epoch's minibatches, the progress bar and the
loss lines, and stopping between two steps (Ctrl-C, or a request). What a step does,
and what happens after steps and epochs, belongs to the ``Hooks`` it runs (the trainer).
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

INTERRUPTED = "interrupted (Ctrl-C)"


class Hooks(Protocol):
    def step(self, batch_idx: Any) -> None:
        """One update from the captions ``batch_idx`` (a host integer array)."""

    def losses(self) -> list[float]:
        """Every loss so far on the host; raises TrainingStopped at a non-finite one."""

    def log(self, record: dict[str, Any]) -> None:
        """Keep one loss line's record (iteration, epoch, loss, captions_per_s); may add
        fields to it (a self-critical run's ``mean_reward`` is printed too)."""

    def after_step(self) -> None:
        """After each step (e.g. a checkpoint every N iterations)."""

    def after_epoch(self) -> str | None:
        """After each epoch; a reason to stop, or None."""

    def interrupted(self) -> None:
        """The run stops between two steps at a request (e.g. save a checkpoint)."""


class TrainingLoop:
    """Epochs of ``max(num_train // batch_size, 1)`` steps, each on ``batch_size``
    captions drawn with replacement (the trainer checks the counts are positive). Each
    epoch's draws come in one go from a generator whose state at the epoch's start is
    part of the position, so a run resumed mid-epoch draws exactly what the
    uninterrupted run would have."""

    def __init__(self, num_train: int, batch_size: int, num_epochs: int,
                 seed: int | None = None, print_every: int = 10, verbose: bool = True,
                 progress: bool = False) -> None:
        self.num_train, self.batch_size, self.num_epochs = num_train, batch_size, num_epochs
        self.print_every, self.verbose, self.progress = print_every, verbose, progress
        # Without a seed, NumPy's global generator picks one, so np.random.seed fixes a run.
        self._rng = np.random.default_rng(
            seed if seed is not None else np.random.randint(2**31 - 1))
        self.epoch = 0  # completed epochs
        self.iteration = 0  # completed iterations, all epochs
        self.epoch_step = 0  # completed iterations of the current epoch
        self.epoch_rng_state = self._rng.bit_generator.state  # draws this epoch's batches
        self.stop_reason: str | None = None
        self._stop_request: str | None = None  # acted on before the next step
        self._stop_wanted: str | None = None  # asked for here (Ctrl-C, request_stop)
        # Data-parallel runs: (this rank's wish) -> the ranks' agreed stop or None, called
        # after every step, so that every rank stops after the same one.
        self.agree_to_stop: Callable[[str | None], str | None] | None = None

    @property
    def iterations_per_epoch(self) -> int:
        return max(self.num_train // self.batch_size, 1)

    def say(self, text: str) -> None:
        """Print a line without breaking a live progress bar."""
        (tqdm.write if self.progress else print)(text)

    def request_stop(self, reason: str = INTERRUPTED) -> None:
        """Stop before the next step (after calling ``hooks.interrupted``); with
        ``agree_to_stop``, before the step after the one in which every rank heard."""
        self._stop_wanted = reason
        if self.agree_to_stop is None:
            self._stop_request = reason

    def run(self, hooks: Hooks) -> None:
        """The remaining epochs, or until a hook or a request stops them."""
        started, first = time.perf_counter(), self.iteration
        try:
            while self.epoch < self.num_epochs and self.stop_reason is None:
                if not self._run_epoch(hooks, started, first):
                    return
                hooks.losses()
                self.epoch += 1
                self.epoch_step = 0
                self.epoch_rng_state = self._rng.bit_generator.state
                self.stop_reason = hooks.after_epoch()
        finally:
            self._stop_request = self._stop_wanted = None

    def _run_epoch(self, hooks: Hooks, started: float, first: int) -> bool:
        """The rest of the current epoch, under its own progress bar; False if a request
        stopped it."""
        per_epoch = self.iterations_per_epoch
        total = self.num_epochs * per_epoch
        self._rng.bit_generator.state = self.epoch_rng_state
        draws = self._rng.integers(0, self.num_train, (per_epoch, self.batch_size))
        with tqdm(total=per_epoch, initial=self.epoch_step, disable=not self.progress,
                  desc=f"epoch {self.epoch + 1}/{self.num_epochs}", unit="it",
                  file=sys.stderr, dynamic_ncols=True, leave=False) as bar:
            while self.epoch_step < per_epoch:
                if self._stop_request is not None:
                    self.stop_reason = self._stop_request
                    hooks.interrupted()
                    return False
                hooks.step(draws[self.epoch_step])
                self.epoch_step += 1
                self.iteration += 1
                bar.update(1)
                if (self.iteration - 1) % self.print_every == 0:
                    loss = hooks.losses()[-1]
                    rate = ((self.iteration - first) * self.batch_size
                            / max(time.perf_counter() - started, 1e-9))
                    record = {"iteration": self.iteration, "epoch": self.epoch + 1,
                              "loss": loss, "captions_per_s": round(rate, 1)}
                    hooks.log(record)
                    if self.verbose:
                        reward = record.get("mean_reward")
                        self.say(f"(Iteration {self.iteration} / {total}) loss: {loss:f}"
                                 + ("" if reward is None
                                    else f", mean sampled reward {reward:.4f}"))
                    bar.set_postfix(loss=f"{loss:.3f}", cap_s=f"{rate:.0f}")
                hooks.after_step()
                if self.agree_to_stop is not None:
                    self._stop_request = self.agree_to_stop(self._stop_wanted)
        return True

    @contextmanager
    def ctrl_c_requests_stop(self) -> Iterator[None]:
        """While inside, Ctrl-C requests a stop; a second Ctrl-C raises KeyboardInterrupt.
        Does nothing outside the main thread, where signals cannot be caught."""

        def handler(signum: int, frame: Any) -> None:
            if self._stop_wanted is not None:
                raise KeyboardInterrupt
            self.request_stop(INTERRUPTED)

        try:
            previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread
            previous = None
        try:
            yield
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
