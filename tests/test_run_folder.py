"""Runs that are never lost or mixed up: one process owns a run folder, a folder holding a
run is never reused for a new one, and files are written as ordinary files would be."""

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from captioning.atomic import atomic_path
from captioning.checkpoint import load_checkpoint
from captioning.cli import main
from captioning.training.run_folder import RunFolder, RunFolderBusy

_HOLDER = textwrap.dedent("""
    import sys, time
    from captioning.training.run_folder import RunFolder
    with RunFolder(sys.argv[1]).owned():
        print("locked", flush=True)
        time.sleep(120)
""")


def _train_command(data, out, *extra):
    return [sys.executable, "-m", "captioning", "train", "--data", str(data), "--out", str(out),
            "--cell", "rnn", "--hidden", "8", "--wordvec", "4", "--batch-size", "4",
            "--features", "pca", "--patience", "0", "--metrics-every", "0", "--no-report",
            "--samples", "0", "--print-every", "1", *extra]


def test_two_trainings_into_one_folder_the_second_fails_at_once(tiny_coco, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "CAPTION_BACKEND": "numpy"}
    first = subprocess.Popen(_train_command(tiny_coco, run, "--epochs", "400"), env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (run / "train_log.jsonl").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second could start"
        started = time.perf_counter()
        second = subprocess.run(_train_command(tiny_coco, run, "--epochs", "2"), env=env,
                                capture_output=True, text=True, timeout=60)
        assert time.perf_counter() - started < 30  # refused at once, not after training
        out, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert second.returncode == 1
    assert f"in use by process {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.returncode == 0, err
    _, state, _ = load_checkpoint(run / "checkpoint.npz")
    assert state["epoch"] == 400
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    iterations = [r["iteration"] for r in records if "loss" in r]
    assert iterations == list(range(1, 400 * 3 + 1))  # one run's log, nothing interleaved
    assert json.loads((run / "run.json").read_text())["epochs"] == 400


def test_a_killed_holder_leaves_no_lock_and_a_live_one_is_named(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusy, match=f"{folder} is in use by process {holder.pid}"):
            with RunFolder(folder).owned():
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    with RunFolder(folder).owned() as owned:  # the OS released the dead holder's lock
        assert (folder / ".lock").read_text().strip() == str(os.getpid())
        with owned.owned():  # re-entrant for the same object
            pass


def test_a_run_stopped_before_its_first_checkpoint_is_never_overwritten(tiny_coco, tmp_path,
                                                                        capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"epochs": 4}')
    (run / "train_log.jsonl").write_text('{"iteration": 1, "loss": 3.0}\n')
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["train", "--data", str(tiny_coco), "--out", str(run)]) == 1
    assert ("already holds a run (run.json, train_log.jsonl); it stopped before its first "
            "checkpoint, so it cannot be resumed") in capsys.readouterr().err
    assert main(["train", "--resume", str(run)]) == 1
    assert "has no checkpoint.npz to resume from" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"} == before


def test_a_failed_start_leaves_no_run_folder_behind(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "run")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_default_folder_names_never_collide(tmp_path):
    names = [RunFolder.new(tmp_path / "runs" / "lstm-20261127-120000").path.name
             for _ in range(3)]
    assert names == ["lstm-20261127-120000", "lstm-20261127-120000-2",
                     "lstm-20261127-120000-3"]


def test_opening_a_run_folder_removes_only_dead_writers_temporaries(tmp_path):
    folder = tmp_path / "run"
    (folder / "report").mkdir(parents=True)
    dead = folder / ".checkpoint.npz.999999999.k2j4h1.tmp"  # above any pid_max
    dead_in_report = folder / "report" / ".index.html.999999999.a1b2c3.tmp"
    alive = folder / f".best.npz.{os.getpid()}.x9y8z7.tmp"  # a write in progress
    foreign = folder / ".notes.tmp"
    for path in (dead, dead_in_report, alive, foreign):
        path.write_bytes(b"partial")
    with RunFolder(folder).owned():
        pass
    assert not dead.exists() and not dead_in_report.exists()
    assert alive.exists() and foreign.exists()


@pytest.mark.parametrize(("umask", "new_mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_writes_get_the_modes_an_ordinary_write_would(tmp_path, umask, new_mode):
    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "new.json") as tmp:
            tmp.write_text("{}")
        existing = tmp_path / "existing.json"
        existing.write_text("old")
        existing.chmod(0o640)
        with atomic_path(existing) as tmp:
            tmp.write_text("new")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == new_mode
    assert stat.S_IMODE(existing.stat().st_mode) == 0o640  # as open(path, "w") keeps it
    assert existing.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.json", "new.json"]


def test_a_report_into_a_folder_in_use_is_refused_and_elsewhere_is_written(
        tiny_coco, tmp_path, capsys, monkeypatch):
    """`captioning report` writes the run's own report/ only while holding the run
    folder's lock, so it never interleaves with a training writing there; --out goes
    elsewhere at any time."""
    from captioning.cli import main

    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no java: no METEOR (18 s)

    run = tmp_path / "run"
    assert main(_train_command(tiny_coco, run, "--epochs", "1")[3:]) == 0
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert main(["report", "--checkpoint", str(run), "--images", "2",
                     "--max-images", "4"]) == 1
        err = capsys.readouterr().err
        assert f"in use by process {holder.pid}" in err and "--out" in err
        assert "Traceback" not in err and not (run / "report").exists()
        assert main(["report", "--checkpoint", str(run), "--images", "2", "--max-images",
                     "4", "--out", str(tmp_path / "elsewhere")]) == 0
        assert (tmp_path / "elsewhere" / "index.html").is_file()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert main(["report", "--checkpoint", str(run), "--images", "2",
                 "--max-images", "4"]) == 0
    assert (run / "report" / "index.html").is_file()
