"""Matrix products on the GPU by calling cuBLAS directly (ctypes), for the CuPy backend.

Why not ``cupy.matmul``: CuPy refuses every cuBLAS call while a stream is being
captured into a CUDA graph (its ``setStream`` raises NotImplementedError; see
cupy/cupy#6290), and the training step is replayed from such a graph. cuBLAS itself
supports capture (cuBLAS docs, "CUDA Graphs Support") given a workspace of its own, set
here once, so nothing is allocated during a capture. A direct call also costs the host
less than ``cupy.matmul``'s checks and dispatch, which paces small batches.

One handle per device, created on first use, and one more for each stream that runs
beside others (``give_own_handle``): two streams must not share one workspace (cuBLAS
docs, "cublasSetWorkspace"). With ``CUPY_TF32=1`` the handles allow TF32 tensor-core
maths, as ``cupy.matmul`` does under that variable.

Reduced precision (``precision`` "tf32" or "bf16", float32 operands only) calls
``cublasGemmEx`` with the compute type ``CUBLAS_COMPUTE_32F_FAST_TF32`` or
``CUBLAS_COMPUTE_32F_FAST_16BF``: the operands stay float32 in memory, cuBLAS rounds
them to TF32 or bfloat16 for the tensor cores and accumulates in float32, and the
result is float32 (cuBLAS docs, "cublasGemmEx", "cublasComputeType_t"). The "FAST"
types allow the conversion rather than require it: on an H200 (CUDA 12, session 11) the
bf16 products ran as TF32 kernels, at tf32's speed. Operands stored in bfloat16 (``BF16``
arrays: the bits, in uint16, as kernels/cuda_sources.py writes them) are multiplied as
they are, by ``cublasGemmEx`` with ``CUDA_R_16BF`` inputs, float32 accumulation
(``CUBLAS_COMPUTE_32F``) and a float32 result (or a bfloat16 one, where the result is
itself an operand kept so): the bf16 tensor-core kernels, reading half the bytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import cupy as cp

_OP_N, _OP_T = 0, 1
_GEMM = {"f": "cublasSgemm_v2", "d": "cublasDgemm_v2"}
_TF32_TENSOR_OP_MATH = 3
_CUDA_R_32F, _CUDA_R_16BF = 0, 14  # cudaDataType_t
_COMPUTE_32F = 68  # cublasComputeType_t: float32 accumulation of any input type
BF16 = "uint16"  # the dtype of arrays holding bfloat16 operands, as their bits
_GEMM_DEFAULT = -1  # cublasGemmAlgo_t: cuBLAS's heuristics pick the kernel
# precision -> cublasComputeType_t for float32 operands (None: plain cublasSgemm)
COMPUTE_TYPES = {"fp32": None, "tf32": 77, "bf16": 75}
_WORKSPACE_BYTES = 32 << 20  # cuBLAS's recommendation for Hopper


def _library() -> ctypes.CDLL:
    """The libcublas that CuPy loaded (found in this process's memory map once CuPy has
    made its own handle), so both use one library; else the system's."""
    cp.cuda.device.get_cublas_handle()  # CuPy may load the library only when first needed
    candidates = []
    try:
        with open("/proc/self/maps") as maps:
            candidates = sorted({line.split()[-1] for line in maps
                                 if os.path.basename(line.split()[-1]).startswith("libcublas.so")})
    except OSError:
        pass
    candidates += [ctypes.util.find_library("cublas") or "", "libcublas.so.13",
                   "libcublas.so.12", "libcublas.so.11", "libcublas.so"]
    errors = []
    for name in filter(None, candidates):
        try:
            return ctypes.CDLL(name)
        except OSError as exc:
            errors.append(f"{name}: {exc}")
    raise OSError(f"libcublas could not be loaded ({'; '.join(errors) or 'not found'}); "
                  f"CuPy {cp.__version__} needs it too: install the CUDA toolkit's "
                  "libraries or CuPy's matching CUDA wheel")


_PTR, _INT = ctypes.c_void_p, ctypes.c_int
_SIGNATURES = {  # name -> argument types; every function returns a status (int)
    "cublasCreate_v2": [ctypes.POINTER(_PTR)],
    "cublasSetStream_v2": [_PTR, _PTR],
    "cublasSetMathMode": [_PTR, _INT],
    "cublasSetWorkspace_v2": [_PTR, _PTR, ctypes.c_size_t],  # cuBLAS >= 11.4
    "cublasSgemm_v2": [_PTR, _INT, _INT, _INT, _INT, _INT, _PTR, _PTR, _INT, _PTR, _INT,
                       _PTR, _PTR, _INT],
}
_SIGNATURES["cublasDgemm_v2"] = _SIGNATURES["cublasSgemm_v2"]
_LONG = ctypes.c_longlong
_SIGNATURES["cublasSgemmStridedBatched"] = [_PTR, _INT, _INT, _INT, _INT, _INT, _PTR, _PTR,
                                            _INT, _LONG, _PTR, _INT, _LONG, _PTR, _PTR, _INT,
                                            _LONG, _INT]
_SIGNATURES["cublasGemmEx"] = [_PTR, _INT, _INT, _INT, _INT, _INT, _PTR, _PTR, _INT, _INT,
                               _PTR, _INT, _INT, _PTR, _PTR, _INT, _INT, _INT, _INT]
_FUNCTIONS: dict[str, object] = {}  # filled on first use by _functions()
_GIVEN_LIBRARY: list[object] = []  # what use_library was given, if anything


def use_library(library: object) -> None:
    """Take the cuBLAS functions this module calls from the attributes of ``library``
    (as a ctypes.CDLL has them) instead of loading libcublas on the first product: a
    stand-in, where there is no GPU (tests/cupy_stand_in.py). Call it before the first
    product."""
    if _FUNCTIONS:
        raise RuntimeError("cuBLAS's functions are already loaded: use_library must come "
                           "before the first product")
    _GIVEN_LIBRARY[:] = [library]


def _functions() -> dict[str, object]:
    """The cuBLAS functions used here, loaded once (on the first product, so importing
    this module needs no library)."""
    if not _FUNCTIONS:
        lib = _GIVEN_LIBRARY[0] if _GIVEN_LIBRARY else _library()
        for name, argtypes in _SIGNATURES.items():
            function = getattr(lib, name, None)
            if hasattr(function, "argtypes"):  # a C function, typed once
                function.argtypes, function.restype = argtypes, _INT
            _FUNCTIONS[name] = function
    return _FUNCTIONS


# Host-side alpha = 1 and beta = 0 (pointer mode host: read when the call is made).
_ONE_ZERO = {"f": (ctypes.c_float(1), ctypes.c_float(0)),
             "d": (ctypes.c_double(1), ctypes.c_double(0))}
_ONE_ZERO_REF = {c: tuple(ctypes.addressof(x) for x in pair) for c, pair in _ONE_ZERO.items()}
# (device id, the stream's pointer if it has a handle of its own, else 0) ->
# (handle, its workspace)
_HANDLES: dict[tuple[int, int], tuple[int, object]] = {}
_OWN_HANDLE_STREAMS: set[int] = set()  # pointers of the streams given one


def give_own_handle(stream: cp.cuda.Stream) -> None:
    """Make the products issued on ``stream`` use a cuBLAS handle and workspace of their
    own (created with its first product), so that they may run beside those of other
    streams."""
    _OWN_HANDLE_STREAMS.add(stream.ptr)


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"cuBLAS {what} failed with status {status}")


def _handle(stream: int) -> int:
    """The handle for products on the stream with pointer ``stream``, on this device."""
    key = (cp.cuda.runtime.getDevice(), stream if stream in _OWN_HANDLE_STREAMS else 0)
    if key not in _HANDLES:
        f = _functions()
        handle = _PTR()
        _check(f["cublasCreate_v2"](ctypes.byref(handle)), "cublasCreate")
        workspace = None
        if f["cublasSetWorkspace_v2"] is not None:
            # A plain allocation of its own: never handed back to a memory pool.
            workspace = cp.cuda.memory.Memory(_WORKSPACE_BYTES)
            _check(f["cublasSetWorkspace_v2"](handle, workspace.ptr, _WORKSPACE_BYTES),
                   "SetWorkspace")
        if os.environ.get("CUPY_TF32") == "1":
            _check(f["cublasSetMathMode"](handle, _TF32_TENSOR_OP_MATH), "SetMathMode")
        _HANDLES[key] = (handle.value, workspace)
    return _HANDLES[key][0]


def _layout(x) -> tuple[int, int] | None:
    """How column-major cuBLAS reads the row-major matrix ``x`` (2-D) transposed:
    (operation, leading dimension), or None when neither axis has unit stride."""
    (rows, cols), (s0, s1), size = x.shape, x.strides, x.itemsize
    if s1 == size and s0 % size == 0 and s0 // size >= max(cols, 1):
        return _OP_N, s0 // size  # rows are contiguous: memory holds x^T column-major
    if s0 == size and s1 % size == 0 and s1 // size >= max(rows, 1):
        return _OP_T, s1 // size  # a transposed view: memory holds x column-major
    return None


def gemm(a, b, out, precision: str = "fp32") -> bool:
    """out (M, N) = a (M, K) @ b (K, N) by one cuBLAS call on the current stream; False
    (nothing done) when the operands do not suit one: a dtype other than float32,
    float64 or ``BF16``, mixed dtypes, or no unit-stride axis. ``precision`` "tf32" or
    "bf16" (float32 operands only) multiplies on the tensor cores in that format with
    float32 accumulation; "fp32" is full float32 (or whatever ``CUPY_TF32`` set).
    ``BF16`` operands (both) are multiplied in bfloat16 with float32 accumulation into
    a float32 ``out``, or a ``BF16`` one (the sums rounded once), whatever
    ``precision`` says.

    Row-major C = A B is column-major C^T = B^T A^T, so cuBLAS gets b first.
    """
    if precision not in COMPUTE_TYPES:
        raise ValueError(f"unknown precision {precision!r}; expected one of "
                         f"{', '.join(COMPUTE_TYPES)}")
    char = a.dtype.char
    out_type = _CUDA_R_32F
    if a.dtype == BF16:
        compute_type, in_type, out_char = _COMPUTE_32F, _CUDA_R_16BF, "f"
        if out.dtype == BF16:  # rounded to bfloat16 once, from the float32 sums
            out_type, out_char = _CUDA_R_16BF, out.dtype.char
    else:
        compute_type, in_type, out_char = COMPUTE_TYPES[precision], _CUDA_R_32F, char
        if compute_type is not None and char != "f":
            raise ValueError(f"precision {precision!r} multiplies float32 operands; "
                             f"got {a.dtype}")
        if char not in _GEMM:
            return False
    if (b.dtype.char != char or out.dtype.char != out_char
            or a.ndim != 2 or b.ndim != 2 or out.ndim != 2):
        return False
    la, lb, lc = _layout(a), _layout(b), _layout(out)
    if la is None or lb is None or lc is None or lc[0] != _OP_N:
        return False
    (m, k), n = a.shape, b.shape[1]
    if b.shape[0] != k or out.shape != (m, n):
        raise ValueError(f"matmul of shapes {a.shape} and {b.shape} into {out.shape}: "
                         f"expected (M, K) @ (K, N) into (M, N)")
    if m == 0 or n == 0:
        return True
    if k == 0:
        out.fill(0)
        return True
    stream = cp.cuda.get_current_stream().ptr
    handle, f = _handle(stream), _FUNCTIONS
    _check(f["cublasSetStream_v2"](handle, stream), "SetStream")
    if compute_type is not None:  # (alpha and beta: float32, as the float32 sums)
        one, zero = _ONE_ZERO_REF["f"]
        _check(f["cublasGemmEx"](handle, lb[0], la[0], n, m, k, one, b.data.ptr, in_type,
                                 lb[1], a.data.ptr, in_type, la[1], zero, out.data.ptr,
                                 out_type, lc[1], compute_type, _GEMM_DEFAULT), "GemmEx")
        return True
    one, zero = _ONE_ZERO_REF[out_char]
    _check(f[_GEMM[char]](handle, lb[0], la[0], n, m, k, one, b.data.ptr, lb[1], a.data.ptr,
                       la[1], zero, out.data.ptr, lc[1]), "gemm")
    return True


def gemm_parts(a, b, parts) -> bool:
    """parts (S, M, N) = the S products a[:, Ks] @ b[Ks, :] of a (M, K) @ b (K, N), Ks
    the s-th of S equal chunks of K (S divides K): the product split along K, whose sum
    is a @ b, by one strided-batched cuBLAS call on the current stream. Why: a product
    of few output tiles (a small batch's recurrent step) leaves most SMs idle, and S
    parts make S times the blocks. float32 in full precision (whatever ``CUPY_TF32``
    set) only: False (nothing done) for other dtypes or layouts."""
    if not (a.dtype == b.dtype == parts.dtype == "float32" and a.ndim == b.ndim == 2
            and parts.ndim == 3):
        return False
    (m, k), n, count = a.shape, b.shape[1], parts.shape[0]
    if b.shape[0] != k or parts.shape[1:] != (m, n) or count == 0 or k % count:
        raise ValueError(f"{parts.shape[0]} parts of shapes {a.shape} @ {b.shape} into "
                         f"{parts.shape}: expected (M, K) @ (K, N) into (S, M, N), S "
                         f"dividing K")
    la, lb, lc = _layout(a), _layout(b), _layout(parts[0])
    size = a.itemsize
    if (la is None or lb is None or lc is None or lc[0] != _OP_N
            or parts.strides[0] % size or m == 0 or n == 0):
        return False
    chunk = k // count
    stream = cp.cuda.get_current_stream().ptr
    handle, f = _handle(stream), _FUNCTIONS
    _check(f["cublasSetStream_v2"](handle, stream), "SetStream")
    one, zero = _ONE_ZERO_REF["f"]
    # Column-major, as gemm: cuBLAS gets b first; a part's chunk starts `chunk` steps
    # down K, which is b's first axis and a's second.
    _check(f["cublasSgemmStridedBatched"](
        handle, lb[0], la[0], n, m, chunk, one,
        b.data.ptr, lb[1], chunk * (b.strides[0] // size),
        a.data.ptr, la[1], chunk * (a.strides[1] // size), zero,
        parts.data.ptr, lc[1], parts.strides[0] // size, count), "SgemmStridedBatched")
    return True
