"""The FlowDec flow postfilter: loads the released checkpoints and reproduces the official outputs.

``Postfilter`` mirrors the official ``FlowModel`` state (``sigma_x``, ``sigma_y``, ``backbone.*``,
``feature_extractor.complex_stft.window``; 265 keys for the released size) so that the released EMA state
dicts load strictly. Inference:

    X0 = Phi(y) + sigma_y * eps          (eps complex Gaussian, sigma_y per frequency, float64)
                                          (ours: ``temperature`` * eps when a model sets it, see start)
    X1 = ODE solve of dX/dt = v(X, Phi(y), t) from t = 0 to 1     (midpoint, 3 steps = NFE 6 by default)
    x  = Phi^-1(X1)

``enhance`` is the official whole-file computation. Long inputs, in cross-faded chunks and bounded memory,
are :func:`flowdec_cli.longaudio.enhance_long`'s business: it uses this model, which knows nothing of it.

Speed options (``configure``): channels-last memory format, fused residual-block tails, reduced precision
(bfloat16/float16 weights and activations; the time embedding, the noise and the feature map stay in
float32/float64), TF32, and ``torch.compile`` of the real-valued U-Net. All are off on CPU unless asked for;
on CUDA channels-last and fusing are on by default. ``recommended_settings(device)`` gives the fast choice,
and on CPU ``tune_cpu_allocator()`` (process-wide) stops glibc from page-faulting every large activation
again. The unoptimised float32 path is the reference that the fixtures test.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoints import (
    CheckpointError,
    load_lightning_state_dict,
    load_model_folder,
    require_weights_for,
    save_model_folder,
    state_mismatch,
)
from .exceptions import InvalidValue
from .features import ALPHA, BETA, HOP_LENGTH, N_FFT, PAD_MULTIPLE, FeatureMap
from .framewise import FramewiseBackbone
from .harmonics import redraw_setting
from .ncsnpp import NCSNpp
from .numeric import is_integer, is_real
from .progress import Progress
from .sampler import check_temperature, draw_noise, nfe_to_steps, solve, start_point

__all__ = ["Postfilter", "tune_cpu_allocator", "CONFIG_TYPE", "DEFAULT_SIGMA_Y"]

CONFIG_TYPE = "flowdec_postfilter"
CONFIG_VERSION = 3  # 1: NCSN++ only; 2: adds "backbone" (absent = "ncsnpp"); 3: adds "harmonic_redraw_hz"
SAMPLE_RATE = 48000
DEFAULT_SIGMA_Y = 0.66  # the official global sigma_y (flow_model_final default); released models store a curve
BACKBONES = ("ncsnpp", "framewise")  # the released models' U-Net; our frame-wise ConvNeXt (docs/framewise.md)
FRAMEWISE_DEFAULTS = {"dim": 256, "intermediate_dim": 768, "num_blocks": 6, "kernel_size": 7, "fourier_size": 64,
                      "context_dilation": 0, "spectral_channels": 0, "pitch_top_hz": 0}
PRECISIONS = {"float32": torch.float32, "tf32": torch.float32, "bfloat16": torch.bfloat16,
              "float16": torch.float16}
WEIGHT_DTYPES = ("float32", "float16")  # how a folder may store the network's weights (Postfilter.save)
PRECISION_CHOICES = ("float32", "bfloat16", "float16")  # what a user picks (options.decode_options restates it)


def tune_cpu_allocator(enable: bool = True) -> bool:
    """Let glibc keep freed large blocks in the heap instead of unmapping them (process-wide).

    A full-size U-Net pass on CPU allocates dozens of ~100 MB activations per second of audio. glibc
    serves blocks over 32 MB with a fresh ``mmap`` and unmaps them on free, so every such tensor is
    page-faulted in again: about 50 ms per 100 MB on the machines we measured, a sizeable share of a pass.
    With mmap disabled and a high trim threshold the heap keeps and reuses that memory (RSS stays at its
    peak until exit). ``enable=False`` restores glibc's defaults and returns the free heap to the system.
    Returns False where this cannot be done (not Linux/glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    if enable:
        return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 1 << 30))
    ok = bool(mallopt(m_mmap_max, 65536)) and bool(mallopt(m_trim_threshold, 128 * 1024))
    try:
        libc.malloc_trim(0)
    except AttributeError:
        pass
    return ok


MAX_PARAMETERS = 2_000_000_000  # 8 GB of float32; the released postfilter has about 75 million
_CONFIG_BOUNDS = {"n_fft": 16384, "hop_length": 16384, "pad_multiple": 4096, "nf": 1024, "num_res_blocks": 16,
                  "fourier_size": 4096}
_FRAMEWISE_BOUNDS = {"dim": 4096, "intermediate_dim": 16384, "num_blocks": 64, "kernel_size": 63,
                     "fourier_size": 4096, "context_dilation": 64, "spectral_channels": 256,
                     "pitch_top_hz": SAMPLE_RATE // 2}
_FRAMEWISE_MAY_BE_ZERO = ("context_dilation", "spectral_channels", "pitch_top_hz")  # 0 = the setting is off
_MAX_FIR_TAPS = 16  # the released models' resampling filter has 4


def _bounded_int(name: str, value: Any, top: int, bottom: int = 1) -> int:
    if not is_integer(value) or not bottom <= value <= top:
        raise InvalidValue(f"config {name} = {value!r} is out of range [{bottom}, {top}]")
    return int(value)


def check_config_bounds(config: dict[str, Any]) -> None:
    """Refuse sizes no postfilter has before anything is allocated: a model folder's config is data from a
    file, and a forged one must end in a one-line error, not a request for petabytes."""
    config_parameter_count(config)


def config_parameter_count(config: dict[str, Any]) -> int:
    """About how many weights a config's postfilter has (the big layers; nothing is allocated), after
    :func:`check_config_bounds`' checks: what a folder's weights file must roughly hold."""
    sizes = {k: _bounded_int(k, config[k], top) for k, top in _CONFIG_BOUNDS.items()
             if k in config and config[k] is not None}
    n_fft = sizes.get("n_fft", N_FFT)
    if n_fft % 2:
        raise InvalidValue(f"config n_fft = {n_fft} must be even")
    if sizes.get("hop_length", HOP_LENGTH) > n_fft:
        raise InvalidValue(f"config hop_length {sizes['hop_length']} is longer than n_fft {n_fft}")
    shape = config.get("sigma_y_shape", [n_fft // 2 + 1, 1])
    if (not isinstance(shape, list | tuple) or len(shape) > 2
            or any(not is_integer(s) or not 0 <= s <= n_fft // 2 + 1 for s in shape)):
        raise InvalidValue(f"config sigma_y_shape = {shape!r} does not fit {n_fft // 2 + 1} frequency bins")
    freqs = n_fft // 2
    backbone = str(config.get("backbone", "ncsnpp"))
    if backbone not in BACKBONES:
        raise InvalidValue(f"unknown backbone {backbone!r} (this flowdec knows {', '.join(BACKBONES)})")
    if backbone == "framewise":
        fw = config.get("framewise")
        if not isinstance(fw, dict):
            raise InvalidValue("a framewise backbone needs its 'framewise' settings")
        unknown = set(fw) - set(_FRAMEWISE_BOUNDS)
        if unknown:
            raise InvalidValue(f"unknown framewise backbone settings: {', '.join(sorted(map(str, unknown)))}")
        args = {**FRAMEWISE_DEFAULTS, **{k: _bounded_int(f"framewise.{k}", v, _FRAMEWISE_BOUNDS[k],
                                                         0 if k in _FRAMEWISE_MAY_BE_ZERO else 1)
                                        for k, v in fw.items()}}
        d, h = args["dim"], args["intermediate_dim"]
        per_block = 2 * d * args["kernel_size"] + 2 * d * h + 8 * d * args["fourier_size"]
        n = 8 * freqs * d + args["num_blocks"] * per_block + 32 * args["spectral_channels"] ** 2
        if args["pitch_top_hz"]:  # the template's bins: those up to pitch_top_hz
            bins = min(freqs + 1, int(args["pitch_top_hz"] * n_fft / SAMPLE_RATE) + 1)
            n += 2 * bins * d + 6 * bins
    else:
        mult = config.get("ch_mult", [])
        if (not isinstance(mult, list | tuple) or not 1 <= len(mult) <= 8
                or any(not is_integer(m) or not 1 <= m <= 16 for m in mult)):
            raise InvalidValue(f"config ch_mult = {mult!r} must be 1 to 8 multipliers of 1 to 16")
        taps = config.get("fir_kernel", [1, 3, 3, 1])  # its outer product is built: memory grows as taps^2
        if (not isinstance(taps, list | tuple) or not 1 <= len(taps) <= _MAX_FIR_TAPS
                or any(not is_real(v) or not math.isfinite(v) for v in taps)):
            raise InvalidValue(f"config fir_kernel = {taps!r} must be 1 to {_MAX_FIR_TAPS} finite numbers")
        nf, blocks = (_bounded_int(k, config.get(k), _CONFIG_BOUNDS[k]) for k in ("nf", "num_res_blocks"))
        n = 9 * (nf * max(mult)) ** 2 * 4 * (blocks + 2) * len(mult)
    if n > MAX_PARAMETERS:
        raise InvalidValue(f"config describes about {n:.3g} parameters (more than {MAX_PARAMETERS:.0e}); "
                         "not a postfilter this package can build")
    return n


# --------------------------------------------------------------------------------------------------
# The model


def _as_batch(y: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    if y.dim() == 1:
        return y[None, None], lambda x: x[0, 0]
    if y.dim() == 2:
        return y[:, None], lambda x: x[:, 0]
    if y.dim() == 3 and y.shape[1] == 1:
        return y, lambda x: x
    raise InvalidValue(f"audio must be shaped [L], [B, L] or [B, 1, L], got {tuple(y.shape)}")


def check_normfac(normfac: Any) -> None:
    """A peak normalisation given by the caller (None: the input's own): positive, as the features are
    divided by it (0 gave all-NaN audio)."""
    if normfac is not None and not bool(torch.all(torch.as_tensor(normfac, dtype=torch.float32) > 0)):
        raise InvalidValue("normfac must be positive: the features are divided by it")


class Postfilter(nn.Module):
    """FlowDec's flow-matching postfilter (official ``FlowModel`` at inference).

    Build one with :meth:`from_lightning_checkpoint` (released ``.ckpt``), :meth:`from_folder` (our
    ``config.json`` + ``model.safetensors``) or :meth:`load` (either); the constructor makes a randomly
    initialised model of any size (tests, benchmarks).
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, nf: int = 64, ch_mult: Sequence[int] = (4, 4, 4, 2), num_res_blocks: int = 1,
                 fourier_size: int | None = None, fourier_scale: float = 16.0,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1), n_fft: int = N_FFT, hop_length: int = HOP_LENGTH,
                 alpha: float = ALPHA, beta: float = BETA, pad_multiple: int = PAD_MULTIPLE,
                 sigma_y: float | torch.Tensor = DEFAULT_SIGMA_Y, backbone: str = "ncsnpp",
                 framewise: dict[str, Any] | None = None) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise InvalidValue(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
        freqs = n_fft // 2 + 1
        if not isinstance(sigma_y, torch.Tensor):
            sigma_y = torch.full((freqs, 1), float(sigma_y), dtype=torch.float64)
        if sigma_y.dim() not in (0, 2) or (sigma_y.dim() == 2 and tuple(sigma_y.shape) != (freqs, 1)):
            raise InvalidValue(f"sigma_y must be 0-dim or [{freqs}, 1], got {tuple(sigma_y.shape)}")
        if backbone == "ncsnpp" and (pad_multiple % 2 ** (len(ch_mult) - 1) or freqs % 2 ** (len(ch_mult) - 1)):
            raise InvalidValue("frequency bins and the frame padding must be divisible by the U-Net's "
                             f"downsampling factor {2 ** (len(ch_mult) - 1)}")
        # Registration order = official state-dict order: sigma_x, sigma_y, backbone.*, feature_extractor.*
        self.register_buffer("sigma_x", torch.zeros((), dtype=torch.float32))
        self.register_buffer("sigma_y", sigma_y.detach().clone())
        self.backbone: NCSNpp | FramewiseBackbone
        if backbone == "ncsnpp":
            self.backbone = NCSNpp(nf=nf, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                                   fourier_size=fourier_size, fourier_scale=fourier_scale, fir_kernel=fir_kernel)
            self._arch: dict[str, Any] = dict(
                nf=nf, ch_mult=[int(c) for c in ch_mult], num_res_blocks=num_res_blocks,
                fourier_size=fourier_size or nf, fourier_scale=fourier_scale,
                fir_kernel=[float(k) for k in fir_kernel])
        else:
            args = {**FRAMEWISE_DEFAULTS, **(framewise or {})}
            unknown = set(args) - set(FRAMEWISE_DEFAULTS)
            if unknown:
                raise InvalidValue(f"unknown framewise backbone settings: {', '.join(sorted(unknown))}")
            self.backbone = FramewiseBackbone(n_freqs=freqs, fourier_scale=fourier_scale, hop_length=hop_length,
                                              **args)
            # an off setting is not written, so folders without it stay readable by flowdec that predates it
            written = {k: v for k, v in args.items() if not (k in _FRAMEWISE_MAY_BE_ZERO and v == 0)}
            self._arch = {"backbone": "framewise", "framewise": written, "fourier_scale": fourier_scale}
        self.feature_extractor = FeatureMap(n_fft, hop_length, alpha, beta, pad_multiple)
        self.precision = "float32"
        self._compiled: Callable[..., torch.Tensor] | None = None
        self._held: tuple[torch.Tensor, Any] | None = None  # (Y, prepared) of the solve under way
        self._temperature = 1.0
        self._harmonic_redraw_hz = 0
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    # -- construction and persistence -------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        fe = self.feature_extractor
        return {
            "type": CONFIG_TYPE,
            # version 2 (the backbone named) unless the postfilter needs the redraw, which flowdec before it
            # would skip: version 3 makes it refuse such a folder by name
            "version": 3 if self._harmonic_redraw_hz else 2,
            "sample_rate": self.sample_rate,
            **self._arch,
            "n_fft": fe.n_fft,
            "hop_length": fe.hop_length,
            "alpha": fe.alpha,
            "beta": fe.beta,
            "pad_multiple": fe.pad_multiple,
            "sigma_y_shape": list(self.sigma_y.shape),
            "sigma_y_dtype": str(self.sigma_y.dtype).removeprefix("torch."),
            **({} if self._temperature == 1.0 else {"temperature": self._temperature}),
            **({"harmonic_redraw_hz": self._harmonic_redraw_hz} if self._harmonic_redraw_hz else {}),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Postfilter:
        """An uninitialised-weights model of the architecture a config (ours) describes."""
        if config.get("type") != CONFIG_TYPE:
            raise InvalidValue(f"config type is {config.get('type')!r}, expected {CONFIG_TYPE!r}")
        check_config_bounds(config)
        if int(config.get("version", 1)) > CONFIG_VERSION:
            raise InvalidValue(f"config version {config.get('version')} is newer than this flowdec understands")
        if int(config.get("sample_rate", SAMPLE_RATE)) != SAMPLE_RATE:
            raise InvalidValue(f"postfilter sample rate {config.get('sample_rate')} is not {SAMPLE_RATE}")
        n_fft = int(config.get("n_fft", N_FFT))
        shape = tuple(config.get("sigma_y_shape", [n_fft // 2 + 1, 1]))
        dtype = {"float64": torch.float64, "float32": torch.float32}.get(str(config.get("sigma_y_dtype", "float64")))
        if dtype is None:
            raise InvalidValue(f"sigma_y_dtype must be float64 or float32, got {config.get('sigma_y_dtype')!r}")
        sigma_y = torch.full(shape, DEFAULT_SIGMA_Y, dtype=dtype)
        model = cls._architecture_from_config(config, n_fft, sigma_y)
        model.temperature = config.get("temperature", 1.0)
        model.harmonic_redraw_hz = config.get("harmonic_redraw_hz", 0)
        return model

    @classmethod
    def _architecture_from_config(cls, config: dict[str, Any], n_fft: int, sigma_y: torch.Tensor) -> Postfilter:
        backbone = str(config.get("backbone", "ncsnpp"))
        if backbone == "framewise":
            framewise = config.get("framewise")
            if not isinstance(framewise, dict):
                raise InvalidValue("a framewise backbone needs its 'framewise' settings")
            return cls(n_fft=n_fft, hop_length=int(config.get("hop_length", HOP_LENGTH)),
                       alpha=float(config.get("alpha", ALPHA)), beta=float(config.get("beta", BETA)),
                       pad_multiple=int(config.get("pad_multiple", PAD_MULTIPLE)), sigma_y=sigma_y,
                       fourier_scale=float(config.get("fourier_scale", 16.0)), backbone="framewise",
                       framewise={k: int(v) for k, v in framewise.items()})
        if backbone != "ncsnpp":
            raise InvalidValue(f"unknown backbone {backbone!r} (this flowdec knows {', '.join(BACKBONES)})")
        return cls(nf=int(config["nf"]), ch_mult=tuple(config["ch_mult"]),
                   num_res_blocks=int(config["num_res_blocks"]), fourier_size=config.get("fourier_size"),
                   fourier_scale=float(config.get("fourier_scale", 16.0)),
                   fir_kernel=tuple(config.get("fir_kernel", (1, 3, 3, 1))), n_fft=n_fft,
                   hop_length=int(config.get("hop_length", HOP_LENGTH)), alpha=float(config.get("alpha", ALPHA)),
                   beta=float(config.get("beta", BETA)), pad_multiple=int(config.get("pad_multiple", PAD_MULTIPLE)),
                   sigma_y=sigma_y)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], source: str = "state dict",
                        alpha: float = ALPHA, beta: float = BETA) -> Postfilter:
        """Infer the architecture from tensor shapes, build, and load strictly (every mismatch named).

        alpha and beta are not recorded in the weights; the released models use the defaults.
        """
        arch = infer_architecture(state, source)
        sigma_y = state["sigma_y"]
        model = cls(**arch, alpha=alpha, beta=beta,
                    sigma_y=torch.zeros(sigma_y.shape, dtype=sigma_y.dtype))
        model.load_official_state_dict(state, source)
        return model

    @classmethod
    def from_lightning_checkpoint(cls, path: str | os.PathLike, ema: bool = True, alpha: float = ALPHA,
                                  beta: float = BETA) -> Postfilter:
        """A released FlowDec ``.ckpt``: the EMA weights (as the official demo) unless ``ema=False``."""
        state = load_lightning_state_dict(path, ema=ema)
        return cls.from_state_dict(state, f"{path} ({'EMA' if ema else 'raw'} weights)", alpha, beta)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> Postfilter:
        config, state = load_model_folder(folder)
        try:
            require_weights_for(config_parameter_count(config), state, str(folder))
            model = cls.from_config(config)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{folder}: invalid postfilter config ({exc})") from None
        if "sigma_y" in state and state["sigma_y"].shape != model.sigma_y.shape:
            model.sigma_y = torch.zeros(state["sigma_y"].shape, dtype=state["sigma_y"].dtype)
        model.load_official_state_dict(state, str(folder))
        return model

    @classmethod
    def load(cls, path: str | os.PathLike, ema: bool = True) -> Postfilter:
        """A released ``.ckpt`` file or one of our component folders."""
        path = Path(path)
        return cls.from_lightning_checkpoint(path, ema=ema) if path.is_file() else cls.from_folder(path)

    def save(self, folder: str | os.PathLike, weights_dtype: str = "float32") -> Path:
        """``config.json`` + ``model.safetensors`` (official key names, float64 sigma_y).

        ``weights_dtype`` "float16" stores the learned weights (the parameters) at half size (a built-in
        model's weight budget); they load back into float32 and run as before, rounded to 11 significant
        bits. The buffers are stored as they are: the window, sigma_y and the time embedding's random
        frequencies are exact constants (the frequencies scale t by up to ~60 radians, where rounding
        would move every time embedding).
        """
        if self.precision not in ("float32", "tf32"):
            raise InvalidValue(f"this postfilter runs in {self.precision}; save a float32 model instead")
        if weights_dtype not in WEIGHT_DTYPES:
            raise InvalidValue(f"weights dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {weights_dtype!r}")
        state = self.state_dict()
        if weights_dtype == "float16":
            learned = {k for k, v in self.named_parameters() if v.dtype == torch.float32}
            big = [k for k in sorted(learned) if state[k].abs().max() > torch.finfo(torch.float16).max]
            if big:
                raise InvalidValue(f"weights too large for float16 ({', '.join(big[:3])}); save them as float32")
            state = {k: v.half() if k in learned else v for k, v in state.items()}
        return save_model_folder(folder, self.config, state)

    def load_official_state_dict(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Strict load that names every missing, unexpected or mis-shaped key."""
        problem = state_mismatch(self.state_dict(), state, source, "postfilter")
        if problem:
            raise CheckpointError(problem)
        if state["sigma_y"].dtype != self.sigma_y.dtype:
            self.sigma_y = torch.zeros_like(self.sigma_y, dtype=state["sigma_y"].dtype)
        self.load_state_dict(state, strict=True)

    def _apply(self, fn: Callable, recurse: bool = True) -> Postfilter:
        # sigma_y keeps its dtype (float64 for the released curves) through .float(), .half(), .to(dtype):
        # the start point's noise product is formed at that precision. Devices follow the module.
        original = self.sigma_y
        super()._apply(fn, recurse)
        if self.sigma_y.dtype != original.dtype:  # undo the cast from the untouched original, not the copy
            self.sigma_y = original.to(device=self.sigma_y.device)
        return self

    @property
    def device(self) -> torch.device:
        return self.sigma_y.device

    # -- performance options ----------------------------------------------------------------------------

    def configure(self, precision: str = "float32", channels_last: bool | None = None, fuse: bool | None = None,
                  compile: bool = False, compile_mode: str | None = None) -> Postfilter:
        """Choose how the U-Net runs; call after moving the model to its device.

        * ``precision``: ``float32`` (reference; TF32 off on CUDA), ``tf32`` (CUDA TF32 convolutions),
          ``bfloat16`` or ``float16`` (backbone weights and activations; the time embedding, the start noise
          and the feature map stay float32/float64). Reduced precisions cast the weights in place; reload the
          model to get float32 back.
        * ``channels_last``: NHWC activations, which oneDNN and cuDNN convolve faster (float rounding
          differs from NCHW); ``None`` = on for CUDA, off for CPU.
        * ``fuse``: fold the time-embedding bias and the 1/sqrt(2) skip scale into the convolutions (two
          full-size memory passes fewer per block; rounding-level differences); ``None`` = as channels_last.
        * ``compile``: ``torch.compile`` the real-valued U-Net (``compile_mode`` e.g. "max-autotune").

        ``configure()`` with no arguments on CPU restores the reference settings.
        """
        if precision not in PRECISIONS:
            raise InvalidValue(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if self.precision not in ("float32", "tf32") and precision != self.precision:
            raise InvalidValue(f"weights are already {self.precision}; reload the model to change precision")
        if channels_last is None:
            channels_last = self.device.type == "cuda"
        if fuse is None:
            fuse = channels_last
        self.backbone.set_compute_dtype(PRECISIONS[precision])
        self.backbone.use_channels_last(channels_last)
        self.backbone.set_fused(fuse)
        self.precision = precision
        self._compiled = None
        if compile:
            self._compiled = torch.compile(self.backbone.forward_real, mode=compile_mode, dynamic=False)
        return self

    @property
    def settings(self) -> dict[str, Any]:
        """The current :meth:`configure` settings."""
        return {"precision": self.precision, "channels_last": self.backbone.channels_last,
                "fuse": self.backbone.fused, "compile": self._compiled is not None}

    @staticmethod
    def recommended_settings(device: torch.device | str, exact: bool = True) -> dict[str, Any]:
        """Fast :meth:`configure` arguments for a device. ``exact`` keeps float32 (results equal the
        reference up to float rounding); otherwise CUDA uses bfloat16 (about 1e-2 relative difference)."""
        if torch.device(device).type == "cuda":
            return {"precision": "float32" if exact else "bfloat16", "channels_last": True, "fuse": True}
        return {"precision": "float32", "channels_last": True, "fuse": True}

    @staticmethod
    def settings_for(device: torch.device | str, precision: str = "auto") -> dict[str, Any]:
        """:meth:`configure` arguments for a device and a requested precision (the one check of precision
        names): ``auto`` is :meth:`recommended_settings` (bfloat16 on CUDA, float32 on CPU); ``float32``
        exact everywhere; ``bfloat16``/``float16`` need CUDA. ValueError for anything else."""
        if precision not in ("auto", *PRECISION_CHOICES):
            raise InvalidValue(f"unknown precision '{precision}' (auto, {', '.join(PRECISION_CHOICES)})")
        settings = Postfilter.recommended_settings(device, exact=precision != "auto")
        if precision != "auto":
            if precision != "float32" and torch.device(device).type != "cuda":
                raise InvalidValue(f"{precision} arithmetic needs a CUDA device")
            settings["precision"] = precision
        return settings

    @contextlib.contextmanager
    def _backend_flags(self) -> Iterator[None]:
        """The cuDNN/TF32 flags of this precision around the network's passes (also :mod:`.longaudio`'s)."""
        if self.device.type == "cuda":
            with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False,
                                            allow_tf32=self.precision == "tf32"):
                prev = torch.backends.cuda.matmul.allow_tf32
                torch.backends.cuda.matmul.allow_tf32 = self.precision == "tf32"
                try:
                    yield
                finally:
                    torch.backends.cuda.matmul.allow_tf32 = prev
        else:
            yield

    # -- the learned field --------------------------------------------------------------------------------

    def velocity(self, x_t: torch.Tensor, Y: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """The learned field v(x_t, Y, t): complex64 ``[B, 1, F, T]`` (T a multiple of 8) -> complex64.

        ``t`` is a float (shared by the batch) or a ``[B]`` tensor.
        """
        if x_t.shape != Y.shape:
            raise InvalidValue(f"x_t {tuple(x_t.shape)} and Y {tuple(Y.shape)} must have the same shape")
        if not (x_t.is_complex() and Y.is_complex()):
            raise InvalidValue("x_t and Y must be complex features (as features() gives them)")
        if not (is_real(t) or (isinstance(t, torch.Tensor) and t.is_floating_point())):
            raise InvalidValue(f"t must be a number or a float tensor of flow times, got {type(t).__name__}")
        times = torch.as_tensor(t)
        if not bool(torch.all((times >= 0) & (times <= 1))):  # NaN fails too
            raise InvalidValue("t must lie in [0, 1]: the flow runs from the coded features (0) to the clean (1)")
        with torch.inference_mode(), self._backend_flags():
            # t made inside inference mode, as enhance makes it: a compiled backbone guards on the tensor's
            # dispatch keys, and a t from outside would make the first enhance compile it all over again
            t = torch.as_tensor(t, dtype=torch.float32, device=self.device).reshape(-1)
            return self._field(x_t.to(self.device), Y.to(self.device), t)

    def _field(self, x: torch.Tensor, Y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v(x, Y, t) as the solvers call it, inside ``inference_mode`` and :meth:`_backend_flags` (``enhance``
        and :func:`flowdec_cli.longaudio.enhance_long`); tests replace it per instance."""
        held = self._held
        prepared = held[1] if held is not None and held[0] is Y else None
        return self.backbone(x, Y, t.reshape(-1), sigma_y=self.sigma_y, real_fn=self._compiled, prepared=prepared)

    @property
    def takes_pitch(self) -> bool:
        """Whether the backbone reads the input's F0 (a frame-wise one with ``pitch_top_hz``): the pitch side
        channel of a .fdc file is then worth sending (:mod:`flowdec_cli.pitch`)."""
        return bool(getattr(self.backbone, "takes_pitch", False))

    def checked_pitch(self, pitch: Any, rows: int) -> torch.Tensor | None:
        """``pitch`` as a float64 ``[rows, frames]`` tensor of F0 in Hz (0: unvoiced), or None when this model
        does not read it (the side channel then changes nothing)."""
        if pitch is None or not self.takes_pitch:
            return None
        f0 = torch.as_tensor(np.asarray(pitch, dtype=np.float64) if not isinstance(pitch, torch.Tensor) else pitch)
        if f0.dim() != 2 or f0.shape[0] != rows:
            raise InvalidValue(f"pitch must be shaped [{rows}, frames] (one F0 track per row), got "
                               f"{tuple(f0.shape)}")
        if not bool(torch.isfinite(f0).all()) or bool((f0 < 0).any()):
            raise InvalidValue("pitch must hold finite frequencies in Hz, 0 for unvoiced frames")
        return f0.to(torch.float64)

    @contextlib.contextmanager
    def _solving(self, Y: torch.Tensor, pitch: torch.Tensor | None = None) -> Iterator[None]:
        """Around one solve on the coded features ``Y`` (and the F0 ``pitch`` of its frames), which nothing
        changes meanwhile: what the backbone takes from them alone (the frame-wise spectral branch, the pitch
        paths) is computed once, not at every pass."""
        prepared = self.backbone.prepare(Y, self.sigma_y, pitch)
        self._held = None if prepared is None else (Y, prepared)
        try:
            yield
        finally:
            self._held = None

    def solve_rows(self, Y: torch.Tensor, x: torch.Tensor, steps: int, solver: str,
                   on_evaluation: Callable[[int], None] | None = None,
                   pitch: torch.Tensor | None = None) -> torch.Tensor:
        """The ODE solve from ``x`` on the coded features ``Y`` (rows: channels, chunks). On a CPU the rows go
        through one at a time: batching gains nothing there, and the activations of all of them at once made
        the memory grow with the channel count (8 channels at the default NFE: 3.6 GB where one takes 1.2).
        On CUDA the callers size their batches to the free memory. ``on_evaluation(rows)`` follows each
        network pass, with the rows it took (so a bar counts row-passes and moves on a CPU too). ``pitch``:
        the F0 of each row's frames, ``[rows, frames]`` Hz, for a model that reads it (:attr:`takes_pitch`)."""
        pitch = self.checked_pitch(pitch, Y.shape[0])
        step = Y.shape[0] if self.device.type != "cpu" else 1
        out = []
        for a in range(0, Y.shape[0], step):
            Yr, xr = Y[a:a + step], x[a:a + step]
            rows = Yr.shape[0]
            with self._solving(Yr, None if pitch is None else pitch[a:a + step]):
                out.append(solve(lambda t, s, Yr=Yr: self._field(s, Yr, t), xr, steps, solver,  # type: ignore[misc]
                                 on_evaluation=None if on_evaluation is None else
                                 (lambda rows=rows: on_evaluation(rows))))  # type: ignore[misc]
        return out[0] if len(out) == 1 else torch.cat(out)

    @property
    def temperature(self) -> float:
        """The start-noise temperature (see :meth:`start`), checked on every assignment by
        :func:`~flowdec_cli.sampler.check_temperature` (a model folder's config is data from a file)."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: Any) -> None:
        self._temperature = check_temperature(value)

    @property
    def harmonic_redraw_hz(self) -> int:
        """The cut-off below which this postfilter's input has its voiced harmonics redrawn at the file's F0
        (:mod:`flowdec_cli.harmonics`; 0: not redrawn). It was trained on decodes redrawn so, and a decoder
        redraws before it wherever the file sends a pitch; a model folder's config may set it."""
        return self._harmonic_redraw_hz

    @harmonic_redraw_hz.setter
    def harmonic_redraw_hz(self, value: Any) -> None:
        self._harmonic_redraw_hz = redraw_setting(value)

    def start(self, Y: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The ODE's start point ``Y + sigma_y * temperature * noise``.

        ``temperature`` (ours; 1 = FlowDec, the released models) scales the start noise, as diffusion and flow
        samplers' temperatures do: below 1 the flow keeps more of what the coded signal says and invents less.
        A model folder's postfilter config may set it (``"temperature"``); at 1 the start point is
        bit-identical to the official one (no multiplication happens).
        """
        if self._temperature != 1.0:
            noise = noise * self._temperature
        return start_point(Y, self.sigma_y, noise)

    def activation_bytes(self, frames: int) -> int:
        """Rough peak memory of one network pass over ``frames`` STFT frames (batch rows x frames)."""
        return self.backbone.activation_bytes(frames)

    # -- whole inputs ---------------------------------------------------------------------------------

    def features(self, y: torch.Tensor, normfac: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(Y, normfac, frames)`` of a float ``[B, 1, L]`` waveform (official ``_preprocess``)."""
        if y.shape[-1] == 0:  # its peak has nothing to reduce over; enhance returns such audio unchanged
            raise InvalidValue("audio has no samples")
        check_normfac(normfac)
        with torch.inference_mode():
            return self.feature_extractor(y.to(self.device, torch.float32),
                                          None if normfac is None else torch.as_tensor(normfac).to(self.device))

    def enhance(self, y: torch.Tensor, nfe: int = 6, solver: str = "midpoint", noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None, normfac: torch.Tensor | float | None = None,
                progress: Progress | None = None, pitch: Any = None) -> torch.Tensor:
        """Refine D0 output ``y`` (float, 48 kHz, ``[B, 1, L]``, ``[B, L]`` or ``[L]``): same shape back.

        ``nfe`` network evaluations (midpoint: even, NFE 6 = 3 steps as officially; euler: any; 0 returns
        ``y`` unchanged). ``noise`` (complex64 ``[B, 1, F, T_pad]``) replaces the random start draw;
        otherwise it is drawn with ``generator`` (torch's global RNG when None). ``normfac`` overrides the
        input peak. ``pitch``: the input's F0 per STFT frame (``[B, frames]`` Hz, 0 unvoiced; frame i centred
        on sample ``i * hop_length``), for a model that reads it (:attr:`takes_pitch`; others ignore it). The
        result is on ``y``'s device.
        """
        steps = nfe_to_steps(nfe, solver)
        check_normfac(normfac)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise InvalidValue(f"generator must be a torch.Generator (or give a seed to Codec), got "
                               f"{type(generator).__name__}")
        y = torch.as_tensor(y)
        y3, restore = _as_batch(y)
        if steps == 0:
            return y.clone()
        if not y3.is_floating_point():
            raise InvalidValue(f"audio must be floating point, got {y3.dtype}")
        length = y3.shape[-1]
        min_len = self.feature_extractor.n_fft // 2 + 1
        short = length < min_len  # reflect padding needs more samples than n_fft // 2: pad with zeros
        if short:
            y3 = torch.nn.functional.pad(y3, (0, min_len - length))
        bar = progress("postfilter", nfe * y3.shape[0], "pass") if progress is not None else None
        try:
            with torch.inference_mode(), self._backend_flags():
                yd = y3.to(self.device, torch.float32)
                if not bool(torch.isfinite(yd).all()):
                    raise InvalidValue("audio contains NaN or infinite samples")
                nf = None if normfac is None else torch.as_tensor(normfac, dtype=torch.float32).to(self.device)
                if nf is not None and nf.dim() == 0:
                    nf = nf.reshape(1, 1, 1)
                Y, nf, frames = self.feature_extractor(yd, nf)
                if noise is None:
                    noise = draw_noise(Y.shape, generator, self.device)
                elif tuple(noise.shape) != tuple(Y.shape):
                    raise InvalidValue(f"noise must be shaped like the padded features {tuple(Y.shape)}, got "
                                     f"{tuple(noise.shape)}")
                x = self.solve_rows(Y, self.start(Y, noise), steps, solver, bar.update if bar is not None else None,
                                    pitch=pitch)
                out = self.feature_extractor.inverse(x, nf, y3.shape[-1], frames)
        finally:
            if bar is not None:
                bar.close()
        if short:
            out = out[..., :length]
        return restore(out.to(y.device))


# --------------------------------------------------------------------------------------------------
# Architecture inference for released checkpoints


def infer_architecture(state: dict[str, torch.Tensor], source: str = "state dict") -> dict[str, Any]:
    """nf, ch_mult and num_res_blocks of a FlowDec state dict, read from its tensor shapes.

    The U-Net with L levels and R res blocks per level has ``L * (2R + 6) + 3`` modules; each (L, R)
    that fits the module count is built on the meta device and kept if every key and shape matches.
    """
    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise CheckpointError(f"{source}: not a FlowDec postfilter state dict (no '{key}')")
        return state[key]

    need("sigma_y")
    window = need("feature_extractor.complex_stft.window")
    conv_in = need("backbone.all_modules.3.weight")
    fourier = need("backbone.all_modules.0.W")
    nf = int(conv_in.shape[0])
    indices = {int(k.split(".")[2]) for k in state if k.startswith("backbone.all_modules.")}
    count = max(indices) + 1
    candidates = []
    for levels in range(1, 9):
        for blocks in range(1, 9):
            if levels * (2 * blocks + 6) + 3 != count:
                continue
            ch_mult = []
            for level in range(levels):
                key = f"backbone.all_modules.{4 + level * (blocks + 2)}.Conv_0.weight"
                if key not in state or int(state[key].shape[0]) % nf:
                    break
                ch_mult.append(int(state[key].shape[0]) // nf)
            else:
                candidates.append(dict(nf=nf, ch_mult=tuple(ch_mult), num_res_blocks=blocks,
                                       fourier_size=int(fourier.shape[0]), n_fft=int(window.shape[0])))
    expected = {k: tuple(v.shape) for k, v in state.items() if k.startswith("backbone.")}
    for arch in candidates:
        with torch.device("meta"):
            net = NCSNpp(nf=arch["nf"], ch_mult=arch["ch_mult"], num_res_blocks=arch["num_res_blocks"],
                         fourier_size=arch["fourier_size"])
        built = {"backbone." + k: tuple(v.shape) for k, v in net.state_dict().items()}
        if built == expected:
            return arch
    raise CheckpointError(f"{source}: the backbone tensors ({count} modules, nf {nf}) match no NCSN++ "
                          "ncsnpp_final_no_attn layout")
