"""The model folder: its layout, its card, the default NFE, the bitrate table, and the one writer.

A *model* is an NDAC codec, optionally paired with a postfilter. On disk it is a folder:

    MODEL/flowdec.json                  the card: name, licence, description, rates, weights hashes
    MODEL/ndac/config.json              {"type": "ndac", ...DAC constructor settings}
    MODEL/ndac/model.safetensors
    MODEL/postfilter/config.json        {"type": "flowdec_postfilter", ...}   (absent for a codec alone)
    MODEL/postfilter/model.safetensors
    MODEL/entropy.safetensors           entropy tables (optional)
    MODEL/README.md                     model card (hub repos)

A component folder (``config.json`` + ``model.safetensors``) also loads on its own. Every model folder this
package writes is staged by :class:`ModelFolderBuilder` and published whole, so a crash never leaves half a
model where a model is looked for.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..bitrate import bitrate_table
from ..entropy import TABLES_FILE
from ..exceptions import FlowdecError
from ..fileio import (
    OutputExistsError,
    atomic_write_bytes,
    parse_json,
    publish,
    publish_folder,
    remove_path,
    temporary_folder,
    why_not_a_regular_file,
)
from ..numeric import is_integer, is_real

if TYPE_CHECKING:
    from ..ndac import NDAC
    from ..postfilter import Postfilter

__all__ = ["MODEL_CARD_NAME", "DEFAULT_NFE", "ModelError", "ModelFolderBuilder", "default_nfe_for",
           "wants_postfilter", "save_ndac", "read_model_card", "read_json", "is_model_folder", "folder_type",
           "card_rates"]

MODEL_CARD_NAME = "flowdec.json"
DEFAULT_NFE = 6  # the paper's setting: midpoint, 3 steps
MAX_DEFAULT_NFE = 64  # what a model card may ask for (the midpoint solver takes even numbers)
COMPONENTS = ("ndac", "postfilter")
ENTROPY_TABLES_NAME = TABLES_FILE  # the entropy coder names its file; the folder layout lists it


class ModelError(FlowdecError):
    """A model that cannot be found or loaded; the message says which and why."""


class UnknownModelError(ModelError):
    """A name that is no model flowdec knows (not a path: a missing path is a missing file, as for any input).
    Given on the command line it is a usage error (exit 2), like any other value the command cannot take."""


def default_nfe_for(card: dict[str, Any], has_postfilter: bool) -> int:
    """The NFE a model runs at when none is asked for: its card's ``default_nfe``, else :data:`DEFAULT_NFE`;
    0 for a codec without a postfilter (the catalogue's listing and :class:`~.loading.Model` both use this)."""
    if not has_postfilter:
        return 0
    try:
        return max(0, int(card.get("default_nfe", DEFAULT_NFE)))
    except (TypeError, ValueError):
        return DEFAULT_NFE


def wants_postfilter(nfe: int | None, card: dict[str, Any], has_postfilter: bool) -> bool:
    """Whether a run asking for ``nfe`` passes (None: the model's default) needs the postfilter loaded."""
    if not has_postfilter:
        return False
    return (default_nfe_for(card, has_postfilter) if nfe is None else nfe) > 0


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file, or {} when it is missing, unreadable or not an object (lenient: listings)."""
    try:
        data = parse_json(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _shown(value: Any) -> str:
    """A card's value in a message, cut to 60 characters (10**4000 made a 4,099-character error line)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_model_card(folder: str | os.PathLike) -> dict[str, Any]:
    """A model folder's card ({} when it has none); :class:`ModelError` when it is there but unreadable."""
    card = Path(folder) / MODEL_CARD_NAME
    if not card.exists() and not card.is_symlink():
        return {}
    # a link to /dev/zero was taken for no card, and the model ran without its settings
    if (problem := why_not_a_regular_file(card)) is not None:
        raise ModelError(f"{card}: {problem}")
    try:
        data = parse_json(card.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{card}: unreadable ({exc})") from None
    if not isinstance(data, dict):  # a model run without its card would behave as another model
        raise ModelError(f"{card}: not a model card (a JSON object), but a JSON {type(data).__name__}")
    nfe = data.get("default_nfe")
    if nfe is not None and (not is_integer(nfe) or not 0 <= nfe <= MAX_DEFAULT_NFE
                            or nfe % 2):
        # a forged card must not make every run take hours (or quietly run the codec alone)
        raise ModelError(f"{card}: default_nfe {_shown(nfe)} is not an even number of passes from 0 to "
                         f"{MAX_DEFAULT_NFE}")
    if (problem := _card_value_problem(data)) is not None:
        raise ModelError(f"{card}: {problem}")
    return data


_CARD_WHOLE_NUMBERS = ("sample_rate", "hop_length", "n_codebooks", "codebook_size")
_CARD_RATE_LISTS = ("bitrates_kbps", "trained_bitrates_kbps")
_CARD_TEXTS = ("name", "licence", "description", "envelope")
_MAX_CARD_NUMBER = 1 << 31


def _card_value_problem(data: dict[str, Any]) -> str | None:
    """The first value of a card that listings, exports and loads would each trip over in their own way
    (a string where a rate belongs, 1e308 kbit/s); None when every value they read has its type and range.
    The rate plan's entries are checked where they are used, against the codec (``rateplan.rate_plan``)."""
    for key in _CARD_WHOLE_NUMBERS:
        value = data.get(key)
        if value is not None and not (is_integer(value) and 0 < value <= _MAX_CARD_NUMBER):
            return f"{key} {_shown(value)} is not a whole number from 1 to {_MAX_CARD_NUMBER}"
    value = data.get("frame_rate")
    if value is not None and not (is_real(value) and 0 < value <= _MAX_CARD_NUMBER):
        return f"frame_rate {_shown(value)} is not a positive number of frames per second"
    for key in _CARD_RATE_LISTS:
        value = data.get(key)
        if value is not None and not (isinstance(value, list)
                                      and all(is_real(r) and 0 < r <= _MAX_CARD_NUMBER for r in value)):
            return f"{key} {_shown(value)} is not a list of positive bitrates in kbit/s"
    for key in _CARD_TEXTS:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            return f"{key} {_shown(value)} is not text"
    value = data.get("rate_plan")
    if value is not None and not isinstance(value, list):
        return f"rate_plan {_shown(value)} is not a list of entries"
    return None


def folder_model_name(folder: Path, card: dict[str, Any]) -> str:
    """The name a model given by its folder writes into every .fdc it codes: its card's name, else the
    folder's own name."""
    return str(card.get("name") or folder.name)


def is_model_folder(folder: Path) -> bool:
    return folder.is_dir() and (folder / MODEL_CARD_NAME).is_file() and (folder / "ndac").is_dir()


def folder_type(folder: Path) -> str | None:
    """The ``type`` of a component folder's config.json (``ndac``, ``flowdec_postfilter``), else None."""
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    try:
        kind = parse_json(cfg.read_text()).get("type")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def card_rates(card: dict[str, Any], ndac_config: dict[str, Any]) -> dict[str, Any]:
    """Sample rate, hop, frame rate, codebooks and the bitrate table of a model, from its card where it says
    them and from its codec's config.json otherwise (missing values: 0, codebook size 1024)."""
    sr = int(card.get("sample_rate") or ndac_config.get("sample_rate") or 48000)
    hop = card.get("hop_length")
    if not hop and isinstance(ndac_config.get("encoder_rates"), list):
        with contextlib.suppress(TypeError, ValueError):
            hop = math.prod(int(r) for r in ndac_config["encoder_rates"])
    hop = int(hop or 0)
    n_cb = int(card.get("n_codebooks") or ndac_config.get("n_codebooks") or 0)
    cb_size = int(card.get("codebook_size") or ndac_config.get("codebook_size") or 1024)
    frame_rate = float(card.get("frame_rate") or (sr / hop if hop else 0.0))
    rates = card.get("bitrates_kbps")
    if not isinstance(rates, list):
        rates = bitrate_table(sr, hop, n_cb, cb_size) if hop and n_cb else []
    return {"sample_rate": sr, "hop_length": hop, "frame_rate": frame_rate, "n_codebooks": n_cb,
            "codebook_size": cb_size, "bitrates_kbps": [float(r) for r in rates]}


def save_ndac(model: NDAC, folder: str | os.PathLike[str]) -> Path:
    """Write an (unfolded) NDAC as a component folder; the keys stay those of the released weights."""
    from ..checkpoints import save_model_folder

    if model.folded:
        raise ModelError("cannot save an NDAC whose weight norm was folded; save before folding")
    return save_model_folder(folder, {"type": "ndac", **model.config.to_dict()}, model.state_dict())


class ModelFolderBuilder:
    """Builds a model folder in a temporary sibling of its destination, then publishes it whole: the only
    code that writes model folders (the release conversion, ``flowdec models export`` and ``flowdec train
    export`` all go through it).

    ``with ModelFolderBuilder(dest) as b: b.add_ndac(...); b.write_card(card); b.publish()``; leaving the
    block without :meth:`publish` removes the staged files.
    """

    #: what a published model owns in its folder; :meth:`publish_into` replaces these and keeps the rest (.git)
    OWNED = (MODEL_CARD_NAME, "README.md", *COMPONENTS, "config.json", "model.safetensors", ENTROPY_TABLES_NAME)

    def __init__(self, dest: str | os.PathLike, label: str = "model", staging: str | os.PathLike | None = None) -> None:
        self.dest = Path(dest).expanduser()
        parent = Path(staging) if staging is not None else self.dest.parent
        try:
            self.path = temporary_folder(parent, f"{self.dest.name}.{label}")
        except OSError as exc:  # name what the user asked for, not our staging folder
            raise ModelError(f"{self.dest}: cannot write a model folder there ({exc.strerror or exc})") from None

    def __enter__(self) -> ModelFolderBuilder:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.discard()
        # an error met while staging names the staging folder; the user knows the destination
        staged, dest = str(self.path), str(self.dest)
        if isinstance(exc, OSError) and isinstance(exc.filename, str):
            exc.filename = exc.filename.replace(staged, dest)
        elif isinstance(exc, FlowdecError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
            exc.args = (exc.args[0].replace(staged, dest),)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    # -- contents ------------------------------------------------------------------------------------
    def add_ndac(self, model: NDAC) -> Path:
        """Write an (unfolded) NDAC as the ``ndac/`` component."""
        return save_ndac(model, self.path / "ndac")

    def add_postfilter(self, postfilter: Postfilter, weights_dtype: str = "float32") -> Path:
        return postfilter.save(self.path / "postfilter", weights_dtype)

    def copy_component(self, src: Path, component: str) -> None:
        """Copy a component folder's config.json and weights (following the hub cache's links)."""
        from ..checkpoints import CONFIG_NAME, WEIGHTS_NAME

        dst = self.path / component
        dst.mkdir(parents=True, exist_ok=True)
        for fname in (CONFIG_NAME, WEIGHTS_NAME):
            if not (src / fname).is_file():
                raise ModelError(f"{src}: not a model folder (missing {fname})")
            shutil.copyfile(src / fname, dst / fname)

    def link_component(self, src: Path, component: str) -> None:
        """Share identical files by hard links where the file system allows it (the NDAC of two models)."""
        _link_or_copy_tree(src, self.path / component)

    def copy_file(self, src: Path, name: str) -> None:
        shutil.copyfile(src, self.path / name)

    def write_card(self, card: dict[str, Any], readme: str | None = None) -> None:
        """The card (and a README.md), fsynced like the weights beside them, so a published folder is whole."""
        atomic_write_bytes(self.path / MODEL_CARD_NAME, (json.dumps(card, indent=2) + "\n").encode("utf-8"),
                           make_parents=True)
        if readme is not None:
            atomic_write_bytes(self.path / "README.md", readme.encode("utf-8"), make_parents=True)

    # -- publishing ----------------------------------------------------------------------------------
    def publish(self, overwrite: bool = False) -> Path:
        """Move the staged folder to ``dest`` in one rename; an existing ``dest`` is replaced only with
        ``overwrite`` (else ``OutputExistsError``)."""
        publish_folder(self.path, self.dest, overwrite=overwrite)
        return self.dest

    def publish_into(self, overwrite: bool = False) -> Path:
        """Move the staged model into the folder ``dest``.

        An absent folder is made by renaming the staged one into place: of two runs exporting there at once,
        one is refused (``OutputExistsError``), or with ``overwrite`` the later one wins. A file or a broken
        link at ``dest`` is replaced by the folder only with ``overwrite``. A folder that is there (empty, or
        a link to a folder) stays, with its owner and mode: the model's parts are moved into it one by one,
        none replacing anything unless ``overwrite`` (a run that finds a part there takes back what it moved
        and is refused). With ``overwrite``, a folder holding nothing but a model is exchanged whole in one
        step, so a reader never meets a model half replaced; beside other files (a hub repo's .git) only what
        a model owns (:data:`OWNED`) is replaced, part by part."""
        dest = self.dest
        if not dest.is_dir():  # absent, a file, or a link to nothing: the staged folder goes there whole
            if (dest.exists() or dest.is_symlink()) and not overwrite:
                raise OutputExistsError(dest)
            publish_folder(self.path, dest, overwrite=overwrite)
            return dest
        present = list(dest.iterdir())
        if not overwrite:
            if present:
                raise OutputExistsError(dest)
            self._move_parts_into(dest)
        elif present and not dest.is_symlink() and all(p.name in self.OWNED for p in present):
            publish_folder(self.path, dest, overwrite=True)
            return dest
        else:
            self._replace_parts_in(dest)
        self.discard()
        return dest

    def _move_parts_into(self, dest: Path) -> None:
        """Each staged part into ``dest`` without replacing anything; on a clash, ours go and the run stops."""
        moved: list[Path] = []
        try:
            for item in sorted(self.path.iterdir()):
                target = dest / item.name
                if item.is_dir():
                    publish_folder(item, target)
                else:
                    publish(item, target, overwrite=False)
                moved.append(target)
        except OutputExistsError:
            for target in moved:
                remove_path(target, ignore_errors=True)
            raise OutputExistsError(dest) from None

    def _replace_parts_in(self, dest: Path) -> None:
        """Each staged part replaces its namesake in ``dest``, each in one step; owned parts the new model
        lacks (a postfilter) go; everything else stays."""
        staged = sorted(p.name for p in self.path.iterdir())
        for name in staged:
            new, old = self.path / name, dest / name
            if new.is_dir():
                publish_folder(new, old, overwrite=True)
                continue
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            os.replace(new, old)
        for name in set(self.OWNED) - set(staged):
            remove_path(dest / name)


def _link_or_copy_tree(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_dir():
            _link_or_copy_tree(p, dst / p.name)
            continue
        try:
            os.link(p, dst / p.name)
        except OSError:
            shutil.copy2(p, dst / p.name)
