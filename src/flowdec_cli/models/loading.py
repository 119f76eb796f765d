"""Loading: a resolved model folder (or a released weight file) into inference-ready networks."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..bitrate import codes_kbps
from ..checkpoints import CheckpointError, load_dac_weights, load_model_folder, require_weights_for, weights_hash
from ..envelope import DEFAULT_LAYOUT, EnvelopeError, EnvelopeLayout, envelope_layout
from ..ndac import NDAC, NDACConfig
from ..rateplan import RatePoint, rate_plan
from .catalogue import CacheDir
from .folder import ModelError, default_nfe_for, folder_model_name, folder_type, read_model_card, wants_postfilter
from .resolve import check_model_name, pretrained_ref, resolve

if TYPE_CHECKING:
    from ..postfilter import Postfilter

__all__ = ["Model", "load_model", "load_ndac", "load_postfilter", "ndac_from_folder", "ndac_from_official",
           "ndac_state_hash"]

Device = torch.device | str | None


@dataclass
class Model:
    """A loaded codec (and postfilter), ready for inference."""

    name: str
    ndac: NDAC
    postfilter: Postfilter | None = None
    licence: str = "unknown"
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    ndac_hash: str = ""

    @property
    def has_postfilter(self) -> bool:
        """Whether the model has one, loaded or not (a codec alone has none)."""
        return self.postfilter is not None or (Path(self.source) / "postfilter").is_dir()

    @property
    def default_nfe(self) -> int:
        """Postfilter passes to use when the user names none: the model card's ``default_nfe``, else 6 as
        in the paper; 0 without a postfilter."""
        return default_nfe_for(self.info, self.has_postfilter)

    def side_channel_layout(self, wanted: bool | None = None) -> EnvelopeLayout | None:
        """The side-channel layout this model's files carry: the card's ``envelope`` (a layout name) unless
        ``wanted`` says otherwise (True without one on the card: the default layout); None for none. A layout
        must be defined at the codec's rate."""
        card = self.info.get("envelope") or ""
        name = "" if wanted is False else (card or (DEFAULT_LAYOUT if wanted else ""))
        if not name:
            return None
        try:
            return envelope_layout(str(name), self.ndac.sample_rate)
        except EnvelopeError as exc:
            raise ModelError(f"model '{self.name}': {exc}") from None

    def planned_rates(self, layout: EnvelopeLayout | None) -> list[RatePoint] | None:
        """The card's ``rate_plan`` when files carry a side channel (``layout``); None otherwise (without
        the side channel the codes keep their own rates)."""
        raw = self.info.get("rate_plan")
        if layout is None or raw is None:
            return None
        ndac = self.ndac
        codes = codes_kbps(ndac.sample_rate, ndac.hop_length, ndac.n_codebooks, ndac.codebook_size)
        try:
            return rate_plan(raw, codes, ndac.sample_rate)
        except EnvelopeError as exc:
            raise ModelError(f"model '{self.name}': its card's {exc}") from None

    def to(self, device: torch.device | str) -> Model:
        self.ndac.to(device)
        if self.postfilter is not None:
            self.postfilter.to(device)
        return self


def _build_ndac(config: dict[str, Any], state: dict[str, torch.Tensor], source: Path) -> NDAC:
    try:
        settings = NDACConfig.from_kwargs(config)
        require_weights_for(settings.parameter_count(), state, str(source))
        model = NDAC(settings)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{source}: {exc}") from None
    try:
        model.load_official_state_dict(state, source=str(source))
    except ValueError as exc:  # its message names the source already
        raise ModelError(str(exc)) from None
    return model


def ndac_from_folder(folder: Path) -> NDAC:
    """An NDAC (not yet folded) from a component folder."""
    config, state = load_model_folder(folder)
    if config.get("type") != "ndac":
        raise ModelError(f"{folder}: config type is {config.get('type')!r}, expected 'ndac'")
    return _build_ndac(config, state, folder)


def ndac_from_official(path: Path) -> NDAC:
    """An NDAC (not yet folded) from a released ``weights.pth``."""
    state, kwargs = load_dac_weights(path)
    return _build_ndac(kwargs, state, path)


def _ndac_at(path: Path, device: Device) -> NDAC:
    try:
        if path.is_file():
            model = ndac_from_official(path)
        elif (path / "ndac").is_dir():
            model = ndac_from_folder(path / "ndac")
        elif folder_type(path) == "ndac":
            model = ndac_from_folder(path)
        else:
            raise ModelError(f"{path}: holds no NDAC (expected weights.pth, ndac/ or a config.json of type 'ndac')")
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    model.weights_hash = weights_hash(model.state_dict())  # before folding: the file's weights
    model.eval().fold_weight_norm()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device) if device is not None else model


def _postfilter_at(path: Path, device: Device, ema: bool = True) -> Postfilter:
    from ..postfilter import Postfilter

    try:
        if path.is_file():
            pf = Postfilter.from_lightning_checkpoint(path, ema=ema)
        elif (path / "postfilter").is_dir():
            pf = Postfilter.from_folder(path / "postfilter")
        elif folder_type(path) == "flowdec_postfilter":
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


def load_ndac(ref: str | os.PathLike[str], device: Device = None, cache_dir: CacheDir = None) -> NDAC:
    """An inference-ready NDAC from a released ``weights.pth``, a component or model folder, a name, or a hub
    repo (``OWNER/REPO`` or ``hf://OWNER/REPO[@REV]``)."""
    return _ndac_at(resolve(pretrained_ref(ref), cache_dir), device)


def load_postfilter(ref: str | os.PathLike[str], device: Device = None, ema: bool = True,
                    cache_dir: CacheDir = None) -> Postfilter:
    """An inference-ready postfilter from a released Lightning ``.ckpt`` (EMA weights unless ``ema=False``),
    a component or model folder, a name, or a hub repo (``OWNER/REPO`` or ``hf://OWNER/REPO[@REV]``): the
    postfilter's ``from_pretrained``."""
    return _postfilter_at(resolve(pretrained_ref(ref), cache_dir), device, ema)


def load_model(ref: str | os.PathLike[str], device: Device = None, with_postfilter: bool | None = True,
               cache_dir: CacheDir = None, nfe: int | None = None) -> Model:
    """A codec and, when the model has one and it is wanted, its postfilter. The reference is resolved once.

    ``with_postfilter``: True loads the postfilter whenever the model has one; None loads it only when a
    run of ``nfe`` passes (None: the model's default) needs it (:func:`~.folder.wants_postfilter`), so a
    model whose default is the codec alone does not pay for loading it; False never.
    """
    path = resolve(ref, cache_dir)
    card = read_model_card(path) if path.is_dir() else {}
    if str(ref).startswith("hf://"):
        name = str(ref)  # so .fdc files made with a hub model point back to the hub
    else:
        name = folder_model_name(path, card) if Path(str(ref)).exists() else str(card.get("name") or ref)
        if card.get("name"):
            try:
                check_model_name(name)  # it would go into every file coded, which then could not be decoded
            except ModelError as exc:
                raise ModelError(f"{path / 'flowdec.json'}: {exc}") from None
    has_pf = path.is_dir() and (path / "postfilter").is_dir()
    if with_postfilter is None:
        wanted = wants_postfilter(nfe, card, has_pf)
    else:
        wanted = has_pf and with_postfilter
    with torch.random.fork_rng(devices=[]):  # building the modules draws initial weights: not from the caller's
        ndac = _ndac_at(path, device)
        pf = _postfilter_at(path, device) if wanted else None
    return Model(name=name, ndac=ndac, postfilter=pf, licence=str(card.get("licence", "unknown")),
                 source=str(path), info=card, ndac_hash=ndac_state_hash(ndac))


def ndac_state_hash(model: NDAC) -> str:
    """Hash of an NDAC's weights that is the same folded or not (the folded weight is derived)."""
    if model.weights_hash:
        return model.weights_hash
    if model.folded:
        raise ModelError("the weights hash of a folded NDAC is unknown; load it with load_ndac")
    model.weights_hash = weights_hash(model.state_dict())
    return model.weights_hash
