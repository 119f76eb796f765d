"""The one base class of every error this package raises on purpose.

Each module keeps its own exception class (``ModelError``, ``FdcError``, ...), and every one derives from
:class:`FlowdecError` (those raised by modules that must not import torch for them live here), so an
embedding program catches them all with one ``except`` and the CLI turns them into one-line messages in
one place (:func:`flowdec_cli.errors.one_line_message`).
"""

from __future__ import annotations

__all__ = ["CodecError", "FlowdecError", "InvalidValue"]


class FlowdecError(Exception):
    """A failure the package expects and explains: the message names the file or model and the problem."""


class InvalidValue(FlowdecError, ValueError):
    """An argument or setting a function cannot use (a codebook count out of range, codes of the wrong
    shape, an odd NFE for the midpoint solver). Also a ``ValueError``, as Python's own such errors are, so
    that callers catching either see it."""


class CodecError(FlowdecError):
    """A coding request that cannot be carried out; the message names the file and the problem."""
