"""The persistent-kernel probe (benchmarks/persistent_probe.py): its kernel makes the
packed LSTM forward, one launch a step and one cooperative launch for all of them (run
on the CPU by tests/cuda_on_cpu.py), builds for the GPU with nothing in local memory,
and refuses sizes it does not take."""

from __future__ import annotations

import re

import numpy as np
import pytest
from test_cuda_sources import compile_log, needs_nvrtc

from benchmarks import persistent_probe as probe
from cuda_on_cpu import COMPILER, EmulatedModule


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
@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("lookup", [False, True])
def test_the_probe_kernel_makes_the_packed_lstm_forward(persistent, lookup):
    """Two tiles of rows (the second idle from step 3 on, as steps shrink), two groups of
    units, words looked up in a table or rows given; the cell state carried in registers
    across a cooperative launch's steps, or read back at each launch's first."""
    rng = np.random.default_rng(3)
    step_rows, H, V = (40, 40, 33, 17, 5), 32, 9
    P = sum(step_rows)
    words = rng.integers(0, V, P) if lookup else None
    a = rng.standard_normal((V if lookup else P, 4 * H)).astype(np.float32)
    h0 = rng.standard_normal((44, H)).astype(np.float32) / 2
    Wh = (rng.standard_normal((H, 4 * H)) / np.sqrt(H)).astype(np.float32)
    module = EmulatedModule(probe.SOURCE, enable_cooperative_groups=persistent)
    got = probe.forward(module, a, words, h0, Wh, step_rows, probe.step_starts(step_rows),
                        np, persistent)
    for g, want in zip(got, _reference(a, words, h0, Wh, step_rows)):
        np.testing.assert_allclose(g, want, rtol=2e-5, atol=2e-5)


@needs_nvrtc
def test_the_probe_kernel_builds_with_nothing_in_local_memory():
    for arch in ("sm_80", "sm_90"):
        status, log = compile_log(probe.SOURCE, "persistent_probe", [], arch,
                                  ("--ptxas-options=-v",))
        assert status == 0, log
        assert re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                          r"(\d+) bytes spill loads", log) == [("0", "0", "0")], log


def test_the_probe_refuses_sizes_its_kernel_does_not_take():
    with pytest.raises(ValueError, match="multiples of 32"):
        probe.check_sizes((4, 2), 48)
    with pytest.raises(ValueError, match="non-increasing"):
        probe.check_sizes((4, 5), 64)
    assert probe.blocks(128, 512) == 128 and probe.shared_bytes(512) == 139_776


@pytest.mark.skipif(COMPILER is None, reason="no C++ compiler (g++) here to run the CUDA "
                    "kernels on the CPU; apt-get install g++")
def test_the_probe_runs_end_to_end_on_the_cpu_stand_in(capsys):
    """The probe's command, as the GPU machine runs it, over the CuPy stand-in (which
    refuses graph capture, so every row is timed as the host issues it): both launches
    of the kernel agree with the library's forward, and each of the three rows is timed."""
    from cupy_stand_in import cupy_backend_on_cpu

    with cupy_backend_on_cpu():
        probe.main(["--batch", "40", "--hidden", "32", "--repeats", "1"])
    out = capsys.readouterr().out
    errors = re.findall(r"h (\S+), c (\S+), gates (\S+)\n", out)
    assert len(errors) == 2 and all(float(e) < 1e-5 for row in errors for e in row), out
    assert out.count("us a step") == 3 and out.count("issued by the host") == 3, out
