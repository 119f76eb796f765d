"""Click commands ``flowdec eval`` and ``flowdec plot`` (attached to the main group elsewhere).

Errors are one line naming the file and the problem: :class:`click.UsageError` (exit 2) for
bad arguments, :class:`click.ClickException` (exit 1) for everything found while running.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from ..errors import Failure, error_line
from ..exceptions import FlowdecError
from ..fileio import OutputExistsError, atomic_write_bytes
from ..options import THREADS, check_nfe_option, device_option
from ..streams import require_stdout
from .metrics import (
    DEFAULT_METRICS,
    METRICS,
    OPTIONAL_METRICS,
    MetricError,
    MetricUnavailable,
    metric_available,
)
from .pairing import AudioReadError, PairingError, ScoringError, pair_paths, score_pair
from .report import Report

__all__ = ["eval_command", "plot_command", "select_metrics"]

_ALIASES = {
    "si-sdr": "si_sdr",
    "sisdr": "si_sdr",
    "mel_distance": "mel",
    "log_spectral_distance": "lsd",
    "pesq_wb": "pesq",
    "pesq-wb": "pesq",
}


def select_metrics(spec: str | None, all_metrics: bool) -> tuple[list[str], list[str]]:
    """Metric names from ``--metrics`` / ``--all``; returns ``(names, notes)``.

    * neither: the always-available three (si_sdr, mel, lsd);
    * ``--all``: every metric that can run here, as ``--metrics all`` but for those whose package
      is not installed (named in ``notes``);
    * ``--metrics a,b``: exactly those (``all`` in the list means every metric); an optional
      one that is not installed is an error.
    """
    if spec is not None and all_metrics:
        raise click.UsageError("give either --metrics or --all, not both")
    if spec is None:
        if not all_metrics:
            return list(DEFAULT_METRICS), []
        names = [m for m in METRICS if metric_available(m)]
        missing = [m for m in OPTIONAL_METRICS if not metric_available(m)]
        notes = []
        if missing:
            notes.append(
                f"not installed, skipped: {', '.join(missing)} (pip install 'flowdec-cli[metrics]')"
            )
        return names, notes
    names = []
    for raw in spec.split(","):
        key = raw.strip().lower()
        if not key:
            continue
        key = _ALIASES.get(key, key)
        expanded = list(METRICS) if key == "all" else [key]
        for k in expanded:
            if k not in METRICS:
                raise click.UsageError(
                    f"unknown metric '{raw.strip()}'; choose from {', '.join(METRICS)}"
                )
            if k not in names:
                names.append(k)
    if not names:
        raise click.UsageError("--metrics is empty")
    for k in names:
        if not metric_available(k):
            raise Failure(str(MetricUnavailable(k, METRICS[k].package or k)))
    return names, []


def _warn(msg: str) -> None:
    click.echo(f"flowdec: warning: {msg}", err=True)


def _list_some(paths, limit: int = 5) -> str:
    names = [str(p) for p in paths]
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _output_format(json_out: bool, csv_out: bool, output: Path | None) -> str:
    if json_out and csv_out:
        raise click.UsageError("give either --json or --csv, not both")
    if json_out:
        return "json"
    if csv_out:
        return "csv"
    if output is not None and output.suffix.lower() in (".json", ".csv"):
        return output.suffix.lower()[1:]
    return "table"


def _exists(output: Path) -> Failure:
    return Failure(f"{output}: exists; use -f/--force to overwrite")


def _check_output(output: Path | None, inputs: list[Path], force: bool) -> None:
    """Refuse, before any work, an output that is one of the inputs (even with --force: a file, or an audio
    file inside a folder given) or that exists. Without ``-o`` the report goes to standard output, which must
    be open (``>&-`` would drop it and the run end as if it had been written)."""
    if output is None:
        require_stdout()
        return
    from ..audio import is_audio_path as is_audio

    for path in inputs:
        with contextlib.suppress(OSError):
            if path.is_file() and output.exists() and output.samefile(path):
                raise Failure(f"{output}: is also an input; choose another output")
            if path.is_dir() and output.is_file() and is_audio(output) \
                    and path.resolve() in output.resolve().parents:
                raise Failure(f"{output}: is one of the audio files in {path}; choose another output")
    if not force and (output.exists() or output.is_symlink()):
        raise _exists(output)


def _emit(text: str, output: Path | None, force: bool = False) -> None:
    """The report to standard output, or to ``output`` in one atomic step (no-clobber without --force)."""
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        atomic_write_bytes(output, text.encode("utf-8"), make_parents=False, overwrite=force)
    except OutputExistsError:
        raise _exists(output) from None
    except OSError as exc:
        raise Failure(f"{output}: cannot write ({exc.strerror or exc})") from exc
    click.echo(f"flowdec: wrote {output}", err=True)


def _parse_list(text: str | None, kind, what: str) -> list | None:
    if text is None:
        return None
    try:
        return [kind(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise click.UsageError(f"--{what}: expected a comma-separated list of numbers, got '{text}'") from None


@click.command("eval")
@click.argument("ref", type=click.Path(exists=True, path_type=Path))
@click.argument("deg", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("-m", "--metrics", "metrics_spec", metavar="LIST",
              help="Comma-separated metrics: si_sdr, mel, lsd, hf_ratio, coherence, visqol, pesq, stoi, "
                   "estoi, or all. "
                   "Default: si_sdr,mel,lsd.")
@click.option("--all", "all_metrics", is_flag=True,
              help="Every metric that can run here (-m all, less those whose package is not installed).")
@click.option("--json", "json_out", is_flag=True, help="Print JSON instead of a table.")
@click.option("--csv", "csv_out", is_flag=True, help="Print CSV instead of a table.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the report to FILE (format from --json/--csv, else from a .json/.csv "
                   "suffix, else a table).")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing -o FILE (and --codec --save files).")
@click.option("--allow-mismatch", is_flag=True,
              help="Score pairs whose sample rates or lengths differ (resampled, trimmed to the shorter) with a "
                   "warning, instead of refusing them.")
@click.option("--codec", "codec_model", metavar="MODEL",
              help="Code the files under REF with MODEL and score them (no DEG).")
@click.option("--bitrates", metavar="LIST", help="--codec: kbps values to test (default: all).")
@click.option("--nfe", "nfe_spec", default=None, metavar="LIST",
              help="--codec: postfilter NFEs to test; 0 = NDAC decoder alone (default: 0 and the model's "
                   "default, 0,6 for flowdec-small; 0 alone for a codec without a postfilter).")
@click.option("--opus", is_flag=True, help="--codec: add Opus (opusenc/opusdec) at the same bitrates.")
@device_option(" --codec only.")
@click.option("--seed", default=0, show_default=True, type=int, help="--codec: postfilter seed.")
@click.option("--threads", type=THREADS, default=None, help="--codec: CPU threads for torch (default: torch's choice).")
@click.option("--save", "save_dir", type=click.Path(file_okay=False, path_type=Path),
              help="--codec: also write the decoded files under this folder, as "
                   "<relative path>.<system>_<kbps>k[_nfe<N>].wav.")
def eval_command(ref, deg, metrics_spec, all_metrics, json_out, csv_out, output, force, allow_mismatch,
                 codec_model, bitrates, nfe_spec, opus, device, seed, threads, save_dir):
    """Score decoded audio DEG against reference REF: two files, or two folders
    paired by relative path (the extension may differ). One row per file, and
    the mean.

    \b
    With --codec MODEL, REF is a file or folder to code at several bitrates
    and NFEs; reports the metrics and the real-time factors of each stage.

    \b
    Metrics: si_sdr (dB, higher is better), mel (multi-resolution log-mel L1,
    lower is better), lsd (log-spectral distance in dB, lower is better),
    hf_ratio (energy above 8 kHz relative to the reference), coherence (phase
    agreement with the reference, 500 Hz-4 kHz, 0-1); with the metrics extra
    also visqol (ViSQOL v3 audio mode, 48 kHz), pesq (wide-band, 16 kHz),
    stoi and estoi.
    """
    fmt = _output_format(json_out, csv_out, output)
    _check_output(output, [ref] + ([deg] if deg is not None else []), force)
    names, notes = select_metrics(metrics_spec, all_metrics)
    for n in notes:
        _warn(n)

    if codec_model is not None:
        if deg is not None:
            raise click.UsageError("with --codec give one file or folder to code, not REF and DEG")
        report = _codec_mode(codec_model, ref, names, bitrates, nfe_spec, opus, device, seed,
                             save_dir, force, threads)
        _emit(report.render(fmt), output, force)
        failed = report.extra["failed"]
        if failed:  # each was named as it failed; the report holds the others
            raise Failure(f"{len(failed)} of {len(failed) + report.extra['n_files']} files could not be coded "
                          "and scored and are not in the report")
        return
    codec_only = {"--bitrates": bitrates, "--opus": opus or None, "--save": save_dir,
                  "--nfe": nfe_spec, "--threads": threads}
    used = [k for k, v in codec_only.items() if v is not None]
    if used:
        raise click.UsageError(f"{', '.join(used)} only apply with --codec")
    if deg is None:
        raise click.UsageError("missing DEG: give REF and DEG (or --codec MODEL DIR)")

    try:
        pairing = pair_paths(ref, deg)
    except PairingError as exc:
        raise Failure(str(exc)) from exc
    if pairing.unpaired_ref:
        _warn(f"{len(pairing.unpaired_ref)} file(s) in {ref} have no match in {deg}: "
              f"{_list_some(p.relative_to(ref) for p in pairing.unpaired_ref)}")
    if pairing.unpaired_deg:
        _warn(f"{len(pairing.unpaired_deg)} file(s) in {deg} have no match in {ref}: "
              f"{_list_some(p.relative_to(deg) for p in pairing.unpaired_deg)}")
    if not pairing.pairs:
        raise Failure(f"no audio files to compare: nothing in {ref} pairs with {deg}")

    report = Report(
        labels=["file"],
        values=names,
        higher_is_better={m: METRICS[m].higher_is_better for m in names},
        extra={
            "ref": str(ref),
            "deg": str(deg),
            "units": {m: METRICS[m].unit for m in names},
            "unpaired": {
                "ref": [str(p) for p in pairing.unpaired_ref],
                "deg": [str(p) for p in pairing.unpaired_deg],
            },
            "failed": [],  # each pair that could not be scored, with why (as --codec mode's files)
        },
    )
    show_progress = len(pairing.pairs) > 1 and sys.stderr.isatty()
    failed: list[str] = []
    for i, pair in enumerate(pairing.pairs, 1):
        if show_progress:
            click.echo(f"flowdec: [{i}/{len(pairing.pairs)}] {pair.name}", err=True)
        try:
            report.add(file=pair.name, ref=str(pair.ref), deg=str(pair.deg),
                       **score_pair(pair, names, allow_mismatch, warn=_warn))
        except MetricUnavailable as exc:
            raise Failure(str(exc)) from exc
        except ScoringError as exc:
            if len(pairing.pairs) == 1:
                raise Failure(str(exc)) from exc
            click.echo(error_line(str(exc)), err=True)  # one bad pair; the others go on
            failed.append(pair.name)
            report.extra["failed"].append(str(exc))
    if failed and not report.rows:
        raise Failure(f"none of the {len(failed)} pairs could be scored")
    _emit(report.render(fmt), output, force)
    if fmt == "csv" and len(report.rows) > 1:
        mean = report.mean()
        click.echo(f"flowdec: mean over {mean['n']} files (not in the CSV): "
                   + ", ".join(f"{m} {mean[m]:.3f}" + (f" (over {mean['counts'][m]})"
                                                       if mean["counts"][m] < mean["n"] else "")
                               for m in names), err=True)
    left_out = []
    if failed:
        left_out.append(f"{len(failed)} of {len(pairing.pairs)} pairs could not be scored: {_list_some(failed)}")
    if pairing.unpaired_ref:  # a decode that is missing is a failure of the set, not a detail of the report
        left_out.append(f"{len(pairing.unpaired_ref)} reference file(s) have no decoded match: "
                        f"{_list_some(p.relative_to(ref) for p in pairing.unpaired_ref)}")
    if left_out:
        raise Failure("; ".join(left_out) + " (not in the report)")


def _codec_mode(model, path, names, bitrates, nfe_spec, opus, device, seed, save_dir, force, threads) -> Report:
    from ..runtime import set_threads
    from .codec_eval import run_codec_eval

    kbps = _parse_list(bitrates, float, "bitrates")
    nfes = _parse_list(nfe_spec, int, "nfe") or None
    for n in nfes or ():
        check_nfe_option(n, "midpoint")  # a usage error (exit 2) before any model is loaded
    set_threads(threads)
    log = (lambda m: click.echo(f"flowdec: {m}", err=True)) if sys.stderr.isatty() else None
    try:
        report = run_codec_eval(model, path, bitrates=kbps, nfes=nfes, metrics=names,
                                device=device, seed=seed, opus=opus, save_dir=save_dir, overwrite=force,
                                log=log, warn=_warn, on_error=lambda m: click.echo(error_line(m), err=True))
    except click.ClickException:
        raise
    except OutputExistsError as exc:
        raise _exists(exc.path) from exc
    except (AudioReadError, ValueError, MetricError, FlowdecError) as exc:  # ours say what and where
        from ..exceptions import CodecError

        if isinstance(exc, CodecError):  # files' own failures are reported inside: a --bitrates the model
            raise click.UsageError(str(exc)) from None  # has no rate for, a usage error as for compress -b
        raise Failure(str(exc)) from exc
    except Exception as exc:  # model loading, the pipeline, opus tools: one line, no traceback
        raise Failure(f"{type(exc).__name__}: {exc}") from exc
    for n in report.notes:
        _warn(n)
    report.notes = []
    return report


@click.command("plot")
@click.argument("ref", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("outs", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="PNG file to write.")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing -o FILE.")
@click.option("-t", "--title", "titles", multiple=True,
              help="Panel title; repeat once per OUT (reference titled 'reference') or once "
                   "per panel including REF. Default: file names.")
def plot_command(ref, outs, output, force, titles):
    """Draw log spectrograms of REF and each OUT side by side into a PNG (-o).

    Needs matplotlib (pip install 'flowdec-cli[plot]'). Multi-channel files are mixed down to
    mono; all panels share one dB scale relative to the reference's peak (the loudest panel's
    when the reference is silent, with a warning). Long titles are shortened in the middle.
    """
    from .plot import PlotUnavailable, plot_spectrograms

    n_panels = 1 + len(outs)
    if titles and len(titles) not in (n_panels, n_panels - 1):
        raise click.UsageError(
            f"got {len(titles)} --title for {n_panels} panels; give {n_panels - 1} "
            f"(one per OUT) or {n_panels} (REF first)"
        )
    if output.suffix.lower() != ".png":
        raise click.UsageError(f"{output}: the plot is a PNG image; give -o a .png name")
    _check_output(output, [ref, *outs], force)
    notices: list[str] = []
    try:
        path = plot_spectrograms(ref, list(outs), list(titles) or None, output, overwrite=force, notices=notices)
    except (PlotUnavailable, AudioReadError) as exc:
        raise Failure(str(exc)) from exc
    except OutputExistsError:
        raise _exists(output) from None
    except OSError as exc:
        raise Failure(f"{output}: cannot write ({exc.strerror or exc})") from exc
    for note in notices:
        _warn(note)
    click.echo(f"flowdec: wrote {path}", err=True)
