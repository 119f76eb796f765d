"""Does the postfilter, told the input's pitch, draw the voice's harmonics where they belong?

An experiment (docs/models.md, "The postfilter told the pitch"). PESQ-WB on speech is the target furthest
from being met, and "Where PESQ-WB loses" found why: the coded voice's harmonics lie in the wrong places
(below 1 kHz above all), and the postfilter, trained towards the clean magnitudes under the coded phase,
would take PESQ-WB from 1.5 to 2.6 if it reached them, but cannot tell from the coded sound where the true
harmonics were. Here it is told: the shipped postfilter gets a harmonic template of the input's F0 per
frame (YIN, ``experiment_pitch_in_codes.frame_f0``, on the clean signal: what an encoder could send),
``cos`` and ``sin`` of ``2 pi f / F0`` at each bin's centre frequency ``f`` (zeros where unvoiced), through
two added paths that start at zero, so training starts from exactly the shipped model: a 1x1 projection of
the template into the body's first activations (no bias, so a zero template adds nothing), and per-bin
weights that add it straight onto the head's three outputs (log q, Re c, Im c). Both are forward hooks on
the shipped backbone; nothing of ``flowdec_cli`` changes.

It is fine-tuned with the trainer's objective (joint flow matching, clean magnitudes under the coded phase)
on (clean, coded) pairs from ``flowdec train prepare-pairs`` (the built-in codec at ``-b 7.5``'s layout),
and scored on every validation speech clip (first 4 s) through the real decoder at ``-b 7.5``, NFE 6,
seed 0: the shipped postfilter, the fine-tuned one told the F0, and the same told nothing (a zero template);
what the fine-tune alone does is the control run's (``--no-f0``: the same data, noise and steps). For
music and sounds ``--score`` gives ViSQOL and the mel distance instead of PESQ-WB and STOI.

    python scripts/experiment_postfilter_f0.py --pairs PAIRS/train.txt --out RUN [--minutes 60 | --steps N]
        [--threads 1] [--no-f0 | --f0-from coded] [--init EARLIER_RUN --seed 1] [--layout f0-24ms]
    python scripts/experiment_postfilter_f0.py --out RUN --score [--f0-from coded] [--corpus /work/corpus]
        [--category speech|music|sounds] [--clips-in HELDOUT_DIR] [--f0-every 3 --f0-cents 50]
    python scripts/experiment_postfilter_f0.py --out RUN --export POSTFILTER_FOLDER
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

MODEL = "flowdec-small"
TEMPLATE_TOP_HZ = 8000.0  # bins above carry no template: a small error of F0 is many bins off there


class PitchHooks(nn.Module):
    """The two added paths, and the template of the current forward (set with :meth:`tell`)."""

    def __init__(self, backbone: nn.Module, sample_rate: int, n_fft: int) -> None:
        super().__init__()
        n, dim = backbone.n_freqs, backbone.dim
        self.project = nn.Conv1d(2 * n, dim, 1, bias=False)
        nn.init.zeros_(self.project.weight)
        self.direct = nn.Parameter(torch.zeros(2, 3 * n))
        self.register_buffer("freqs", torch.arange(n, dtype=torch.float64) * sample_rate / n_fft)
        self.template: torch.Tensor | None = None
        backbone.embed.register_forward_hook(self._after_embed)
        backbone.head.register_forward_hook(self._after_head)

    def tell(self, f0: np.ndarray | None) -> None:
        """``f0``: [B, frames] Hz (0 unvoiced), or None for no template."""
        if f0 is None:
            self.template = None
            return
        f = torch.as_tensor(f0, dtype=torch.float64)[:, None, :]  # [B, 1, T]
        voiced = (f > 0).to(torch.float64)
        ratio = self.freqs[None, :, None] / f.clamp(min=1.0)  # [B, F, T]
        keep = (self.freqs <= TEMPLATE_TOP_HZ).to(torch.float64)[None, :, None] * voiced
        angle = 2 * torch.pi * ratio
        self.template = torch.cat([torch.cos(angle) * keep, torch.sin(angle) * keep], 1).float()

    def _fit(self, frames: int) -> torch.Tensor:
        assert self.template is not None
        t = self.template
        if t.shape[-1] < frames:  # the solver pads to a multiple of frames: no pitch there
            t = torch.nn.functional.pad(t, (0, frames - t.shape[-1]))
        return t[..., :frames]

    def _after_embed(self, module, inputs, out):
        if self.template is None:
            return out
        return out + self.project(self._fit(out.shape[-1]).to(out.dtype))

    def _after_head(self, module, inputs, out):  # out: [B, T, 3F]
        if self.template is None:
            return out
        t = self._fit(out.shape[1])
        n = t.shape[1] // 2
        cos, sin = t[:, :n].repeat(1, 3, 1), t[:, n:].repeat(1, 3, 1)  # [B, 3F, T]
        add = self.direct[0][None, :, None] * cos + self.direct[1][None, :, None] * sin
        return out + add.transpose(1, 2).to(out.dtype)


def frame_f0s(x: torch.Tensor, hop: int, frames: int) -> np.ndarray:
    """[B, frames] F0 of clean audio [B, 1, L] at 48 kHz per centred STFT frame (frame i at sample i * hop)."""
    from experiment_pitch_in_codes import frame_f0

    out = np.zeros((x.shape[0], frames))
    for b in range(x.shape[0]):
        sig = np.pad(x[b, 0].numpy().astype(np.float64), (hop // 2, 0))  # frame_f0 centres at i*hop + hop/2
        out[b] = frame_f0(sig, 48000, hop, frames)
    return out


def sent_f0s(x: torch.Tensor, hop: int, frames: int, layout: str) -> np.ndarray:
    """[B, frames] F0 of clean audio [B, 1, L] at 48 kHz as the decoder gets it from a file's pitch side
    channel of ``layout`` (:mod:`flowdec_cli.pitch`: the encoder's YIN, its grid, held over the frames)."""
    from flowdec_cli import pitch

    lay = pitch.pitch_layout(layout)
    return pitch.frame_track(lay, pitch.steps_of_signal(lay, x[:, 0].numpy()), frames, hop)


def as_sent(f0: np.ndarray, every: int, cents: float) -> np.ndarray:
    """``f0`` [frames] as a side channel would carry it: one value every ``every`` frames (held, the voicing
    with it) and log-F0 rounded to ``cents`` (0: exact)."""
    kept = f0[::every]
    if cents > 0:
        voiced = kept > 0
        steps = np.round(1200 * np.log2(np.where(voiced, kept, 1.0) / 55.0) / cents)
        kept = np.where(voiced, 55.0 * 2 ** (steps * cents / 1200), 0.0)
    return np.repeat(kept, every)[: len(f0)]


def load(out: Path | None = None):
    from flowdec_cli.models import load_postfilter

    pf = load_postfilter(MODEL)
    fe = pf.feature_extractor
    hooks = PitchHooks(pf.backbone, pf.sample_rate, fe.n_fft)
    if out is not None:
        state = torch.load(out / "postfilter_f0.pt", weights_only=True)
        pf.backbone.load_state_dict(state["backbone"])
        hooks.load_state_dict(state["hooks"])
        print(f"{out}: step {state['step']}")
    return pf, hooks


def export(run: Path, dest: Path) -> None:
    """RUN's weights as a postfilter component folder that reads pitch the way flowdec does
    (``pitch_top_hz`` 8000: the hooks' two paths become the backbone's own, computing exactly what they
    did), for ``flowdec train export --postfilter``."""
    from flowdec_cli.postfilter import Postfilter

    pf, hooks = load(run)
    config = pf.config
    config["framewise"] = {**config["framewise"], "pitch_top_hz": int(TEMPLATE_TOP_HZ)}
    out = Postfilter.from_config(config)
    k, n = len(out.backbone._pitch_bin_hz), pf.backbone.n_freqs
    weight, direct = hooks.project.weight.detach(), hooks.direct.detach()
    # the template is zero above the top bin, so nothing was learnt there
    assert not weight[:, k:n].any() and not weight[:, n + k:].any() and not direct.reshape(2, 3, n)[:, :, k:].any()
    state = dict(pf.state_dict())
    state["backbone.pitch_embed.weight"] = torch.cat([weight[:, :k], weight[:, n:n + k]], 1)
    state["backbone.pitch_head"] = direct.reshape(2, 3, n)[:, :, :k].clone()
    out.load_official_state_dict(state, str(run))
    out.save(dest)
    print(f"{dest}: the postfilter of {run}, pitch_top_hz {int(TEMPLATE_TOP_HZ)}")


def train(args: argparse.Namespace) -> None:
    from flowdec_cli.training.data import PairDataset, read_pairs
    from flowdec_cli.training.losses import flow_matching_loss, flow_matching_targets, with_coded_phase

    pf, hooks = load(args.init)
    pf.train()
    for p in pf.backbone.parameters():
        p.requires_grad_(True)
    fe = pf.feature_extractor
    pairs = read_pairs([args.pairs], ",")
    ds = PairDataset(pairs, pf.sample_rate, int(args.seconds * pf.sample_rate), seed=0, train=True)
    opt = torch.optim.Adam([{"params": list(pf.backbone.parameters()), "lr": args.lr},
                            {"params": list(hooks.parameters()), "lr": args.lr_new}])
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "log.jsonl").open("a")
    t0, step, losses = time.time(), 0, []

    def save() -> None:
        torch.save({"backbone": pf.backbone.state_dict(), "hooks": hooks.state_dict(), "step": step},
                   args.out / "postfilter_f0.pt")

    while time.time() - t0 < args.minutes * 60 and (args.steps is None or step < args.steps):
        items = [ds[(step, int(rng.integers(len(ds))))] for _ in range(args.batch)]
        x = torch.stack([it[0] for it in items])
        y = torch.stack([it[1] for it in items])
        with torch.no_grad():
            Y, normfac, _ = fe(y)
            X, _, _ = fe(x, normfac)
            X = with_coded_phase(X, Y)
            t = torch.rand(len(items))
            eps = torch.randn(Y.shape, dtype=torch.complex64)
            x_t, u = flow_matching_targets(X, Y, pf.sigma_y, t, eps)
            source = x if args.f0_from == "clean" else y
            f0 = None if args.no_f0 else (sent_f0s(source, fe.hop_length, Y.shape[-1], args.layout) if args.layout
                                          else frame_f0s(source, fe.hop_length, Y.shape[-1]))
            if f0 is not None and not args.layout and (args.f0_every > 1 or args.f0_cents > 0):
                f0 = np.stack([as_sent(track, args.f0_every, args.f0_cents) for track in f0])
            hooks.tell(f0)
        v = pf.backbone(x_t, Y, t, sigma_y=pf.sigma_y)
        loss, _ = flow_matching_loss(v, u)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(pf.backbone.parameters()) + list(hooks.parameters()), 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        if step % 50 == 0:
            rec = {"step": step, "minutes": round((time.time() - t0) / 60, 2), "loss": round(np.mean(losses), 4),
                   "direct": round(float(hooks.direct.abs().mean()), 5),
                   "project": round(float(hooks.project.weight.abs().mean()), 6)}
            losses = []
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if step % 250 == 0:
            save()
    save()


def score(args: argparse.Namespace) -> None:
    import soundfile as sf
    import soxr

    from flowdec_cli.evaluation.metrics import mel_distance, pesq_wb, stoi, visqol
    from flowdec_cli.pipeline import Codec

    codec = Codec.load(MODEL, device="cpu")
    shipped = {k: v.clone() for k, v in codec.postfilter.backbone.state_dict().items()}  # loads copy into it
    pf, hooks = load(args.out)
    tuned = pf.backbone.state_dict()
    backbone = codec.postfilter.backbone
    codec_hooks = PitchHooks(backbone, pf.sample_rate, pf.feature_extractor.n_fft)
    codec_hooks.load_state_dict(hooks.state_dict())
    hop = pf.feature_extractor.hop_length
    if args.clips_in is not None:  # a build_heldout_set.py folder: audio/<category>/*
        names = sorted(str(f) for f in (args.clips_in / "audio" / args.category).iterdir())[: args.clips]
    else:
        names = (args.corpus / f"valid_{args.category}.txt").read_text().split()[: args.clips]
    metrics = ({"PESQ-WB": pesq_wb, "STOI": stoi} if args.category == "speech" else {"ViSQOL": visqol})
    metrics["mel distance"] = mel_distance
    rows = {k: [] for k in ("shipped", "told F0", "zero template", "NFE 0")}
    for name in names:
        audio, sr = sf.read(args.corpus / name, dtype="float32", always_2d=True)
        audio = audio[: int(4 * sr)]  # one chunk of the decoder's postfilter, so the template's frames are its own
        header, codes = codec.compress_array(audio, sr, bitrate_kbps=7.5)
        d0 = codec.decompress_codes(header, codes, nfe=0)  # D0 alone: neither weights nor template reach it
        x48 = soxr.resample((audio if args.f0_from == "clean" else d0).astype(np.float64), sr, 48000)
        x48 = torch.from_numpy(x48.T.copy())[:, None]
        f0 = (sent_f0s(x48, hop, x48.shape[-1] // hop + 1, args.layout) if args.layout
              else frame_f0s(x48, hop, x48.shape[-1] // hop + 1))  # [channels, frames]
        if not args.layout and (args.f0_every > 1 or args.f0_cents > 0):
            f0 = np.stack([as_sent(track, args.f0_every, args.f0_cents) for track in f0])
        for label, state, f in (("shipped", shipped, None), ("told F0", tuned, f0),
                                ("zero template", tuned, np.zeros_like(f0))):
            backbone.load_state_dict(state)
            codec_hooks.tell(f)
            out = codec.decompress_codes(header, codes, nfe=6, seed=0)
            rows[label].append([fn(audio, out, sr) for fn in metrics.values()])
        rows["NFE 0"].append([fn(audio, d0, sr) for fn in metrics.values()])
        print(name, {k: [round(v, 3) for v in r[-1]] for k, r in rows.items()}, flush=True)
    first = next(iter(metrics))
    print(f"{args.category}, {len(names)} clips, 7.5 kbit/s: {' / '.join(metrics)} (means)")
    for k, r in rows.items():
        up = sum(1 for s, o in zip(r, rows["shipped"]) if s[0] > o[0])
        print(f"  {k:14s} {' / '.join(f'{v:.4f}' for v in np.array(r).mean(0))}  ({first} above the shipped "
              f"postfilter's on {up} of {len(r)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--pairs", type=Path, help="a prepare-pairs train.txt (clean,coded per line)")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--steps", type=int, default=None, help="stop after this many steps (or --minutes)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=0.75)
    ap.add_argument("--lr", type=float, default=1e-4, help="the shipped backbone's learning rate")
    ap.add_argument("--lr-new", type=float, default=1e-3, help="the added paths' learning rate")
    ap.add_argument("--no-f0", action="store_true", help="fine-tune without the template (the control)")
    ap.add_argument("--init", type=Path, default=None,
                    help="go on from RUN's weights (a fresh optimiser; give another --seed for other crops)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--f0-from", choices=("clean", "coded"), default="clean",
                    help="estimate the F0 from the clean input (a side channel would send it) or from the coded "
                         "signal the postfilter refines (free: the codec keeps a voice's low harmonics in place)")
    ap.add_argument("--score", action="store_true", help="score RUN instead of training")
    ap.add_argument("--export", type=Path, default=None,
                    help="write RUN's weights as a postfilter folder that reads pitch (flowdec's own paths)")
    ap.add_argument("--category", default="speech", choices=("speech", "music", "sounds"))
    ap.add_argument("--corpus", type=Path, default=Path("/work/corpus"))
    ap.add_argument("--clips", type=int, default=None, help="--score: only the first N clips")
    ap.add_argument("--clips-in", type=Path, default=None,
                    help="--score: the clips of a scripts/build_heldout_set.py folder, not the corpus's validation")
    ap.add_argument("--f0-every", type=int, default=1,
                    help="tell one F0 every N postfilter frames (8 ms each), held between, as a side channel at "
                         "a lower frame rate would (in training and in --score)")
    ap.add_argument("--f0-cents", type=float, default=0.0,
                    help="log-F0 rounded to this many cents (0: exact; in training and in --score)")
    ap.add_argument("--layout", default="", help="take the F0 as a file's pitch side channel of this layout "
                    "sends it (flowdec_cli.pitch, e.g. f0-24ms), in training and in --score, instead of the "
                    "experiment's own YIN")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.export is not None:
        export(args.out, args.export)
    elif args.score:
        score(args)
    elif args.pairs is None:
        ap.error("give --pairs to train (or --score)")
    else:
        train(args)


if __name__ == "__main__":
    main()
