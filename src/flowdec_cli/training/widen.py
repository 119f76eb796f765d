"""Grow a trained NDAC's decoder without starting over: function-preserving widening (Net2Net).

The built-in codec's decoder is 96 channels wide at 75 Hz and 6 at 48 kHz (DAC's: 1536 and 96). Its codes
carry more than it renders: after training with the latent-residual loss the quantised latent keeps
approaching the encoder's as codebooks are added, while the decoded audio barely changes (docs/models.md,
"Codec"). Retraining a wider codec from scratch costs the hours already spent; widening copies each channel
``factor`` times and divides the weights that read the copies by ``factor``, so the wider decoder computes
the same waveform and training continues from the narrow one's quality with more room. A little noise on
the copies breaks their symmetry (identical copies would receive identical gradients forever).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..ndac import NDAC, NDACConfig, Snake1d, WNConvTranspose1d, _WeightNormConv
from .common import TrainingError

__all__ = ["widen_decoder", "widen_ndac_folder"]


def _tile(old: torch.Tensor, shape: torch.Size, read_dim: int | None) -> torch.Tensor:
    """``old`` tiled along every dimension where ``shape`` is an integer multiple of it; along ``read_dim``
    (the dimension that reads channels) the copies share the old value."""
    reps = []
    for n_old, n_new in zip(old.shape, shape, strict=True):
        if n_new % n_old:
            raise TrainingError(f"cannot widen {tuple(old.shape)} to {tuple(shape)}: not a whole multiple")
        reps.append(n_new // n_old)
    out = old.repeat(*reps)
    if read_dim is not None:
        out = out / reps[read_dim]
    return out


@torch.no_grad()
def widen_decoder(model: NDAC, factor: int, noise: float = 1e-3, seed: int = 0) -> NDAC:
    """A new NDAC whose decoder is ``factor`` times wider (``decoder_dim`` x factor) and, with ``noise`` 0,
    decodes exactly what ``model`` decodes. Encoder and quantizer are copied unchanged, so the codes are the
    same. ``noise`` is the standard deviation of the perturbation added to each widened weight, relative to
    that weight's root mean square."""
    if model.folded:
        raise TrainingError("cannot widen an NDAC whose weight norm was folded")
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise TrainingError(f"the widening factor must be a whole number >= 1, got {factor!r}")
    settings = model.config.to_dict()
    settings["decoder_dim"] = int(settings["decoder_dim"]) * factor
    wide = NDAC(NDACConfig.from_kwargs(settings))
    wide.encoder.load_state_dict(model.encoder.state_dict())
    wide.quantizer.load_state_dict(model.quantizer.state_dict())
    generator = torch.Generator().manual_seed(seed)
    pairs = zip(model.decoder.modules(), wide.decoder.modules(), strict=True)
    for old, new in pairs:
        if isinstance(old, _WeightNormConv) and isinstance(new, _WeightNormConv):
            weight = old.effective_weight()
            read_dim = 0 if isinstance(old, WNConvTranspose1d) else 1
            widened = _tile(weight, new.weight_v.shape, read_dim)
            if noise and widened.shape != weight.shape:
                scale = noise * float(weight.pow(2).mean().sqrt())  # RMS: defined for 1-element weights too
                widened = widened + scale * torch.randn(widened.shape, generator=generator)
            new.weight_v.copy_(widened)
            new.weight_g.copy_(torch.linalg.vector_norm(widened, dim=(1, 2), keepdim=True))
            if old.bias is not None and new.bias is not None:
                new.bias.copy_(_tile(old.bias, new.bias.shape, None))
        elif isinstance(old, Snake1d) and isinstance(new, Snake1d):
            new.alpha.copy_(_tile(old.alpha, new.alpha.shape, None))
    return wide


def widen_ndac_folder(source: str | os.PathLike, out_dir: str | os.PathLike, factor: int, noise: float = 1e-3,
                      seed: int = 0, overwrite: bool = False) -> Path:
    """Widen the NDAC of ``source`` (a run, checkpoint, model or component folder) and publish it as a codec
    model folder at ``out_dir``, ready for ``train.init_from`` with ``model.decoder_dim`` set to the new
    width (printed in the folder's card)."""
    from ..checkpoints import CheckpointError
    from ..models import ModelError
    from ..models.folder import ModelFolderBuilder
    from ..models.loading import ndac_from_folder
    from .export import ndac_component

    folder = ndac_component(source)
    try:
        model = ndac_from_folder(folder)
    except (ModelError, CheckpointError) as exc:
        raise TrainingError(str(exc)) from None
    wide = widen_decoder(model, factor, noise=noise, seed=seed)
    with ModelFolderBuilder(out_dir, "widen") as builder:
        builder.add_ndac(wide)
        builder.write_card({"name": Path(out_dir).name, "licence": "unknown",
                            "description": f"NDAC of {folder} with its decoder widened {factor}x "
                                           f"(decoder_dim {wide.config.decoder_dim}); not trained further yet"})
        return builder.publish(overwrite=overwrite)
