"""The CuPy backend (kernels/cupy_backend.py) run on the CPU, as written, over a stand-in
for the ``cupy`` package: arrays are NumPy arrays, the raw and elementwise kernels are
the backend's own CUDA C run by tests/cuda_on_cpu.py, matrix products are NumPy's, and
streams and events keep no time (work runs when issued, so ``beside`` is in order).
What this checks on a machine without a GPU: every line of the backend that chooses a
kernel, shapes its launch and passes its arguments, and the kernels' results, through
the same model code a GPU runs. What it cannot: cuBLAS itself, CUDA graphs (recording
is refused, as where capture fails), memory pools, NCCL, and anything about speed.

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

from cuda_on_cpu import EmulatedElementwiseKernel, EmulatedModule

_BACKEND_MODULES = ("kernels.cuda_graph", "kernels.cublas", "kernels.cupy_backend")


class _DeviceArray(np.ndarray):
    """A NumPy array with what the backend uses of a CuPy array's memory: ``data.ptr``
    and copies from the host."""

    @property
    def data(self) -> _Memory:
        return _Memory(self.ctypes.data)


class _Memory:
    def __init__(self, ptr: int) -> None:
        self.ptr = ptr

    def copy_from_host_async(self, src: int, nbytes: int, stream=None) -> None:
        ctypes.memmove(self.ptr, src, nbytes)


# NumPy's functions that make arrays: the stand-in's make device arrays (views of them;
# slices, ufuncs and the *_like functions keep the subclass by themselves).
_MAKERS = ("array", "asarray", "ascontiguousarray", "empty", "zeros", "ones", "full",
           "arange", "concatenate", "stack")


def _device(make):
    @functools.wraps(make)
    def made(*args, **kwargs):
        result = make(*args, **kwargs)
        return result.view(_DeviceArray) if type(result) is np.ndarray else result
    return made


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
        pass

    def record(self, event=None):
        return event or _Event()

    def synchronize(self) -> None:
        pass

    def begin_capture(self, *args) -> None:
        raise RuntimeError("CUDA graph capture is not emulated on the CPU")


_Stream.current = _Stream()


class _Event:
    def __init__(self, *args, **kwargs) -> None:
        pass

    def record(self, stream=None) -> None:
        pass

    def synchronize(self) -> None:
        pass


class _CudaRuntimeError(RuntimeError):
    pass


def _stand_in() -> types.ModuleType:
    """A ``cupy`` module: NumPy's namespace, plus what the backend takes from CuPy."""
    cupy = types.ModuleType("cupy")
    cupy.__getattr__ = lambda name: getattr(np, name)  # everything else is NumPy's
    for name in _MAKERS:
        setattr(cupy, name, _device(getattr(np, name)))
    cupy.ndarray = _DeviceArray
    cupy.__version__ = "stand-in"
    cupy.RawModule = EmulatedModule
    cupy.ElementwiseKernel = EmulatedElementwiseKernel
    cupy.asnumpy = lambda a, *args, **kwargs: np.asarray(a)
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, getDevice=lambda: 0,
                                    CUDARuntimeError=_CudaRuntimeError)
    cupy.cuda = types.SimpleNamespace(
        runtime=runtime, Stream=_Stream, Event=_Event,
        get_current_stream=lambda: _Stream.current,
        Device=lambda index=0: types.SimpleNamespace(use=lambda: None),
        MemoryPool=lambda: types.SimpleNamespace(malloc=None),
        using_allocator=lambda allocator=None: contextlib.nullcontext())
    return cupy


def _numpy_gemm(a, b, out, precision: str = "fp32") -> bool:
    """kernels.cublas.gemm's contract, by NumPy (full precision whatever it is asked)."""
    np.matmul(a, b, out=out)
    return True


@contextlib.contextmanager
def cupy_backend_on_cpu():
    """A CupyBackend over the stand-in, its modules imported afresh for it and dropped
    after, so that nothing else in the process sees the stand-in."""
    saved = {name: sys.modules.get(name) for name in ("cupy", *_BACKEND_MODULES)}
    try:
        for name in _BACKEND_MODULES:
            sys.modules.pop(name, None)
        sys.modules["cupy"] = _stand_in()
        module = importlib.import_module("kernels.cupy_backend")
        module.gemm = _numpy_gemm
        yield module.CupyBackend()
    finally:
        for name, kept in saved.items():
            if kept is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = kept
