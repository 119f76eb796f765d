"""Models: finding, loading, converting and writing them. One concept a module, imported in this order:

    folder      the model folder: layout, card, default NFE, bitrate table, the one writer
    catalogue   the names this installation knows, the cache, the default model
    resolve     a reference (path, hf://, name) -> a local folder, once per command
    loading     a folder -> inference-ready networks (:class:`Model`)
    cards       model cards (README.md) and export for the Hugging Face hub
    release     download and conversion of the released FlowDec models
    cli         ``flowdec models``

Nothing imports upwards. The names below load on first use, so ``flowdec --help`` stays free of torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from .folder import (
        DEFAULT_NFE,
        MODEL_CARD_NAME,
        ModelError,
        UnknownModelError,
        default_nfe_for,
        read_model_card,
        save_ndac,
    )
    from .loading import (
        Model,
        load_model,
        load_ndac,
        load_postfilter,
        ndac_from_folder,
        ndac_from_official,
        ndac_state_hash,
    )
    from .resolve import pretrained_ref

__all__ = ["DEFAULT_NFE", "MODEL_CARD_NAME", "Model", "ModelError", "default_nfe_for", "load_model", "load_ndac",
           "load_postfilter", "ndac_from_folder", "ndac_from_official", "ndac_state_hash", "pretrained_ref",
           "read_model_card", "save_ndac", "UnknownModelError"]

_LAZY = {"DEFAULT_NFE": "folder", "MODEL_CARD_NAME": "folder", "ModelError": "folder", "UnknownModelError": "folder",
         "default_nfe_for": "folder",
         "read_model_card": "folder", "save_ndac": "folder",
         "Model": "loading", "load_model": "loading", "load_ndac": "loading",
         "load_postfilter": "loading", "ndac_from_folder": "loading", "ndac_from_official": "loading",
         "ndac_state_hash": "loading", "pretrained_ref": "resolve"}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
