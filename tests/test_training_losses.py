"""Training losses and the sigma_y estimate: zero for identical signals, the right values otherwise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowdec_cli.training.losses import (
    MultiScaleCQTLoss,
    MultiScaleMelLoss,
    flow_matching_loss,
    flow_matching_targets,
    log_spectral_mse,
    slaney_mel_filterbank,
    waveform_l1,
)
from flowdec_cli.training.prepare import estimate_sigma, gaussian_kernel, gaussian_smooth

from .test_training_helpers import fast_cpu, write_pairs_files  # noqa: F401

pytestmark = pytest.mark.usefixtures("fast_cpu")
SR = 48000


def _signals(n: int = 4800, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / SR
    x = (0.3 * torch.sin(2 * math.pi * 220 * t) + 0.05 * torch.randn(n, generator=g)).reshape(1, 1, n)
    y = x + 0.02 * torch.randn(x.shape, generator=g)
    return torch.cat([x, 0.5 * x]), torch.cat([y, 0.5 * x])


def test_magnitude_losses_are_zero_for_identical_signals_and_positive_otherwise():
    x, y = _signals()
    mel = MultiScaleMelLoss(SR)
    cqt = MultiScaleCQTLoss(SR, bins_per_octave=(8, 16))
    for fn in (mel, cqt, waveform_l1):
        assert float(fn(x, x)) == 0.0
        assert float(fn(y, x)) > 0.0
        assert float(fn(torch.zeros_like(x), torch.zeros_like(x))) == 0.0
        assert float(fn(x[..., :300], x[..., :300])) == 0.0  # shorter than the longest window
    # gradients exist and are finite, even through silence
    z = torch.zeros_like(x, requires_grad=True)
    (mel(z, x) + cqt(z, x) + waveform_l1(z, x)).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_mel_loss_is_dac_shaped():
    mel = MultiScaleMelLoss(SR)
    assert mel.windows == [32, 64, 128, 256, 512, 1024, 2048]
    assert [mel.fb_0.shape[0], mel.fb_6.shape[0]] == [5, 320]
    fb = slaney_mel_filterbank(SR, 2048, 80)
    assert fb.shape == (80, 1025) and (fb >= 0).all()
    peaks = fb.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all()
    # Slaney normalisation: each triangle has unit area in Hz (up to the bin sampling)
    area = fb.sum(axis=1) * (SR / 2048)
    assert np.allclose(area[10:], 1.0, rtol=0.05)


@pytest.mark.parametrize("freq", [440.0, 3520.0, 110.0])
def test_cqt_peaks_at_the_tone_bin(freq):
    n = SR  # 1 s, long enough for the 110 Hz kernels
    t = torch.arange(n) / SR
    x = (0.5 * torch.sin(2 * math.pi * freq * t)).reshape(1, 1, n)
    cqt = MultiScaleCQTLoss(SR, bins_per_octave=(16, 48))
    for i, b in enumerate(cqt.bins_per_octave):
        m = cqt.cqt(x, i)
        assert m.shape[1] == 9 * b and m.shape[2] == -(-n // 256)
        k = int(m[0, :, m.shape[2] // 2].argmax())
        assert 27.5 * 2 ** (k / b) == pytest.approx(freq, rel=1e-6)
        assert float(m[0, k, m.shape[2] // 2]) == pytest.approx(0.25, rel=0.02)  # amplitude / 2


def test_flow_matching_targets_and_loss():
    g = torch.Generator().manual_seed(0)
    shape = (3, 1, 16, 8)
    X = torch.randn(shape, dtype=torch.complex64, generator=g)
    Y = torch.randn(shape, dtype=torch.complex64, generator=g)
    eps = torch.randn(shape, dtype=torch.complex64, generator=g)
    sigma = torch.linspace(0.1, 0.6, 16, dtype=torch.float64).reshape(16, 1)
    t = torch.tensor([0.0, 0.25, 0.999])
    x_t, u = flow_matching_targets(X, Y, sigma, t, eps)
    x0 = Y + (sigma * eps).to(torch.complex64)
    assert torch.allclose(x_t[0], x0[0]) and torch.allclose(u, X - x0)
    assert torch.allclose(x_t[1], 0.25 * X[1] + 0.75 * x0[1], atol=1e-6)
    # x_t + (1 - t) u = X: the target field points at the clean features
    assert torch.allclose(x_t + (1 - t).reshape(-1, 1, 1, 1) * u, X, atol=1e-5)
    loss, per = flow_matching_loss(u.clone(), u)
    assert float(loss) == 0.0 and per.shape == (3,)
    v = u + 0.5
    loss, per = flow_matching_loss(v, u)
    assert float(loss) == pytest.approx(0.25) and torch.allclose(per, torch.full((3,), 0.25))
    v[1] = float("nan")  # a NaN example is dropped, the others still count
    loss, per = flow_matching_loss(v, u)
    assert math.isnan(float(per[1])) and float(loss) == pytest.approx(0.25)


def test_log_spectral_mse():
    x, y = _signals(9600)
    assert log_spectral_mse(x, x) == 0.0
    assert log_spectral_mse(x, y) > 0.0


def test_gaussian_smoothing_matches_scipy_semantics():
    k = gaussian_kernel(3.0)
    assert len(k) == 25 and k.sum() == pytest.approx(1.0) and np.allclose(k, k[::-1])
    rng = np.random.default_rng(0)
    curve = rng.uniform(0.1, 0.6, 768)
    smooth = gaussian_smooth(curve, 3.0)
    assert smooth.shape == curve.shape
    const = gaussian_smooth(np.full(50, 0.4), 3.0)  # mode "nearest": constants stay constant at the edges
    assert np.allclose(const, 0.4)
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    assert np.allclose(smooth, scipy_ndimage.gaussian_filter1d(curve, 3.0, mode="nearest", truncate=4.0),
                       atol=1e-12)


def _numpy_features(sig: np.ndarray, n_fft: int, hop: int, alpha: float) -> np.ndarray:
    """Independent reference: centred reflect-padded frames, symmetric Hann, rfft, |S|^alpha e^{i angle}."""
    pad = n_fft // 2
    xp = np.pad(sig.astype(np.float64), (pad, pad), mode="reflect")
    n_frames = 1 + len(sig) // hop
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / (n_fft - 1))
    frames = np.stack([xp[i * hop:i * hop + n_fft] * win for i in range(n_frames)], axis=1)
    spec = np.fft.rfft(frames, axis=0)
    return np.abs(spec) ** alpha * np.exp(1j * np.angle(spec))


def test_estimate_sigma_gives_the_official_heuristic_values(tmp_path):
    _, pairs = write_pairs_files(tmp_path, 5, seconds=2.0, noise=0.05)  # exactly 2 s: no random crop
    pairs = [(str(a), str(b)) for a, b in pairs]
    est = estimate_sigma(pairs, alpha=0.3, n_fft=1534, hop=384, n_samples=100, seed=302)
    import soundfile as sf

    mags, rmses, bands = [], [], []
    for a, b in pairs:
        x, _ = sf.read(a, dtype="float32")
        y, _ = sf.read(b, dtype="float32")
        y = y[:len(x)]
        norm = np.max(np.abs(y)) + 1e-5
        X = _numpy_features(x / norm, 1534, 384, 0.3)
        Y = _numpy_features(y / norm, 1534, 384, 0.3)
        mags.append(np.abs(X).ravel())
        d = np.abs(Y - X)
        rmses.append(np.sqrt(np.sum(d**2)) / np.sqrt(d.size))
        bands.append(np.sqrt(np.sum(d**2, axis=1)) / np.sqrt(d.shape[0]))
    q_x = np.quantile(np.concatenate(mags), 0.997)
    assert est["n_samples"] == 5 and est["q_x_exact"]
    assert est["q_x"] == pytest.approx(q_x, rel=2e-4)
    assert est["beta"] == pytest.approx(1 / q_x, rel=2e-4)
    assert est["sigma_y"] == pytest.approx(np.quantile(rmses, 0.997) / 3, rel=2e-4)
    perband = np.asarray(est["sigma_y_perband"])
    assert perband.shape == (768,)
    assert np.allclose(perband, np.quantile(np.stack(bands), 0.997, axis=0) / 3, rtol=1e-3, atol=1e-7)
    # identical pairs: no coding error, sigma_y 0
    same = estimate_sigma([(a, a) for a, _ in pairs], n_samples=3)
    assert same["sigma_y"] == 0.0 and max(same["sigma_y_perband"]) == 0.0


def test_codebook_usage_figures():
    from flowdec_cli.training.ndac_trainer import codebook_usage

    counts = torch.zeros(3, 8)
    counts[0, 0] = 50  # collapsed: one entry
    counts[1] = 5  # uniform
    counts[2, :4] = 1  # half the entries, uniformly
    u = codebook_usage(counts)
    assert u["used_cb0"] == 1 / 8 and abs(u["perplexity_cb0"] - 1.0) < 1e-9
    assert u["used_cb1"] == 1.0 and abs(u["perplexity_cb1"] - 8.0) < 1e-9
    assert u["used_cb2"] == 0.5 and abs(u["perplexity_cb2"] - 4.0) < 1e-9


def test_latent_residual_is_relative_and_trains_the_codes_not_the_target():
    from flowdec_cli.training.losses import latent_residual

    z = torch.randn(2, 6, 10, requires_grad=True)
    assert float(latent_residual(z, z.detach().clone()).detach()) == 0.0
    z_q = torch.zeros(2, 6, 10, requires_grad=True)
    assert float(latent_residual(z, z_q).detach()) == pytest.approx(1.0)  # nothing quantised: all of the latent is lost
    scaled = latent_residual(10 * z, 10 * (z.detach() + 0.1))
    assert float(scaled) == pytest.approx(float(latent_residual(z, z.detach() + 0.1)), rel=1e-5)
    latent_residual(z, z_q).backward()
    assert z.grad is None and z_q.grad is not None and float(z_q.grad.abs().sum()) > 0


def test_latent_residual_stays_bounded_when_the_codebooks_are_louder_than_the_latent():
    """A codec from new weights: the default config's latent starts 10^5 times quieter than its codebooks'
    sum; relative to the latent alone the term was about 10^5 and drowned every other loss."""
    from flowdec_cli.training.losses import latent_residual

    z = 1e-3 * torch.randn(2, 6, 10)
    z_q = torch.randn(2, 6, 10, requires_grad=True)
    value = float(latent_residual(z, z_q).detach())
    assert 0.9 < value < 1.1  # relative to the codebooks' energy: about all of it is error
    quieter = 0.9 * z  # where the quantised latent is the quieter one, the latent's energy is the scale
    expected = float((quieter - z).pow(2).mean() / z.pow(2).mean())
    assert float(latent_residual(z, quieter)) == pytest.approx(expected, rel=1e-6)


def test_ndac_loss_counts_the_latent_term_only_when_weighted():
    from flowdec_cli.training.config import NDACLossConfig
    from flowdec_cli.training.losses import NDACLoss

    y, x = torch.randn(1, 1, 4800), torch.randn(1, 1, 4800)
    zero, latent = torch.tensor(0.0), torch.tensor(0.5)
    off = NDACLoss(NDACLossConfig(cqt_weight=0.0), 48000)
    total_off, parts_off = off(y, x, zero, zero, latent)
    assert "latent" not in parts_off
    on = NDACLoss(NDACLossConfig(cqt_weight=0.0, latent_weight=4.0), 48000)
    total_on, parts_on = on(y, x, zero, zero, latent)
    assert float(parts_on["latent"]) == 0.5
    assert float(total_on - total_off) == pytest.approx(2.0, rel=1e-5)


def test_compressed_complex_stft_loss_hears_phase():
    """A tone and the same tone a quarter period later have the same magnitudes, but in quadrature they are
    further apart than the tone is from silence; identical signals score 0, and silence has a finite
    gradient."""
    from flowdec_cli.training.losses import CompressedComplexSTFTLoss

    n = np.arange(9600) / 48000
    tone = torch.tensor(0.3 * np.sin(2 * np.pi * 3000 * n), dtype=torch.float32)[None, None]
    shifted = torch.tensor(0.3 * np.cos(2 * np.pi * 3000 * n), dtype=torch.float32)[None, None]
    complex_loss = CompressedComplexSTFTLoss((256, 1024), alpha=0.3)
    assert float(complex_loss(tone, tone)) == 0.0
    same_magnitude = float(complex_loss(shifted, tone))
    assert same_magnitude > 20 * float(complex_loss(1.02 * tone, tone))  # a level change of 2 % costs little
    assert same_magnitude > float(complex_loss(torch.zeros_like(tone), tone))  # (2x for a pure quadrature)
    silent = torch.zeros(1, 1, 4800, requires_grad=True)
    complex_loss(silent, torch.randn(1, 1, 4800)).backward()
    assert silent.grad is not None and bool(torch.isfinite(silent.grad).all())


def test_ndac_loss_counts_the_complex_stft_term_only_when_weighted():
    from flowdec_cli.training.config import ConfigError, NDACLossConfig
    from flowdec_cli.training.losses import NDACLoss

    y, x, zero = torch.randn(1, 1, 4800), torch.randn(1, 1, 4800), torch.tensor(0.0)
    total_off, parts_off = NDACLoss(NDACLossConfig(cqt_weight=0.0), 48000)(y, x, zero, zero)
    total_on, parts_on = NDACLoss(NDACLossConfig(cqt_weight=0.0, complex_stft_weight=2.0), 48000)(y, x, zero, zero)
    assert "complex_stft" not in parts_off and float(parts_on["complex_stft"]) > 0
    assert float(total_on - total_off) == pytest.approx(2.0 * float(parts_on["complex_stft"]), rel=1e-4)
    from flowdec_cli.training.config import config_from_dict

    from .test_training_helpers import ndac_dict
    for bad in (dict(complex_stft_weight=-1.0), dict(complex_stft_alpha=0.0), dict(complex_stft_windows=[300])):
        with pytest.raises(ConfigError, match="complex_stft"):
            config_from_dict("ndac", ndac_dict(["x"], "out", loss=bad))


def test_with_coded_phase_keeps_clean_magnitudes_and_coded_phase():
    from flowdec_cli.training.losses import with_coded_phase

    g = torch.Generator().manual_seed(3)
    X = torch.randn(2, 1, 9, 5, dtype=torch.complex64, generator=g)
    Y = torch.randn(2, 1, 9, 5, dtype=torch.complex64, generator=g)
    Y[0, 0, 4, 2] = 0  # a silent coded bin lends no phase: the clean value stays
    out = with_coded_phase(X, Y)
    torch.testing.assert_close(out.abs(), X.abs())
    lit = Y.abs() > 0
    torch.testing.assert_close((out * Y.conj())[lit].imag, torch.zeros(int(lit.sum())), atol=1e-5, rtol=0)
    assert bool(((out * Y.conj())[lit].real > 0).all())
    assert out[0, 0, 4, 2] == X[0, 0, 4, 2]


def test_spectral_transport_falls_as_a_partial_nears_its_place_and_prefers_it_to_silence():
    """The codec's magnitude losses score a partial on the wrong comb line worse than silence; this one
    falls step by step as the partial moves towards the reference's, and silence costs the most."""
    from flowdec_cli.training.losses import SpectralTransportLoss

    t = torch.arange(48000) / 48000
    ref = 0.3 * torch.sin(2 * torch.pi * 440 * t)[None]
    loss = SpectralTransportLoss()
    costs = [float(loss(0.3 * torch.sin(2 * torch.pi * f * t)[None], ref)) for f in (900, 525, 450, 440)]
    assert costs == sorted(costs, reverse=True) and costs[-1] < 0.05 * costs[0]
    assert float(loss(torch.zeros_like(ref), ref)) > costs[0]


def test_spectral_transport_weighs_near_silent_frames_by_their_level():
    """Each frame's spectrum was normalised to sum 1: under a silent reference (padding, a pause) any faint
    output cost more than a partial an octave off, with gradients growing as 1 / level."""
    from flowdec_cli.training.losses import SpectralTransportLoss

    loss = SpectralTransportLoss()
    t = torch.arange(24000) / 48000
    off_by_an_octave = float(loss(0.3 * torch.sin(2 * torch.pi * 880 * t)[None],
                                  0.3 * torch.sin(2 * torch.pi * 440 * t)[None]))
    grads = []
    for level in (1e-3, 1e-5):
        y = (level * torch.randn(1, 24000, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
        faint = loss(y, torch.zeros(1, 24000))
        faint.backward()
        assert float(faint.detach()) < off_by_an_octave
        grads.append(float(y.grad.norm()))
    assert max(grads) < 1e4
