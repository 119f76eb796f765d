#!/usr/bin/env python3
"""A compact copy of the training corpus to carry to a training machine that cannot fetch it, and back.

The corpus (docs/corpus.md) is about 300 MB of FLAC; a GPU machine here takes 64 MiB with the repository.
``pack`` writes every file of the given lists as Ogg Opus at a chosen bitrate (48 kbit/s mono: about
30 MB for the 93 minutes; near-transparent at that rate, and far above anything the codec being trained
reproduces), keeping the corpus's relative layout and lists; ``unpack`` decodes them back to 48 kHz FLAC
on the training machine, in parallel, so the trainer reads them as it reads the original corpus.

    python scripts/carry_corpus.py pack /work/corpus .gpudata/corpus --lists train.txt valid.txt --kbps 48
    python scripts/carry_corpus.py unpack .gpudata/corpus /tmp/corpus --jobs 16

Needs flowdec importable (its file-list reader) and soundfile, whose bundled libsndfile reads and writes
Ogg Opus.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import soundfile as sf

from flowdec_cli.training.data import read_file_list  # the trainer's list format, read by the trainer's rule

SAMPLE_RATE = 48000


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


def pack(root: Path, dest: Path, lists: list[str], kbps: float, jobs: int) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    jobs_: list[tuple[Path, Path, float]] = []
    for name in lists:
        rels = read_file_list(root / name)
        (dest / name).write_text("".join(f"{r}\n" for r in rels))
        jobs_ += [(root / r, dest / Path(r).with_suffix(".opus"), opus_level(kbps)) for r in rels]
    with ProcessPoolExecutor(jobs) as pool:
        total = sum(pool.map(_pack_one, jobs_, chunksize=8))
    print(f"packed {len(jobs_)} files into {dest}: {total / 1e6:.1f} MB at about {kbps:g} kbit/s")


def unpack(packed: Path, root: Path, jobs: int) -> None:
    """Lists name .flac files; the packed copies beside them are .opus."""
    root.mkdir(parents=True, exist_ok=True)
    jobs_: list[tuple[Path, Path]] = []
    for lst in sorted(packed.glob("*.txt")):
        rels = read_file_list(lst)
        (root / lst.name).write_text("".join(f"{r}\n" for r in rels))
        jobs_ += [(packed / Path(r).with_suffix(".opus"), root / r) for r in rels]
    unique = sorted(set(jobs_))
    with ProcessPoolExecutor(jobs) as pool:
        frames = sum(pool.map(_unpack_one, unique, chunksize=8))
    print(f"unpacked {len(unique)} files into {root}: {frames / SAMPLE_RATE / 60:.1f} min")


def main() -> None:
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
    args = ap.parse_args()
    if args.cmd == "pack":
        pack(args.root, args.dest, args.lists, args.kbps, args.jobs)
    else:
        unpack(args.packed, args.root, args.jobs)


if __name__ == "__main__":
    sys.exit(main())
