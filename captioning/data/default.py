"""Which folder a command reads when it is given none: ``$CAPTION_DATA``, else the
built-in shapes dataset (generated on first use). The top of the data package."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from captioning.data.reader import read_coco_folder
from captioning.data.shapes import builtin_dataset_dir

DATA_ENV_VAR = "CAPTION_DATA"


def default_data_dir() -> Path:
    """$CAPTION_DATA if set, else the built-in dataset (generated on first use)."""
    if os.environ.get(DATA_ENV_VAR):
        return Path(os.environ[DATA_ENV_VAR])
    return builtin_dataset_dir()


def load_coco_data(base_dir: str | os.PathLike | None = None, max_train: int | None = None,
                   pca_features: bool = True) -> dict[str, Any]:
    """The exercise's loader: ``read_coco_folder`` of ``base_dir``, or of the default
    folder (``default_data_dir``) when none is given. Same keys, shapes and checks."""
    folder = base_dir if base_dir is not None else default_data_dir()
    return read_coco_folder(folder, max_train=max_train, pca_features=pca_features)
