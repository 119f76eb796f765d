"""The band-level side channel: measuring, coding, applying, and its place in .fdc files and the pipeline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from flowdec_cli import envelope as env
from flowdec_cli.container import FdcError, FdcHeader, decode_fdc, encode_fdc, encode_fdc_written, inspect_fdc
from flowdec_cli.models import ModelError
from flowdec_cli.pipeline import Codec, DiskArray

from .conftest import tone

LAYOUT = env.BANDS15


def noise(channels: int, n: int, seed: int = 0, scale: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((channels, n)) * scale).astype(np.float32)


def levels_walk(channels: int, windows: int, seed: int = 0) -> np.ndarray:
    lo, hi = LAYOUT.level_range
    rng = np.random.default_rng(seed)
    q = np.cumsum(rng.integers(-3, 4, size=(channels, windows, LAYOUT.n_bands)), axis=1) - 20
    return np.clip(q, lo, hi).astype(np.int16)


# -- measuring ----------------------------------------------------------------------------------------

def test_full_scale_white_noise_reads_zero_db_in_every_band():
    x = noise(1, 48000 * 3, scale=1.0)
    levels = env.measure(LAYOUT, x, x.shape[1])
    assert levels.shape == (1, LAYOUT.windows(x.shape[1]), 15)
    assert np.abs(levels[:, :-1]).max() < 1.0  # the last window is short and padded with zeros
    assert np.abs(levels[:, :-1].mean()) < 0.1


def test_silence_reads_the_floor():
    q = env.levels_of_signal(LAYOUT, np.zeros((2, 50000), np.float32))
    assert (q == LAYOUT.level_range[0]).all()


@pytest.mark.parametrize("block", [1, 255, 7777, 1 << 20])
def test_meter_fed_in_blocks_matches_the_whole_signal(block):
    x = noise(2, 48000 * 2 + 321, seed=1)
    whole = env.measure(LAYOUT, x, x.shape[1])
    meter = env.BandMeter(LAYOUT, 2)
    for a in range(0, x.shape[1], block):
        meter.push(x[:, a:a + block])
    assert np.abs(meter.finish(x.shape[1]) - whole).max() < 1e-4


def test_meter_counts_missing_samples_as_zeros_and_refuses_more_than_the_length():
    x = noise(1, 30000, seed=2)
    padded = np.pad(x, ((0, 0), (0, 20000)))
    meter = env.BandMeter(LAYOUT, 1)
    meter.push(x)
    assert np.abs(meter.finish(50000) - env.measure(LAYOUT, padded, 50000)).max() < 1e-4
    meter = env.BandMeter(LAYOUT, 1)
    meter.push(x)
    with pytest.raises(ValueError, match="more than the length"):
        meter.finish(1000)


# -- coding -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels, windows", [(1, 1), (2, 7), (3, 40), (1, 0)])
def test_levels_round_trip(channels, windows):
    q = levels_walk(channels, windows, seed=windows)
    data = env.encode_levels(LAYOUT, q)
    assert len(data) % 4 == 0
    back = env.decode_levels(LAYOUT, data, channels, windows)
    assert back.dtype == np.int16 and np.array_equal(back, q)


def test_extreme_jumps_round_trip():
    lo, hi = LAYOUT.level_range
    q = np.full((1, 6, 15), lo, np.int16)
    q[0, 1::2] = hi
    q[0, :, ::3] = lo
    assert np.array_equal(env.decode_levels(LAYOUT, env.encode_levels(LAYOUT, q), 1, 6), q)


def test_levels_that_move_together_cost_less_than_levels_that_do_not():
    """The prediction follows the band below: a spectrum that rises and falls as a whole is cheap."""
    rng = np.random.default_rng(9)
    loudness = np.cumsum(rng.integers(-4, 5, size=60))
    together = np.clip(-30 + loudness[None, :, None] + np.arange(15)[None, None, :] * -1,
                       *LAYOUT.level_range).astype(np.int16)
    apart = levels_walk(1, 60, seed=9)
    cost = [len(env.encode_levels(LAYOUT, q)) * 8 / q.size for q in (together, apart)]
    assert cost[0] < 2.5 < cost[1]


def test_levels_outside_the_range_are_refused():
    q = levels_walk(1, 3)
    q[0, 1, 2] = LAYOUT.level_range[1] + 1
    with pytest.raises(env.EnvelopeError, match="must lie in"):
        env.encode_levels(LAYOUT, q)
    with pytest.raises(env.EnvelopeError, match="shape"):
        env.encode_levels(LAYOUT, np.zeros((1, 3, 4), np.int16))


@pytest.mark.parametrize("cut", [4, 8])
def test_damaged_streams_are_refused(cut):
    q = levels_walk(2, 30, seed=3)
    data = env.encode_levels(LAYOUT, q)
    with pytest.raises(env.EnvelopeError):
        env.decode_levels(LAYOUT, data + b"\0\0\0\1" * 2, 2, 30)  # words left over
    with pytest.raises(env.EnvelopeError):
        env.decode_levels(LAYOUT, data[:-cut] + b"\0\0", 2, 30)  # not whole words
    with pytest.raises(env.EnvelopeError, match="cannot fit"):
        env.decode_levels(LAYOUT, b"", 2, 1000)


def test_unknown_layout_is_named():
    with pytest.raises(env.EnvelopeError, match=r"'bands99'.*upgrade"):
        env.envelope_layout("bands99")


# -- applying -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("block", [256, 1000, 1 << 18])
def test_zero_gain_gives_the_signal_back(block):
    x = noise(2, 40000, seed=4)
    y = x.copy()
    env.filter_bands(LAYOUT, y, y.shape[1], np.zeros((2, LAYOUT.windows(40000), 15)), block=block)
    assert np.abs(y - x).max() < 1e-5


def test_apply_brings_each_band_to_its_sent_level():
    x = noise(1, 48000 * 4, seed=5)
    q = env.levels_of_signal(LAYOUT, x)
    target = q.copy()
    target[:, :, 4] += 1   # +3 dB
    target[:, :, 12] -= 4  # -12 dB
    target[:, :, 6] += 4   # +12 dB: more than the decoder lifts a band
    y = x.copy()
    env.apply_envelope(LAYOUT, y, y.shape[1], target)
    after = env.measure(LAYOUT, y, y.shape[1])[:, :-1]
    before = env.measure(LAYOUT, x, x.shape[1])[:, :-1]
    sent = target[:, :-1] * LAYOUT.step_db
    assert np.abs(after[:, :, 4] - sent[:, :, 4]).max() < 1.0
    assert np.abs(after[:, :, 12] - sent[:, :, 12]).max() < 1.5
    assert np.abs(after[:, :, 9] - sent[:, :, 9]).max() < 1.0  # an untouched band goes to its own level
    lifted = after[:, :, 6] - before[:, :, 6]
    assert np.abs(lifted - LAYOUT.max_boost_db).max() < 1.0


def test_apply_in_blocks_and_on_disk_matches_one_piece():
    x = np.ascontiguousarray(tone(5.0, 48000, channels=2).T)
    target = levels_walk(2, LAYOUT.windows(x.shape[1]), seed=6) + 10
    whole = x.copy()
    env.apply_envelope(LAYOUT, whole, x.shape[1], target, block=1 << 22)
    pieces = x.copy()
    env.apply_envelope(LAYOUT, pieces, x.shape[1], target, block=3000)
    disk = DiskArray(2, x.shape[1])
    try:
        disk[:, 0:x.shape[1]] = x
        env.apply_envelope(LAYOUT, disk, x.shape[1], target, block=5000)
        on_disk = disk[:, 0:x.shape[1]]
    finally:
        disk.close()
    assert np.abs(pieces - whole).max() < 1e-5
    assert np.abs(on_disk - whole).max() < 1e-5


def test_gain_is_clipped():
    x = noise(1, 48000, seed=7, scale=1e-3)
    y = x.copy()
    target = np.full((1, LAYOUT.windows(48000), 15), LAYOUT.level_range[1], np.int16)
    env.apply_envelope(LAYOUT, y, y.shape[1], target)
    assert np.abs(y).max() <= np.abs(x).max() * 10 ** (LAYOUT.max_boost_db / 20) * 4


def test_levels_of_the_wrong_shape_are_refused():
    with pytest.raises(env.EnvelopeError, match="do not fit"):
        env.apply_envelope(LAYOUT, noise(1, 48000), 48000, np.zeros((1, 2, 15), np.int16))


# -- in .fdc files ------------------------------------------------------------------------------------

def header_with_envelope(channels: int = 2, seconds: float = 3.0) -> FdcHeader:
    frames = int(np.ceil(seconds * 75))
    h = FdcHeader(model_name="flowdec-small", model_hash="ab" * 8, sample_rate=48000, channels=channels,
                  num_samples=int(seconds * 48000), model_sample_rate=48000, hop_length=640, codebook_size=1024,
                  n_codebooks=4, model_codebooks=10, num_frames=frames, envelope_layout="bands15")
    h.envelope = levels_walk(channels, h.envelope_windows, seed=8)
    return h


def codes_for(h: FdcHeader) -> np.ndarray:
    return np.random.default_rng(0).integers(0, h.codebook_size, size=h.codes_shape)


def test_file_with_envelope_is_1_2_and_round_trips():
    h = header_with_envelope()
    written, data = encode_fdc_written(h, codes_for(h))
    assert written.format_version == (1, 2) and (data[4], data[5]) == (1, 2)
    assert written.envelope_bytes > 0
    back, codes = decode_fdc(data)
    assert np.array_equal(codes, codes_for(h))
    assert back.envelope_layout == "bands15" and back.envelope_bytes == written.envelope_bytes
    assert np.array_equal(back.envelope, h.envelope)
    assert back.to_dict()["envelope_bytes"] == written.envelope_bytes
    assert inspect_fdc_bytes(data).envelope is None  # info does not decode it


def inspect_fdc_bytes(data: bytes) -> FdcHeader:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.fdc"
        path.write_bytes(data)
        return inspect_fdc(path)


def test_file_without_envelope_keeps_its_old_version():
    h = dataclasses.replace(header_with_envelope(), envelope=None)
    written, data = encode_fdc_written(h, codes_for(h))
    assert written.format_version == (1, 0) and written.envelope_layout == "" and written.envelope_bytes == 0
    assert decode_fdc(data)[0].envelope is None


def test_empty_audio_sends_no_side_channel():
    h = header_with_envelope(seconds=0.0)
    assert h.envelope.shape == (2, 0, 15)
    written, data = encode_fdc_written(h, codes_for(h))
    assert written.format_version == (1, 0) and written.envelope_layout == "" and written.envelope_bytes == 0
    assert written.envelope is None  # the header as written carries no levels it did not write
    assert decode_fdc(data)[0].envelope is None


def test_empty_file_round_trips_with_the_side_channel_on(tiny_codec_dir, tmp_path):
    """``roundtrip`` decodes the header as written, without reading the file back: an empty input
    once failed there with "envelope layout '' is not known"."""
    import soundfile as sf

    sf.write(tmp_path / "empty.wav", np.zeros((0, 2), np.float32), 44100)
    codec = Codec.load(tiny_codec_dir, "cpu", envelope=True)
    comp, _dec = codec.roundtrip_file(tmp_path / "empty.wav", tmp_path / "out.wav", nfe=0)
    assert comp.header.envelope is None and comp.header.envelope_layout == ""
    y, sr = sf.read(tmp_path / "out.wav", always_2d=True)
    assert y.shape == (0, 2) and sr == 44100


def test_envelope_of_the_wrong_shape_is_refused():
    h = header_with_envelope()
    h.envelope = h.envelope[:, :-1]
    with pytest.raises(FdcError, match="envelope levels have shape"):
        encode_fdc(h, codes_for(h))


def forge(data: bytes, **changes) -> bytes:
    """The file with header fields changed (``...``: removed) and a valid CRC (as a forger would make it)."""
    import struct
    import zlib

    import msgpack

    hlen = struct.unpack_from("<H", data, 6)[0]
    head = msgpack.unpackb(data[8:8 + hlen], strict_map_key=False)
    for key, value in changes.items():
        if value is ...:
            del head[int(key[1:])]
        else:
            head[int(key[1:])] = value
    raw = msgpack.packb(head, use_bin_type=True)
    body = data[:6] + struct.pack("<H", len(raw)) + raw + data[8 + hlen:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def test_forged_envelope_fields_give_clear_errors():
    h = header_with_envelope()
    data = encode_fdc(h, codes_for(h))
    with pytest.raises(FdcError, match="'bands99' is not known"):
        decode_fdc(forge(data, k20="bands99"))
    with pytest.raises(FdcError, match="envelope_bytes"):
        decode_fdc(forge(data, k21=-1))
    with pytest.raises(FdcError, match=r"envelope_layout \(key 20\) is given without envelope_bytes \(key 21\)"):
        decode_fdc(forge(data, k21=...))
    with pytest.raises(FdcError, match="payload bytes"):
        decode_fdc(forge(data, k21=10 ** 9))  # more than the file holds: nothing is allocated for it
    with pytest.raises(FdcError, match="envelope levels cannot be coded"):
        decode_fdc(forge(data, k6=48000 * 100000, k12=75 * 100000, k21=4))
    with pytest.raises(FdcError, match="invalid envelope"):
        decode_fdc(forge(data[:-8] + b"\xff" * 4 + data[-4:]))
    with pytest.raises(FdcError, match="defined at 48000 Hz"):
        decode_fdc(forge(data, k7=24000, k4=24000, k15=24000 / 640 * 40))


def test_levels_are_read_only_from_the_stream_they_encode_to(monkeypatch):
    """The range decoder cannot see a stream that ends early (it reads zeros past its data), so the reader
    re-encodes the levels it decoded and compares: here the encoder is made to disagree."""
    q = np.zeros((1, 3, LAYOUT.n_bands), np.int16)
    data = env.encode_levels(LAYOUT, q)
    assert np.array_equal(env.decode_levels(LAYOUT, data, 1, 3), q)
    real = env.encode_levels
    monkeypatch.setattr(env, "encode_levels", lambda layout, levels: real(layout, levels) + bytes(4))
    with pytest.raises(env.EnvelopeError, match=f"envelope of {len(data)} bytes does not hold the symbols"):
        env.decode_levels(LAYOUT, data, 1, 3)


# -- in the pipeline ---------------------------------------------------------------------------------

def test_codec_writes_the_envelope_only_when_asked(tiny_codec_dir):
    audio = tone(2.5, 44100, channels=2)
    plain = Codec.load(tiny_codec_dir, "cpu")
    assert plain.envelope_layout == ""
    assert plain.compress_array(audio, 44100, n_codebooks=4)[0].envelope is None
    with_env = Codec.load(tiny_codec_dir, "cpu", envelope=True)
    header, _codes = with_env.compress_array(audio, 44100, n_codebooks=4)
    assert header.envelope is not None and header.envelope.shape == (2, header.envelope_windows, 15)


def test_decoded_band_levels_follow_the_envelope(tiny_codec_dir):
    """The tiny random codec's output is nothing like its input; the side channel still brings its band
    levels to the original's, and a file without one decodes as before."""
    audio = tone(4.0, 48000, channels=1)
    codec = Codec.load(tiny_codec_dir, "cpu", envelope=True)
    header, codes = codec.compress_array(audio, 48000, n_codebooks=4)
    header, codes = decode_fdc(encode_fdc(header, codes))
    out = codec.decompress_codes(header, codes, nfe=0)
    bare = codec.decompress_codes(dataclasses.replace(header, envelope=None, envelope_layout="", envelope_bytes=0),
                                  codes, nfe=0)
    ref = env.measure(LAYOUT, audio.T, audio.shape[0])[:, 1:-1]
    got = env.measure(LAYOUT, out.T, out.shape[0])[:, 1:-1]
    before = env.measure(LAYOUT, bare.T, bare.shape[0])[:, 1:-1]
    loud = ref > -60  # bands with something in them (the chirp sweeps through bands within a window)
    too_loud = loud & (before > ref + 3)  # cut: down to the original's level
    too_quiet = loud & (before < ref - 3)  # lifted, by at most max_boost_db
    assert too_loud.sum() > 5 and too_quiet.sum() > 5
    assert np.abs(got - ref)[too_loud].mean() < 3.0
    lift = (got - before)[too_quiet]
    assert lift.mean() > LAYOUT.max_boost_db - 2 and lift.max() < LAYOUT.max_boost_db + 3


def test_a_model_at_another_rate_cannot_write_an_envelope(tmp_path):
    from .conftest import make_tiny_ndac, write_model_folder

    ndac = make_tiny_ndac()
    ndac.config.sample_rate = 24000
    folder = write_model_folder(tmp_path / "m24", "m24", ndac)
    with pytest.raises(ModelError, match="defined at 48000 Hz only"):
        Codec.load(folder, "cpu", envelope=True)


def test_the_side_channel_tables_printed_in_the_spec_are_the_ones_coded_with():
    """docs/fdc-format.md lists both rows so that a reader can be written without this code."""
    import re
    from pathlib import Path

    spec = (Path(__file__).resolve().parents[1] / "docs" / "fdc-format.md").read_text()
    rows = []
    for heading in ("Wide residuals", "Narrow residuals"):
        block = spec.split(heading, 1)[1].split(":\n\n", 1)[1].split("\n\n", 1)[0]
        rows.append([int(v) for v in re.findall(r"\d+", block)])
    layout = env.envelope_layout("bands15", 48000)
    for row, num_den in zip(rows, (layout.wide_decay, layout.narrow_decay)):
        weights, w = [], 1 << 40
        for _ in range(64):
            weights.append(w)
            w = max(w * num_den[0] // num_den[1], 1)
        expected = env.freqs_from_counts(np.array(weights[:0:-1] + weights, dtype=np.float64)[None])[0]
        assert row == expected.tolist() and sum(row) == 1 << 16


def test_arguments_that_gave_nan_audio_or_bare_errors_are_refused():
    """NaN levels turned every sample NaN; a 1-D signal failed as an IndexError, a list of levels as an
    AttributeError, a read-only signal as numpy's own error."""
    x = noise(1, 48000, seed=6)
    q = env.levels_of_signal(LAYOUT, x)
    with pytest.raises(env.EnvelopeError, match="levels must be the integer steps quantise"):
        env.apply_envelope(LAYOUT, x.copy(), 48000, np.full(q.shape, np.nan))
    y = x.copy()
    env.apply_envelope(LAYOUT, y, 48000, q.tolist())  # a list of the steps is as good as the array
    with pytest.raises(env.EnvelopeError, match="must be shaped \\[channels, samples\\], got \\(48000,\\)"):
        env.measure(LAYOUT, x[0], 48000)
    with pytest.raises(env.EnvelopeError, match="length must be a whole number of samples, at least 0, got -5"):
        env.measure(LAYOUT, x, -5)
    frozen = x.copy()
    frozen.flags.writeable = False
    with pytest.raises(env.EnvelopeError, match="read-only"):
        env.apply_envelope(LAYOUT, frozen, 48000, q)
    assert np.isfinite(y).all()
