"""Where the 75 Hz comb starts: steady tones through the codec's encoder and decoder with no quantizer.

An experiment (docs/models.md, "Why the harmonics stick"). For each sine tone (3 s, 48 kHz, amplitude 0.3)
it prints the strongest partials and the level of the decoder's output from the encoder's *unquantized*
latent, and how much that latent changes from frame to frame (the cosine between neighbours: a latent that
codes where the waveform is in its cycle turns from frame to frame; one that codes only the magnitude does
not). With ``--search-steps N`` it then searches the latent itself (Adam, the decoder fixed) for the output
closest to the tone, by ``--waveform-weight`` x the L1 waveform error plus a linear and log STFT magnitude
loss at 512, 2,048 and 8,192 points: whether any latent sequence lets this decoder play the tone.

    python scripts/experiment_latent_tones.py [--model flowdec-small] [--freqs 220,440,1000,1760]
        [--search-steps 400] [--lr 0.05] [--waveform-weight 50] [--loss stft|transport] [--start encoder|noise]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from experiment_tone_pitch import RATE, partials

SECONDS, AMPLITUDE = 3.0, 0.3


def _stft_loss(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    loss = y.new_zeros(())
    for n in (512, 2048, 8192):
        window = torch.hann_window(n)
        ys = torch.stft(y, n, n // 4, window=window, return_complex=True).abs()
        xs = torch.stft(x, n, n // 4, window=window, return_complex=True).abs()
        loss = loss + (ys - xs).abs().mean() + (torch.log(ys + 1e-5) - torch.log(xs + 1e-5)).abs().mean()
    return loss


def _neighbour_cosine(z: torch.Tensor) -> float:
    """Mean cosine between consecutive frames of a latent [1, dims, frames], over steady frames 20-60."""
    frames = z[0, :, 20:60].T
    unit = frames / frames.norm(dim=1, keepdim=True)
    return float((unit[1:] * unit[:-1]).sum(1).mean())


def _describe(y: torch.Tensor) -> str:
    out = y[0, 0].detach().numpy()
    found = ", ".join(f"{hz:.0f} ({db:.1f})" for hz, db in partials(out))
    rms = float(np.sqrt(np.mean(out[RATE // 2: -RATE // 2] ** 2)))
    return f"partials Hz (dB) {found}; RMS {rms:.3f} (the tone's {AMPLITUDE / np.sqrt(2):.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model name or folder (default: the built-in one)")
    ap.add_argument("--freqs", default="220,440,1000,1760", help="tone frequencies in Hz")
    ap.add_argument("--search-steps", type=int, default=0, help="Adam steps of the latent search (0: none)")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--loss", choices=("stft", "transport"), default="stft",
                    help="stft: linear + log magnitude; transport: spectral earth mover's distance + level")
    ap.add_argument("--start", choices=("encoder", "noise"), default="encoder",
                    help="search from the encoder's latent, or from noise as loud as it, per channel")
    ap.add_argument("--waveform-weight", type=float, default=50.0, help="of the L1 waveform error (0: STFT only)")
    args = ap.parse_args()

    from flowdec_cli import Codec
    from flowdec_cli.training.losses import SpectralTransportLoss

    transport = SpectralTransportLoss()

    torch.manual_seed(0)
    ndac = Codec.load(args.model, "cpu", with_postfilter=False).model.ndac
    for p in ndac.parameters():
        p.requires_grad_(False)
    t = np.arange(int(SECONDS * RATE)) / RATE
    for f0 in (float(v) for v in args.freqs.split(",")):
        x = ndac.pad_to_hop(torch.from_numpy((AMPLITUDE * np.sin(2 * np.pi * f0 * t)).astype(np.float32))[None, None])
        with torch.no_grad():
            z = ndac.encoder(x)
            print(f"{f0:g} Hz, unquantized latent: neighbour cosine {_neighbour_cosine(z):.4f}; "
                  f"{_describe(ndac.decoder(z))}", flush=True)
        if args.search_steps <= 0:
            continue
        if args.start == "noise":
            z = z.pow(2).mean(-1, keepdim=True).sqrt() * torch.randn_like(z)
        z = z.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=args.lr)
        start = time.perf_counter()
        for step in range(args.search_steps):
            y = ndac.decoder(z)
            n = min(y.shape[-1], x.shape[-1])
            y, target = y[..., :n], x[..., :n]
            spectral = transport if args.loss == "transport" else _stft_loss
            loss = args.waveform_weight * (y - target).abs().mean() + spectral(y[0], target[0])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 100 == 0 or step == args.search_steps - 1:
                print(f"  search step {step}: loss {loss.item():.3f}; {_describe(y)}; "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
        print(f"  searched latent: neighbour cosine {_neighbour_cosine(z.detach()):.4f}", flush=True)


if __name__ == "__main__":
    main()
