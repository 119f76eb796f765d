"""Checks of command-line options that several commands share (``flowdec compress``, ``flowdec corpus``...).

The rules themselves live with the code they protect (:func:`flowdec_cli.pipeline.check_rate_request`,
:func:`flowdec_cli.sampler.nfe_to_steps`, :func:`flowdec_cli.sampler.check_temperature`,
:func:`flowdec_cli.sampler.check_seed`); this module only
turns a refusal into a usage error (exit 2) before any file is read, so every command words it the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .fileio import descriptor_alias
from .numeric import MAX_THREADS

__all__ = ["FiniteFloatRange", "PathArgument", "cache_dir_option", "check_nfe_option", "check_rate_request_option",
           "decode_options", "device_for_command", "device_option", "harmonic_redraw_option", "rate_options",
           "seed_option", "spelled_as_folder", "temperature_option", "threads_option", "warn_idle_postfilter_options",
           "THREADS"]


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange, which lets NaN through (no comparison with it is false): a usage error here."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if number != number:
            self.fail(f"{value!r} is not a number", param, ctx)
        return number


class PathArgument(click.Path):
    """A file or folder argument (``IN``, ``OUT``) as a Path. An empty one (an unset ``"$VAR"``) is a usage
    error: ``Path("")`` is the current folder, so ``flowdec compress "" out`` coded everything below it.
    A trailing separator (``OUT/``) says the user means a folder, which Path forgets: it is recorded for
    :func:`spelled_as_folder`. ``/dev/stdin`` as ``IN`` and ``/dev/stdout`` as ``OUT`` (or any other name
    of those descriptors) are ``-``: redirected to a file, they would otherwise be taken for that file, and
    an output published over the name would replace the link in /dev."""

    def __init__(self) -> None:
        super().__init__(path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            if not value:
                self.fail("an empty path; give a file or folder name, or - for standard input or output",
                          param, ctx)
            if value.endswith(("/", os.sep)) and ctx is not None and param is not None and param.name:
                ctx.meta.setdefault(_FOLDER_SPELLED, set()).add(param.name)
            stream = {"src": 0, "dst": 1}.get(param.name or "") if param is not None else None
            if stream is not None and descriptor_alias(value) == stream:
                value = "-"
        return super().convert(value, param, ctx)


_FOLDER_SPELLED = "flowdec.folder_spelled"


def spelled_as_folder(name: str) -> bool:
    """Whether the argument ``name`` of the running command was given with a trailing separator."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and name in ctx.meta.get(_FOLDER_SPELLED, set())


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


def _checked(check: Callable[[Any], Any], value: Any, ctx: click.Context, param: click.Parameter) -> Any:
    """``check(value)``, its ValueError turned into click's usage error naming the option."""
    try:
        return check(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def harmonic_redraw_option(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """Click callback of ``--harmonic-redraw``: 0 (off) or a cut-off the redraw takes, as a usage error."""
    if value is None:
        return None
    from .harmonics import redraw_setting

    return _checked(redraw_setting, value, ctx, param)


def temperature_option(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Click callback of ``--temperature``: the sampler's range, as a usage error."""
    if value is None:
        return None
    from .sampler import check_temperature

    return _checked(check_temperature, value, ctx, param)


def seed_option(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """Click callback of ``--seed``: the generator's range, as a usage error."""
    from .sampler import check_seed

    return _checked(check_seed, value, ctx, param)


#: ``--threads``'s values, checked as the option is read (a usage error), without importing torch
THREADS = click.IntRange(min=1, max=MAX_THREADS)


def rate_options(f: Any) -> Any:
    """``-b`` and ``-n``, worded once for every command that codes (the rule:
    :meth:`flowdec_cli.pipeline.Codec.choose_rate`)."""
    f = click.option("-n", "--n-codebooks", type=click.IntRange(min=1), default=None,
                     help="Codebooks to use (under a rate plan with the cheapest side channel it gives them).")(f)
    return click.option("-b", "--bitrate", type=float, default=None,
                        help="Target kbit/s per channel: the model's highest rate not above it (codebooks, and the "
                             "side channel its rate plan gives them). Default: the model's top rate.")(f)


def decode_options(f: Any) -> Any:
    """How a decode runs (postfilter passes, solver, start noise, seed, arithmetic, output sample format),
    worded once for ``decompress``, ``roundtrip`` and ``corpus decode``."""
    f = click.option("--precision", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
                     show_default=True,
                     help="Postfilter arithmetic: auto = bfloat16 on CUDA, float32 on CPU; float32 matches the "
                          "reference to float rounding; "
                          "bfloat16 and float16 need CUDA.")(f)
    f = click.option("--subtype", default=None,
                     help="Output sample format, e.g. PCM_16, PCM_24, FLOAT (default: the output type's own, "
                          "PCM_16 for WAV and FLAC; roundtrip keeps the input's where the type holds it, else "
                          "the finest it holds: a float WAV makes a 24-bit FLAC).")(f)
    f = click.option("--seed", type=int, default=None, callback=seed_option,
                     help="Seed for the postfilter's noise (repeatable output).")(f)
    f = click.option("--temperature", type=float, default=None, callback=temperature_option,
                     help="Scale of the postfilter's start noise, 0 to 2: 1 is FlowDec's, lower invents less. "
                          "Default: the model's (1 for the FlowDec models).")(f)
    f = click.option("--harmonic-redraw", "harmonic_redraw", type=int, default=None, metavar="HZ",
                     callback=harmonic_redraw_option,
                     help="Before the postfilter, redraw a voice's harmonics below HZ at the pitch the file sends "
                          "(files of a rate that sends one); 0 turns it off. Default: the model's (off unless its "
                          "postfilter was trained for it; docs/models.md).")(f)
    f = click.option("--solver", type=click.Choice(["midpoint", "euler"]), default="midpoint", show_default=True,
                     help="ODE solver of the postfilter.")(f)
    f = click.option("--nfe", type=click.IntRange(min=0), default=None,
                     help="Postfilter network passes, up to 1000 (even with the midpoint solver: 2 a step); 0 "
                          "skips the postfilter (codec alone, fast). Default: the model's own ('flowdec models' "
                          "lists it; 6, as the paper, for the FlowDec models).")(f)
    return f


def warn_idle_postfilter_options(nfe: int, temperature: float | None = None,
                                 harmonic_redraw: int | None = None) -> bool:
    """Say so when --temperature or --harmonic-redraw was given but the postfilter does not run; True when it
    was said."""
    given = [name for name, value in (("--temperature", temperature), ("--harmonic-redraw", harmonic_redraw))
             if value is not None]
    if not given or nfe > 0:
        return False
    one = len(given) == 1
    click.echo(f"flowdec: warning: {' and '.join(given)} {'has' if one else 'have'} no effect at NFE 0 (the "
               f"postfilter does not run; give --nfe 6 to use {'it' if one else 'them'})", err=True)
    return True


def device_option(note: str = "") -> Any:
    """``--device`` for every command that runs a network, ``auto`` by default: a GPU is used when there is
    one, whichever command it is (``note`` adds what is particular to the command)."""
    return click.option("--device", default="auto", show_default=True,
                        help=f"auto (CUDA when present, else CPU), cpu, or cuda[:N].{note}")


def cache_dir_option(note: str = "") -> Any:
    """``--cache-dir`` for every command that loads models by name (``note`` adds what is particular)."""
    return click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help=f"Where models are cached{note} (default: $FLOWDEC_HOME or ~/.cache/flowdec).")


def device_for_command(name: str) -> Any:
    """The torch device ``--device`` names; one that is not here is a usage error, found before any model
    loads (imports torch: call it once there is work to do)."""
    from .runtime import DeviceError, resolve_device

    try:
        return resolve_device(name)
    except DeviceError as exc:
        raise click.UsageError(str(exc)) from None


def threads_option(f: Any) -> Any:
    """``--threads N``, the CPU threads torch uses, for every command that runs a network (the command
    applies it with :func:`flowdec_cli.runtime.set_threads` once it has work to do: torch is not imported
    for a run that has nothing to do)."""
    return click.option("--threads", type=THREADS, default=None,
                        help="CPU threads for torch (default: torch's choice).")(f)
