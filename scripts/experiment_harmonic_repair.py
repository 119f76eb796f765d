"""Experiment: move the decoded voice's harmonics to where the sent F0 says they are.

"Why the harmonics stick" (docs/models.md) found the built-in codec plays every steady partial above about
400 Hz on a multiple of its 75 Hz frame rate, and "Where PESQ-WB loses" that the reference's magnitude below
1 kHz alone would lift PESQ-WB from 1.5 to 2.3. Since 2026-12-07 every file sends the input's F0 (the pitch
side channel), so the decoder knows where the harmonics belong. The repair tested here needs no training:
in each voiced frame, below a cut-off, the decoded STFT (2,048 points, hop 5 ms) is replaced by a harmonic
series at the sent F0 (phase carried from frame to frame), each harmonic given the energy the decoded
output has within half an F0 of it: the energy per harmonic band is kept, where in the band it lies and
its phase are not. An encoder can choose where (``--margins``): it keeps the values whose repair brings
D0's low band nearer the input's.

    # the repair after the shipped decoder (NFE 6), variants side by side
    python scripts/experiment_harmonic_repair.py /work/corpus --cutoffs 1200,2400 --margins 1.0 [--visqol]
    # training pairs whose coded side is repaired (where the encoder would choose it)
    python scripts/experiment_harmonic_repair.py pairs LIST.txt ... --out DIR
    # models decoded with the repair before their postfilter (MODEL+repair) or without
    python scripts/experiment_harmonic_repair.py models /work/corpus SHIPPED SHIPPED+repair RUN/model+repair
    # the decoder stage with shares of the decoded band kept beside the series, before the shipped postfilter
    python scripts/experiment_harmonic_repair.py kept /work/corpus --category speech --kept 0,0.1,0.25

Prints each clip's scores and the means (speech: PESQ-WB, STOI; ViSQOL for the other categories or with
--visqol; the mel distance), every clip the first 4 s of a validation file at `-b 7.5`.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from flowdec_cli.harmonics import HOP, N_FFT, SAMPLE_RATE, draw_harmonics, redraw_harmonics  # noqa: E402
from flowdec_cli.pitch import frame_track, pitch_layout  # noqa: E402

DISPERSION = 0.0  # Schroeder-like phase offsets pi k^2 / 16 between harmonics (1) or all in cosine phase (0)


def stft(x: np.ndarray) -> np.ndarray:
    """[frames, bins] Hann STFT, frame i centred on sample i * HOP (zero-padded ends)."""
    pad = np.pad(x, (N_FFT // 2, N_FFT // 2 + HOP))
    n = 1 + len(x) // HOP
    idx = np.arange(n)[:, None] * HOP + np.arange(N_FFT)[None]
    return np.fft.rfft(pad[idx] * np.hanning(N_FFT + 1)[:-1], axis=1)


def istft(spec: np.ndarray, length: int) -> np.ndarray:
    win = np.hanning(N_FFT + 1)[:-1]
    frames = np.fft.irfft(spec, n=N_FFT, axis=1) * win
    out = np.zeros(len(spec) * HOP + N_FFT)
    norm = np.zeros_like(out)
    for i, f in enumerate(frames):
        out[i * HOP:i * HOP + N_FFT] += f
        norm[i * HOP:i * HOP + N_FFT] += win ** 2
    out = out / np.maximum(norm, 1e-8)
    return out[N_FFT // 2:N_FFT // 2 + length]


def harmonic_series(f0_frames: np.ndarray, length: int, top_hz: float, sr: int) -> list[np.ndarray]:
    """Unit sinusoids at k * F0 (k = 1, 2, ...), phase-continuous, F0 interpolated between frame centres,
    each harmonic silent where it would lie above ``top_hz`` or the frame is unvoiced."""
    centres = np.arange(len(f0_frames)) * HOP
    t = np.arange(length)
    voiced = f0_frames > 0
    # interpolate log F0 across voiced frames only; unvoiced frames hold the nearest voiced value
    if not voiced.any():
        return []
    logf = np.interp(centres, centres[voiced], np.log(f0_frames[voiced]))
    f0 = np.exp(np.interp(t, centres, logf))
    gate = np.interp(t, centres, voiced.astype(np.float64))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    series = []
    k = 1
    while k * f0_frames[voiced].min() < top_hz:
        series.append(np.cos(k * phase + DISPERSION * np.pi * k * k / 16) * gate * (k * f0 < top_hz))
        k += 1
    return series


def _fit(f0_frames: np.ndarray, n_frames: int) -> np.ndarray:
    """A track cut or zero-padded (unvoiced) to ``n_frames``."""
    return np.pad(f0_frames, (0, max(0, n_frames - len(f0_frames))))[:n_frames]


def _low_band_mask(f0_frames: np.ndarray, n_bins: int, sr: int, cutoff: float, fade: float) -> np.ndarray:
    """[frames, bins] share of the redrawn sound: 1 below ``cutoff`` in voiced frames, fading to 0 over
    ``fade`` Hz above it, and the voicing smoothed over 3 frames (frames between voiced and unvoiced take
    part of each)."""
    voiced = np.convolve((f0_frames > 0).astype(np.float64), np.ones(3) / 3, mode="same")
    freqs = np.arange(n_bins) * sr / N_FFT
    return voiced[:, None] * np.clip((cutoff + fade - freqs) / fade, 0, 1)[None]


def repair_spectrum(X: np.ndarray, f0_frames: np.ndarray, sr: int, top_hz: float) -> np.ndarray:
    """The harmonic series at ``f0_frames`` drawn straight into STFT frames (the decoder stage's drawing,
    :func:`flowdec_cli.harmonics.draw_harmonics`), its phase the integrated F0 (log-interpolated across
    unvoiced frames), every harmonic scaled to the energy ``X`` has within half an F0 of it."""
    assert sr == SAMPLE_RATE, sr
    voiced = f0_frames > 0
    if not voiced.any():
        return np.zeros_like(X)
    centres = np.arange(len(X))
    f0 = np.exp(np.interp(centres, centres[voiced], np.log(f0_frames[voiced])))
    phase = np.concatenate([[0.0], np.cumsum(np.pi * HOP * (f0[1:] + f0[:-1]) / sr)])  # at frame centres
    return draw_harmonics(X, np.where(voiced, f0, 0.0), phase, top_hz)


def repair(out: np.ndarray, f0_frames: np.ndarray, sr: int, cutoff: float, fade: float = 200.0) -> np.ndarray:
    """The decoded mono ``out`` with its voiced band below ``cutoff`` replaced by the harmonic series at
    ``f0_frames`` (F0 per STFT frame), drawn in the STFT domain: :func:`repair_time_domain` with one STFT
    and one inverse instead of one per harmonic (7 % apart in RMS on speech; exact on a steady tone)."""
    X = stft(out)
    f0_frames = _fit(f0_frames, len(X))
    Y = repair_spectrum(X, f0_frames, sr, cutoff + fade)
    m = _low_band_mask(f0_frames, X.shape[1], sr, cutoff, fade)
    return istft(X * (1 - m) + Y * m, len(out))


def repair_time_domain(out: np.ndarray, f0_frames: np.ndarray, sr: int, cutoff: float,
                       fade: float = 200.0) -> np.ndarray:
    """The decoded mono ``out`` with its voiced low band replaced by the harmonic series at ``f0_frames``
    (F0 per STFT frame), each harmonic scaled to the decoded energy within half an F0 of it."""
    X = stft(out)
    freqs = np.arange(X.shape[1]) * sr / N_FFT
    f0_frames = _fit(f0_frames, len(X))
    series = harmonic_series(f0_frames, len(out), cutoff + fade, sr)
    if not series:
        return out
    Y = np.zeros_like(X)
    for k, s in enumerate(series, start=1):
        S = stft(s)
        f_k = k * f0_frames[:, None]
        band = (np.abs(freqs[None] - f_k) < f0_frames[:, None] / 2) & (f0_frames[:, None] > 0)
        p_out = (np.abs(X) ** 2 * band).sum(1)
        p_s = (np.abs(S) ** 2 * band).sum(1)
        g = np.sqrt(p_out / np.maximum(p_s, 1e-12))
        Y += S * g[:, None]
    m = _low_band_mask(f0_frames, X.shape[1], sr, cutoff, fade)
    return istft(X * (1 - m) + Y * m, len(out))


def harmonic_misfit(clean: np.ndarray, f0_frames: np.ndarray, sr: int, cutoff: float, draw=repair) -> np.ndarray:
    """Per STFT frame, how far the repair of the *input itself* is from the input below ``cutoff``: the
    squared magnitude error over the input's energy (0: the low band is a harmonic series at that F0;
    inf where unvoiced). What an encoder can compute to decide where the decoder may repair."""
    X = stft(clean)
    Y = stft(draw(clean, f0_frames, sr, cutoff, fade=1.0))
    f0_frames = _fit(f0_frames, len(X))
    low = np.arange(X.shape[1]) * sr / N_FFT < cutoff
    err = ((np.abs(X[:, low]) - np.abs(Y[:, low])) ** 2).sum(1)
    energy = (np.abs(X[:, low]) ** 2).sum(1)
    return np.where(f0_frames > 0, err / np.maximum(energy, 1e-12), np.inf)


def low_band_error(clean: np.ndarray, y: np.ndarray, sr: int, cutoff: float, log: bool = False) -> np.ndarray:
    """Per STFT frame, the squared magnitude error of ``y`` against ``clean`` below ``cutoff`` (of log
    magnitudes floored 60 dB below the clean frame's peak with ``log``)."""
    X, Y = np.abs(stft(clean)), np.abs(stft(y))
    low = np.arange(X.shape[1]) * sr / N_FFT < cutoff
    X, Y = X[:, low], Y[:, low]
    if log:
        floor = 1e-3 * np.maximum(X.max(1, keepdims=True), 1e-9)
        X, Y = np.log(np.maximum(X, floor)), np.log(np.maximum(Y, floor))
    return ((X - Y) ** 2).sum(1)


def gated(lay, steps: np.ndarray, misfit: np.ndarray, threshold: float) -> np.ndarray:
    """The sent steps with every value whose frames' mean misfit exceeds ``threshold`` sent as unvoiced."""
    owner = np.arange(len(misfit)) * HOP // lay.hop
    out = steps.copy()
    for j in range(len(steps)):
        m = misfit[owner == j]
        if len(m) == 0 or not np.isfinite(m).all() or m.mean() > threshold:
            out[j] = 0
    return out


def repair_ratio(clean: np.ndarray, coded: np.ndarray, sent: np.ndarray, sr: int, cutoff: float,
                 log: bool = False, draw=repair) -> np.ndarray:
    """Per STFT frame, the low-band error of the repaired ``coded`` over that of ``coded`` itself, both
    against ``clean`` (below 1: the repair brings it nearer; inf where unvoiced): the encoder's choice."""
    e0 = low_band_error(clean, coded, sr, cutoff, log)
    e1 = low_band_error(clean, draw(coded, sent, sr, cutoff), sr, cutoff, log)
    return np.where(sent > 0, e1 / np.maximum(e0, 1e-12), np.inf)


def sent_steps(lay, clean: np.ndarray) -> np.ndarray:
    """The pitch steps a file of the mono model-rate ``clean`` sends."""
    from flowdec_cli.pitch import steps_of_signal

    return steps_of_signal(lay, clean[None])[0]


def chosen_track(lay, clean: np.ndarray, coded: np.ndarray, sr: int, cutoff: float, margin: float = 1.0
                 ) -> np.ndarray:
    """The F0 per STFT frame an encoder would let the decoder repair with: the clean side's pitch as a file
    sends it, kept for the values where the repair brings the coded low band nearer the clean one."""
    frames = 1 + len(coded) // HOP
    steps = sent_steps(lay, clean)
    ratio = repair_ratio(clean, coded, frame_track(lay, steps[None], frames, HOP)[0], sr, cutoff)
    return frame_track(lay, gated(lay, steps, ratio, margin)[None], frames, HOP)[0]


def _repair_pair(job: tuple[str, str, str, float, bool]) -> str:
    import soundfile as sf

    clean_path, coded_path, dest, cutoff, held = job
    clean, sr = sf.read(clean_path, dtype="float64")
    coded, sr2 = sf.read(coded_path, dtype="float64")
    assert sr == sr2 == 48000 and clean.ndim == coded.ndim == 1, (clean_path, sr, sr2)
    n = min(len(clean), len(coded))
    lay = pitch_layout("f0-24ms")
    if held:  # wherever the file sends a pitch: the decoder stage itself
        fixed = coded.astype(np.float32)[None]
        redraw_harmonics(lay, fixed, sent_steps(lay, clean[:n])[None], int(cutoff))
        fixed = fixed[0]
    else:
        fixed = repair(coded, chosen_track(lay, clean[:n], coded[:n], sr, cutoff), sr, cutoff)
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    part = dest + ".part.wav"  # replaced whole: a training run may be reading the pairs of an earlier setting
    sf.write(part, fixed.astype(np.float32), sr, subtype="FLOAT")
    os.replace(part, dest)
    return f"{clean_path},{dest}"


def make_pairs(args: argparse.Namespace) -> None:
    """Every ``clean,coded`` list in --lists re-written with the coded side repaired (under --out): where
    the encoder would choose it, or with --held wherever the pitch is sent."""
    from multiprocessing import Pool

    done: dict[str, str] = {}
    with Pool(args.workers) as pool:
        for lst in args.lists:
            lines = [ln.split(",") for ln in Path(lst).read_text().split()]
            todo = [(c, d, str(args.out / "coded" / d.lstrip("/")), args.cutoff, args.held) for c, d in lines
                    if d not in done]
            for (_, d, *_), line in zip(todo, pool.imap(_repair_pair, todo)):
                done[d] = line
            (args.out / Path(lst).name).write_text("".join(done[d] + "\n" for _, d in lines))
            print(f"{lst}: {len(lines)} pairs", flush=True)


def score_models(args: argparse.Namespace) -> None:
    """Each model of --models decoded with the repair placed before its postfilter (``MODEL+repair``) or
    not (``MODEL``), every validation clip of a category (first 4 s, `-b 7.5`, NFE 6, T as the model's,
    seed 0), and the first model at NFE 0."""
    import soundfile as sf
    import soxr

    import flowdec_cli.longaudio as longaudio
    from flowdec_cli.evaluation.metrics import mel_distance, pesq_wb, stoi, visqol
    from flowdec_cli.pipeline import Codec

    original = longaudio.enhance_long
    state: dict = {"clean": None, "held": False}

    def enhance_repaired(model, source, out=None, **kw):  # D0 with its side channel applied, in place
        if state["clean"] is not None:
            clean = state["clean"]
            for c in range(source.shape[0]):
                n = min(len(clean), source.shape[1])
                lay = pitch_layout("f0-24ms")
                if state["held"]:  # wherever the file sends a pitch: no choice by the encoder
                    track = frame_track(lay, sent_steps(lay, clean[:n])[None], 1 + n // HOP, HOP)[0]
                else:
                    track = chosen_track(lay, clean[:n], np.asarray(source[c, :n], np.float64), 48000,
                                         args.cutoff)
                source[c] = repair(np.asarray(source[c], np.float64), track, 48000, args.cutoff)
        return original(model, source, out, **kw)

    longaudio.enhance_long = enhance_repaired
    root = args.clips_in if args.clips_in is not None else args.corpus
    if args.clips_in is not None:
        names = sorted(str(f) for f in (args.clips_in / "audio" / args.category).iterdir())[: args.clips]
    else:
        names = (args.corpus / f"valid_{args.category}.txt").read_text().split()[: args.clips]
    metrics = {"PESQ-WB": pesq_wb, "STOI": stoi} if args.category == "speech" else {}
    metrics["ViSQOL"] = visqol
    metrics["mel"] = mel_distance
    codecs = {}
    for spec in args.models:
        path, _, mode = spec.partition("+")
        codecs[spec] = (Codec.load(path, device="cpu"), mode)
    rows: dict[str, list] = {}
    for name in names:
        audio, sr = sf.read(root / name, dtype="float32", always_2d=True)
        audio = audio[: int(4 * sr)]
        assert audio.shape[1] == 1, (name, audio.shape)
        clean48 = soxr.resample(audio[:, 0].astype(np.float64), sr, 48000)  # the model-rate input
        first = next(iter(codecs.values()))[0]
        header, codes = first.compress_array(audio, sr, bitrate_kbps=7.5)
        state["clean"] = None
        outs = {"NFE 0": first.decompress_codes(header, codes, nfe=0)}
        for spec, (codec, mode) in codecs.items():
            state["clean"] = clean48 if mode else None
            state["held"] = mode == "held"
            outs[Path(spec).name] = codec.decompress_codes(header, codes, nfe=6, seed=0)
        for label, y in outs.items():
            rows.setdefault(label, []).append([fn(audio, y, sr) for fn in metrics.values()])
        print(Path(name).name, {k: [round(v, 3) for v in r[-1]] for k, r in rows.items()}, flush=True)
    print(f"{args.category}, {len(names)} clips, 7.5 kbit/s, NFE 6: {' / '.join(metrics)} (means)")
    base = rows[Path(args.models[0]).name]
    for k, r in rows.items():
        up = sum(1 for s, o in zip(r, base) if s[0] > o[0])
        print(f"  {k:28s} {' / '.join(f'{v:.4f}' for v in np.array(r).mean(0))}  (first metric above the first "
              f"model's on {up} of {len(r)})")


def score_kept(args: argparse.Namespace) -> None:
    """The decoder stage (2.4 kHz) before the shipped postfilter with each share of the decoded band kept
    beside the series (``harmonics.KEPT``), and without the stage, on every validation clip of a category
    (first 4 s, `-b 7.5`, NFE 6, T 0.25, seed 0, one thread): the table of "The redraw as a decoder stage"."""
    import soundfile as sf
    import torch

    import flowdec_cli.harmonics as harmonics
    from flowdec_cli.evaluation.metrics import mel_distance, pesq_wb, stoi, visqol
    from flowdec_cli.pipeline import Codec

    torch.set_num_threads(1)
    codec = Codec.load(str(ROOT / "src/flowdec_cli/assets/models/flowdec-small"), device="cpu")
    metrics = {"PESQ-WB": pesq_wb, "STOI": stoi} if args.category == "speech" else {}
    metrics.update({"ViSQOL": visqol, "mel": mel_distance})
    settings = [("no redraw", 0, 0.0)] + [(f"kept {float(k):g}", 2400, float(k)) for k in args.kept.split(",")]
    rows: dict[str, list] = {}
    for name in (args.corpus / f"valid_{args.category}.txt").read_text().split()[: args.clips]:
        audio, sr = sf.read(args.corpus / name, dtype="float32", always_2d=True)
        audio = audio[: 4 * sr]
        header, codes = codec.compress_array(audio, sr, bitrate_kbps=7.5)
        for label, cutoff, kept in settings:
            codec.postfilter.harmonic_redraw_hz, harmonics.KEPT = cutoff, kept
            y = codec.decompress_codes(header, codes, nfe=6, seed=0)
            rows.setdefault(label, []).append([fn(audio, y, sr) for fn in metrics.values()])
        print(Path(name).name, {k: [round(v, 3) for v in r[-1]] for k, r in rows.items()}, flush=True)
    print(f"{args.category}, {len(next(iter(rows.values())))} clips: {' / '.join(metrics)} (means)")
    for k, r in rows.items():
        print(f"  {k:12s} {' / '.join(f'{v:.4f}' for v in np.array(r).mean(0))}")


def main() -> None:
    if sys.argv[1:2] == ["models"]:
        ap = argparse.ArgumentParser(description=score_models.__doc__)
        ap.add_argument("cmd")
        ap.add_argument("corpus", type=Path)
        ap.add_argument("models", nargs="+", help="model folders, each optionally +repair (where the encoder "
                        "would choose it) or +held (wherever a pitch is sent)")
        ap.add_argument("--clips-in", type=Path, help="a build_heldout_set.py folder instead of the corpus")
        ap.add_argument("--clips", type=int, default=14)
        ap.add_argument("--category", default="speech")
        ap.add_argument("--cutoff", type=float, default=2400.0)
        return score_models(ap.parse_args())
    if sys.argv[1:2] == ["kept"]:
        ap = argparse.ArgumentParser(description=score_kept.__doc__)
        ap.add_argument("cmd")
        ap.add_argument("corpus", type=Path)
        ap.add_argument("--category", default="speech")
        ap.add_argument("--kept", default="0,0.1,0.25", help="comma-separated shares of the decoded band kept")
        ap.add_argument("--clips", type=int, default=14)
        return score_kept(ap.parse_args())
    if sys.argv[1:2] == ["pairs"]:
        ap = argparse.ArgumentParser(description=make_pairs.__doc__)
        ap.add_argument("cmd")
        ap.add_argument("lists", nargs="+")
        ap.add_argument("--out", type=Path, required=True)
        ap.add_argument("--cutoff", type=float, default=2400.0)
        ap.add_argument("--workers", type=int, default=2)
        ap.add_argument("--held", action="store_true", help="repair wherever a pitch is sent (no encoder's "
                        "choice), as the decoder stage does")
        return make_pairs(ap.parse_args())
    import soundfile as sf

    from flowdec_cli.evaluation.metrics import mel_distance, pesq_wb, stoi, visqol
    from flowdec_cli.pipeline import Codec

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--clips", type=int, default=14)
    ap.add_argument("--category", default="speech")
    ap.add_argument("--cutoffs", default="1000", help="comma-separated cut-offs in Hz")
    ap.add_argument("--nfe", type=int, default=6)
    ap.add_argument("--margins", default="1.0", help="comma-separated error ratios below which the "
                    "encoder chooses the repair")
    ap.add_argument("--visqol", action="store_true", help="score speech with ViSQOL too")
    ap.add_argument("--log", action="store_true", help="the encoder's choice compares log magnitudes")
    ap.add_argument("--thresholds", default="", help="comma-separated misfit thresholds of the gate")
    ap.add_argument("--dispersion", type=float, default=0.0)
    ap.add_argument("--time-domain", action="store_true", help="draw each harmonic in the time domain "
                    "(repair_time_domain, as the first runs did) instead of straight into the STFT frames")
    args = ap.parse_args()
    draw = repair_time_domain if args.time_domain else repair
    global DISPERSION
    DISPERSION = args.dispersion

    codec = Codec.load(str(ROOT / "src/flowdec_cli/assets/models/flowdec-small"), device="cpu")
    names = (args.corpus / f"valid_{args.category}.txt").read_text().split()[: args.clips]
    metrics = {"PESQ-WB": pesq_wb, "STOI": stoi} if args.category == "speech" else {}
    if args.visqol or args.category != "speech":
        metrics["ViSQOL"] = visqol
    metrics["mel"] = mel_distance
    cutoffs = [float(c) for c in args.cutoffs.split(",")]
    thresholds = [float(c) for c in args.thresholds.split(",") if c]
    margins = [float(c) for c in args.margins.split(",") if c]
    rows: dict[str, list] = {}
    for name in names:
        audio, sr = sf.read(args.corpus / name, dtype="float32", always_2d=True)
        audio = audio[: int(4 * sr)]
        assert sr == 48000 and audio.shape[1] == 1, (name, sr, audio.shape)
        header, codes = codec.compress_array(audio, sr, bitrate_kbps=7.5)
        lay = pitch_layout(header.pitch_layout)
        out = codec.decompress_codes(header, codes, nfe=args.nfe, seed=0)[:, 0].astype(np.float64)
        d0 = codec.decompress_codes(header, codes, nfe=0)[:, 0].astype(np.float64)
        frames = 1 + len(out) // HOP
        sent = frame_track(lay, np.asarray(header.pitch), frames, HOP)[0]
        steps = np.asarray(header.pitch)[0]
        clean = audio[:, 0].astype(np.float64)
        variants = {"decoded": out}
        for c in cutoffs:
            variants[f"held <{c:.0f}"] = draw(out, sent, sr, c)
            choices = []  # (label, per-frame score, threshold): keep the values scoring at most the threshold
            if margins:  # the encoder's choice: repair where it brings D0 nearer the input
                ratio = repair_ratio(clean, d0, sent, sr, c, args.log, draw)
                choices += [(f"chosen {margin} <{c:.0f}", ratio, margin) for margin in margins]
            if thresholds:
                misfit = harmonic_misfit(clean, sent, sr, c, draw)
                choices += [(f"gate {th} <{c:.0f}", misfit, th) for th in thresholds]
            for label, scores, threshold in choices:
                g = frame_track(lay, gated(lay, steps, scores, threshold)[None], frames, HOP)[0]
                variants[label] = draw(out, g, sr, c)
                print(f"  {label}: keeps {(g > 0).sum() / max(1, (sent > 0).sum()):.2f} of voiced frames",
                      flush=True)
        for label, y in variants.items():
            rows.setdefault(label, []).append([fn(audio, y[:, None].astype(np.float32), sr)
                                               for fn in metrics.values()])
        print(name, {k: [round(v, 3) for v in r[-1]] for k, r in rows.items()}, flush=True)
    print(f"{args.category}, {len(names)} clips, 7.5 kbit/s, NFE {args.nfe}: {' / '.join(metrics)} (means)")
    for k, r in rows.items():
        up = sum(1 for s, o in zip(r, rows["decoded"]) if s[0] > o[0])
        print(f"  {k:18s} {' / '.join(f'{v:.4f}' for v in np.array(r).mean(0))}  (up on {up} of {len(r)})")


if __name__ == "__main__":
    main()
