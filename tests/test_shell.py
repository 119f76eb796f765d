"""The flowdec command in a shell: `-` as standard input and output, closed pipes, --json records, one-line
prefixed messages, early refusals, Opus outputs, the user's default model."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from flowdec_cli.cli import main

from .conftest import tone

SRC = str(Path(__file__).resolve().parents[1] / "src")


def invoke(*args, input: bytes | None = None, env: dict | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input, env=env, catch_exceptions=False)


@pytest.fixture()
def wav(tmp_path):
    path = tmp_path / "in.wav"
    sf.write(path, tone(1.0, 44100, 2), 44100)
    return path


def test_compress_and_decompress_through_pipes(wav, tiny_codec_dir):
    r = invoke("compress", "-", "-", "-b", "3", "-m", tiny_codec_dir, input=wav.read_bytes())
    assert r.exit_code == 0, r.stderr
    fdc = r.stdout_bytes
    assert fdc[:4] == b"\x89FDC"
    assert "flowdec: model tiny-75" in r.stderr and "-: " in r.stderr  # messages on stderr only
    r = invoke("decompress", "-", "-", "--format", "flac", "--nfe", "0", "-m", tiny_codec_dir, input=fdc)
    assert r.exit_code == 0, r.stderr
    y, sr = sf.read(io.BytesIO(r.stdout_bytes), always_2d=True)
    assert sr == 44100 and y.shape == (44100, 2)
    r = invoke("roundtrip", "-", "-", "-n", "2", "--nfe", "0", "-m", tiny_codec_dir, "-q", input=wav.read_bytes())
    assert r.exit_code == 0 and r.stderr == ""
    assert r.stdout_bytes[:4] == b"RIFF"  # WAV by default
    assert sf.read(io.BytesIO(r.stdout_bytes))[0].shape == (44100, 2)


def test_info_reads_a_pipe_as_far_as_the_header_declares(wav, tmp_path, tiny_codec_dir):
    fdc = tmp_path / "a.fdc"
    assert invoke("compress", wav, fdc, "-b", "3", "-m", tiny_codec_dir, "-q").exit_code == 0
    r = invoke("info", "-", "--json", input=fdc.read_bytes())
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == {**json.loads(invoke("info", fdc, "--json").stdout), "file": "-"}
    for data, why in [(fdc.read_bytes() * 2, "-: unexpected data after the end of the file"),
                      (fdc.read_bytes()[:-9], "-: truncated file"), (b"not an fdc", "-: bad magic"),
                      (b"", "-: empty file")]:
        r = invoke("info", "-", input=data)
        assert r.exit_code == 1 and r.stderr.startswith(f"flowdec: error: {why}"), r.stderr
    with open(fdc, "rb") as f:
        for stdin in ({"stdin": f}, {"input": fdc.read_bytes()}):  # a redirected file, a real pipe
            p = subprocess.run([sys.executable, "-m", "flowdec_cli", "info", "-"], capture_output=True,
                               env={**os.environ, "PYTHONPATH": SRC}, timeout=120, **stdin)
            assert p.returncode == 0 and b"n_codebooks" in p.stdout, p.stderr


def test_a_wav_piped_in_with_its_sizes_left_zero_is_read_whole(wav, tmp_path, tiny_codec_dir):
    """Writers to a pipe cannot seek back to fill in a WAV's sizes; some leave them 0, which libsndfile
    reads as an empty file. flowdec mends its spooled copy of standard input; a file is refused, named."""
    import struct

    data = bytearray(wav.read_bytes())
    at = data.find(b"data")
    data[4:8] = data[at + 4:at + 8] = struct.pack("<I", 0)
    r = invoke("compress", "-", tmp_path / "a.fdc", "-b", "3", "-m", tiny_codec_dir, "-q", input=bytes(data))
    assert r.exit_code == 0, r.stderr
    r = invoke("info", tmp_path / "a.fdc", "--json")
    assert json.loads(r.stdout)["num_samples"] == 44100
    (tmp_path / "unsized.wav").write_bytes(data)
    r = invoke("compress", tmp_path / "unsized.wav", tmp_path / "b.fdc", "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 1 and "its WAV header says no samples, but 176400 bytes of audio follow" in r.stderr
    assert not (tmp_path / "b.fdc").exists()


@pytest.mark.parametrize("fmt, subtype, ext, rate, keep, why", [
    ("WAV", None, "wav", 44100, 0.5, "truncated: its header promises 88200 bytes of audio, "),
    ("AIFF", None, "aiff", 44100, 0.5, "truncated: its header promises 88208 bytes of audio, "),
    ("RF64", None, "wav", 44100, 0.5, "truncated: its header promises 88200 bytes of audio, "),  # 64-bit sizes
    ("OGG", None, "ogg", 44100, 0.5, "truncated: the Ogg stream ends inside a page"),
    # cut inside the last page: libsndfile logs only "Junk after the last page" (3 s came back as 2.6 s)
    ("OGG", None, "ogg", 44100, 0.99, "truncated: the Ogg stream ends inside a page"),
    ("OGG", "OPUS", "opus", 48000, 0.99, "truncated: the Ogg stream ends inside a page"),
    ("OGG", "OPUS", "opus", 48000, 0.7, "truncated: the Ogg stream ends inside a page"),
    ("W64", None, "w64", 44100, 0.95, "truncated: its header promises 44100 samples a channel, "),
    ("AU", None, "au", 44100, 0.5, "truncated: its header gives a size of 88200, the file holds "),
    ("CAF", None, "caf", 44100, 0.99, "truncated: its header gives a size of "),
    ("SVX", "PCM_16", "svx", 44100, 0.5, "truncated: its header gives a size of "),
    ("WVE", None, "wve", 8000, 0.5, "truncated: its header gives a size of 8000, the file holds "),
    ("VOC", "PCM_16", "voc", 44100, 0.5, "truncated: its last block ends early"),
    ("NIST", None, "sph", 44100, 0.5, "truncated: its header promises 44100 samples a channel, "),
    ("AVR", None, "avr", 44100, 0.5, "truncated: its header promises 44100 samples a channel, "),
])
def test_a_file_cut_short_is_refused_not_coded_in_part(fmt, subtype, ext, rate, keep, why, tmp_path,
                                                        tiny_codec_dir):
    """libsndfile reads a cut WAV, RF64, AIFF, W64, AU, CAF, SVX, WVE, VOC, NIST, AVR or Ogg file up to where
    its bytes end, as if it were whole, and says so only in its log if at all (Opus and Vorbis cut inside
    their last page, W64 and AU anywhere, were coded as if whole)."""
    whole = tmp_path / f"whole.{ext}"
    sf.write(whole, tone(1.0 if ext != "opus" else 3.0, rate), rate, format=fmt, subtype=subtype)
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: int(len(data) * keep)])
    r = invoke("compress", cut, tmp_path / "a.fdc", "-b", "3", "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 1 and r.stderr.startswith(f"flowdec: error: {cut}: {why}"), r.stderr
    assert not (tmp_path / "a.fdc").exists()
    r = invoke("compress", "-", tmp_path / "b.fdc", "-b", "3", "-m", tiny_codec_dir, "-q", input=cut.read_bytes())
    assert r.exit_code == 1 and f"-: {why}" in r.stderr, r.stderr
    r = invoke("compress", whole, tmp_path / "c.fdc", "-b", "3", "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 0, r.stderr
    if fmt not in ("OGG", "VOC"):  # a writer that miscounts by a few bytes is no cut copy
        (tmp_path / f"short.{ext}").write_bytes(data[:-6])
        r = invoke("compress", tmp_path / f"short.{ext}", tmp_path / "d.fdc", "-b", "3", "-m", tiny_codec_dir, "-q")
        assert r.exit_code == 0, r.stderr


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        crc &= 0xFFFFFFFF
    return crc


def test_whole_ogg_streams_that_libsndfile_logs_oddly_are_no_cut(tmp_path, tiny_codec_dir):
    """An ID3v1 tag after the last page ("Junk after the last page"), a live capture without its end-of-stream
    mark ("Last page lacks an end-of-stream bit") and two streams one after the other decode whole: a first
    version of the Ogg check refused them as cut."""
    whole = tmp_path / "whole.ogg"
    sf.write(whole, tone(1.0, 44100), 44100)
    data = whole.read_bytes()
    last = data.rfind(b"OggS")
    page = bytearray(data[last:])
    page[5] &= ~4  # no end-of-stream flag, and the page's CRC made right again
    page[22:26] = bytes(4)
    page[22:26] = _ogg_crc(bytes(page)).to_bytes(4, "little")
    for name, body in (("id3v1.ogg", data + b"TAG" + b"x" * 125), ("noeos.ogg", data[:last] + bytes(page)),
                       ("chained.ogg", data + data)):
        (tmp_path / name).write_bytes(body)
        r = invoke("compress", tmp_path / name, tmp_path / f"{name}.fdc", "-m", tiny_codec_dir, "-q")
        assert r.exit_code == 0, (name, r.stderr)


def test_an_outer_size_too_large_beside_intact_audio_is_no_cut(tmp_path, tiny_codec_dir):
    """A W64 whose riff size, or an 8SVX whose FORM size, is larger than the file while its data chunk is
    whole: a writer's slip, accepted as the same slip in a WAV is."""
    for ext, fmt, at, size in (("w64", "W64", 16, 8), ("svx", "SVX", 4, 4)):
        whole = tmp_path / f"whole.{ext}"
        sf.write(whole, tone(1.0, 44100), 44100, format=fmt, subtype="PCM_16")
        data = bytearray(whole.read_bytes())
        order = "little" if fmt == "W64" else "big"
        value = int.from_bytes(data[at:at + size], order) + 4096
        data[at:at + size] = value.to_bytes(size, order)
        (tmp_path / f"big.{ext}").write_bytes(data)
        r = invoke("compress", tmp_path / f"big.{ext}", tmp_path / f"{ext}.fdc", "-m", tiny_codec_dir, "-q")
        assert r.exit_code == 0, (ext, r.stderr)


def test_an_au_file_of_unknown_size_or_with_data_after_it_is_read_whole(tmp_path, tiny_codec_dir):
    """An AU written to a pipe declares its size as unknown (0xFFFFFFFF): not a promise, so not a cut."""
    whole = tmp_path / "whole.au"
    sf.write(whole, tone(1.0, 44100), 44100)
    data = bytearray(whole.read_bytes())
    data[8:12] = b"\xff\xff\xff\xff"
    (tmp_path / "unknown.au").write_bytes(data)
    r = invoke("compress", tmp_path / "unknown.au", tmp_path / "a.fdc", "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 0, r.stderr


def test_an_mp3_without_a_xing_header_is_read_for_what_decodes(tmp_path, tiny_codec_dir):
    """Without a Xing or Info header libsndfile's count is an estimate from the first frame (here a silent
    one, so far too high): no promise to hold the decode to, and the .fdc records what decodes."""
    rate = 44100
    x = np.zeros((4 * rate, 2), np.float32)
    x[rate:] = 0.3 * np.random.default_rng(0).standard_normal((3 * rate, 2))
    sf.write(tmp_path / "vbr.mp3", x, rate, format="MP3")
    data = (tmp_path / "vbr.mp3").read_bytes()
    at = 0
    if data[:3] == b"ID3":
        at = 10 + ((data[6] & 0x7F) << 21 | (data[7] & 0x7F) << 14 | (data[8] & 0x7F) << 7 | (data[9] & 0x7F))
    head = data[at:at + 4]  # the first frame holds the Xing header: drop that frame
    kbps = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)[head[2] >> 4]
    length = 144000 * kbps // (44100, 48000, 32000)[(head[2] >> 2) & 3] + ((head[2] >> 1) & 1)
    assert b"Xing" in data[at:at + length] or b"Info" in data[at:at + length]
    bare = tmp_path / "bare.mp3"
    bare.write_bytes(data[:at] + data[at + length:])
    decoded = len(sf.read(bare)[0])
    assert sf.info(str(bare)).frames != decoded  # the estimate
    r = invoke("compress", bare, tmp_path / "a.fdc", "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 0, r.stderr
    r = invoke("info", tmp_path / "a.fdc", "--json")
    assert json.loads(r.stdout)["num_samples"] == decoded


def test_an_mp3_cut_short_is_named_as_the_input_not_the_output(tmp_path, tiny_codec_dir):
    """Its length comes from its Xing header; the codes came from what decoded, and the mismatch was caught
    only as the .fdc was written, as an "invalid header" of the output file."""
    whole = tmp_path / "whole.mp3"
    sf.write(whole, tone(1.0, 44100), 44100, format="MP3")
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(whole.read_bytes()[:3000])
    r = invoke("compress", cut, tmp_path / "a.fdc", "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 1, r.stderr
    assert f"flowdec: error: {cut}: truncated: its header promises 44100 samples, only " in r.stderr, r.stderr
    assert not (tmp_path / "a.fdc").exists()
    r = invoke("compress", whole, tmp_path / "b.fdc", "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 0, r.stderr


def test_a_wav_with_an_unknown_length_is_read_to_its_end(wav, tmp_path, tiny_codec_dir):
    """ffmpeg writing to a pipe declares 0xFFFFFFFF bytes: not a promise, so not a truncation."""
    import struct

    data = bytearray(wav.read_bytes())
    at = data.find(b"data")
    data[4:8] = data[at + 4:at + 8] = struct.pack("<I", 0xFFFFFFFF)
    (tmp_path / "streamed.wav").write_bytes(data)
    r = invoke("compress", tmp_path / "streamed.wav", tmp_path / "a.fdc", "-b", "3", "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 0, r.stderr
    r = invoke("info", tmp_path / "a.fdc", "--json")
    assert json.loads(r.stdout)["num_samples"] == 44100


def test_spools_of_a_killed_run_are_swept_by_the_next(wav, tmp_path, tiny_codec_dir, monkeypatch):
    import tempfile

    from flowdec_cli import fileio

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setattr(fileio, "_swept", set())
    (tmp_path / "tmp").mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / "tmp" / f".stdin.flowdec-{fileio._HOST}-{int(dead.stdout)}.abcd1234"
    left.mkdir()
    (left / "in").write_bytes(b"x" * 1000)  # what a SIGKILLed `compress -` leaves
    r = invoke("compress", "-", "-", "-b", "3", "-m", tiny_codec_dir, "-q", input=wav.read_bytes())
    assert r.exit_code == 0, r.stderr
    assert list((tmp_path / "tmp").iterdir()) == []  # the dead run's spool and this run's own are gone


def test_pipe_errors_name_the_stream(tmp_path, tiny_codec_dir):
    r = invoke("decompress", "-", tmp_path / "o.wav", "--nfe", "0", "-m", tiny_codec_dir, input=b"not an fdc")
    assert r.exit_code == 1
    assert r.stderr.startswith("flowdec: error: -: ") and "flowdec-stdin" not in r.stderr
    r = invoke("compress", "-", tmp_path / "a.fdc", "-m", tiny_codec_dir, input=b"")
    assert r.exit_code == 1 and "standard input is empty" in r.stderr
    r = invoke("compress", tmp_path, "-", "-m", tiny_codec_dir)
    assert r.exit_code == 2 and "single input file" in r.stderr
    r = invoke("compress", "-", "-", "--json", input=b"x")
    assert r.exit_code == 2 and "--json" in r.stderr


@pytest.mark.parametrize("args", [["models"], ["models", "list", "--json"], ["info", "FDC"]])
def test_closed_pipe_ends_quietly(args, wav, tmp_path, tiny_codec_dir):
    fdc = tmp_path / "a.fdc"
    assert invoke("compress", wav, fdc, "-m", tiny_codec_dir, "-q").exit_code == 0
    args = [str(fdc) if a == "FDC" else a for a in args]
    env = {**os.environ, "PYTHONPATH": SRC}
    p = subprocess.Popen([sys.executable, "-m", "flowdec_cli", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    p.stdout.close()  # the reader went away before anything was written, as `| head -1` can
    err = p.stderr.read().decode()
    p.stderr.close()
    assert p.wait() in (0, 141), err
    assert err == "" or ("BrokenPipe" not in err and "Traceback" not in err), err


def test_json_records(wav, tmp_path, tiny_codec_dir):
    fdc = tmp_path / "a.fdc"
    r = invoke("compress", wav, fdc, "-b", "3", "-m", tiny_codec_dir, "--json")
    rec = json.loads(r.stdout)
    assert rec["command"] == "compress" and rec["input"] == str(wav) and rec["output"] == str(fdc)
    assert rec["bytes"] == fdc.stat().st_size and rec["kbps_nominal"] == 3.0
    assert rec["kbps_on_disk"] == pytest.approx(fdc.stat().st_size * 8 / 1.0 / 2 / 1000)
    assert rec["duration_s"] == pytest.approx(1.0) and rec["nfe"] is None and rec["seconds"] > 0
    assert rec["rtf"] == pytest.approx(rec["seconds"] / rec["duration_s"])
    r = invoke("decompress", fdc, tmp_path / "o.wav", "--nfe", "0", "-m", tiny_codec_dir, "--json", "-q")
    rec = json.loads(r.stdout)
    assert rec["command"] == "decompress" and rec["nfe"] == 0 and rec["bytes"] == fdc.stat().st_size
    assert {"kbps_on_disk", "kbps_nominal", "duration_s", "seconds", "rtf"} <= set(rec)
    assert rec["peak_scaled"] == 1.0  # a quiet tone needs no clip guard
    r = invoke("roundtrip", wav, tmp_path / "rt.wav", "-n", "2", "--nfe", "0", "-m", tiny_codec_dir, "--json")
    rec = json.loads(r.stdout)
    assert rec["command"] == "roundtrip" and rec["n_codebooks"] == 2 and rec["output"] == str(tmp_path / "rt.wav")
    folder = tmp_path / "album"
    (folder / "cd").mkdir(parents=True)
    sf.write(folder / "a.wav", tone(0.3, 48000), 48000)
    sf.write(folder / "cd" / "b.flac", tone(0.3, 16000), 16000)
    r = invoke("compress", folder, tmp_path / "codes", "-m", tiny_codec_dir, "--json", "-q")
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]  # JSON Lines: one object per file
    assert sorted(Path(rec["output"]).name for rec in lines) == ["a.fdc", "b.fdc"]


def test_every_message_has_the_prefix(wav, tmp_path, tiny_codec_dir):
    r = invoke("roundtrip", wav, tmp_path / "o.wav", "-n", "2", "--nfe", "0", "-m", tiny_codec_dir)
    r2 = invoke("compress", wav, tmp_path / "x.fdc", "--bogus-option")
    r3 = invoke("models")
    for res in (r, r2, r3):
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert lines and all(ln.startswith("flowdec: ") for ln in lines), res.stderr
    assert r2.exit_code == 2 and len(r2.stderr.splitlines()) == 1


def test_opus_output_from_44k1_is_resampled(wav, tmp_path, tiny_codec_dir):
    fdc = tmp_path / "a.fdc"
    assert invoke("compress", wav, fdc, "-m", tiny_codec_dir, "-q").exit_code == 0
    r = invoke("decompress", fdc, tmp_path / "o.opus", "--nfe", "0", "-m", tiny_codec_dir)
    assert r.exit_code == 0, r.stderr
    assert "resampled to 48000 Hz" in r.stderr
    info = sf.info(str(tmp_path / "o.opus"))
    assert info.samplerate == 48000 and abs(info.duration - 1.0) < 0.01


def test_vorbis_and_flac_outputs_above_their_highest_rate_are_written_at_one_they_hold(tmp_path, tiny_codec_dir):
    """libsndfile's Vorbis encoder takes 256 kHz on opening and crashes the process when the file is closed;
    FLAC's header holds up to 655,350 Hz. Above those, the output is written at 192 / 384 kHz, and a library
    writer asked for such a Vorbis file refuses it instead of crashing."""
    from flowdec_cli.audio import AtomicAudioWriter, AudioError, output_rate_for

    assert output_rate_for("o.ogg", None, 200000) == 200000 and output_rate_for("o.ogg", None, 256000) == 192000
    assert output_rate_for("o.flac", None, 655350) == 655350 and output_rate_for("o.flac", None, 700000) == 384000
    assert output_rate_for("o.wav", None, 700000) == 700000
    pid = os.fork()
    if pid == 0:  # in a child: were the guard gone, libsndfile would crash the whole test run
        try:
            AtomicAudioWriter(tmp_path / "w.ogg", 256000, 1)
        except AudioError as exc:
            os._exit(0 if "Vorbis holds rates up to 200000 Hz, not 256000" in str(exc) else 3)
        except BaseException:
            os._exit(2)
        os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert list(tmp_path.iterdir()) == []
    src = tmp_path / "in.wav"
    sf.write(src, tone(0.1, 256000), 256000)
    r = invoke("roundtrip", src, tmp_path / "o.ogg", "--nfe", "0", "-m", tiny_codec_dir)
    assert r.exit_code == 0 and "resampled to 192000 Hz" in r.stderr, r.stderr
    assert sf.info(str(tmp_path / "o.ogg")).samplerate == 192000


def test_outputs_that_cannot_hold_the_channels_are_refused_before_the_coding(tmp_path, tiny_codec_dir, monkeypatch):
    """FLAC holds 8 channels, MP3 2: more is refused naming the types that hold them (libsndfile says only
    "Format not recognised."), and a roundtrip says so before it codes the input, not after."""
    from flowdec_cli.audio import AudioError, check_output_channels
    from flowdec_cli.pipeline import Codec

    check_output_channels("o.flac", None, 8)
    with pytest.raises(AudioError, match=r"o.flac: FLAC holds at most 8 channels, not 9; write .aiff, .au, "
                                         r".caf, .ircam, .ogg, .opus, .paf, .pvf, .rf64, .sph, .w64, .wav$"):
        check_output_channels("o.flac", None, 9)
    with pytest.raises(AudioError, match=r"MP3 holds 1 or 2 channels, not 9; write .aiff, .au, .caf, .ircam, .ogg"):
        check_output_channels("o.mp3", None, 9)
    with pytest.raises(AudioError, match="Vorbis holds at most 255 channels, not 256; write .aiff, .au, .caf, "
                                         r".ircam, .paf, .pvf, .rf64, .sph, .w64, .wav$"):
        check_output_channels("o.ogg", None, 256)
    src = tmp_path / "nine.wav"
    sf.write(src, tone(0.2, 48000, 9), 48000)

    def not_coded(*args, **kwargs):
        raise AssertionError("coded before the output was checked")

    monkeypatch.setattr(Codec, "code_file", not_coded)
    r = invoke("roundtrip", src, tmp_path / "o.flac", "--nfe", "0", "-m", tiny_codec_dir)
    assert r.exit_code == 1 and "o.flac: FLAC holds at most 8 channels, not 9" in r.stderr, r.stderr
    assert not (tmp_path / "o.flac").exists()


def _writes(path: Path, fmt: str, subtype: str, channels: int) -> bool:
    """Whether this libsndfile writes (and reads back) ``channels`` channels of ``subtype`` in ``fmt``, tried
    in a child process: some refusals are a crash (Vorbis past 255 channels)."""
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the file came back with its channels
        try:
            sf.write(path, np.full((480, channels), 0.1, np.float32), 48000, format=fmt, subtype=subtype)
            os._exit(0 if sf.info(str(path)).channels == channels else 3)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_the_channel_limits_are_this_libsndfiles(tmp_path):
    """audio.MOST_CHANNELS against the library: each limit is written, one channel more is not."""
    from flowdec_cli.audio import _FORMATS, MOST_CHANNELS, can_write

    checked = 0
    for fmt in sorted({f for f, _ in _FORMATS.values()}):
        for subtype in sorted(sf.available_subtypes(fmt)):
            limit = min(MOST_CHANNELS.get(fmt, 1 << 20), MOST_CHANNELS.get(subtype, 1 << 20))
            if not can_write(fmt, subtype) or limit > 256 or subtype.startswith("DWVW"):
                continue
            path = tmp_path / f"{fmt}-{subtype}"
            assert _writes(path, fmt, subtype, limit), (fmt, subtype, limit)
            assert not _writes(path, fmt, subtype, limit + 1), (fmt, subtype, limit + 1)
            checked += 1
    assert checked >= 10


def test_an_input_rate_no_fdc_file_holds_is_refused_naming_the_input(tmp_path, tiny_codec_dir):
    """A 12 MHz input was coded in full and then refused as an "invalid header" of the output."""
    src = tmp_path / "fast.wav"
    sf.write(src, np.zeros(1200, np.float32), 12_000_000)
    for args in (("compress", src, tmp_path / "o.fdc"), ("roundtrip", src, tmp_path / "o.wav")):
        r = invoke(*args, "-m", tiny_codec_dir)
        assert r.exit_code == 1 and "fast.wav: a .fdc file cannot hold its rate" in r.stderr, r.stderr
        assert "12000000" in r.stderr and not Path(args[2]).exists()


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile writes no MP3")
def test_mp3_output_takes_a_rate_and_channels_it_holds(tmp_path, tiny_codec_dir):
    """MPEG Layer III takes 8-48 kHz at nine rates and 1-2 channels: a 7 kHz file goes to the next rate up,
    a 96 kHz one to 48 kHz, six channels are refused by name (libsndfile says "Format not recognised")."""
    for rate, channels, written in ((7000, 1, 8000), (96000, 1, 48000), (22050, 2, 22050)):
        src = tmp_path / f"in{rate}.wav"
        sf.write(src, tone(0.5, rate, channels), rate)
        out = tmp_path / f"o{rate}.mp3"
        r = invoke("roundtrip", src, out, "--nfe", "0", "-m", tiny_codec_dir, "-q")
        assert r.exit_code == 0, r.stderr
        assert sf.info(str(out)).samplerate == written and sf.info(str(out)).channels == channels
    src = tmp_path / "six.wav"
    sf.write(src, tone(0.3, 44100, 6), 44100)
    r = invoke("roundtrip", src, tmp_path / "six.mp3", "--nfe", "0", "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 1 and "MP3 holds 1 or 2 channels, not 6" in r.stderr and not (tmp_path / "six.mp3").exists()
    r = invoke("roundtrip", src, tmp_path / "o.opus", "--subtype", "VORBIS", "-m", tiny_codec_dir)
    assert r.exit_code == 2 and "a .opus file holds OPUS" in r.stderr


def test_bad_subtype_and_missing_folder_are_refused_before_any_work(wav, tmp_path, tiny_codec_dir):
    bad = tmp_path / "bad.fdc"
    bad.write_bytes(b"garbage")  # would fail on reading: the subtype is refused first
    r = invoke("decompress", bad, tmp_path / "o.wav", "--subtype", "NOPE", "--nfe", "0")
    assert r.exit_code == 2 and "--subtype NOPE" in r.stderr and "PCM_24" in r.stderr
    r = invoke("roundtrip", wav, tmp_path / "o.flac", "--subtype", "FLOAT", "-m", tiny_codec_dir)
    assert r.exit_code == 2 and "--subtype FLOAT" in r.stderr
    assert invoke("roundtrip", wav, tmp_path / "o.flac", "--subtype", "pcm_24", "-m", tiny_codec_dir, "--nfe",
                  "0", "-q").exit_code == 0
    r = invoke("compress", wav, tmp_path / "no" / "such" / "a.fdc", "-m", tiny_codec_dir)
    assert r.exit_code == 1 and "does not exist" in r.stderr
    assert not (tmp_path / "no").exists()


def test_cpu_estimate_prints_before_the_bar(monkeypatch):
    import flowdec_cli.cli as cli

    events: list[str] = []
    clock = iter([0.0, 30.0])
    monkeypatch.setattr(cli.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(cli.click, "echo", lambda msg, err=False: events.append("echo:" + msg))

    class FakeBar:
        def __init__(self, **kw):
            events.append(f"bar:{kw.get('initial', 0)}")

        def update(self, n=1):
            events.append("update")

        def close(self):
            pass

    import tqdm

    monkeypatch.setattr(tqdm, "tqdm", FakeBar)
    bar = cli._Bars(quiet=False)("postfilter", 4, "pass")
    assert events == []
    bar.update(1)
    bar.update(1)
    assert events[0].startswith("echo:flowdec: the postfilter on CPU will take about 2 min")
    assert events[1:] == ["bar:1", "update"]


def test_default_model_setting_and_environment(wav, tmp_path, tiny_codec_dir, monkeypatch):
    from flowdec_cli.container import inspect_fdc, read_fdc

    r = invoke("models", "default", tiny_codec_dir)
    assert r.exit_code == 0 and "default model is now" in r.stderr
    assert invoke("models", "default").stdout.strip() == str(Path(tiny_codec_dir).resolve())
    assert "default model: " in invoke("models").stderr
    assert invoke("compress", wav, tmp_path / "a.fdc", "-q").exit_code == 0
    assert read_fdc(tmp_path / "a.fdc")[0].model_name == "tiny-75"
    r = invoke("models", "default", "no-such-model")
    assert r.exit_code == 2 and "unknown model" in r.stderr  # a usage error, as --model no-such-model is
    r = invoke("models", "default", "flowdec-75m")
    assert r.exit_code == 1 and "fetch-official" in r.stderr
    monkeypatch.setenv("FLOWDEC_MODEL", "flowdec-small")
    assert invoke("models", "default").stdout.strip() == "flowdec-small"
    assert invoke("compress", wav, tmp_path / "b.fdc", "-q").exit_code == 0
    assert inspect_fdc(tmp_path / "b.fdc").model_name == "flowdec-small"
    monkeypatch.setenv("FLOWDEC_MODEL", "no-such-model")  # not an option's fault: exit 1, naming the source
    r = invoke("compress", wav, tmp_path / "c.fdc", "-q")
    assert r.exit_code == 1 and r.stderr.startswith(
        "flowdec: error: the default model set in $FLOWDEC_MODEL: unknown model 'no-such-model'"), r.stderr
    monkeypatch.delenv("FLOWDEC_MODEL")
    assert invoke("models", "default", "--reset").exit_code == 0
    assert invoke("models", "default").stdout.strip() == "flowdec-small"


def test_installed_release_is_suggested_as_default(tiny_codec_dir, wav, tmp_path):
    import shutil

    from flowdec_cli.models import catalogue as registry

    line = registry.builtin_notice("flowdec-small")
    assert "fetch-official" in line
    shutil.copytree(tiny_codec_dir, registry.models_dir() / "flowdec-75m")
    try:
        line = registry.builtin_notice("flowdec-small")
        assert "flowdec models default flowdec-75m" in line
        assert "flowdec models default flowdec-75m" in invoke("models").stderr
        r = invoke("compress", wav, tmp_path / "a.fdc", "-n", "1")
        assert "flowdec models default flowdec-75m" in r.stderr
        assert registry.builtin_notice("flowdec-75m") is None
    finally:
        shutil.rmtree(registry.models_dir() / "flowdec-75m")


def test_exported_card_licence(tmp_path):
    from flowdec_cli.models.cards import model_card_markdown

    assert "license: mit" in model_card_markdown({"licence": "MIT (weights); data: free Debian packages"})
    assert "license: cc-by-nc-4.0" in model_card_markdown({"licence": "CC-BY-NC-4.0"})
    assert "license: other" in model_card_markdown({"licence": "unknown"})


def test_shell_completion_works_and_is_documented():
    env = {**os.environ, "PYTHONPATH": SRC, "_FLOWDEC_COMPLETE": "bash_source"}
    code = "from flowdec_cli.cli import main; main(prog_name='flowdec')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "_flowdec_completion" in out.stdout, out.stderr
    env.update(_FLOWDEC_COMPLETE="bash_complete", COMP_WORDS="flowdec comp", COMP_CWORD="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "compress" in out.stdout
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "_FLOWDEC_COMPLETE=bash_source flowdec" in readme
    assert "_FLOWDEC_COMPLETE=bash_source flowdec" in invoke("--help").output


def test_a_wav_with_sizes_left_zero_redirected_from_a_file_is_mended_in_a_copy(tmp_path, tiny_codec_dir):
    """`compress - x.fdc < unsized.wav`: standard input that is a regular file is read in place, but such a WAV
    (its writer could not seek back) must be copied to be mended, as a piped one is."""
    x = (0.3 * np.sin(np.arange(24000) * 0.05)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, 48000, format="WAV", subtype="PCM_16")
    data = bytearray(buf.getvalue())
    at = data.find(b"data")
    data[at + 4:at + 8] = bytes(4)
    data[4:8] = bytes(4)
    unsized = tmp_path / "unsized.wav"
    unsized.write_bytes(bytes(data))
    with open(unsized, "rb") as stdin:
        r = _flowdec("compress", "-", tmp_path / "a.fdc", "-m", tiny_codec_dir, "-q", stdin=stdin)
    assert r.returncode == 0, r.stderr
    info = json.loads(_flowdec("info", tmp_path / "a.fdc", "--json").stdout)
    assert info["num_samples"] == len(x)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_standard_error_does_not_fail_the_run(wav, tmp_path, tiny_codec_dir):
    """`2>/dev/full`: the banner could not be written, so the run failed with exit 1 and no output, although
    standard error carries nothing but diagnostics."""
    fdc, out = tmp_path / "a.fdc", tmp_path / "a.wav"
    with open("/dev/full", "w") as full:
        assert _flowdec("compress", wav, fdc, "-m", tiny_codec_dir, stderr=full).returncode == 0
        # an ASCII standard error: click writes to the binary stream beneath it
        assert _flowdec("compress", wav, fdc, "-m", tiny_codec_dir, "-f", stderr=full,
                        env={"PYTHONIOENCODING": "ascii"}).returncode == 0
        assert _flowdec("decompress", fdc, out, "-m", tiny_codec_dir, "--nfe", "0", stderr=full).returncode == 0
        assert _flowdec("decompress", tmp_path / "nosuch.fdc", out, "-f", stderr=full).returncode == 1  # still fails
    assert fdc.stat().st_size > 0 and sf.info(out).frames > 0


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["train", "ndac", "--help"]])
def test_a_closed_pipe_after_version_or_help_is_the_shells_sigpipe_status(args):
    """`flowdec --version | true`: these print while the arguments are parsed, where click turns a closed
    pipe into exit 1 (a failure to a shell with pipefail)."""
    p = subprocess.Popen([sys.executable, "-m", "flowdec_cli", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": SRC})
    p.stdout.close()
    err = p.stderr.read().decode()
    p.stderr.close()
    assert p.wait(timeout=120) == 141 and err == "", err


def _flowdec(*args, env: dict | None = None, **popen) -> subprocess.CompletedProcess:
    """``python -m flowdec_cli ARGS`` in a child process, for what a shell does to its standard streams."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", **(env or {})}
    popen.setdefault("capture_output", "stdout" not in popen and "stderr" not in popen)
    return subprocess.run([sys.executable, "-m", "flowdec_cli", *map(str, args)], env=env, text=True,
                          timeout=180, **popen)


def test_a_reader_leaving_mid_output_ends_the_run_as_a_closed_pipe(wav, tmp_path, tiny_codec_dir):
    """`flowdec decompress x.fdc - | head -c 100`: an unbuffered standard output (python -u) took part of a
    write, the rest was dropped, and the run reported success with exit 0."""
    fdc = tmp_path / "a.fdc"
    assert invoke("compress", wav, fdc, "-m", tiny_codec_dir, "-q").exit_code == 0
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "flowdec_cli", "decompress", str(fdc), "-", "-m",
                          str(tiny_codec_dir), "--nfe", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env)
    assert os.read(p.stdout.fileno(), 100)  # 176 kB of WAV: more than the pipe holds
    p.stdout.close()
    err = p.stderr.read().decode()
    p.stderr.close()
    assert p.wait(timeout=180) == 141, err
    assert "Traceback" not in err and "-: 1.00 s" not in err, err


@pytest.mark.parametrize("verb,stream", [("compress", "stdin"), ("decompress", "stdout")])
def test_a_terminal_for_binary_data_is_refused_before_the_model_loads(tmp_path, verb, stream):
    """`flowdec compress - y.fdc` typed at a terminal waited silently for audio that never ends."""
    pty = pytest.importorskip("pty")
    (tmp_path / "a.fdc").write_bytes(b"the model would be loaded before this is read")
    master, terminal = pty.openpty()
    try:
        args = ["-", tmp_path / "y.fdc"] if stream == "stdin" else [tmp_path / "a.fdc", "-"]
        r = _flowdec(verb, *args, "-m", tmp_path / "no-such-model", **{stream: terminal},
                     stderr=subprocess.PIPE)
    finally:
        os.close(master)
        os.close(terminal)
    assert r.returncode == 1, r.stderr
    if stream == "stdin":
        assert r.stderr == ("flowdec: error: refusing to read audio from a terminal; redirect standard input "
                            "(< FILE or ... |)\n")
    else:
        assert r.stderr.startswith("flowdec: error: refusing to write audio to a terminal;"), r.stderr


@pytest.mark.parametrize("fd,args,name", [(0, ["compress", "-", "OUT", "-q"], "input"),
                                          (1, ["decompress", "FDC", "-", "--nfe", "0"], "output"),
                                          (1, ["compress", "WAV", "OUT", "--json", "-q"], "output")])
def test_a_closed_standard_stream_is_named(wav, tmp_path, tiny_codec_dir, fd, args, name):
    """`<&-` and `>&-` gave "unexpected AttributeError: 'NoneType' object has no attribute 'buffer'"."""
    fdc = tmp_path / "a.fdc"
    assert invoke("compress", wav, fdc, "-m", tiny_codec_dir, "-q").exit_code == 0
    args = [fdc if a == "FDC" else wav if a == "WAV" else tmp_path / "o.fdc" if a == "OUT" else a for a in args]
    r = _flowdec(*args, "-m", tiny_codec_dir, preexec_fn=lambda: os.close(fd), stderr=subprocess.PIPE)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith(f"flowdec: error: standard {name} is closed; give an {name} file"), r.stderr
    assert len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "o.fdc").exists()


@pytest.mark.parametrize("args", [["info", "FDC"], ["info", "FDC", "--json"], ["models", "list"],
                                  ["models", "default"], ["eval", "WAV", "WAV"], ["train", "init-config"],
                                  ["train", "init-config", "ndac-tiny", "-o", "-"]])
def test_what_a_command_prints_is_not_lost_to_a_closed_standard_output(wav, tmp_path, tiny_codec_dir, args):
    """`flowdec info x.fdc >&-` exited 0 with its whole output dropped."""
    fdc = tmp_path / "a.fdc"
    assert invoke("compress", wav, fdc, "-m", tiny_codec_dir, "-q").exit_code == 0
    r = _flowdec(*[fdc if a == "FDC" else wav if a == "WAV" else a for a in args], preexec_fn=lambda: os.close(1),
                 stderr=subprocess.PIPE)
    assert r.returncode == 1 and r.stderr.startswith("flowdec: error: standard output is closed"), r.stderr


def test_a_closed_standard_error_does_not_stop_the_work(wav, tmp_path, tiny_codec_dir):
    """`flowdec compress in.wav x.fdc 2>&-` exited 1 with no file: the progress bar wrote to nowhere."""
    folder = tmp_path / "album"
    folder.mkdir()
    sf.write(folder / "b.wav", tone(0.5, 48000), 48000)
    for src, dst in ((wav, tmp_path / "a.fdc"), (folder, tmp_path / "codes")):
        r = _flowdec("compress", src, dst, "-m", tiny_codec_dir, preexec_fn=lambda: os.close(2),
                     stdout=subprocess.PIPE)
        assert r.returncode == 0 and r.stdout == ""
    assert (tmp_path / "a.fdc").is_file() and (tmp_path / "codes" / "b.fdc").is_file()


def _bash(script: str, *args) -> subprocess.CompletedProcess:
    """``script`` run by bash (process substitution, FIFOs), with ``$0`` this Python and ``$1``... ``args``."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", "-c", script, sys.executable, *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=180)


def test_a_fifo_input_is_spooled_like_standard_input(wav, tmp_path, tiny_codec_dir):
    """`flowdec compress <(cat a.wav) x.fdc` opened the pipe twice: "Format not recognised", or a hang."""
    fdc = tmp_path / "x.fdc"
    r = _bash('"$0" -m flowdec_cli compress <(cat "$1") "$2" -m "$3" -q', wav, fdc, tiny_codec_dir)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "y.wav"
    assert invoke("decompress", fdc, out, "--nfe", "0", "-m", tiny_codec_dir, "-q").exit_code == 0
    assert sf.info(out).frames == 44100
    fifo = tmp_path / "empty.wav"
    os.mkfifo(fifo)
    r = _bash('"$0" -m flowdec_cli compress "$1" "$2" -m "$3" -q & exec 3>"$1"; exec 3>&-; wait $!',
              fifo, tmp_path / "e.fdc", tiny_codec_dir)
    assert r.returncode == 1 and r.stderr == f"flowdec: error: {fifo}: is empty\n"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("args", [
    ["info", "{fdc}"], ["info", "{fdc}", "--json"], ["decompress", "{fdc}", "-", "-q", "-m", "{model}"],
])
def test_a_full_standard_output_is_named(args, tmp_path, wav, tiny_codec_dir):
    """A write to standard output fails with no file name; the one line says which output it was."""
    fdc = tmp_path / "a.fdc"
    assert invoke("compress", wav, fdc, "-b", "3", "-m", tiny_codec_dir, "-q").exit_code == 0
    argv = [a.format(fdc=fdc, model=tiny_codec_dir) for a in args]
    with open("/dev/full", "wb") as full:
        p = subprocess.run([sys.executable, "-m", "flowdec_cli", *argv], stdout=full, stderr=subprocess.PIPE,
                           env={**os.environ, "PYTHONPATH": SRC}, timeout=120, text=True)
    assert p.returncode == 1 and p.stderr.strip() == "flowdec: error: standard output: No space left on device"


@pytest.mark.skipif(sys.platform == "win32", reason="needs symbolic links")
def test_a_dangling_link_as_output_is_taken_before_any_work(tmp_path, wav, tiny_codec_dir):
    """A link to nothing is still something -f would replace: refused up front, not after the decode as
    an output that 'appeared while this run was writing it'."""
    fdc = tmp_path / "a.fdc"
    assert invoke("compress", wav, fdc, "-b", "3", "-m", tiny_codec_dir, "-q").exit_code == 0
    link = tmp_path / "out.wav"
    link.symlink_to(tmp_path / "nowhere.wav")
    r = invoke("decompress", fdc, link, "-q", "-m", tiny_codec_dir)
    assert r.exit_code == 1 and f"{link}: exists; use -f/--force to overwrite" in r.stderr, r.stderr
    assert link.is_symlink() and not link.exists()
    r = invoke("decompress", fdc, link, "-q", "-f", "-m", tiny_codec_dir)
    assert r.exit_code == 0 and not link.is_symlink() and sf.info(str(link)).frames > 0


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_output_device_is_named(tmp_path, wav, tiny_codec_dir):
    """/dev/full given as OUT is written into, as /dev/null is; its failure names it."""
    fdc = tmp_path / "a.fdc"
    assert invoke("compress", wav, fdc, "-b", "3", "-m", tiny_codec_dir, "-q").exit_code == 0
    r = invoke("decompress", fdc, "/dev/full", "-q", "-m", tiny_codec_dir)
    assert r.exit_code == 1 and r.stderr.strip() == "flowdec: error: /dev/full: No space left on device", r.stderr


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="needs a file system that takes any bytes")
def test_a_name_that_is_not_utf8_comes_out_as_valid_json_with_its_bytes(wav, tmp_path, tiny_codec_dir):
    """Lone surrogates would be written as escapes that UTF-8 JSON parsers reject."""
    import base64

    folder = tmp_path / "in"
    folder.mkdir()
    odd = folder / os.fsdecode(b"caf\xe9.wav")
    odd.write_bytes(wav.read_bytes())
    r = invoke("compress", folder, tmp_path / "out", "-b", "3", "-m", tiny_codec_dir, "-q", "--json")
    assert r.exit_code == 0, r.stderr
    assert "\\ud" not in r.stdout
    rec = json.loads(r.stdout)
    assert rec["input"] == str(folder / "caf\ufffd.wav")
    assert base64.b64decode(rec["input_base64"]) == os.fsencode(odd)
    assert Path(os.fsdecode(base64.b64decode(rec["output_base64"]))).is_file()
    assert "output_base64" in rec and "model_base64" not in rec


@pytest.mark.skipif(not Path("/dev/stdout").is_symlink(), reason="needs /dev/stdout as a link to a descriptor")
def test_dev_stdout_redirected_to_a_file_is_standard_output(wav, tmp_path, tiny_codec_dir):
    """With standard output redirected to a file, /dev/stdout stats as that file: the output was refused as
    existing, and with -f a finished file would have been renamed over the link in /dev."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "via-dev.fdc", "wb") as out:
        p = subprocess.run([sys.executable, "-m", "flowdec_cli", "compress", str(wav), "/dev/stdout", "-b", "3",
                            "-m", str(tiny_codec_dir), "-q"], stdout=out, stderr=subprocess.PIPE, env=env,
                           timeout=120)
    assert p.returncode == 0, p.stderr
    assert invoke("compress", wav, tmp_path / "direct.fdc", "-b", "3", "-m", tiny_codec_dir, "-q").exit_code == 0
    assert (tmp_path / "via-dev.fdc").read_bytes() == (tmp_path / "direct.fdc").read_bytes()
    assert Path("/dev/stdout").is_symlink()


def test_a_full_temporary_folder_is_named_as_the_cause(tmp_path, monkeypatch):
    """Standard input and output are assembled in TMPDIR: a full one was reported as a bare "No space left on
    device" naming nothing, or as if the output's own disk were full."""
    import errno

    from flowdec_cli import streams

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(streams, "_spool", full)
    monkeypatch.setattr(streams, "no_space_left", lambda folder, *a, **k: True)
    monkeypatch.setattr(streams.tempfile, "gettempdir", lambda: str(tmp_path))
    (tmp_path / "in.wav").write_bytes(b"RIFF")
    with pytest.raises(streams.StreamError, match=f"temporary folder {tmp_path} has no room left.*TMPDIR"), \
            streams.spooled_input(tmp_path / "in.wav"):
        pass
    with pytest.raises(streams.StreamError, match=r"^standard output: the temporary folder .* no room left"), \
            streams.stdout_file(".wav"):
        full()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav"]


def test_a_terminal_named_as_the_output_file_is_refused_too(tmp_path):
    """`flowdec decompress a.fdc /dev/tty` (or /dev/stderr at a terminal) put the WAV bytes on the screen."""
    pty = pytest.importorskip("pty")
    (tmp_path / "a.fdc").write_bytes(b"the model would be loaded before this is read")
    master, terminal = pty.openpty()
    try:
        r = invoke("decompress", tmp_path / "a.fdc", os.ttyname(terminal), "-m", tmp_path / "no-such-model")
    finally:
        os.close(master)
        os.close(terminal)
    assert r.exit_code == 1 and "is a terminal; refusing to write audio to it" in r.output, r.output
    r = invoke("decompress", tmp_path / "a.fdc", os.devnull, "-m", tmp_path / "no-such-model")
    assert "is a terminal" not in r.output and "no-such-model" in r.output  # a device that is no terminal is taken


def test_skip_existing_skips_an_output_of_standard_input_too(wav, tmp_path, tiny_codec_dir):
    """`sox ... | flowdec compress - out.fdc --skip-existing` said "exists" and failed on a rerun."""
    out = tmp_path / "a.fdc"
    out.write_bytes(b"made before")
    r = invoke("compress", "-", out, "--skip-existing", "-m", tiny_codec_dir, input=wav.read_bytes())
    assert r.exit_code == 0 and "exists; skipped (--skip-existing)" in r.output, r.output
    r = invoke("compress", "-", out, "--skip-existing", "--json", "-q", "-m", tiny_codec_dir, input=wav.read_bytes())
    assert r.exit_code == 0 and json.loads(r.stdout)["skipped"] is True
    assert out.read_bytes() == b"made before"


def test_a_stream_that_begins_no_audio_is_refused_before_it_is_all_copied(tmp_path, tiny_codec_dir, monkeypatch):
    """20 MB of zeros piped in were all copied to the temporary folder before the refusal (an endless wrong
    producer would fill it); a long WAV still goes through whole."""
    from flowdec_cli import streams

    copied = []
    copy_all = streams.copy_all
    monkeypatch.setattr(streams, "copy_all", lambda src, out, *a: copied.append(1) or copy_all(src, out, *a))
    r = invoke("compress", "-", tmp_path / "z.fdc", "-m", tiny_codec_dir, "-q", input=bytes(3 << 20))
    assert r.exit_code == 1 and "standard input: not a readable audio file (its first 1 MiB" in r.output, r.output
    assert copied == [] and not (tmp_path / "z.fdc").exists()
    r = invoke("decompress", "-", tmp_path / "z.wav", "-m", tiny_codec_dir, "-q", input=bytes(3 << 20))
    assert r.exit_code == 1 and "-: bad magic: not a .fdc file" in r.output, r.output  # not "audio"
    assert copied == []
    long_wav = io.BytesIO()
    sf.write(long_wav, tone(12.0, 48000), 48000, format="WAV", subtype="PCM_16")  # 1.15 MB
    r = invoke("compress", "-", tmp_path / "w.fdc", "-m", tiny_codec_dir, "-q", input=long_wav.getvalue())
    assert r.exit_code == 0 and (tmp_path / "w.fdc").is_file(), r.output


@pytest.mark.parametrize("verb", ["compress", "decompress", "roundtrip"])
def test_an_empty_standard_input_is_named_before_the_model_loads(tmp_path, verb):
    """`flowdec compress - x.fdc < /dev/null` loaded the model (about 4 s) before saying so."""
    (tmp_path / "empty").write_bytes(b"")
    for source in (os.devnull, tmp_path / "empty"):
        with open(source, "rb") as stdin:
            r = _flowdec(verb, "-", tmp_path / ("y.fdc" if verb == "compress" else "y.wav"),
                         "-m", tmp_path / "no-such-model", stdin=stdin, stderr=subprocess.PIPE)
        assert r.returncode == 1 and r.stderr == "flowdec: error: standard input is empty\n", r.stderr
