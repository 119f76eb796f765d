"""The pitch side channel: YIN on the model-rate input, its grid, its coding, its place in .fdc files and
rate plans, and the frame-wise postfilter that reads it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import struct
import zlib

import numpy as np
import pytest
import torch

from flowdec_cli import pitch as P
from flowdec_cli.container import FdcError, decode_fdc, encode_fdc
from flowdec_cli.framewise import harmonic_template
from flowdec_cli.longaudio import enhance_long
from flowdec_cli.pipeline import Codec
from flowdec_cli.postfilter import Postfilter

from .conftest import tone
from .test_container import make_header, random_codes

LAY = P.F0_24MS
SR = 48000
TINY = {"dim": 16, "intermediate_dim": 32, "num_blocks": 2, "kernel_size": 3, "fourier_size": 8}


def voice(seconds: float, f0=lambda t: 150.0 * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t)), level: float = 0.2):
    """A harmonic tone whose pitch glides as ``f0(t)`` says, and that pitch per sample."""
    t = np.arange(int(seconds * SR)) / SR
    f = f0(t)
    phase = 2 * np.pi * np.cumsum(f) / SR
    return sum(level / h * np.sin(h * phase) for h in range(1, 8)), f


# -- analysis -----------------------------------------------------------------------------------------

def test_yin_follows_a_gliding_voice_and_marks_silence_and_noise_unvoiced():
    x, f = voice(2.0)
    x[SR // 2:SR] = 0.0  # half a second of silence
    x[int(1.5 * SR):] = 0.05 * np.random.default_rng(0).standard_normal(len(x) - int(1.5 * SR))  # then noise
    f0 = P.measure_pitch(LAY, x[None], len(x))[0]
    assert f0.shape == (LAY.values(len(x)),)
    centres = np.arange(len(f0)) * LAY.hop + LAY.offset
    clear = (centres > 1500) & (centres < SR // 2 - 1500) | (centres > SR + 1500) & (centres < 1.5 * SR - 1500)
    assert (f0[clear] > 0).all()
    assert np.abs(f0[clear] / f[centres[clear]] - 1).max() < 0.01  # within 17 cents
    silent = (centres > SR // 2 + 1100) & (centres < SR - 1900)
    assert silent.any() and (f0[silent] == 0).all()
    noisy = centres > 1.5 * SR + 1100
    assert (f0[noisy] == 0).mean() > 0.9


def test_the_meter_streams_what_a_whole_signal_gives():
    """Fed in blocks of any size, the F0 is the same as measured at once; the length given at the end
    counts samples not fed as zeros."""
    x = tone(1.3, SR, channels=2).T.astype(np.float64)
    whole = P.measure_pitch(LAY, x, x.shape[1])
    meter = P.PitchMeter(LAY, 2)
    rng = np.random.default_rng(1)
    a = 0
    while a < x.shape[1] - 5000:
        n = int(rng.integers(1, 9000))
        meter.push(x[:, a:a + n])
        a += n
    padded = np.concatenate([x[:, :a], np.zeros((2, x.shape[1] - a))], axis=1)
    assert np.array_equal(meter.finish(x.shape[1]), P.measure_pitch(LAY, padded, x.shape[1]))
    assert (whole > 0).mean() > 0.9
    with pytest.raises(ValueError, match="more than the length"):
        meter = P.PitchMeter(LAY, 1)
        meter.push(np.zeros((1, 100)))
        meter.finish(99)


def test_the_grid_rounds_log_f0_to_50_cents_and_keeps_unvoiced():
    f = np.array([0.0, 60.0, 100.0, 440.0, 1976.0, 5000.0, 30.0])
    steps = P.quantise(LAY, f)
    assert steps[0] == 0 and steps[1] == 1 and steps[-3] == LAY.n_steps == 122 and steps[-2] == 122
    assert steps[-1] == 1  # below the grid: its lowest point
    back = P.dequantise(LAY, steps)
    inside = (f >= 60) & (f <= 1977)
    assert np.abs(1200 * np.log2(back[inside] / f[inside])).max() <= 25.0 + 1e-9
    assert back[0] == 0.0


def test_each_postfilter_frame_takes_the_value_whose_span_holds_its_centre():
    steps = np.array([[0, 5, 7], [1, 2, 3]], np.int16)
    track = P.frame_track(LAY, steps, 12, 384)
    assert track.shape == (2, 12)
    assert np.array_equal(track[0, :3], [0.0, 0.0, 0.0])
    assert np.allclose(track[1, 3:6], P.dequantise(LAY, 2))
    assert np.allclose(track[0, 6:9], P.dequantise(LAY, 7))
    assert (track[:, 9:] == 0).all()  # past the last value


# -- coding --------------------------------------------------------------------------------------------

def test_the_layout_tables_are_the_ones_the_spec_pins():
    rows = LAY.frequencies()
    assert rows.shape == (2, 2 * LAY.n_steps) and (rows.sum(axis=1) == 1 << 16).all() and rows.min() >= 1
    digests = [hashlib.sha256(r.astype("<u2").tobytes()).hexdigest()[:16] for r in rows]
    assert digests == ["2ac9c6260e66e77f", "2a8e3e7751f6c292"]  # docs/fdc-format.md, section 3.4


def test_steps_round_trip_and_a_steady_voice_costs_little():
    x, _ = voice(4.0)
    steps = P.quantise(LAY, P.measure_pitch(LAY, np.stack([x, 0 * x]), len(x)))
    data = P.encode_steps(LAY, steps)
    assert np.array_equal(P.decode_steps(LAY, data, 2, steps.shape[1]), steps)
    assert (steps[1] == 0).all()
    assert 8 * len(data) / 4.0 < 150  # bit/s for a voiced channel and a silent one
    assert P.decode_steps(LAY, P.encode_steps(LAY, np.zeros((1, 0), np.int16)), 1, 0).shape == (1, 0)


@pytest.mark.parametrize("damage", ["cut", "extra", "random", "claim"])
def test_bytes_that_are_not_the_stream_of_their_steps_are_refused(damage):
    steps = np.array([[0, 40, 41, 41, 0, 0, 90, 89]], np.int16)
    data = P.encode_steps(LAY, steps)
    channels, values = 1, 8
    if damage == "cut":
        data = data[:-4]
    elif damage == "extra":
        data = data + data[-4:]
    elif damage == "random":
        data = np.random.default_rng(3).integers(0, 256, len(data) + 8, dtype=np.uint8).tobytes()
    else:  # a header that claims far more values than the bytes can hold: refused before decoding
        values = 10**9
    with pytest.raises(P.PitchError):
        P.decode_steps(LAY, data, channels, values)


def test_steps_outside_the_grid_are_not_coded():
    for bad in (np.array([[123]]), np.array([[-1]]), np.array([[1.5]]), np.array([1, 2])):
        with pytest.raises(P.PitchError):
            P.encode_steps(LAY, bad)
    with pytest.raises(P.PitchError, match="not known to this flowdec"):
        P.pitch_layout("f0-10ms")
    with pytest.raises(P.PitchError, match="48000 Hz only"):
        P.pitch_layout("f0-24ms", 44100)


# -- the .fdc file ---------------------------------------------------------------------------------------

def pitched_header(channels: int = 1, **kw):
    h = make_header(channels=channels, model_name="flowdec-small", **kw)
    rng = np.random.default_rng(4)
    h.pitch_layout = LAY.name
    h.pitch = rng.integers(0, LAY.n_steps + 1, (channels, LAY.values(h.coded_length))).astype(np.int16)
    return h


def test_a_file_with_pitch_is_a_1_3_file_that_gives_its_steps_back():
    h = pitched_header(channels=2)
    codes = random_codes(h)
    data = encode_fdc(h, codes)
    assert (data[4], data[5]) == (1, 3)
    back, got = decode_fdc(data)
    assert np.array_equal(got, codes) and np.array_equal(back.pitch, h.pitch)
    assert back.pitch_layout == LAY.name and back.pitch_bytes == len(P.encode_steps(LAY, h.pitch))
    hlen = struct.unpack_from("<H", data, 6)[0]
    assert len(data) == 12 + hlen + back.payload_size + back.pitch_bytes  # section 1: 12 + H + P + E + Q
    plain = dataclasses.replace(h, pitch_layout="", pitch=None)
    assert (encode_fdc(plain, codes)[4], encode_fdc(plain, codes)[5]) == (1, 0)
    assert back.to_dict()["pitch"] == h.pitch.tolist()


def test_pitch_steps_that_do_not_fit_the_codes_are_refused_when_writing():
    h = pitched_header()
    h.pitch = h.pitch[:, :-1]
    with pytest.raises(FdcError, match="do not fit this signal"):
        encode_fdc(h, random_codes(h))
    h = pitched_header()
    h.pitch_layout = ""
    with pytest.raises(FdcError, match="without a pitch layout"):
        encode_fdc(h, random_codes(h))


def _forged(data: bytes, edit) -> bytes:
    """``data`` with its header map changed by ``edit`` and the sizes and CRC made to agree again."""
    import msgpack

    hlen = struct.unpack_from("<H", data, 6)[0]
    head = msgpack.unpackb(data[8:8 + hlen], strict_map_key=False)
    edit(head)
    new = msgpack.packb(head, use_bin_type=True)
    body = data[:6] + struct.pack("<H", len(new)) + new + data[8 + hlen:-4]
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("edit, message", [
    (lambda h: h.update({22: "f0-5ms"}), "pitch layout 'f0-5ms' is not known"),
    (lambda h: h.pop(23), "without pitch_bytes"),
    (lambda h: h.update({23: -1}), "pitch_bytes (key 23) must be an integer"),
    (lambda h: h.update({22: ""}), "pitch_bytes without a pitch layout"),
    (lambda h: h.update({12: 10**9, 6: 10**9 * 640}), "cannot be coded in"),
])
def test_a_forged_pitch_header_is_refused_before_anything_is_decoded(edit, message):
    h = pitched_header()
    data = _forged(encode_fdc(h, random_codes(h)), edit)
    with pytest.raises(FdcError) as info:
        decode_fdc(data, "x.fdc")
    assert message in str(info.value) and str(info.value).startswith("x.fdc: ")


def test_a_newer_minor_version_that_fails_says_to_upgrade():
    h = pitched_header()
    data = bytearray(encode_fdc(h, random_codes(h)))
    data[5] = 4  # a 1.4 file with 9 bytes of something new after the pitch
    data = _forged(bytes(data), lambda head: head.update({24: "new", 25: 9}))[:-4] + b"\0" * 9
    data += struct.pack("<I", zlib.crc32(data))
    with pytest.raises(FdcError, match=r"format 1\.4, newer than this flowdec's 1\.3; upgrade flowdec"):
        decode_fdc(data, "new.fdc")


# -- the postfilter ----------------------------------------------------------------------------------------

def pitched_postfilter(seed: int = 0, zero_paths: bool = False) -> Postfilter:
    torch.manual_seed(seed)
    pf = Postfilter(backbone="framewise", framewise={**TINY, "pitch_top_hz": 8000}, pad_multiple=8, sigma_y=0.4)
    with torch.no_grad():
        pf.backbone.head.weight.normal_(0, 0.05)
        if not zero_paths:
            pf.backbone.pitch_embed.weight.normal_(0, 0.5)
            pf.backbone.pitch_head.normal_(0, 0.3)
    return pf


def test_the_pitch_paths_start_at_zero_and_a_zero_template_adds_nothing():
    """Grown from weights without them, the paths compute exactly what those weights did, whatever the
    pitch; trained, they change the velocity only where a frame is voiced."""
    plain = Postfilter(backbone="framewise", framewise=TINY, pad_multiple=8, sigma_y=0.4)
    grown = pitched_postfilter(zero_paths=True)
    trained = pitched_postfilter()
    state = grown.state_dict()
    state.update({k: v for k, v in trained.state_dict().items() if not k.startswith("backbone.pitch_")})
    grown.load_state_dict(state)
    plain.load_state_dict({k: v for k, v in state.items() if not k.startswith("backbone.pitch_")})
    Y = torch.randn(2, 1, 768, 16, dtype=torch.complex64)
    x_t = Y + 0.4 * torch.randn_like(Y)
    t = torch.tensor([0.2, 0.8])
    f0 = torch.full((2, 16), 180.0)
    with torch.no_grad():
        ref = plain.backbone(x_t, Y, t, sigma_y=plain.sigma_y)
        assert torch.equal(grown.backbone(x_t, Y, t, sigma_y=grown.sigma_y, pitch=f0), ref)
        unvoiced = trained.backbone(x_t, Y, t, sigma_y=trained.sigma_y, pitch=torch.zeros(2, 16))
        voiced = trained.backbone(x_t, Y, t, sigma_y=trained.sigma_y, pitch=f0)
    state = {k: v for k, v in trained.state_dict().items() if not k.startswith("backbone.pitch_")}
    plain.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(unvoiced, plain.backbone(x_t, Y, t, sigma_y=plain.sigma_y))
    assert (voiced - unvoiced).abs().max() > 1e-3


def test_the_template_marks_every_harmonic_up_to_its_top():
    pf = pitched_postfilter()
    bins = pf.backbone._pitch_bin_hz
    assert len(bins) == 256 and bins[-1] <= 8000.0 < bins[-1] + 48000 / 1534  # the bins up to 8 kHz
    assert pf.backbone.pitch_embed.in_channels == 512 and tuple(pf.backbone.pitch_head.shape) == (2, 3, 256)
    tpl = harmonic_template(torch.tensor([[200.0, 0.0]]), bins)
    cos = tpl[0, :256, 0]
    near = [int(round(200.0 * h / (48000 / 1534))) for h in range(1, 40)]
    assert (cos[near] > 0.85).all()  # a harmonic lies within half a bin (15.6 Hz) of its nearest bin
    assert (tpl[0, :, 1] == 0).all()  # unvoiced
    Y = torch.randn(1, 1, 768, 8, dtype=torch.complex64)
    cond = pf.backbone.prepare(Y, pf.sigma_y, torch.full((1, 8), 200.0))
    head = cond.head.reshape(1, 3, 768, 8)
    assert head[:, :, :256].abs().max() > 0 and (head[:, :, 256:] == 0).all()  # nothing above the top bin


def test_a_long_input_hands_each_chunk_its_own_frames_of_pitch(monkeypatch):
    pf = pitched_postfilter()
    seen = []
    prepare = pf.backbone.prepare

    def spy(cond, sigma_y, pitch=None):
        seen.append(None if pitch is None else pitch.clone())
        return prepare(cond, sigma_y, pitch)

    monkeypatch.setattr(pf.backbone, "prepare", spy)
    y = 0.1 * torch.randn(1, 1, 40_000)
    frames = 1 + 40_000 // 384
    track = torch.arange(frames, dtype=torch.float64)[None] + 100.0
    enhance_long(pf, y, nfe=2, seed=0, chunk_seconds=0.3, overlap_seconds=0.05, pitch=track)
    assert len(seen) > 2 and all(s is not None for s in seen)
    n = seen[0].shape[1]
    starts = [int(s[0, 0].item() - 100.0) for s in seen]
    assert starts[0] == 0 and starts == sorted(starts)
    for s, a in zip(seen, starts):
        inside = min(n, frames - a)
        assert torch.equal(s[0, :inside], track[0, a:a + inside]) and (s[0, inside:] == 0).all()
    with pytest.raises(ValueError, match="pitch must be shaped"):
        pf.enhance(y, nfe=2, pitch=np.zeros((2, frames)))


def pitched_model(tiny_codec_dir, tmp_path) -> Codec:
    """The tiny codec with :func:`pitched_postfilter` and a plan whose 3.5 kbit/s entry (4 codebooks) sends
    pitch, between 4 codebooks without it at 3.2 and 5 at 3.95."""
    folder = tmp_path / "pitched"
    shutil.copytree(tiny_codec_dir, folder)
    pitched_postfilter().save(folder / "postfilter")
    plan = [{"codebooks": i, "kbps": 0.75 * i + 0.2, "envelope": "bands15"} for i in range(1, 11)]
    plan.insert(4, {"codebooks": 4, "kbps": 3.5, "envelope": "bands15", "pitch": "f0-24ms"})  # after 4 at 3.2
    (folder / "flowdec.json").write_text(json.dumps({"name": "pitched", "licence": "test-only",
                                                     "envelope": "bands15", "rate_plan": plan}))
    return Codec.load(str(folder), device="cpu")


def test_a_model_whose_plan_sends_pitch_writes_it_and_its_postfilter_reads_it(tiny_codec_dir, tmp_path,
                                                                              monkeypatch):
    codec = pitched_model(tiny_codec_dir, tmp_path)
    audio = tone(1.0, SR)
    header, codes = codec.compress_array(audio, SR, bitrate_kbps=3.5)
    assert header.n_codebooks == 4 and header.pitch_layout == LAY.name
    assert (header.pitch > 0).mean() > 0.8  # the tone is voiced throughout
    assert codec.nominal_kbps(header) == pytest.approx(3.5)
    seen = []
    monkeypatch.setattr("flowdec_cli.longaudio.enhance_long",  # the decoder imports it when it runs
                        lambda *a, pitch=None, **k: seen.append(pitch) or enhance_long(*a, pitch=pitch, **k))
    data = encode_fdc(header, codes, tables=codec.entropy_tables)
    back, got = decode_fdc(data, tables=codec.entropy_tables)
    out = codec.decompress_codes(back, got, nfe=2, seed=0)
    assert out.shape == audio.shape and np.isfinite(out).all()
    assert len(seen) == 1 and seen[0].shape[0] == 1 and (seen[0] > 0).mean() > 0.8
    lower, _ = codec.compress_array(audio, SR, bitrate_kbps=3.4)  # the entry below: 4 codebooks without pitch
    assert lower.n_codebooks == 4 and lower.pitch is None and lower.pitch_layout == ""
