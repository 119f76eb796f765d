"""The ``flowdec`` command: parses arguments, resolves paths, reports. All work happens in the Python API."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import __version__
from .errors import EXIT_FAILURE, Failure, FlowdecGroup, error_line, one_line_message, terminal_text
from .exceptions import FlowdecError
from .fileio import OutputExistsError, check_output, output_is_sink, same_file, special_kind, why_absent, would_replace
from .options import (
    PathArgument,
    cache_dir_option,
    check_nfe_option,
    check_rate_request_option,
    decode_options,
    device_for_command,
    device_option,
    rate_options,
    spelled_as_folder,
    threads_option,
    warn_idle_postfilter_options,
)
from .progress import human_duration
from .streams import is_stdio, require_stdout, strict_json

if TYPE_CHECKING:
    from .container import FdcHeader
    from .pipeline import Codec, DecompressResult
    from .rateplan import RatePoint

@click.group(cls=FlowdecGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
      cat in.wav | flowdec compress - - > x.fdc   - is standard input or output
      flowdec models default flowdec-75m          the model used without --model
      flowdec corpus encode ./audio ./codes       whole corpora on Ray workers, as Parquet shards

    Shell completion: eval "$(_FLOWDEC_COMPLETE=bash_source flowdec)" in ~/.bashrc
    (zsh_source for zsh, fish_source for fish).
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# --------------------------------------------------------------------------------------------------
# Shared options and helpers


def _model_options(f: Callable) -> Callable:
    f = threads_option(f)
    f = device_option()(f)
    return cache_dir_option()(f)


def _overwrite_options(f: Callable) -> Callable:
    f = click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs.")(f)
    f = click.option("--skip-existing", is_flag=True,
                     help="Leave outputs that already exist alone (a folder's, or a single file's: exit 0).")(f)
    f = click.option("--glob", "pattern", default=None,
                     help="Folders: only inputs whose path relative to IN matches this pattern (e.g. '*.flac').")(f)
    f = click.option("--json", "as_json", is_flag=True,
                     help="One JSON object per file on stdout: paths, bytes, kbit/s on disk and nominal, "
                          "duration, NFE, seconds, RTF.")(f)
    f = click.option("-q", "--quiet", is_flag=True,
                     help="No progress bars or notes; a folder's summary only when a file failed.")(f)
    return f


def _setup(threads: int | None) -> None:
    """Apply ``--threads`` once there is work to do (its range was checked as the option was read)."""
    from .runtime import set_threads

    set_threads(threads)


class _Bars:
    """tqdm bars on stderr; silent when quiet. Also tells a CPU user once what the postfilter will cost,
    before its bar is drawn."""

    def __init__(self, quiet: bool, device: Any = None) -> None:
        self.quiet = quiet
        self.device = device
        self.told = False

    def __call__(self, desc: str, total: int, unit: str) -> Any:
        if self.quiet or sys.stderr is None:  # `2>&-`: nowhere to draw, and tqdm would fail writing
            from .progress import no_progress

            return no_progress(desc, total, unit)
        from tqdm import tqdm

        def make(initial: int = 0) -> Any:
            return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, disable=None,
                        initial=initial)

        if unit == "pass" and not self.told and getattr(self.device, "type", "cpu") == "cpu":
            return _EstimatingBar(make, total, self)
        return make()


class _EstimatingBar:
    """Times the first pass with no bar on screen, prints the estimate for the file, then draws the bar, so
    the message never cuts through a bar."""

    def __init__(self, make: Callable[[int], Any], total: int, owner: _Bars) -> None:
        self.make, self.total, self.owner = make, total, owner
        self.bar: Any = None
        self.n = 0
        self.start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)
            return
        self.n += n
        if self.n and self.total:
            total = (time.perf_counter() - self.start) / self.n * self.total
            if total > 20 and not self.owner.told:
                self.owner.told = True
                click.echo(f"flowdec: the postfilter on CPU will take about {human_duration(total)} for this file; "
                           "--nfe 0 (codec alone) or a GPU is much faster", err=True)
            self.bar = self.make(self.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class _Job:
    src: Path
    dst: Path


def _shown(path: Path) -> str:
    """How a path is named in messages and JSON: ``-`` for standard input or output."""
    return "-" if is_stdio(path) else str(path)


class _OutputRefused(Failure):
    """An output path refused while planning, which ``--json``'s record names as the file OUT resolved to
    (OUT/a.fdc for a single file into a folder, not OUT/)."""

    def __init__(self, output: Path, message: str) -> None:
        super().__init__(message)
        self.output = output


def _check_pair(src: Path, dst: Path, force: bool) -> None:
    """The library's checks of an output (:func:`flowdec_cli.fileio.check_output`), made while planning so
    that a refusal comes before any model is loaded; and the command line's own: a missing folder."""
    if is_stdio(dst):
        return
    try:
        check_output(dst, force, None if is_stdio(src) else src)
    except FlowdecError as exc:
        raise _OutputRefused(dst, one_line_message(exc) or str(exc)) from None
    if not dst.parent.is_dir():  # as ffmpeg: a typo in a folder name should not create a new tree
        if dst.parent.exists():
            raise _OutputRefused(dst, f"{dst}: {dst.parent} is a file, not a folder")
        raise _OutputRefused(dst, f"{dst}: folder {dst.parent} does not exist; create it first")


def _walk(src: Path) -> tuple[list[Path], list[OSError]]:
    """Everything below ``src`` that is not a folder (files, links to nothing, ...), in one pass that follows
    no links to folders, and the folders it could not list (a search passes over those in silence)."""
    unlisted: list[OSError] = []
    entries = [Path(folder, name) for folder, _, names in os.walk(src, onerror=unlisted.append) for name in names]
    return entries, unlisted


def _jobs(entries: list[Path], src: Path, dst: Path, wanted: Callable[[Path], bool], out_suffix: str | None,
          pattern: str | None, outputs_are_inputs: bool) -> Iterator[_Job]:
    """Every input among ``entries`` (:func:`_walk` of ``src``) that ``wanted`` accepts, mirrored under
    ``dst`` with ``out_suffix`` (None: its own); hidden files and folders are left out
    (:func:`flowdec_cli.audio.hidden_below`). Where the outputs are inputs of the same kind (roundtrip's
    audio), what lies under ``dst`` is left out too: an earlier run's outputs. A link to nothing, a FIFO or
    a socket is listed, for the run to report rather than skip in silence."""
    from .audio import hidden_below, matches_glob

    dst_resolved = dst.resolve()
    for path in sorted(p for p in entries if not p.is_dir()):
        rel = path.relative_to(src)
        if hidden_below(rel):
            continue
        if outputs_are_inputs and dst_resolved in Path(os.path.realpath(path)).parents:  # realpath: loops too
            continue
        if not wanted(path) or not matches_glob(rel, pattern):
            continue
        yield _Job(path, dst / (rel if out_suffix is None else rel.with_suffix(out_suffix)))


@dataclass
class _Plan:
    jobs: list[_Job]
    folder: bool
    #: a folder's inputs refused before any work, each with its message (counted as failed)
    refused: list[tuple[_Job, str]] = field(default_factory=list)
    #: a single input whose output exists, left as it is (--skip-existing)
    skipped: _Job | None = None


def _skipped_record(command: str, src: str, dst: str) -> str:
    """The ``--json`` line of a file that ``--skip-existing`` left alone: a script reading the records sees
    every file, and tells a skipped one from one that was never considered."""
    return strict_json({"command": command, "input": src, "output": dst, "ok": True, "skipped": True})


def _skipped_as_existing(plan: _Plan, quiet: bool, command: str, as_json: bool) -> bool:
    """Whether a single file's output already exists under --skip-existing: said, and nothing more to do
    (exit 0, as a folder's skipped files), before any model loads."""
    if plan.skipped is not None and as_json:
        click.echo(_skipped_record(command, _shown(plan.skipped.src), _shown(plan.skipped.dst)))
    if plan.skipped is not None and not quiet:
        click.echo(f"flowdec: {plan.skipped.dst}: exists; skipped (--skip-existing)", err=True)
    return plan.skipped is not None


def _collisions(jobs: list[_Job]) -> tuple[list[_Job], list[tuple[_Job, str]]]:
    """The jobs whose output no other job writes, and a message for each input that shares its output with
    another (a.wav and a.flac both make a.fdc): none of them is converted, since whichever came last would
    replace the other's output, or fail as if the output had been there before the run."""
    sharing: dict[Path, list[_Job]] = {}
    for job in jobs:
        sharing.setdefault(job.dst, []).append(job)
    # a.wav makes a.fdc, a.fdc/b.wav makes a.fdc/b.fdc: one output would have to be the other's folder
    nesting: dict[int, list[_Job]] = {}  # by id(job)
    for job in jobs:
        for folder in job.dst.parents:
            for outer in sharing.get(folder, ()):
                nesting.setdefault(id(job), []).append(outer)
                nesting.setdefault(id(outer), []).append(job)
    kept: list[_Job] = []
    refused: list[tuple[_Job, str]] = []
    for job in jobs:
        others = [str(j.src) for j in sharing[job.dst] if j is not job]
        if others:
            refused.append((job, f"{job.src}: same output {job.dst} as {', '.join(others)}; neither converted "
                                 "(rename one, or choose with --glob)"))
        elif id(job) in nesting:
            clashes = nesting[id(job)]
            pairs = ", ".join(f"{j.src} (output {j.dst})" for j in clashes[:3])
            pairs += f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
            refused.append((job, f"{job.src}: its output {job.dst} and that of {pairs} would have to be a file "
                                 "and a folder of one name; neither converted (rename one, or choose with --glob)"))
        else:
            kept.append(job)
    return kept, refused


def _check_stdio(src: Path, dst: Path, wanted: Callable[[Path], bool], out_suffix: str) -> None:
    """A closed or terminal standard stream, refused before the model loads rather than after."""
    from .streams import check_device_output, check_stdin, check_stdout

    if is_stdio(src):
        check_stdin(".fdc data" if wanted is _is_fdc else "audio")
    what = ".fdc data" if out_suffix == ".fdc" else "audio"
    if is_stdio(dst):
        check_stdout(what)
    else:
        check_device_output(dst, what)


def _failure_record(command: str, src: str, dst: str, text: str) -> str:
    """The ``--json`` line of a file that failed or was refused."""
    return strict_json({"command": command, "input": src, "output": dst, "ok": False, "error": text})


def _planned(command: str, as_json: bool, src: Path, dst: Path, *args: Any, **kwargs: Any) -> _Plan:
    """:func:`_plan`, and with ``--json`` a failure record for an input refused before any work (a missing
    file, an output that exists), as a file refused later gets one."""
    try:
        return _plan(src, dst, *args, **kwargs)
    except Failure as exc:
        if as_json:
            output = exc.output if isinstance(exc, _OutputRefused) else dst
            click.echo(_failure_record(command, _shown(src), _shown(output), exc.format_message()))
        raise


def _plan(src: Path, dst: Path, wanted: Callable[[Path], bool], out_suffix: str, force: bool,
          pattern: str | None, keep_suffix: bool = False, skip_existing: bool = False) -> _Plan:
    """Check paths before any model is loaded: a single file (``-``: standard input or output), or every
    matching file below a folder. ``keep_suffix``: each output keeps its input's type (roundtrip without
    ``--format``), else it gets ``out_suffix``."""
    _check_stdio(src, dst, wanted, out_suffix)
    if is_stdio(src):
        if not is_stdio(dst) and (dst.is_dir() or spelled_as_folder("dst")):
            raise Failure(f"{dst}: is a folder; with IN - give an output file or -")
        if skip_existing and _exists_to_skip(src, dst):
            return _Plan([], folder=False, skipped=_Job(src, dst))
        _check_pair(src, dst, force)
        return _Plan([_Job(src, dst)], folder=False)
    if not src.exists():
        raise Failure(f"{src}: {why_absent(src, 'file or folder')}")
    if not src.is_dir():
        if not is_stdio(dst) and (dst.is_dir() or spelled_as_folder("dst")):
            if not dst.is_dir():  # OUT/ names a folder: as cp, it must be there
                raise Failure(f"{dst}{os.sep}: " + ("is a file, not a folder" if dst.exists()
                                                    else "no such folder; create it first"))
            dst = dst / (src.name if keep_suffix else src.with_suffix(out_suffix).name)
        if skip_existing and _exists_to_skip(src, dst):
            return _Plan([], folder=False, skipped=_Job(src, dst))
        _check_pair(src, dst, force)
        return _Plan([_Job(src, dst)], folder=False)
    if is_stdio(dst):
        raise click.UsageError("OUT - (standard output) takes a single input file, not a folder")
    if dst.exists() and not dst.is_dir():
        raise Failure(f"{dst}: is a file; a folder input needs an output folder")
    if not dst.exists() and not spelled_as_folder("dst") and (_is_audio(dst) or _is_fdc(dst)):
        raise Failure(f"{dst}: named like a file, but the input {src} is a folder and needs an output folder "
                      f"(to make a folder of that name, give it as {dst}{os.sep})")
    outputs_are_inputs = keep_suffix or wanted(Path("output" + out_suffix))
    if outputs_are_inputs and dst.resolve() in (src.resolve(), *src.resolve().parents):
        raise Failure(f"{dst}: holds the input folder {src}, so the audio written there would be read as input "
                      "by the next run; choose an output folder outside it")
    entries, unlisted = _walk(src)
    found = list(_jobs(entries, src, dst, wanted, None if keep_suffix else out_suffix, pattern, outputs_are_inputs))
    if not found:
        raise Failure(f"{src}: no matching input files found")
    jobs, refused = _collisions([job for job in found if job.src.is_file()])
    dangling = [(job, f"{job.src}: {why_absent(job.src)}") for job in found if not job.src.exists()]
    special = [(job, _not_regular(job.src)) for job in found if job.src.exists() and not job.src.is_file()]
    return _Plan(jobs, folder=True, refused=dangling + special + refused + _unlisted_folders(unlisted, src, dst))


def _exists_to_skip(src: Path, dst: Path) -> bool:
    """Whether ``--skip-existing`` leaves this single input's output alone (input ``-`` too: a pipeline
    rerun skips what it made before)."""
    return (not is_stdio(dst) and would_replace(dst) and not dst.is_dir()
            and (is_stdio(src) or not same_file(src, dst)))


def _not_regular(path: Path) -> str:
    """Why a folder run passes over a FIFO, socket or device it found: reading one may wait forever."""
    kind = special_kind(path) or "not a regular file"
    hint = " (name it on its own to read it)" if kind == "a FIFO" else ""
    return f"{path}: is {kind}; a folder run reads regular files only{hint}"


def _unlisted_folders(unlisted: list[OSError], src: Path, dst: Path) -> list[tuple[_Job, str]]:
    """The folders below ``src`` that :func:`_walk` could not list, each reported as a failure of the run:
    their files would otherwise be missing from it without a word."""
    from .audio import hidden_below

    out = []
    for exc in unlisted:
        folder = Path(exc.filename)
        rel = folder.relative_to(src) if folder.is_relative_to(src) else folder
        if not hidden_below(rel):
            out.append((_Job(folder, dst / rel), f"{folder}: cannot list this folder ({exc.strerror or exc}); "
                                                   "its files were not coded"))
    return out


@contextlib.contextmanager
def _stdio(job: _Job, out_suffix: str, fdc_input: bool) -> Iterator[_Job]:
    """The job with files in place of ``-``: standard input (or an input FIFO, ``<(cmd)``) spooled to a
    temporary file, standard output (or an output device or FIFO, ``/dev/null``) written to one and copied
    out on success (bounded memory, see :mod:`flowdec_cli.streams`). The output's format is its own
    extension, else ``out_suffix`` (``--format``). Messages name ``-``, the FIFO or the device rather than
    the temporary files."""
    from .streams import read_once, spooled_input, stdout_file

    spool = read_once(job.src)
    sink = is_stdio(job.dst) or output_is_sink(job.dst)
    if not (spool or sink):
        yield job
        return
    temps: dict[str, str] = {}
    try:
        with contextlib.ExitStack() as stack:
            src, dst = job.src, job.dst
            if spool:
                src = stack.enter_context(spooled_input(src, "" if is_stdio(src) else src.suffix, fdc_input))
                temps[str(src)] = _shown(job.src)
            if sink:
                dst = stack.enter_context(stdout_file(dst.suffix or out_suffix, dst))
                temps[str(dst)] = _shown(job.dst)
            yield _Job(src, dst)
    except FlowdecError as exc:
        text = str(exc)
        for temp, shown in temps.items():
            text = text.replace(temp, shown)
        raise Failure(text) from None


def _execute(command: str, plan: _Plan, one: Callable[[_Job], tuple[dict[str, Any], str]], force: bool,
             skip_existing: bool, quiet: bool, as_json: bool, out_suffix: str) -> None:
    """Run the jobs; in a folder, a bar over files, per-file errors, a summary and exit 1 if any failed.
    Each finished file is reported: a text line on stderr, or with ``--json`` one JSON object per line on
    stdout (``"ok": true``). With ``--json`` a file that failed or was refused gets one too (a single file
    as well as each of a folder's): ``command``, ``input``, ``output``, ``"ok": false`` and ``error``, the
    message of its error line on stderr."""

    def report(record: dict[str, Any], text: str, folder: bool) -> None:
        if as_json:
            click.echo(strict_json(record))
        elif text and not quiet and not folder:
            click.echo(terminal_text(text), err=True)  # the output's name is the user's, or a folder's

    def report_failure(src: str, dst: str, text: str) -> None:
        if as_json:  # a script reading the records sees every file, not only those that worked
            click.echo(_failure_record(command, src, dst, text))

    if not plan.folder:
        try:
            with _stdio(plan.jobs[0], out_suffix, command == "decompress") as job:
                record, text = one(job)
        except (KeyboardInterrupt, BrokenPipeError):
            raise
        except Exception as exc:  # reported on stderr and by the exit status as ever; with --json on stdout too
            report_failure(_shown(plan.jobs[0].src), _shown(plan.jobs[0].dst),
                           one_line_message(exc) or f"unexpected {type(exc).__name__}: {exc}")
            raise
        record.update(input=_shown(plan.jobs[0].src), output=_shown(plan.jobs[0].dst), ok=True)
        report(record, f"flowdec: {_shown(plan.jobs[0].dst)}: {text}", folder=False)
        return
    from tqdm import tqdm

    jobs = plan.jobs
    done = skipped = 0
    failed: list[str] = []

    def skip(job: _Job) -> None:
        nonlocal skipped
        skipped += 1
        if as_json:
            click.echo(_skipped_record(command, str(job.src), str(job.dst)))

    def fail(job: _Job, text: str) -> None:
        failed.append(text)
        if sys.stderr is not None:  # tqdm.write would fall back to standard output, which --json owns
            tqdm.write(error_line(text), file=sys.stderr)
        report_failure(str(job.src), str(job.dst), text)

    for job, text in plan.refused:
        fail(job, text)
    for job in tqdm(jobs, desc="files", unit="file", disable=True if quiet or sys.stderr is None else None):
        try:
            taken = would_replace(job.dst)
        except FlowdecError as exc:
            fail(job, str(exc))
            continue
        if taken and (skip_existing or not force):
            if skip_existing:
                skip(job)
                continue
            fail(job, f"{job.dst}: exists; use -f/--force to overwrite or --skip-existing")
            continue
        try:
            record, text = one(job)
            record.update(input=str(job.src), output=str(job.dst), ok=True)
            report(record, text, folder=True)
            done += 1
        except KeyboardInterrupt:
            raise
        except BrokenPipeError:
            raise
        except OutputExistsError as exc:
            if skip_existing:  # another run made it meanwhile: exactly what --skip-existing asks for
                skip(job)
                continue
            fail(job, one_line_message(exc) or str(exc))  # in the command line's words
        except Exception as exc:
            fail(job, one_line_message(exc) or f"{job.src}: unexpected {type(exc).__name__}: {exc}")
    if not quiet or failed:
        parts = [f"{done} converted"]
        if skipped:
            parts.append(f"{skipped} skipped (exist)")
        parts.append(f"{len(failed)} failed")
        total = len(jobs) + len(plan.refused)
        click.echo(f"flowdec: {', '.join(parts)} of {total} file{'' if total == 1 else 's'}", err=True)
    if failed:
        raise click.exceptions.Exit(EXIT_FAILURE)


def _is_audio(path: Path) -> bool:
    from .audio import is_audio_path  # imported when used: it loads soundfile and numpy

    return is_audio_path(path)


def _is_fdc(path: Path) -> bool:
    return path.suffix.lower() == ".fdc"


def _load_codec(model: str | None, device: str, cache_dir: Path | None, nfe: int | None = 0,
                precision: str = "auto", temperature: float | None = None, envelope: bool | None = None,
                harmonic_redraw: int | None = None) -> Codec:
    """The codec for a command (the default model when none is named), set up for the passes it runs."""
    from .models import UnknownModelError
    from .pipeline import Codec
    dev = device_for_command(device)
    try:
        codec = Codec.load(model, dev, with_postfilter=None, nfe=nfe, precision=precision, cache_dir=cache_dir,
                           temperature=temperature, envelope=envelope, harmonic_redraw_hz=harmonic_redraw)
    except UnknownModelError as exc:
        raise click.UsageError(str(exc)) from None
    codec.tune_process()  # the CLI owns its process: glibc keeps large CPU buffers mapped (see the method)
    return codec


def _model_notice(codec: Codec, model: str | None, quiet: bool, cache_dir: Path | None) -> None:
    """One line when the small built-in model is used without being asked for: what it is for."""
    from .models.catalogue import builtin_notice

    if quiet or model:
        return
    line = builtin_notice(codec.model.name, cache_dir)
    if line:
        click.echo(f"flowdec: {line}", err=True)


def _bitrate_choice(codec: Codec, bitrate: float | None, n_codebooks: int | None) -> RatePoint:
    from .exceptions import CodecError

    try:
        return codec.choose_rate(bitrate, n_codebooks)
    except CodecError as exc:
        raise click.UsageError(str(exc)) from None


def _fit_option(f: Callable) -> Callable:
    return click.option(
        "--fit", is_flag=True,
        help="Hold the whole file on disk (header and side channel included) to -b: a file that would come out "
             "above it takes the richest lower rate that fits, with no more codebooks (the same count with a "
             "sparser side channel, or fewer). Without it -b picks a nominal rate (under a rate plan, the codes "
             "and the side channel's typical cost), and the header, and a costlier side channel, come on "
             "top.")(f)


def _fit_note(fit: bool) -> str:
    return " (fewer where a file would not fit on disk)" if fit else ""


def _envelope_option(f: Callable) -> Callable:
    return click.option(
        "--envelope/--no-envelope", default=None,
        help="Send the band-level side channel (the original's band levels, with which the decoder puts back "
             "its balance across frequency and time; 15 bands three times a second, 100-200 bit/s per channel, "
             "unless the model's rate plan gives -b a denser one). Default: as the model says (on for the "
             "built-in model; off for the released FlowDec models, which stay exact).")(f)


def _envelope_note(header: Any) -> str:
    return f", side channel {header.side_bytes} bytes" if header.side_bytes else ""


def _rate_note(codec: Codec, point: RatePoint) -> str:
    """What ``-b``/``-n`` chose: the codebooks, and under a rate plan the side channel that goes with them."""
    codes = (f"{point.codebooks} codebook{'s' if point.codebooks != 1 else ''} = "
             f"{codec.ndac.bitrate(point.codebooks) / 1000:g} kbit/s per channel")
    if codec.rate_plan is None or point.layout is None:
        return codes
    pitch = f" and pitch {point.pitch.name}" if point.pitch is not None else ""
    return f"{codes} + side channel {point.layout.name}{pitch} = {point.kbps:g} kbit/s nominal"


def _given(name: str) -> bool:
    """Whether the running command's option ``name`` was given on the command line (not its default)."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


def _out_suffix(out_format: str, dst: Path, subtype: str | None) -> str:
    """The audio output's extension (``--format`` for folders and ``-``, else OUT's own), checked together
    with ``--subtype`` before anything is decoded."""
    from .audio import AudioError, check_output_format, format_suffix

    named = not is_stdio(dst) and bool(dst.suffix) and not dst.is_dir()
    try:
        if not named:
            return format_suffix(out_format, subtype)
        suffix = format_suffix(out_format)
        if _given("out_format") and dst.suffix.lower() != suffix:  # one of the two would be ignored
            raise click.UsageError(f"--format {out_format} is for folders and -; {dst} names its own type "
                                   f"({dst.suffix}): give one or the other")
        check_output_format(dst, subtype)
    except AudioError as exc:
        raise click.UsageError(str(exc)) from None
    return suffix


def _check_named_output(plan: _Plan, subtype: str | None) -> None:
    """A single output file's own extension (``noext``, ``out.xyz``) is a usage error before any work, as
    ``--format``'s is; a device or FIFO (``/dev/null``) takes ``--format``'s type instead."""
    from .audio import AudioError, check_output_format

    if plan.folder or not plan.jobs:
        return
    dst = plan.jobs[0].dst
    if is_stdio(dst) or output_is_sink(dst):
        return
    try:
        check_output_format(dst, subtype)
    except AudioError as exc:
        raise click.UsageError(str(exc)) from None


def _check_precision(device: str, precision: str) -> None:
    """A precision the device cannot run is a usage error, found before any model loads."""
    from .postfilter import Postfilter
    try:
        Postfilter.settings_for(device_for_command(device), precision)
    except ValueError as exc:
        raise click.UsageError(f"--precision {precision}: {exc}") from None


def _check_overwrite(force: bool, skip_existing: bool) -> None:
    if force and skip_existing:  # one replaces what exists, the other leaves it: neither may win silently
        raise click.UsageError("-f/--force replaces outputs that exist and --skip-existing leaves them; choose one")


def _check_json(as_json: bool, dst: Path) -> None:
    if as_json and is_stdio(dst):
        raise click.UsageError("--json prints to standard output, which OUT - already takes; choose one")
    if as_json:
        require_stdout()


_RTF_MIN_SECONDS = 1.0  # the shortest audio whose real-time factor the text line shows


def _rates(header: Any, nbytes: int, seconds: float, nominal_kbps: float) -> dict[str, Any]:
    """The figures every per-file JSON record shares: ``kbps_nominal`` is the rate as ``-b`` counts it (under
    a rate plan the codes and their side channel, as the banner says), ``kbps_codes`` the codes' own. A file
    without audio has no rate on disk and no real-time factor: null, not 0."""
    from .container import actual_bitrate

    duration = header.duration
    codes = header.nominal_bitrate / 1000
    return {"bytes": int(nbytes), "duration_s": duration, "channels": header.channels,
            "sample_rate": header.sample_rate, "n_codebooks": header.n_codebooks,
            "kbps_nominal": nominal_kbps or codes, "kbps_codes": codes,
            "kbps_on_disk": actual_bitrate(nbytes, duration, header.channels) / 1000 if duration else None,
            "seconds": seconds, "rtf": seconds / duration if duration else None}


def _rate_text(record: dict[str, Any], nominal: str = "") -> str:
    """A record's rate on disk for its text line (a file without audio has none)."""
    if record["kbps_on_disk"] is None:
        return f"no audio{nominal}"
    return f"{record['kbps_on_disk']:.3f} kbit/s per channel{' on disk' if nominal else ''}{nominal}"


#: how far above -b a file may come out on disk before its line says why (rounding of a rate plan's steps)
_OVER_REQUEST = 1.2


def _over_request_note(record: dict[str, Any], asked_kbps: float | None) -> str:
    """Why a file came out well above the ``-b`` asked (without ``--fit``): on a short file the header and
    the side channel's fixed bytes outweigh the codes, and only ``--fit`` holds the whole file to ``-b``."""
    on_disk = record["kbps_on_disk"]
    if asked_kbps is None or on_disk is None or on_disk <= _OVER_REQUEST * asked_kbps:
        return ""
    return (f"; above the {asked_kbps:g} kbit/s asked, as the header's fixed bytes weigh on a "
            f"{record['duration_s']:.2g} s file: --fit holds the whole file to -b")


# --------------------------------------------------------------------------------------------------
# Commands


@main.command()
@click.argument("src", metavar="IN", type=PathArgument())
@click.argument("dst", metavar="OUT", type=PathArgument())
@rate_options
@click.option("-m", "--model", default=None,
              help="Model name, hf://OWNER/REPO[@REV], or path (default: $FLOWDEC_MODEL, `flowdec models "
                   "default`, else the built-in model).")
@click.option("--no-entropy", is_flag=True,
              help="Bit-pack the codes (exactly the nominal rate) instead of entropy-coding them: format 1.0, "
                   "or 1.2 with the side channel.")
@_fit_option
@_envelope_option
@_model_options
@_overwrite_options
def compress(src: Path, dst: Path, bitrate: float | None, n_codebooks: int | None, model: str | None,
             no_entropy: bool, fit: bool, envelope: bool | None, device: str, cache_dir: Path | None,
             threads: int | None, force: bool, skip_existing: bool, pattern: str | None, quiet: bool,
             as_json: bool) -> None:
    """Code audio (any format, rate, channels) into a compact .fdc file, or a folder into a folder.

    IN - reads audio from standard input, OUT - writes the .fdc to standard output.
    """
    check_rate_request_option(bitrate, n_codebooks, fit)
    _check_json(as_json, dst)
    _check_overwrite(force, skip_existing)
    plan = _planned("compress", as_json, src, dst, _is_audio, ".fdc", force, pattern, skip_existing=skip_existing)
    if _skipped_as_existing(plan, quiet, "compress", as_json):
        return
    if not plan.folder and not is_stdio(plan.jobs[0].dst):
        from .pipeline import CodecError, check_fdc_destination

        try:
            check_fdc_destination(plan.jobs[0].dst)
        except CodecError as exc:
            raise click.UsageError(str(exc)) from None
    _setup(threads)
    codec = _load_codec(model, device, cache_dir, nfe=0, envelope=envelope)
    rate = _bitrate_choice(codec, bitrate, n_codebooks)
    bars = _Bars(quiet)
    if not quiet:
        click.echo(f"flowdec: model {codec.model.name} on {codec.device}, {_rate_note(codec, rate)}{_fit_note(fit)}",
                   err=True)
        _model_notice(codec, model, quiet, cache_dir)

    def one(job: _Job) -> tuple[dict[str, Any], str]:
        t0 = time.perf_counter()
        res = codec.compress_file(job.src, job.dst, bitrate_kbps=rate.kbps, progress=bars, overwrite=force,
                                  entropy=not no_entropy, cap_kbps=bitrate if fit else None)
        # a file without audio has no side channel, so its entry is the codes'; -b chose the rate all the same
        nominal = res.nominal_kbps if res.header.num_samples else rate.kbps
        record = {"command": "compress", **_rates(res.header, res.file_bytes, time.perf_counter() - t0, nominal),
                  "nfe": None, "model": codec.model.name, "entropy_saving": res.saving,
                  "envelope_bytes": res.header.envelope_bytes, "pitch_bytes": res.header.pitch_bytes}
        saved = f", entropy coding saved {100 * res.saving:.1f} %" if res.header.entropy_coded else ""
        return record, (f"{res.file_bytes} bytes, {res.duration:.2f} s, {res.header.channels} ch, "
                        + _rate_text(record, f" ({record['kbps_nominal']:g} kbit/s nominal{saved}"
                                             f"{_envelope_note(res.header)})")
                        + _over_request_note(record, None if fit else bitrate))

    _execute("compress", plan, one, force, skip_existing, quiet, as_json, ".fdc")


@main.command()
@click.argument("src", metavar="IN", type=PathArgument())
@click.argument("dst", metavar="OUT", type=PathArgument())
@decode_options
@click.option("-m", "--model", default=None, help="Decode with this model instead of the one named in the file.")
@click.option("--format", "out_format", default="wav", show_default=True,
              help="Output type for folders and OUT - (wav, flac, ogg, opus, ...).")
@_model_options
@_overwrite_options
def decompress(src: Path, dst: Path, nfe: int, solver: str, seed: int | None, temperature: float | None,
               harmonic_redraw: int | None, subtype: str | None,
               precision: str, model: str | None, out_format: str, device: str, cache_dir: Path | None,
               threads: int | None,
               force: bool, skip_existing: bool, pattern: str | None, quiet: bool, as_json: bool) -> None:
    """Decode .fdc files with D0, then refine them with the flow postfilter (--nfe 0: D0 only).

    IN - reads the .fdc from standard input, OUT - writes audio (--format, WAV by default) to standard output.
    """
    if nfe is not None:
        check_nfe_option(nfe, solver)
    _check_json(as_json, dst)
    _check_overwrite(force, skip_existing)
    _check_precision(device, precision)
    suffix = _out_suffix(out_format, dst, subtype)
    plan = _planned("decompress", as_json, src, dst, _is_fdc, suffix, force, pattern, skip_existing=skip_existing)
    if _skipped_as_existing(plan, quiet, "decompress", as_json):
        return
    _check_named_output(plan, subtype)
    _setup(threads)
    from .models import UnknownModelError
    from .models.resolve import resolve
    from .pipeline import Decompressor
    from .runtime import DeviceError

    if model is not None:  # found now, once, not for every file: a name that is no model is a usage error
        try:
            resolve(model, cache_dir)
        except UnknownModelError as exc:
            raise click.UsageError(str(exc)) from None
    try:
        decoder = Decompressor(model, device, nfe=nfe, precision=precision, cache_dir=cache_dir, tune_process=True,
                               temperature=temperature, harmonic_redraw_hz=harmonic_redraw)
    except DeviceError as exc:
        raise click.UsageError(str(exc)) from None
    bars = _Bars(quiet, decoder.device)
    idle_options_told = False

    def one(job: _Job) -> tuple[dict[str, Any], str]:
        nonlocal idle_options_told
        res = decoder.decompress_file(job.src, job.dst, solver, seed, subtype, bars, overwrite=force,
                                      warn=lambda w: click.echo(f"flowdec: warning: {terminal_text(w)}", err=True))
        if not idle_options_told:  # the NFE is known per file (its model's default), so checked here
            idle_options_told = warn_idle_postfilter_options(res.nfe, temperature, harmonic_redraw)
        return _decoded(res, res.header, res.file_bytes, res.seconds, "decompress", res.model)

    _execute("decompress", plan, one, force, skip_existing, quiet, as_json, suffix)


def _decoded(res: DecompressResult, header: FdcHeader, nbytes: int, seconds: float, command: str,
             model: str) -> tuple[dict[str, Any], str]:
    """The record and the text line of a decoded file."""
    record = {"command": command, **_rates(header, nbytes, seconds, res.nominal_kbps), "nfe": res.nfe,
              "model": model,
              "output_sample_rate": res.sample_rate or header.sample_rate, "peak_scaled": res.peak_scaled,
              "envelope": bool(header.envelope_layout), "pitch": bool(header.pitch_layout)}
    dur = record["duration_s"]
    guard = f", scaled by 1/{res.peak_scaled:.3f} to avoid clipping" if res.peak_scaled > 1 else ""
    rate = (f"{header.sample_rate} Hz resampled to {res.sample_rate} Hz (a rate the format takes)"
            if res.resampled else f"{header.sample_rate} Hz")
    # below a second of audio the factor measures start-up, not speed (a 1-sample file said "RTF 5093"); JSON keeps it
    rtf = f" (RTF {record['rtf']:.3f})" if record["rtf"] is not None and dur >= _RTF_MIN_SECONDS else ""
    return record, (f"{dur:.2f} s, {header.channels} ch, {rate}, {nbytes} bytes coded "
                    f"({_rate_text(record)}{_envelope_note(header)}), NFE {res.nfe}, {seconds:.1f} s{rtf}{guard}")


@main.command()
@click.argument("src", metavar="IN", type=PathArgument())
@click.argument("dst", metavar="OUT", type=PathArgument())
@rate_options
@click.option("-m", "--model", default=None,
              help="Model name, hf://OWNER/REPO[@REV], or path (default as for compress).")
@decode_options
@click.option("--format", "out_format", default="wav",
              help="Output type for OUT - (wav, flac, ogg, opus, ...; default wav) and, when given, for a "
                   "folder's outputs, which otherwise keep each input's type.")
@_fit_option
@_envelope_option
@_model_options
@_overwrite_options
def roundtrip(src: Path, dst: Path, bitrate: float | None, n_codebooks: int | None, model: str | None, nfe: int,
              solver: str, seed: int | None, temperature: float | None, harmonic_redraw: int | None,
              subtype: str | None, precision: str,
              out_format: str, fit: bool, envelope: bool | None, device: str,
              cache_dir: Path | None, threads: int | None, force: bool, skip_existing: bool, pattern: str | None,
              quiet: bool, as_json: bool) -> None:
    """Compress and decompress in one shot (no .fdc kept): hear what the codec does.

    Each output keeps its input's type (in a folder) and sample format (24-bit stays 24-bit) unless --format
    or --subtype say otherwise. IN - reads audio from standard input, OUT - writes audio (--format, WAV by
    default) to standard output.
    """
    check_rate_request_option(bitrate, n_codebooks, fit)
    if nfe is not None:
        check_nfe_option(nfe, solver)
    _check_json(as_json, dst)
    _check_overwrite(force, skip_existing)
    _check_precision(device, precision)
    suffix = _out_suffix(out_format, dst, subtype)
    plan = _planned("roundtrip", as_json, src, dst, _is_audio, suffix, force, pattern,
                    keep_suffix=not _given("out_format"), skip_existing=skip_existing)
    if _skipped_as_existing(plan, quiet, "roundtrip", as_json):
        return
    _check_named_output(plan, subtype)
    _setup(threads)
    codec = _load_codec(model, device, cache_dir, nfe=nfe, precision=precision, temperature=temperature,
                        envelope=envelope, harmonic_redraw=harmonic_redraw)
    nfe = _model_nfe(codec, nfe, solver)
    warn_idle_postfilter_options(nfe, temperature, harmonic_redraw)
    rate = _bitrate_choice(codec, bitrate, n_codebooks)
    bars = _Bars(quiet, codec.device)
    if not quiet:
        click.echo(f"flowdec: model {codec.model.name} on {codec.device}, {_rate_note(codec, rate)}{_fit_note(fit)}, "
                   f"NFE {nfe}", err=True)
        _model_notice(codec, model, quiet, cache_dir)

    def one(job: _Job) -> tuple[dict[str, Any], str]:
        t0 = time.perf_counter()
        comp, dec = codec.roundtrip_file(job.src, job.dst, bitrate_kbps=rate.kbps, nfe=nfe, solver=solver, seed=seed,
                                         subtype=subtype, progress=bars, overwrite=force,
                                         cap_kbps=bitrate if fit else None)
        return _decoded(dec, comp.header, comp.file_bytes, time.perf_counter() - t0, "roundtrip",
                        codec.model.name)

    _execute("roundtrip", plan, one, force, skip_existing, quiet, as_json, suffix)


def _model_nfe(codec: Codec, nfe: int | None, solver: str) -> int:
    """The NFE asked for, or the model's default, checked against the solver (the pipeline's rule)."""
    from .exceptions import CodecError

    try:
        return codec.resolve_nfe(nfe, solver)
    except CodecError as exc:
        raise click.UsageError(f"--nfe {codec.resolve_nfe(nfe)}: {exc}") from None


@main.command()
@click.argument("src", metavar="FILE", type=PathArgument())
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(src: Path, as_json: bool) -> None:
    """Show every header field of a .fdc file, its duration and its bitrates.

    FILE - reads the .fdc file from standard input.
    """
    from dataclasses import asdict

    from .container import actual_bitrate, bitpacked_file_size, entropy_saving, inspect_fdc, inspect_fdc_stream
    from .streams import read_once, stdin_stream

    require_stdout()
    if is_stdio(src):  # read as far as the header declares, so `cat a.fdc b.fdc | flowdec info -` is refused
        header, size = inspect_fdc_stream(stdin_stream(".fdc data"), "-")  # named as decompress names it
    else:
        if src.is_dir():
            raise Failure(f"{src}: is a folder; give a .fdc file")
        if not src.exists():
            raise Failure(f"{src}: {why_absent(src)}")
        if read_once(src):  # a FIFO or <(cmd): its size is what it holds, not what stat says (0)
            with open(src, "rb") as stream:
                header, size = inspect_fdc_stream(stream, str(src))
        else:
            header = inspect_fdc(src)  # every check, the CRC included; the payload is not decoded
            size = src.stat().st_size
    duration = header.duration

    def kbps(nbytes: int) -> float | None:  # a file without audio has no rate (null, as compress --json says)
        return actual_bitrate(nbytes, duration, header.channels) / 1000 if duration > 0 else None

    packed = bitpacked_file_size(header)
    fields = asdict(header)
    fields.pop("envelope", None)  # the levels themselves are not shown (nor decoded: info needs no model)
    fields.pop("pitch", None)  # nor the pitch steps
    fields.update({
        "payload_bytes": header.payload_size,  # a bit-packed file stores none: its size follows from its codes
        "file": str(src), "file_bytes": size, "duration_s": duration,
        "frame_rate_hz": header.model_sample_rate / header.hop_length,
        "nominal_bitrate_kbps": header.nominal_bitrate / 1000,
        "actual_bitrate_kbps": kbps(size),
        "bitpacked_bytes": packed,
        "entropy_saving_percent": 100.0 * entropy_saving(header, size),
        "envelope_windows": header.envelope_windows,
        "envelope_kbps": kbps(header.envelope_bytes),
        "pitch_values": header.pitch_values,
        "pitch_kbps": kbps(header.pitch_bytes),
    })
    from .pipeline import planned_kbps

    planned = planned_kbps(header)
    if planned is not None:  # the rate -b chose, codes and side channel, as compress's banner said
        fields["plan_bitrate_kbps"] = planned
    if as_json:
        click.echo(strict_json(fields, indent=2))
        return
    width = max(len(k) for k in fields)
    for k, v in fields.items():
        if isinstance(v, float):
            v = f"{v:.6g}"
        elif v is None:
            v = "-"
        elif k == "format_version":  # (1, 2) in JSON as [1, 2]; as a version here
            v = ".".join(map(str, v))
        click.echo(f"{k:<{width}}  {terminal_text(str(v))}")


def _attach_optional_commands() -> None:
    """Commands that live beside their own API (evaluation, models, training)."""
    from .corpus_cli import corpus_group
    from .evaluation.cli import eval_command, plot_command
    from .models.cli import models_group
    from .training.cli import train_group

    main.add_command(eval_command, "eval")
    main.add_command(plot_command, "plot")
    main.add_command(models_group, "models")
    main.add_command(train_group, "train")
    main.add_command(corpus_group, "corpus")


_attach_optional_commands()
