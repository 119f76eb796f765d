"""Nothing lost, nothing flooded (issue 12): races between real processes, hostile headers, signals, stale
temporary files, and errors that name the file and the real cause on one line."""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

import flowdec_cli
from flowdec_cli import container, fileio
from flowdec_cli.cli import main
from flowdec_cli.container import FDC_MAGIC, FdcError, decode_fdc, read_fdc

from .conftest import make_tiny_ndac, tone, write_model_folder

SRC = str(Path(flowdec_cli.__file__).resolve().parents[1])  # the package under test, also in the children


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output and "unexpected" not in result.output, result.output
    return lines[0]


def spawn(*args: str | os.PathLike, **popen: Any) -> subprocess.Popen:
    """``python -m flowdec_cli ARGS`` on the package under test, as a shell would start it (``popen``: more
    Popen arguments, e.g. ``cwd`` or ``start_new_session``)."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "flowdec_cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_signals, **popen)


def _default_signals() -> None:
    """A background job (`cmd &`, nohup) starts with SIGINT ignored; give the child what a terminal would."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.is_file()]


def fake_fdc(tmp_path: Path, seconds: float, name: str = "long.fdc", channels: int = 1) -> Path:
    """A valid .fdc for the tiny 75 Hz codec with random codes (no encoding needed)."""
    frames = int(seconds * 75)
    h = container.FdcHeader(model_name="tiny-75", model_hash="", sample_rate=48000, channels=channels,
                            num_samples=frames * 640, model_sample_rate=48000, hop_length=640,
                            codebook_size=1024, n_codebooks=4, model_codebooks=10, num_frames=frames)
    codes = np.random.default_rng(0).integers(0, 1024, h.codes_shape)
    path = tmp_path / name
    container.write_fdc(path, h, codes)
    return path


# -- 1. no-clobber publish ------------------------------------------------------------------------

@pytest.mark.parametrize("verb", ["compress", "decompress", "roundtrip"])
def test_two_processes_one_output_nothing_silently_replaced(verb, tmp_path, tiny_codec_dir):
    """Both start while the output does not exist; exactly one wins, the other says so (exit 1) and the
    file on disk is the winner's, whole."""
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    sf.write(a, tone(6.0, 48000), 48000)
    sf.write(b, tone(7.0, 48000), 48000)
    if verb == "decompress":
        a, b = fake_fdc(tmp_path, 6.0, "a.fdc"), fake_fdc(tmp_path, 7.0, "b.fdc")
    out = tmp_path / ("same.fdc" if verb == "compress" else "same.wav")
    extra = [] if verb == "compress" else ["--nfe", "0"]
    procs = [spawn(verb, src, out, "-m", tiny_codec_dir, "-q", *extra) for src in (a, b)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 1], results
    loser = next(err for rc, err in results if rc == 1)
    assert len(loser.strip().splitlines()) == 1 and "Traceback" not in loser
    assert ("appeared while this run was writing it" in loser or "exists; use -f/--force" in loser), loser
    winner = (a, b)[[rc for rc, _ in results].index(0)]
    seconds = 6.0 if winner == a else 7.0
    if verb == "compress":
        assert read_fdc(out)[0].num_samples == int(seconds * 48000)
    else:
        assert sf.info(str(out)).frames == int(seconds * 48000)
    assert not temporaries(tmp_path)


def test_output_appearing_during_the_run_is_kept(tmp_path, tiny_codec_dir, monkeypatch):
    """Deterministic form of the race: the output appears after the start check, before publishing."""
    from flowdec_cli.pipeline import Codec

    wav = tmp_path / "in.wav"
    sf.write(wav, tone(0.5, 48000), 48000)
    real = Codec.code_file

    def code_then_race(self, src, *args, **kwargs):
        result = real(self, src, *args, **kwargs)
        for out in (tmp_path / "a.fdc", tmp_path / "o.wav"):
            out.write_bytes(b"theirs")
        return result

    monkeypatch.setattr(Codec, "code_file", code_then_race)
    r = run("compress", wav, tmp_path / "a.fdc", "-m", tiny_codec_dir, "-q")
    line = one_line(r)
    assert r.exit_code == 1 and "a.fdc: appeared while this run was writing it" in line
    assert line.endswith("(use -f/--force to overwrite)") and "overwrite=True" not in line  # the CLI's terms
    assert (tmp_path / "a.fdc").read_bytes() == b"theirs"
    (tmp_path / "a.fdc").unlink()
    (tmp_path / "o.wav").unlink()
    r = run("roundtrip", wav, tmp_path / "o.wav", "-m", tiny_codec_dir, "-q", "--nfe", "0")
    assert r.exit_code == 1 and "o.wav: appeared while" in one_line(r)
    assert (tmp_path / "o.wav").read_bytes() == b"theirs"
    assert run("roundtrip", wav, tmp_path / "o.wav", "-m", tiny_codec_dir, "-q", "--nfe", "0", "-f").exit_code == 0
    assert sf.info(str(tmp_path / "o.wav")).frames == 24000
    assert not temporaries(tmp_path)


def test_no_clobber_publish_primitives(tmp_path):
    dst = tmp_path / "x"
    fileio.atomic_write_bytes(dst, b"one", overwrite=False)
    with pytest.raises(fileio.OutputExistsError):
        fileio.atomic_write_bytes(dst, b"two", overwrite=False)
    assert dst.read_bytes() == b"one" and not temporaries(tmp_path)
    fileio.atomic_write_bytes(dst, b"three")
    assert dst.read_bytes() == b"three"
    build = tmp_path / "build"
    build.mkdir()
    (build / "f").write_text("new")
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "g").write_text("old")
    with pytest.raises(fileio.OutputExistsError):
        fileio.publish_folder(build, tmp_path / "final")
    assert (tmp_path / "final" / "g").read_text() == "old"
    fileio.publish_folder(build, tmp_path / "final", overwrite=True)
    assert (tmp_path / "final" / "f").read_text() == "new" and not (tmp_path / "final" / "g").exists()


@pytest.mark.parametrize("exchange", [True, False])
def test_a_replaced_folder_keeps_its_mode_and_a_new_one_gets_the_umasks(tmp_path, monkeypatch, exchange):
    """A staging folder is mkdtemp's 0700: published as it was, a model folder hid from other users. Where
    Linux cannot exchange two names in one step, the old folder is moved aside first."""
    real, exchanged = fileio._renameat2, []

    def renameat2(src, dst, flags):
        if flags == fileio._RENAME_EXCHANGE and not exchange:
            return errno.ENOSYS
        err = real(src, dst, flags)
        exchanged.append(flags == fileio._RENAME_EXCHANGE and err == 0)
        return err

    monkeypatch.setattr(fileio, "_renameat2", renameat2)
    old_mask = os.umask(0o022)
    try:
        for name in ("new", "kept"):
            build = Path(tempfile.mkdtemp(dir=tmp_path))
            (build / "f").write_text(name)
            if name == "kept":
                (tmp_path / name).mkdir(mode=0o750)
                (tmp_path / name / "old").write_text("old")
            fileio.publish_folder(build, tmp_path / name, overwrite=True)
            assert not build.exists() and (tmp_path / name / "f").read_text() == name
        if exchange and not any(exchanged):
            pytest.skip("this file system cannot exchange two names in one step (the fallback is tested too)")
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o755
        assert stat.S_IMODE((tmp_path / "kept").stat().st_mode) == 0o750
        assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "new"]
    finally:
        os.umask(old_mask)


@pytest.mark.skipif(not Path("/proc/self/status").is_file() or "Umask:" not in Path("/proc/self/status").read_text(),
                    reason="needs Linux's /proc/self/status with its Umask line (Linux 4.7 and later)")
def test_publishing_reads_the_umask_without_setting_it(tmp_path, monkeypatch):
    """Setting the umask to read it, then back, could leave it changed when two threads overlapped."""
    old_mask = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("os.umask called"))
        fileio.atomic_write_bytes(tmp_path / "x", b"data")
    finally:
        monkeypatch.undo()
        os.umask(old_mask)
    assert stat.S_IMODE((tmp_path / "x").stat().st_mode) == 0o640


def test_a_model_exported_into_a_folder_another_run_filled_is_refused(tmp_path):
    """Two exports into one folder at once both reported success and the first one's model was gone: the
    emptiness check came before the work, the publish replaced whatever was there by then."""
    from flowdec_cli.models.folder import ModelFolderBuilder

    dest = tmp_path / "model"
    for present in ("absent", "empty"):
        if present == "empty":
            dest.mkdir()
        with ModelFolderBuilder(dest, "export") as first, ModelFolderBuilder(dest, "export") as second:
            first.write_card({"name": "first"})
            second.write_card({"name": "second"})
            second.publish_into()
            with pytest.raises(fileio.OutputExistsError):
                first.publish_into()
        assert json.loads((dest / "flowdec.json").read_text())["name"] == "second"
        with ModelFolderBuilder(dest, "export") as third:  # with overwrite: swapped whole
            third.write_card({"name": "third"})
            third.publish_into(overwrite=True)
        assert json.loads((dest / "flowdec.json").read_text())["name"] == "third"
        shutil.rmtree(dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_file_or_broken_link_where_a_model_folder_goes_is_replaced_only_when_asked(tmp_path):
    """`publish_into` listed the destination as a folder: a file or a dangling link there (a finished
    training run's RUN/model) failed with NotADirectoryError / FileNotFoundError at the end of the run."""
    from flowdec_cli.models.folder import ModelFolderBuilder

    (tmp_path / "file").write_text("mine")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for dest in (tmp_path / "file", tmp_path / "dangling"):
        with ModelFolderBuilder(dest, "export") as build:
            build.write_card({"name": dest.name})
            with pytest.raises(fileio.OutputExistsError):
                build.publish_into()
            assert dest.is_symlink() or dest.read_text() == "mine"
            build.publish_into(overwrite=True)
        assert not dest.is_symlink() and json.loads((dest / "flowdec.json").read_text())["name"] == dest.name
    with ModelFolderBuilder(tmp_path / "m", "a") as first, ModelFolderBuilder(tmp_path / "m", "b") as second:
        first.write_card({"name": "first"})
        second.write_card({"name": "second"})
        first.publish_into(overwrite=True)  # a second finish replaces the first one's model
        second.publish_into(overwrite=True)
    assert json.loads((tmp_path / "m" / "flowdec.json").read_text())["name"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "file", "m"]


def test_a_model_exported_into_a_folder_that_is_there_keeps_that_folder(tmp_path):
    """An empty folder was removed and replaced by ours (its mode, owner and ACLs lost; a mount point failed
    with a raw error), and a link to an empty folder was refused as if another run had filled it."""
    from flowdec_cli.models.folder import ModelFolderBuilder

    (tmp_path / "empty").mkdir(mode=0o750)
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    for dest in (tmp_path / "empty", tmp_path / "link"):
        inode = dest.stat().st_ino
        with ModelFolderBuilder(dest, "export") as build:
            (build.path / "ndac").mkdir()
            (build.path / "ndac" / "config.json").write_text("{}")
            build.write_card({"name": dest.name})
            build.publish_into()
        assert dest.stat().st_ino == inode and sorted(p.name for p in dest.iterdir()) == ["flowdec.json", "ndac"]
    assert (tmp_path / "link").is_symlink() and (tmp_path / "target" / "ndac" / "config.json").is_file()
    assert stat.S_IMODE((tmp_path / "empty").stat().st_mode) == 0o750
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "link", "target"]


def test_link_fallback_is_no_clobber_too(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "_renameat2_noreplace", lambda src, dst: False)
    dst = tmp_path / "x"
    fileio.atomic_write_bytes(dst, b"one", overwrite=False)
    with pytest.raises(fileio.OutputExistsError):
        fileio.atomic_write_bytes(dst, b"two", overwrite=False)
    assert dst.read_bytes() == b"one" and not temporaries(tmp_path)


def _char_device(path: Path) -> Path | None:
    """A null device of our own (a test must never risk /dev/null), where this process may make one."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except OSError:
        return None
    return path


def test_a_device_or_fifo_output_is_written_into_never_replaced(tmp_path, tiny_codec_dir):
    """-f renamed a regular file over a device node (as root) or a FIFO; now they are written into (with or
    without -f: nothing is clobbered), and sockets are refused."""
    sf.write(tmp_path / "in.wav", tone(0.3, 48000), 48000)
    fdc = tmp_path / "a.fdc"
    assert run("compress", tmp_path / "in.wav", fdc, "-m", tiny_codec_dir, "-q").exit_code == 0
    null = _char_device(tmp_path / "null")  # no extension: the format is --format's, as for -
    if null is not None:
        for force in ([], ["-f"]):
            r = run("decompress", fdc, null, "-m", tiny_codec_dir, "--nfe", "0", "-q", *force)
            assert r.exit_code == 0, r.output
            assert stat.S_ISCHR(null.lstat().st_mode)
        assert run("compress", tmp_path / "in.wav", null, "-m", tiny_codec_dir, "-q", "-f").exit_code == 0
        fileio.atomic_write_bytes(null, b"library callers too")
        assert stat.S_ISCHR(null.lstat().st_mode) and not temporaries(tmp_path)
    fifo = tmp_path / "o.flac"
    os.mkfifo(fifo)
    got: dict[str, bytes] = {}
    reader = threading.Thread(target=lambda: got.update(data=fifo.read_bytes()), daemon=True)
    reader.start()
    r = run("decompress", fdc, fifo, "-m", tiny_codec_dir, "--nfe", "0", "-q", "-f")
    reader.join(timeout=60)
    assert r.exit_code == 0, r.output
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and got["data"][:4] == b"fLaC"  # its own extension's format
    sock = tmp_path / "s.wav"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))
        r = run("decompress", fdc, sock, "-m", tiny_codec_dir, "--nfe", "0", "-q", "-f")
        assert r.exit_code == 1 and one_line(r).endswith("s.wav: is a socket, not a file; choose another output path")
        assert stat.S_ISSOCK(sock.lstat().st_mode)
    assert not temporaries(tmp_path)


def test_force_keeps_the_replaced_files_mode(tmp_path, tiny_codec_dir):
    sf.write(tmp_path / "in.wav", tone(0.3, 48000), 48000)
    fdc = tmp_path / "a.fdc"
    assert run("compress", tmp_path / "in.wav", fdc, "-m", tiny_codec_dir, "-q").exit_code == 0
    fdc.chmod(0o640)
    assert run("compress", tmp_path / "in.wav", fdc, "-m", tiny_codec_dir, "-q", "-f", "-n", "2").exit_code == 0
    assert stat.S_IMODE(fdc.stat().st_mode) == 0o640
    fileio.atomic_write_bytes(tmp_path / "new", b"x")
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == fileio._default_mode()


def test_an_output_name_at_the_length_limit_is_written(tmp_path, tiny_codec_dir):
    """A 249-character name failed with "File name too long": the temporary name added ~40 bytes."""
    name = "x" * 251 + ".fdc"  # 255 bytes, the usual NAME_MAX
    sf.write(tmp_path / "in.wav", tone(0.3, 48000), 48000)
    r = run("compress", tmp_path / "in.wav", tmp_path / name, "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 0, r.output
    assert (tmp_path / name).is_file() and not temporaries(tmp_path)
    for long in (name, "é" * 125 + ".wav"):  # cut on a character, not inside one
        tmp = fileio.temporary_sibling(tmp_path / long)
        try:
            assert len(os.fsencode(tmp.name)) <= 255 and tmp.name.encode("utf-8")
            owned = fileio._OWNED.match(tmp.name)  # what the stale sweep looks for
            assert owned and owned["host"] == fileio._HOST and int(owned["pid"]) == os.getpid()
            assert tmp.name.startswith("." + long[:100])
        finally:
            tmp.unlink()


@pytest.mark.slow
def test_soak_eight_processes_one_folder_skip_existing(tmp_path, tiny_codec_dir):
    """8 processes convert the same folder into the same folder at once: all succeed, every output is
    valid and complete, none is lost, no temporary file stays."""
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    lengths = {}
    for i in range(10):
        rel = Path("sub" if i % 2 else ".") / f"t{i}.wav"
        lengths[rel.with_suffix(".fdc")] = int((0.6 + 0.1 * i) * 48000)
        sf.write(src / rel, tone(0.6 + 0.1 * i, 48000, seed=i), 48000)
    procs = [spawn("compress", src, out, "-m", tiny_codec_dir, "--skip-existing", "-q") for _ in range(8)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert all(rc == 0 for rc, _ in results), results
    for rel, n in lengths.items():
        header, codes = read_fdc(out / rel)
        assert header.num_samples == n and codes.shape[-1] == header.num_frames
    assert sorted(p.relative_to(out) for p in out.rglob("*.fdc")) == sorted(lengths)
    assert not temporaries(out)


def test_folder_mode_counts_a_file_made_meanwhile_as_skipped(tmp_path, tiny_codec_dir, monkeypatch):
    from flowdec_cli.pipeline import Codec

    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.wav", tone(0.3, 48000), 48000)
    real = Codec.compress_file

    def race(self, s, dst, *args, **kwargs):
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        Path(dst).write_bytes(b"theirs")
        return real(self, s, dst, *args, **kwargs)

    monkeypatch.setattr(Codec, "compress_file", race)
    r = run("compress", src, tmp_path / "out", "-m", tiny_codec_dir, "--skip-existing")
    assert r.exit_code == 0 and "1 skipped" in r.output
    assert (tmp_path / "out" / "a.fdc").read_bytes() == b"theirs"
    (tmp_path / "out" / "a.fdc").unlink()
    r = run("compress", src, tmp_path / "out", "-m", tiny_codec_dir)  # made before the library's own check
    assert r.exit_code == 1 and "a.fdc: exists; use -f/--force to overwrite" in r.output


# -- 2. header lies -------------------------------------------------------------------------------

def test_a_110_byte_file_cannot_claim_terabytes():
    h = container.FdcHeader(model_name="m", model_hash="", sample_rate=48000, channels=1, num_samples=150 * 640,
                            model_sample_rate=48000, hop_length=640, codebook_size=1024, n_codebooks=1,
                            model_codebooks=10, num_frames=150)
    m = {**container._header_map(h), 6: 2 ** 40}
    with pytest.raises(FdcError, match=r"1099511627776 samples at 48000 Hz take 1717986919 frames .* says 150"):
        decode_fdc(forge(m, container.pack_codes(np.zeros((1, 1, 150), np.int64), 10)))
    # resampling is part of the rule: 44.1 kHz audio coded at 48 kHz
    assert container.frames_for_samples(44100, 44100, 48000, 640) == (75, 75)
    assert container.frames_for_samples(1, 44100, 48000, 640) == (1, 1)
    assert container.frames_for_samples(0, 44100, 48000, 640) == (0, 0)


def test_decoding_never_pads_beyond_the_codes(tiny_codec_dir):
    from flowdec_cli.pipeline import Codec, CodecError

    codec = Codec.load(tiny_codec_dir, "cpu")
    header, codes = codec.compress_array(tone(0.2, 48000), 48000)
    header.num_samples = 2 ** 40  # a header built by hand, never through the container
    with pytest.raises(CodecError, match=r"invalid header: 1099511627776 samples .* but the header says 15"):
        codec.decompress_codes(header, codes, nfe=0)
    header.num_frames = container.frames_for_samples(2 ** 40, 48000, 48000, header.hop_length)[0]
    with pytest.raises(CodecError, match="refusing to pad"):  # a header true to itself, but not to the codes
        codec.decompress_codes(header, codes, nfe=0)


def forge(header_map: dict, payload: bytes) -> bytes:
    head = msgpack.packb(header_map, use_bin_type=True)
    body = FDC_MAGIC + bytes([1, 0]) + struct.pack("<H", len(head)) + head + payload
    return body + struct.pack("<I", zlib.crc32(body))


def split_fdc(data: bytes) -> tuple[dict, bytes]:
    """A written file's header map and payload, the parts :func:`forge` puts back together."""
    hlen = struct.unpack_from("<H", data, 6)[0]
    return msgpack.unpackb(data[8:8 + hlen], strict_map_key=False), data[8 + hlen:-4]


def _lies(h: container.FdcHeader) -> list[tuple[str, int, object]]:
    """Each numeric field at 0, 1, its maximum, one past it, and one off its true value either way."""
    out = []
    for name, key, kind, _lo, hi in container._FIELDS:
        if kind != "int":
            continue
        top = getattr(h, hi) if isinstance(hi, str) else hi
        true = getattr(h, name)
        for v in sorted({0, 1, top, top + 1, true - 1, true + 1, 2 ** 62, 2 ** 64 - 1}):
            if v != true:
                out.append((name, key, v))
    for v in (0, 1, 1e9, 1e9 + 1, -1.0, float("nan"), float("inf")):
        out.append(("gain", container._KEY_GAIN, v))
    for v in (0, 1, 2 ** 62):
        out.append(("nominal_bitrate", container._KEY_BITRATE, v))
    return out


def test_header_lies_over_the_whole_decompress_path(tmp_path, tiny_codec_dir):
    """Every lie ends in one clean line (exit 1) or in an output no bigger than its codes describe."""
    sf.write(tmp_path / "in.wav", tone(0.3, 44100, 2), 44100)
    assert run("compress", tmp_path / "in.wav", tmp_path / "a.fdc", "-m", tiny_codec_dir, "-n", "3",
               "-q").exit_code == 0
    h, codes = read_fdc(tmp_path / "a.fdc")
    original, payload = split_fdc((tmp_path / "a.fdc").read_bytes())
    outcomes = {"refused": 0, "decoded": 0}
    for name, key, value in _lies(h):
        lie = tmp_path / "lie.fdc"
        lie.write_bytes(forge({**original, key: value}, payload))
        out = tmp_path / "lie.wav"
        r = run("decompress", lie, out, "-m", tiny_codec_dir, "--nfe", "0", "-q", "-f")
        assert r.exit_code in (0, 1), (name, value, r.output)
        if r.exit_code == 1:
            line = one_line(r)
            assert line.startswith("flowdec: error: ") and "lie.fdc" in line, (name, value, line)
            outcomes["refused"] += 1
            continue
        outcomes["decoded"] += 1
        hh, _ = read_fdc(lie)
        frames = codes.shape[-1]
        limit = (frames * 640 * hh.sample_rate // 48000 + 1) * hh.channels * 2 + 4096
        assert out.stat().st_size <= limit, (name, value, out.stat().st_size)
        out.unlink()
    assert outcomes["refused"] > 40 and not temporaries(tmp_path)


@pytest.mark.parametrize("field,key", [("model_name", 0), ("coding", container._KEY_CODING)])
def test_control_characters_in_a_header_reach_the_terminal_escaped(tmp_path, tiny_codec_dir, field, key):
    """A forged string field must not retitle the terminal (OSC), colour it or add a line of its own."""
    sf.write(tmp_path / "in.wav", tone(0.3, 48000), 48000)
    assert run("compress", tmp_path / "in.wav", tmp_path / "a.fdc", "-m", tiny_codec_dir, "-q").exit_code == 0
    original, payload = split_fdc((tmp_path / "a.fdc").read_bytes())
    evil = "\x1b]0;pwned\x07x\nflowdec: all fine\u202e"
    (tmp_path / "evil.fdc").write_bytes(forge({**original, key: evil}, payload))
    r = run("decompress", tmp_path / "evil.fdc", tmp_path / "o.wav", "--nfe", "0", "-q")
    assert r.exit_code == 1 and "evil.fdc: " in one_line(r)
    assert "\\x1b]0;pwned\\x07x\\nflowdec: all fine\\u202e" in r.output
    for ch in "\x1b\x07\u202e":
        assert ch not in r.output
    if field == "model_name":  # readable, so `flowdec info` shows it, escaped
        r = run("info", tmp_path / "evil.fdc")
        assert r.exit_code == 0 and "\\x1b]0;pwned" in r.output and "\x1b" not in r.output
        assert sum("all fine" in line for line in r.output.splitlines()) == 1


@pytest.mark.parametrize("verb", ["compress", "decompress", "roundtrip"])
def test_control_characters_in_an_output_name_reach_the_terminal_escaped(tmp_path, tiny_codec_dir, verb):
    """Error lines were escaped, the success line printed the name raw (an OSC could retitle the terminal)."""
    sf.write(tmp_path / "in.wav", tone(0.3, 48000), 48000)
    assert run("compress", tmp_path / "in.wav", tmp_path / "a.fdc", "-m", tiny_codec_dir, "-q").exit_code == 0
    src = tmp_path / ("a.fdc" if verb == "decompress" else "in.wav")
    out = tmp_path / ("e\x1b]0;X\x07\nflowdec: fine" + (".fdc" if verb == "compress" else ".wav"))
    r = run(verb, src, out, "-m", tiny_codec_dir, *([] if verb == "compress" else ["--nfe", "0"]))
    assert r.exit_code == 0, r.output
    assert "e\\x1b]0;X\\x07\\nflowdec: fine" in r.output
    assert "\x1b" not in r.output and "\x07" not in r.output and out.is_file()


def test_a_name_that_is_not_utf8_is_shown_with_its_bytes():
    """Python holds such a byte as a lone surrogate, which messages showed as \\udcff."""
    from flowdec_cli.errors import terminal_text

    assert terminal_text(os.fsdecode(b"in\xff\x80.wav") + "\n") == "in\\xff\\x80.wav\\n"


def test_more_codebooks_than_the_model_has_are_refused(tmp_path, tiny_codec_dir):
    h = container.FdcHeader(model_name="tiny-75", model_hash="", sample_rate=48000, channels=1,
                            num_samples=6400, model_sample_rate=48000, hop_length=640, codebook_size=1024,
                            n_codebooks=3, model_codebooks=12, num_frames=10)
    container.write_fdc(tmp_path / "x.fdc", h, np.zeros(h.codes_shape, np.int64))
    r = run("decompress", tmp_path / "x.fdc", tmp_path / "x.wav", "-m", tiny_codec_dir, "--nfe", "0", "-q")
    assert r.exit_code == 1 and "x.fdc: coded by 'tiny-75'" in one_line(r) and "12x1024" in r.output
    assert not (tmp_path / "x.wav").exists()


# -- 3. signals and stale temporary files -----------------------------------------------------------

@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_termination_signals_clean_up(sig, code, tmp_path, tiny_codec_dir):
    fdc = fake_fdc(tmp_path, 240.0)
    out = tmp_path / "out" / "long.wav"
    out.parent.mkdir()
    p = spawn("decompress", fdc, out, "-m", tiny_codec_dir, "--nfe", "0", "-q")
    deadline = time.time() + 120
    while not temporaries(tmp_path / "out") if (tmp_path / "out").exists() else True:
        assert p.poll() is None and time.time() < deadline, p.stderr.read() if p.poll() is not None else "slow"
        time.sleep(0.05)
    tmp = temporaries(tmp_path / "out")[0]
    assert f"-{p.pid}." in tmp.name  # the owner's pid is in the name
    p.send_signal(sig)
    rc = p.wait(timeout=120)
    err = p.stderr.read()
    assert rc == code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not temporaries(tmp_path / "out") and not out.exists()


def test_a_later_run_removes_stale_temporaries_but_never_a_live_ones(tmp_path, tiny_codec_dir):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tag = fileio._HOST
    stale = tmp_path / f".o.wav.flowdec-{tag}-{dead.pid}.abc123.part"
    live = tmp_path / f".o.wav.flowdec-{tag}-{os.getpid()}.def456.part"
    other_host = tmp_path / f".o.wav.flowdec-{'0' * 6 if tag != '0' * 6 else '1' * 6}-{dead.pid}.x.part"
    legacy = tmp_path / ".o.wav.k2j3h4.part"  # no owner in the name: unknown, kept
    stale_dir = tmp_path / f".fetch.flowdec-{tag}-{dead.pid}.q1w2e3"
    stale_dir.mkdir()
    (stale_dir / "x").write_text("partial")
    for p in (stale, live, other_host, legacy):
        p.write_bytes(b"partial")
    sf.write(tmp_path / "in.wav", tone(0.2, 48000), 48000)
    fileio._swept.discard(os.path.abspath(tmp_path))
    r = run("roundtrip", tmp_path / "in.wav", tmp_path / "o.wav", "-m", tiny_codec_dir, "--nfe", "0", "-q")
    assert r.exit_code == 0, r.output
    assert not stale.exists() and not stale_dir.exists()
    assert live.exists() and other_host.exists() and legacy.exists()


# -- 4. one line, the file, the real cause ------------------------------------------------------------

def test_huge_model_config_is_refused_before_building(tmp_path, wav48):
    folder = write_model_folder(tmp_path / "huge", "huge", make_tiny_ndac())
    cfg_path = folder / "ndac" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(encoder_dim=10 ** 7, decoder_dim=10 ** 7)
    cfg_path.write_text(json.dumps(cfg))
    r = run("compress", wav48, tmp_path / "a.fdc", "-m", folder, "-q")
    line = one_line(r)
    assert r.exit_code == 1 and "huge" in line and "encoder_dim = 10000000 is out of range" in line


def test_parameter_bound_without_any_single_huge_field(tmp_path):
    from flowdec_cli.ndac import NDACConfig

    with pytest.raises(ValueError, match="parameters"):
        NDACConfig(encoder_dim=4096, encoder_rates=[2, 2, 2, 2], decoder_dim=65536, decoder_rates=[2, 2, 2, 2])


@pytest.mark.parametrize("change", [
    {"nf": 10 ** 7},
    {"ch_mult": [16] * 8, "nf": 1024},
    {"backbone": "framewise", "framewise": {"dim": 10 ** 7}},
    {"backbone": "framewise", "framewise": {"dim": 4096, "intermediate_dim": 16384, "num_blocks": 64}},
    {"n_fft": 2 ** 40},
    {"sigma_y_shape": [10 ** 9, 1]},
])
def test_huge_postfilter_config_is_refused_before_building(tmp_path, change):
    from flowdec_cli.postfilter import Postfilter

    pf = Postfilter(nf=8, ch_mult=(1, 1), num_res_blocks=1, n_fft=62, hop_length=16, pad_multiple=2)
    folder = write_model_folder(tmp_path / "huge-pf", "huge-pf", make_tiny_ndac(), pf)
    cfg_path = folder / "postfilter" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(change)
    cfg_path.write_text(json.dumps(cfg))
    fdc = tmp_path / "a.fdc"
    src = tmp_path / "in.wav"
    sf.write(src, tone(0.3, 48000), 48000)
    assert run("compress", src, fdc, "-m", folder, "-q").exit_code == 0
    r = run("decompress", fdc, tmp_path / "a.wav", "-m", folder, "--nfe", "2", "-q")
    line = one_line(r)
    assert r.exit_code == 1 and "huge-pf" in line and "invalid postfilter config" in line
    assert not (tmp_path / "a.wav").exists()


@pytest.fixture()
def wav48(tmp_path):
    path = tmp_path / "in48.wav"
    sf.write(path, tone(0.3, 48000), 48000)
    return path


@pytest.mark.parametrize("name", ["o.wav", "o.flac"])  # a .wav is sized before writing; a .flac is not
def test_disk_full_while_writing_audio_says_so(tmp_path, tiny_codec_dir, monkeypatch, wav48, name):
    def full(self, *args, **kwargs):
        raise sf.LibsndfileError(0, "System error.")  # what libsndfile reports for ENOSPC

    monkeypatch.setattr(sf.SoundFile, "write", full)
    monkeypatch.setattr(fileio, "no_space_left", lambda folder, wanted=0, margin=0: True)
    from flowdec_cli import audio

    monkeypatch.setattr(audio, "no_space_left", lambda folder, wanted=0, margin=0: True)
    r = run("roundtrip", wav48, tmp_path / name, "-m", tiny_codec_dir, "--nfe", "0", "-q")
    line = one_line(r)
    assert r.exit_code == 1 and f"{name}: cannot write (no space left on device" in line, line
    assert not temporaries(tmp_path) and not (tmp_path / name).exists()


def test_disk_full_while_writing_codes_names_the_file(tmp_path, tiny_codec_dir, monkeypatch, wav48):
    import builtins

    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, data):
            raise OSError(28, "No space left on device")

        def flush(self):
            pass

        def fileno(self):
            return self.f.fileno()

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return Full(f) if ".part" in str(file) and "w" in mode else f

    monkeypatch.setattr(fileio, "open", fake_open, raising=False)
    r = run("compress", wav48, tmp_path / "a.fdc", "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 1 and "a.fdc: cannot write (No space left on device)" in one_line(r)
    assert not temporaries(tmp_path)


def test_unreadable_input_in_folder_mode_names_the_cause(tmp_path, tiny_codec_dir, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "ok.wav", tone(0.2, 48000), 48000)
    sf.write(src / "locked.wav", tone(0.2, 48000), 48000)
    real = os.open

    def guarded(path, flags, *args, **kwargs):  # root reads anything: emulate a 000 file
        if str(path).endswith("locked.wav"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded)
    r = run("compress", src, tmp_path / "out", "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 1
    assert "locked.wav: cannot read (Permission denied)" in r.output and "System error" not in r.output
    assert (tmp_path / "out" / "ok.fdc").is_file()


def test_65535_channel_header_says_what_is_wrong(tmp_path, tiny_codec_dir):
    fdc = fake_fdc(tmp_path, 1 / 75, "wide.fdc", channels=65535)
    r = run("decompress", fdc, tmp_path / "wide.wav", "-m", tiny_codec_dir, "--nfe", "0", "-q")
    line = one_line(r)
    assert r.exit_code == 1 and "wide.wav: cannot write 65535 channels" in line and "Format" not in line


def test_info_on_a_folder(tmp_path):
    r = run("info", tmp_path)
    assert r.exit_code == 1 and "is a folder" in one_line(r)


@pytest.mark.skipif(not Path("/dev/zero").exists() or sys.platform == "win32", reason="needs /dev/zero")
def test_weights_that_are_a_device_are_named_as_such(tmp_path, wav48, tiny_codec_dir):
    """A model folder whose weights link to /dev/zero: the file is there but is no file to read (it would
    never end), which is not what 'missing' says."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_codec_dir, folder)
    weights = next(folder.rglob("model.safetensors"))
    weights.unlink()
    weights.symlink_to("/dev/zero")
    r = run("compress", wav48, tmp_path / "a.fdc", "-m", folder, "-q")
    assert r.exit_code == 1 and one_line(r).endswith(f"{weights}: not a regular file"), one_line(r)
    weights.unlink()
    r = run("compress", wav48, tmp_path / "a.fdc", "-m", folder, "-q")
    assert r.exit_code == 1 and "missing model.safetensors" in one_line(r), one_line(r)


@pytest.mark.skipif(not Path("/dev/zero").exists() or sys.platform == "win32", reason="needs /dev/zero")
def test_entropy_tables_that_are_a_device_are_named_as_such(tmp_path, wav48, tiny_codec_dir):
    """Tables that link to /dev/zero are not 'a model without tables' (which would silently code without
    them): the file is named, as weights are."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_codec_dir, folder)
    tables = folder / "entropy.safetensors"
    tables.symlink_to("/dev/zero")
    r = run("compress", wav48, tmp_path / "a.fdc", "-m", folder, "-q")
    assert r.exit_code == 1 and one_line(r).endswith(f"{tables}: not a regular file"), one_line(r)
    assert not (tmp_path / "a.fdc").exists()
    tables.unlink()
    tables.symlink_to(tmp_path / "nowhere")  # a link to nothing: no tables, as when the file is absent
    assert run("compress", wav48, tmp_path / "a.fdc", "-m", folder, "-q").exit_code == 0


def test_refused_pth_never_advises_weights_only_false(tmp_path, wav48):
    bad = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "metadata": {"kwargs": argparse.Namespace(a=1)}}, bad)
    r = run("compress", wav48, tmp_path / "a.fdc", "-m", bad, "-q")
    line = one_line(r)
    assert r.exit_code == 1 and "evil.pth: refused" in line and "argparse.Namespace" in line
    assert "weights_only" not in line and len(line) < 300


def test_a_postfilter_checkpoint_is_not_called_dac_weights(tmp_path, wav48, reference_dir):
    ckpt = reference_dir / "flowdec_small" / "step=800000.ckpt"
    r = run("compress", wav48, tmp_path / "a.fdc", "-m", ckpt, "-q")
    line = one_line(r)
    assert r.exit_code == 1 and "postfilter checkpoint" in line and "DAC weights" not in line


def _signal_self_then_exit() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)  # the handler, if it raised, would have done so by now
    os._exit(0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_leaves_sigterm_to_its_parent():
    """`timeout` signals the whole process group: a DataLoader worker forked while flowdec's handler is
    installed must not die of it (the trainer's clean stop would become a 'worker exited' error)."""
    import multiprocessing

    from flowdec_cli.signals import termination_signals

    with termination_signals():
        child = multiprocessing.get_context("fork").Process(target=_signal_self_then_exit)
        child.start()
        child.join(10)
    assert child.exitcode == 0


def test_a_folder_that_refuses_the_temporary_names_the_output(tmp_path, monkeypatch):
    """The temporary beside an output is ours; a read-only folder is reported as the output's failure."""
    import errno
    import tempfile

    from flowdec_cli.fileio import atomic_write_bytes

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".x.toml.flowdec-h-1.abc.part"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OSError) as info:
        atomic_write_bytes(tmp_path / "x.toml", b"data")
    assert info.value.filename == str(tmp_path / "x.toml") and info.value.errno == errno.EROFS


def test_a_folder_that_cannot_be_listed_is_reported_not_skipped(tmp_path, tiny_codec_dir, monkeypatch):
    """`chmod 000 in/sub`: the run said '5 converted, 1 failed of 6 files' and never named sub/ or its files
    (the search passes over folders it cannot read). Simulated: tests may run as root, who reads anything."""
    import os

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    sf.write(src / "a.wav", tone(0.2, 48000), 48000)
    sf.write(src / "sub" / "z.wav", tone(0.2, 48000), 48000)
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == os.fspath(src / "sub"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    r = run("compress", src, tmp_path / "out", "-m", tiny_codec_dir, "-q")
    assert r.exit_code == 1, r.output
    assert f"{src / 'sub'}: cannot list this folder (Permission denied); its files were not coded" in r.output
    assert (tmp_path / "out" / "a.fdc").is_file()


def test_a_ctrl_c_while_the_command_is_imported_is_one_line_and_exit_130(monkeypatch, capsys):
    """A Ctrl-C in the first few tenths of a second printed a 20-35 line traceback of the import."""
    import importlib.abc
    import sys

    from flowdec_cli.__main__ import run

    class Interrupted(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "flowdec_cli.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "flowdec_cli.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupted(), *sys.meta_path])
    with pytest.raises(SystemExit) as exit_:
        run()
    assert exit_.value.code == 130 and capsys.readouterr().err == "flowdec: interrupted\n"


@pytest.mark.parametrize("owns_the_process", [False, True])
def test_after_the_first_stop_signal_the_others_are_ignored(monkeypatch, owns_the_process):
    """Two Ctrl-C a few milliseconds apart: the second landed in the cleanup or in Python's exit handlers and
    printed their traceback (about one run in four). A library caller gets its own handlers back after the
    cleanup; the console script (which owns the process) keeps ignoring them until it exits."""
    from flowdec_cli import signals

    monkeypatch.setattr(signals, "_owns_the_process", owns_the_process)
    before = {s: signal.getsignal(s) for s in signals.STOP_SIGNALS}
    seen_inside = {}
    try:
        with pytest.raises(KeyboardInterrupt), signals.termination_signals(), signals.termination_signals():
            try:  # nested, as `flowdec models` and `flowdec train` open one in each command group
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
            finally:  # the cleanup, while the run unwinds
                seen_inside = {s: signal.getsignal(s) for s in before}
                os.kill(os.getpid(), signal.SIGINT)  # ignored: nothing is raised
                time.sleep(0.05)
        assert set(seen_inside.values()) == {signal.SIG_IGN}
        after = {s: signal.getsignal(s) for s in before}
        assert after == (dict.fromkeys(before, signal.SIG_IGN) if owns_the_process else before)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_two_quick_ctrl_c_end_the_run_in_one_line(tmp_path, tiny_codec_dir):
    fdc = fake_fdc(tmp_path, 240.0)
    out = tmp_path / "out" / "long.wav"
    out.parent.mkdir()
    p = spawn("decompress", fdc, out, "-m", tiny_codec_dir, "--nfe", "0", "-q")
    deadline = time.time() + 120
    while not temporaries(tmp_path / "out"):
        assert p.poll() is None and time.time() < deadline, p.stderr.read() if p.poll() is not None else "slow"
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    rc = p.wait(timeout=120)
    err = p.stderr.read()
    assert rc == 130 and err == "flowdec: interrupted\n", err
    assert not temporaries(tmp_path / "out") and not out.exists()


def test_a_signal_held_during_a_block_lands_after_it_unless_the_block_fails():
    """`signals_deferred` (each training step): a Ctrl-C inside lands when the block is whole; a block that
    fails passes its own error on (reported as an interruption, a step that failed part-way was saved)."""
    from flowdec_cli.signals import signals_deferred

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        done = []
        with pytest.raises(KeyboardInterrupt), signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            done.append("the rest of the block")
        assert done == ["the rest of the block"]
        with pytest.raises(RuntimeError, match="the step failed"), signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            raise RuntimeError("the step failed")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
