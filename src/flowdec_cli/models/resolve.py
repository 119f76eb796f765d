"""Resolving a model reference to a local folder: an existing path as it is, a hub repo through the Hugging
Face cache, a name of the catalogue through the package or the model cache.

In that order: an existing path; ``hf://OWNER/REPO[@REVISION]`` (downloaded through huggingface_hub and its
cache; ``HF_HUB_OFFLINE=1`` works from the cache alone); an embedded model; a model in ``CACHE/models/``.
Every command resolves its model once, here, and loads from the folder it gets.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .. import __version__
from .catalogue import (
    HUB_MODELS,
    OFFICIAL_BY_NAME,
    CacheDir,
    canonical_name,
    chosen_default_model,
    embedded_by_any_name,
    is_hub_ref,
    models_dir,
    parse_hub_ref,
    unknown_model,
)
from .folder import ModelError, UnknownModelError, folder_model_name, is_model_folder, read_model_card

__all__ = ["resolve", "resolve_name", "resolve_named_by_data", "check_model_name", "local_card", "resolve_hub",
           "pretrained_ref", "hub_offline", "hub_cache_dir"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[^\s/]+)?$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.md"]


def pretrained_ref(ref: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """Hugging Face habits for the Python API: ``OWNER/REPO[@REV]`` that is not an existing path means the
    hub repo (``hf://OWNER/REPO[@REV]``); names, paths and ``hf://`` references pass unchanged."""
    if isinstance(ref, str) and _HUB_ID.match(ref) and not Path(ref).expanduser().exists():
        return "hf://" + ref
    return ref


def resolve(ref: str | os.PathLike[str], cache_dir: CacheDir = None) -> Path:
    """A local path for ``ref``: an existing path as is, else a hub reference or a catalogue name."""
    path = Path(ref).expanduser()
    if path.exists():
        return path
    return resolve_name(str(ref), cache_dir)


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


def resolve_name(ref: str, cache_dir: CacheDir = None) -> Path:
    """A local model folder for a hub reference or a catalogue name (not a path)."""
    ref = str(ref)
    if is_hub_ref(ref):
        return resolve_hub(ref)
    name = canonical_name(ref)
    here = _local_folder(name, cache_dir)
    if here is not None:
        return here
    if name in OFFICIAL_BY_NAME:
        raise ModelError(f"model '{name}' is one of the released FlowDec models but is not in the cache "
                         f"({models_dir(cache_dir)}) yet; run `flowdec models fetch-official` to download and "
                         "convert them (1.2 GB), or set FLOWDEC_HOME / --cache-dir to where they are")
    for e in HUB_MODELS:
        if e.name == name and e.hub_repo:
            return resolve_hub(f"hf://{e.hub_repo}")
    if _looks_like_path(ref):
        raise ModelError(f"model {ref}: no such file or folder")
    raise unknown_model(ref, cache_dir)


def _local_folder(name: str, cache_dir: CacheDir = None) -> Path | None:
    """The folder of a model of this name that is here already: built in, or in the model cache."""
    embedded = embedded_by_any_name()
    if name in embedded:
        return embedded[name]
    cached = models_dir(cache_dir) / name
    if name and "/" not in name and "\\" not in name and not name.startswith(".") and is_model_folder(cached):
        return cached
    return None


def local_card(name: str, cache_dir: CacheDir = None) -> dict[str, Any] | None:
    """The card of the model a file names when that model is here (built in or cached): nothing is fetched,
    no weights load, and a path-like name is never read as a path. None when it is not here, or its card
    cannot be read."""
    name = str(name)
    if not _names_a_model(name) or is_hub_ref(name):
        return None
    folder = _local_folder(canonical_name(name), cache_dir)
    if folder is None:
        return None
    try:
        return read_model_card(folder)
    except ModelError:
        return None


def _looks_like_path(ref: str) -> bool:
    return any(s in ref for s in ("/", "\\")) or ref.startswith(("~", ".")) or \
        ref.endswith((".pth", ".ckpt", ".safetensors", ".json"))


def _names_a_model(ref: str) -> bool:
    """What a file may call its model: a plain name or an ``hf://`` reference, never a path or nothing."""
    return is_hub_ref(ref) or not (_looks_like_path(ref) or not ref.strip())


def check_model_name(name: str) -> None:
    """A name a model is saved under travels in every .fdc it codes, and :func:`resolve_named_by_data`
    refuses path-like ones there: such a model could never decode its files by name. ModelError if so."""
    if not _names_a_model(name):
        raise ModelError(f"model name {name!r} looks like a path; the .fdc files it codes would name it, and "
                         "a file may name a model, not where to read one: choose a plain name")


def resolve_named_by_data(ref: str, cache_dir: CacheDir = None) -> Path:
    """The folder of a model that a .fdc header or a shard's row names: a catalogue name or an ``hf://``
    reference, never a path. A file from elsewhere must not choose what is read from this machine's disk,
    and the same file must decode the same in any working folder (a plain name that is also a folder there
    is still looked up as a name); a user's own model is given with ``--model``, or found as the user's
    default when that is a folder given by its absolute path (:func:`_default_folder_named`)."""
    ref = str(ref)
    if not _names_a_model(ref):
        raise ModelError(f"{ref!r} is a path; a file may name a model, not where to read one")
    try:
        return resolve_name(ref, cache_dir)
    except UnknownModelError:
        folder = _default_folder_named(ref, cache_dir)
        if folder is None:
            raise
        return folder


def _default_folder_named(name: str, cache_dir: CacheDir = None) -> Path | None:
    """The user's default model when it is a folder, given by its absolute path, that writes ``name`` into
    its files, so that files made with one's own default model decode without ``--model``. The user chose
    that folder; the file only names it. A relative default (``$FLOWDEC_MODEL=my-model``) is not looked up
    here: it would be a folder in whatever working folder the file is decoded in. None otherwise."""
    chosen = chosen_default_model(cache_dir)
    if chosen is None:
        return None
    folder = Path(chosen[0]).expanduser()
    if not folder.is_absolute() or not is_model_folder(folder):
        return None
    try:
        card = read_model_card(folder)
    except ModelError:
        return None
    return folder if folder_model_name(folder, card) == name else None
