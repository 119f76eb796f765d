"""File-level coding: formats, rates, channels and exact lengths come back; bitrates hold on disk."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from flowdec_cli import audio
from flowdec_cli.container import max_file_size, read_fdc
from flowdec_cli.pipeline import Codec, CodecError

from .conftest import tone


@pytest.fixture(scope="module")
def codec(tiny_codec_dir):
    return Codec.load(tiny_codec_dir, "cpu", chunk_seconds=0.5)


@pytest.mark.parametrize("sr,channels,ext", [(48000, 1, ".wav"), (44100, 2, ".flac"), (16000, 1, ".ogg"),
                                             (22050, 3, ".wav"), (96000, 1, ".flac")])
def test_roundtrip_restores_rate_channels_length(codec, tmp_path, sr, channels, ext):
    x = tone(1.37, sr, channels)
    src = tmp_path / f"in{ext}"
    sf.write(src, x, sr)
    n_in = sf.info(str(src)).frames
    comp = codec.compress_file(src, tmp_path / "a.fdc", bitrate_kbps=6)
    assert comp.header.n_codebooks == 8 and comp.header.num_samples == n_in
    dec = codec.decompress_file(tmp_path / "a.fdc", tmp_path / "out.wav", nfe=0)
    y, sr_out = sf.read(tmp_path / "out.wav", always_2d=True)
    assert sr_out == sr and y.shape == (n_in, channels)
    assert dec.peak_scaled == 1.0


def test_resampling_back_runs_in_blocks_sized_by_the_output(codec, monkeypatch):
    """A header may pair 48 kHz codes with a 10 MHz rate and 1,024 channels: resampling 2^18 model-rate
    samples at a time then held 208x that per channel (2 GB for a 1 KB file). Blocks are now sized by what
    they become; the audio does not depend on the block size."""
    import flowdec_cli.pipeline as pl

    header, codes = codec.compress_array(tone(0.8, 96000, 2), 96000, n_codebooks=4)
    whole = codec.decompress_codes(header, codes, nfe=0)
    sizes: list[int] = []
    real = pl.Resampler.process

    def process(self, block, *args, **kwargs):
        sizes.append(block.size)
        return real(self, block, *args, **kwargs)

    monkeypatch.setattr(pl, "_OUT_BLOCK_VALUES", 4096)
    monkeypatch.setattr(pl.Resampler, "process", process)
    blocked = codec.decompress_codes(header, codes, nfe=0)
    assert len(sizes) > 10 and max(sizes) <= 1024 * 2  # 1,024 model-rate frames of 2 channels at most
    assert blocked.shape == whole.shape == (header.num_samples, 2)
    np.testing.assert_allclose(blocked, whole, atol=1e-6)


def test_resampling_for_the_encoder_runs_in_blocks_sized_by_the_output(codec, monkeypatch):
    """A low input rate multiplies the samples: compress_array at 1 Hz handed soxr the whole array at once
    and it crashed (SIGSEGV) past 2^30 output values. The codes do not depend on the block size."""
    import flowdec_cli.pipeline as pl

    x = tone(0.8, 8000, 2)
    whole = codec.compress_array(x, 8000, n_codebooks=4)[1]
    sizes: list[int] = []
    real = pl.Resampler.process

    def process(self, block, *args, **kwargs):
        out = real(self, block, *args, **kwargs)
        sizes.append(out.size)
        return out

    monkeypatch.setattr(pl, "_OUT_BLOCK_VALUES", 8192)
    monkeypatch.setattr(pl.Resampler, "process", process)
    np.testing.assert_array_equal(codec.compress_array(x, 8000, n_codebooks=4)[1], whole)
    assert len(sizes) > 10 and max(sizes) <= 2 * 8192  # soxr holds some back and hands it on in bursts


def test_codes_do_not_depend_on_chunk_size(tiny_codec_dir, tmp_path):
    x = tone(3.0, 44100, 2)
    headers_codes = []
    for seconds in (0.1, 0.77, 30.0):
        codec = Codec.load(tiny_codec_dir, "cpu", chunk_seconds=seconds)
        headers_codes.append(codec.compress_array(x, 44100))
    for _, codes in headers_codes[1:]:
        np.testing.assert_array_equal(codes, headers_codes[0][1])


def test_file_and_array_paths_agree(codec, tmp_path):
    x = tone(2.1, 32000, 2)
    sf.write(tmp_path / "in.wav", x, 32000, subtype="FLOAT")
    comp = codec.compress_file(tmp_path / "in.wav", tmp_path / "a.fdc", n_codebooks=4)
    header, codes = codec.compress_array(x, 32000, n_codebooks=4)
    np.testing.assert_array_equal(codes, comp.codes)
    y_arr = codec.decompress_codes(header, codes, nfe=0)
    codec.decompress_file(tmp_path / "a.fdc", tmp_path / "o.wav", nfe=0, subtype="FLOAT")
    y_file, _ = sf.read(tmp_path / "o.wav", always_2d=True, dtype="float32")
    np.testing.assert_allclose(y_file, y_arr, atol=1e-6)


def test_decodes_report_the_seconds_of_d0_and_the_postfilter(tmp_path):
    """What ``eval --codec`` reads for its D0 and postfilter columns: measured by the pipeline itself."""
    from flowdec_cli.postfilter import Postfilter

    from .conftest import make_tiny_ndac, write_model_folder

    torch.manual_seed(0)
    folder = write_model_folder(tmp_path / "m", "tiny-pf", make_tiny_ndac(), Postfilter(nf=4, ch_mult=(1, 1)))
    codec = Codec.load(folder, "cpu")
    header, codes = codec.compress_array(tone(0.5, 44100), 44100, n_codebooks=4)
    y, d0_only = codec.decompress_codes_timed(header, codes, nfe=0)
    np.testing.assert_array_equal(y, codec.decompress_codes(header, codes, nfe=0))
    assert d0_only.nfe == 0 and d0_only.d0_seconds > 0 and d0_only.postfilter_seconds == 0.0
    assert d0_only.seconds >= d0_only.d0_seconds and d0_only.sample_rate == 44100
    y, both = codec.decompress_codes_timed(header, codes, nfe=2, seed=1)
    np.testing.assert_array_equal(y, codec.decompress_codes(header, codes, nfe=2, seed=1))
    for res in (both, codec.decompress_codes_to_file(header, codes, tmp_path / "o.wav", nfe=2, seed=1)):
        assert res.nfe == 2 and res.d0_seconds > 0 and res.postfilter_seconds > 0
        assert res.seconds >= res.d0_seconds + res.postfilter_seconds


@pytest.mark.parametrize("kbps,expected_k", [(0.75, 1), (3, 4), (4.5, 6), (6.1, 8), (7.5, 10), (100, 10)])
def test_bitrate_maps_to_largest_fitting_codebook_count(codec, kbps, expected_k):
    assert codec.choose_codebooks(kbps) == expected_k


def test_unreachable_bitrate_lists_valid_ones(codec):
    with pytest.raises(CodecError, match=r"valid rates .*0\.75, 1\.5, 2\.25"):
        codec.choose_codebooks(0.5)


@pytest.mark.parametrize("kbps", [float("nan"), float("inf"), 0.0, -3.0])
def test_a_bitrate_that_is_no_rate_is_refused_as_such(codec, kbps):
    with pytest.raises(CodecError, match=r"must be a positive number of kbit/s .* valid rates"):
        codec.choose_codebooks(kbps)


@pytest.mark.parametrize("kbps", [3.0, 7.5])
def test_size_on_disk_within_budget(codec, tmp_path, kbps):
    sr = 48000
    sf.write(tmp_path / "in.wav", tone(10.0, sr), sr)
    comp = codec.compress_file(tmp_path / "in.wav", tmp_path / "a.fdc", bitrate_kbps=kbps)
    size = (tmp_path / "a.fdc").stat().st_size
    assert size <= max_file_size(kbps * 1000, 10.0)
    assert size <= kbps * 1000 * 10 / 8 * 1.005 + 128
    assert comp.actual_bitrate <= kbps * 1000 * 1.005 + 128 * 8 / 10


def test_a_cap_holds_the_whole_file_on_disk(tiny_codec_dir, tmp_path):
    # with the side channel, a bit-packed file is over its nominal rate by the header and the side channel
    rich = Codec.load(tiny_codec_dir, "cpu", envelope=True)
    sf.write(tmp_path / "in.wav", tone(2.0, 48000, 2), 48000)
    budget = 3000 * 2.0 * 2 / 8  # bytes: 3 kbit/s per channel, 2 s, two channels
    plain = rich.compress_file(tmp_path / "in.wav", tmp_path / "a.fdc", bitrate_kbps=3)
    assert plain.header.n_codebooks == 4 and plain.file_bytes > budget
    capped = rich.compress_file(tmp_path / "in.wav", tmp_path / "b.fdc", bitrate_kbps=3, cap_kbps=3)
    k = capped.header.n_codebooks
    assert capped.file_bytes == (tmp_path / "b.fdc").stat().st_size <= budget
    assert 1 <= k < 4 and capped.header.envelope_bytes > 0
    header, codes = read_fdc(tmp_path / "b.fdc")
    assert np.array_equal(codes, plain.codes[:, :k])  # residual codes: the cap keeps a prefix
    one_more = dataclasses.replace(header, n_codebooks=k + 1)
    assert rich.coded_bytes(one_more, plain.codes[:, :k + 1]) > budget  # and the largest one that fits
    # roundtrip and pipes take the same cap
    comp, _ = rich.roundtrip_file(tmp_path / "in.wav", tmp_path / "o.wav", bitrate_kbps=3, nfe=0, cap_kbps=3)
    assert comp.header.n_codebooks == k
    res, data = rich.compress_bytes(tmp_path / "in.wav", bitrate_kbps=3, cap_kbps=3)
    assert res.header.n_codebooks == k and len(data) <= budget


def test_a_cap_one_codebook_cannot_meet_is_refused_naming_the_file(codec, tmp_path):
    sf.write(tmp_path / "short.wav", tone(0.1, 48000), 48000)
    with pytest.raises(CodecError, match=r"short\.wav: 0\.75 kbit/s per channel on disk cannot hold its 0\.1 s"):
        codec.compress_file(tmp_path / "short.wav", tmp_path / "a.fdc", bitrate_kbps=0.75, cap_kbps=0.75)
    assert not (tmp_path / "a.fdc").exists()
    for cap in (float("nan"), 0.0, -1.0):
        with pytest.raises(CodecError, match="positive number"):
            codec.compress_file(tmp_path / "short.wav", tmp_path / "a.fdc", cap_kbps=cap)


def test_loud_float_input_is_scaled_and_gain_restored(codec, tmp_path):
    x = tone(1.0, 48000) * 3.0  # float file with peaks above full scale
    sf.write(tmp_path / "loud.wav", x, 48000, subtype="FLOAT")
    comp = codec.compress_file(tmp_path / "loud.wav", tmp_path / "a.fdc")
    assert comp.header.gain == pytest.approx(float(np.abs(x).max()), rel=1e-6)
    header, _ = read_fdc(tmp_path / "a.fdc")
    assert header.gain == comp.header.gain
    dec = codec.decompress_file(tmp_path / "a.fdc", tmp_path / "o.wav", nfe=0, subtype="FLOAT")
    y, _ = sf.read(tmp_path / "o.wav", dtype="float32")
    assert np.abs(y).max() <= 1.0 + 1e-6  # the clip guard scaled the restored level back into range
    assert dec.peak_scaled >= 1.0



def test_a_peak_beyond_what_a_header_restores_names_the_input(codec, tmp_path):
    """Float audio may be as loud as it likes, a header's gain may not (section 2.2): refused before coding,
    naming the input and its peak, not the output's header field."""
    sf.write(tmp_path / "huge.wav", tone(0.2, 48000) * 3e12, 48000, subtype="FLOAT")
    with pytest.raises(CodecError, match=r"huge.wav: its peak is [0-9.]+e\+12 times full scale"):
        codec.compress_file(tmp_path / "huge.wav", tmp_path / "a.fdc")
    assert not (tmp_path / "a.fdc").exists()
    with pytest.raises(CodecError, match=r"audio: its peak is"):
        codec.compress_array(tone(0.2, 48000) * 3e12, 48000)

def test_empty_and_tiny_inputs(codec, tmp_path):
    for n in (0, 1, 17):
        sf.write(tmp_path / "in.wav", np.zeros((n, 2), np.float32), 44100)
        codec.compress_file(tmp_path / "in.wav", tmp_path / "a.fdc")
        out = tmp_path / ("o.wav" if n == 0 else "o.flac")  # libsndfile cannot reopen a frameless FLAC
        codec.decompress_file(tmp_path / "a.fdc", out, nfe=0)
        y, sr = sf.read(out, always_2d=True)
        assert y.shape == (n, 2) and sr == 44100


def test_incompatible_model_is_refused(codec, tmp_path, reference_dir):
    sf.write(tmp_path / "in.wav", tone(0.5, 48000), 48000)
    codec.compress_file(tmp_path / "in.wav", tmp_path / "a.fdc")
    other = Codec.load(reference_dir / "ndac25_small" / "weights.pth", "cpu")
    header, _ = read_fdc(tmp_path / "a.fdc")
    with pytest.raises(CodecError, match=r"hop 640.*hop 1920|cannot decode"):
        other.check_header(header, "a.fdc")


def test_different_weights_warn(codec, tmp_path, reference_dir):
    sf.write(tmp_path / "in.wav", tone(0.5, 48000), 48000)
    codec.compress_file(tmp_path / "in.wav", tmp_path / "a.fdc")
    other = Codec.load(reference_dir / "ndac75_small" / "weights.pth", "cpu")
    header, _ = read_fdc(tmp_path / "a.fdc")
    warnings = other.check_header(header, "a.fdc")
    assert warnings and "weights" in warnings[0]


NEAR_TIE = 1e-4  # codes may differ only where the two nearest codebook distances are closer than this


@pytest.mark.slow
def test_long_file_many_chunks_matches_whole(tiny_codec_dir, tmp_path):
    """A file dozens of chunks long: chunked streaming gives the one-piece codes except at near-ties (the
    chunks run the convolutions on other windows, so rounding differs, and on some CPUs, e.g. AVX2-only
    x86, it flips a near-tie); decoding the same codes in chunks equals one piece (1e-5), and decoding
    either set of codes gives audio within 30 dB of the other."""
    x = tone(40.0, 44100, 1)
    sf.write(tmp_path / "long.flac", x, 44100)
    small = Codec.load(tiny_codec_dir, "cpu", chunk_seconds=0.5)
    whole = Codec.load(tiny_codec_dir, "cpu", chunk_seconds=1000)
    comp = small.compress_file(tmp_path / "long.flac", tmp_path / "a.fdc")
    assert comp.codes.shape[-1] == 3000 and comp.codes.shape[-1] / small.chunk_frames >= 40
    _, codes_whole = whole.compress_array(x, 44100)
    assert_codes_equal_but_near_ties(whole, x, 44100, comp.codes, codes_whole)
    y_small = small.decompress_codes(comp.header, comp.codes, nfe=0)
    y_whole = whole.decompress_codes(comp.header, comp.codes, nfe=0)
    assert y_small.shape == x.shape
    assert np.abs(y_small - y_whole).max() < 1e-5
    y_other = whole.decompress_codes(comp.header, codes_whole, nfe=0)
    err = np.sum((y_other - y_whole) ** 2) / max(np.sum(y_whole ** 2), 1e-12)
    assert err < 1e-3  # 30 dB; identical codes give 0


def assert_codes_equal_but_near_ties(codec, x, sr, codes, reference):
    """Every frame whose codes differ does so first at a codebook whose two nearest entries were within
    NEAR_TIE in the reference (later codebooks of that frame code another residual and may differ freely)."""
    assert codes.shape == reference.shape
    diff = codes != reference  # [C, K, T]
    frames = np.nonzero(diff.any(axis=1))
    if not len(frames[0]):
        return
    from flowdec_cli.audio import resample

    audio = torch.from_numpy(np.ascontiguousarray(resample(x[:, None] if x.ndim == 1 else x, sr, 48000).T))
    ref_codes, gaps = codec.ndac.code_margins(audio.unsqueeze(1), codes.shape[1])
    np.testing.assert_array_equal(ref_codes.numpy(), reference)
    for c, t in zip(*frames):
        k = int(np.argmax(diff[c, :, t]))
        assert gaps[c, k, t] < NEAR_TIE, (c, k, t, float(gaps[c, k, t]))
    assert len(frames[0]) <= max(2, diff.shape[-1] // 500), f"{len(frames[0])} frames differ"


def test_exact_ties_break_to_the_lowest_index():
    from flowdec_cli.ndac import lowest_index_of_max

    x = torch.tensor([[1.0, 3.0, 3.0, 2.0], [5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 0.0, 1.0]])
    assert lowest_index_of_max(x).tolist() == [1, 0, 3]
    big = torch.zeros(64, 1024)
    big[:, 7] = big[:, 900] = 1.0  # an exact float32 tie far apart
    assert (lowest_index_of_max(big) == 7).all()
    assert lowest_index_of_max(torch.tensor([[float("nan"), 1.0]])).tolist()[0] in (0, 1)


def test_disk_buffer_path_matches_memory_path(tiny_codec_dir, monkeypatch):
    from flowdec_cli import pipeline

    codec = Codec.load(tiny_codec_dir, "cpu", chunk_seconds=0.3)
    header, codes = codec.compress_array(tone(1.5, 44100, 2), 44100)
    in_memory = codec.decompress_codes(header, codes, nfe=0)
    monkeypatch.setattr(pipeline, "IN_MEMORY_SAMPLES", 1000)
    on_disk = codec.decompress_codes(header, codes, nfe=0)
    np.testing.assert_array_equal(on_disk, in_memory)


def test_disk_array_reads_back_what_was_written():
    from flowdec_cli.pipeline import DiskArray

    a = DiskArray(3, 1000)
    assert a.shape == (3, 1000)
    np.testing.assert_array_equal(a[:, 10:20], np.zeros((3, 10), np.float32))  # never written: zeros
    block = np.arange(3 * 50, dtype=np.float32).reshape(3, 50)
    a[:, 100:150] = block
    a[..., 990:1000] = np.ones((3, 10))
    np.testing.assert_array_equal(a[..., 100:150], block)
    np.testing.assert_array_equal(a[:, 995:2000], np.ones((3, 5), np.float32))
    with pytest.raises(IndexError):
        a[0, 1:2]
    a.close()


def test_end_to_end_reproduces_official_pipeline(reference_dir, tmp_path):
    """pipeline_small: NDAC-75 (small) codes, D0 and the FlowDec postfilter (EMA) with the same noise draw."""
    from flowdec_cli.models import ndac_from_official as _ndac_from_official
    from flowdec_cli.models import save_ndac
    from flowdec_cli.postfilter import Postfilter

    io = np.load(reference_dir / "pipeline_small" / "io.npz")
    model = tmp_path / "official-small"
    save_ndac(_ndac_from_official(reference_dir / "ndac75_small" / "weights.pth"), model / "ndac")
    Postfilter.from_lightning_checkpoint(reference_dir / "flowdec_small" / "step=800000.ckpt").save(
        model / "postfilter")
    codec = Codec.load(model, "cpu", precision="float32")
    audio = io["audio_in"][0].T  # [frames, 1]
    header, codes = codec.compress_array(audio, 48000)
    np.testing.assert_array_equal(codes, io["codes"])
    # the fixture's noise is torch.randn(shape, complex64, generator=Generator().manual_seed(202)): seed 202
    out = codec.decompress_codes(header, codes, nfe=6, seed=202)
    assert out.shape == (62400, 1)
    expected = io["enhanced_trimmed"][0, 0]
    peak = np.abs(expected).max()
    assert peak > 1 and np.abs(out).max() == pytest.approx(1.0, abs=1e-6)  # our clip guard divided by the peak
    np.testing.assert_allclose(out[:, 0] * peak, expected, atol=5e-5, rtol=0)


def test_outputs_get_the_usual_file_mode(codec, tmp_path):
    import os

    sf.write(tmp_path / "in.wav", tone(0.3, 48000), 48000)
    codec.compress_file(tmp_path / "in.wav", tmp_path / "a.fdc")
    codec.decompress_file(tmp_path / "a.fdc", tmp_path / "o.wav", nfe=0)
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("a.fdc", "o.wav"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


# -- bad input to the Python API: one CodecError naming the cause, before any work -----------------------

def test_channels_first_audio_is_refused_naming_the_layout(codec):
    with pytest.raises(CodecError, match=r"\[frames, channels\], got shape \(2, 48000\).*48000 channels"):
        codec.compress_array(tone(1.0, 48000, 2).T, 48000)


@pytest.mark.parametrize("dtype", ["int16", "int32", "uint8", "bool", "complex64"])
def test_audio_that_is_not_float_samples_is_refused(codec, dtype):
    with pytest.raises(CodecError, match=f"float samples in \\[-1, 1\\], got dtype {dtype}"):
        codec.compress_array(np.zeros((4800, 1), dtype), 48000)


@pytest.mark.parametrize("rate", [0, -1, "44100", None, 1e9, 44100.5, True, float("nan")])
def test_a_sample_rate_that_is_no_rate_is_refused(codec, rate):
    with pytest.raises(CodecError, match=r"sample rate must be a whole number of Hz in \[1, 10000000\]"):
        codec.compress_array(tone(0.1, 48000), rate)


def test_a_whole_float_or_numpy_sample_rate_is_taken(codec):
    assert codec.compress_array(tone(0.1, 44100), 44100.0)[0].sample_rate == 44100
    assert type(codec.compress_array(tone(0.1, 44100), np.int64(44100))[0].sample_rate) is int


@pytest.mark.parametrize("request_, why", [
    ({"n_codebooks": 2.5}, "codebook count must be an int, got 2.5"),
    ({"n_codebooks": True}, "codebook count must be an int, got True"),
    ({"n_codebooks": "3"}, "codebook count must be an int, got '3'"),
    ({"bitrate_kbps": "6"}, "bitrate must be a number of kbit/s per channel, got '6'"),
    ({"bitrate_kbps": True}, "bitrate must be a number"),
])
def test_a_rate_request_that_is_no_number_is_refused(codec, request_, why):
    with pytest.raises(CodecError, match=why):
        codec.compress_array(tone(0.1, 48000), 48000, **request_)


@pytest.mark.parametrize("cap", ["6", True, float("nan"), 0.0, -1.0])
def test_a_cap_on_disk_that_is_no_positive_number_is_refused_before_any_coding(codec, tmp_path, monkeypatch, cap):
    """A string cap failed as a bare TypeError after the whole encode, and True was taken as 1 kbit/s."""
    src = tmp_path / "in.wav"
    sf.write(src, tone(0.2, 48000), 48000)
    monkeypatch.setattr(type(codec), "code_file", lambda *a, **k: pytest.fail("coded before the cap was checked"))
    with pytest.raises(CodecError, match=r"cap on disk \(cap_kbps\) must be a positive number"):
        codec.compress_bytes(src, bitrate_kbps=6, cap_kbps=cap)
    with pytest.raises(CodecError, match=r"cap on disk \(cap_kbps\) must be a positive number"):
        codec.compress_file(src, tmp_path / "out.fdc", bitrate_kbps=6, cap_kbps=cap)
    assert not (tmp_path / "out.fdc").exists()


def test_numpy_numbers_are_rate_requests(codec):
    assert codec.compress_array(tone(0.1, 48000), 48000, n_codebooks=np.int64(2))[0].n_codebooks == 2
    assert codec.compress_array(tone(0.1, 48000), 48000, bitrate_kbps=np.float32(1.5))[0].n_codebooks == 2


@pytest.mark.parametrize("seed", ["0", 1.5, True, 2**64])
def test_a_seed_that_is_no_whole_number_is_refused(codec, seed):
    header, codes = codec.compress_array(tone(0.1, 48000), 48000)
    with pytest.raises(CodecError, match="seed must be a whole number from 0"):
        codec.decompress_codes(header, codes, nfe=0, seed=seed)
    assert codec.decompress_codes(header, codes, nfe=0, seed=np.int64(3)).shape == (4800, 1)


def test_a_compress_result_prints_without_its_codes(codec, tmp_path):
    sf.write(tmp_path / "in.wav", tone(0.3, 48000), 48000)
    res = codec.compress_file(tmp_path / "in.wav", tmp_path / "in.fdc")
    assert "codes" not in repr(res) and "n_codebooks" in repr(res)


@pytest.mark.parametrize("call", ["compress_file", "roundtrip_file", "decompress_file", "decompressor"])
def test_the_library_never_writes_over_its_input(codec, tmp_path, tiny_codec_dir, monkeypatch, call):
    from flowdec_cli.pipeline import Decompressor

    monkeypatch.chdir(tmp_path)
    sf.write(tmp_path / "in.wav", tone(0.3, 48000), 48000)
    codec.compress_file(tmp_path / "in.wav", tmp_path / "in.fdc")
    src = tmp_path / ("in.fdc" if call in ("decompress_file", "decompressor") else "in.wav")
    before = src.read_bytes()
    run = {"compress_file": codec.compress_file, "roundtrip_file": codec.roundtrip_file,
           "decompress_file": codec.decompress_file,
           "decompressor": Decompressor(tiny_codec_dir, "cpu", nfe=0).decompress_file}[call]
    with pytest.raises(CodecError, match="output is the input file"):
        run(src, f"./sub/../{src.name}")
    assert src.read_bytes() == before


@pytest.mark.parametrize("change, match", [
    ({"gain": float("nan")}, "gain must be a number"), ({"gain": 0.0}, "gain must be a number"),
    ({"gain": -1.0}, "gain must be a number"), ({"sample_rate": 0}, r"sample_rate = 0 is out of range"),
    ({"codebook_size": 4096}, "cannot decode")])
def test_decoding_refuses_a_header_a_file_could_not_have(codec, change, match):
    header, codes = codec.compress_array(tone(0.5, 48000), 48000, n_codebooks=4)
    with pytest.raises(CodecError, match=match):
        codec.decompress_codes(dataclasses.replace(header, **change), codes, nfe=0)


def _bad_codes(codes: np.ndarray, case: str):
    if case == "above":
        return np.where(np.arange(codes.size).reshape(codes.shape) == 0, 1024, codes)
    if case == "negative":
        return np.where(np.arange(codes.size).reshape(codes.shape) == 0, -1, codes)
    if case == "float":
        return codes.astype(np.float64)
    if case == "bool":
        return codes.astype(bool)
    return codes[:, :0]  # no codebooks


@pytest.mark.parametrize("case, match", [
    ("above", "code 1024 is outside the codebook"), ("negative", "code -1 is outside the codebook"),
    ("float", "codes must be integers, got dtype float64"), ("bool", "codes must be integers, got dtype bool"),
    ("none", r"codes of shape \[1, 0, \d+\] do not match")])
def test_decoding_refuses_codes_a_file_could_not_hold(codec, case, match):
    header, codes = codec.compress_array(tone(0.5, 48000), 48000, n_codebooks=4)
    with pytest.raises(CodecError, match=match):
        codec.decompress_codes(header, _bad_codes(codes, case), nfe=0)


@pytest.mark.parametrize("form", [np.int16, np.uint16, np.int32, list])
def test_codes_of_any_integer_form_decode_alike(codec, form):
    header, codes = codec.compress_array(tone(0.5, 48000), 48000, n_codebooks=4)
    same = codes.tolist() if form is list else codes.astype(form)
    np.testing.assert_array_equal(codec.decompress_codes(header, same, nfe=0),
                                  codec.decompress_codes(header, codes, nfe=0))


@pytest.mark.parametrize("nfe, solver", [(3, "midpoint"), (-1, "midpoint"), (2.0, "midpoint"), (2, "rk4")])
def test_an_nfe_or_solver_that_cannot_run_is_refused_before_decoding(codec, tmp_path, monkeypatch, nfe, solver):
    header, codes = codec.compress_array(tone(0.5, 48000), 48000, n_codebooks=4)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before the NFE was checked")

    monkeypatch.setattr(codec.ndac, "decode_chunks", no_decoding)
    with pytest.raises(CodecError, match=r"NFE|solver"):
        codec.decompress_codes(header, codes, nfe=nfe, solver=solver)
    with pytest.raises(CodecError, match=r"NFE|solver"):
        codec.decompress_codes_to_file(header, codes, tmp_path / "o.wav", nfe=nfe, solver=solver)
    assert not (tmp_path / "o.wav").exists()


def test_a_numpy_integer_nfe_is_an_integer(codec):
    header, codes = codec.compress_array(tone(0.5, 48000), 48000, n_codebooks=4)
    audio, res = codec.decompress_codes_timed(header, codes, nfe=np.int64(0))
    assert res.nfe == 0 and type(res.nfe) is int and audio.shape == (24000, 1)


@pytest.mark.parametrize("device", ["cuda", torch.device("cuda"), "mps", "cuda:99", "nonsense", 3])
def test_a_device_that_is_not_there_is_refused_before_loading(tiny_codec_dir, monkeypatch, device):
    from flowdec_cli import pipeline
    from flowdec_cli.exceptions import FlowdecError
    from flowdec_cli.runtime import DeviceError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("weights loaded before the check"))
    with pytest.raises(DeviceError) as info:
        Codec.load(tiny_codec_dir, device)
    assert isinstance(info.value, FlowdecError) and "--device" not in str(info.value)
    with pytest.raises(DeviceError):
        pipeline.from_pretrained(str(tiny_codec_dir), device)
    with pytest.raises(DeviceError):
        pipeline.Decompressor(tiny_codec_dir, device)


def test_a_cuda_device_beyond_the_last_is_refused(monkeypatch):
    from flowdec_cli.runtime import DeviceError, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DeviceError, match=r"'cuda:2' was asked for, but the CUDA devices here are cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_no_device_means_the_automatic_choice(tiny_codec_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert Codec.load(tiny_codec_dir, None).device == torch.device("cpu")


def test_a_wav_past_4_gib_is_written_as_rf64(tmp_path, monkeypatch):
    """A RIFF size field is 32 bits: a longer .wav is written as RF64, which readers take whole (a plain WAV
    past 4 GiB carries a size they read as truncated). The limit is lowered here to test without 4 GiB."""
    assert audio.wav_container_for(None, 2, "PCM_16") == "WAV"
    assert audio.wav_container_for(3 * 3600 * 44100, 2, "PCM_16") == "WAV"  # 3 h of CD audio: 1.9 GB
    assert audio.wav_container_for(7 * 3600 * 44100, 2, "PCM_16") == "RF64"  # 7 h: 4.4 GB
    assert audio.wav_container_for(4 * 3600 * 48000, 2, "FLOAT") == "RF64"
    # more than two channels: WAVE_FORMAT_EXTENSIBLE with a speaker mask (a 5.1 input lost its layout)
    assert audio.wav_container_for(None, 6, "PCM_24") == "WAVEX"
    assert audio.wav_container_for(None, 6, "IMA_ADPCM") == "WAV"  # no extensible form of it
    monkeypatch.setattr(audio, "_RIFF_LIMIT", 1000)
    x = np.linspace(-0.5, 0.5, 2000, dtype=np.float32)[:, None]
    with audio.AtomicAudioWriter(tmp_path / "long.wav", 48000, 1, "FLOAT", frames=len(x)) as w:
        w.write(x)
    with audio.AtomicAudioWriter(tmp_path / "short.wav", 48000, 1, "FLOAT", frames=100) as w:
        w.write(x[:100])
    assert sf.info(str(tmp_path / "long.wav")).format == "RF64"
    assert sf.info(str(tmp_path / "short.wav")).format == "WAV"
    back, rate = sf.read(str(tmp_path / "long.wav"), dtype="float32")
    assert rate == 48000 and np.array_equal(back, x[:, 0])


def test_an_uncompressed_output_larger_than_the_free_space_is_refused_before_any_work(tmp_path, monkeypatch):
    """A .fdc of a few kB may rightly describe hours at a high rate; a .wav that cannot fit is refused up
    front, naming its size, instead of after the decode has filled the disk."""
    monkeypatch.setattr(audio, "no_space_left", lambda folder, wanted=0, margin=0: wanted > 10_000)
    why = r"big\.wav: cannot write \(no space left on device for its 0\.02 MB of audio\)"
    with pytest.raises(audio.AudioError, match=why):
        audio.AtomicAudioWriter(tmp_path / "big.wav", 48000, 2, "PCM_16", frames=5_000)
    assert list(tmp_path.iterdir()) == []
    with audio.AtomicAudioWriter(tmp_path / "small.wav", 48000, 2, "PCM_16", frames=2_000) as w:
        w.write(np.zeros((2_000, 2), np.float32))
    with audio.AtomicAudioWriter(tmp_path / "c.flac", 48000, 2, frames=5_000) as w:  # compressed: unknown
        w.write(np.zeros((5_000, 2), np.float32))


def test_a_wav_that_fits_is_not_refused_for_want_of_a_spare_mebibyte(tmp_path, monkeypatch):
    """The size check asked for the file plus 1 MiB: a 0.05 MB .wav was refused on a disk with 200 kB free."""
    import os as real_os

    from flowdec_cli import fileio

    class Free:  # what statvfs says of a disk with 200 kB free
        f_bavail, f_frsize = 50, 4096

    monkeypatch.setattr(fileio.os, "statvfs", lambda folder: Free())
    with audio.AtomicAudioWriter(tmp_path / "fits.wav", 48000, 1, "PCM_16", frames=24_000) as w:  # 48 kB
        w.write(np.zeros((24_000, 1), np.float32))
    with pytest.raises(audio.AudioError, match=r"no space left on device for its 0\.19 MB"):
        audio.AtomicAudioWriter(tmp_path / "big.wav", 48000, 2, "PCM_16", frames=48_000)
    assert real_os.path.getsize(tmp_path / "fits.wav") == 48_044


@pytest.mark.parametrize("ext", ["opus", "ogg"])
def test_an_ogg_file_the_encoder_cut_short_is_refused_and_the_old_one_kept(tmp_path, ext):
    """libsndfile's Ogg writer drops a full disk's write errors: a 5 s .opus came out 3.97 s long, reported
    as a success, and with -f it replaced a good file. The length read back must be what was written."""
    out = tmp_path / f"x.{ext}"
    out.write_bytes(b"the good old file")
    w = audio.AtomicAudioWriter(out, 48000, 1)
    w.write(np.zeros((48_000, 1), np.float32))
    w._frames += 960  # as if the last 20 ms had been written and silently dropped
    with pytest.raises(audio.AudioError, match=rf"x\.{ext}: cannot write \(.*48000 of 48960 samples"):
        w.commit()
    assert out.read_bytes() == b"the good old file" and sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_a_publish_that_fails_leaves_no_temporary_file_and_names_the_output(tmp_path, monkeypatch):
    """A failed rename (the folder removed, made read-only, the name taken by a folder) left a finished .part
    beside the output, named in the error instead of the output."""
    def gone(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", str(tmp_path / ".x.wav.part"))

    monkeypatch.setattr(audio, "publish", gone)
    with pytest.raises(audio.AudioError, match=r"x\.wav: cannot write \(No such file or directory\)") as err:
        audio.write_audio(tmp_path / "x.wav", np.zeros(100, np.float32), 48000)
    assert ".part" not in str(err.value) and list(tmp_path.iterdir()) == []


def test_a_no_clobber_publish_that_fails_names_the_output_too(tmp_path, monkeypatch):
    """Without overwrite the file is moved by renameat2 or a hard link; an error there named the
    temporary file (os.link's first path), as the rename with overwrite had before."""
    from flowdec_cli import fileio

    def gone(src, dst):
        raise FileNotFoundError(2, "No such file or directory", src, None, dst)

    monkeypatch.setattr(fileio, "_renameat2_noreplace", lambda src, dst: False)
    monkeypatch.setattr(fileio.os, "link", gone)
    with pytest.raises(OSError) as err:
        fileio.atomic_write_bytes(tmp_path / "x.fdc", b"data", overwrite=False)
    assert err.value.filename == str(tmp_path / "x.fdc") and list(tmp_path.iterdir()) == []


def test_an_output_that_is_a_folder_is_refused_before_any_work(codec, tmp_path):
    (tmp_path / "out.wav").mkdir()
    header, codes = codec.compress_array(tone(0.2, 48000), 48000, n_codebooks=2)
    with pytest.raises(CodecError, match=r"out\.wav: is a folder; a file cannot replace it"):
        codec.decompress_codes_to_file(header, codes, tmp_path / "out.wav", nfe=0, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]


def test_an_output_folder_without_write_permission_is_refused_before_any_work(codec, tmp_path, monkeypatch):
    """`compress` into a read-only folder coded the whole input (6 s for a minute, each file of a batch)
    before the write failed. Simulated: tests may run as root, whom permissions do not stop."""
    import os

    from flowdec_cli import pipeline

    real_access = os.access
    monkeypatch.setattr(pipeline.os, "access", lambda p, mode: False if Path(p) == tmp_path / "ro" else
                        real_access(p, mode))
    (tmp_path / "ro").mkdir()
    sf.write(tmp_path / "in.wav", tone(0.2, 48000), 48000)
    monkeypatch.setattr(pipeline.Codec, "compress_array", lambda *a, **k: pytest.fail("coded before the check"))
    with pytest.raises(CodecError, match=r"x\.fdc: cannot write \(no permission to create files in .*ro\)"):
        codec.compress_file(tmp_path / "in.wav", tmp_path / "ro" / "x.fdc")


def test_overwrite_false_refuses_an_existing_output_before_any_work(codec, tmp_path, monkeypatch):
    """The decode ran to its end (40-80 s for 20 minutes) before the no-clobber rename refused, and the
    message said the file had appeared meanwhile and named a command-line flag."""
    from flowdec_cli.fileio import OutputExistsError

    wav = tmp_path / "in.wav"
    sf.write(wav, tone(0.5, 48000), 48000)
    codec.compress_file(wav, tmp_path / "a.fdc", n_codebooks=4)
    out = tmp_path / "out.wav"
    out.write_bytes(b"mine")

    def no_work(*args, **kwargs):
        raise AssertionError("decoded before refusing")

    monkeypatch.setattr(Codec, "_decode_to_model_rate", no_work)
    monkeypatch.setattr(Codec, "_coded_file", no_work)
    calls = [lambda: codec.decompress_file(tmp_path / "a.fdc", out, nfe=0, overwrite=False),
             lambda: codec.roundtrip_file(wav, out, nfe=0, overwrite=False),
             lambda: codec.compress_file(wav, out.with_suffix(".fdc"), overwrite=False)]
    out.with_suffix(".fdc").write_bytes(b"mine")
    for call in calls:
        with pytest.raises(OutputExistsError, match=r"exists; use overwrite=True to overwrite"):
            call()
    assert out.read_bytes() == out.with_suffix(".fdc").read_bytes() == b"mine"


def test_the_nfe_a_codec_is_loaded_with_is_its_default(tiny_codec_dir):
    """`from_pretrained(..., nfe=2)` was taken and dropped: decodes still ran the model's default."""
    assert Codec.load(tiny_codec_dir, "cpu").resolve_nfe(None) == 0  # a codec alone: the model says 0
    assert Codec.load(tiny_codec_dir, "cpu", nfe=0).resolve_nfe(None) == 0
    with pytest.raises(CodecError, match=r"loaded without a postfilter, so it cannot decode at NFE 2"):
        Codec.load(tiny_codec_dir, "cpu", nfe=2)


def test_stage_errors_are_the_packages_own_and_still_value_errors(codec):
    """load_ndac(...).encode/decode and the sampler raised plain ValueError (and a 1-D tensor failed inside
    torch's convolution): they are InvalidValue now, a FlowdecError and a ValueError."""
    from flowdec_cli.exceptions import FlowdecError, InvalidValue
    from flowdec_cli.sampler import nfe_to_steps

    nd = codec.model.ndac
    bad = [lambda: nd.encode(torch.zeros(1, 1, 640), n_codebooks=11),
           lambda: nd.encode(torch.zeros(48000), n_codebooks=4),
           lambda: nd.decode(torch.full((1, 4, 3), 5000)),
           lambda: nfe_to_steps(3, "midpoint")]
    for call in bad:
        with pytest.raises(InvalidValue) as info:
            call()
        assert isinstance(info.value, FlowdecError) and isinstance(info.value, ValueError)
    with pytest.raises(InvalidValue, match=r"audio must be shaped \[batch, 1, samples\], got \(48000,\)"):
        nd.encode(torch.zeros(48000))


def test_a_codec_loaded_without_its_postfilter_decodes_at_nfe_0_by_default():
    """The default NFE came from the model's card (6) though the postfilter was not loaded: every decode
    that named no NFE failed."""
    codec = Codec.load("flowdec-small", "cpu", with_postfilter=False)
    assert codec.resolve_nfe(None) == 0
    header, codes = codec.compress_array(tone(0.3, 48000), 48000, n_codebooks=2)
    assert codec.decompress_codes(header, codes).shape == (14400, 1)


@pytest.mark.parametrize("kwargs,message", [
    ({"nfe": -1}, "NFE must be a non-negative integer"), ({"nfe": "2"}, "NFE must be a non-negative integer"),
    ({"nfe": True}, "NFE must be a non-negative integer"), ({"nfe": 10**6}, "more than 1000 network passes"),
    ({"chunk_seconds": 0}, "chunk_seconds must be a number of seconds of at least one frame"),
    ({"chunk_seconds": 1e-9}, "of at least one frame"), ({"chunk_seconds": float("nan")}, "of at least one frame")])
def test_a_codecs_own_settings_are_checked_when_it_loads(tiny_codec_dir, kwargs, message):
    """They were taken as given: every decode then failed, NFE '2' with a TypeError, and chunk_seconds 0
    became 1-frame chunks (13x slower)."""
    with pytest.raises(CodecError, match=message):
        Codec.load(tiny_codec_dir, "cpu", **kwargs)


def test_loading_a_model_leaves_the_callers_random_numbers_alone(tiny_codec_dir):
    """Building the modules drew their initial weights from torch's global generator before the weights
    replaced them, so a caller's torch.manual_seed no longer gave the same numbers after a load."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    Codec.load(tiny_codec_dir, "cpu")
    assert torch.equal(torch.rand(3), expected)


def test_a_codebook_count_out_of_range_is_named_in_the_librarys_terms(codec):
    """The library's message named the command line's --n-codebooks."""
    with pytest.raises(CodecError, match=r"has 10 codebooks; cannot code with 12$"):
        codec.choose_rate(n_codebooks=12)


@pytest.mark.parametrize("envelope", [0, "no", "false", 1.0])
def test_a_side_channel_switch_that_is_no_bool_is_refused(tiny_codec_dir, envelope):
    """envelope=0 (or "no") turned the side channel on: only the literal False turned it off."""
    with pytest.raises(CodecError, match="envelope must be True, False or None"):
        Codec.load(tiny_codec_dir, "cpu", envelope=envelope)
    assert Codec.load(tiny_codec_dir, "cpu", envelope=np.False_).envelope_layout == ""
    assert Codec.load(tiny_codec_dir, "cpu", envelope=np.True_).envelope_layout != ""
