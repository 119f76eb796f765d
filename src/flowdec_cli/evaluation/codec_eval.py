"""``flowdec eval --codec MODEL DIR``: code a folder at several bitrates and NFEs, score it.

For every audio file under ``DIR`` (found as in :mod:`.pairing`) and every selected bitrate:

1. encode once: ``Codec.compress_array(audio, sr, n_codebooks=...)`` (timed: *encode*),
2. for every NFE: ``Codec.decompress_codes_timed(header, codes, nfe=..., seed=...)`` (timed:
   *decode*; NFE 0 is the NDAC decoder alone, D0, and NFE > 0 adds the postfilter),
3. score the decoded audio against the original with the chosen metrics.

The pipeline measures its two model stages itself and returns them with the audio
(``DecompressResult.d0_seconds`` and ``.postfilter_seconds``): those are the *D0* and
*postfilter* columns. The whole decode also restores the gain, applies the clip guard and
resamples back to the file's rate, so D0 + postfilter is a little less than the decode.

With ``opus=True`` each selected bitrate is also coded with Opus through the ``opusenc`` /
``opusdec`` command-line tools (``opusenc --quiet --bitrate K``, ``opusdec --quiet --float
--rate 48000``), the decoded output resampled back to the file's rate when it is not 48 kHz.
The model's bitrates are per channel, so Opus gets ``kbps x channels`` for a multi-channel
file. libopus cannot go below about 6 kbps. Every row's ``kbps_on_disk`` is the size-derived
bitrate per channel: the .fdc file's for flowdec, the .opus file's (Ogg container included)
for Opus, so the two compare at what they really cost.

One row per (system, kbps, nfe): metric means over the files (NaN entries skipped) and
real-time factors ``rtf_enc``, ``rtf_d0``, ``rtf_pf``, ``rtf_dec`` = total processing seconds
of that stage / total audio seconds (< 1 is faster than real time; ``rtf_dec`` is the whole
decode, D0 + postfilter + the rest; Opus has no stages: NaN). A bitrate is encoded once per
file and that encode time is shown in each of its NFE rows. Timings are wall-clock on the
chosen device, after one untimed warm-up encode/decode of the first file.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..audio import AUDIO_EXTENSIONS, is_audio_path
from ..exceptions import FlowdecError
from .metrics import DEFAULT_METRICS, METRICS, MetricUnavailable, compute_metrics, resample
from .pairing import find_audio, read_scored_audio
from .report import Report

__all__ = ["OpusUnavailable", "opus_available", "opus_roundtrip", "run_codec_eval"]


class OpusUnavailable(FlowdecError, RuntimeError):
    """opusenc/opusdec are not on PATH."""


class OpusError(FlowdecError, RuntimeError):
    """opusenc/opusdec failed."""


def opus_available() -> bool:
    """Whether both ``opusenc`` and ``opusdec`` are on PATH."""
    return shutil.which("opusenc") is not None and shutil.which("opusdec") is not None


@dataclass
class OpusResult:
    audio: np.ndarray  #: decoded, float32 [frames, channels] at the input's sample rate
    encode_s: float
    decode_s: float
    nbytes: int  #: size of the .opus file (Ogg container included)

    def kbps(self, duration_s: float) -> float:
        return self.nbytes * 8.0 / duration_s / 1000.0 if duration_s > 0 else float("nan")


def opus_roundtrip(
    audio: np.ndarray, sample_rate: int, kbps: float, workdir: str | Path | None = None
) -> OpusResult:
    """Encode ``audio`` ([frames, channels] float) with opusenc at ``kbps`` and decode it.

    The input goes to opusenc as a 32-bit float WAV at its own rate; opusdec writes 48 kHz
    float, which is resampled to ``sample_rate`` when needed and trimmed/padded to the input
    length. Raises :class:`OpusUnavailable` when the tools are missing, :class:`OpusError`
    when one fails.
    """
    import soundfile as sf

    enc, dec = shutil.which("opusenc"), shutil.which("opusdec")
    if enc is None or dec is None:
        raise OpusUnavailable("opusenc/opusdec not found on PATH (Debian/Ubuntu: opus-tools)")
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[:, None]
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        src, coded, out = Path(tmp) / "in.wav", Path(tmp) / "x.opus", Path(tmp) / "out.wav"
        sf.write(str(src), audio, int(sample_rate), subtype="FLOAT")
        t0 = time.perf_counter()
        _run([enc, "--quiet", "--bitrate", f"{kbps:g}", str(src), str(coded)], "opusenc")
        t1 = time.perf_counter()
        _run([dec, "--quiet", "--float", "--rate", "48000", str(coded), str(out)], "opusdec")
        t2 = time.perf_counter()
        decoded, sr = read_scored_audio(out)
        nbytes = coded.stat().st_size
    if sr != sample_rate:
        decoded = resample(decoded, sr, sample_rate).astype(np.float32)
    n = len(audio)
    if len(decoded) >= n:
        decoded = decoded[:n]
    else:
        decoded = np.pad(decoded, ((0, n - len(decoded)), (0, 0)))
    return OpusResult(decoded, t1 - t0, t2 - t1, nbytes)


def _run(cmd: list[str], name: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise OpusError(f"{name} failed (exit {proc.returncode}): {msg[-1] if msg else ''}")


@dataclass
class _Acc:
    values: dict[str, list[float]] = field(default_factory=dict)
    enc_s: float = 0.0
    dec_s: float = 0.0
    d0_s: float = 0.0
    pf_s: float = 0.0
    staged: bool = True  #: the decodes of this row report their stages (flowdec's; Opus has none)
    audio_s: float = 0.0
    chan_s: float = 0.0  #: audio seconds x channels (for per-channel bitrates)
    nbytes: int = 0
    n: int = 0

    def add(self, part: dict[str, Any]) -> None:
        """One file's share of this row: its times, seconds, bytes and scores."""
        for name in ("enc_s", "dec_s", "d0_s", "pf_s", "audio_s", "chan_s", "nbytes"):
            setattr(self, name, getattr(self, name) + part.get(name, 0))
        self.n += 1
        for k, v in part["scores"].items():
            self.values.setdefault(k, []).append(v)


_Row = tuple[tuple[str, float, "int | None"], dict[str, Any], dict[str, str]]


def _code_and_score(codec: Any, f: Path, chosen: list[tuple[int, float]], nfes: list[int], metrics: Sequence[str],
                    seed: int, use_opus: bool, warmed: bool,
                    save: Callable[[str, np.ndarray, int], None]) -> tuple[list[_Row], bool]:
    """One file at every chosen rate and NFE (and Opus): its rows' shares ``(key, share, metrics not
    computed)`` and whether the codec is warmed up now. Each decoded signal goes to ``save`` (by its tag)
    as soon as it is scored, so that only one is held at a time."""
    audio, sr = read_scored_audio(f)
    duration = len(audio) / sr
    channels = audio.shape[1]
    if not warmed:  # untimed warm-up (lazy init, kernel selection...)
        h, c = codec.compress_array(audio, sr, bitrate_kbps=chosen[0][1])
        codec.decompress_codes_timed(h, c, nfe=nfes[0], seed=seed)
    rows: list[_Row] = []
    seconds = {"audio_s": duration, "chan_s": duration * channels}
    for _, kbps in chosen:
        t0 = time.perf_counter()
        header, codes = codec.compress_array(audio, sr, bitrate_kbps=kbps)
        enc_s = time.perf_counter() - t0
        nbytes = codec.coded_bytes(header, codes) if hasattr(codec, "coded_bytes") else 0
        for nfe in nfes:
            t0 = time.perf_counter()
            decoded, stages = codec.decompress_codes_timed(header, codes, nfe=nfe, seed=seed)
            dec_s = time.perf_counter() - t0
            errors: dict[str, str] = {}
            scores = compute_metrics(audio, sr, decoded, sr, list(metrics), errors=errors)
            # one encode serves every NFE row of this bitrate
            rows.append((("flowdec", float(kbps), nfe), {"enc_s": enc_s, "dec_s": dec_s, "d0_s": stages.d0_seconds,
                                                          "pf_s": stages.postfilter_seconds, "nbytes": nbytes,
                                                          "scores": scores, **seconds}, errors))
            save(f"flowdec_{kbps:g}k_nfe{nfe}", decoded, sr)
    if use_opus:
        for _, kbps in chosen:
            res = opus_roundtrip(audio, sr, max(float(kbps), 0.5) * channels)
            errors = {}
            scores = compute_metrics(audio, sr, res.audio, sr, list(metrics), errors=errors)
            rows.append((("opus", float(kbps), None), {"enc_s": res.encode_s, "dec_s": res.decode_s,
                                                       "nbytes": res.nbytes, "scores": scores, **seconds}, errors))
            save(f"opus_{kbps:g}k", res.audio, sr)
    return rows, True


def _collect_inputs(path: Path) -> list[Path]:
    if path.is_file():
        if not is_audio_path(path):
            raise ValueError(f"{path}: not an audio file (use one of {', '.join(sorted(AUDIO_EXTENSIONS))})")
        return [path]
    files = find_audio(path)
    if not files:
        raise ValueError(f"{path}: no audio files found")
    return files


def _select_bitrates(codec: Any, wanted: Sequence[float] | None) -> list[tuple[int, float]]:
    """The rates to score: every offered one, or what ``-b`` gives for each wanted rate (the highest offered
    rate not above it, as compress picks; :meth:`Codec.choose_rate`), each once."""
    if not wanted:
        return list(codec.bitrates())
    out: list[tuple[int, float]] = []
    for k in wanted:
        point = codec.choose_rate(float(k))
        if (point.codebooks, point.kbps) not in out:
            out.append((point.codebooks, point.kbps))
    return out


def run_codec_eval(
    model: str,
    path: str | Path,
    *,
    bitrates: Sequence[float] | None = None,
    nfes: Sequence[int] | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    device: str = "auto",
    seed: int = 0,
    opus: bool = False,
    save_dir: str | Path | None = None,
    overwrite: bool = True,
    log: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
    on_error: Callable[[str], None] | None = None,
) -> Report:
    """Code every audio file under ``path`` and return a :class:`Report` with one row per
    (system, kbps, nfe). ``bitrates``: kbps values from ``Codec.bitrates()`` (None: all). ``nfes``: None
    compares the codec alone (0) with the model's default NFE, which is 0 too for a codec without a
    postfilter: the default suits every model, as compress's does.
    ``save_dir``: also write each decoded file there as
    ``<relative path>.<system>_<kbps>k[_nfe<N>].wav`` (the input's extension kept, so that ``a.wav`` and
    ``a.flac`` do not share one; ``overwrite=False``: an existing one is refused before any work, as
    ``OutputExistsError``). ``log``: receives progress/notes lines; ``warn``: a metric that could not be
    computed for a file; ``on_error``: a file that could not be read, coded or scored, which is left out
    (the others go on; the report's ``failed`` lists them; what it saved before it failed stays). A metric
    that is not installed, missing Opus tools or a postfilter the model lacks stop the run.
    """
    from flowdec_cli.pipeline import Codec  # lazy: heavy, and only needed here

    from ..audio import write_audio

    say = log or (lambda _m: None)
    root = Path(path)
    files = _collect_inputs(root)
    codec = Codec.load(model, device=device)
    chosen = _select_bitrates(codec, bitrates)
    nfes = [int(n) for n in nfes] if nfes is not None else sorted({0, codec.resolve_nfe(None)})
    notes: list[str] = []
    use_opus = bool(opus)
    if opus and not opus_available():
        notes.append("opus: skipped (opusenc/opusdec not found on PATH; install opus-tools)")
        use_opus = False
    elif opus and any(kbps < 6 for _, kbps in chosen):
        notes.append("opus: libopus does not go below about 6 kbps per channel; see kbps_on_disk")

    if codec.postfilter is None and any(nfes):  # the run's problem: said once, before any file
        raise ValueError(f"model '{model}' has no postfilter; give --nfe 0")
    tags = [f"flowdec_{kbps:g}k_nfe{nfe}" for _, kbps in chosen for nfe in nfes]
    tags += [f"opus_{kbps:g}k" for _, kbps in chosen] if use_opus else []

    def relative(f: Path) -> Path:
        return f.relative_to(root) if root.is_dir() else Path(f.name)

    def saved(rel: Path, tag: str) -> Path:
        assert save_dir is not None
        return Path(save_dir) / rel.parent / f"{rel.name}.{tag}.wav"

    if save_dir is not None:
        if Path(save_dir).exists() and not Path(save_dir).is_dir():
            raise ValueError(f"{save_dir}: is a file; --save takes a folder")
        if not overwrite:  # before the work, not after the first file's
            from ..fileio import OutputExistsError

            taken = next((p for f in files for t in tags if (p := saved(relative(f), t)).exists()), None)
            if taken is not None:
                raise OutputExistsError(taken)

    accs: dict[tuple[str, float, int | None], _Acc] = {}
    failed: list[str] = []
    warmed = False
    for i, f in enumerate(files, 1):
        rel = relative(f)
        say(f"[{i}/{len(files)}] {rel}")
        def save(tag: str, audio: np.ndarray, sr: int, rel: Path = rel) -> None:
            if save_dir is not None:
                write_audio(saved(rel, tag), audio, sr, "FLOAT", overwrite=overwrite)

        try:  # one file's rows are added only once all of them were made: a file that fails adds none
            rows, warmed = _code_and_score(codec, f, chosen, nfes, metrics, seed, use_opus, warmed, save)
        except (MetricUnavailable, OpusUnavailable):  # the run's problem, not the file's
            raise
        except (FlowdecError, OSError, ValueError) as exc:  # ours name what; the file is named here if not
            message = str(exc) if str(f) in str(exc) else f"{f}: {exc}"
            failed.append(message)
            if on_error is not None:
                on_error(message)
            continue
        for key, part, errors in rows:
            acc = accs.setdefault(key, _Acc(staged=key[0] == "flowdec"))
            acc.add(part)
            for metric, why in errors.items():
                if warn is not None:
                    warn(f"{rel}: {key[0]} {key[1]:g} kbit/s: {metric} not computed: {why}")
    if files and len(failed) == len(files):
        raise ValueError(f"none of the {len(files)} files could be coded and scored (the first: {failed[0]})")

    values = list(metrics) + ["rtf_enc", "rtf_d0", "rtf_pf", "rtf_dec", "kbps_on_disk"]
    hib = {m: METRICS[m].higher_is_better for m in metrics}
    hib.update(rtf_enc=False, rtf_d0=False, rtf_pf=False, rtf_dec=False)
    report = Report(
        labels=["system", "kbps", "nfe", "files"],
        values=values,
        higher_is_better=hib,
        with_mean=False,
        notes=notes,
        extra={"model": model, "device": str(codec.device), "seed": seed, "n_files": len(files) - len(failed),
               "failed": failed},
    )
    for (system, kbps, row_nfe), a in sorted(
        accs.items(), key=lambda kv: (kv[0][0] != "flowdec", kv[0][1], kv[0][2] or 0)
    ):
        row: dict[str, Any] = {"system": system, "kbps": float(kbps), "nfe": row_nfe, "files": a.n}
        fewer: dict[str, int] = {}
        for m in metrics:
            vals = [v for v in a.values.get(m, []) if np.isfinite(v)]
            row[m] = float(np.mean(vals)) if vals else float("nan")
            if 0 < len(vals) < a.n:  # the row's files count all; this mean does not
                fewer[m] = len(vals)
                where = f"{system} {kbps:g} kbit/s" + (f" NFE {row_nfe}" if row_nfe is not None else "")
                report.notes.append(f"{where}: {m} is the mean over {len(vals)} of {a.n} files (not computed "
                                    "for the others)")
        if fewer:  # in the table's cells and the JSON row too, not only in notes a script may not read
            row["counts"] = fewer
        nan = float("nan")

        def per_s(x: float, audio_s: float = a.audio_s) -> float:
            return x / audio_s if audio_s else float("nan")
        row["rtf_enc"] = per_s(a.enc_s)
        row["rtf_d0"] = per_s(a.d0_s) if a.staged else nan
        row["rtf_pf"] = per_s(a.pf_s) if a.staged else nan
        row["rtf_dec"] = per_s(a.dec_s)
        row["kbps_on_disk"] = a.nbytes * 8 / a.chan_s / 1000 if (a.nbytes and a.chan_s) else nan
        report.rows.append(row)
    return report
