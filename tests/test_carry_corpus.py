"""scripts/carry_corpus.py: the corpus packed as Opus for a training machine, whole or in shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import load_script, tone


@pytest.fixture(scope="module")
def carry():
    yield from load_script("carry_corpus")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Nine short 48 kHz clips in the corpus layout, listed by train.txt (7) and valid.txt (2)."""
    root = tmp_path_factory.mktemp("corpus")
    rels = [f"audio/{split}/music/src/clip{i}.flac" for i, split in enumerate(["train"] * 7 + ["valid"] * 2)]
    for i, rel in enumerate(rels):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, tone(0.25 + 0.05 * i, 48000, seed=i), 48000, subtype="PCM_16")
    (root / "train.txt").write_text("".join(f"{r}\n" for r in rels[:7]))
    (root / "valid.txt").write_text("".join(f"{r}\n" for r in rels[7:]))
    return root


def _listed(folder: Path, name: str) -> list[str]:
    return (folder / name).read_text().split()


def test_shards_split_every_file_once_and_merge_back(carry, corpus, tmp_path):
    packed, out = tmp_path / "packed", tmp_path / "out"
    carry.pack(corpus, packed, ["train.txt", "valid.txt"], kbps=48, jobs=1, shards=3)
    shards = [packed / str(k) for k in (1, 2, 3)]
    infos = [json.loads((d / "shard.json").read_text()) for d in shards]
    assert [(i["shard"], i["of"]) for i in infos] == [(1, 3), (2, 3), (3, 3)]
    assert len({i["pack"] for i in infos}) == 1
    per_shard = [set(_listed(d, "train.txt")) | set(_listed(d, "valid.txt")) for d in shards]
    assert sum(len(s) for s in per_shard) == 9 and set().union(*per_shard) == set(
        _listed(corpus, "train.txt") + _listed(corpus, "valid.txt"))
    assert all(per_shard), "nine files in three shards by a hash: none left empty here"

    carry.unpack(shards[1], out, jobs=1)
    assert carry.missing_shards(out) == ["1-of-3", "3-of-3"]
    assert sorted(_listed(out, "train.txt")) == sorted(_listed(shards[1], "train.txt"))
    carry.unpack(packed, out, jobs=1)  # the parent folder: every shard not yet merged
    assert carry.missing_shards(out) == []
    for name in ("train.txt", "valid.txt"):
        assert sorted(_listed(out, name)) == sorted(_listed(corpus, name))
    for rel in _listed(corpus, "train.txt") + _listed(corpus, "valid.txt"):
        ref, _ = sf.read(corpus / rel)
        got, sr = sf.read(out / rel)
        assert sr == 48000 and len(got) == len(ref)
        assert np.corrcoef(ref, got)[0, 1] > 0.9  # Opus at 48 kbit/s keeps a tone


def test_unsharded_pack_is_one_of_one(carry, corpus, tmp_path):
    packed, out = tmp_path / "packed", tmp_path / "out"
    carry.pack(corpus, packed, ["train.txt"], kbps=48, jobs=1)
    assert carry.missing_shards(out) == ["any"]
    carry.unpack(packed, out, jobs=1)
    carry.unpack(packed, out, jobs=1)  # a second call finds the shard there and adds nothing
    assert carry.missing_shards(out) == []
    assert _listed(out, "train.txt") == _listed(corpus, "train.txt")


def test_refusals(carry, corpus, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("x\n")
    with pytest.raises(SystemExit, match="not empty"):
        carry.pack(corpus, tmp_path / "full", ["train.txt"], kbps=48, jobs=1, shards=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no packed corpus lists"):
        carry.unpack(tmp_path / "empty", tmp_path / "out", jobs=1)
    with pytest.raises(SystemExit, match="not a folder"):
        carry.unpack(tmp_path / "absent", tmp_path / "out", jobs=1)


@pytest.mark.parametrize("other_lists, other_shards", [(["train.txt"], 3), (["train.txt", "valid.txt"], 2)])
def test_shards_of_two_packs_do_not_mix(carry, corpus, tmp_path, other_lists, other_shards):
    """Another shard count, or the same count over other lists (another corpus)."""
    out = tmp_path / "out"
    carry.pack(corpus, tmp_path / "a", ["train.txt"], kbps=48, jobs=1, shards=2)
    carry.pack(corpus, tmp_path / "b", other_lists, kbps=48, jobs=1, shards=other_shards)
    carry.unpack(tmp_path / "a" / "1", out, jobs=1)
    carry.unpack(tmp_path / "b" / "2", out, jobs=1)
    with pytest.raises(SystemExit, match="different packs"):
        carry.missing_shards(out)


@pytest.fixture()
def lease():
    yield from load_script("lease_sizes")


def test_lease_sizes_count_what_each_call_carries(tmp_path, lease, capsys):
    """The 64 MiB of a call are the tracked files, the untracked ones git does not ignore, and the carried
    paths: a corpus shard that fitted in one session was over in the next, the tree having grown."""
    import subprocess

    root = tmp_path / "repo"
    (root / ".gpudata" / "corpus" / "1").mkdir(parents=True)
    (root / ".gpudata" / "corpus" / "2").mkdir(parents=True)
    (root / ".whl").mkdir()
    (root / ".gitignore").write_text("/.gpudata/\n/.whl/\n")
    (root / "tracked.bin").write_bytes(b"\0" * (20 << 20))
    (root / "untracked.bin").write_bytes(b"\0" * (4 << 20))
    (root / ".whl" / "a.whl").write_bytes(b"\0" * (2 << 20))
    (root / ".gpudata" / "corpus" / "1" / "a.opus").write_bytes(b"\0" * (30 << 20))
    (root / ".gpudata" / "corpus" / "2" / "b.opus").write_bytes(b"\0" * (39 << 20))
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "tracked.bin", ".gitignore"], check=True)
    assert lease.planned_calls(root) == [[".whl", ".gpudata/corpus/1"], [".whl", ".gpudata/corpus/2"], [".whl"]]
    assert lease.main(["--root", str(root)]) == 1  # 24 + 2 + 39 MiB: the second shard's call is over
    out = capsys.readouterr().out
    assert "call 1: 56.0 MiB of 64" in out and "fits" in out
    assert "call 2: 65.0 MiB of 64 (.whl 2.0, .gpudata/corpus/2 39.0): OVER THE LIMIT" in out
    assert lease.main(["--root", str(root), "--call", ".whl", ".gpudata/corpus/1"]) == 0
