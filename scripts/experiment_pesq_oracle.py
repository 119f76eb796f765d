"""Where the built-in model's speech loses PESQ-WB: swap parts of its output's spectrum for the reference's.

An experiment (docs/models.md, "Where PESQ-WB loses"). Each validation speech clip (first 4 s) is coded at
``--bitrate`` and decoded at NFE 0 and the model's default NFE; both output and reference are resampled to
16 kHz, PESQ-WB's own rate, and taken into a 512-sample Hann STFT with hop 128 (32 ms, the frame PESQ scores).
Each variant replaces one part of the output's STFT by the reference's, keeps the rest, and is scored with
PESQ-WB against the reference:

* phase: the reference's phase under the output's magnitude, and the other way round;
* envelope / fine structure: the log magnitude split by cepstral liftering (30 quefrency bins, 1.9 ms) into
  a smooth envelope and the harmonic fine structure around it, one of them taken from the reference;
* bands: the reference's magnitude in one band only (below 1 kHz, 1-4 kHz, above 4 kHz).

    python scripts/experiment_pesq_oracle.py CORPUS [--model flowdec-small] [--bitrate 7.5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from evaluate_default_model import pick_clips  # the same validation clips as the Quality tables

N_FFT, HOP, RATE, LIFTER = 512, 128, 16000, 30


def stft(x: np.ndarray) -> np.ndarray:
    """[frames, bins] of a centred Hann STFT (the signal padded by reflection, as the postfilter's features)."""
    import torch

    spec = torch.stft(torch.from_numpy(x), N_FFT, HOP, window=torch.hann_window(N_FFT, dtype=torch.float64),
                      center=True, return_complex=True)
    return spec.T.numpy()


def istft(spec: np.ndarray, length: int) -> np.ndarray:
    """The least-squares signal for a (possibly inconsistent) STFT. Centring keeps every output sample under
    full overlap: a plain overlap-add divided by the window sum blows up in the first and last samples, where
    that sum is near zero, and those few spikes alone wreck a score."""
    import torch

    return torch.istft(torch.from_numpy(np.ascontiguousarray(spec.T)), N_FFT, HOP,
                       window=torch.hann_window(N_FFT, dtype=torch.float64), center=True, length=length).numpy()


def envelope(mag: np.ndarray) -> np.ndarray:
    """The smooth spectral envelope of each frame: its log magnitude without quefrencies from LIFTER on."""
    cep = np.fft.irfft(np.log(mag + 1e-7), axis=1)
    cep[:, LIFTER:-LIFTER] = 0
    return np.exp(np.fft.rfft(cep, axis=1).real)


def variants(ref: np.ndarray, out: np.ndarray) -> dict[str, np.ndarray]:
    R, D = stft(ref), stft(out)
    aR, aD, phase = np.abs(R), np.abs(D), np.exp(1j * np.angle(D))
    freq = np.fft.rfftfreq(N_FFT, 1 / RATE)
    n = len(ref)

    def band(lo: float, hi: float) -> np.ndarray:
        return istft(np.where((freq >= lo) & (freq < hi), aR, aD) * phase, n)

    return {
        "as decoded": out,
        "reference phase": istft(aD * np.exp(1j * np.angle(R)), n),
        "reference magnitude": istft(aR * phase, n),
        "reference envelope": istft(envelope(aR) * aD / envelope(aD) * phase, n),
        "reference fine structure": istft(envelope(aD) * aR / envelope(aR) * phase, n),
        "reference magnitude below 1 kHz": band(0, 1000),
        "reference magnitude 1-4 kHz": band(1000, 4000),
        "reference magnitude above 4 kHz": band(4000, RATE),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--model", default="flowdec-small")
    ap.add_argument("--bitrate", type=float, default=7.5)
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()

    import soundfile as sf
    import soxr
    import torch

    from flowdec_cli.evaluation.metrics import pesq_wb
    from flowdec_cli.pipeline import Codec

    torch.set_num_threads(1)
    codec = Codec.load(args.model, "cpu")
    nfes = sorted({0, codec.resolve_nfe(None)})
    clips = pick_clips(args.corpus, 0)["speech"]
    scores: dict[str, list[float]] = {}
    for path in clips:
        ref, sr = sf.read(path, dtype="float32", always_2d=True)
        ref = ref[: int(args.seconds * sr), :1]
        header, codes = codec.compress_array(ref, sr, bitrate_kbps=args.bitrate)
        ref16 = soxr.resample(ref[:, 0].astype(np.float64), sr, RATE)
        for nfe in nfes:
            out = codec.decompress_codes(header, codes, nfe=nfe, seed=0)[: len(ref), 0]
            out16 = soxr.resample(out.astype(np.float64), sr, RATE)[: len(ref16)]
            out16 = np.pad(out16, (0, len(ref16) - len(out16)))
            for name, audio in variants(ref16, out16).items():
                scores.setdefault(f"NFE {nfe}, {name}", []).append(pesq_wb(ref16, audio, RATE))
        print(f"{path.name} done", flush=True)
    print(f"\nPESQ-WB, mean over {len(clips)} clips, {args.model} at {args.bitrate:g} kbit/s:")
    for name, values in scores.items():
        print(f"  {name:45s} {np.mean(values):.3f}")


if __name__ == "__main__":
    main()
