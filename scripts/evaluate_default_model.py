"""Measure a model's quality on the corpus validation split, beside Opus and beside the codec alone.

All systems run on the same clips in one run: the codec at each bitrate without the postfilter (NFE 0)
and with it at each NFE asked for (default: the model's own default NFE), and Opus (opusenc/opusdec).
Metrics: ViSQOL v3 audio mode at 48 kHz, multi-resolution mel distance, SI-SDR and the energy above
8 kHz relative to the reference on every clip; PESQ-WB and STOI on speech. The summary checks the
built-in model's targets (issue 11) category by category.

    python scripts/evaluate_default_model.py MODEL CORPUS_DIR [--per-category 0] [--json out.json]

Clips: every validation segment of each category (or the first N in manifest order with
--per-category N), optionally cropped to their first --max-seconds.
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
            if per_category <= 0 or len(chosen[row["category"]]) < per_category:
                chosen[row["category"]].append(corpus / row["path"])
    return dict(chosen)


def system_name(kbps: float, nfe: int, temperature: float | None = None) -> str:
    """A flowdec row's label; the temperature is named only when several were asked for."""
    return f"flowdec {kbps:g} kbit/s, NFE {nfe}" + ("" if temperature is None or nfe == 0 else f", T {temperature:g}")


def check_targets(table: list[dict], nfe: int, bitrates: list[float], temperature: float | None = None) -> list[str]:
    """One line per target and category: PASS or FAIL with the figures it was judged on (the postfilter at
    ``nfe`` and ``temperature``, the first of ``--temperatures`` when several were scored)."""
    rows = {(r["category"], r["system"]): r for r in table}
    lo, hi = min(bitrates), max(bitrates)
    lines = []

    def get(category: str, system: str, key: str) -> float:
        return float(rows.get((category, system), {}).get(key, math.nan))

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    for category in sorted({c for c, _ in rows}):
        post, plain = system_name(hi, nfe, temperature), system_name(hi, 0)
        gain = get(category, post, "visqol") - get(category, plain, "visqol")
        mel_post, mel_plain = get(category, post, "mel"), get(category, plain, "mel")
        hf = get(category, post, "hf_ratio")
        lines.append(f"{category}: postfilter ViSQOL gain {gain:+.3f} (>= +0.15) {verdict(gain >= 0.15)}; "
                     f"mel {mel_post:.3f} vs {mel_plain:.3f} {verdict(mel_post <= mel_plain)}; "
                     f">8 kHz energy x{hf:.2f} (0.7-1.3) {verdict(0.7 <= hf <= 1.3)}")
        if lo < hi:  # with one bitrate there is nothing to judge the bits on
            bits = get(category, post, "visqol") - get(category, system_name(lo, nfe, temperature), "visqol")
            lines.append(f"{category}: ViSQOL {hi:g} minus {lo:g} kbit/s {bits:+.3f} (>= +0.3) {verdict(bits >= 0.3)}")
        if category == "speech" and (category, "Opus 6 kbit/s") in rows:
            for key in ("pesq", "stoi"):
                mine, opus = get(category, post, key), get(category, "Opus 6 kbit/s", key)
                lines.append(f"speech: {key} {mine:.3f} vs Opus 6 kbit/s {opus:.3f} {verdict(mine >= opus)}")
        elif category != "speech" and (category, "Opus 12 kbit/s") in rows:
            mine, opus = get(category, post, "visqol"), get(category, "Opus 12 kbit/s", "visqol")
            lines.append(f"{category}: ViSQOL {mine:.3f} vs Opus 12 kbit/s {opus:.3f} {verdict(mine >= opus)}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--per-category", type=int, default=0, help="Clips per category (0: all).")
    ap.add_argument("--bitrates", default="3,4.5,6,7.5")
    ap.add_argument("--opus", default="6,8,12", help="Opus bitrates to score beside ('': none).")
    ap.add_argument("--nfe", default=None, help="Postfilter NFEs to score beside NFE 0, comma-separated "
                    "(default: the model's own default NFE).")
    ap.add_argument("--temperatures", default=None,
                    help="Postfilter start-noise temperatures to score at each NFE > 0, comma-separated "
                         "(default: the model's own); the targets are judged on the first.")
    ap.add_argument("--max-seconds", type=float, default=None, help="Crop each clip to its first N seconds.")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (the RTF line is for this many).")
    ap.add_argument("--seed", type=int, default=0,
                    help="Seed of the postfilter's start noise; runs with other seeds show how far a score "
                         "moves with the noise alone.")
    args = ap.parse_args()

    import soundfile as sf
    import torch

    from flowdec_cli.container import actual_bitrate
    from flowdec_cli.evaluation.codec_eval import opus_roundtrip
    from flowdec_cli.evaluation.metrics import compute_metrics
    from flowdec_cli.pipeline import Codec

    torch.set_num_threads(args.threads)
    codec = Codec.load(args.model, "cpu")
    # the codec alone without its side channel, to show what the side channel adds (when the model sends one)
    bare = Codec(codec.model, "cpu", envelope=False) if codec.envelope_layout else None
    nfes = [0] + ([int(n) for n in args.nfe.split(",")] if args.nfe else [codec.resolve_nfe(None)])
    nfes = sorted(set(nfes))
    temperatures: list[float | None] = ([float(t) for t in args.temperatures.split(",")] if args.temperatures
                                        else [None])
    clips = pick_clips(args.corpus, args.per_category)
    results: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    timing: dict[str, list[float]] = defaultdict(list)
    for category, paths in clips.items():
        names = ["visqol", "mel", "si_sdr", "hf_ratio", "coherence"]
        names += ["pesq", "stoi"] if category == "speech" else []
        for path in paths:
            ref, sr = sf.read(path, dtype="float32", always_2d=True)
            if args.max_seconds:
                ref = ref[: int(args.max_seconds * sr)]
            dur = len(ref) / sr
            for kbps in (float(b) for b in args.bitrates.split(",")):
                t0 = time.perf_counter()
                header, codes = codec.compress_array(ref, sr, bitrate_kbps=kbps)
                t1 = time.perf_counter()
                on_disk = actual_bitrate(codec.coded_bytes(header, codes), dur, ref.shape[1]) / 1000
                for nfe, temperature in [(0, None)] + [(n, t) for n in nfes if n > 0 for t in temperatures]:
                    if temperature is not None:
                        codec.postfilter.temperature = temperature
                    t2 = time.perf_counter()
                    out = codec.decompress_codes(header, codes, nfe=nfe, seed=args.seed)
                    t3 = time.perf_counter()
                    timing[f"nfe{nfe}"].append((t1 - t0 + t3 - t2) / dur)
                    scores = compute_metrics(ref, sr, out, sr, names, errors={})
                    scores["kbps_actual"] = on_disk
                    results[(category, system_name(kbps, nfe, temperature))].append(scores)
                if bare is not None:
                    header, codes = bare.compress_array(ref, sr, bitrate_kbps=kbps)
                    out = bare.decompress_codes(header, codes, nfe=0, seed=args.seed)
                    scores = compute_metrics(ref, sr, out, sr, names, errors={})
                    scores["kbps_actual"] = actual_bitrate(bare.coded_bytes(header, codes), dur, ref.shape[1]) / 1000
                    results[(category, f"flowdec {kbps:g} kbit/s, NFE 0, no side channel")].append(scores)
            for kbps in (float(b) for b in args.opus.split(",") if b.strip()):
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
    cols = ["visqol", "mel", "si_sdr", "hf_ratio", "coherence", "pesq", "stoi", "kbps_actual"]
    print("\n| category | system | clips | ViSQOL | mel dist. | SI-SDR (dB) | >8 kHz energy | coherence | PESQ-WB "
          "| STOI | kbit/s on disk |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in table:
        vals = [f"{row[c]:.3f}" if c in row and not math.isnan(row[c]) else "" for c in cols]
        print(f"| {row['category']} | {row['system']} | {row['clips']} | " + " | ".join(vals) + " |")
    rtf = {k: float(np.mean(v)) for k, v in timing.items()}
    print(f"\nCPU real-time factor (encode + decode, {args.threads} threads): {json.dumps(rtf)}")
    checks = check_targets(table, max(nfes), [float(b) for b in args.bitrates.split(",")], temperatures[0])
    print("\nTargets (issue 11):")
    for line in checks:
        print("  " + line)
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "clips": {k: [str(p) for p in v]
                                                                        for k, v in clips.items()},
                                         "nfe": nfes, "temperatures": temperatures, "table": table, "rtf": rtf,
                                         "threads": args.threads, "seed": args.seed, "targets": checks,
                                         # every clip's scores, in the order of "clips": to see which clips
                                         # a system helps or hurts, not only the means
                                         "per_clip": [{"category": c, "system": s, "scores": rows}
                                                      for (c, s), rows in results.items()]},
                                        indent=2))


if __name__ == "__main__":
    main()
