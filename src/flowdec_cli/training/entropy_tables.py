"""Learning a model's entropy tables (``range-ctx1``, see flowdec_cli.entropy) from the codes of audio files.

``flowdec train entropy-tables MODEL train.txt`` codes every file with the model's codec at its full codebook
count (the first K codes of a frame do not depend on K), counts each codebook's codes in their contexts and
writes ``MODEL/entropy.safetensors``. Deterministic: the same files and settings give the same bytes.

Context classes: the codes of the context source (the same codebook's previous frame, or the coarser
codebook of the same frame) are clustered so that codes with similar next-code distributions share a class
(k-means with the code length as distance, from a deterministic start). Rows are the class counts smoothed
towards the codebook's marginal (itself smoothed towards uniform), so every code stays codable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bitrate import bits_for_codebook_size
from ..entropy import CodebookModel, EntropyTables, freqs_from_counts
from ..exceptions import FlowdecError
from .common import TrainingError

__all__ = ["TableSettings", "code_files", "learn_tables", "cross_entropy_bits", "build_tables_for_model"]


@dataclass
class TableSettings:
    """What each codebook conditions on. ``prev_classes``: classes of the previous frame's code (0: none);
    ``up_classes``: classes of the coarser codebook's code in the same frame (0: none; codebook 0 has none).
    ``smoothing``: weight, in codes, of the smoothed marginal added to every context's counts."""

    prev_classes: int = 8
    up_classes: int = 8
    smoothing: float = 1024.0
    marginal_smoothing: float = 0.5
    iterations: int = 10


def _cluster(src: np.ndarray, dst: np.ndarray, size: int, n_classes: int, iterations: int) -> np.ndarray:
    """code -> class map: codes of ``src`` whose next-code (``dst``) distributions are alike share a class."""
    counts = np.zeros((size, size), np.float64)
    np.add.at(counts, (src, dst), 1.0)
    total = counts.sum(axis=1)
    marginal = counts.sum(axis=0) + 0.5
    marginal /= marginal.sum()
    order = np.lexsort((np.arange(size), -total))  # most frequent first, ties by code: deterministic
    assign = np.zeros(size, np.int64)
    assign[order] = np.arange(size) % n_classes
    for _ in range(iterations):
        q = np.zeros((n_classes, size))
        np.add.at(q, assign, counts)
        q = q + 16.0 * marginal
        q /= q.sum(axis=1, keepdims=True)
        cost = counts @ (-np.log2(q)).T  # bits to code each source code's successors with each class
        new = np.where(total > 0, cost.argmin(axis=1), assign)
        if (new == assign).all():
            break
        assign = new
    # renumber classes by first use so that empty classes vanish and the numbering is canonical
    _, inverse = np.unique(assign, return_inverse=True)
    return inverse.astype(np.int64).reshape(-1)


def _contexts(arrays: Sequence[np.ndarray], k: int, cb: CodebookModel) -> tuple[np.ndarray, np.ndarray]:
    """(context, code) of every frame of codebook ``k`` in ``arrays`` ([K, T] each)."""
    ctxs, codes = [], []
    for a in arrays:
        row = a[k].astype(np.int64)
        t = row.shape[0]
        if t == 0:
            continue
        up = cb.up_map.astype(np.int64)[a[k - 1]] if cb.up_map is not None else np.zeros(t, np.int64)
        if cb.prev_map is not None:
            prev = np.empty(t, np.int64)
            prev[0] = cb.n_prev_ctx - 1
            prev[1:] = cb.prev_map.astype(np.int64)[row[:-1]]
        else:
            prev = np.zeros(t, np.int64)
        ctxs.append(prev * cb.n_up + up)
        codes.append(row)
    if not codes:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(ctxs), np.concatenate(codes)


def learn_tables(arrays: Sequence[np.ndarray], codebook_size: int, settings: TableSettings | None = None,
                 ndac_hash: str = "", info: dict[str, str] | None = None) -> EntropyTables:
    """Tables from code arrays [K, T] (one per channel of each file; at least one frame in all)."""
    s = settings or TableSettings()
    arrays = [np.asarray(a, dtype=np.int64) for a in arrays]
    if not arrays or sum(a.shape[1] for a in arrays) == 0:
        raise ValueError("no codes to learn entropy tables from")
    n_cb = arrays[0].shape[0]
    if any(a.shape[0] != n_cb for a in arrays):
        raise ValueError("all code arrays must have the same codebook count")
    size = int(codebook_size)
    codebooks = []
    for k in range(n_cb):
        prev_map = up_map = None
        if s.prev_classes > 0:
            src = np.concatenate([a[k, :-1] for a in arrays])
            dst = np.concatenate([a[k, 1:] for a in arrays])
            prev_map = _cluster(src, dst, size, s.prev_classes, s.iterations) if len(src) else np.zeros(size, np.int64)
        if k > 0 and s.up_classes > 0:
            src = np.concatenate([a[k - 1] for a in arrays])
            dst = np.concatenate([a[k] for a in arrays])
            up_map = _cluster(src, dst, size, s.up_classes, s.iterations)
        cb = CodebookModel(freq=np.zeros((0, size), np.int64), prev_map=prev_map, up_map=up_map)
        n_ctx = cb.n_prev_ctx * cb.n_up
        ctx, code = _contexts(arrays, k, cb)
        counts = np.zeros((n_ctx, size))
        np.add.at(counts, (ctx, code), 1.0)
        marginal = counts.sum(axis=0) + s.marginal_smoothing
        marginal /= marginal.sum()
        # back off in two steps: context -> its 'up' class alone -> marginal
        up_counts = counts.reshape(cb.n_prev_ctx, cb.n_up, size).sum(axis=0)
        up_probs = (up_counts + s.smoothing * marginal) / (up_counts.sum(axis=1, keepdims=True) + s.smoothing)
        smoothed = counts + s.smoothing * np.tile(up_probs, (cb.n_prev_ctx, 1))
        cb.freq = freqs_from_counts(smoothed)
        codebooks.append(cb)
    meta = {"prev_classes": str(s.prev_classes), "up_classes": str(s.up_classes),
            "smoothing": f"{s.smoothing:g}", **(info or {})}
    return EntropyTables(size, codebooks, ndac_hash=ndac_hash, info=meta)


def cross_entropy_bits(tables: EntropyTables, arrays: Sequence[np.ndarray], k: int) -> tuple[float, int]:
    """(ideal bits, code count) of codebook ``k`` of ``arrays`` under ``tables``: what the range coder
    achieves to within a few bytes per file."""
    ctx, code = _contexts([np.asarray(a, np.int64) for a in arrays], k, tables.codebooks[k])
    if not len(code):
        return 0.0, 0
    from ..entropy import TABLE_TOTAL

    f = tables.codebooks[k].freq[ctx, code].astype(np.float64)
    return float(-np.log2(f / TABLE_TOTAL).sum()), int(len(code))


def code_files(codec: Any, files: Iterable[Path], progress: Callable[[int], None] | None = None,
               failed: list[str] | None = None) -> list[np.ndarray]:
    """The codes [K, T] of every channel of every file, at the model's full codebook count. A file that
    cannot be read or coded raises, or with a ``failed`` list is noted there (its one-line reason) and left
    out, so that one bad file of a corpus does not lose the others."""
    from ..audio import read_audio

    out: list[np.ndarray] = []
    for path in files:
        try:
            audio, sr = read_audio(path)
            _header, codes = codec.compress_array(audio, sr, n_codebooks=codec.ndac.n_codebooks)
        except FlowdecError as exc:
            if failed is None:
                raise
            failed.append(str(exc) if str(path) in str(exc) else f"{path}: {exc}")
        else:
            out.extend(np.asarray(c, dtype=np.int16) for c in codes)
        if progress is not None:
            progress(1)
    return out


def build_tables_for_model(model_ref: str | os.PathLike, sources: Sequence[Path], out: Path | None = None,
                           settings: TableSettings | None = None, device: str = "auto", every: int = 1,
                           progress: Callable[[str, int], Any] | None = None,
                           overwrite: bool = True) -> tuple[Path, EntropyTables, dict]:
    """Code ``sources`` (list files or folders) with the model, learn its tables, write them into the model
    folder (or ``out``: :func:`~flowdec_cli.entropy.tables_file`). Tables already there are refused before
    any coding unless ``overwrite``. Returns (path written, tables, stats with the training cross-entropy)."""
    from ..entropy import save_tables, tables_file
    from ..fileio import OutputExistsError
    from ..models import ModelError
    from ..models.resolve import resolve
    from ..pipeline import Codec
    from .data import list_audio

    folder = resolve(model_ref)
    if out is None:
        if not folder.is_dir():
            raise ModelError(f"{model_ref}: not a model folder; give --out for the tables")
        out = folder
    if not overwrite and tables_file(out).exists():
        raise OutputExistsError(tables_file(out), before=True)
    codec = Codec.load(folder, device, with_postfilter=False)
    # a list's own order, so that --every picks the files it picked before lists were read by list_audio
    files = [Path(item.path) for item in list_audio(sources, sort=False)][::max(1, int(every))]
    if not files:
        raise ValueError("no audio files in the given sources")
    bar = progress("code files", len(files)) if progress else None
    failed: list[str] = []
    arrays = code_files(codec, files, (lambda n: bar.update(n)) if bar is not None else None, failed)
    if bar is not None:
        bar.close()
    if not arrays:
        raise TrainingError(f"no file could be coded ({len(failed)} failed; the first: {failed[0]})")
    tables = learn_tables(arrays, codec.ndac.codebook_size, settings, ndac_hash=codec.model.ndac_hash,
                          info={"trained_on": ", ".join(str(Path(s).name) for s in sources),
                                "files": str(len(files)), "every": str(every)})
    path = save_tables(tables, out)
    bits = [cross_entropy_bits(tables, arrays, k) for k in range(tables.n_codebooks)]
    nominal = bits_for_codebook_size(codec.ndac.codebook_size)
    stats = {"files": len(files) - len(failed), "failed": failed, "frames": int(sum(a.shape[1] for a in arrays)),
             "bits_per_code": [b / n if n else 0.0 for b, n in bits], "nominal_bits": nominal}
    return path, tables, stats
