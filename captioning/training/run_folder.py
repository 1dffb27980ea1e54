"""A run's folder: its checkpoints, best model, log and settings, the lock that makes one
process its only writer, and the checks made before anything is written there.

    checkpoint.npz     the latest training checkpoint (what --resume continues)
    best.npz           the checkpoint of the lowest validation loss so far
    train_log.jsonl    one JSON record per loss line and per epoch
    run.json           the settings the run was started with (written by the CLI)
    .lock              locked (flock) by the process writing here; holds its pid
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from captioning.atomic import atomic_path, remove_leftovers

CHECKPOINT_NAME, BEST_NAME, LOG_NAME, SETTINGS_NAME, LOCK_NAME = (
    "checkpoint.npz", "best.npz", "train_log.jsonl", "run.json", ".lock")


class RunFolderBusy(OSError):
    """Another process holds the run folder's lock."""


class RunFolder:
    """The folder ``path`` of one run (created when missing)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.checkpoint = self.path / CHECKPOINT_NAME
        self.best = self.path / BEST_NAME
        self.log = self.path / LOG_NAME
        self.settings = self.path / SETTINGS_NAME
        self.made_here = False  # whether ``new`` made the folder
        self._lock_fd: int | None = None
        self._lock_depth = 0

    @classmethod
    def new(cls, path: str | os.PathLike) -> RunFolder:
        """A folder created for a new run at ``path``, or at ``path-2``, ``path-3``... if
        that is taken (by another run started in the same second, say)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ["", *(f"-{n}" for n in range(2, 1000))]:
            candidate = path.with_name(path.name + suffix)
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            folder = cls(candidate)
            folder.made_here = True
            return folder
        raise OSError(f"{path} and 998 numbered variants of it already exist; give --out")

    # ------------------------------------------------------------------ ownership
    @contextmanager
    def owned(self) -> Iterator[RunFolder]:
        """Hold the folder's lock while inside (re-entrant for this object). Taking it
        creates the folder and removes temporaries that killed writers left; if another
        process holds it, RunFolderBusy names that process at once. The OS drops the lock
        when its process dies, so a killed run never leaves the folder locked."""
        if self._lock_depth == 0:
            self._lock()
        self._lock_depth += 1
        try:
            yield self
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                os.close(self._lock_fd)  # closing the descriptor releases the lock
                self._lock_fd = None

    def _lock(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise OSError(f"cannot write to the run folder {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderBusy(f"the run folder {self.path} is in use by process {holder} "
                                "(a training run, or a report being written into it); wait "
                                "for it to end, or choose another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        remove_leftovers(self.path)

    def remove_if_unused(self) -> None:
        """Remove the folder if nothing but its lock file is in it (a run that failed to
        start); otherwise leave it as it is."""
        try:
            if {p.name for p in self.path.iterdir()} <= {LOCK_NAME}:
                (self.path / LOCK_NAME).unlink(missing_ok=True)
                self.path.rmdir()
        except OSError:
            pass  # gone already, or someone else's files arrived: leave it

    def holds_run(self) -> list[str]:
        """The files that make this folder a run's (settings, log, checkpoints)."""
        return [p.name for p in (self.settings, self.log, self.checkpoint, self.best)
                if p.exists()]

    def refuse_existing_run(self) -> None:
        """ValueError if the folder already holds a run, saying how to go on."""
        found = self.holds_run()
        if not found:
            return
        how = (f"continue it with --resume {self.path}" if self.checkpoint.exists() else
               "it stopped before its first checkpoint, so it cannot be resumed: remove the "
               "folder to start it again")
        raise ValueError(f"{self.path} already holds a run ({', '.join(found)}); {how}, or "
                         "choose another --out")

    # ------------------------------------------------------------------ writing
    def check_writable(self, need_bytes: int) -> None:
        """Create the folder and fail now, with OSError saying why, if it cannot take a
        file or has less than ``need_bytes`` free."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.path, prefix=".write-test-") as probe:
                probe.write(b"x")  # a name of its own: probes of two runs never collide
        except OSError as exc:
            raise OSError(f"cannot write to the run folder {self.path}: {exc}") from exc
        free = shutil.disk_usage(self.path).free
        if free < need_bytes:
            raise OSError(f"only {free / 1e6:.1f} MB free in {self.path}; checkpoints need "
                          f"about {need_bytes / 1e6:.1f} MB")

    def append_log(self, record: dict[str, Any]) -> None:
        """Add one JSON line to train_log.jsonl."""
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def write_settings(self, settings: dict[str, Any]) -> None:
        """run.json, replaced whole."""
        with atomic_path(self.settings) as tmp:
            tmp.write_text(json.dumps(settings, indent=2), encoding="utf-8")

    def read_settings(self) -> dict[str, Any]:
        """run.json's settings; FileNotFoundError if this is not a run folder."""
        if not self.settings.is_file():
            raise FileNotFoundError(f"{self.path} is not a run folder (no {SETTINGS_NAME}); "
                                    "give the --out folder of an earlier `captioning train`")
        try:
            settings = json.loads(self.settings.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{self.settings}: not valid JSON ({exc}); expected the "
                             "settings `captioning train` wrote") from exc
        if not isinstance(settings, dict):
            raise ValueError(f"{self.settings}: expected a JSON object of settings, got "
                             f"{type(settings).__name__}")
        return settings
