"""Loading models by reference: a released file, one of our model folders, or a registry/hub name.

A *model* is an NDAC codec, optionally paired with a postfilter. On disk, our format is a folder:

    MODEL/flowdec.json                  name, licence, description (the registry's record)
    MODEL/ndac/config.json              {"type": "ndac", ...DAC constructor settings}
    MODEL/ndac/model.safetensors
    MODEL/postfilter/config.json        {"type": "flowdec_postfilter", ...}   (absent for a codec alone)
    MODEL/postfilter/model.safetensors
    MODEL/README.md                     model card (hub repos)

A component folder (``config.json`` + ``model.safetensors``) also loads on its own.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .checkpoints import CheckpointError, load_dac_weights, load_model_folder, save_model_folder, weights_hash
from .ndac import NDAC, NDACConfig

if TYPE_CHECKING:
    from .postfilter import Postfilter

__all__ = ["ModelError", "Model", "default_nfe_for", "load_model", "load_ndac", "load_postfilter", "save_ndac",
           "ndac_from_folder", "pretrained_ref"]

MODEL_CARD_NAME = "flowdec.json"
DEFAULT_NFE = 6  # the paper's setting: midpoint, 3 steps


def default_nfe_for(card: dict[str, Any], has_postfilter: bool) -> int:
    """The NFE a model runs at when none is asked for: its card's ``default_nfe``, else :data:`DEFAULT_NFE`;
    0 for a codec without a postfilter (the registry's listing and :class:`Model` both use this)."""
    if not has_postfilter:
        return 0
    try:
        return max(0, int(card.get("default_nfe", DEFAULT_NFE)))
    except (TypeError, ValueError):
        return DEFAULT_NFE


class ModelError(Exception):
    """A model that cannot be found or loaded; the message says which and why."""


@dataclass
class Model:
    """A loaded codec (and postfilter), ready for inference."""

    name: str
    ndac: NDAC
    postfilter: "Postfilter | None" = None
    licence: str = "unknown"
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    ndac_hash: str = ""

    @property
    def default_nfe(self) -> int:
        """Postfilter passes to use when the user names none: the model card's ``default_nfe`` (the
        built-in small model's postfilter does not yet help it: 0), else 6 as in the paper; 0 without a
        postfilter."""
        has_postfilter = self.postfilter is not None or (Path(self.source) / "postfilter").is_dir()
        return default_nfe_for(self.info, has_postfilter)

    def to(self, device: torch.device | str) -> "Model":
        self.ndac.to(device)
        if self.postfilter is not None:
            self.postfilter.to(device)
        return self


# --------------------------------------------------------------------------------------------------
# Components


def ndac_from_folder(folder: Path) -> NDAC:
    config, state = load_model_folder(folder)
    if config.get("type") != "ndac":
        raise ModelError(f"{folder}: config type is {config.get('type')!r}, expected 'ndac'")
    try:
        model = NDAC(NDACConfig.from_kwargs(config))
        model.load_official_state_dict(state, source=str(folder))
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{folder}: {exc}") from None
    return model


def save_ndac(model: NDAC, folder: str | os.PathLike) -> Path:
    """Write an (unfolded) NDAC as a component folder; the keys stay those of the released weights."""
    if model._folded:
        raise ModelError("cannot save an NDAC whose weight norm was folded; save before folding")
    return save_model_folder(folder, {"type": "ndac", **model.config.to_dict()}, model.state_dict())


def _ndac_from_official(path: Path) -> NDAC:
    state, kwargs = load_dac_weights(path)
    try:
        model = NDAC(NDACConfig.from_kwargs(kwargs))
        model.load_official_state_dict(state, source=str(path))
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{path}: {exc}") from None
    return model


def _prepare_ndac(model: NDAC, device: torch.device | str | None) -> NDAC:
    model.eval().fold_weight_norm()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device) if device is not None else model


def _folder_type(folder: Path) -> str | None:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text()).get("type")
    except (OSError, ValueError, AttributeError):
        return None


_HUB_ID = __import__("re").compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[^\s/]+)?$")


def pretrained_ref(ref: str | os.PathLike) -> str | os.PathLike:
    """Hugging Face habits for the Python API: ``OWNER/REPO[@REV]`` that is not an existing path means the
    hub repo (``hf://OWNER/REPO[@REV]``); names, paths and ``hf://`` references pass unchanged."""
    if isinstance(ref, str) and _HUB_ID.match(ref) and not Path(ref).expanduser().exists():
        return "hf://" + ref
    return ref


def _resolve(ref: str | os.PathLike) -> Path:
    """A local path for ``ref``: an existing path as is, else a registry or hub name."""
    path = Path(ref).expanduser()
    if path.exists():
        return path
    from . import registry

    return registry.resolve(str(ref))


def load_ndac(ref: str | os.PathLike, device: torch.device | str | None = None) -> NDAC:
    """An inference-ready NDAC from a released ``weights.pth``, a component or model folder, a name, or a hub
    repo (``OWNER/REPO`` or ``hf://OWNER/REPO[@REV]``)."""
    path = _resolve(pretrained_ref(ref))
    try:
        if path.is_file():
            model = _ndac_from_official(path)
        elif (path / "ndac").is_dir():
            model = ndac_from_folder(path / "ndac")
        elif _folder_type(path) == "ndac":
            model = ndac_from_folder(path)
        else:
            raise ModelError(f"{path}: holds no NDAC (expected weights.pth, ndac/ or a config.json of type 'ndac')")
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    model._flowdec_hash = weights_hash(model.state_dict())  # type: ignore[attr-defined]  # before folding
    return _prepare_ndac(model, device)


def load_postfilter(ref: str | os.PathLike, device: torch.device | str | None = None,
                    ema: bool = True) -> "Postfilter":
    """An inference-ready postfilter from a released Lightning ``.ckpt`` (EMA weights unless ``ema=False``),
    a component or model folder, a name, or a hub repo (``OWNER/REPO`` or ``hf://OWNER/REPO[@REV]``): the
    postfilter's ``from_pretrained``."""
    from .postfilter import Postfilter

    path = _resolve(pretrained_ref(ref))
    try:
        if path.is_file():
            pf = Postfilter.from_lightning_checkpoint(path, ema=ema)
        elif (path / "postfilter").is_dir():
            pf = Postfilter.from_folder(path / "postfilter")
        elif _folder_type(path) == "flowdec_postfilter":
            pf = Postfilter.from_folder(path)
        elif (path / "ndac").is_dir():
            raise ModelError(f"{path}: this model is a codec alone; it has no postfilter")
        else:
            raise ModelError(f"{path}: holds no postfilter (expected a .ckpt, postfilter/ or a config.json "
                             "of type 'flowdec_postfilter')")
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    except ValueError as exc:
        raise ModelError(f"{path}: {exc}") from None
    pf.eval()
    for p in pf.parameters():
        p.requires_grad_(False)
    return pf.to(device) if device is not None else pf


def read_model_card(folder: Path) -> dict[str, Any]:
    card = folder / MODEL_CARD_NAME
    if not card.is_file():
        return {}
    try:
        data = json.loads(card.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{card}: unreadable ({exc})") from None
    return data if isinstance(data, dict) else {}


def load_model(ref: str | os.PathLike, device: torch.device | str | None = None,
               with_postfilter: bool = True) -> Model:
    """A codec and, when the model has one and it is wanted, its postfilter."""
    path = _resolve(ref)
    card = read_model_card(path) if path.is_dir() else {}
    ndac = load_ndac(path, device)
    pf = None
    if with_postfilter and path.is_dir() and (path / "postfilter").is_dir():
        pf = load_postfilter(path, device)
    if str(ref).startswith("hf://"):
        name = str(ref)  # so .fdc files made with a hub model point back to the hub
    else:
        name = str(card.get("name") or (ref if not Path(str(ref)).exists() else path.name))
    return Model(name=name, ndac=ndac, postfilter=pf, licence=str(card.get("licence", "unknown")),
                 source=str(path), info=card, ndac_hash=ndac_state_hash(ndac))


def ndac_state_hash(model: NDAC) -> str:
    """Hash of an NDAC's weights that is the same folded or not (the folded weight is derived)."""
    cached = getattr(model, "_flowdec_hash", None)
    if cached:
        return cached
    if model._folded:
        raise ModelError("the weights hash of a folded NDAC is unknown; load it with load_ndac")
    h = weights_hash(model.state_dict())
    model._flowdec_hash = h  # type: ignore[attr-defined]
    return h
