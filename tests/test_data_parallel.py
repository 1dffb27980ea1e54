"""Data-parallel training over MPI: ``mpiexec -n 2 captioning train`` ends with the
parameters of one process on the same global batches, and an error on one rank ends the
job instead of hanging it. Each launch has a timeout, so a hang fails the test."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from backend import available_backends

MPIEXEC = shutil.which("mpiexec") or str(Path(sys.executable).with_name("mpiexec"))
try:
    import mpi4py  # noqa: F401

    HAVE_MPI = Path(MPIEXEC).exists()
except ImportError:
    HAVE_MPI = False
pytestmark = pytest.mark.skipif(not HAVE_MPI, reason='no mpi4py/mpiexec here (pip install '
                                '-e ".[mpi]"; .ci/run does)')
CAPTIONING = [sys.executable, "-m", "captioning"]


@pytest.fixture(autouse=True)
def _mpiexec_may_run_as_root(monkeypatch):
    """Open MPI's mpiexec refuses to start as root (a container, the GPU machines here)
    unless these say so; MPICH ignores them."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT", "1")
        monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")


def _train_args(data, dtype, epochs):
    return ["train", "--data", str(data), "--cell", "lstm", "--hidden", "8", "--wordvec", "4",
            "--batch-size", "4", "--features", "pca", "--dtype", dtype, "--epochs",
            str(epochs), "--metrics-every", "0", "--no-report", "--samples", "0",
            "--backend", "numpy", "--patience", "0"]


def _params(run):
    with np.load(run / "checkpoint.npz") as f:
        return {k: f[k] for k in f.files if k.startswith("param/")}


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "tolerance"), [("float64", 1e-12), ("float32", 1e-5)])
def test_two_ranks_train_to_the_parameters_of_one_process(tiny_coco, tmp_path, dtype,
                                                          tolerance):
    args = _train_args(tiny_coco, dtype, epochs=7)  # 3 steps an epoch: 21 steps
    subprocess.run([*CAPTIONING, *args, "--out", str(tmp_path / "one")], check=True,
                   capture_output=True, timeout=120)
    two = subprocess.run([MPIEXEC, "-n", "2", *CAPTIONING, *args, "--out",
                          str(tmp_path / "two")], capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr
    assert two.stdout.startswith("data-parallel over 2 ranks (MPI)\n")
    assert "gradients summed through host memory (MPI Allreduce)" in two.stdout
    assert two.stdout.count("training a lstm") == 1  # rank 0 alone prints
    one, both = _params(tmp_path / "one"), _params(tmp_path / "two")
    for name, value in one.items():
        scale = np.abs(value).max()
        assert np.abs(both[name] - value).max() <= tolerance * scale, name
    # (the trainer checks at the end that every rank holds bit for bit rank 0's parameters)


@pytest.mark.gpu
@pytest.mark.skipif(not available_backends()["cupy"].available,
                    reason=f"cupy unavailable: {available_backends()['cupy'].reason}")
@pytest.mark.parametrize(("ranks", "summing"), [
    (2, "through host memory (MPI Allreduce): 2 ranks share 1 GPU(s)"),  # one GPU here
    (1, "with NCCL, GPU 0 of 1"),
])
@pytest.mark.parametrize(("dtype", "tolerance"), [("float64", 1e-12), ("float32", 1e-5)])
def test_ranks_on_the_gpu_train_to_the_parameters_of_one_process(tiny_coco, tmp_path, ranks,
                                                                 summing, dtype, tolerance):
    args = [*_train_args(tiny_coco, dtype, epochs=7), "--backend", "cupy"]
    subprocess.run([*CAPTIONING, *args, "--out", str(tmp_path / "one")], check=True,
                   capture_output=True, timeout=180)
    many = subprocess.run([MPIEXEC, "-n", str(ranks), *CAPTIONING, *args, "--distributed",
                           "mpi", "--out", str(tmp_path / "many")], capture_output=True,
                          text=True, timeout=180)
    assert many.returncode == 0, many.stderr
    assert f"gradients summed {summing}" in many.stdout, many.stdout
    one, both = _params(tmp_path / "one"), _params(tmp_path / "many")
    for name, value in one.items():
        scale = np.abs(value).max()
        assert np.abs(both[name] - value).max() <= tolerance * scale, name


@pytest.mark.slow
def test_an_error_on_one_rank_ends_the_job_and_keeps_the_checkpoint(tiny_coco, tmp_path):
    run = tmp_path / "run"
    subprocess.run([*CAPTIONING, *_train_args(tiny_coco, "float64", 1), "--out", str(run)],
                   check=True, capture_output=True, timeout=120)
    before = (run / "checkpoint.npz").read_bytes()
    resume = ["train", "--resume", str(run), "--epochs", "50", "--no-report"]
    broken = ["train", "--resume", str(tmp_path / "no-such-run"), "--epochs", "50"]
    start = time.perf_counter()
    job = subprocess.run([MPIEXEC, "-n", "1", *CAPTIONING, *resume, ":", "-n", "1",
                          *CAPTIONING, *broken], capture_output=True, text=True, timeout=120)
    assert job.returncode != 0 and time.perf_counter() - start < 30
    assert "error: rank 1: FileNotFoundError" in job.stderr
    assert (run / "checkpoint.npz").read_bytes() == before


def _rank_pids(job: subprocess.Popen) -> dict[int, int]:
    """The processes mpiexec started for ``job``, by rank (from their PMI_RANK)."""
    ranks = {}
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            parents = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        rank = next((e[9:] for e in environ if e.startswith(b"PMI_RANK=")), None)
        if rank is not None and proc.name.isdigit() and _descends(int(parents[1]), job.pid):
            ranks[int(rank)] = int(proc.name)
    return ranks


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
    return False


@pytest.mark.slow
def test_ctrl_c_reaching_one_rank_stops_every_rank_after_the_same_step(tiny_coco, tmp_path):
    """Ctrl-C reaches the ranks at different moments (here: rank 1 alone): the ranks
    agree after each step, all stop after the same one, rank 0 saves, and the run
    resumes."""
    run = tmp_path / "run"
    args = [*_train_args(tiny_coco, "float64", 100_000), "--print-every", "100000"]
    job = subprocess.Popen([MPIEXEC, "-n", "2", *CAPTIONING, *args, "--out", str(run)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (run / "train_log.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.2)  # the log's first line: both ranks are training
        time.sleep(1.0)
        os.kill(_rank_pids(job)[1], signal.SIGINT)
        out, err = job.communicate(timeout=60)
    finally:
        job.kill()
    assert job.returncode == 130, err
    # (train() checks at its end that both ranks hold the same parameters: a rank that
    # stopped a step later would differ, and the job would fail instead)
    with np.load(run / "checkpoint.npz") as f:
        stopped_at = json.loads(str(f["state"]))["iteration"]
    assert f"interrupted on another rank at iteration {stopped_at}; saved" in out, out
    resumed = subprocess.run([*CAPTIONING, "train", "--resume", str(run), "--epochs",
                              str(stopped_at // 3 + 2), "--no-report"], capture_output=True,
                             text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.slow
def test_resume_across_rank_counts_gives_the_same_run(tiny_coco, tmp_path):
    """The global batch is what a run fixes: two ranks resumed by one process, and one
    process resumed by two ranks, end where one process alone does."""
    args = _train_args(tiny_coco, "float64", epochs=1)
    subprocess.run([*CAPTIONING, *_train_args(tiny_coco, "float64", epochs=3), "--out",
                    str(tmp_path / "whole")], check=True, capture_output=True, timeout=120)
    for name, first, then in (("two-then-one", [MPIEXEC, "-n", "2"], []),
                              ("one-then-two", [], [MPIEXEC, "-n", "2"])):
        run = tmp_path / name
        subprocess.run([*first, *CAPTIONING, *args, "--out", str(run)], check=True,
                       capture_output=True, timeout=120)
        resumed = subprocess.run([*then, *CAPTIONING, "train", "--resume", str(run),
                                  "--epochs", "3", "--no-report"], capture_output=True,
                                 text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        for key, value in _params(tmp_path / "whole").items():
            np.testing.assert_allclose(_params(run)[key], value, rtol=1e-12, atol=1e-14,
                                       err_msg=f"{name} {key}")


@pytest.mark.slow
def test_caption_on_two_ranks_writes_the_file_of_one(tmp_path):
    from captioning import CaptioningRNN
    from captioning.checkpoint import save_model
    from conftest import VOCAB

    model = CaptioningRNN({w: i for i, w in enumerate(VOCAB)}, input_dim=12, wordvec_dim=6,
                          hidden_dim=10, cell_type="lstm", seed=3)
    checkpoint = save_model(tmp_path / "model.npz", model)
    np.save(tmp_path / "f.npy", np.random.default_rng(0).random((23, 12)).astype(np.float32))
    outputs = {}
    for name, launcher in (("one", []), ("two", [MPIEXEC, "-n", "2"])):
        for fmt in ("jsonl", "coco"):
            out = tmp_path / f"{name}.{fmt}"
            done = subprocess.run([*launcher, *CAPTIONING, "caption", "--checkpoint",
                                   str(checkpoint), "--features", str(tmp_path / "f.npy"),
                                   "--out", str(out), "--chunk", "5", "--beam", "2",
                                   "--format", fmt, "--backend", "numpy"],
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            outputs[name, fmt] = out.read_text()
    assert outputs["one", "jsonl"] == outputs["two", "jsonl"]
    assert outputs["one", "coco"] == outputs["two", "coco"]
    assert len(outputs["one", "jsonl"].splitlines()) == 23
