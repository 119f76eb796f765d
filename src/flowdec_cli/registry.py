"""Named models: where they live, what they are, and how they get there.

A model reference resolves, in this order, to a local folder in the format of :mod:`flowdec_cli.models`:

* ``hf://OWNER/REPO[@REVISION]``: a Hugging Face hub repo holding that format, through huggingface_hub and
  its cache (``HF_HUB_OFFLINE=1`` works from the cache alone);
* a model embedded in the package (``flowdec_cli/assets/models/<name>/``; ``assets/models/DEFAULT`` names
  the default one);
* a model in the cache, ``$FLOWDEC_HOME/models/<name>/`` (default ``~/.cache/flowdec``). The released
  FlowDec models get there by :func:`fetch_official`, which downloads the release's ``checkpoints.zip``,
  takes only the four weight files out of it and converts them.

Existing paths never reach this module: :func:`flowdec_cli.models._resolve` takes them as they are.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .fileio import atomic_write_bytes, publish_folder, temporary_folder
from .models import MODEL_CARD_NAME, ModelError, default_nfe_for

__all__ = [
    "OFFICIAL_ZIP_URL",
    "OFFICIAL_ZIP_SIZE",
    "OFFICIAL_ZIP_SHA256",
    "OFFICIAL_LICENCE",
    "RegistryEntry",
    "OFFICIAL_MODELS",
    "cache_root",
    "models_dir",
    "embedded_root",
    "entries",
    "get_entry",
    "resolve",
    "default_model_name",
    "builtin_model_name",
    "chosen_default_model",
    "set_default_model",
    "builtin_notice",
    "DEFAULT_MODEL_ENV",
    "RELEASED_DEFAULT",
    "list_models",
    "fetch_official",
    "check_released_architecture",
    "export_model",
    "model_card_markdown",
]

OFFICIAL_REPO = "https://github.com/facebookresearch/FlowDec"
# The link in the README of facebookresearch/FlowDec ("Checkpoints" section): release tag ``checkpoints``.
OFFICIAL_ZIP_URL = "https://github.com/facebookresearch/FlowDec/releases/download/checkpoints/checkpoints.zip"
OFFICIAL_ZIP_SIZE = 1_205_002_207
# Meta publishes no checksum for the archive; this one was recorded by a third party that downloaded it
# (docs/models.md). fetch_official checks it by default; ``expected_sha256=None`` (--no-hash-check) skips.
OFFICIAL_ZIP_SHA256 = "4f8c72ae264f32be583ed7d4fcc60704af8c9ab200dc0e7d8414dec57f4d163c"
# Key names, shapes and dtypes of the released postfilters' EMA weights (flowdec_75m and flowdec_25s list the
# same): a converted postfilter must match them exactly, whatever the archive's size or hash.
RELEASED_POSTFILTER_KEYS = Path(__file__).resolve().parent / "released" / "flowdec_postfilter_keys.json"

OFFICIAL_LICENCE = "CC-BY-NC-4.0"
OFFICIAL_LICENCE_NOTE = (
    "The FlowDec and NDAC weights released by Meta Platforms in facebookresearch/FlowDec are licensed under "
    "Creative Commons Attribution-NonCommercial 4.0 International (CC BY-NC 4.0): you may use and share them "
    "with attribution, for non-commercial purposes only. https://creativecommons.org/licenses/by-nc/4.0/"
)
OFFICIAL_CITATION = """@inproceedings{welker2025flowdec,
  title={{FlowDec}: A flow-based full-band general audio codec with high perceptual quality},
  author={Simon Welker and Matthew Le and Ricky T. Q. Chen and Wei-Ning Hsu and Timo Gerkmann and
          Alexander Richard and Yi-Chiao Wu},
  booktitle={The Thirteenth International Conference on Learning Representations},
  year={2025},
  url={https://openreview.net/forum?id=uxDFlPGRLX}
}"""

# Member paths inside the release archive. Nothing else in the archive is ever read.
MEMBER_NDAC_75 = "checkpoints/ndac/ndac-75/800k/dac/weights.pth"
MEMBER_NDAC_25 = "checkpoints/ndac/ndac-25/800k/dac/weights.pth"
MEMBER_FLOWDEC_75M = "checkpoints/flowdec/flowdec_75m/step=800000.ckpt"
MEMBER_FLOWDEC_25S = "checkpoints/flowdec/flowdec_25s/step=800000.ckpt"
OFFICIAL_MEMBERS = (MEMBER_NDAC_75, MEMBER_NDAC_25, MEMBER_FLOWDEC_75M, MEMBER_FLOWDEC_25S)
_MAX_MEMBER_BYTES = 4 << 30  # no released weight file comes near this; refuse anything bigger

EMBEDDED = "embedded"
CACHED = "cached"
NOT_LOCAL = "not local"


def _rates(step_kbps: float, n: int) -> tuple[float, ...]:
    return tuple(round(step_kbps * k, 6) for k in range(1, n + 1))


@dataclass(frozen=True)
class RegistryEntry:
    """What the registry knows about a model before (or without) having it on disk."""

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
    default_nfe: int | None = None  # NFE when none is asked for; None: models.default_nfe_for without a card

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.default_nfe is None:
            d["default_nfe"] = default_nfe_for({}, self.has_postfilter)
        d["bitrates_kbps"] = list(self.bitrates_kbps)
        d["trained_bitrates_kbps"] = None if self.trained_bitrates_kbps is None else list(self.trained_bitrates_kbps)
        d["path"] = None if self.path is None else str(self.path)
        return d


_MB = 1_000_000
OFFICIAL_MODELS: tuple[RegistryEntry, ...] = (
    RegistryEntry(
        name="flowdec-75m",
        description="NDAC-75 codec + FlowDec-75m flow postfilter (general audio, 48 kHz), the main released model",
        frame_rate=75.0, hop_length=640, n_codebooks=10, bitrates_kbps=_rates(0.75, 10),
        trained_bitrates_kbps=(3.0, 4.5, 6.0, 7.5), has_postfilter=True,
        licence=OFFICIAL_LICENCE, licence_note=OFFICIAL_LICENCE_NOTE, kind="official", source=OFFICIAL_ZIP_URL,
        approx_size_bytes=355 * _MB, members={"ndac": MEMBER_NDAC_75, "postfilter": MEMBER_FLOWDEC_75M},
    ),
    RegistryEntry(
        name="flowdec-25s",
        description="NDAC-25 codec + FlowDec-25s flow postfilter (general audio, 48 kHz), trained at 4 kbit/s only",
        frame_rate=25.0, hop_length=1920, n_codebooks=16, bitrates_kbps=_rates(0.25, 16),
        trained_bitrates_kbps=(4.0,), has_postfilter=True,
        licence=OFFICIAL_LICENCE, licence_note=OFFICIAL_LICENCE_NOTE, kind="official", source=OFFICIAL_ZIP_URL,
        approx_size_bytes=290 * _MB, members={"ndac": MEMBER_NDAC_25, "postfilter": MEMBER_FLOWDEC_25S},
    ),
    RegistryEntry(
        name="ndac-75",
        description="NDAC-75: the non-adversarial DAC codec at 75 Hz alone (no postfilter)",
        frame_rate=75.0, hop_length=640, n_codebooks=10, bitrates_kbps=_rates(0.75, 10),
        licence=OFFICIAL_LICENCE, licence_note=OFFICIAL_LICENCE_NOTE, kind="official", source=OFFICIAL_ZIP_URL,
        approx_size_bytes=260 * _MB, members={"ndac": MEMBER_NDAC_75},
    ),
    RegistryEntry(
        name="ndac-25",
        description="NDAC-25: the non-adversarial DAC codec at 25 Hz alone (no postfilter)",
        frame_rate=25.0, hop_length=1920, n_codebooks=16, bitrates_kbps=_rates(0.25, 16),
        licence=OFFICIAL_LICENCE, licence_note=OFFICIAL_LICENCE_NOTE, kind="official", source=OFFICIAL_ZIP_URL,
        approx_size_bytes=195 * _MB, members={"ndac": MEMBER_NDAC_25},
    ),
)
_OFFICIAL_BY_NAME = {e.name: e for e in OFFICIAL_MODELS}
# Extra entries of kind "hub" (a name that stands for an hf:// repo) go here once we publish some.
HUB_MODELS: tuple[RegistryEntry, ...] = ()


# --------------------------------------------------------------------------------------------------
# Places


def cache_root() -> Path:
    """``$FLOWDEC_HOME``, else ``~/.cache/flowdec`` (read at each call, so ``--cache-dir`` takes effect)."""
    home = os.environ.get("FLOWDEC_HOME")
    if home:
        return Path(home).expanduser()
    return Path("~/.cache/flowdec").expanduser()


def models_dir(root: str | os.PathLike | None = None) -> Path:
    return (Path(root).expanduser() if root is not None else cache_root()) / "models"


def embedded_root() -> Path:
    """Where models shipped inside the package live."""
    return Path(__file__).resolve().parent / "assets" / "models"


def _is_model_folder(folder: Path) -> bool:
    return folder.is_dir() and (folder / MODEL_CARD_NAME).is_file() and (folder / "ndac").is_dir()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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
    """A registry entry from a model folder's flowdec.json, completed from its ndac/config.json."""
    card = _read_json(folder / MODEL_CARD_NAME)
    cfg = _read_json(folder / "ndac" / "config.json")
    sr = int(card.get("sample_rate") or cfg.get("sample_rate") or 48000)
    hop = card.get("hop_length")
    if not hop and isinstance(cfg.get("encoder_rates"), list):
        with contextlib.suppress(TypeError, ValueError):
            hop = math.prod(int(r) for r in cfg["encoder_rates"])
    hop = int(hop or 0)
    n_cb = int(card.get("n_codebooks") or cfg.get("n_codebooks") or 0)
    cb_size = int(card.get("codebook_size") or cfg.get("codebook_size") or 1024)
    frame_rate = float(card.get("frame_rate") or (sr / hop if hop else 0.0))
    rates = card.get("bitrates_kbps")
    if not isinstance(rates, list):
        step = frame_rate * math.log2(cb_size) / 1000 if frame_rate else 0.0
        rates = list(_rates(step, n_cb)) if step else []
    trained = card.get("trained_bitrates_kbps")
    return RegistryEntry(
        name=folder.name, description=str(card.get("description", "")),
        frame_rate=frame_rate, hop_length=hop, n_codebooks=n_cb, codebook_size=cb_size, sample_rate=sr,
        bitrates_kbps=tuple(float(r) for r in rates),
        trained_bitrates_kbps=tuple(float(r) for r in trained) if isinstance(trained, list) else None,
        has_postfilter=(folder / "postfilter").is_dir(), licence=str(card.get("licence", "unknown")),
        licence_note=str(card.get("licence_note", "")), kind=kind, source=str(card.get("source", "")),
        path=folder if kind == EMBEDDED else None,
        default_nfe=default_nfe_for(card, (folder / "postfilter").is_dir()),
    )


def _embedded_folders() -> dict[str, Path]:
    """Embedded model folders by folder name (which should equal the name in their flowdec.json)."""
    root = embedded_root()
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if _is_model_folder(p)}


def _embedded_by_any_name() -> dict[str, Path]:
    """Also under the name their flowdec.json records (what .fdc files name), should it differ."""
    found = dict(_embedded_folders())
    for folder in list(found.values()):
        card_name = str(_read_json(folder / MODEL_CARD_NAME).get("name") or "")
        if card_name and card_name not in found:
            found[card_name] = folder
    return found


def _embedded_entries() -> list[RegistryEntry]:
    return [_entry_from_folder(folder, EMBEDDED) for folder in _embedded_folders().values()]


def _cached_extra_entries() -> list[RegistryEntry]:
    """Model folders in the cache that are neither official nor embedded (e.g. placed there by hand)."""
    mdir = models_dir()
    if not mdir.is_dir():
        return []
    skip = set(_OFFICIAL_BY_NAME) | set(_embedded_folders())
    out = []
    for folder in sorted(mdir.iterdir()):
        if folder.name.startswith(".") or folder.name in skip or not _is_model_folder(folder):
            continue
        out.append(_entry_from_folder(folder, "cached"))
    return out


def entries() -> list[RegistryEntry]:
    """Every known model: embedded ones, the official ones, hub names, and other models in the cache."""
    embedded = _embedded_entries()
    names = {e.name for e in embedded}
    rest = [e for e in (*OFFICIAL_MODELS, *HUB_MODELS) if e.name not in names]
    return [*embedded, *rest, *_cached_extra_entries()]


def _canonical(name: str) -> str:
    """Official names also answer to the release's spellings (``flowdec_75m``, ``NDAC-75``)."""
    low = name.strip().lower().replace("_", "-")
    return low if low in _OFFICIAL_BY_NAME else name.strip()


def get_entry(name: str) -> RegistryEntry | None:
    name = _canonical(name)
    for e in entries():
        if e.name == name:
            return e
    return None


# --------------------------------------------------------------------------------------------------
# Resolving references


_HF_PREFIX = re.compile(r"^hf://", re.IGNORECASE)
_HF_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def parse_hub_ref(ref: str) -> tuple[str, str | None]:
    """``hf://OWNER/REPO[@REVISION]`` -> (``OWNER/REPO``, revision or None)."""
    body = _HF_PREFIX.sub("", ref.strip(), count=1)
    repo, at, revision = body.partition("@")
    parts = repo.strip("/").split("/")
    if len(parts) != 2 or not all(_HF_PART.match(p) for p in parts) or (at and not revision):
        raise ModelError(f"'{ref}': not a hub reference; expected hf://OWNER/REPO or hf://OWNER/REPO@REVISION")
    return "/".join(parts), revision or None


def _env_true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as it is now (huggingface_hub reads it only once, at import)."""
    env = os.environ.get("HF_HUB_OFFLINE")
    if env is not None:
        return _env_true(env)
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def hub_cache_dir() -> Path:
    """The hub cache huggingface_hub would use, from the environment as it is now."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


_HUB_PATTERNS = ["*.json", "*.safetensors", "*.md"]


def _hub_error(ref: str, repo: str, revision: str | None, exc: BaseException, offline: bool, cache: Path) -> str:
    names = {c.__name__ for c in type(exc).__mro__}
    where = f"{ref}:"
    if "RevisionNotFoundError" in names:
        return f"{where} the hub repo {repo} has no revision '{revision}'"
    if "GatedRepoError" in names:
        return (f"{where} the hub repo {repo} is gated; accept its terms on huggingface.co and log in "
                "(`hf auth login` or HF_TOKEN)")
    if "RepositoryNotFoundError" in names:
        return (f"{where} no such model on the Hugging Face hub (or it is private: log in with `hf auth login` "
                "or set HF_TOKEN)")
    if "IncompleteSnapshotError" in names:
        return (f"{where} the cached copy in {cache} is incomplete and the hub cannot be reached; run once with "
                "network access (HF_HUB_OFFLINE unset) to complete it")
    if "HFValidationError" in names:
        return f"{where} not a valid hub repo name"
    if offline:
        return (f"{where} not in the local Hugging Face cache ({cache}) and HF_HUB_OFFLINE=1 forbids "
                "downloading; unset HF_HUB_OFFLINE with network access, or give the model's local folder")
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "LocalEntryNotFoundError" in names or isinstance(exc, OSError):
        return (f"{where} cannot reach the Hugging Face hub and the model is not in the local cache ({cache}); "
                "check the network (or HF_ENDPOINT), or download the repo elsewhere and give its folder")
    return f"{where} hub download failed ({type(exc).__name__}: {reason})"


def resolve_hub(ref: str) -> Path:
    """The local snapshot folder of ``hf://OWNER/REPO[@REVISION]``, downloading it when allowed."""
    repo, revision = parse_hub_ref(ref)
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a declared dependency
        raise ModelError(f"{ref}: huggingface_hub is not installed (pip install huggingface_hub)") from None
    offline = hub_offline()
    cache = hub_cache_dir()
    try:
        folder = snapshot_download(repo, revision=revision, cache_dir=str(cache), local_files_only=offline,
                                   allow_patterns=_HUB_PATTERNS, library_name="flowdec-cli",
                                   library_version=__version__)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise ModelError(_hub_error(ref, repo, revision, exc, offline, cache)) from None
    path = Path(folder)
    if not ((path / "ndac").is_dir() or (path / "config.json").is_file()):
        raise ModelError(f"{ref}: the hub repo {repo} holds no flowdec model (no ndac/ folder or config.json)")
    return path


def resolve(ref: str) -> Path:
    """A local model folder for a hub reference or a registry name (paths are handled by the caller)."""
    ref = str(ref)
    if _HF_PREFIX.match(ref.strip()):
        return resolve_hub(ref)
    name = _canonical(ref)
    embedded = _embedded_by_any_name()
    if name in embedded:
        return embedded[name]
    cached = models_dir() / name
    if name and "/" not in name and "\\" not in name and not name.startswith(".") and _is_model_folder(cached):
        return cached
    if name in _OFFICIAL_BY_NAME:
        raise ModelError(f"model '{name}' is one of the released FlowDec models but is not in the cache "
                         f"({models_dir()}) yet; run `flowdec models fetch-official` to download and convert "
                         "them (1.2 GB), or set FLOWDEC_HOME / --cache-dir to where they are")
    for e in HUB_MODELS:
        if e.name == name and e.hub_repo:
            return resolve_hub(f"hf://{e.hub_repo}")
    looks_like_path = any(s in ref for s in ("/", "\\")) or ref.startswith(("~", ".")) or \
        ref.endswith((".pth", ".ckpt", ".safetensors", ".json"))
    if looks_like_path:
        raise ModelError(f"{ref}: no such file or folder")
    known = ", ".join(e.name for e in entries())
    raise ModelError(f"unknown model '{ref}'; known: {known}; or give a path or hf://OWNER/REPO")


DEFAULT_MODEL_ENV = "FLOWDEC_MODEL"
SETTINGS_NAME = "settings.json"
RELEASED_DEFAULT = "flowdec-75m"  # the released model to suggest as the default once it is installed


def settings_path() -> Path:
    """The user's settings (``$FLOWDEC_HOME/settings.json``): at present the default model."""
    return cache_root() / SETTINGS_NAME


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
    if name not in _embedded_folders():
        raise ModelError(f"the bundled default model '{name}' is missing from the package ({embedded_root()}); "
                         "reinstall flowdec-cli or pass --model NAME_OR_PATH")
    return name


def chosen_default_model() -> tuple[str, str] | None:
    """The default model the user chose and where: ``$FLOWDEC_MODEL`` first, then the setting written by
    ``flowdec models default NAME``; None when neither is set."""
    env = os.environ.get(DEFAULT_MODEL_ENV, "").strip()
    if env:
        return env, f"${DEFAULT_MODEL_ENV}"
    saved = str(_read_json(settings_path()).get("default_model") or "").strip()
    if saved:
        return saved, str(settings_path())
    return None


def default_model_name() -> str:
    """The model used when none is named: the user's choice (:func:`chosen_default_model`), else the
    built-in one."""
    chosen = chosen_default_model()
    return chosen[0] if chosen else builtin_model_name()


def set_default_model(ref: str | None) -> Path:
    """Make ``ref`` (a name, a path or ``hf://OWNER/REPO``) the default model in the settings file, or with
    None go back to the built-in model. A name must be available locally; a path is stored absolute."""
    settings = _read_json(settings_path())
    if ref is None:
        settings.pop("default_model", None)
    else:
        ref = ref.strip()
        if _HF_PREFIX.match(ref):
            parse_hub_ref(ref)
        elif Path(ref).expanduser().exists():
            ref = str(Path(ref).expanduser().resolve())
        else:
            entry = get_entry(ref)
            if entry is None:
                known = ", ".join(e.name for e in entries())
                raise ModelError(f"unknown model '{ref}'; known: {known}; or give a path or hf://OWNER/REPO")
            if entry.kind != EMBEDDED and not _is_model_folder(models_dir() / entry.name):
                hint = ("; `flowdec models fetch-official` installs it" if entry.kind == "official" else "")
                raise ModelError(f"model '{entry.name}' is not installed here{hint}")
            ref = entry.name
        settings["default_model"] = ref
    path = settings_path()
    atomic_write_bytes(path, (json.dumps(settings, indent=2) + "\n").encode())
    return path


def builtin_notice(name: str) -> str | None:
    """One line for someone running the built-in model without having chosen it: what it is for, and how to
    get (or, once installed, choose) the released model. None for any other model."""
    try:
        builtin = builtin_model_name()
    except ModelError:
        return None
    if name != builtin or chosen_default_model() is not None:
        return None
    if _is_model_folder(models_dir() / RELEASED_DEFAULT):
        return (f"{builtin} is the small built-in model; {RELEASED_DEFAULT} is installed: make it the default "
                f"with `flowdec models default {RELEASED_DEFAULT}` (or {DEFAULT_MODEL_ENV}={RELEASED_DEFAULT})")
    return (f"{builtin} is the small built-in model, there so flowdec works offline, not for quality; "
            "`flowdec models fetch-official` gets the released FlowDec models (CC-BY-NC-4.0)")


def list_models() -> list[dict[str, Any]]:
    """Every known model with its availability (embedded / cached / not local) and size on disk."""
    try:
        default = default_model_name()
    except ModelError:
        default = None
    embedded = _embedded_folders()
    out = []
    for e in entries():
        if e.kind == EMBEDDED:
            path: Path | None = embedded.get(e.name, e.path)
            available = EMBEDDED
        else:
            path = models_dir() / e.name if _is_model_folder(models_dir() / e.name) else None
            available = CACHED if path is not None else NOT_LOCAL
        d = e.to_dict()
        card = _read_json(path / MODEL_CARD_NAME) if path is not None else {}
        if path is not None and card.get("licence"):
            d["licence"] = str(card["licence"])
        d.update(available=available, path=None if path is None else str(path),
                 size_bytes=None if path is None else _folder_size(path), default=e.name == default)
        out.append(d)
    return out


# --------------------------------------------------------------------------------------------------
# The released checkpoints


def _is_url(source: str) -> bool:
    return bool(re.match(r"^(https?|ftp)://", source, re.IGNORECASE))


def _file_url_path(source: str) -> Path | None:
    if source.lower().startswith("file://"):
        return Path(urllib.request.url2pathname(source[len("file://"):]))
    return None


def _bar(total: int | None, desc: str, progress: bool, initial: int = 0) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=True if not progress else None, dynamic_ncols=True, leave=False)


def download(url: str, dest: Path, expected_size: int | None = None, progress: bool = True,
             timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a previous partial download (HTTP Range)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if dest.is_file() and (expected_size is None or dest.stat().st_size == expected_size):
        return dest
    have = part.stat().st_size if part.is_file() else 0
    if expected_size is not None and have > expected_size:
        part.unlink()
        have = 0
    if expected_size is not None and have == expected_size:
        os.replace(part, dest)
        return dest
    req = urllib.request.Request(url, headers={"User-Agent": f"flowdec-cli/{__version__}"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    hint = "check the network, or download it another way and pass the file with --from PATH"
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left past what we have: the partial file is whole
            os.replace(part, dest)
            return dest
        raise ModelError(f"{url}: download failed (HTTP {exc.code} {exc.reason}); {hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelError(f"{url}: cannot download ({reason}); {hint}") from None
    with resp:
        status = getattr(resp, "status", None) or resp.getcode()
        if have and status != 206:
            have = 0  # the server ignored the range: start over
        elif have:
            m = re.match(r"bytes\s+(\d+)-", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                raise ModelError(f"{url}: the server answered a resume request with the wrong range; "
                                 f"delete {part} and run again")
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else expected_size
        try:
            with open(part, "ab" if have else "wb") as f, _bar(total, dest.name, progress, have) as bar:
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    f.write(chunk)
                    bar.update(len(chunk))
        except (OSError, urllib.error.URLError) as exc:
            got = part.stat().st_size if part.exists() else 0
            raise ModelError(f"{url}: download interrupted at {got} bytes ({exc}); run the same command again "
                             "to resume") from None
    got = part.stat().st_size
    if expected_size is not None and got != expected_size:
        if got > expected_size:
            part.unlink()
        raise ModelError(f"{url}: downloaded {got} bytes, expected {expected_size}; run the command again to "
                         "resume, or pass --no-size-check if the archive really has another size")
    os.replace(part, dest)
    return dest


def _need_space(folder: Path, needed: int, what: str) -> None:
    """Refuse early, with the numbers, rather than fail half-way through a large write."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if free < needed:
        raise ModelError(f"{folder}: {what} needs about {needed / 1e9:.1f} GB free there, but only "
                         f"{free / 1e9:.1f} GB is; free some space or choose another --cache-dir")


def _sha256_file(path: Path, progress: bool = False) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f, _bar(path.stat().st_size, f"sha256 {path.name}", progress) as bar:
        while True:
            chunk = f.read(1 << 22)
            if not chunk:
                break
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path) -> str:
    """Copy one archive member to a file whose name we chose; return its sha256."""
    if info.file_size > _MAX_MEMBER_BYTES:
        raise ModelError(f"{info.filename}: {info.file_size} bytes in the archive; too big to be a weight file")
    h = hashlib.sha256()
    written = 0
    with zf.open(info) as src, open(dest, "wb") as out:
        while True:
            chunk = src.read(1 << 22)
            if not chunk:
                break
            written += len(chunk)
            if written > _MAX_MEMBER_BYTES:
                raise ModelError(f"{info.filename}: expands beyond its declared size; corrupt archive")
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest()


def _link_or_copy_tree(src: Path, dst: Path) -> None:
    """Share identical files by hard links where the file system allows it (NDAC weights of two models)."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_dir():
            _link_or_copy_tree(p, dst / p.name)
            continue
        try:
            os.link(p, dst / p.name)
        except OSError:
            shutil.copy2(p, dst / p.name)


def _write_text(path: Path, text: str) -> None:
    """A model card, fsynced like the weights beside it, so a folder published after a crash is whole."""
    atomic_write_bytes(path, text.encode("utf-8"), make_parents=True)


def _card_for(entry: RegistryEntry, cfg: Any, hashes: dict[str, str], sources: dict[str, dict[str, str]],
              archive: str) -> dict[str, Any]:
    return {
        "name": entry.name,
        "description": entry.description,
        "licence": entry.licence,
        "licence_note": entry.licence_note,
        "source": f"{OFFICIAL_REPO} release 'checkpoints' (checkpoints.zip)",
        "archive": archive,
        "kind": "official",
        "sample_rate": int(cfg.sample_rate),
        "hop_length": int(cfg.hop_length),
        "frame_rate": cfg.sample_rate / cfg.hop_length,
        "n_codebooks": int(cfg.n_codebooks),
        "codebook_size": int(cfg.codebook_size),
        "bitrates_kbps": list(entry.bitrates_kbps),
        "trained_bitrates_kbps": None if entry.trained_bitrates_kbps is None else list(entry.trained_bitrates_kbps),
        "weights": hashes,
        "converted_from": sources,
        "converted_by": f"flowdec-cli {__version__}",
        "citation": OFFICIAL_CITATION,
    }


def _official_names_present(root: Path) -> list[str]:
    return [e.name for e in OFFICIAL_MODELS if _is_model_folder(models_dir(root) / e.name)]


def fetch_official(source: str | os.PathLike | None = None, expected_size: int | None = OFFICIAL_ZIP_SIZE,
                   progress: bool = True, cache_dir: str | os.PathLike | None = None,
                   expected_sha256: str | None = OFFICIAL_ZIP_SHA256, keep_download: bool = False,
                   force: bool = False) -> dict[str, Path]:
    """Download (or take) the release's ``checkpoints.zip`` and convert its four weight files into the cache.

    ``source``: a URL (default: the release) or a local path. ``expected_size``: the archive's size in bytes,
    checked unless None; ``expected_sha256`` likewise (the recorded :data:`OFFICIAL_ZIP_SHA256` by default).
    Whatever these checks, each converted postfilter must have the released architecture (key names, shapes
    and dtypes of :data:`RELEASED_POSTFILTER_KEYS`), else :class:`ModelError`; models that appear in the
    cache meanwhile are never replaced without ``force`` (``OutputExistsError``). A downloaded archive is removed once
    converted unless ``keep_download``; a local one is read in place. With ``force=False`` nothing happens
    when all four models are in the cache already. Returns {model name: folder}.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    mdir = models_dir(root)
    present = set(_official_names_present(root))
    if not force and len(present) == len(OFFICIAL_MODELS):
        return {e.name: mdir / e.name for e in OFFICIAL_MODELS}

    src = str(source) if source is not None else OFFICIAL_ZIP_URL
    downloaded = False
    local = _file_url_path(src)
    if local is None and _is_url(src):
        name = Path(urllib.request.url2pathname(urllib.parse.urlsplit(src).path)).name or "checkpoints.zip"
        dest = root / "downloads" / name
        if expected_size is not None and not dest.is_file():
            part = dest.with_name(dest.name + ".part")
            have = part.stat().st_size if part.is_file() else 0
            _need_space(dest.parent, max(expected_size - have, 0) + expected_size, "the download and conversion")
        zip_path = download(src, dest, expected_size, progress)
        downloaded = True
    else:
        zip_path = (local or Path(src)).expanduser()
        if not zip_path.is_file():
            raise ModelError(f"{zip_path}: no such file")
    size = zip_path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise ModelError(f"{zip_path}: {size} bytes, but the FlowDec release checkpoints.zip has {expected_size}; "
                         "the file is incomplete or another archive (--no-size-check skips this check)")
    if expected_sha256 is not None:
        digest = _sha256_file(zip_path, progress)
        if digest.lower() != expected_sha256.lower():
            if downloaded:  # do not reuse a bad download next time
                zip_path.unlink(missing_ok=True)
            raise ModelError(f"{zip_path}: sha256 {digest}, expected {expected_sha256}; corrupt or another "
                             "archive (--no-hash-check skips this check)")

    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        if downloaded:  # do not reuse a bad download next time
            zip_path.unlink(missing_ok=True)
        raise ModelError(f"{zip_path}: not a readable zip archive ({exc})") from None
    mdir.mkdir(parents=True, exist_ok=True)
    build = temporary_folder(mdir, "fetch")
    try:
        with zf:
            infos = {i.filename: i for i in zf.infolist() if not i.is_dir()}
            missing = [m for m in OFFICIAL_MEMBERS if m not in infos]
            if missing:
                raise ModelError(f"{zip_path}: not the FlowDec release archive; missing {', '.join(missing)}")
            _need_space(mdir, sum(infos[m].file_size for m in OFFICIAL_MEMBERS), "converting the models")
            folders = _convert_official(zf, infos, build, src if downloaded else str(zip_path), progress)
        result = {}
        for e in OFFICIAL_MODELS:  # without force, replace only what was there when we started
            publish_folder(folders[e.name], mdir / e.name, overwrite=force or e.name in present)
            result[e.name] = mdir / e.name
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        if downloaded:
            zip_path.unlink(missing_ok=True)
        raise ModelError(f"{zip_path}: corrupt archive ({exc}); download it again") from None
    finally:
        shutil.rmtree(build, ignore_errors=True)
    if downloaded and not keep_download:
        with contextlib.suppress(OSError):
            zip_path.unlink()
    return result


def _convert_official(zf: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], build: Path, archive: str,
                      progress: bool) -> dict[str, Path]:
    from .checkpoints import CheckpointError, weights_hash
    from .models import _ndac_from_official, save_ndac

    tmp = build / ".extract"
    tmp.mkdir()
    codecs: dict[str, tuple[Any, str, str]] = {}  # member -> (ndac, hash, sha256)
    folders: dict[str, Path] = {}
    steps = [e for e in OFFICIAL_MODELS if not e.has_postfilter] + [e for e in OFFICIAL_MODELS if e.has_postfilter]
    from tqdm import tqdm

    with tqdm(total=len(steps), desc="convert", unit="model", disable=True if not progress else None,
              leave=False) as bar:
        for e in steps:
            folder = build / e.name
            member = e.members["ndac"]
            sources = {}
            if member not in codecs:
                raw = tmp / "ndac.pth"
                sha = _extract_member(zf, infos[member], raw)
                try:
                    ndac = _ndac_from_official(raw)
                except (CheckpointError, ModelError) as exc:
                    raise ModelError(f"{member} in the archive: {str(exc).replace(str(raw) + ': ', '')}") from None
                finally:
                    raw.unlink(missing_ok=True)
                cfg = ndac.config
                if (cfg.hop_length, cfg.n_codebooks, cfg.sample_rate) != (e.hop_length, e.n_codebooks, e.sample_rate):
                    raise ModelError(f"{member} in the archive: hop {cfg.hop_length}, {cfg.n_codebooks} codebooks, "
                                     f"{cfg.sample_rate} Hz; {e.name} should have hop {e.hop_length}, "
                                     f"{e.n_codebooks} codebooks, {e.sample_rate} Hz")
                save_ndac(ndac, folder / "ndac")
                codecs[member] = (cfg, weights_hash(ndac.state_dict()), sha)
                del ndac
            else:
                first = next(f for n, f in folders.items() if _OFFICIAL_BY_NAME[n].members["ndac"] == member)
                _link_or_copy_tree(first / "ndac", folder / "ndac")
            cfg, ndac_hash, sha = codecs[member]
            hashes = {"ndac": ndac_hash}
            sources["ndac"] = {"member": member, "sha256": sha}
            if e.has_postfilter:
                pmember = e.members["postfilter"]
                raw = tmp / "postfilter.ckpt"
                psha = _extract_member(zf, infos[pmember], raw)
                try:
                    pf = _postfilter_from_ckpt(raw, pmember)
                finally:
                    raw.unlink(missing_ok=True)
                pf.save(folder / "postfilter")
                hashes["postfilter"] = weights_hash(pf.state_dict())
                sources["postfilter"] = {"member": pmember, "sha256": psha, "weights": "EMA"}
                del pf
            card = _card_for(e, cfg, hashes, sources, archive)
            _write_text(folder / MODEL_CARD_NAME, json.dumps(card, indent=2) + "\n")
            _write_text(folder / "README.md", model_card_markdown(card))
            folders[e.name] = folder
            bar.update(1)
    shutil.rmtree(tmp, ignore_errors=True)
    return folders


def _released_postfilter_keys() -> dict[str, tuple[list[int], str]]:
    data = json.loads(RELEASED_POSTFILTER_KEYS.read_text())
    return {k: (list(v[0]), str(v[1])) for k, v in data["keys"].items()}


def check_released_architecture(state: dict[str, Any], what: str) -> None:
    """Refuse weights whose key names, shapes or dtypes differ from the released postfilter's."""
    want = _released_postfilter_keys()
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    wrong = [k for k in want if k in state and (list(state[k].shape) != want[k][0]
                                                 or str(state[k].dtype).replace("torch.", "") != want[k][1])]
    if missing or extra or wrong:
        if wrong:
            k = wrong[0]
            example = (f"e.g. {k} is {list(state[k].shape)} {str(state[k].dtype).replace('torch.', '')}, "
                       f"the release has {want[k][0]} {want[k][1]}")
        else:
            example = f"e.g. {'missing ' + missing[0] if missing else 'unexpected ' + extra[0]}"
        raise ModelError(f"{what}: not the released FlowDec postfilter architecture ({len(wrong)} of {len(want)} "
                         f"tensors have other shapes, {len(missing)} missing, {len(extra)} unexpected; {example}); "
                         "refusing to install it")


def _postfilter_from_ckpt(path: Path, member: str) -> Any:
    from .checkpoints import CheckpointError, load_lightning_state_dict
    from .postfilter import Postfilter

    try:
        check_released_architecture(load_lightning_state_dict(path, ema=True), f"{member} in the archive")
        return Postfilter.from_lightning_checkpoint(path, ema=True)
    except (CheckpointError, ValueError) as exc:
        raise ModelError(f"{member} in the archive: {str(exc).replace(str(path) + ': ', '')}") from None


# --------------------------------------------------------------------------------------------------
# Model cards and export


def _fmt_rates(rates: Any) -> str:
    if not rates:
        return "-"
    return ", ".join(f"{float(r):g}" for r in rates)


_HUB_LICENCES = {"cc-by-nc-4.0": "cc-by-nc-4.0", "mit": "mit", "apache-2.0": "apache-2.0",
                 "cc-by-4.0": "cc-by-4.0", "bsd-3-clause": "bsd-3-clause", "cc0-1.0": "cc0-1.0"}


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


_EXPORT_OWNED = ("flowdec.json", "README.md", "ndac", "postfilter", "config.json", "model.safetensors",
                 "entropy.safetensors")


def export_model(name_or_path: str | os.PathLike, dest_dir: str | os.PathLike, force: bool = False,
                 repo_id: str | None = None) -> Path:
    """Write a folder ready to upload as a hub repo: flowdec.json, ndac/, postfilter/ (if any), README.md.

    ``repo_id`` (OWNER/REPO) names the model ``hf://OWNER/REPO`` in its record, so that .fdc files it codes
    point back to the repo, and fills in the usage lines of the model card.
    """
    from .checkpoints import CheckpointError, load_model_folder, weights_hash
    from .models import _folder_type, _ndac_from_official, _resolve, save_ndac

    if repo_id is not None:
        repo_id = parse_hub_ref(repo_id if repo_id.lower().startswith("hf://") else f"hf://{repo_id}")[0]
    src = _resolve(name_or_path)
    dest = Path(dest_dir).expanduser()
    if dest.exists() and not dest.is_dir():
        raise ModelError(f"{dest}: is a file; give a folder to export into")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise ModelError(f"{dest}: is not empty; use -f/--force to overwrite the model files in it")
    if src.is_dir() and (dest.resolve() == src.resolve() or src.resolve() in dest.resolve().parents):
        raise ModelError(f"{dest}: lies inside the model being exported ({src}); choose another folder")

    card: dict[str, Any] = {}
    build = temporary_folder(dest.parent, f"{dest.name}.export")
    try:
        if src.is_file():  # a released weights.pth: the codec alone
            try:
                ndac = _ndac_from_official(src)
            except CheckpointError as exc:
                raise ModelError(str(exc)) from None
            save_ndac(ndac, build / "ndac")
            card = {"name": src.parent.name or "ndac", "licence": "unknown",
                    "source": str(src), "weights": {"ndac": weights_hash(ndac.state_dict())}}
        elif (src / "ndac").is_dir():
            card = _read_json(src / MODEL_CARD_NAME)
            for comp in ("ndac", "postfilter"):
                if (src / comp).is_dir():
                    _copy_component(src / comp, build / comp)
            if (src / "entropy.safetensors").is_file():  # the entropy tables travel with the codec
                shutil.copyfile(src / "entropy.safetensors", build / "entropy.safetensors")
        elif _folder_type(src) == "ndac":
            _copy_component(src, build / "ndac")
            card = {"name": src.name}
        else:
            raise ModelError(f"{src}: not a model folder (needs ndac/ or a config.json of type 'ndac')")
        # Complete the record from the codec's own settings, and the weights hashes from the files.
        cfg, state = load_model_folder(build / "ndac")
        hop = math.prod(int(r) for r in cfg.get("encoder_rates", [1]))
        sr = int(cfg.get("sample_rate", 48000))
        card.setdefault("sample_rate", sr)
        card.setdefault("hop_length", hop)
        card.setdefault("frame_rate", sr / hop)
        card.setdefault("n_codebooks", int(cfg.get("n_codebooks", 0)))
        card.setdefault("codebook_size", int(cfg.get("codebook_size", 1024)))
        if not card.get("bitrates_kbps"):
            step = sr / hop * math.log2(int(card["codebook_size"])) / 1000
            card["bitrates_kbps"] = list(_rates(step, int(card["n_codebooks"])))
        weights = dict(card.get("weights") or {})
        weights["ndac"] = weights_hash(state)
        if (build / "postfilter").is_dir():
            weights["postfilter"] = weights_hash(load_model_folder(build / "postfilter")[1])
        else:
            weights.pop("postfilter", None)
        card["weights"] = weights
        card.setdefault("licence", "unknown")
        base = str(card.get("name") or src.name)
        if repo_id is not None:
            card["name"] = f"hf://{repo_id}"
            if base != card["name"]:
                card["exported_from"] = base
        else:
            card["name"] = base
        _write_text(build / MODEL_CARD_NAME, json.dumps(card, indent=2) + "\n")
        _write_text(build / "README.md", model_card_markdown(card, repo_id))
        _publish_export(build, dest)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return dest


def _copy_component(src: Path, dst: Path) -> None:
    from .checkpoints import CONFIG_NAME, WEIGHTS_NAME

    dst.mkdir(parents=True, exist_ok=True)
    for fname in (CONFIG_NAME, WEIGHTS_NAME):
        if not (src / fname).is_file():
            raise ModelError(f"{src}: not a model folder (missing {fname})")
        shutil.copyfile(src / fname, dst / fname)  # follows the hub cache's links to the real bytes


def _publish_export(build: Path, dest: Path) -> None:
    """Move the built files into ``dest``, replacing only files an export owns (a .git folder stays)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in _EXPORT_OWNED:
        old = dest / name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
    for item in sorted(build.iterdir()):
        os.replace(item, dest / item.name)

