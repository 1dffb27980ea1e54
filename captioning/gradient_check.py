"""Numerical gradients by centred differences, and the exercise's relative error."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def rel_error(x, y) -> float:
    """max |x - y| / max(1e-8, |x| + |y|), elementwise, on host or device arrays."""
    x, y = _host(x), _host(y)
    return float(np.max(np.abs(x - y) / np.maximum(1e-8, np.abs(x) + np.abs(y))))


def eval_numerical_gradient(f: Callable, x: np.ndarray, verbose: bool = True,
                            h: float = 1e-5) -> np.ndarray:
    """Gradient of scalar f at x, one element at a time: (f(x+h) - f(x-h)) / 2h.

    x is modified in place during the evaluation and restored afterwards.
    """
    grad = np.zeros(x.shape, dtype=np.float64)
    for ix in np.ndindex(*x.shape):
        old = x[ix]
        x[ix] = old + h
        fxph = float(f(x))
        x[ix] = old - h
        fxmh = float(f(x))
        x[ix] = old
        grad[ix] = (fxph - fxmh) / (2 * h)
        if verbose:
            print(ix, grad[ix])
    return grad


def eval_numerical_gradient_array(f: Callable, x: np.ndarray, df, h: float = 1e-5) -> np.ndarray:
    """Gradient of sum(f(x) * df) at x, for an array-valued f with upstream gradient df."""
    grad = np.zeros(x.shape, dtype=np.float64)
    df = _host(df)
    for ix in np.ndindex(*x.shape):
        old = x[ix]
        x[ix] = old + h
        pos = _host(f(x)).copy()
        x[ix] = old - h
        neg = _host(f(x)).copy()
        x[ix] = old
        grad[ix] = np.sum((pos - neg) * df) / (2 * h)
    return grad


def _host(a) -> np.ndarray:
    """A host copy of a NumPy or device array (CuPy arrays have ``.get()``)."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)
