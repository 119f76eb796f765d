"""The progress protocol every long operation takes: coding, decoding, the postfilter's passes.

The library draws nothing; a caller hands in a :data:`Progress` that makes a bar (the CLI passes tqdm, which
fits it), and :func:`no_progress` is the default that shows nothing. Torch-free, so the CLI can use it
before it imports a model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Progress", "ProgressBar", "no_progress"]


class ProgressBar(Protocol):
    def update(self, n: int = 1) -> Any: ...

    def close(self) -> Any: ...


Progress = Callable[[str, int, str], ProgressBar]
"""Makes a bar: ``progress(description, total, unit)``; the bar gets ``update(n)`` as work is done."""


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(desc: str, total: int, unit: str) -> ProgressBar:
    """The default :data:`Progress`: shows nothing."""
    return _NoBar()
