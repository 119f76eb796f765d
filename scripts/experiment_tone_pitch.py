"""Where a steady tone's pitch goes through the codec: the frame-rate comb.

An experiment (docs/models.md, "Why the harmonics stick"). Sine tones (3 s, 48 kHz, amplitude 0.3) are
coded and decoded with a model, and for each the script reports the strongest partials of the decoded
middle 2 s (Hann window, 2^19-point FFT: 0.09 Hz bins), how far the strongest one lies from the tone, and
how many distinct code columns (all codebooks of one frame) the encoder gave over 20 steady frames. A codec
whose codes follow the tone's phase changes them from frame to frame; one that codes only the magnitude
repeats a column, and its decoder, given the same column every frame, repeats one frame of waveform: every
partial then lies on a multiple of the frame rate (75 Hz for a hop of 640 at 48 kHz).

    python scripts/experiment_tone_pitch.py [--model flowdec-small] [--codebooks 4,10] [--nfe 0,6]
        [--envelope] [--freqs 110,220,440,...]
"""

from __future__ import annotations

import argparse

import numpy as np

RATE, SECONDS, AMPLITUDE = 48000, 3.0, 0.3
FREQS = (110.0, 220.0, 330.0, 440.0, 523.25, 880.0, 1000.0, 1760.0, 3000.0)


def partials(y: np.ndarray, count: int = 3, apart_hz: float = 15.0) -> list[tuple[float, float]]:
    """The ``count`` strongest spectral peaks of ``y`` [frames] (middle 2 s): (Hz, dB below the strongest)."""
    mid = y[int(0.5 * RATE): int(2.5 * RATE)]
    n = 1 << 19
    mag = np.abs(np.fft.rfft(mid * np.hanning(len(mid)), n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    found: list[tuple[float, float]] = []
    for i in np.argsort(mag)[::-1]:
        if all(abs(freqs[i] - f) > apart_hz for f, _ in found):
            found.append((float(freqs[i]), float(20 * np.log10(mag[i] / mag.max() + 1e-12))))
        if len(found) == count:
            break
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model name or folder (default: the built-in one)")
    ap.add_argument("--codebooks", default="4,10", help="codebook counts to code at")
    ap.add_argument("--nfe", default="0", help="postfilter passes to decode at (0: D0 alone)")
    ap.add_argument("--envelope", action="store_true", help="send the band-level side channel (as -b does)")
    ap.add_argument("--freqs", default=",".join(f"{f:g}" for f in FREQS), help="tone frequencies in Hz")
    args = ap.parse_args()

    from flowdec_cli import Codec

    nfes = [int(v) for v in args.nfe.split(",")]
    codec = Codec.load(args.model, "cpu", with_postfilter=max(nfes) > 0, envelope=args.envelope)
    frame_rate = codec.model.ndac.sample_rate / codec.model.ndac.hop_length
    t = np.arange(int(SECONDS * RATE)) / RATE
    print(f"model {codec.model.name}, frame rate {frame_rate:g} Hz, side channel {'on' if args.envelope else 'off'}")
    print("tone Hz | codebooks | NFE | distinct columns / 20 frames | strongest partials (Hz, dB) | error of the "
          "strongest | on a multiple of the frame rate")
    for f0 in (float(v) for v in args.freqs.split(",")):
        x = (AMPLITUDE * np.sin(2 * np.pi * f0 * t)).astype(np.float32)[:, None]
        for k in (int(v) for v in args.codebooks.split(",")):
            header, codes = codec.compress_array(x, RATE, n_codebooks=k)
            columns = len({tuple(col) for col in codes[0, :, 20:40].T})
            for nfe in nfes:
                y = codec.decompress_codes(header, codes, nfe=nfe, seed=0)[:, 0]
                found = partials(y)
                top = found[0][0]
                on_comb = abs(top / frame_rate - round(top / frame_rate)) * frame_rate < 1.0
                shown = ", ".join(f"{f:.0f} ({db:.1f})" for f, db in found)
                print(f"{f0:g} | {k} | {nfe} | {columns} | {shown} | {100 * (top / f0 - 1):+.1f} % | "
                      f"{'yes' if on_comb else 'no'}")


if __name__ == "__main__":
    main()
