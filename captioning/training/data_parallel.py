"""Data-parallel training over MPI ranks (ChainerMN's scheme): parameters broadcast from
rank 0 at the start; every rank draws the same global minibatch and computes the loss and
gradients of its contiguous share; the gradients (and the loss) are summed with one
Allreduce of one flat buffer per step, each share weighted by its size, so every rank
holds the gradients of the whole batch and applies the same update.

On a GPU backend each rank computes on the GPU its index on its node picks, and the
flat buffer is summed with NCCL on the GPUs when every rank has a GPU of its own;
otherwise (ranks sharing a GPU, no NCCL, a CPU backend) it goes through host memory
with MPI. ``mpi4py`` is imported only when a launcher started more than one rank.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import numpy as np

from backend import Backend

# What MPI launchers set: MPICH/Hydra and Intel MPI (PMI_SIZE), Open MPI, PMIx, Slurm.
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
# How long a failing rank waits, after printing its error, before it ends the job.
ABORT_GRACE_S = 1.0


def launched_ranks() -> int:
    """How many ranks an MPI launcher started this process among (1 when none did)."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def from_launcher(mode: str = "auto") -> MpiDataParallel | None:
    """An MPI context when a launcher started several ranks (mode 'auto') or 'mpi' asks
    for one; None for one process ('none', or a single rank)."""
    if mode == "none" or (mode == "auto" and launched_ranks() < 2):
        return None
    parallel = MpiDataParallel()
    return parallel if parallel.size > 1 or mode == "mpi" else None


class MpiDataParallel:
    """One process's part of an MPI data-parallel run: ``share`` picks this rank's
    captions of a global batch, ``reduce`` (the step's ``reduce_gradients``) sums the
    shares' gradients and losses."""

    def __init__(self) -> None:
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise RuntimeError('data-parallel training needs mpi4py and an MPI: pip install '
                               '-e ".[mpi]" (or run without mpiexec, or --distributed '
                               'none)') from exc
        self.mpi = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self._weight = 1.0
        self._buffer: Any = None
        self._device_sum: Any = None  # sums a flat device array over the ranks (NCCL)
        self.summing: str | None = None  # how gradients are summed, once attached

    def attach(self, backend: Backend) -> str:
        """Set this rank up for ``backend`` (once; before the model is built, so that
        its parameters live on this rank's device): on a GPU backend, the rank's index
        among the ranks of its node picks the GPU, and gradients are summed with the
        backend's device all-reduce (NCCL) when every rank of every node has a GPU of its
        own, else through host memory. Returns how, in words. Collective."""
        if self.summing is not None:
            return self.summing
        devices = backend.device_count()
        node = self.comm.Split_type(self.mpi.COMM_TYPE_SHARED)
        local_rank, local_size = node.Get_rank(), node.Get_size()
        node.Free()
        if devices == 0:
            self.summing = "gradients summed through host memory (MPI Allreduce)"
            return self.summing
        backend.use_device(local_rank % devices)
        shared = self.comm.allreduce(int(local_size > devices))  # nodes short of GPUs
        why = (f"{local_size} ranks share {devices} GPU(s) on a node" if local_size > devices
               else "ranks on another node share GPUs") if shared else ""
        if not shared:
            self._device_sum, why = backend.device_allreduce(self.comm)
        self.summing = (f"gradients summed with NCCL, GPU {local_rank % devices} of "
                        f"{devices} on this rank's node" if self._device_sum is not None
                        else f"gradients summed through host memory (MPI Allreduce): {why}")
        return self.summing

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def broadcast(self, params: dict[str, Any], backend: Backend) -> None:
        """Every rank takes rank 0's parameters (in place, in the dict's order)."""
        for name, value in params.items():
            host = np.ascontiguousarray(backend.to_numpy(value))
            self.comm.Bcast(host, root=0)
            params[name] = backend.asarray(host)

    def share(self, batch_idx: Any) -> Any:
        """This rank's contiguous share of the global batch's caption indices."""
        part = self.my_part(len(batch_idx))
        self._weight = (part.stop - part.start) / len(batch_idx)  # the loss divides by it
        return batch_idx[part]

    def my_part(self, count: int) -> slice:
        """This rank's contiguous part of ``count`` items (validation captions, rows)."""
        return slice(self.rank * count // self.size, (self.rank + 1) * count // self.size)

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        self.comm.Barrier()

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value``, in rank order, on rank 0 (None elsewhere)."""
        return self.comm.gather(value, root=0)

    def sum_over_ranks(self, values: np.ndarray) -> np.ndarray:
        """The element-wise sum of ``values`` (a host array) over every rank."""
        total = np.array(values, copy=True)
        self.comm.Allreduce(self.mpi.IN_PLACE, total, op=self.mpi.SUM)
        return total

    def reducer(self, backend: Backend):
        """The step's ``reduce_gradients`` for arrays of ``backend``."""
        return lambda loss, grads: self.reduce(loss, grads, backend)

    def reduce(self, loss: Any, grads: dict[str, Any], backend: Backend) -> Any:
        """Sum over ranks of weight * (loss, gradients), in place in ``grads``; returns
        the loss of the whole batch (a 0-d array of the backend). The flat buffer lives
        on the device when NCCL sums it, else on the host."""
        on_device = self._device_sum is not None
        xp = backend.xp if on_device else np
        move = (lambda a: a) if on_device else backend.to_numpy
        sizes = [int(g.size) for g in grads.values()]
        dtype = next(iter(grads.values())).dtype
        total = sum(sizes) + 1
        if (self._buffer is None or self._buffer.size != total or self._buffer.dtype != dtype
                or not isinstance(self._buffer, xp.ndarray)):
            self._buffer = xp.empty(total, dtype=dtype)
        flat, offset = self._buffer, 0
        for grad, size in zip(grads.values(), sizes):
            flat[offset : offset + size] = move(grad).ravel()
            offset += size
        flat[-1] = move(loss)
        flat *= dtype.type(self._weight)
        if on_device:
            self._device_sum(flat)
        else:
            self.comm.Allreduce(self.mpi.IN_PLACE, flat, op=self.mpi.SUM)
        offset = 0
        for name, size in zip(grads, sizes):
            grads[name][...] = backend.asarray(flat[offset : offset + size]).reshape(
                grads[name].shape)
            offset += size
        return backend.asarray(flat[-1:]).reshape(()).copy()  # the buffer is reused

    def agree_to_stop(self, reason: str | None) -> str | None:
        """The ranks' common decision, after a step, whether to stop (the training loop's
        ``agree_to_stop``): if any rank was asked to (Ctrl-C reaches the ranks at
        slightly different moments), all stop after this same step. Returns this rank's
        reason, another rank's in words, or None. Collective: one small Allreduce."""
        if not self.comm.allreduce(int(reason is not None)):
            return None
        return reason or "interrupted on another rank"

    def check_identical(self, params: dict[str, Any], backend: Backend) -> None:
        """RuntimeError unless every rank holds bit for bit rank 0's parameters."""
        digest = hashlib.sha256()
        for value in params.values():
            digest.update(np.ascontiguousarray(backend.to_numpy(value)).tobytes())
        digests = self.comm.allgather(digest.hexdigest())
        differing = [rank for rank, d in enumerate(digests) if d != digests[0]]
        if differing:
            raise RuntimeError(f"ranks {differing} ended with parameters that differ from "
                               "rank 0's (a data-parallel run must keep them identical)")

    def abort(self, code: int = 1) -> None:
        """End every rank of the job (an error on one rank must not leave others hanging),
        ABORT_GRACE_S seconds after the call, so that mpiexec has forwarded what this rank
        just wrote to stderr: MPICH's Hydra kills the job without reading the output still
        in its pipes, and a CI run lost the error message that way."""
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(code)
