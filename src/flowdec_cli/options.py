"""Checks of command-line options that several commands share (``flowdec compress``, ``flowdec corpus``...).

The rules themselves live with the code they protect (:func:`flowdec_cli.pipeline.check_rate_request`,
:func:`flowdec_cli.sampler.nfe_to_steps`, :func:`flowdec_cli.sampler.check_temperature`,
:func:`flowdec_cli.sampler.check_seed`); this module only
turns a refusal into a usage error (exit 2) before any file is read, so every command words it the same way.
"""

from __future__ import annotations

from typing import Any

import click

__all__ = ["FiniteFloatRange", "check_nfe_option", "check_rate_request_option", "seed_option", "temperature_option"]


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange, which lets NaN through (no comparison with it is false): a usage error here."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if number != number:
            self.fail(f"{value!r} is not a number", param, ctx)
        return number


def check_rate_request_option(bitrate: float | None, n_codebooks: int | None, fit: bool = False) -> None:
    """-b/--bitrate or --n-codebooks, not both; --fit holds a file to -b, so it needs one."""
    from .pipeline import CodecError, check_rate_request

    try:
        check_rate_request(bitrate, n_codebooks)
    except CodecError as exc:
        raise click.UsageError(str(exc)) from None
    if fit and bitrate is None:
        raise click.UsageError("--fit holds each file to the rate -b/--bitrate gives; give one")


def check_nfe_option(nfe: int, solver: str) -> None:
    """An NFE the solver cannot run (midpoint takes two passes a step)."""
    from .sampler import nfe_to_steps

    try:
        nfe_to_steps(nfe, solver)
    except ValueError as exc:
        raise click.UsageError(f"--nfe {nfe}: {exc}") from None


def temperature_option(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Click callback of ``--temperature``: the sampler's range, as a usage error."""
    if value is None:
        return None
    from .sampler import check_temperature

    try:
        return check_temperature(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def seed_option(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """Click callback of ``--seed``: the generator's range, as a usage error."""
    from .sampler import check_seed

    try:
        return check_seed(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
