"""How much of its own target the built-in postfilter reaches (an experiment; docs/framewise.md).

The postfilter is trained towards the clean magnitudes under the coded phase (``objective.target_phase =
"coded"``). This scores that target itself, built from each validation clip and its decoding at NFE 0 with
the postfilter's own feature map and inverse, beside NFE 0 and the model's default NFE, with ViSQOL (and
PESQ-WB on speech): the gap between the default NFE and the target is what the network does not infer.

    python scripts/experiment_target_ceiling.py CORPUS [--model flowdec-small] [--bitrate 7.5] [--per-category N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from evaluate_default_model import pick_clips  # the same validation clips as the Quality tables


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--model", default="flowdec-small")
    ap.add_argument("--bitrate", type=float, default=7.5)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--per-category", type=int, default=0, help="Clips per category (0: all).")
    args = ap.parse_args()

    import soundfile as sf
    import torch

    from flowdec_cli.evaluation.metrics import pesq_wb, visqol
    from flowdec_cli.pipeline import Codec
    from flowdec_cli.training.losses import with_coded_phase

    torch.set_num_threads(1)
    codec = Codec.load(args.model, "cpu")
    nfe = codec.resolve_nfe(None)
    features = codec.postfilter.feature_extractor
    for category, clips in pick_clips(args.corpus, args.per_category).items():
        scores: dict[str, list[tuple[float, float]]] = {}
        for path in clips:
            ref, sr = sf.read(path, dtype="float32", always_2d=True)
            ref = ref[: int(args.seconds * sr), :1]
            header, codes = codec.compress_array(ref, sr, bitrate_kbps=args.bitrate)
            plain = codec.decompress_codes(header, codes, nfe=0, seed=0)[: len(ref)]
            post = codec.decompress_codes(header, codes, nfe=nfe, seed=0)[: len(ref)]
            with torch.no_grad():
                Y, normfac, frames = features(torch.from_numpy(plain[:, 0])[None, None])
                X, _, _ = features(torch.from_numpy(ref[:, 0])[None, None], normfac)
                target = features.inverse(with_coded_phase(X, Y), normfac, len(ref), frames)[0, 0].numpy()
            for name, audio in (("NFE 0", plain), (f"NFE {nfe}", post), ("the target", target[:, None])):
                pesq = pesq_wb(ref, audio, sr) if category == "speech" else float("nan")
                scores.setdefault(name, []).append((visqol(ref, audio, sr), pesq))
            print(f"{category}: {path.name} done", flush=True)
        print(f"\n{category}, {len(clips)} clips, {args.model} at {args.bitrate:g} kbit/s: ViSQOL / PESQ-WB")
        for name, values in scores.items():
            v, p = np.mean(values, axis=0)
            print(f"  {name:12s} {v:.3f}" + (f" / {p:.3f}" if category == "speech" else ""), flush=True)


if __name__ == "__main__":
    main()
