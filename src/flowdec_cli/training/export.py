"""Trained weights -> our model folder (``flowdec.json`` + ``ndac/`` [+ ``postfilter/``]).

The result loads everywhere a model folder does (``flowdec roundtrip --model DIR``, ``load_model``), and
``flowdec models export DIR HUBDIR --repo OWNER/REPO`` turns it into a hub repo.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..checkpoints import CheckpointError
from ..fileio import OutputExistsError, parse_json
from .common import TrainingError, find_checkpoint, is_run_or_checkpoint
from .prepare import pair_list_records

__all__ = ["ndac_component", "postfilter_component", "export_model"]


def _config_type(folder: Path) -> str | None:
    try:
        return parse_json((folder / "config.json").read_text()).get("type")
    except (OSError, ValueError, AttributeError):
        return None


def ndac_component(ref: str | os.PathLike) -> Path:
    """The NDAC component folder meant by ``ref``: a run or checkpoint folder (latest checkpoint's
    weights), a model folder (its ``ndac/``), or a component folder."""
    path = Path(ref).expanduser()
    if is_run_or_checkpoint(path):
        return find_checkpoint(path) / "model"
    for cand in (path / "ndac", path / "model" / "ndac", path):
        if _config_type(cand) == "ndac":
            return cand
    if not path.exists():
        raise TrainingError(f"{path}: no such file or folder")
    raise TrainingError(f"{path}: holds no NDAC (expected a training run, a checkpoint, or a folder with "
                        "ndac/ or a config.json of type 'ndac')")


def postfilter_component(ref: str | os.PathLike, ema: bool = True) -> Path:
    """The postfilter component folder meant by ``ref``: a run or checkpoint folder (the EMA weights, or
    the raw ones with ``ema=False``), a model folder (its ``postfilter/``), or a component folder."""
    path = Path(ref).expanduser()
    if is_run_or_checkpoint(path):
        ckpt = find_checkpoint(path)
        sub = ckpt / ("ema" if ema else "model")
        if not sub.is_dir():
            raise TrainingError(f"{ckpt}: has no {'EMA' if ema else 'raw'} postfilter weights")
        return sub
    for cand in (path / "postfilter", path):
        if _config_type(cand) == "flowdec_postfilter":
            return cand
    if not path.exists():
        raise TrainingError(f"{path}: no such file or folder")
    raise TrainingError(f"{path}: holds no postfilter (expected a training run, a checkpoint, or a folder "
                        "with postfilter/ or a config.json of type 'flowdec_postfilter')")


def _pairs_records(postfilter: str | os.PathLike) -> list[tuple[Path, dict[str, Any]]]:
    """What ``train prepare-pairs`` recorded (``prepare.json``) for each pair list a postfilter run trained
    on, with the list's path; empty where ``postfilter`` is no run or checkpoint or the records are gone."""
    path = Path(postfilter).expanduser()
    if not is_run_or_checkpoint(path):
        return []
    run = path if (path / "checkpoints").is_dir() else path.parent.parent  # RUN/checkpoints/step-N
    try:
        lists = [Path(p) for p in parse_json((run / "config.json").read_text())["data"]["train"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return pair_list_records(lists)


def _pairs_warnings(postfilter: str | os.PathLike, ndac_hash: str, trained_codebooks: Sequence[int],
                    redraw_hz: int = 0) -> list[str]:
    """Where the postfilter's training pairs say it does not belong to this codec, was trained at other
    codebook counts than ``--trained-codebooks`` records, or on coded sides redrawn otherwise than decoders
    will redraw them (``redraw_hz``): allowed (a postfilter may be tried on a codec fine-tuned since), but
    said, since nothing has measured the pair."""
    records = _pairs_records(postfilter)
    out = [f"the postfilter was trained on pairs coded by other codec weights ({record.get('ndac_hash')}, not "
           f"{ndac_hash}: {pair_list}); how it does with this codec is unmeasured"
           for pair_list, record in records if record.get("ndac_hash") not in (None, ndac_hash)]
    coded = sorted({int(k) for _, record in records for k in record.get("n_codebooks") or []
                    if isinstance(k, int) and not isinstance(k, bool)})
    if trained_codebooks and coded and sorted(set(trained_codebooks)) != coded:
        out.append(f"--trained-codebooks {','.join(map(str, sorted(set(trained_codebooks))))} differs from the "
                   f"codebook counts its pairs were coded at ({','.join(map(str, coded))})")
    redrawn = sorted({record.get("harmonic_redraw_hz") or 0 for _, record in records}, key=str)
    if redrawn and redrawn != [redraw_hz]:
        out.append(f"decoders will redraw the harmonics below {redraw_hz} Hz (0: not at all) before the postfilter, "
                   f"but its pairs were redrawn below {', '.join(map(str, redrawn))} Hz")
    return out


def _entropy_tables_for(folder: Path, ndac_hash: str, warn: Callable[[str], None] | None) -> Path | None:
    """The entropy tables file of model folder ``folder`` if they were learned for the NDAC weights
    ``ndac_hash``, else None; tables that are there but unreadable, or learned for other weights, are named
    through ``warn`` (the export goes on without them: files it codes are bit-packed)."""
    from ..entropy import TABLES_FILE, EntropyError, tables_for_model_folder

    try:
        tables = tables_for_model_folder(folder)
    except EntropyError as exc:
        if warn is not None:
            warn(f"not copying the entropy tables: {exc}")
        return None
    if tables is None:
        return None
    if tables.ndac_hash != ndac_hash:
        if warn is not None:
            warn(f"not copying {folder / TABLES_FILE}: learned for other codec weights "
                 "(`flowdec train entropy-tables` learns tables for these)")
        return None
    return folder / TABLES_FILE


def export_model(out_dir: str | os.PathLike, ndac: str | os.PathLike, postfilter: str | os.PathLike | None = None,
                 name: str | None = None, licence: str = "unknown", description: str = "", ema: bool = True,
                 trained_codebooks: Sequence[int] = (), force: bool = False, default_nfe: int | None = None,
                 temperature: float | None = None, envelope: str | None = None,
                 envelope_before_postfilter: bool = False, rate_plan: Any = None, harmonic_redraw_hz: int = 0,
                 postfilter_dtype: str = "float32", warn: Callable[[str], None] | None = None) -> Path:
    """Write a model folder at ``out_dir`` from trained components (checked by loading them).

    ``default_nfe`` records the postfilter passes the CLI uses with this model when ``--nfe`` is not given
    (6, the paper's setting, when not recorded); 0 for a model whose postfilter does not (yet) help.
    ``temperature`` sets the postfilter's start-noise temperature (:meth:`Postfilter.start`; 1 = FlowDec).
    ``envelope`` names the band-level side channel layout the model's files carry by default
    (:mod:`flowdec_cli.envelope`; None: none). ``envelope_before_postfilter``: decoders apply a file's side
    channel to D0 before the postfilter as well as after it, for a postfilter trained on pairs made with
    ``train prepare-pairs --envelope``. ``rate_plan``: the codebooks and side-channel layout of each rate
    (:func:`flowdec_cli.rateplan.rate_plan`; needs ``envelope``, which stays the layout of files written
    without a plan's rate, e.g. with the side channel asked for on another model). ``harmonic_redraw_hz``:
    decoders redraw a file's voiced harmonics below it at its pitch before the postfilter, one trained on pairs
    made with ``train prepare-pairs --harmonic-redraw`` (recorded in the postfilter's config; the plan must
    send pitch). ``postfilter_dtype``
    "float16" stores the postfilter's network weights at half size (:meth:`Postfilter.save`). ``warn``
    hears where the postfilter's training pairs were coded by other codec weights, or at other codebook
    counts than ``trained_codebooks`` (the export goes ahead).

    When ``ndac`` is a model folder with entropy tables learned for these very weights, the tables come
    along: a new postfilter on the same codec leaves the codes, and so the tables, valid.
    """
    from ..bitrate import bitrate_table, nominal_bitrate
    from ..models.folder import ENTROPY_TABLES_NAME, ModelError, ModelFolderBuilder
    from ..models.loading import ndac_from_folder, ndac_state_hash
    from ..models.resolve import check_model_name
    from ..postfilter import Postfilter

    out = Path(out_dir).expanduser()
    try:
        check_model_name(name or out.name)
    except ModelError as exc:
        raise TrainingError(str(exc)) from None
    if out.exists() and not out.is_dir():
        raise TrainingError(f"{out}: is a file; give a folder to export into")
    if out.exists() and any(out.iterdir()) and not force:
        raise OutputExistsError(out, before=True, reason="is not empty", argument="force=True")
    ndac_dir = ndac_component(ndac)
    try:
        codec = ndac_from_folder(ndac_dir)
    except (ModelError, CheckpointError) as exc:
        raise TrainingError(str(exc)) from None
    pf = None
    if postfilter is not None:
        pf_dir = postfilter_component(postfilter, ema)
        try:
            pf = Postfilter.from_folder(pf_dir)
        except CheckpointError as exc:
            raise TrainingError(str(exc)) from None
        if pf.sample_rate != codec.sample_rate:
            raise TrainingError(f"the NDAC runs at {codec.sample_rate} Hz but the postfilter at {pf.sample_rate} Hz")
    if temperature is not None:
        if pf is None:
            raise TrainingError("a temperature needs a postfilter")
        try:
            pf.temperature = temperature
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
    rates = bitrate_table(codec.sample_rate, codec.hop_length, codec.n_codebooks, codec.codebook_size)
    card: dict[str, Any] = {
        "name": name or out.name,
        "licence": licence,
        "description": description or ("NDAC codec and FlowDec postfilter" if pf is not None else "NDAC codec")
        + " trained with flowdec",
        "sample_rate": codec.sample_rate,
        "hop_length": codec.hop_length,
        "frame_rate": codec.frame_rate,
        "n_codebooks": codec.n_codebooks,
        "codebook_size": codec.codebook_size,
        "bitrates_kbps": rates,
    }
    if any(not 1 <= int(k) <= codec.n_codebooks for k in trained_codebooks):
        raise TrainingError(f"--trained-codebooks must lie in 1 ... {codec.n_codebooks}, the codec's codebooks")
    if pf is not None and trained_codebooks:
        card["trained_bitrates_kbps"] = [
            round(nominal_bitrate(codec.sample_rate, codec.hop_length, int(k), codec.codebook_size) / 1000, 6)
            for k in sorted(set(trained_codebooks))]
    if default_nfe is not None:
        if default_nfe < 0 or (pf is None and default_nfe > 0):
            raise TrainingError(f"default NFE {default_nfe}: must be 0, or positive for a model with a postfilter")
        card["default_nfe"] = int(default_nfe)
    if envelope:
        from ..envelope import EnvelopeError, envelope_layout

        try:
            card["envelope"] = envelope_layout(envelope, codec.sample_rate).name
        except EnvelopeError as exc:
            raise TrainingError(str(exc)) from None
    if rate_plan is not None:
        from ..envelope import EnvelopeError
        from ..rateplan import plan_point
        from ..rateplan import rate_plan as parse_rate_plan

        if not envelope:
            raise TrainingError("a rate plan needs --envelope (the side channel it plans)")
        try:
            points = parse_rate_plan(rate_plan, rates, codec.sample_rate)
        except EnvelopeError as exc:
            raise TrainingError(str(exc)) from None
        if any(p.pitch is not None for p in points) and (pf is None or not pf.takes_pitch):
            raise TrainingError("the rate plan sends pitch, but the postfilter does not read it (its framewise "
                                "pitch_top_hz is 0): those bits would buy nothing")
        card["rate_plan"] = [{"codebooks": p.codebooks, "kbps": p.kbps, "envelope": getattr(p.layout, "name", ""),
                              **({"pitch": p.pitch.name} if p.pitch is not None else {})} for p in points]
        card["bitrates_kbps"] = [p.kbps for p in points]  # the rates -b offers: codes and side channel
        if "trained_bitrates_kbps" in card:
            trained = [plan_point(points, n_codebooks=k) for k in sorted(set(trained_codebooks))]
            card["trained_bitrates_kbps"] = [p.kbps for p in trained if p is not None]
    if harmonic_redraw_hz:
        sends_pitch = any(isinstance(e, dict) and e.get("pitch") for e in card.get("rate_plan", []))
        if pf is None or not sends_pitch:
            raise TrainingError("--harmonic-redraw needs a postfilter and a rate plan that sends pitch")
        try:
            pf.harmonic_redraw_hz = harmonic_redraw_hz
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
    if envelope_before_postfilter:
        if not envelope or pf is None:
            raise TrainingError("--envelope-before-postfilter needs --envelope and a postfilter")
        card["envelope_before_postfilter"] = True
    if postfilter is not None and warn is not None:
        for message in _pairs_warnings(postfilter, ndac_state_hash(codec), trained_codebooks,
                                       pf.harmonic_redraw_hz if pf is not None else 0):
            warn(message)
    tables_src = _entropy_tables_for(ndac_dir.parent, ndac_state_hash(codec), warn)
    with ModelFolderBuilder(out, "export") as build:
        build.add_ndac(codec)
        if pf is not None:
            try:
                build.add_postfilter(pf, postfilter_dtype)
            except ValueError as exc:
                raise TrainingError(str(exc)) from None
        if tables_src is not None:
            build.copy_file(tables_src, ENTROPY_TABLES_NAME)
        build.write_card(card)
        build.publish_into(overwrite=force)
    return out
