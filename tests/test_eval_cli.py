"""Folder pairing, report formats, and the ``eval`` / ``plot`` commands via CliRunner."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from flowdec_cli.evaluation import cli as ecli
from flowdec_cli.evaluation.cli import eval_command, plot_command
from flowdec_cli.evaluation.pairing import PairingError, pair_paths
from flowdec_cli.evaluation.report import Report
from flowdec_cli.pipeline import CodecError

SR = 48000


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def names(paths, root):
    return sorted(p.relative_to(root).as_posix() for p in paths)


# ------------------------------------------------------------------ pairing


def test_pairing_nested_folders_and_unpaired(tmp_path):
    ref, deg = tmp_path / "ref", tmp_path / "deg"
    touch(ref, "a.wav", "sub/b.wav", "sub/deep/c.flac", "only_ref.wav", ".hidden.wav",
          "notes.txt", ".git/x.wav")
    touch(deg, "a.wav", "sub/b.flac", "sub/deep/c.WAV", "only_deg.ogg", "readme.md")
    p = pair_paths(ref, deg)
    assert [(x.name, x.ref.relative_to(ref).as_posix(), x.deg.relative_to(deg).as_posix())
            for x in p.pairs] == [
        ("a.wav", "a.wav", "a.wav"),
        ("sub/b.wav", "sub/b.wav", "sub/b.flac"),
        ("sub/deep/c.flac", "sub/deep/c.flac", "sub/deep/c.WAV"),
    ]
    assert names(p.unpaired_ref, ref) == ["only_ref.wav"]
    assert names(p.unpaired_deg, deg) == ["only_deg.ogg"]
    assert not p.complete


def test_pairing_follows_no_links_to_folders(tmp_path):
    """A link to `.` in both folders scored a.wav 41 times (loop/loop/.../a.wav), weighting the mean; a link
    to a parent walked until the path was too long."""
    ref, deg = tmp_path / "ref", tmp_path / "deg"
    touch(ref, "a.wav")
    touch(deg, "a.wav")
    for folder in (ref, deg):
        (folder / "loop").symlink_to(".")
        (folder / "up").symlink_to("..")
    (ref / "linked.wav").symlink_to(ref / "a.wav")  # a link to a file is a file
    touch(deg, "linked.wav")
    p = pair_paths(ref, deg)
    assert [x.name for x in p.pairs] == ["a.wav", "linked.wav"] and p.complete


def test_pairing_prefers_exact_path_and_reports_ambiguous_stems(tmp_path):
    ref, deg = tmp_path / "ref", tmp_path / "deg"
    touch(ref, "x.wav", "y.wav")
    touch(deg, "x.wav", "x.flac", "y.flac", "y.opus")
    p = pair_paths(ref, deg)
    assert [(x.ref.name, x.deg.name) for x in p.pairs] == [("x.wav", "x.wav")]
    assert names(p.unpaired_ref, ref) == ["y.wav"]
    assert names(p.unpaired_deg, deg) == ["x.flac", "y.flac", "y.opus"]


def test_pairing_deg_folder_inside_ref_folder(tmp_path):
    touch(tmp_path, "a.wav", "b.wav", "decoded/a.opus", "decoded/b.mp3")
    p = pair_paths(tmp_path, tmp_path / "decoded")
    assert [(x.ref.name, x.deg.name) for x in p.pairs] == [("a.wav", "a.opus"), ("b.wav", "b.mp3")]
    assert p.complete


def test_pairing_two_files_and_errors(tmp_path):
    touch(tmp_path, "r.wav", "whatever.flac", "dir/a.wav")
    p = pair_paths(tmp_path / "r.wav", tmp_path / "whatever.flac")
    assert len(p.pairs) == 1 and p.pairs[0].name == "r.wav"
    with pytest.raises(PairingError, match="is a file but"):
        pair_paths(tmp_path / "r.wav", tmp_path / "dir")
    with pytest.raises(PairingError, match="no such file"):
        pair_paths(tmp_path / "nope.wav", tmp_path / "r.wav")


# ------------------------------------------------------------------ report


def test_report_mean_skips_nan_and_renders():
    r = Report(labels=["file"], values=["a", "b"], higher_is_better={"a": True, "b": False})
    r.add(file="x", a=1.0, b=float("nan"))
    r.add(file="y", a=3.0, b=4.0)
    assert r.mean() == {"a": 2.0, "b": 4.0, "n": 2, "counts": {"a": 2, "b": 1}}  # b's mean is over one file
    doc = json.loads(r.to_json())
    assert doc["rows"][0]["b"] is None and doc["mean"]["a"] == 2.0
    rows = list(csv.reader(io.StringIO(r.to_csv())))
    assert rows == [["file", "a", "b"], ["x", "1.0", ""], ["y", "3.0", "4.0"]]  # the mean stays apart
    table = r.to_table()
    assert "mean (2)" in table and "higher is better: a" in table and "lower is better: b" in table
    assert table.splitlines()[-2].split()[-2:] == ["4.000", "(1)"] and "2.000 (" not in table


# ------------------------------------------------------------------ eval CLI


@pytest.fixture()
def audio_dirs(tmp_path):
    rng = np.random.default_rng(0)
    t = np.arange(SR // 2) / SR
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))
    stereo = np.stack([x, 0.7 * x], axis=1)
    ref, deg = tmp_path / "ref", tmp_path / "deg"
    (ref / "sub").mkdir(parents=True)
    (deg / "sub").mkdir(parents=True)
    sf.write(ref / "a.wav", stereo, SR, subtype="FLOAT")
    sf.write(deg / "a.flac", stereo + 0.01 * rng.standard_normal(stereo.shape), SR)
    sf.write(ref / "sub" / "b.wav", x, SR, subtype="FLOAT")
    sf.write(deg / "sub" / "b.wav", x + 0.05 * rng.standard_normal(len(x)), SR, subtype="FLOAT")
    return ref, deg


def run(cmd, *args):
    return CliRunner().invoke(cmd, [str(a) for a in args])


def test_eval_two_files_table(audio_dirs):
    ref, deg = audio_dirs
    res = run(eval_command, ref / "a.wav", deg / "a.flac")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["file", "si_sdr", "mel", "lsd"]
    assert lines[2].startswith("a.wav")
    assert "mean" not in res.stdout  # one file: no mean row


def test_eval_folders_json(audio_dirs):
    ref, deg = audio_dirs
    sf.write(ref / "lonely.wav", np.zeros(SR // 10), SR)
    res = run(eval_command, ref, deg, "--json")
    assert res.exit_code == 1, res.output  # a reference without its decode fails the run; the report is still out
    assert "1 reference file(s) have no decoded match: lonely.wav" in res.stderr.splitlines()[-1]
    doc = json.loads(res.stdout)
    assert [r["file"] for r in doc["rows"]] == ["a.wav", "sub/b.wav"]
    assert doc["n"] == 2
    si = [r["si_sdr"] for r in doc["rows"]]
    assert doc["mean"]["si_sdr"] == pytest.approx(sum(si) / 2)
    assert si[0] > si[1]  # less noise in a
    assert doc["unpaired"]["ref"] == [str(ref / "lonely.wav")]
    assert "lonely.wav" in res.stderr and "no match" in res.stderr


def test_eval_csv_and_output_file(audio_dirs, tmp_path):
    ref, deg = audio_dirs
    res = run(eval_command, ref, deg, "--csv", "-m", "si_sdr,lsd")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["file"] for r in rows] == ["a.wav", "sub/b.wav"]  # per-file rows only
    assert list(rows[0]) == ["file", "si_sdr", "lsd"]
    mean_lsd = (float(rows[0]["lsd"]) + float(rows[1]["lsd"])) / 2
    assert "mean over 2 files" in res.stderr and f"lsd {mean_lsd:.3f}" in res.stderr

    out = tmp_path / "report.json"  # format from the suffix
    res = run(eval_command, ref, deg, "-o", out)
    assert res.exit_code == 0, res.output
    assert res.stdout == ""
    assert json.loads(out.read_text())["columns"] == ["file", "si_sdr", "mel", "lsd"]


def test_one_bad_pair_in_a_folder_is_reported_and_the_rest_are_scored(audio_dirs):
    ref, deg = audio_dirs
    sf.write(ref / "short.wav", np.zeros(SR), SR)
    sf.write(deg / "short.wav", np.zeros(SR // 2), SR)  # half as long: not a decoding of it
    (ref / "junk.wav").write_bytes(b"not audio")
    (deg / "junk.wav").write_bytes(b"not audio")
    res = run(eval_command, ref, deg, "--json", "-m", "si_sdr")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert [r["file"] for r in doc["rows"]] == ["a.wav", "sub/b.wav"]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("flowdec: error:")]
    # named in the JSON too, as --codec mode's (they were on standard error only)
    assert [f"flowdec: error: {f}" for f in doc["failed"]] == errors[:2]
    assert len(errors) == 3 and "short.wav: lengths differ" in errors[1] and "junk.wav" in errors[0]
    assert "2 of 4 pairs could not be scored" in errors[2] and "Traceback" not in res.stderr


def test_eval_and_plot_never_clobber(audio_dirs, tmp_path):
    """An existing -o FILE is kept unless --force, and an input is never an output, even with --force."""
    ref, deg = audio_dirs
    out = tmp_path / "report.txt"
    out.write_text("keep me")
    res = run(eval_command, ref, deg, "-o", out)
    assert res.exit_code == 1 and f"{out}: exists; use -f/--force to overwrite" in res.stderr
    assert out.read_text() == "keep me"
    res = run(eval_command, ref, deg, "-o", out, "--force")
    assert res.exit_code == 0 and "si_sdr" in out.read_text()
    audio = (ref / "a.wav").read_bytes()
    for extra in ([], ["--force"]):
        res = run(eval_command, ref / "a.wav", deg / "a.flac", "-o", ref / "a.wav", *extra)
        assert res.exit_code == 1 and "is also an input" in res.stderr
        assert (ref / "a.wav").read_bytes() == audio
        res = run(eval_command, ref, deg, "-o", ref / "a.wav", *extra)  # one of a folder's files
        assert res.exit_code == 1 and f"{ref / 'a.wav'}: is one of the audio files in {ref}" in res.stderr
        assert (ref / "a.wav").read_bytes() == audio
    res = run(plot_command, ref / "a.wav", deg / "a.flac", "-o", tmp_path / "p.txt")
    assert res.exit_code == 2 and "give -o a .png name" in res.output
    png = tmp_path / "keep.png"
    png.write_bytes(b"old")
    res = run(plot_command, ref / "a.wav", deg / "a.flac", "-o", png)
    assert res.exit_code == 1 and "exists; use -f/--force" in res.stderr and png.read_bytes() == b"old"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_eval_resamples_deg_rate(tmp_path):
    x = 0.3 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)
    sf.write(tmp_path / "r.wav", x, SR, subtype="FLOAT")
    from flowdec_cli.evaluation.metrics import resample

    sf.write(tmp_path / "d.wav", resample(x, SR, 16000), 16000, subtype="FLOAT")
    res = run(eval_command, tmp_path / "r.wav", tmp_path / "d.wav", "--json", "-m", "si_sdr")
    assert res.exit_code == 1 and "sample rates differ (reference 48000 Hz, decoded 16000 Hz)" in res.stderr
    res = run(eval_command, tmp_path / "r.wav", tmp_path / "d.wav", "--json", "-m", "si_sdr", "--allow-mismatch")
    assert res.exit_code == 0, res.output
    assert "flowdec: warning: d.wav: sample rates differ" in res.stderr or "sample rates differ" in res.stderr
    assert json.loads(res.stdout)["rows"][0]["si_sdr"] > 30


def test_eval_refuses_an_excerpt_scored_against_the_whole(tmp_path):
    """A 3 s, 16 kHz excerpt against a 6.95 s, 22.05 kHz original would score well once trimmed."""
    from flowdec_cli.evaluation.metrics import resample

    x = 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(6.95 * 22050)) / 22050)
    sf.write(tmp_path / "orig.wav", x, 22050, subtype="FLOAT")
    sf.write(tmp_path / "part.wav", resample(x[: 3 * 22050], 22050, 16000), 16000, subtype="FLOAT")
    res = run(eval_command, tmp_path / "orig.wav", tmp_path / "part.wav")
    assert res.exit_code == 1 and "lengths differ (reference 6.950 s, decoded 3.000 s)" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    sf.write(tmp_path / "pad.wav", np.pad(x, (0, 100)), 22050, subtype="FLOAT")  # within 20 ms: fine
    assert run(eval_command, tmp_path / "orig.wav", tmp_path / "pad.wav").exit_code == 0


def test_eval_errors_are_one_line(audio_dirs, tmp_path, monkeypatch):
    ref, deg = audio_dirs
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    cases = [
        ((ref / "a.wav", bad), 1, "bad.wav: not a readable audio file"),
        ((ref / "a.wav", deg / "sub" / "b.wav"), 1, "channel counts differ"),
        ((ref / "a.wav", deg), 1, "is a file but"),
        ((ref, deg, "-m", "si_sdr,nope"), 2, "unknown metric 'nope'"),
        ((ref, deg, "--json", "--csv"), 2, "either --json or --csv"),
        ((ref,), 2, "missing DEG"),
        ((ref, deg, "--opus"), 2, "only apply with --codec"),
        ((ref, tmp_path / "missing"), 2, "does not exist"),
    ]
    for args, code, msg in cases:
        res = run(eval_command, *args)
        assert res.exit_code == code, (args, res.output)
        assert msg in res.output, (args, res.output)
        assert "Traceback" not in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run(eval_command, empty, deg)
    assert res.exit_code == 1 and "no audio files to compare" in res.output

    core = ("si_sdr", "mel", "lsd", "hf_ratio", "coherence")  # they need no package
    monkeypatch.setattr(ecli, "metric_available", lambda name: name in core)
    res = run(eval_command, ref, deg, "-m", "pesq")
    assert res.exit_code == 1
    assert "pip install 'flowdec-cli[metrics]'" in res.output
    res = run(eval_command, ref, deg, "--all", "--csv")  # every metric -m all has that can run here
    assert res.exit_code == 0
    assert res.stdout.splitlines()[0] == "file," + ",".join(core)
    assert "not installed, skipped: visqol, pesq, stoi, estoi" in res.stderr


def test_eval_all_includes_installed_optional_metrics(audio_dirs):
    pytest.importorskip("pesq")
    ref, deg = audio_dirs
    res = run(eval_command, ref / "sub" / "b.wav", deg / "sub" / "b.wav", "-m", "si_sdr,pesq_wb",
              "--json")
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)["rows"][0]
    assert set(row) >= {"si_sdr", "pesq"}


# ------------------------------------------------------------------ plot CLI


def test_plot_writes_png(audio_dirs, tmp_path):
    pytest.importorskip("matplotlib")
    ref, deg = audio_dirs
    png = tmp_path / "cmp.png"
    res = run(plot_command, ref / "a.wav", deg / "a.flac", deg / "sub" / "b.wav", "-o", png,
              "-t", "codec 6 kbps", "-t", "postfilter NFE 6")
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    res = run(plot_command, ref / "a.wav", deg / "a.flac", "-o", png, "-t", "a", "-t", "b", "-t", "c")
    assert res.exit_code == 2 and "--title" in res.output
    odd = tmp_path / os.fsdecode(b"bad\xff\xfename.wav")  # not UTF-8: matplotlib raised a TypeError on it
    odd.write_bytes((ref / "a.wav").read_bytes())
    res = run(plot_command, odd, odd, "-o", tmp_path / "odd.png", "-t", "\x1b[31mred\udcff")
    assert res.exit_code == 0 and (tmp_path / "odd.png").read_bytes()[:4] == b"\x89PNG", res.output


def test_plot_says_what_the_picture_cannot(audio_dirs, tmp_path):
    """A silent reference is scaled to the loudest panel and an empty file marked, each with a warning;
    a long title is shortened in the middle, keeping both ends."""
    pytest.importorskip("matplotlib")
    from flowdec_cli.evaluation.plot import TITLE_CHARS, _fit_title

    ref, deg = audio_dirs
    silent, empty = tmp_path / "silent.wav", tmp_path / "empty.wav"
    sf.write(silent, np.zeros(SR // 2), SR)
    sf.write(empty, np.zeros(0), SR)
    png = tmp_path / "p.png"
    res = run(plot_command, silent, deg / "a.flac", empty, "-o", png, "-t", "x" * 200, "-t", "e")
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{silent}: the reference is silent" in res.output
    assert f"{empty}: no samples" in res.output

    res = run(plot_command, silent, silent, "-o", png, "-f")
    assert res.exit_code == 0 and "every file is silent" in res.output
    res = run(plot_command, ref / "a.wav", deg / "a.flac", "-o", png, "-f")
    assert res.exit_code == 0 and "warning" not in res.output

    long = "start-" + "m" * 100 + "-end.wav"
    short = _fit_title(long)
    assert len(short) == TITLE_CHARS and short.startswith("start-") and short.endswith("-end.wav")
    assert _fit_title("short.wav") == "short.wav"


def test_plot_without_matplotlib_is_a_clear_error(audio_dirs, tmp_path, monkeypatch):
    ref, deg = audio_dirs
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    res = run(plot_command, ref / "a.wav", deg / "a.flac", "-o", tmp_path / "x.png")
    assert res.exit_code == 1
    assert "pip install 'flowdec-cli[plot]'" in res.output and "Traceback" not in res.output


# ------------------------------------------------------------------ codec eval helpers


def test_opus_roundtrip_real_tools():
    from flowdec_cli.evaluation.codec_eval import opus_available, opus_roundtrip
    from flowdec_cli.evaluation.metrics import si_sdr

    if not opus_available():
        pytest.skip("opusenc/opusdec not installed")
    x = 0.3 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)[:, None].astype(np.float32)
    res = opus_roundtrip(x, SR, 24)
    assert res.audio.shape == x.shape
    assert res.nbytes > 0 and res.kbps(1.0) < 60
    assert si_sdr(x, res.audio) > 5


def _fake_opus_tools(bindir: Path) -> None:
    """Stand-ins for opusenc/opusdec (copy the audio through) to test the plumbing only."""
    bindir.mkdir()
    enc = """
        import shutil, sys
        shutil.copyfile(sys.argv[-2], sys.argv[-1])
        """
    dec = """
        import sys, soundfile as sf, soxr
        x, sr = sf.read(sys.argv[-2], dtype="float32", always_2d=True)
        sf.write(sys.argv[-1], soxr.resample(x, sr, 48000), 48000, subtype="FLOAT")
        """
    for name, body in (("opusenc", enc), ("opusdec", dec)):
        p = bindir / name
        p.write_text(f"#!{sys.executable}" + textwrap.dedent(body))
        p.chmod(p.stat().st_mode | stat.S_IEXEC)


def test_opus_roundtrip_plumbing_with_fake_tools(tmp_path, monkeypatch):
    from flowdec_cli.evaluation.codec_eval import opus_roundtrip

    _fake_opus_tools(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    x = np.stack([np.sin(np.arange(16000) / 10), np.cos(np.arange(16000) / 10)], 1) * 0.3
    res = opus_roundtrip(x.astype(np.float32), 16000, 6)
    assert res.audio.shape == x.shape and res.audio.dtype == np.float32
    np.testing.assert_allclose(res.audio[200:-200], x[200:-200], atol=1e-3)  # 16k->48k->16k


class FakeCodec:
    postfilter = "a stand-in"
    device = "cpu"

    @classmethod
    def load(cls, model, device="cpu"):
        assert model == "fake-model"
        return cls()

    def bitrates(self):
        return [(2, 1.5), (8, 6.0)]

    def resolve_nfe(self, nfe):  # the model's default: 6 with its postfilter, 0 without, as the real one
        return nfe if nfe is not None else (6 if self.postfilter is not None else 0)

    def choose_rate(self, bitrate_kbps):  # as the real one: the highest offered rate not above it
        from flowdec_cli.rateplan import RatePoint, plan_point

        point = plan_point([RatePoint(k, r, None) for k, r in self.bitrates()], bitrate_kbps)
        if point is None:
            raise CodecError(f"{bitrate_kbps:g} kbit/s is below the lowest rate of model 'fake-model'")
        return point

    def compress_array(self, audio, sample_rate, n_codebooks=None, bitrate_kbps=None):
        assert n_codebooks is None  # by rate: a rate plan may give one count several side channels
        return {"n": {r: k for k, r in self.bitrates()}[bitrate_kbps]}, audio.copy()

    def coded_bytes(self, header, codes):
        return 60 * header["n"]

    def decompress_codes_timed(self, header, codes, nfe=6, seed=0):
        t0 = time.perf_counter()
        time.sleep(0.001)  # "D0"
        d0_seconds = time.perf_counter() - t0
        noise = np.random.default_rng(seed).standard_normal(codes.shape).astype(np.float32)
        stages = types.SimpleNamespace(d0_seconds=d0_seconds, postfilter_seconds=0.0)
        return codes + noise * 0.1 / header["n"] / (nfe + 1), stages


@pytest.fixture
def fake_pipeline(tmp_path, monkeypatch):
    """``flowdec_cli.pipeline`` replaced by :class:`FakeCodec`, and no Opus tools on PATH."""
    monkeypatch.setitem(sys.modules, "flowdec_cli.pipeline", types.SimpleNamespace(Codec=FakeCodec,
                                                                                    CodecError=CodecError))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))


def test_codec_eval_with_a_stand_in_pipeline(audio_dirs, tmp_path, fake_pipeline):
    """The report plumbing of ``eval --codec``, with a fake ``flowdec_cli.pipeline``."""
    ref, _ = audio_dirs
    res = run(eval_command, "--codec", "fake-model", ref, "--nfe", "2,6", "--opus", "--json", "-m", "si_sdr",
              "--save", tmp_path / "dec")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [(r["system"], r["kbps"], r["nfe"]) for r in doc["rows"]] == [
        ("flowdec", 1.5, 2), ("flowdec", 1.5, 6), ("flowdec", 6.0, 2), ("flowdec", 6.0, 6)]  # numbers
    si = [r["si_sdr"] for r in doc["rows"]]
    assert si == sorted(si)  # less noise with more codebooks / NFE in the fake
    assert all(r["rtf_enc"] >= 0 and r["files"] == 2 for r in doc["rows"])
    assert all(r["rtf_d0"] > 0 and r["rtf_pf"] >= 0 for r in doc["rows"])
    assert all(r["rtf_dec"] >= r["rtf_d0"] for r in doc["rows"])
    assert all(r["kbps_on_disk"] > 0 for r in doc["rows"])  # flowdec's bitrate on disk, beside Opus's
    assert "opus: skipped" in res.stderr
    assert (tmp_path / "dec" / "sub" / "b.wav.flowdec_6k_nfe2.wav").exists()
    saved = (tmp_path / "dec" / "sub" / "b.wav.flowdec_6k_nfe2.wav").read_bytes()
    res = run(eval_command, "--codec", "fake-model", ref, "--nfe", "2", "-m", "si_sdr", "--save", tmp_path / "dec")
    assert res.exit_code == 1 and "exists; use -f/--force to overwrite" in res.output
    assert res.stdout == ""  # refused before any work, not after the first file's
    assert (tmp_path / "dec" / "sub" / "b.wav.flowdec_6k_nfe2.wav").read_bytes() == saved
    res = run(eval_command, "--codec", "fake-model", ref, "--nfe", "2", "-m", "si_sdr", "--save", tmp_path / "dec",
              "--force")
    assert res.exit_code == 0, res.output

    res = run(eval_command, "--codec", "fake-model", ref, "--bitrates", "3,7.5", "--nfe", "2", "-m", "si_sdr",
              "--json")  # what -b 3 and -b 7.5 give, as compress picks them
    assert res.exit_code == 0, res.output
    assert sorted({r["kbps"] for r in json.loads(res.stdout)["rows"]}) == [1.5, 6.0]
    res = run(eval_command, "--codec", "fake-model", ref, "--bitrates", "1")  # as compress -b 1 would
    assert res.exit_code == 2 and "1 kbit/s is below the lowest rate" in res.output  # a usage error, as for -b
    for bad in ("-1", "3"):  # midpoint takes an even number of passes
        res = run(eval_command, "--codec", "fake-model", ref, "--nfe", bad)
        assert res.exit_code == 2 and f"--nfe {bad}" in res.output


def test_codec_eval_reports_a_bad_file_and_scores_the_others(tmp_path, fake_pipeline, monkeypatch):
    """One unreadable file ended the whole `eval --codec` run with no report; `a.wav` and `a.flac` were
    saved under one name (the second overwrote the first with -f); metrics left out of a row said nothing."""
    folder = tmp_path / "in"
    folder.mkdir()
    t = np.arange(SR // 2) / SR
    sf.write(folder / "a.wav", 0.3 * np.sin(2 * np.pi * 440 * t), SR)
    sf.write(folder / "a.flac", 0.3 * np.sin(2 * np.pi * 220 * t), SR)
    sf.write(folder / "quiet.wav", np.zeros(SR // 2), SR)
    (folder / "b.wav").write_bytes(b"junk")
    res = run(eval_command, "--codec", "fake-model", folder, "--bitrates", "6", "--nfe", "2", "-m", "si_sdr",
              "--json", "--save", tmp_path / "dec")
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    assert doc["rows"][0]["files"] == 3 and doc["n_files"] == 3
    assert len(doc["failed"]) == 1 and doc["failed"][0].startswith(f"{folder / 'b.wav'}: ")
    assert f"flowdec: error: {folder / 'b.wav'}: " in res.stderr
    assert "quiet.wav: flowdec 6 kbit/s: si_sdr not computed: the reference is silent" in res.stderr
    assert "1 of 4 files could not be coded and scored" in res.stderr
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == [
        "a.flac.flowdec_6k_nfe2.wav", "a.wav.flowdec_6k_nfe2.wav", "quiet.wav.flowdec_6k_nfe2.wav"]
    assert "si_sdr is the mean over 2 of 3 files" in res.stderr  # quiet.wav had none
    assert doc["rows"][0]["counts"] == {"si_sdr": 2}  # in the row too (it was in a note only)
    table = run(eval_command, "--codec", "fake-model", folder, "--bitrates", "6", "--nfe", "2", "-m", "si_sdr")
    row = next(line for line in table.stdout.splitlines() if line.startswith("flowdec"))
    assert row.split()[5] == "(2)", row  # system kbps nfe files si_sdr (count)
    (folder / "a.wav").unlink(), (folder / "a.flac").unlink(), (folder / "quiet.wav").unlink()
    res = run(eval_command, "--codec", "fake-model", folder, "--nfe", "2")
    assert res.exit_code == 1 and "none of the 1 files could be coded and scored" in res.stderr
    monkeypatch.setattr(FakeCodec, "postfilter", None)  # said once, before any file, not once per file
    sf.write(folder / "a.wav", 0.3 * np.sin(2 * np.pi * 440 * t), SR)
    res = run(eval_command, "--codec", "fake-model", folder, "--nfe", "0,2")
    assert res.exit_code == 1
    assert res.stderr.strip() == "flowdec: error: model 'fake-model' has no postfilter; give --nfe 0"


def test_codec_eval_compares_the_codec_alone_with_the_models_own_nfe_by_default(tmp_path, tiny_codec_dir):
    """The default --nfe was 0,6 for every model, so a codec without a postfilter (ndac-75, a trained
    codec) failed with the command's own defaults; now it is 0 and the model's default NFE."""
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "a.wav", tone_like(SR // 2), SR)
    res = run(eval_command, "--codec", tiny_codec_dir, folder, "--bitrates", "7.5", "-m", "si_sdr", "--json",
              "--device", "cpu")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [(r["system"], r["nfe"]) for r in doc["rows"]] == [("flowdec", 0)]
    assert doc["device"] == "cpu"  # what ran, not the option's "auto"


def test_codec_eval_default_nfe_with_a_postfilter(tmp_path, fake_pipeline):
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "a.wav", tone_like(SR // 2), SR)
    res = run(eval_command, "--codec", "fake-model", folder, "--bitrates", "6", "-m", "si_sdr", "--json")
    assert res.exit_code == 0, res.output
    assert [r["nfe"] for r in json.loads(res.stdout)["rows"]] == [0, 6]


def tone_like(n: int) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / SR)).astype(np.float32)


def test_a_fdc_given_to_eval_says_to_decompress_it(tmp_path):
    wav, fdc = tmp_path / "a.wav", tmp_path / "a.fdc"
    sf.write(wav, 0.1 * np.ones(SR // 10), SR)
    fdc.write_bytes(b"FDC1" + bytes(60))
    res = run(eval_command, wav, fdc)
    assert res.exit_code == 1 and "a .fdc file holds codes, not audio: `flowdec decompress` it first" in res.output


def test_an_empty_reference_is_named_as_the_empty_file(tmp_path):
    empty, full = tmp_path / "empty.wav", tmp_path / "full.wav"
    sf.write(empty, np.zeros(0), SR)
    sf.write(full, 0.1 * np.ones(SR // 10), SR)
    res = run(eval_command, empty, full, "--allow-mismatch")
    assert res.exit_code == 1 and f"{empty}: empty signal (0 frames)" in res.output, res.output


def test_a_long_file_is_drawn_from_the_loudest_frame_of_each_group_in_bounded_memory():
    """The whole float64 STFT of each panel was kept: 6 GB for 10 minutes, and an hour would not fit."""
    from flowdec_cli.evaluation import plot

    rng = np.random.default_rng(0)
    x = rng.standard_normal(48000 * 3).astype(np.float32)
    x[70_000:70_100] += 40.0  # a click: one loud frame must survive the grouping
    whole = plot._power_spectrogram(x)  # 282 frames: all kept
    assert whole.shape == (plot.N_FFT // 2 + 1, 282)
    pooled = plot._power_spectrogram(x, max_columns=50)  # groups of 6 frames, the last one shorter
    assert pooled.shape == (plot.N_FFT // 2 + 1, 47)
    np.testing.assert_allclose(pooled, np.maximum.reduceat(whole, np.arange(0, 282, 6), axis=1), rtol=1e-6)
    assert pooled.max() == pytest.approx(whole.max(), rel=1e-6)
    centred = np.pad(x.astype(np.float64), plot.N_FFT // 2)[: plot.N_FFT] * np.hanning(plot.N_FFT + 1)[:-1]
    np.testing.assert_allclose(whole[:, 0], np.abs(np.fft.rfft(centred)) ** 2, rtol=1e-6, atol=1e-9)


def test_a_pair_is_scored_by_the_library_not_the_command(tmp_path):
    """Scoring a pair lived in the command line; it is `evaluation.pairing.score_pair`, whose refusals name
    the file at fault and whose warnings go where the caller says."""
    from flowdec_cli.evaluation.pairing import Pair, ScoringError, score_pair

    ref, deg, empty = tmp_path / "ref.wav", tmp_path / "deg.wav", tmp_path / "empty.wav"
    x = 0.1 * np.sin(np.arange(16000) / 8.0).astype(np.float32)
    sf.write(ref, x, 16000)
    sf.write(deg, x[:12000], 16000)
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(ScoringError, match=r"deg\.wav: lengths differ"):
        score_pair(Pair("a", ref, deg), ["si_sdr"])
    heard: list[str] = []
    scores = score_pair(Pair("a", ref, deg), ["si_sdr"], allow_mismatch=True, warn=heard.append)
    assert np.isfinite(scores["si_sdr"]) and heard == [f"{deg}: lengths differ (reference 1.000 s, decoded 0.750 s); "
                                                       "resampled and trimmed to the shorter"]
    with pytest.raises(ScoringError, match=r"empty\.wav: empty signal"):
        score_pair(Pair("b", empty, deg), ["si_sdr"])
