"""Grow a trained NDAC or frame-wise postfilter without starting over: function-preserving widening (Net2Net).

The built-in codec was trained narrow (encoder 8 channels at 48 kHz, decoder 96 at 75 Hz; DAC's: 64 and
1536). Retraining a wider codec from scratch costs the hours already spent; widening copies each channel
``factor`` times and divides the weights that read the copies by ``factor``, so the wider network computes
the same function and training continues from the narrow one's quality with more room. A little noise on
the copies breaks their symmetry (identical copies would receive identical gradients forever). The encoder
and the decoder widen independently: the latent between them keeps its size, so the quantizer and its codes
are untouched.

The frame-wise postfilter's residual stream (``framewise.dim`` channels, from which its head draws three
values for each of 768 frequency bins) widens the same way; there the layers that read the copies split
each weight unevenly between them, which breaks the symmetry and keeps the function exact.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..fileio import OutputExistsError
from ..framewise import FramewiseBackbone
from ..ndac import NDAC, NDACConfig, Snake1d, WNConvTranspose1d, _WeightNormConv
from ..numeric import is_integer
from ..postfilter import Postfilter
from .common import TrainingError

__all__ = ["widen_ndac", "widen_ndac_folder", "widen_postfilter", "widen_postfilter_folder"]


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


def _copy_widened(old: nn.Module, new: nn.Module, noise: float, generator: torch.Generator) -> None:
    """Fill ``new`` (a wider twin of ``old``, module for module) with ``old``'s tiled weights."""
    for old_mod, new_mod in zip(old.modules(), new.modules(), strict=True):
        if isinstance(old_mod, _WeightNormConv) and isinstance(new_mod, _WeightNormConv):
            weight = old_mod.effective_weight()
            read_dim = 0 if isinstance(old_mod, WNConvTranspose1d) else 1
            widened = _tile(weight, new_mod.weight_v.shape, read_dim)
            if noise and widened.shape != weight.shape:
                scale = noise * float(weight.pow(2).mean().sqrt())  # RMS: defined for 1-element weights too
                widened = widened + scale * torch.randn(widened.shape, generator=generator)
            new_mod.weight_v.copy_(widened)
            new_mod.weight_g.copy_(torch.linalg.vector_norm(widened, dim=(1, 2), keepdim=True))
            if old_mod.bias is not None and new_mod.bias is not None:
                new_mod.bias.copy_(_tile(old_mod.bias, new_mod.bias.shape, None))
        elif isinstance(old_mod, Snake1d) and isinstance(new_mod, Snake1d):
            new_mod.alpha.copy_(_tile(old_mod.alpha, new_mod.alpha.shape, None))


def _check_factor(name: str, factor: object) -> int:
    if not is_integer(factor) or factor < 1:
        raise TrainingError(f"the {name} widening factor must be a whole number >= 1, got {factor!r}")
    return int(factor)


def _check_out(src: Path, out: Path, what: str, overwrite: bool) -> None:
    """Refuse an OUT that is (or holds) the model being widened, or that exists without ``overwrite``:
    before the work, not after it."""
    if out.exists() and src.exists() and (out.resolve() == src.resolve() or out.resolve() in src.resolve().parents):
        raise TrainingError(f"{out}: is the {what} being widened (or holds it); choose another OUT")
    if out.exists() and not overwrite:
        raise OutputExistsError(out, before=True)  # the command line names its own flag


@torch.no_grad()
def widen_ndac(model: NDAC, *, encoder_factor: int = 1, decoder_factor: int = 1, noise: float = 1e-3,
               seed: int = 0) -> NDAC:
    """A new NDAC whose encoder is ``encoder_factor`` and whose decoder is ``decoder_factor`` times wider
    (``encoder_dim``, ``decoder_dim`` multiplied) and which, with ``noise`` 0, computes what ``model``
    computes: the same latent, codes and waveform. ``noise`` is the standard deviation of the perturbation
    added to each widened weight, relative to that weight's root mean square."""
    if model.folded:
        raise TrainingError("cannot widen an NDAC whose weight norm was folded")
    encoder_factor = _check_factor("encoder", encoder_factor)
    decoder_factor = _check_factor("decoder", decoder_factor)
    if encoder_factor == decoder_factor == 1:
        raise TrainingError("nothing to widen: both widening factors are 1")
    if decoder_factor != 1 and model.config.decoder_kind != "dac":
        raise TrainingError(f"cannot widen a '{model.config.decoder_kind}' decoder (only DAC's); set its "
                            "phase_dim and train it from new weights instead")
    if not 0 <= noise <= 1:  # NaN fails this too: it would write NaN weights that decode to noise, silently
        raise TrainingError(f"noise {noise} is not in [0, 1] (relative to each weight's RMS)")
    settings = model.config.to_dict()
    settings["encoder_dim"] = int(settings["encoder_dim"]) * encoder_factor
    settings["decoder_dim"] = int(settings["decoder_dim"]) * decoder_factor
    try:
        wide = NDAC(NDACConfig.from_kwargs(settings))
    except ValueError as exc:  # the config's own bounds (e.g. a factor that asks for 70 billion weights)
        raise TrainingError(f"cannot widen by {encoder_factor} (encoder) and {decoder_factor} (decoder): "
                            f"{exc}") from None
    wide.quantizer.load_state_dict(model.quantizer.state_dict())
    generator = torch.Generator().manual_seed(seed)
    for old, new, factor in ((model.encoder, wide.encoder, encoder_factor),
                             (model.decoder, wide.decoder, decoder_factor)):
        if factor == 1:
            new.load_state_dict(old.state_dict())
        else:
            _copy_widened(old, new, noise, generator)
    return wide


def widen_ndac_folder(source: str | os.PathLike, out_dir: str | os.PathLike, *, encoder_factor: int = 1,
                      decoder_factor: int = 1, noise: float = 1e-3, seed: int = 0, overwrite: bool = False) -> Path:
    """Widen the NDAC of ``source`` (a run, checkpoint, model or component folder) and publish it as a codec
    model folder at ``out_dir``, ready for ``train.init_from`` with ``model.encoder_dim`` and
    ``model.decoder_dim`` set to the new widths (written in the folder's card)."""
    from ..checkpoints import CheckpointError
    from ..models import ModelError
    from ..models.folder import ModelFolderBuilder
    from ..models.loading import ndac_from_folder
    from .export import ndac_component

    _check_out(Path(source).expanduser(), Path(out_dir).expanduser(), "codec", overwrite)
    folder = ndac_component(source)
    try:
        model = ndac_from_folder(folder)
    except (ModelError, CheckpointError) as exc:
        raise TrainingError(str(exc)) from None
    wide = widen_ndac(model, encoder_factor=encoder_factor, decoder_factor=decoder_factor, noise=noise, seed=seed)
    with ModelFolderBuilder(out_dir, "widen") as builder:
        builder.add_ndac(wide)
        builder.write_card({"name": Path(out_dir).name, "licence": "unknown",
                            "description": f"NDAC of {folder} widened to encoder_dim {wide.config.encoder_dim}, "
                                           f"decoder_dim {wide.config.decoder_dim}; not trained further yet"})
        return builder.publish(overwrite=overwrite)


def _split_reads(old: torch.Tensor, factor: int, spread: float, generator: torch.Generator) -> torch.Tensor:
    """``old`` [out, in] tiled ``factor`` times along its input dimension, each weight split between its
    copies in random shares that sum to one.

    The copies of a channel carry equal values, so any split computes what ``old`` did; unequal shares
    send them unequal gradients, which breaks their symmetry without the noise that would change the
    function.
    """
    shares = torch.empty((factor, *old.shape)).uniform_(1 - spread, 1 + spread, generator=generator)
    shares = shares / shares.sum(0, keepdim=True)
    return torch.cat([old * shares[i] for i in range(factor)], dim=1)


@torch.no_grad()
def widen_postfilter(postfilter: Postfilter, *, dim_factor: int, spread: float = 0.25, seed: int = 0) -> Postfilter:
    """A new frame-wise postfilter whose residual stream is ``dim_factor`` times wider (``framewise.dim``)
    and which computes what ``postfilter`` computes, to float rounding.

    Every channel is copied ``dim_factor`` times. The LayerNorms carry no learned scale inside the blocks
    and a per-channel one at the end, so equal copies keep every normalisation's statistics; the layers
    that read the stream (the blocks' first pointwise layer and the head) split each weight between the
    copies (``spread``: how unequal the shares may be, 0 = equal). The MLP's hidden width is unchanged.
    """
    if not isinstance(postfilter.backbone, FramewiseBackbone):
        raise TrainingError("only a frame-wise postfilter can be widened (the released U-Net stays as it is)")
    factor = _check_factor("dim", dim_factor)
    if factor == 1:
        raise TrainingError("nothing to widen: the widening factor is 1")
    if not 0 <= spread < 1:  # NaN fails this too
        raise TrainingError(f"spread {spread} is not in [0, 1)")
    config = postfilter.config
    config["framewise"] = {**config["framewise"], "dim": int(config["framewise"]["dim"]) * factor}
    try:
        wide = Postfilter.from_config(config)
    except ValueError as exc:  # the config's own bounds
        raise TrainingError(f"cannot widen by {factor}: {exc}") from None
    generator = torch.Generator().manual_seed(seed)
    old_state = postfilter.state_dict()
    state = {}
    for key, target in wide.state_dict().items():
        old = old_state[key]
        if old.shape == target.shape:
            state[key] = old.clone()
        elif key.endswith(("pwconv1.weight", "head.weight")):
            state[key] = _split_reads(old, factor, spread, generator)
        elif key.endswith(("modulation.weight", "modulation.bias")):  # [scale; shift]: each half tiled
            state[key] = torch.cat([half.repeat(factor, *([1] * (old.dim() - 1))) for half in old.chunk(2)])
        else:  # written channels: embed, depthwise kernels, second pointwise layer, gamma, final norm
            state[key] = old.repeat(factor, *([1] * (old.dim() - 1)))
    wide.load_official_state_dict(state, "widened postfilter")
    return wide


def widen_postfilter_folder(source: str | os.PathLike, out_dir: str | os.PathLike, *, dim_factor: int,
                            spread: float = 0.25, seed: int = 0, overwrite: bool = False) -> Path:
    """Widen the frame-wise postfilter of ``source`` (a run, checkpoint, model or component folder; a run's
    EMA weights) and publish it as a postfilter model folder at ``out_dir``, ready for ``train.init_from``
    with ``model.dim`` set to the new width (written in its config)."""
    from ..checkpoints import CheckpointError
    from ..models import ModelError
    from ..models.folder import ModelFolderBuilder
    from ..models.loading import load_postfilter
    from .export import postfilter_component

    _check_out(Path(source).expanduser(), Path(out_dir).expanduser(), "postfilter", overwrite)
    folder = postfilter_component(source)
    try:
        postfilter = load_postfilter(folder)
    except (ModelError, CheckpointError) as exc:
        raise TrainingError(str(exc)) from None
    if not isinstance(postfilter.backbone, FramewiseBackbone):  # said here with the folder it came from
        raise TrainingError(f"{folder}: holds the released U-Net postfilter; only a frame-wise one can be widened")
    wide = widen_postfilter(postfilter, dim_factor=dim_factor, spread=spread, seed=seed)
    with ModelFolderBuilder(out_dir, "widen") as builder:
        builder.add_postfilter(wide)
        return builder.publish(overwrite=overwrite)
