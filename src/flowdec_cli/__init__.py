"""flowdec: the FlowDec 48 kHz neural audio codec as a command-line tool and a Python API.

The heavy modules load on first use, so ``import flowdec_cli`` and ``flowdec --help`` stay fast; the
``TYPE_CHECKING`` block shows type checkers and IDEs the real signatures of the lazily loaded names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["__version__", "Codec", "from_pretrained", "load_ndac", "load_postfilter"]

if TYPE_CHECKING:
    from .models import load_ndac, load_postfilter
    from .pipeline import Codec, from_pretrained

_LAZY = {"load_ndac": "models", "load_postfilter": "models", "Codec": "pipeline", "from_pretrained": "pipeline"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flowdec_cli' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
