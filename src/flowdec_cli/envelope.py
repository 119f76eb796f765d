"""The band-energy side channel ("envelope") of a .fdc file (spec: docs/fdc-format.md, section 3.3).

Why: the built-in model's codec and postfilter get the detail of a sound roughly right but its long-term
balance across frequency wrong (too little above 12 kHz, too much or too little in whole octaves for
seconds at a time). Fifteen band levels of the original three times a second, about 2 % of 7.5 kbit/s,
let the decoder put that balance back; measured in docs/models.md, it is worth more ViSQOL than anything
the postfilter does.

The encoder measures the mean power of the model-rate input in 15 wide bands over windows of a third of a
second (:class:`BandMeter`), quantises it to 3 dB steps and entropy-codes each level's difference from a
prediction (:func:`encode_levels`). The decoder measures its own output the same way and
applies the per-band gain that takes it to the sent level, interpolated from window to window, with an
STFT filter that reconstructs the signal exactly where the gain is 0 dB (:func:`apply_envelope`). Both
stages stream: memory depends on the block size, not on the length of the file.

A layout fixes every choice (bands, windows, steps); a file names its layout, so a later layout never
changes how an older file decodes.
"""

from __future__ import annotations

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

__all__ = ["DEFAULT_LAYOUT", "LAYOUTS", "BandMeter", "EnvelopeError", "EnvelopeLayout", "apply_envelope",
           "check_range", "check_shape", "decode_levels", "encode_levels", "envelope_layout", "filter_bands",
           "level_count_fits", "levels_of_signal", "measure", "quantise"]

_FLOOR_DB = -96.0  # levels below this are silence; it keeps log10 finite and bounds the level range
_BLOCK = 1 << 18  # model-rate samples per block when reading a buffer


class EnvelopeError(FlowdecError):
    """Levels that cannot be coded, or bytes that do not decode into the levels a file describes."""


@dataclass(frozen=True)
class EnvelopeLayout:
    """Every choice that defines an envelope: analysis STFT, bands, window, quantiser and coder."""

    name: str
    sample_rate: int          # the model rate the layout is defined at
    n_fft: int                # periodic Hann window of this length
    hop: int                  # samples between frames; n_fft / hop = 4 keeps the filter exact
    window_frames: int        # frames per level window (63 x 256 samples = 0.336 s at 48 kHz)
    edges_hz: tuple[float, ...]  # band edges, first 0, last the Nyquist frequency
    step_db: float            # quantiser step
    max_boost_db: float       # the decoder raises a band by at most this (more lifts coding noise)...
    max_cut_db: float         # ...and lowers it by at most this
    narrow_decay: tuple[int, int]  # ratio of successive probabilities of a residual of later windows
    wide_decay: tuple[int, int]    # the same for the first window and the lowest band
    _cache: dict = field(default_factory=dict, repr=False, compare=False, hash=False)

    @property
    def n_bands(self) -> int:
        return len(self.edges_hz) - 1

    @property
    def level_range(self) -> tuple[int, int]:
        """The quantised levels a file may hold (inclusive): the floor (-96 dB) up to one step below +96 dB."""
        top = int(round(-_FLOOR_DB / self.step_db))
        return -top, top - 1

    def frames(self, length: int) -> int:
        """Analysis frames of a signal of ``length`` samples: frame j is centred on sample ``j * hop``."""
        return -(-int(length) // self.hop)

    def windows(self, length: int) -> int:
        """Level windows of a signal of ``length`` samples (the last one may be short)."""
        return -(-self.frames(length) // self.window_frames)

    def window_centres(self, length: int) -> np.ndarray:
        """Centre of each window, in frames (where its level is exact when the gain is interpolated)."""
        n_frames, f = self.frames(length), self.window_frames
        starts = np.arange(self.windows(length)) * f
        return starts + (np.minimum(f, n_frames - starts) - 1) / 2.0

    def _memo(self, key: str, make: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def window(self) -> np.ndarray:
        """Periodic Hann window (float32)."""
        return self._memo("window", lambda: (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(self.n_fft) / self.n_fft))
                          .astype(np.float32))

    @property
    def bin_band(self) -> np.ndarray:
        """Band of every rFFT bin (the Nyquist bin belongs to the top band)."""
        def make() -> np.ndarray:
            freqs = np.arange(self.n_fft // 2 + 1) * self.sample_rate / self.n_fft
            return np.clip(np.searchsorted(np.asarray(self.edges_hz), freqs, side="right") - 1, 0, self.n_bands - 1)
        return self._memo("bin_band", make)

    @property
    def band_matrix(self) -> np.ndarray:
        """[bins, bands] weights that turn a frame's power spectrum into each band's mean power per bin,
        relative to full-scale white noise (whose every band then reads 0 dB)."""
        def make() -> np.ndarray:
            onehot = np.eye(self.n_bands, dtype=np.float64)[self.bin_band]
            per_bin = onehot / onehot.sum(axis=0, keepdims=True)
            return (per_bin / float(np.sum(self.window.astype(np.float64) ** 2))).astype(np.float32)
        return self._memo("band_matrix", make)

    def frequencies(self) -> tuple[np.ndarray, np.ndarray]:
        """The integer frequency rows of the wide and the narrow residuals."""
        def make() -> tuple[np.ndarray, np.ndarray]:
            lo, hi = self.level_range
            rows = []
            for num, den in (self.wide_decay, self.narrow_decay):
                weights, w = [], 1 << 40
                for _ in range(hi - lo + 1):  # integer geometric weights: the same tables on every machine
                    weights.append(w)
                    w = max(w * num // den, 1)
                counts = np.array(weights[:0:-1] + weights, dtype=np.float64)[None, :]
                rows.append(freqs_from_counts(counts)[0])
            return rows[0], rows[1]
        return self._memo("frequencies", make)

    def tables(self) -> tuple[Any, Any, int]:
        """constriction models for the wide and the narrow residuals, and the symbol offset."""
        def make() -> tuple[Any, Any, int]:
            lo, hi = self.level_range
            wide, narrow = self.frequencies()
            return categorical_model(wide), categorical_model(narrow), hi - lo
        return self._memo("tables", make)


def _layout(name: str, window_frames: int, edges_hz: tuple[float, ...], max_boost_db: float) -> EnvelopeLayout:
    """The layouts differ only in their bands, window and largest lift (docs/fdc-format.md, section 3.3)."""
    return EnvelopeLayout(name=name, sample_rate=48000, n_fft=1024, hop=256, window_frames=window_frames,
                          edges_hz=edges_hz, step_db=3.0, max_boost_db=max_boost_db, max_cut_db=30.0,
                          narrow_decay=(1, 2), wide_decay=(3, 4))


_EDGES15 = (0.0, 500.0, *(float(f) for f in np.geomspace(1000.0, 24000.0, 14)))
_EDGES30 = (0.0, 250.0, 500.0, 750.0, *(float(f) for f in np.geomspace(1000.0, 24000.0, 27)))
# bands30's 4 bands below 1 kHz split in 8 (125 Hz each), where speech's harmonics and STOI's lowest bands
# lie (docs/models.md, "More bands below 1 kHz")
_EDGES34 = (0.0, 125.0, 250.0, 375.0, 500.0, 625.0, 750.0, 875.0, *_EDGES30[4:])
BANDS15 = _layout("bands15", 63, _EDGES15, 6.0)
BANDS15_85MS = _layout("bands15-85ms", 16, _EDGES15, 6.0)
BANDS30_43MS = _layout("bands30-43ms", 8, _EDGES30, 12.0)
BANDS30_21MS = _layout("bands30-21ms", 4, _EDGES30, 12.0)
BANDS34_85MS = _layout("bands34-85ms", 16, _EDGES34, 12.0)
BANDS34_43MS = _layout("bands34-43ms", 8, _EDGES34, 12.0)
BANDS34_21MS = _layout("bands34-21ms", 4, _EDGES34, 12.0)
LAYOUTS = {lay.name: lay for lay in (BANDS15, BANDS15_85MS, BANDS30_43MS, BANDS30_21MS, BANDS34_85MS,
                                     BANDS34_43MS, BANDS34_21MS)}
DEFAULT_LAYOUT = BANDS15.name


def envelope_layout(name: str, sample_rate: int | None = None) -> EnvelopeLayout:
    """The layout of this name; :class:`EnvelopeError` for one this flowdec does not know, or, given the
    ``sample_rate`` a model works at, for one defined at another rate (a layout fixes its bands in Hz)."""
    try:
        layout = LAYOUTS[name]
    except (KeyError, TypeError):
        raise EnvelopeError(f"envelope layout {name!r} is not known to this flowdec (it knows "
                            f"{', '.join(LAYOUTS)}); upgrade flowdec") from None
    if sample_rate is not None and layout.sample_rate != sample_rate:
        raise EnvelopeError(f"envelope layout {layout.name} is defined at {layout.sample_rate} Hz only; the model "
                            f"works at {sample_rate} Hz")
    return layout


def check_shape(layout: EnvelopeLayout, levels: Any, channels: int, length: int) -> None:
    """Levels [channels, windows, bands] that fit a signal of ``length`` model-rate samples per channel."""
    expect = (int(channels), layout.windows(length), layout.n_bands)
    if tuple(np.shape(levels)) != expect:
        raise EnvelopeError(f"envelope levels have shape {tuple(np.shape(levels))}, which do not fit this signal "
                            f"(expected {expect})")


def check_range(layout: EnvelopeLayout, levels: Any) -> None:
    """Levels inside the layout's range (an array or a list of ints)."""
    lo, hi = layout.level_range
    if np.size(levels) and (int(np.min(levels)) < lo or int(np.max(levels)) > hi):
        raise EnvelopeError(f"levels must lie in {lo} ... {hi}")


# -- analysis --------------------------------------------------------------------------------------

def _frames_of(layout: EnvelopeLayout, segment: np.ndarray, n_frames: int) -> np.ndarray:
    """[C, n_frames, n_fft] windowed frames of ``segment``, frame i starting at sample ``i * hop``."""
    view = np.lib.stride_tricks.sliding_window_view(segment, layout.n_fft, axis=-1)[:, ::layout.hop][:, :n_frames]
    return view * layout.window


class BandMeter:
    """Mean power per band and window of a [channels, n] signal fed in order, in blocks of any size; the
    signal's length is given at the end (it may run past the samples fed, which then count as zeros)."""

    def __init__(self, layout: EnvelopeLayout, channels: int) -> None:
        self.layout = layout
        self._pending = np.zeros((channels, layout.n_fft // 2), np.float32)  # frame 0 starts half a window early
        self._received = 0
        self._next = 0  # next frame to measure
        self._sums: list[np.ndarray] = []  # [channels, bands] per window

    def push(self, block: np.ndarray) -> None:
        block = np.asarray(block, np.float32)
        self._received += block.shape[1]
        self._pending = np.concatenate([self._pending, block], axis=1)
        have = self._pending.shape[1]
        ready = (have - self.layout.n_fft) // self.layout.hop + 1 if have >= self.layout.n_fft else 0
        if ready > 0:
            self._measure(ready)

    def _measure(self, n: int) -> None:
        lay = self.layout
        spec = np.fft.rfft(_frames_of(lay, self._pending, n), axis=-1)
        power = (spec.real ** 2 + spec.imag ** 2) @ lay.band_matrix  # [C, n, bands]
        window_of = (self._next + np.arange(n)) // lay.window_frames
        for w in np.unique(window_of).tolist():
            while len(self._sums) <= w:
                self._sums.append(np.zeros((power.shape[0], lay.n_bands), np.float64))
            self._sums[w] += power[:, window_of == w].sum(axis=1)
        self._next += n
        self._pending = self._pending[:, n * lay.hop:]

    def finish(self, length: int) -> np.ndarray:
        """Levels in dB [channels, windows, bands] (not quantised) of a signal of ``length`` samples."""
        lay = self.layout
        if self._received > length:
            raise ValueError(f"{self._received} samples were measured, more than the length {length}")
        n_frames, n_windows = lay.frames(length), lay.windows(length)
        left = n_frames - self._next
        if left > 0:
            need = (left - 1) * lay.hop + lay.n_fft - self._pending.shape[1]
            if need > 0:
                self._pending = np.pad(self._pending, ((0, 0), (0, need)))
            self._measure(left)
        sums = np.zeros((self._pending.shape[0], n_windows, lay.n_bands), np.float64)
        if n_windows:
            sums[:] = np.stack(self._sums[:n_windows], axis=1)
        counts = np.minimum(lay.window_frames, n_frames - np.arange(n_windows) * lay.window_frames)
        mean = sums / np.maximum(counts, 1)[None, :, None]
        return 10.0 * np.log10(mean + 10.0 ** (_FLOOR_DB / 10.0))


def quantise(layout: EnvelopeLayout, levels_db: np.ndarray) -> np.ndarray:
    """Levels in dB -> the integer steps a file holds (int16, clipped to the layout's range)."""
    lo, hi = layout.level_range
    return np.clip(np.round(np.asarray(levels_db) / layout.step_db), lo, hi).astype(np.int16)


def _check_signal(data: Any, length: Any) -> None:
    """A [channels, n] array (or DiskArray) and a whole, non-negative length of it: a 1-D array failed as an
    IndexError, a negative length as a contradiction."""
    if len(getattr(data, "shape", ())) != 2:
        raise EnvelopeError(f"the signal must be shaped [channels, samples], got {tuple(getattr(data, 'shape', ()))}")
    if not is_integer(length) or length < 0:
        raise EnvelopeError(f"length must be a whole number of samples, at least 0, got {length!r}")


def measure(layout: EnvelopeLayout, data: Any, length: int) -> np.ndarray:
    """Levels in dB of the first ``length`` samples of a [channels, n] array (or DiskArray), read in blocks."""
    _check_signal(data, length)
    meter = BandMeter(layout, data.shape[0])
    stop = min(data.shape[1], length)
    for a in range(0, stop, _BLOCK):
        meter.push(data[:, a:min(a + _BLOCK, stop)])
    return meter.finish(length)


# -- coding ----------------------------------------------------------------------------------------

def _predict(lo: int, hi: int, prev: int, below: int, prev_below: int) -> int:
    """A level's prediction from the same band in the previous window, moved as the band below moved
    (the whole spectrum tends to rise and fall together), held inside the level range."""
    return min(max(prev + below - prev_below, lo), hi)


def _residuals(layout: EnvelopeLayout, q: np.ndarray) -> np.ndarray:
    """Each level minus its prediction. First window: the band below (the lowest band: the floor). Later
    windows: the lowest band from the previous window; the others by :func:`_predict`."""
    lo, hi = layout.level_range
    q = q.astype(np.int64)
    pred = np.empty_like(q)
    if not q.shape[1]:
        return pred
    pred[:, 0, 0] = lo
    pred[:, 0, 1:] = q[:, 0, :-1]
    pred[:, 1:, 0] = q[:, :-1, 0]
    pred[:, 1:, 1:] = np.clip(q[:, :-1, 1:] + q[:, 1:, :-1] - q[:, :-1, :-1], lo, hi)
    return q - pred


def _split(res: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A channel's residuals [windows, bands] in coding order: those coded with the wide table (the
    first window, then the lowest band of the later ones), and those coded with the narrow one."""
    return np.concatenate([res[0], res[1:, 0]]), res[1:, 1:].reshape(-1)


def encode_levels(layout: EnvelopeLayout, q: np.ndarray) -> bytes:
    """The bytes of quantised levels [channels, windows, bands]: per channel, the residuals of
    :func:`_residuals` in the order of :func:`_split`, range-coded with the layout's two fixed tables."""
    import constriction

    q = np.asarray(q, np.int64)
    if q.ndim != 3 or q.shape[2] != layout.n_bands:
        raise EnvelopeError(f"levels must have shape [channels, windows, {layout.n_bands}], got {q.shape}")
    check_range(layout, q)
    wide, narrow, span = layout.tables()
    res = _residuals(layout, q) + span
    enc = constriction.stream.queue.RangeEncoder()
    for c in range(q.shape[0]):
        if not q.shape[1]:
            continue
        first, rest = _split(res[c])
        enc.encode(first.astype(np.int32), wide)
        if rest.size:
            enc.encode(rest.astype(np.int32), narrow)
    return np.asarray(enc.get_compressed(), dtype="<u4").tobytes()


def level_count_fits(n_levels: int, n_bytes: int) -> bool:
    """Whether ``n_bytes`` can hold ``n_levels`` levels (no symbol costs less than log2(16/15) bits): a
    forged header cannot make a reader decode more than a fixed multiple of the file's size."""
    return n_levels <= max_codes_for_payload(n_bytes)


def decode_levels(layout: EnvelopeLayout, data: bytes | memoryview, channels: int, windows: int) -> np.ndarray:
    """Inverse of :func:`encode_levels`: int16 levels [channels, windows, bands]; :class:`EnvelopeError`
    for bytes that are not exactly such a stream."""
    bands = layout.n_bands
    n = channels * windows * bands
    wide, narrow, span = layout.tables()
    wide_bits, narrow_bits = (symbol_bits(f) for f in layout.frequencies())
    lo, hi = layout.level_range
    with range_decoder(data, EnvelopeError, "envelope") as dec:
        if not level_count_fits(n, len(data)):  # before allocating anything for them
            raise EnvelopeError(f"{n} levels cannot fit in {len(data)} bytes")
        out = np.zeros((channels, windows, bands), np.int16)
        for c in range(channels):
            if not windows:
                continue
            first = (dec.decode(wide, bands + windows - 1, wide_bits).astype(np.int64) - span).tolist()
            rest = (dec.decode(narrow, (windows - 1) * (bands - 1), narrow_bits).astype(np.int64)
                    - span).tolist() if windows > 1 else []
            q = [lo + first[0]]
            for b in range(1, bands):
                q.append(q[-1] + first[b])
            check_range(layout, q)
            out[c, 0] = q
            for w in range(1, windows):
                prev = q
                q = [prev[0] + first[bands + w - 1]]
                r = rest[(w - 1) * (bands - 1):w * (bands - 1)]
                for b in range(1, bands):
                    q.append(_predict(lo, hi, prev[b], q[b - 1], prev[b - 1]) + r[b - 1])
                check_range(layout, q)
                out[c, w] = q
    require_canonical(encode_levels(layout, out), data, EnvelopeError, "envelope")
    return out


# -- application -----------------------------------------------------------------------------------

def _gains_for_frames(layout: EnvelopeLayout, centres: np.ndarray, gains_db: np.ndarray, first: int,
                      count: int) -> np.ndarray:
    """Linear gains [C, count, bins] of frames ``first ...``, interpolated in dB between window centres
    (held beyond the first and last)."""
    js = np.arange(first, first + count, dtype=np.float64)
    c_n, _w, b_n = gains_db.shape
    out = np.empty((c_n, count, b_n), np.float64)
    for c in range(c_n):
        for b in range(b_n):
            out[c, :, b] = np.interp(js, centres, gains_db[c, :, b])
    return (10.0 ** (out / 20.0)).astype(np.float32)[:, :, layout.bin_band]


def apply_envelope(layout: EnvelopeLayout, data: Any, length: int, levels: np.ndarray,
                   block: int = _BLOCK) -> None:
    """Bring the band levels of the first ``length`` samples of ``data`` [channels, n] (an array or a
    DiskArray, changed in place) to the quantised ``levels`` [channels, windows, bands].

    Two passes: measure the signal as the encoder measured the original, then filter it block by block
    (STFT, a gain per band and frame, inverse STFT with overlap-add). Every sample is covered by four
    frames whose squared windows sum to 1.5, so a gain of 0 dB gives the signal back exactly.
    """
    _check_signal(data, length)
    levels = np.asarray(levels)
    if levels.size and not np.issubdtype(levels.dtype, np.integer):  # NaN levels turned every sample NaN
        raise EnvelopeError(f"levels must be the integer steps quantise() gives, got {levels.dtype}")
    check_shape(layout, levels, data.shape[0], length)
    check_range(layout, levels)
    if isinstance(data, np.ndarray) and not data.flags.writeable:
        raise EnvelopeError("the signal is read-only; the levels are applied in place")
    if min(int(data.shape[1]), int(length)) <= 0 or not levels.size:
        return
    have = measure(layout, data, length)
    gains_db = np.clip(levels.astype(np.float64) * layout.step_db - have, -layout.max_cut_db, layout.max_boost_db)
    filter_bands(layout, data, length, gains_db, block)


def filter_bands(layout: EnvelopeLayout, data: Any, length: int, gains_db: np.ndarray, block: int = _BLOCK) -> None:
    """Apply per-band gains in dB [channels, windows, bands], given at the window centres and interpolated
    between them, to the first ``length`` samples of ``data`` in place (the second pass of
    :func:`apply_envelope`)."""
    c_n = data.shape[0]
    n = min(int(data.shape[1]), int(length))
    centres = layout.window_centres(length)
    hop, half = layout.hop, layout.n_fft // 2
    ext = half + hop  # samples beyond a block that its frames reach on either side
    block = max(hop, block // hop * hop)
    win = layout.window
    carry = np.zeros((c_n, ext), np.float32)  # the original samples just before the block
    for a in range(0, n, block):
        b = min(a + block, n)
        first = a // hop - 1
        n_frames = -(-b // hop) + 1 - first + 1
        seg_len = (n_frames - 1) * hop + layout.n_fft
        fresh = np.asarray(data[:, a:min(a + seg_len - ext, n)], np.float32)
        seg = np.zeros((c_n, seg_len), np.float32)
        seg[:, :ext] = carry
        seg[:, ext:ext + fresh.shape[1]] = fresh
        carry = seg[:, b - a:b - a + ext].copy()
        spec = np.fft.rfft(_frames_of(layout, seg, n_frames), axis=-1)
        spec *= _gains_for_frames(layout, centres, gains_db, first, n_frames)
        frames = np.fft.irfft(spec, n=layout.n_fft, axis=-1).astype(np.float32) * win  # [C, F, n_fft]
        quarters = frames.reshape(c_n, n_frames, layout.n_fft // hop, hop)
        acc = np.zeros((c_n, n_frames + quarters.shape[2] - 1, hop), np.float32)
        for r in range(quarters.shape[2]):
            acc[:, r:r + n_frames] += quarters[:, :, r]
        out = acc.reshape(c_n, -1)[:, ext:ext + (b - a)] / np.float32(_ola_norm(layout))
        data[:, a:b] = out


def _ola_norm(layout: EnvelopeLayout) -> float:
    """The sum of squared windows over the frames that cover a sample (1.5 for Hann at a quarter hop)."""
    w2 = layout.window.astype(np.float64) ** 2
    return float(w2.reshape(-1, layout.hop).sum(axis=0)[0])


def levels_of_signal(layout: EnvelopeLayout, signal: np.ndarray) -> np.ndarray:
    """Quantised levels of a whole [channels, n] signal in memory (tests and tools)."""
    return quantise(layout, measure(layout, signal, signal.shape[1]))

