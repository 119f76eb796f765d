"""``flowdec corpus``: code whole corpora with many workers (Ray Data, or this process), and decode them back.

Parsing and reporting only; the work is :mod:`flowdec_cli.corpus`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .errors import error_line, terminal_text
from .options import (
    THREADS,
    FiniteFloatRange,
    PathArgument,
    cache_dir_option,
    check_nfe_option,
    check_rate_request_option,
    decode_options,
    device_option,
    rate_options,
    warn_idle_postfilter_options,
)
from .progress import human_duration
from .streams import require_stdout, strict_json

__all__ = ["corpus_group"]


def _engine_options(f: Callable) -> Callable:
    f = click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary (failures are still shown).")(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print the run's summary as JSON on stdout.")(f)
    f = click.option("--threads", type=THREADS, default=None,
                     help="torch CPU threads per worker (default: --cpus-per-worker with Ray, torch's choice "
                          "locally).")(f)
    f = device_option(" With Ray, auto is judged on each worker.")(f)
    f = click.option("--gpus-per-worker", type=FiniteFloatRange(min=0), default=0.0, show_default=True,
                     help="GPUs each Ray worker reserves (e.g. 1, or 0.5 to put two on a GPU).")(f)
    f = click.option("--cpus-per-worker", type=FiniteFloatRange(min=0.01), default=1.0, show_default=True,
                     help="CPUs each Ray worker reserves.")(f)
    f = click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Ray workers (actors; each loads the model once). Default: as many as the cluster's "
                          "CPUs (or GPUs, with --gpus-per-worker) allow.")(f)
    f = cache_dir_option(" on every worker")(f)
    f = click.option("--address", default=None,
                     help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray started for this run).")(f)
    f = click.option("--engine", type=click.Choice(["auto", "ray", "local"]), default="auto", show_default=True,
                     help="ray: Ray Data; local: this process only; auto: Ray when installed.")(f)
    return f


def _engine(engine: str, address: str | None, workers: int | None, cpus: float, gpus: float) -> Any:
    from .corpus import RAY_MISSING, Engine, ray_available

    if engine == "local" and address:
        raise click.UsageError("--address needs the Ray engine, not --engine local")
    eng = Engine(engine, address=address, workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus)
    if eng.resolved() == "ray" and not ray_available():
        raise click.UsageError(RAY_MISSING)
    return eng


class _Report:
    """A bar over files with audio hours, speed (seconds of audio per second) and failures beside tqdm's ETA;
    every failure on its own line as it happens."""

    def __init__(self, quiet: bool, verb: str) -> None:
        self.quiet, self.verb = quiet, verb
        self.todo_verb = verb[:-1] if verb.endswith("ed") else verb  # coded -> code, decoded -> decode
        self.bar: Any = None
        self.audio = 0.0
        self.failed = 0
        self.t0 = time.perf_counter()

    def start(self, plan: dict[str, Any]) -> None:
        if not self.quiet:
            k = plan.get("n_codebooks")
            what = (f"model {plan['model']}, {k} codebook{'s' if k != 1 else ''} ({plan['kbps']:g} kbit/s per "
                    f"channel nominal), " if "model" in plan else "")
            click.echo(f"flowdec: {plan['items']} files, {plan['done_before']} done before, {plan['todo']} to "
                       f"{self.todo_verb} in {plan['shards']} shards; {what}engine {plan['engine']}", err=True)
        from tqdm import tqdm

        self.bar = tqdm(total=plan["todo"], desc=self.verb, unit="file", disable=True if self.quiet else None,
                        dynamic_ncols=True, file=sys.stderr)
        self.t0 = time.perf_counter()

    def record(self, rec: dict[str, Any]) -> None:
        if rec["status"] == "failed":
            self.failed += 1
            write = self.bar.write if self.bar is not None else print
            write(error_line(rec["error"]), file=sys.stderr)
        if rec["status"] == "ok":
            self.audio += float(rec["duration_s"])
            write = self.bar.write if self.bar is not None else print
            for warning in str(rec.get("warnings") or "").splitlines():
                write(f"flowdec: warning: {terminal_text(warning)}", file=sys.stderr)
        if self.bar is not None:
            wall = time.perf_counter() - self.t0
            self.bar.set_postfix_str(f"{self.audio / 3600:.3f} h audio, {self.audio / wall if wall else 0:.1f} s/s"
                                     + (f", {self.failed} failed" if self.failed else ""), refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _finish(summary: Any, out: Path, quiet: bool, as_json: bool, verb: str) -> None:
    from .corpus import FAILURES

    if as_json:
        click.echo(strict_json({"files": summary.total, "done": summary.done, "done_before": summary.skipped,
                               "failed": len(summary.failed), "audio_seconds": summary.audio_seconds,
                               "seconds": summary.seconds, "audio_seconds_per_second": summary.speed,
                               "engine": summary.engine, "shards": summary.shards, "output": str(out),
                               "failures": str(out / FAILURES) if summary.failed else None}))
    if quiet and summary.failed:  # the failures, not the summary (as -q promises)
        click.echo(error_line(f"{len(summary.failed)} of {summary.total} files failed; listed in "
                              f"{out / FAILURES}"), err=True)
    elif not quiet:
        parts = [f"{summary.done} {verb}", f"{summary.skipped} done before", f"{len(summary.failed)} failed"]
        audio, took = (human_duration(s, precise=True) for s in (summary.audio_seconds, summary.seconds))
        speed = (f"; {audio} of audio in {took} ({summary.speed:.1f} s of audio per second)" if summary.done else "")
        where = f"; failures listed in {out / FAILURES}" if summary.failed else ""
        click.echo(f"flowdec: {', '.join(parts)} of {summary.total} files{speed}{where}", err=True)
    if summary.failed:
        raise click.exceptions.Exit(1)


@click.group("corpus")
def corpus_group() -> None:
    """Code whole corpora with many workers (Ray Data; one process without Ray), as Parquet shards of codes
    or a .fdc tree; decode shards back to audio.

    \b
      flowdec corpus encode ./audio ./codes                 Parquet shards, local Ray or this process
      flowdec corpus encode list.csv ./codes -b 6           a manifest (path[,id]) at 6 kbit/s
      flowdec corpus encode 'data/**/*.flac' ./tree --to fdc
      RAY_ADDRESS=auto flowdec corpus encode /shared/audio /shared/codes --gpus-per-worker 1
      flowdec corpus decode ./codes ./decoded --format flac
    """


@corpus_group.command("encode")
@click.argument("src", metavar="IN")
@click.argument("dst", metavar="OUT", type=PathArgument())
@click.option("--to", "to", type=click.Choice(["parquet", "fdc"]), default="parquet", show_default=True,
              help="parquet: shards OUT/part-NNNNN.parquet, one row per file; fdc: the tree OUT/<id>.fdc.")
@rate_options
@click.option("-m", "--model", default=None, help="Model name, hf://OWNER/REPO[@REV], or path (as compress); "
                                                  "every worker must be able to load it.")
@click.option("--no-entropy", is_flag=True,
              help="--to fdc: bit-packed codes (format 1.0, or 1.2 with the side channel).")
@click.option("--envelope/--no-envelope", default=None,
              help="Write the band-level side channel (default: as the model says; as compress).")
@click.option("--glob", "pattern", default=None, help="Folder IN: only files whose relative path matches.")
@click.option("--shard-files", type=click.IntRange(min=1), default=100, show_default=True,
              help="Files per shard (the unit of work, of resuming and of retrying).")
@click.option("-f", "--force", is_flag=True,
              help="Start OUT again: remove what earlier runs coded there (its shards, its .fdc files, its "
                   "failure list and settings), then code every input, with any settings.")
@_engine_options
def encode_command(src: str, dst: Path, to: str, bitrate: float | None, n_codebooks: int | None, model: str | None,
                   no_entropy: bool, envelope: bool | None, pattern: str | None, shard_files: int, force: bool,
                   engine: str,
                   address: str | None,
                   workers: int | None, cache_dir: Path | None, cpus_per_worker: float, gpus_per_worker: float,
                   device: str, threads: int | None, as_json: bool, quiet: bool) -> None:
    """Code every audio file of IN (a folder, a quoted glob, or a CSV/JSONL manifest of paths with optional
    ids) into OUT. A rerun skips what is done; bad files go to OUT/_failures.csv and the run goes on (exit 1).
    Each file's id is its path below IN without the extension (or the manifest's id): two inputs with one id
    (a.wav and a.flac) are refused before anything is coded; give ids in a manifest."""
    from .corpus import encode_corpus

    check_rate_request_option(bitrate, n_codebooks)
    if as_json:
        require_stdout()  # before the work: a closed one would drop the summary of a run that looked fine
    eng = _engine(engine, address, workers, cpus_per_worker, gpus_per_worker)
    report = _Report(quiet, "coded")
    try:
        summary = encode_corpus(src, dst, to=to, model=model, n_codebooks=n_codebooks, bitrate_kbps=bitrate,
                                entropy=not no_entropy, envelope=envelope, device=device, threads=threads,
                                pattern=pattern, cache_dir=cache_dir, force=force,
                                shard_size=shard_files, engine=eng, on_start=report.start, on_record=report.record)
    finally:
        report.close()
    _finish(summary, dst, quiet, as_json, "coded")


@corpus_group.command("decode")
@click.argument("src", metavar="IN", type=PathArgument())
@click.argument("dst", metavar="OUT", type=PathArgument())
@click.option("--format", "out_format", default="wav", show_default=True, help="Output type (wav, flac, ...).")
@decode_options
@click.option("-m", "--model", default=None, help="Decode with this model instead of the one named in the rows.")
@click.option("-f", "--force", is_flag=True,
              help="Decode every row again, replacing the audio files an earlier run wrote (not skipping them).")
@_engine_options
def decode_command(src: Path, dst: Path, out_format: str, nfe: int | None, solver: str, temperature: float | None,
                   harmonic_redraw: int | None, seed: int | None, subtype: str | None, precision: str,
                   model: str | None, force: bool, engine: str,
                   address: str | None, workers: int | None, cache_dir: Path | None, cpus_per_worker: float,
                   gpus_per_worker: float, device: str, threads: int | None, as_json: bool, quiet: bool) -> None:
    """Decode Parquet shards (a folder of part-*.parquet, or one shard) into OUT/<id>.<format>, resuming."""
    from .corpus import decode_corpus

    if nfe is not None:
        check_nfe_option(nfe, solver)
        warn_idle_postfilter_options(nfe, temperature, harmonic_redraw)
    if as_json:
        require_stdout()
    eng = _engine(engine, address, workers, cpus_per_worker, gpus_per_worker)
    report = _Report(quiet, "decoded")
    try:
        summary = decode_corpus(src, dst, out_format=out_format, model=model, nfe=nfe, solver=solver, seed=seed,
                                temperature=temperature, harmonic_redraw=harmonic_redraw, subtype=subtype,
                                precision=precision, device=device,
                                threads=threads, engine=eng, cache_dir=cache_dir, tune_process=True, force=force,
                                on_start=report.start, on_record=report.record)
    finally:
        report.close()
    _finish(summary, dst, quiet, as_json, "decoded")

