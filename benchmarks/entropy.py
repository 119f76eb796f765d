"""Entropy-coded against bit-packed .fdc files: bytes saved per category and bitrate, time added, exactness.

    python benchmarks/entropy.py --corpus /work/corpus [--eval-root /tmp/evaldebs/ext] [--json out.json]

Clips the tables never saw:
* ``--corpus``: the first ``--per-category`` segments of each category (music, speech, sounds) of the
  corpus's validation split, in manifest order (docs/corpus.md);
* ``--eval-root``: audio of the Debian packages reserved for evaluation, extracted under this folder
  (``apt-get download klettres-data singularity-music hydrogen-drumkits alsa-utils
  fretsonfire-songs-muldjord`` and ``dpkg-deb -x`` each): music = singularity-music and fretsonfire songs
  (20 s from 30 s in), speech = klettres letters and the alsa-utils voice prompts (joined into ~10 s clips),
  sounds = hydrogen drum samples (joined into ~10 s clips).

For each clip the codes are made once at the model's full codebook count, without a side channel; the codes
at 3 and 6 kbit/s of codes are their first 4 and 8 codebooks (residual quantisation: the script checks this
on the first clip). Sizes are whole files (header and CRC included, no side channel: its bytes are the same
either way). Time, on the first ``--timed`` clips at 6 kbit/s: entropy coding
and decoding of the codes (less bit-packing and unpacking) against the compress (at 10 codebooks) and
decompress (NFE 0) time of the same clips, on this machine with ``--threads`` torch threads.

A second table gives what a user sees on disk: the files as ``flowdec compress -b`` writes them at the rates
of ``--on-disk`` (3, 6 and 7.5 by default; the codebooks and side channel the model's rate plan gives that
rate, or its one side channel; entropy coding when it saves bytes; header and CRC) in kbit/s per channel
against the rate asked for: the median over a category's files, and how many came out above it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

RATES = {3.0: 4, 6.0: 8, 7.5: 10}


def corpus_clips(corpus: Path, per_category: int) -> list[tuple[str, str, np.ndarray, int]]:
    import soundfile as sf

    out = []
    taken: dict[str, int] = defaultdict(int)
    with open(corpus / "manifest.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == "valid" and taken[row["category"]] < per_category:
                taken[row["category"]] += 1
                audio, sr = sf.read(corpus / row["path"], dtype="float32", always_2d=True)
                out.append(("corpus-valid", row["category"], audio, sr))
    return out


def _mono48(path: Path) -> np.ndarray:
    import soundfile as sf

    from flowdec_cli.audio import resample

    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1, keepdims=True)
    return resample(audio, sr, 48000) if sr != 48000 else audio


def _joined(paths: list[Path], seconds: float = 10.0, gap: float = 0.2) -> list[np.ndarray]:
    clips, cur, n = [], [], 0
    for p in paths:
        try:
            x = _mono48(p)
        except Exception:
            continue
        cur += [x, np.zeros((int(gap * 48000), 1), np.float32)]
        n += len(x) + int(gap * 48000)
        if n >= seconds * 48000:
            clips.append(np.concatenate(cur)[: int(seconds * 48000)])
            cur, n = [], 0
    if n >= 2 * 48000:
        clips.append(np.concatenate(cur))
    return clips


def eval_clips(root: Path, per_category: int) -> list[tuple[str, str, np.ndarray, int]]:
    out: list[tuple[str, str, np.ndarray, int]] = []
    share = root / "usr" / "share"
    music = sorted((share / "games" / "singularity" / "music").glob("*.ogg"))[:per_category - 2]
    music += sorted((share / "games" / "fretsonfire").rglob("song.ogg"))[:2]
    for p in music:
        x = _mono48(p)
        clip = x[30 * 48000: 50 * 48000] if len(x) > 50 * 48000 else x[:20 * 48000]
        out.append(("eval-packages", "music", clip, 48000))
    letters = sorted((share / "klettres").rglob("*.ogg"))
    rng = np.random.default_rng(0)  # a fixed mix of languages
    picks = [letters[i] for i in rng.choice(len(letters), size=min(len(letters), 6 * per_category), replace=False)]
    speech = _joined(picks)[: per_category - 1] + _joined(sorted((share / "sounds" / "alsa").glob("*.wav")))
    out += [("eval-packages", "speech", x, 48000) for x in speech]
    kits = sorted(p for p in (share / "hydrogen" / "data" / "drumkits").iterdir() if p.is_dir())
    drums = []
    for kit in kits:
        files = sorted(f for f in kit.iterdir() if f.suffix.lower() in (".wav", ".flac"))
        drums += _joined(files)[:1]
    out += [("eval-packages", "sounds", x, 48000) for x in drums[:per_category]]
    return out


def _print_table(keys: Iterable[tuple[str, str, float]], rates: Iterable[float], files: Callable[[str, str], int],
                 cell: Callable[[str, tuple[str, str, float]], str]) -> None:
    """A markdown table, a row per clip source and category, a column per rate; ``cell(json_key, key)``."""
    keys, rates = set(keys), list(rates)
    print("| clips | category | files | " + " | ".join(f"{kbps:g} kbit/s" for kbps in rates) + " |")
    print("|---|---|---|" + "---|" * len(rates))
    for source in sorted({k[0] for k in keys}):
        for cat in ("music", "speech", "sounds", "all"):
            if (source, cat, rates[0]) in keys:
                cells = [cell(f"{source}/{cat}/{kbps:g}", (source, cat, kbps)) for kbps in rates]
                print(f"| {source} | {cat} | {files(source, cat)} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--eval-root", type=Path, default=None)
    ap.add_argument("--per-category", type=int, default=6)
    ap.add_argument("--timed", type=int, default=6, help="Clips whose decompress is timed (the first N).")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--on-disk", default="3,6,7.5",
                    help="Rates (kbit/s, comma-separated) asked of flowdec compress -b for the on-disk table.")
    args = ap.parse_args()
    on_disk_rates = [float(r) for r in args.on_disk.split(",") if r.strip()]

    import torch

    from flowdec_cli.container import actual_bitrate, decode_fdc, encode_fdc
    from flowdec_cli.models.catalogue import default_model_name
    from flowdec_cli.pipeline import Codec

    torch.set_num_threads(args.threads)
    codec = Codec.load(args.model or default_model_name(), "cpu", with_postfilter=False)
    bare = Codec(codec.model, "cpu", envelope=False)  # the codes alone, for the entropy coder's saving
    tables = codec.entropy_tables
    if tables is None:
        raise SystemExit("this model has no entropy tables (flowdec train entropy-tables)")
    clips = (corpus_clips(args.corpus, args.per_category) if args.corpus else []) + \
        (eval_clips(args.eval_root, args.per_category) if args.eval_root else [])
    if not clips:
        raise SystemExit("give --corpus and/or --eval-root")
    sizes: dict[tuple[str, str, float], list[int]] = defaultdict(lambda: [0, 0, 0])
    on_disk: dict[tuple[str, str, float], list[float]] = defaultdict(list)  # kbit/s per channel
    t_comp = t_dec = t_ecode = t_edec = t_pack = t_unpack = 0.0
    checked_prefix = False
    for i, (source, cat, audio, sr) in enumerate(clips):
        t0 = time.perf_counter()
        header, codes = bare.compress_array(audio, sr, n_codebooks=10)
        if i < args.timed:
            t_comp += time.perf_counter() - t0
        if not checked_prefix:
            _h4, c4 = bare.compress_array(audio, sr, n_codebooks=4)
            assert np.array_equal(c4, codes[:, :4]), "codes at 4 codebooks are not a prefix of those at 10"
            checked_prefix = True
        for kbps, k in RATES.items():
            import dataclasses

            h = dataclasses.replace(header, n_codebooks=k)
            c = np.ascontiguousarray(codes[:, :k])
            t0 = time.perf_counter()
            packed = encode_fdc(h, c)
            t1 = time.perf_counter()
            coded = encode_fdc(h, c, tables=tables)
            t2 = time.perf_counter()
            _, c_back = decode_fdc(coded, tables=tables)
            t3 = time.perf_counter()
            decode_fdc(packed)
            t4 = time.perf_counter()
            assert np.array_equal(c_back, c), "entropy decoding changed the codes"
            for key in ((source, cat, kbps), (source, "all", kbps)):
                sizes[key][0] += len(packed)
                sizes[key][1] += len(coded)
                sizes[key][2] += 1
            if k == 8 and i < args.timed:  # time the 6 kbit/s case against a real decompress
                t_ecode += t2 - t1
                t_pack += t1 - t0
                t_edec += t3 - t2
                t_unpack += t4 - t3
                t0 = time.perf_counter()
                y_coded = bare.decompress_codes(h, c_back, nfe=0)
                t_dec += time.perf_counter() - t0
                if i < 3:
                    y_plain = bare.decompress_codes(h, c, nfe=0)
                    assert np.array_equal(y_coded, y_plain), "decoded audio differs"
        for kbps in on_disk_rates:
            as_written = encode_fdc(*codec.compress_array(audio, sr, bitrate_kbps=kbps), tables=tables)
            kbps_on_disk = actual_bitrate(len(as_written), len(audio) / sr, audio.shape[1]) / 1000
            for key in ((source, cat, kbps), (source, "all", kbps)):
                on_disk[key].append(kbps_on_disk)
        print(f"{i + 1}/{len(clips)} {source} {cat} {len(audio) / sr:.1f} s", flush=True)

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    print(f"\nmodel {codec.model.name}, tables {tables.id}; {cpu}, {os.cpu_count()} cores, "
          f"{args.threads} torch threads\n")
    table: dict[str, dict[str, Any]] = {}

    def saving_cell(key: str, cell: tuple[str, str, float]) -> str:
        packed, coded, _n = sizes[cell]
        saving = 100 * (1 - coded / packed)
        table[key] = {"bitpacked": packed, "entropy": coded, "saving": saving}
        return f"{saving:.1f} %"

    def on_disk_cell(key: str, cell: tuple[str, str, float]) -> str:
        rates = on_disk[cell]
        above = sum(r > cell[2] for r in rates)
        table.setdefault(key, {}).update(kbps_on_disk=rates, above_request=above)
        return f"{float(np.median(rates)):.2f} ({above})"

    def files(source: str, cat: str) -> int:
        return sizes[(source, cat, 6.0)][2]

    _print_table(sizes.keys(), RATES, files, saving_cell)
    side = ("side channel by the rate plan" if codec.rate_plan is not None else
            f"side channel {codec.envelope_layout}" if codec.envelope_layout else "no side channel")
    print(f"\non disk as flowdec compress writes them ({side}, header and CRC included): kbit/s per channel, "
          "median (files above the rate asked for)\n")
    _print_table(on_disk.keys(), on_disk_rates, files, on_disk_cell)
    enc_over = (t_ecode - t_pack) / t_comp * 100
    dec_over = (t_edec - t_unpack) / t_dec * 100
    print(f"\ntime at 6 kbit/s over all clips: compress {t_comp:.1f} s, entropy coding {t_ecode:.3f} s "
          f"(bit-packing {t_pack:.3f} s): +{enc_over:.2f} %; decompress (NFE 0) {t_dec:.1f} s, entropy decoding "
          f"{t_edec:.3f} s (unpacking {t_unpack:.3f} s): +{dec_over:.2f} %")
    if args.json:
        args.json.write_text(json.dumps({"model": codec.model.name, "tables": tables.id, "cpu": cpu,
                                         "sizes": table, "compress_overhead_percent": enc_over,
                                         "decompress_overhead_percent": dec_over}, indent=2) + "\n")


if __name__ == "__main__":
    main()
