"""Every CUDA source of the CuPy backend compiles, checked without a GPU: NVRTC (NVIDIA's
runtime compiler, a wheel from the package index: ``pip install -e ".[cuda-compile]"``,
which .ci/run installs) builds each module for the Ampere and Hopper generations, as
CuPy will on the first call. The kernels' results are checked against NumPy on a GPU
(the ``gpu`` tests); this catches, on every machine, a kernel that would not build."""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from pathlib import Path

import pytest

from kernels.cuda_sources import MODULES, OPTIONS, name_expressions

# Tesla T4 (Colab); A100; RTX 30 and A6000; H100 and H200
ARCHITECTURES = ("compute_75", "compute_80", "compute_86", "compute_90")


def _nvrtc() -> ctypes.CDLL | None:
    """NVRTC from the nvidia-cuda-nvrtc wheel, else the system's; None where neither is."""
    candidates = []
    try:
        import nvidia.cuda_nvrtc as wheel

        for folder in wheel.__path__:
            candidates += sorted(str(p) for p in Path(folder, "lib").glob("libnvrtc.so*"))
    except ImportError:
        pass
    candidates.append(ctypes.util.find_library("nvrtc") or "")
    for name in filter(None, candidates):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


NVRTC = _nvrtc()


def compile_log(source: str, name: str, expressions: list[str], arch: str,
                extra_options: tuple[str, ...] = ()) -> tuple[int, str]:
    """(NVRTC's status, its log) for compiling ``source`` with the template instances
    ``expressions`` for ``arch``, with the options CuPy is given (and ``extra_options``)."""
    program = ctypes.c_void_p()
    status = NVRTC.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(),
                                      0, None, None)
    assert status == 0, f"nvrtcCreateProgram failed with status {status}"
    try:
        for expression in expressions:
            assert NVRTC.nvrtcAddNameExpression(program, expression.encode()) == 0
        options = [o.encode() for o in (*OPTIONS, f"--gpu-architecture={arch}",
                                        *extra_options)]
        status = NVRTC.nvrtcCompileProgram(program, len(options),
                                           (ctypes.c_char_p * len(options))(*options))
        size = ctypes.c_size_t()
        NVRTC.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        NVRTC.nvrtcGetProgramLog(program, log)
        return status, log.value.decode(errors="replace")
    finally:
        NVRTC.nvrtcDestroyProgram(ctypes.byref(program))


needs_nvrtc = pytest.mark.skipif(
    NVRTC is None, reason='NVRTC is not installed here: pip install -e ".[cuda-compile]"')


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_cuda_module_compiles(module, arch):
    source, kernels = MODULES[module]
    status, log = compile_log(source, module, name_expressions(kernels), arch)
    assert status == 0, f"module {module!r} does not compile for {arch}:\n{log}"


@needs_nvrtc
@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_kernel_keeps_values_in_local_memory(module):
    """ptxas (through NVRTC, for the H100/H200's sm_90) gives no kernel a stack frame or
    spills. Local memory is per-thread DRAM: the one-launch Adam once copied its
    arguments into local arrays, a 320-byte frame per thread, and took 145-157 us on an
    H200 where the eight launches it replaced took 54."""
    source, kernels = MODULES[module]
    status, log = compile_log(source, module, name_expressions(kernels), "sm_90",
                              ("--ptxas-options=-v",))
    assert status == 0, log
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                        r"(\d+) bytes spill loads", log)
    assert len(frames) == len(name_expressions(kernels)), log  # one line per instance
    assert all(sizes == ("0", "0", "0") for sizes in frames), log


@needs_nvrtc
def test_a_kernel_that_does_not_build_is_reported():
    source, kernels = MODULES["scatter"]
    broken = source.replace("sum += widened(picked[u])", "sum += widened(pick[u])")
    assert broken != source
    status, log = compile_log(broken, "scatter", name_expressions(kernels), ARCHITECTURES[-1])
    assert status != 0 and 'identifier "pick" is undefined' in log
