"""The frame-wise postfilter backbone: the Wiener-structured velocity, shapes, persistence, long audio."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from flowdec_cli.framewise import LOG_Q_RANGE, FramewiseBackbone, wiener_velocity
from flowdec_cli.longaudio import enhance_long
from flowdec_cli.postfilter import Postfilter

from .conftest import PassCounter

TINY = dict(dim=16, intermediate_dim=32, num_blocks=2, kernel_size=3, fourier_size=8)


def _tiny(seed: int = 0, sigma_y: float | torch.Tensor = 0.4) -> Postfilter:
    torch.manual_seed(seed)
    pf = Postfilter(backbone="framewise", framewise=TINY, pad_multiple=8, sigma_y=sigma_y)
    with torch.no_grad():  # a non-trivial head, so the tests see the network's output, not the zero init
        pf.backbone.head.weight.normal_(0, 0.05)
    return pf


def test_wiener_velocity_is_the_gaussian_posterior_mean():
    """For a Gaussian residual D ~ CN(m, q) and x_t = Y + t D + (1 - t) eps, the formula is E[D - eps | r]."""
    gen = torch.Generator().manual_seed(0)
    n, q, m = 400_000, 2.5, complex(0.7, -0.3)
    Y = torch.ones(1, 1, 1, dtype=torch.complex64)
    for t in (0.0, 1 / 6, 0.5, 5 / 6):
        D = m + math.sqrt(q) * torch.randn(n, dtype=torch.complex64, generator=gen)
        eps = torch.randn(n, dtype=torch.complex64, generator=gen)
        r = t * D + (1 - t) * eps
        u = D - eps
        v = wiener_velocity(r.reshape(1, 1, n), Y.expand(1, 1, n), torch.tensor([t]),
                            torch.full((1, 1, n), math.log(q)), torch.full((1, 1, n), m, dtype=torch.complex64))
        # the posterior mean leaves a residual uncorrelated with r, and no other linear map does better
        resid = (u - v[0, 0])
        assert abs(complex((resid * r.conj()).mean())) < 0.02, t
        assert abs(complex(resid.mean())) < 0.02, t


def test_wiener_velocity_stays_finite_at_the_ends():
    r = torch.randn(1, 4, 3, dtype=torch.complex64)
    Y = torch.randn(1, 4, 3, dtype=torch.complex64)
    for log_q in (LOG_Q_RANGE[0] - 5, 0.0, LOG_Q_RANGE[1] + 5):
        for t in (0.0, 1.0 - 1e-7, 1.0):
            v = wiener_velocity(r, Y, torch.tensor([t]), torch.full((1, 4, 3), log_q), torch.ones(1, 4, 3) + 0j)
            assert bool(torch.isfinite(torch.view_as_real(v)).all()), (log_q, t)


def test_zero_initialised_head_removes_the_noise_at_t0():
    """At t = 0 with q = 1 and c = 0 the velocity is -r: one Euler step from x0 lands back on Y."""
    torch.manual_seed(0)
    bb = FramewiseBackbone(n_freqs=8, **TINY)
    Y = torch.randn(2, 1, 8, 5, dtype=torch.complex64)
    x0 = Y + 0.3 * torch.randn(2, 1, 8, 5, dtype=torch.complex64)
    v = bb(x0, Y, torch.zeros(2), sigma_y=torch.full((8, 1), 0.3, dtype=torch.float64))
    assert torch.allclose(x0 + v, Y, atol=1e-5)


def test_frames_outside_the_receptive_field_do_not_matter():
    pf = _tiny()
    bb = pf.backbone
    T, reach = 40, bb.receptive_field // 2
    Y = torch.randn(1, 1, 768, T, dtype=torch.complex64)
    x = torch.randn(1, 1, 768, T, dtype=torch.complex64)
    v = pf.velocity(x, Y, 0.3)
    Y2 = Y.clone()
    Y2[..., 30:] = 0
    v2 = pf.velocity(x, Y2, 0.3)
    assert torch.equal(v[..., :30 - reach], v2[..., :30 - reach])
    assert not torch.equal(v[..., 30 - reach:30], v2[..., 30 - reach:30])


def test_context_branch_reaches_further_and_travels_with_the_folder(tmp_path):
    """A dilated context branch (zero at first, so the model is unchanged) widens what each frame sees by
    the dilation; the folder records it, and a forged setting is refused before anything is built."""
    plain = _tiny()
    torch.manual_seed(0)
    pf = Postfilter(backbone="framewise", framewise={**TINY, "context_dilation": 4}, pad_multiple=8,
                    sigma_y=0.4)
    pf.load_state_dict({**pf.state_dict(), **plain.state_dict()})
    T = 60
    Y = torch.randn(1, 1, 768, T, dtype=torch.complex64)
    x = torch.randn(1, 1, 768, T, dtype=torch.complex64)
    assert torch.equal(pf.velocity(x, Y, 0.3), plain.velocity(x, Y, 0.3))
    bb = pf.backbone
    assert bb.receptive_field == 2 * (3 - 1) * 4 + 1 and plain.backbone.receptive_field == 2 * (3 - 1) + 1
    with torch.no_grad():
        for block in bb.blocks:
            block.context.weight.normal_(0, 0.2)
    reach = bb.receptive_field // 2
    Y2 = Y.clone()
    Y2[..., 45:] = 0
    v, v2 = pf.velocity(x, Y, 0.3), pf.velocity(x, Y2, 0.3)
    assert torch.equal(v[..., :45 - reach], v2[..., :45 - reach])
    beyond_plain = 45 - plain.backbone.receptive_field  # frames the model without the branch cannot tell apart
    assert not torch.equal(v[..., 45 - reach:beyond_plain], v2[..., 45 - reach:beyond_plain])
    pf.save(tmp_path / "pf")
    back = Postfilter.load(tmp_path / "pf")
    assert back.config["framewise"]["context_dilation"] == 4 and "context_dilation" not in plain.config["framewise"]
    assert torch.equal(back.velocity(x, Y, 0.3), v)
    config = pf.config
    config["framewise"]["context_dilation"] = -2
    with pytest.raises(ValueError, match=r"framewise.context_dilation = -2 is out of range \[0, 64\]"):
        Postfilter.from_config(config)


def test_spectral_branch_starts_silent_and_travels_with_the_folder(tmp_path):
    """A spectral branch (its output layer zero at first, so the model is unchanged) adds a correction
    computed from the coded features alone: it changes the velocity once trained, not with the flow's
    state, and the folder records it; a forged setting is refused before anything is built."""
    plain = _tiny()
    torch.manual_seed(0)
    pf = Postfilter(backbone="framewise", framewise={**TINY, "spectral_channels": 4}, pad_multiple=8,
                    sigma_y=0.4)
    pf.load_state_dict({**pf.state_dict(), **plain.state_dict()})
    Y = torch.randn(1, 1, 768, 24, dtype=torch.complex64)
    x = torch.randn(1, 1, 768, 24, dtype=torch.complex64)
    assert torch.equal(pf.velocity(x, Y, 0.3), plain.velocity(x, Y, 0.3))
    branch = pf.backbone.spectral
    assert branch is not None and plain.backbone.spectral is None
    with torch.no_grad():
        branch.out.weight.normal_(0, 0.2)
    v = pf.velocity(x, Y, 0.3)
    assert not torch.equal(v, plain.velocity(x, Y, 0.3))
    branch_flops = pf.backbone.flops_per_frame() - plain.backbone.flops_per_frame()
    assert branch_flops > 0  # once per solve, not once per pass
    assert pf.backbone.flops_per_frame(passes=6) - plain.backbone.flops_per_frame(passes=6) == branch_flops
    pf.save(tmp_path / "pf")
    back = Postfilter.load(tmp_path / "pf")
    assert back.config["framewise"]["spectral_channels"] == 4
    assert "spectral_channels" not in plain.config["framewise"]
    assert torch.equal(back.velocity(x, Y, 0.3), v)
    back.configure(precision="float32")  # as every pipeline loads a model: a module-wide cast
    assert torch.equal(back.velocity(x, Y, 0.3), v)
    config = pf.config
    config["framewise"]["spectral_channels"] = 1000
    with pytest.raises(ValueError, match=r"framewise.spectral_channels = 1000 is out of range \[0, 256\]"):
        Postfilter.from_config(config)


def test_spectral_branch_runs_once_per_solve_and_gives_what_every_pass_would(monkeypatch):
    """The branch reads the coded features alone, so a solve computes it once (whole input or chunked),
    and the result is what computing it at every pass gives, to the bit."""
    torch.manual_seed(0)
    pf = Postfilter(backbone="framewise", framewise={**TINY, "spectral_channels": 4}, pad_multiple=8,
                    sigma_y=0.4)
    with torch.no_grad():
        pf.backbone.head.weight.normal_(0, 0.05)
        pf.backbone.spectral.out.weight.normal_(0, 0.2)
    branch = pf.backbone.spectral
    calls = []
    forward = branch.forward
    monkeypatch.setattr(branch, "forward", lambda *a: calls.append(1) or forward(*a))
    y = 0.1 * torch.randn(1, 1, 30_000)
    once = pf.enhance(y, nfe=6, generator=torch.Generator().manual_seed(1))
    assert len(calls) == 1
    passes = PassCounter()
    chunked = enhance_long(pf, y, nfe=4, seed=2, chunk_seconds=0.25, overlap_seconds=0.05, progress=passes)
    assert len(calls) - 1 == sum(passes.updates) // 4 > 1  # once per chunk, not per pass
    monkeypatch.setattr(pf, "_solving", lambda Y, pitch=None: contextlib.nullcontext())
    assert torch.equal(pf.enhance(y, nfe=6, generator=torch.Generator().manual_seed(1)), once)
    assert torch.equal(enhance_long(pf, y, nfe=4, seed=2, chunk_seconds=0.25, overlap_seconds=0.05), chunked)


def test_spectral_cues_mark_a_steady_sinusoid_and_an_impulse():
    """The branch's phase cues: a sinusoid at a bin's centre frequency advances its phase by exactly that
    bin's own step (cue 1), and an impulse in the middle of a frame steps the phase by pi from bin to bin."""
    pf = Postfilter(backbone="framewise", framewise={**TINY, "spectral_channels": 2}, pad_multiple=8)
    fe, branch = pf.feature_extractor, pf.backbone.spectral
    k = 100
    n = torch.arange(48000, dtype=torch.float64)
    tone = (0.5 * torch.cos(2 * math.pi * k / fe.n_fft * n)).float()
    Y = fe.complex_stft(tone[None, None])[:, 0]
    cues = branch.cues(Y, Y.abs())
    advance = torch.complex(cues[0, 1], cues[0, 2])[k, 4:-4]
    assert float((advance - 1).abs().max()) < 1e-3
    click = torch.zeros(48000)
    click[40 * fe.hop_length] = 1.0
    Y = fe.complex_stft(click[None, None])[:, 0]
    cues = branch.cues(Y, Y.abs())
    delay = torch.complex(cues[0, 3], cues[0, 4])[1:600, 40]
    assert float((delay + 1).abs().max()) < 1e-3


def test_enhance_shapes_seeds_and_folder_round_trip(tmp_path):
    pf = _tiny(sigma_y=torch.linspace(0.2, 0.5, 768, dtype=torch.float64).reshape(768, 1))
    y = 0.1 * torch.randn(2, 1, 20_000)
    a = pf.enhance(y, nfe=4, generator=torch.Generator().manual_seed(3))
    b = pf.enhance(y, nfe=4, generator=torch.Generator().manual_seed(3))
    assert a.shape == y.shape and torch.equal(a, b) and bool(torch.isfinite(a).all())
    assert not torch.equal(a, y)
    pf.save(tmp_path / "pf")
    back = Postfilter.load(tmp_path / "pf")
    assert back.config == pf.config and back.config["version"] == 2 and back.config["backbone"] == "framewise"
    assert torch.equal(back.enhance(y, nfe=4, generator=torch.Generator().manual_seed(3)), a)
    assert back.settings["channels_last"] is False


def test_weights_stored_as_float16_load_back_and_run_as_float32(tmp_path):
    """A folder may store the network at half size; its buffers (window, sigma_y, the time embedding's
    frequencies) stay exact, the weights load back into float32 rounded to float16, and the output barely
    moves."""
    from safetensors import safe_open

    pf = _tiny(sigma_y=torch.linspace(0.2, 0.5, 768, dtype=torch.float64).reshape(768, 1))
    pf.save(tmp_path / "full")
    pf.save(tmp_path / "half", weights_dtype="float16")
    full, half = (tmp_path / n / "model.safetensors" for n in ("full", "half"))
    with safe_open(str(half), framework="pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 - safetensors handles
    assert dtypes["backbone.head.weight"] == "F16" and dtypes["sigma_y"] == "F64"
    assert dtypes["feature_extractor.complex_stft.window"] == dtypes["backbone.time_projection.W"] == "F32"
    assert half.stat().st_size < 0.6 * full.stat().st_size
    back = Postfilter.load(tmp_path / "half")
    assert back.backbone.head.weight.dtype == torch.float32 and torch.equal(back.sigma_y, pf.sigma_y)
    learned = dict(pf.named_parameters())
    for k, v in pf.state_dict().items():
        expected = v.half().float() if k in learned else v
        assert torch.equal(back.state_dict()[k], expected), k
    y = 0.1 * torch.randn(1, 1, 20_000)
    a = pf.enhance(y, nfe=4, generator=torch.Generator().manual_seed(3))
    b = back.enhance(y, nfe=4, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(a, b) and float((a - b).abs().max()) < 1e-2 * float(a.abs().max())
    with torch.no_grad():
        pf.backbone.head.bias[0] = 1e5
    with pytest.raises(ValueError, match="too large for float16"):
        pf.save(tmp_path / "big", weights_dtype="float16")
    with pytest.raises(ValueError, match="weights dtype must be one of float32, float16"):
        pf.save(tmp_path / "odd", weights_dtype="bfloat16")


def test_long_input_chunks_cover_every_sample_and_match_whole_away_from_seams():
    pf = _tiny()
    y = 0.1 * torch.randn(1, 1, 48_000 * 3)
    noise = torch.randn(1, 1, 768, 376, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    whole = enhance_long(pf, y, nfe=2, noise=noise, chunk_seconds=10.0)
    chunked = enhance_long(pf, y, nfe=2, noise=noise, chunk_seconds=1.0, overlap_seconds=0.3)
    assert chunked.shape == y.shape and bool(torch.isfinite(chunked).all())
    # with the same noise, a frame-wise network sees the same frames away from the chunk edges: the
    # output there equals the whole-file output (the first chunk's first half, a middle stretch)
    assert torch.allclose(whole[..., :12_000], chunked[..., :12_000], atol=1e-5)
    assert float((whole - chunked).abs().max()) < 0.5 * float(whole.abs().max())


def test_noise_longer_than_a_whole_input_is_cut_to_its_frames():
    """An input that fits one chunk: noise of more frames than its features was refused, because it was cut
    to the chunk's frames (padded as NCSN++ pads them: 384 here), not to the 376 this backbone pads to."""
    pf = _tiny()
    y = 0.1 * torch.randn(1, 1, 48_000 * 3)
    noise = torch.randn(1, 1, 768, 400, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(enhance_long(pf, y, nfe=2, noise=noise, chunk_seconds=10.0),
                       pf.enhance(y, 2, noise=noise[..., :376]))


def test_unknown_backbone_and_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="backbone must be one of"):
        Postfilter(backbone="transformer")
    with pytest.raises(ValueError, match="unknown framewise backbone settings"):
        Postfilter(backbone="framewise", framewise={"depth": 3})
    config = _tiny().config
    config["backbone"] = "mystery"
    with pytest.raises(ValueError, match="unknown backbone 'mystery'"):
        Postfilter.from_config(config)


def test_reduced_precision_runs_and_stays_close():
    pf = _tiny()
    Y = torch.randn(1, 1, 768, 16, dtype=torch.complex64)
    x = torch.randn(1, 1, 768, 16, dtype=torch.complex64)
    ref = pf.velocity(x, Y, 0.5)
    pf.configure(precision="bfloat16")
    low = pf.velocity(x, Y, 0.5)
    assert low.dtype == torch.complex64
    assert float((low - ref).abs().max() / ref.abs().max()) < 0.05


def test_temperature_scales_the_start_noise_and_travels_with_the_folder(tmp_path):
    """Temperature t runs the flow from Y + t sigma_y eps: the same as t = 1 on noise scaled by t, for whole
    inputs and chunked ones alike; 0 makes the output independent of the noise. It is saved only when it is
    not FlowDec's 1, so other folders keep their configs byte for byte."""
    pf = _tiny()
    y = 0.1 * torch.randn(1, 1, 20_000)
    noise = torch.randn(1, 1, 768, 56, dtype=torch.complex64, generator=torch.Generator().manual_seed(4))
    assert "temperature" not in pf.config
    reference = pf.enhance(y, nfe=2, noise=0.5 * noise)
    pf.temperature = 0.5
    torch.testing.assert_close(pf.enhance(y, nfe=2, noise=noise), reference, rtol=0, atol=1e-6)
    long_noise = torch.randn(1, 1, 768, 376, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    y_long = 0.1 * torch.randn(1, 1, 48_000 * 3)
    chunked = enhance_long(pf, y_long, nfe=2, noise=long_noise, chunk_seconds=1.0, overlap_seconds=0.3)
    pf.temperature = 1.0
    torch.testing.assert_close(
        enhance_long(pf, y_long, nfe=2, noise=0.5 * long_noise, chunk_seconds=1.0, overlap_seconds=0.3), chunked,
        rtol=0, atol=1e-6)
    pf.temperature = 0.0
    assert torch.equal(pf.enhance(y, nfe=2, noise=noise), pf.enhance(y, nfe=2, noise=2 * noise))
    pf.temperature = 0.5
    pf.save(tmp_path / "pf")
    assert Postfilter.load(tmp_path / "pf").temperature == 0.5
    for bad in (True, -0.1, 2.5, "1", float("nan")):
        config = pf.config
        config["temperature"] = bad
        with pytest.raises(ValueError, match="temperature"):
            Postfilter.from_config(config)


def test_the_pitch_an_experiment_tells_the_postfilter(experiment_scripts):
    """scripts/experiment_postfilter_f0.py adds an F0 template to the shipped backbone through hooks that
    start at zero: the postfilter it starts from is computed exactly, a zero template (unvoiced) adds
    nothing however trained, and the template peaks at the bins of the F0's harmonics, only below its top."""
    import experiment_postfilter_f0 as exp
    import numpy as np

    pf = _tiny()
    fe = pf.feature_extractor
    y = 0.1 * torch.randn(1, 1, 48000 // 4)
    Y, _, _ = fe(y)
    x_t, t = Y + 0.1 * torch.randn_like(Y), torch.tensor([0.4])
    before = pf.backbone(x_t, Y, t, sigma_y=pf.sigma_y)
    hooks = exp.PitchHooks(pf.backbone, pf.sample_rate, fe.n_fft)
    f0 = np.full((1, Y.shape[-1] - 3), 200.0)  # shorter than the frames: the rest has no pitch
    f0[0, :2] = 0.0
    hooks.tell(f0)
    assert torch.equal(pf.backbone(x_t, Y, t, sigma_y=pf.sigma_y), before)  # new paths start at zero

    template = hooks.template[0]
    n = pf.backbone.n_freqs
    harmonic = [int(round(k * 200.0 * fe.n_fft / pf.sample_rate)) for k in (1, 2, 3)]
    assert not template[:, :2].any()  # unvoiced frames
    assert all(float(template[b, 5]) > 0.9 for b in harmonic)  # cos peaks on the harmonics
    top = int(exp.TEMPLATE_TOP_HZ * fe.n_fft / pf.sample_rate) + 1
    assert not template[top:n].any() and not template[n + top:].any()

    with torch.no_grad():
        hooks.direct.normal_()
        hooks.project.weight.normal_(0, 0.01)
    told = pf.backbone(x_t, Y, t, sigma_y=pf.sigma_y)
    assert not torch.allclose(told, before)
    hooks.tell(np.zeros_like(f0))  # trained paths, zero template: exactly the backbone alone
    assert torch.equal(pf.backbone(x_t, Y, t, sigma_y=pf.sigma_y), before)
    hooks.tell(None)
    assert torch.equal(pf.backbone(x_t, Y, t, sigma_y=pf.sigma_y), before)


def test_the_experiments_f0_frames_are_the_postfilters(experiment_scripts):
    """The F0 of frame i is the pitch at sample i * hop, where the postfilter's centred STFT frame i is."""
    import experiment_postfilter_f0 as exp
    import numpy as np

    sr, hop = 48000, 384
    t = np.arange(sr) / sr
    f0 = 150 + 200 * t  # a voice rising fast enough that half a hop is 0.8 Hz
    voice = sum(np.sin(k * 2 * np.pi * np.cumsum(f0) / sr) / k for k in range(1, 15))
    frames = sr // hop + 1
    track = exp.frame_f0s(torch.from_numpy(voice)[None, None], hop, frames)[0]
    centres = np.arange(frames) * hop
    assert np.abs(track - f0[np.minimum(centres, sr - 1)])[8:-8].mean() < 0.7  # 1.25 half a hop late
