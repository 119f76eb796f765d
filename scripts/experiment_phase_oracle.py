"""How much a decoder that carries each STFT bin's phase on its own loses even when all it predicts is right.

An experiment (docs/models.md, "Teaching the advances, and locking the phases"). For each validation clip
the reference's own STFT (the phase decoder's: 1,280 points, hop 320) gives every bin's magnitude and
phase advance; the clip is then played back the way ``flowdec_cli.phase_decoder.PhaseDecoder`` plays it
(each bin's phase turned by its advance, frame after frame) from the true start phases, from each bin's own
spread start (what the decoder has), and with phase-locking variants. The script prints DAC's mel distance
to the reference and the error of the played-back signal's own advances (the advance loss of
experiment_phase_decoder.py, in radians).

    python scripts/experiment_phase_oracle.py [--corpus /work/corpus] [--clips 8] [--seconds 4]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def _phase_experiment():
    """experiment_phase_decoder.py, for its advance loss and its reading of a waveform's advances (the
    scripts are not a package)."""
    path = Path(__file__).with_name("experiment_phase_decoder.py")
    spec = importlib.util.spec_from_file_location("experiment_phase_decoder", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def play(decoder, mag: torch.Tensor, advance: torch.Tensor, start: torch.Tensor, kernel: list[float] | None = None,
         power: float = 1.0, passes: int = 1, peaks: bool = False) -> torch.Tensor:
    """The waveform of magnitudes [1, F, N] whose phases start at ``start`` [1, F] and turn by ``advance``;
    ``kernel``: each frame's phases pulled together across bins (weights by offset, magnitudes to ``power``,
    ``passes`` times); ``peaks``: each bin takes the phase of the local magnitude peak it climbs to."""
    sign = decoder.bin_sign
    turn = torch.polar(torch.ones_like(advance), advance)
    w = torch.polar(torch.ones_like(start), start)
    played = []
    for n in range(advance.shape[-1]):
        w = w * turn[..., n]
        m = mag[..., n]
        for _ in range(passes if kernel else 0):
            z = torch.view_as_real(m**power * w * sign).permute(0, 2, 1).reshape(-1, 1, decoder.bins)
            k = torch.tensor(kernel).view(1, 1, -1)
            z = F.conv1d(z, k, padding=len(kernel) // 2).reshape(w.shape[0], 2, decoder.bins).permute(0, 2, 1)
            pulled = torch.view_as_complex(z.contiguous()) * sign
            w = pulled / (pulled.abs() + 1e-12)
        if peaks:
            top = torch.arange(decoder.bins).expand_as(m).clone()
            for _ in range(4):  # climb to the larger neighbour, a bin at a time
                left, right = (top - 1).clamp(min=0), (top + 1).clamp(max=decoder.bins - 1)
                ml, mr, mc = m.gather(-1, left), m.gather(-1, right), m.gather(-1, top)
                top = torch.where((ml > mc) & (ml >= mr), left, torch.where(mr > mc, right, top))
            w = (w * sign).gather(-1, top) * sign
        played.append(w)
    phasor = torch.stack(played, dim=-1)
    return torch.istft(mag * phasor, decoder.n_fft, decoder.frame_hop, window=decoder.window, center=True,
                       length=phasor.shape[-1] * decoder.frame_hop)[:, None]


def play_locked(decoder, mag: torch.Tensor, advance: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """As :func:`play` without a kernel, then ``PhaseDecoder.lock`` (model.phase_lock) on each frame alone."""
    angle = start.double()[..., None] + torch.cumsum(advance.double(), dim=-1)
    carried = torch.polar(torch.ones_like(angle), angle).to(torch.complex64)
    played = decoder.lock(carried, mag)
    return torch.istft(mag * played, decoder.n_fft, decoder.frame_hop, window=decoder.window, center=True,
                       length=played.shape[-1] * decoder.frame_hop)[:, None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default="/work/corpus", type=Path)
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from flowdec_cli.phase_decoder import PhaseDecoder
    from flowdec_cli.training.data import EvalDataset, list_audio
    from flowdec_cli.training.losses import MultiScaleMelLoss

    experiment = _phase_experiment()
    decoder = PhaseDecoder(latent_dim=8, hop_length=640, gate=False, lock=True)
    mel = MultiScaleMelLoss(48000)
    clips = EvalDataset(48000, items=list_audio([args.corpus / "valid.txt"])[:args.clips],
                        max_samples=int(args.seconds * 48000))
    ways = {
        "true start phases": {},
        "each bin's own start (the decoder's)": {"own": True},
        "own start, model.phase_lock (3 bins, each frame alone)": {"own": True, "library": True},
        "own start, 3-bin lock fed back (chaotic)": {"own": True, "kernel": [0.5, 1.0, 0.5]},
        "own start, 3-bin lock fed back, magnitudes squared": {"own": True, "kernel": [0.5, 1.0, 0.5],
                                                               "power": 2.0},
        "own start, 5-bin lock fed back, magnitudes squared": {"own": True, "kernel": [0.25, 0.5, 1.0, 0.5, 0.25],
                                                               "power": 2.0},
        "own start, 3-bin lock fed back twice, magnitudes squared": {"own": True, "kernel": [0.5, 1.0, 0.5],
                                                                     "power": 2.0, "passes": 2},
        "own start, each bin its peak's phase, fed back": {"own": True, "peaks": True},
    }
    scores: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for i in range(len(clips)):
        x = clips[i][0][None]
        frames = x.shape[-1] // decoder.frame_hop
        x = x[..., :frames * decoder.frame_hop]
        spec = torch.stft(x[:, 0], decoder.n_fft, decoder.frame_hop, window=decoder.window, center=True,
                          return_complex=True)[..., :frames]
        turn = torch.angle(spec[..., 1:] * spec[..., :-1].conj())
        turn = torch.cat([torch.angle(spec[..., :1]), turn], -1)  # frame 0 turns from phase 0 to its own
        own = 2 * math.pi * torch.rand(1, decoder.bins, generator=torch.Generator().manual_seed(i))
        for name, how in ways.items():
            start = own if how.get("own") else torch.zeros(1, decoder.bins)
            if how.get("library"):
                y = play_locked(decoder, spec.abs(), turn, start)
            else:
                y = play(decoder, spec.abs(), turn, start, how.get("kernel"), how.get("power", 1.0),
                         how.get("passes", 1), how.get("peaks", False))
            heard = experiment.advance_loss(decoder, experiment.output_deviation(decoder, y, frames), x)
            scores[name].append((float(mel(y, x)), float(heard)))
    print(f"{len(clips)} validation clips of up to {args.seconds:g} s: "
          "mel distance | advance error of the output (rad)")
    for name, rows in scores.items():
        m, a = np.mean(rows, axis=0)
        print(f"{name}: {m:.3f} | {a:.3f}")


if __name__ == "__main__":
    main()
