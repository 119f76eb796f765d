"""The flowdec command: verbs, folders, errors (one line, right exit code), atomic outputs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from flowdec_cli.cli import main

from .conftest import tone


@pytest.fixture()
def run():
    def invoke(*args: str):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture()
def wav(tmp_path):
    path = tmp_path / "in.wav"
    sf.write(path, tone(1.2, 44100, 2), 44100)
    return path


def _one_error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_compress_info_decompress(run, wav, tmp_path, tiny_codec_dir):
    fdc = tmp_path / "a.fdc"
    r = run("compress", wav, fdc, "-b", "3", "--model", tiny_codec_dir, "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    r = run("info", fdc, "--json")
    info = json.loads(r.output)
    assert info["n_codebooks"] == 4 and info["nominal_bitrate_kbps"] == 3.0
    assert info["sample_rate"] == 44100 and info["channels"] == 2 and info["num_samples"] == sf.info(str(wav)).frames
    assert info["actual_bitrate_kbps"] <= 3.0 * 1.005 + 128 * 8 / 1.2 / 2 / 1000
    # bit-packed (the tiny model has no entropy tables): the payload's real size, not the absent key's 0
    assert info["coding"] == "bitpack" and info["payload_bytes"] == -(-2 * 4 * info["num_frames"] * 10 // 8)
    text = run("info", fdc).output
    assert "model_name" in text and "tiny-75" in text
    out = tmp_path / "out.flac"
    r = run("decompress", fdc, out, "--nfe", "0", "-q")
    assert r.exit_code == 1 and "coded with model 'tiny-75'" in _one_error_line(r)
    r = run("decompress", fdc, out, "--nfe", "0", "-q", "--model", tiny_codec_dir)
    assert r.exit_code == 0, r.output
    y, sr = sf.read(out, always_2d=True)
    assert sr == 44100 and y.shape == (sf.info(str(wav)).frames, 2)



def test_a_file_names_a_model_never_where_to_read_one(run, wav, tmp_path, tiny_codec_dir, monkeypatch):
    """A .fdc from elsewhere must not choose what is read from this disk: a header naming a path (here a real
    model folder) is refused, and a plain name that is also a folder in the working directory is looked up
    as a name, not loaded from there. --model still decodes it."""
    import dataclasses
    import shutil

    from flowdec_cli import container

    fdc = tmp_path / "a.fdc"
    assert run("compress", wav, fdc, "-b", "3", "--model", tiny_codec_dir, "-q").exit_code == 0
    header, codes = container.read_fdc(fdc)
    out = tmp_path / "out.wav"
    for named in (str(tiny_codec_dir), "../" + tiny_codec_dir.name, "tiny-75"):
        forged = tmp_path / "forged.fdc"
        container.write_fdc(forged, dataclasses.replace(header, model_name=named), codes)
        shutil.copytree(tiny_codec_dir, tmp_path / "tiny-75", dirs_exist_ok=True)
        monkeypatch.chdir(tmp_path)
        r = run("decompress", forged, out, "--nfe", "0", "-q")
        line = _one_error_line(r)
        assert r.exit_code == 1 and "forged.fdc: coded with model" in line and not out.exists(), line
        if named != "tiny-75":
            assert "is a path; a file may name a model, not where to read one" in line, line
        r = run("decompress", forged, out, "--nfe", "0", "-q", "--model", tiny_codec_dir)
        assert r.exit_code == 0, r.output
        out.unlink()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_info_on_a_named_pipe_counts_the_bytes_it_read(run, wav, tmp_path, tiny_codec_dir):
    """`flowdec info <(cat a.fdc)`: stat says 0 bytes for a pipe, which made the rate 0 and the saving 100 %."""
    import threading

    fdc = tmp_path / "a.fdc"
    assert run("compress", wav, fdc, "--model", tiny_codec_dir, "-q").exit_code == 0
    data = fdc.read_bytes()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def serve() -> None:
        with open(fifo, "wb") as f:
            f.write(data)

    threading.Thread(target=serve, daemon=True).start()
    piped = json.loads(run("info", fifo, "--json").output)
    plain = json.loads(run("info", fdc, "--json").output)
    assert piped["file_bytes"] == plain["file_bytes"] == len(data)
    assert piped["actual_bitrate_kbps"] == plain["actual_bitrate_kbps"] > 0

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_piped_fdc_is_spooled_only_as_far_as_its_header_declares(tmp_path):
    """`(cat a.fdc; cat /dev/zero) | flowdec decompress - x.wav` copied everything to a temporary file
    before reading it (7 GB in 6 s): a .fdc is now spooled to one byte past its end, then refused; audio is
    still copied whole."""
    import threading

    from flowdec_cli.streams import spooled_input

    from .test_container import small_file

    data = small_file()
    for tail, tail_name in ((b"", "nothing"), (None, "endless zeros")):
        fifo = tmp_path / f"pipe-{len(tail_name)}"
        os.mkfifo(fifo)

        def serve(tail: bytes | None = tail, fifo: Path = fifo) -> None:
            with contextlib.suppress(BrokenPipeError), open(fifo, "wb") as f:
                f.write(data)
                while tail is None:  # until the reader goes away
                    f.write(bytes(1 << 20))

        threading.Thread(target=serve, daemon=True).start()
        with spooled_input(fifo) as spooled:
            got = spooled.read_bytes()
        assert got == (data if tail == b"" else data + b"\0"), tail_name
    audio = tmp_path / "audio-pipe"
    os.mkfifo(audio)
    threading.Thread(target=lambda: audio.write_bytes(b"fLaC" + bytes(3 << 20)), daemon=True).start()
    with spooled_input(audio) as spooled:
        assert spooled.stat().st_size == 4 + (3 << 20)


def test_a_file_well_above_the_rate_asked_says_why(run, tmp_path, tiny_codec_dir):
    """-b 1.5 on a 0.1 s file came out at several times that on disk, with no word of why or of --fit."""
    for seconds, noted in ((0.1, True), (5.0, False)):
        src = tmp_path / f"{seconds}.wav"
        sf.write(src, tone(seconds, 48000), 48000)
        r = run("compress", src, tmp_path / f"{seconds}.fdc", "-m", tiny_codec_dir, "-b", "1.5")
        assert r.exit_code == 0, r.output
        line = r.stderr.strip().splitlines()[-1]
        assert ("above the 1.5 kbit/s asked" in line and "--fit holds the whole file to -b" in line) == noted, line
    r = run("compress", tmp_path / "0.1.wav", tmp_path / "fit.fdc", "-m", tiny_codec_dir, "-b", "9", "--fit")
    assert r.exit_code == 0 and "asked" not in r.stderr


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names an open file through /proc/self/fd")
def test_standard_input_that_is_a_regular_file_is_read_in_place(tmp_path, monkeypatch):
    """`flowdec compress - x.fdc < big.wav` copied the whole file to the temporary folder first (time, and a
    full TMPDIR failed the run) although a regular file can be read twice and sought in like a named one."""
    import sys

    from flowdec_cli import streams

    data = b"RIFF" + bytes(range(256)) * 40
    src = tmp_path / "in.wav"
    src.write_bytes(data)

    def no_copies(label):
        raise AssertionError("copied to the temporary folder")

    with open(src, "rb") as stdin:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stdin))
        with monkeypatch.context() as m:
            m.setattr(streams, "_owned_temporary_folder", no_copies)
            with streams.spooled_input() as path:
                assert path.read_bytes() == data and path.read_bytes() == data  # twice, from the start
        os.lseek(stdin.fileno(), 100, os.SEEK_SET)  # read partway by someone before: what is left, copied
        with streams.spooled_input() as path:
            assert path.read_bytes() == data[100:] and str(path).startswith(str(streams.tempfile.gettempdir()))
        real_open = os.open

        def refused(path, flags, *args):  # the shell opened it with rights this process lacks
            if str(path).startswith("/proc/self/fd/"):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, flags, *args)

        os.lseek(stdin.fileno(), 0, os.SEEK_SET)
        monkeypatch.setattr(streams.os, "open", refused)
        with streams.spooled_input() as path:  # copied, as a pipe is, rather than refused
            assert path.read_bytes() == data and "/proc/" not in str(path)
        monkeypatch.setattr(streams.os, "open", real_open)
    (tmp_path / "empty.wav").write_bytes(b"")
    with open(tmp_path / "empty.wav", "rb") as stdin:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stdin))
        with pytest.raises(streams.StreamError, match="standard input is empty"), streams.spooled_input():
            pass


def test_info_json_is_strict_json_whatever_the_header_holds(run, tmp_path):
    """A header's own keys may hold NaN or Infinity (msgpack floats); --json must still parse as JSON."""
    import math

    import numpy as np

    from flowdec_cli.container import write_fdc

    from .test_container import make_header

    header = make_header(extra={99: float("nan"), "app.gain": float("inf"), "app.ok": 1.5,
                                "app.blob": b"\x00\x01binary"})
    fdc = tmp_path / "odd.fdc"
    write_fdc(fdc, header, np.zeros(header.codes_shape, dtype=np.int64))
    r = run("info", fdc, "--json")
    assert r.exit_code == 0, r.output

    def refuse(name: str) -> float:
        raise ValueError(f"not JSON: {name}")

    info = json.loads(r.output, parse_constant=refuse)
    assert info["extra"] == {"99": None, "app.gain": None, "app.ok": 1.5,  # bytes: text, and exact beside it
                             "app.blob": "\x00\x01binary", "app.blob_base64": "AAFiaW5hcnk="}
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in info.values())


def test_envelope_option_adds_the_side_channel(run, wav, tmp_path, tiny_codec_dir):
    plain, rich = tmp_path / "plain.fdc", tmp_path / "rich.fdc"
    assert run("compress", wav, plain, "-n", "4", "--model", tiny_codec_dir, "-q").exit_code == 0
    r = run("compress", wav, rich, "-n", "4", "--model", tiny_codec_dir, "--envelope", "--json")
    assert r.exit_code == 0, r.output
    record = json.loads(r.output.strip().splitlines()[-1])
    assert record["envelope_bytes"] > 0
    info = json.loads(run("info", rich, "--json").output)
    assert info["format_version"] == [1, 2] and info["envelope_layout"] == "bands15"
    assert info["envelope_windows"] == 4 and 0 < info["envelope_kbps"] < 1.0  # 1.2 s, two channels
    assert "envelope" not in info
    assert json.loads(run("info", plain, "--json").output)["envelope_layout"] == ""
    r = run("decompress", rich, tmp_path / "out.wav", "--nfe", "0", "--model", tiny_codec_dir)
    assert r.exit_code == 0 and "side channel" in r.output
    r = run("roundtrip", wav, tmp_path / "rt.wav", "-n", "4", "--model", tiny_codec_dir, "--nfe", "0", "--envelope",
            "--json")
    assert r.exit_code == 0 and json.loads(r.output.strip().splitlines()[-1])["envelope"] is True


def test_chosen_bitrate_is_printed(run, wav, tmp_path, tiny_codec_dir):
    r = run("compress", wav, tmp_path / "a.fdc", "-b", "5", "--model", tiny_codec_dir)
    assert r.exit_code == 0
    assert "6 codebooks = 4.5 kbit/s" in r.output


def test_fit_holds_a_file_to_the_bitrate_on_disk(run, wav, tmp_path, tiny_codec_dir):
    r = run("compress", wav, tmp_path / "a.fdc", "-b", "3", "--fit", "--envelope", "--model", tiny_codec_dir,
            "--json")
    assert r.exit_code == 0, r.output
    record = json.loads(r.output.strip().splitlines()[-1])
    assert record["kbps_on_disk"] <= 3.0 and record["kbps_nominal"] < 3.0
    r = run("compress", wav, tmp_path / "b.fdc", "--fit", "--model", tiny_codec_dir)
    assert r.exit_code == 2 and "--fit holds each file to the rate -b/--bitrate gives" in r.output
    r = run("roundtrip", wav, tmp_path / "c.wav", "-b", "0.75", "--fit", "--nfe", "0", "--envelope",
            "--model", tiny_codec_dir, "-q")
    line = _one_error_line(r)
    assert r.exit_code == 1 and "cannot hold its 1.2 s" in line
    assert "--no-envelope" not in line  # the codes alone would not fit either: no advice that cannot help
    assert not (tmp_path / "c.wav").exists()


def test_roundtrip(run, wav, tmp_path, tiny_codec_dir):
    r = run("roundtrip", wav, tmp_path / "rt.wav", "--model", tiny_codec_dir, "--nfe", "0", "-n", "2")
    assert r.exit_code == 0, r.output
    assert sf.info(str(tmp_path / "rt.wav")).frames == sf.info(str(wav)).frames


def test_existing_output_needs_force(run, wav, tmp_path, tiny_codec_dir):
    fdc = tmp_path / "a.fdc"
    fdc.write_bytes(b"keep me")
    r = run("compress", wav, fdc, "--model", tiny_codec_dir, "-q")
    assert r.exit_code == 1
    assert "exists; use -f/--force" in _one_error_line(r)
    assert fdc.read_bytes() == b"keep me"
    assert run("compress", wav, fdc, "--model", tiny_codec_dir, "-q", "-f").exit_code == 0
    assert fdc.read_bytes()[:4] == b"\x89FDC"


def test_output_equal_to_input_is_refused(run, wav, tiny_codec_dir):
    r = run("roundtrip", wav, wav, "--model", tiny_codec_dir, "-f", "--nfe", "0")
    assert r.exit_code == 1 and "output is the input" in _one_error_line(r)


@pytest.mark.parametrize("verb", ["compress", "decompress"])
def test_a_missing_gpu_is_a_usage_error_on_one_line(run, wav, tmp_path, tiny_codec_dir, monkeypatch, verb):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    src = wav if verb == "compress" else tmp_path / "a.fdc"
    if verb == "decompress":
        assert run("compress", wav, src, "--model", tiny_codec_dir, "-q").exit_code == 0
    out = tmp_path / ("out.fdc" if verb == "compress" else "out.wav")
    r = run(verb, src, out, "--model", tiny_codec_dir, "--device", "cuda")
    assert r.exit_code == 2 and "no CUDA device is available" in _one_error_line(r)


def test_compress_refuses_an_audio_name_for_its_output(run, wav, tmp_path, tiny_codec_dir):
    """`compress in.wav out.wav` (roundtrip meant) would leave .fdc data under a name players try to open; and
    an output below a file is named as such, not as a missing folder."""
    r = run("compress", wav, tmp_path / "out.wav", "--model", tiny_codec_dir)
    assert r.exit_code == 2 and "compress writes .fdc data, not .wav audio" in _one_error_line(r)
    assert not (tmp_path / "out.wav").exists()
    (tmp_path / "t.fdc").write_bytes(b"")
    r = run("compress", wav, tmp_path / "t.fdc" / "x.fdc", "--model", tiny_codec_dir)
    assert r.exit_code == 1 and "t.fdc is a file, not a folder" in _one_error_line(r)


@pytest.mark.parametrize("option, words", [(["--threads", "100000"], "100000 is not in the range 1<=x<=1024"),
                                           (["--nfe", "100000000000"], "more than 1000 network passes"),
                                           (["--seed", str(2**80), "--nfe", "2"], "seed must be a whole number")])
def test_absurd_option_values_are_usage_errors(run, wav, tmp_path, tiny_codec_dir, option, words):
    """Beyond their range these crashed the thread pool, allocated a time grid of 100 billion steps or
    overflowed the generator: refused before any work, naming the option."""
    out = tmp_path / "out.wav"
    r = run("roundtrip", wav, out, "--model", tiny_codec_dir, *option)
    assert r.exit_code == 2 and words in _one_error_line(r) and not out.exists()


@pytest.mark.parametrize("case", ["missing", "not_audio", "corrupt_fdc", "bad_model", "bad_bitrate", "odd_nfe",
                                  "unwritable"])
def test_errors_are_one_line(run, wav, tmp_path, tiny_codec_dir, case):
    if case == "missing":
        r = run("compress", tmp_path / "nope.wav", tmp_path / "a.fdc", "--model", tiny_codec_dir)
        code, needle = 1, "nope.wav: no such file"
    elif case == "not_audio":
        bad = tmp_path / "text.wav"
        bad.write_text("hello")
        r = run("compress", bad, tmp_path / "a.fdc", "--model", tiny_codec_dir)
        code, needle = 1, "text.wav: not a readable audio file"
    elif case == "corrupt_fdc":
        bad = tmp_path / "bad.fdc"
        bad.write_bytes(b"\x89FDC\x01\x00garbage")
        r = run("decompress", bad, tmp_path / "o.wav", "--nfe", "0", "--model", tiny_codec_dir)
        code, needle = 1, "bad.fdc"
    elif case == "bad_model":
        r = run("compress", wav, tmp_path / "a.fdc", "--model", tmp_path / "no-such-model")
        code, needle = 1, "no-such-model"
    elif case == "bad_bitrate":
        r = run("compress", wav, tmp_path / "a.fdc", "-b", "0.1", "--model", tiny_codec_dir)
        code, needle = 2, "valid rates"
    elif case == "odd_nfe":
        r = run("decompress", tmp_path / "x.fdc", tmp_path / "o.wav", "--nfe", "3")
        code, needle = 2, "even NFE"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        r = run("compress", wav, ro / "sub" / "a.fdc", "--model", tiny_codec_dir, "-q")
        ro.chmod(0o700)
        code, needle = 1, "a.fdc"
        if r.exit_code == 0:
            pytest.skip("running as a user who can write anywhere (root)")
    assert r.exit_code == code, r.output
    assert needle in r.output
    assert "Traceback" not in r.output
    assert len([ln for ln in r.output.splitlines() if ln.startswith(("flowdec: error", "Error", "Usage"))]) >= 1


def test_folder_conversion_mirrors_tree_and_survives_bad_files(run, tmp_path, tiny_codec_dir):
    src = tmp_path / "album"
    (src / "cd1").mkdir(parents=True)
    sf.write(src / "a.wav", tone(0.4, 48000), 48000)
    sf.write(src / "cd1" / "b.flac", tone(0.3, 22050, 2), 22050)
    (src / "cd1" / "broken.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    (src / "notes.txt").write_text("not audio, ignored")
    codes = tmp_path / "codes"
    r = run("compress", src, codes, "--model", tiny_codec_dir, "-q")
    assert r.exit_code == 1  # one file failed
    assert "broken.wav" in r.output
    assert (codes / "a.fdc").is_file() and (codes / "cd1" / "b.fdc").is_file()
    assert not (codes / "cd1" / "broken.fdc").exists()
    assert not list(codes.rglob("*.part"))
    out = tmp_path / "out"
    r = run("decompress", codes, out, "--nfe", "0", "--model", tiny_codec_dir, "--format", "flac")
    assert r.exit_code == 0, r.output
    assert "2 converted" in r.output
    y, sr = sf.read(out / "cd1" / "b.flac", always_2d=True)
    assert sr == 22050 and y.shape[1] == 2
    r = run("decompress", codes, out, "--nfe", "0", "--model", tiny_codec_dir, "--format", "flac",
            "--skip-existing")
    assert r.exit_code == 0 and "2 skipped" in r.output
    r = run("compress", src, tmp_path / "only", "--model", tiny_codec_dir, "--glob", "*.flac", "-q")
    assert r.exit_code == 0
    assert [p.name for p in (tmp_path / "only").rglob("*.fdc")] == ["b.fdc"]


def test_python_module_entry_point(wav):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "flowdec_cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "compress" in r.stdout and "decompress" in r.stdout


def test_a_file_name_that_is_not_utf8_is_read_and_written(run, tmp_path, tiny_codec_dir):
    """Linux allows any bytes in a name; Python holds the invalid ones as surrogates, soundfile did not."""
    import os

    src = os.fsdecode(os.fsencode(str(tmp_path)) + b"/in\xff.wav")
    try:
        with open(src, "wb") as f:
            sf.write(f, tone(0.5, 48000, 1), 48000, format="WAV")
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    fdc = os.fsdecode(os.fsencode(str(tmp_path)) + b"/c\xfe.fdc")
    assert run("compress", src, fdc, "-n", "4", "--model", tiny_codec_dir, "-q").exit_code == 0
    out = os.fsdecode(os.fsencode(str(tmp_path)) + b"/out\xfe.flac")
    r = run("decompress", fdc, out, "--nfe", "0", "--model", tiny_codec_dir, "-q")
    assert r.exit_code == 0, r.output
    with open(out, "rb") as f:
        assert sf.info(f).frames == 24000


def test_audio_at_a_path_longer_than_libsndfile_takes_is_read_and_written(run, tmp_path, tiny_codec_dir):
    """libsndfile refuses names over about 1 KiB ("Supplied filename too long"); Linux allows 4 KiB."""
    deep = tmp_path.joinpath(*["d" * 200] * 6)
    deep.mkdir(parents=True)
    src = deep / "in.wav"
    with open(src, "wb") as f:
        sf.write(f, tone(0.5, 48000, 2), 48000, format="WAV")
    assert len(os.fsencode(src)) > 1100
    r = run("roundtrip", src, deep / "out.flac", "-n", "4", "--nfe", "0", "--model", tiny_codec_dir, "-q")
    assert r.exit_code == 0, r.output
    with open(deep / "out.flac", "rb") as f:
        info = sf.info(f)
    assert (info.frames, info.channels) == (24000, 2)


def test_an_input_replaced_between_the_passes_is_refused(tmp_path):
    """The peak pass and the encode pass read the file again: they must read the file the probe saw."""
    from flowdec_cli.audio import AudioError, probe, read_blocks

    src, other = tmp_path / "in.wav", tmp_path / "other.wav"
    sf.write(src, tone(0.5, 48000), 48000)
    sf.write(other, tone(0.5, 8000), 8000)
    info = probe(src)
    assert sum(len(b) for b in read_blocks(src, same_as=info)) == 24000
    blocks = read_blocks(src, 1000, same_as=info)
    next(blocks)
    os.utime(src, ns=(0, 0))  # rewritten in place while a pass reads it: caught when the pass ends
    with pytest.raises(AudioError, match="changed while flowdec was reading it"):
        list(blocks)
    os.replace(other, src)
    with pytest.raises(AudioError, match="changed while flowdec was reading it"):
        next(read_blocks(src, same_as=info))
    assert sum(len(b) for b in read_blocks(src)) == 4000  # without same_as: whatever is there now


def test_folder_mode_takes_every_type_a_single_file_may_be(run, tmp_path, tiny_codec_dir):
    """AIFF-C and RF64 inputs were coded when named alone and passed over in silence in a folder; the
    roundtrip of a folder gives each its own type back."""
    src = tmp_path / "in"
    src.mkdir()
    for name, fmt in (("a.aifc", "AIFF"), ("b.rf64", "RF64"), ("c.WAV", "WAV")):
        sf.write(src / name, tone(0.2, 48000), 48000, format=fmt)
    r = run("roundtrip", src, tmp_path / "out", "--nfe", "0", "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.aifc", "b.rf64", "c.WAV"]
    assert sf.info(str(tmp_path / "out" / "b.rf64")).format == "RF64"


@pytest.mark.parametrize("verb", ["compress", "decompress", "roundtrip"])
def test_folder_inputs_sharing_an_output_are_refused_and_the_rest_converted(run, tmp_path, tiny_codec_dir, verb):
    """a.wav and a.flac both make a.fdc: the second used to replace the first (-f) or be called "exists"."""
    src = tmp_path / "in"
    src.mkdir()
    if verb == "decompress":
        for name in ("a.fdc", "a.FDC", "b.fdc"):
            sf.write(tmp_path / "x.wav", tone(0.3, 48000), 48000)
            assert run("compress", tmp_path / "x.wav", src / name, "-m", tiny_codec_dir, "-q", "-f").exit_code == 0
        first, second, other, shared = src / "a.FDC", src / "a.fdc", "b.wav", "a.wav"
    else:
        sf.write(src / "a.wav", tone(0.3, 48000), 48000)
        sf.write(src / "a.flac", tone(0.2, 48000), 48000)
        sf.write(src / "b.wav", tone(0.3, 48000), 48000)
        first, second = src / "a.flac", src / "a.wav"
        other, shared = ("b.fdc", "a.fdc") if verb == "compress" else ("b.wav", "a.wav")
    out = tmp_path / "out"
    extra = {"compress": [], "decompress": ["--nfe", "0"], "roundtrip": ["--nfe", "0", "--format", "wav"]}[verb]
    r = run(verb, src, out, "-m", tiny_codec_dir, "-f", *extra)  # roundtrip keeps each type unless --format
    assert r.exit_code == 1, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("flowdec: error:")]
    assert errors == [f"flowdec: error: {first}: same output {out / shared} as {second}; neither converted "
                      "(rename one, or choose with --glob)",
                      f"flowdec: error: {second}: same output {out / shared} as {first}; neither converted "
                      "(rename one, or choose with --glob)"], r.output
    assert "1 converted, 2 failed of 3 files" in r.output
    assert (out / other).is_file() and not (out / shared).exists()


@pytest.mark.parametrize("skip_existing", [False, True])
def test_an_output_that_would_be_another_outputs_folder_is_refused(run, tmp_path, tiny_codec_dir, skip_existing):
    """a.wav makes a.fdc and a.fdc/b.wav makes a.fdc/b.fdc: with --skip-existing a.wav was skipped as if its
    output existed (the folder this run had made) and the run ended with exit 0; without it, "exists"."""
    src = tmp_path / "in"
    (src / "a.fdc").mkdir(parents=True)
    sf.write(src / "a.wav", tone(0.3, 48000), 48000)
    sf.write(src / "a.fdc" / "b.wav", tone(0.3, 48000), 48000)
    sf.write(src / "c.wav", tone(0.3, 48000), 48000)
    out = tmp_path / "out"
    r = run("compress", src, out, "-m", tiny_codec_dir, *(["--skip-existing"] if skip_existing else []))
    assert r.exit_code == 1, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("flowdec: error:")]
    assert len(errors) == 2 and all("would have to be a file and a folder of one name" in e for e in errors)
    assert "1 converted, 2 failed of 3 files" in r.output
    assert (out / "c.fdc").is_file() and not (out / "a.fdc").exists()


def test_folder_json_has_a_record_for_every_file_failed_and_refused_too(run, tmp_path, tiny_codec_dir):
    """A script reading --json saw only the files that worked: failures were only lines on stderr."""
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.wav", tone(0.3, 48000), 48000)
    sf.write(src / "c.wav", tone(0.2, 48000), 48000)
    sf.write(src / "c.flac", tone(0.2, 48000), 48000)
    (src / "broken.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    out = tmp_path / "out"
    r = run("compress", src, out, "-m", tiny_codec_dir, "-q", "--json")
    assert r.exit_code == 1, r.output
    records = {rec["input"]: rec for rec in map(json.loads, r.stdout.splitlines())}
    assert sorted(records) == sorted(str(src / n) for n in ("a.wav", "broken.wav", "c.flac", "c.wav"))
    assert all(rec["command"] == "compress" for rec in records.values())
    good = records[str(src / "a.wav")]
    assert good["ok"] is True and good["output"] == str(out / "a.fdc") and "error" not in good
    errors = [ln.removeprefix("flowdec: error: ") for ln in r.stderr.splitlines() if ln.startswith("flowdec: error:")]
    assert len(errors) == 3, r.stderr  # the error lines stay as they were
    for name, output in (("broken.wav", "broken.fdc"), ("c.flac", "c.fdc"), ("c.wav", "c.fdc")):
        rec = records[str(src / name)]
        assert rec["ok"] is False and rec["output"] == str(out / output), rec
        assert rec["error"] in errors and name in rec["error"] and "\n" not in rec["error"]
    assert "same output" in records[str(src / "c.wav")]["error"]


def test_json_has_a_record_for_a_file_skip_existing_left_alone(run, tmp_path, tiny_codec_dir):
    """--skip-existing --json printed nothing for a skipped file: a script could not tell it from one never
    considered."""
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.wav", tone(0.3, 48000), 48000)
    sf.write(src / "b.wav", tone(0.3, 48000), 48000)
    out = tmp_path / "out"
    out.mkdir()
    assert run("compress", src / "a.wav", out / "a.fdc", "-m", tiny_codec_dir, "-q").exit_code == 0
    r = run("compress", src, out, "-m", tiny_codec_dir, "-q", "--json", "--skip-existing")
    assert r.exit_code == 0, r.output
    records = {rec["input"]: rec for rec in map(json.loads, r.stdout.splitlines())}
    assert records[str(src / "a.wav")] == {"command": "compress", "input": str(src / "a.wav"),
                                          "output": str(out / "a.fdc"), "ok": True, "skipped": True}
    assert records[str(src / "b.wav")]["ok"] is True and "skipped" not in records[str(src / "b.wav")]
    r = run("compress", src / "a.wav", out / "a.fdc", "-m", tiny_codec_dir, "-q", "--json", "--skip-existing")
    assert r.exit_code == 0 and json.loads(r.stdout)["skipped"] is True


def test_single_file_json_failure_has_its_record_too(run, tmp_path, tiny_codec_dir):
    """One file with --json: a failure printed nothing on stdout, where a folder's failures each get a record."""
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....WAVEfmt nonsense")
    r = run("compress", bad, tmp_path / "o.fdc", "-m", tiny_codec_dir, "-q", "--json")
    assert r.exit_code == 1, r.output
    (record,) = map(json.loads, r.stdout.splitlines())
    (error,) = [ln.removeprefix("flowdec: error: ") for ln in r.stderr.splitlines() if ln.startswith("flowdec: error:")]
    assert record == {"command": "compress", "input": str(bad), "output": str(tmp_path / "o.fdc"), "ok": False,
                      "error": error}
    assert not (tmp_path / "o.fdc").exists()
    r = run("compress", bad, tmp_path / "o.fdc", "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 1 and r.stdout == ""  # without --json, stdout stays empty


@pytest.mark.parametrize("command", ["compress", "decompress", "roundtrip"])
def test_json_has_a_record_for_an_input_refused_before_any_work(run, tmp_path, command):
    """A missing input, or an output that exists, was refused on stderr with nothing on stdout under --json."""
    out = tmp_path / ("o.fdc" if command == "compress" else "o.wav")
    missing = tmp_path / ("gone.fdc" if command == "decompress" else "gone.wav")
    present = tmp_path / ("here.fdc" if command == "decompress" else "here.wav")
    present.write_bytes(b"x")
    out.write_bytes(b"keep")
    for src, why in ((missing, "no such file"), (present, "exists")):
        r = run(command, src, out, "--json")
        assert r.exit_code == 1, r.output
        (record,) = map(json.loads, r.stdout.splitlines())
        assert record["ok"] is False and record["input"] == str(src) and why in record["error"], record
        assert record["error"] in r.stderr and out.read_bytes() == b"keep"


@pytest.mark.parametrize("command", ["compress", "decompress", "roundtrip"])
def test_json_record_names_the_file_a_folder_output_resolved_to(run, tmp_path, command):
    """A single file into OUT/ whose output is there already: the record names OUT/<name>, the file refused."""
    src = tmp_path / ("a.fdc" if command == "decompress" else "a.wav")
    src.write_bytes(b"x")
    folder = tmp_path / "out"
    folder.mkdir()
    there = folder / ("a.fdc" if command == "compress" else src.with_suffix(".wav").name)
    there.write_bytes(b"keep")
    r = run(command, src, str(folder) + os.sep, "--json")
    assert r.exit_code == 1, r.output
    (record,) = map(json.loads, r.stdout.splitlines())
    assert record["output"] == str(there) and "exists" in record["error"], record
    assert there.read_bytes() == b"keep"


def test_an_output_folder_inside_the_input_folder(run, tmp_path, tiny_codec_dir):
    """compress codes every audio file below IN, those under OUT too (its outputs are .fdc, never inputs),
    and writes beside them when OUT is IN; roundtrip, whose outputs are audio, leaves out what lies under
    OUT (an earlier run's outputs) and refuses an OUT that holds IN."""
    src = tmp_path / "album"
    (src / "codes").mkdir(parents=True)
    for path in (src / "a.wav", src / "codes" / "b.wav"):
        sf.write(path, tone(0.2, 48000), 48000)
    r = run("compress", src, src / "codes", "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 0, r.output
    assert sorted(p.relative_to(src).as_posix() for p in src.rglob("*.fdc")) == ["codes/a.fdc", "codes/codes/b.fdc"]
    r = run("compress", src / "codes", src / "codes", "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 0 and (src / "codes" / "b.fdc").is_file(), r.output
    r = run("roundtrip", src, src / "codes", "-m", tiny_codec_dir, "--nfe", "0", "-q")
    assert r.exit_code == 0 and (src / "codes" / "a.wav").is_file() and not (src / "codes" / "codes" / "b.wav").exists()
    for out in (src, tmp_path):
        r = run("roundtrip", src, out, "-m", tiny_codec_dir, "--nfe", "0", "-q")
        assert r.exit_code == 1 and "holds the input folder" in _one_error_line(r)


def test_folder_mode_skips_hidden_files_and_folders(run, tmp_path, tiny_codec_dir):
    """.hidden.wav, .hid/x.wav and macOS's ._a.wav (AppleDouble, not audio: the batch failed on it) are left
    out of a folder, --glob or not; a hidden file named directly is still converted."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / ".hid").mkdir()
    for path in (src / "a.wav", src / "sub" / "b.wav", src / ".hidden.wav", src / ".hid" / "x.wav"):
        sf.write(path, tone(0.2, 48000), 48000)
    (src / "._a.wav").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    for i, extra in enumerate(([], ["--glob", "*.wav"])):
        out = tmp_path / f"out{i}"
        r = run("compress", src, out, "-m", tiny_codec_dir, "-q", *extra)
        assert r.exit_code == 0, r.output
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["a.fdc",
                                                                                              "sub/b.fdc"]
    r = run("compress", src / ".hidden.wav", tmp_path / "h.fdc", "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 0 and (tmp_path / "h.fdc").is_file()


def test_a_model_name_that_is_no_model_is_a_usage_error(run, wav, tmp_path, tiny_codec_dir):
    """Named on the command line, an unknown model is refused once, before any file: a name that is no model
    exits 2, as click's own bad values; a missing path 1, as a missing input; one a file names stays that
    file's failure (exit 1)."""
    fdc = tmp_path / "a.fdc"
    assert run("compress", wav, fdc, "-b", "3", "-m", tiny_codec_dir, "-q").exit_code == 0
    folder = tmp_path / "fdcs"
    folder.mkdir()
    for name in ("x.fdc", "y.fdc"):
        (folder / name).write_bytes(fdc.read_bytes())
    for args in (("compress", wav, tmp_path / "b.fdc"), ("roundtrip", wav, tmp_path / "b.wav"),
                 ("decompress", fdc, tmp_path / "c.wav"), ("decompress", folder, tmp_path / "out")):
        for ref, code, why in (("nosuch", 2, "unknown model 'nosuch'"),
                               (tmp_path / "gone", 1, "gone: no such file or folder")):
            r = run(*args, "-m", ref, "-q")
            assert r.exit_code == code and why in _one_error_line(r), (args, r.output)
    assert not (tmp_path / "out").exists()
    r = run("decompress", fdc, tmp_path / "d.wav", "-q")  # the file names 'tiny-75', not known here
    assert r.exit_code == 1 and "coded with model 'tiny-75'" in _one_error_line(r)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the half precisions run on CUDA")
@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_a_precision_the_device_cannot_run_is_a_usage_error(precision, run, wav, tmp_path, tiny_codec_dir):
    fdc = tmp_path / "a.fdc"
    assert run("compress", wav, fdc, "-b", "3", "-m", tiny_codec_dir, "-q").exit_code == 0
    for args in (("decompress", fdc, tmp_path / "b.wav"), ("roundtrip", wav, tmp_path / "c.wav")):
        r = run(*args, "-m", tiny_codec_dir, "--precision", precision, "-q")
        expected = f"--precision {precision}: {precision} arithmetic needs a CUDA device"
        assert r.exit_code == 2 and expected in _one_error_line(r)
        assert not (tmp_path / "b.wav").exists() and not (tmp_path / "c.wav").exists()


def test_output_types_are_usage_errors_named_as_the_user_gave_them(run, wav, tmp_path, tiny_codec_dir):
    fdc = tmp_path / "a.fdc"
    assert run("compress", wav, fdc, "-b", "3", "-m", tiny_codec_dir, "-q").exit_code == 0
    cases = [
        (("decompress", fdc, tmp_path / "noext"), "noext: unsupported output extension '(none)'"),
        (("roundtrip", wav, tmp_path / "noext"), "noext: unsupported output extension '(none)'"),
        (("decompress", fdc, "-", "--format", "xyz"), "--format xyz: unsupported output type '.xyz'"),
        (("decompress", fdc, tmp_path / "x.opus", "--subtype", "PCM_16"),
         "a .opus file holds OPUS only (PCM_16 goes in .aiff, .au, .avr, .caf, .flac, .ircam, .paf, .pvf, .rf64, "
         ".sds, .sph, .svx, .voc, .w64, .wav)"),
        (("decompress", fdc, tmp_path / "f.wav", "--format", "flac"), "--format flac is for folders and -"),
    ]
    for args, why in cases:
        r = run(*args, "--nfe", "0", "-m", tiny_codec_dir, "-q")
        assert r.exit_code == 2 and why in _one_error_line(r), (args, r.output)
    assert not (tmp_path / "noext").exists()


@pytest.mark.parametrize("verb", ["compress", "decompress", "roundtrip"])
def test_force_and_skip_existing_together_are_refused(run, wav, tmp_path, tiny_codec_dir, verb):
    """On a single file -f won, in a folder --skip-existing did: neither may win silently."""
    src = wav if verb != "decompress" else tmp_path / "a.fdc"
    if verb == "decompress":
        assert run("compress", wav, src, "-b", "3", "-m", tiny_codec_dir, "-q").exit_code == 0
    r = run(verb, src, tmp_path / ("o.fdc" if verb == "compress" else "o.wav"), "-f", "--skip-existing",
            "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 2 and "choose one" in _one_error_line(r)


@pytest.mark.parametrize("args", [["compress", "", "{tmp}/x.fdc"], ["decompress", "", "{tmp}/x.wav"],
                                  ["compress", "{wav}", ""], ["info", ""]])
def test_an_empty_path_is_a_usage_error(run, wav, tmp_path, args, monkeypatch):
    """Path("") is the current folder: `flowdec compress "$UNSET" out.fdc` coded everything below it."""
    monkeypatch.chdir(wav.parent)
    r = run(*[a.format(tmp=tmp_path, wav=wav) for a in args])
    assert r.exit_code == 2 and "an empty path; give a file or folder name, or - for standard input or output" \
        in _one_error_line(r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav"]


def test_an_output_spelled_as_a_folder_must_be_one(run, wav, tmp_path, tiny_codec_dir):
    """`flowdec compress a.wav newdir/` wrote a file named newdir (Path drops the slash); as cp, a folder
    named with a trailing separator must exist, and then the output goes inside it."""
    r = run("compress", wav, f"{tmp_path / 'newdir'}{os.sep}", "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 1 and _one_error_line(r).endswith("newdir/: no such folder; create it first")
    (tmp_path / "afile").write_bytes(b"x")
    r = run("compress", wav, f"{tmp_path / 'afile'}{os.sep}", "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 1 and _one_error_line(r).endswith("afile/: is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "in.wav"]
    (tmp_path / "newdir").mkdir()
    assert run("compress", wav, f"{tmp_path / 'newdir'}{os.sep}", "-m", tiny_codec_dir, "-q").exit_code == 0
    assert (tmp_path / "newdir" / "in.fdc").is_file()


def test_a_folder_input_refuses_an_output_named_like_a_file(run, wav, tmp_path, tiny_codec_dir):
    """`flowdec compress ./album out.fdc` made a folder out.fdc; a trailing separator says it is meant."""
    r = run("compress", wav.parent, tmp_path / "out.fdc", "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 1 and "out.fdc: named like a file, but the input" in _one_error_line(r)
    assert not (tmp_path / "out.fdc").exists()
    r = run("compress", wav.parent, f"{tmp_path / 'out.fdc'}{os.sep}", "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out.fdc" / "in.fdc").is_file()


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_a_link_to_nothing_in_a_folder_is_reported_not_skipped(run, tmp_path, tiny_codec_dir):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.wav", tone(0.3, 48000), 48000)
    (src / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    r = run("compress", src, tmp_path / "out", "-m", tiny_codec_dir)
    assert r.exit_code == 1
    assert f"flowdec: error: {src / 'gone.wav'}: a link to nothing ({tmp_path / 'nowhere.wav'})" in r.output
    assert "flowdec: 1 converted, 1 failed of 2 files" in r.output
    assert (tmp_path / "out" / "a.fdc").is_file()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("verb", ["compress", "roundtrip"])
def test_a_fifo_and_a_link_loop_in_a_folder_are_reported_not_skipped(run, tmp_path, tiny_codec_dir, verb):
    """They were passed over without a word (a FIFO cannot be read in a batch: it may wait forever); a
    folder roundtrip crashed on the loop (Path.resolve raises RuntimeError on Python 3.11)."""
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.wav", tone(0.3, 48000), 48000)
    os.mkfifo(src / "pipe.wav")
    (src / "loop.wav").symlink_to("loop.wav")
    r = run(verb, src, tmp_path / "out", "-m", tiny_codec_dir, *(["--nfe", "0"] if verb == "roundtrip" else []))
    assert r.exit_code == 1
    assert (f"flowdec: error: {src / 'pipe.wav'}: is a FIFO; a folder run reads regular files only (name it on "
            "its own to read it)") in r.output
    assert f"flowdec: error: {src / 'loop.wav'}: a link that leads back to itself (loop.wav)" in r.output
    assert "flowdec: 1 converted, 2 failed of 3 files" in r.output


def test_roundtrip_keeps_each_inputs_type_and_sample_format(run, tmp_path, tiny_codec_dir):
    """A 24-bit FLAC came back as 16-bit, and a folder's FLAC and Ogg files came back as WAV."""
    src = tmp_path / "in"
    src.mkdir()
    x = tone(0.5, 44100)
    sf.write(src / "a.flac", x, 44100, subtype="PCM_24")
    sf.write(src / "b.wav", x, 44100, subtype="FLOAT")
    sf.write(src / "c.ogg", x, 44100)
    assert run("roundtrip", src, tmp_path / "out", "-m", tiny_codec_dir, "--nfe", "0", "-q").exit_code == 0
    got = {p.name: (sf.info(str(p)).format, sf.info(str(p)).subtype) for p in (tmp_path / "out").iterdir()}
    assert got == {"a.flac": ("FLAC", "PCM_24"), "b.wav": ("WAV", "FLOAT"), "c.ogg": ("OGG", "VORBIS")}
    assert run("roundtrip", src / "a.flac", tmp_path / "a.wav", "-m", tiny_codec_dir, "--nfe", "0",
               "-q").exit_code == 0
    assert sf.info(str(tmp_path / "a.wav")).subtype == "PCM_24"  # a WAV holds it too
    assert run("roundtrip", src / "a.flac", tmp_path / "b.flac", "-m", tiny_codec_dir, "--nfe", "0", "-q",
               "--subtype", "PCM_16").exit_code == 0
    assert sf.info(str(tmp_path / "b.flac")).subtype == "PCM_16"  # what --subtype says wins
    assert run("roundtrip", src, tmp_path / "wavs", "-m", tiny_codec_dir, "--nfe", "0", "-q",
               "--format", "wav").exit_code == 0
    assert sorted(p.name for p in (tmp_path / "wavs").iterdir()) == ["a.wav", "b.wav", "c.wav"]
    # a float or 32-bit input into a type that cannot hold it: the finest it can, not its default 16 bits
    sf.write(src / "d.wav", x, 44100, subtype="PCM_32")
    for name, want in (("b.wav", "PCM_24"), ("d.wav", "PCM_24")):
        out = tmp_path / f"{name}.flac"
        assert run("roundtrip", src / name, out, "-m", tiny_codec_dir, "--nfe", "0", "-q").exit_code == 0
        assert sf.info(str(out)).subtype == want, name
    assert run("roundtrip", src / "b.wav", tmp_path / "b.caf", "-m", tiny_codec_dir, "--nfe", "0",
               "-q").exit_code == 0
    assert sf.info(str(tmp_path / "b.caf")).subtype == "FLOAT"


def test_an_mp3_round_trips_into_a_wav_of_the_wavs_default_samples(run, tmp_path, tiny_codec_dir):
    """soundfile says a WAV holds MPEG Layer III samples, libsndfile cannot write one: the round trip failed
    after coding, and --subtype MPEG_LAYER_III for a .wav passed the early check."""
    sf.write(tmp_path / "in.mp3", tone(0.5, 48000), 48000, format="MP3", subtype="MPEG_LAYER_III")
    r = run("roundtrip", tmp_path / "in.mp3", tmp_path / "out.wav", "-m", tiny_codec_dir, "--nfe", "0", "-q")
    assert r.exit_code == 0, r.output
    assert sf.info(str(tmp_path / "out.wav")).subtype == "PCM_16"
    r = run("roundtrip", tmp_path / "in.mp3", tmp_path / "x.wav", "-m", tiny_codec_dir, "--nfe", "0",
            "--subtype", "MPEG_LAYER_III")
    assert r.exit_code == 2 and "not available for .wav output" in r.output and "MPEG_LAYER_III," not in r.output


def test_skip_existing_skips_a_single_file_too(run, wav, tmp_path, tiny_codec_dir):
    fdc = tmp_path / "a.fdc"
    fdc.write_bytes(b"mine")
    r = run("compress", wav, fdc, "-m", tiny_codec_dir, "--skip-existing")
    assert r.exit_code == 0 and r.output == f"flowdec: {fdc}: exists; skipped (--skip-existing)\n"
    assert fdc.read_bytes() == b"mine"
    assert run("compress", wav, fdc, "-m", tiny_codec_dir, "--skip-existing", "-q").output == ""


def test_a_file_without_audio_has_no_rate_on_disk(run, tmp_path, tiny_codec_dir):
    """0 samples: 0.000 kbit/s and RTF 0 were printed; JSON says null, the text says there is no audio."""
    empty = tmp_path / "empty.wav"
    sf.write(empty, tone(0.0, 48000), 48000)
    r = run("compress", empty, tmp_path / "e.fdc", "-m", tiny_codec_dir, "--json", "-q", "-b", "3")
    record = json.loads(r.output)
    assert record["kbps_on_disk"] is None and record["rtf"] is None and record["kbps_nominal"] == 3.0
    r = run("decompress", tmp_path / "e.fdc", tmp_path / "e.wav", "-m", tiny_codec_dir, "--nfe", "0")
    assert r.exit_code == 0 and "(no audio)" in r.output and "RTF" not in r.output
    info = json.loads(run("info", tmp_path / "e.fdc", "--json").output)  # was 0.0 for a file of 100 bytes
    assert info["actual_bitrate_kbps"] is None and info["envelope_kbps"] is None and info["file_bytes"] > 0
    assert re.search(r"^actual_bitrate_kbps +-$", run("info", tmp_path / "e.fdc").output, re.M)
    one = tmp_path / "one.wav"  # a sample: the factor measured start-up ("RTF 5093"); JSON still has it
    sf.write(one, np.full(1, 0.1, np.float32), 48000)
    r = run("roundtrip", one, tmp_path / "one-out.wav", "-m", tiny_codec_dir, "--nfe", "0")
    assert r.exit_code == 0 and "RTF" not in r.output, r.output
    r = run("roundtrip", one, tmp_path / "one-out.wav", "-m", tiny_codec_dir, "--nfe", "0", "-f", "--json", "-q")
    assert json.loads(r.output)["rtf"] > 0


@pytest.mark.parametrize("ext", [".flac", ".opus", ".mp3"])
def test_no_unreadable_file_is_written_for_audio_without_samples(run, tmp_path, tiny_codec_dir, ext):
    """libsndfile writes an empty FLAC as 0 bytes (and an empty MP3 or Opus unreadably): refused, named."""
    sf.write(tmp_path / "empty.wav", tone(0.0, 48000), 48000)
    assert run("compress", tmp_path / "empty.wav", tmp_path / "e.fdc", "-m", tiny_codec_dir, "-q").exit_code == 0
    r = run("decompress", tmp_path / "e.fdc", tmp_path / f"e{ext}", "-m", tiny_codec_dir, "--nfe", "0")
    assert r.exit_code == 1 and "cannot hold audio of 0 samples" in _one_error_line(r)
    assert not (tmp_path / f"e{ext}").exists()
    assert run("decompress", tmp_path / "e.fdc", tmp_path / "e.wav", "-m", tiny_codec_dir, "--nfe", "0").exit_code == 0


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_a_single_link_to_nothing_says_where_it_points(run, tmp_path, tiny_codec_dir):
    """`decompress` said 'no such link to nothing' and `info` 'no such file' for a name that is there."""
    from flowdec_cli import audio

    for name in ("gone.fdc", "gone.wav"):
        (tmp_path / name).symlink_to(tmp_path / f"nowhere-{name}")
    why = f"a link to nothing ({tmp_path / 'nowhere-gone.fdc'})"
    for args in (("decompress", tmp_path / "gone.fdc", tmp_path / "o.wav"), ("info", tmp_path / "gone.fdc")):
        r = run(*args)
        assert r.exit_code == 1 and f"flowdec: error: {tmp_path / 'gone.fdc'}: {why}" in r.output, r.output
    r = run("compress", tmp_path / "gone.wav", tmp_path / "o.fdc", "-m", tiny_codec_dir)
    assert r.exit_code == 1 and f"gone.wav: a link to nothing ({tmp_path / 'nowhere-gone.wav'})" in r.output
    with pytest.raises(audio.AudioError, match=r"gone\.wav: a link to nothing"):
        audio.probe(tmp_path / "gone.wav")
    r = run("compress", tmp_path / "absent.wav", tmp_path / "o.fdc")
    assert r.exit_code == 1 and "absent.wav: no such file or folder" in r.output


def test_files_made_with_the_default_folder_model_decode_without_model(run, wav, tmp_path, tiny_codec_dir):
    """A model chosen as the default by its folder writes its name into each .fdc; decompress looked that
    name up in the catalogue only and asked for --model, though the user's own default was that model."""
    folder = tmp_path / "mine"
    shutil.copytree(tiny_codec_dir, folder)
    r = run("models", "default", folder)
    assert r.exit_code == 0, r.output
    r = run("compress", wav, tmp_path / "a.fdc", "-q")
    assert r.exit_code == 0, r.output
    r = run("decompress", tmp_path / "a.fdc", tmp_path / "a.wav", "--nfe", "0", "-q")
    assert r.exit_code == 0, r.output
    assert sf.info(tmp_path / "a.wav").frames == sf.info(wav).frames
    r = run("models", "default", "--reset")  # no longer the default: the file's name alone finds nothing
    assert r.exit_code == 0, r.output
    r = run("decompress", tmp_path / "a.fdc", tmp_path / "b.wav", "--nfe", "0", "-q")
    assert r.exit_code == 1 and "coded with model 'tiny-75', which cannot be loaded here" in r.output
    assert "pass --model NAME_OR_PATH" in r.output


def test_only_the_default_folder_whose_model_has_the_files_name_is_used(tmp_path, tiny_codec_dir, monkeypatch):
    from flowdec_cli.models import UnknownModelError
    from flowdec_cli.models.resolve import resolve_named_by_data

    folder = tmp_path / "renamed"
    shutil.copytree(tiny_codec_dir, folder)
    monkeypatch.setenv("FLOWDEC_MODEL", str(folder))
    assert resolve_named_by_data("tiny-75") == folder  # its card's name, not the folder's
    with pytest.raises(UnknownModelError):
        resolve_named_by_data("renamed")
    (folder / "flowdec.json").write_text(json.dumps({"licence": "test-only"}))  # no name: the folder's
    assert resolve_named_by_data("renamed") == folder
    with pytest.raises(UnknownModelError):
        resolve_named_by_data("tiny-75")
    # a default given relatively (a name, or a folder of the working folder) is never looked up here: a
    # folder beside the files, named like the default, would choose the model (review)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLOWDEC_MODEL", "renamed")
    with pytest.raises(UnknownModelError):
        resolve_named_by_data("renamed")


def test_a_folder_takes_every_type_libsndfile_reads_and_writes(run, tmp_path, tiny_codec_dir):
    """A folder's NIST SPHERE (.sph, speech corpora), VOC, IRCAM, PAF, SVX, AVR, SDS, PVF and .snd files
    were passed over without a word ("4 converted of 4 files"), though each compressed when named."""
    src = tmp_path / "in"
    src.mkdir()
    for ext, fmt in ((".sph", "NIST"), (".voc", "VOC"), (".ircam", "IRCAM"), (".paf", "PAF"), (".svx", "SVX"),
                     (".avr", "AVR"), (".sds", "SDS"), (".pvf", "PVF"), (".snd", "AU"), (".wav", "WAV")):
        sf.write(src / f"a{ext}", tone(0.3, 16000), 16000, format=fmt)
    r = run("roundtrip", src, tmp_path / "out", "-m", tiny_codec_dir, "--nfe", "0", "-q", "--json")
    assert r.exit_code == 0, r.output
    assert len([json.loads(line) for line in r.stdout.splitlines()]) == 10
    for f in src.iterdir():  # each back in its own type, at its own rate and length
        back = sf.info(tmp_path / "out" / f.name)
        assert (back.format, back.samplerate, back.frames) == (sf.info(f).format, 16000, sf.info(f).frames)
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, tone(0.3, 16000, 2), 16000)
    r = run("roundtrip", stereo, tmp_path / "s.svx", "-m", tiny_codec_dir, "--nfe", "0")
    assert r.exit_code == 1 and "s.svx: SVX holds 1 channel, not 2; write " in r.output, r.output
    fast = tmp_path / "fast.wav"  # an 8SVX header keeps the rate in 16 bits: 96 kHz was written as 30,464
    sf.write(fast, tone(0.2, 96000), 96000)
    assert run("roundtrip", fast, tmp_path / "f.svx", "-m", tiny_codec_dir, "--nfe", "0", "-q").exit_code == 0
    assert sf.info(tmp_path / "f.svx").samplerate == 48000


def test_a_wav_of_more_than_two_channels_says_its_speaker_layout(run, tmp_path, tiny_codec_dir):
    """A 6-channel WAV came back with a plain PCM format tag and no channel mask: players had to guess 5.1."""
    import struct

    src = tmp_path / "six.wav"
    sf.write(src, tone(0.3, 48000, 6), 48000, format="WAVEX")
    r = run("roundtrip", src, tmp_path / "out.wav", "-m", tiny_codec_dir, "--nfe", "0", "-q")
    assert r.exit_code == 0, r.output
    data = (tmp_path / "out.wav").read_bytes()
    fmt = data.find(b"fmt ")
    tag, = struct.unpack("<H", data[fmt + 8:fmt + 10])
    mask, = struct.unpack("<I", data[fmt + 28:fmt + 32])
    assert (tag, mask) == (0xFFFE, 0x3F)
    back, _ = sf.read(tmp_path / "out.wav")
    assert back.shape == (14400, 6)


def test_the_precision_choices_are_the_postfilters():
    """The command line cannot import the postfilter (torch) to build its --precision list; this keeps the
    list it restates equal to what :meth:`Postfilter.settings_for` accepts."""
    from flowdec_cli.postfilter import PRECISION_CHOICES

    option = next(p for p in main.commands["decompress"].params if p.name == "precision")
    assert tuple(option.type.choices) == ("auto", *PRECISION_CHOICES)
