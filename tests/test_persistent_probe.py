"""The persistent LSTM forward kernel (kernels/cuda_sources.py) and its probe
(benchmarks/persistent_probe.py): the kernel makes the packed LSTM forward, one launch
a step and one cooperative launch for all of them (run on the CPU by
tests/cuda_on_cpu.py); the probe refuses sizes the kernel does not take and runs end to
end. (tests/test_cuda_sources.py builds it for the GPU, as every module.)"""

from __future__ import annotations

import re

import numpy as np
import pytest

from backend import get_backend
from benchmarks import persistent_probe as probe
from captioning.packing import Packing
from cuda_on_cpu import COMPILER, EmulatedModule
from kernels.cuda_sources import PERSISTENT_THREADS, persistent_grid, persistent_shared_bytes


def _reference(a, words, h0, Wh, step_rows):
    """The packed forward in float64 NumPy: hs, cs, the activated gates."""
    x = a[words] if words is not None else a
    H = h0.shape[1]
    hs, cs, gates = np.empty((len(x), H)), np.empty((len(x), H)), np.empty_like(x)
    prev_h, prev_c, start = h0, np.zeros_like(h0), 0
    for n in step_rows:
        rows = slice(start, start + n)
        pre = x[rows] + prev_h[:n] @ Wh
        sig = 1 / (1 + np.exp(-pre[:, :3 * H]))
        i, f, o, g = sig[:, :H], sig[:, H:2 * H], sig[:, 2 * H:], np.tanh(pre[:, 3 * H:])
        cs[rows] = f * prev_c[:n] + i * g
        hs[rows] = o * np.tanh(cs[rows])
        gates[rows] = np.hstack([i, f, o, g])
        prev_h, prev_c, start = hs[rows], cs[rows], start + n
    return hs, cs, gates


@pytest.mark.skipif(COMPILER is None, reason="no C++ compiler (g++) here to run the CUDA "
                    "kernels on the CPU; apt-get install g++")
@pytest.mark.parametrize("cooperative", [False, True])
@pytest.mark.parametrize("lookup", [False, True])
def test_the_kernel_makes_the_packed_lstm_forward_a_step_or_all_steps_a_launch(lookup,
                                                                              cooperative):
    """Two tiles of rows (the second idle from step 3 on, as steps shrink), two groups of
    units, words looked up in a table or rows given: launched once a step (each launch
    reading its cells back from cs), and once for every step (cooperative: the cells
    carried in registers across grid barriers), against NumPy."""
    rng = np.random.default_rng(3)
    step_rows, H, V = (40, 40, 33, 17, 5), 32, 9
    P = sum(step_rows)
    words = rng.integers(0, V, P) if lookup else None
    a = rng.standard_normal((V if lookup else P, 4 * H)).astype(np.float32)
    h0 = rng.standard_normal((44, H)).astype(np.float32) / 2
    Wh = (rng.standard_normal((H, 4 * H)) / np.sqrt(H)).astype(np.float32)
    starts = Packing.of(step_rows, get_backend("numpy")).layout.starts
    if cooperative:
        kernel = EmulatedModule(probe.SOURCE).get_function("lstm_persistent_forward").kernel
        got = [np.empty((P, H), np.float32), np.empty((P, H), np.float32),
               np.empty((P, 4 * H), np.float32)]
        kernel((persistent_grid(40, H),), (PERSISTENT_THREADS,),
               (a, np.uint64(0) if words is None else words, h0, Wh, starts, got[0], got[1],
                got[2], np.zeros(1, np.uint32), np.int32(0), np.int32(len(step_rows)),
                np.int32(H)), shared_mem=persistent_shared_bytes(H),
               enable_cooperative_groups=True)
    else:
        got = probe.forward_a_launch_a_step(EmulatedModule(probe.SOURCE), a, words, h0, Wh,
                                            step_rows, starts, np)
    for g, want in zip(got, _reference(a, words, h0, Wh, step_rows)):
        np.testing.assert_allclose(g, want, rtol=2e-5, atol=2e-5)


def test_the_probe_refuses_sizes_its_kernel_does_not_take():
    with pytest.raises(ValueError, match="multiples of 32"):
        probe.check_sizes((4, 2), 48)
    with pytest.raises(ValueError, match="non-increasing"):
        probe.check_sizes((4, 5), 64)
    assert persistent_grid(128, 512) == 128


@pytest.mark.skipif(COMPILER is None, reason="no C++ compiler (g++) here to run the CUDA "
                    "kernels on the CPU; apt-get install g++")
def test_the_probe_runs_end_to_end_on_the_cpu_stand_in(capsys):
    """The probe's command, as the GPU machine runs it, over the CuPy stand-in (which
    refuses graph capture, so every row is timed as the host issues it): the backend's
    persistent steps agree with its per-step ones each way, and each of the five rows
    is timed."""
    from cupy_stand_in import cupy_backend_on_cpu

    with cupy_backend_on_cpu() as backend:
        probe.main(["--batch", "40", "--hidden", "32", "--repeats", "1"], backend)
    out = capsys.readouterr().out
    errors = re.findall(r"h (\S+), c (\S+), gates (\S+), da (\S+), dh0 (\S+), dWh (\S+)\n",
                        out)
    assert len(errors) == 1 and all(0 < float(e) < 1e-5 for e in errors[0]), out
    assert out.count("us a step") == 5 and out.count("issued by the host") == 5, out
    assert "the backend takes a product" not in out
