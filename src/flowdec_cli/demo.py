"""``make demo``: round-trip a short synthesised clip with the built-in model and report what happened.

The clip is generated here (a voiced, speech-like harmonic signal with a melody, percussion clicks and a
chirp to 20 kHz), so the demo needs no download and carries no licence questions.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def demo_clip(seconds: float = 5.0, sr: int = 48000) -> np.ndarray:
    rng = np.random.default_rng(2025)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 * (1 + 0.08 * np.sin(2 * np.pi * 0.7 * t)) * (1 + 0.03 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    envelope = 0.5 * (1 + np.sign(np.sin(2 * np.pi * 1.6 * t))) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.3 * t) ** 2)
    voice = envelope * sum((0.25 / k) * np.sin(k * phase) * np.exp(-((k * 120 - 700) / 1800) ** 2) for k in range(1, 40))
    notes = 440 * 2 ** (np.array([0, 3, 7, 12, 7, 3, 0, -5]) / 12)
    melody_f = notes[(t * 1.6).astype(int) % len(notes)]
    melody = 0.08 * np.sin(2 * np.pi * np.cumsum(melody_f) / sr) * (1 - (t * 1.6) % 1) ** 2
    clicks = np.zeros_like(t)
    for start in np.arange(0.0, seconds, 0.5):
        n = int(start * sr)
        burst = rng.standard_normal(min(2000, len(t) - n)) * np.exp(-np.arange(min(2000, len(t) - n)) / 300)
        clicks[n:n + len(burst)] += 0.15 * burst
    chirp = 0.03 * np.sin(2 * np.pi * (50 * t + 0.5 * (20000 - 50) / seconds * t**2))
    x = voice + melody + clicks + chirp
    return (0.8 * x / np.abs(x).max()).astype(np.float32)


def main() -> int:
    import soundfile as sf

    from .evaluation.metrics import mel_distance, si_sdr
    from .pipeline import Codec
    from .registry import default_model_name

    try:
        name = default_model_name()
    except Exception as exc:  # no model bundled in this build
        print(f"flowdec demo: {exc}", file=sys.stderr)
        return 1
    out_dir = Path(tempfile.gettempdir()) / "flowdec-demo"
    out_dir.mkdir(exist_ok=True)
    clip = demo_clip()
    src = out_dir / "demo_in.wav"
    sf.write(src, clip, 48000, subtype="PCM_16")
    codec = Codec.load(name, "auto")
    print(f"model {codec.model.name} on {codec.device}; bitrates (kbit/s): "
          f"{', '.join(f'{kbps:g}' for _, kbps in codec.bitrates())}")
    ref, _ = sf.read(src, dtype="float32")
    for kbps, nfe in ((6.0, 0), (6.0, 6)):
        if nfe and codec.postfilter is None:
            continue
        dst = out_dir / f"demo_out_{kbps:g}kbps_nfe{nfe}.wav"
        t0 = time.perf_counter()
        comp, _ = codec.roundtrip_file(src, dst, bitrate_kbps=kbps, nfe=nfe, seed=0)
        took = time.perf_counter() - t0
        out, _ = sf.read(dst, dtype="float32")
        print(f"{dst}: {comp.header.nominal_bitrate / 1000:g} kbit/s nominal, "
              f"{comp.actual_bitrate / 1000:.3f} kbit/s on disk, NFE {nfe}, {took:.1f} s for {len(clip) / 48000:.1f} s "
              f"of audio; SI-SDR {si_sdr(ref, out):.2f} dB, mel distance {mel_distance(ref, out, 48000):.3f}")
    print(f"input: {src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
