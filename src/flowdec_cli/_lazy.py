"""Package names that load their module on first use (PEP 562), so importing a package stays light.

Used by the package root and by ``flowdec_cli.models``; each keeps a ``TYPE_CHECKING`` block with the real
imports for type checkers. Imports nothing of ours.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, table: dict[str, str],
                    public: Iterable[str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: a name of ``table`` is fetched from its submodule
    ``table[name]`` when first asked for; ``dir()`` lists the package's globals and ``public``."""
    public = frozenset(public)

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f".{module}", package), name)

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | public)

    return __getattr__, __dir__
