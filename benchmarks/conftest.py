"""pytest-benchmark settings shared by the benchmark suite."""

from backend import available_backends


def pytest_benchmark_update_machine_info(config, machine_info):
    """Name the GPU in the saved machine info where CuPy runs, so that a comparison
    (benchmarks/compare.py) says which card gave the CuPy rows."""
    if available_backends()["cupy"].available:
        import cupy

        properties = cupy.cuda.runtime.getDeviceProperties(0)
        machine_info["gpu"] = properties["name"].decode()
