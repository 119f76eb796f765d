"""Write synthetic harmonic tones, steady and gliding, as training audio for the codec.

Why: the built-in codec renders every steady partial above about 400 Hz on a multiple of its 75 Hz frame
rate (docs/models.md, "Why the harmonics stick"). Real recordings hold few long, clean, steady partials at
arbitrary pitches; these tones put many of them in front of the codec's losses, at pitches spread evenly
in log frequency, so a codec trained with them has to learn where a partial is in its cycle from frame to
frame. Generated here (a seed gives the same files everywhere), so no audio has to be carried.

    python scripts/make_harmonic_tones.py OUT_DIR [--count 150] [--seed 0]

Writes OUT_DIR/tone000.flac ... and OUT_DIR/train.txt (one file name per line, relative to OUT_DIR, the
list format `flowdec train` reads).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 48_000
HIGHEST_PARTIAL_HZ = 16_000.0


def harmonic_tone(rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One tone: 2-4 s, F0 log-uniform in 80-1,500 Hz, 40 % steady and 60 % gliding up to half an octave
    either way, half with a 5-6 Hz vibrato; partials of falling amplitude up to 16 kHz, random phases."""
    seconds = rng.uniform(2.0, 4.0)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    f0_start = float(np.exp(rng.uniform(np.log(80.0), np.log(1500.0))))
    octaves = 0.0 if rng.random() < 0.4 else rng.uniform(-0.5, 0.5)
    f0 = f0_start * 2.0 ** (octaves * t / seconds)
    if rng.random() < 0.5:
        depth = rng.uniform(0.002, 0.01)  # relative frequency deviation
        f0 = f0 * (1.0 + depth * np.sin(2 * np.pi * rng.uniform(5.0, 6.0) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    rolloff = rng.uniform(0.5, 2.0)  # amplitude of partial k is k**-rolloff
    top = min(HIGHEST_PARTIAL_HZ, 0.45 * sample_rate) / float(f0.max())
    x = np.zeros(n)
    for k in range(1, max(1, int(top)) + 1):
        x += k**-rolloff * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    attack, release = int(0.02 * sample_rate), int(0.05 * sample_rate)
    envelope = np.ones(n)
    envelope[:attack] = np.linspace(0.0, 1.0, attack)
    envelope[-release:] = np.linspace(1.0, 0.0, release)
    x *= envelope
    return (0.5 * x / np.max(np.abs(x))).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--count", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    names = []
    for i in range(args.count):
        name = f"tone{i:03d}.flac"
        sf.write(args.out_dir / name, harmonic_tone(rng), SAMPLE_RATE, subtype="PCM_16")
        names.append(name)
    (args.out_dir / "train.txt").write_text("".join(f"{name}\n" for name in names))
    print(f"{args.count} tones in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
