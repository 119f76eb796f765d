#!/usr/bin/env python3
"""A compact copy of the training corpus to carry to a training machine that cannot fetch it, and back.

The corpus (docs/corpus.md) is about 300 MB of FLAC; a GPU machine here takes 64 MiB with the repository.
``pack`` writes every file of the given lists as Ogg Opus at a chosen bitrate (48 kbit/s mono: about
30 MB for the 93 minutes; near-transparent at that rate, and far above anything the codec being trained
reproduces), keeping the corpus's relative layout and lists; ``unpack`` decodes them back to 48 kHz FLAC
on the training machine, in parallel, so the trainer reads them as it reads the original corpus.

    python scripts/carry_corpus.py pack /work/corpus .gpudata/corpus --lists train.txt valid.txt --kbps 48
    python scripts/carry_corpus.py unpack .gpudata/corpus /tmp/corpus --jobs 16

A corpus larger than one upload travels in shards (``pack --shards N`` writes DEST/1 .. DEST/N, each file
in the shard a hash of its path picks), one per call to the warm machine: ``unpack`` merges each shard it
is given into the same folder (lists as unions, a marker per shard), and ``complete`` says whether every
shard has arrived, so training never starts on part of the corpus by mistake.

    python scripts/carry_corpus.py pack /work/corpus .gpudata/corpus --kbps 44 --shards 3
    python scripts/carry_corpus.py unpack .gpudata/corpus/2 /tmp/corpus     # one call per shard
    python scripts/carry_corpus.py complete /tmp/corpus                     # exit 1 until all 3 are in

Needs flowdec importable (its file-list reader) and soundfile, whose bundled libsndfile reads and writes
Ogg Opus.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

import soundfile as sf

from flowdec_cli.training.data import read_file_list  # the trainer's list format, read by the trainer's rule

SAMPLE_RATE = 48000
T = TypeVar("T")


def opus_level(kbps: float) -> float:
    """libsndfile's Opus encoder maps compression level 0..1 linearly onto about 256..6 kbit/s."""
    return min(1.0, max(0.0, (256.0 - kbps) / 250.0))


def _pack_one(job: tuple[Path, Path, float]) -> int:
    src, dst, level = job
    audio, sr = sf.read(src, dtype="float32", always_2d=True)
    if sr != SAMPLE_RATE:
        raise SystemExit(f"{src}: {sr} Hz; the corpus is 48 kHz")
    dst.parent.mkdir(parents=True, exist_ok=True)
    sf.write(dst, audio, sr, format="OGG", subtype="OPUS", compression_level=level)
    return dst.stat().st_size


def _unpack_one(job: tuple[Path, Path]) -> int:
    src, dst = job
    audio, sr = sf.read(src, dtype="float32", always_2d=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    sf.write(dst, audio, sr, subtype="PCM_16")
    return len(audio)


SHARD_FILE = "shard.json"  # in each packed folder: which shard of how many it is
MARKERS = ".carried"  # in an unpacked corpus: one file per shard merged into it, named K-of-N, holding its pack id


def shard_of(rel: str, shards: int) -> int:
    """1-based shard of a corpus file: a stable hash of its relative path, so a file that several lists
    name travels once, and repacking the same corpus gives the same shards."""
    return zlib.crc32(rel.encode("utf-8")) % shards + 1


def _map(fn: Callable[[T], int], items: list[T], jobs: int) -> list[int]:
    if jobs <= 1:
        return [fn(item) for item in items]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(fn, items, chunksize=8))


def pack(root: Path, dest: Path, lists: list[str], kbps: float, jobs: int, shards: int = 1) -> None:
    if shards < 1:
        raise SystemExit(f"--shards must be at least 1, not {shards}")
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"{dest}: not empty; pack into a new folder (an old pack's files would travel too)")
    dirs = {k: dest / str(k) if shards > 1 else dest for k in range(1, shards + 1)}
    jobs_: list[tuple[Path, Path, float]] = []
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    listed = {name: read_file_list(root / name) for name in lists}
    # what the shards of one pack share, so that shards of two packs are never merged into one corpus
    pack_id = hashlib.sha1(json.dumps(listed, sort_keys=True).encode()).hexdigest()[:12]
    for name, rels in listed.items():
        for k, d in dirs.items():
            mine = [r for r in rels if shard_of(r, shards) == k]
            (d / name).write_text("".join(f"{r}\n" for r in mine))
            jobs_ += [(root / r, d / Path(r).with_suffix(".opus"), opus_level(kbps)) for r in mine]
    for k, d in dirs.items():
        (d / SHARD_FILE).write_text(json.dumps({"shard": k, "of": shards, "pack": pack_id}) + "\n")
    unique = sorted(set(jobs_))
    total = sum(_map(_pack_one, unique, jobs))
    where = f"{shards} shards under {dest}" if shards > 1 else str(dest)
    print(f"packed {len(unique)} files into {where}: {total / 1e6:.1f} MB at about {kbps:g} kbit/s")


def _shard_id(packed: Path) -> tuple[int, int, str]:
    """(k, n, pack id) of a packed folder; a folder packed before shards existed is the only one of one."""
    info = packed / SHARD_FILE
    if not info.is_file():
        return 1, 1, ""
    d = json.loads(info.read_text())
    return int(d["shard"]), int(d["of"]), str(d.get("pack", ""))


def _merge_list(path: Path, rels: list[str]) -> None:
    old = read_file_list(path) if path.is_file() else []
    have = set(old)
    path.write_text("".join(f"{r}\n" for r in old + [r for r in rels if r not in have]))


def unpack(packed: Path, root: Path, jobs: int) -> None:
    """Lists name .flac files; the packed copies beside them are .opus. ``packed`` is one packed folder
    (one shard, or an unsharded pack) or a folder of shard folders, all of which are merged."""
    if not packed.is_dir():
        raise SystemExit(f"{packed}: not a folder")
    folders = [packed] if any(packed.glob("*.txt")) else sorted(
        d for d in packed.iterdir() if d.is_dir() and any(d.glob("*.txt")))
    if not folders:
        raise SystemExit(f"{packed}: no packed corpus lists (*.txt) here or in its subfolders")
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKERS).mkdir(exist_ok=True)
    for folder in folders:
        k, n, pack_id = _shard_id(folder)
        marker = root / MARKERS / f"{k}-of-{n}"
        if marker.exists():
            print(f"shard {k} of {n} is already in {root}")
            continue
        lists = {lst.name: read_file_list(lst) for lst in sorted(folder.glob("*.txt"))}
        unique = sorted({(folder / Path(r).with_suffix(".opus"), root / r) for rels in lists.values() for r in rels})
        frames = sum(_map(_unpack_one, unique, jobs))
        for name, rels in lists.items():  # the lists only once their audio is all there
            _merge_list(root / name, rels)
        marker.write_text(pack_id)
        print(f"unpacked shard {k} of {n}: {len(unique)} files into {root}: {frames / SAMPLE_RATE / 60:.1f} min")


def missing_shards(root: Path) -> list[str]:
    """Shards still to carry, as "K-of-N"; an error when shards of different packs were mixed."""
    markers = sorted((root / MARKERS).glob("*-of-*")) if (root / MARKERS).is_dir() else []
    if not markers:
        return ["any"]
    got = [m.name for m in markers]
    counts = {int(name.split("-of-")[1]) for name in got}
    packs = {m.read_text() for m in markers}
    if len(counts) != 1 or len(packs) != 1:
        raise SystemExit(f"{root}: shards of different packs were merged ({', '.join(got)})")
    n = counts.pop()
    return [f"{k}-of-{n}" for k in range(1, n + 1) if f"{k}-of-{n}" not in got]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="corpus lists -> Ogg Opus copies")
    p.add_argument("root", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--lists", nargs="+", default=["train.txt", "valid.txt"])
    p.add_argument("--kbps", type=float, default=48.0)
    p.add_argument("--jobs", type=int, default=2)
    u = sub.add_parser("unpack", help="Ogg Opus copies -> 48 kHz FLAC with the same lists")
    u.add_argument("packed", type=Path)
    u.add_argument("root", type=Path)
    u.add_argument("--jobs", type=int, default=8)
    p.add_argument("--shards", type=int, default=1, help="split into this many uploads (DEST/1 .. DEST/N)")
    c = sub.add_parser("complete", help="exit 0 when every shard of the pack is unpacked here, else 1")
    c.add_argument("root", type=Path)
    args = ap.parse_args()
    if args.cmd == "pack":
        pack(args.root, args.dest, args.lists, args.kbps, args.jobs, args.shards)
    elif args.cmd == "unpack":
        unpack(args.packed, args.root, args.jobs)
    else:
        missing = missing_shards(args.root)
        if missing:
            print(f"{args.root}: the corpus is incomplete; still to carry: shard {', '.join(missing)}")
            return 1
        print(f"{args.root}: every shard is here")
    return 0


if __name__ == "__main__":
    sys.exit(main())
