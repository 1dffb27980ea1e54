"""Which backends exist, which can run here, and choosing one.

A kernel module is imported only when its backend is asked for, so a machine without
CuPy never imports it.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

from backend.base import PRECISIONS, Backend, BackendUnavailable

ENV_VAR = "CAPTION_BACKEND"
PRECISION_ENV_VAR = "CAPTION_PRECISION"
DEFAULT = "numpy"  # of the Python API: the exact reference, unless asked otherwise
AUTO = "auto"  # the fastest backend that runs here (the command line's default)
_FASTEST_FIRST = ("cupy", "numba", "numpy")


@dataclass(frozen=True)
class _Entry:
    module: str
    cls: str
    install: str  # how to get it when its package is missing


_REGISTRY: dict[str, _Entry] = {
    "numpy": _Entry("kernels.numpy_backend", "NumpyBackend", "pip install numpy"),
    "numba": _Entry("kernels.numba_backend", "NumbaBackend", 'pip install -e ".[numba]"'),
    "cupy": _Entry(
        "kernels.cupy_backend",
        "CupyBackend",
        'pip install -e ".[cuda]" (the extra names cupy-cuda12x; use the cupy wheel '
        "matching your CUDA, e.g. cupy-cuda13x)",
    ),
}
_instances: dict[str, Backend] = {}
_FIRST_PARTY = ("backend", "kernels", "captioning")


@dataclass(frozen=True)
class BackendStatus:
    """Whether one backend can run here, and if not, why."""

    name: str
    available: bool
    reason: str  # "ok" or what is missing and how to install it


def known_backends() -> list[str]:
    return list(_REGISTRY)


def _load(name: str) -> Backend:
    if name in _instances:
        return _instances[name]
    entry = _REGISTRY[name]
    try:
        module = importlib.import_module(entry.module)
    except ImportError as exc:
        package = (exc.name or "").split(".")[0]
        if package in _FIRST_PARTY:  # our own code does not import: a bug, not a missing package
            raise
        what = (f"the Python package {package!r}, which is not installed here"
                if isinstance(exc, ModuleNotFoundError) and package
                else f"a package that fails to import here ({exc})")
        raise BackendUnavailable(
            f"backend {name!r} needs {what}; install it with: {entry.install}") from exc
    backend = getattr(module, entry.cls)()  # the constructor raises if no device
    _instances[name] = backend
    return backend


def get_backend(name: str | Backend | None = None) -> Backend:
    """The backend called ``name``; else the one ``$CAPTION_BACKEND`` names; else numpy.
    ``auto`` is the fastest that runs here (``fastest_available``).

    Raises ValueError for an unknown name and BackendUnavailable (with what is missing and
    how to install it) for a known one that cannot run here. Never falls back silently.
    """
    if isinstance(name, Backend):
        return name
    chosen = name if name is not None else (os.environ.get(ENV_VAR) or DEFAULT)
    key = chosen.strip().lower()
    if key == AUTO:
        return _load(fastest_available())
    if key not in _REGISTRY:
        source = "" if name is not None else f" (from ${ENV_VAR})"
        raise ValueError(f"unknown backend {chosen!r}{source}; expected one of: "
                         f"{', '.join([*_REGISTRY, AUTO])}")
    return _load(key)


def choose_precision(precision: str | None = None) -> str:
    """``precision`` (fp32, tf32 or bf16), else ``$CAPTION_PRECISION``, else fp32.
    Raises ValueError naming the choices for anything else."""
    chosen = precision if precision is not None else (os.environ.get(PRECISION_ENV_VAR)
                                                      or "fp32")
    key = chosen.strip().lower()
    if key not in PRECISIONS:
        source = "" if precision is not None else f" (from ${PRECISION_ENV_VAR})"
        raise ValueError(f"unknown precision {chosen!r}{source}; expected one of: "
                         f"{', '.join(PRECISIONS)}")
    return key


def fastest_available() -> str:
    """The name ``auto`` stands for: cupy with a working device, else numba when it is
    installed, else numpy."""
    for name in _FASTEST_FIRST:
        try:
            _load(name)
        except BackendUnavailable:
            continue
        return name
    return DEFAULT


def available_backends() -> dict[str, BackendStatus]:
    """Every known backend with whether it runs here and, if not, the reason."""
    status = {}
    for name in _REGISTRY:
        try:
            _load(name)
            status[name] = BackendStatus(name, True, "ok")
        except BackendUnavailable as exc:
            status[name] = BackendStatus(name, False, str(exc))
    return status


def backend_for(array) -> Backend:
    """The backend to compute on ``array`` with: the active one if it owns the array type,
    else the backend whose namespace does (numpy for host arrays)."""
    active = get_backend()
    if active.owns(array):
        return active
    for backend in list(_instances.values()) + [_load("numpy")]:
        if backend.owns(array):
            return backend
    raise TypeError(f"no backend holds arrays of type {type(array).__name__}")
