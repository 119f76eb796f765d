"""A frame-wise postfilter backbone made for audio and for CPUs (an alternative to NCSN++).

NCSN++ treats the complex spectrogram as an image: 2-D convolutions over frequency and time, at full
resolution, about 1.5 TFLOP per second of audio at the released size. This backbone treats it as a
sequence of frames: the 768 frequency bins of a frame are the channels of a 1-D ConvNeXt over time (the
Vocos/RFWave family), so one pass costs a few GFLOP per second of audio and its receptive field spans
``num_blocks * (kernel_size - 1) + 1`` frames (times the dilation of the optional context branch).

What it predicts (the part that is ours, see docs/framewise.md). The joint flow's state is
``x_t = Y + r`` with ``r = t (X - Y) + (1 - t) sigma_y eps``. If the residual ``D = X - Y`` of one bin were
complex Gaussian with mean ``m`` and power ``q sigma_y^2``, the ideal velocity ``E[X - x_0 | x_t, Y]`` would be

    v = ((t q - (1 - t)) r + (1 - t) m) / (t^2 q + (1 - t)^2)

a per-bin Wiener-like gain on ``r`` plus a mean term. The network therefore outputs, per bin and frame, a
log power ratio ``log q`` and a complex gain ``c`` with ``m = c Y``, and the velocity is formed by that
formula. It never has to carry the 768 complex noise values of a frame through its bottleneck (a frame-wise
network with a narrow body cannot), only smooth, well-scaled quantities. Everything is measured in units of
the per-band ``sigma_y`` (inputs divided by it, ``m`` and ``r`` in those units), which is the per-band
energy normalisation RFWave does by other means. The training objective, the sampler and NFE semantics are
FlowDec's unchanged; this is only a different function ``v(x_t, Y, t)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .exceptions import InvalidValue
from .features import HOP_LENGTH
from .ncsnpp import GaussianFourierProjection

__all__ = ["FramewiseBackbone", "ConvNeXtBlock", "Conditioning", "SpectralBranch", "wiener_velocity", "LOG_Q_RANGE",
           "harmonic_template"]

LOG_Q_RANGE = (-9.0, 9.0)  # the power ratio q stays within [1.2e-4, 8.1e3]: bounded gains, no overflow
_LOG_EPS = 1e-4  # floor inside the log-magnitude input features (in sigma_y units)


def wiener_velocity(r: torch.Tensor, Y: torch.Tensor, t: torch.Tensor, log_q: torch.Tensor,
                    gain: torch.Tensor) -> torch.Tensor:
    """The velocity of a bin whose residual is Gaussian with mean ``gain * Y`` and power ratio ``q``.

    ``r`` and ``Y`` are complex ``[B, F, T]`` in sigma_y units, ``t`` is ``[B]``, ``log_q`` real and ``gain``
    complex ``[B, F, T]``. Returns the velocity in sigma_y units. Finite for every t in [0, 1]: the
    denominator is at least ``min(q, 1) / (1 + q)`` there.
    """
    q = log_q.clamp(*LOG_Q_RANGE).exp()
    t = t.reshape(-1, 1, 1).to(q.dtype)
    s = 1.0 - t
    den = t * t * q + s * s
    return ((t * q - s) * r + s * (gain * Y)) / den


class ConvNeXtBlock(nn.Module):
    """Depthwise temporal convolution, adaptive LayerNorm (scale and shift from the flow time), pointwise
    MLP, and a learned per-channel residual scale (ConvNeXt as Vocos uses it).

    With ``context_dilation`` d > 0 a second depthwise convolution, dilated by d, is added to the first:
    each block then sees ``d`` times further, for 0.3 % more weights at the built-in size. It starts at
    zero, so a model grown from weights without it (``train.init_from``) computes exactly what they did.
    """

    def __init__(self, dim: int, intermediate_dim: int, kernel_size: int, temb_dim: int,
                 layer_scale: float = 1e-2, context_dilation: int = 0) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.context: nn.Conv1d | None = None
        if context_dilation > 0:
            self.context = nn.Conv1d(dim, dim, kernel_size, padding=context_dilation * (kernel_size // 2),
                                     dilation=context_dilation, groups=dim, bias=False)
            nn.init.zeros_(self.context.weight)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(temb_dim, 2 * dim)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale)))
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """``x`` [B, C, T], ``temb`` [B, temb_dim] -> [B, C, T]."""
        h = self.dwconv(x)
        if self.context is not None:
            h = h + self.context(x)
        h = h.transpose(1, 2)  # [B, T, C]
        scale, shift = self.modulation(temb).unsqueeze(1).chunk(2, dim=-1)
        h = self.norm(h) * (1.0 + scale) + shift
        h = self.pwconv2(F.gelu(self.pwconv1(h)))
        return x + (self.gamma * h).transpose(1, 2)


class SpectralBranch(nn.Module):
    """A small 2-D convolution over (frequency, time) of the coded features alone, added to the head.

    The body reads each frame's 768 bins through one dense projection, so whatever it learns about a
    partial at one frequency it must learn again at every other, and it never sees the coded signal's
    phase (only the state's phase relative to it). This branch looks at each bin's neighbourhood with
    weights shared across frequency, from the cues that mark tonal and transient structure in a phase
    vocoder: the log-magnitude, the deviation of the phase advance from the bin's own frequency
    (instantaneous frequency) and the phase difference to the next lower bin (group delay), as unit
    phasors. Its 1x1 output layer starts at zero, so a model grown from weights without it computes
    exactly what they did. It depends on ``Y`` only, not on the flow time.
    """

    inputs = 5

    def __init__(self, hop_length: int, n_fft: int, channels: int, kernel_size: int = 5,
                 dilations: tuple[int, ...] = (1, 2, 4)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = self.inputs
        for d in dilations:
            layers += [nn.Conv2d(width, channels, (kernel_size, 3), padding=(d * (kernel_size // 2), 1),
                                 dilation=(d, 1)), nn.GELU()]
            width = channels
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(channels, 3, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.hop_ratio = hop_length / n_fft

    def cues(self, Y: torch.Tensor, y_abs: torch.Tensor) -> torch.Tensor:
        """``[B, 5, F, T]``: log |Y|, the phase advance relative to the bin's own (a unit phasor, 1 for a
        steady sinusoid at the bin's centre) and the phase step from the next lower bin."""
        unit = Y / (y_abs + _LOG_EPS)
        prev = torch.cat([unit[..., :1], unit[..., :-1]], dim=-1)
        # the phase a steady sinusoid at each bin's centre frequency advances by in one hop, made here rather
        # than kept as a buffer: a module-wide cast (set_compute_dtype, .half()) would make a complex buffer real
        own = 2 * torch.pi * self.hop_ratio * torch.arange(Y.shape[-2], device=Y.device, dtype=torch.float64)
        advance = unit * prev.conj() * torch.polar(torch.ones_like(own), -own).to(unit.dtype).reshape(-1, 1)
        lower = torch.cat([unit[:, :1], unit[:, :-1]], dim=1)
        delay = unit * lower.conj()
        return torch.stack([torch.log(y_abs + _LOG_EPS), advance.real, advance.imag, delay.real, delay.imag], 1)

    def forward(self, Y: torch.Tensor, y_abs: torch.Tensor) -> torch.Tensor:
        """``Y`` complex ``[B, F, T]`` and its magnitude (sigma_y units) -> ``[B, 3F, T]`` head offsets."""
        x = self.cues(Y, y_abs)
        # channels-last runs these narrow convolutions 2-3x faster on CPUs (oneDNN), forward and backward
        x = x.to(self.out.weight.dtype).contiguous(memory_format=torch.channels_last)
        out = self.out(self.body(x))  # [B, 3, F, T]
        return out.flatten(1, 2)


def harmonic_template(f0: torch.Tensor, bin_hz: torch.Tensor) -> torch.Tensor:
    """``[B, 2K, T]`` float32: ``cos`` and ``sin`` of ``2 pi f / F0`` at the centre frequencies ``f`` of the
    ``K`` bins ``bin_hz`` (zeros in frames whose ``f0`` [B, T] is 0: unvoiced). Every harmonic of F0 lies
    where the phase is a whole turn, so one pair of weights per bin says "a harmonic belongs here" wherever
    the pitch goes."""
    f = f0.to(torch.float64)[:, None, :]
    voiced = (f > 0).to(torch.float64)
    angle = 2 * torch.pi * bin_hz.to(torch.float64)[None, :, None] / f.clamp(min=1.0)
    return torch.cat([torch.cos(angle) * voiced, torch.sin(angle) * voiced], 1).float()


class Conditioning(NamedTuple):
    """What a solve's velocity takes from the coded features and the pitch alone, the same at every pass:
    offsets added to the head's output ``[B, 3F, T]`` and to the body's first activations ``[B, dim, T]``
    (each None when nothing adds to it)."""

    head: torch.Tensor | None
    body: torch.Tensor | None


class FramewiseBackbone(nn.Module):
    """v(x_t, Y, t) for complex ``[B, 1, F, T]`` features: a 1-D ConvNeXt over frames with a Wiener head.

    Input features per bin (sigma_y units): log-magnitudes of Y and of ``r = x_t - Y``, and ``r``'s
    in-phase and quadrature parts relative to Y's phase (``r * conj(Y) / |Y|``), so the body sees what the
    state has drifted to relative to the coded signal without having to track absolute phase. A pointwise
    projection to ``dim`` channels, ``num_blocks`` ConvNeXt blocks (each optionally with a dilated context
    branch), LayerNorm, and a pointwise projection to
    3 values per bin (log q, Re c, Im c) that :func:`wiener_velocity` turns into the velocity.

    With ``pitch_top_hz`` > 0 it also reads the input's F0 per frame (the pitch side channel,
    :mod:`flowdec_cli.pitch`) as a :func:`harmonic_template` of the bins up to ``pitch_top_hz`` (above it a
    small error of F0 moves the high harmonics by many bins), through two paths that start at zero, so a
    model grown from weights without them computes exactly what they did and a template of zeros (no pitch
    sent, or unvoiced) adds nothing: a 1x1 projection into the body's first activations (no bias) and a
    pair of weights per bin and head output added straight onto the head.
    """

    def __init__(self, n_freqs: int = 768, dim: int = 256, intermediate_dim: int = 768, num_blocks: int = 6,
                 kernel_size: int = 7, fourier_size: int = 64, fourier_scale: float = 16.0,
                 context_dilation: int = 0, spectral_channels: int = 0, hop_length: int = HOP_LENGTH,
                 pitch_top_hz: int = 0, sample_rate: int = 48000) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise InvalidValue(f"kernel_size must be odd, got {kernel_size}")
        self.n_freqs, self.dim = n_freqs, dim
        temb_dim = 4 * fourier_size
        self.time_projection = GaussianFourierProjection(fourier_size, fourier_scale)
        self.time_mlp = nn.Sequential(nn.Linear(2 * fourier_size, temb_dim), nn.SiLU(),
                                      nn.Linear(temb_dim, temb_dim), nn.SiLU())
        self.embed = nn.Conv1d(4 * n_freqs, dim, kernel_size=1)
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, intermediate_dim, kernel_size, temb_dim,
                                                  context_dilation=context_dilation)
                                    for _ in range(num_blocks))
        self.final_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, 3 * n_freqs)
        nn.init.zeros_(self.head.weight)  # start at q = 1, c = 0: "the residual is as strong as the noise"
        nn.init.zeros_(self.head.bias)
        self.spectral: SpectralBranch | None = None
        if spectral_channels > 0:
            self.spectral = SpectralBranch(hop_length, 2 * (n_freqs - 1), spectral_channels)
        self.pitch_top_hz = int(pitch_top_hz)
        self.pitch_embed: nn.Conv1d | None = None
        self.pitch_head: nn.Parameter | None = None
        if pitch_top_hz > 0:
            # the bins the template covers; not a buffer: a module-wide cast must not round the frequencies
            bin_hz = torch.arange(n_freqs, dtype=torch.float64) * (sample_rate / (2 * (n_freqs - 1)))
            self._pitch_bin_hz = bin_hz[bin_hz <= pitch_top_hz]
            k = len(self._pitch_bin_hz)
            self.pitch_embed = nn.Conv1d(2 * k, dim, 1, bias=False)
            nn.init.zeros_(self.pitch_embed.weight)
            self.pitch_head = nn.Parameter(torch.zeros(2, 3, k))  # (cos, sin) x (log q, Re c, Im c) x bins
        self.receptive_field = num_blocks * (kernel_size - 1) * max(1, context_dilation) + 1

    # The interface Postfilter drives (shared with NCSNpp) ------------------------------------------------

    channels_last = False
    fused = False
    downsampling_factor = 1

    def use_channels_last(self, enabled: bool = True) -> FramewiseBackbone:
        """No 2-D activations here: nothing to convert (kept for the common backbone interface)."""
        return self

    def set_fused(self, enabled: bool = True) -> FramewiseBackbone:
        """Nothing to fuse (kept for the common backbone interface)."""
        return self

    def set_compute_dtype(self, dtype: torch.dtype) -> FramewiseBackbone:
        """Run the body in ``dtype``; the time embedding and the velocity formula stay float32."""
        self.embed.to(dtype)
        self.blocks.to(dtype)
        self.final_norm.to(dtype)
        self.head.to(dtype)
        if self.spectral is not None:
            self.spectral.to(dtype)
        if self.pitch_embed is not None:
            self.pitch_embed.to(dtype)
        return self

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def activation_bytes(self, frames: int) -> int:
        """Rough peak memory of one pass over ``frames`` frames: the input features and the widest layer."""
        elem = torch.finfo(self.compute_dtype).bits // 8
        widest = max(4 * self.n_freqs, self.blocks[0].pwconv1.out_features if len(self.blocks) else 0)
        if self.spectral is not None:
            widest = max(widest, 2 * self.spectral.out.in_channels * self.n_freqs)
        return int(frames * (8 * self.n_freqs * 4 + 3 * widest * elem))

    def flops_per_frame(self, passes: int = 1) -> int:
        """Floating-point operations per frame (2 per multiply-add) of a solve with ``passes`` network passes,
        for speed estimates: the body runs at every pass, the spectral branch and the pitch paths once
        (:meth:`prepare`)."""
        macs = self.embed.in_channels * self.dim + self.head.in_features * self.head.out_features
        for b in self.blocks:
            taps = b.dwconv.kernel_size[0] * (1 if b.context is None else 2)
            macs += taps * b.dwconv.in_channels + 2 * b.pwconv1.in_features * b.pwconv1.out_features
        macs *= passes
        if self.spectral is not None:
            convs = [m for m in self.spectral.modules() if isinstance(m, nn.Conv2d)]
            macs += self.n_freqs * sum(m.weight[0].numel() * m.out_channels for m in convs)
        if self.pitch_embed is not None:  # once per solve, as the spectral branch
            macs += self.pitch_embed.in_channels * self.dim + 3 * self.pitch_embed.in_channels
        return 2 * macs

    @property
    def takes_pitch(self) -> bool:
        """Whether this backbone reads the input's F0 (``pitch_top_hz`` > 0)."""
        return self.pitch_embed is not None

    def prepare(self, cond: torch.Tensor, sigma_y: torch.Tensor,
                pitch: torch.Tensor | None = None) -> Conditioning | None:
        """What the velocity takes from the coded ``cond`` and the ``pitch`` alone, the same at every pass of a
        solve: the spectral branch's head offsets and the pitch paths' offsets (None when there are none).
        ``pitch`` is the F0 in Hz per frame ``[B, frames]`` (0: unvoiced), cut or zero-padded to ``cond``'s
        frames; it is ignored by a backbone that does not take it. Pass the result to :meth:`forward` as
        ``prepared``."""
        head = body = None
        if self.spectral is not None:
            inv = 1.0 / sigma_y.to(device=cond.device, dtype=torch.float32).reshape(-1, 1)
            head = self._spectral_offsets(cond.real[:, 0].float() * inv, cond.imag[:, 0].float() * inv)
        if pitch is not None and self.pitch_embed is not None and self.pitch_head is not None:
            frames = cond.shape[-1]
            f0 = torch.as_tensor(pitch).to(cond.device)
            f0 = F.pad(f0, (0, max(0, frames - f0.shape[-1])))[..., :frames]
            template = harmonic_template(f0, self._pitch_bin_hz.to(cond.device))  # [B, 2K, T]
            body = self.pitch_embed(template.to(self.pitch_embed.weight.dtype))
            k = template.shape[1] // 2
            w = self.pitch_head.float()
            low = (w[0][None, :, :, None] * template[:, None, :k] + w[1][None, :, :, None] * template[:, None, k:])
            added = F.pad(low, (0, 0, 0, self.n_freqs - k)).flatten(1, 2)  # [B, 3F, T], zero above the top bin
            head = added if head is None else head + added
        return None if head is None and body is None else Conditioning(head, body)

    def _spectral_offsets(self, y_re: torch.Tensor, y_im: torch.Tensor) -> torch.Tensor:
        """The spectral branch's head offsets for the coded features in sigma_y units (``[B, F, T]`` parts)."""
        assert self.spectral is not None
        return self.spectral(torch.complex(y_re, y_im), torch.sqrt(y_re * y_re + y_im * y_im)).float()

    def forward(self, x_t: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, sigma_y: torch.Tensor,
                real_fn: Callable[..., torch.Tensor] | None = None,
                prepared: Conditioning | None = None, pitch: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity (complex ``[B, 1, F, T]``) at flow time ``t`` for state ``x_t`` given the coded ``cond``.

        ``sigma_y`` is the postfilter's per-band (``[F, 1]``) or global noise scale. ``real_fn`` replaces
        :meth:`forward_real` (e.g. its ``torch.compile`` version). ``prepared`` is :meth:`prepare`'s result
        for this ``cond`` and ``pitch`` (computed here when None; training passes ``pitch`` instead).
        """
        if prepared is None and pitch is not None:
            prepared = self.prepare(cond, sigma_y, pitch)
        x = torch.cat([x_t.real, x_t.imag, cond.real, cond.imag], dim=1)
        t = torch.as_tensor(t, device=x.device).to(torch.float32).reshape(-1)
        scale = sigma_y.to(device=x.device, dtype=torch.float32).reshape(-1, 1)
        return (real_fn or self.forward_real)(x, t, scale, prepared)

    def forward_real(self, x: torch.Tensor, t: torch.Tensor, scale: torch.Tensor,
                     prepared: Conditioning | None = None) -> torch.Tensor:
        """``x`` = [Re x_t, Im x_t, Re Y, Im Y] as ``[B, 4, F, T]`` float, ``t`` [B], ``scale`` [F or 1, 1]."""
        inv = 1.0 / scale
        x = x.float()
        y_re, y_im = x[:, 2] * inv, x[:, 3] * inv
        r_re, r_im = x[:, 0] * inv - y_re, x[:, 1] * inv - y_im
        y_abs = torch.sqrt(y_re * y_re + y_im * y_im)
        r_abs = torch.sqrt(r_re * r_re + r_im * r_im)
        unit = 1.0 / (y_abs + _LOG_EPS)
        feats = torch.cat([torch.log(y_abs + _LOG_EPS), torch.log(r_abs + _LOG_EPS),
                           (r_re * y_re + r_im * y_im) * unit, (r_im * y_re - r_re * y_im) * unit], dim=1)
        temb = self.time_mlp(self.time_projection(t.float()))
        h = self.embed(feats.to(self.compute_dtype))
        if prepared is not None and prepared.body is not None:
            h = h + prepared.body.to(h.dtype)
        temb = temb.to(h.dtype)
        for block in self.blocks:
            h = block(h, temb)
        out = self.head(self.final_norm(h.transpose(1, 2))).float().transpose(1, 2)  # [B, 3F, T]
        if prepared is not None:
            if prepared.head is not None:
                out = out + prepared.head
        elif self.spectral is not None:
            out = out + self._spectral_offsets(y_re, y_im)
        n = self.n_freqs
        log_q, c_re, c_im = out[:, :n], out[:, n:2 * n], out[:, 2 * n:]
        r = torch.complex(r_re, r_im)
        Y = torch.complex(y_re, y_im)
        v = wiener_velocity(r, Y, t, log_q, torch.complex(c_re, c_im))
        return (v * scale)[:, None]
