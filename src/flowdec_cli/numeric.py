"""What counts as a number where flowdec takes one from outside: an API argument, a header field, a model
card or a config value.

Python counts a bool as an int (``True == 1``), so a plain ``isinstance(value, int)`` lets ``True`` through
as one codebook, one hertz or one pass. Every such check in flowdec goes through these predicates, so
that they refuse the same things everywhere; numpy's scalars count, as they come from arrays (and behave
as the int or float the type checker is told they are).
"""

from __future__ import annotations

import math
import numbers
from typing import TypeGuard

#: torch CPU threads a command may ask for (``--threads``): more fails inside the thread pools (a crash, not
#: an error) long before it could help. Here, not in runtime, so that the command line checks it without torch.
MAX_THREADS = 1024

__all__ = ["is_integer", "is_real", "is_whole"]


def is_integer(value: object) -> TypeGuard[int]:
    """A Python or numpy integer; not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> TypeGuard[float]:
    """A Python or numpy integer or float (NaN and infinities included: the caller bounds it); not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_whole(value: object) -> bool:
    """An integer (:func:`is_integer`) or a finite float with nothing after the point (``44100.0``), as
    JSON and TOML readers may hand over a count; not a bool, not a fraction that ``int()`` would truncate."""
    return is_integer(value) or (is_real(value) and math.isfinite(value) and float(value).is_integer())
