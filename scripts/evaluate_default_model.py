"""Measure a model's quality on the corpus validation split, beside Opus and beside the codec alone.

All systems run on the same clips in one run: the codec at 3, 4.5, 6 and 7.5 kbit/s with the postfilter
(NFE 6) and without it (NFE 0), and Opus (opusenc/opusdec) at 6, 8 and 12 kbit/s. Metrics: ViSQOL v3 audio
mode at 48 kHz, multi-resolution mel distance and SI-SDR on every clip; PESQ-WB and STOI on speech.

    python scripts/evaluate_default_model.py MODEL CORPUS_DIR [--per-category 6] [--json out.json]

Clips: the first N validation segments of each category in manifest order (deterministic), optionally
cropped to their first --max-seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def pick_clips(corpus: Path, per_category: int) -> dict[str, list[Path]]:
    chosen: dict[str, list[Path]] = defaultdict(list)
    with open(corpus / "manifest.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] != "valid":
                continue
            if len(chosen[row["category"]]) < per_category:
                chosen[row["category"]].append(corpus / row["path"])
    return dict(chosen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--per-category", type=int, default=6)
    ap.add_argument("--bitrates", default="3,4.5,6,7.5")
    ap.add_argument("--opus", default="6,8,12")
    ap.add_argument("--nfe", type=int, default=6)
    ap.add_argument("--max-seconds", type=float, default=None, help="Crop each clip to its first N seconds.")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import soundfile as sf
    import torch

    from flowdec_cli.evaluation.codec_eval import opus_roundtrip
    from flowdec_cli.evaluation.metrics import compute_metrics
    from flowdec_cli.pipeline import Codec

    torch.set_num_threads(2)
    codec = Codec.load(args.model, "cpu")
    clips = pick_clips(args.corpus, args.per_category)
    results: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    timing: dict[str, list[float]] = defaultdict(list)
    for category, paths in clips.items():
        names = ["visqol", "mel", "si_sdr"] + (["pesq", "stoi"] if category == "speech" else [])
        for path in paths:
            ref, sr = sf.read(path, dtype="float32", always_2d=True)
            if args.max_seconds:
                ref = ref[: int(args.max_seconds * sr)]
            dur = len(ref) / sr
            for kbps in (float(b) for b in args.bitrates.split(",")):
                t0 = time.perf_counter()
                header, codes = codec.compress_array(ref, sr, bitrate_kbps=kbps)
                t1 = time.perf_counter()
                for nfe in (0, args.nfe):
                    t2 = time.perf_counter()
                    out = codec.decompress_codes(header, codes, nfe=nfe, seed=0)
                    t3 = time.perf_counter()
                    timing[f"nfe{nfe}"].append((t1 - t0 + t3 - t2) / dur)
                    scores = compute_metrics(ref, sr, out, sr, names, errors={})
                    results[(category, f"flowdec {kbps:g} kbit/s, NFE {nfe}")].append(scores)
            for kbps in (float(b) for b in args.opus.split(",")):
                res = opus_roundtrip(ref, sr, kbps)
                scores = compute_metrics(ref, sr, res.audio, sr, names, errors={})
                scores["kbps_actual"] = res.kbps(dur)
                results[(category, f"Opus {kbps:g} kbit/s")].append(scores)
            print(f"{category}: {path.name} done", flush=True)

    table = []
    for (category, system), rows in results.items():
        keys = sorted({k for r in rows for k in r})
        mean = {k: float(np.nanmean([r.get(k, math.nan) for r in rows])) for k in keys}
        table.append({"category": category, "system": system, "clips": len(rows), **mean})
    cols = ["visqol", "mel", "si_sdr", "pesq", "stoi"]
    print("\n| category | system | clips | ViSQOL | mel dist. | SI-SDR (dB) | PESQ-WB | STOI |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in table:
        vals = [f"{row[c]:.3f}" if c in row and not math.isnan(row[c]) else "" for c in cols]
        print(f"| {row['category']} | {row['system']} | {row['clips']} | " + " | ".join(vals) + " |")
    rtf = {k: float(np.mean(v)) for k, v in timing.items()}
    print(f"\nCPU real-time factor (encode + decode, 2 threads): {json.dumps(rtf)}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "clips": {k: [str(p) for p in v]
                                                                        for k, v in clips.items()},
                                         "table": table, "rtf": rtf}, indent=2))


if __name__ == "__main__":
    main()
