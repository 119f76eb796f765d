"""The pitch side channel of a .fdc file: the input's F0, sent for a postfilter that draws the voice's
harmonics where they were (spec: docs/fdc-format.md, section 3.4).

Why: the built-in codec keeps a voice's harmonics roughly but not exactly in place, and a postfilter that
only hears the coded sound cannot tell where they belong; PESQ-WB, the speech target furthest from being met,
punishes exactly that. Told the input's F0, the built-in postfilter moved validation speech from PESQ-WB 1.53
to 1.67; the F0 it could find in the coded sound itself was worth 1.55 (docs/models.md, "The postfilter told
the pitch"). One value every 24 ms, log-F0 on a 50-cent grid, keeps all of that, and entropy-coded it costs
about 0.1 kbit/s of voiced speech.

The encoder estimates the F0 of the model-rate input with YIN (:class:`PitchMeter`, streaming), rounds it to
the layout's grid (:func:`quantise`) and range-codes each value's step from the one before
(:func:`encode_steps`). The decoder holds each value over the postfilter's STFT frames that fall in its span
(:func:`frame_track`); what the postfilter makes of it is the backbone's business
(:mod:`flowdec_cli.framewise`).

A layout fixes every choice (grid, analysis, coder); a file names its layout, so a later layout never changes
how an older file decodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .entropy import (
    categorical_model,
    freqs_from_counts,
    max_codes_for_payload,
    range_decoder,
    require_canonical,
    symbol_bits,
)
from .exceptions import FlowdecError
from .numeric import is_integer

__all__ = ["LAYOUTS", "PitchError", "PitchLayout", "PitchMeter", "check_steps", "decode_steps", "dequantise",
           "encode_steps", "frame_track", "measure_pitch", "pitch_layout", "quantise", "step_count_fits",
           "steps_of_signal", "yin"]

_BLOCK = 1 << 18  # model-rate samples per block when reading a buffer


class PitchError(FlowdecError):
    """Steps that cannot be coded, or bytes that do not decode into the steps a file describes."""


@dataclass(frozen=True)
class PitchLayout:
    """Every choice that defines a pitch side channel: where values lie, how F0 is found and how it is coded.

    Value ``j`` describes model-rate samples ``[j * hop, (j + 1) * hop)``; YIN looks at a window centred on
    sample ``j * hop + offset`` (the middle one of the three 8 ms postfilter frames it is held over). A step
    is 0 for an unvoiced value, else ``k`` in ``1 ... n_steps`` for ``fmin * 2 ** ((k - 1) * cents / 1200)``.
    """

    name: str
    sample_rate: int      # the model rate the layout is defined at
    hop: int              # samples between values
    offset: int           # where in its span a value's analysis window is centred
    cents: float          # the grid of log-F0
    fmin: float           # lowest F0 sent (step 1), and YIN's search range...
    fmax: float           # ...up to this
    window: int           # YIN's integration window, samples
    threshold: float      # YIN's aperiodicity threshold: the first dip below it is the period
    floor_rms: float      # a window quieter than this is unvoiced (-60 dBFS)
    voiced_decay: tuple[int, int]  # ratio of successive probabilities of a step change one step larger
    stop_weight: int      # weight of "unvoiced" after a voiced value (out of 1024 for no change)
    onset_weight: int     # weight of each voiced step after an unvoiced value (out of 1024 for staying)
    _cache: dict = field(default_factory=dict, repr=False, compare=False, hash=False)

    @property
    def n_steps(self) -> int:
        """Voiced steps: ``fmin`` up to the last grid point at or below ``fmax``."""
        return int(math.floor(1200.0 * math.log2(self.fmax / self.fmin) / self.cents + 1e-9)) + 1

    @property
    def lags(self) -> tuple[int, int]:
        """YIN's lag range (shortest, one past the longest) in samples."""
        return int(self.sample_rate / self.fmax), int(self.sample_rate / self.fmin) + 2

    def values(self, length: int) -> int:
        """Values of a signal of ``length`` samples."""
        return -(-int(length) // self.hop)

    def _memo(self, key: str, make: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def frequencies(self) -> np.ndarray:
        """[2, 2 n_steps] integer frequency rows: after an unvoiced value (row 0) and after a voiced one (row
        1). Symbol 0 is "unvoiced"; after an unvoiced value symbol ``k`` is step ``k``, after a voiced one
        symbol ``n_steps + d`` is a change of ``d`` steps (``|d| < n_steps``). Integer weights: the same
        tables on every machine."""
        def make() -> np.ndarray:
            k = self.n_steps
            rows = np.zeros((2, 2 * k), np.float64)
            rows[0, 0] = 1024
            rows[0, 1:k + 1] = self.onset_weight
            weights, w = [], 1024 << 20
            num, den = self.voiced_decay
            for _ in range(k):
                weights.append(w)
                w = max(w * num // den, 1)
            rows[1, k:] = weights
            rows[1, 1:k] = weights[:0:-1]
            rows[1, 0] = self.stop_weight << 20
            return freqs_from_counts(rows)
        return self._memo("frequencies", make)

    def tables(self) -> tuple[Any, Any]:
        """constriction models after an unvoiced and after a voiced value."""
        return self._memo("tables", lambda: tuple(categorical_model(row) for row in self.frequencies()))


F0_24MS = PitchLayout(name="f0-24ms", sample_rate=48000, hop=1152, offset=384, cents=50.0, fmin=60.0,
                      fmax=2000.0, window=2048, threshold=0.15, floor_rms=1e-3, voiced_decay=(1, 2),
                      stop_weight=48, onset_weight=1)
LAYOUTS = {lay.name: lay for lay in (F0_24MS,)}


def pitch_layout(name: str, sample_rate: int | None = None) -> PitchLayout:
    """The layout of this name; :class:`PitchError` for one this flowdec does not know, or, given the
    ``sample_rate`` a model works at, for one defined at another rate."""
    try:
        layout = LAYOUTS[name]
    except (KeyError, TypeError):
        raise PitchError(f"pitch layout {name!r} is not known to this flowdec (it knows {', '.join(LAYOUTS)}); "
                         f"upgrade flowdec") from None
    if sample_rate is not None and layout.sample_rate != sample_rate:
        raise PitchError(f"pitch layout {layout.name} is defined at {layout.sample_rate} Hz only; the model works "
                         f"at {sample_rate} Hz")
    return layout


# -- analysis --------------------------------------------------------------------------------------

def yin(layout: PitchLayout, segment: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """F0 in Hz (0: unvoiced) of the windows centred on ``centres`` (indices into ``segment``, a 1-D signal
    that holds ``window // 2`` samples before each centre and ``window // 2 + lags[1]`` after it).

    YIN: the cumulative-mean-normalised difference function over the layout's lags, the first dip below
    the threshold followed down to its minimum, refined by a parabola through it and its neighbours.
    """
    centres = np.asarray(centres, np.int64)
    out = np.zeros(len(centres))
    if not len(centres):
        return out
    win, (lo, hi) = layout.window, layout.lags
    span = win + hi
    frames = segment.astype(np.float64)[(centres - win // 2)[:, None] + np.arange(span)]  # [m, span]
    quiet = np.sqrt(np.mean(frames[:, :win] ** 2, axis=1)) < layout.floor_rms
    n_fft = 1 << int(math.ceil(math.log2(span + hi)))
    corr = np.fft.irfft(np.fft.rfft(frames[:, :win], n_fft).conj() * np.fft.rfft(frames, n_fft), n_fft)[:, :hi]
    energy = np.cumsum(frames ** 2, axis=1)
    lag = np.arange(hi)
    before = np.concatenate([np.zeros((len(centres), 1)), energy[:, :hi - 1]], axis=1)
    diff = energy[:, win - 1:win] + energy[:, win - 1 + lag] - before - 2.0 * corr
    diff[:, 0] = 0.0
    cmnd = diff * lag / np.maximum(np.cumsum(diff, axis=1), 1e-12)
    cmnd[:, 0] = 1.0
    below = cmnd[:, lo:hi - 1] < layout.threshold
    for i in np.flatnonzero(below.any(axis=1) & ~quiet).tolist():
        row = cmnd[i]
        tau = lo + int(np.argmax(below[i]))
        while tau + 1 < hi - 1 and row[tau + 1] < row[tau]:
            tau += 1
        a0, a1, a2 = row[tau - 1], row[tau], row[tau + 1]
        curve = a0 - 2 * a1 + a2
        out[i] = layout.sample_rate / (tau + (0.5 * (a0 - a2) / curve if curve > 0 else 0.0))
    return out


class PitchMeter:
    """The F0 of a [channels, n] signal fed in order, in blocks of any size, one value per ``hop``; the
    signal's length is given at the end (samples past those fed count as zeros)."""

    def __init__(self, layout: PitchLayout, channels: int) -> None:
        self.layout = layout
        self._before = layout.window // 2  # zeros before sample 0, so the first window is whole
        self._pending = np.zeros((channels, self._before), np.float64)
        self._start = -self._before  # signal position of _pending[:, 0]
        self._received = 0
        self._values: list[np.ndarray] = []  # [channels, m] per batch measured

    @property
    def _done(self) -> int:
        return sum(v.shape[1] for v in self._values)

    def _after(self) -> int:
        return self.layout.window // 2 + self.layout.lags[1]

    def push(self, block: np.ndarray) -> None:
        block = np.asarray(block, np.float64)
        self._received += block.shape[1]
        self._pending = np.concatenate([self._pending, block], axis=1)
        end = self._start + self._pending.shape[1]  # signal samples available: [.., end)
        lay = self.layout
        ready = (end - self._after() - lay.offset) // lay.hop + 1  # values whose windows are all there
        if ready > self._done:
            self._measure(ready)

    def _measure(self, upto: int) -> None:
        lay = self.layout
        js = np.arange(self._done, upto)
        centres = js * lay.hop + lay.offset - self._start
        self._values.append(np.stack([yin(lay, ch, centres) for ch in self._pending]))
        keep_from = upto * lay.hop + lay.offset - lay.window // 2  # the next window's first sample
        cut = max(0, keep_from - self._start)
        self._pending = self._pending[:, cut:]
        self._start += cut

    def finish(self, length: int) -> np.ndarray:
        """F0 in Hz [channels, values] (0: unvoiced) of a signal of ``length`` samples."""
        lay = self.layout
        if self._received > length:
            raise ValueError(f"{self._received} samples were measured, more than the length {length}")
        total = lay.values(length)
        if total > self._done:
            # the rest of the signal (zeros past what was fed), then zeros past its end for the last windows
            need = (total - 1) * lay.hop + lay.offset + self._after() - (self._start + self._pending.shape[1])
            if need > 0:
                self._pending = np.pad(self._pending, ((0, 0), (0, need)))
            self._measure(total)
        channels = self._pending.shape[0]
        if not self._values:
            return np.zeros((channels, 0))
        return np.concatenate(self._values, axis=1)[:, :total]


def measure_pitch(layout: PitchLayout, data: Any, length: int) -> np.ndarray:
    """F0 in Hz [channels, values] of the first ``length`` samples of a [channels, n] array (or DiskArray),
    read in blocks."""
    if len(getattr(data, "shape", ())) != 2:
        raise PitchError(f"the signal must be shaped [channels, samples], got {tuple(getattr(data, 'shape', ()))}")
    if not is_integer(length) or length < 0:
        raise PitchError(f"length must be a whole number of samples, at least 0, got {length!r}")
    meter = PitchMeter(layout, data.shape[0])
    stop = min(data.shape[1], length)
    for a in range(0, stop, _BLOCK):
        meter.push(data[:, a:min(a + _BLOCK, stop)])
    return meter.finish(length)


def quantise(layout: PitchLayout, f0_hz: np.ndarray) -> np.ndarray:
    """F0 in Hz (0: unvoiced) -> the int16 steps a file holds: the nearest grid point, clipped to the grid."""
    f = np.asarray(f0_hz, np.float64)
    voiced = f > 0
    k = np.round(1200.0 * np.log2(np.where(voiced, f, layout.fmin) / layout.fmin) / layout.cents) + 1
    return np.where(voiced, np.clip(k, 1, layout.n_steps), 0).astype(np.int16)


def steps_of_signal(layout: PitchLayout, signal: np.ndarray) -> np.ndarray:
    """Quantised steps of a whole [channels, n] signal in memory, as a file of it would send them (the
    trainer, tests and tools)."""
    signal = np.asarray(signal, np.float64)
    return quantise(layout, measure_pitch(layout, signal, signal.shape[1]))


def dequantise(layout: PitchLayout, steps: np.ndarray) -> np.ndarray:
    """Steps -> F0 in Hz (0 for unvoiced)."""
    s = np.asarray(steps, np.float64)
    return np.where(s > 0, layout.fmin * 2.0 ** ((s - 1) * layout.cents / 1200.0), 0.0)


def frame_track(layout: PitchLayout, steps: np.ndarray, frames: int, frame_hop: int, first: int = 0) -> np.ndarray:
    """F0 in Hz [channels, frames] of centred STFT frames ``frame_hop`` apart (frame i centred on sample
    ``i * frame_hop``), from frame ``first`` on: each frame takes the value whose span holds its centre; 0
    before the signal and past the last value."""
    s = np.asarray(steps)
    idx = np.arange(int(first), int(first) + int(frames)) * int(frame_hop) // layout.hop
    inside = (idx >= 0) & (idx < s.shape[-1])
    out = np.zeros((s.shape[0], int(frames)))
    out[:, inside] = dequantise(layout, s[:, idx[inside]])
    return out


# -- coding ----------------------------------------------------------------------------------------

def check_steps(layout: PitchLayout, steps: Any, channels: int | None = None, length: int | None = None) -> None:
    """Steps that a file may hold: integers in ``0 ... n_steps``, shaped [channels, values] (with the
    channel count and model-rate length given, the shape that fits them)."""
    arr = np.asarray(steps)
    if arr.ndim != 2 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise PitchError(f"pitch steps must be integers shaped [channels, values], got {arr.dtype} {arr.shape}")
    if channels is not None and length is not None and arr.shape != (int(channels), layout.values(length)):
        raise PitchError(f"pitch steps have shape {arr.shape}, which do not fit this signal (expected "
                         f"{(int(channels), layout.values(length))})")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > layout.n_steps):
        raise PitchError(f"pitch steps must lie in 0 ... {layout.n_steps}")


def _symbols(layout: PitchLayout, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A channel's steps as (symbols, contexts): context 1 after a voiced value, 0 after an unvoiced one (and
    for the first value)."""
    k = layout.n_steps
    row = row.astype(np.int64)
    prev = np.concatenate([[0], row[:-1]])
    voiced_before = prev > 0
    sym = np.where(row == 0, 0, np.where(voiced_before, row - prev + k, row))
    return sym.astype(np.int32), voiced_before.astype(np.int64)


def encode_steps(layout: PitchLayout, steps: np.ndarray) -> bytes:
    """The bytes of steps [channels, values]: per channel in order, each value's symbol (see
    :meth:`PitchLayout.frequencies`) range-coded with the table of its context."""
    import constriction

    check_steps(layout, steps)
    tables = layout.tables()
    enc = constriction.stream.queue.RangeEncoder()
    for row in np.asarray(steps):
        if not row.size:
            continue
        sym, ctx = _symbols(layout, row)
        bounds = np.flatnonzero(np.diff(ctx)) + 1
        starts = np.concatenate([[0], bounds]).tolist()
        ends = np.concatenate([bounds, [len(sym)]]).tolist()
        for a, b in zip(starts, ends):  # runs of one context in one call; the order stays value by value
            enc.encode(sym[a:b], tables[int(ctx[a])])
    return np.asarray(enc.get_compressed(), dtype="<u4").tobytes()


def step_count_fits(n_values: int, n_bytes: int) -> bool:
    """Whether ``n_bytes`` can hold ``n_values`` values (no symbol costs less than log2(16/15) bits): a
    forged header cannot make a reader decode more than a fixed multiple of the file's size."""
    return n_values <= max_codes_for_payload(n_bytes)


def decode_steps(layout: PitchLayout, data: bytes | memoryview, channels: int, values: int) -> np.ndarray:
    """Inverse of :func:`encode_steps`: int16 steps [channels, values]; :class:`PitchError` for bytes that
    are not exactly such a stream."""
    k = layout.n_steps
    tables = layout.tables()
    least = symbol_bits(layout.frequencies()).min(axis=0)  # a symbol's cost in its cheapest context
    with range_decoder(data, PitchError, "pitch side channel") as dec:
        if not step_count_fits(channels * values, len(data)):  # before allocating anything for them
            raise PitchError(f"{channels * values} pitch values cannot fit in {len(data)} bytes")
        out = np.zeros((channels, values), np.int16)
        decode_one = dec.decode_one
        for c in range(channels):
            prev = 0
            row = []
            for _ in range(values):
                s = int(decode_one(tables[1 if prev > 0 else 0]))
                dec.decoded(float(least[s]))
                if s == 0:
                    step = 0
                elif prev > 0:
                    step = prev + s - k
                else:
                    step = s
                if not 0 <= step <= k or (prev == 0 and s > k):
                    raise PitchError(f"pitch side channel decodes to a step outside 0 ... {k}")
                row.append(step)
                prev = step
            out[c] = row
    require_canonical(encode_steps(layout, out), data, PitchError, "pitch side channel")
    return out
