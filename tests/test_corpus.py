"""flowdec corpus: inputs, shards, resume, failures, the .fdc tree, decoding; on Ray (slow) and in-process."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from flowdec_cli import corpus
from flowdec_cli.cli import main
from tests.conftest import tone


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _audio_folder(root: Path, bad: bool = True) -> Path:
    """Three short files (mono 48 kHz, stereo 44.1 kHz in a subfolder, mono 16 kHz) and a corrupt one."""
    src = root / "audio"
    (src / "sub").mkdir(parents=True)
    sf.write(src / "a.wav", tone(1.3, 48000, seed=1), 48000)
    sf.write(src / "sub" / "b.flac", tone(1.0, 44100, channels=2, seed=2), 44100)
    sf.write(src / "c.wav", 1.5 * tone(0.6, 16000, seed=3), 16000, subtype="FLOAT")  # peak > 1: a gain
    if bad:
        (src / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")
    return src


GOOD = ["a", "c", "sub/b"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The corpus, and what single-process `flowdec compress` makes of it (folder mode)."""
    root = tmp_path_factory.mktemp("corpus")
    src = _audio_folder(root)
    r = CliRunner().invoke(main, ["compress", str(src), str(root / "ref"), "-q"], catch_exceptions=False)
    assert r.exit_code == 1  # the corrupt file
    return root, src, root / "ref"


def _ref_codes(ref: Path, item_id: str):
    from flowdec_cli.container import read_fdc
    from flowdec_cli.pipeline import Codec

    codec = Codec.load("flowdec-small", "cpu", with_postfilter=False)
    path = ref / f"{item_id}.fdc"
    return read_fdc(path, tables=lambda h: codec.tables_for(h, str(path)))


def _check_rows_equal_compress(out: Path, ref: Path) -> None:
    rows = {row.id: row for row in corpus.iter_rows(out)}
    assert sorted(rows) == GOOD
    for item_id, row in rows.items():
        header, codes = _ref_codes(ref, item_id)
        assert row.codes.dtype == np.int64 and row.codes.shape == codes.shape
        np.testing.assert_array_equal(row.codes, codes)
        for f in ("num_samples", "sample_rate", "channels", "gain", "num_frames", "n_codebooks", "model_hash",
                  "model_name", "chunk_frames", "context_frames", "envelope_layout"):
            assert getattr(row.header, f) == getattr(header, f), f
        assert header.envelope is not None  # the built-in model sends the side channel
        np.testing.assert_array_equal(row.header.envelope, header.envelope)


# -- inputs ------------------------------------------------------------------------------------------

def test_inputs_folder_glob_manifests(tmp_path):
    src = _audio_folder(tmp_path, bad=False)
    (src / "notes.txt").write_text("not audio")
    (src / "._a.wav").write_bytes(b"\0\5\26\7 AppleDouble, not audio")  # hidden: left out, as the CLI does
    (src / ".cache").mkdir()
    (src / ".cache" / "x.wav").write_bytes((src / "a.wav").read_bytes())
    assert [i.id for i in corpus.list_inputs(src)] == GOOD
    assert [i.id for i in corpus.list_inputs(src, pattern="*.wav")] == ["a", "c"]
    assert [i.id for i in corpus.list_inputs(f"{src}/**/*.flac")] == ["sub/b"]
    (tmp_path / "m.csv").write_text("path,id\naudio/a.wav,spk1/utt1\naudio/sub/b.flac,\n")
    items = corpus.list_inputs(tmp_path / "m.csv")
    assert [(i.id, Path(i.path).name) for i in items] == [("spk1/utt1", "a.wav"), ("sub/b", "b.flac")]
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": str(src / "c.wav")}) + "\n\n"
                                      + json.dumps({"path": "audio/a.wav", "id": 7}) + "\n")
    assert [i.id for i in corpus.list_inputs(tmp_path / "m.jsonl")] == ["7", "c"]


def test_inputs_glob_loops_manifest_bom_and_mixed_paths_and_a_glob_option_that_would_do_nothing(tmp_path):
    """A glob through a link to '.' listed one file dozens of times; a manifest from Excel (a byte-order
    mark) had no 'path' column; one mixing relative and absolute paths crashed; --glob beside a glob or
    manifest IN was ignored."""
    src = _audio_folder(tmp_path, bad=False)
    (src / "loop").symlink_to(".")
    assert [i.id for i in corpus.list_inputs(f"{src}/**/*.wav")] == ["a", "c"]
    (tmp_path / "m.csv").write_bytes(b"\xef\xbb\xbfpath,id\naudio/a.wav,one\n" + f"{src / 'c.wav'},two\n".encode())
    assert [(i.id, Path(i.path).name) for i in corpus.list_inputs(tmp_path / "m.csv")] == [("one", "a.wav"),
                                                                                       ("two", "c.wav")]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mix.csv").write_text(f"path\n../audio/a.wav\n{src / 'sub' / 'b.flac'}\n")
    assert [i.id for i in corpus.list_inputs(tmp_path / "sub" / "mix.csv")] == ["a", "sub/b"]
    for source in (f"{src}/*.wav", tmp_path / "m.csv"):
        with pytest.raises(corpus.CorpusError, match="--glob filters the files of a folder"):
            corpus.list_inputs(source, pattern="a*")


def test_glob_matches_the_path_relative_to_the_folder():
    """pathlib's match anchors at the right: 'a.wav' took rt/a.wav too, 'sub/*' took rt/sub/b.wav and not
    sub/deep/c.wav. The help says the path relative to IN."""
    from flowdec_cli.audio import matches_glob

    paths = ["a.wav", "rt/a.wav", "sub/b.wav", "rt/sub/b.wav", "sub/deep/c.wav", "x.flac", "sub/y.flac"]
    take = lambda pattern: [p for p in paths if matches_glob(Path(p), pattern)]
    assert take("a.wav") == ["a.wav"]
    assert take("sub/*") == ["sub/b.wav", "sub/deep/c.wav", "sub/y.flac"]
    assert take("*.flac") == ["x.flac", "sub/y.flac"]
    assert take(None) == paths


@pytest.mark.parametrize("manifest, message", [
    ("path,id\naudio/a.wav,x\naudio/c.wav,x\n", "names two inputs .*; every id must be unique"),
    ("path,id\naudio/a.wav,../escape\n", "without '..'"),
    ("path,id\naudio/a.wav,/abs\n", "without '..'"),
    ("file\naudio/a.wav\n", "'path' column"),
])
def test_bad_manifests_refused(tmp_path, manifest, message):
    _audio_folder(tmp_path, bad=False)
    (tmp_path / "m.csv").write_text(manifest)
    with pytest.raises(corpus.CorpusError, match=message):
        corpus.list_inputs(tmp_path / "m.csv")


# -- in this process (the fallback without Ray) --------------------------------------------------------

def test_local_fdc_tree_is_byte_identical_to_compress(reference, tmp_path):
    _root, src, ref = reference
    out = tmp_path / "tree"
    r = run("corpus", "encode", src, out, "--to", "fdc", "--engine", "local", "--shard-files", "2")
    assert r.exit_code == 1 and "broken.wav" in r.output and "2 shards" in r.output
    for item_id in GOOD:
        assert filecmp.cmp(ref / f"{item_id}.fdc", out / f"{item_id}.fdc", shallow=False), item_id
    assert [f["id"] for f in corpus.read_failures(out)] == ["broken"]
    r = run("corpus", "encode", src, out, "--to", "fdc", "--engine", "local", "--json")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert (summary["done"], summary["done_before"], summary["failed"]) == (0, 3, 1)
    r = run("corpus", "encode", src, out, "--to", "fdc", "--engine", "local", "-q")  # failures, no summary
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 2 and "broken.wav" in lines[0], r.output
    assert lines[1] == f"flowdec: error: 1 of 4 files failed; listed in {out / '_failures.csv'}"


def test_force_starts_a_corpus_folder_again_and_keeps_what_is_not_an_output(reference, tmp_path):
    """Another rate into a coded folder was refused with no way but removing the folder by hand; --force
    removes the earlier run's outputs (also those of inputs gone since) and codes everything again."""
    _root, src, ref = reference
    out = tmp_path / "tree"
    assert run("corpus", "encode", src, out, "--to", "fdc", "--engine", "local", "-q", "-b", "3").exit_code == 1
    (out / "gone.fdc").write_bytes((out / "a.fdc").read_bytes())  # an input removed since the first run
    (out / "notes.txt").write_text("USER DATA")
    (out / "sub" / "x.fdc").write_text("USER DATA")  # an .fdc file's name, not a .fdc file
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "kept.fdc").write_bytes((out / "a.fdc").read_bytes())
    (out / "link").symlink_to(elsewhere)  # a linked folder's files are not the run's to remove
    r = run("corpus", "encode", src, out, "--to", "fdc", "--engine", "local", "--json")
    assert r.exit_code == 1 and "--force to start it again" in r.output
    r = run("corpus", "encode", src, out, "--to", "fdc", "--engine", "local", "--json", "--force")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert (summary["done"], summary["done_before"], summary["failed"]) == (3, 0, 1), r.output
    for item_id in GOOD:  # as compress codes them at the model's top rate, not at 3 kbit/s
        assert filecmp.cmp(ref / f"{item_id}.fdc", out / f"{item_id}.fdc", shallow=False), item_id
    assert not (out / "gone.fdc").exists() and (elsewhere / "kept.fdc").exists()
    assert (out / "notes.txt").read_text() == (out / "sub" / "x.fdc").read_text() == "USER DATA"
    assert [f["id"] for f in corpus.read_failures(out)] == ["broken"]


def test_force_replaces_parquet_shards_of_other_settings(reference, tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    _root, src, _ref = reference
    out = tmp_path / "codes"
    monkeypatch.setattr(corpus, "ray_available", lambda: False)
    assert run("corpus", "encode", src, out, "-n", "4", "--shard-files", "1", "-q").exit_code == 1
    assert len(corpus.shard_files(out)) == 3
    summary = corpus.encode_corpus(src, out, engine=corpus.Engine("local"), n_codebooks=2, force=True)
    assert (summary.done, summary.skipped, len(summary.failed), summary.shards) == (3, 0, 1, 1)
    assert [p.name for p in corpus.shard_files(out)] == ["part-00000.parquet"]
    assert json.loads((out / corpus.SETTINGS).read_text())["n_codebooks"] == 2


def test_a_stranger_at_an_output_path_is_reported_not_counted_as_done(reference, tmp_path):
    """A file of someone else's that bore an output's name counted as "done before": the run said it had
    coded (or decoded) everything and the file was never an output. It is reported, and left as it is."""
    _root, src, _ref = reference
    out = tmp_path / "tree"
    (out / "sub").mkdir(parents=True)
    (out / "a.fdc").write_text("USER DATA")
    r = run("corpus", "encode", src, out, "--to", "fdc", "--engine", "local", "--json")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.exit_code == 1 and (summary["done"], summary["done_before"], summary["failed"]) == (2, 0, 2), r.output
    assert "a.fdc: is there and is not a .fdc file of an earlier run; not replaced" in r.output
    assert (out / "a.fdc").read_text() == "USER DATA"
    (out / "a.fdc").unlink()  # moved away: the next run codes it, and skips what it made before
    r = run("corpus", "encode", src, out, "--to", "fdc", "--engine", "local", "--json")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert (summary["done"], summary["done_before"], summary["failed"]) == (1, 2, 1), r.output
    pytest.importorskip("pyarrow")
    codes, dec = tmp_path / "codes", tmp_path / "decoded"
    run("corpus", "encode", src, codes, "--engine", "local", "-q")
    dec.mkdir()
    (dec / "c.wav").write_text("USER DATA")
    r = run("corpus", "decode", codes, dec, "--engine", "local", "--nfe", "0", "--json")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert (summary["done"], summary["done_before"], summary["failed"]) == (2, 0, 1), r.output
    assert "c.wav: is there and is not an audio file of an earlier run" in r.output
    assert (dec / "c.wav").read_text() == "USER DATA" and (dec / "a.wav").is_file()
    r = run("corpus", "decode", codes, dec, "--engine", "local", "--nfe", "0", "--json", "--force")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert (summary["done"], summary["done_before"], summary["failed"]) == (2, 0, 1), r.output
    assert (dec / "c.wav").read_text() == "USER DATA"  # --force replaces outputs, not a stranger's file


def test_local_parquet_codes_resume_failures_and_decode(reference, tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    _root, src, ref = reference
    out = tmp_path / "codes"
    monkeypatch.setattr(corpus, "ray_available", lambda: False)  # auto falls back to this process
    r = run("corpus", "encode", src, out, "--shard-files", "3")
    assert r.exit_code == 1, r.output
    assert "engine local" in r.output and "3 coded, 0 done before, 1 failed of 4 files" in r.output
    assert [p.name for p in corpus.shard_files(out)] == ["part-00000.parquet", "part-00001.parquet"]
    _check_rows_equal_compress(out, ref)
    fails = corpus.read_failures(out)
    assert [f["id"] for f in fails] == ["broken"] and "broken.wav" in fails[0]["error"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left

    # a rerun codes nothing but the failure, and a new file goes into a new shard
    sf.write(src / "d.wav", tone(0.5, 48000, seed=4), 48000)
    try:
        summary = corpus.encode_corpus(src, out, engine=corpus.Engine("local"), shard_size=3)
    finally:
        (src / "d.wav").unlink()
    assert (summary.done, summary.skipped, len(summary.failed), summary.shards) == (1, 3, 1, 1)
    assert [p.name for p in corpus.shard_files(out)][-1] == "part-00002.parquet"
    # another codebook count into the same folder is refused, not mixed in
    r = run("corpus", "encode", src, out, "-n", "4", "--engine", "local")
    assert r.exit_code == 1 and "coded earlier with n_codebooks=10" in r.output

    # decoding the shards gives exactly what `flowdec decompress` gives for the .fdc files
    dec, ref_dec = tmp_path / "decoded", tmp_path / "ref_decoded"
    assert run("decompress", ref, ref_dec, "-q", "--seed", "0").exit_code == 0
    r = run("corpus", "decode", out, dec, "--engine", "local", "--seed", "0")
    assert r.exit_code == 0, r.output
    for item_id in GOOD:
        a, ra = sf.read(dec / f"{item_id}.wav")
        b, rb = sf.read(ref_dec / f"{item_id}.wav")
        assert ra == rb
        np.testing.assert_array_equal(a, b)
    assert (dec / "d.wav").exists()
    r = run("corpus", "decode", out, dec, "--engine", "local", "--json")
    assert json.loads(r.stdout.strip().splitlines()[-1])["done_before"] == 4
    # another NFE into the same folder: skipped as done, unless --force decodes them again
    r = run("corpus", "decode", out, dec, "--engine", "local", "--json", "--nfe", "0", "--force")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.exit_code == 0 and (summary["done"], summary["done_before"]) == (4, 0), r.output
    assert run("decompress", ref / "a.fdc", tmp_path / "a0.wav", "-q", "--nfe", "0").exit_code == 0
    np.testing.assert_array_equal(sf.read(dec / "a.wav")[0], sf.read(tmp_path / "a0.wav")[0])


def test_decode_reports_a_bad_shard_or_row_and_decodes_the_rest(tmp_path, monkeypatch):
    """A damaged shard stopped the whole decode (or failed in planning as 'unexpected ArrowInvalid'), a row
    one frame short borrowed codes from the next row, and a file of no samples wrote an envelope that no
    reader took back. Each is now one failure, and every other row is decoded."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    src = _audio_folder(tmp_path, bad=False)
    sf.write(src / "empty.wav", np.zeros((0, 1), np.float32), 48000)
    monkeypatch.setattr(corpus, "ray_available", lambda: False)
    out = tmp_path / "codes"
    assert run("corpus", "encode", src, out, "--shard-files", "1", "-b", "3").exit_code == 0
    shards = {corpus._shard_ids(p)[0]: p for p in corpus.shard_files(out)}
    assert set(shards) == {"a", "c", "empty", "sub/b"}
    shards["c"].write_bytes(shards["c"].read_bytes()[:300])  # cut short
    table = pq.read_table(shards["a"])
    rows = table.to_pylist()
    rows[0]["codes"] = [[cb[:-1] for cb in ch] for ch in rows[0]["codes"]]  # one frame short
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shards["a"])
    dec = tmp_path / "decoded"
    r = run("corpus", "decode", out, dec, "--engine", "local", "--nfe", "0")
    assert r.exit_code == 1 and "Traceback" not in r.output and "unexpected" not in r.output, r.output
    assert (dec / "sub" / "b.wav").is_file() and sf.info(str(dec / "empty.wav")).frames == 0
    failures = {f["id"]: f["error"] for f in corpus.read_failures(dec)}
    assert set(failures) == {"a", "part-00001.parquet"}, failures
    assert "codes of another shape than its header says" in failures["a"]
    assert "not a readable shard" in failures["part-00001.parquet"]
    # a rerun of the encode stops at the damaged shard, saying so once (the cause repeated its own prefix)
    r = run("corpus", "encode", src, out, "--shard-files", "1", "-b", "3", "--engine", "local")
    assert r.exit_code == 1 and r.output.count("not a readable shard") == 1, r.output
    assert r.output.rstrip().endswith("move it away to resume"), r.output
    r = run("corpus", "decode", tmp_path / "nowhere", dec, "--engine", "local")
    assert r.exit_code == 1 and "nowhere: no such file or folder" in r.output


def test_odd_names_and_ids_fail_alone(tmp_path, monkeypatch):
    """A non-UTF-8 file name ended a Parquet encode with 'unexpected UnicodeEncodeError' (and broke the
    failures table of --to fdc); a shard row whose id is '../x', or repeats another shard's, ended or silently
    shortened the decode."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    src = _audio_folder(tmp_path, bad=False)
    odd = src / os.fsdecode(b"caf\xe9.wav")
    odd.write_bytes((src / "a.wav").read_bytes())
    monkeypatch.setattr(corpus, "ray_available", lambda: False)
    out = tmp_path / "codes"
    r = run("corpus", "encode", src, out, "--shard-files", "1", "-b", "3", "-q")
    assert r.exit_code == 1 and "unexpected" not in r.output, r.output
    (failure,) = corpus.read_failures(out)
    assert failure["path"] == str(odd) and "not valid UTF-8, which a Parquet shard cannot hold" in failure["error"]
    assert sorted(i for p in corpus.shard_files(out) for i in corpus._shard_ids(p)) == GOOD
    r = run("corpus", "encode", src, tmp_path / "tree", "--to", "fdc", "-b", "3", "-q")
    assert r.exit_code == 0 and (tmp_path / "tree" / os.fsdecode(b"caf\xe9.fdc")).is_file()

    shards = {corpus._shard_ids(p)[0]: p for p in corpus.shard_files(out)}
    for shard, column, value in ((shards["a"], "id", "../escape"), (shards["sub/b"], "id", "c"),
                                 (shards["c"], "model_hash", "0" * 16)):
        table = pq.read_table(shard)
        rows = table.to_pylist()
        rows[0][column] = value
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)
    dec = tmp_path / "decoded"
    r = run("corpus", "decode", out, dec, "--nfe", "0", "-q")
    assert r.exit_code == 1 and "unexpected" not in r.output, r.output
    failures = {f["id"]: f["error"] for f in corpus.read_failures(dec)}
    assert set(failures) == {"../escape", "c"}, failures
    assert "is also a row of" in failures["c"] and "without '..'" in failures["../escape"]
    assert (dec / "c.wav").is_file() and not (tmp_path / "escape.wav").exists()
    assert "warning: " in r.output and "coded with weights 0000000000000000" in r.output  # as decompress says


def test_a_missing_device_is_refused_before_a_folder_is_begun(tmp_path, monkeypatch):
    """`--device cuda` without one left _corpus.json behind, so a rerun with other settings was refused; a
    decode repeated the device error once per row."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    monkeypatch.setattr(corpus, "ray_available", lambda: False)
    src = _audio_folder(tmp_path, bad=False)
    r = run("corpus", "encode", src, tmp_path / "codes", "--device", "cuda")
    assert r.exit_code == 1 and "no CUDA device is available" in r.output and not (tmp_path / "codes").exists()


def test_iter_rows_refuses_a_lying_row(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    src = _audio_folder(tmp_path, bad=False)
    out = tmp_path / "codes"
    corpus.encode_corpus(src, out, engine=corpus.Engine("local"))
    shard = corpus.shard_files(out)[0]
    table = pq.read_table(shard)
    i = table.schema.get_field_index("num_samples")
    table = table.set_column(i, "num_samples", pa.array([10**9] * table.num_rows, pa.int64()))
    pq.write_table(table, shard)
    with pytest.raises(corpus.CorpusError, match=r"cannot come from|samples"):
        list(corpus.iter_rows(out))


def test_shards_keep_the_side_channel_and_read_shards_without_it(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    src = _audio_folder(tmp_path, bad=False)
    out, bare = tmp_path / "codes", tmp_path / "bare"
    corpus.encode_corpus(src, out, engine=corpus.Engine("local"))
    corpus.encode_corpus(src, bare, engine=corpus.Engine("local"), envelope=False)
    assert all(row.header.envelope is not None for row in corpus.iter_rows(out))
    assert all(row.header.envelope is None for row in corpus.iter_rows(bare))
    # a shard from before the side channel (no such columns) still reads
    shard = corpus.shard_files(bare)[0]
    pq.write_table(pq.read_table(shard).drop_columns(["envelope_layout", "envelope", "pitch_layout", "pitch"]),
                   shard)
    assert sorted(row.id for row in corpus.iter_rows(bare)) == GOOD
    # pitch steps round-trip through a shard and, when they do not fit the codes, are refused likewise
    original = table = pq.read_table(corpus.shard_files(out)[0])
    rows = list(corpus.iter_rows(out))
    first = rows[0].header
    steps = (np.arange(first.channels * -(-first.coded_length // 1152)) % 100).reshape(first.channels, -1)
    i, j = table.schema.get_field_index("pitch_layout"), table.schema.get_field_index("pitch")
    layouts = ["f0-24ms"] + [""] * (table.num_rows - 1)
    table = table.set_column(i, "pitch_layout", pa.array(layouts, pa.string()))
    table = table.set_column(j, "pitch", pa.array([steps.tolist()] + [[]] * (table.num_rows - 1),
                                                  table.schema.field(j).type))
    pq.write_table(table, corpus.shard_files(out)[0])
    back = next(row for row in corpus.iter_rows(out) if row.id == rows[0].id).header
    assert back.pitch_layout == "f0-24ms" and np.array_equal(back.pitch, steps)
    table = table.set_column(j, "pitch", pa.array([steps[:, :-1].tolist()] + [[]] * (table.num_rows - 1),
                                                  table.schema.field(j).type))
    pq.write_table(table, corpus.shard_files(out)[0])
    with pytest.raises(corpus.CorpusError, match="pitch does not fit"):
        list(corpus.iter_rows(out))
    pq.write_table(original, corpus.shard_files(out)[0])
    # levels that do not fit the codes are refused, as a .fdc reader refuses them
    shard = corpus.shard_files(out)[0]
    table = pq.read_table(shard)
    i = table.schema.get_field_index("envelope")
    table = table.set_column(i, "envelope", pa.array([[[[0] * 15]]] * table.num_rows, table.schema.field(i).type))
    pq.write_table(table, shard)
    with pytest.raises(corpus.CorpusError, match="envelope does not fit"):
        list(corpus.iter_rows(out))


# -- on Ray ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_run(reference, tmp_path_factory):
    """One run on a private local Ray (2 CPUs, 2 workers, 2 files a shard) in which the first worker to
    finish a file is SIGKILLed: the engine has to restart it and redo its shard."""
    pytest.importorskip("ray")
    pytest.importorskip("pyarrow")
    _root, src, ref = reference
    out = tmp_path_factory.mktemp("ray") / "codes"
    marker = out.parent / "killed"
    old = os.environ.get(corpus._KILL_ONCE_ENV)
    os.environ[corpus._KILL_ONCE_ENV] = str(marker)
    records = []
    try:
        summary = corpus.encode_corpus(
            src, out, shard_size=2, on_record=records.append,
            engine=corpus.Engine("ray", workers=2, cpus_per_worker=1,
                                 ray_init={"num_cpus": 2, "object_store_memory": 200 << 20}))
    finally:
        if old is None:
            os.environ.pop(corpus._KILL_ONCE_ENV, None)
        else:
            os.environ[corpus._KILL_ONCE_ENV] = old
    return summary, records, out, ref, marker


@pytest.mark.slow
def test_ray_codes_equal_single_process_compress(ray_run):
    summary, _records, out, ref, _ = ray_run
    assert summary.engine == "ray" and summary.done == 3
    _check_rows_equal_compress(out, ref)


@pytest.mark.slow
def test_ray_killed_worker_still_ends_with_every_file_done(ray_run):
    _summary, records, out, _ref, marker = ray_run
    killed = int(marker.read_text())
    assert killed not in {r["pid"] for r in records}  # the dead worker reported nothing; a restarted one did
    assert sorted(r["id"] for r in records if r["status"] == "ok") == GOOD
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # its temporary shard was swept


@pytest.mark.slow
def test_ray_corrupt_file_in_failures_table(ray_run):
    summary, _records, out, _ref, _ = ray_run
    assert [f["id"] for f in summary.failed] == ["broken"]
    fails = corpus.read_failures(out)
    assert [f["id"] for f in fails] == ["broken"] and "not a readable audio file" in fails[0]["error"]


@pytest.mark.slow
def test_ray_shards_load_with_pyarrow_and_datasets(ray_run):
    import pyarrow.parquet as pq

    _summary, _records, out, ref, _ = ray_run
    table = pq.read_table(out)  # the folder, as a dataset: _corpus.json and _failures.csv are ignored
    assert sorted(table.column("id").to_pylist()) == GOOD
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(out / "part-*.parquet"), split="train",
                               cache_dir=str(out.parent / "hf-cache"))
    rows = {r["id"]: r for r in ds}
    _header, codes = _ref_codes(ref, "sub/b")
    np.testing.assert_array_equal(np.array(rows["sub/b"]["codes"]), codes)
    assert rows["sub/b"]["channels"] == 2 and rows["sub/b"]["sample_rate"] == 44100


@pytest.mark.slow
def test_ray_worker_that_cannot_start_is_one_line(tmp_path):
    """A worker whose model differs from the driver's (another machine's cache) stops the run with one line."""
    pytest.importorskip("ray")
    settings = {"to": "fdc", "model": "flowdec-small", "model_hash": "0123456789abcdef", "n_codebooks": 10,
                "threads": 1}
    task = {"out": str(tmp_path / "out"), "items": [["x", str(tmp_path / "x.wav")]]}
    with pytest.raises(corpus.CorpusError, match=r"^a Ray worker failed: .*weights .* on this worker but "
                                                 r"0123456789abcdef where the run started"):
        corpus._run_ray(corpus.EncodeWorker, settings, [task], corpus.Engine("ray", workers=1,
                        ray_init={"num_cpus": 1, "object_store_memory": 100 << 20}), lambda rec: None)


def test_an_output_that_is_the_input_is_named_as_the_problem(tmp_path):
    sf.write(tmp_path / "a.wav", np.zeros(480), 48000)
    with pytest.raises(corpus.CorpusError, match="no input files outside the output folder"):
        corpus.list_inputs(tmp_path, exclude=tmp_path)
    with pytest.raises(corpus.CorpusError, match="no input files found"):
        corpus.list_inputs(tmp_path, pattern="*.flac")


def test_decode_into_its_shard_folder_is_refused(tmp_path, monkeypatch):
    """`corpus decode X X` replaced (or deleted) the encode's _failures.csv with the decode's."""
    pytest.importorskip("pyarrow")
    monkeypatch.setattr(corpus, "ray_available", lambda: False)
    src = _audio_folder(tmp_path)
    out = tmp_path / "codes"
    assert run("corpus", "encode", src, out, "-b", "3", "-q").exit_code == 1  # the broken file
    before = (out / corpus.FAILURES).read_bytes()
    for source in (out, corpus.shard_files(out)[0]):
        r = run("corpus", "decode", source, out, "--nfe", "0")
        assert r.exit_code == 1 and "holds the shards being decoded" in r.output, r.output
    assert (out / corpus.FAILURES).read_bytes() == before and not list(out.glob("*.wav"))


def test_an_interrupted_run_leaves_its_own_failures(tmp_path, monkeypatch):
    """A Ctrl-C'd run left the previous run's _failures.csv, describing other work."""
    pytest.importorskip("pyarrow")
    monkeypatch.setattr(corpus, "ray_available", lambda: False)
    src = _audio_folder(tmp_path)
    out = tmp_path / "codes"
    corpus.encode_corpus(src, out, engine=corpus.Engine("local"))
    assert [f["id"] for f in corpus.read_failures(out)] == ["broken"]

    def interrupted(worker_cls, settings, tasks, engine, record):
        record(corpus._record(corpus.Item("late", "/x/late.wav"), "failed", error="/x/late.wav: cause"))
        raise KeyboardInterrupt

    monkeypatch.setattr(corpus, "_run", interrupted)
    (src / "new.wav").write_bytes((src / "a.wav").read_bytes())
    with pytest.raises(KeyboardInterrupt):
        corpus.encode_corpus(src, out, engine=corpus.Engine("local"))
    assert [f["id"] for f in corpus.read_failures(out)] == ["late"]


def test_a_shard_that_stops_reading_names_each_row_it_loses(tmp_path, monkeypatch):
    """A damaged page of codes lost the undamaged rows after it as one failure, '<shard> (the rest)'."""
    pytest.importorskip("pyarrow")
    monkeypatch.setattr(corpus, "ray_available", lambda: False)
    src = _audio_folder(tmp_path, bad=False)
    out = tmp_path / "codes"
    corpus.encode_corpus(src, out, engine=corpus.Engine("local"), bitrate_kbps=3)
    real_iter_rows = corpus.iter_rows

    def stops_after_one(source, batch_rows=16, errors=None):
        rows = real_iter_rows(source, batch_rows, errors)
        yield next(rows)
        raise corpus.CorpusError(f"{source}: unreadable after its first rows (damaged)")

    monkeypatch.setattr(corpus, "iter_rows", stops_after_one)
    dec = tmp_path / "decoded"
    summary = corpus.decode_corpus(out, dec, nfe=0, engine=corpus.Engine("local"))
    failures = {f["id"]: f["error"] for f in corpus.read_failures(dec)}
    assert set(failures) == set(GOOD[1:]) and all("damaged" in e for e in failures.values()), failures
    assert (dec / "a.wav").is_file() and summary.total == 3


def test_a_null_codebook_list_fails_its_row_and_leaves_the_next_rows_codes_alone(tmp_path):
    """A null list inside a row's codes counted as -1 values, so the next row's codes began one value early
    and decoded wrong without an error."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    src = _audio_folder(tmp_path, bad=False)
    out = tmp_path / "codes"
    corpus.encode_corpus(src, out, engine=corpus.Engine("local"), bitrate_kbps=3)
    (shard,) = corpus.shard_files(out)
    before = {row.id: row.codes for row in corpus.iter_rows(shard)}
    table = pq.read_table(shard)
    rows = table.to_pylist()
    rows[0]["codes"][0][1] = None
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)
    errors: list = []
    after = {row.id: row.codes for row in corpus.iter_rows(shard, errors=errors)}
    assert [e[0] for e in errors] == [rows[0]["id"]] and "another shape" in errors[0][1]
    assert set(after) == set(before) - {rows[0]["id"]}
    assert all(np.array_equal(after[i], before[i]) for i in after)


def test_shards_with_foreign_types_or_missing_values_are_refused_clearly(tmp_path, monkeypatch, recwarn):
    """Int ids became output names, string codes failed inside numpy, a row without an id was decoded to
    'None.wav', and a row with missing code values printed a multi-line numpy warning."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    monkeypatch.setattr(corpus, "ray_available", lambda: False)
    src = _audio_folder(tmp_path, bad=False)
    out = tmp_path / "codes"
    assert run("corpus", "encode", src, out, "--shard-files", "1", "-b", "3", "-q").exit_code == 0
    shards = {corpus._shard_ids(p)[0]: p for p in corpus.shard_files(out)}
    table = pq.read_table(shards["a"])
    rows = table.to_pylist()
    rows[0]["id"] = None
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shards["a"])
    table = pq.read_table(shards["c"])
    rows = table.to_pylist()
    rows[0]["codes"][0][0][3] = None
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shards["c"])
    dec = tmp_path / "decoded"
    r = run("corpus", "decode", out, dec, "--nfe", "0", "-q")
    assert r.exit_code == 1 and "unexpected" not in r.output, r.output
    failures = {f["id"]: f["error"] for f in corpus.read_failures(dec)}
    assert set(failures) == {"(row 1)", "c"}, failures
    assert "has no id" in failures["(row 1)"] and "codes with missing values" in failures["c"]
    assert (dec / "sub" / "b.wav").is_file() and not (dec / "None.wav").exists()
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]

    table = pq.read_table(shards["sub/b"])
    ids = table.schema.get_field_index("id")
    pq.write_table(table.set_column(ids, "id", pa.array([7], pa.int64())), shards["sub/b"])
    with pytest.raises(corpus.CorpusError, match="column 'id' holds int64, not text"):
        list(corpus.iter_rows(shards["sub/b"]))
    r = run("corpus", "decode", out, tmp_path / "again", "--nfe", "0", "-q")
    failures = {f["id"]: f["error"] for f in corpus.read_failures(tmp_path / "again")}
    assert "column 'id' holds int64" in failures[shards["sub/b"].name], failures


def test_corpus_decode_takes_the_postfilters_temperature(tmp_path):
    """`corpus decode` had no --temperature where decompress and roundtrip have one: every row ran at the
    model's own. At temperature 0 the start noise, and so the seed, no longer matters."""
    pytest.importorskip("pyarrow")
    src, codes = tmp_path / "in", tmp_path / "codes"
    src.mkdir()
    sf.write(src / "a.wav", tone(0.3, 48000), 48000)
    assert run("corpus", "encode", src, codes, "--engine", "local", "-q").exit_code == 0
    decoded = {}
    for temperature, seed in (("0", "1"), ("0", "2"), ("1", "1"), ("1", "2")):
        out = tmp_path / f"t{temperature}s{seed}"
        r = run("corpus", "decode", codes, out, "--engine", "local", "--nfe", "2", "--temperature", temperature,
                "--seed", seed, "-q")
        assert r.exit_code == 0, r.output
        decoded[temperature, seed] = sf.read(out / "a.wav")[0]
    assert np.array_equal(decoded["0", "1"], decoded["0", "2"])
    assert not np.array_equal(decoded["1", "1"], decoded["1", "2"])
    r = run("corpus", "decode", codes, tmp_path / "bad", "--temperature", "3")
    assert r.exit_code == 2 and "--temperature" in r.output


def test_a_row_whose_model_cannot_be_loaded_says_so_as_decompress_does(tmp_path, tiny_codec_dir):
    """`corpus decode` resolved each row's model apart from `decompress`, and said less when it failed (the
    loader's words without the model the row names or what to do); both now resolve through one
    :class:`~flowdec_cli.pipeline.Decompressor`, and the row is named once."""
    pytest.importorskip("pyarrow")
    model = tmp_path / "mine"
    shutil.copytree(tiny_codec_dir, model)
    src, codes = tmp_path / "in", tmp_path / "codes"
    src.mkdir()
    sf.write(src / "a.wav", tone(0.3, 48000), 48000)
    assert run("corpus", "encode", src, codes, "--engine", "local", "-m", model, "-q").exit_code == 0
    out = tmp_path / "out"
    r = run("corpus", "decode", codes, out, "--engine", "local", "--nfe", "0", "-q")
    assert r.exit_code == 1, r.output
    (error,) = [f["error"] for f in corpus.read_failures(out)]
    assert "coded with model 'tiny-75', which cannot be loaded here" in error, error
    assert "pass --model NAME_OR_PATH" in error and error.count("row 'a'") == 1, error
    r = run("corpus", "decode", codes, out, "--engine", "local", "--nfe", "0", "-m", model, "-q")
    assert r.exit_code == 0 and sf.info(str(out / "a.wav")).frames == 0.3 * 48000, r.output
