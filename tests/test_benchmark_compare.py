"""benchmarks.compare on files that pytest-benchmark itself saved."""

import json
import subprocess
import sys

import pytest

from benchmarks.compare import main

BENCHMARKS = '''
import time
import pytest

@pytest.mark.benchmark(group="train-step")
@pytest.mark.parametrize("name", ["fast", "slow"])
def test_step(benchmark, name):
    benchmark.extra_info["captions"] = 128
    benchmark.pedantic(time.sleep, (0.001 if name == "fast" else 0.004,), rounds=3)

@pytest.mark.benchmark(group="no-captions")
def test_other(benchmark):
    benchmark.pedantic(time.sleep, (0.001,), rounds=2)
'''


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Two real pytest-benchmark JSON files of the same tiny suite: 'laptop' and 'gpu'
    (the second with the GPU name the benchmark suite's conftest adds)."""
    folder = tmp_path_factory.mktemp("bench")
    (folder / "test_tiny.py").write_text(BENCHMARKS)
    files = []
    for name in ("laptop", "gpu"):
        path = folder / f"0001_{name}.json"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(folder / "test_tiny.py"), f"--benchmark-json={path}"],
                       check=True, capture_output=True, timeout=120, cwd=folder)
        files.append(path)
    saved = json.loads(files[1].read_text())
    saved["machine_info"]["gpu"] = "NVIDIA H200"
    files[1].write_text(json.dumps(saved))
    return files


def test_the_table_puts_each_benchmark_of_both_runs_side_by_side(saved, tmp_path, capsys):
    png = tmp_path / "chart.png"
    assert main([str(p) for p in saved] + ["--png", str(png)]) == 0
    out = capsys.readouterr().out
    header, rule, *rows = out.split("\n\n")[0].splitlines()
    assert "laptop (" in header and "gpu (NVIDIA H200) captions/s" in header
    assert rule.count("---") == 6 and len(rows) == 3
    fast = next(r for r in rows if "test_step[fast]" in r).strip("| ").split(" | ")
    slow = next(r for r in rows if "test_step[slow]" in r).strip("| ").split(" | ")
    assert fast[0] == "train-step"
    # 128 captions over a call of >= 1 ms (4 ms): at most 128,000 (32,000) per second
    for cells, floor_ms in ((fast, 1.0), (slow, 4.0)):
        ms, per_second = float(cells[2]), float(cells[3].replace(",", ""))
        assert ms >= floor_ms and per_second == pytest.approx(128 / ms * 1e3, rel=1e-3)
    other = next(r for r in rows if "test_other" in r).strip("| ").split(" | ")
    assert float(other[2]) >= 1.0 and other[3] == ""  # no captions: no rate
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "bar chart (4 bars)" in out  # 2 benchmarks with captions x 2 runs


def test_a_file_that_is_not_a_saved_benchmark_is_named(saved, tmp_path, capsys):
    bad = tmp_path / "notes.json"
    bad.write_text('{"runs": []}')
    assert main([str(saved[0]), str(bad), "--png", str(tmp_path / "c.png")]) == 1
    err = capsys.readouterr().err
    assert "notes.json: holds no 'benchmarks' list" in err
    assert not (tmp_path / "c.png").exists()
    bad.write_text("not json")
    assert main([str(bad)]) == 1 and "notes.json: not JSON" in capsys.readouterr().err
    assert main([str(tmp_path / "absent.json")]) == 1
    assert "absent.json: cannot be read" in capsys.readouterr().err
