"""The ``flowdec`` command: parses arguments, resolves paths, reports. All work happens in the Python API."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import Failure

# Exit codes: click uses 2 for usage errors; failures are 1.
EXIT_FAILURE = 1


def _known_errors() -> tuple[type[BaseException], ...]:
    from .audio import AudioError
    from .checkpoints import CheckpointError
    from .container import FdcError
    from .entropy import EntropyError
    from .models import ModelError
    from .pipeline import CodecError

    return (AudioError, CheckpointError, FdcError, ModelError, CodecError, EntropyError)


class _Group(click.Group):
    """Turns our own errors into one line and anything unexpected into one line plus a --debug hint."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("flowdec: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            if isinstance(exc, _known_errors()):
                raise Failure(str(exc)) from None
            raise Failure(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="flowdec")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """flowdec: the FlowDec 48 kHz neural audio codec.

    \b
      flowdec compress in.wav out.fdc -b 6        code audio at 6 kbit/s
      flowdec decompress out.fdc out.wav          decode, then refine with the flow postfilter
      flowdec roundtrip in.flac out.wav           both in one go
      flowdec compress ./album ./codes            whole folders, recursively
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# --------------------------------------------------------------------------------------------------
# Shared options and helpers


def _model_options(f: Callable) -> Callable:
    f = click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="CPU threads for torch (default: torch's choice).")(f)
    f = click.option("--device", default="auto", show_default=True,
                     help="auto (CUDA when present, else CPU), cpu, or cuda[:N].")(f)
    f = click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Where models are cached (default: $FLOWDEC_HOME or ~/.cache/flowdec).")(f)
    return f


def _overwrite_options(f: Callable) -> Callable:
    f = click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs.")(f)
    f = click.option("--skip-existing", is_flag=True, help="Folders: leave outputs that already exist alone.")(f)
    f = click.option("--glob", "pattern", default=None,
                     help="Folders: only inputs whose path relative to IN matches this pattern (e.g. '*.flac').")(f)
    f = click.option("-q", "--quiet", is_flag=True, help="No progress bars or summaries.")(f)
    return f


def _decode_options(f: Callable) -> Callable:
    f = click.option("--precision", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
                     show_default=True,
                     help="Postfilter arithmetic: auto = bfloat16 on CUDA, float32 on CPU; float32 is exact.")(f)
    f = click.option("--subtype", default=None,
                     help="Output sample format, e.g. PCM_16 (default), PCM_24, FLOAT.")(f)
    f = click.option("--seed", type=int, default=None, help="Seed for the postfilter's noise (repeatable output).")(f)
    f = click.option("--solver", type=click.Choice(["midpoint", "euler"]), default="midpoint", show_default=True,
                     help="ODE solver of the postfilter.")(f)
    f = click.option("--nfe", type=click.IntRange(min=0), default=None,
                     help="Postfilter network passes; 0 skips the postfilter (codec alone, fast). Default: the "
                          "model's (6 for the FlowDec models, 0 for the built-in flowdec-small).")(f)
    return f


def _setup(cache_dir: Path | None, threads: int | None) -> None:
    from .runtime import set_threads

    if cache_dir is not None:
        os.environ["FLOWDEC_HOME"] = str(cache_dir)
    try:
        set_threads(threads)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


class _Bars:
    """tqdm bars on stderr; silent when quiet. Also tells a CPU user once what the postfilter will cost."""

    def __init__(self, quiet: bool, device: Any = None) -> None:
        self.quiet = quiet
        self.device = device
        self.told = False

    def __call__(self, desc: str, total: int, unit: str) -> Any:
        if self.quiet:
            from .pipeline import _NoBar

            return _NoBar()
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, disable=None)
        if unit == "pass" and not self.told and getattr(self.device, "type", "cpu") == "cpu":
            return _EstimatingBar(bar, self)
        return bar


class _EstimatingBar:
    def __init__(self, bar: Any, owner: _Bars) -> None:
        self.bar, self.owner, self.start = bar, owner, time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        if not self.owner.told and self.bar.n and self.bar.total:
            per_pass = (time.perf_counter() - self.start) / self.bar.n
            total = per_pass * self.bar.total
            if total > 20:
                self.owner.told = True
                click.echo(f"flowdec: the postfilter on CPU will take about {_human(total)} for this file; "
                           "--nfe 0 (codec alone) or a GPU is much faster", err=True)

    def close(self) -> None:
        self.bar.close()


def _human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class _Job:
    src: Path
    dst: Path


def _check_pair(src: Path, dst: Path, force: bool) -> None:
    if src.resolve() == dst.resolve():
        raise Failure(f"{dst}: output is the input file; choose another output path")
    if dst.exists() and not force:
        if dst.is_dir():
            raise Failure(f"{dst}: is a folder; give an output file path")
        raise Failure(f"{dst}: exists; use -f/--force to overwrite")


def _jobs(src: Path, dst: Path, wanted: Callable[[Path], bool], out_suffix: str,
          pattern: str | None) -> Iterator[_Job]:
    """Every input below ``src`` that ``wanted`` accepts, mirrored under ``dst`` with ``out_suffix``."""
    dst_resolved = dst.resolve()
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        if dst_resolved in path.resolve().parents:
            continue  # never feed our own outputs back in when OUT lies inside IN
        rel = path.relative_to(src)
        if not wanted(path) or (pattern and not rel.match(pattern) and not path.match(pattern)):
            continue
        yield _Job(path, dst / rel.with_suffix(out_suffix))


@dataclass
class _Plan:
    jobs: list[_Job]
    folder: bool


def _plan(src: Path, dst: Path, wanted: Callable[[Path], bool], out_suffix: str, force: bool,
          pattern: str | None) -> _Plan:
    """Check paths before any model is loaded: a single file, or every matching file below a folder."""
    if not src.exists():
        raise Failure(f"{src}: no such file or folder")
    if not src.is_dir():
        if dst.is_dir() or str(dst).endswith(os.sep):
            dst = dst / src.with_suffix(out_suffix).name
        _check_pair(src, dst, force)
        return _Plan([_Job(src, dst)], folder=False)
    if dst.exists() and not dst.is_dir():
        raise Failure(f"{dst}: is a file; a folder input needs an output folder")
    jobs = list(_jobs(src, dst, wanted, out_suffix, pattern))
    if not jobs:
        raise Failure(f"{src}: no matching input files found")
    return _Plan(jobs, folder=True)


def _execute(plan: _Plan, one: Callable[[_Job], str | None], force: bool, skip_existing: bool,
             quiet: bool) -> None:
    """Run the jobs; in a folder, a bar over files, per-file errors, a summary and exit 1 if any failed."""
    if not plan.folder:
        message = one(plan.jobs[0])
        if message and not quiet:
            click.echo(message, err=True)
        return
    from tqdm import tqdm

    jobs = plan.jobs
    done = skipped = 0
    failed: list[str] = []
    for job in tqdm(jobs, desc="files", unit="file", disable=True if quiet else None):
        if job.dst.exists() and (skip_existing or not force):
            if skip_existing:
                skipped += 1
                continue
            failed.append(f"{job.dst}: exists; use -f/--force to overwrite or --skip-existing")
            tqdm.write(f"flowdec: error: {failed[-1]}", file=sys.stderr)
            continue
        try:
            one(job)
            done += 1
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            known = isinstance(exc, (_known_errors() + (click.ClickException,)))
            text = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
            if not known:
                text = f"{job.src}: unexpected {type(exc).__name__}: {text}"
            failed.append(text)
            tqdm.write(f"flowdec: error: {text}", file=sys.stderr)
    if not quiet or failed:
        parts = [f"{done} converted"]
        if skipped:
            parts.append(f"{skipped} skipped (exist)")
        parts.append(f"{len(failed)} failed")
        click.echo(f"flowdec: {', '.join(parts)} of {len(jobs)} files", err=True)
    if failed:
        raise click.exceptions.Exit(EXIT_FAILURE)


def _is_audio(path: Path) -> bool:
    from .audio import AUDIO_EXTENSIONS

    return path.suffix.lower() in AUDIO_EXTENSIONS


def _is_fdc(path: Path) -> bool:
    return path.suffix.lower() == ".fdc"


def _load_codec(model: str | None, device: str, with_postfilter: bool, precision: str = "auto") -> Any:
    from .pipeline import Codec
    from .registry import default_model_name
    from .runtime import resolve_device

    try:
        dev = resolve_device(device)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return Codec.load(model or default_model_name(), dev, with_postfilter=with_postfilter, precision=precision)


def _bitrate_choice(codec: Any, bitrate: float | None, n_codebooks: int | None) -> int:
    from .pipeline import CodecError

    try:
        return codec.choose_codebooks(bitrate, n_codebooks)
    except CodecError as exc:
        raise click.UsageError(str(exc)) from None


def _kbps(header: Any) -> str:
    return f"{header.nominal_bitrate / 1000:g} kbit/s"


# --------------------------------------------------------------------------------------------------
# Commands


@main.command()
@click.argument("src", metavar="IN", type=click.Path(path_type=Path))
@click.argument("dst", metavar="OUT", type=click.Path(path_type=Path))
@click.option("-b", "--bitrate", type=float, default=None,
              help="Target kbit/s per channel: the largest codebook count not above it. Default: the model's top rate.")
@click.option("-n", "--n-codebooks", type=click.IntRange(min=1), default=None, help="Codebooks to use.")
@click.option("-m", "--model", default=None, help="Model name, hf://OWNER/REPO[@REV], or path (default: the built-in model).")
@click.option("--no-entropy", is_flag=True,
              help="Bit-pack the codes (format 1.0, exactly the nominal rate) instead of entropy-coding them.")
@_model_options
@_overwrite_options
def compress(src: Path, dst: Path, bitrate: float | None, n_codebooks: int | None, model: str | None,
             no_entropy: bool, device: str, cache_dir: Path | None, threads: int | None, force: bool,
             skip_existing: bool, pattern: str | None, quiet: bool) -> None:
    """Code audio (any format, rate, channels) into a compact .fdc file, or a folder into a folder."""
    if bitrate is not None and n_codebooks is not None:
        raise click.UsageError("give either -b/--bitrate or --n-codebooks, not both")
    plan = _plan(src, dst, _is_audio, ".fdc", force, pattern)
    _setup(cache_dir, threads)
    codec = _load_codec(model, device, with_postfilter=False)
    k = _bitrate_choice(codec, bitrate, n_codebooks)
    bars = _Bars(quiet)
    if not quiet:
        click.echo(f"flowdec: model {codec.model.name} on {codec.device}, {k} codebooks = "
                   f"{codec.ndac.bitrate(k) / 1000:g} kbit/s per channel", err=True)

    def one(job: _Job) -> str:
        res = codec.compress_file(job.src, job.dst, n_codebooks=k, progress=bars, entropy=not no_entropy)
        saved = f", entropy coding saved {100 * res.saving:.1f} %" if res.header.entropy_coded else ""
        return (f"{job.dst}: {res.file_bytes} bytes, {res.duration:.2f} s, {res.header.channels} ch, "
                f"{res.actual_bitrate / 1000:.3f} kbit/s per channel on disk ({_kbps(res.header)} nominal{saved})")

    _execute(plan, one, force, skip_existing, quiet)


@main.command()
@click.argument("src", metavar="IN", type=click.Path(path_type=Path))
@click.argument("dst", metavar="OUT", type=click.Path(path_type=Path))
@_decode_options
@click.option("-m", "--model", default=None, help="Decode with this model instead of the one named in the file.")
@click.option("--format", "out_format", default="wav", show_default=True,
              help="Folders: output file extension (wav, flac, ogg, ...).")
@_model_options
@_overwrite_options
def decompress(src: Path, dst: Path, nfe: int, solver: str, seed: int | None, subtype: str | None,
               precision: str, model: str | None, out_format: str, device: str, cache_dir: Path | None, threads: int | None,
               force: bool, skip_existing: bool, pattern: str | None, quiet: bool) -> None:
    """Decode .fdc files with D0, then refine them with the flow postfilter (--nfe 0: D0 only)."""
    if nfe is not None:
        _check_nfe(nfe, solver)
    plan = _plan(src, dst, _is_fdc, "." + out_format.lstrip("."), force, pattern)
    _setup(cache_dir, threads)
    from .container import read_fdc

    codecs: dict[str, Any] = {}
    bars = _Bars(quiet)

    def codec_for(name: str, source: Path) -> Any:
        from .models import ModelError

        key = model or name
        if key not in codecs:
            try:
                codecs[key] = _load_codec(key, device, with_postfilter=nfe != 0, precision=precision)
            except ModelError as exc:
                if model:
                    raise
                raise Failure(f"{source}: coded with model '{name}', which cannot be loaded here ({exc}); "
                              "pass --model NAME_OR_PATH") from None
            bars.device = codecs[key].device
        return codecs[key]

    def one(job: _Job) -> str:
        header, codes = read_fdc(
            job.src, tables=lambda h: codec_for(h.model_name, job.src).tables_for(h, str(job.src)))
        codec = codec_for(header.model_name, job.src)
        for w in codec.check_header(header, str(job.src)):
            click.echo(f"flowdec: warning: {w}", err=True)
        passes = _model_nfe(codec, nfe, solver)
        t0 = time.perf_counter()
        res = codec._decode_file(header, codes, job.dst, passes, solver, seed, subtype, bars)
        took = time.perf_counter() - t0
        dur = header.num_samples / header.sample_rate
        guard = f", scaled by 1/{res.peak_scaled:.3f} to avoid clipping" if res.peak_scaled > 1 else ""
        return (f"{job.dst}: {dur:.2f} s, {header.channels} ch, {header.sample_rate} Hz, NFE {passes}, "
                f"{took:.1f} s (RTF {took / dur if dur else 0:.3f}){guard}")

    _execute(plan, one, force, skip_existing, quiet)


@main.command()
@click.argument("src", metavar="IN", type=click.Path(path_type=Path))
@click.argument("dst", metavar="OUT", type=click.Path(path_type=Path))
@click.option("-b", "--bitrate", type=float, default=None, help="Target kbit/s per channel.")
@click.option("-n", "--n-codebooks", type=click.IntRange(min=1), default=None, help="Codebooks to use.")
@click.option("-m", "--model", default=None, help="Model name, hf://OWNER/REPO[@REV], or path.")
@_decode_options
@click.option("--format", "out_format", default="wav", show_default=True, help="Folders: output extension.")
@_model_options
@_overwrite_options
def roundtrip(src: Path, dst: Path, bitrate: float | None, n_codebooks: int | None, model: str | None, nfe: int,
              solver: str, seed: int | None, subtype: str | None, precision: str, out_format: str, device: str,
              cache_dir: Path | None, threads: int | None, force: bool, skip_existing: bool, pattern: str | None,
              quiet: bool) -> None:
    """Compress and decompress in one shot (no .fdc kept): hear what the codec does."""
    if bitrate is not None and n_codebooks is not None:
        raise click.UsageError("give either -b/--bitrate or --n-codebooks, not both")
    if nfe is not None:
        _check_nfe(nfe, solver)
    plan = _plan(src, dst, _is_audio, "." + out_format.lstrip("."), force, pattern)
    _setup(cache_dir, threads)
    codec = _load_codec(model, device, with_postfilter=nfe != 0, precision=precision)
    nfe = _model_nfe(codec, nfe, solver)
    k = _bitrate_choice(codec, bitrate, n_codebooks)
    bars = _Bars(quiet, codec.device)
    if not quiet:
        click.echo(f"flowdec: model {codec.model.name} on {codec.device}, {k} codebooks = "
                   f"{codec.ndac.bitrate(k) / 1000:g} kbit/s per channel, NFE {nfe}", err=True)

    def one(job: _Job) -> str:
        t0 = time.perf_counter()
        comp, dec = codec.roundtrip_file(job.src, job.dst, n_codebooks=k, nfe=nfe, solver=solver, seed=seed,
                                         subtype=subtype, progress=bars)
        took = time.perf_counter() - t0
        return (f"{job.dst}: {comp.duration:.2f} s, {comp.file_bytes} bytes coded "
                f"({comp.actual_bitrate / 1000:.3f} kbit/s per channel), NFE {nfe}, {took:.1f} s")

    _execute(plan, one, force, skip_existing, quiet)


def _model_nfe(codec: Any, nfe: int | None, solver: str) -> int:
    """The NFE asked for, or the model's default (its card's ``default_nfe``; 6; 0 without a postfilter)."""
    if nfe is None:
        nfe = codec.resolve_nfe(None)
        _check_nfe(nfe, solver)
    return nfe


def _check_nfe(nfe: int, solver: str) -> None:
    if nfe > 0 and solver == "midpoint" and nfe % 2:
        raise click.UsageError(f"--nfe {nfe}: the midpoint solver takes 2 passes per step; use an even NFE "
                               "or --solver euler")


@main.command()
@click.argument("src", metavar="FILE", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(src: Path, as_json: bool) -> None:
    """Show every header field of a .fdc file, its duration and its bitrates."""
    from dataclasses import asdict

    from .container import bitpacked_file_size, inspect_fdc

    if not src.is_file():
        raise Failure(f"{src}: no such file")
    header = inspect_fdc(src)  # every check, the CRC included; the payload is not decoded
    size = src.stat().st_size
    duration = header.num_samples / header.sample_rate if header.sample_rate else 0.0
    packed = bitpacked_file_size(header)
    fields = asdict(header)
    fields.update({
        "file": str(src), "file_bytes": size, "duration_s": duration,
        "frame_rate_hz": header.model_sample_rate / header.hop_length,
        "nominal_bitrate_kbps": header.nominal_bitrate / 1000,
        "actual_bitrate_kbps": (size * 8 / duration / header.channels / 1000) if duration else 0.0,
        "bitpacked_bytes": packed,
        "entropy_saving_percent": 100.0 * (1 - size / packed) if header.entropy_coded and packed else 0.0,
    })
    if as_json:
        click.echo(json.dumps(fields, indent=2, default=str))
        return
    width = max(len(k) for k in fields)
    for k, v in fields.items():
        if isinstance(v, float):
            v = f"{v:.6g}"
        click.echo(f"{k:<{width}}  {v}")


def _attach_optional_commands() -> None:
    """Commands that live beside their own API (evaluation, models, training)."""
    from .evaluation.cli import eval_command, plot_command
    from .models_cli import models_group
    from .training.cli import train_group

    main.add_command(eval_command, "eval")
    main.add_command(plot_command, "plot")
    main.add_command(models_group, "models")
    main.add_command(train_group, "train")


_attach_optional_commands()
