"""A model's rate plan: what ``-b`` or ``-n`` chooses together (codebooks, the nominal rate and the side channels).

A model card's ``rate_plan`` lists its rates in rising order, each with the codebook count and the side
channels its files carry: the band levels (:mod:`flowdec_cli.envelope`) and, for a postfilter that reads
it, the input's pitch (:mod:`flowdec_cli.pitch`). On the built-in model a denser side channel is worth
more than the codec's upper codebooks (docs/models.md, "A side channel by rate"), so a codebook count may
appear several times, with different side channels; a file's entry is found again from its header.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .envelope import EnvelopeError, EnvelopeLayout, envelope_layout
from .numeric import is_integer, is_real
from .pitch import PitchError, PitchLayout, pitch_layout

__all__ = ["RatePoint", "entries_of", "plan_point", "plan_rate", "rate_plan", "side_names"]


class RatePoint(NamedTuple):
    """One entry of a model card's ``rate_plan``: what ``-b`` or ``-n`` chooses together."""

    codebooks: int
    kbps: float  # nominal kbit/s per channel: the codes plus the side channel's typical cost
    layout: EnvelopeLayout | None  # None: no band levels (a codec without a plan that writes none)
    pitch: PitchLayout | None = None  # None: no pitch side channel


def rate_plan(raw: Any, codes_kbps: list[float], sample_rate: int) -> list[RatePoint]:
    """A model card's ``rate_plan``: entries ``{"codebooks": k, "kbps": r, "envelope": layout}`` (optionally
    with ``"pitch": layout``) in order of rising ``kbps``, ``codes_kbps[k - 1]`` being the codes' own rate
    with k codebooks. Every codebook count has at least one entry, and a count may have several.
    :class:`EnvelopeError` names what is wrong (a pitch layout this flowdec does not know included)."""
    n = len(codes_kbps)
    if not isinstance(raw, list) or not raw:
        raise EnvelopeError(f"rate_plan must be a list of entries covering every codebook count (1 ... {n})")
    plan: list[RatePoint] = []
    for i, entry in enumerate(raw, 1):
        k = entry.get("codebooks") if isinstance(entry, dict) else None
        if not is_integer(k) or not 1 <= k <= n:
            raise EnvelopeError(f'rate_plan entry {i} must be an object with "codebooks" from 1 to {n}')
        kbps = entry.get("kbps")
        if not is_real(kbps) or not math.isfinite(kbps) \
                or kbps < codes_kbps[k - 1] or (plan and kbps <= plan[-1].kbps):
            raise EnvelopeError(f"rate_plan entry {i}: kbps must be a number above the entry before it and at "
                                f"least the codes' own {codes_kbps[k - 1]:g}")
        try:
            layout = envelope_layout(str(entry.get("envelope")), sample_rate)
            pitch = pitch_layout(str(entry["pitch"]), sample_rate) if "pitch" in entry else None
        except (EnvelopeError, PitchError) as exc:
            raise EnvelopeError(f"rate_plan entry {i}: {exc}") from None
        plan.append(RatePoint(k, float(kbps), layout, pitch))
    missing = sorted(set(range(1, n + 1)) - {p.codebooks for p in plan})
    if missing:
        raise EnvelopeError(f"rate_plan has no entry for {', '.join(map(str, missing))} codebooks "
                            f"(every count from 1 to {n} needs one)")
    return plan


def plan_point(plan: list[RatePoint], bitrate_kbps: float | None = None,
               n_codebooks: int | None = None) -> RatePoint | None:
    """The entry of ``plan`` a request gets: for a rate, the highest whose nominal rate does not exceed it;
    for a codebook count, the cheapest entry with that many codebooks (so ``-n K`` costs what it did before
    a count had several entries). None when no entry fits."""
    if n_codebooks is not None:
        return next((p for p in plan if p.codebooks == int(n_codebooks)), None)
    if bitrate_kbps is None:
        return plan[-1]
    fitting = [p for p in plan if p.kbps <= bitrate_kbps * (1 + 1e-9)]
    return fitting[-1] if fitting else None


def side_names(point: RatePoint) -> tuple[str, str]:
    """An entry's side channels as a header names them ("" for none)."""
    return (point.layout.name if point.layout else "", point.pitch.name if point.pitch else "")


def entries_of(plan: list[RatePoint], n_codebooks: int, layout_name: str, pitch_name: str = "") -> list[RatePoint]:
    """The entries of ``plan`` a file matches: its codebook count with its side channels' layouts ("" for a
    file without one)."""
    return [p for p in plan if p.codebooks == n_codebooks and side_names(p) == (layout_name, pitch_name)]


def plan_rate(plan: list[RatePoint], n_codebooks: int, layout_name: str, pitch_name: str = "") -> float | None:
    """A file's nominal rate by ``plan``: its cheapest matching entry's (what ``-n`` would have charged), or
    None when the plan offers no such entry."""
    here = entries_of(plan, n_codebooks, layout_name, pitch_name)
    return min(p.kbps for p in here) if here else None
