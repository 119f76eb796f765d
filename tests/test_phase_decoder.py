"""The phase-carrying D0 (flowdec_cli.phase_decoder): steady partials off the frame-rate comb, chunked decoding
equal to whole-file decoding, model folders, and training behind another codec's encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flowdec_cli.models import load_ndac, save_ndac
from flowdec_cli.ndac import NDAC, NDACConfig
from flowdec_cli.phase_decoder import PhaseDecoder

from .test_training_helpers import TINY_NDAC_MODEL, fast_cpu, ndac_dict, write_clips  # noqa: F401


def _phase_ndac(seed: int = 0, **settings) -> NDAC:
    torch.manual_seed(seed)
    cfg = NDACConfig(**{**TINY_NDAC_MODEL, "decoder_kind": "phase", "phase_dim": 16, "phase_intermediate_dim": 32,
                        "phase_blocks": 2, **settings})
    model = NDAC(cfg).eval()
    with torch.no_grad():  # a head far from its quiet start and blocks at full weight, so every input matters
        model.decoder.head.weight.normal_(0, 0.3)
        for block in model.decoder.blocks:
            block.gamma.fill_(1.0)
    return model


def _strongest_hz(y: np.ndarray, rate: int = 48000) -> float:
    n = 1 << 18
    mag = np.abs(np.fft.rfft(y * np.hanning(len(y)), n))
    return float(np.fft.rfftfreq(n, 1 / rate)[mag.argmax()])


def test_a_steady_frame_plays_a_steady_partial_between_the_frame_rate_lines():
    """A convolutional D0 fed the same input every frame repeats one frame of waveform, so its partials lie on
    multiples of the frame rate (75 Hz); carrying the phase lets one steady frame play any frequency."""
    decoder = PhaseDecoder(latent_dim=8, hop_length=640, dim=16, intermediate_dim=32, num_blocks=1)
    n, f0 = 300, 1010.0  # 35 Hz from the nearest 75 Hz line
    advance = 2 * np.pi * f0 * decoder.frame_hop / 48000
    deviation = (advance - decoder.bin_advance)[None, :, None].expand(1, decoder.bins, n)
    shut = torch.full((1, decoder.bins, n), 30.0)
    with torch.no_grad():
        phasor = decoder.phasors(deviation, torch.zeros_like(shut), shut)
        mag = torch.zeros_like(shut)
        mag[0, round(f0 * decoder.n_fft / 48000)] = 1.0
        y = torch.istft(mag * phasor, decoder.n_fft, decoder.frame_hop, window=decoder.window, center=True)
    found = _strongest_hz(y[0, 24000:72000].numpy())
    assert abs(found - f0) < 0.5 and abs(found - 75 * round(found / 75)) > 30, found
    # with the gate open every frame takes the same fresh phase: the output repeats each hop, on the comb
    with torch.no_grad():
        phasor = decoder.phasors(deviation, torch.zeros_like(shut), -shut)
        y = torch.istft(mag * phasor, decoder.n_fft, decoder.frame_hop, window=decoder.window, center=True)
    found = _strongest_hz(y[0, 24000:72000].numpy())
    assert abs(found - 150 * round(found / 150)) < 1, found  # the body's frame rate, 2 x 75 Hz
    # without a gate the phase only turns: the same partial, and the first frame starts from spread phases
    ungated = PhaseDecoder(latent_dim=8, hop_length=640, dim=16, intermediate_dim=32, num_blocks=1, gate=False)
    with torch.no_grad():
        phasor = ungated.phasors(deviation, None, None)
        y = torch.istft(mag * phasor, decoder.n_fft, decoder.frame_hop, window=decoder.window, center=True)
    assert abs(_strongest_hz(y[0, 24000:72000].numpy()) - f0) < 0.5
    expected = torch.polar(torch.ones(ungated.bins), ungated.first_phase + deviation[0, :, 0])
    assert torch.allclose(phasor[0, :, 0], expected, atol=1e-4)


def test_the_lock_keeps_a_steady_partial_where_its_advance_puts_it_and_its_bins_together():
    """The lock pulls each frame's phases together across neighbouring bins; a partial's bins then add up
    instead of cancelling (with the reference's own magnitudes and advances but spread start phases, the
    unlocked decoder plays a 1,010 Hz tone at a level the starts decide), and it is still a partial at the
    frequency its advance gives, off the 75 Hz lines."""
    kwargs = dict(latent_dim=8, hop_length=640, dim=16, intermediate_dim=32, num_blocks=1, gate=False)
    locked, free = PhaseDecoder(**kwargs, lock=True), PhaseDecoder(**kwargs)
    n, f0, rate = 300, 1010.0, 48000
    x = 0.3 * torch.sin(2 * np.pi * f0 * torch.arange(n * locked.frame_hop) / rate)
    spec = torch.stft(x, locked.n_fft, locked.frame_hop, window=locked.window, center=True, return_complex=True)
    mag = spec.abs()[None, :, :n]
    deviation = (2 * np.pi * f0 * locked.frame_hop / rate - locked.bin_advance)[None, :, None].expand(1, -1, n)
    levels = {}
    for name, decoder in (("locked", locked), ("free", free)):
        with torch.no_grad():
            phasor = decoder.phasors(deviation, None, None)
            phasor = decoder.lock(phasor, mag) if decoder.locked else phasor
            y = torch.istft(mag * phasor, decoder.n_fft, decoder.frame_hop, window=decoder.window, center=True)
        middle = y[0, 24000:72000]
        levels[name] = float(middle.pow(2).mean().sqrt() / 0.3 * np.sqrt(2))
        assert abs(_strongest_hz(middle.numpy()) - f0) < 0.5, name
    assert levels["locked"] > 0.75 and levels["free"] < 0.6, levels  # 0.83 and 0.50 when written
    with pytest.raises(ValueError, match="without a gate"):
        PhaseDecoder(**{**kwargs, "gate": True}, lock=True)


def test_the_lock_does_not_feed_back_so_a_rounding_difference_stays_one():
    """A lock fed back into the recurrence is chaotic where neighbours all but cancel: a difference in the
    last bits grew until bins turned over (a third of them within 3 s of a vibrato tone), so chunked and
    whole-file decoding, or two devices, would part. Applied to each frame alone it stays as small as it
    came in, 3,000 frames (20 s) on."""
    torch.manual_seed(0)
    decoder = PhaseDecoder(latent_dim=8, hop_length=640, dim=16, intermediate_dim=32, num_blocks=1, gate=False,
                           lock=True)
    n, rate = 3000, 48000
    t = torch.arange(n * decoder.frame_hop, dtype=torch.float64) / rate
    pitch = 2 * np.pi * torch.cumsum(220 * (1 + 0.02 * torch.sin(2 * np.pi * 5 * t)), 0) / rate
    x = sum(0.3 / k * torch.sin(k * pitch) for k in range(1, 15)).float() + 0.01 * torch.randn(len(t))
    spec = torch.stft(x, decoder.n_fft, decoder.frame_hop, window=decoder.window, center=True,
                      return_complex=True)[None, :, :n]
    turn = torch.angle(spec[..., 1:] * spec[..., :-1].conj())
    deviation = torch.cat([turn[..., :1], turn], -1) - decoder.bin_advance[:, None]
    with torch.no_grad():
        carried = decoder.phasors(deviation, None, None)
        played = decoder.lock(carried, spec.abs())
        nudged = decoder.lock(carried, spec.abs() * (1 + 1e-6 * torch.randn(spec.shape)))
    assert float((played - nudged).abs().max()) < 0.01


@pytest.mark.parametrize(("gate", "upsample", "lock"), [(True, 2, False), (False, 2, False), (True, 1, False),
                                                        (False, 4, False), (False, 2, True), (False, 1, True)])
@pytest.mark.parametrize("chunk", [1, 2, 7, 40])
def test_chunked_decoding_hands_the_phase_on_and_equals_the_whole_file(chunk, gate, upsample, lock):
    """Also where the context was one frame short (upsample 1), which blocks at 1 % of their weight hid."""
    model = _phase_ndac(phase_gate=gate, phase_upsample=upsample, phase_lock=lock)
    codes = torch.randint(0, 32, (6, 3, 40))  # more channels than go through the network together
    whole = model.decode(codes)
    assert whole.shape == (6, 1, model.decoded_length(40)) == (6, 1, 40 * model.hop_length)
    pieces = list(model.decode_chunks(codes, chunk))
    assert len(pieces) == -(-40 // chunk)
    assert torch.allclose(torch.cat(pieces, -1), whole, atol=1e-4 * float(whole.abs().max()))


def test_phase_settings_are_checked_written_only_for_that_kind_and_load_back(tmp_path):
    assert "decoder_kind" not in NDACConfig(**TINY_NDAC_MODEL).to_dict()  # DAC configs stay as DAC writes them
    for bad, why in ((dict(decoder_kind="vocos"), "decoder_kind must be one of"),
                     (dict(phase_gate="no"), "phase_gate must be true or false"),
                     (dict(phase_lock=1), "phase_lock must be true or false"),
                     (dict(phase_lock=True), "phase_lock is for a decoder without a gate"),
                     (dict(phase_upsample=3), "does not divide the hop"),
                     (dict(phase_dim=0), r"phase_dim = 0 is out of range"),
                     (dict(phase_blocks=65), r"phase_blocks = 65 is out of range \[1, 64\]"),
                     (dict(phase_upsample=160), r"phase_upsample = 160 is out of range \[1, 16\]")):
        with pytest.raises(ValueError, match=why):
            NDACConfig(**{**TINY_NDAC_MODEL, "decoder_kind": "phase", **bad})
    model = _phase_ndac()
    n = sum(p.numel() for p in model.parameters())
    assert 0.9 * n < model.config.parameter_count() < 1.1 * n
    folder = save_ndac(model, tmp_path / "ndac")
    assert json.loads((folder / "config.json").read_text())["decoder_kind"] == "phase"
    codes = torch.randint(0, 32, (1, 3, 12))
    assert torch.equal(load_ndac(folder, "cpu").decode(codes), model.decode(codes))
    locked = _phase_ndac(phase_gate=False, phase_lock=True)
    folder = save_ndac(locked, tmp_path / "locked")
    assert json.loads((folder / "config.json").read_text())["phase_lock"] is True
    back = load_ndac(folder, "cpu")
    assert back.decoder.locked and torch.equal(back.decode(codes), locked.decode(codes))
    from flowdec_cli.training.config import ConfigError, config_from_dict

    lock = dict(decoder_kind="phase", phase_gate=False, phase_lock=True)
    with pytest.raises(ConfigError, match=r"model\.phase_lock: its advances learn from an advance loss"):
        config_from_dict("ndac", ndac_dict(["clips"], tmp_path / "run", model=lock))


@pytest.mark.usefixtures("fast_cpu")
def test_a_phase_decoder_trains_behind_the_encoder_and_codebooks_of_a_dac_codec(tmp_path, capsys):
    """train.init_from a codec with DAC's decoder: its encoder and codebooks are loaded (so its codes and
    entropy tables still hold) and the new decoder learns from new weights; widening it is refused."""
    from flowdec_cli.training.config import config_from_dict
    from flowdec_cli.training.ndac_trainer import NDACTrainer
    from flowdec_cli.training.widen import TrainingError, widen_ndac

    clips = tmp_path / "clips"
    clips.mkdir()
    write_clips(clips, 2, seconds=0.3)
    torch.manual_seed(0)
    source = save_ndac(NDAC(NDACConfig(**TINY_NDAC_MODEL)), tmp_path / "dac" / "ndac").parent
    phase = dict(decoder_kind="phase", phase_dim=16, phase_intermediate_dim=32, phase_blocks=2)
    cfg = config_from_dict("ndac", ndac_dict([str(clips)], tmp_path / "run", model=phase,
                                             optim=dict(train_parts=["decoder"]),
                                             loss=dict(waveform_weight=0.0, cqt_weight=0.0),
                                             train=dict(max_steps=2, init_from=str(source))))
    trainer = NDACTrainer(cfg, device="cpu")
    trainer.run()
    assert "has a 'dac' decoder and this config a 'phase' one" in capsys.readouterr().err
    dac = load_ndac(source, "cpu")
    trained = load_ndac(tmp_path / "run" / "model", "cpu")
    audio = torch.randn(1, 1, 48000 // 4)
    assert torch.equal(trained.encode(audio), dac.encode(audio))
    assert isinstance(trained.decoder, PhaseDecoder)
    with pytest.raises(TrainingError, match="cannot widen a 'phase' decoder"):
        widen_ndac(trainer.model, decoder_factor=2)
    untrained = config_from_dict("ndac", ndac_dict([str(clips)], tmp_path / "run2", model=phase,
                                                   optim=dict(train_parts=["encoder"]),
                                                   train=dict(max_steps=1, init_from=str(source))))
    with pytest.raises(TrainingError, match="would stay untrained"):
        NDACTrainer(untrained, device="cpu", quiet=True).run()


@pytest.fixture(scope="module")
def phase_experiment():
    from tests.conftest import load_script

    yield from load_script("experiment_phase_decoder")


@pytest.mark.parametrize("hz", [440.0, 1000.0, 3010.0])
def test_the_advance_loss_is_how_far_each_bins_turn_is_from_the_references(phase_experiment, hz):
    """scripts/experiment_phase_decoder.py's phase-advance loss: near zero when every bin turns by the tone's
    own advance per hop (whatever bin it is), and the offset itself, wrapped, when all turn by more."""
    decoder = PhaseDecoder(latent_dim=8, hop_length=640, gate=False)
    rate, frames = 48000, 60
    x = 0.3 * torch.sin(2 * np.pi * hz * torch.arange(frames * decoder.frame_hop) / rate)[None, None]
    tone = 2 * np.pi * hz * decoder.frame_hop / rate
    right = (tone - decoder.bin_advance)[None, :, None].expand(1, decoder.bins, frames)
    assert float(phase_experiment.advance_loss(decoder, right, x)) < 0.01
    for offset, expected in ((0.3, 0.3), (-1.0, 1.0), (2 * np.pi + 0.2, 0.2), (np.pi - 0.1, np.pi - 0.1)):
        loss = float(phase_experiment.advance_loss(decoder, right + offset, x))
        assert loss == pytest.approx(expected, abs=0.01), (offset, loss)


def test_the_output_advances_are_the_waveforms_own(phase_experiment):
    """The advances read from a waveform's STFT: the reference's own give no loss; the same tone 30 Hz off
    (0.4 rad a hop) gives that distance."""
    decoder = PhaseDecoder(latent_dim=8, hop_length=640, gate=False)
    frames, rate = 60, 48000
    t = torch.arange(frames * decoder.frame_hop) / rate
    x = (0.3 * torch.sin(2 * np.pi * 1010.0 * t))[None, None]
    own = phase_experiment.output_deviation(decoder, x, frames)
    assert own.shape == (1, decoder.bins, frames)
    assert float(phase_experiment.advance_loss(decoder, own, x)) < 0.01
    off = (0.3 * torch.sin(2 * np.pi * 1040.0 * t))[None, None]
    heard = float(phase_experiment.advance_loss(decoder, phase_experiment.output_deviation(decoder, off, frames), x))
    assert heard == pytest.approx(2 * np.pi * 30 * decoder.frame_hop / rate, abs=0.05)


def test_the_advance_loss_compares_each_frame_with_its_own(phase_experiment):
    """A glide whose pitch rises 5 Hz a frame: the advance of frame n (its phase less frame n - 1's) matches,
    the advance of the frame before or after does not (it is 0.21 rad away; a faster glide smears the
    reference's own advances, which a window of four hops sees as a blend)."""
    decoder = PhaseDecoder(latent_dim=8, hop_length=640, gate=False)
    rate, hop, frames, rise = 48000, decoder.frame_hop, 60, 5.0 / decoder.frame_hop
    t = torch.arange(frames * hop, dtype=torch.float64)
    phase = 2 * np.pi * (300.0 * t + rise * t**2 / 2) / rate
    x = (0.3 * torch.sin(phase)).float()[None, None]
    at_frames = phase[::hop]  # each frame's centre
    tone = torch.cat([at_frames[:1] * 0, at_frames[1:] - at_frames[:-1]]).float()
    right = (tone[None, :] - decoder.bin_advance[:, None])[None]
    assert float(phase_experiment.advance_loss(decoder, right, x)) < 0.06
    for shift in (1, -1):
        assert float(phase_experiment.advance_loss(decoder, right.roll(shift, -1), x)) > 0.15


def test_the_f0_an_experiment_tells_the_decoder_is_the_inputs(experiment_scripts):
    """experiment_phase_decoder.py --f0 gives the decoder the input's per-frame F0 (YIN): right to a few
    hundredths of a percent on sines, within a hertz on a gliding voice, none on noise and silence, and
    an unvoiced frame embeds as zeros."""
    import experiment_pitch_in_codes as pitch

    sr, hop, t = 48000, 640, np.arange(48000) / 48000
    for f in (110.0, 440.0, 523.25, 1000.0, 1760.0):
        track = pitch.frame_f0(0.3 * np.sin(2 * np.pi * f * t + 0.7), sr, hop, 75)
        assert np.abs(track[3:-3] / f - 1).max() < 2e-3, (f, track[3:-3])
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    voice = sum(np.sin(k * 2 * np.pi * np.cumsum(f0) / sr) / k for k in range(1, 20))
    centres = np.arange(75) * hop + hop // 2
    assert np.abs(pitch.frame_f0(voice, sr, hop, 75) - f0[centres])[2:-2].max() < 1.0
    noise = 0.1 * np.random.default_rng(0).standard_normal(sr)
    assert not pitch.frame_f0(noise, sr, hop, 75).any() and not pitch.frame_f0(0 * t, sr, hop, 75).any()
    emb = pitch.f0_embedding(np.array([[0.0, 440.0]]), 2)
    assert emb.shape == (1, pitch.ORACLE_CHANNELS, 2) and not emb[0, :, 0].any() and emb[0, :, 1].abs().sum() > 0
    steady = pitch.f0_embedding(np.array([440.0]), 3)  # one F0 per item, as the tone experiments give it
    assert torch.equal(steady[0, :, 0], emb[0, :, 1]) and steady.shape == (1, pitch.ORACLE_CHANNELS, 3)
