"""Training losses: the NDAC generator's losses and the postfilter's joint flow-matching loss.

NDAC (no discriminators; see ``docs/training.md``):

* :class:`MultiScaleMelLoss`: DAC's mel loss. For each window length w in 32 ... 2048 (hop w/4, periodic
  Hann, centred STFT with reflect padding) and its mel count (5 ... 320, Slaney-scale triangles with
  Slaney area normalisation, 0 Hz to Nyquist: the filterbank DAC gets from librosa, computed here),
  ``L1(log10(clamp(mel_x, 1e-5) ** pow), log10(clamp(mel_y, 1e-5) ** pow))``, summed over the scales.
* :class:`MultiScaleCQTLoss`: a constant-Q magnitude loss at several frequency resolutions (our own
  transform; the paper's implementation is not public). For each bins-per-octave value b, the top octave is
  analysed at the full rate by a bank of b complex kernels (Hann-windowed complex exponentials of length
  Q * sr / f, Q = 1 / (2 ** (1/b) - 1), normalised to unit window sum) applied every ``hop`` samples; each
  lower octave reuses the same bank on the signal low-passed (49-tap Blackman-windowed sinc, cutoff a quarter
  of the current rate) and decimated by 2, with the hop halved, so every octave lands on the same frame grid.
  ``n_octaves`` octaves from ``fmin`` (9 from 27.5 Hz: up to 14.08 kHz), hop 256. The loss is the L1
  distance of log10 magnitudes clamped at 1e-5, summed over the resolutions.
* :func:`waveform_l1` (weight 50) and the RVQ's commitment and codebook losses (DAC's definitions, returned
  by the quantizer).
* :class:`CompressedComplexSTFTLoss` (ours, off by default): a phase-sensitive loss on the postfilter's
  feature map, ``|S|^alpha e^{i angle S}``, at several window lengths.

Postfilter: :func:`flow_matching_targets` and :func:`flow_matching_loss`, the official joint conditional flow
matching objective (section 5 of the research note).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..features import HOP_LENGTH, N_FFT
from .config import cqt_problem

__all__ = [
    "slaney_mel_filterbank",
    "MultiScaleMelLoss",
    "MultiScaleCQTLoss",
    "waveform_l1",
    "CompressedComplexSTFTLoss",
    "NDACLoss",
    "latent_residual",
    "flow_matching_targets",
    "with_coded_phase",
    "flow_matching_loss",
    "log_spectral_mse",
]


# --------------------------------------------------------------------------------------------------
# Mel filterbank (Slaney scale and normalisation)

_F_SP = 200.0 / 3.0  # Hz per mel below 1 kHz
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    lin = f / _F_SP
    log = _MIN_LOG_MEL + np.log(np.maximum(f, 1e-12) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(f >= _MIN_LOG_HZ, log, lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    lin = _F_SP * m
    log = _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL))
    return np.where(m >= _MIN_LOG_MEL, log, lin)


def slaney_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                          fmax: float | None = None) -> np.ndarray:
    """``[n_mels, n_fft // 2 + 1]`` triangular filters, Slaney mel scale, each scaled to unit area
    (``2 / (upper edge - lower edge)`` in Hz), evaluated at the FFT bin frequencies."""
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    hz = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(hz)
    ramps = hz[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (hz[2:] - hz[:-2]))[:, None]
    return weights.astype(np.float32)


def _periodic_hann(n: int) -> torch.Tensor:
    return torch.hann_window(n, periodic=True, dtype=torch.float32)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """[B, 1, L] or [B, L] -> [B, L] float32."""
    return x.reshape(-1, x.shape[-1]).float()


class MultiScaleMelLoss(nn.Module):
    """DAC's multi-scale mel loss (defaults: DAC 1.0.0's generator config)."""

    def __init__(self, sample_rate: int = 48000, windows: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048),
                 n_mels: Sequence[int] = (5, 10, 20, 40, 80, 160, 320), clamp: float = 1e-5,
                 mag_weight: float = 0.0, log_weight: float = 1.0, pow: float = 1.0) -> None:
        super().__init__()
        if len(windows) != len(n_mels):
            raise ValueError("windows and n_mels must have the same length")
        self.windows = [int(w) for w in windows]
        self.clamp, self.mag_weight, self.log_weight, self.pow = clamp, mag_weight, log_weight, pow
        for i, (w, m) in enumerate(zip(self.windows, n_mels)):
            self.register_buffer(f"window_{i}", _periodic_hann(w), persistent=False)
            self.register_buffer(f"fb_{i}", torch.from_numpy(slaney_mel_filterbank(sample_rate, w, int(m))),
                                 persistent=False)

    def mel(self, x: torch.Tensor, i: int) -> torch.Tensor:
        w = self.windows[i]
        x = _flat(x)
        if x.shape[-1] <= w // 2:  # reflect padding needs more samples than half a window
            x = F.pad(x, (0, w // 2 + 1 - x.shape[-1]))
        spec = torch.stft(x, w, hop_length=w // 4, win_length=w, window=getattr(self, f"window_{i}"),
                          center=True, pad_mode="reflect", return_complex=True)
        return torch.matmul(getattr(self, f"fb_{i}"), spec.abs())

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss of estimate ``x`` against reference ``y`` (both [B, 1, L])."""
        with torch.autocast(x.device.type, enabled=False):
            loss = x.new_zeros((), dtype=torch.float32)
            for i in range(len(self.windows)):
                mx, my = self.mel(x, i), self.mel(y, i)
                if self.log_weight:
                    lx = mx.clamp(min=self.clamp).pow(self.pow).log10()
                    ly = my.clamp(min=self.clamp).pow(self.pow).log10()
                    loss = loss + self.log_weight * F.l1_loss(lx, ly)
                if self.mag_weight:
                    loss = loss + self.mag_weight * F.l1_loss(mx, my)
            return loss


# --------------------------------------------------------------------------------------------------
# Constant-Q


def _halfband_lowpass(taps: int = 49) -> torch.Tensor:
    """Blackman-windowed sinc with cutoff at a quarter of the sample rate, unit DC gain: [1, 1, taps]."""
    n = np.arange(taps) - (taps - 1) / 2
    h = 0.5 * np.sinc(0.5 * n) * np.blackman(taps)
    h /= h.sum()
    return torch.from_numpy(h.astype(np.float32))[None, None]


class MultiScaleCQTLoss(nn.Module):
    """Log-magnitude L1 between constant-Q transforms at several bins-per-octave resolutions.

    See the module docstring for the transform. ``hop`` must be divisible by ``2 ** (n_octaves - 1)``.
    """

    def __init__(self, sample_rate: int = 48000, n_octaves: int = 9, fmin: float = 27.5, hop: int = 256,
                 bins_per_octave: Sequence[int] = (16, 32, 48, 64, 80), clamp: float = 1e-5) -> None:
        super().__init__()
        problem = cqt_problem(sample_rate, n_octaves, fmin, hop, bins_per_octave)
        if problem:
            raise ValueError(problem)
        self.n_octaves, self.hop, self.clamp = int(n_octaves), int(hop), float(clamp)
        self.bins_per_octave = [int(b) for b in bins_per_octave]
        self.register_buffer("lowpass", _halfband_lowpass(), persistent=False)
        f_top_octave = fmin * 2.0 ** (n_octaves - 1)  # lowest frequency of the top octave
        for i, b in enumerate(self.bins_per_octave):
            self.register_buffer(f"bank_{i}", self._bank(sample_rate, f_top_octave, b), persistent=False)

    @staticmethod
    def _bank(sr: int, f0: float, bins: int) -> torch.Tensor:
        """[2 * bins, 1, N] real kernels (real parts, then imaginary parts) of one octave at rate ``sr``."""
        q = 1.0 / (2.0 ** (1.0 / bins) - 1.0)
        freqs = f0 * 2.0 ** (np.arange(bins) / bins)
        lengths = np.ceil(q * sr / freqs).astype(int)
        lengths += 1 - lengths % 2  # odd: centred on a sample
        n_max = int(lengths.max())
        kernels = np.zeros((bins, n_max), np.complex128)
        for k, (f, n) in enumerate(zip(freqs, lengths)):
            t = np.arange(n) - (n - 1) // 2
            win = 0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(n) + 0.5) / n)  # Hann, no zero end points
            start = (n_max - n) // 2
            kernels[k, start:start + n] = win / win.sum() * np.exp(-2j * np.pi * f * t / sr)
        bank = np.concatenate([kernels.real, kernels.imag])[:, None, :]
        return torch.from_numpy(bank.astype(np.float32))

    def cqt(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Magnitudes ``[B, n_octaves * b, frames]`` (lowest bin first) at resolution ``i``."""
        bank = getattr(self, f"bank_{i}")
        bins = bank.shape[0] // 2
        pad = bank.shape[-1] // 2
        sig = _flat(x)[:, None]
        octaves = []
        for o in range(self.n_octaves):  # o = 0 is the top octave at the full rate
            out = F.conv1d(sig, bank, stride=self.hop >> o, padding=pad)
            octaves.append(torch.sqrt(out[:, :bins] ** 2 + out[:, bins:] ** 2 + 1e-20))
            if o + 1 < self.n_octaves:
                sig = F.conv1d(sig, self.lowpass, stride=2, padding=self.lowpass.shape[-1] // 2)
        frames = min(o.shape[-1] for o in octaves)
        return torch.cat([o[..., :frames] for o in reversed(octaves)], dim=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            loss = x.new_zeros((), dtype=torch.float32)
            for i in range(len(self.bins_per_octave)):
                lx = self.cqt(x, i).clamp(min=self.clamp).log10()
                ly = self.cqt(y, i).clamp(min=self.clamp).log10()
                loss = loss + F.l1_loss(lx, ly)
            return loss


def waveform_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(x.float(), y.float())


class _HannSTFTs(nn.Module):
    """STFTs at several window lengths (periodic Hann, hop w/4, centred, reflect padding) as real ``[..., 2]``
    tensors, for the losses that compare spectra: one window buffer per length, the transform in one place."""

    def __init__(self, windows: Sequence[int]) -> None:
        super().__init__()
        self.windows = [int(w) for w in windows]
        for w in self.windows:
            self.register_buffer(f"window_{w}", torch.hann_window(w, periodic=True), persistent=False)

    def stft(self, x: torch.Tensor, w: int) -> torch.Tensor:
        spec = torch.stft(x.reshape(-1, x.shape[-1]), w, w // 4, window=getattr(self, f"window_{w}"),
                          center=True, pad_mode="reflect", return_complex=True)
        return torch.view_as_real(spec)  # [..., 2]: real arithmetic keeps autograd simple


class CompressedComplexSTFTLoss(_HannSTFTs):
    """Mean squared distance of amplitude-compressed complex STFTs, summed over window lengths.

    ``S_c = |S|^alpha * S / |S|`` (periodic Hann, hop w/4, centred, reflect padding). With alpha < 1 quiet
    bands count nearly as much as loud ones, so unlike the waveform L1 it asks for the right phase across the
    spectrum; where the phase cannot be known it is minimised by a smaller magnitude, which the mel loss
    resists. ``eps`` keeps the gradient of the compression finite at silent bins.
    """

    def __init__(self, windows: Sequence[int] = (256, 512, 1024), alpha: float = 0.3, eps: float = 1e-5) -> None:
        super().__init__(windows)
        self.alpha, self.eps = float(alpha), float(eps)

    def compressed(self, x: torch.Tensor, w: int) -> torch.Tensor:
        spec = self.stft(x, w)  # the compression as a real gain
        mag2 = spec.pow(2).sum(-1, keepdim=True)
        return spec * (mag2 + self.eps).pow(0.5 * (self.alpha - 1.0))

    def forward(self, y_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        loss = y_hat.new_zeros((), dtype=torch.float32)
        for w in self.windows:
            d = self.compressed(y_hat.float(), w) - self.compressed(x.float(), w)
            loss = loss + d.pow(2).sum(-1).mean()
        return loss


class SpectralTransportLoss(_HannSTFTs):
    """Earth mover's distance between magnitude spectra along frequency, frame by frame, plus their log level.

    Per frame, the L1 distance between the cumulative sums of the two magnitude spectra, each normalised to
    sum 1 (where it is not near silence), in bins of the 2,048-point window (a 10 Hz shift costs the same in
    every window), plus the L1 distance of the log total magnitudes. Moving a partial towards its place
    lowers it step by step, where a bin-wise magnitude loss sees a partial one bin off as wrong as one an
    octave off and scores silence better than either (docs/models.md, "Why the harmonics stick"); the level
    term keeps silence costly.

    A frame's spectral shape counts by the reference's level there (``m / (m + floor)``, the floor 1 % of
    the item's mean frame level plus about the level of a -60 dBFS sine): the shape of a near-silent frame
    (padding, a fade, a pause) is noise, and normalising it would give it the weight, and the gradient, of a
    loud one; the normalisation and the level term are floored alike, so their gradients stay bounded near
    silence. Magnitudes are ``sqrt(|S|^2 + delta)``: finite gradients where a bin is empty.
    """

    def __init__(self, windows: Sequence[int] = (2048, 8192), delta: float = 1e-10) -> None:
        super().__init__(windows)
        self.delta = float(delta)

    def _magnitude(self, v: torch.Tensor, w: int) -> torch.Tensor:
        return (self.stft(v.float(), w).pow(2).sum(-1) + self.delta).sqrt()

    def forward(self, y_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        loss = y_hat.new_zeros((), dtype=torch.float32)
        for w in self.windows:
            a, b = self._magnitude(y_hat, w), self._magnitude(x, w)  # [items, bins, frames]
            mass_a, mass_b = a.sum(-2), b.sum(-2)
            quiet = 1e-3 * w  # about the frame level of a -60 dBFS sine at this window
            # each spectrum over its level plus ``quiet``: sums to 1 where loud, less where quiet (so a too
            # quiet output still falls short at the top), and its gradient stays below 1 / quiet
            gap = (torch.cumsum(a / (mass_a + quiet).unsqueeze(-2), -2)
                   - torch.cumsum(b / (mass_b + quiet).unsqueeze(-2), -2))
            floor = 0.01 * mass_b.mean(-1, keepdim=True) + quiet
            weight = (mass_b / (mass_b + floor)).detach()
            shape = (gap.abs().sum(-2) * weight).mean()
            level = (torch.log(mass_a + quiet) - torch.log(mass_b + quiet)).abs().mean()
            loss = loss + shape * (2048 / w) + level
        return loss


class NDACLoss(nn.Module):
    """Weighted sum of the NDAC losses; returns ``(total, {name: value})``.

    ``loss_config`` is a :class:`~flowdec_cli.training.config.NDACLossConfig`.
    """

    def __init__(self, loss_config, sample_rate: int = 48000) -> None:
        super().__init__()
        c = loss_config
        self.weights = {"mel": c.mel_weight, "cqt": c.cqt_weight, "waveform": c.waveform_weight,
                        "commitment": c.commitment_weight, "codebook": c.codebook_weight,
                        "latent": c.latent_weight, "complex_stft": c.complex_stft_weight,
                        "transport": c.transport_weight}
        self.mel = MultiScaleMelLoss(sample_rate, c.mel_windows, c.mel_bins, c.mel_clamp, c.mel_mag_weight,
                                     c.mel_log_weight, c.mel_pow) if c.mel_weight else None
        self.cqt = MultiScaleCQTLoss(sample_rate, c.cqt_octaves, c.cqt_fmin, c.cqt_hop, c.cqt_bins_per_octave,
                                     c.cqt_clamp) if c.cqt_weight else None
        self.complex_stft = CompressedComplexSTFTLoss(c.complex_stft_windows, c.complex_stft_alpha) \
            if c.complex_stft_weight else None
        self.transport = SpectralTransportLoss(c.transport_windows) if c.transport_weight else None

    def forward(self, y_hat: torch.Tensor, x: torch.Tensor, commitment: torch.Tensor,
                codebook: torch.Tensor, latent: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``latent``: :func:`latent_residual` of the batch, counted (and reported) when its weight is > 0."""
        y_hat = y_hat.float()
        x = x.float()
        parts: dict[str, torch.Tensor] = {}
        if self.mel is not None:
            parts["mel"] = self.mel(y_hat, x)
        if self.cqt is not None:
            parts["cqt"] = self.cqt(y_hat, x)
        parts["waveform"] = waveform_l1(y_hat, x)
        if self.complex_stft is not None:
            parts["complex_stft"] = self.complex_stft(y_hat, x)
        if self.transport is not None:
            parts["transport"] = self.transport(y_hat, x)
        parts["commitment"] = commitment.float()
        parts["codebook"] = codebook.float()
        if self.weights["latent"] and latent is not None:
            parts["latent"] = latent.float()
        total = sum(self.weights[k] * v for k, v in parts.items())
        return total, parts  # type: ignore[return-value]


def latent_residual(z: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """Squared error of the quantised latent ``z_q`` against the encoder latent ``z`` (both [B,D,T]),
    relative to the larger of the two energies. The target is detached: the codebooks and their projections
    learn to approximate the latent, while the encoder still gets the gradient through the straight-through
    path, so the latent cannot shrink to make the error small.

    The larger energy, not the latent's alone: a codec from new weights starts with a latent 10^5 times
    quieter than its codebooks' sum (2e-5 against 2.8 for the default config), and relative to the latent
    the term started near 10^5, took the whole clipped gradient, and the codec never learned to sound
    (docs/training.md, "Latent residual"). Once the codebooks approximate the latent the quantised energy
    is the smaller one, so a trained codec's loss is the same as before."""
    target = z.detach().float()
    error = z_q.float() - target
    scale = torch.maximum(target.pow(2).mean(), z_q.detach().float().pow(2).mean())
    return error.pow(2).mean() / scale.clamp(min=1e-8)


# --------------------------------------------------------------------------------------------------
# Flow matching


def flow_matching_targets(X: torch.Tensor, Y: torch.Tensor, sigma_y: torch.Tensor, t: torch.Tensor,
                          eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_t, u)`` of the joint conditional flow: x0 = Y + sigma_y * eps, x_t = t X + (1 - t) x0,
    u = X - x0 = X - Y - sigma_y * eps.

    X, Y, eps: complex ``[B, 1, F, T]``; sigma_y: 0-dim or ``[F, 1]`` (float64 products are rounded once to
    complex64, as officially); t: ``[B]`` real.
    """
    x0 = Y + (sigma_y.to(Y.device) * eps).to(Y.dtype)
    tb = t.to(X.real.dtype).reshape(-1, 1, 1, 1)
    return tb * X + (1 - tb) * x0, X - x0


def with_coded_phase(X: torch.Tensor, Y: torch.Tensor, floor: float = 1e-6) -> torch.Tensor:
    """``|X| Y / |Y|``: the clean magnitudes with the coded phase (``objective.target_phase = "coded"``).

    Bins where ``|Y| <= floor`` have no phase to lend and keep X.
    """
    mag_y = Y.abs()
    return torch.where(mag_y > floor, X.abs() * (Y / mag_y.clamp(min=floor)), X)


def flow_matching_loss(v: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, per_sample)``: per-sample mean of |v - u|^2 over all elements; the loss is the batch mean
    over the samples whose value is finite (NaN samples are dropped, as officially)."""
    d = torch.view_as_real((v - u).to(torch.complex64))
    per_sample = d.pow(2).sum(-1).flatten(1).mean(1)
    keep = torch.isfinite(per_sample)
    # no host synchronisation: NaN samples contribute zero (and a zero gradient) and are not counted
    kept = torch.where(keep, per_sample, torch.zeros_like(per_sample))
    return kept.sum() / keep.sum().clamp(min=1), per_sample


def log_spectral_mse(ref: torch.Tensor, est: torch.Tensor, n_fft: int = N_FFT, hop: int = HOP_LENGTH,
                     eps: float = 1e-8) -> float:
    """Mean over STFT bins of (log10(|S_ref|^2 + eps) - log10(|S_est|^2 + eps))^2 (periodic Hann,
    centred): the postfilter's validation "log-spectral MSE"; 0 for identical signals."""
    win = torch.hann_window(n_fft, periodic=True, dtype=torch.float32, device=ref.device)
    a = ref.reshape(-1, ref.shape[-1]).float()
    b = est.reshape(-1, est.shape[-1]).float()
    n = min(a.shape[-1], b.shape[-1])
    a, b = a[..., :n], b[..., :n]
    if n <= n_fft // 2:
        pad = n_fft // 2 + 1 - n
        a, b = F.pad(a, (0, pad)), F.pad(b, (0, pad))
    sa = torch.stft(a, n_fft, hop, window=win, center=True, return_complex=True).abs().pow(2)
    sb = torch.stft(b, n_fft, hop, window=win, center=True, return_complex=True).abs().pow(2)
    return float(((sa + eps).log10() - (sb + eps).log10()).pow(2).mean())
