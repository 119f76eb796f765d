"""flowdec: the FlowDec 48 kHz neural audio codec as a command-line tool and a Python API.

The heavy modules load on first use, so ``import flowdec_cli`` and ``flowdec --help`` stay fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_ndac", "load_postfilter"]


def __getattr__(name: str):
    if name == "load_ndac":
        from .models import load_ndac

        return load_ndac
    if name == "load_postfilter":
        from .models import load_postfilter

        return load_postfilter
    raise AttributeError(f"module 'flowdec_cli' has no attribute {name!r}")
