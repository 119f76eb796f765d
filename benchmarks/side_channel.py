"""What each side-channel layout costs: bit/s per channel over training clips, the figure a rate plan counts.

Band-level layouts (:mod:`flowdec_cli.envelope`) and pitch layouts (:mod:`flowdec_cli.pitch`) alike.

    python benchmarks/side_channel.py --corpus /work/corpus [--per-category 25] [--json out.json]

A model card's ``rate_plan`` gives each entry a nominal rate: the codes' rate plus the layout's typical
cost (docs/models.md, "A side channel by rate"), so that most files land at or below the rate asked for.
This measures that cost on ``--per-category`` clips of each category of the corpus's training split, drawn
with a fixed seed (the same 75 clips on every run of the same corpus), as the encoder codes them: the
levels of the original at its own rate, entropy-coded. It prints the median and the 90th percentile per
layout, overall and per category. Nothing here runs a model, so it takes seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np


def training_clips(corpus: Path, per_category: int, seed: int = 0) -> list[tuple[str, Path]]:
    """``per_category`` training files of each category, drawn with ``seed``, in category order."""
    by_category: dict[str, list[str]] = defaultdict(list)
    with open(corpus / "manifest.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == "train":
                by_category[row["category"]].append(row["path"])
    rng = random.Random(seed)
    return [(cat, corpus / path) for cat in sorted(by_category)
            for path in rng.sample(by_category[cat], min(per_category, len(by_category[cat])))]


def main() -> None:
    import soundfile as sf

    from flowdec_cli import envelope, pitch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--per-category", type=int, default=25)
    ap.add_argument("--layouts", default=",".join([*envelope.LAYOUTS, *pitch.LAYOUTS]),
                    help="comma-separated layout names (band levels or pitch)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    def coded_bytes(layout, signal: np.ndarray) -> int:
        if isinstance(layout, pitch.PitchLayout):
            return len(pitch.encode_steps(layout, pitch.steps_of_signal(layout, signal)))
        return len(envelope.encode_levels(layout, envelope.levels_of_signal(layout, signal)))

    layouts = [pitch.pitch_layout(name) if name in pitch.LAYOUTS else envelope.envelope_layout(name)
               for name in args.layouts.split(",")]
    costs: dict[str, dict[str, list[float]]] = {lay.name: defaultdict(list) for lay in layouts}
    clips = training_clips(args.corpus, args.per_category)
    for category, path in clips:
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
        if sr != layouts[0].sample_rate:
            raise SystemExit(f"{path}: {sr} Hz; the layouts are defined at {layouts[0].sample_rate} Hz, the "
                             "corpus's rate")
        seconds = len(audio) / sr
        for lay in layouts:
            bits = 8 * coded_bytes(lay, np.ascontiguousarray(audio.T)) / audio.shape[1]
            costs[lay.name][category].append(bits / seconds)

    print(f"side-channel cost, bit/s per channel, {len(clips)} training clips of {args.corpus}")
    categories = sorted({c for per_cat in costs.values() for c in per_cat})
    print("| layout | median | 90th percentile | " + " | ".join(f"{c} median" for c in categories) + " |")
    print("| --- " * (3 + len(categories)) + "|")
    summary = {}
    for name, per_cat in costs.items():
        every = [v for vals in per_cat.values() for v in vals]
        median, p90 = float(np.median(every)), float(np.percentile(every, 90))
        by_category = {c: float(np.median(v)) for c, v in sorted(per_cat.items())}
        summary[name] = {"median": median, "p90": p90, "by_category": by_category}
        print(f"| {name} | {median:,.0f} | {p90:,.0f} | " + " | ".join(f"{v:,.0f}" for v in by_category.values())
              + " |")
    if args.json:
        args.json.write_text(json.dumps({"corpus": str(args.corpus), "clips": len(clips), "layouts": summary},
                                        indent=1))


if __name__ == "__main__":
    main()
