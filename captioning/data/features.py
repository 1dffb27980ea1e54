"""Feature files of images outside the COCO layout, as ``data build`` and ``caption``
read them: HDF5 with a ``features`` dataset (and ``image_ids``), or ``.npy`` with the ids
beside it in ``<stem>_ids.npy`` or ``<stem>_ids.txt``. Rows are read on demand, so a
file larger than memory can be streamed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from captioning.data.layout import open_hdf5


class FeatureFile:
    """An open feature file: ``features`` (n, D), an HDF5 dataset or a memory map, whose
    slices are read when taken; ``ids`` (n,) int64 image ids (the row numbers, when the
    file names none and ``require_ids`` is False). Close it, or use it in ``with``."""

    def __init__(self, path: str | os.PathLike, require_ids: bool = True) -> None:
        self.path = path = Path(path)
        self._h5: h5py.File | None = None
        if not path.is_file():
            raise FileNotFoundError(f"feature file {path} does not exist")
        ids: Any = None
        if path.suffix == ".npy":
            try:
                self.features = np.load(path, mmap_mode="r")
            except ValueError as exc:
                raise ValueError(f"{path}: not a readable .npy array ({exc})") from exc
            ids_path = next((p for p in (path.with_name(f"{path.stem}_ids.npy"),
                                         path.with_name(f"{path.stem}_ids.txt"))
                             if p.is_file()), None)
            if ids_path is not None:
                ids = (np.load(ids_path) if ids_path.suffix == ".npy"
                       else np.loadtxt(ids_path, dtype=np.int64, ndmin=1))
            missing = (f"no image ids beside it (expected {path.stem}_ids.npy or "
                       f"{path.stem}_ids.txt)")
        else:
            self._h5 = open_hdf5(path)
            self.features = self._h5.get("features")
            if not isinstance(self.features, h5py.Dataset):
                found = sorted(self._h5.keys())
                self.close()
                raise ValueError(f"{path}: expected HDF5 datasets 'features' and 'image_ids', "
                                 f"found {found}")
            if "image_ids" in self._h5:
                ids = self._h5["image_ids"][()]
            missing = (f"expected HDF5 datasets 'features' and 'image_ids', found "
                       f"{sorted(self._h5.keys())}")
        if ids is None and require_ids:
            self.close()
            raise (FileNotFoundError if path.suffix == ".npy" else ValueError)(
                f"{path}: {missing}")
        self.ids = (np.arange(len(self.features)) if ids is None
                    else np.asarray(ids).astype(np.int64))
        if (self.features.ndim != 2 or self.features.dtype.kind not in "fiu"
                or self.ids.ndim != 1 or len(self.ids) != len(self.features)):
            shape, dtype = self.features.shape, self.features.dtype
            self.close()
            raise ValueError(f"{path}: features of shape {shape} ({dtype}) with "
                             f"{self.ids.shape} image ids; expected numbers (n, D) and (n,)")

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return len(self.features)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 as float32, checked to be finite."""
        chunk = np.asarray(self.features[start:stop], dtype=np.float32)
        if not np.isfinite(chunk).all():
            row = start + int(np.argwhere(~np.isfinite(chunk))[0, 0])
            raise ValueError(f"{self.path}: feature row {row} holds NaN or infinite values")
        return chunk

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __enter__(self) -> FeatureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
