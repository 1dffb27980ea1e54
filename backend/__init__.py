"""The backend abstraction: the Backend base class, the registry and selection.

Knows nothing of captioning. Choose a backend with ``get_backend(name)`` or the
``CAPTION_BACKEND`` environment variable (numpy, numba, cupy, or auto: the fastest that
runs here).
"""

from backend.base import Backend, RecordingFailed
from backend.registry import (
    AUTO,
    ENV_VAR,
    BackendStatus,
    BackendUnavailable,
    available_backends,
    backend_for,
    fastest_available,
    get_backend,
    known_backends,
)

__all__ = [
    "AUTO",
    "ENV_VAR",
    "Backend",
    "BackendStatus",
    "BackendUnavailable",
    "RecordingFailed",
    "available_backends",
    "backend_for",
    "fastest_available",
    "get_backend",
    "known_backends",
]
