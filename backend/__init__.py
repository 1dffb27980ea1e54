"""The backend abstraction: the Backend base class, the registry and selection.

Knows nothing of captioning. Choose a backend with ``get_backend(name)`` or the
``CAPTION_BACKEND`` environment variable (numpy, numba, cupy, or auto: the fastest that
runs here); the precision of float32 matrix products with ``Backend.with_precision`` or
``CAPTION_PRECISION`` (fp32; tf32 and bf16 on cupy).
"""

from backend.base import PRECISIONS, Backend, PackedRows, RecordingFailed
from backend.registry import (
    AUTO,
    ENV_VAR,
    PRECISION_ENV_VAR,
    BackendStatus,
    BackendUnavailable,
    available_backends,
    backend_for,
    choose_precision,
    fastest_available,
    get_backend,
    known_backends,
)

__all__ = [
    "AUTO",
    "ENV_VAR",
    "PRECISIONS",
    "PRECISION_ENV_VAR",
    "Backend",
    "PackedRows",
    "BackendStatus",
    "BackendUnavailable",
    "RecordingFailed",
    "available_backends",
    "backend_for",
    "choose_precision",
    "fastest_available",
    "get_backend",
    "known_backends",
]
