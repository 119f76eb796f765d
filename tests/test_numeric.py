"""The two number predicates every outside value goes through: a bool is never a number, numpy's scalars are."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from flowdec_cli.numeric import is_integer, is_real


@pytest.mark.parametrize("value, integer, real", [
    (3, True, True), (np.int64(3), True, True), (np.uint8(3), True, True),
    (3.0, False, True), (np.float32(2.5), False, True), (float("nan"), False, True), (Fraction(1, 2), False, True),
    (True, False, False), (np.bool_(True), False, False), ("3", False, False), (None, False, False),
    (1 + 0j, False, False), ([3], False, False),
])
def test_bools_are_not_numbers_and_numpy_scalars_are(value, integer, real):
    assert is_integer(value) is integer
    assert is_real(value) is real
