"""``flowdec models``: list the known models, fetch the released ones, export one for the hub."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import FlowdecGroup, terminal_text
from ..options import cache_dir_option
from ..streams import strict_json

__all__ = ["models_group"]


def _cache_option(f: Callable) -> Callable:
    return cache_dir_option()(f)


def _size(n: int | None, approx: int | None) -> str:
    if n is None:
        return f"~{_bytes(approx)}" if approx else "-"
    return _bytes(n)


def _bytes(n: int | None) -> str:
    if not n:
        return "0 B"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit in ("B", "kB") or value >= 100 else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover


def _rate_range(rates: list[float]) -> str:
    if not rates:
        return "-"
    return f"{min(rates):g}" if len(rates) == 1 else f"{min(rates):g}-{max(rates):g}"


def _print_table(models: list[dict[str, Any]], chosen: tuple[str, str] | None) -> None:
    header = ("NAME", "RATE", "KBIT/S", "TRAINED AT", "NFE", "SIZE", "LICENCE", "LOCAL")
    rows = []
    for m in models:
        trained = m.get("trained_bitrates_kbps")
        rows.append((
            m["name"] + (" *" if m.get("default") else ""),
            f"{m['frame_rate']:g} Hz" if m.get("frame_rate") else "-",
            _rate_range(m.get("bitrates_kbps") or []),
            ", ".join(f"{r:g}" for r in trained) if trained else ("all" if not m.get("has_postfilter") else "-"),
            str(m.get("default_nfe", "-")),
            _size(m.get("size_bytes"), m.get("approx_size_bytes")),
            m.get("licence") or "unknown",
            m["available"],
        ))
    cells = [tuple(terminal_text(str(c)) for c in r) for r in rows]  # cards come from model folders
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]
    for r in [header, *cells]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    from .catalogue import DEFAULT_MODEL_ENV, RELEASED_DEFAULT

    notes = []
    default = next((m for m in models if m.get("default")), None)
    if chosen is not None and chosen[1] == f"${DEFAULT_MODEL_ENV}":
        notes.append(f"default model: {chosen[0]} (from ${DEFAULT_MODEL_ENV}, which wins over "
                     f"`flowdec models default`); unset {DEFAULT_MODEL_ENV} to return to that setting")
    elif chosen is not None:
        notes.append(f"default model: {chosen[0]} (from {chosen[1]}); `flowdec models default --reset` "
                     "returns to the built-in one")
    elif default is not None:
        notes.append(f"* the default model ({default['name']}, built in); choose another with "
                     f"`flowdec models default NAME` or {DEFAULT_MODEL_ENV}=NAME")
    released = next((m for m in models if m["name"] == RELEASED_DEFAULT), None)
    if released is not None and released["available"] != "not local" and not released.get("default"):
        notes.append(f"{RELEASED_DEFAULT} is installed: make it the default with "
                     f"`flowdec models default {RELEASED_DEFAULT}` (or {DEFAULT_MODEL_ENV}={RELEASED_DEFAULT})")
    notes.append("NFE: postfilter passes used when --nfe is not given (0: the codec alone)")
    if any(m["kind"] == "official" and m["available"] == "not local" for m in models):
        notes.append("released models: `flowdec models fetch-official` downloads and converts them (1.2 GB)")
    if any(str(m.get("licence", "")).upper().startswith("CC-BY-NC") for m in models):
        notes.append("CC-BY-NC-4.0: attribution required, non-commercial use only")
    notes.append("any model: --model NAME, --model PATH or --model hf://OWNER/REPO[@REVISION]")
    notes += [f"{m['name']} is broken: {terminal_text(m['problem'])}" for m in models if m.get("problem")]
    for n in notes:
        click.echo(f"flowdec: {n}", err=True)


@click.group("models", cls=FlowdecGroup, invoke_without_command=True, short_help="List, fetch and export models.",
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.pass_context
def models_group(ctx: click.Context) -> None:
    """Known models: list them, fetch the released FlowDec models, export one for the Hugging Face hub.

    \b
      flowdec models                          the table (same as `flowdec models list`)
      flowdec models fetch-official           download + convert the released weights
      flowdec models default flowdec-75m      use it when no --model is given ($FLOWDEC_MODEL wins)
      flowdec models export flowdec-75m DIR   a folder ready for `hf upload OWNER/REPO DIR`
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_command)


@models_group.command("list", short_help="The known models and whether they are local.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_cache_option
def list_command(as_json: bool = False, cache_dir: Path | None = None) -> None:
    """Known models: frame rate, bitrates, size, licence, and whether they are available locally."""
    from ..streams import require_stdout
    from .catalogue import chosen_default_model, list_models, missing_default_model
    from .folder import ModelError

    require_stdout()
    models = list_models(cache_dir)
    try:
        chosen = chosen_default_model(cache_dir)
        unusable = missing_default_model(chosen)
    except ModelError as exc:  # the list still helps; the commands that need a default will stop on it
        chosen, unusable = None, str(exc)
    if as_json:
        click.echo(strict_json(models, indent=2))
    else:
        _print_table(models, chosen)
    if unusable is not None:
        click.echo(f"flowdec: warning: {terminal_text(unusable)}", err=True)


@models_group.command("default", short_help="Show or set the model used when no --model is given.")
@click.argument("name", metavar="[NAME_OR_PATH]", required=False)
@click.option("--reset", is_flag=True, help="Go back to the built-in model.")
@_cache_option
def default_command(name: str | None, reset: bool, cache_dir: Path | None) -> None:
    """Show the default model, or make NAME_OR_PATH (a model name, a folder or hf://OWNER/REPO) the default.

    The setting lives in settings.json in the model cache (--cache-dir, else $FLOWDEC_HOME, else
    ~/.cache/flowdec); the environment variable FLOWDEC_MODEL overrides it.
    """
    from ..streams import require_stdout
    from .catalogue import (
        DEFAULT_MODEL_ENV,
        builtin_model_name,
        chosen_default_model,
        missing_default_model,
        set_default_model,
    )
    from .folder import UnknownModelError

    if name is not None and reset:
        raise click.UsageError("give either NAME_OR_PATH or --reset, not both")
    if name is None and not reset:
        require_stdout()
        chosen = chosen_default_model(cache_dir)
        if chosen is None:
            click.echo(builtin_model_name())
            click.echo("flowdec: the built-in model (no default chosen)", err=True)
        else:
            click.echo(chosen[0])
            click.echo(f"flowdec: from {chosen[1]}", err=True)
            missing = missing_default_model(chosen)
            if missing:
                click.echo(f"flowdec: warning: {terminal_text(missing)}", err=True)
        return
    try:
        path = set_default_model(None if reset else name, cache_dir)
    except UnknownModelError as exc:  # a name no model has: a usage error, as for --model
        raise click.UsageError(str(exc)) from None
    chosen = chosen_default_model(cache_dir)
    now = chosen[0] if chosen else builtin_model_name()
    click.echo(f"flowdec: default model is now {now} (saved in {path})", err=True)
    if chosen and chosen[1] == f"${DEFAULT_MODEL_ENV}":
        click.echo(f"flowdec: warning: ${DEFAULT_MODEL_ENV} is set and wins over this setting", err=True)


@models_group.command("fetch-official", short_help="Download and convert the released FlowDec models.")
@click.option("--from", "source", metavar="PATH_OR_URL", default=None,
              help="A local checkpoints.zip or another URL (default: the FlowDec GitHub release).")
@click.option("--no-size-check", is_flag=True, help="Accept an archive whose size differs from the release's.")
@click.option("--no-hash-check", is_flag=True,
              help="Skip comparing the archive's sha256 with the recorded one (the converted postfilters are "
                   "still checked against the released architecture).")
@click.option("--keep-zip", is_flag=True, help="Keep the downloaded archive in the cache after converting.")
@click.option("-f", "--force", is_flag=True, help="Convert again even if all four models are in the cache.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@_cache_option
def fetch_official_command(source: str | None, no_size_check: bool, no_hash_check: bool, keep_zip: bool, force: bool,
                           quiet: bool, cache_dir: Path | None) -> None:
    """Download the released FlowDec weights (checkpoints.zip, 1.2 GB; resumes), convert them into the cache.

    Only the four weight files are taken from the archive. They become the models flowdec-75m, flowdec-25s,
    ndac-75 and ndac-25, licensed CC-BY-NC-4.0 (non-commercial use only).
    """
    from .catalogue import OFFICIAL_MODELS, OFFICIAL_ZIP_SHA256, OFFICIAL_ZIP_SIZE, OFFICIAL_ZIP_URL, models_dir
    from .release import fetch_official

    if source is not None and not source.strip():
        raise click.UsageError("--from: an empty path or URL; leave --from out to download the release")
    if not quiet:
        click.echo(f"flowdec: fetching the released models from {source or OFFICIAL_ZIP_URL} into "
                   f"{models_dir(cache_dir)}", err=True)
    done = fetch_official(source, expected_size=None if no_size_check else OFFICIAL_ZIP_SIZE,
                          expected_sha256=None if no_hash_check else OFFICIAL_ZIP_SHA256,
                          progress=not quiet, keep_download=keep_zip, force=force, cache_dir=cache_dir)
    if not quiet:
        for name, path in done.items():
            click.echo(f"flowdec: {name}: {path}", err=True)
        click.echo(f"flowdec: {len(done)} of {len(OFFICIAL_MODELS)} models ready (CC-BY-NC-4.0: non-commercial "
                   "use only); try `flowdec roundtrip in.wav out.wav --model flowdec-75m`, or make it the "
                   "default: `flowdec models default flowdec-75m`", err=True)


@models_group.command("export", short_help="Write a model as a folder ready for the Hugging Face hub.")
@click.argument("name", metavar="NAME_OR_PATH")
@click.argument("dest", metavar="DIR", type=click.Path(path_type=Path))
@click.option("-f", "--force", is_flag=True, help="Overwrite the model files in a non-empty DIR.")
@click.option("--repo", "repo_id", metavar="OWNER/REPO", default=None,
              help="The hub repo it is for: names the model hf://OWNER/REPO and fills in the model card.")
@_cache_option
def export_command(name: str, dest: Path, force: bool, repo_id: str | None, cache_dir: Path | None) -> None:
    """Write a model as a folder ready to upload to the Hugging Face hub (then: hf upload OWNER/REPO DIR)."""
    from .cards import export_for_hub

    out = export_for_hub(name, dest, force=force, repo_id=repo_id, cache_dir=cache_dir)
    click.echo(f"flowdec: wrote {out}; upload with `hf upload {repo_id or 'OWNER/REPO'} {out}`, "
               f"then use --model hf://{repo_id or 'OWNER/REPO'}", err=True)
