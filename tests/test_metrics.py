"""Metrics against hand-computed values on synthetic signals."""

from __future__ import annotations

import math
import sys
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdec_cli.evaluation import metrics as M

SR = 48000


def noise(n, seed=0, ch=None):
    rng = np.random.default_rng(seed)
    shape = (n,) if ch is None else (n, ch)
    return 0.1 * rng.standard_normal(shape)


def with_snr(ref: np.ndarray, snr_db: float, seed: int = 1) -> np.ndarray:
    """ref + noise, the noise zero-mean, orthogonal to the zero-mean ref, at exactly snr_db."""
    r = ref - ref.mean()
    n = np.random.default_rng(seed).standard_normal(len(ref))
    n -= n.mean()
    n -= np.dot(n, r) / np.dot(r, r) * r
    n *= math.sqrt(np.dot(r, r) / np.dot(n, n) / 10 ** (snr_db / 10))
    return ref + n


def tone_mix(n, sr=SR):
    t = np.arange(n) / sr
    return 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1234.5 * t + 0.3)


# ------------------------------------------------------------------ SI-SDR


def test_si_sdr_of_a_silent_or_constant_decode_is_the_floor_not_zero():
    """A silent decode scored 0 dB, above real codec output (about -30 dB for a poor one)."""
    x = np.random.default_rng(0).standard_normal(48000) * 0.1
    for deg in (np.zeros_like(x), np.full_like(x, 0.2)):
        assert M.si_sdr(x, deg) == pytest.approx(-120.0, abs=0.01)
    assert M.si_sdr(x, x + np.random.default_rng(1).standard_normal(48000)) > -120.0
    stereo = np.stack([x, x], axis=1)
    half_silent = np.stack([x, np.zeros_like(x)], axis=1)
    assert M.si_sdr(stereo, half_silent) == pytest.approx((120.0 - 120.0) / 2, abs=0.02)


def test_si_sdr_identical_is_capped_high():
    x = noise(SR)
    assert M.si_sdr(x, x) == pytest.approx(120.0, abs=0.01)


@pytest.mark.parametrize("snr", [-5.0, 0.0, 10.0, 30.0])
def test_si_sdr_equals_snr_for_orthogonal_noise(snr):
    x = noise(SR // 2)
    assert M.si_sdr(x, with_snr(x, snr)) == pytest.approx(snr, abs=0.1)


@pytest.mark.parametrize("gain", [0.01, 0.5, 3.0, -2.0])
def test_si_sdr_is_scale_invariant(gain):
    x = noise(SR // 2)
    y = with_snr(x, 12.0)
    assert M.si_sdr(x, gain * y) == pytest.approx(M.si_sdr(x, y), abs=1e-6)
    assert M.si_sdr(x, gain * y) == pytest.approx(12.0, abs=0.1)


@settings(max_examples=25, deadline=None)
@given(gain=st.floats(1e-3, 1e3), offset=st.floats(-1, 1))
def test_si_sdr_ignores_gain_and_dc(gain, offset):
    x = noise(4096, seed=3)
    y = with_snr(x, 5.0, seed=4)
    assert M.si_sdr(x, gain * y + offset) == pytest.approx(5.0, abs=1e-3)


@pytest.mark.parametrize("delay", [1, 2, 4, 6])
def test_si_sdr_of_delayed_sine_is_cot_of_phase(delay):
    # period of 64 samples, 750 whole periods: a delay of k samples is a phase shift
    # phi = 2 pi k / 64, and deg = cos(phi) ref - sin(phi) (quadrature), so
    # SI-SDR = 10 log10(cos^2 / sin^2) = 20 log10 |cot(phi)|.
    n = 64 * 750
    x = np.sin(2 * np.pi * np.arange(n) / 64)
    y = np.roll(x, delay)
    phi = 2 * np.pi * delay / 64
    assert M.si_sdr(x, y) == pytest.approx(20 * math.log10(abs(1 / math.tan(phi))), abs=0.01)


def test_si_sdr_drops_for_delayed_broadband_copy():
    # no alignment is done: a white-noise copy 10 samples late is almost uncorrelated
    x = noise(SR)
    y = np.concatenate([np.zeros(10), x])  # longer: trimmed to len(x)
    assert M.si_sdr(x, y) < -20.0
    assert M.si_sdr(x, x) > 100.0


def test_si_sdr_trims_to_shorter_and_averages_channels():
    x = noise(SR // 2, ch=2)
    y = np.stack([with_snr(x[:, 0], 10.0), with_snr(x[:, 1], 20.0)], axis=1)
    y = np.concatenate([y, np.ones((1000, 2))])  # extra tail is ignored
    assert M.si_sdr(x, y) == pytest.approx(15.0, abs=0.1)
    assert M.si_sdr(x[:, 0], y[: len(x), 0]) == pytest.approx(10.0, abs=0.1)


def test_si_sdr_silent_reference_channel_is_skipped():
    x = noise(8000, ch=2)
    x[:, 1] = 0.0
    y = x.copy()
    y[:, 0] = with_snr(x[:, 0], 7.0)
    assert M.si_sdr(x, y) == pytest.approx(7.0, abs=0.1)
    with pytest.raises(M.MetricError, match="the reference is silent"):  # every channel: no score at all
        M.si_sdr(np.zeros(100), np.ones(100))


@pytest.mark.parametrize("metric", ["si_sdr", "log_spectral_distance", "visqol"])
def test_a_silent_reference_is_named_not_scored(metric):
    """ViSQOL scored a tone against a silent reference 4.73, as for a perfect copy; SI-SDR and LSD gave NaN
    that the report showed as a blank, with no reason beside it."""
    if metric == "visqol":
        pytest.importorskip("visqol")
    x = speechlike()
    score = getattr(M, metric)
    with pytest.raises(M.MetricError, match="the reference is silent"):
        score(np.zeros_like(x), x) if metric == "si_sdr" else score(np.zeros_like(x), x, SR)


def test_channel_mismatch_and_empty_raise():
    with pytest.raises(M.MetricError, match="channel counts differ"):
        M.si_sdr(noise(100, ch=2), noise(100))
    with pytest.raises(M.MetricError, match="empty"):
        M.mel_distance(np.zeros(0), np.zeros(0), SR)


# ------------------------------------------------------------------ mel distance


def test_mel_filterbank_rows_are_averages():
    for n_fft, _, n_mels in M.MEL_RESOLUTIONS:
        fb = M.mel_filterbank(SR, n_fft, n_mels)
        assert fb.shape == (n_mels, n_fft // 2 + 1)
        np.testing.assert_allclose(fb.sum(axis=1), 1.0)
        assert (fb >= 0).all()


@pytest.mark.parametrize("sr", [88_200, 96_000, 192_000])
def test_mel_filterbank_drops_triangles_between_bins(sr):
    """At high rates the lowest triangles fall between two bins; kept, they would be bands where every
    signal scores 0 and a gain would no longer measure log10 of itself."""
    for n_fft, _, n_mels in M.MEL_RESOLUTIONS:
        fb = M.mel_filterbank(sr, n_fft, n_mels)
        assert fb.shape[0] <= n_mels
        np.testing.assert_allclose(fb.sum(axis=1), 1.0)
    x = noise(sr // 2)
    assert M.mel_distance(x, 0.5 * x, sr) == pytest.approx(math.log10(2.0), abs=1e-9)


def test_stft_normalisation_sine_peaks_at_half_amplitude():
    n_fft = 1024
    x = 0.8 * np.sin(2 * np.pi * 48 * np.arange(SR) / n_fft)  # exactly on bin 48
    mag = M._stft_mag(x, n_fft, 256)
    assert mag[10:-10, 48].mean() == pytest.approx(0.4, rel=1e-3)


def test_mel_distance_identical_is_zero():
    x = noise(SR, ch=2)
    assert M.mel_distance(x, x, SR) == 0.0


def test_mel_distance_of_gain_is_log10_of_gain():
    # every band of white noise is far above the 1e-5 floor, so each log-mel value shifts by
    # exactly log10(2)
    x = noise(SR)
    assert M.mel_distance(x, 0.5 * x, SR) == pytest.approx(math.log10(2.0), abs=1e-9)


def test_mel_distance_is_monotonic_in_noise_level():
    x = tone_mix(SR)
    rng = np.random.default_rng(5)
    n = rng.standard_normal(SR)
    dists = [M.mel_distance(x, x + a * n, SR) for a in (1e-4, 1e-3, 1e-2, 1e-1)]
    assert all(a < b for a, b in pairwise(dists)), dists
    assert dists[0] > 0


# ------------------------------------------------------------------ LSD


def test_lsd_identical_is_zero():
    x = noise(SR, ch=2)
    assert M.log_spectral_distance(x, x, SR) == 0.0


def test_lsd_of_gain_is_gain_in_db():
    x = noise(SR)
    assert M.log_spectral_distance(x, 0.5 * x, SR) == pytest.approx(20 * math.log10(2), abs=1e-3)


def test_lsd_floor_ignores_content_far_below_reference_peak():
    x = tone_mix(SR)
    y = x + 1e-7 * np.random.default_rng(2).standard_normal(SR)  # ~130 dB below the tones
    assert M.log_spectral_distance(x, y, SR) < 0.01
    assert M.log_spectral_distance(x, y, SR, floor_db=300.0) > 20.0  # no effective floor


# ------------------------------------------------------------------ phase coherence


def test_phase_coherence_tells_a_copy_from_the_same_spectrum_with_new_phase():
    x = noise(SR)
    assert M.phase_coherence(x, -0.3 * x, SR) == pytest.approx(1.0, abs=1e-9)  # one gain, even negative
    spectrum = np.fft.rfft(x)
    rng = np.random.default_rng(5)
    new_phase = np.fft.irfft(np.abs(spectrum) * np.exp(2j * np.pi * rng.random(len(spectrum))), len(x))
    assert M.phase_coherence(x, new_phase, SR) < 0.05
    # a noise of equal power, orthogonal to the signal: the coherence is 1/sqrt(2)
    assert M.phase_coherence(x, with_snr(x, 0.0), SR) == pytest.approx(1 / math.sqrt(2), abs=0.02)


def test_phase_coherence_counts_only_its_band():
    t = np.arange(SR) / SR
    low = np.sin(2 * np.pi * 200 * t)
    mid = 0.5 * np.sin(2 * np.pi * 1500 * t)
    # the band's content is identical; what differs lies below 500 Hz
    assert M.phase_coherence(low + mid, -low + mid, SR) == pytest.approx(1.0, abs=1e-3)
    assert M.phase_coherence(low + mid, low - mid, SR) == pytest.approx(1.0, abs=1e-3)  # one gain: -1
    # one complex gain over the whole band (a tone shifted by a quarter period) still counts as locked;
    # a tone 10 Hz off lands in the same bins but its phase drifts through ten turns
    assert M.phase_coherence(low + mid, low + 0.5 * np.cos(2 * np.pi * 1500 * t), SR) == pytest.approx(1.0, abs=1e-3)
    assert M.phase_coherence(low + mid, low + 0.5 * np.sin(2 * np.pi * 1510 * t), SR) < 0.05
    # a silent decode is not locked at all (it was left out of the means, flattering them); a silent
    # reference defines nothing
    assert M.phase_coherence(low + mid, np.zeros_like(low), SR) == 0.0
    with pytest.raises(M.MetricError, match="reference is silent"):
        M.phase_coherence(np.zeros_like(low), low + mid, SR)
    # per channel, as every metric: one channel inverted, another 10x quieter, each still locked (pooled
    # over channels they scored 0.002 and 0.77)
    stereo = np.stack([low + mid, mid], axis=1)
    assert M.phase_coherence(stereo, stereo * [1.0, -1.0], SR) == pytest.approx(1.0, abs=1e-3)
    assert M.phase_coherence(stereo, stereo * [1.0, 0.1], SR) == pytest.approx(1.0, abs=1e-3)
    half_silent = np.stack([low + mid, np.zeros_like(low)], axis=1)
    assert M.phase_coherence(half_silent, stereo, SR) == pytest.approx(1.0, abs=1e-3)  # the silent one left out


# ------------------------------------------------------------------ resampling / registry


def test_compute_metrics_resamples_deg_to_ref_rate():
    x = tone_mix(SR)
    y = M.resample(x, SR, 24000)
    scores = M.compute_metrics(x, SR, y, 24000, ["si_sdr", "mel", "lsd"])
    assert scores["si_sdr"] > 40.0
    assert scores["mel"] < 0.2


def test_compute_metrics_records_unscorable_metric_as_nan():
    errors = {}
    scores = M.compute_metrics(np.zeros(1000), SR, np.ones(1000), SR, ["si_sdr", "lsd"], errors)
    assert math.isnan(scores["si_sdr"]) and math.isnan(scores["lsd"])
    assert errors == {"si_sdr": "the reference is silent", "lsd": "the reference is silent"}  # said, not blank


def test_missing_optional_package_raises_metric_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "pesq", None)
    monkeypatch.setitem(sys.modules, "pystoi", None)
    x = noise(16000)
    with pytest.raises(M.MetricUnavailable, match=r"pip install 'flowdec-cli\[metrics\]'"):
        M.pesq_wb(x, x, SR)
    with pytest.raises(M.MetricUnavailable, match="pystoi"):
        M.estoi(x, x, SR)


# ------------------------------------------------------------------ optional metrics


def speechlike(seconds=3.0, sr=SR, seed=0):
    """Harmonic 'voice' with a gliding pitch, syllable-rate envelope and pauses."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voice = sum(np.sin(k * phase) / k for k in range(1, 20))
    env = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 2
    return 0.2 * voice * env + 1e-4 * np.random.default_rng(seed).standard_normal(len(t))


def test_pesq_wb():
    pytest.importorskip("pesq")
    x = speechlike()
    clean = M.pesq_wb(x, x, SR)
    noisy = M.pesq_wb(x, x + 0.02 * np.random.default_rng(1).standard_normal(len(x)), SR)
    assert clean > 4.5
    assert 1.0 <= noisy < clean


def test_stoi_and_estoi():
    pytest.importorskip("pystoi")
    x = speechlike()
    y = x + 0.05 * np.random.default_rng(1).standard_normal(len(x))
    assert M.stoi(x, x, SR) == pytest.approx(1.0, abs=1e-6)
    assert M.estoi(x, x, SR) == pytest.approx(1.0, abs=1e-6)
    assert M.stoi(x, y, SR) < 0.99
    assert M.estoi(x, y, SR) < M.estoi(x, x, SR)


@pytest.mark.parametrize("metric", ["stoi", "estoi"])
def test_stoi_says_when_it_cannot_score(metric):
    """pystoi answered a silent reference with 0.000 (1e-5 and a warning) and a very short one with an
    axis error: neither is a score."""
    pytest.importorskip("pystoi")
    fn = getattr(M, metric)
    x = speechlike()
    silence = np.zeros_like(x)
    with pytest.raises(M.MetricError, match="the reference is silent"):
        fn(silence, silence, SR)
    with pytest.raises(M.MetricError, match="too short to score"):
        fn(x[:5], x[:5], SR)


def test_pesq_names_a_too_short_signal_at_any_rate():
    """One sample at 48 kHz resampled to PESQ's 16 kHz is no samples, which read as 'the reference is silent'."""
    pytest.importorskip("pesq")
    x = speechlike()
    for n in (1, 2, SR // 4 - 1):
        too_short = rf"\({n} samples at {SR} Hz\) is too short to score \(at least 0.25 s\)"
        with pytest.raises(M.MetricError, match=too_short):
            M.pesq_wb(x[:n], x[:n], SR)
    assert M.pesq_wb(x[: SR // 4 + 1], x[: SR // 4 + 1], SR) > 4  # what the package takes is scored


@pytest.mark.parametrize("metric", ["pesq_wb", "visqol"])
def test_a_silent_decode_is_named_not_scored(metric):
    pytest.importorskip({"pesq_wb": "pesq", "visqol": "visqol"}[metric])
    x = speechlike()
    with pytest.raises(M.MetricError, match="the degraded signal is silent"):
        getattr(M, metric)(x, np.zeros_like(x), SR)


@pytest.mark.parametrize(("metric", "package"), [("pesq_wb", "pesq"), ("stoi", "pystoi"), ("visqol", "visqol")])
def test_a_silent_reference_channel_is_left_out_not_the_whole_file(metric, package):
    """Per channel, as every metric: a stereo file whose right channel is silent lost its score altogether
    ("No utterances detected", "the reference is silent")."""
    pytest.importorskip(package)
    x = speechlike(2.0)
    y = x + 0.02 * np.random.default_rng(1).standard_normal(len(x))
    fn = getattr(M, metric)
    ref, deg = np.stack([x, np.zeros_like(x)], axis=1), np.stack([y, y], axis=1)
    assert fn(ref, deg, SR) == pytest.approx(fn(x, y, SR), abs=1e-6)


def test_visqol_identical_audio_mode():
    pytest.importorskip("visqol")
    x = speechlike(2.0)
    # ViSQOL v3 audio mode maps identical 48 kHz signals to about 4.73
    assert M.visqol(x, x, SR) == pytest.approx(4.73, abs=0.05)


def test_pesq_on_silence_is_one_plain_error_and_no_warnings():
    import warnings

    pytest.importorskip("pesq")
    from flowdec_cli.evaluation.metrics import MetricError, pesq_wb

    silence = np.zeros((48000, 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(MetricError, match=r"^the reference is silent$"):
            pesq_wb(silence, silence, 48000)
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("ref, ref_sr, deg, deg_sr, names, why", [
    ("int16", SR, "int16", SR, ["mel"], "must hold float samples of full scale 1, got int16 \\(divide"),
    ("channels-first", SR, "channels-first", SR, ["mel"], "more channels than frames"),
    ("nan", SR, "float", SR, ["mel"], "reference holds NaN or infinite samples"),
    ("float", 0, "float", 0, ["mel"], "ref_sr must be a whole number of hertz"),  # scored a "perfect" 0
    ("float", SR, "float", 48000.5, ["mel"], "deg_sr must be a whole number of hertz"),
    ("float", "48000", "float", SR, ["mel"], "ref_sr must be a whole number"),
    ("float", SR, "float", SR, ["nope"], "unknown metric 'nope' \\(known: "),
])
def test_inputs_that_scored_silently_wrong_are_refused(ref, ref_sr, deg, deg_sr, names, why):
    """int16 scored as if 32,768 times too loud (mel 5.65 for 1.14), a channels-first pair as 48,000
    channels of 2 frames, a rate of 0 a perfect mel distance, NaN a NaN for every metric."""
    x = noise(4800)
    made = {"float": x, "int16": (x * 32767).astype(np.int16), "channels-first": np.stack([x, x]),
            "nan": np.where(np.arange(len(x)) == 7, np.nan, x)}
    with pytest.raises(M.MetricError, match=why):
        M.compute_metrics(made[ref], ref_sr, made[deg], deg_sr, names)


def test_one_metric_may_be_named_by_a_string():
    x = noise(4800)
    assert set(M.compute_metrics(x, SR, x, SR, "mel")) == {"mel"}


def test_the_metric_functions_still_score_nan_as_nan_for_training_validation():
    """The refusals are compute_metrics's: a trainer's validation decode that came out NaN is recorded as
    NaN by si_sdr and goes on (it stopped the run, losing the steps since the last checkpoint)."""
    x = noise(4800)
    y = x.copy()
    y[3] = np.nan
    assert np.isnan(M.si_sdr(x, y))
    assert np.isnan(M.phase_coherence(x, y, SR))  # not "the reference is silent"


def test_si_sdr_is_blind_to_the_decoded_signals_gain_cap_included():
    """eps was relative to the reference alone: a perfect copy scored 120 dB at gain 1, 146 at 20, 60 at
    1e-3 and -120 (silent) at 1e-6, and a 40 dB SNR copy at gain 1e-6 scored 3 dB."""
    x = noise(9600)
    n = noise(9600, seed=5)
    n -= np.dot(n, x - x.mean()) / np.dot(x - x.mean(), x - x.mean()) * (x - x.mean())  # orthogonal to x
    n *= np.sqrt(np.dot(x, x) / np.dot(n, n)) * 10 ** (-40 / 20)
    for gain in (1e-6, 1e-3, 1.0, 20.0, 1000.0):
        assert M.si_sdr(x, gain * x) == pytest.approx(M.si_sdr(x, x), abs=0.5)
        assert M.si_sdr(x, gain * (x + n)) == pytest.approx(40.0, abs=0.01)
    assert M.si_sdr(x, np.full_like(x, 0.1)) == M.SI_SDR_SILENT_DB  # a loud constant is no signal either


def test_si_sdr_says_why_a_constant_reference_has_no_score():
    for ref in (np.full(4800, 0.1), np.array([0.3])):
        with pytest.raises(M.MetricError, match="constant"):
            M.si_sdr(ref, noise(len(ref)))


def test_the_high_band_ratio_needs_a_high_band_in_the_reference():
    """Leakage was a high band: a 16 kHz source at 48 kHz, decoded with -20 dB noise, scored 3,295."""
    from flowdec_cli.audio import resample

    band_limited = resample(noise(16000)[:, None], 16000, SR)[:, 0]
    with pytest.raises(M.MetricError, match="no energy above 8000 Hz"):
        M.high_band_energy_ratio(band_limited, band_limited + 0.1 * noise(len(band_limited), seed=3), SR)
    # at 16 kHz the bin at exactly 8 kHz is the Nyquist bin, not a band above 8 kHz
    with pytest.raises(M.MetricError, match="no band above"):
        M.high_band_energy_ratio(noise(16000), noise(16000), 16000)
    assert M.high_band_energy_ratio(noise(SR), 0.5 * noise(SR), SR) == pytest.approx(0.25, rel=1e-6)


def test_coherence_refuses_a_rate_whose_band_would_be_cut():
    """Below 8 kHz the 500-4,000 Hz band used to be cut at Nyquist without a word: another band's score."""
    t = np.arange(6000) / 6000
    x = np.sin(2 * np.pi * 700 * t)[:, None]
    with pytest.raises(M.MetricError, match="6000 Hz audio does not reach 4000 Hz"):
        M.phase_coherence(x, x, 6000)
    t = np.arange(8000) / 8000
    x = np.sin(2 * np.pi * 700 * t)[:, None]
    assert M.phase_coherence(x, x, 8000) == pytest.approx(1.0)  # 8 kHz reaches 4 kHz exactly
    with pytest.raises(M.MetricError, match="no STFT bin lies from 701 to 702 Hz"):
        M.phase_coherence(x, x, 8000, band_hz=(701.0, 702.0))
