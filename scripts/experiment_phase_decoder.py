"""Train a phase-carrying frame-wise D0 (flowdec_cli.phase_decoder) behind a fixed codec's encoder and codes.

An experiment (docs/models.md, "A decoder that carries phase"): the built-in codec's encoder codes a steady
tone's magnitude, not its phase, and its convolutional decoder then plays every partial above ~400 Hz on
the 75 Hz comb. A decoder whose phase runs on from frame to frame can play such codes at the right pitch.
The encoder and codebooks stay as they are (so codes, .fdc files and entropy tables are unchanged); only a
new decoder learns, from new weights, with DAC's multi-scale mel loss plus an 8,192-point window (6 Hz
bins, so a partial's place counts) and no waveform loss (its phase is its own). Each item is coded at a
codebook count drawn from ``--codebooks``.

With ``--advance-weight`` the decoder's phase advances are also taught directly: a magnitude-weighted,
wrap-free distance between each bin's predicted advance and the reference's own (the phase difference of
consecutive frames of the reference's STFT at the decoder's window and hop). The mel loss alone leaves a
partial at a wrong pitch (its gradient with respect to an advance points nowhere once the partial is a bin
or more away); this term is convex around the right advance. ``--init RUN/decoder.pt`` starts from another
run's weights (a fresh optimiser and schedule).

With ``--joint`` the encoder and codebooks learn too (DAC's 0.25 commitment and codebook losses beside
the decoder's, ``--lr-encoder`` on the same log-linear schedule), so the codes themselves can come to
carry what the decoder needs, a steady tone's pitch above all ("Is the pitch in the codes?" in
docs/models.md); ``--from-run RUN.pt`` starts decoder, encoder and codebooks from a
``scripts/experiment_pitch_in_codes.py`` run or a joint run of this script (without ``--joint`` the encoder
and codebooks then stay that run's: a decoder learns behind its codes, and its checkpoint keeps them).
Validation then compares the new codec with the shipped one on their own codes, and prints the pitch that
fresh 3 s sines come out at (4 codebooks).

``--transport-weight`` adds the codec trainer's spectral transport loss (an earth mover's distance between
magnitude spectra along frequency, at 2,048 and 8,192 points): where the mel loss sees a partial one bin
off as wrong as one an octave off, this falls steadily as the partial moves towards its place, on real
audio as on tones.

    python scripts/experiment_phase_decoder.py --out RUN [--corpus /work/corpus] [--minutes 90]
        [--threads 1] [--resume] [--init OTHER/decoder.pt] [--advance-weight 1.0]
        [--output-advance-weight 1.0] [--no-gate | --lock] [--also TONES_DIR/train.txt]
        [--joint --lr-encoder 1e-3 --from-run PITCH_RUN.pt] [--transport-weight 1.0] [--f0]
    python scripts/experiment_phase_decoder.py --out RUN --no-gate --lock --score speech|music|sounds
    python scripts/experiment_phase_decoder.py --out RUN --no-gate --lock --export MODEL_DIR

Writes RUN/decoder.pt (weights, optimiser, step) every ``--save-every`` steps and RUN/log.jsonl;
validation compares the new decoder's mel distance with the codec's own D0 on the same codes.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

MEL_WINDOWS = (32, 64, 128, 256, 512, 1024, 2048, 8192)
MEL_BINS = (5, 10, 20, 40, 80, 160, 320, 640)


def build(args: argparse.Namespace, trainable: bool = False):
    """The codec (weights frozen) and a new phase decoder. ``trainable``: the codec keeps its weight-norm
    pairs, so its encoder and codebooks can learn; an inference load folds them into buffers that are
    neither parameters nor saved."""
    from flowdec_cli.models import load_ndac
    from flowdec_cli.models.loading import ndac_from_folder
    from flowdec_cli.models.resolve import resolve
    from flowdec_cli.phase_decoder import PhaseDecoder

    model = args.model or "flowdec-small"
    ndac = (ndac_from_folder(resolve(model) / "ndac").to(args.device) if trainable
            else load_ndac(model, args.device)).eval()
    ndac.requires_grad_(False)
    decoder = PhaseDecoder(int(ndac.config.latent_dim), ndac.hop_length, dim=args.dim,  # type: ignore[arg-type]
                           intermediate_dim=args.intermediate, num_blocks=args.blocks,
                           gate=not (args.no_gate or args.lock), lock=args.lock)
    return ndac, decoder.to(args.device)


def load_codec(ndac, state: dict) -> None:
    """Put a run's encoder and codebooks into ``ndac`` (built ``trainable``).

    Runs before 2026-12-07's third session trained a folded codec, whose convolution weights were buffers
    outside the optimiser and the saved state: only biases, Snake alphas and codebook vectors learned. Their
    states lack the weight-norm pairs, which then stay the shipped ones, as they were in those runs."""
    for name in ("encoder", "quantizer"):
        missing, unexpected = getattr(ndac, name).load_state_dict(state[name], strict=False)
        stray = [k for k in missing if not k.endswith(("weight_g", "weight_v"))] + list(unexpected)
        if stray:
            raise RuntimeError(f"the run's {name} does not fit this codec: {', '.join(stray[:5])}")


def latents(ndac, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """The quantised latent of each item of ``x`` [B,1,L] at its own codebook count."""
    with torch.no_grad():
        z = ndac.encoder(ndac.pad_to_hop(x))
        codes = ndac.quantizer(z, n_quantizers=ndac.n_codebooks)[1]
        return torch.cat([ndac.quantizer.from_codes(codes[i:i + 1, :k]) for i, k in enumerate(counts)])


def decoder_input(ndac, x: torch.Tensor, counts: list[int], f0: bool = False) -> torch.Tensor:
    """What the new decoder reads for ``x`` [B,1,L]: its codes' latent at each item's codebook count, with
    the input's F0 in its first channels when the run was ``--f0``."""
    zq = latents(ndac, x, counts)
    return with_f0(zq, x, ndac.sample_rate, ndac.hop_length) if f0 else zq


def sine(f0: float, seconds: float = 3.0) -> torch.Tensor:
    """[1, 1, L]: a test tone at amplitude 0.3 and phase 0.7 (not a multiple of the codec's hop's cycle)."""
    from experiment_tone_pitch import RATE  # a sibling script: importable when this one runs as a script

    t = np.arange(int(seconds * RATE)) / RATE
    return torch.from_numpy((0.3 * np.sin(2 * np.pi * f0 * t + 0.7)).astype(np.float32))[None, None]


def tone_pitches(ndac, decoder, freqs: tuple[float, ...] = (220.0, 440.0, 523.25, 660.0, 880.0, 1000.0, 1760.0),
                 codebooks: int = 4, seconds: float = 3.0, f0: bool = False) -> list[float]:
    """The strongest partial (Hz) that fresh sines come out at through the codec (``f0``: with the F0 the
    input's estimate gives in the decoder's input, as the run trained)."""
    from experiment_tone_pitch import partials

    device = next(decoder.parameters()).device
    out = []
    with torch.no_grad():
        for f in freqs:
            zq = decoder_input(ndac, sine(f, seconds).to(device), [codebooks], f0)
            out.append(round(partials(decoder(zq)[0, 0].cpu().numpy())[0][0], 1))
    return out


def with_f0(zq: torch.Tensor, x: torch.Tensor, sr: int, hop: int) -> torch.Tensor:
    """``zq`` [B, C, T] with its first 16 channels replaced by the per-frame F0 that YIN estimates from the
    input ``x`` [B, 1, L] (zeros where unvoiced): what an F0 side channel would tell the decoder."""
    from experiment_pitch_in_codes import ORACLE_CHANNELS, f0_embedding, frame_f0

    track = np.stack([frame_f0(item[0].detach().cpu().numpy(), sr, hop, zq.shape[-1]) for item in x])
    return torch.cat([f0_embedding(track, zq.shape[-1]).to(zq.device), zq[:, ORACLE_CHANNELS:]], 1)


def advance_loss(decoder, deviation: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """How far the advances the decoder played ([B, F, N] deviations from each bin's own) lie from the
    reference ``x`` [B, 1, L]'s, weighted by the reference's magnitude.

    Frame n of the decoder is centred on sample n * hop (its inverse STFT is centred), as is frame n of the
    reference's centred STFT; the advance played at frame n turns frame n - 1's phasor into frame n's. The
    two frames at each end, whose windows reach past the clip into the STFT's reflected padding, have no
    advance of their own and are left out."""
    edge, frames = 2, deviation.shape[-1]
    spec = torch.stft(x[:, 0], decoder.n_fft, decoder.frame_hop, window=decoder.window, center=True,
                      return_complex=True)[..., edge:frames - edge]
    target = torch.angle(spec[..., 1:] * spec[..., :-1].conj())
    played = decoder.bin_advance[:, None] + deviation[..., edge + 1:frames - edge]
    diff = played - target
    wrapped = (diff - 2 * torch.pi * torch.round(diff / (2 * torch.pi))).abs()  # in [0, pi]
    weight = torch.minimum(spec[..., 1:].abs(), spec[..., :-1].abs())
    return (weight * wrapped).sum() / weight.sum().clamp_min(1e-8)


def output_deviation(decoder, y: torch.Tensor, frames: int) -> torch.Tensor:
    """The advances [B, F, frames] of a waveform ``y`` [B, 1, L] as :func:`advance_loss` takes them (less
    each bin's own), read from its STFT at the decoder's window and hop: what the listener gets, which the
    overlap-add of frames that are not a consistent STFT can make other than what the decoder played."""
    spec = torch.stft(y[:, 0], decoder.n_fft, decoder.frame_hop, window=decoder.window, center=True,
                      return_complex=True)[..., :frames]
    turn = torch.angle(spec[..., 1:] * spec[..., :-1].conj() + 1e-12)
    return torch.cat([turn[..., :1], turn], -1) - decoder.bin_advance[:, None]


def export(args: argparse.Namespace) -> None:
    """A model folder like the codec's own (card, postfilter, entropy tables) whose D0 is RUN's decoder.

    Unless the run was ``--joint`` or started ``--from-run``, the encoder and codebooks are the codec's, so
    every code (and so every entropy table) is unchanged: the tables are re-tagged with the new weights' hash
    rather than rebuilt. Otherwise the codes are the run's own: its encoder and codebooks are written and the
    tables left out (they would price other codes; ``flowdec train entropy-tables`` builds new ones). The
    postfilter is the codec's, trained on the old D0's output."""
    import shutil

    from flowdec_cli.checkpoints import weights_hash
    from flowdec_cli.entropy import TABLES_FILE, load_tables, save_tables
    from flowdec_cli.models import save_ndac
    from flowdec_cli.models.loading import ndac_from_folder
    from flowdec_cli.models.resolve import resolve
    from flowdec_cli.ndac import NDAC, NDACConfig

    src = resolve(args.model or "flowdec-small")
    old = ndac_from_folder(src / "ndac")
    settings = {**old.config.to_dict(), "decoder_kind": "phase", "phase_dim": args.dim,
                "phase_intermediate_dim": args.intermediate, "phase_blocks": args.blocks,
                "phase_gate": not (args.no_gate or args.lock), "phase_lock": args.lock}
    model = NDAC(NDACConfig.from_kwargs(settings))
    ckpt = torch.load(args.out / "decoder.pt", map_location="cpu", weights_only=True)
    joint = bool(ckpt.get("joint", "encoder" in ckpt))
    own_codes = "encoder" in ckpt  # joint, or the codes of the run it started from (--from-run)
    model.encoder.load_state_dict(old.encoder.state_dict())
    model.quantizer.load_state_dict(old.quantizer.state_dict())
    if own_codes:
        load_codec(model, ckpt)
    model.decoder.load_state_dict(ckpt["decoder"])
    if args.export.exists():
        raise SystemExit(f"{args.export}: exists")
    shutil.copytree(src, args.export, ignore=shutil.ignore_patterns("ndac"))
    save_ndac(model, args.export / "ndac")
    tables_path = args.export / TABLES_FILE
    if own_codes:
        tables_path.unlink(missing_ok=True)
        print("the codes are the run's own: entropy tables left out (flowdec train entropy-tables builds them)")
    elif tables_path.is_file():
        tables = load_tables(tables_path)
        tables.ndac_hash = weights_hash(model.state_dict())
        tables_path.unlink()
        save_tables(tables, tables_path)
    card = json.loads((args.export / "flowdec.json").read_text())
    card["name"] = args.export.name
    what = ("the encoder, codebooks and" if joint else "another run's encoder and codebooks with a" if own_codes
            else "the built-in codec's encoder and codebooks with a")
    card["description"] = (f"{card.get('name')}: {what} phase-carrying frame-wise D0 trained {int(ckpt['step'])} "
                           f"steps{' together' if joint else ''} (scripts/experiment_phase_decoder.py)")
    (args.export / "flowdec.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {args.export} (decoder step {int(ckpt['step'])})")


def score(args: argparse.Namespace) -> None:
    """RUN's decoder against the codec's own D0 on its own codes, each without side channel or postfilter,
    on the corpus's validation clips of ``--score`` (a category: speech, music, sounds; 4 s each), at 4 and
    10 codebooks: PESQ-WB and STOI (speech) and the mel distance of ``flowdec eval``, per clip and mean."""
    from flowdec_cli.audio import read_audio
    from flowdec_cli.evaluation.metrics import compute_metrics
    from flowdec_cli.models import load_ndac

    ckpt = torch.load(args.out / "decoder.pt", map_location=args.device, weights_only=True)
    f0 = ckpt.get("settings", {}).get("f0") == "True"
    ndac, decoder = build(args, trainable="encoder" in ckpt)
    if "encoder" in ckpt:
        load_codec(ndac, ckpt)
    decoder.load_state_dict(ckpt["decoder"])
    decoder.eval()
    shipped = load_ndac(args.model or "flowdec-small", args.device).eval()
    sr = ndac.sample_rate
    names = ["pesq", "stoi", "mel"] if args.score == "speech" else ["mel"]
    clips = [line.strip() for line in (args.corpus / "valid.txt").read_text().splitlines()
             if f"/{args.score}/" in line]
    sums: dict[str, list[float]] = {}
    with torch.no_grad():
        for rel in clips:
            audio, rate = read_audio(args.corpus / rel)
            if rate != sr:
                raise SystemExit(f"{rel}: {rate} Hz, not the codec's {sr}")
            x = torch.from_numpy(audio[: 4 * sr, :1].T.copy()).float()[None].to(args.device)
            row = {"clip": Path(rel).name}
            for k in (4, 10):
                zq = decoder_input(ndac, x, [k], f0)
                for name, y in (("new", decoder(zq)), ("old", shipped.decoder(latents(shipped, x, [k])))):
                    y = y[0, 0, : x.shape[-1]].cpu().numpy()
                    scores = compute_metrics(x[0, 0].cpu().numpy(), sr, y, sr, names)
                    for m, v in scores.items():
                        row[f"{name}_nq{k}_{m}"] = round(v, 4)
                        sums.setdefault(f"{name}_nq{k}_{m}", []).append(v)
            print(json.dumps(row), flush=True)
    print(json.dumps({"clips": len(clips), "f0": f0, "step": int(ckpt["step"]),
                      **{k: round(float(np.nanmean(v)), 4) for k, v in sorted(sums.items())}}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--model", default=None, help="codec whose encoder and codes are used (default: built-in)")
    ap.add_argument("--corpus", default="/work/corpus", type=Path)
    ap.add_argument("--also", action="append", default=[], type=Path, metavar="SOURCE",
                    help="more training audio beside the corpus's (a folder or a file list; repeatable), "
                         "e.g. scripts/make_harmonic_tones.py's steady tones")
    ap.add_argument("--minutes", type=float, default=90.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=0, help="processes loading audio (0: this one)")
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--lr-final", type=float, default=5e-5)
    ap.add_argument("--codebooks", default="2,3,4,4,5,6,8,10", help="codebook counts drawn per item")
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--intermediate", type=int, default=576)
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--no-gate", action="store_true", help="carry every bin's phase always (no fresh phase)")
    ap.add_argument("--lock", action="store_true",
                    help="without a gate, pull each frame's phases together across neighbouring bins")
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--val-every", type=int, default=1000)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", type=Path, default=None, help="start from this decoder.pt's weights")
    ap.add_argument("--advance-weight", type=float, default=0.0,
                    help="weight of the phase-advance loss (0: mel loss only)")
    ap.add_argument("--output-advance-weight", type=float, default=0.0,
                    help="weight of the same loss on the advances of the decoder's output waveform")
    ap.add_argument("--transport-weight", type=float, default=0.0,
                    help="weight of the spectral transport loss (earth mover's distance along frequency at 2,048 "
                         "and 8,192 points): a partial's distance from its place, priced on every item")
    ap.add_argument("--f0", action="store_true",
                    help="replace the latent's first 16 channels with the input's per-frame F0 (YIN; zeros where "
                         "unvoiced): whether a decoder told the pitch keeps it beside real audio")
    ap.add_argument("--joint", action="store_true", help="train the encoder and codebooks with the decoder")
    ap.add_argument("--lr-encoder", type=float, default=1e-3, help="the encoder's and codebooks' learning rate")
    ap.add_argument("--from-run", type=Path, default=None,
                    help="start decoder, encoder and codebooks from an experiment_pitch_in_codes.py RUN.pt or a "
                         "joint run's decoder.pt (without --joint its codes then stay fixed)")
    ap.add_argument("--score", choices=("speech", "music", "sounds"), default=None,
                    help="instead of training: score RUN's decoder against the codec's own D0 on that category's "
                         "validation clips (PESQ-WB, STOI, mel distance; no side channel, no postfilter)")
    ap.add_argument("--export", type=Path, default=None,
                    help="instead of training: write a model folder here, the codec's with RUN's decoder in D0's place")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if (args.lock and args.export is None and args.score is None and args.advance_weight <= 0
            and args.output_advance_weight <= 0):
        ap.error("--lock passes no gradient to the advances: give --advance-weight above 0")
    if args.export is not None:
        if args.f0:
            ap.error("an --f0 run reads an F0 no model folder carries: it cannot be exported")
        export(args)
        return
    if args.score is not None:
        score(args)
        return
    if args.f0 and args.joint:
        ap.error("--f0 is for a decoder behind fixed codes; leave out --joint")
    if args.from_run is not None and args.init is not None:
        ap.error("give --init or --from-run, not both")

    from torch.utils.data import DataLoader

    from flowdec_cli.training.data import EpochSampler, EvalDataset, SegmentDataset, list_audio
    from flowdec_cli.training.losses import MultiScaleMelLoss, SpectralTransportLoss

    ckpt_path, log_path = args.out / "decoder.pt", args.out / "log.jsonl"
    resumed = (torch.load(ckpt_path, map_location=args.device, weights_only=True)
               if args.resume and ckpt_path.is_file() else None)
    was_joint = resumed is not None and bool(resumed.get("joint", "encoder" in resumed))
    if resumed is not None and args.joint != was_joint:
        ap.error(f"{ckpt_path}: {'a joint' if was_joint else 'a decoder-only'} run; "
                 f"resume it {'with' if was_joint else 'without'} --joint")
    # a codec other than the shipped one (learning, or taken from another run) is built unfolded, so that
    # any run's encoder loads into it, and is saved with the decoder so that --resume and --export use it
    own_codec = args.joint or args.from_run is not None or (resumed is not None and "encoder" in resumed)
    ndac, decoder = build(args, trainable=own_codec)
    sr, hop = ndac.sample_rate, ndac.hop_length
    segment = max(1, round(args.seconds * sr / hop)) * hop
    train = SegmentDataset(list_audio([args.corpus / "train.txt", *args.also]), sr, segment, seed=1,
                           loudness_db=-16.0, gain_db=(-6.0, 6.0))
    if len(train) < args.batch:  # a shuffled epoch of whole batches would hold none
        ap.error(f"{len(train)} training files, fewer than --batch {args.batch}")
    valid = EvalDataset(sr, items=list_audio([args.corpus / "valid.txt"])[:8], max_samples=4 * sr)
    loss_fn = MultiScaleMelLoss(sr, MEL_WINDOWS, MEL_BINS).to(args.device)
    val_loss = MultiScaleMelLoss(sr).to(args.device)  # the trainer's own validation figure (DAC's seven windows)
    transport = SpectralTransportLoss().to(args.device) if args.transport_weight else None
    shipped = None
    groups = [{"params": list(decoder.parameters()), "lr": args.lr, "base": args.lr}]
    if own_codec:
        from flowdec_cli.models import load_ndac

        shipped = load_ndac(args.model or "flowdec-small", args.device).eval()  # the codec to compare with
        shipped.requires_grad_(False)
    if args.joint:
        ndac.encoder.requires_grad_(True)
        ndac.quantizer.requires_grad_(True)
        groups.append({"params": [*ndac.encoder.parameters(), *ndac.quantizer.parameters()],
                       "lr": args.lr_encoder, "base": args.lr_encoder})
    trained = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, betas=(0.8, 0.99), weight_decay=0.0)
    counts_pool = [int(v) for v in args.codebooks.split(",")]
    step, spent = 0, 0.0
    args.out.mkdir(parents=True, exist_ok=True)
    if resumed is not None:
        ckpt = resumed
        decoder.load_state_dict(ckpt["decoder"])
        if "encoder" in ckpt:
            load_codec(ndac, ckpt)
        opt.load_state_dict(ckpt["optimizer"])
        for group, mine in zip(opt.param_groups, groups):  # the schedule's base rates are this command's
            group["base"] = mine["base"]  # (a run saved before they were kept has none)
        step, spent = int(ckpt["step"]), float(ckpt["seconds"])
    elif args.init is not None:
        decoder.load_state_dict(torch.load(args.init, map_location=args.device, weights_only=True)["decoder"])
    elif args.from_run is not None:
        run = torch.load(args.from_run, map_location=args.device, weights_only=True)
        decoder.load_state_dict(run["decoder"])
        load_codec(ndac, run)
    played: dict[str, torch.Tensor] = {}
    frames = decoder.frames

    def frames_kept(z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = frames(z)
        played["deviation"] = out[1]
        return out

    decoder.frames = frames_kept  # type: ignore[method-assign]
    n_params = sum(p.numel() for p in decoder.parameters())
    print(f"phase decoder: {n_params / 1e6:.2f} M parameters, {len(train)} training files, step {step}",
          flush=True)
    total = args.minutes * 60
    rng = np.random.default_rng(step)
    t_last = time.time()
    running: list[float] = []
    running_advance: list[float] = []
    running_transport: list[float] = []

    def save() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        state = {"decoder": decoder.state_dict(), "optimizer": opt.state_dict(), "step": step,
                 "seconds": spent, "settings": {k: str(v) for k, v in vars(args).items()}, "joint": args.joint}
        if own_codec:
            state.update(encoder=ndac.encoder.state_dict(), quantizer=ndac.quantizer.state_dict())
        torch.save(state, tmp)
        tmp.replace(ckpt_path)

    def validate() -> dict[str, float | list[float]]:
        decoder.eval()
        rows: dict[str, list[float]] = {"new_nq4": [], "old_nq4": [], "new_nq10": [], "old_nq10": []}
        with torch.no_grad():
            for i in range(len(valid)):
                x = valid[i][0][None].to(args.device)
                for k in (4, 10):
                    zq = decoder_input(ndac, x, [k], args.f0)
                    old = ndac if shipped is None else shipped  # the shipped codec on its own codes
                    for name, y in (("new", decoder(zq)), ("old", old.decoder(latents(old, x, [k])))):
                        y = y[..., :x.shape[-1]]
                        rows[f"{name}_nq{k}"].append(float(val_loss(y, x[..., :y.shape[-1]])))
            pitch = tone_pitches(ndac, decoder, f0=args.f0)
        decoder.train()
        return {**{k: float(np.mean(v)) for k, v in rows.items()}, "pitch": pitch}

    def batches() -> Iterator[torch.Tensor]:
        """Shuffled batches, epoch after epoch, from where ``step`` left off (the files are sorted by path,
        so taken in order a batch held one package and added sources came as a block once an epoch)."""
        sampler = EpochSampler(train, shuffle=True, seed=1)
        loader = DataLoader(train, batch_size=args.batch, sampler=sampler, drop_last=True,
                            num_workers=args.workers, persistent_workers=False)
        epoch, first = divmod(step * args.batch, len(train) - len(train) % args.batch)
        while True:
            sampler.set_epoch(epoch, skip=first)
            yield from loader
            epoch, first = epoch + 1, 0

    feed = batches()
    while spent < total:
        x = next(feed).to(args.device)
        counts = [int(rng.choice(counts_pool)) for _ in range(args.batch)]
        if args.joint:
            zq, _codes, _latents, commitment, codebook = ndac.quantizer(
                ndac.encoder(ndac.pad_to_hop(x)), n_quantizers_per_item=torch.tensor(counts))
        else:
            zq = decoder_input(ndac, x, counts, args.f0)
        y = decoder(zq)
        loss = loss_fn(y, x[..., :y.shape[-1]])
        if args.joint:
            loss = loss + 0.25 * commitment + codebook
        advance = advance_loss(decoder, played["deviation"].float(), x[..., :y.shape[-1]])
        running_advance.append(float(advance.detach()))
        if transport is not None:
            moved = transport(y, x[..., :y.shape[-1]])
            running_transport.append(float(moved.detach()))
            loss = loss + args.transport_weight * moved
        if args.advance_weight:
            loss = loss + args.advance_weight * advance
        if args.output_advance_weight:
            frames_played = played["deviation"].shape[-1]
            heard = advance_loss(decoder, output_deviation(decoder, y, frames_played), x[..., :y.shape[-1]])
            loss = loss + args.output_advance_weight * heard
        for group in opt.param_groups:
            group["lr"] = group["base"] * (args.lr_final / args.lr) ** min(spent / total, 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad = float(torch.nn.utils.clip_grad_norm_(trained, 1000.0))
        opt.step()
        step += 1
        now = time.time()
        spent += now - t_last
        t_last = now
        running.append(float(loss.detach()))
        if step % 25 == 0:
            record = {"step": step, "minutes": round(spent / 60, 2), "loss": round(float(np.mean(running)), 4),
                      "advance": round(float(np.mean(running_advance)), 4),
                      "grad": round(grad, 3), "lr": opt.param_groups[0]["lr"]}
            if running_transport:
                record["transport"] = round(float(np.mean(running_transport)), 4)
            running, running_advance, running_transport = [], [], []
            if step % args.val_every == 0:
                record.update({k: v if isinstance(v, list) else round(v, 4) for k, v in validate().items()})
                t_last = time.time()
            print(json.dumps(record), flush=True)
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if step % args.save_every == 0:
            save()
    save()
    final = validate()
    print(json.dumps({"step": step, "final": final}), flush=True)


if __name__ == "__main__":
    main()
