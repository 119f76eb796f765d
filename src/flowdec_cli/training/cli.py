"""``flowdec train``: train both stages, code a dataset, estimate sigma_y, export a model folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..envelope import LAYOUTS
from ..errors import Failure, FlowdecGroup, error_line
from ..fileio import parse_json
from ..harmonics import CUTOFF_RANGE_HZ
from ..options import FiniteFloatRange, device_for_command, device_option, temperature_option, threads_option

__all__ = ["train_group"]


_quiet = click.option("-q", "--quiet", is_flag=True, help="No progress bar, notes or closing summary.")


def _bar(quiet: bool) -> Callable[[str, int], Any] | None:
    if quiet:
        return None
    from tqdm import tqdm

    return lambda desc, total: tqdm(total=total, desc=desc, unit="file", dynamic_ncols=True, disable=None)


@click.group("train", cls=FlowdecGroup)
def train_group() -> None:
    """Train FlowDec: the NDAC codec, then the flow postfilter on its outputs.

    \b
      flowdec train ndac ndac.toml                      stage 1: the codec (no discriminator)
      flowdec train prepare-pairs --ndac runs/ndac data/ -o pairs/ -n 10 -n 8 -n 6 -n 4
      flowdec train estimate-sigma postfilter.toml      sigma_y and beta from the pairs
      flowdec train postfilter postfilter.toml          stage 2: the postfilter
      flowdec train export my-model --ndac runs/ndac --postfilter runs/postfilter
      flowdec train widen-ndac runs/ndac runs/ndac-wide --decoder-factor 2   (grow a trained codec)
      flowdec train widen-postfilter runs/pf runs/pf-wide --dim-factor 2    (grow a frame-wise postfilter)
      torchrun --nproc-per-node 8 -m flowdec_cli train postfilter postfilter.toml   (several GPUs)

    Configs are TOML or YAML; see docs/training.md for every key and its default. The examples of the
    repository's configs/ folder ship with the package: `flowdec train init-config ndac-tiny` writes one.
    """


def _train_options(f: Callable) -> Callable:
    f = click.option("-q", "--quiet", is_flag=True, help="No progress bar or validation lines.")(f)
    f = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="Override a config key (value in TOML syntax), e.g. --set train.max_steps=1000.")(f)
    f = click.option("--max-steps", type=click.IntRange(min=0), default=None, help="Override train.max_steps.")(f)
    f = click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Run folder (default: train.out_dir of the config).")(f)
    f = click.option("--resume-from", type=click.Path(exists=True, path_type=Path), default=None,
                     help="Continue from this checkpoint (or run) folder.")(f)
    f = click.option("--resume", is_flag=True, help="Continue from the run folder's latest checkpoint.")(f)
    f = threads_option(f)
    f = device_option(" Under torchrun each process takes cuda:LOCAL_RANK.")(f)
    f = click.argument("config", type=click.Path(path_type=Path))(f)
    return f


def _run_stage(kind: str, config: Path, device: str, threads: int | None, resume: bool, resume_from: Path | None,
               out_dir: Path | None, max_steps: int | None, overrides: tuple[str, ...], quiet: bool) -> None:
    from ..runtime import set_threads
    from .common import TrainingError
    from .config import OverrideError, load_config

    if threads:
        set_threads(threads)
    try:
        cfg = load_config(config, kind, list(overrides))
    except OverrideError as exc:  # the command line's fault, not the file's
        raise click.UsageError(str(exc)) from None
    if resume and resume_from:
        raise click.UsageError("give --resume or --resume-from, not both")
    resume_arg: bool | str = str(resume_from) if resume_from else bool(resume)
    if resume and not (Path(out_dir or cfg.train.out_dir) / "checkpoints").is_dir():
        raise TrainingError(f"{out_dir or cfg.train.out_dir}: no checkpoints to resume from")
    if kind == "ndac":
        from .ndac_trainer import NDACTrainer as T
    else:
        from .postfilter_trainer import PostfilterTrainer as T  # type: ignore[assignment]
    trainer = T(cfg, device=device, resume=resume_arg, max_steps=max_steps, out_dir=out_dir, quiet=quiet)
    results = trainer.run()
    if trainer.env.is_main and not quiet:
        tail = f" ({', '.join(f'{k} {v:.4g}' for k, v in results.items())})" if results else ""
        click.echo(f"flowdec: {kind} trained to step {trainer.step} in {trainer.run_dir}{tail}", err=True)


@train_group.command("init-config", short_help="Write one of the example configs (configs/NAME.toml).")
@click.argument("name", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write it, - for standard output (default: configs/NAME.toml, as the docs' "
                   "commands expect).")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing file.")
@click.option("--list", "list_only", is_flag=True, help="Only list the names.")
def init_config_command(name: str | None, output: Path | None, force: bool, list_only: bool) -> None:
    """Write the example training config NAME (ndac-tiny, postfilter-tiny, the official sizes, the built-in
    model's) to edit and pass to `flowdec train ndac|postfilter`. Without NAME: list them.

    Relative paths inside a config are relative to its own folder (ndac-tiny reads ../data/train).
    """
    from ..fileio import atomic_write_bytes
    from ..streams import require_stdout
    from .presets import PresetError, preset_names, preset_text

    if list_only and (name is not None or output is not None):
        raise click.UsageError("--list only lists the names; give it no NAME or -o")
    if list_only or name is None:
        require_stdout()
        for n in preset_names():
            click.echo(n)
        return
    try:
        text = preset_text(name)
    except PresetError as exc:  # a name that is none of the configs: the command line's mistake
        raise click.UsageError(str(exc)) from None
    if output is not None and str(output) == "-":  # as everywhere else: standard output
        require_stdout()
        click.echo(text, nl=not text.endswith("\n"))
        return
    dest = output or Path("configs") / f"{name.removesuffix('.toml')}.toml"
    if dest.suffix.lower() != ".toml":  # the presets are TOML, and a config is read by its suffix
        raise click.UsageError(f"-o {dest}: the config is TOML; give a name ending in .toml")
    if dest.exists() and not force:
        raise Failure(f"{dest}: exists; use -f/--force to overwrite")
    atomic_write_bytes(dest, text.encode("utf-8"))
    click.echo(f"flowdec: wrote {dest}; relative paths in it are relative to {dest.parent}/", err=True)


@train_group.command("ndac")
@_train_options
def ndac_command(config: Path, device: str, threads: int | None, resume: bool, resume_from: Path | None,
                 out_dir: Path | None, max_steps: int | None, overrides: tuple[str, ...], quiet: bool) -> None:
    """Train the NDAC codec (stage 1) with the settings in CONFIG.

    Writes checkpoints, metrics.csv (and TensorBoard logs when installed) to the run folder, and at the
    end RUN/model/, a codec-only model folder (flowdec roundtrip --model RUN/model --nfe 0).
    """
    _run_stage("ndac", config, device, threads, resume, resume_from, out_dir, max_steps, overrides, quiet)


@train_group.command("postfilter")
@_train_options
def postfilter_command(config: Path, device: str, threads: int | None, resume: bool, resume_from: Path | None,
                       out_dir: Path | None, max_steps: int | None, overrides: tuple[str, ...], quiet: bool) -> None:
    """Train the flow postfilter (stage 2) on the pair lists named in CONFIG.

    Writes checkpoints (raw and EMA weights), metrics.csv, and at the end RUN/postfilter/ (EMA weights).
    """
    _run_stage("postfilter", config, device, threads, resume, resume_from, out_dir, max_steps, overrides, quiet)


def _json_file(path: Path) -> Any:
    """A JSON option file's value; a file that is not JSON is a usage error naming it."""
    try:
        return parse_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise click.BadParameter(f"{path}: not a readable JSON file ({exc})") from None


def _codebook_list(values: tuple[str, ...], option: str = "--n-codebooks") -> list[int]:
    out: list[int] = []
    for v in values:
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(int(part))
            except ValueError:
                raise click.BadParameter(f"'{part}' is not a whole number", param_hint=option) from None
    return out


@train_group.command("prepare-pairs")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--ndac", "ndac_ref", required=True,
              help="The trained NDAC: a run folder, checkpoint, model folder, weights.pth or model name.")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: coded/nq<k>/..., train.txt, validation.txt, test.txt.")
@click.option("-n", "--n-codebooks", "n_codebooks", multiple=True,
              help="Codebook counts to code at (repeat or comma-separate; default: all codebooks).")
@click.option("--validation-fraction", type=FiniteFloatRange(0, 1, max_open=True), default=0.01, show_default=True)
@click.option("--test-fraction", type=FiniteFloatRange(0, 1, max_open=True), default=0.01, show_default=True)
@click.option("--salt", default="flowdec", show_default=True, help="Salt of the hash split.")
@device_option()
@click.option("--envelope", default=None, metavar="LAYOUT", type=click.Choice(list(LAYOUTS)),
              help="Apply the band-level side channel of this layout (bands15) to the coded side, for a postfilter "
                   "that runs after it (a model card's envelope_before_postfilter).")
@click.option("--harmonic-redraw", "harmonic_redraw_hz", type=click.IntRange(*CUTOFF_RANGE_HZ), default=None,
              metavar="HZ", help="Then redraw the coded side's voiced harmonics below HZ at the clean side's F0, "
                                 "for a postfilter exported with --harmonic-redraw (docs/models.md).")
@threads_option
@click.option("-f", "--force", is_flag=True, help="Re-code files whose coded output exists.")
@_quiet
def prepare_pairs_command(sources: tuple[Path, ...], ndac_ref: str, out_dir: Path, n_codebooks: tuple[str, ...],
                          validation_fraction: float, test_fraction: float, salt: str, device: str,
                          envelope: str | None, harmonic_redraw_hz: int | None, threads: int | None, force: bool,
                          quiet: bool) -> None:
    """Code the audio in SOURCES (folders or path lists) with a trained NDAC and write pair lists.

    Each line of train.txt / validation.txt / test.txt is "clean_path,coded_path" (the official format),
    once per file and codebook count. Existing coded files are kept, so an interrupted run resumes.
    """
    from ..runtime import set_threads
    from .prepare import prepare_pairs

    if validation_fraction + test_fraction >= 1:
        raise click.UsageError("--validation-fraction plus --test-fraction must be below 1")
    dev = device_for_command(device)
    set_threads(threads)  # its range was checked as the option was read
    summary = prepare_pairs(ndac_ref, [str(s) for s in sources], out_dir, _codebook_list(n_codebooks),
                            validation_fraction, test_fraction, salt, dev, force, progress=_bar(quiet),
                            envelope=envelope, harmonic_redraw_hz=harmonic_redraw_hz or 0)
    if not quiet:
        p = summary["pairs"]
        click.echo(f"flowdec: {summary['files']} files at n_codebooks {summary['n_codebooks']}: "
                   f"{p['train']} train, {p['validation']} validation, {p['test']} test pairs in {out_dir}", err=True)
    _failed_files(summary["failed"], summary["files"])


def _failed_files(failed: list[str], done: int) -> None:
    """A batch's bad files, each on its error line, after the others were done; then exit 1."""
    if not failed:
        return
    for line in failed:
        click.echo(error_line(line), err=True)
    raise Failure(f"{len(failed)} file(s) could not be used; the other {done} were")


@train_group.command("estimate-sigma")
@click.argument("config", required=False, type=click.Path(path_type=Path))
@click.option("--pairs", "pair_lists", multiple=True, type=click.Path(path_type=Path),
              help="Pair lists to estimate from (default: data.train of CONFIG).")
@click.option("-o", "--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the estimate (default: sigma.file of CONFIG).")
@click.option("--alpha", type=FiniteFloatRange(0, 1, min_open=True), default=None,
              help="Compression exponent (default: CONFIG's, else 0.3).")
@click.option("--n-fft", type=click.IntRange(min=16), default=None,
              help="STFT size, even (default: CONFIG's, else 1534).")
@click.option("--hop", type=click.IntRange(min=1), default=None, help="STFT hop (default: CONFIG's, else 384).")
@click.option("--n-samples", type=click.IntRange(min=1), default=2500, show_default=True)
@click.option("--seed", type=int, default=302, show_default=True)
@click.option("--qx", type=FiniteFloatRange(0, 1, min_open=True), default=0.997, show_default=True)
@click.option("--qrmse", type=FiniteFloatRange(0, 1, min_open=True), default=0.997, show_default=True)
@click.option("--delimiter", default=None, help="Pair list delimiter (default: CONFIG's, else ',').")
@device_option()
@threads_option
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing estimate.")
@_quiet
def estimate_sigma_command(config: Path | None, pair_lists: tuple[Path, ...], out_file: Path | None,
                           alpha: float | None, n_fft: int | None, hop: int | None, n_samples: int, seed: int,
                           qx: float, qrmse: float, delimiter: str | None, device: str, threads: int | None,
                           force: bool, quiet: bool) -> None:
    """Estimate beta, the global sigma_y and the per-band sigma_y curve (official heuristics).

    With a postfilter CONFIG, reads its data.train pair lists and feature settings and writes the
    estimate to its sigma.file, where the trainer reads it (set sigma.mode = "perband" to use the curve).
    """
    from ..runtime import set_threads
    from .config import PostfilterModelConfig, load_config
    from .prepare import estimate_sigma, pairs_from, sigma_file_outputs, write_sigma_file

    if delimiter == "":
        raise click.BadParameter("an empty delimiter cannot separate the columns", param_hint="--delimiter")
    cfg = load_config(config, "postfilter") if config is not None else None
    lists = [str(p) for p in pair_lists] or (cfg.data.train if cfg is not None else [])
    if not lists:
        raise click.UsageError("give a postfilter CONFIG or --pairs LIST")
    target = out_file or (Path(cfg.sigma.file) if cfg is not None and cfg.sigma.file else None)
    if target is None:
        raise click.UsageError("give --out FILE, or set sigma.file in the config")
    sigma_file_outputs(target, overwrite=force)  # both outputs, checked before the estimate's minutes of work
    m = cfg.model if cfg is not None else PostfilterModelConfig()  # without a config: the official settings
    delim = delimiter if delimiter is not None else (cfg.data.delimiter if cfg is not None else ",")
    dev = device_for_command(device)
    set_threads(threads)  # its range was checked as the option was read
    est = estimate_sigma(pairs_from(lists, delim), alpha=alpha if alpha is not None else m.alpha,
                         n_fft=n_fft if n_fft is not None else m.n_fft, hop=hop if hop is not None else m.hop_length,
                         n_samples=n_samples, seed=seed, qx=qx, qrmse=qrmse, device=dev, progress=_bar(quiet))
    write_sigma_file(target, est, overwrite=force, pair_lists=lists)
    if not quiet:
        import numpy as np

        from .prepare import gaussian_smooth

        curve = gaussian_smooth(np.asarray(est["sigma_y_perband"]), 3.0)
        click.echo(f"flowdec: q_x {est['q_x']:.4g} -> beta {est['beta']:.4g}; global sigma_y {est['sigma_y']:.4g}; "
                   f"per-band sigma_y (smoothed) min {curve.min():.4g} mean {curve.mean():.4g} max {curve.max():.4g}; "
                   f"from {est['n_samples']} pairs -> {target}", err=True)


@train_group.command("export")
@click.argument("out_dir", metavar="OUT", type=click.Path(file_okay=False, path_type=Path))
@click.option("--ndac", "ndac_ref", required=True, help="NDAC run, checkpoint, model or component folder.")
@click.option("--postfilter", "pf_ref", default=None, help="Postfilter run, checkpoint, model or component folder.")
@click.option("--name", default=None, help="Model name (default: OUT's folder name).")
@click.option("--licence", default="unknown", show_default=True, help="Licence recorded in flowdec.json.")
@click.option("--description", default="", help="Description recorded in flowdec.json.")
@click.option("--raw", is_flag=True, help="Export the raw postfilter weights instead of the EMA weights.")
@click.option("--trained-codebooks", multiple=True,
              help="Codebook counts the postfilter was trained on (recorded as its trained bitrates).")
@click.option("--default-nfe", type=click.IntRange(min=0), default=None,
              help="Postfilter passes flowdec uses with this model when --nfe is not given (default 6).")
@click.option("--temperature", type=float, default=None, callback=temperature_option,
              help="Scale of the postfilter's start noise, 0 to 2 (1 = FlowDec's; below 1 it invents less).")
@click.option("--envelope", default=None, metavar="LAYOUT", type=click.Choice(list(LAYOUTS)),
              help="Files of this model carry the band-level side channel of this layout by default "
                   "(bands15; see docs/fdc-format.md 3.3).")
@click.option("--envelope-before-postfilter", is_flag=True,
              help="Apply a file's side channel before the postfilter too (a postfilter trained on pairs made "
                   "with prepare-pairs --envelope).")
@click.option("--rate-plan", "rate_plan_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="JSON file: the codebooks and side-channel layout of each rate; needs "
                                 "--envelope (the built-in model's: configs/default-rate-plan.json in the source tree; "
                                 "docs/models.md).")
@click.option("--harmonic-redraw", "harmonic_redraw_hz", type=click.IntRange(*CUTOFF_RANGE_HZ), default=None,
              metavar="HZ", help="Decoders redraw the voiced harmonics below HZ at a file's pitch before the "
                                 "postfilter (one trained on pairs made with prepare-pairs --harmonic-redraw HZ); "
                                 "needs a plan that sends pitch.")
@click.option("--postfilter-dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="How the postfilter's network weights are stored: float16 halves them (they run in float32).")
@click.option("-f", "--force", is_flag=True, help="Overwrite a non-empty OUT.")
@_quiet
def export_command(out_dir: Path, ndac_ref: str, pf_ref: str | None, name: str | None, licence: str,
                   description: str, raw: bool, trained_codebooks: tuple[str, ...], default_nfe: int | None,
                   temperature: float | None, envelope: str | None, envelope_before_postfilter: bool,
                   rate_plan_file: Path | None, harmonic_redraw_hz: int | None, postfilter_dtype: str, force: bool,
                   quiet: bool) -> None:
    """Write a model folder (flowdec.json, ndac/, postfilter/) from trained weights.

    The folder works with --model everywhere (flowdec roundtrip in.wav out.wav --model OUT), and
    'flowdec models export OUT HUBDIR --repo OWNER/REPO' prepares it for the hub.
    """
    from .export import export_model

    trained = _codebook_list(trained_codebooks, "--trained-codebooks")
    out = export_model(out_dir, ndac_ref, pf_ref, name=name, licence=licence, description=description,
                       ema=not raw, trained_codebooks=trained, force=force,
                       default_nfe=default_nfe, temperature=temperature, envelope=envelope,
                       envelope_before_postfilter=envelope_before_postfilter,
                       rate_plan=_json_file(rate_plan_file) if rate_plan_file else None,
                       harmonic_redraw_hz=harmonic_redraw_hz or 0, postfilter_dtype=postfilter_dtype,
                       warn=lambda message: click.echo(f"flowdec: warning: {message}", err=True))
    if not quiet:
        card = json.loads((out / "flowdec.json").read_text())
        click.echo(f"flowdec: wrote model '{card['name']}' to {out}"
                   f"{' (codec and postfilter)' if pf_ref else ' (codec only)'}", err=True)


@train_group.command("entropy-tables")
@click.argument("model_ref", metavar="MODEL")
@click.argument("sources", metavar="LIST_OR_FOLDER...", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--out", "out_path", type=click.Path(path_type=Path), default=None,
              help="Where to write entropy.safetensors (default: into the MODEL folder).")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Use every N-th file of the lists only (a deterministic subset, for a quicker build).")
@click.option("--prev-classes", type=click.IntRange(min=0, max=4095), default=None,
              help="Context classes of the previous frame's code (0: none; default 8).")
@click.option("--up-classes", type=click.IntRange(min=0, max=4095), default=None,
              help="Context classes of the coarser codebook's code (0: none; default 8).")
@click.option("--smoothing", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Weight, in codes, of the backed-off distribution added to each context's counts "
                   "(default 1024).")
@device_option()
@threads_option
@click.option("-f", "--force", is_flag=True, help="Overwrite existing tables.")
@_quiet
def entropy_tables_command(model_ref: str, sources: tuple[Path, ...], out_path: Path | None, every: int,
                           prev_classes: int | None, up_classes: int | None, smoothing: float | None,
                           device: str, threads: int | None, force: bool, quiet: bool) -> None:
    """Learn a model's entropy tables from audio (training data only) for entropy-coded .fdc files.

    LIST_OR_FOLDER: file lists (paths relative to the list, e.g. the corpus's train.txt) or folders of
    audio. The tables go to MODEL/entropy.safetensors; 'flowdec compress' then entropy-codes with them.
    """
    from ..runtime import set_threads
    from .common import TrainingError
    from .entropy_tables import TableSettings, build_tables_for_model

    device_for_command(device)  # a device that is not here is a usage error, before the model loads
    set_threads(threads)
    defaults = TableSettings()
    settings = TableSettings(
        prev_classes=defaults.prev_classes if prev_classes is None else prev_classes,
        up_classes=defaults.up_classes if up_classes is None else up_classes,
        smoothing=defaults.smoothing if smoothing is None else smoothing)
    try:
        path, tables, stats = build_tables_for_model(model_ref, list(sources), out_path, settings, device=device,
                                                     every=every, progress=_bar(quiet), overwrite=force)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    if not quiet:
        bits = stats["bits_per_code"]
        mean = sum(bits) / len(bits) if bits else 0.0
        click.echo(f"flowdec: entropy tables {tables.id} from {stats['files']} files ({stats['frames']} frames): "
                   f"{mean:.2f} bits per code on them against {stats['nominal_bits']} -> {path}", err=True)
    _failed_files(stats["failed"], stats["files"])


@train_group.command("widen-ndac")
@click.argument("source", metavar="NDAC")
@click.argument("out_dir", metavar="OUT", type=click.Path(file_okay=False, path_type=Path))
@click.option("--encoder-factor", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many times wider the encoder becomes (encoder_dim x factor).")
@click.option("--decoder-factor", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many times wider the decoder becomes (decoder_dim x factor).")
@click.option("--noise", type=FiniteFloatRange(0, 1), default=1e-3, show_default=True,
              help="Symmetry-breaking noise on the copied weights, relative to each weight's RMS.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-f", "--force", is_flag=True, help="Replace an existing OUT.")
@_quiet
def widen_ndac_command(source: str, out_dir: Path, encoder_factor: int, decoder_factor: int, noise: float,
                       seed: int, force: bool, quiet: bool) -> None:
    """Grow a trained NDAC's encoder or decoder without starting over (function-preserving widening).

    The wider codec computes what NDAC computes (up to --noise) and keeps its codes. Continue training it
    with train.init_from set to OUT and model.encoder_dim / model.decoder_dim set to the new widths:

    \b
      flowdec train widen-ndac runs/ndac runs/ndac-wide --decoder-factor 2
      flowdec train ndac ndac.toml --set 'train.init_from="runs/ndac-wide"' --set model.decoder_dim=384

    Paths in --set are read from the config's folder; the line this prints gives OUT as an absolute path.
    """
    from .widen import widen_ndac_folder

    out = widen_ndac_folder(source, out_dir, encoder_factor=encoder_factor, decoder_factor=decoder_factor,
                            noise=noise, seed=seed, overwrite=force)
    if not quiet:
        card = json.loads((out / "ndac" / "config.json").read_text())
        dims = f"encoder_dim {card['encoder_dim']}, decoder_dim {card['decoder_dim']}"
        click.echo(f"flowdec: wrote the widened codec to {out} ({dims}); train it on with "
                   f"--set 'train.init_from=\"{out.resolve()}\"' --set model.encoder_dim={card['encoder_dim']} "
                   f"--set model.decoder_dim={card['decoder_dim']}", err=True)


@train_group.command("widen-postfilter")
@click.argument("source", metavar="POSTFILTER")
@click.argument("out_dir", metavar="OUT", type=click.Path(file_okay=False, path_type=Path))
@click.option("--dim-factor", type=click.IntRange(min=2), required=True,
              help="How many times wider the frame-wise backbone's residual stream becomes (model.dim x factor).")
@click.option("--spread", type=FiniteFloatRange(0, 1, max_open=True), default=0.25, show_default=True,
              help="How unequally the copies of a channel share the weights that read them (0 = equally; "
                   "unequal shares break the copies' symmetry).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-f", "--force", is_flag=True, help="Replace an existing OUT.")
@_quiet
def widen_postfilter_command(source: str, out_dir: Path, dim_factor: int, spread: float, seed: int, force: bool,
                             quiet: bool) -> None:
    """Grow a trained frame-wise postfilter without starting over (function-preserving widening).

    The wider postfilter computes what POSTFILTER computes (a run's EMA weights, a model or a component
    folder). Continue training it with train.init_from set to OUT and model.dim set to the new width:

    \b
      flowdec train widen-postfilter runs/postfilter runs/pf-wide --dim-factor 2
      flowdec train postfilter pf.toml --set 'train.init_from="runs/pf-wide"' --set model.dim=512

    Paths in --set are read from the config's folder; the line this prints gives OUT as an absolute path.
    """
    from .widen import widen_postfilter_folder

    out = widen_postfilter_folder(source, out_dir, dim_factor=dim_factor, spread=spread, seed=seed,
                                  overwrite=force)
    if not quiet:
        dim = json.loads((out / "postfilter" / "config.json").read_text())["framewise"]["dim"]
        click.echo(f"flowdec: wrote the widened postfilter to {out} (dim {dim}); train it on with "
                   f"--set 'train.init_from=\"{out.resolve()}\"' --set model.dim={dim}", err=True)
