"""Lossless entropy coding of RVQ codes (``.fdc`` coding ``range-ctx1``; spec: docs/fdc-format.md, 3.1-3.2).

A context model of integer frequency tables drives constriction's range coder. Each code is coded with the
row of its codebook's table set chosen by a context made of *classes* of codes already coded:

* ``prev``: the class of the same codebook's code in the previous frame (an extra class at frame 0);
* ``up``:   the class of the next coarser codebook's code in the same frame (codebook 1 and up).

A codebook's context is ``prev_class * n_up + up_class`` (the factors it does not use count as one class).
Classes come from maps ``code -> class`` learned with the tables (``flowdec train entropy-tables``).

Bit-exactness: every stored frequency is an integer, ``1 <= f <= MAX_FREQ``, and each row sums to exactly
``2**TABLE_PRECISION`` (16 bits, so tables are stored as uint16). The coder works at ``2**PRECISION`` (24
bits) and sees ``F = f * 2**8``. constriction's ``Categorical(perfect=False)`` quantiser, given the floats
``F - 1`` (exact integers, summing to ``2**PRECISION - S``), computes with a scale of exactly 1.0 and
reproduces ``F`` with no rounding at all; ``tests/test_entropy.py`` checks this and pins the bytes of a known
stream.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .exceptions import FlowdecError
from .fileio import why_not_a_regular_file

__all__ = [
    "CODING_BITPACK",
    "CODING_CTX1",
    "KNOWN_CODINGS",
    "MAX_FREQ",
    "PRECISION",
    "TABLE_TOTAL",
    "TABLES_FILE",
    "EntropyError",
    "categorical_model",
    "EntropyTables",
    "decode_codes",
    "encode_codes",
    "freqs_from_counts",
    "range_decoder",
    "load_tables",
    "max_codes_for_payload",
    "require_canonical",
    "save_tables",
    "symbol_bits",
    "tables_for_model_folder",
]

CODING_BITPACK = "bitpack"
CODING_CTX1 = "range-ctx1"
KNOWN_CODINGS = (CODING_BITPACK, CODING_CTX1)
PRECISION = 24              # the range coder's probability precision
TOTAL = 1 << PRECISION
TABLE_PRECISION = 16        # stored tables: uint16 frequencies summing to 2**16
TABLE_TOTAL = 1 << TABLE_PRECISION
MAX_FREQ = TABLE_TOTAL - (TABLE_TOTAL >> 4)  # every code costs >= log2(16/15) bits: bounds codes per byte
TABLES_FILE = "entropy.safetensors"
CONTEXT_KINDS = ("prev", "up")


class EntropyError(FlowdecError):
    """Tables that are invalid, or a payload that cannot be decoded with them."""


def max_codes_for_payload(payload_bytes: int) -> int:
    """The most codes a valid ``range-ctx1`` payload of this size can hold (a generous bound, spec 3.1)."""
    return 128 * int(payload_bytes) + 1024


# -- tables -----------------------------------------------------------------------------------------

@dataclass
class CodebookModel:
    """The context model of one codebook: class maps for the contexts it uses and one frequency row per
    context. ``prev_map``: code -> class (``n_prev`` classes, plus class ``n_prev`` for frame 0);
    ``up_map``: coarser code -> class (``n_up`` classes). ``freq``: int64 [n_prev_ctx * n_up, S]."""

    freq: np.ndarray
    prev_map: np.ndarray | None = None
    up_map: np.ndarray | None = None

    @property
    def n_prev_ctx(self) -> int:  # prev classes including the frame-0 class; 1 without a prev context
        return 1 if self.prev_map is None else int(self.prev_map.max(initial=0)) + 2

    @property
    def n_up(self) -> int:
        return 1 if self.up_map is None else int(self.up_map.max(initial=0)) + 1


@dataclass
class EntropyTables:
    """Integer context tables for every codebook of one model (coding ``range-ctx1``)."""

    codebook_size: int
    codebooks: list[CodebookModel]
    ndac_hash: str = ""
    info: dict[str, str] = field(default_factory=dict)
    _models: dict = field(default_factory=dict, repr=False, compare=False)
    _id: str | None = field(default=None, repr=False, compare=False)

    @property
    def n_codebooks(self) -> int:
        return len(self.codebooks)

    @property
    def coding(self) -> str:
        return CODING_CTX1

    def tensors(self) -> dict[str, np.ndarray]:
        """The arrays as stored (int32, little-endian), in identifier order."""
        out: dict[str, np.ndarray] = {}
        for k, cb in enumerate(self.codebooks):
            if cb.prev_map is not None:
                out[f"prev_map_{k}"] = cb.prev_map.astype("<i4")
            if cb.up_map is not None:
                out[f"up_map_{k}"] = cb.up_map.astype("<i4")
            out[f"freq_{k}"] = cb.freq.astype("<u2")
        return out

    @property
    def id(self) -> str:
        """16 hex digits of the SHA-256 of the tensors' names and bytes: what ``.fdc`` headers record."""
        if self._id is None:
            h = hashlib.sha256()
            for name, arr in self.tensors().items():
                h.update(name.encode() + b"\0" + str(arr.shape).encode() + b"\0")
                h.update(np.ascontiguousarray(arr).tobytes())
            self._id = h.hexdigest()[:16]
        return self._id

    def validate(self, source: str = "<tables>") -> None:
        """Raise :class:`EntropyError` unless every table can code every code exactly (spec 3.1)."""
        s = int(self.codebook_size)
        if not 2 <= s <= 1 << 16:
            raise EntropyError(f"{source}: codebook size {s} is out of range (2 to 65536)")
        if not self.codebooks:
            raise EntropyError(f"{source}: no codebooks")
        for k, cb in enumerate(self.codebooks):
            where = f"{source}: invalid entropy tables: codebook {k}"
            if k == 0 and cb.up_map is not None:
                raise EntropyError(f"{where}: the first codebook has no coarser codebook for an 'up' context")
            for name, m in (("prev_map", cb.prev_map), ("up_map", cb.up_map)):
                if m is None:
                    continue
                if m.shape != (s,) or not np.issubdtype(m.dtype, np.integer) or int(m.min()) < 0 \
                        or int(m.max()) >= 4096:
                    raise EntropyError(f"{where}: {name} must hold {s} classes in 0 ... 4095")
            f = cb.freq
            if not np.issubdtype(f.dtype, np.integer):
                raise EntropyError(f"{where}: frequencies are {f.dtype} values, not integers")
            if f.ndim != 2 or f.shape != (cb.n_prev_ctx * cb.n_up, s):
                raise EntropyError(f"{where}: frequency table has shape {f.shape}, expected "
                                   f"({cb.n_prev_ctx * cb.n_up}, {s})")
            f64 = f.astype(np.int64)
            if int(f64.min()) < 1 or int(f64.max()) > MAX_FREQ or (f64.sum(axis=1) != TABLE_TOTAL).any():
                raise EntropyError(f"{where}: every frequency must be 1 ... {MAX_FREQ} and every row must "
                                   f"sum to 2**{TABLE_PRECISION}")

    # -- constriction models, built once per context on first use --------------------------------
    def model(self, k: int, ctx: int) -> Any:
        key = (k, ctx)
        m = self._models.get(key)
        if m is None:
            m = categorical_model(self.codebooks[k].freq[ctx])
            self._models[key] = m
        return m


def categorical_model(freq: np.ndarray) -> Any:
    """constriction's model for one row of integer frequencies (``1 ... MAX_FREQ``, summing to
    ``2**TABLE_PRECISION``), reproduced exactly on every machine: ``F - 1`` (``F = f * 2**8``) are exact
    integers summing to ``2**24 - S``, so the quantiser's scale is exactly 1.0 and it gives back ``F``
    unchanged (module docstring)."""
    import constriction

    row = np.asarray(freq).astype(np.float64) * float(TOTAL // TABLE_TOTAL) - 1.0
    return constriction.stream.model.Categorical(row, perfect=False)


def freqs_from_counts(counts: np.ndarray) -> np.ndarray:
    """Integer frequency rows (each ``1 ... MAX_FREQ``, summing to ``2**TABLE_PRECISION``) proportional to
    non-negative ``counts`` [rows, S] (floats allowed: smoothed counts), computed in integer arithmetic
    after one rounding of the counts to integers."""
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 2 or (c < 0).any() or not np.isfinite(c).all():
        raise EntropyError("counts must be a finite, non-negative [rows, codebook_size] array")
    rows, s = c.shape
    # integer weights of 2**30 resolution per row; w * free < 2**54, so the split is exact in int64
    tot = c.sum(axis=1, keepdims=True)
    w = np.floor(c / np.where(tot > 0, tot, 1.0) * float(1 << 30)).astype(np.int64)
    w[w.sum(axis=1) == 0] = 1
    free = TABLE_TOTAL - s
    total = w.sum(axis=1, keepdims=True)
    out = 1 + (w * free) // total
    rem = (w * free) % total
    short = TABLE_TOTAL - out.sum(axis=1)
    # hand out what is missing to the largest remainders, ties to the lower code (deterministic)
    order = np.lexsort((np.broadcast_to(np.arange(s), (rows, s)), -rem), axis=-1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(s)[None, :].repeat(rows, 0), axis=1)
    out += rank < short[:, None]
    # cap: no code may be nearly certain (bounds codes per payload byte); give the excess to the others
    for r in np.nonzero(out.max(axis=1) > MAX_FREQ)[0]:
        row = out[r]
        i = int(row.argmax())
        excess = int(row[i]) - MAX_FREQ
        row[i] = MAX_FREQ
        others = np.array([j for j in range(s) if j != i])
        share, left = divmod(excess, len(others))
        row[others] += share
        row[others[:left]] += 1
    return out


def tables_file(path: str | os.PathLike) -> Path:
    """The file tables given ``path`` go to: ``path`` itself when it ends in .safetensors, else
    ``path/entropy.safetensors`` (a model folder)."""
    path = Path(path)
    return path if path.suffix == ".safetensors" else path / TABLES_FILE


def save_tables(tables: EntropyTables, path: str | os.PathLike) -> Path:
    """Write the tables to :func:`tables_file` of ``path``."""
    from safetensors.numpy import save_file

    from .fileio import publish, temporary_sibling

    tables.validate()
    path = tables_file(path)
    meta = {"coding": CODING_CTX1, "codebook_size": str(tables.codebook_size),
            "n_codebooks": str(tables.n_codebooks), "ndac_hash": tables.ndac_hash, "id": tables.id,
            **{str(k): str(v) for k, v in tables.info.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tables.tensors().items()}, str(tmp), metadata=meta)
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_tables(path: str | os.PathLike) -> EntropyTables:
    """Read and check ``entropy.safetensors``; :class:`EntropyError` on any problem."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = dict(f.metadata() or {})
            arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safetensors handles have keys(), not __iter__
    except Exception as exc:  # safetensors raises its own error types
        raise EntropyError(f"{path}: unreadable entropy tables ({exc})") from None
    if meta.get("coding") != CODING_CTX1:
        raise EntropyError(f"{path}: entropy tables for coding {meta.get('coding')!r}; this flowdec knows "
                           f"{CODING_CTX1!r}")
    try:
        size, n = int(meta["codebook_size"]), int(meta["n_codebooks"])
    except (KeyError, ValueError):
        raise EntropyError(f"{path}: entropy tables lack codebook_size / n_codebooks") from None
    if not 1 <= n <= 65535:
        raise EntropyError(f"{path}: n_codebooks {n} is out of range")
    cbs = []
    for k in range(n):
        if f"freq_{k}" not in arrays:
            raise EntropyError(f"{path}: freq_{k} is missing")
        cbs.append(CodebookModel(freq=arrays[f"freq_{k}"],
                                 prev_map=arrays.get(f"prev_map_{k}"), up_map=arrays.get(f"up_map_{k}")))
    info = {k: v for k, v in meta.items() if k not in ("coding", "codebook_size", "n_codebooks", "ndac_hash", "id")}
    tables = EntropyTables(size, cbs, ndac_hash=meta.get("ndac_hash", ""), info=info)
    tables.validate(str(path))  # before any cast: one to integers would truncate floats (or warn of NaN)
    for cb in cbs:
        cb.freq = cb.freq.astype(np.int64)
    if meta.get("id") and meta["id"] != tables.id:
        raise EntropyError(f"{path}: entropy tables are damaged (identifier {tables.id}, recorded {meta['id']})")
    return tables


def tables_for_model_folder(folder: str | os.PathLike) -> EntropyTables | None:
    """The tables shipped in a model folder, or None when it has none (a link to nowhere is none either);
    a tables file that is there but cannot be read as one (a folder, a FIFO, a link to a device) is an error,
    not a model without tables."""
    path = Path(folder) / TABLES_FILE
    if not path.exists():
        return None
    if (problem := why_not_a_regular_file(path)) is not None:
        raise EntropyError(f"{path}: {problem}")
    return load_tables(path)


# -- coding ----------------------------------------------------------------------------------------

def _check_codes(codes: np.ndarray, tables: EntropyTables) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.ndim != 3:
        raise EntropyError(f"codes must have shape [channels, codebooks, frames], got {arr.shape}")
    if arr.shape[1] > tables.n_codebooks:
        raise EntropyError(f"codes use {arr.shape[1]} codebooks; the entropy tables cover {tables.n_codebooks}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= tables.codebook_size):
        raise EntropyError(f"codes must lie in 0 ... {tables.codebook_size - 1}")
    return arr.astype(np.int64, copy=False)


def _contexts_from_up(cb: CodebookModel, up_row: np.ndarray | None, t: int) -> np.ndarray:
    """The 'up' part of every frame's context (0 when the codebook does not use it)."""
    if cb.up_map is None or up_row is None:
        return np.zeros(t, np.int64)
    return cb.up_map.astype(np.int64)[up_row]


def encode_codes(codes: np.ndarray, tables: EntropyTables) -> bytes:
    """The ``range-ctx1`` payload of codes [C, K, T] (order: channel, codebook, frame)."""
    import constriction

    arr = _check_codes(codes, tables)
    enc = constriction.stream.queue.RangeEncoder()
    c_n, k_n, t_n = arr.shape
    for c in range(c_n):
        for k in range(k_n):
            cb = tables.codebooks[k]
            row = arr[c, k]
            up = _contexts_from_up(cb, arr[c, k - 1] if k else None, t_n)
            if cb.prev_map is None:
                ctx = up
            else:
                prev = np.empty(t_n, np.int64)
                if t_n:
                    prev[0] = cb.n_prev_ctx - 1
                    prev[1:] = cb.prev_map.astype(np.int64)[row[:-1]]
                ctx = prev * cb.n_up + up
            # runs of one context go in one call (i.i.d. form); the order stays frame by frame
            sym = row.astype(np.int32)
            if t_n == 0:
                continue
            bounds = np.flatnonzero(np.diff(ctx)) + 1
            if len(bounds) * 4 < t_n:  # long runs (silence, steady sounds)
                starts = np.concatenate([[0], bounds]).tolist()
                ends = np.concatenate([bounds, [t_n]]).tolist()
                for a, b in zip(starts, ends):
                    enc.encode(sym[a:b], tables.model(k, int(ctx[a])))
            else:
                model = tables.model
                for x, g in zip(sym.tolist(), ctx.tolist()):
                    enc.encode(x, model(k, g))
    words = enc.get_compressed()
    return np.asarray(words, dtype="<u4").tobytes()


# What a valid stream's symbols say cannot exceed the bits that carry it: a range coder's output holds at
# least the information of its symbols (-log2 of each one's probability) less its 64-bit state, which it
# flushes. constriction's decoder reads zeros past the end of its data without noticing (and
# ``maybe_exhausted`` is often false there), so the guard below adds up what it has decoded and stops at
# this margin past the payload's bits: a forged header costs work in proportion to the payload, never to
# the codes it claims (about 86 symbols a byte and a constant, as none costs less than log2(16/15) bits).
STATE_BITS = 64
_CHECK_EVERY = 4096


def symbol_bits(freq: np.ndarray) -> np.ndarray:
    """What each symbol of a row (or rows) of integer frequencies costs, in bits."""
    return np.log2(TABLE_TOTAL / np.asarray(freq, dtype=np.float64))


class _GuardedDecoder:
    """constriction's range decoder, stopped once the symbols decoded carry more information than the
    payload's bits can: a stream that runs on past its data is one whose header claims more than was
    coded."""

    def __init__(self, dec: Any, error: type[FlowdecError], what: str, size: int) -> None:
        self._dec, self._error, self._what, self._size = dec, error, what, size
        self._budget = 8.0 * size + STATE_BITS
        self._bits = 0.0
        self.decode_one = dec.decode  # one symbol, unchecked: a caller's loop reports its bits to `decoded`

    def decode(self, model: Any, amount: int, bits: np.ndarray) -> np.ndarray:
        """``amount`` symbols of ``model`` (whose symbols cost ``bits``), checked every ``_CHECK_EVERY``."""
        parts = []
        for start in range(0, amount, _CHECK_EVERY):
            symbols = np.asarray(self._dec.decode(model, min(_CHECK_EVERY, amount - start)))
            self.decoded(float(bits[symbols].sum()))
            parts.append(symbols)
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.zeros(0, np.int32)

    def decoded(self, bits: float) -> None:
        """Count the information of more symbols decoded (or a lower bound of it: never more than a valid
        stream's); stop a decode that has run on past the end."""
        self._bits += bits
        if self._bits > self._budget:
            raise self._error(f"{self._what} of {self._size} bytes ends before the symbols its header "
                              f"declares (truncated, or a header that claims more than was coded)")

    def maybe_exhausted(self) -> bool:
        return bool(self._dec.maybe_exhausted())


@contextmanager
def range_decoder(payload: bytes | memoryview, error: type[FlowdecError], what: str) -> Iterator[Any]:
    """A range decoder over a payload of 32-bit little-endian words, for the body of a ``with`` block that
    decodes every symbol the payload should hold. Decoding stops once it has run past what the data can
    hold (:class:`_GuardedDecoder`); after the block the stream must be used up (the coder reads one word ahead,
    so one word of slack goes unnoticed here: callers re-encode, :func:`require_canonical`); a payload that
    is not whole words, words left over, and constriction's own exceptions all become ``error`` naming
    ``what``."""
    import constriction

    if len(payload) % 4:
        raise error(f"{what} of {len(payload)} bytes is not a whole number of 32-bit words")
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    try:
        dec = _GuardedDecoder(constriction.stream.queue.RangeDecoder(words), error, what, len(payload))
        yield dec
        if not dec.maybe_exhausted():
            raise error(f"{what} does not end with its last symbol (data left over, or a stream cut short)")
    except error:
        raise
    except Exception as exc:  # constriction reports invalid data with its own exception types
        raise error(f"{what} is not a valid range-coded stream ({type(exc).__name__}: {exc})") from None


def decode_codes(payload: bytes | memoryview, shape: Sequence[int], tables: EntropyTables) -> np.ndarray:
    """Inverse of :func:`encode_codes`: int64 codes of ``shape`` [C, K, T]. :class:`EntropyError` when the
    payload is not exactly the stream these tables give for the codes it decodes to (the work is bounded
    by the code count, itself bounded by :func:`max_codes_for_payload`)."""
    c_n, k_n, t_n = (int(v) for v in shape)
    if k_n > tables.n_codebooks:
        raise EntropyError(f"the file uses {k_n} codebooks; the entropy tables cover {tables.n_codebooks}")
    with range_decoder(payload, EntropyError, "range-ctx1 payload") as dec:
        if c_n * k_n * t_n > max_codes_for_payload(len(payload)):  # before allocating anything for them
            raise EntropyError(f"{c_n * k_n * t_n} codes cannot fit in {len(payload)} bytes")
        out = np.zeros((c_n, k_n, t_n), np.int64)  # pages are touched only as codes are decoded
        costs = [symbol_bits(cb.freq) for cb in tables.codebooks[:k_n]]
        for c in range(c_n):
            for k in range(k_n):
                cb = tables.codebooks[k]
                bits = costs[k]
                # no array the size of the header's claim before the payload has shown it holds that much:
                # a row without an 'up' context is one run (an earlier row, already decoded, bounds the rest)
                up = _contexts_from_up(cb, out[c, k - 1], t_n) if k and cb.up_map is not None else None
                if cb.prev_map is None:
                    # contexts known for the whole row: decode runs of one context at once
                    if up is None:
                        if t_n:
                            out[c, k] = dec.decode(tables.model(k, 0), t_n, bits[0])
                        continue
                    bounds = np.flatnonzero(np.diff(up)) + 1
                    starts = np.concatenate([[0], bounds])
                    ends = np.concatenate([bounds, [t_n]])
                    for a, b in zip(starts, ends):
                        ctx = int(up[a])
                        out[c, k, a:b] = dec.decode(tables.model(k, ctx), int(b - a), bits[ctx])
                    continue
                pmap = cb.prev_map.tolist()
                n_up = cb.n_up
                pclass = cb.n_prev_ctx - 1
                model = tables.model
                decode_one = dec.decode_one
                ups = None if up is None else up.tolist()
                least = bits.min(axis=0)  # a code's cost in its cheapest context: no more than it carried
                for start in range(0, t_n, _CHECK_EVERY):
                    stop = min(t_n, start + _CHECK_EVERY)
                    chunk = []
                    for u in (itertools.repeat(0, stop - start) if ups is None else ups[start:stop]):
                        x = decode_one(model(k, pclass * n_up + u))
                        chunk.append(x)
                        pclass = pmap[x]
                    dec.decoded(float(least[chunk].sum()))
                    out[c, k, start:stop] = chunk
    if out.size and (int(out.min()) < 0 or int(out.max()) >= tables.codebook_size):
        raise EntropyError("payload decodes to codes outside the codebook")
    require_canonical(encode_codes(out, tables), payload, EntropyError, "range-ctx1 payload")
    return out


def require_canonical(encoded: bytes, payload: bytes | memoryview, error: type[FlowdecError], what: str) -> None:
    """A payload must be exactly what encoding its decoded symbols gives: re-encoding (a small fraction of
    the decoding time) catches a stream that ends too soon but within what its bits could hold, and any
    other stream our encoder would not have written."""
    if encoded != bytes(payload):
        raise error(f"{what} of {len(payload)} bytes does not hold the symbols its header declares (coded, "
                    f"they take {len(encoded)} bytes)" if len(encoded) != len(payload) else
                    f"{what} is not the stream its symbols encode to")
