"""The kernel profile's arithmetic on a hand-written trace (the profiling itself needs a
GPU: benchmarks/gpu_check.sh runs it)."""

import pytest

from benchmarks.kernel_profile import DeviceEvent, busy_us, device_events, kernel_group, summarise


def _x(name, cat, ts, dur):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 0, "tid": 7}


TRACE = {"traceEvents": [
    _x("sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize128x128x32", "kernel", 100, 30),
    _x("void lstm_forward<float>(float const*, ...)", "kernel", 140, 10),
    _x("cupy_scatter_add", "kernel", 145, 10),  # overlaps the one before it by 5 us
    _x("Memset (Device)", "gpu_memset", 160, 2),
    _x("sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize128x128x32", "kernel", 200, 30),
    _x("void lstm_forward<float>(float const*, ...)", "kernel", 240, 10),
    _x("caption_adam", "kernel", 255, 5),
    _x("cudaGraphLaunch", "cuda_runtime", 90, 3),  # a host-side call: not device time
    {"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "python"}},
]}


def test_device_events_keep_kernels_copies_and_fills_in_start_order():
    events = device_events(TRACE)
    assert [e.start_us for e in events] == [100, 140, 145, 160, 200, 240, 255]
    assert {e.category for e in events} == {"kernel", "gpu_memset"}


def test_kernels_fall_into_their_groups():
    groups = [kernel_group(e) for e in device_events(TRACE)]
    assert groups == ["cuBLAS products", "this library's kernels", "CuPy's kernels",
                      "copies and fills", "cuBLAS products", "this library's kernels",
                      "this library's kernels"]
    assert kernel_group(DeviceEvent("void cub::DeviceReduceKernel", "kernel", 0, 1)) == "other"
    for own in ("void scatter_add_rows<float>(long long const*, ...)",
                "void argmax_rows<float>(float const*, ...)"):
        assert kernel_group(DeviceEvent(own, "kernel", 0, 1)) == "this library's kernels"
    assert kernel_group(DeviceEvent("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_TNT", "kernel", 0,
                                    1)) == "cuBLAS products"


def test_busy_time_counts_overlaps_once():
    assert busy_us(device_events(TRACE)) == 30 + 15 + 2 + 30 + 10 + 5
    assert busy_us([]) == 0


def test_summary_is_per_step():
    profile = summarise(device_events(TRACE), steps=2)
    assert profile.span_us == (260 - 100) / 2
    assert profile.busy_us == 92 / 2
    assert profile.by_group == {"cuBLAS products": 30, "this library's kernels": 12.5,
                                "CuPy's kernels": 5, "copies and fills": 1}
    gemm = "sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize128x128x32"
    assert profile.by_kernel[gemm] == (30, 1)
    table = profile.table(top=2)
    assert "device busy 46.0 us of a 80.0 us span per step (57%); gaps 34.0 us" in table
    assert f"| {gemm} | 30.0 | 1 | 62% |" in table
    assert "caption_adam" not in table  # only the top 2 kernels are listed


def test_an_empty_trace_or_no_steps_is_refused():
    with pytest.raises(ValueError, match="no device events were recorded"):
        summarise([], steps=1)
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        summarise(device_events(TRACE), steps=0)
