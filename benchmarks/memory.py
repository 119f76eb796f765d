"""Peak memory of compress and decompress against duration: it should stay flat.

Each measurement runs in a fresh subprocess (so peaks do not carry over) and reports the child's peak RSS.
The model is a small random NDAC (and, with --nfe > 0, a small random postfilter): memory flatness is a
property of the streaming pipeline, not of the model size, and a small model keeps an hour of audio quick.

    python benchmarks/memory.py                       # 1, 10 and 60 minutes, NFE 0
    python benchmarks/memory.py --minutes 1 10 --nfe 2
    python benchmarks/memory.py --envelope            # with the band-level side channel
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(2)
from flowdec_cli.pipeline import Codec
mode, model, src, dst, nfe = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
codec = Codec.load(model, "cpu", with_postfilter=nfe > 0, envelope=sys.argv[6] == "1")
t0 = time.perf_counter()
if mode == "compress":
    codec.compress_file(src, dst, bitrate_kbps=6)
else:
    codec.decompress_file(src, dst, nfe=nfe, seed=0)
took = time.perf_counter() - t0
print(json.dumps({"seconds": took, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_model(folder: Path, with_postfilter: bool) -> Path:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_tiny_ndac, write_model_folder  # type: ignore[import-not-found]

    pf = None
    if with_postfilter:
        from flowdec_cli.postfilter import Postfilter

        torch.manual_seed(0)
        pf = Postfilter(nf=4, ch_mult=(1, 1, 1, 1))
    return write_model_folder(folder, "bench-tiny", make_tiny_ndac(), pf)


def write_long_wav(path: Path, minutes: float, sr: int = 44100) -> None:
    """A stereo 44.1 kHz tone-and-noise file, written block by block (never whole in memory)."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    block = sr * 10
    total = int(minutes * 60 * sr)
    with sf.SoundFile(str(path), "w", sr, 2, subtype="PCM_16") as f:
        for start in range(0, total, block):
            n = min(block, total - start)
            t = (start + np.arange(n)) / sr
            x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(n)
            f.write(np.stack([x, 0.7 * x], 1).astype(np.float32))


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    ap.add_argument("--nfe", type=int, default=0)
    ap.add_argument("--envelope", action="store_true", help="Write and apply the band-level side channel.")
    ap.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="flowdec-bench-") as tmp:
        tmp = Path(tmp)
        model = make_model(tmp / "model", args.nfe > 0)
        for minutes in args.minutes:
            wav = tmp / f"in_{minutes:g}min.wav"
            write_long_wav(wav, minutes)
            env = "1" if args.envelope else "0"
            enc = run_child("compress", str(model), str(wav), str(tmp / "a.fdc"), "0", env)
            dec = run_child("decompress", str(model), str(tmp / "a.fdc"), str(tmp / "out.wav"), str(args.nfe), env)
            rows.append({"minutes": minutes, "channels": 2, "input_rate": 44100, "nfe": args.nfe,
                         "envelope": args.envelope,
                         "compress_s": round(enc["seconds"], 1), "compress_peak_mb": round(enc["peak_rss_mb"]),
                         "decompress_s": round(dec["seconds"], 1), "decompress_peak_mb": round(dec["peak_rss_mb"])})
            print(json.dumps(rows[-1]), flush=True)
            wav.unlink()
    print()
    print("| minutes | compress peak RSS (MB) | compress time (s) | decompress peak RSS (MB) | decompress time (s) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['minutes']:g} | {r['compress_peak_mb']} | {r['compress_s']} | {r['decompress_peak_mb']} | "
              f"{r['decompress_s']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
