"""PCA of feature matrices too large to hold twice: the covariance is accumulated from
chunks read one at a time (HDF5 datasets or arrays), and the projection written chunk
by chunk, so fitting the real 82,783 x 4096 training file needs memory for one chunk
and one D x D matrix, not for the file."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from captioning.atomic import atomic_path
from captioning.data.layout import OPTIONAL_SPLITS, SPLITS, features_file, open_hdf5

CHUNK_ROWS = 4096


@dataclass
class PCA:
    """mean (D,) and components (D, k), both float64; ``explained`` (k,) is the share of
    the total variance each component carries."""

    mean: np.ndarray
    components: np.ndarray
    explained: np.ndarray

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(n, D) -> (n, k) float32."""
        return ((np.asarray(x, np.float64) - self.mean) @ self.components).astype(np.float32)


def fit_pca(features, dim: int, chunk_rows: int = CHUNK_ROWS, progress: bool = False) -> PCA:
    """Fit ``dim`` components to ``features`` ((n, D) array or HDF5 dataset), reading
    ``chunk_rows`` rows at a time (a progress bar over them with ``progress``). Signs are
    fixed (each component's largest entry is positive), so a fit is reproducible."""
    n, d = features.shape
    if not 1 <= dim <= min(n, d):
        raise ValueError(f"PCA dimension {dim} must be between 1 and min(rows, columns) = "
                         f"{min(n, d)} for features of shape {(n, d)}")
    if n < d:
        return _fit_by_gram(np.asarray(features[:], np.float64), dim)
    shift = np.asarray(features[: min(n, chunk_rows)], np.float64).mean(axis=0)
    total = np.zeros(d)
    scatter = np.zeros((d, d))
    for start in tqdm(range(0, n, chunk_rows), desc="PCA fit", unit="chunk", leave=False,
                      disable=not progress, file=sys.stderr):
        # float32 products per chunk (fast), summed in float64 around a shift near the
        # mean, which keeps the one-pass formula from cancelling.
        chunk = (np.asarray(features[start : start + chunk_rows], np.float64) - shift)
        total += chunk.sum(axis=0)
        chunk32 = chunk.astype(np.float32)
        scatter += chunk32.T @ chunk32
    mean_offset = total / n
    covariance = (scatter - n * np.outer(mean_offset, mean_offset)) / max(n - 1, 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1][:dim]
    return _pca(shift + mean_offset, eigenvectors[:, order], eigenvalues[order], eigenvalues)


def _fit_by_gram(x: np.ndarray, dim: int) -> PCA:
    """Fewer rows than columns: the (n, n) Gram matrix of the centred rows has the
    covariance's non-zero spectrum and is cheaper to decompose (and x is small)."""
    mean = x.mean(axis=0)
    x = x - mean
    eigenvalues, u = np.linalg.eigh(x @ x.T)
    order = np.argsort(eigenvalues)[::-1][:dim]
    kept = eigenvalues[order]
    # Directions of (numerically) zero variance have no defined axis: leave them at zero.
    defined = kept > 1e-12 * max(kept.max(), 0)
    inverse_norm = np.where(defined, 1 / np.sqrt(np.where(defined, kept, 1)), 0)
    components = x.T @ u[:, order] * inverse_norm
    return _pca(mean, components, eigenvalues[order], eigenvalues)


def _pca(mean: np.ndarray, components: np.ndarray, kept: np.ndarray,
         eigenvalues: np.ndarray) -> PCA:
    """Fix each component's sign (largest entry positive); ``kept`` of all
    ``eigenvalues`` give the explained shares."""
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(len(kept))])
    components = components * np.where(signs == 0, 1, signs)
    trace = max(float(np.clip(eigenvalues, 0, None).sum()), np.finfo(float).tiny)
    return PCA(mean, components, np.clip(kept, 0, None) / trace)


def write_projected(pca: PCA, src, dst: str | os.PathLike, chunk_rows: int = CHUNK_ROWS,
                    progress: bool = False) -> None:
    """Project ``src`` ((n, D) array or dataset) and write it atomically to the HDF5
    file ``dst`` as dataset ``features`` (float32)."""
    n = src.shape[0]
    with atomic_path(dst) as tmp, h5py.File(tmp, "w") as out:
        ds = out.create_dataset("features", (n, pca.components.shape[1]), dtype=np.float32)
        for start in tqdm(range(0, n, chunk_rows), desc=f"PCA -> {Path(dst).name}",
                          unit="chunk", leave=False, disable=not progress, file=sys.stderr):
            ds[start : start + chunk_rows] = pca.transform(src[start : start + chunk_rows])


def pca_folder(folder: str | os.PathLike, dim: int = 512, chunk_rows: int = CHUNK_ROWS,
               progress: bool = False) -> PCA:
    """Fit on ``train2014_vgg16_fc7.h5`` of a COCO-layout folder and write the
    ``_pca.h5`` file of both splits."""
    folder = Path(folder)
    sources = {s: folder / features_file(s, pca=False) for s in SPLITS}
    sources.update({s: folder / features_file(s, pca=False) for s in OPTIONAL_SPLITS
                    if (folder / features_file(s, pca=False)).is_file()})
    for path in sources.values():
        if not path.is_file():
            raise FileNotFoundError(f"missing {path} (PCA reads the full features of "
                                    "both splits)")
    pca = None
    for split, path in sources.items():
        with open_hdf5(path) as f:
            ds = f.get("features")
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 2:
                raise ValueError(f"{path}: expected a 2-D dataset 'features'")
            if pca is None:
                pca = fit_pca(ds, dim, chunk_rows, progress)
            elif ds.shape[1] != pca.mean.shape[0]:
                raise ValueError(f"{path}: features are {ds.shape[1]}-d but the training "
                                 f"features are {pca.mean.shape[0]}-d")
            write_projected(pca, ds, folder / features_file(split, pca=True), chunk_rows,
                            progress)
    return pca
