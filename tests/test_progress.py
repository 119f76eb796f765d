"""How reports word a duration."""

from __future__ import annotations

import pytest

from flowdec_cli.progress import human_duration


@pytest.mark.parametrize(("seconds", "precise", "text"), [
    (0.44, False, "0 s"), (0.44, True, "0.4 s"), (89.6, False, "90 s"), (90.0, False, "2 min"),
    (84.0, True, "84.0 s"), (5399.0, True, "90.0 min"), (5400.0, False, "1.5 h"), (5400.0, True, "1.50 h"),
])
def test_durations_read_in_the_unit_a_person_would_use(seconds, precise, text):
    assert human_duration(seconds, precise) == text
