"""The CuPy backend: the base class's maths on an NVIDIA GPU, with fused kernels where
the per-step work is small enough that kernel launches dominate.

Overridden: one raw kernel per step for the LSTM gates forward and one for their
backward (blocks i, f, o, g), each also adding the two parts of its input (the recurrent
product and the hoisted input projection; the upstream and the carried gradient) so that
a time step costs one matrix product and one kernel each way, and one for decoding's
whole cell update (gather, word lookup, gates); one for the RNN's tanh backward, greedy
decoding's biased argmax (a warp per row), the embedding scatter-add (rows sorted by
word in one block, then an atomicAdd per run of rows of one word, zero sums skipped),
the softmax cross-entropy and its gradient (a warp per row, in place), Adam (one
kernel for up to eight parameters), and the gather of each packed row's previous state
for dWh (one kernel, where copies by runs of steps take one or two a run). Matrix
products are direct cuBLAS calls (kernels/cublas.py), in full float32 or, on a
``with_precision`` twin, on TF32 or bfloat16 tensor cores; a small float32 step's
recurrent product goes in parts along K, which its gate kernel adds, so that it fills
the GPU, and a float32 batch of at most 32 rows a multiprocessor takes the LSTM's steps
in one persistent kernel each way (``lstm_steps_forward`` / ``_backward``: Wh on chip,
a cooperative launch with a grid barrier between steps). The bf16 twin stores the LSTM
step's big operands in bfloat16 (``operand_dtype``): copies of Wh and W_vocab (its
vocabulary padded with zero words to a multiple of 8, for cuBLAS's aligned kernels), and
the hidden states, the gates' gradient and the scores' gradient as their kernels write
them (in bfloat16 only), and the recurrent products' results and the scores as cuBLAS
writes them, so its products read half the bytes and run on the bfloat16 kernels, and
the gate kernels and the scatter of the gates' gradient read half as much; the gates
are kept for the backward as their pre-activations in bfloat16 (``lookup_gates``). In
every precision the backward's gate kernel makes tanh(c) again from c rather than read
it kept (``keeps_tanh_c``): those kernels are paced by the bytes they move.
Nothing here synchronises with the host (the packed batch's layout comes from the host
with the batch); kernels compile once per dtype and are cached by CuPy. The raw kernels
index C-contiguous rows: given arrays of another layout, an operation takes the base
class's passes instead, so every layout gives the right answer. ``record`` replays a
whole training step from a CUDA graph (kernels/cuda_graph.py).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import cupy as cp
import numpy as np

from backend.base import Backend, BackendUnavailable, check_precision
from kernels.cublas import BF16, gemm, gemm_parts, give_own_handle
from kernels.cuda_graph import GraphRecording
from kernels.cuda_sources import (
    ADAM_TENSORS,
    CTYPES,
    MODULES,
    OPTIONS,
    PERSISTENT_THREADS,
    SORT_MOST_WORDS,
    SORT_THREADS,
    name_expressions,
    persistent_backward_shared_bytes,
    persistent_grid,
    persistent_shared_bytes,
)

# One compiled module per source of kernels/cuda_sources.py (compiled on first use).
_MODULES = {name: cp.RawModule(code=source, options=OPTIONS,
                               name_expressions=name_expressions(kernels))
            for name, (source, kernels) in MODULES.items()}
_FUNCTIONS: dict = {}  # (kernel, dtype name) -> compiled function, looked up once


def _contiguous(*arrays) -> bool:
    """Whether the raw kernels may index all of these as flat C-ordered rows (a None,
    an optional array left out, passes)."""
    return all(a is None or a.flags.c_contiguous for a in arrays)


def _takes(array, values) -> bool:
    """Whether a gate kernel computing in ``values``' dtype can write or read ``array``:
    of that dtype, or stored bfloat16 of float32 values."""
    return array.dtype == values.dtype or (array.dtype == BF16 and values.dtype == np.float32)


def _pointers(array) -> tuple:
    """The gate kernels' two pointers for one array they write or read: (array, null)
    for a float array, (null, array) for a stored bfloat16 one."""
    return (_NULL, array) if array.dtype == BF16 else (array, _NULL)


_NULL = np.uint64(0)  # a null pointer, for a kernel's optional array


def _optional(array):
    """A kernel's optional array: itself, or a null pointer for None."""
    return _NULL if array is None else array


def _widened(x) -> cp.ndarray:
    """Stored bfloat16 ``x`` (``BF16`` bits) as float32 values (exact: its upper half)."""
    return (x.astype(cp.uint32) << 16).view(cp.float32)


def _whole(extra, rows: int):
    """A recurrent product given as (S, m, k) parts (``_addend``) as one (rows, k) array,
    zeros from row m on, for the base class's gate methods; an (m, k) one as float32
    (a stored bfloat16 one widened), else as it is."""
    if extra.dtype == BF16:
        return _widened(extra)
    if extra.ndim == 2:
        return extra
    whole = cp.zeros((rows, extra.shape[2]), extra.dtype)
    whole[:extra.shape[1]] = extra.sum(axis=0)
    return whole


_ATTRIBUTES: dict[int, dict[str, int]] = {}  # device id -> its attributes, as CuPy names them


def _attribute(name: str) -> int:
    """The current GPU's attribute ``name`` (CUDA's cudaDevAttr<name>), asked once."""
    device = cp.cuda.runtime.getDevice()
    if device not in _ATTRIBUTES:
        _ATTRIBUTES[device] = cp.cuda.Device(device).attributes
    return _ATTRIBUTES[device][name]


def _multiprocessors() -> int:
    """The current GPU's multiprocessors (SMs)."""
    return _attribute("MultiProcessorCount")


# TF32 and bfloat16 tensor-core products: NVIDIA GPUs from Ampere (A100, RTX 30) on.
_TENSOR_CORE_CAPABILITY = (8, 0)


def _capability() -> tuple[int, int]:
    """The current GPU's compute capability, (major, minor)."""
    return _attribute("ComputeCapabilityMajor"), _attribute("ComputeCapabilityMinor")


_SPLIT_TILE = 64  # the output tile counted per block (cuBLAS took 64 x 64 for these products whole)
_SPLIT_MIN_K = 256  # the least depth of a part of a split product


def _split_count(rows: int, cols: int, depth: int) -> int:
    """How many parts along K a float32 product (rows, depth) @ (depth, cols) is split
    into (cublas.gemm_parts): doubled while its blocks, one per 64 x 64 output tile,
    still make one wave over the GPU's multiprocessors, each part at least _SPLIT_MIN_K
    deep; 1 for a product that already fills the GPU. (Split past one wave, a batch of
    1,024 captions' backward products, 128 tiles on 132 SMs, went 2.5% slower on the
    H200.)"""
    blocks = -(-rows // _SPLIT_TILE) * -(-cols // _SPLIT_TILE)
    parts = 1
    while (blocks * 2 * parts <= _multiprocessors() and depth % (2 * parts) == 0
           and depth // (2 * parts) >= _SPLIT_MIN_K):
        parts *= 2
    return parts


def persistent_blocks(rows: int, H: int, shared_bytes: int) -> int:
    """A persistent LSTM kernel's grid for steps of at most ``rows`` rows at hidden size
    H, taking ``shared_bytes`` of shared memory a block; 0 where it does not take them:
    H a multiple of 32, the shared memory within what this GPU lets a block have (the
    forward's up to H = 864 and the backward's up to 800 in an H100's 227 KiB, 608 and
    544 in an A100's 163 KiB, 352 and 288 in the 99 KiB of the RTX 30 and 40 cards),
    and no more blocks than the GPU has multiprocessors (a cooperative launch runs every
    block at once; one a multiprocessor always fits)."""
    if H % 32 or H == 0 or shared_bytes > _attribute("MaxSharedMemoryPerBlockOptin"):
        return 0
    blocks = persistent_grid(rows, H)
    return blocks if 0 < blocks <= _multiprocessors() else 0


_PERSISTENT: dict[str, Any] = {}  # kernel name -> compiled, or None where that failed


def persistent_kernel(name: str) -> Any:
    """A persistent kernel (``lstm_persistent_forward`` / ``_backward``), compiled on
    first use; None, with one RuntimeWarning, where that fails, so that the steps go a
    product and a gate kernel at a time."""
    if name not in _PERSISTENT:
        try:
            _PERSISTENT[name] = _MODULES["persistent"].get_function(name)
        except Exception as exc:  # CuPy raises several kinds; any means it cannot be had
            _PERSISTENT[name] = None
            warnings.warn(f"the persistent LSTM kernel {name} could not be built "
                          f"({type(exc).__name__}: {exc}); small float32 batches take a "
                          "product and a gate kernel a step", RuntimeWarning, stacklevel=3)
    return _PERSISTENT[name]


def _launch_persistent(kernel, blocks: int, shared: int, arrays: tuple, sizes: tuple
                       ) -> None:
    """One cooperative launch of a persistent kernel, with ``shared`` bytes of dynamic
    shared memory (allowed first, once): its arrays, a fresh zero count for its grid
    barrier, then its sizes. The flag goes with the launch (the compiled function's
    call), not the module: CuPy links a module made with ``enable_cooperative_groups``
    with CUDA's device runtime (libcudadevrt.a, from the CUDA toolkit, which a CuPy
    installed from wheels may not have), and these kernels use none of it."""
    if kernel.max_dynamic_shared_size_bytes < shared:
        kernel.max_dynamic_shared_size_bytes = shared
    arrived = cp.zeros(1, cp.uint32)
    kernel.kernel((blocks,), (PERSISTENT_THREADS,), (*arrays, arrived, *sizes),
                  shared_mem=shared, enable_cooperative_groups=True)


def _addend(extra) -> tuple:
    """The gate kernels' five arguments for the recurrent product they add (``extra``
    in kernels/cuda_sources.py): None for none, an (m, k) array (float, or a stored
    bfloat16 ``BF16`` one), or (S, m, k) float parts of a product split along K
    (C-contiguous), whose sum is the product."""
    if extra is None:
        return _NULL, _NULL, np.int32(0), np.int64(0), np.int64(0)
    if extra.dtype == BF16:
        return _NULL, extra, np.int32(1), np.int64(0), np.int64(extra.shape[0])
    parts = extra if extra.ndim == 3 else extra[None]
    return (parts, _NULL, np.int32(len(parts)), np.int64(parts.strides[0] // parts.itemsize),
            np.int64(parts.shape[1]))


def _grid(items: int, most: int = 4096) -> int:
    """Blocks of 256 threads for a grid-stride kernel over ``items``: one each, up to
    ``most`` (the loop covers the rest), and at least one."""
    return min(max(-(-items // 256), 1), most)


# The bf16 twin pads its vocabulary to a multiple of this many words in the stored
# operands of the vocabulary layer: cuBLAS picks its bfloat16 kernels by how the
# operands' widths align, and 1,004 words gave the layer's three products
# 2-value-aligned kernels, 227 us of the N=1024 bf16 step (session 13's profile); their
# rows' pitch alone, padded, changed nothing.
_WORDS_ALIGN = 8


def _rounded(x, out_cols: int | None = None) -> cp.ndarray:
    """float32 x as bfloat16 (``BF16`` bits, C order, one kernel); a matrix (rows, cols)
    widened to (rows, out_cols) with zeros where out_cols is given."""
    x = cp.ascontiguousarray(x)
    cols = x.shape[-1] if x.ndim else 1
    out_cols = cols if out_cols is None else out_cols
    out = cp.empty(x.shape[:-1] + (out_cols,) if x.ndim else (), BF16)
    if out.size:
        kernel = _MODULES["gates"].get_function("round_to_bf16<float>")
        kernel((_grid(out.size),), (256,), (x, out, np.int64(x.size // max(cols, 1)),
                                            np.int32(cols), np.int32(out_cols)))
    return out


def _launch(kernel: str, units, *args) -> None:
    """Run a gate kernel over the (N, H) units of the array ``units`` (whose dtype picks
    the kernel); args are those before NH and H."""
    key = (kernel, units.dtype.name)
    if key not in _FUNCTIONS:
        _FUNCTIONS[key] = _MODULES["gates"].get_function(f"{kernel}<{CTYPES[key[1]]}>")
    N, H = units.shape
    _FUNCTIONS[key]((_grid(N * H),), (256,), (*args, np.int64(N * H), np.int32(H)))


_TANH_BACKWARD = cp.ElementwiseKernel(
    "T dnext_h, T next_h", "T da", "da = dnext_h * (1 - next_h * next_h)",
    "caption_tanh_backward",
)

_ADAM_BODY = """
    m = beta1 * m + (1 - beta1) * dw;
    v = beta2 * v + (1 - beta2) * dw * dw;
    w -= step * m / (sqrt(v) + eps_hat);
"""
_ADAM = cp.ElementwiseKernel("T dw, T step, T eps_hat, T beta1, T beta2", "T w, T m, T v",
                             _ADAM_BODY, "caption_adam")
# The same update with its scalars read from device memory (Backend.adam_update_device).
_ADAM_DEVICE = cp.ElementwiseKernel(
    "T dw, raw T hyper", "T w, T m, T v",
    "const T step = hyper[0], eps_hat = hyper[1], beta1 = hyper[2], beta2 = hyper[3];"
    + _ADAM_BODY, "caption_adam_device")

# Elements an adam_many thread updates, about: few enough that every SM fills, enough that
# each block amortises picking its tensor.
_ADAM_ITEMS_PER_THREAD = 4
# Rows one scatter thread walks down its column: long enough that a word's rows, sorted
# together, make one atomic per 32 of them (every caption's <START>: N/32 per column, not
# N), short enough that 16,384 x 2,048 still makes a million threads.
_SCATTER_ROWS_PER_THREAD = 32


_SIDE_STREAMS: dict[int, cp.cuda.Stream] = {}  # device id -> the stream ``beside`` uses
# device id -> the event after the latest work put beside, until that work is joined
_SIDE_DONE: dict[int, cp.cuda.Event] = {}


def _side_stream() -> cp.cuda.Stream:
    """This device's second stream (made once, with a cuBLAS handle of its own)."""
    device = cp.cuda.runtime.getDevice()
    if device not in _SIDE_STREAMS:
        stream = cp.cuda.Stream(non_blocking=True)
        give_own_handle(stream)
        _SIDE_STREAMS[device] = stream
    return _SIDE_STREAMS[device]


def _wait_for_work_beside() -> None:
    """Make the current stream wait for the work put ``beside`` and not yet joined (all
    of it: the second stream runs it in order). For a kernel that needs every
    multiprocessor to itself: a product beside it would either share its SMs and slow
    every one of its steps (each waits at a grid barrier for the slowest block) or be
    left a few SMs and finish long after it."""
    done = _SIDE_DONE.pop(cp.cuda.runtime.getDevice(), None)
    if done is not None:
        cp.cuda.get_current_stream().wait_event(done)


class CupyBackend(Backend):
    name = "cupy"
    xp = cp

    def __init__(self) -> None:
        try:
            count = cp.cuda.runtime.getDeviceCount()
        except cp.cuda.runtime.CUDARuntimeError as exc:
            raise BackendUnavailable(
                f"backend 'cupy': CuPy is installed but no CUDA device or driver is usable "
                f"here ({exc}); run on a machine with an NVIDIA GPU and its driver"
            ) from exc
        if count == 0:
            raise BackendUnavailable("backend 'cupy': CuPy is installed but this machine has "
                                     "no CUDA device")

    def to_numpy(self, a):
        return cp.asnumpy(a)

    def upload(self, dst, host) -> None:
        host = np.ascontiguousarray(host, dtype=dst.dtype)
        if host.shape != dst.shape or not dst.flags.c_contiguous:
            raise ValueError(f"cannot upload {host.shape} into {dst.shape} (contiguous: "
                             f"{dst.flags.c_contiguous}); expected the same shape")
        # Asynchronous on the current stream; CUDA stages pageable memory before this
        # returns, so the host array may go at once, and no device sync is made.
        dst.data.copy_from_host_async(host.ctypes.data, host.nbytes)

    can_record = True
    looks_rows_up_in_gates = True
    keeps_tanh_c = False  # the backward's gate kernel makes it again from c

    def record(self, fn) -> GraphRecording:
        return GraphRecording(fn)

    def device_count(self) -> int:
        return cp.cuda.runtime.getDeviceCount()

    def use_device(self, index: int) -> None:
        cp.cuda.Device(index).use()

    def device_allreduce(self, comm: Any) -> tuple[Any, str]:
        """NCCL's all-reduce on the current stream, its communicator made from a unique
        id that rank 0 sends over ``comm``; (None, why) where CuPy has no NCCL (every
        rank answers the same, so none waits for the others)."""
        try:
            from cupy.cuda import nccl
            ok = bool(getattr(nccl, "available", True))
            why = "" if ok else "CuPy reports NCCL unavailable"
        except ImportError as exc:
            ok, why = False, f"CuPy has no NCCL here ({exc})"
        if comm.allreduce(int(not ok)):  # how many ranks lack it
            return None, why or "NCCL is unavailable on another rank"
        unique_id = comm.bcast(nccl.get_unique_id() if comm.Get_rank() == 0 else None, root=0)
        group = nccl.NcclCommunicator(comm.Get_size(), unique_id, comm.Get_rank())
        kinds = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}

        def allreduce(flat) -> None:
            group.allReduce(flat.data.ptr, flat.data.ptr, flat.size, kinds[flat.dtype],
                            nccl.NCCL_SUM, cp.cuda.get_current_stream().ptr)

        return allreduce, ""

    def synchronize(self) -> None:
        cp.cuda.get_current_stream().synchronize()

    def with_precision(self, precision: str) -> CupyBackend:
        """A twin of this backend whose float32 products use TF32 or bfloat16 tensor
        cores (kernels/cublas.py); one twin per precision, made once. The bf16 twin
        also stores the training step's big operands in bfloat16 (``operand_dtype``).
        ValueError for tf32 or bf16 on a GPU older than compute capability 8.0, whose
        tensor cores take neither."""
        if check_precision(precision) == self.precision:
            return self
        if precision != "fp32" and _capability() < _TENSOR_CORE_CAPABILITY:
            (need_major, need_minor), (major, minor) = _TENSOR_CORE_CAPABILITY, _capability()
            raise ValueError(
                f"precision {precision!r} needs an NVIDIA GPU of compute capability "
                f"{need_major}.{need_minor} or newer (A100, RTX 30 and later), whose tensor "
                f"cores multiply TF32 and bfloat16; this GPU's is {major}.{minor}: use "
                "precision fp32")
        twins = self.__dict__.setdefault("_twins", {self.precision: self})
        if precision not in twins:
            twin = copy.copy(self)
            twin.precision = precision
            twin.operand_dtype = np.dtype(BF16) if precision == "bf16" else None
            twins[precision] = twin
        return twins[precision]

    def as_operand(self, x):
        """A float32 x as this twin stores products' operands: a bfloat16 copy (one
        kernel) on the bf16 twin; x itself otherwise, and for other dtypes."""
        if self.stored_dtype(x.dtype) == x.dtype:
            return x
        return _rounded(x)

    def widen(self, x):
        """A stored bfloat16 x as float32 (exact); x itself if it is not one."""
        if x.dtype != BF16 or self.operand_dtype is None:
            return x
        return _widened(x)

    def matmul(self, a, b, out=None):
        """By one direct cuBLAS call where the operands suit one (every product of
        training does: 2-D, one unit-stride axis; see kernels/cublas.py) in this
        backend's precision, else cupy.matmul (full precision). Stored bfloat16
        operands (``operand_dtype``) give a float32 product, a float32 partner
        converted first."""
        if self.operand_dtype is not None and self.operand_dtype in (a.dtype, b.dtype):
            return self._operand_matmul(self.as_operand(a), self.as_operand(b), out)
        if a.ndim == 2 and b.ndim == 2 and a.dtype == b.dtype:
            target = cp.empty((a.shape[0], b.shape[1]), a.dtype) if out is None else out
            if gemm(a, b, target, self.precision if a.dtype == np.float32 else "fp32"):
                return target
        return super().matmul(a, b, out)

    def _operand_matmul(self, a, b, out):
        """a (M, K) @ b (K, N), both bfloat16 operands, into a float32 ``out`` (M, N)
        (made when None) or a bfloat16 one (the float32 sums rounded once): by cuBLAS,
        through C-ordered copies where a layout does not suit it (cupy.matmul would
        multiply the bits as integers)."""
        if a.ndim != 2 or b.ndim != 2 or a.dtype != b.dtype:
            raise ValueError(f"bfloat16 products are of two matrices: got {a.dtype} "
                             f"{a.shape} @ {b.dtype} {b.shape}")
        target = cp.empty((a.shape[0], b.shape[1]), np.float32) if out is None else out
        if target.dtype not in (np.float32, BF16):
            raise ValueError(f"a bfloat16 product is written as float32 or bfloat16, not "
                             f"{target.dtype}")
        if not gemm(a, b, target):
            result = cp.empty(target.shape, target.dtype)
            gemm(cp.ascontiguousarray(a), cp.ascontiguousarray(b), result)
            target[...] = result
        return target

    def beside(self, work):
        """On this device's second stream, forked from the current one by an event and
        joined back by another when ``join`` is called; both are graph edges when the
        current stream is being recorded. ``join`` holds ``work`` (whose closure holds
        the arrays it reads) until it is dropped, so the memory pool cannot hand their
        memory to other work while the second stream may still read it. What ``work``
        makes comes from the second stream's share of the pool; it is used after the
        join, and that share is next used by work forked later still."""
        main, side = cp.cuda.get_current_stream(), _side_stream()
        forked = cp.cuda.Event(disable_timing=True)
        forked.record(main)
        side.wait_event(forked)
        with side:
            result = work()
        done = cp.cuda.Event(disable_timing=True)
        done.record(side)
        device = cp.cuda.runtime.getDevice()
        _SIDE_DONE[device] = done

        def join(_inputs=work):
            cp.cuda.get_current_stream().wait_event(done)
            if _SIDE_DONE.get(device) is done:
                del _SIDE_DONE[device]
            return result

        return join

    def sum_rows(self, x):
        """As ones (1, M) @ x by one cuBLAS call, not in this twin's reduced precision
        (these are bias gradients; only CUPY_TF32=1 makes it TF32, as every float32
        product), reading x row by row; else cupy's column reduction. A stored
        bfloat16 x (the bf16 twin's scores gradient) is summed in float32 by a bfloat16
        product with ones (exact in bfloat16)."""
        if self.operand_dtype is not None and x.dtype == self.operand_dtype:
            ones = self.as_operand(cp.ones((1, x.shape[0]), dtype=np.float32))
            return self._operand_matmul(ones, x, None).reshape(-1)
        if x.ndim == 2 and x.dtype in (np.float32, np.float64):
            out = cp.empty((1, x.shape[1]), dtype=x.dtype)
            if gemm(cp.ones((1, x.shape[0]), dtype=x.dtype), x, out, "fp32"):
                return out.reshape(-1)
        return super().sum_rows(x)

    def embedding_backward(self, idx, dout, vocab_size: int):
        """Raw kernels (kernels/cuda_sources.py): ``sort_rows_by_word`` sorts the rows by
        word (one block, a counting sort in shared memory), then ``scatter_add_sorted_rows``
        sums each thread's run of rows naming one word before its atomicAdd and skips zero
        sums. A vocabulary too large to sort that way (over ``SORT_MOST_WORDS``) is
        scattered in the rows' order (``scatter_add_rows``); ``cupy.add.at`` takes a dout
        that is not C-contiguous. A stored bfloat16 dout (the bf16 twin's gates'
        gradient) is summed into float32 (the ``_bf16_`` kernels). Indices outside
        [-vocab_size, vocab_size) add nothing (np.add.at would raise; the model's words
        are checked where they are loaded)."""
        D = dout.shape[-1]
        stored = dout.dtype == BF16
        if stored:
            dout = cp.ascontiguousarray(dout)
        dW = cp.zeros((vocab_size, D), dtype=np.float32 if stored else dout.dtype)
        rows = idx.size
        if not dout.flags.c_contiguous or (dout.dtype.name not in CTYPES and not stored):
            cp.add.at(dW, idx.reshape(-1), dout.reshape(-1, D))
            return dW
        if dout.size != rows * D:
            raise ValueError(f"scatter-add of dout {dout.shape} at {rows} indices: expected "
                             f"one row of {D} values per index")
        if rows == 0 or D == 0:
            return dW
        idx = cp.ascontiguousarray(idx.reshape(-1), dtype=cp.int64)
        kind = f"{'bf16_' if stored else ''}rows<{CTYPES[dW.dtype.name]}>"
        scatter = _MODULES["scatter"]
        shape = (np.int64(rows), np.int32(D), np.int32(vocab_size),
                 np.int32(_SCATTER_ROWS_PER_THREAD))
        grid = (_grid(-(-rows // _SCATTER_ROWS_PER_THREAD) * D, 8192),)
        if vocab_size > SORT_MOST_WORDS or rows >= 2**30:  # (the sort counts in int)
            scatter.get_function(f"scatter_add_{kind}")(grid, (256,), (idx, dout, dW, *shape))
            return dW
        order, words = cp.empty(rows, dtype=cp.int32), cp.empty(rows, dtype=cp.int32)
        scatter.get_function("sort_rows_by_word")(
            (1,), (SORT_THREADS,), (idx, order, words, np.int32(rows), np.int32(vocab_size)))
        scatter.get_function(f"scatter_add_sorted_{kind}")(grid, (256,),
                                                           (order, words, dout, dW, *shape))
        return dW

    def argmax_rows(self, scores, bias):
        """One raw kernel, a warp per row, that adds the bias as it reads each score
        (no biased copy is written); strided operands are made contiguous for it first,
        since CuPy's own argmax does not take NumPy's first NaN (the base class's two
        passes are left to other dtypes and shapes)."""
        if (scores.ndim != 2 or scores.dtype != bias.dtype
                or scores.dtype.name not in CTYPES or bias.shape != scores.shape[1:]):
            return super().argmax_rows(scores, bias)
        scores, bias = cp.ascontiguousarray(scores), cp.ascontiguousarray(bias)
        M, V = scores.shape
        out = cp.empty(M, dtype=cp.int64)
        if M == 0:
            return out
        kernel = _MODULES["decode"].get_function(f"argmax_rows<{CTYPES[scores.dtype.name]}>")
        # a warp per row, 8 rows a block
        kernel((_grid(32 * M, 8192),), (256,), (scores, bias, out, np.int64(M), np.int32(V)))
        return out

    def rnn_gates_backward(self, dnext_h, next_h, da):
        return _TANH_BACKWARD(dnext_h, next_h, da)

    def previous_states(self, h0, hs, steps, layout=None):
        """One gather kernel by ``layout.previous`` (``previous_states``, rows moved as
        4-byte words: one graph node, where copying by runs takes one or two per run of
        steps of equal row counts, ~10 in a batch of captions of many lengths); the base
        class's copies without it."""
        row_bytes = hs.shape[1] * hs.itemsize
        previous = None if layout is None else layout.previous
        if (previous is None or previous.dtype != np.int64 or h0.dtype != hs.dtype
                or not _contiguous(h0, hs, previous) or len(previous) != len(hs)
                or row_bytes % 4):
            return super().previous_states(h0, hs, steps, layout)
        out = cp.empty(hs.shape, dtype=hs.dtype)
        if out.size:
            words = (h0.view(cp.uint32), hs.view(cp.uint32), previous, out.view(cp.uint32))
            _MODULES["gates"].get_function("previous_states")(
                (_grid(out.nbytes // 4),), (256,),
                (*words, np.int64(len(out)), np.int32(row_bytes // 4)))
        return out

    def lstm_gates_forward(self, a, prev_c, gates, next_c, next_h, tanh_c):
        if not _contiguous(gates, next_c, next_h, tanh_c):  # the kernel writes flat rows
            return super().lstm_gates_forward(a, prev_c, gates, next_c, next_h, tanh_c)
        a, prev_c = cp.ascontiguousarray(a), cp.ascontiguousarray(prev_c)
        _launch("lstm_forward", prev_c, a, _NULL, *_addend(None), prev_c, gates, _NULL,
                next_c, next_h, tanh_c, _NULL)

    def lstm_gates_forward_halved(self, a, prev_c, next_c, next_h):
        if not _contiguous(next_c, next_h):
            return super().lstm_gates_forward_halved(a, prev_c, next_c, next_h)
        a, prev_c = cp.ascontiguousarray(a), cp.ascontiguousarray(prev_c)
        _launch("lstm_forward_halved", prev_c, a, prev_c, next_c, next_h)

    def lstm_decode_gates(self, hw, table, words, prev_c, next_c, next_h, rows):
        if not _contiguous(hw, table, prev_c, next_c, next_h):
            return super().lstm_decode_gates(hw, table, words, prev_c, next_c, next_h, rows)
        words = cp.ascontiguousarray(words, dtype=cp.int64)
        if isinstance(rows, slice) and rows.indices(len(hw))[2] == 1:
            first, rows_arg = rows.indices(len(hw))[0], _NULL  # rows first, first+1...
        else:
            if isinstance(rows, slice):
                rows = cp.arange(*rows.indices(len(hw)))
            first, rows_arg = 0, cp.ascontiguousarray(rows, dtype=cp.int64)
        _launch("lstm_decode", next_c, hw, table, words, rows_arg, np.int64(first), prev_c,
                next_c, next_h)

    def lstm_gates_backward(self, dnext_h, dnext_c, gates, prev_c, tanh_c, da, dprev_c):
        if not _contiguous(da, dprev_c):
            return super().lstm_gates_backward(dnext_h, dnext_c, gates, prev_c, tanh_c, da,
                                               dprev_c)
        dnext_h, dnext_c, gates, prev_c, tanh_c = (
            cp.ascontiguousarray(x) for x in (dnext_h, dnext_c, gates, prev_c, tanh_c))
        _launch("lstm_backward", prev_c, dnext_h, np.int64(prev_c.shape[1]), *_addend(None),
                dnext_c, gates, _NULL, prev_c, _NULL, tanh_c, da, _NULL, dprev_c)

    def recurrent_product(self, x, w, out):
        """A float32, full-precision product that would not fill the GPU, in (S, m, n)
        parts along K (S from ``_split_count``, one strided-batched cuBLAS call), which
        the gate kernels add as they read them (``_addend``); stored bfloat16 operands'
        product as bfloat16 (float32 accumulation, rounded once by cuBLAS, as PyTorch's
        autocast keeps an LSTM's products: half the bytes written, and read by the gate
        kernel); the base class's product otherwise. (TF32's products are left whole:
        their cuBLAS kernels differ, and cuBLAS splits those itself.)"""
        if self.precision == "fp32" and x.dtype == np.float32 and w.dtype == np.float32:
            count = _split_count(x.shape[0], w.shape[1], x.shape[1])
            if count > 1:
                parts = cp.empty((count, x.shape[0], w.shape[1]), np.float32)
                if gemm_parts(x, w, parts):
                    return parts
        if x.dtype == BF16 and w.dtype == BF16:
            product = cp.empty(out.shape, BF16)
            if gemm(x, w, product):
                return product
        return super().recurrent_product(x, w, out)

    def lstm_gates_forward_sum(self, a, a_extra, prev_c, next_c, next_h, tanh_c):
        # In the time loop every operand is a contiguous step of a (T, N, ...) buffer.
        if not (_contiguous(a, a_extra, prev_c, next_c, next_h, tanh_c)
                and _takes(next_h, a)):
            return super().lstm_gates_forward_sum(a, _whole(a_extra, len(a)), prev_c, next_c,
                                                  next_h, tanh_c)
        h, h16 = _pointers(next_h)
        _launch("lstm_forward", prev_c, a, _NULL, *_addend(a_extra), prev_c, a, _NULL, next_c,
                h, _optional(tanh_c), h16)

    def lookup_gates(self, rows: int, width: int, dtype):
        """On the bf16 twin, float32 gates are kept as their pre-activations rounded to
        bfloat16 (half the bytes the gate kernels write and read again; activations
        would not do: a sigmoid of 0.999 is 1 in bfloat16, and its gradient 0), and the
        forward makes its gates from those rounded values, so that the backward, which
        activates them again, differentiates what the forward computed."""
        if self.operand_dtype is not None and np.dtype(dtype) == np.float32:
            return cp.empty((rows, width), BF16)
        return super().lookup_gates(rows, width, dtype)

    def _activated(self, pre16):
        """Gates kept as bfloat16 pre-activations (``lookup_gates``), activated: float32
        (N, 4H)."""
        a = _widened(pre16)
        H = a.shape[1] // 4
        self.sigmoid(a[:, : 3 * H], out=a[:, : 3 * H])
        cp.tanh(a[:, 3 * H :], out=a[:, 3 * H :])
        return a

    persistent_steps = True  # small float32 batches' LSTM steps in one kernel each way

    def _persistent(self, name: str, steps, H: int, shared: int, layout, tanh_c,
                    arrays) -> tuple[Any, int]:
        """(kernel, blocks) where the persistent kernel ``name`` takes this batch of
        packed ``steps``: full float32 precision (this twin's and ``arrays``', all
        C-contiguous), its PackedRows, no kept tanh(c), ``persistent_blocks`` for its
        first (largest) step; else (None, 0)."""
        rows = steps[0].stop - steps[0].start if steps else 0
        blocks = persistent_blocks(rows, H, shared)
        if (self.persistent_steps and blocks and self.precision == "fp32"
                and tanh_c is None and layout is not None
                and all(x.dtype == np.float32 for x in arrays) and _contiguous(*arrays)):
            kernel = persistent_kernel(name)
            if kernel is not None:
                return kernel, blocks
        return None, 0

    def lstm_steps_forward(self, a, words, h0, c0, Wh, steps, layout, gates, cs, hs,
                           tanh_c) -> None:
        """For a batch of at most 32 rows a multiprocessor (128 at H = 512 on a 132-SM
        H100/H200) at full float32 precision, with its PackedRows: every step in one
        cooperative launch of ``lstm_persistent_forward``, each block keeping its slice
        of Wh on chip and its cells in registers, a grid barrier between steps (where a
        product and a gate kernel a step leave most of the GPU idle and wait for each
        other). Else, or with ``persistent_steps`` off, the base class's steps."""
        H = h0.shape[1]
        shared = persistent_shared_bytes(H)
        kernel, blocks = self._persistent("lstm_persistent_forward", steps, H, shared, layout,
                                          tanh_c, (a, h0, Wh, gates, cs, hs))
        if kernel is None or (words is not None and (words.dtype != np.int64
                                                     or not _contiguous(words))):
            return super().lstm_steps_forward(a, words, h0, c0, Wh, steps, layout, gates,
                                              cs, hs, tanh_c)
        _launch_persistent(kernel, blocks, shared,
                           (a, _optional(words), h0, Wh, layout.starts, hs, cs, gates),
                           (np.int32(0), np.int32(len(layout.starts) - 1), np.int32(H)))

    def lstm_steps_backward(self, dh, gates, cs, c0, Wh, steps, layout, tanh_c, da,
                            dh0) -> None:
        """The same batches' backward steps in one cooperative launch of
        ``lstm_persistent_backward``: each block keeps its units' rows of Wh on chip
        and carries their cells' gradient in registers; else the base class's. Work
        put ``beside`` before it (the vocabulary layer's weight gradients) finishes
        first: the launch takes all but a few multiprocessors."""
        H = c0.shape[1]
        shared = persistent_backward_shared_bytes(H)
        kernel, blocks = self._persistent("lstm_persistent_backward", steps, H, shared, layout,
                                          tanh_c, (dh, gates, cs, Wh, da, dh0))
        if kernel is None:
            return super().lstm_steps_backward(dh, gates, cs, c0, Wh, steps, layout,
                                               tanh_c, da, dh0)
        _wait_for_work_beside()  # (the vocabulary layer's weight gradients, in a step)
        _launch_persistent(kernel, blocks, shared, (dh, gates, cs, Wh, layout.starts, da, dh0),
                           (np.int32(len(layout.starts) - 1), np.int32(H)))

    def lstm_gates_forward_lookup(self, table, words, a_extra, prev_c, gates, next_c, next_h,
                                  tanh_c):
        if not (_contiguous(table, a_extra, prev_c, gates, next_c, next_h, tanh_c)
                and _takes(next_h, table) and _takes(gates, table)):
            extra = _whole(a_extra, len(words))
            if gates.dtype != BF16:
                return super().lstm_gates_forward_lookup(table, words, extra, prev_c, gates,
                                                         next_c, next_h, tanh_c)
            gates[...] = _rounded(table[words] + extra)  # kept rounded, and so used
            return super().lstm_gates_forward_sum(_widened(gates), 0, prev_c, next_c, next_h,
                                                  tanh_c)  # (0: the product is in already)
        words = cp.ascontiguousarray(words, dtype=cp.int64)
        h, h16 = _pointers(next_h)
        _launch("lstm_forward", prev_c, table, words, *_addend(a_extra), prev_c,
                *_pointers(gates), next_c, h, _optional(tanh_c), h16)

    def lstm_gates_backward_sum(self, dh, dh_extra, dnext_c, gates, prev_c, next_c, tanh_c,
                                da):
        # dh is dh[:, t] of an (N, T, H) array: rows dh.strides[0] bytes apart.
        if not (_contiguous(dh_extra, dnext_c, gates, prev_c, next_c, tanh_c, da)
                and _takes(da, prev_c) and _takes(gates, prev_c)):
            if gates.dtype == BF16:
                gates = self._activated(gates)
            return super().lstm_gates_backward_sum(dh, _whole(dh_extra, len(dh)), dnext_c,
                                                   gates, prev_c, next_c, tanh_c, da)
        if dh.strides[1] != dh.itemsize:
            dh = cp.ascontiguousarray(dh)
        _launch("lstm_backward", prev_c, dh, np.int64(dh.strides[0] // dh.itemsize),
                *_addend(dh_extra), dnext_c, *_pointers(gates), prev_c, next_c,
                _optional(tanh_c), *_pointers(da), dnext_c)

    def cross_entropy(self, scores, y, weight, n: int, overwrite: bool = False, bias=None):
        """One kernel, a warp per row, that writes the gradient over the scores (rows of
        unit stride; a copy first where ``overwrite`` does not allow it). Scores stored
        in bfloat16 (``BF16``, the bf16 twin's vocabulary layer) are summed in float32
        and their gradient written over them in bfloat16."""
        M, V = scores.shape
        sums = np.dtype(np.float32) if scores.dtype == BF16 else scores.dtype
        if not (overwrite and scores.strides[1] == scores.itemsize):
            scores = scores.copy(order="C")
        if M == 0:
            return cp.zeros((), dtype=sums), scores
        row_loss = cp.empty(M, dtype=sums)
        stored = "_bf16" if scores.dtype == BF16 else ""
        kernel = _MODULES["xent"].get_function(f"caption_xent{stored}<{CTYPES[sums.name]}>")
        kernel((_grid(32 * M, 8192),), (256,),  # a warp per row, 8 rows a block
               (scores, np.int64(scores.strides[0] // scores.itemsize),
                _NULL if bias is None else cp.ascontiguousarray(bias, dtype=sums),
                cp.ascontiguousarray(y, dtype=cp.int32),
                cp.ascontiguousarray(weight, dtype=sums), sums.type(1 / n), cp.int32(V),
                np.int64(M), row_loss))
        return row_loss.sum(), scores

    def vocab_loss(self, h, W_vocab, b_vocab, y, weight, n: int):
        """The base class's maths; on the bf16 twin, the scores are kept in bfloat16 (as
        cuBLAS rounds the float32 sums once, as PyTorch's autocast keeps a layer's
        output; the softmax sums them in float32) and their gradient is written over
        them, and with a vocabulary that is not a multiple of _WORDS_ALIGN words, its
        three products multiply operands padded with zero words to one (W_vocab's
        stored copy, the scores): the padded words' scores are zeros, left out of the
        softmax, and their gradients zeros, so nothing else changes."""
        V = W_vocab.shape[1]
        if self.operand_dtype is None or W_vocab.dtype != np.float32:
            return super().vocab_loss(h, W_vocab, b_vocab, y, weight, n)
        padded = -(-V // _WORDS_ALIGN) * _WORDS_ALIGN
        h_op, W_op = self.as_operand(h), _rounded(W_vocab, padded)  # (H, padded)
        # (M, padded) scores, zeros from V on, then their gradient
        dscores = self._operand_matmul(h_op, W_op, cp.empty((len(h_op), padded), BF16))
        loss, _ = self.cross_entropy(dscores[:, :V], y, weight, n, overwrite=True,
                                     bias=b_vocab)
        dh = self._operand_matmul(dscores, W_op.T, None)

        def weight_grads():
            dW_vocab = self._operand_matmul(h_op.T, dscores, None)  # (H, padded)
            return cp.ascontiguousarray(dW_vocab[:, :V]), self.sum_rows(dscores)[:V]

        return loss, dh, self.beside(weight_grads)

    def adam_kernel(self, w, dw, m, v, step, eps_hat, beta1, beta2):
        d = w.dtype.type
        _ADAM(dw, d(step), d(eps_hat), d(beta1), d(beta2), w, m, v)

    def adam_update_device(self, w, dw, m, v, hyper):
        _ADAM_DEVICE(dw, hyper, w, m, v)

    def adam_update_device_many(self, tensors, hyper):
        """One raw kernel (``adam_many``) for every ADAM_TENSORS parameters, so that the
        small ones (the biases) cost no launch of their own; one parameter at a time
        where an array is strided or of another dtype than ``hyper``."""
        dtype = hyper.dtype
        if (dtype.name not in CTYPES or not hyper.flags.c_contiguous
                or any(a.dtype != dtype or not a.flags.c_contiguous or a.shape != w.shape
                       for w, *rest in tensors for a in (w, *rest))):
            return super().adam_update_device_many(tensors, hyper)
        kernel = _MODULES["adam"].get_function(f"adam_many<{CTYPES[dtype.name]}>")
        for first in range(0, len(tensors), ADAM_TENSORS):
            group = tensors[first:first + ADAM_TENSORS]
            args, blocks = [], 0
            for w, dw, m, v in group:
                blocks += _grid(-(-w.size // _ADAM_ITEMS_PER_THREAD))
                args += [np.uint64(a.data.ptr) for a in (w, dw, m, v)]
                args += [np.int64(w.size), np.int32(blocks)]
            for _ in range(ADAM_TENSORS - len(group)):
                args += [_NULL] * 4 + [np.int64(0), np.int32(blocks)]
            kernel((blocks,), (256,), (hyper[first:], *args))
