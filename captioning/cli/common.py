"""What the commands share: finding a run's checkpoint and settings, loading its data."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backend import AUTO, ENV_VAR, PRECISION_ENV_VAR, PRECISIONS, Backend, get_backend
from captioning.data.default import default_data_dir
from captioning.data.layout import features_file, open_hdf5
from captioning.data.reader import read_coco_folder
from captioning.training.data_parallel import MpiDataParallel
from captioning.training.run_folder import BEST_NAME, CHECKPOINT_NAME, RunFolder

CHECKPOINT_CHOICES = (BEST_NAME, CHECKPOINT_NAME, "model.npz")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to an option's help, except where there is no default to show
    (None, False, or one the help text states in words)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default:" in help:
            return help
        return super()._get_help_string(action)


def add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", help="numpy, numba, cupy or auto (default: $CAPTION_BACKEND, "
                   "else auto: the fastest that runs here)")


def add_precision(p: argparse.ArgumentParser) -> None:
    """--precision for the commands that decode with a trained model."""
    p.add_argument("--precision", choices=list(PRECISIONS),
                   help="how a float32 model's matrix products multiply while decoding: "
                   "fp32 in full; tf32 or bf16 on the GPU's tensor cores with float32 "
                   f"accumulation (cupy backend only) (default: ${PRECISION_ENV_VAR}, else "
                   "fp32)")


def on_every_rank(parallel: MpiDataParallel | None, work: Callable[[], int]) -> int:
    """Run ``work`` on this rank: rank 0 (or a lone process) prints, the others are
    silent; an error on any rank ends the whole MPI job, since the others would wait for
    it in their next collective call forever."""
    if parallel is None:
        return work()
    try:
        if parallel.is_root:
            return work()
        with contextlib.redirect_stdout(io.StringIO()):
            return work()
    except BaseException as exc:
        print(f"error: rank {parallel.rank}: {type(exc).__name__}: {exc}", file=sys.stderr,
              flush=True)
        parallel.abort(1)
        raise


def choose_backend(value: str | None, source: str = "--backend") -> Backend:
    """The backend a command runs on: ``value`` (given as ``source``), else
    $CAPTION_BACKEND, else auto (the fastest that runs here). Prints which one and why,
    as the command's first line."""
    name = value or os.environ.get(ENV_VAR) or AUTO
    backend = get_backend(name)
    if name.strip().lower() == AUTO:
        why = "fastest available here" + ("" if backend.name == "numpy" else
                                          "; --backend numpy for the reference")
    else:
        why = source if value else f"${ENV_VAR}"
    print(f"backend {backend.name} ({why})")
    return backend


def add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="COCO-layout folder (default: the run's, else "
                   "$CAPTION_DATA, else the built-in dataset, generated on first use)")


def resolve_checkpoint(path: str) -> tuple[Path, dict[str, Any]]:
    """A checkpoint file, or a run folder (its best.npz, else checkpoint.npz), and the
    run's settings when a run.json lies beside it."""
    p = Path(path)
    if p.is_dir():
        found = next((p / name for name in CHECKPOINT_CHOICES if (p / name).is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{p} holds no checkpoint (expected one of "
                                    f"{', '.join(CHECKPOINT_CHOICES)})")
        p = found
    elif not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist (give a .npz file or a run "
                                "folder written by `captioning train`)")
    run = RunFolder(p.parent)
    return p, (run.read_settings() if run.settings.is_file() else {})


def load_data_for(input_dim: int, data_dir: str | None, settings: dict[str, Any]
                  ) -> tuple[dict, Path]:
    """(data, folder): the data a model of ``input_dim`` features was trained on, from
    --data, else the run's folder, else the default; the full or PCA features, whichever
    has that width."""
    folder = Path(data_dir or settings.get("data") or default_data_dir())
    features = settings.get("features")
    if features is None or data_dir:
        features = "full"
        path = folder / features_file("train", pca=False)
        if path.is_file():
            with open_hdf5(path) as f:
                if "features" in f and f["features"].shape[1] != input_dim:
                    features = "pca"
    return read_coco_folder(folder, pca_features=features == "pca"), folder
