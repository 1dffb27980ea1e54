"""benchmarks/standin_training.py: the CuPy backend trained on the CPU stand-in."""

import subprocess
import sys
from pathlib import Path

import pytest

from cuda_on_cpu import COMPILER

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.standin_training", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_bad_settings_name_what_is_wrong(tmp_path):
    few = _run("--captions", "5")
    assert few.returncode == 2 and "--captions must be at least 100" in few.stderr
    elsewhere = _run("--tree", str(tmp_path))
    assert elsewhere.returncode == 2 and "is not a source tree of this project" in elsewhere.stderr


@pytest.mark.skipif(COMPILER is None, reason="no C++ compiler (g++) here to run the CUDA "
                    "kernels on the CPU; apt-get install g++")
def test_two_bf16_steps_train_and_validate():
    done = _run("--captions", "200", "--epochs", "1", "--precision", "bf16")
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    assert " bf16 seed 0: train loss " in line and ", validation loss " in line
    assert float(line.rsplit(" ", 1)[1]) > 0
