"""flowdec: the FlowDec 48 kHz neural audio codec as a command-line tool and a Python API.

The heavy modules load on first use, so ``import flowdec_cli`` and ``flowdec --help`` stay fast; the
``TYPE_CHECKING`` block shows type checkers and IDEs the real signatures of the lazily loaded names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_attributes

__version__ = "0.1.0"

__all__ = ["__version__", "Codec", "from_pretrained", "load_ndac", "load_postfilter", "FlowdecError", "CodecError",
           "FdcError", "ModelError", "AudioError", "InvalidValue", "OutputExistsError"]

if TYPE_CHECKING:
    from .audio import AudioError
    from .container import FdcError
    from .exceptions import CodecError, FlowdecError, InvalidValue
    from .fileio import OutputExistsError
    from .models import ModelError, load_ndac, load_postfilter
    from .pipeline import Codec, from_pretrained

# FlowdecError is the base of every error the package raises on purpose: one ``except`` catches them all.
_LAZY = {"load_ndac": "models", "load_postfilter": "models", "Codec": "pipeline", "from_pretrained": "pipeline",
         "FlowdecError": "exceptions", "CodecError": "exceptions", "FdcError": "container", "ModelError": "models",
         "AudioError": "audio", "InvalidValue": "exceptions", "OutputExistsError": "fileio"}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
