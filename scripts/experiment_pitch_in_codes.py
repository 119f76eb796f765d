"""Does the codec's latent tell the phase-carrying decoder a steady tone's pitch, and can it learn to?

An experiment (docs/models.md, "Is the pitch in the codes?"). The phase-carrying D0
(:mod:`flowdec_cli.phase_decoder`, ungated and locked) is trained on random steady tones only (F0
log-uniform in 100-2,000 Hz, random phase and level, half of them with two harmonics; 8 x 0.5 s a batch),
with DAC's mel loss plus the 8,192-point window and the advance loss of
``scripts/experiment_phase_decoder.py``, coded at ``--codebooks`` codebooks. Variants:

* the codec's encoder and codebooks fixed (the control);
* ``--joint``: the encoder and quantizer learn with the decoder (DAC's 0.25 commitment + 1 codebook loss);
* ``--no-quant``: the decoder reads the encoder's latent before quantisation;
* ``--oracle``: the first 16 of the latent's 64 channels are replaced by an embedding of the true F0, so the
  decoder is told the pitch: what it can learn when its input carries it.

Every ``--report-every`` steps it prints the strongest partial of fresh 3 s sines (phase 0.7) at the
``--freqs`` pitches, and at the end writes RUN.pt (decoder, encoder, quantizer, optimiser, step count) for
``--diagnose``, which prints, for each test tone, the played advance's error and the log-magnitude at the
bins around it. ``--resume`` goes on from a RUN.pt.

    python scripts/experiment_pitch_in_codes.py --out RUN.pt [--init OTHER/decoder.pt] [--joint]
        [--no-quant] [--oracle] [--minutes 25] [--device cuda]
    python scripts/experiment_pitch_in_codes.py --out LONGER.pt --resume RUN.pt --seed 1 [--joint] ...
    python scripts/experiment_pitch_in_codes.py --diagnose RUN.pt [--oracle]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from experiment_phase_decoder import MEL_BINS, MEL_WINDOWS, advance_loss, build, load_codec, sine
from experiment_tone_pitch import RATE, partials

FREQS = (220.0, 440.0, 523.25, 660.0, 880.0, 1000.0, 1760.0)
ORACLE_CHANNELS = 16


def f0_embedding(f0s: np.ndarray, frames: int) -> torch.Tensor:
    """[B, 16, frames]: sines and cosines of the log-F0 (0 at 100 Hz, 1 at 2 kHz) at eight scales, at about
    the latent's per-channel size. ``f0s``: one F0 per item [B], or one per frame [B, frames] where 0 (an
    unvoiced frame) embeds as zeros."""
    f0s = np.asarray(f0s, dtype=np.float64)
    per_frame = f0s.ndim == 2
    voiced = f0s > 0
    u = (np.log2(np.where(voiced, f0s, 100.0)) - np.log2(100.0)) / np.log2(20.0)
    feats = [fn(np.pi * 2 ** j * u) * voiced for j in range(ORACLE_CHANNELS // 2) for fn in (np.sin, np.cos)]
    emb = torch.from_numpy(3.0 * np.stack(feats, 1).astype(np.float32))
    return emb if per_frame else emb[:, :, None].expand(-1, -1, frames)


def frame_f0(x: np.ndarray, sr: int, hop: int, frames: int, fmin: float = 60.0, fmax: float = 2000.0,
             threshold: float = 0.15) -> np.ndarray:
    """[frames] F0 (Hz) of ``x`` [L] per codec frame by YIN (a 2,048-sample window centred on each frame,
    cumulative-mean-normalised difference, first dip below ``threshold``, parabolic refinement); 0 where
    the frame is unvoiced or near silent. What an F0 side channel could send, estimated from the input."""
    win, lo, hi = 2048, int(sr / fmax), int(sr / fmin) + 2
    level = np.sqrt(np.mean(x ** 2)) if len(x) else 0.0
    pad = np.pad(x.astype(np.float64), (win, win + hop * frames))
    out = np.zeros(frames)
    for i in range(frames):
        centre = win + i * hop + hop // 2
        w = pad[centre - win // 2: centre + win // 2 + hi]
        if np.sqrt(np.mean(w[:win] ** 2)) < max(1e-4, 0.03 * level):
            continue
        a = w[:win]
        energy = np.cumsum(w ** 2)
        spec = np.fft.rfft(w, 2 * len(w))
        corr = np.fft.irfft(np.fft.rfft(a, 2 * len(w)).conj() * spec)[:hi]
        d = energy[win - 1] + (energy[win - 1 + np.arange(hi)] - np.concatenate([[0.0], energy[:hi - 1]])) - 2 * corr
        d[0] = 0.0
        cmnd = d * np.arange(hi) / np.maximum(np.cumsum(d), 1e-12)
        cmnd[0] = 1.0
        below = np.flatnonzero(cmnd[lo:hi - 1] < threshold)
        if not len(below):
            continue
        tau = lo + below[0]
        while tau + 1 < hi - 1 and cmnd[tau + 1] < cmnd[tau]:
            tau += 1
        a0, a1, a2 = cmnd[tau - 1], cmnd[tau], cmnd[tau + 1]
        shift = 0.5 * (a0 - a2) / (a0 - 2 * a1 + a2) if (a0 - 2 * a1 + a2) > 0 else 0.0
        out[i] = sr / (tau + shift)
    return out


def quantised(ndac, x: torch.Tensor, codebooks: int, no_quant: bool) -> tuple[torch.Tensor, ...]:
    """(latent the decoder reads, commitment loss, codebook loss) of ``x`` [B, 1, L]."""
    z = ndac.encoder(ndac.pad_to_hop(x))
    if no_quant:
        return z, z.new_zeros(()), z.new_zeros(())
    # the codec is in eval mode (build): its quantizer codes every item at ``codebooks``, no dropout
    zq, _codes, _latents, commitment, codebook = ndac.quantizer(z, n_quantizers=codebooks)
    return zq, commitment, codebook


def decoder_input(args: argparse.Namespace, ndac, x: torch.Tensor, f0s: np.ndarray) -> tuple[torch.Tensor, ...]:
    zq, commitment, codebook = quantised(ndac, x, args.codebooks, args.no_quant)
    if args.oracle:
        zq = torch.cat([f0_embedding(f0s, zq.shape[-1]).to(zq.device), zq[:, ORACLE_CHANNELS:]], 1)
    return zq, commitment, codebook


def pitches(args: argparse.Namespace, ndac, decoder) -> list[float]:
    decoder.eval()
    with torch.no_grad():
        out = [round(partials(decoder(decoder_input(args, ndac, sine(f).to(args.device), np.array([f]))[0])
                              [0, 0].cpu().numpy())[0][0], 1) for f in args.freqs]
    decoder.train()
    return out


def tone_batch(rng: np.random.Generator, batch: int, samples: int) -> tuple[torch.Tensor, np.ndarray]:
    t = np.arange(samples) / RATE
    f0 = np.exp(rng.uniform(np.log(100.0), np.log(2000.0), batch))
    phase = rng.uniform(0, 2 * np.pi, batch)
    level = rng.uniform(0.05, 0.5, batch)
    x = level[:, None] * np.sin(2 * np.pi * f0[:, None] * t + phase[:, None])
    half = batch // 2
    x[:half] += 0.5 * level[:half, None] * np.sin(4 * np.pi * f0[:half, None] * t + 2 * phase[:half, None])
    x[:half] += 0.25 * level[:half, None] * np.sin(6 * np.pi * f0[:half, None] * t)
    return torch.from_numpy(x.astype(np.float32))[:, None], f0


def diagnose(args: argparse.Namespace, ndac, decoder) -> None:
    decoder.eval()
    width = RATE / decoder.n_fft
    for f in args.freqs:
        with torch.no_grad():
            zq = decoder_input(args, ndac, sine(f).to(args.device), np.array([f]))[0]
            log_mag, deviation = (v.cpu() for v in decoder.frames(zq)[:2])
            played_hz = partials(decoder(zq)[0, 0].cpu().numpy())[0][0]
        k = int(round(f / width))
        target = 2 * np.pi * f * decoder.frame_hop / RATE
        rows = []
        for b in (k - 1, k, k + 1):
            advance = float(decoder.bin_advance[b]) + deviation[0, b, 50:-50].numpy()
            err = np.angle(np.exp(1j * (advance - target)))
            rows.append(f"bin {b} ({b * width:.0f} Hz): log-magnitude {float(log_mag[0, b, 50:-50].mean()):.1f}, "
                        f"advance error {float(np.abs(err).mean()):.2f} rad")
        print(f"{f:g} Hz plays {played_hz:.1f} Hz | " + " | ".join(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="where to write the trained weights (RUN.pt)")
    ap.add_argument("--diagnose", type=Path, help="instead of training: report on this RUN.pt")
    ap.add_argument("--init", type=Path, default=None, help="start the decoder from this decoder.pt")
    ap.add_argument("--resume", type=Path, default=None,
                    help="go on from this RUN.pt (decoder, encoder, quantizer, and the optimiser if saved)")
    ap.add_argument("--seed", type=int, default=0, help="of the tone batches (give a resumed run a new one)")
    ap.add_argument("--joint", action="store_true", help="train the encoder and quantizer too")
    ap.add_argument("--no-quant", action="store_true", help="the decoder reads the unquantised latent")
    ap.add_argument("--oracle", action="store_true", help="tell the decoder the true F0")
    ap.add_argument("--codebooks", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=25.0)
    ap.add_argument("--lr", type=float, default=2e-4, help="the decoder's learning rate")
    ap.add_argument("--lr-encoder", type=float, default=1e-4)
    ap.add_argument("--report-every", type=int, default=200)
    ap.add_argument("--freqs", type=lambda s: [float(v) for v in s.split(",")], default=list(FREQS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    args = ap.parse_args()
    if (args.out is None) == (args.diagnose is None):
        ap.error("give --out (train) or --diagnose (report)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from flowdec_cli.training.losses import MultiScaleMelLoss

    build_args = argparse.Namespace(model=None, device=args.device, dim=192, intermediate=576, blocks=5, no_gate=True,
                                    lock=True)
    ndac, decoder = build(build_args, trainable=True)
    run = args.diagnose if args.diagnose is not None else args.resume
    state = torch.load(run, map_location=args.device, weights_only=True) if run is not None else {}
    if state:
        decoder.load_state_dict(state["decoder"])
        load_codec(ndac, state)
    if args.diagnose is not None:
        diagnose(args, ndac, decoder)
        return
    if args.init is not None and not state:
        decoder.load_state_dict(torch.load(args.init, map_location=args.device, weights_only=True)["decoder"])
    frames, played = decoder.frames, {}

    def frames_kept(z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = frames(z)
        played["deviation"] = out[1]
        return out

    decoder.frames = frames_kept  # type: ignore[method-assign]
    mel = MultiScaleMelLoss(RATE, MEL_WINDOWS, MEL_BINS).to(args.device)
    groups = [{"params": list(decoder.parameters()), "lr": args.lr}]
    if args.joint:
        ndac.encoder.requires_grad_(True)
        ndac.quantizer.requires_grad_(True)
        groups.append({"params": [*ndac.encoder.parameters(), *ndac.quantizer.parameters()], "lr": args.lr_encoder})
    opt = torch.optim.AdamW(groups, betas=(0.8, 0.99), weight_decay=0.0)
    saved_groups = state["optimizer"]["param_groups"] if "optimizer" in state else []
    if [len(g["params"]) for g in saved_groups] == [len(g["params"]) for g in groups]:  # else a fresh AdamW
        opt.load_state_dict(state["optimizer"])
    trained = [p for g in groups for p in g["params"]]
    rng = np.random.default_rng(args.seed)
    step = int(state.get("step", 0))
    samples = int(0.5 * RATE) // ndac.hop_length * ndac.hop_length
    print(json.dumps({"step": step, "pitch": pitches(args, ndac, decoder)}), flush=True)
    t0, losses = time.time(), []
    while time.time() - t0 < args.minutes * 60:
        x, f0 = tone_batch(rng, 8, samples)
        x = x.to(args.device)
        with torch.set_grad_enabled(args.joint):
            zq, commitment, codebook = decoder_input(args, ndac, x, f0)
        y = decoder(zq)
        loss = mel(y, x[..., :y.shape[-1]]) + advance_loss(decoder, played["deviation"].float(), x[..., :y.shape[-1]])
        if args.joint:
            loss = loss + 0.25 * commitment + codebook
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1000.0)
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        if step % args.report_every == 0:
            print(json.dumps({"step": step, "minutes": round((time.time() - t0) / 60, 1),
                              "loss": round(float(np.mean(losses)), 3), "pitch": pitches(args, ndac, decoder)}),
                  flush=True)
            losses = []
    print(json.dumps({"step": step, "final": pitches(args, ndac, decoder)}), flush=True)
    torch.save({"decoder": decoder.state_dict(), "encoder": ndac.encoder.state_dict(),
                "quantizer": ndac.quantizer.state_dict(), "optimizer": opt.state_dict(), "step": step}, args.out)


if __name__ == "__main__":
    main()
