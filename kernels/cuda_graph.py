"""A function's GPU work recorded once as a CUDA graph and replayed (CupyBackend.record).

A small batch's training step is ~100 kernel launches and cuBLAS calls whose host-side
issue takes longer than the GPU work itself; replaying a graph issues all of them with
one launch. The recording keeps a memory pool and a stream of its own: the pool, so
that every temporary the graph reads or writes stays at the address it was recorded
with (nothing else ever allocates from it); the stream, because capture needs a
non-blocking one. Replays run on the caller's current stream, in order with the rest of
its work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cupy as cp

from backend.base import RecordingFailed


class GraphRecording:
    """Each call runs ``fn``'s device work once for real and returns what fn returned.

    The first call runs fn op by op, on the recording's own stream and pool, so that the
    pool then holds the blocks the recording will need and every kernel is compiled;
    the second records fn into a graph and launches it; later calls launch it again.
    A graph run returns the arrays fn returned while being recorded, which each replay
    overwrites. fn must read its changing inputs from arrays whose addresses stay fixed
    and must not synchronise with the host. If recording fails, RecordingFailed is
    raised and nothing of that call has run.
    """

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.pool = cp.cuda.MemoryPool()
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.graph = None
        self.outputs: Any = None
        self.runs = 0

    def __call__(self) -> Any:
        caller = cp.cuda.get_current_stream()
        if self.graph is not None:
            self.graph.launch(stream=caller)
            result = self.outputs
        else:  # on the recording's stream and pool, ordered after the caller's work
            self.stream.wait_event(caller.record())
            with cp.cuda.using_allocator(self.pool.malloc), self.stream:
                if self.runs == 0:
                    result = self.fn()
                else:
                    self._capture()
                    self.graph.launch(stream=self.stream)
                    result = self.outputs
            caller.wait_event(self.stream.record())
        self.runs += 1
        return result

    def _capture(self) -> None:
        try:
            self.stream.begin_capture()
        except Exception as exc:
            raise RecordingFailed(f"a CUDA graph capture could not begin: "
                                  f"{type(exc).__name__}: {exc}") from exc
        try:
            outputs = self.fn()
        except Exception as exc:
            _end_quietly(self.stream)
            raise RecordingFailed(f"recording the step as a CUDA graph failed: "
                                  f"{type(exc).__name__}: {exc}") from exc
        try:
            self.graph = self.stream.end_capture()
        except Exception as exc:
            raise RecordingFailed(f"the CUDA graph could not be completed: "
                                  f"{type(exc).__name__}: {exc}") from exc
        self.outputs = outputs


def _end_quietly(stream) -> None:
    """End a capture that an error broke off; its (invalid) graph is dropped."""
    try:
        stream.end_capture()
    except Exception:  # an invalidated capture reports itself here; the first error counts
        pass
