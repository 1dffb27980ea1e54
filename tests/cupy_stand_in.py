"""The CuPy backend (kernels/cupy_backend.py) run on the CPU, as written, over a stand-in
for the ``cupy`` package: arrays are NumPy arrays, the raw and elementwise kernels are
the backend's own CUDA C run by tests/cuda_on_cpu.py, the cuBLAS functions that
kernels/cublas.py calls are NumPy products over the memory it points them at (TF32 and
bfloat16 by rounding the operands), and streams and events keep no time (work runs when
issued, so ``beside`` is in order).
What this checks on a machine without a GPU: every line of the backend that chooses a
kernel, shapes its launch and passes its arguments, and the kernels' results, through
the same model code a GPU runs, and how products are handed to cuBLAS. What it cannot:
cuBLAS's own kernels, CUDA graphs (recording is refused, as where capture fails), memory
pools, NCCL, and anything about speed.

    with cupy_backend_on_cpu() as backend:   # a CupyBackend instance
        ...
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import itertools
import sys
import types

import numpy as np

import cuda_on_cpu
from cuda_on_cpu import EmulatedElementwiseKernel, EmulatedModule

_BACKEND_MODULES = ("kernels.cuda_graph", "kernels.cublas", "kernels.cupy_backend")


class _DeviceArray(np.ndarray):
    """A NumPy array with what the backend uses of a CuPy array's memory: ``data.ptr``
    and copies from the host."""

    @property
    def data(self) -> _Memory:
        return _Memory(self.ctypes.data)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """NumPy's ufunc, refused as CuPy refuses it where a host array (a plain
        ``numpy.ndarray``) meets a device array: a TypeError, not a silent product."""
        outs = kwargs.get("out") or ()
        host = [i for i, x in enumerate((*inputs, *outs)) if type(x) is np.ndarray]
        if host:
            raise TypeError(f"{ufunc.__name__}: operand(s) {host} of {len(inputs)} inputs and "
                            f"{len(outs)} outputs are numpy.ndarray, mixed with device arrays "
                            "(CuPy takes device arrays and scalars only)")
        plain = [x.view(np.ndarray) if isinstance(x, _DeviceArray) else x for x in inputs]
        if outs:
            kwargs["out"] = tuple(o.view(np.ndarray) for o in outs)
        result = getattr(ufunc, method)(*plain, **kwargs)
        if outs:
            return outs[0] if len(outs) == 1 else outs
        return _as_device(result)


def _as_device(result):
    """``result`` with its plain NumPy arrays (also inside a tuple) made device arrays."""
    if isinstance(result, tuple):
        return tuple(_as_device(r) for r in result)
    return result.view(_DeviceArray) if type(result) is np.ndarray else result


class _Memory:
    def __init__(self, ptr: int) -> None:
        self.ptr = ptr

    def copy_from_host_async(self, src: int, nbytes: int, stream=None) -> None:
        ctypes.memmove(self.ptr, src, nbytes)


def _numpy_attribute(name: str):
    """NumPy's ``name`` as the stand-in's: a function's arrays come back as device arrays
    (ufuncs, types and constants are NumPy's own)."""
    value = getattr(np, name)
    if not callable(value) or isinstance(value, (type, np.ufunc)):
        return value

    @functools.wraps(value)
    def on_device(*args, **kwargs):
        return _as_device(value(*args, **kwargs))
    return on_device


class _Stream:
    """A stream that runs nothing later than its caller: every call has finished."""

    _ids = itertools.count(1)
    current: _Stream

    def __init__(self, non_blocking: bool = False) -> None:
        self.ptr = next(self._ids)
        self._outer: list[_Stream] = []

    def __enter__(self) -> _Stream:
        self._outer.append(_Stream.current)
        _Stream.current = self
        return self

    def __exit__(self, *exc) -> None:
        _Stream.current = self._outer.pop()

    def wait_event(self, event) -> None:
        waits.append((self, event))

    def record(self, event=None):
        event = event or _Event()
        event.record(self)
        return event

    def synchronize(self) -> None:
        pass

    def begin_capture(self, *args) -> None:
        raise RuntimeError("CUDA graph capture is not emulated on the CPU")


_Stream.current = _Stream()
# (stream, event) of every wait_event, in order: the only trace of the streams' order
# here, where every call has finished when it returns; kept for one cupy_backend_on_cpu
waits: list[tuple[_Stream, _Event]] = []


class _Event:
    def __init__(self, *args, **kwargs) -> None:
        self.stream: _Stream | None = None  # where it was last recorded

    def record(self, stream=None) -> None:
        self.stream = stream or _Stream.current

    def synchronize(self) -> None:
        pass


class _CudaRuntimeError(RuntimeError):
    pass


def _uninitialised(make):
    """NumPy's ``empty`` or ``empty_like`` whose arrays hold all-ones bytes (NaN floats,
    -1 integers), as a GPU's reused memory holds anything: a kernel that reads what it
    did not write fails the tests here, instead of reading the zeros fresh host pages
    often hold."""
    @functools.wraps(make)
    def uninitialised(*args, **kwargs):
        out = make(*args, **kwargs)
        ctypes.memset(out.ctypes.data, 0xFF, out.nbytes)
        return out.view(_DeviceArray)
    return uninitialised


# The GPU the stand-in reports (CUDA's device attributes, as CuPy names them): an H100's.
# A test may set another card's before it makes a stand-in backend.
GPU = {"MultiProcessorCount": 132, "ComputeCapabilityMajor": 9, "ComputeCapabilityMinor": 0}


def _stand_in() -> types.ModuleType:
    """A ``cupy`` module: NumPy's namespace, plus what the backend takes from CuPy."""
    cupy = types.ModuleType("cupy")
    cupy.__getattr__ = _numpy_attribute  # everything else is NumPy's
    cupy.ndarray = _DeviceArray
    cupy.__version__ = "stand-in"
    cupy.RawModule = EmulatedModule
    cupy.ElementwiseKernel = EmulatedElementwiseKernel
    cupy.asnumpy = lambda a, *args, **kwargs: np.asarray(a)
    cupy.empty, cupy.empty_like = _uninitialised(np.empty), _uninitialised(np.empty_like)
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, getDevice=lambda: 0,
                                    CUDARuntimeError=_CudaRuntimeError)
    cupy.cuda = types.SimpleNamespace(
        runtime=runtime, Stream=_Stream, Event=_Event,
        get_current_stream=lambda: _Stream.current,
        Device=lambda index=0: types.SimpleNamespace(
            use=lambda: None, attributes={**GPU, "MaxSharedMemoryPerBlockOptin":
                                          cuda_on_cpu.MOST_SHARED_BYTES}),
        MemoryPool=lambda: types.SimpleNamespace(malloc=None),
        memory=types.SimpleNamespace(Memory=lambda size: types.SimpleNamespace(ptr=0)),
        using_allocator=lambda allocator=None: contextlib.nullcontext())
    return cupy


class _Cublas:
    """The cuBLAS functions kernels/cublas.py calls, on host memory, with its arguments as
    it passes them (handles, column-major operands by pointer and leading dimension,
    alpha and beta by host pointer). GemmEx's TF32 and bfloat16 compute types round the
    operands to 10 and 7 mantissa bits (to nearest, ties to even) and accumulate wider;
    bfloat16 operands (CUDA_R_16BF, their bits in uint16) are widened exactly, and a
    bfloat16 result is the float32 one rounded. Each GemmEx call's input and output
    types are kept in ``input_types`` and ``output_types`` and its (m, n, k) in
    ``shapes``, for tests to tell which products read (and write) stored bfloat16
    operands, and each strided-batched call's count in ``batch_counts``."""

    _ids = itertools.count(1)
    _ROUNDED_BITS = {77: 13, 75: 16}  # compute type -> float32 mantissa bits dropped
    _R_32F, _R_16BF, _COMPUTE_32F = 0, 14, 68

    def __init__(self) -> None:
        self.input_types: list[int] = []
        self.output_types: list[int] = []
        self.shapes: list[tuple[int, int, int]] = []  # each GemmEx call's (m, n, k)
        self.batch_counts: list[int] = []  # each strided-batched call's count

    # Named as cuBLAS names them; each returns a cuBLAS status (0: success).
    def cublasCreate_v2(self, handle_ref) -> int:
        handle_ref._obj.value = next(self._ids)
        return 0

    def cublasSetStream_v2(self, handle, stream) -> int:
        return 0

    def cublasSetMathMode(self, handle, mode) -> int:
        return 0

    def cublasSetWorkspace_v2(self, handle, pointer, size) -> int:
        return 0

    def cublasSgemm_v2(self, handle, op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                       ldc) -> int:
        return self._gemm(np.float32, op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                          ldc, 0)

    def cublasDgemm_v2(self, handle, op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                       ldc) -> int:
        return self._gemm(np.float64, op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                          ldc, 0)

    def cublasSgemmStridedBatched(self, handle, op_a, op_b, m, n, k, alpha, a, lda,
                                  stride_a, b, ldb, stride_b, beta, c, ldc, stride_c,
                                  count) -> int:
        self.batch_counts.append(count)
        size = np.dtype(np.float32).itemsize
        for i in range(count):
            self._gemm(np.float32, op_a, op_b, m, n, k, alpha, a + i * stride_a * size, lda,
                       b + i * stride_b * size, ldb, beta, c + i * stride_c * size, ldc, 0)
        return 0

    def cublasGemmEx(self, handle, op_a, op_b, m, n, k, alpha, a, a_type, lda, b, b_type,
                     ldb, beta, c, c_type, ldc, compute_type, algo) -> int:
        self.input_types.append(a_type)
        self.output_types.append(c_type)
        self.shapes.append((m, n, k))
        if (a_type, b_type) == (self._R_16BF, self._R_16BF) and (
                c_type in (self._R_32F, self._R_16BF) and compute_type == self._COMPUTE_32F):
            return self._gemm(np.float32, op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                              ldc, 0, stored=np.uint16,
                              stored_out=c_type == self._R_16BF)
        if (a_type, b_type, c_type) != (0, 0, 0) or compute_type not in self._ROUNDED_BITS:
            return 15  # CUBLAS_STATUS_NOT_SUPPORTED: only what kernels/cublas.py asks
        return self._gemm(np.float32, op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                          ldc, self._ROUNDED_BITS[compute_type])

    @staticmethod
    def _gemm(dtype, op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
              dropped_bits, stored=None, stored_out=False) -> int:
        """C (m x n) = alpha op(A) (m x k) op(B) (k x n) + beta C, all column-major, C
        of ``dtype``; A and B of ``stored`` (uint16: bfloat16 bits) where given, and C
        too where ``stored_out`` (the float32 result rounded to bfloat16; beta 0)."""
        scalar = ctypes.c_float if dtype == np.float32 else ctypes.c_double
        alpha, beta = scalar.from_address(alpha).value, scalar.from_address(beta).value
        op_a_matrix = _column_major(stored or dtype, a, lda, (m, k), op_a)
        op_b_matrix = _column_major(stored or dtype, b, ldb, (k, n), op_b)
        if stored is not None:  # bfloat16 is a float32's upper 16 bits
            op_a_matrix, op_b_matrix = ((x.astype(np.uint32) << 16).view(np.float32)
                                        for x in (op_a_matrix, op_b_matrix))
        if dropped_bits:
            op_a_matrix, op_b_matrix = (_round_mantissa(x, dropped_bits)
                                        for x in (op_a_matrix, op_b_matrix))
        product = op_a_matrix.astype(np.float64) @ op_b_matrix.astype(np.float64)
        if stored_out:
            if beta:
                return 15  # CUBLAS_STATUS_NOT_SUPPORTED here: kernels/cublas.py passes 0
            rounded = _round_mantissa((alpha * product).astype(np.float32), 16)
            out = _column_major(np.uint16, c, ldc, (m, n), 0)
            out[...] = (rounded.view(np.uint32) >> 16).astype(np.uint16)
            return 0
        out = _column_major(dtype, c, ldc, (m, n), 0)
        out[...] = alpha * product + (beta * out if beta else 0)
        return 0


def _column_major(dtype, pointer: int, ld: int, shape: tuple[int, int], op: int):
    """The (rows, cols) matrix op(X) over host memory at ``pointer``: X column-major with
    leading dimension ``ld``, transposed when ``op`` is 1."""
    rows, cols = shape
    stored_rows, stored_cols = (cols, rows) if op else (rows, cols)
    count = (stored_cols - 1) * ld + stored_rows
    itemsize = np.dtype(dtype).itemsize
    memory = np.frombuffer((ctypes.c_char * (count * itemsize)).from_address(pointer), dtype)
    strides = (ld * itemsize, itemsize) if op else (itemsize, ld * itemsize)
    return np.lib.stride_tricks.as_strided(memory, shape, strides)


def _round_mantissa(x, dropped_bits: int):
    """float32 ``x`` with its lowest ``dropped_bits`` mantissa bits rounded away (to
    nearest, ties to even), as TF32 (13) and bfloat16 (16) keep them."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    half, keep = 1 << (dropped_bits - 1), ~((1 << dropped_bits) - 1) & 0xFFFFFFFF
    odd = (bits >> dropped_bits) & 1
    rounded = ((bits + half - 1 + odd) & keep).astype(np.uint32)
    return rounded.view(np.float32)


cublas: _Cublas | None = None  # the open stand-in backend's cuBLAS (the innermost one)


@contextlib.contextmanager
def cupy_backend_on_cpu():
    """A CupyBackend over the stand-in, its modules imported afresh for it and dropped
    after, so that nothing else in the process sees the stand-in."""
    global cublas
    saved = {name: sys.modules.get(name) for name in ("cupy", *_BACKEND_MODULES)}
    outer_cublas = cublas
    try:
        for name in _BACKEND_MODULES:
            sys.modules.pop(name, None)
        sys.modules["cupy"] = _stand_in()
        cublas = _Cublas()
        waits.clear()
        importlib.import_module("kernels.cublas").use_library(cublas)
        yield importlib.import_module("kernels.cupy_backend").CupyBackend()
    finally:
        cublas = outer_cublas
        waits.clear()
        for name, kept in saved.items():
            if kept is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = kept
