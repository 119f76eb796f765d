#!/usr/bin/env python3
"""What each call to a borrowed GPU machine would carry, against the 64 MiB a call may take.

A call sends the repository's tracked files, its untracked files that git does not ignore, and the ignored
paths it names in ``carry`` (docs/training.md, "A borrowed GPU without the corpus"). A call refused for its
size costs no device time but a turn of a short lease; this counts the bytes before the lease starts.
Without ``--call``, one call per shard in ``.gpudata/corpus`` (or the one unsharded pack there), each with
``.whl``, then the postfilter's call with ``.whl`` alone.

    python scripts/lease_sizes.py                                  # the plan docs/training.md describes
    python scripts/lease_sizes.py --call .whl .gpudata/corpus/1     # one call's carry list (repeatable)

Exits 1 when a call would be over the limit, naming it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

LIMIT = 64 << 20


def _git_files(root: Path, *args: str) -> list[Path]:
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", *args], check=True, capture_output=True).stdout
    return [root / name for name in out.decode("utf-8", "surrogateescape").split("\0") if name]


def _size(path: Path) -> int:
    if path.is_symlink() or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def planned_calls(root: Path) -> list[list[str]]:
    """The carry lists of docs/training.md's plan: a call per corpus shard, then the postfilter's."""
    packed = root / ".gpudata" / "corpus"
    shards = sorted((p for p in packed.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)) \
        if packed.is_dir() else []
    corpus_calls = [[".whl", str(p.relative_to(root))] for p in shards] or [[".whl", ".gpudata/corpus"]]
    return [*corpus_calls, [".whl"]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--call", nargs="+", action="append", metavar="PATH", help="one call's carry paths")
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    args = ap.parse_args(argv)
    root = args.root.resolve()
    tree = sum(_size(p) for p in _git_files(root)) + sum(_size(p) for p in _git_files(root, "--others",
                                                                                    "--exclude-standard"))
    print(f"tracked and untracked-not-ignored files: {tree / 2**20:.1f} MiB")
    worst = 0
    for i, carry in enumerate(args.call or planned_calls(root), 1):
        sizes = {name: _size(root / name) for name in carry}
        missing = [name for name in carry if not (root / name).exists()]
        total = tree + sum(sizes.values())
        worst = max(worst, total)
        parts = ", ".join(f"{name} {size / 2**20:.1f}" for name, size in sizes.items())
        verdict = "OVER THE LIMIT" if total > LIMIT else "fits"
        print(f"call {i}: {total / 2**20:.1f} MiB of {LIMIT >> 20} ({parts}): {verdict}"
              + (f"; missing: {', '.join(missing)}" if missing else ""))
    return 1 if worst > LIMIT else 0


if __name__ == "__main__":
    sys.exit(main())
