"""Objective audio quality metrics: a reference signal against a degraded one.

Always available (numpy only):

* :func:`si_sdr` - scale-invariant signal-to-distortion ratio, dB, higher is better.
* :func:`mel_distance` - multi-resolution log-mel L1 distance, lower is better.
* :func:`log_spectral_distance` - log-spectral distance with a floor, dB, lower is better.
* :func:`high_band_energy_ratio` - energy above 8 kHz relative to the reference; 1 is right.

Optional (the ``metrics`` extra: ``pip install 'flowdec-cli[metrics]'``); they raise
:class:`MetricUnavailable` when their package is missing:

* :func:`visqol` - ViSQOL v3 audio mode MOS-LQO at 48 kHz (``visqol-python``), 1 to 5.
* :func:`pesq_wb` - wide-band PESQ MOS-LQO at 16 kHz (``pesq``), 1 to 4.64.
* :func:`stoi` / :func:`estoi` - (extended) short-time objective intelligibility (``pystoi``).

Conventions shared by every metric:

* Signals are 1-D ``[frames]`` or 2-D ``[frames, channels]`` arrays (any float or int dtype;
  computed in float64).
* Alignment: both signals are trimmed to the shorter length; nothing is shifted. A delayed
  copy is therefore scored as a different signal (see :func:`si_sdr`).
* Multi-channel: the metric is computed per channel and averaged over the channels
  (channels where it is undefined, e.g. a silent reference channel for SI-SDR, are left out
  of the average). Both signals must have the same channel count.
* Both signals must be at the same sample rate; :func:`compute_metrics` resamples the
  degraded signal to the reference's rate (soxr, high quality) before scoring.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..exceptions import FlowdecError
from ..numeric import is_whole

__all__ = [
    "MetricError",
    "MetricUnavailable",
    "MetricSpec",
    "METRICS",
    "DEFAULT_METRICS",
    "OPTIONAL_METRICS",
    "MEL_RESOLUTIONS",
    "LSD_FLOOR_DB",
    "si_sdr",
    "mel_distance",
    "log_spectral_distance",
    "high_band_energy_ratio",
    "phase_coherence",
    "visqol",
    "pesq_wb",
    "stoi",
    "estoi",
    "metric_available",
    "align",
    "resample",
    "compute_metrics",
]

METRICS_EXTRA_HINT = "pip install 'flowdec-cli[metrics]'"  # quoted: zsh reads [metrics] as a pattern


MAX_SAMPLE_RATE = 10_000_000  # far above any audio: a bound on a typo, not a format rule


class MetricError(FlowdecError, ValueError):
    """A metric cannot score these signals (silence, too short, mismatched channels...)."""


class MetricUnavailable(FlowdecError, RuntimeError):
    """An optional metric's package is not installed."""

    def __init__(self, metric: str, package: str):
        self.metric = metric
        self.package = package
        super().__init__(
            f"metric '{metric}' needs the '{package}' package, which is not installed; "
            f"install the metrics extra: {METRICS_EXTRA_HINT}"
        )


# ---------------------------------------------------------------------------------------
# shape helpers


def _as_2d(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise MetricError(f"{what} must be [frames] or [frames, channels], got shape {x.shape}")
    return x.astype(np.float64, copy=False)


def _scorable(x: np.ndarray, what: str) -> np.ndarray:
    """``x`` as :func:`compute_metrics` takes it, refused where a score would be silently wrong: integer
    samples (int16 scored 32,768 times too loud), a channels-first array (scored as thousands of channels of
    a few frames), NaN or infinities (every metric NaN). The metric functions themselves keep returning NaN
    for such signals: training's validation records it and goes on."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):  # before _as_2d, which makes every array float64
        raise MetricError(f"{what} must hold float samples of full scale 1, got {x.dtype}"
                          + (" (divide integer PCM by its full scale, e.g. 32768 for int16)"
                             if np.issubdtype(x.dtype, np.integer) else ""))
    x = _as_2d(x, what)
    if 0 < x.shape[0] < x.shape[1]:
        raise MetricError(f"{what} has more channels than frames (shape {x.shape}): arrays are [frames, channels]; "
                          "transpose a channels-first one")
    if not np.isfinite(x).all():
        raise MetricError(f"{what} holds NaN or infinite samples")
    return x


def align(ref: np.ndarray, deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(ref, deg)`` as float64 ``[frames, channels]``, trimmed to the shorter length.

    Raises :class:`MetricError` when the channel counts differ or a signal is empty.
    """
    r = _as_2d(ref, "reference")
    d = _as_2d(deg, "degraded signal")
    if r.shape[1] != d.shape[1]:
        raise MetricError(
            f"channel counts differ: reference has {r.shape[1]}, degraded has {d.shape[1]}"
        )
    n = min(len(r), len(d))
    if n == 0:
        raise MetricError("empty signal (0 frames)")
    return r[:n], d[:n]


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample ``[frames]`` or ``[frames, channels]`` audio with soxr (HQ); float64 out."""
    x = np.asarray(x, dtype=np.float64)
    if int(sr_in) == int(sr_out):
        return x
    import soxr

    return np.asarray(soxr.resample(x, int(sr_in), int(sr_out), quality="HQ"), dtype=np.float64)


def _channel_mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


# ---------------------------------------------------------------------------------------
# SI-SDR

_SI_SDR_EPS = 1e-12  # relative to the degraded signal's energy: caps SI-SDR at about +120 dB
#: what a silent (or constant) degraded channel scores: the cap's mirror image. The formula gives it 0/0,
#: which eps turns into 0 dB, better than any real codec output (those score around -30 to +20 dB).
SI_SDR_SILENT_DB = 10.0 * math.log10(_SI_SDR_EPS)


def _require_sound(ref: np.ndarray) -> None:
    """A reference without a single non-zero sample defines no score: say so rather than give NaN unexplained."""
    if not np.any(ref):
        raise MetricError("the reference is silent")


def _centred(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """``x`` less its mean, and whether nothing is left of it: silent, or constant (whose mean's removal
    leaves rounding, however loud the constant)."""
    raw = float(np.dot(x, x))
    x = x - x.mean()
    energy = float(np.dot(x, x))
    return x, energy == 0.0 or energy <= 1e-20 * raw


def _si_sdr_1d(r: np.ndarray, d: np.ndarray) -> float:
    r, flat_r = _centred(r)
    d, flat_d = _centred(d)
    if flat_r:
        return float("nan")
    if flat_d:
        return SI_SDR_SILENT_DB
    energy, d_energy = float(np.dot(r, r)), float(np.dot(d, d))
    alpha = float(np.dot(d, r)) / energy
    target = alpha * r
    noise = d - target
    eps = _SI_SDR_EPS * d_energy  # scales with ``deg``, so a gain on it changes nothing, cap included
    return 10.0 * math.log10((float(np.dot(target, target)) + eps) / (float(np.dot(noise, noise)) + eps))


def si_sdr(ref: np.ndarray, deg: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (higher is better).

    Per channel, after trimming to the shorter length and removing each signal's mean::

        alpha  = <deg, ref> / <ref, ref>
        target = alpha * ref
        noise  = deg - target
        SI-SDR = 10 * log10( (|target|^2 + eps) / (|noise|^2 + eps) ),  eps = 1e-12 * |deg|^2

    ``eps`` only matters for (nearly) identical signals: identical signals score about
    +120 dB instead of infinity. A silent (or constant) degraded channel, which the formula leaves at
    0/0, scores -120 dB, the floor matching that cap. Multiplying ``deg`` by any non-zero constant (even a negative
    one) leaves the value unchanged. If ``deg = ref + n`` with ``n`` orthogonal to ``ref``, the
    value equals the SNR ``10 log10(|ref|^2 / |n|^2)``.

    There is no time alignment: a copy delayed by ``k`` samples is scored through its
    correlation with the reference. For a sinusoid of angular frequency ``w`` (radians per
    sample) over whole periods, a delay of ``k`` samples gives ``20 log10 |cot(w k)|``; for
    broadband signals the value drops far below 0 dB.

    A reference channel that is silent or constant (nothing left once its mean is removed, as for a
    1-sample file) has no defined SI-SDR (NaN); the channel average skips it, and a reference like that in
    every channel is a :class:`MetricError`.
    """
    r, d = align(ref, deg)
    _require_sound(r)
    if all(_centred(r[:, c])[1] for c in range(r.shape[1])):  # (NaN in ``deg`` is not refused but scored
        raise MetricError("the reference is constant (nothing is left once its mean is removed)")  # NaN)
    return _channel_mean([_si_sdr_1d(r[:, c], d[:, c]) for c in range(r.shape[1])])


# ---------------------------------------------------------------------------------------
# STFT and mel filterbank (own implementation, no librosa)


def _stft(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Complex STFT of a 1-D signal: periodic Hann window of ``n_fft``, ``hop`` samples, centred
    frames (``n_fft // 2`` zeros padded on both sides), divided by the window's sum so that a
    sine of amplitude ``A`` peaks at ``A / 2`` whatever ``n_fft``.
    Returns ``[frames, n_fft // 2 + 1]``."""
    pad = n_fft // 2
    xp = np.pad(x, (pad, pad))
    if len(xp) < n_fft:
        xp = np.pad(xp, (0, n_fft - len(xp)))
    n_frames = 1 + (len(xp) - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(xp, n_fft)[::hop][:n_frames]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    return np.fft.rfft(frames * window, axis=-1) / window.sum()


def _stft_mag(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """``|_stft(x)|``: ``[frames, n_fft // 2 + 1]``."""
    return np.abs(_stft(x, n_fft, hop))


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


_MEL_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def mel_filterbank(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular mel filterbank ``[bands, n_fft // 2 + 1]``: ``n_mels`` rows, less any that cover no bin.

    HTK mel scale (``2595 log10(1 + f / 700)``), ``n_mels`` triangles with centres equally
    spaced in mel between 0 Hz and ``sr / 2``, each spanning its two neighbours' centres,
    evaluated at the FFT bin frequencies and normalised so each row sums to 1: a band's value
    is the triangle-weighted *average* of the bin magnitudes in it (independent of bandwidth
    and of ``n_fft``). A triangle narrower than the bin spacing (the lowest ones at 88.2 kHz and
    above for the :data:`MEL_RESOLUTIONS`; none at 16 to 48 kHz) is dropped: left in, it would be a band
    where every signal scores 0, pulling a high-rate file's mel distance towards 0.
    """
    key = (int(sr), int(n_fft), int(n_mels))
    fb = _MEL_CACHE.get(key)
    if fb is None:
        freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
        edges = _mel_to_hz(np.linspace(0.0, _hz_to_mel(sr / 2.0), n_mels + 2))
        lo, centre, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
        rising = (freqs[None, :] - lo) / (centre - lo)
        falling = (hi - freqs[None, :]) / (hi - centre)
        fb = np.maximum(0.0, np.minimum(rising, falling))
        sums = fb.sum(axis=1, keepdims=True)
        covers_a_bin = sums[:, 0] > 0
        fb = fb[covers_a_bin] / sums[covers_a_bin]
        _MEL_CACHE[key] = fb
    return fb


# ---------------------------------------------------------------------------------------
# multi-resolution log-mel distance

#: (n_fft = window length, hop, n_mels) of each resolution of :func:`mel_distance`.
MEL_RESOLUTIONS: tuple[tuple[int, int, int], ...] = (
    (512, 128, 40),
    (1024, 256, 80),
    (2048, 512, 160),
    (4096, 1024, 160),
)
MEL_FLOOR = 1e-5


def mel_distance(ref: np.ndarray, deg: np.ndarray, sr: int) -> float:
    """Multi-resolution log-mel L1 distance (lower is better; 0 for identical signals).

    For each resolution ``(n_fft, hop, n_mels)`` in :data:`MEL_RESOLUTIONS`
    (512/128/40, 1024/256/80, 2048/512/160, 4096/1024/160):

    1. magnitude STFT (periodic Hann window of ``n_fft`` samples, hop ``hop``, centred frames
       with zero padding, divided by the window sum: a sine of amplitude A peaks at A/2),
    2. mel magnitudes ``M = |STFT| @ fb.T`` with :func:`mel_filterbank` (0 Hz to ``sr / 2``,
       each band the weighted average magnitude of its bins),
    3. ``mean(|log10(max(M_ref, 1e-5)) - log10(max(M_deg, 1e-5))|)`` over frames and bands.

    The result is the mean over the four resolutions, in log10 units (1.0 = a factor of 10
    in magnitude, i.e. 20 dB, on average). Signals are on their own scale (no gain
    normalisation; full scale is 1.0), so the floor 1e-5 sits about 94 dB below a full-scale
    sine's peak.
    """
    r, d = align(ref, deg)
    values = []
    for c in range(r.shape[1]):
        per_res = []
        for n_fft, hop, n_mels in MEL_RESOLUTIONS:
            fb = mel_filterbank(sr, n_fft, n_mels)
            mr = _stft_mag(r[:, c], n_fft, hop) @ fb.T
            md = _stft_mag(d[:, c], n_fft, hop) @ fb.T
            diff = np.log10(np.maximum(mr, MEL_FLOOR)) - np.log10(np.maximum(md, MEL_FLOOR))
            per_res.append(float(np.mean(np.abs(diff))))
        values.append(float(np.mean(per_res)))
    return _channel_mean(values)


# ---------------------------------------------------------------------------------------
# high-band energy

HIGH_BAND_HZ = 8000.0


def high_band_energy_ratio(ref: np.ndarray, deg: np.ndarray, sr: int, above_hz: float = HIGH_BAND_HZ) -> float:
    """Energy of ``deg`` above ``above_hz`` divided by the reference's (1.0 = the same; no unit).

    Codecs trained without adversarial losses tend to lose the top octaves (ratio well below 1), and a
    badly trained generative postfilter tends to fill them with noise (well above 1); neither shows in a
    waveform metric. Computed from 2048-point Hann STFTs (hop 512) summed over frames and channels, over
    the bins strictly above ``above_hz``.

    A reference whose energy there is more than 60 dB below its whole energy has no high band to compare
    with (audio from a 16 kHz source, a filter's leakage): the ratio would be noise over almost nothing,
    thousands for a faithful copy, so it is a :class:`MetricError` rather than a score.
    """
    r, d = align(ref, deg)
    n_fft = 2048
    first = int(math.floor(above_hz * n_fft / sr)) + 1  # a bin at exactly ``above_hz`` is not above it
    if first > n_fft // 2:
        raise MetricError(f"{sr} Hz audio has no band above {above_hz:g} Hz")
    whole = [_stft_mag(r[:, c], n_fft, 512) ** 2 for c in range(r.shape[1])]
    er = sum(float(np.sum(p[:, first:])) for p in whole)
    ed = sum(float(np.sum(_stft_mag(d[:, c], n_fft, 512)[:, first:] ** 2)) for c in range(d.shape[1]))
    if er <= 1e-6 * sum(float(np.sum(p)) for p in whole) or er <= 1e-20:
        raise MetricError(f"the reference has (almost) no energy above {above_hz:g} Hz (more than 60 dB below "
                          "its whole)")
    return ed / er


COHERENCE_BAND_HZ = (500.0, 4000.0)


def phase_coherence(ref: np.ndarray, deg: np.ndarray, sr: int,
                    band_hz: tuple[float, float] = COHERENCE_BAND_HZ) -> float:
    """How much of ``deg`` is phase-locked to the reference in a band: ``|sum X conj(D)| /
    sqrt(sum |X|^2 sum |D|^2)`` over the band's STFT bins and frames (0 to 1; no unit).

    1 means the same waveform up to one complex gain (a scale and one phase rotation of the whole band); 0
    means no fixed phase relation, as for a vocoder that gets
    the spectrum right and invents the phase. Mel and ViSQOL-type scores cannot tell these apart; a
    postfilter that refines its input in the complex STFT domain (FlowDec's) depends on the difference. A
    delay rotates the phase across the band and lowers the value too, so compare time-aligned signals (a
    codec's output is). Computed from 2048-point Hann STFTs (hop 512), per channel and averaged, as every
    metric here: a channel whose reference is silent in the band is left out, and a decoded channel silent
    there while its reference is not scores 0 (nothing of it is locked to the reference).
    """
    r, d = align(ref, deg)
    n_fft = 2048
    if band_hz[1] > sr / 2:  # a band cut at Nyquist would score another band, not comparable across files
        raise MetricError(f"{sr} Hz audio does not reach {band_hz[1]:g} Hz (the band is {band_hz[0]:g} to "
                          f"{band_hz[1]:g} Hz)")
    lo, hi = int(math.ceil(band_hz[0] * n_fft / sr)), int(math.floor(band_hz[1] * n_fft / sr)) + 1
    if lo >= hi:  # a band narrower than a bin, between two of them
        raise MetricError(f"no STFT bin lies from {band_hz[0]:g} to {band_hz[1]:g} Hz at {sr} Hz")
    values, silent = [], []
    for c in range(r.shape[1]):
        sr_c, sd_c = _stft(r[:, c], n_fft, 512)[:, lo:hi], _stft(d[:, c], n_fft, 512)[:, lo:hi]
        er, ed = float(np.sum(np.abs(sr_c) ** 2)), float(np.sum(np.abs(sd_c) ** 2))
        silent.append(er <= 1e-20)
        if silent[-1]:
            values.append(float("nan"))
        elif ed <= 1e-20:
            values.append(0.0)
        else:  # (NaN in ``deg`` gives NaN, as si_sdr's: a trainer's validation records it)
            values.append(abs(complex(np.sum(sr_c * np.conj(sd_c)))) / math.sqrt(er * ed))
    if all(silent):
        raise MetricError(f"the reference is silent from {band_hz[0]:g} to {band_hz[1]:g} Hz")
    return _channel_mean(values)


# ---------------------------------------------------------------------------------------
# log-spectral distance

LSD_N_FFT = 2048
LSD_HOP = 512
#: The floor of :func:`log_spectral_distance`, in dB below the reference's maximum bin power.
LSD_FLOOR_DB = 80.0


def log_spectral_distance(
    ref: np.ndarray, deg: np.ndarray, sr: int, floor_db: float = LSD_FLOOR_DB
) -> float:
    """Log-spectral distance in dB (lower is better; 0 for identical signals).

    Per channel: power spectrogram ``P = |STFT|^2`` (periodic Hann window of 2048 samples,
    hop 512, centred frames), levels ``L = 10 log10(max(P, floor))`` where
    ``floor = max(P_ref) * 10^(-floor_db / 10)`` (default 80 dB below the loudest bin of the
    reference channel, the same floor for both signals), then::

        LSD = mean over frames of sqrt( mean over bins of (L_ref - L_deg)^2 )

    The floor keeps empty bands (e.g. above a codec's cut-off, or digital silence) from
    dominating: a band where both signals are more than ``floor_db`` below the reference's
    peak contributes 0, and one that is missing from the degraded signal contributes at most
    ``floor_db``. ``sr`` does not change the computation (kept for a uniform signature).
    A silent reference channel scores NaN (no floor can be set) and is left out; a reference silent in
    every channel is a :class:`MetricError`.
    """
    del sr
    r, d = align(ref, deg)
    _require_sound(r)
    values = []
    for c in range(r.shape[1]):
        pr = _stft_mag(r[:, c], LSD_N_FFT, LSD_HOP) ** 2
        pd = _stft_mag(d[:, c], LSD_N_FFT, LSD_HOP) ** 2
        peak = float(pr.max())
        if peak <= 0.0:
            values.append(float("nan"))
            continue
        floor = peak * 10.0 ** (-floor_db / 10.0)
        lr = 10.0 * np.log10(np.maximum(pr, floor))
        ld = 10.0 * np.log10(np.maximum(pd, floor))
        values.append(float(np.mean(np.sqrt(np.mean((lr - ld) ** 2, axis=-1)))))
    return _channel_mean(values)


# ---------------------------------------------------------------------------------------
# optional metrics


def _import(metric: str, module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MetricUnavailable(metric, package) from exc


_VISQOL_API = None


def visqol(ref: np.ndarray, deg: np.ndarray, sr: int) -> float:
    """ViSQOL v3 MOS-LQO, audio mode (1 to 5, higher is better), via ``visqol-python``.

    Both signals are resampled to 48 kHz (the rate the audio-mode SVR model was trained
    for) and scored per channel with ``VisqolApi.measure_from_arrays`` (bundled
    ``libsvm_nu_svr_model.txt``, default search window 60, ViSQOL's own global alignment).
    Identical 48 kHz signals score about 4.73. Slow: about 2 s per 10 s channel.
    """
    api_mod = _import("visqol", "visqol.api", "visqol-python")
    global _VISQOL_API
    if _VISQOL_API is None:
        api = api_mod.VisqolApi()
        api.create(mode="audio")
        _VISQOL_API = api
    r, d = align(ref, deg)
    r, d = resample(r, sr, 48000), resample(d, sr, 48000)

    def channel(rc: np.ndarray, dc: np.ndarray) -> float:
        if not np.any(dc):  # the package scales by a zero level: NaN and a RuntimeWarning
            raise MetricError("the degraded signal is silent")
        try:
            res = _VISQOL_API.measure_from_arrays(np.ascontiguousarray(rc), np.ascontiguousarray(dc), 48000)
        except Exception as exc:  # the package's own errors: report them as unscorable
            raise MetricError(f"visqol failed: {exc}") from exc
        return float(res.moslqo)

    # a silent reference channel: ViSQOL scores any signal against silence as a perfect copy (4.73)
    return _sounding_channels(r, d, channel)


def _sounding_channels(r: np.ndarray, d: np.ndarray, channel: Callable[[np.ndarray, np.ndarray], float]) -> float:
    """A packaged metric's channel mean: ``channel(ref, deg)`` for each channel whose reference sounds; the
    silent ones are left out (the packages score them as perfect, or fail), as every metric here leaves out
    the channels where it is undefined; silent in all of them, no score."""
    out = [channel(r[:, c], d[:, c]) if np.any(r[:, c]) else float("nan") for c in range(r.shape[1])]
    if out and all(math.isnan(v) for v in out):
        raise MetricError("the reference is silent")
    return _channel_mean(out)


def _plain(exc: Exception) -> str:
    """An exception's message as text (the pesq package raises with bytes: b'No utterances detected')."""
    if len(exc.args) == 1 and isinstance(exc.args[0], bytes):
        return exc.args[0].decode("utf-8", "replace")
    return str(exc)


_PESQ_MIN_SECONDS = 0.25  # the pesq package refuses shorter buffers


def _check_long_enough(frames: int, sr: int, seconds: float) -> None:
    if frames < seconds * sr:
        raise MetricError(f"{frames / sr:.3g} s ({frames} samples at {sr} Hz) is too short to score "
                          f"(at least {seconds:g} s)")


def pesq_wb(ref: np.ndarray, deg: np.ndarray, sr: int) -> float:
    """Wide-band PESQ (ITU-T P.862.2) MOS-LQO (about 1 to 4.64, higher is better).

    Both signals are resampled to 16 kHz with soxr (the ``pesq`` package only accepts 8 and
    16 kHz) and scored per channel with ``pesq.pesq(16000, ref, deg, "wb")``. Meant for
    speech; signals without detectable speech raise :class:`MetricError`.
    """
    mod = _import("pesq", "pesq", "pesq")
    r, d = align(ref, deg)
    _check_long_enough(r.shape[0], sr, _PESQ_MIN_SECONDS)  # before resampling, which leaves 1 sample none
    r, d = resample(r, sr, 16000), resample(d, sr, 16000)

    def channel(rc: np.ndarray, dc: np.ndarray) -> float:
        if not np.any(dc):  # the package: "cannot convert float NaN to integer"
            raise MetricError("the degraded signal is silent")
        try:
            with warnings.catch_warnings():  # silence divides by a zero peak; its own error says why
                warnings.simplefilter("ignore", RuntimeWarning)
                return float(mod.pesq(16000, rc, dc, "wb"))
        except Exception as exc:
            raise MetricError(f"pesq failed: {_plain(exc)}") from exc

    return _sounding_channels(r, d, channel)  # (a silent reference channel: the package's "No utterances")


_STOI_MIN_SECONDS = 0.4  # pystoi's 30 frames of 256 samples at half overlap, at 10 kHz


def _stoi(ref, deg, sr, extended: bool, name: str) -> float:
    """pystoi scores a silent or too short reference 1e-5 with a warning, or fails deep inside (an axis
    out of bounds): neither is a score, so both are named as what they are."""
    mod = _import(name, "pystoi", "pystoi")
    r, d = align(ref, deg)
    _check_long_enough(r.shape[0], sr, _STOI_MIN_SECONDS)

    def channel(rc: np.ndarray, dc: np.ndarray) -> float:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = float(mod.stoi(rc, dc, int(sr), extended=extended))
        except Exception as exc:
            raise MetricError(f"{name} failed: {exc}") from exc
        if value == 1e-5:  # pystoi's answer when too few frames are above its silence threshold
            raise MetricError("too little of the reference is above silence to score")
        return value

    return _sounding_channels(r, d, channel)


def stoi(ref: np.ndarray, deg: np.ndarray, sr: int) -> float:
    """STOI (0 to 1, higher is better) via ``pystoi.stoi(ref, deg, sr)``.

    pystoi resamples to 10 kHz itself and drops silent frames; meant for speech.
    """
    return _stoi(ref, deg, sr, False, "stoi")


def estoi(ref: np.ndarray, deg: np.ndarray, sr: int) -> float:
    """Extended STOI (about 0 to 1, higher is better) via ``pystoi.stoi(..., extended=True)``."""
    return _stoi(ref, deg, sr, True, "estoi")


# ---------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class MetricSpec:
    """How to run and present one metric."""

    name: str  #: key used on the command line and in JSON/CSV
    func: Callable[[np.ndarray, np.ndarray, int], float]  #: (ref, deg, sr) -> float
    unit: str  #: "dB", "MOS", "" ...
    higher_is_better: bool | None  #: None: neither (a ratio whose ideal is 1)
    module: str | None = None  #: import name of the optional package (None: always there)
    package: str | None = None  #: PyPI name of the optional package
    description: str = ""


METRICS: dict[str, MetricSpec] = {
    "si_sdr": MetricSpec("si_sdr", lambda r, d, sr: si_sdr(r, d), "dB", True,
                         description="scale-invariant SDR"),
    "mel": MetricSpec("mel", mel_distance, "", False,
                      description="multi-resolution log10-mel L1 distance"),
    "lsd": MetricSpec("lsd", log_spectral_distance, "dB", False,
                      description="log-spectral distance, floor 80 dB below reference peak"),
    "hf_ratio": MetricSpec("hf_ratio", high_band_energy_ratio, "", None,
                           description="energy above 8 kHz relative to the reference (1 = equal)"),
    "coherence": MetricSpec("coherence", phase_coherence, "", True,
                            description="phase agreement with the reference, 500 Hz-4 kHz (0-1)"),
    "visqol": MetricSpec("visqol", visqol, "MOS", True, "visqol", "visqol-python",
                         "ViSQOL v3 audio mode at 48 kHz"),
    "pesq": MetricSpec("pesq", pesq_wb, "MOS", True, "pesq", "pesq", "PESQ wide-band at 16 kHz"),
    "stoi": MetricSpec("stoi", stoi, "", True, "pystoi", "pystoi", "STOI"),
    "estoi": MetricSpec("estoi", estoi, "", True, "pystoi", "pystoi", "extended STOI"),
}
DEFAULT_METRICS: tuple[str, ...] = ("si_sdr", "mel", "lsd")
OPTIONAL_METRICS: tuple[str, ...] = ("visqol", "pesq", "stoi", "estoi")


def metric_available(name: str) -> bool:
    """Whether the package of metric ``name`` can be imported (always True for the core three)."""
    spec = METRICS[name]
    if spec.module is None:
        return True
    return importlib.util.find_spec(spec.module) is not None


#: How far the lengths of a reference and its decoded version may differ before ``flowdec eval`` objects.
#: flowdec gives back the input's exact rate and length; this leaves room for codecs that pad to a frame.
LENGTH_TOLERANCE_S = 0.02


def comparability_problems(ref_frames: int, ref_sr: int, deg_frames: int, deg_sr: int,
                           tolerance_s: float = LENGTH_TOLERANCE_S) -> list[str]:
    """Why a decoded file may not be a decoding of this reference: different sample rates (flowdec keeps the
    input's rate), or lengths that differ by more than ``tolerance_s`` (flowdec keeps the exact length).
    Scored anyway, such a pair is resampled and trimmed to the shorter, which can hide a wrong pairing."""
    problems = []
    if int(ref_sr) != int(deg_sr):
        problems.append(f"sample rates differ (reference {ref_sr} Hz, decoded {deg_sr} Hz)")
    ref_s, deg_s = ref_frames / ref_sr, deg_frames / deg_sr
    if abs(ref_s - deg_s) > tolerance_s:
        problems.append(f"lengths differ (reference {ref_s:.3f} s, decoded {deg_s:.3f} s)")
    return problems


def compute_metrics(
    ref: np.ndarray,
    ref_sr: int,
    deg: np.ndarray,
    deg_sr: int,
    names: list[str] | tuple[str, ...] = DEFAULT_METRICS,
    errors: dict[str, str] | None = None,
) -> dict[str, float]:
    """Score ``deg`` against ``ref`` with each metric in ``names``.

    ``deg`` is resampled to ``ref_sr`` when the rates differ, then both are trimmed to the
    shorter length. A metric that cannot score these signals gives NaN, and its
    :class:`MetricError` message is stored in ``errors[name]`` when ``errors`` is given;
    :class:`MetricUnavailable` and shape errors (different channel counts, empty signals)
    propagate as exceptions.
    """
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise MetricError(f"unknown metric{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                          f"(known: {', '.join(METRICS)})")
    for what, sr in (("ref_sr", ref_sr), ("deg_sr", deg_sr)):
        if not (is_whole(sr) and 0 < sr <= MAX_SAMPLE_RATE):  # 0 scored a "perfect" mel distance of 0
            raise MetricError(f"{what} must be a whole number of hertz from 1 to {MAX_SAMPLE_RATE:,}, got {sr!r}")
    r = _scorable(ref, "reference")
    d = _scorable(deg, "degraded signal")
    if int(deg_sr) != int(ref_sr):
        d = resample(d, deg_sr, ref_sr)
    r, d = align(r, d)
    out: dict[str, float] = {}
    for name in names:
        spec = METRICS[name]
        try:
            out[name] = float(spec.func(r, d, int(ref_sr)))
        except MetricUnavailable:
            raise
        except MetricError as exc:
            out[name] = float("nan")
            if errors is not None:
                errors[name] = str(exc)
    return out
