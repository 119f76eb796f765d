"""Model cards and export: the README.md of a model folder, and a model written as a folder ready for the
Hugging Face hub (``flowdec models export``)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..bitrate import bitrate_table
from ..checkpoints import CheckpointError, load_model_folder, weights_hash
from ..exceptions import FlowdecError
from ..fileio import OutputExistsError
from ..ndac import NDACConfig
from .catalogue import CacheDir, parse_hub_ref
from .folder import (
    ENTROPY_TABLES_NAME,
    ModelError,
    ModelFolderBuilder,
    folder_type,
    read_model_card,
)
from .loading import load_model, ndac_from_official
from .resolve import resolve

__all__ = ["hub_licence", "model_card_markdown", "export_for_hub"]

_HUB_LICENCES = {"cc-by-nc-4.0": "cc-by-nc-4.0", "mit": "mit", "apache-2.0": "apache-2.0",
                 "cc-by-4.0": "cc-by-4.0", "bsd-3-clause": "bsd-3-clause", "cc0-1.0": "cc0-1.0"}


def _fmt_rates(rates: Any) -> str:
    if not rates:
        return "-"
    return ", ".join(f"{float(r):g}" for r in rates)


def hub_licence(licence: str) -> str:
    """The hub's licence id for a card's ``licence``, read from its leading SPDX identifier (``MIT
    (weights); training data: ...`` is ``mit``); ``other`` when there is none the hub knows."""
    head = re.split(r"[\s(;,]", licence.strip(), maxsplit=1)[0] if licence.strip() else ""
    return _HUB_LICENCES.get(head.lower(), "other")


def model_card_markdown(card: dict[str, Any], repo_id: str | None = None) -> str:
    """A README.md for a model folder / hub repo, from its flowdec.json record."""
    name = str(card.get("name", "model"))
    title = name[len("hf://"):] if name.startswith("hf://") else name
    licence = str(card.get("licence", "unknown"))
    hf_licence = hub_licence(licence)
    ref = f"hf://{repo_id}" if repo_id else "hf://OWNER/REPO"
    rates = card.get("bitrates_kbps") or []
    trained = card.get("trained_bitrates_kbps")
    has_pf = bool((card.get("weights") or {}).get("postfilter")) or card.get("has_postfilter")
    lines = [
        "---",
        f"license: {hf_licence}",
        "library_name: flowdec",
        "tags:",
        "- audio",
        "- audio-codec",
        "- neural-audio-codec",
        "- flowdec",
        "---",
        "",
        f"# {title}",
        "",
        str(card.get("description") or "A flowdec neural audio codec model."),
        "",
        "| | |",
        "| --- | --- |",
        f"| sample rate | {card.get('sample_rate', 48000)} Hz |",
        f"| frame rate | {float(card.get('frame_rate') or 0):g} Hz (hop {card.get('hop_length', '?')}) |",
        f"| codebooks | {card.get('n_codebooks', '?')} x {card.get('codebook_size', 1024)} |",
        f"| bitrates (kbit/s per channel) | {_fmt_rates(rates)} |",
    ]
    if trained:
        lines.append(f"| postfilter trained at (kbit/s) | {_fmt_rates(trained)} |")
    lines.append(f"| flow postfilter | {'yes' if has_pf else 'no (codec alone)'} |")
    weights = card.get("weights") or {}
    for comp, h in weights.items():
        lines.append(f"| {comp} weights hash | `{h}` |")
    lines += [
        "",
        "## Usage",
        "",
        "```bash",
        "pip install flowdec-cli",
        f"flowdec roundtrip in.wav out.wav --model {ref}",
        f"flowdec compress in.wav out.fdc -b {float(rates[-1]) if rates else 6:g} --model {ref}",
        "flowdec decompress out.fdc decoded.wav" + ("" if has_pf else " --nfe 0"),
        "```",
        "",
        "Files: `flowdec.json` (this record), `ndac/` (codec: `config.json` + `model.safetensors`)"
        + (", `postfilter/` (flow postfilter, same layout)." if has_pf else "."),
        "",
        "## Licence",
        "",
        f"{licence}. {card.get('licence_note', '')}".rstrip(),
    ]
    if card.get("source"):
        lines += ["", "## Source", "", str(card["source"])]
        conv = card.get("converted_from") or {}
        for comp, info in conv.items():
            if isinstance(info, dict) and info.get("member"):
                lines.append(f"- {comp}: `{info['member']}` (sha256 `{info.get('sha256', '?')}`)")
    if card.get("citation"):
        lines += ["", "## Citation", "", "```bibtex", str(card["citation"]), "```"]
    return "\n".join(lines) + "\n"


def export_for_hub(name_or_path: str | os.PathLike[str], dest_dir: str | os.PathLike[str], force: bool = False,
                   repo_id: str | None = None, cache_dir: CacheDir = None) -> Path:
    """Write a folder ready to upload as a hub repo: flowdec.json, ndac/, postfilter/ (if any), README.md.

    ``repo_id`` (OWNER/REPO) names the model ``hf://OWNER/REPO`` in its record, so that .fdc files it codes
    point back to the repo, and fills in the usage lines of the model card.
    """
    if repo_id is not None:
        try:
            repo_id = parse_hub_ref(repo_id if repo_id.lower().startswith("hf://") else f"hf://{repo_id}")[0]
        except ModelError:  # named as the user gave it, not with the hf:// we put in front
            raise ModelError(f"--repo '{repo_id}': not a hub repository; expected OWNER/REPO") from None
    src = resolve(name_or_path, cache_dir)
    dest = Path(dest_dir).expanduser()
    if dest.exists() and not dest.is_dir():
        raise ModelError(f"{dest}: is a file; give a folder to export into")
    if not dest.parent.is_dir():  # as for every output: a mistyped parent is not created
        raise ModelError(f"{dest}: folder {dest.parent} does not exist; create it first")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise OutputExistsError(dest, before=True, reason="is not empty", argument="force=True")
    if src.is_dir() and (dest.resolve() == src.resolve() or src.resolve() in dest.resolve().parents):
        raise ModelError(f"{dest}: lies inside the model being exported ({src}); choose another folder")

    card: dict[str, Any] = {}
    try:
        with ModelFolderBuilder(dest, "export") as build:
            if src.is_file():  # a released weights.pth: the codec alone
                ndac = ndac_from_official(src)
                build.add_ndac(ndac)
                card = {"name": src.parent.name or "ndac", "licence": "unknown",
                        "source": str(src), "weights": {"ndac": weights_hash(ndac.state_dict())}}
            elif (src / "ndac").is_dir():
                card = read_model_card(src)  # strict: a broken card is the source's fault, never rewritten
                for comp in ("ndac", "postfilter"):
                    if (src / comp).is_dir():
                        build.copy_component(src / comp, comp)
                if (src / ENTROPY_TABLES_NAME).is_file():  # the entropy tables travel with the codec
                    build.copy_file(src / ENTROPY_TABLES_NAME, ENTROPY_TABLES_NAME)
            elif folder_type(src) == "ndac":
                build.copy_component(src, "ndac")
                card = {"name": src.name}
            else:
                raise ModelError(f"{src}: not a model folder (needs ndac/ or a config.json of type 'ndac')")
            try:
                _complete_card(card, build.path)
            except FlowdecError as exc:  # it reads the staged copies: the files at fault are the source's
                raise ModelError(str(exc).replace(str(build.path), str(src))) from None
            base = str(card.get("name") or src.name)
            if repo_id is not None:
                card["name"] = f"hf://{repo_id}"
                if base != card["name"]:
                    card["exported_from"] = base
            else:
                card["name"] = base
            build.write_card(card, model_card_markdown(card, repo_id))
            _check_loads(build.path, src)
            build.publish_into(overwrite=force)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    return dest


def _check_loads(staged: Path, src: Path) -> None:
    """The exported folder loads as a model does when it is used (codec, postfilter, entropy tables), so an
    export never publishes a model that fails only later; the files at fault are named in ``src``."""
    from ..entropy import EntropyError, tables_for_model_folder

    try:
        model = load_model(staged, "cpu", with_postfilter=True)
        model.planned_rates(model.side_channel_layout())  # the card's side channel and rate plan, as a Codec reads them
        tables_for_model_folder(staged)
    except (FlowdecError, EntropyError) as exc:
        raise ModelError(str(exc).replace(str(staged), str(src))) from None


def _complete_card(card: dict[str, Any], folder: Path) -> None:
    """Complete a card from the codec's own settings, and the weights hashes from the files."""
    cfg, state = load_model_folder(folder / "ndac")
    try:  # the codec's own bounds, as loading it checks them, before any value is computed with
        settings = NDACConfig.from_kwargs(cfg)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{folder / 'ndac' / 'config.json'}: {exc}") from None
    sr, hop = settings.sample_rate, settings.hop_length
    card.setdefault("sample_rate", sr)
    card.setdefault("hop_length", hop)
    card.setdefault("frame_rate", sr / hop)
    card.setdefault("n_codebooks", settings.n_codebooks)
    card.setdefault("codebook_size", settings.codebook_size)
    if not card.get("bitrates_kbps"):
        card["bitrates_kbps"] = bitrate_table(sr, hop, int(card["n_codebooks"]), int(card["codebook_size"]))
    weights = dict(card.get("weights") or {})
    weights["ndac"] = weights_hash(state)
    if (folder / "postfilter").is_dir():
        weights["postfilter"] = weights_hash(load_model_folder(folder / "postfilter")[1])
    else:
        weights.pop("postfilter", None)
    card["weights"] = weights
    card.setdefault("licence", "unknown")
