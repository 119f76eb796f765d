"""Writing files so that a reader never sees half of one: temporary sibling, fsync, usual mode, rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "temporary_sibling", "publish"]


def _default_mode() -> int:
    """The mode a plain ``open()`` would give: mkstemp's 0600 would hide outputs from other users."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def temporary_sibling(path: str | os.PathLike, suffix: str = ".part") -> Path:
    """An empty temporary file in ``path``'s folder (same file system, so the final rename is atomic)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give a finished temporary file the usual mode and move it into place."""
    os.chmod(tmp, _default_mode())
    os.replace(tmp, path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, make_parents: bool = True) -> None:
    """Write ``data`` to ``path`` atomically; no temporary file is left behind on failure. With
    ``make_parents=False`` a missing folder is an error (``FileNotFoundError``) rather than created."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
