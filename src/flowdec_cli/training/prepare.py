"""Between the stages: code a dataset with a trained NDAC, and estimate the postfilter's noise scales.

``prepare_pairs`` runs an NDAC over audio files at one or several codebook counts, writes D0's output
(48 kHz mono, 32-bit float WAV, exactly as long as the clean file) under ``OUT/coded/nq<k>/``, and writes
``train.txt``, ``validation.txt`` and ``test.txt`` with one ``clean_path,coded_path`` line per file and
codebook count (the official pair-list format). The split is by file (all counts of a file land in the
same list) and deterministic (hash of the file's relative path).

``estimate_sigma`` follows the official ``scripts/estimate_flowdec_params.py`` heuristics:

* draw ``n_samples`` pairs without replacement (numpy seed 302); load mono at 48 kHz; crop the coded
  signal to the clean length; take a random 2 s excerpt at the same offset in both (zero-pad shorter
  ones on the right); divide both by ``max|y| + 1e-5``;
* features: the complex STFT (the postfilter's n_fft, hop and symmetric Hann window, centred) with the
  amplitude compression ``|S| ** alpha`` and *no* beta;
* ``q_x`` = the 0.997 quantile of the clean feature magnitudes over all bins and examples; suggested
  ``beta = 1 / q_x``;
* global: per example RMSE = ||Y - X||_2 / sqrt(#bins); ``sigma_y = quantile_0.997(RMSE) / 3``;
* per band: per example and frequency row, ||(Y - X)_f||_2 over time / sqrt(#frequency rows) (the
  official normalisation); the 0.997 quantile over examples, per band, / 3.

The per-band curve is stored unsmoothed (as the official ``.npy`` files); the postfilter trainer smooths it
with :func:`gaussian_smooth` (sigma 3 bins, mode "nearest", truncate 4: a 25-tap kernel), exactly what the
official ``sigma_models.from_file`` does with scipy.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..audio import write_audio
from ..features import ALPHA, HOP_LENGTH, N_FFT
from ..fileio import OutputExistsError, atomic_write_bytes, parse_json
from .common import TrainingError, find_checkpoint, is_run_or_checkpoint
from .data import AudioItem, DataError, fits_pair_list, list_audio, load_mono, read_pairs, split_items, write_pairs

__all__ = [
    "gaussian_kernel",
    "gaussian_smooth",
    "estimate_sigma",
    "pair_list_records",
    "pairs_coded_by",
    "stale_sigma_warning",
    "write_sigma_file",
    "read_sigma_file",
    "unusable_sigma",
    "load_trained_ndac",
    "prepare_pairs",
]

Progress = Callable[[str, int], Any]  # (description, total) -> a tqdm-like bar with update()/close()
# the pitch a file sends (f0-24ms, the one layout there is), which the harmonic redraw of a pair's coded side
# follows, measured on its clean side
REDRAW_PITCH_LAYOUT = "f0-24ms"


# --------------------------------------------------------------------------------------------------
# Gaussian smoothing (scipy.ndimage.gaussian_filter1d semantics, in numpy)


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Normalised Gaussian taps for offsets -r..r, r = int(truncate * sigma + 0.5) (25 taps for sigma 3)."""
    radius = int(truncate * float(sigma) + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (offsets / float(sigma)) ** 2)
    return k / k.sum()


def gaussian_smooth(values: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """1-D Gaussian smoothing with edge values repeated beyond both ends (scipy's mode "nearest")."""
    values = np.asarray(values, dtype=np.float64)
    if sigma <= 0:
        return values.copy()
    k = gaussian_kernel(sigma, truncate)
    r = len(k) // 2
    padded = np.pad(values, (r, r), mode="edge")
    return np.convolve(padded, k, mode="valid")


# --------------------------------------------------------------------------------------------------
# sigma_y estimation


def _compressed_stft(sig: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor, alpha: float) -> torch.Tensor:
    spec = torch.stft(sig, n_fft, hop_length=hop, win_length=n_fft, window=window, center=True,
                      pad_mode="reflect", return_complex=True)
    return spec.abs() ** alpha * torch.exp(1j * spec.angle())


def estimate_sigma(pairs: Sequence[tuple[str, str]], alpha: float = ALPHA, n_fft: int = N_FFT, hop: int = HOP_LENGTH,
                   n_samples: int = 2500, seed: int = 302, qx: float = 0.997, qrmse: float = 0.997,
                   duration: float = 2.0, sample_rate: int = 48000, max_magnitudes: int = 50_000_000,
                   device: str | torch.device = "cpu", progress: Progress | None = None) -> dict[str, Any]:
    """The official heuristic estimates of beta, the global sigma_y and the per-band sigma_y curve.

    The q_x quantile is exact while all clean magnitudes fit in ``max_magnitudes`` values; beyond that a
    seeded uniform subsample of each example's magnitudes (equal share per example) is used.
    """
    if not pairs:
        raise TrainingError("no (clean, coded) pairs to estimate sigma_y from")
    if n_fft < 16 or n_fft % 2 or not 1 <= hop <= n_fft:
        raise TrainingError(f"n_fft {n_fft} and hop {hop}: the feature map's STFT needs an even n_fft of at least "
                            "16 and a hop from 1 to n_fft")
    if not (0 < alpha <= 1 and 0 < qx <= 1 and 0 < qrmse <= 1):
        raise TrainingError(f"alpha {alpha}, q_x {qx}, q_rmse {qrmse}: each must be in (0, 1]")
    seg = int(round(duration * sample_rate))
    if n_fft // 2 >= seg:  # the STFT's reflect padding must fit inside the excerpt
        raise TrainingError(f"n_fft {n_fft}: at most {2 * seg - 2} for the {duration:g} s excerpts the estimate "
                            f"reads at {sample_rate} Hz (its padding, half of n_fft, must fit inside one)")
    rng = np.random.default_rng(seed)
    count = min(int(n_samples), len(pairs))
    chosen = rng.choice(len(pairs), size=count, replace=False)
    window = torch.signal.windows.hann(n_fft, sym=True, dtype=torch.float32, device=device)
    frames = 1 + seg // hop
    per_example = max(1, max_magnitudes // count)
    mags, rmses, bands = [], [], []
    subsampled = False
    max_abs_x = 0.0
    bar = progress("estimate-sigma", count) if progress is not None else None
    try:
        for i in chosen:
            clean, coded = pairs[int(i)]
            x = load_mono(clean, sample_rate)
            y = load_mono(coded, sample_rate)
            if len(y) < len(x):
                raise TrainingError(f"{coded}: the coded file is shorter than its clean file {clean}")
            y = y[:len(x)]
            if len(x) > seg:
                start = int(rng.integers(0, len(x) - seg + 1))
                x, y = x[start:start + seg], y[start:start + seg]
            elif len(x) < seg:
                x, y = np.pad(x, (0, seg - len(x))), np.pad(y, (0, seg - len(y)))
            norm = float(np.max(np.abs(y))) + 1e-5
            xt = torch.from_numpy(x / norm).to(device)
            yt = torch.from_numpy(y / norm).to(device)
            X = _compressed_stft(xt, n_fft, hop, window, alpha)
            Y = _compressed_stft(yt, n_fft, hop, window, alpha)
            assert X.shape[-1] == frames
            mag = X.abs().flatten().cpu().numpy()
            max_abs_x = max(max_abs_x, float(mag.max()))
            if mag.size > per_example:
                mag = rng.choice(mag, size=per_example, replace=False)
                subsampled = True
            mags.append(mag.astype(np.float32))
            diff = (Y - X).abs()
            rmses.append(float(torch.linalg.vector_norm(diff) / math.sqrt(diff.numel())))
            bands.append((torch.linalg.vector_norm(diff, dim=-1) / math.sqrt(diff.shape[-2])).cpu().numpy())
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    q_x = float(np.quantile(np.concatenate(mags), qx))
    sigma_y = float(np.quantile(np.asarray(rmses), qrmse)) / 3.0
    perband = np.quantile(np.stack(bands), qrmse, axis=0) / 3.0
    return {
        "type": "flowdec_sigma_estimate",
        "version": 1,
        "beta": 1.0 / q_x if q_x > 0 else float("nan"),
        "q_x": q_x,
        "max_abs_x": max_abs_x,
        "sigma_y": sigma_y,
        "sigma_y_perband": [float(v) for v in perband],
        "alpha": alpha,
        "n_fft": n_fft,
        "hop_length": hop,
        "n_samples": count,
        "seed": seed,
        "qx": qx,
        "qrmse": qrmse,
        "duration": duration,
        "q_x_exact": not subsampled,
    }


def sigma_file_outputs(path: str | os.PathLike, overwrite: bool = True) -> tuple[Path, Path]:
    """The two files :func:`write_sigma_file` writes for ``path``: the JSON and the per-band ``.npy``.
    With ``overwrite=False`` neither may exist yet (:class:`~flowdec_cli.fileio.OutputExistsError` naming the one
    that does)."""
    path = Path(path)
    if not path.name or path.is_dir():
        raise TrainingError(f"{path}: a sigma file must be a file name (e.g. pairs/sigma.json), not a folder")
    outputs = path, path.with_name(path.stem + "_perband.npy")
    for p in outputs:
        if not overwrite and p.exists():
            raise OutputExistsError(p, before=True)  # the command line names its own flag
    return outputs


def unusable_sigma(value: Any) -> np.ndarray:
    """The flat indices where a sigma file's value (beta, sigma_y or the per-band curve) is NaN, infinite,
    zero or negative: the model divides by each, so such a file is neither written nor trained with."""
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    return np.flatnonzero(~(np.isfinite(arr) & (arr > 0)))


def write_sigma_file(path: str | os.PathLike, estimate: dict[str, Any], overwrite: bool = True,
                     pair_lists: Sequence[str | os.PathLike] = ()) -> Path:
    """``path`` (JSON, what the postfilter config's ``sigma.file`` names) and, beside it, the per-band
    curve as ``<stem>_perband.npy`` (768 float64, the official file's layout), each written atomically.
    With ``overwrite=False`` neither may exist yet (:class:`TrainingError`, both left as they are).
    ``pair_lists``: the lists the estimate was made from; how their pairs were coded is recorded
    (:func:`pairs_coded_by`), for a trainer to notice pairs re-coded since."""
    path, npy = sigma_file_outputs(path, overwrite)
    if pair_lists:
        estimate = {**estimate, "pairs_coded_by": pairs_coded_by(pair_lists)}
    curve = np.asarray(estimate["sigma_y_perband"], dtype=np.float64)
    for field, value in (("beta", estimate["beta"]), ("sigma_y", estimate["sigma_y"]), ("the per-band curve", curve)):
        if unusable_sigma(value).size:
            raise TrainingError(f"{path}: not written: {field} came out as NaN, infinite, zero or negative "
                                "(pairs that are silent or identical to their references, or settings such as "
                                "--alpha or --qx outside their range?)")
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, curve)
    atomic_write_bytes(npy, buf.getvalue())
    atomic_write_bytes(path, (json.dumps({**estimate, "perband_npy": npy.name}, indent=1) + "\n").encode())
    return path


def read_sigma_file(path: str | os.PathLike) -> dict[str, Any]:
    """An estimate written by :func:`write_sigma_file` (or a bare official ``.npy`` per-band curve)."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: no such sigma file (run 'flowdec train estimate-sigma' first)")
    if path.suffix.lower() == ".npy":
        curve = np.load(path, allow_pickle=False).astype(np.float64).ravel()
        return {"sigma_y_perband": curve.tolist(), "sigma_y": float("nan"), "beta": float("nan")}
    try:
        data = parse_json(path.read_text())
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{path}: unreadable sigma file ({exc})") from None
    if not isinstance(data, dict) or data.get("type") != "flowdec_sigma_estimate":
        raise TrainingError(f"{path}: not a sigma estimate written by 'flowdec train estimate-sigma'")
    return data


# --------------------------------------------------------------------------------------------------
# Coding a dataset


def load_trained_ndac(ref: str | os.PathLike, device: str | torch.device | None = None) -> Any:
    """An inference-ready NDAC from a training run folder (its latest checkpoint), a checkpoint folder, a
    model or component folder, a released ``weights.pth``, or a registry name."""
    from ..models import ModelError, load_ndac

    path = Path(ref)
    if is_run_or_checkpoint(path):
        ckpt = find_checkpoint(path)
        try:
            return load_ndac(ckpt / "model", device)
        except ModelError as exc:
            raise TrainingError(str(exc)) from None
    if not path.exists() and os.sep in str(ref) and "://" not in str(ref):
        # a run folder mistyped, not a hub repo: load_ndac would read OWNER/REPO as one and go online
        raise TrainingError(f"{ref}: no such file or folder (a hub repo is written hf://OWNER/REPO)")
    try:
        return load_ndac(ref, device)
    except ModelError as exc:
        raise TrainingError(str(exc)) from None


def _output_names(items: Sequence[AudioItem]) -> dict[str, str]:
    """A unique relative output path (``.wav``) per item, from its key."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for it in items:
        base = Path(it.key).with_suffix("").as_posix().lstrip("/").replace("..", "__")
        name = base + ".wav"
        if name in used:
            name = f"{base}-{hashlib.sha1(it.path.encode()).hexdigest()[:8]}.wav"
        used.add(name)
        names[it.path] = name
    return names


def prepare_pairs(ndac_ref: str | os.PathLike, sources: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                  n_codebooks: Sequence[int] = (), validation_fraction: float = 0.01, test_fraction: float = 0.01,
                  salt: str = "flowdec", device: str | torch.device = "cpu", force: bool = False,
                  chunk_seconds: float = 30.0, progress: Progress | None = None,
                  envelope: str | None = None, harmonic_redraw_hz: int = 0) -> dict[str, Any]:
    """Code every audio file of ``sources`` at each count in ``n_codebooks`` (default: all codebooks) and
    write the coded audio and the three pair lists under ``out_dir``. Existing coded files are kept
    (the command resumes) unless ``force``. Returns a summary (also written to ``OUT/prepare.json``).

    ``envelope`` (a layout name): the coded side gets the band-level side channel applied, its levels
    measured on the clean side, as a decoder does for a model whose postfilter runs after the side channel
    (the card's ``envelope_before_postfilter``). ``harmonic_redraw_hz``: then its voiced harmonics below
    that frequency are redrawn at the F0 a file of the clean side would send (:mod:`flowdec_cli.harmonics`),
    for a postfilter the decoder redraws before (its config's ``harmonic_redraw_hz``)."""
    from ..envelope import EnvelopeError, apply_envelope, envelope_layout, measure, quantise
    from ..exceptions import InvalidValue
    from ..harmonics import redraw_harmonics, redraw_setting
    from ..pitch import PitchError, pitch_layout, steps_of_signal

    model = load_trained_ndac(ndac_ref, device)
    try:
        layout = envelope_layout(envelope, model.sample_rate) if envelope else None
        redraw = redraw_setting(harmonic_redraw_hz)
        voice = pitch_layout(REDRAW_PITCH_LAYOUT, model.sample_rate) if redraw else None
    except (EnvelopeError, PitchError, InvalidValue) as exc:
        raise TrainingError(str(exc)) from None
    ks = sorted({int(k) for k in n_codebooks} or {model.n_codebooks}, reverse=True)
    for k in ks:
        if not 1 <= k <= model.n_codebooks:
            raise TrainingError(f"--n-codebooks {k} is not in [1, {model.n_codebooks}] for this NDAC")
    try:
        items = list_audio(sources)
    except DataError as exc:
        raise TrainingError(str(exc)) from None
    if not items:
        raise TrainingError("no audio files found in " + ", ".join(str(s) for s in sources))
    out = Path(out_dir)
    if not fits_pair_list(str(out.resolve())):
        raise TrainingError(f"{out}: a comma or line break in the output folder's path would break every line of "
                            "the pair lists; choose another folder")
    envelope_name = layout.name if layout is not None else ""
    _check_same_codec(out, model.weights_hash, force, envelope_name, redraw)
    # which codec codes into this folder is recorded before the first file, so that a run stopped partway
    # and resumed with another codec is refused too (the summary at the end replaces this record)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prepare.json").write_text(json.dumps({"ndac": str(ndac_ref), "ndac_hash": model.weights_hash,
                                                  "envelope": envelope_name, "harmonic_redraw_hz": redraw,
                                                  "complete": False}, indent=2) + "\n")
    names = _output_names(items)
    splits = split_items(items, {"validation": validation_fraction, "test": test_fraction}, salt)
    which = {it.path: name for name, members in splits.items() for it in members}
    lists: dict[str, list[tuple[str, str]]] = {"train": [], "validation": [], "test": []}
    sr = model.sample_rate
    chunk_frames = max(1, int(chunk_seconds * model.frame_rate))
    written = skipped = 0
    failed: list[str] = []  # one bad file of a corpus is reported, and the others are coded
    listable: list[AudioItem] = []
    for it in items:  # refused before any coding: its line in a pair list could not be read back
        if fits_pair_list(it.path):
            listable.append(it)
        else:
            failed.append(f"{it.path}: a comma or line break in its name would break its line of the pair "
                          "lists; rename it to include it")
    bar = progress("prepare-pairs", len(listable) * len(ks)) if progress is not None else None
    try:
        for it in listable:
            targets = [(k, out / "coded" / f"nq{k}" / names[it.path]) for k in ks]
            todo = [(k, p) for k, p in targets if force or not p.is_file()]
            if todo:
                try:
                    x = load_mono(it.path, sr)
                except DataError as exc:
                    failed.append(str(exc))
                    if bar is not None:
                        bar.update(len(targets))
                    continue
                audio = torch.from_numpy(x)[None, None].to(model_device(model))
                codes = model.encode_chunked(audio, max(ks), chunk_frames)
                # The side channel spans the codes, as in Codec.encode/decode: the input zero-padded to
                # whole frames is measured and D0 is corrected over that span, so that the last window's
                # levels and gains are the ones a .fdc file would carry and apply.
                span = codes.shape[-1] * model.hop_length
                levels = quantise(layout, measure(layout, x[None], span)) if layout is not None else None
                steps = steps_of_signal(voice, x[None]) if voice is not None else None
                for k, p in todo:
                    y = np.ascontiguousarray(
                        model.decode_chunked(codes[:, :k], chunk_frames)[0].float().cpu().numpy(), np.float32)
                    if layout is not None:
                        apply_envelope(layout, y, span, levels)
                    if voice is not None:  # on the whole decode, after the side channel, as the decoder does
                        redraw_harmonics(voice, y, steps, redraw)
                    y = np.pad(y[0], (0, max(len(x) - y.shape[1], 0)))[:len(x)]
                    write_audio(p, y[:, None], sr, subtype="FLOAT")
                    written += 1
                    if bar is not None:
                        bar.update(1)
            skipped += len(targets) - len(todo)
            if bar is not None and len(targets) > len(todo):
                bar.update(len(targets) - len(todo))
            for _, p in targets:
                lists[which[it.path]].append((it.path, str(p.resolve())))
    finally:
        if bar is not None:
            bar.close()
    if len(failed) == len(items):
        raise TrainingError(f"no file could be coded ({len(failed)} failed; the first: {failed[0]})")
    try:
        for name, pairs in lists.items():
            write_pairs(out / f"{name}.txt", pairs)
    except DataError as exc:
        raise TrainingError(str(exc)) from None
    summary = {
        "ndac": str(ndac_ref),
        "ndac_hash": model.weights_hash,
        "envelope": envelope_name,
        "harmonic_redraw_hz": redraw,
        "complete": True,
        "n_codebooks": ks,
        "bitrates_kbps": [round(model.bitrate(k) / 1000, 4) for k in ks],
        "files": len(items) - len(failed),
        "failed": failed,
        "pairs": {name: len(pairs) for name, pairs in lists.items()},
        "written": written,
        "kept": skipped,
        "validation_fraction": validation_fraction,
        "test_fraction": test_fraction,
        "salt": salt,
    }
    (out / "prepare.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def pair_list_records(lists: Sequence[str | os.PathLike]) -> list[tuple[Path, dict[str, Any]]]:
    """What ``prepare_pairs`` recorded (``prepare.json``) beside each of ``lists``, with the list's path;
    lists without a readable record (made by hand, or their folder moved) are left out."""
    records = []
    for pair_list in map(Path, lists):
        try:
            record = parse_json((pair_list.parent / "prepare.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            records.append((pair_list, record))
    return records


def pairs_coded_by(lists: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """How the pairs of ``lists`` were coded (codec weights, side-channel layout, codebook counts, harmonic
    redraw), each way once: what a sigma estimate depends on besides the clean audio, recorded in it so that
    pairs re-coded since are noticed (:func:`stale_sigma_warning`). The redraw is named only where there
    was one, so estimates recorded before it existed still match their pairs."""
    coded = {(str(r.get("ndac_hash") or ""), str(r.get("envelope") or ""),
              tuple(sorted(int(k) for k in r.get("n_codebooks") or [] if isinstance(k, int))),
              int(redraw) if isinstance(redraw := r.get("harmonic_redraw_hz"), int) else 0)
             for _, r in pair_list_records(lists)}
    return [{"ndac_hash": h, "envelope": e, "n_codebooks": list(k), **({"harmonic_redraw_hz": z} if z else {})}
            for h, e, k, z in sorted(coded) if h]


def stale_sigma_warning(sigma_file: str | os.PathLike, estimate: dict[str, Any],
                        lists: Sequence[str | os.PathLike]) -> str | None:
    """A line saying why ``estimate`` (read from ``sigma_file``) may not describe the pairs of ``lists``:
    it was estimated from pairs another codec (or side-channel setting) coded, as after
    ``prepare-pairs --force`` with new codec weights. None where they agree or either side records nothing
    (an official ``.npy`` curve, an estimate from hand-made pairs)."""
    recorded, now = estimate.get("pairs_coded_by"), pairs_coded_by(lists)
    if not isinstance(recorded, list) or not recorded or not now or recorded == now:
        return None

    def names(coded: list[Any]) -> str:
        return ", ".join(f"{c.get('ndac_hash')}" + (f" with {c['envelope']}" if c.get("envelope") else "")
                         + (f" at {','.join(map(str, c['n_codebooks']))} codebooks" if c.get("n_codebooks") else "")
                         + (f", redrawn below {c['harmonic_redraw_hz']} Hz" if c.get("harmonic_redraw_hz") else "")
                         for c in coded if isinstance(c, dict))

    return (f"{sigma_file} was estimated from pairs coded by {names(recorded)}, but the training pairs are now "
            f"coded by {names(now)}; run 'flowdec train estimate-sigma' again so that sigma_y fits them")


def _check_same_codec(out: Path, ndac_hash: str | None, force: bool, envelope: str = "", redraw: int = 0) -> None:
    """Refuse to resume into a folder another codec coded, or coded with another side-channel setting: kept
    files would silently pair the clean audio with other coded audio (what retraining a codec and re-running
    the pairs step used to do)."""
    summary = out / "prepare.json"
    if force or ndac_hash is None or not summary.is_file():
        return
    try:
        recorded = parse_json(summary.read_text())
        before = recorded.get("ndac_hash")
    except (OSError, ValueError, AttributeError):
        return
    if before and before != ndac_hash:
        raise TrainingError(f"{out}: its coded files come from another NDAC (weights {before}, this one is "
                            f"{ndac_hash}); use --force to re-code them, or a new output folder")
    if recorded.get("envelope", "") != envelope:
        raise TrainingError(f"{out}: its coded files were made with envelope {recorded.get('envelope', '')!r}, "
                            f"this run asks for {envelope!r}; use --force to re-code them, or a new output folder")
    if recorded.get("harmonic_redraw_hz", 0) != redraw:
        raise TrainingError(f"{out}: its coded files were made with harmonic redraw "
                            f"{recorded.get('harmonic_redraw_hz', 0)!r} Hz, this run asks for {redraw} Hz; use "
                            "--force to re-code them, or a new output folder")


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def pairs_from(paths: Sequence[str | os.PathLike], delimiter: str = ",") -> list[tuple[str, str]]:
    try:
        return read_pairs(paths, delimiter)
    except DataError as exc:
        raise TrainingError(str(exc)) from None
