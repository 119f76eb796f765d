"""The progress protocol every long operation takes: coding, decoding, the postfilter's passes.

The library draws nothing; a caller hands in a :data:`Progress` that makes a bar (the CLI passes tqdm, which
fits it), and :func:`no_progress` is the default that shows nothing. Torch-free, so the CLI can use it
before it imports a model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Progress", "ProgressBar", "no_progress", "human_duration"]


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


def human_duration(seconds: float, precise: bool = False) -> str:
    """A duration as people read it in a report: seconds below 90 s, minutes below 1.5 h, then hours.
    ``precise`` keeps one more digit (a run's totals, where a rounded "1 min" for 1.4 would hide a change)."""
    if seconds < 90:
        return f"{seconds:.{1 if precise else 0}f} s"
    if seconds < 5400:
        return f"{seconds / 60:.{1 if precise else 0}f} min"
    return f"{seconds / 3600:.{2 if precise else 1}f} h"
