"""Write a file so that readers see the old version or the whole new one, never half.

The temporary file sits beside the target as ``.<name>.<pid>.<random>.tmp``, so a
leftover (its writer killed mid-write) names the process that made it and can be told
apart from a write in progress (``remove_leftovers``).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced, given the mode an
    ordinary ``open(path, "w")`` would leave (the old file's, else 0666 less the umask),
    renamed onto ``path``, and the folder is fsynced so the rename survives a crash. On
    any error (or Ctrl-C) the temporary is removed and ``path`` is left as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                               suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fchmod(f.fileno(), _ordinary_mode(path))
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_folder(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries under ``folder`` whose writing process no longer exists
    (killed mid-write); returns what was removed."""
    removed = []
    for tmp in Path(folder).rglob(".*.tmp"):
        pid = tmp.name[1 : -len(".tmp")].rsplit(".", 2)
        if len(pid) == 3 and pid[1].isdigit() and not _alive(int(pid[1])):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _ordinary_mode(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (setting it to
    read it back would briefly give files other threads create a wrong mode)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        pass
    return True
