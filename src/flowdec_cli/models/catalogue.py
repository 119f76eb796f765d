"""The catalogue: every model this installation knows by name, where each lives, and the default model.

Names come from three places: models embedded in the package (``flowdec_cli/assets/models/<name>/``;
``assets/models/DEFAULT`` names the built-in default), the released FlowDec models (:data:`OFFICIAL_MODELS`,
installed into the cache by :mod:`.release`), and any other model folder in the cache,
``CACHE/models/<name>/``. ``CACHE`` is the ``cache_dir`` argument of each function, else ``$FLOWDEC_HOME``,
else ``~/.cache/flowdec``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..bitrate import bitrate_table
from ..fileio import atomic_write_bytes, parse_json
from .folder import (
    MODEL_CARD_NAME,
    ModelError,
    UnknownModelError,
    card_rates,
    default_nfe_for,
    folder_type,
    is_model_folder,
    read_json,
    read_model_card,
)

__all__ = [
    "OFFICIAL_ZIP_URL", "OFFICIAL_ZIP_SIZE", "OFFICIAL_ZIP_SHA256", "OFFICIAL_LICENCE", "OFFICIAL_MODELS",
    "RegistryEntry", "cache_root", "models_dir", "embedded_root", "entries", "get_entry", "canonical_name",
    "default_model_name", "builtin_model_name", "chosen_default_model", "set_default_model", "builtin_notice",
    "DEFAULT_MODEL_ENV", "RELEASED_DEFAULT", "list_models",
]

CacheDir = str | os.PathLike[str] | None

OFFICIAL_REPO = "https://github.com/facebookresearch/FlowDec"
# The link in the README of facebookresearch/FlowDec ("Checkpoints" section): release tag ``checkpoints``.
OFFICIAL_ZIP_URL = "https://github.com/facebookresearch/FlowDec/releases/download/checkpoints/checkpoints.zip"
OFFICIAL_ZIP_SIZE = 1_205_002_207
# Meta publishes no checksum for the archive; this one was recorded by a third party that downloaded it
# (docs/models.md). fetch_official checks it by default; ``expected_sha256=None`` (--no-hash-check) skips.
OFFICIAL_ZIP_SHA256 = "4f8c72ae264f32be583ed7d4fcc60704af8c9ab200dc0e7d8414dec57f4d163c"

OFFICIAL_LICENCE = "CC-BY-NC-4.0"
OFFICIAL_LICENCE_NOTE = (
    "The FlowDec and NDAC weights released by Meta Platforms in facebookresearch/FlowDec are licensed under "
    "Creative Commons Attribution-NonCommercial 4.0 International (CC BY-NC 4.0): you may use and share them "
    "with attribution, for non-commercial purposes only. https://creativecommons.org/licenses/by-nc/4.0/"
)

# Member paths inside the release archive. Nothing else in the archive is ever read.
MEMBER_NDAC_75 = "checkpoints/ndac/ndac-75/800k/dac/weights.pth"
MEMBER_NDAC_25 = "checkpoints/ndac/ndac-25/800k/dac/weights.pth"
MEMBER_FLOWDEC_75M = "checkpoints/flowdec/flowdec_75m/step=800000.ckpt"
MEMBER_FLOWDEC_25S = "checkpoints/flowdec/flowdec_25s/step=800000.ckpt"
OFFICIAL_MEMBERS = (MEMBER_NDAC_75, MEMBER_NDAC_25, MEMBER_FLOWDEC_75M, MEMBER_FLOWDEC_25S)

EMBEDDED = "embedded"
CACHED = "cached"
NOT_LOCAL = "not local"


@dataclass(frozen=True)
class RegistryEntry:
    """What the catalogue knows about a model before (or without) having it on disk."""

    name: str
    description: str
    frame_rate: float
    hop_length: int
    n_codebooks: int
    bitrates_kbps: tuple[float, ...]
    licence: str
    kind: str  # "official" (converted from the release) | "embedded" (in the package) | "hub" (a hub repo)
    source: str
    sample_rate: int = 48000
    codebook_size: int = 1024
    trained_bitrates_kbps: tuple[float, ...] | None = None  # None: every rate (the codec alone)
    has_postfilter: bool = False
    approx_size_bytes: int | None = None
    licence_note: str = ""
    hub_repo: str | None = None  # kind "hub": OWNER/REPO[@REVISION]
    members: dict[str, str] = field(default_factory=dict)  # kind "official": component -> archive member
    path: Path | None = None  # kind "embedded": its folder
    default_nfe: int | None = None  # NFE when none is asked for; None: folder.default_nfe_for without a card
    problem: str = ""  # a cached folder that cannot be used (its card or codec config is broken): why

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.default_nfe is None:
            d["default_nfe"] = default_nfe_for({}, self.has_postfilter)
        d["bitrates_kbps"] = list(self.bitrates_kbps)
        d["trained_bitrates_kbps"] = None if self.trained_bitrates_kbps is None else list(self.trained_bitrates_kbps)
        d["path"] = None if self.path is None else str(self.path)
        return d


def _official(name: str, description: str, hop: int, n_codebooks: int, size_mb: int, members: dict[str, str],
              trained: tuple[float, ...] | None = None) -> RegistryEntry:
    return RegistryEntry(
        name=name, description=description, frame_rate=48000 / hop, hop_length=hop, n_codebooks=n_codebooks,
        bitrates_kbps=tuple(bitrate_table(48000, hop, n_codebooks, 1024)), trained_bitrates_kbps=trained,
        has_postfilter="postfilter" in members, licence=OFFICIAL_LICENCE, licence_note=OFFICIAL_LICENCE_NOTE,
        kind="official", source=OFFICIAL_ZIP_URL, approx_size_bytes=size_mb * 1_000_000, members=members)


OFFICIAL_MODELS: tuple[RegistryEntry, ...] = (
    _official("flowdec-75m", "NDAC-75 codec + FlowDec-75m flow postfilter (general audio, 48 kHz), the main "
              "released model", 640, 10, 355, {"ndac": MEMBER_NDAC_75, "postfilter": MEMBER_FLOWDEC_75M},
              trained=(3.0, 4.5, 6.0, 7.5)),
    _official("flowdec-25s", "NDAC-25 codec + FlowDec-25s flow postfilter (general audio, 48 kHz), trained at "
              "4 kbit/s only", 1920, 16, 290, {"ndac": MEMBER_NDAC_25, "postfilter": MEMBER_FLOWDEC_25S},
              trained=(4.0,)),
    _official("ndac-75", "NDAC-75: the non-adversarial DAC codec at 75 Hz alone (no postfilter)", 640, 10, 260,
              {"ndac": MEMBER_NDAC_75}),
    _official("ndac-25", "NDAC-25: the non-adversarial DAC codec at 25 Hz alone (no postfilter)", 1920, 16, 195,
              {"ndac": MEMBER_NDAC_25}),
)
OFFICIAL_BY_NAME = {e.name: e for e in OFFICIAL_MODELS}
# Extra entries of kind "hub" (a name that stands for an hf:// repo) go here once we publish some.
HUB_MODELS: tuple[RegistryEntry, ...] = ()


# --------------------------------------------------------------------------------------------------
# Hub references: the names of models on the Hugging Face hub

_HF_PREFIX = re.compile(r"^hf://", re.IGNORECASE)
_HF_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_hub_ref(ref: str) -> bool:
    return bool(_HF_PREFIX.match(ref.strip()))


def parse_hub_ref(ref: str) -> tuple[str, str | None]:
    """``hf://OWNER/REPO[@REVISION]`` -> (``OWNER/REPO``, revision or None)."""
    body = _HF_PREFIX.sub("", ref.strip(), count=1)
    repo, at, revision = body.partition("@")
    parts = repo.strip("/").split("/")
    if len(parts) != 2 or not all(_HF_PART.match(p) for p in parts) or (at and not revision):
        raise ModelError(f"'{ref}': not a hub reference; expected hf://OWNER/REPO or hf://OWNER/REPO@REVISION")
    return "/".join(parts), revision or None


# --------------------------------------------------------------------------------------------------
# Places


def cache_root(cache_dir: CacheDir = None) -> Path:
    """``cache_dir``, else ``$FLOWDEC_HOME``, else ``~/.cache/flowdec``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    home = os.environ.get("FLOWDEC_HOME")
    if home:
        return Path(home).expanduser()
    return Path("~/.cache/flowdec").expanduser()


def models_dir(cache_dir: CacheDir = None) -> Path:
    return cache_root(cache_dir) / "models"


def embedded_root() -> Path:
    """Where models shipped inside the package live."""
    return Path(__file__).resolve().parent.parent / "assets" / "models"


def _folder_size(folder: Path) -> int:
    total = 0
    for p in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
            elif p.is_file():  # the hub cache links into its blob store
                total += p.resolve().stat().st_size
    return total


# --------------------------------------------------------------------------------------------------
# Entries


def _entry_from_folder(folder: Path, kind: str) -> RegistryEntry:
    """A catalogue entry from a model folder's flowdec.json, completed from its ndac/config.json; both read
    as strictly as loading the model reads them, so a listing never calls a model fine that fails on use."""
    card = read_model_card(folder)
    codec_config = folder / "ndac" / "config.json"
    config = read_json(codec_config)  # {} when missing or unreadable
    if config.get("type") != "ndac":
        raise ModelError(f"{codec_config}: missing, unreadable or not of type 'ndac'")
    rates = card_rates(card, config)
    trained = card.get("trained_bitrates_kbps")
    has_pf = (folder / "postfilter").is_dir()
    return RegistryEntry(
        name=folder.name, description=str(card.get("description", "")),
        frame_rate=rates["frame_rate"], hop_length=rates["hop_length"], n_codebooks=rates["n_codebooks"],
        codebook_size=rates["codebook_size"], sample_rate=rates["sample_rate"],
        bitrates_kbps=tuple(rates["bitrates_kbps"]),
        trained_bitrates_kbps=tuple(float(r) for r in trained) if isinstance(trained, list) else None,
        has_postfilter=has_pf, licence=str(card.get("licence", "unknown")),
        licence_note=str(card.get("licence_note", "")), kind=kind, source=str(card.get("source", "")),
        path=folder if kind == EMBEDDED else None, default_nfe=default_nfe_for(card, has_pf),
    )


def embedded_folders() -> dict[str, Path]:
    """Embedded model folders by folder name (which should equal the name in their flowdec.json)."""
    root = embedded_root()
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if is_model_folder(p)}


def embedded_by_any_name() -> dict[str, Path]:
    """Also under the name their flowdec.json records (what .fdc files name), should it differ."""
    found = dict(embedded_folders())
    for folder in list(found.values()):
        card_name = str(read_json(folder / MODEL_CARD_NAME).get("name") or "")
        if card_name and card_name not in found:
            found[card_name] = folder
    return found


def _cached_extra_entries(cache_dir: CacheDir) -> list[RegistryEntry]:
    """Model folders in the cache that are neither official nor embedded (e.g. placed there by hand)."""
    mdir = models_dir(cache_dir)
    if not mdir.is_dir():
        return []
    skip = set(OFFICIAL_BY_NAME) | set(embedded_folders())
    return [_entry_or_broken(folder) for folder in sorted(mdir.iterdir())
            if not folder.name.startswith(".") and folder.name not in skip and is_model_folder(folder)]


def _entry_or_broken(folder: Path) -> RegistryEntry:
    """A folder someone put in the cache; one whose card does not parse is listed as broken, naming the
    card and the cause, so that one bad folder never hides the other models."""
    try:
        return _entry_from_folder(folder, CACHED)
    except ModelError as exc:  # names its file
        problem = str(exc)
    except (TypeError, ValueError, OverflowError) as exc:
        problem = f"{folder / MODEL_CARD_NAME}: {exc}"
    return RegistryEntry(name=folder.name, description="", frame_rate=0.0, hop_length=0, n_codebooks=0,
                         bitrates_kbps=(), licence="unknown", kind=CACHED, source="", problem=problem)


def entries(cache_dir: CacheDir = None) -> list[RegistryEntry]:
    """Every known model: embedded ones, the official ones, hub names, and other models in the cache."""
    embedded = [_entry_from_folder(folder, EMBEDDED) for folder in embedded_folders().values()]
    names = {e.name for e in embedded}
    rest = [e for e in (*OFFICIAL_MODELS, *HUB_MODELS) if e.name not in names]
    return [*embedded, *rest, *_cached_extra_entries(cache_dir)]


def canonical_name(name: str) -> str:
    """Official names also answer to the release's spellings (``flowdec_75m``, ``NDAC-75``)."""
    low = name.strip().lower().replace("_", "-")
    return low if low in OFFICIAL_BY_NAME else name.strip()


def get_entry(name: str, cache_dir: CacheDir = None) -> RegistryEntry | None:
    name = canonical_name(name)
    return next((e for e in entries(cache_dir) if e.name == name), None)


def unknown_model(ref: str, cache_dir: CacheDir = None) -> UnknownModelError:
    known = ", ".join(e.name for e in entries(cache_dir))
    return UnknownModelError(f"unknown model '{ref}'; known: {known}; or give a path or hf://OWNER/REPO")


def list_models(cache_dir: CacheDir = None) -> list[dict[str, Any]]:
    """Every known model with its availability (embedded / cached / not local) and size on disk."""
    try:
        default: str | None = default_model_name(cache_dir)
    except ModelError:
        default = None
    embedded = embedded_folders()
    mdir = models_dir(cache_dir)
    out = []
    for e in entries(cache_dir):
        if e.kind == EMBEDDED:
            path: Path | None = embedded.get(e.name, e.path)
            available = EMBEDDED
        else:
            path = mdir / e.name if is_model_folder(mdir / e.name) else None
            available = CACHED if path is not None else NOT_LOCAL
        d = e.to_dict()
        card = read_json(path / MODEL_CARD_NAME) if path is not None else {}
        if path is not None and card.get("licence"):
            d["licence"] = str(card["licence"])
        d.update(available=available, path=None if path is None else str(path),
                 size_bytes=None if path is None else _folder_size(path), default=e.name == default)
        out.append(d)
    return out


# --------------------------------------------------------------------------------------------------
# The default model


DEFAULT_MODEL_ENV = "FLOWDEC_MODEL"
SETTINGS_NAME = "settings.json"
RELEASED_DEFAULT = "flowdec-75m"  # the released model to suggest as the default once it is installed


def settings_path(cache_dir: CacheDir = None) -> Path:
    """The user's settings (``CACHE/settings.json``): at present the default model."""
    return cache_root(cache_dir) / SETTINGS_NAME


def builtin_model_name() -> str:
    """The name of the model bundled as the default."""
    marker = embedded_root() / "DEFAULT"
    name = ""
    if marker.is_file():
        with contextlib.suppress(OSError):
            name = marker.read_text().strip()
    if not name:
        raise ModelError("no default model is bundled with this installation; pass --model NAME_OR_PATH "
                         "(see `flowdec models`; the released models come with `flowdec models fetch-official`)")
    if name not in embedded_folders():
        raise ModelError(f"the bundled default model '{name}' is missing from the package ({embedded_root()}); "
                         "reinstall flowdec-cli or pass --model NAME_OR_PATH")
    return name


def chosen_default_model(cache_dir: CacheDir = None) -> tuple[str, str] | None:
    """The default model the user chose and where: ``$FLOWDEC_MODEL`` first, then the setting written by
    ``flowdec models default NAME``; None when neither is set."""
    env = os.environ.get(DEFAULT_MODEL_ENV, "").strip()
    if env:
        return env, f"${DEFAULT_MODEL_ENV}"
    path = settings_path(cache_dir)
    saved = str(_read_settings(path).get("default_model") or "").strip()
    if saved:
        return saved, str(path)
    return None


def missing_default_model(chosen: tuple[str, str] | None) -> str | None:
    """Why a chosen default model that is a path (``set_default_model`` stores folders absolute) cannot be
    used: its folder was moved or removed since. Said where the default is shown; every command without
    ``--model`` would otherwise fail on it only when it runs."""
    if chosen is None or is_hub_ref(chosen[0]) or os.sep not in chosen[0]:
        return None
    if Path(chosen[0]).expanduser().exists():
        return None
    return (f"the default model {chosen[0]} (from {chosen[1]}) no longer exists; commands without --model will "
            "fail until `flowdec models default NAME_OR_PATH` (or --reset) chooses another")


def _read_settings(path: Path) -> dict[str, Any]:
    """The settings file ({} when there is none). One that is there but unreadable is an error naming it:
    silently running another model than the one the user chose is worse than stopping."""
    if not path.exists():
        return {}
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable settings ({exc}); fix it, or `flowdec models default --reset`") \
            from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: unreadable settings (not a JSON object); fix it, or "
                         "`flowdec models default --reset`")
    if not isinstance(data.get("default_model", ""), str):
        raise ModelError(f"{path}: default_model is a JSON {type(data['default_model']).__name__}, not a model "
                         "name or path; fix it, or `flowdec models default --reset`")
    return data


def default_model_name(cache_dir: CacheDir = None) -> str:
    """The model used when none is named: the user's choice (:func:`chosen_default_model`), else the
    built-in one."""
    chosen = chosen_default_model(cache_dir)
    return chosen[0] if chosen else builtin_model_name()


def set_default_model(ref: str | None, cache_dir: CacheDir = None) -> Path:
    """Make ``ref`` (a name, a path or ``hf://OWNER/REPO``) the default model in the settings file, or with
    None go back to the built-in model. A name must be available locally; a path is stored absolute."""
    path = settings_path(cache_dir)
    settings = read_json(path)  # lenient here: --reset must be able to repair a broken file
    if ref is None:
        settings.pop("default_model", None)
    else:
        ref = ref.strip()
        if not ref:
            raise ModelError("an empty name is no model; give a name, a path or hf://OWNER/REPO (or --reset)")
        local = Path(ref).expanduser()
        if is_hub_ref(ref):
            parse_hub_ref(ref)
        elif local.exists():
            if not (is_model_folder(local) or folder_type(local) == "ndac"
                    or (local.is_file() and local.suffix == ".pth")):
                raise ModelError(f"{local}: not a model (a model folder has {MODEL_CARD_NAME} and ndac/)")
            if is_model_folder(local):
                _entry_from_folder(local, CACHED)  # a card the listing would call broken is refused here too
            ref = str(local.resolve())
        elif os.sep in ref:
            raise ModelError(f"model {local}: no such file or folder")
        else:
            entry = get_entry(ref, cache_dir)
            if entry is None:
                raise unknown_model(ref, cache_dir)
            if entry.kind != EMBEDDED and not is_model_folder(models_dir(cache_dir) / entry.name):
                hint = "; `flowdec models fetch-official` installs it" if entry.kind == "official" else ""
                raise ModelError(f"model '{entry.name}' is not installed here{hint}")
            if entry.problem:
                raise ModelError(f"model '{entry.name}' is broken: {entry.problem}")
            ref = entry.name
        settings["default_model"] = ref
    atomic_write_bytes(path, (json.dumps(settings, indent=2) + "\n").encode())
    return path


def builtin_notice(name: str, cache_dir: CacheDir = None) -> str | None:
    """One line for someone running the built-in model without having chosen it: what it is for, and how to
    get (or, once installed, choose) the released model. None for any other model."""
    try:
        builtin = builtin_model_name()
    except ModelError:
        return None
    if name != builtin or chosen_default_model(cache_dir) is not None:
        return None
    if is_model_folder(models_dir(cache_dir) / RELEASED_DEFAULT):
        return (f"{builtin} is the small built-in model; {RELEASED_DEFAULT} is installed: make it the default "
                f"with `flowdec models default {RELEASED_DEFAULT}` (or {DEFAULT_MODEL_ENV}={RELEASED_DEFAULT})")
    return (f"{builtin} is the small built-in model, there so flowdec works offline, not for quality; "
            "`flowdec models fetch-official` gets the released FlowDec models (CC-BY-NC-4.0)")
