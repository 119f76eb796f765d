"""The harmonic redraw: a decode's voiced low band drawn again at the F0 its file sends, streamed block by block,
and the postfilter setting that has the decoder do it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flowdec_cli import harmonics as H
from flowdec_cli import pitch as P
from flowdec_cli.checkpoints import CheckpointError
from flowdec_cli.exceptions import InvalidValue
from flowdec_cli.longaudio import enhance_long
from flowdec_cli.pipeline import Codec, DiskArray
from flowdec_cli.postfilter import Postfilter

from .conftest import tone
from .test_pitch import LAY, SR, pitched_model, pitched_postfilter

GRID_240 = 49  # step 49 of f0-24ms: 60 Hz * 2 ** (48 / 24) = 240 Hz exactly


def harmonic(seconds: float, f0: float, top: int = 10, seed: int = 0) -> np.ndarray:
    """A steady harmonic tone at ``f0`` with random phases, [1, n] float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = sum(0.2 / k * np.cos(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) for k in range(1, top + 1))
    return np.asarray(x, np.float32)[None]


def steps_for(n: int, step: int, channels: int = 1) -> np.ndarray:
    return np.full((channels, LAY.values(n)), step, np.int16)


def magnitudes(x: np.ndarray) -> np.ndarray:
    """|STFT| [frames, bins] of interior frames (2,048 points, hop 240)."""
    win = np.hanning(H.N_FFT + 1)[:-1]
    starts = np.arange(H.N_FFT, len(x) - 2 * H.N_FFT, H.HOP)
    return np.abs(np.fft.rfft(x[starts[:, None] + np.arange(H.N_FFT)] * win, axis=1))


def test_a_tone_redrawn_at_its_own_pitch_keeps_its_spectrum(monkeypatch):
    monkeypatch.setattr(H, "KEPT", 0.0)  # the series alone
    x = harmonic(1.0, 240.0)
    y = x.copy()
    H.redraw_harmonics(LAY, y, steps_for(x.shape[1], GRID_240), 2400)
    low = np.arange(H.N_FFT // 2 + 1) * SR / H.N_FFT < 2400
    before, after = magnitudes(x[0])[:, low], magnitudes(y[0])[:, low]
    assert np.abs(after - before).max() < 0.01 * before.max()
    assert np.sqrt(np.mean((y - x) ** 2)) > 0.1 * np.sqrt(np.mean(x ** 2))  # the phases are drawn anew


def test_harmonics_out_of_place_are_moved_to_the_sent_pitch():
    x = harmonic(1.0, 252.0, top=16)  # the decode plays them 5 % sharp
    y = x.copy()
    H.redraw_harmonics(LAY, y, steps_for(x.shape[1], GRID_240), 2400)
    df = SR / H.N_FFT
    spectrum = magnitudes(y[0]).mean(0)
    for k in (5, 7, 9):  # below the cut-off: the peak sits on k x 240 Hz, not k x 252 Hz
        near = np.arange(int((k * 246 - 70) / df), int((k * 246 + 70) / df))
        peak = near[np.argmax(spectrum[near])] * df
        assert abs(peak - 240 * k) < df / 2 and abs(peak - 252 * k) > df
    for k in (7, 9):  # the decoded partials stay beside the series at KEPT of their amplitude
        at = int(round(252 * k / df))
        assert 0.8 * H.KEPT < spectrum[at] / magnitudes(x[0]).mean(0)[at] < 1.2 * H.KEPT
    high = np.rint(252 * np.arange(12, 17) / df).astype(int)  # above the cut-off and its fade: untouched
    np.testing.assert_allclose(spectrum[high], magnitudes(x[0]).mean(0)[high], rtol=1e-3)


def test_unvoiced_signals_and_channels_are_left_exactly_as_they_were():
    x = np.concatenate([harmonic(1.0, 240.0), harmonic(1.0, 180.0, seed=1)])
    y = x.copy()
    H.redraw_harmonics(LAY, y, np.zeros((2, LAY.values(x.shape[1])), np.int16), 2400)
    assert np.array_equal(y, x)
    steps = np.concatenate([steps_for(x.shape[1], GRID_240), np.zeros((1, LAY.values(x.shape[1])), np.int16)])
    H.redraw_harmonics(LAY, y, steps, 2400)
    assert np.array_equal(y[1], x[1]) and not np.array_equal(y[0], x[0])


def test_only_the_samples_that_voiced_frames_reach_change():
    x = harmonic(1.5, 240.0)
    steps = np.zeros((1, LAY.values(x.shape[1])), np.int16)
    steps[0, 30:32] = GRID_240  # samples 34,560 ... 36,863
    y = x.copy()
    H.redraw_harmonics(LAY, y, steps, 2400, block=4096)
    changed = np.flatnonzero(y[0] != x[0])
    # the voiced frames and their neighbours (a third of the redraw each), with their windows' reach
    first_frame, last_frame = -(-30 * LAY.hop // H.HOP) - 1, -(-32 * LAY.hop // H.HOP)
    assert changed.min() >= first_frame * H.HOP - H.N_FFT // 2
    assert changed.max() < last_frame * H.HOP + H.N_FFT // 2
    assert len(changed) > LAY.hop


@pytest.mark.parametrize("block", [H.N_FFT, 5_000, 1 << 14])
def test_blocks_and_disk_buffers_give_what_the_whole_signal_gives(block):
    x = tone(2.0, SR, channels=2).T.copy()
    steps = P.steps_of_signal(LAY, x)
    steps[1, 20:40] = 0  # an unvoiced stretch to interpolate the phase across
    whole = x.copy()
    H.redraw_harmonics(LAY, whole, steps, 2400, block=1 << 20)
    assert not np.array_equal(whole, x)
    part = x.copy()
    H.redraw_harmonics(LAY, part, steps, 2400, block=block)
    np.testing.assert_allclose(part, whole, atol=2e-6)
    disk = DiskArray(*x.shape)
    try:
        disk[:, 0:x.shape[1]] = x
        H.redraw_harmonics(LAY, disk, steps, 2400, block=block)
        np.testing.assert_allclose(disk[:, 0:x.shape[1]], whole, atol=2e-6)
    finally:
        disk.close()


@pytest.mark.parametrize("value", [True, 2400.0, "2400", 99, 23_801, -1])
def test_a_cut_off_that_is_not_whole_hz_in_range_is_refused(value):
    with pytest.raises(InvalidValue, match="harmonic_redraw_hz must be"):
        H.check_cutoff(value)


def test_steps_that_do_not_fit_the_signal_or_a_read_only_signal_are_refused():
    x = harmonic(0.5, 240.0)
    with pytest.raises(InvalidValue, match="do not fit a signal of 1 channels"):
        H.redraw_harmonics(LAY, x, steps_for(x.shape[1], GRID_240, channels=2), 2400)
    x.flags.writeable = False
    with pytest.raises(InvalidValue, match="read-only"):
        H.redraw_harmonics(LAY, x, steps_for(x.shape[1], GRID_240), 2400)


# -- the postfilter setting and the decoder stage ----------------------------------------------------------

def test_the_setting_travels_in_the_folder_and_makes_it_version_3(tmp_path):
    pf = pitched_postfilter()
    pf.save(tmp_path / "plain")
    assert "harmonic_redraw_hz" not in pf.config and pf.config["version"] == 2
    pf.harmonic_redraw_hz = 2400
    pf.save(tmp_path / "redrawn")
    config = json.loads((tmp_path / "redrawn" / "config.json").read_text())
    assert config["harmonic_redraw_hz"] == 2400 and config["version"] == 3
    assert Postfilter.from_folder(tmp_path / "redrawn").harmonic_redraw_hz == 2400
    assert Postfilter.from_folder(tmp_path / "plain").harmonic_redraw_hz == 0
    config["harmonic_redraw_hz"] = 1e9
    (tmp_path / "redrawn" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="harmonic_redraw_hz must be a whole number"):
        Postfilter.from_folder(tmp_path / "redrawn")


def test_the_decoder_redraws_before_the_postfilter_only_where_asked(tiny_codec_dir, tmp_path, monkeypatch):
    codec = pitched_model(tiny_codec_dir, tmp_path)
    audio = tone(1.0, SR)
    header, codes = codec.compress_array(audio, SR, bitrate_kbps=3.5)
    assert header.pitch is not None and (header.pitch > 0).mean() > 0.8
    fed = []
    monkeypatch.setattr("flowdec_cli.longaudio.enhance_long",  # what the postfilter is handed
                        lambda model, source, *a, **k: fed.append(np.array(source)) or enhance_long(
                            model, source, *a, **k))
    plain = codec.decompress_codes(header, codes, nfe=2, seed=0)
    d0 = codec.decompress_codes(header, codes, nfe=0)
    codec.postfilter.harmonic_redraw_hz = 2400
    redrawn = codec.decompress_codes(header, codes, nfe=2, seed=0)
    assert np.array_equal(codec.decompress_codes(header, codes, nfe=0), d0)  # NFE 0: the codec alone
    assert len(fed) == 2 and not np.array_equal(redrawn, plain)
    expected = fed[0].copy()
    H.redraw_harmonics(LAY, expected, np.asarray(header.pitch), 2400)
    np.testing.assert_array_equal(fed[1], expected)
    silent, silent_codes = codec.compress_array(audio, SR, bitrate_kbps=3.2)  # an entry without pitch
    assert silent.pitch is None
    codec.postfilter.harmonic_redraw_hz = 0
    before = codec.decompress_codes(silent, silent_codes, nfe=2, seed=0)
    codec.postfilter.harmonic_redraw_hz = 2400
    np.testing.assert_array_equal(codec.decompress_codes(silent, silent_codes, nfe=2, seed=0), before)


# -- training: pairs redrawn as the decoder will redraw, and a model folder that says so ---------------------

def test_pairs_are_redrawn_as_the_decoder_redraws_and_the_export_records_it(tiny_codec_dir, tmp_path):
    import soundfile as sf
    from click.testing import CliRunner

    from flowdec_cli.cli import main
    from flowdec_cli.training.cli import train_group

    if "train" not in main.commands:
        main.add_command(train_group, "train")

    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    clips = tmp_path / "clips"
    clips.mkdir()
    sf.write(clips / "voice.wav", tone(1.0, SR)[:, 0], SR, subtype="FLOAT")
    common = ["--ndac", tiny_codec_dir, "-n", "2", "--device", "cpu", "-q", "--validation-fraction", "0",
              "--test-fraction", "0"]
    assert run("train", "prepare-pairs", clips, "-o", tmp_path / "plain", *common).exit_code == 0
    r = run("train", "prepare-pairs", clips, "-o", tmp_path / "redrawn", *common, "--harmonic-redraw", "2400")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "redrawn" / "prepare.json").read_text())["harmonic_redraw_hz"] == 2400
    clean_p, redrawn_p = (tmp_path / "redrawn" / "train.txt").read_text().split()[0].split(",")
    plain_p = (tmp_path / "plain" / "train.txt").read_text().split()[0].split(",")[1]
    clean, redrawn, plain = (sf.read(p, dtype="float32")[0] for p in (clean_p, redrawn_p, plain_p))
    expected = plain[None].copy()
    H.redraw_harmonics(LAY, expected, P.steps_of_signal(LAY, clean[None]), 2400)
    inner = len(clean) - H.N_FFT  # the pair was redrawn before it was cut to the clip's length
    assert not np.allclose(redrawn[:inner], plain[:inner], atol=1e-3)
    np.testing.assert_allclose(redrawn[:inner], expected[0, :inner], atol=1e-5)
    r = run("train", "prepare-pairs", clips, "-o", tmp_path / "redrawn", *common)
    assert r.exit_code == 1 and "made with harmonic redraw 2400 Hz, this run asks for 0 Hz" in r.output
    # a sigma estimate made on the plain pairs is stale for the redrawn ones, and says why
    from flowdec_cli.training.prepare import pairs_coded_by, stale_sigma_warning

    plain_list, redrawn_list = tmp_path / "plain" / "train.txt", tmp_path / "redrawn" / "train.txt"
    assert "harmonic_redraw_hz" not in pairs_coded_by([plain_list])[0]
    assert pairs_coded_by([redrawn_list])[0]["harmonic_redraw_hz"] == 2400
    estimate = {"pairs_coded_by": pairs_coded_by([plain_list])}
    assert stale_sigma_warning("s.json", estimate, [plain_list]) is None
    assert "redrawn below 2400 Hz" in stale_sigma_warning("s.json", estimate, [redrawn_list])

    pf = tmp_path / "pf"
    pitched_postfilter().save(pf)
    plan = [{"codebooks": i, "kbps": 0.75 * i + 0.2, "envelope": "bands15", "pitch": "f0-24ms"} for i in range(1, 11)]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    flags = ["--ndac", tiny_codec_dir, "--postfilter", pf, "--envelope", "bands15", "-q"]
    r = run("train", "export", tmp_path / "model", *flags, "--rate-plan", tmp_path / "plan.json",
            "--harmonic-redraw", "2400")
    assert r.exit_code == 0, r.output
    assert Codec.load(str(tmp_path / "model"), device="cpu").postfilter.harmonic_redraw_hz == 2400
    r = run("train", "export", tmp_path / "bad", *flags, "--harmonic-redraw", "2400")
    assert r.exit_code == 1 and "needs a postfilter and a rate plan that sends pitch" in r.output
    assert not (tmp_path / "bad").exists()


# -- the decode option -----------------------------------------------------------------------------------------

def test_the_decode_option_turns_the_redraw_on_and_off_and_says_when_it_cannot_act(tmp_path):
    import soundfile as sf
    from click.testing import CliRunner

    from flowdec_cli.cli import main

    src = tmp_path / "in.wav"
    sf.write(src, tone(1.0, SR)[:, 0], SR)
    runner = CliRunner()

    def decode(name: str, *extra: str) -> np.ndarray:
        r = runner.invoke(main, ["decompress", str(tmp_path / "a.fdc"), str(tmp_path / name), "--nfe", "2",
                                 "--seed", "0", "--subtype", "FLOAT", "-q", *extra], catch_exceptions=False)
        assert r.exit_code == 0 and "no effect" not in r.output, r.output
        return sf.read(tmp_path / name, dtype="float32")[0]

    r = runner.invoke(main, ["compress", str(src), str(tmp_path / "a.fdc"), "-b", "7.5", "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    plain, redrawn = decode("plain.wav"), decode("redrawn.wav", "--harmonic-redraw", "2400")
    assert np.abs(redrawn - plain).max() > 1e-3
    assert np.array_equal(decode("off.wav", "--harmonic-redraw", "0"), plain)  # the built-in model's own: off
    r = runner.invoke(main, ["roundtrip", str(src), str(tmp_path / "r.wav"), "--nfe", "0", "--harmonic-redraw",
                             "2400", "--temperature", "0.3", "-q"], catch_exceptions=False)
    assert r.exit_code == 0 and r.output.count("--temperature and --harmonic-redraw have no effect at NFE 0") == 1
    r = runner.invoke(main, ["roundtrip", str(src), str(tmp_path / "x.wav"), "--harmonic-redraw", "50"])
    assert r.exit_code == 2 and "harmonic_redraw_hz must be a whole number of Hz from 100" in r.output
    assert not (tmp_path / "x.wav").exists()
