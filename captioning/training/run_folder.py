"""A run's folder: its checkpoints, best model, log and settings, and the checks made
before anything is written there.

    checkpoint.npz     the latest training checkpoint (what --resume continues)
    best.npz           the checkpoint of the lowest validation loss so far
    train_log.jsonl    one JSON record per loss line and per epoch
    run.json           the settings the run was started with (written by the CLI)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from captioning.atomic import atomic_path

CHECKPOINT_NAME, BEST_NAME, LOG_NAME, SETTINGS_NAME = (
    "checkpoint.npz", "best.npz", "train_log.jsonl", "run.json")


class RunFolder:
    """The folder ``path`` of one run (created when missing)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.checkpoint = self.path / CHECKPOINT_NAME
        self.best = self.path / BEST_NAME
        self.log = self.path / LOG_NAME
        self.settings = self.path / SETTINGS_NAME

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
        return json.loads(self.settings.read_text(encoding="utf-8"))
