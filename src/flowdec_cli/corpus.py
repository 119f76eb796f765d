"""Whole corpora: many files coded by workers that each load the model once, on Ray Data or in this process.

The plan is made on the driver: the inputs (a folder, a glob or a manifest) become items ``(id, path)``,
sorted by id; items already done in OUT are dropped (resume); the rest are cut into *shards* of
``shard_files`` items. A shard is the unit of work: one row of a Ray dataset whose ``map_batches`` runs a
callable class (:class:`EncodeWorker`, an actor holding the loaded model), or one call of the same class in
this process when Ray is absent (``engine="local"``). A worker codes its shard file by file with
:class:`flowdec_cli.pipeline.Codec` (so the codes are exactly those of ``flowdec compress``, long files
chunked in bounded memory) and writes

* ``to="parquet"``: one Parquet file ``part-NNNNN.parquet`` per shard, one row per file (see
  :data:`SHARD_COLUMNS`; the codes as ``list<list<list<int16>>>`` [channels, codebooks, frames]), written to
  a temporary sibling and published with a no-clobber rename, so a shard is there whole or not at all;
* ``to="fdc"``: the mirrored tree ``OUT/<id>.fdc``, each file written as ``flowdec compress`` writes it.

It returns one small status record per file (never the codes), which the driver streams for progress. A
file that cannot be coded becomes a ``failed`` record and the shard goes on; ``OUT/_failures.csv`` lists them
after the run. A worker process that dies has its shard retried by Ray on a restarted actor (Ray Data's
actors default to ``max_restarts=-1, max_task_retries=-1``); since outputs are only ever published whole,
the retry finds what the dead worker had finished and redoes the rest.

Reading back: :func:`iter_rows` yields :class:`CodeRow` (id, path, header, codes) from shards, and
:func:`decode_corpus` turns shards back into audio files the same way.
"""

from __future__ import annotations

import csv
import glob as globmod
import io
import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .exceptions import FlowdecError
from .fileio import parse_json

__all__ = ["CorpusError", "Item", "CodeRow", "RunSummary", "list_inputs", "encode_corpus", "decode_corpus",
           "iter_rows", "shard_files", "ray_available", "SHARD_COLUMNS"]

SHARD_GLOB = "part-*.parquet"
FAILURES = "_failures.csv"
SETTINGS = "_corpus.json"
CODES_FORMAT = "flowdec-codes/1"
ROW_GROUP_CODES = 8 << 20  # codes (values) buffered before a Parquet row group is written: bounded memory

SHARD_COLUMNS = ("id", "path", "duration_s", "sample_rate", "channels", "num_samples", "model", "model_hash",
                 "n_codebooks", "model_codebooks", "codebook_size", "model_sample_rate", "hop_length",
                 "num_frames", "chunk_frames", "context_frames", "gain", "package_version", "envelope_layout",
                 "envelope", "pitch_layout", "pitch", "codes")
"""The columns of a shard, one row per file; ``codes`` is [channels, n_codebooks, num_frames] of int16;
``envelope`` the band-level side channel's levels [channels, windows, bands] of int8 (empty, with an empty
``envelope_layout``, when the file has none; shards written before it lack both columns); ``pitch`` the
pitch side channel's steps [channels, values] of int16 (likewise, with ``pitch_layout``)."""
_OPTIONAL_COLUMNS = ("envelope_layout", "envelope", "pitch_layout", "pitch")

_KILL_ONCE_ENV = "FLOWDEC_CORPUS_KILL_ONCE"  # fault injection for the tests: see EncodeWorker._maybe_die


class CorpusError(FlowdecError):
    """A corpus request that cannot be carried out; the message names the file and the problem."""


@dataclass(frozen=True)
class Item:
    id: str    # also the output's path below OUT (without extension) in the .fdc tree
    path: str  # absolute path of the input


# -- outputs already there ----------------------------------------------------------------------------

def _stranger_at(dst: Path) -> str | None:
    """Why what lies at the output path ``dst`` is not an earlier run's output (None: nothing is there, or
    it is one). A rerun skips its own outputs, which are published whole (so their first bytes say what
    they are); a file of someone else's that bears an output's name is neither counted as done nor
    replaced, but reported."""
    if not dst.exists():
        return None
    if not dst.is_file():
        return f"{dst}: is a folder, not an output file" if dst.is_dir() else f"{dst}: is not a regular file"
    fdc = dst.suffix.lower() == ".fdc"
    try:
        if fdc:  # its magic, not the whole file: a rerun over a million outputs reads a few bytes of each
            from .container import FDC_MAGIC

            with open(dst, "rb") as f:
                if f.read(len(FDC_MAGIC)) == FDC_MAGIC:
                    return None
        else:
            import soundfile as sf

            sf.info(str(dst))  # the header only
            return None
    except OSError as exc:
        return f"{dst}: is there and cannot be read ({exc.strerror or exc}); not replaced"
    except Exception:  # libsndfile's refusal: what it is exactly does not matter, it is not ours
        pass
    kind = "a .fdc file" if fdc else "an audio file"
    return f"{dst}: is there and is not {kind} of an earlier run; not replaced (move it away and run again)"


def _output_of_earlier_run(dst: Path) -> bool:
    """Whether ``dst`` holds an earlier run's output (which a rerun skips)."""
    return dst.is_file() and _stranger_at(dst) is None


# -- inputs ------------------------------------------------------------------------------------------

def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _through_folder_link(path: Path, base: Path) -> bool:
    """Whether ``path`` reaches its file through a link to a folder below ``base``."""
    return any(p.is_symlink() for p in path.parents if p != base and base in p.parents)


def _manifest_rows(path: Path) -> list[tuple[str | None, str]]:
    """(id or None, path as written) of a CSV (header with ``path``, optionally ``id``) or JSONL manifest."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (as Excel writes CSV) is not data
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{path}: cannot read manifest ({getattr(exc, 'strerror', None) or exc})") from None
    rows: list[tuple[str | None, str]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise CorpusError(f"{path}: a CSV manifest needs a header row with a 'path' column (and optionally 'id')")
        for n, rec in enumerate(reader, start=2):
            if not (rec.get("path") or "").strip():
                raise CorpusError(f"{path}: line {n}: empty path")
            rows.append(((rec.get("id") or "").strip() or None, rec["path"].strip()))
        return rows
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = parse_json(line)
        except ValueError as exc:
            raise CorpusError(f"{path}: line {n}: not JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("path"), str) or not rec["path"].strip():
            raise CorpusError(f"{path}: line {n}: each line needs an object with a 'path' string")
        rid = rec.get("id")
        rows.append((str(rid) if rid not in (None, "") else None, rec["path"]))
    return rows


def _check_id(item_id: str, source: str) -> str:
    """Ids name outputs below OUT: relative, no '..', no empty parts."""
    p = PurePosixPath(item_id)
    if not item_id or item_id.startswith("/") or any(part in ("", ".", "..") for part in item_id.split("/")) \
            or "\\" in item_id or "\x00" in item_id or p.is_absolute():
        raise CorpusError(f"{source}: id '{item_id}' is not a relative path without '..' (ids name the outputs)")
    return item_id


def _default_id(path: Path, base: Path) -> str:
    try:
        rel = path.relative_to(base)
    except ValueError:
        rel = Path(*path.parts[1:]) if path.is_absolute() else path
    return rel.with_suffix("").as_posix()


def list_inputs(source: str | os.PathLike, pattern: str | None = None,
                exclude: str | os.PathLike | None = None) -> list[Item]:
    """The items of a folder (its audio files, recursively; ``pattern`` filters relative paths), a glob
    (``'data/**/*.flac'``; every file it matches), a manifest (``.csv`` with a ``path`` column, or ``.jsonl``
    of ``{"path": ..., "id": ...}``; relative paths are relative to the manifest; ids optional) or one
    audio file. Default ids: the path relative to the folder, the glob's fixed prefix or the manifest's
    paths' common folder, without extension. Sorted by id; duplicate ids are refused. Files below
    ``exclude`` (the output folder) are left out."""
    from .audio import audio_files_below

    text = os.fspath(source)
    src = Path(text)
    skip = Path(exclude).resolve() if exclude is not None else None
    rows: list[tuple[str | None, Path]] = []
    if src.is_dir():
        base = src
        rows = [(None, p) for p in audio_files_below(src, pattern)]
    elif pattern is not None:  # a manifest or glob chooses its files itself; the pattern would do nothing
        raise CorpusError(f"{text}: --glob filters the files of a folder; this input is not one")
    elif src.is_file() and src.suffix.lower() in (".csv", ".jsonl", ".ndjson"):
        found = [(rid, (src.parent / p) if not Path(p).is_absolute() else Path(p))
                 for rid, p in _manifest_rows(src)]
        rows = [(rid, Path(os.path.abspath(p))) for rid, p in found]  # relative and absolute lines mix
        base = Path(os.path.commonpath([str(p.parent) for _, p in rows])) if rows else src.parent
    elif src.is_file():
        base = src.parent
        rows = [(None, src)]
    elif _is_glob(text):
        parts = Path(text).parts
        fixed = [p for p in parts[:next(i for i, p in enumerate(parts) if _is_glob(p))]]
        base = Path(*fixed) if fixed else Path(".")
        # through no link to a folder, as a folder's walk (a link to . repeated every file under a new id)
        rows = [(None, Path(p)) for p in sorted(globmod.glob(text, recursive=True))
                if os.path.isfile(p) and not _through_folder_link(Path(p), base)]
    else:
        raise CorpusError(f"{text}: no such folder, file or manifest, and no glob pattern")
    items: dict[str, Item] = {}
    for rid, p in rows:
        if skip is not None and (p.resolve() == skip or skip in p.resolve().parents):
            continue
        item_id = _check_id(rid if rid is not None else _default_id(p, base), text)
        path = str(p.resolve())
        if item_id in items:
            raise CorpusError(f"{text}: id '{item_id}' names two inputs ({items[item_id].path} and {path}); "
                              + ("every id must be unique" if rid is not None else "give ids in a manifest"))
        items[item_id] = Item(item_id, path)
    if not items:
        if skip is not None and rows:  # everything found lies in the output folder
            raise CorpusError(f"{text}: no input files outside the output folder (is the output the input?)")
        raise CorpusError(f"{text}: no input files found")
    return [items[k] for k in sorted(items)]


# -- shards ------------------------------------------------------------------------------------------

def shard_files(folder: str | os.PathLike) -> list[Path]:
    """The shards of a Parquet corpus folder (or the file itself), in order."""
    p = Path(folder)
    if p.is_file():
        return [p]
    if not p.exists():
        raise CorpusError(f"{p}: no such file or folder")
    return sorted(p.glob(SHARD_GLOB))


def _check_column_types(schema: Any, path: Path) -> None:
    """Ids and paths are text and codes nested lists of integers, as :func:`_shard_schema` writes them: a
    shard with other types is refused whole (int ids became names, string codes failed in numpy)."""
    import pyarrow as pa

    def integers_at_depth(t: Any, depth: int) -> bool:
        for _ in range(depth):
            if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
                return False
            t = t.value_type
        return bool(pa.types.is_integer(t))

    for name in ("id", "path"):
        if name in schema.names and not (pa.types.is_string(t := schema.field(name).type)
                                         or pa.types.is_large_string(t)):
            raise CorpusError(f"{path}: not a flowdec shard (column '{name}' holds {t}, not text)")
    if "codes" in schema.names and not integers_at_depth(schema.field("codes").type, 3):
        raise CorpusError(f"{path}: not a flowdec shard (column 'codes' holds {schema.field('codes').type}, "
                          "not lists of lists of lists of integers)")


def _shard_ids(path: Path) -> list[str | None]:
    """The ids of a shard's rows (None for a row without one); :class:`CorpusError` naming the shard when it
    cannot be read as one."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["id"])
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, KeyError... for what is not a shard
        raise CorpusError(f"{path}: not a readable shard ({_arrow_cause(exc)})") from None
    _check_column_types(table.schema, path)
    return [None if x is None else str(x) for x in table.column("id").to_pylist()]


def _arrow_cause(exc: Exception) -> str:
    """A pyarrow error in one line: its class and the first line of its message (some have none)."""
    first = (str(exc).splitlines() or ["no detail"])[0]
    return f"{type(exc).__name__}: {first}"


def _shard_schema(codes_type: Any = None) -> Any:
    import pyarrow as pa

    inner = codes_type or pa.int16()
    fields = [("id", pa.string()), ("path", pa.string()), ("duration_s", pa.float64()),
              ("sample_rate", pa.int32()), ("channels", pa.int32()), ("num_samples", pa.int64()),
              ("model", pa.string()), ("model_hash", pa.string()), ("n_codebooks", pa.int32()),
              ("model_codebooks", pa.int32()), ("codebook_size", pa.int32()), ("model_sample_rate", pa.int32()),
              ("hop_length", pa.int32()), ("num_frames", pa.int64()), ("chunk_frames", pa.int32()),
              ("context_frames", pa.int32()), ("gain", pa.float64()), ("package_version", pa.string()),
              ("envelope_layout", pa.string()), ("envelope", pa.list_(pa.list_(pa.list_(pa.int8())))),
              ("pitch_layout", pa.string()), ("pitch", pa.list_(pa.list_(pa.int16()))),
              ("codes", pa.list_(pa.list_(pa.list_(inner))))]
    meta = {b"flowdec": json.dumps({"format": CODES_FORMAT, "codes": "[channels, n_codebooks, num_frames]"}).encode()}
    return pa.schema(fields, metadata=meta)


def _codes_array(codes_list: list[np.ndarray]) -> Any:
    """list<list<list<int16>>> of [C,K,T] arrays, built from offsets (no Python loop over values)."""
    import pyarrow as pa

    values = np.concatenate([c.astype(np.int16, copy=False).ravel() for c in codes_list]) if codes_list \
        else np.zeros(0, np.int16)
    inner_len, mid_len, outer_len = [], [], []
    for c in codes_list:
        ch, k, t = c.shape
        inner_len.extend([t] * (ch * k))
        mid_len.extend([k] * ch)
        outer_len.append(ch)

    def offsets(lengths: list[int]) -> Any:
        return pa.array(np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32))

    inner = pa.ListArray.from_arrays(offsets(inner_len), pa.array(values, pa.int16()))
    mid = pa.ListArray.from_arrays(offsets(mid_len), inner)
    return pa.ListArray.from_arrays(offsets(outer_len), mid)


def _row_batch(rows: list[tuple[Item, Any, np.ndarray]]) -> Any:
    import pyarrow as pa

    schema = _shard_schema()
    cols: dict[str, list] = {name: [] for name in SHARD_COLUMNS if name != "codes"}
    for item, h, _ in rows:
        vals = dict(id=item.id, path=item.path, duration_s=h.duration, sample_rate=h.sample_rate,
                    channels=h.channels, num_samples=h.num_samples, model=h.model_name, model_hash=h.model_hash,
                    n_codebooks=h.n_codebooks, model_codebooks=h.model_codebooks, codebook_size=h.codebook_size,
                    model_sample_rate=h.model_sample_rate, hop_length=h.hop_length, num_frames=h.num_frames,
                    chunk_frames=h.chunk_frames, context_frames=h.context_frames, gain=h.gain,
                    package_version=h.package_version,
                    envelope_layout=h.envelope_layout if h.envelope is not None else "",
                    envelope=np.asarray(h.envelope).tolist() if h.envelope is not None else [],
                    pitch_layout=h.pitch_layout if h.pitch is not None else "",
                    pitch=np.asarray(h.pitch).tolist() if h.pitch is not None else [])
        for k, v in vals.items():
            cols[k].append(v)
    arrays = [pa.array(cols[f.name], f.type) for f in schema if f.name != "codes"]
    arrays.append(_codes_array([c for _, _, c in rows]))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


@dataclass
class CodeRow:
    """One file of a shard: its id, source path, the .fdc header it would have, and codes [C, K, T] (int64)."""

    id: str
    path: str
    header: Any
    codes: np.ndarray

    @property
    def duration(self) -> float:
        return self.header.duration


def _header_of(rec: dict[str, Any]) -> Any:
    from .container import FdcHeader

    return FdcHeader(model_name=rec["model"], model_hash=rec["model_hash"], sample_rate=int(rec["sample_rate"]),
                     channels=int(rec["channels"]), num_samples=int(rec["num_samples"]),
                     model_sample_rate=int(rec["model_sample_rate"]), hop_length=int(rec["hop_length"]),
                     codebook_size=int(rec["codebook_size"]), n_codebooks=int(rec["n_codebooks"]),
                     model_codebooks=int(rec["model_codebooks"]), num_frames=int(rec["num_frames"]),
                     chunk_frames=int(rec["chunk_frames"]), context_frames=int(rec["context_frames"]),
                     gain=float(rec["gain"]), package_version=str(rec["package_version"]))


def _attach_envelope(header: Any, rec: dict[str, Any], where: str) -> None:
    """The row's side-channel levels onto its header, checked as a .fdc reader checks them: a known layout
    at the model's rate, exactly the windows its codes span, levels in range."""
    from .envelope import EnvelopeError, check_range, check_shape, envelope_layout

    name = rec.get("envelope_layout") or ""
    if not name:
        return
    levels = np.asarray(rec.get("envelope") or [], np.int16)
    try:
        layout = envelope_layout(str(name), header.model_sample_rate)
        if levels.size == 0:  # a file of no windows: its nested lists keep no band axis ([[]] for one channel)
            levels = np.zeros((header.channels, 0, layout.n_bands), np.int16)
        check_shape(layout, levels, header.channels, header.coded_length)
        check_range(layout, levels)
    except EnvelopeError as exc:
        raise CorpusError(f"{where}: its envelope does not fit its codes ({exc})") from None
    header.envelope_layout, header.envelope = layout.name, levels


def _attach_pitch(header: Any, rec: dict[str, Any], where: str) -> None:
    """The row's pitch steps onto its header, checked as a .fdc reader checks them: a known layout at the
    model's rate, exactly the values its codes span, steps in range."""
    from .pitch import PitchError, check_steps, pitch_layout

    name = rec.get("pitch_layout") or ""
    if not name:
        return
    try:
        layout = pitch_layout(str(name), header.model_sample_rate)
        steps = np.asarray(rec.get("pitch") or [], np.int16).reshape(header.channels, -1)
        check_steps(layout, steps, header.channels, header.coded_length)
    except (PitchError, ValueError) as exc:
        raise CorpusError(f"{where}: its pitch does not fit its codes ({exc})") from None
    header.pitch_layout, header.pitch = layout.name, steps


def _nested_lengths(codes: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The list lengths of a batch's ``codes`` column at each level: channels per row, codebooks per
    channel, frames per codebook (a row is checked against its header with them, not by position)."""
    def lengths(arr: Any) -> np.ndarray:
        return np.asarray(arr.value_lengths().fill_null(-1).to_numpy(zero_copy_only=False), np.int64)

    return lengths(codes), lengths(codes.flatten()), lengths(codes.flatten().flatten())


def _checked_header(rec: dict[str, Any], where: str, lengths: tuple[int, np.ndarray, np.ndarray]) -> Any:
    """A row's header, checked as a .fdc reader checks one and against the row's own code lists (channels,
    codebooks per channel, frames per codebook: ``lengths``), with its side channel attached; every problem
    is a :class:`CorpusError` naming ``where``."""
    from .container import FdcError

    n_ch, n_cb, n_fr = lengths
    try:
        header = _header_of(rec)
        if n_ch != header.channels or np.any(n_cb != header.n_codebooks) or np.any(n_fr != header.num_frames):
            raise CorpusError(f"{where}: codes of another shape than its header says "
                              f"({header.channels} x {header.n_codebooks} x {header.num_frames})")
        header.validate(where)
        _attach_envelope(header, rec, where)
        _attach_pitch(header, rec, where)
    except FdcError as exc:
        raise CorpusError(str(exc)) from None
    except (KeyError, TypeError, ValueError) as exc:  # a row whose fields are not what a shard has
        raise CorpusError(f"{where}: malformed ({exc})") from None
    return header


def iter_rows(source: str | os.PathLike, batch_rows: int = 16,
              errors: list[tuple[str | None, str]] | None = None) -> Iterator[CodeRow]:
    """Every file of a Parquet corpus (a folder of shards or one shard), in shard order, a few rows in
    memory at a time. The header is checked as a .fdc reader checks it and each row's codes against their
    own header, so a row that claims more samples than its codes describe is refused (:class:`CorpusError`).
    With an ``errors`` list a bad row is noted there as (id, reason; id None for a row without one) and the
    others still come; a shard that cannot be read any further always raises."""
    import pyarrow.parquet as pq


    files = shard_files(source)
    if not files:
        raise CorpusError(f"{source}: no Parquet shards ({SHARD_GLOB}) found")
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except Exception as exc:
            raise CorpusError(f"{f}: not a readable Parquet file ({exc})") from None
        missing = [c for c in SHARD_COLUMNS if c not in pf.schema_arrow.names and c not in _OPTIONAL_COLUMNS]
        if missing:
            raise CorpusError(f"{f}: not a flowdec shard (missing columns {', '.join(missing)})")
        _check_column_types(pf.schema_arrow, f)
        batches = pf.iter_batches(batch_size=batch_rows)
        while True:
            try:
                batch = next(batches)
                column = batch.column("codes")
                meta = batch.drop_columns(["codes"]).to_pylist() if hasattr(batch, "drop_columns") else \
                    [{k: v for k, v in row.items() if k != "codes"} for row in batch.to_pylist()]
                per_row, per_channel, per_codebook = _nested_lengths(column)
                values = column.flatten().flatten().flatten()
                gaps = values.is_null().to_numpy(zero_copy_only=False) if values.null_count else None
                flat = values.fill_null(0).to_numpy(zero_copy_only=False)  # rows with a gap fail below
            except StopIteration:
                break
            except Exception as exc:  # a damaged page: pyarrow's OSError or ArrowInvalid, naming no file
                raise CorpusError(f"{f}: unreadable after its first rows ({_arrow_cause(exc)})") from None
            pos = ch = cb = 0
            for r, rec in enumerate(meta):
                where = f"{f}: row '{rec['id']}'" if rec.get("id") is not None else f"{f}: a row without an id"
                n_ch = int(per_row[r])
                # a null list is -1 for the header check and holds no values in the flattened levels below
                n_cb = per_channel[ch:ch + max(n_ch, 0)]
                n_fr = per_codebook[cb:cb + int(np.maximum(n_cb, 0).sum())] if n_ch > 0 else per_codebook[:0]
                size = int(np.maximum(n_fr, 0).sum())
                start, ch, cb, pos = pos, ch + max(n_ch, 0), cb + len(n_fr), pos + size
                try:
                    if rec.get("id") is None:
                        raise CorpusError(f"{where} (ids name the outputs)")
                    header = _checked_header(rec, where, (n_ch, n_cb, n_fr))
                    if gaps is not None and gaps[start:start + size].any():
                        raise CorpusError(f"{where}: codes with missing values")
                except CorpusError as exc:
                    if errors is None:
                        raise
                    rid = rec.get("id")
                    errors.append((None if rid is None else str(rid), str(exc)))
                    continue
                codes = flat[start:start + size].astype(np.int64).reshape(header.codes_shape)
                yield CodeRow(str(rec["id"]), str(rec["path"]), header, codes)


# -- workers -----------------------------------------------------------------------------------------

def _record(item: Item, status: str, duration: float = 0.0, error: str = "", output: str = "",
            seconds: float = 0.0, warnings: Sequence[str] = ()) -> dict[str, Any]:
    """One file's status. ``warnings`` (a decode with other weights than the coder's) travel as one text of
    lines, a column every record has, as Ray Data carries them."""
    return {"id": item.id, "path": item.path, "status": status, "duration_s": float(duration),
            "error": error, "output": output, "seconds": float(seconds), "pid": os.getpid(),
            "warnings": "\n".join(warnings)}


def _error_text(exc: BaseException, item: Item) -> str:
    """The failures table's line: the CLI's one-line wording (:func:`flowdec_cli.errors.one_line_message`),
    naming the input."""
    from .errors import one_line_message

    text = one_line_message(exc) or f"unexpected {type(exc).__name__}: {exc}"
    return text if item.path in text else f"{item.path}: {text}"


def _columns(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    keys = ("id", "path", "status", "duration_s", "error", "output", "seconds", "pid", "warnings")
    text = ("id", "path", "status", "error", "output", "warnings")
    return {k: np.array([r[k] for r in records], dtype=object if k in text else None) for k in keys}


class _Worker:
    """The model, loaded once per process; one call per shard (a Ray Data batch of task rows)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from .runtime import set_threads

        self.settings = settings
        if settings.get("threads"):
            set_threads(int(settings["threads"]))

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        records: list[dict[str, Any]] = []
        for task in batch["task"]:
            records.extend(self.run(json.loads(str(task))))
        return _columns(records)

    def run(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError


class EncodeWorker(_Worker):
    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        from .pipeline import Codec

        self.codec = Codec.load(settings["model"], settings.get("device") or "auto", with_postfilter=False,
                                envelope=settings.get("envelope"),
                                cache_dir=settings.get("cache_dir"))
        if settings.get("model_hash") and self.codec.model.ndac_hash != settings["model_hash"]:
            raise CorpusError(f"model '{settings['model']}' has weights {self.codec.model.ndac_hash} on this "
                              f"worker but {settings['model_hash']} where the run started; every machine "
                              "needs the same model")
        self.kbps = float(settings["kbps"])  # the rate chosen where the run started: its codebooks and side channel

    def _maybe_die(self) -> None:
        """Tests: SIGKILL this process once (the first worker to get here), as a lost node or the OOM killer would."""
        marker = os.environ.get(_KILL_ONCE_ENV)
        if not marker:
            return
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)

    def run(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        items = [Item(i, p) for i, p in task["items"]]
        out = Path(task["out"])
        if self.settings["to"] == "fdc":
            return self._fdc(items, out)
        return self._parquet(items, out / task["shard"])

    def _fdc(self, items: list[Item], out: Path) -> list[dict[str, Any]]:
        from .fileio import OutputExistsError

        records = []
        for n, item in enumerate(items):
            dst = out / (item.id + ".fdc")
            stranger = _stranger_at(dst)
            if stranger:
                records.append(_record(item, "failed", error=stranger))
                continue
            if dst.exists():
                records.append(_record(item, "skipped", output=str(dst)))
                continue
            t0 = time.perf_counter()
            try:
                dst.parent.mkdir(parents=True, exist_ok=True)
                res = self.codec.compress_file(item.path, dst, bitrate_kbps=self.kbps, overwrite=False,
                                               entropy=self.settings.get("entropy", True))
                records.append(_record(item, "ok", res.duration, output=str(dst),
                                       seconds=time.perf_counter() - t0))
            except OutputExistsError:
                records.append(_record(item, "skipped", output=str(dst)))
            except Exception as exc:
                records.append(_record(item, "failed", error=_error_text(exc, item)))
            if n == 0:
                self._maybe_die()
        return records

    def _parquet(self, items: list[Item], shard: Path) -> list[dict[str, Any]]:
        import pyarrow.parquet as pq

        from .fileio import OutputExistsError, publish, temporary_sibling

        if shard.exists():  # a retry after the worker died between publishing and reporting
            done = set(_shard_ids(shard))
            return [_record(it, "skipped" if it.id in done else "failed", output=str(shard),
                            error="" if it.id in done else f"{it.path}: not in {shard}, which exists")
                    for it in items]
        records: list[dict[str, Any]] = []
        tmp = temporary_sibling(shard)
        writer = None
        pending: list[tuple[Item, Any, np.ndarray]] = []
        pending_codes = 0
        try:
            writer = pq.ParquetWriter(str(tmp), _shard_schema(), compression="zstd")
            for n, item in enumerate(items):
                t0 = time.perf_counter()
                try:
                    _require_utf8(item)
                    header, codes = self.codec.code_file(item.path, bitrate_kbps=self.kbps)
                    pending.append((item, header, codes))
                    pending_codes += codes.size
                    records.append(_record(item, "ok", header.duration, output=str(shard),
                                           seconds=time.perf_counter() - t0))
                except Exception as exc:
                    records.append(_record(item, "failed", error=_error_text(exc, item)))
                if pending and (pending_codes >= ROW_GROUP_CODES or n == len(items) - 1):
                    writer.write_batch(_row_batch(pending))
                    pending, pending_codes = [], 0
                if n == 0:
                    self._maybe_die()
            writer.close()
            writer = None
            if any(r["status"] == "ok" for r in records):
                try:
                    publish(tmp, shard, overwrite=False)
                except OutputExistsError as exc:
                    raise CorpusError(f"{exc}; is another run writing into {shard.parent}?") from None
            else:
                tmp.unlink(missing_ok=True)
        except BaseException:
            if writer is not None:
                writer.close()
            tmp.unlink(missing_ok=True)
            raise
        return records


class DecodeWorker(_Worker):
    """Decodes shards to audio files ``OUT/<id>.<format>``; models are loaded once per process, by name."""

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        from .pipeline import Decompressor

        # each row's model resolved, loaded and reported on as `flowdec decompress` does for a file
        self.models = Decompressor(settings.get("model"), settings.get("device") or "auto", nfe=settings.get("nfe"),
                                   precision=settings.get("precision", "auto"), cache_dir=settings.get("cache_dir"),
                                   tune_process=bool(settings.get("tune_process")),
                                   temperature=settings.get("temperature"),
                                   harmonic_redraw_hz=settings.get("harmonic_redraw"))

    def run(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        from .errors import one_line_message
        from .fileio import OutputExistsError

        out, suffix = Path(task["out"]), task["suffix"]
        want = set(task["ids"]) if task.get("ids") is not None else None
        decoded: set[str] = set()
        records: list[dict[str, Any]] = []
        bad_rows: list[tuple[str | None, str]] = []  # rows that do not decode as they are: failures, the rest goes on
        rows = iter_rows(task["shard"], errors=bad_rows)

        def report_bad_rows() -> None:
            for rid, why in bad_rows:
                if rid is not None and (want is None or rid in want):  # no id: reported when planned
                    records.append(_record(Item(rid, task["shard"]), "failed", error=why))
            bad_rows.clear()

        while True:
            try:
                row = next(rows)
            except StopIteration:
                break
            except CorpusError as exc:  # the shard cannot be read further: its remaining rows fail with it
                report_bad_rows()  # first, so that the rows it names are not reported again as lost
                records.extend(_record(item, "failed", error=str(exc))
                               for item in _rows_left(task["shard"], want, decoded, records))
                break
            finally:
                report_bad_rows()
            if (want is not None and row.id not in want) or row.id in decoded:
                continue  # a second row of one id was reported as a failure when the run was planned
            decoded.add(row.id)
            item = Item(row.id, row.path)
            dst = out / (_check_id(row.id, task["shard"]) + suffix)
            stranger = _stranger_at(dst)
            if stranger:  # not an earlier run's output: nothing to skip, nor replace
                records.append(_record(item, "failed", error=stranger))
                continue
            if dst.is_file() and not self.settings.get("force"):
                records.append(_record(item, "skipped", output=str(dst)))
                continue
            t0 = time.perf_counter()
            where = f"{task['shard']}: row '{row.id}'"
            try:
                codec = self.models.codec_for(row.header.model_name, where)
                dst.parent.mkdir(parents=True, exist_ok=True)
                res = codec.decompress_codes_to_file(row.header, row.codes, dst, self.settings.get("nfe"),
                                                     self.settings.get("solver", "midpoint"), self.settings.get("seed"),
                                                     self.settings.get("subtype"),
                                                     overwrite=bool(self.settings.get("force")), source=where)
                records.append(_record(item, "ok", row.duration, output=str(dst), seconds=time.perf_counter() - t0,
                                       warnings=res.warnings))  # other weights than the coder's: said
            except OutputExistsError:
                records.append(_record(item, "skipped", output=str(dst)))
            except Exception as exc:
                text = one_line_message(exc) or ""
                if not text.startswith(where):  # a model's refusal names the row itself, as decompress names a file
                    text = f"{where}: {_error_text(exc, item)}"
                records.append(_record(item, "failed", error=text))
        return records


def _rows_left(shard: str, want: set[str] | None, decoded: set[str],
               records: list[dict[str, Any]]) -> list[Item]:
    """The rows of ``shard`` a decode that stopped early has neither done nor reported, each by its id (the
    id column reads on where a damaged page of codes does not); the shard as one item if even that fails."""
    reported = decoded | {r["id"] for r in records}
    try:
        ids = _shard_ids(Path(shard))
    except CorpusError:
        return [Item(f"{Path(shard).name} (the rest)", shard)]
    return [Item(i, shard) for i in dict.fromkeys(ids)
            if i is not None and i not in reported and (want is None or i in want)]


# -- engines -----------------------------------------------------------------------------------------

#: what a run that needs Ray without it is told (the command line's check and the engine's say the same)
RAY_MISSING = "Ray is not installed: pip install 'flowdec-cli[ray]' (or --engine local)"


def ray_available() -> bool:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Engine:
    """Where the shards run. ``kind``: ``local`` (this process), ``ray`` (Ray Data: a local Ray started here
    and stopped at the end, or the cluster at ``address`` / ``$RAY_ADDRESS``), or ``auto`` (Ray when it is
    installed, else local)."""

    kind: str = "auto"
    address: str | None = None
    workers: int | None = None          # actors; default: what the CPUs (or GPUs) allow
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    object_store_memory: int | None = 300 << 20  # local Ray only: the store holds task rows and status rows
    ray_init: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> str:
        if self.kind == "auto":
            if self.address or os.environ.get("RAY_ADDRESS"):
                return "ray"
            return "ray" if ray_available() else "local"
        return self.kind


def _run_local(worker_cls: type, settings: dict[str, Any], tasks: list[dict[str, Any]],
               on_record: Callable[[dict[str, Any]], None]) -> None:
    worker = worker_cls(settings)
    for task in tasks:
        for rec in worker.run(task):
            on_record(rec)


def _run_ray(worker_cls: type, settings: dict[str, Any], tasks: list[dict[str, Any]], engine: Engine,
             on_record: Callable[[dict[str, Any]], None]) -> None:
    import logging

    if not ray_available():
        raise CorpusError(RAY_MISSING)
    import ray
    import ray.data

    started = False
    if not ray.is_initialized():
        address = engine.address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        niceness = None
        if address is None:  # a private local cluster, sized to the job
            cpus = os.cpu_count() or 1
            kwargs.update(num_cpus=cpus, object_store_memory=engine.object_store_memory)
            # Ray runs workers at niceness 15; this cluster exists for this job alone, so its workers get the
            # priority `flowdec compress` would have (on a machine shared with other work, niceness 15 made
            # them 7x slower: docs/scaling.md). RAY_worker_niceness set by the user wins.
            if "RAY_worker_niceness" not in os.environ:
                niceness = os.environ["RAY_worker_niceness"] = "0"  # noqa: SIM112 (Ray's own name)
        kwargs.update(engine.ray_init)
        try:
            ray.init(address=address, **kwargs)
        finally:
            if niceness is not None:
                os.environ.pop("RAY_worker_niceness", None)
        started = True
    try:
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # our bar and messages replace Ray Data's
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        workers = engine.workers
        if workers is None:
            res = ray.cluster_resources()
            if engine.gpus_per_worker:
                workers = max(1, int(res.get("GPU", 0) // engine.gpus_per_worker))
            else:
                workers = max(1, int(res.get("CPU", 1) // max(engine.cpus_per_worker, 1e-9)))
        workers = max(1, min(workers, len(tasks)))
        ds = ray.data.from_items([{"task": json.dumps(t)} for t in tasks], override_num_blocks=len(tasks))
        out = ds.map_batches(worker_cls, fn_constructor_kwargs={"settings": settings}, batch_size=1,
                             compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=engine.cpus_per_worker,
                             num_gpus=engine.gpus_per_worker or None, batch_format="numpy")
        try:
            for rec in out.iter_rows():
                on_record({k: (v.item() if hasattr(v, "item") else v) for k, v in rec.items()})
        except (ray.exceptions.RayError, ray.data.exceptions.UserCodeException) as exc:
            # a worker that cannot start (no model, other weights) or a bug: Ray's text is a remote traceback;
            # its last line names our error
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            raise CorpusError(f"a Ray worker failed: {lines[-1] if lines else type(exc).__name__}") from exc
    finally:
        if started:
            ray.shutdown()


def _run(worker_cls: type, settings: dict[str, Any], tasks: list[dict[str, Any]], engine: Engine,
         on_record: Callable[[dict[str, Any]], None]) -> str:
    kind = engine.resolved()
    if not tasks:
        return kind
    if kind == "local":
        _run_local(worker_cls, settings, tasks, on_record)
    elif kind == "ray":
        _run_ray(worker_cls, settings, tasks, engine, on_record)
    else:
        raise CorpusError(f"unknown engine '{engine.kind}' (auto, ray, local)")
    return kind


# -- runs --------------------------------------------------------------------------------------------

@dataclass
class RunSummary:
    total: int = 0            # items in the input
    done: int = 0             # coded (or decoded) in this run
    skipped: int = 0          # already done before this run
    failed: list[dict[str, Any]] = field(default_factory=list)  # records with status "failed"
    audio_seconds: float = 0.0  # of the files done in this run
    seconds: float = 0.0        # wall-clock time of the run
    engine: str = ""
    shards: int = 0             # shards (work units) run

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def speed(self) -> float:
        """Seconds of audio coded per second of wall-clock time."""
        return self.audio_seconds / self.seconds if self.seconds else 0.0

    def add(self, rec: dict[str, Any]) -> None:
        if rec["status"] == "ok":
            self.done += 1
            self.audio_seconds += float(rec["duration_s"])
        elif rec["status"] == "skipped":
            self.skipped += 1
        else:
            self.failed.append(rec)


def _require_utf8(item: Item) -> None:
    """A shard stores ids and paths as UTF-8 strings: a name whose bytes are not UTF-8 (lone surrogates here)
    is that file's failure, not the whole shard's (pyarrow raised a UnicodeEncodeError for the batch)."""
    for what, text in (("id", item.id), ("path", item.path)):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise CorpusError(f"its {what} is not valid UTF-8, which a Parquet shard cannot hold; rename it, or "
                              "use --to fdc") from None


def _write_failures(out: Path, failed: list[dict[str, Any]]) -> None:
    """``OUT/_failures.csv`` (id, path, error) of this run; removed when nothing failed."""
    from .fileio import atomic_write_bytes

    target = out / FAILURES
    if not failed:
        target.unlink(missing_ok=True)
        return
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "path", "error"])
    for rec in sorted(failed, key=lambda r: r["id"]):
        w.writerow([rec["id"], rec["path"], rec["error"]])
    atomic_write_bytes(target, buf.getvalue().encode("utf-8", "surrogateescape"))  # odd names' bytes as they are


def read_failures(out: str | os.PathLike) -> list[dict[str, str]]:
    """The failures table of the last run into ``out`` (empty when nothing failed)."""
    target = Path(out) / FAILURES
    if not target.exists():
        return []
    with open(target, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.DictReader(f))


def _check_local_device(engine: Engine, device: str) -> None:
    """The device of a run on this machine, checked before any work (a Ray cluster's workers may have
    devices this machine lacks: they check their own)."""
    if engine.resolved() == "local":
        from .runtime import resolve_device

        resolve_device(device)


def _clear_earlier_run(out: Path) -> None:
    """Remove what earlier runs coded into ``out`` (``--force``): its shards, the .fdc files below it (their
    magic says they are outputs), the failure list and, last, the settings, so a removal cut short leaves a
    folder that a rerun still reads as the earlier run's. Anything else in ``out`` stays."""
    if not out.is_dir():
        return
    outputs = [p for p in out.glob(SHARD_GLOB) if p.is_file()]
    outputs += [p for folder, _, names in os.walk(out)  # not into linked folders: what lies there is not OUT's
                for p in (Path(folder) / n for n in names)
                if p.suffix.lower() == ".fdc" and not p.is_symlink() and _output_of_earlier_run(p)]
    try:
        for p in outputs:
            p.unlink()
        for name in (FAILURES, SETTINGS):
            (out / name).unlink(missing_ok=True)
    except OSError as exc:
        raise CorpusError(f"{out}: cannot remove the earlier run's files ({exc.strerror or exc})") from None


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """A corpus folder holds one model and codebook count: a rerun with others is refused, not mixed in."""
    from .fileio import atomic_write_bytes

    target = out / SETTINGS
    mine = {k: settings[k] for k in ("to", "model_name", "model_hash", "n_codebooks", "kbps")}
    if target.exists():
        try:
            theirs = parse_json(target.read_text())
        except (OSError, ValueError) as exc:
            raise CorpusError(f"{target}: unreadable ({exc}); remove it to start again") from None
        # "kbps" is absent from folders started before a rate plan could give a count several side channels
        diff = [k for k in mine if theirs.get(k, mine[k] if k == "kbps" else None) != mine[k]]
        if diff:
            was = ", ".join(f"{k}={theirs.get(k)}" for k in diff)
            now = ", ".join(f"{k}={mine[k]}" for k in diff)
            raise CorpusError(f"{out}: coded earlier with {was}; this run asks for {now}. Use another output "
                              "folder, the same settings to resume, or --force to start it again")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, (json.dumps(mine, indent=2) + "\n").encode())


_SHARD_NUM = re.compile(r"part-(\d+)\.parquet$")


def plan_encode(items: list[Item], out: Path, to: str, shard_size: int) -> tuple[list[dict[str, Any]], int]:
    """The tasks (shards) still to do, and how many items are done already."""
    if to == "parquet":
        done: set[str | None] = set()
        last = -1
        for f in shard_files(out) if out.is_dir() else []:
            try:
                done.update(_shard_ids(f))
            except CorpusError as exc:  # it names the shard already
                raise CorpusError(f"{exc}; move it away to resume") from None
            m = _SHARD_NUM.search(f.name)
            if m:
                last = max(last, int(m.group(1)))
        todo = [it for it in items if it.id not in done]
        tasks = []
        for n, a in enumerate(range(0, len(todo), shard_size)):
            chunk = todo[a:a + shard_size]
            tasks.append({"out": str(out), "shard": f"part-{last + 1 + n:05d}.parquet",
                          "items": [[it.id, it.path] for it in chunk]})
        return tasks, len(items) - len(todo)
    todo = [it for it in items if not _output_of_earlier_run(out / (it.id + ".fdc"))]
    tasks = [{"out": str(out), "items": [[it.id, it.path] for it in todo[a:a + shard_size]]}
             for a in range(0, len(todo), shard_size)]
    return tasks, len(items) - len(todo)


def _need_pyarrow() -> None:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise CorpusError("Parquet needs pyarrow: pip install 'flowdec-cli[ray]' (or pyarrow)") from None


def encode_corpus(source: str | os.PathLike | Iterable[Item], out: str | os.PathLike, *, to: str = "parquet",
                  model: str | None = None, n_codebooks: int | None = None, bitrate_kbps: float | None = None,
                  entropy: bool = True, envelope: bool | None = None, device: str = "auto",
                  threads: int | None = None, pattern: str | None = None, shard_size: int = 100,
                  engine: Engine | None = None,
                  cache_dir: str | os.PathLike | None = None, force: bool = False,
                  on_start: Callable[[dict[str, Any]], None] | None = None,
                  on_record: Callable[[dict[str, Any]], None] | None = None) -> RunSummary:
    """Code every input into ``out`` (Parquet shards, or a .fdc tree with ``to="fdc"``); resumes what an
    earlier run left, or with ``force`` removes it first and codes everything again (whatever its settings
    were). ``on_start`` gets the plan (items, to do, model, codebooks, engine) before the work,
    ``on_record`` each file's status record as it is done. Failures do not stop the run: they are in the
    summary and ``out/_failures.csv``. ``envelope``: write the band-level side channel (None: as the model
    says; see :class:`flowdec_cli.pipeline.Codec`)."""
    from .models.catalogue import default_model_name
    from .pipeline import Codec

    if to not in ("parquet", "fdc"):
        raise CorpusError(f"unknown output type '{to}' (parquet, fdc)")
    if to == "parquet":
        _need_pyarrow()
    if shard_size < 1:
        raise CorpusError("the shard size must be at least 1")
    engine = engine or Engine()
    out = _output_folder(out)
    if to == "parquet":
        try:
            str(out.resolve()).encode("utf-8")
        except UnicodeEncodeError:  # pyarrow takes paths as UTF-8: refused before anything is written
            raise CorpusError(f"{os.fsencode(out)!r}: the output folder's name is not valid UTF-8, which "
                              "Parquet cannot write to; choose another") from None
    items = list(source) if not isinstance(source, (str, os.PathLike)) else list_inputs(source, pattern, out)
    ref = model or default_model_name(cache_dir)
    # the rate's choice (codebooks and side channel) and the weights, checked once
    probe = Codec.load(ref, "cpu", with_postfilter=False, cache_dir=cache_dir, envelope=envelope)
    rate = probe.choose_rate(bitrate_kbps, n_codebooks)
    if to == "parquet" and probe.ndac.codebook_size > 1 << 15:
        raise CorpusError(f"model '{probe.model.name}' has {probe.ndac.codebook_size}-entry codebooks; Parquet "
                          "shards hold int16 codes (up to 32768 entries); use --to fdc")
    settings = {"to": to, "model": str(ref), "model_name": probe.model.name, "model_hash": probe.model.ndac_hash,
                "n_codebooks": rate.codebooks, "kbps": rate.kbps, "entropy": entropy, "envelope": envelope,
                "device": device, "threads": _worker_threads(engine, threads),
                "cache_dir": str(cache_dir) if cache_dir is not None else None}
    _check_local_device(engine, device)  # before the folder is given its settings by a run that codes nothing
    if force:  # once every input is listed and the model loads: a run refused for those removes nothing
        _clear_earlier_run(out)
    _check_settings(out, settings)
    tasks, already = plan_encode(items, out, to, shard_size)
    summary = RunSummary(total=len(items), skipped=already, shards=len(tasks), engine=engine.resolved())
    if on_start:
        on_start({"items": len(items), "todo": len(items) - already, "done_before": already, "shards": len(tasks),
                  "model": probe.model.name, "n_codebooks": rate.codebooks, "kbps": rate.kbps,
                  "engine": summary.engine})
    del probe
    return _carry_out(EncodeWorker, settings, tasks, engine, out, summary, on_record)


def decode_corpus(source: str | os.PathLike, out: str | os.PathLike, *, out_format: str = "wav",
                  model: str | None = None, nfe: int | None = None, solver: str = "midpoint", seed: int | None = None,
                  temperature: float | None = None, harmonic_redraw: int | None = None, subtype: str | None = None,
                  precision: str = "auto", device: str = "auto",
                  threads: int | None = None, engine: Engine | None = None,
                  cache_dir: str | os.PathLike | None = None, tune_process: bool = False, force: bool = False,
                  on_start: Callable[[dict[str, Any]], None] | None = None,
                  on_record: Callable[[dict[str, Any]], None] | None = None) -> RunSummary:
    """Decode every row of Parquet shards into ``out/<id>.<out_format>``; outputs of an earlier run are
    skipped (resume), or with ``force`` decoded again and replaced (another NFE, say); failures are in the
    summary and ``out/_failures.csv``. ``tune_process``: let each worker tune its process for the postfilter
    on a CPU (:meth:`flowdec_cli.pipeline.Codec.tune_process`).
    ``temperature``: the postfilter's start-noise scale (None: each model's own), as ``flowdec decompress``;
    ``harmonic_redraw`` its ``--harmonic-redraw`` (None: each model's own, 0: off)."""
    from .audio import AudioError, format_suffix

    _need_pyarrow()
    engine = engine or Engine()
    _check_local_device(engine, device)  # once, not once per row
    files = shard_files(source)
    if not files:
        raise CorpusError(f"{source}: no Parquet shards ({SHARD_GLOB}) found")
    try:
        suffix = format_suffix(out_format, subtype)
    except AudioError as exc:
        raise CorpusError(str(exc)) from None
    out = _output_folder(out)
    shard_folder = Path(source) if Path(source).is_dir() else Path(source).parent
    if out.is_dir() and out.resolve() == shard_folder.resolve():  # its _failures.csv is the encode's
        raise CorpusError(f"{out}: holds the shards being decoded; decode into another folder")
    total = 0
    tasks = []
    already = 0
    unreadable: list[dict[str, Any]] = []  # shards that are not shards, rows that cannot be: failures
    seen: dict[str, str] = {}  # id -> the shard whose row writes it
    for f in files:
        try:
            ids = _shard_ids(f)
        except CorpusError as exc:
            unreadable.append(_record(Item(f.name, str(f)), "failed", error=str(exc)))
            continue
        total += len(ids)
        todo, usable = [], 0
        for n, i in enumerate(ids):  # a row whose id cannot name an output, or names one another row writes:
            try:                     # that row fails
                if i is None:
                    raise CorpusError(f"{f}: row {n + 1} has no id (ids name the outputs)")
                _check_id(i, str(f))
                if i in seen:
                    raise CorpusError(f"{f}: id '{i}' is also a row of {seen[i]}; both would write one file")
            except CorpusError as exc:
                unreadable.append(_record(Item(i if i is not None else f"(row {n + 1})", str(f)), "failed",
                                          error=str(exc)))
                continue
            seen[i] = f.name
            usable += 1
            if force or not _output_of_earlier_run(out / (i + suffix)):
                todo.append(i)
        total -= len(ids) - usable  # counted with the failures below
        already += usable - len(todo)
        if todo:
            tasks.append({"shard": str(f.resolve()), "out": str(out.resolve()), "suffix": suffix,
                          "ids": todo if len(todo) < len(ids) else None})
    settings = {"model": model, "nfe": nfe, "tune_process": tune_process, "solver": solver, "seed": seed,
                "temperature": temperature, "harmonic_redraw": harmonic_redraw, "subtype": subtype, "force": force,
                "precision": precision, "device": device, "threads": _worker_threads(engine, threads),
                "cache_dir": str(cache_dir) if cache_dir is not None else None}
    summary = RunSummary(total=total, skipped=already, shards=len(tasks), engine=engine.resolved())
    if on_start:
        on_start({"items": total, "todo": total - already, "done_before": already, "shards": len(tasks),
                  "engine": summary.engine})
    out.mkdir(parents=True, exist_ok=True)
    return _carry_out(DecodeWorker, settings, tasks, engine, out, summary, on_record, failed_before=unreadable)


def _output_folder(out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CorpusError(f"{out}: is a file; the output is a folder")
    return out


def _worker_threads(engine: Engine, threads: int | None) -> int | None:
    """Each worker's torch threads: as asked, else on Ray the CPUs each worker reserves (torch's own choice
    would take every core of the node in every actor), else torch's choice."""
    return threads or (max(1, int(engine.cpus_per_worker)) if engine.resolved() == "ray" else None)


def _carry_out(worker_cls: type, settings: dict[str, Any], tasks: list[dict[str, Any]], engine: Engine, out: Path,
               summary: RunSummary, on_record: Callable[[dict[str, Any]], None] | None,
               failed_before: Sequence[dict[str, Any]] = ()) -> RunSummary:
    """Run the planned shards (``failed_before``: records of items that failed while planning, counted and
    reported first) and keep the run's failures in ``out/_failures.csv``, also when it is interrupted."""
    t0 = time.perf_counter()

    def record(rec: dict[str, Any]) -> None:
        summary.add(rec)
        if on_record:
            on_record(rec)

    for rec in failed_before:
        summary.total += 1
        record(rec)
    try:
        _run(worker_cls, settings, tasks, engine, record)
    finally:  # an interrupted run's failures replace the last run's, which would describe other work
        _write_failures(out, summary.failed)
    summary.seconds = time.perf_counter() - t0
    return summary
