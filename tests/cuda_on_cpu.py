"""The CuPy backend's CUDA C kernels, run on the CPU, for the tests of machines without a
GPU (CI, most sessions): what a kernel computes, and how the backend launches it, are
then checked against NumPy everywhere, not only where a GPU is lent.

``EmulatedModule`` stands where ``cupy.RawModule`` does: the same source (from
kernels/cuda_sources.py) is compiled by the host's C++ compiler behind a prelude that
gives CUDA's built-ins a meaning on one host thread. Each thread of a block is a fiber
(entered through ``ucontext``, switched by ``_setjmp``/``_longjmp``), run in a shuffled
order between barriers, and the blocks of a grid run one after another (all at once in a
cooperative launch: ``kernel.kernel(..., enable_cooperative_groups=True)``, as CuPy's
compiled function takes it), so

- ``__shared__`` is a function-local ``static`` (one block holds it at a time), and an
  ``extern __shared__`` array the running block's dynamic shared memory (all-ones bytes
  at first, as a GPU's holds anything);
- ``__syncthreads()`` makes a fiber wait until every thread of its block arrives, and
  ``grid_sync(counter)`` until every thread of the grid does (in a cooperative launch;
  elsewhere it fails the launch, as on a GPU it may hang);
- ``__shfl_down_sync`` and ``__shfl_xor_sync`` exchange values through the warp's slots
  between two waits of its 32 threads;
- ``atomicAdd`` is a plain add (one fiber runs at a time);
- a block whose threads can never all meet at a barrier (a ``__syncthreads`` that not
  every thread reaches) fails the launch with an error instead of hanging.

A launch takes what CuPy takes (arrays by their data pointer, NumPy scalars by value,
a Python int as int64 and a float as float64, CuPy's rule) and checks each argument
against its parameter's C type, which CuPy does not: a wrong size or kind, which on a
GPU silently shifts every later argument, is a TypeError here.

``EmulatedElementwiseKernel`` stands where ``cupy.ElementwiseKernel`` does, its
operation compiled into a loop over the elements. ``launches`` counts the kernels run.

What it cannot show: speed, races that a shuffled order does not happen to expose (or
that need threads truly at once, or two blocks), and the accuracy of the GPU's own
exp/tanh (the host's are within a few ulp of them).
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import hashlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

COMPILER = shutil.which("g++") or shutil.which("c++")

PRELUDE = r"""
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <csetjmp>
#include <type_traits>
#include <ucontext.h>
#include <vector>

using std::exp; using std::log; using std::tanh; using std::sqrt; using std::fabs;

// CUDA's max and min take mixed operands; on floats they are fmax/fmin (a NaN loses).
template <typename A, typename B> inline auto max(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>) return std::fmax(C(a), C(b));
    else return a > b ? C(a) : C(b);
}
template <typename A, typename B> inline auto min(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>) return std::fmin(C(a), C(b));
    else return a < b ? C(a) : C(b);
}

inline unsigned int __float_as_uint(float x) {  // the bits, as CUDA's intrinsic gives them
    unsigned int bits;
    std::memcpy(&bits, &x, sizeof bits);
    return bits;
}
inline float __uint_as_float(unsigned int bits) {
    float x;
    std::memcpy(&x, &bits, sizeof x);
    return x;
}

struct uint3 { unsigned int x, y, z; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
typedef uint3 dim3;
uint3 threadIdx, blockIdx, blockDim, gridDim;  // set by the scheduler for each fiber
constexpr int warpSize = 32;
#define __global__
#define __launch_bounds__(...)
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static

namespace emu {

struct Barrier {  // threads that must arrive before any may go on
    unsigned needed = 0, arrived = 0;
    unsigned long long generation = 0;
};

struct Fiber {
    ucontext_t context;  // for the first entry only; every later switch is a _longjmp
    jmp_buf jump;
    std::unique_ptr<char[]> stack;  // not zeroed: the pages a fiber never uses stay unmapped
    bool started = false, done = false;
    const Barrier* barrier = nullptr;  // the barrier it waits at, and for which release
    unsigned long long generation = 0;
};

struct Block {  // the blocks that run at once: one, or a cooperative launch's whole grid
    std::vector<Fiber> fibers;  // resident block r's thread t at r * threads + t
    std::vector<Barrier> blocks;  // each resident block's __syncthreads
    Barrier grid;  // every fiber (grid_sync, in a cooperative launch)
    std::vector<Barrier> warps;  // resident block r's warp w at r * warps_per_block + w
    std::vector<unsigned long long> slots;  // one per fiber, for shuffles
    std::vector<std::vector<char>> shared;  // each resident block's dynamic shared memory
    unsigned threads = 0, warps_per_block = 0, first_block = 0;
    bool cooperative = false;
    ucontext_t scheduler_context;
    jmp_buf scheduler;
    unsigned current = 0;
    const std::function<void()>* body = nullptr;
};

Block* block = nullptr;
char* dynamic_shared = nullptr;  // the running fiber's block's (extern __shared__ arrays)
const char* misuse = nullptr;  // why a launch cannot go on, where a kernel said so

// Switches between fibers and the scheduler: swapcontext to enter a fiber the first
// time, then _setjmp/_longjmp, which (unlike swapcontext) make no system call.
void yield_to_scheduler(Fiber& me) {
    if (!_setjmp(me.jump)) _longjmp(block->scheduler, 1);
}

void resume(Block& b, Fiber& f) {
    if (!_setjmp(b.scheduler)) {
        if (f.started) _longjmp(f.jump, 1);
        f.started = true;
        swapcontext(&b.scheduler_context, &f.context);
    }
}

void wait_at(Barrier& barrier) {
    if (++barrier.arrived == barrier.needed) {  // the last to arrive releases the rest
        barrier.arrived = 0;
        ++barrier.generation;
        return;
    }
    Fiber& me = block->fibers[block->current];
    me.barrier = &barrier;
    me.generation = barrier.generation;
    yield_to_scheduler(me);  // resumed once released
    me.barrier = nullptr;
}

void fiber_main() {  // each fiber runs its thread of every block, one block at a time
    for (;;) {
        (*block->body)();
        Fiber& me = block->fibers[block->current];
        me.done = true;
        yield_to_scheduler(me);
    }
}

// Runs one block of ``threads`` fibers to the end; false if they deadlocked.
// Each pass runs the threads in a new shuffled order, so that a kernel that reads what
// another thread writes without a barrier between them sees a different answer than on
// a GPU often enough for a test to catch it, rather than never in thread order.
bool run_block(Block& b, unsigned threads) {  // (threads: of every resident block)
    static unsigned long long state = 0x9E3779B97F4A7C15ull;  // xorshift64
    auto next = [] { state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                     return state; };
    std::vector<unsigned> order(threads);
    for (unsigned t = 0; t < threads; ++t) {
        b.fibers[t].done = false;
        order[t] = t;
    }
    // Of a cooperative grid's blocks, a random half sits each pass out, so that blocks
    // run ahead of each other by barriers of their own: one that reads another block's
    // writes with no grid barrier between goes wrong often enough for a test to see it.
    const unsigned blocks = threads / b.threads;
    std::vector<char> held(blocks, 0);
    bool hold = blocks > 1;
    unsigned live = threads;
    while (live) {
        for (unsigned i = threads - 1; i > 0; --i) std::swap(order[i], order[next() % (i + 1)]);
        for (unsigned r = 0; r < blocks; ++r) held[r] = hold && (next() & 1);
        bool resumed = false;
        for (unsigned t : order) {
            Fiber& f = b.fibers[t];
            if (held[t / b.threads] || f.done ||
                (f.barrier && f.barrier->generation == f.generation)) continue;
            b.current = t;
            threadIdx = {t % b.threads, 0, 0};
            blockIdx = {b.first_block + t / b.threads, 0, 0};
            dynamic_shared = b.shared[t / b.threads].data();
            resume(b, f);
            resumed = true;
            if (f.done) --live;
        }
        if (live && !resumed) {
            if (!hold) return false;  // everyone left waits: none can go on
            hold = false;  // (the ones that can go on may all have sat out: once more)
        } else {
            hold = blocks > 1;
        }
    }
    return true;
}

// A launch of ``grid`` blocks of ``threads``, with ``shared_bytes`` of dynamic shared
// memory a block: one block after another, or (``cooperative``) every block at once, so
// that grid_sync can make them all wait for each other.
int launch(unsigned grid, unsigned threads, unsigned long long shared_bytes, bool cooperative,
           const std::function<void()>& body, char* error, int error_size) {
    static std::unique_ptr<Block> kept;  // fibers and stacks, reused by later launches
    const unsigned resident = cooperative ? grid : 1, fibers = resident * threads;
    if (!kept || kept->fibers.size() < fibers) {
        kept.reset(new Block());
        kept->fibers.resize(fibers);
        kept->slots.resize(fibers);
        for (auto& f : kept->fibers) {
            constexpr size_t stack_bytes = 1 << 16;
            f.stack.reset(new char[stack_bytes]);
            getcontext(&f.context);
            f.context.uc_stack.ss_sp = f.stack.get();
            f.context.uc_stack.ss_size = stack_bytes;
            f.context.uc_link = nullptr;
            makecontext(&f.context, fiber_main, 0);
        }
    }
    Block& b = *kept;
    b.body = &body;
    b.threads = threads;
    b.cooperative = cooperative;
    b.blocks.assign(resident, Barrier{threads});
    b.grid = Barrier{fibers};
    b.warps_per_block = (threads + 31) / 32;
    b.warps.assign(resident * b.warps_per_block, Barrier{});
    for (unsigned w = 0; w < b.warps.size(); ++w) {
        const unsigned first = 32 * (w % b.warps_per_block);
        b.warps[w].needed = std::min(32u, threads - first);
    }
    // As a GPU's, shared memory starts as whatever was there: all-ones bytes here.
    b.shared.assign(resident, std::vector<char>(std::max(shared_bytes, 1ull), (char)0xFF));
    block = &b;
    misuse = nullptr;
    blockDim = {threads, 1, 1};
    gridDim = {grid, 1, 1};
    for (unsigned g = 0; g < grid; g += resident) {
        b.first_block = g;
        if (!run_block(b, fibers)) {
            if (misuse) std::snprintf(error, error_size, "%s", misuse);
            else std::snprintf(error, error_size,
                               "block %u: its threads wait at barriers that not all of them "
                               "reach (a __syncthreads, grid_sync or a shuffle in code that "
                               "some threads skip); on a GPU this hangs or is undefined", g);
            block = nullptr;
            kept.reset();  // fibers left mid-kernel are dropped with their stacks
            return 1;
        }
    }
    block = nullptr;
    return 0;
}

}  // namespace emu

inline void __syncthreads() {
    emu::wait_at(emu::block->blocks[emu::block->current / emu::block->threads]);
}

// A barrier of every thread of the grid, which only a cooperative launch may take (on a
// GPU, other launches may not have every block running at once: it would hang). The
// CUDA source defines its own (an atomic count, under __CUDACC__); this one stands for it.
inline void grid_sync(unsigned int*) {
    if (!emu::block->cooperative) {
        emu::misuse = "grid_sync in a launch that is not cooperative: on a GPU its blocks "
                      "need not all run at once, and it may hang; launch it with "
                      "enable_cooperative_groups=True";
        static emu::Barrier never{~0u};  // waits for ever: the launch stops with the above
        emu::wait_at(never);
    }
    emu::wait_at(emu::block->grid);
}

// Loads that bypass L1 (a GPU's L1 does not see other blocks' stores): plain loads here.
template <typename T> inline T __ldcg(const T* address) { return *address; }

namespace emu {

// Lane `from` of the calling thread's warp's value (its own value where `from` is not a
// lane there), exchanged through the warp's slots between two waits of its threads.
template <typename T>
inline T shuffle(T value, unsigned from, bool valid) {
    static_assert(sizeof(T) <= sizeof(unsigned long long), "a shuffle moves 8 bytes at most");
    Block& b = *block;
    const unsigned me = b.current, lane0 = me - threadIdx.x % 32;  // (fiber indices)
    Barrier& warp = b.warps[me / b.threads * b.warps_per_block + threadIdx.x / 32];
    std::memcpy(&b.slots[me], &value, sizeof(T));
    wait_at(warp);
    T out = value;
    if (valid && from < warp.needed)
        std::memcpy(&out, &b.slots[lane0 + from], sizeof(T));
    wait_at(warp);
    return out;
}

}  // namespace emu

template <typename T>
inline T __shfl_down_sync(unsigned, T value, unsigned offset, int width = warpSize) {
    const unsigned lane = threadIdx.x % 32;
    return emu::shuffle(value, lane + offset, (lane % width) + offset < (unsigned)width);
}

template <typename T>
inline T __shfl_xor_sync(unsigned, T value, int lane_mask, int width = warpSize) {
    const unsigned lane = threadIdx.x % 32, from = lane ^ lane_mask;
    return emu::shuffle(value, from, from / width == lane / width);  // in the lane's group
}

template <typename T> inline T atomicAdd(T* address, T value) {
    const T old = *address;
    *address = old + value;
    return old;
}
"""

# C type (as written, without const) -> the NumPy dtype an argument for it must have.
_C_TYPES = {"float": np.float32, "double": np.float64, "int": np.int32,
            "unsigned short": np.uint16, "unsigned int": np.uint32, "unsigned": np.uint32,
            "long long": np.int64, "unsigned long long": np.uint64, "bool": np.bool_}
_KERNEL_NAME = r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)"
_KERNEL = re.compile(_KERNEL_NAME + r"\s*\(([^)]*)\)", re.S)
_EXTERN_C = re.compile(r'extern\s+"C"\s+' + _KERNEL_NAME)
_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+([\w ]+?)\s+(\w+)\s*\[\s*\]\s*;")
DEFAULT_SHARED_BYTES = 48 * 1024  # dynamic shared memory a launch may take unasked
# A block's most (opted in) on the emulated GPU: an H100's 232,448 bytes; a test may set
# a smaller card's (an RTX 4090's 101,376) before it makes a module.
MOST_SHARED_BYTES = 227 * 1024
MOST_COOPERATIVE_THREADS = 32768  # fibers at once (64 KiB of stack each, mostly untouched)
_BUILT: dict[str, ctypes.CDLL] = {}  # source hash -> the loaded library
_BUILD_DIR: list[Path] = []  # made on the first build, removed when the process ends
# How many times each kernel ran ("name<type>", or an elementwise kernel's name), so that
# a test can tell that the backend launched it rather than falling back to NumPy's maths.
launches: collections.Counter = collections.Counter()


class EmulationError(RuntimeError):
    """A launch that a GPU would hang on or get wrong (reported, not crashed on)."""


def parameters(source: str) -> dict[str, list[tuple[str, str]]]:
    """Every ``__global__`` function of ``source``: name -> [(C type, name)], the type as
    written (``const T*``, ``long long``...)."""
    kernels = {}
    for name, params in _KERNEL.findall(source):
        parsed = []
        for param in filter(None, (p.strip() for p in params.split(","))):
            match = re.fullmatch(r"(.*?)\s*\b(\w+)", " ".join(param.split()))
            parsed.append((match.group(1), match.group(2)))
        kernels[name] = parsed
    return kernels


def _instance(expression: str) -> tuple[str, str | None]:
    """"kernel<float>" -> ("kernel", "float"); "kernel" -> ("kernel", None)."""
    match = re.fullmatch(r"(\w+)\s*(?:<\s*([\w ]+?)\s*>)?", expression)
    if not match:
        raise ValueError(f"cannot read the kernel name {expression!r}: expected name or "
                         f"name<type>")
    return match.group(1), match.group(2)


def _concrete(ctype: str, template: str | None) -> str:
    return re.sub(r"\bT\b", template, ctype) if template else ctype


class EmulatedKernel:
    """One instance of a kernel, called as CuPy calls a RawKernel:
    ``kernel(grid, block, args, shared_mem=0)``, or through its compiled function, which
    also launches cooperatively (every block at once): ``kernel.kernel(grid, block, args,
    shared_mem=0, enable_cooperative_groups=True)``. ``max_dynamic_shared_size_bytes``
    as CuPy's: a launch with over 48 KiB of dynamic shared memory needs it set at least
    that high first, and setting it over the GPU's MOST_SHARED_BYTES fails. A
    cooperative launch of a kernel whose module has a static ``__shared__`` array is
    refused: the emulator would give every block that one array."""

    def __init__(self, library: ctypes.CDLL, symbol: str, expression: str,
                 params: list[tuple[str, str]], template: str | None,
                 static_shared: bool = False) -> None:
        self.expression, self.static_shared = expression, static_shared
        self.params = [(_concrete(ctype, template), name) for ctype, name in params]
        self.function = getattr(library, symbol)
        self.function.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_ulonglong,
                                  ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        self.function.restype = ctypes.c_int
        self._most_dynamic_shared = DEFAULT_SHARED_BYTES

    @property
    def max_dynamic_shared_size_bytes(self) -> int:
        return self._most_dynamic_shared

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, size: int) -> None:
        if size > MOST_SHARED_BYTES:  # (cuFuncSetAttribute's CUDA_ERROR_INVALID_VALUE)
            raise EmulationError(f"{self.expression}: max_dynamic_shared_size_bytes "
                                 f"{size}, over the {MOST_SHARED_BYTES} bytes this GPU "
                                 "gives a block at most")
        self._most_dynamic_shared = size

    def __call__(self, grid, block, args, shared_mem: int = 0) -> None:
        self._launch(grid, block, args, shared_mem, cooperative=False)

    @property
    def kernel(self) -> Callable[..., None]:
        """The compiled function, as CuPy's ``RawKernel.kernel``: called as
        ``(grid, block, args, shared_mem=0, stream=None, enable_cooperative_groups=False)``."""
        def function(grid, block, args, shared_mem: int = 0, stream=None,
                     enable_cooperative_groups: bool = False) -> None:
            self._launch(grid, block, args, shared_mem, enable_cooperative_groups)
        return function

    def _launch(self, grid, block, args, shared_mem: int, cooperative: bool) -> None:
        grid, block = tuple(grid), tuple(block)
        if any(d != 1 for d in grid[1:] + block[1:]):
            raise EmulationError(f"{self.expression}: only one-dimensional launches are "
                                 f"emulated, got grid {grid}, block {block}")
        if not 1 <= block[0] <= 1024 or grid[0] < 1:
            raise EmulationError(f"{self.expression}: launch of grid {grid}, block {block}: "
                                 f"a GPU takes 1 to 1024 threads a block and 1 block or more")
        if shared_mem > self.max_dynamic_shared_size_bytes:
            raise EmulationError(
                f"{self.expression}: {shared_mem} bytes of dynamic shared memory, over the "
                f"{self.max_dynamic_shared_size_bytes} allowed (set the kernel's "
                f"max_dynamic_shared_size_bytes first; a block has {MOST_SHARED_BYTES} at "
                "most on this GPU)")
        if cooperative and self.static_shared:
            raise EmulationError(f"{self.expression}: a cooperative launch from a module "
                                 "with a static __shared__ array: the emulator runs every "
                                 "block at once and would give them one array; use extern "
                                 "__shared__ (dynamic) memory")
        if cooperative and grid[0] * block[0] > MOST_COOPERATIVE_THREADS:
            raise EmulationError(f"{self.expression}: a cooperative launch of {grid[0]} x "
                                 f"{block[0]} threads; the emulator runs at most "
                                 f"{MOST_COOPERATIVE_THREADS} at once")
        if len(args) != len(self.params):
            raise TypeError(f"{self.expression} takes {len(self.params)} arguments "
                            f"({', '.join(n for _, n in self.params)}), given {len(args)}")
        values = [self._value(i, arg) for i, arg in enumerate(args)]
        pointers = (ctypes.c_void_p * len(values))(*(ctypes.addressof(v) for v in values))
        error = ctypes.create_string_buffer(512)
        launches[self.expression] += 1
        if self.function(grid[0], block[0], shared_mem, cooperative, pointers, error,
                         len(error)):
            raise EmulationError(f"{self.expression}: {error.value.decode()}")

    def _value(self, index: int, arg) -> ctypes._SimpleCData | ctypes.Array:
        """The bytes passed for argument ``index``, after checking it suits its parameter."""
        ctype, name = self.params[index]
        base = " ".join(ctype.replace("const", " ").replace("*", " ").split())
        if base not in _C_TYPES:
            raise TypeError(f"{self.expression}: the emulator does not know the C type "
                            f"{ctype!r} of parameter {name}")
        expected = np.dtype(_C_TYPES[base])
        where = f"{self.expression}: argument {index} ({name}, {ctype})"
        if ctype.endswith("*"):
            if isinstance(arg, np.ndarray):
                if arg.dtype != expected:
                    raise TypeError(f"{where} is an array of {arg.dtype}; expected {expected}")
                return ctypes.c_void_p(arg.ctypes.data)
            if isinstance(arg, np.generic) and arg.dtype.itemsize == 8 and arg == 0:
                return ctypes.c_void_p(0)  # a null pointer, as CuPy passes an 8-byte zero
            raise TypeError(f"{where} is {type(arg).__name__}; expected an array of "
                            f"{expected} (or an 8-byte zero for a null pointer)")
        if isinstance(arg, np.ndarray):
            raise TypeError(f"{where} is an array; expected a scalar of {expected}")
        if isinstance(arg, bool):
            value = np.bool_(arg)
        elif isinstance(arg, int):
            value = np.int64(arg)
        elif isinstance(arg, float):
            value = np.float64(arg)
        elif isinstance(arg, np.generic):
            value = arg
        else:
            raise TypeError(f"{where} is {type(arg).__name__}; expected a scalar of {expected}")
        if value.dtype != expected:
            shift = (f" (a GPU would take its {value.dtype.itemsize} bytes for "
                     f"{expected.itemsize} and misread every later argument)"
                     if value.dtype.itemsize != expected.itemsize else "")
            raise TypeError(f"{where} is {value.dtype}; expected {expected}{shift}")
        return ctypes.create_string_buffer(value.tobytes(), value.dtype.itemsize)


class EmulatedModule:
    """Like ``cupy.RawModule(code=..., options=..., name_expressions=...)``, compiled for
    the CPU on the first ``get_function``."""

    def __init__(self, code: str, options: tuple = (), name_expressions=()) -> None:
        self.static_shared = bool(re.search(r"(?<!extern )__shared__", code))
        self.code = code
        # CuPy finds an extern "C" kernel by its name, without a name expression.
        self.expressions = list(name_expressions) + [
            name for name in _EXTERN_C.findall(code) if name not in name_expressions]
        self.kernels = parameters(code)
        self._library: ctypes.CDLL | None = None

    def get_function(self, expression: str) -> EmulatedKernel:
        name, template = _instance(expression)
        if name not in self.kernels:
            raise KeyError(f"no __global__ function {name!r} in this module (it has "
                           f"{', '.join(self.kernels)})")
        compiled = [" ".join(e.split()) for e in self.expressions]
        if " ".join(expression.split()) not in compiled:
            raise KeyError(f"{expression!r} is not among this module's name expressions "
                           f"{self.expressions}; CuPy compiles only those")
        index = compiled.index(" ".join(expression.split()))
        return EmulatedKernel(self._build(), _symbol(index), expression, self.kernels[name],
                              template, self.static_shared)

    def _build(self) -> ctypes.CDLL:
        if self._library is None:
            self._library = build(self.code, self.expressions)
        return self._library


def _symbol(index: int) -> str:
    return f"emu_launch_{index}"


def build(source: str, expressions: list[str]) -> ctypes.CDLL:
    """``source`` and a launch function for each of ``expressions``, compiled for the
    CPU and loaded (once per source)."""
    if COMPILER is None:
        raise EmulationError("no C++ compiler (g++) on this machine to run CUDA kernels on "
                             "the CPU; install one (Debian: apt-get install g++)")
    kernels = parameters(source)
    stubs = []
    for index, expression in enumerate(expressions):
        name, template = _instance(expression)
        args = ", ".join(f"*({_concrete(ctype, template)}*)args[{i}]"
                         for i, (ctype, _) in enumerate(kernels[name]))
        call = f"{name}<{template}>({args})" if template else f"{name}({args})"
        stubs.append(f'extern "C" int {_symbol(index)}(unsigned grid, unsigned block, '
                     f"unsigned long long shared, int cooperative, void** args, char* error, "
                     f"int size) {{\n    return emu::launch(grid, block, shared, cooperative, "
                     f"[args] {{ {call}; }}, error, size);\n}}")
    # An extern __shared__ array (the launch's dynamic shared memory) points at the
    # running block's.
    source = _EXTERN_SHARED.sub(r"\1* \2 = (\1*)emu::dynamic_shared;", source)
    text = PRELUDE + source + "\n" + "\n".join(stubs) + "\n"
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    if key not in _BUILT:
        if not _BUILD_DIR:
            _BUILD_DIR.append(Path(tempfile.mkdtemp(prefix="cuda-on-cpu-")))
            atexit.register(shutil.rmtree, _BUILD_DIR[0], ignore_errors=True)
        cpp, library = _BUILD_DIR[0] / f"{key}.cpp", _BUILD_DIR[0] / f"{key}.so"
        cpp.write_text(text)
        # No _FORTIFY_SOURCE: its checked longjmp refuses to jump between fiber stacks.
        result = subprocess.run([COMPILER, "-std=c++17", "-O1", "-U_FORTIFY_SOURCE", "-shared",
                                 "-fPIC", "-o", str(library), str(cpp)], capture_output=True,
                                text=True, timeout=300)
        if result.returncode:
            raise EmulationError(f"the CUDA source did not compile for the CPU:\n"
                                 f"{result.stderr[-4000:]}")
        _BUILT[key] = ctypes.CDLL(str(library))
    return _BUILT[key]


class EmulatedElementwiseKernel:
    """Like ``cupy.ElementwiseKernel(in_params, out_params, operation, name)`` for the
    cases this project uses: array arguments of one shape and dtype, of any strides (run
    on contiguous copies, the outputs copied back), scalars for the other ``T`` inputs
    (cast to T, as CuPy casts them), ``raw`` arguments indexed by the operation itself;
    the outputs are given, and returned."""

    def __init__(self, in_params: str, out_params: str, operation: str, name: str = "kernel",
                 **_options) -> None:
        self.inputs, self.outputs = _elementwise_params(in_params), _elementwise_params(out_params)
        self.operation, self.name = operation, name

    def __call__(self, *args):
        params = self.inputs + self.outputs
        if len(args) != len(params):
            raise TypeError(f"{self.name} takes {len(params)} arguments (the outputs given: "
                            f"only that is emulated), given {len(args)}")
        kinds = tuple("raw" if raw else "array" if isinstance(a, np.ndarray) else "scalar"
                      for (raw, _, _), a in zip(params, args))
        arrays = [a for kind, a in zip(kinds, args) if kind == "array"]
        if not arrays:
            raise TypeError(f"{self.name}: no array among the elementwise arguments")
        shape, dtype = arrays[0].shape, arrays[0].dtype
        if dtype not in (np.float32, np.float64):
            raise EmulationError(f"{self.name}: only float32 and float64 are emulated, got "
                                 f"{dtype}")
        for (raw, _, name), a in zip(params, args):
            if isinstance(a, np.ndarray) and (a.dtype != dtype or (a.shape != shape and not raw)):
                raise EmulationError(f"{self.name}: argument {name} is {a.shape} {a.dtype}; "
                                     f"the emulator takes arrays of one shape and dtype "
                                     f"({shape} {dtype}), no broadcasting")
        contiguous = [np.ascontiguousarray(a) if kind != "scalar" else a
                      for kind, a in zip(kinds, args)]
        ctype = "float" if dtype == np.float32 else "double"
        library = build(self._source(ctype, kinds), [])
        values = [ctypes.create_string_buffer(dtype.type(a).tobytes(), dtype.itemsize)
                  if kind == "scalar" else ctypes.c_void_p(a.ctypes.data)
                  for kind, a in zip(kinds, contiguous)]
        pointers = (ctypes.c_void_p * len(values))(*(ctypes.addressof(v) for v in values))
        launches[self.name] += 1
        library.emu_elementwise(ctypes.c_longlong(int(np.prod(shape))), pointers)
        outputs = args[len(self.inputs):]
        for out, result in zip(outputs, contiguous[len(self.inputs):]):
            if result is not out:  # a strided output was run on a copy
                out[...] = result
        return outputs[0] if len(outputs) == 1 else outputs

    def _source(self, ctype: str, kinds: tuple[str, ...]) -> str:
        declarations, per_element = [], []
        for i, ((_, type_name, name), kind) in enumerate(zip(self.inputs + self.outputs, kinds)):
            is_output = i >= len(self.inputs)
            if kind == "raw":
                declarations.append(f"{type_name}* {name} = *({type_name}**)args[{i}];")
            elif kind == "scalar":
                declarations.append(f"const {type_name} {name} = *({type_name}*)args[{i}];")
            else:
                declarations.append(f"{type_name}* p_{name} = *({type_name}**)args[{i}];")
                per_element.append(f"{type_name}& {name} = p_{name}[i];" if is_output
                                   else f"const {type_name} {name} = p_{name}[i];")
        return (f"typedef {ctype} T;\n"
                f'extern "C" void emu_elementwise(long long n, void** args) {{\n'
                + "\n".join(declarations)
                + "\nfor (long long i = 0; i < n; ++i) {\n" + "\n".join(per_element)
                + f"\n{self.operation};\n}}\n}}\n")  # CuPy ends the operation too


def _elementwise_params(text: str) -> list[tuple[bool, str, str]]:
    """"T a, raw T b" -> [(False, "T", "a"), (True, "T", "b")]."""
    params = []
    for param in filter(None, (p.strip() for p in text.split(","))):
        words = param.split()
        raw = words[0] == "raw"
        if raw:
            words = words[1:]
        if len(words) != 2:
            raise ValueError(f"cannot read the elementwise parameter {param!r}")
        params.append((raw, words[0], words[1]))
    return params
