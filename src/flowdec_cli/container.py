"""The ``.fdc`` container: NDAC codes plus everything needed to decode them (spec: docs/fdc-format.md).

Layout: magic ``89 'F' 'D' 'C'``, major and minor version bytes, a uint16 LE header length, a MessagePack
header map with small integer keys, the codes bit-packed at ceil(log2(codebook_size)) bits each (channel,
then frame, then codebook; most significant bit first) or, from format 1.1, entropy-coded with the model's
tables (coding ``range-ctx1``, see :mod:`flowdec_cli.entropy`), from format 1.2 optionally the band-energy
side channel (:mod:`flowdec_cli.envelope`), from format 1.3 optionally the pitch side channel
(:mod:`flowdec_cli.pitch`), and a CRC-32 (LE) over everything before it.

Reading never executes code and never trusts a length before comparing it with the real size of the data.
Every problem with a file is reported as :class:`FdcError`, whose message names the file.
"""

from __future__ import annotations

import math
import operator
import os
import stat
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import msgpack
import numpy as np

from . import __version__
from .bitrate import bits_for_codebook_size, nominal_bitrate
from .entropy import CODING_BITPACK, KNOWN_CODINGS, EntropyError, max_codes_for_payload
from .envelope import (
    DEFAULT_LAYOUT,
    EnvelopeError,
    EnvelopeLayout,
    check_shape,
    decode_levels,
    encode_levels,
    envelope_layout,
    level_count_fits,
)
from .exceptions import FlowdecError
from .fileio import atomic_write_bytes, read_up_to
from .numeric import is_integer, is_real, is_whole
from .pitch import PitchError, check_steps, decode_steps, encode_steps, pitch_layout, step_count_fits

__all__ = [
    "FDC_MAGIC",
    "FORMAT_VERSION",
    "FdcError",
    "FdcHeader",
    "MAX_GAIN",
    "actual_bitrate",
    "bits_for_codebook_size",
    "bitpacked_file_size",
    "check_codes",
    "check_header",
    "check_sample_rate",
    "decode_fdc",
    "encode_fdc",
    "encode_fdc_written",
    "entropy_saving",
    "frames_for_samples",
    "inspect_fdc",
    "inspect_fdc_stream",
    "header_size",
    "max_file_size",
    "nominal_bitrate",
    "pack_codes",
    "read_fdc",
    "read_fdc_rest",
    "unpack_codes",
    "write_fdc",
]

FDC_MAGIC = b"\x89FDC"
FORMAT_VERSION = (1, 3)  # newest (major, minor) this module writes and reads (every minor version of major 1)
BITPACK_VERSION = (1, 0)  # bit-packed files stay 1.0 files, readable by every 1.x reader
ENTROPY_VERSION = (1, 1)  # entropy-coded files without an envelope stay 1.1 files
ENVELOPE_VERSION = (1, 2)  # any file with an envelope (and no pitch)
PITCH_VERSION = (1, 3)  # any file with a pitch side channel
_PREAMBLE = struct.Struct("<4sBBH")  # magic, major, minor, header length
_CRC = struct.Struct("<I")
FIXED_OVERHEAD = _PREAMBLE.size + _CRC.size  # 12 bytes besides header and payload

MAX_HEADER_BYTES = 0xFFFF
MAX_HEADER_DEPTH = 32  # maps and arrays inside one another, the header map counting as the first
_MAX_STR = 256
_MAX_RATE = 10_000_000
_MAX_COUNT = 2**62
MAX_GAIN = 1e9  # the largest input peak (times full scale) a header restores
_BITRATE_RTOL = 1e-9
# Codes handled per numpy block while packing/unpacking (a multiple of 8, so every block but the last
# fills whole bytes); bounds the temporary bit arrays to a few MB however long the file is.
_BLOCK = 1 << 18


class FdcError(FlowdecError):
    """A .fdc file (or the data given to write one) is not valid; the message names the file and the problem."""


# -- header -----------------------------------------------------------------------------------------

@dataclass
class FdcHeader:
    """Everything in a .fdc header. Field names are readable here; on disk they are small integer keys."""

    model_name: str
    model_hash: str
    sample_rate: int            # original audio, Hz
    channels: int               # original channel count; each channel is coded separately
    num_samples: int            # exact original length per channel, at sample_rate
    model_sample_rate: int      # Hz
    hop_length: int             # model samples per frame
    codebook_size: int
    n_codebooks: int            # codebooks used (the first n of the model's quantizer)
    model_codebooks: int        # codebooks the model has
    num_frames: int             # frames per channel
    chunk_frames: int = 0       # frames per chunk when encoding; 0 = one piece
    context_frames: int = 0     # frames of context on each side of a chunk when encoding
    package_version: str = __version__
    created_by: str = "flowdec"
    gain: float = 1.0           # optional: the decoder multiplies its output by this
    coding: str = CODING_BITPACK  # 1.1: how the payload holds the codes (bitpack or range-ctx1)
    entropy_tables: str = ""    # 1.1: identifier of the entropy tables (entropy-coded files only)
    payload_bytes: int = 0      # 1.1: payload size of an entropy-coded file (0 for bit-packed files)
    envelope_layout: str = ""   # 1.2: layout of the band-energy side channel ("" when the file has none)
    envelope_bytes: int = 0     # 1.2: its size in bytes, after the codes
    # 1.2: the side channel's quantised levels [channels, windows, bands] (int16). They are stored after the
    # codes, not in the header map; they ride on the header so that every (header, codes) API carries them.
    envelope: np.ndarray | None = field(default=None, compare=False, repr=False)
    pitch_layout: str = ""      # 1.3: layout of the pitch side channel ("" when the file has none)
    pitch_bytes: int = 0        # 1.3: its size in bytes, after the envelope
    # 1.3: its quantised F0 steps [channels, values] (int16), stored after the envelope, carried as the levels are
    pitch: np.ndarray | None = field(default=None, compare=False, repr=False)
    extra: dict = field(default_factory=dict)  # unknown / application keys, kept as read
    format_version: tuple = field(default=BITPACK_VERSION, compare=False)  # as read or written

    # derived values
    @property
    def bits_per_code(self) -> int:
        return bits_for_codebook_size(self.codebook_size)

    @property
    def frame_rate(self) -> float:
        return self.model_sample_rate / self.hop_length

    @property
    def nominal_bitrate(self) -> float:
        """Nominal bitrate per channel, bit/s."""
        return nominal_bitrate(self.model_sample_rate, self.hop_length, self.n_codebooks, self.codebook_size)

    @property
    def duration(self) -> float:
        """Duration of the original audio in seconds."""
        return self.num_samples / self.sample_rate

    @property
    def codes_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.n_codebooks, self.num_frames)

    @property
    def n_codes(self) -> int:
        return self.channels * self.n_codebooks * self.num_frames

    @property
    def entropy_coded(self) -> bool:
        return self.coding != CODING_BITPACK

    @property
    def payload_size(self) -> int:
        if self.entropy_coded:
            return int(self.payload_bytes)
        return _payload_size(self.n_codes, self.bits_per_code)

    @property
    def coded_length(self) -> int:
        """Model-rate samples per channel the codes span (what the side channel measures)."""
        return self.num_frames * self.hop_length

    @property
    def envelope_windows(self) -> int:
        """Level windows of the side channel (0 without one): over the codes' whole model-rate span."""
        if not self.envelope_layout:
            return 0
        return envelope_layout(self.envelope_layout).windows(self.coded_length)

    @property
    def pitch_values(self) -> int:
        """Values per channel of the pitch side channel (0 without one): over the codes' model-rate span."""
        if not self.pitch_layout:
            return 0
        return pitch_layout(self.pitch_layout).values(self.coded_length)

    @property
    def side_bytes(self) -> int:
        """Bytes of the side channels (envelope and pitch) after the codes."""
        return int(self.envelope_bytes) + int(self.pitch_bytes)

    @property
    def bitpacked_payload_size(self) -> int:
        """Payload bytes of the same codes bit-packed (the nominal rate's size)."""
        return _payload_size(self.n_codes, self.bits_per_code)

    def validate(self, source_name: str = "<header>") -> None:
        """Raise :class:`FdcError` if a field has the wrong type or is out of bounds."""
        _check_fields({name: getattr(self, name) for name, _k, _t, _lo, _hi in _FIELDS}, source_name)
        gain = self.gain
        if not is_real(gain) or not 0 < gain <= MAX_GAIN:
            raise FdcError(f"{source_name}: invalid header: gain must be a number in (0, {MAX_GAIN:g}], "
                           f"got {gain!r}")
        lo, hi = frames_for_samples(self.num_samples, self.sample_rate, self.model_sample_rate, self.hop_length)
        if not lo <= self.num_frames <= hi:
            need = f"{lo}" if lo == hi else f"{lo} to {hi}"
            raise FdcError(f"{source_name}: invalid header: {self.num_samples} samples at {self.sample_rate} Hz "
                           f"take {need} frames of {self.hop_length} at {self.model_sample_rate} Hz, but the "
                           f"header says {self.num_frames}")
        _check_coding(self.coding, self.entropy_tables, self.payload_bytes, self.n_codes, source_name)
        _check_envelope(self, source_name)
        _check_pitch(self, source_name)
        if not isinstance(self.extra, dict):
            raise FdcError(f"{source_name}: invalid header: extra must be a dict")
        for key in self.extra:
            if not (isinstance(key, str) or is_integer(key)):
                raise FdcError(f"{source_name}: invalid header: extra key {key!r} is neither int nor str")
            if key in _KNOWN_KEYS:
                raise FdcError(f"{source_name}: invalid header: extra key {key!r} is reserved for "
                               f"{_KNOWN_KEYS[key]}")

    def to_dict(self) -> dict[str, Any]:
        """All fields and derived values under readable names (for ``flowdec info --json``)."""
        d = {name: getattr(self, name) for name, _k, _t, _lo, _hi in _FIELDS}
        d["gain"] = self.gain
        d["format_version"] = "{}.{}".format(*self.format_version)
        d["coding"] = self.coding
        d["entropy_tables"] = self.entropy_tables
        d["payload_bytes"] = self.payload_size
        d["bitpacked_payload_bytes"] = self.bitpacked_payload_size
        d["envelope_layout"] = self.envelope_layout
        d["envelope_bytes"] = self.envelope_bytes
        d["envelope"] = None if self.envelope is None else np.asarray(self.envelope).tolist()
        d["pitch_layout"] = self.pitch_layout
        d["pitch_bytes"] = self.pitch_bytes
        d["pitch"] = None if self.pitch is None else np.asarray(self.pitch).tolist()
        d["bits_per_code"] = self.bits_per_code
        d["frame_rate"] = self.frame_rate
        d["nominal_bitrate"] = self.nominal_bitrate
        d["duration"] = self.duration
        d["extra"] = {str(k): v for k, v in self.extra.items()}
        return d


# (python name, on-disk key, type, min, max); type "str" bounds the length in characters.
# A max given as a string names another field that bounds this one.
_FIELDS: list[tuple[str, int, str, int, Any]] = [
    ("model_name", 0, "str", 1, _MAX_STR),
    ("model_hash", 1, "str", 0, _MAX_STR),
    ("package_version", 2, "str", 0, _MAX_STR),
    ("created_by", 3, "str", 0, _MAX_STR),
    ("sample_rate", 4, "int", 1, _MAX_RATE),
    ("channels", 5, "int", 1, 65_535),
    ("num_samples", 6, "int", 0, _MAX_COUNT),
    ("model_sample_rate", 7, "int", 1, _MAX_RATE),
    ("hop_length", 8, "int", 1, 1 << 24),
    ("codebook_size", 9, "int", 2, 1 << 32),
    ("n_codebooks", 10, "int", 1, "model_codebooks"),
    ("model_codebooks", 11, "int", 1, 65_535),
    ("num_frames", 12, "int", 0, _MAX_COUNT),
    ("chunk_frames", 13, "int", 0, _MAX_COUNT),
    ("context_frames", 14, "int", 0, _MAX_COUNT),
]
_KEY_BITRATE = 15
_KEY_GAIN = 16
_KEY_CODING = 17          # format 1.1
_KEY_TABLES = 18          # format 1.1
_KEY_PAYLOAD_BYTES = 19   # format 1.1
_KEY_ENVELOPE = 20        # format 1.2
_KEY_ENVELOPE_BYTES = 21  # format 1.2
_KEY_PITCH = 22           # format 1.3
_KEY_PITCH_BYTES = 23     # format 1.3
_KNOWN_KEYS = {key: name for name, key, _t, _lo, _hi in _FIELDS}
_INT_RANGES = {name: (lo, hi) for name, _k, kind, lo, hi in _FIELDS if kind == "int" and not isinstance(hi, str)}
_KNOWN_KEYS[_KEY_BITRATE] = "nominal_bitrate"
_KNOWN_KEYS[_KEY_GAIN] = "gain"
_KNOWN_KEYS[_KEY_CODING] = "coding"
_KNOWN_KEYS[_KEY_TABLES] = "entropy_tables"
_KNOWN_KEYS[_KEY_PAYLOAD_BYTES] = "payload_bytes"
_KNOWN_KEYS[_KEY_ENVELOPE] = "envelope_layout"
_KNOWN_KEYS[_KEY_ENVELOPE_BYTES] = "envelope_bytes"
_KNOWN_KEYS[_KEY_PITCH] = "pitch_layout"
_KNOWN_KEYS[_KEY_PITCH_BYTES] = "pitch_bytes"
_MAX_CODING_STR = 64


def _check_coding(coding: Any, tables: Any, payload_bytes: Any, n_codes: int, src: str) -> None:
    """The 1.1 coding fields: a known coding; for entropy coding, a tables identifier and a payload size
    that can hold the codes (spec 3.1: at most 128 codes per byte, so a forged header cannot make a reader
    produce more than a fixed multiple of the file's size)."""
    if not isinstance(coding, str) or not 1 <= len(coding) <= _MAX_CODING_STR:
        raise FdcError(f"{src}: invalid header: coding must be a string of 1 to {_MAX_CODING_STR} characters")
    if coding not in KNOWN_CODINGS:
        raise FdcError(f"{src}: payload coding '{coding}' is not supported by this flowdec (it reads "
                       f"{', '.join(KNOWN_CODINGS)}); upgrade flowdec")
    if coding == CODING_BITPACK:
        return
    if not isinstance(tables, str) or not 1 <= len(tables) <= _MAX_CODING_STR:
        raise FdcError(f"{src}: invalid header: coding {coding} needs entropy_tables (key {_KEY_TABLES}), a "
                       f"string of 1 to {_MAX_CODING_STR} characters")
    if not is_integer(payload_bytes) or not 0 <= int(payload_bytes) <= _MAX_COUNT:
        raise FdcError(f"{src}: invalid header: coding {coding} needs payload_bytes (key {_KEY_PAYLOAD_BYTES}), "
                       f"an integer in [0, {_MAX_COUNT}]")
    if n_codes > max_codes_for_payload(int(payload_bytes)):
        raise FdcError(f"{src}: invalid header: {n_codes} codes cannot be coded in {int(payload_bytes)} "
                       "payload bytes")


def _side_channel_named(src: str, kind: str, name: Any, size: Any, keys: tuple[int, int]) -> bool:
    """The two header fields every side channel has, ``{kind}_layout`` and ``{kind}_bytes`` (keys ``keys``):
    a size in range and a name of bounded length, a size only with a name. Whether the file has it."""
    if not is_integer(size) or not 0 <= int(size) <= _MAX_COUNT:
        raise FdcError(f"{src}: invalid header: {kind}_bytes (key {keys[1]}) must be an integer in [0, {_MAX_COUNT}]")
    if not isinstance(name, str) or len(name) > _MAX_CODING_STR:
        raise FdcError(f"{src}: invalid header: {kind}_layout (key {keys[0]}) must be a string of at most "
                       f"{_MAX_CODING_STR} characters")
    if not name and size:
        raise FdcError(f"{src}: invalid header: {kind}_bytes without {'an' if kind[0] in 'aeiou' else 'a'} {kind} "
                       "layout")
    return bool(name)


def _check_envelope(header: FdcHeader, src: str) -> None:
    """The 1.2 envelope fields: a layout this flowdec knows, defined at the model's rate, and a size that
    can hold its levels (the same bound as entropy-coded codes: a forged header cannot make a reader
    decode more than a fixed multiple of the file's size)."""
    size = header.envelope_bytes
    if not _side_channel_named(src, "envelope", header.envelope_layout, size, (_KEY_ENVELOPE, _KEY_ENVELOPE_BYTES)):
        return
    try:
        layout = envelope_layout(header.envelope_layout, header.model_sample_rate)
    except EnvelopeError as exc:
        raise FdcError(f"{src}: {exc}") from None
    n_levels = header.channels * header.envelope_windows * layout.n_bands
    if not level_count_fits(n_levels, int(size)):
        raise FdcError(f"{src}: invalid header: {n_levels} envelope levels cannot be coded in {int(size)} bytes")


def _check_pitch(header: FdcHeader, src: str) -> None:
    """The 1.3 pitch fields: a layout this flowdec knows, defined at the model's rate, and a size that can
    hold its values (the bound of the envelope's levels)."""
    size = header.pitch_bytes
    if not _side_channel_named(src, "pitch", header.pitch_layout, size, (_KEY_PITCH, _KEY_PITCH_BYTES)):
        return
    try:
        pitch_layout(header.pitch_layout, header.model_sample_rate)
    except PitchError as exc:
        raise FdcError(f"{src}: {exc}") from None
    n_values = header.channels * header.pitch_values
    if not step_count_fits(n_values, int(size)):
        raise FdcError(f"{src}: invalid header: {n_values} pitch values cannot be coded in {int(size)} bytes")


def _check_fields(values: dict[str, Any], src: str) -> None:
    # fields bounded by another field come last, once that one is known to be a valid integer
    for name, _key, kind, lo, hi in sorted(_FIELDS, key=lambda f: isinstance(f[4], str)):
        v = values[name]
        if kind == "str":
            if not isinstance(v, str):
                raise FdcError(f"{src}: invalid header: {name} must be a string, got {type(v).__name__}")
            if not lo <= len(v) <= hi:
                raise FdcError(f"{src}: invalid header: {name} must be {lo} to {hi} characters long, "
                               f"got {len(v)}")
        else:
            if not is_integer(v):
                raise FdcError(f"{src}: invalid header: {name} must be an integer, got {type(v).__name__}")
            v = int(v)
            top = values[hi] if isinstance(hi, str) else hi
            if not lo <= v <= top:
                raise FdcError(f"{src}: invalid header: {name} = {v} is out of range [{lo}, {top}]")


def check_sample_rate(value: Any) -> int:
    """A sample rate given in code as the int a header stores: a whole number (an int, or a float such as
    44100.0) in the header's range. A fraction would be truncated and a bool taken as 1 Hz, so both are
    refused; the message names no source, for the caller to add its own."""
    lo, hi = _INT_RANGES["sample_rate"]
    if not is_whole(value) or not lo <= int(value) <= hi:
        raise FdcError(f"sample rate must be a whole number of Hz in [{lo}, {hi}], got {value!r}")
    return int(value)


def check_header(header: FdcHeader, source_name: str = "<header>") -> None:
    """:meth:`FdcHeader.validate` for a header that has not been written (one made in memory): its payload
    and side-channel sizes follow from coding it, so they are not checked, but its side channel's levels
    are, against its layout."""
    _without_sizes(header).validate(source_name)
    if header.envelope is not None and np.asarray(header.envelope).size:
        _envelope_layout_of(header, header.envelope_layout or DEFAULT_LAYOUT, source_name)
    if header.pitch is not None and np.asarray(header.pitch).size:
        _checked_pitch_steps(header, source_name)


def check_codes(codes: np.ndarray, codebook_size: int) -> None:
    """Codes are integers in [0, codebook_size): the check of every writer and decoder of codes held in
    memory. The message names no source, for the caller to add its own."""
    arr = np.asarray(codes)
    if not arr.size:
        return
    if not np.issubdtype(arr.dtype, np.integer):
        raise FdcError(f"codes must be integers, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= codebook_size:
        raise FdcError(f"code {lo if lo < 0 else hi} is outside the codebook (valid: 0 to {codebook_size - 1})")


def frames_for_samples(num_samples: int, sample_rate: int, model_sample_rate: int, hop: int) -> tuple[int, int]:
    """The frame counts (lowest, highest) the codec makes for ``num_samples`` at ``sample_rate``: resampled to
    round(n * model_rate / rate) samples (either rounding of a tie), then ceil(that / hop) frames. A header
    outside this range lies about its length (a 110-byte file must not decode into terabytes of padding)."""
    n, sr, msr, hop = int(num_samples), int(sample_rate), int(model_sample_rate), int(hop)
    num = n * msr  # exact integers, however large
    low, high = num // sr, -(-num // sr)  # floor and ceil of the exact model-rate length
    return -(-low // hop), -(-high // hop)


def entropy_saving(header: FdcHeader, file_bytes: int) -> float:
    """Fraction of the bit-packed size (the nominal rate) that entropy coding saved a file of ``file_bytes``
    (0.0 for a bit-packed file): what compress reports and ``flowdec info`` shows."""
    packed = bitpacked_file_size(header)
    return 1.0 - file_bytes / packed if header.entropy_coded and packed and file_bytes else 0.0


def actual_bitrate(file_size_bytes: int, duration_s: float, channels: int = 1) -> float:
    """Bitrate per channel in bit/s that a file of this size achieves (0.0 for a zero duration)."""
    if duration_s <= 0 or channels <= 0:
        return 0.0
    return file_size_bytes * 8 / duration_s / channels


def max_file_size(nominal_bitrate_bps: float, duration_s: float, channels: int = 1) -> float:
    """The size budget in bytes: channels x nominal bitrate x duration / 8 x 1.005 + 128."""
    return channels * nominal_bitrate_bps * duration_s / 8 * 1.005 + 128


def _payload_size(n_codes: int, bits: int) -> int:
    return (n_codes * bits + 7) // 8


# -- bit packing ------------------------------------------------------------------------------------

def _word(bits: int) -> tuple[np.dtype, int]:
    return (np.dtype(">u2"), 16) if bits <= 16 else (np.dtype(">u4"), 32)


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Bit-pack codes of shape [C, K, T] at ``bits`` bits each, in the order of the spec.

    Order: channel, then frame, then codebook (code i = (c*T + t)*K + k), most significant bit first,
    the last byte padded with zero bits. Raises :class:`FdcError` for a code outside [0, 2**bits).
    """
    bits = int(bits)
    if not 1 <= bits <= 32:
        raise FdcError(f"bits per code must be 1 to 32, got {bits}")
    arr = np.asarray(codes)
    if arr.ndim != 3:
        raise FdcError(f"codes must have shape [channels, codebooks, frames], got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise FdcError(f"codes must be integers, got dtype {arr.dtype}")
    if arr.size == 0:
        return b""
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= (1 << bits):
        bad = lo if lo < 0 else hi
        raise FdcError(f"code {bad} does not fit in {bits} bits (valid: 0 to {(1 << bits) - 1})")
    flat = arr.transpose(0, 2, 1).reshape(-1)  # [C, T, K] order; copies only if needed
    word, wbits = _word(bits)
    out = []
    for start in range(0, flat.size, _BLOCK):
        block = flat[start:start + _BLOCK].astype(word)
        bitmat = np.unpackbits(block.view(np.uint8)).reshape(-1, wbits)[:, wbits - bits:]
        out.append(np.packbits(bitmat.reshape(-1)).tobytes())
    return b"".join(out)


def unpack_codes(data: bytes | memoryview, bits: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Inverse of :func:`pack_codes`: int64 codes of ``shape`` [C, K, T].

    ``data`` must be exactly ceil(C*K*T*bits/8) bytes with zero padding bits, else :class:`FdcError`.
    """
    bits = int(bits)
    if not 1 <= bits <= 32:
        raise FdcError(f"bits per code must be 1 to 32, got {bits}")
    try:
        c, k, t = (operator.index(s) for s in shape)
    except (TypeError, ValueError):
        raise FdcError(f"invalid codes shape {shape!r}") from None
    if min(c, k, t) < 0:
        raise FdcError(f"invalid codes shape {shape!r}")
    n = c * k * t
    need = _payload_size(n, bits)
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    if buf.size != need:
        raise FdcError(f"payload is {buf.size} bytes, expected {need} for {n} codes of {bits} bits")
    if n == 0:
        return np.zeros((c, k, t), dtype=np.int64)
    pad = need * 8 - n * bits
    if pad and int(buf[-1]) & ((1 << pad) - 1):
        raise FdcError("non-zero padding bits after the last code")
    # Each code lies within a window of `width` bytes starting at the byte of its first bit: gather the
    # window as one big-endian integer, shift the code down to the low bits and mask it.
    width = (bits + 7 + 7) // 8
    acc = np.uint32 if width <= 4 else np.uint64
    mask, eight, three, seven = acc((1 << bits) - 1), acc(8), acc(3), acc(7)
    flat = np.empty(n, dtype=np.int64)
    block_bytes = _BLOCK * bits // 8
    for i, start in enumerate(range(0, n, _BLOCK)):
        m = min(_BLOCK, n - start)
        lo = i * block_bytes
        window = np.concatenate([buf[lo:lo + block_bytes + width], np.zeros(width, dtype=np.uint8)])
        offset = np.arange(m, dtype=acc) * acc(bits)  # bit offset within the block (< 2**23)
        index = (offset >> three).astype(np.intp)
        value = np.zeros(m, dtype=acc)
        for j in range(width):
            value = (value << eight) | window[index + j]
        shift = acc(8 * width - bits) - (offset & seven)
        flat[start:start + m] = (value >> shift) & mask
    return np.ascontiguousarray(flat.reshape(c, t, k).transpose(0, 2, 1))


# -- encoding ---------------------------------------------------------------------------------------

def _header_map(header: FdcHeader) -> dict:
    m: dict = {key: (int(getattr(header, name)) if kind == "int" else getattr(header, name))
               for name, key, kind, _lo, _hi in _FIELDS}
    br = header.nominal_bitrate
    m[_KEY_BITRATE] = int(br) if float(br).is_integer() else float(br)
    if header.gain != 1.0:
        m[_KEY_GAIN] = int(header.gain) if float(header.gain).is_integer() else float(header.gain)
    if header.entropy_coded:
        m[_KEY_CODING] = header.coding
        m[_KEY_TABLES] = header.entropy_tables
        m[_KEY_PAYLOAD_BYTES] = int(header.payload_bytes)
    if header.envelope_layout:
        m[_KEY_ENVELOPE] = header.envelope_layout
        m[_KEY_ENVELOPE_BYTES] = int(header.envelope_bytes)
    if header.pitch_layout:
        m[_KEY_PITCH] = header.pitch_layout
        m[_KEY_PITCH_BYTES] = int(header.pitch_bytes)
    for key, value in header.extra.items():
        m[key] = value
    return m


def _without_sizes(header: FdcHeader) -> FdcHeader:
    """``header`` bit-packed and without side channels: the fields that coding the codes does not decide."""
    import dataclasses

    return dataclasses.replace(header, coding=CODING_BITPACK, entropy_tables="", payload_bytes=0,
                               envelope_layout="", envelope_bytes=0, envelope=None, pitch_layout="", pitch_bytes=0,
                               pitch=None)


def _encode(header: FdcHeader, codes: np.ndarray, source_name: str, tables: Any) -> tuple[FdcHeader, bytes]:
    import dataclasses

    # the header as written carries levels only when it writes them: an empty file sends none, and a
    # decoder handed the written header must not try to apply levels that have no layout
    plain = _without_sizes(header)
    plain.validate(source_name)  # every field but the side channel's, whose size follows from its coding
    side = b""
    if header.envelope is not None and np.asarray(header.envelope).size:  # an empty file has nothing to send
        plain.envelope = header.envelope
        plain.envelope_layout = header.envelope_layout or DEFAULT_LAYOUT
        side = _encode_envelope(plain, source_name)
        plain.envelope_bytes = len(side)
        plain.validate(source_name)
    if header.pitch is not None and np.asarray(header.pitch).size:
        plain.pitch = header.pitch
        plain.pitch_layout = header.pitch_layout
        pitch_side = _encode_pitch(plain, source_name)
        plain.pitch_bytes = len(pitch_side)
        side += pitch_side
        plain.validate(source_name)
    # the oldest version that holds what the file holds, so older readers keep reading what they can
    rich_version = PITCH_VERSION if plain.pitch_layout else ENVELOPE_VERSION if plain.envelope_layout else None
    arr = np.asarray(codes)
    if arr.shape != plain.codes_shape:
        raise FdcError(f"{source_name}: codes have shape {arr.shape}, the header says "
                       f"[channels, n_codebooks, num_frames] = {list(plain.codes_shape)}")
    try:
        check_codes(arr, plain.codebook_size)
    except FdcError as e:
        raise FdcError(f"{source_name}: {e}") from None
    candidates: list[tuple[FdcHeader, tuple[int, int], bytes | None]] = [
        (plain, rich_version or BITPACK_VERSION, None)]
    if tables is not None and arr.size:
        from .entropy import encode_codes

        if tables.codebook_size != plain.codebook_size or tables.n_codebooks < plain.n_codebooks:
            raise FdcError(f"{source_name}: the entropy tables ({tables.n_codebooks} x {tables.codebook_size}) "
                           f"do not fit these codes ({plain.n_codebooks} x {plain.codebook_size})")
        try:
            coded = encode_codes(arr, tables)
        except EntropyError as e:
            raise FdcError(f"{source_name}: {e}") from None
        rich = dataclasses.replace(plain, coding=tables.coding, entropy_tables=tables.id,
                                   payload_bytes=len(coded))
        candidates.insert(0, (rich, rich_version or ENTROPY_VERSION, coded))
    best: tuple[FdcHeader, bytes] | None = None
    for head_obj, version, payload in candidates:
        try:
            head = msgpack.packb(_header_map(head_obj), use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as e:
            raise FdcError(f"{source_name}: cannot store header: {e}") from None
        if len(head) > MAX_HEADER_BYTES:
            raise FdcError(f"{source_name}: header is {len(head)} bytes, at most {MAX_HEADER_BYTES} are allowed")
        _parse_header(head, source_name)  # never write what a reader would refuse (e.g. ext types in extra)
        if payload is None:
            payload = pack_codes(arr, plain.bits_per_code)
        body = _PREAMBLE.pack(FDC_MAGIC, version[0], version[1], len(head)) + head + payload + side
        data = body + _CRC.pack(zlib.crc32(body))
        # entropy coding only where it makes the file smaller (then a 1.0 reader's size check refuses it):
        # bit-packing wins a tie
        if best is None or len(data) < len(best[1]) or (len(data) == len(best[1])
                                                         and head_obj.coding == CODING_BITPACK):
            head_obj = dataclasses.replace(head_obj, format_version=version)
            best = (head_obj, data)
    assert best is not None
    return best


def _envelope_layout_of(header: FdcHeader, name: str, src: str) -> EnvelopeLayout:
    """The layout ``name`` at the header's model rate, with ``header.envelope`` checked to have its shape."""
    try:
        layout = envelope_layout(name, header.model_sample_rate)
        check_shape(layout, header.envelope, header.channels, header.coded_length)
    except EnvelopeError as exc:
        raise FdcError(f"{src}: {exc}") from None
    return layout


def _encode_envelope(header: FdcHeader, src: str) -> bytes:
    """The side channel's bytes for ``header.envelope``, checked against the header's layout and shape."""
    layout = _envelope_layout_of(header, header.envelope_layout, src)
    try:
        return encode_levels(layout, np.asarray(header.envelope))
    except EnvelopeError as exc:
        raise FdcError(f"{src}: {exc}") from None


def _checked_pitch_steps(header: FdcHeader, src: str) -> None:
    """``header.pitch`` checked against its layout (named, at the model's rate) and the codes' span."""
    try:
        if not header.pitch_layout:
            raise PitchError("pitch steps are given without a pitch layout")
        layout = pitch_layout(header.pitch_layout, header.model_sample_rate)
        check_steps(layout, header.pitch, header.channels, header.coded_length)
    except PitchError as exc:
        raise FdcError(f"{src}: {exc}") from None


def _encode_pitch(header: FdcHeader, src: str) -> bytes:
    """The pitch side channel's bytes for ``header.pitch``, checked against the header's layout and shape."""
    _checked_pitch_steps(header, src)
    try:
        return encode_steps(pitch_layout(header.pitch_layout), np.asarray(header.pitch))
    except PitchError as exc:
        raise FdcError(f"{src}: {exc}") from None


def encode_fdc(header: FdcHeader, codes: np.ndarray, source_name: str = "<bytes>", tables: Any = None) -> bytes:
    """The bytes of a .fdc file for ``header`` and ``codes`` [channels, n_codebooks, num_frames].

    With entropy ``tables`` (:class:`flowdec_cli.entropy.EntropyTables`) the codes are entropy-coded
    (format 1.1) when that makes the file smaller, else bit-packed (format 1.0); a header with an envelope
    makes either a 1.2 file, one with a pitch side channel a 1.3 file. The coding fields of ``header`` are
    ignored: they follow from the choice.
    """
    return _encode(header, codes, source_name, tables)[1]


def encode_fdc_written(header: FdcHeader, codes: np.ndarray, source_name: str = "<bytes>",
                       tables: Any = None) -> tuple[FdcHeader, bytes]:
    """:func:`encode_fdc`, with the header as written (its coding fields say which coding was chosen)."""
    return _encode(header, codes, source_name, tables)


def write_fdc(path: str | os.PathLike, header: FdcHeader, codes: np.ndarray, tables: Any = None,
              overwrite: bool = True) -> FdcHeader:
    """Write a .fdc file atomically: a temporary file in the same folder, then a rename.

    Header and codes are checked first (:class:`FdcError`); an existing file is replaced only by a
    complete new one, and only with ``overwrite`` (else ``OutputExistsError``); no temporary file is left
    behind on failure (``OSError`` propagates). Returns the header as written (its coding fields say
    whether the codes were entropy-coded).
    """
    written, data = _encode(header, codes, str(os.fspath(path)), tables)
    atomic_write_bytes(path, data, make_parents=False, overwrite=overwrite)
    return written


def bitpacked_file_size(header: FdcHeader) -> int:
    """Bytes of the bit-packed (1.0) file of this header's codes: the size at the nominal rate."""
    import dataclasses

    plain = dataclasses.replace(header, coding=CODING_BITPACK, entropy_tables="", payload_bytes=0)
    return FIXED_OVERHEAD + header_size(plain) + plain.bitpacked_payload_size + header.side_bytes


# -- decoding ---------------------------------------------------------------------------------------

def _ext_hook(code: int, data: bytes) -> Any:
    raise ValueError(f"MessagePack extension type {code} is not allowed")


def _pairs_hook(pairs: list) -> dict:
    d: dict = {}
    for key, value in pairs:
        if not (isinstance(key, str) or is_integer(key)):
            raise ValueError(f"map key {key!r} is neither an integer nor a string")
        if key in d:
            raise ValueError(f"duplicate map key {key!r}")
        d[key] = value
    return d


def _parse_header(raw: bytes, src: str) -> FdcHeader:
    """Header bytes -> FdcHeader; raises FdcError (with the "invalid header" wording) on any problem."""
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=False, use_list=True, ext_hook=_ext_hook,
                              object_pairs_hook=_pairs_hook, timestamp=0)
    except Exception as e:  # msgpack raises many types (ValueError, ExtraData, StackError, UnicodeError...)
        if isinstance(e, msgpack.exceptions.StackError):  # raised without a message
            cause = "nested too deep"
        else:
            cause = f"{type(e).__name__}: {e}"
        raise FdcError(f"{src}: invalid header: not a valid MessagePack map ({cause})") from None
    if not isinstance(obj, dict):
        raise FdcError(f"{src}: invalid header: expected a MessagePack map, got {type(obj).__name__}")
    # Timestamps (ext -1) do not go through ext_hook; look for them iteratively (no recursion limit), and
    # bound the depth: whatever shows or copies a header (``flowdec info``, repr, JSON) may then recurse.
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_HEADER_DEPTH:
                raise FdcError(f"{src}: invalid header: nested deeper than {MAX_HEADER_DEPTH} levels")
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
        elif isinstance(item, (msgpack.Timestamp, msgpack.ExtType)):
            raise FdcError(f"{src}: invalid header: MessagePack extension types are not allowed")
    values = {}
    for name, key, _kind, _lo, _hi in _FIELDS:
        if key not in obj:
            raise FdcError(f"{src}: invalid header: required field {name} (key {key}) is missing")
        values[name] = obj[key]
    _check_fields(values, src)
    if _KEY_BITRATE not in obj:
        raise FdcError(f"{src}: invalid header: required field nominal_bitrate (key {_KEY_BITRATE}) is missing")
    br = obj[_KEY_BITRATE]
    gain = obj.get(_KEY_GAIN, 1.0)
    coding = obj.get(_KEY_CODING, CODING_BITPACK)
    n_codes = int(values["channels"]) * int(values["n_codebooks"]) * int(values["num_frames"])
    _check_coding(coding, obj.get(_KEY_TABLES), obj.get(_KEY_PAYLOAD_BYTES), n_codes, src)
    coded = coding != CODING_BITPACK
    if obj.get(_KEY_ENVELOPE) and _KEY_ENVELOPE_BYTES not in obj:
        raise FdcError(f"{src}: invalid header: envelope_layout (key {_KEY_ENVELOPE}) is given without "
                       f"envelope_bytes (key {_KEY_ENVELOPE_BYTES}), the size of its levels")
    if obj.get(_KEY_PITCH) and _KEY_PITCH_BYTES not in obj:
        raise FdcError(f"{src}: invalid header: pitch_layout (key {_KEY_PITCH}) is given without pitch_bytes "
                       f"(key {_KEY_PITCH_BYTES}), the size of its values")
    extra = {k: v for k, v in obj.items() if k not in _KNOWN_KEYS}
    try:
        header = FdcHeader(**values, gain=gain, extra=extra, coding=coding,
                           entropy_tables=obj.get(_KEY_TABLES, "") if coded else "",
                           payload_bytes=int(obj.get(_KEY_PAYLOAD_BYTES, 0)) if coded else 0,
                           envelope_layout=obj.get(_KEY_ENVELOPE, ""), envelope_bytes=obj.get(_KEY_ENVELOPE_BYTES, 0),
                           pitch_layout=obj.get(_KEY_PITCH, ""), pitch_bytes=obj.get(_KEY_PITCH_BYTES, 0))
        header.validate(src)
    except FdcError:
        raise
    except Exception as e:
        raise FdcError(f"{src}: invalid header: {e}") from None
    expected = header.nominal_bitrate
    if (not is_real(br) or not math.isfinite(br)
            or abs(br - expected) > _BITRATE_RTOL * max(1.0, expected)):
        raise FdcError(f"{src}: invalid header: nominal_bitrate {br!r} does not match the model layout "
                       f"({expected!r} bit/s)")
    return header


def _check_major(major: int, src: str) -> None:
    supported = FORMAT_VERSION[0]
    if major != supported:
        relation = "newer than" if major > supported else "older than"
        advice = "; upgrade flowdec" if major > supported else ""
        raise FdcError(f"{src}: format version {major}.x is {relation} this flowdec supports "
                       f"({supported}.x){advice}")


def _unparsed_header_error(exc: FdcError, crc_at_end: bool, src: str) -> FdcError:
    """What a header that does not parse is reported as: the header's own error when the checksum over the
    whole file matches (a file written so, or forged with care), else corruption (a flipped bit)."""
    return exc if crc_at_end else FdcError(f"{src}: CRC mismatch: file is corrupt")


def _checked(data: bytes, src: str) -> tuple[FdcHeader, memoryview]:
    """Steps 1-6 of the spec's reading order: (header, payload bytes) of a file whose CRC matches. A file of
    a newer minor version than this flowdec knows that fails a check most likely holds what a newer flowdec
    added: the error says so."""
    try:
        return _checked_known(data, src)
    except FdcError as exc:
        if len(data) >= _PREAMBLE.size and data[:4] == FDC_MAGIC:
            _magic, major, minor, _hlen = _PREAMBLE.unpack_from(data)
            if major == FORMAT_VERSION[0] and minor > FORMAT_VERSION[1]:
                raise FdcError(f"{exc} (the file is format {major}.{minor}, newer than this flowdec's "
                               f"{FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}; upgrade flowdec)") from None
        raise


def _checked_known(data: bytes, src: str) -> tuple[FdcHeader, memoryview]:
    size = len(data)
    if size == 0:
        raise FdcError(f"{src}: empty file: not a .fdc file")
    if data[:4] != FDC_MAGIC[:min(size, 4)]:
        raise FdcError(f"{src}: bad magic: not a .fdc file")
    if size < _PREAMBLE.size:
        raise FdcError(f"{src}: truncated file ({size} bytes, a .fdc file has at least {FIXED_OVERHEAD})")
    _magic, major, minor, hlen = _PREAMBLE.unpack_from(data)
    _check_major(major, src)
    header_end = _PREAMBLE.size + hlen
    if size < header_end + _CRC.size:
        raise FdcError(f"{src}: truncated file (expected a {hlen}-byte header and a checksum, "
                       f"got {size - _PREAMBLE.size} bytes after the fixed fields)")

    def crc_ok(end: int) -> bool:  # does the CRC stored at data[end:end+4] match data[:end]?
        return _CRC.unpack_from(data, end)[0] == zlib.crc32(memoryview(data)[:end])

    crc_at_end = crc_ok(size - _CRC.size)
    try:
        header = _parse_header(data[_PREAMBLE.size:header_end], src)
    except FdcError as exc:
        raise _unparsed_header_error(exc, crc_at_end, src) from None
    header.format_version = (major, minor)
    payload_size = header.payload_size + header.side_bytes
    end = header_end + payload_size
    got = size - header_end - _CRC.size
    if got < payload_size:
        if crc_at_end:
            raise FdcError(f"{src}: invalid file: the header declares {payload_size} payload bytes "
                           f"but the file holds {got}")
        raise FdcError(f"{src}: truncated file (expected {payload_size} payload bytes + a 4-byte checksum after "
                       f"the header, got {got + _CRC.size} bytes)")
    if got > payload_size:
        if crc_ok(end):
            # no count: a pipe is read only one byte past the declared end
            raise FdcError(f"{src}: unexpected data after the end of the file")
        if crc_at_end:
            raise FdcError(f"{src}: invalid file: the header declares {payload_size} payload bytes "
                           f"but the file holds {got}")
        raise FdcError(f"{src}: CRC mismatch: file is corrupt (size does not match the header)")
    if not crc_at_end:
        raise FdcError(f"{src}: CRC mismatch: file is corrupt")
    return header, memoryview(data)[header_end:end]


def decode_fdc(data: bytes, source_name: str = "<bytes>", tables: Any = None) -> tuple[FdcHeader, np.ndarray]:
    """Parse the bytes of a .fdc file: (header, int64 codes [channels, n_codebooks, num_frames]).

    An entropy-coded file needs its model's tables: ``tables`` is an
    :class:`~flowdec_cli.entropy.EntropyTables` or a function ``header -> EntropyTables`` (called only for
    entropy-coded files, after the CRC has been checked; it may raise its own error). Any problem raises
    :class:`FdcError` with a message that starts with ``source_name``.
    """
    src = source_name
    if not isinstance(data, (bytes, bytearray, memoryview)):  # bytes(path) read a file name as data
        raise FdcError(f"decode_fdc takes the bytes of a .fdc file, got {type(data).__name__}"
                       + ("; for a path use read_fdc" if isinstance(data, (str, os.PathLike)) else ""))
    header, body = _checked(bytes(data), src)
    payload = body[:header.payload_size]
    envelope_end = header.payload_size + int(header.envelope_bytes)
    if header.envelope_layout:
        header.envelope = _decode_envelope(header, body[header.payload_size:envelope_end], src)
    if header.pitch_layout:
        header.pitch = _decode_pitch(header, body[envelope_end:], src)
    if header.entropy_coded:
        return header, _decode_entropy(header, payload, src, tables)
    try:
        codes = unpack_codes(payload, header.bits_per_code, header.codes_shape)
    except FdcError as e:
        raise FdcError(f"{src}: invalid payload: {e}") from None
    if codes.size and int(codes.max()) >= header.codebook_size:
        raise FdcError(f"{src}: invalid payload: code {int(codes.max())} is outside the codebook "
                       f"(size {header.codebook_size})")
    return header, codes


def _decode_envelope(header: FdcHeader, data: memoryview, src: str) -> np.ndarray:
    try:
        return decode_levels(envelope_layout(header.envelope_layout), data, header.channels,
                             header.envelope_windows)
    except EnvelopeError as exc:
        raise FdcError(f"{src}: invalid envelope: {exc}") from None


def _decode_pitch(header: FdcHeader, data: memoryview, src: str) -> np.ndarray:
    try:
        return decode_steps(pitch_layout(header.pitch_layout), data, header.channels, header.pitch_values)
    except PitchError as exc:
        raise FdcError(f"{src}: invalid pitch side channel: {exc}") from None


def _decode_entropy(header: FdcHeader, payload: memoryview, src: str, tables: Any) -> np.ndarray:
    from .entropy import decode_codes

    if callable(tables):
        tables = tables(header)
    if tables is None:
        raise FdcError(f"{src}: the codes are entropy-coded ({header.coding}, tables {header.entropy_tables}); "
                       "decoding them needs the entropy tables of the model that wrote the file; pass "
                       "that model's tables (tables=Codec.entropy_tables)")
    if tables.id != header.entropy_tables:
        raise FdcError(f"{src}: coded with entropy tables {header.entropy_tables}, but the model's tables are "
                       f"{tables.id}; decode with the model that wrote the file")
    if tables.codebook_size != header.codebook_size:
        raise FdcError(f"{src}: the entropy tables are for {tables.codebook_size}-entry codebooks, the file "
                       f"has {header.codebook_size}")
    try:
        return decode_codes(payload, header.codes_shape, tables)
    except EntropyError as e:
        raise FdcError(f"{src}: invalid payload: {e}") from None


def _file_name(path: Any, reader: str) -> str:
    """``path`` as a file name, or an FdcError that says which reader takes what was passed instead (the
    bytes of a file were opened as a path: "embedded null byte")."""
    if isinstance(path, (bytes, bytearray, memoryview)):
        raise FdcError(f"{reader} takes the path of a .fdc file; for its bytes use decode_fdc")
    if hasattr(path, "read"):
        raise FdcError(f"{reader} takes the path of a .fdc file; for an open stream use inspect_fdc_stream, or "
                       "decode_fdc(stream.read())")
    if not isinstance(path, (str, os.PathLike)):
        raise FdcError(f"{reader} takes the path of a .fdc file, got {type(path).__name__}")
    return str(os.fspath(path))


def read_fdc(path: str | os.PathLike, tables: Any = None) -> tuple[FdcHeader, np.ndarray]:
    """Read a .fdc file: (header, int64 codes [channels, n_codebooks, num_frames]); FdcError on any problem.
    ``tables``: see :func:`decode_fdc` (needed for entropy-coded files only)."""
    name = _file_name(path, "read_fdc")
    return decode_fdc(_read_file(name), source_name=name, tables=tables)


def inspect_fdc(path: str | os.PathLike) -> FdcHeader:
    """The header of a .fdc file whose every check but the payload's decoding passes (CRC included):
    what ``flowdec info`` shows, without the model an entropy-coded payload needs."""
    name = _file_name(path, "inspect_fdc")
    return _checked(_read_file(name), name)[0]


def inspect_fdc_stream(stream: BinaryIO, name: str) -> tuple[FdcHeader, int]:
    """:func:`inspect_fdc` of a .fdc file read from an open stream (standard input), read no further than
    its header declares; also the file's size in bytes."""
    try:
        data = _read_bytes(stream, name)
    except OSError as e:
        raise FdcError(f"{name}: cannot read: {e.strerror or e}") from None
    return _checked(data, name)[0], len(data)


def _read_file(name: Any) -> bytes:
    try:
        with open(name, "rb") as f:
            return _read_bytes(f, str(name))
    except OSError as e:
        raise FdcError(f"{name}: cannot read: {e.strerror or e}") from None


_READ_BLOCK = 1 << 20


def _read_bytes(f: BinaryIO, src: str) -> bytes:
    """The bytes of a file to check, never more than it can be: reading stops after the magic when that is
    wrong (a multi-gigabyte file that is not a .fdc costs 4 bytes), and any file, pipe or device
    (/dev/zero) is read only as far as its own header declares, one byte more so that trailing data is still
    reported; a header that declares more than is there costs only what is there."""
    head = f.read(len(FDC_MAGIC))
    if head != FDC_MAGIC:
        return head  # empty, or not a .fdc file: the checks say which
    try:
        regular = stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):  # no descriptor (an in-memory stream): read it as a pipe
        regular = False
    return head + _read_declared(f, head, regular, src)


def read_fdc_rest(f: BinaryIO, head: bytes, src: str) -> bytes:
    """What follows a .fdc's magic ``head`` in a stream (standard input, a FIFO), read no further than its
    header declares (one byte more, so that trailing data is still reported): a spool of ``-`` holds the
    file, not whatever endless data comes after it."""
    return _read_declared(f, head, False, src)


def _read_declared(f: Any, head: bytes, regular: bool, src: str) -> bytes:
    """After the magic: the fixed fields, the header, and as many bytes as the header declares (one more,
    so that trailing bytes are still reported). A header that does not parse declares nothing: a stream
    ends there; a regular file is checked to its end (:func:`_verdict_on_unparsed_header`)."""
    data = head + read_up_to(f, _PREAMBLE.size - len(head))
    if len(data) < _PREAMBLE.size:
        return data[len(head):]
    hlen = _PREAMBLE.unpack_from(data)[3]
    data += read_up_to(f, hlen)
    try:
        header = _parse_header(data[_PREAMBLE.size:], src)
    except FdcError as exc:
        if not regular:
            return data[len(head):] + read_up_to(f, _CRC.size)
        return data[len(head):] + _verdict_on_unparsed_header(f, data, exc, src)
    wanted = header.payload_size + header.side_bytes + _CRC.size + 1
    return data[len(head):] + read_up_to(f, wanted)


def _verdict_on_unparsed_header(f: Any, data: bytes, exc: FdcError, src: str) -> bytes:
    """A regular file whose header does not parse: the checksum over the whole file tells a forged header
    from a corrupt file, so it is computed here block by block, and memory stays at one block however long
    the file. Raises the file's error (a version this flowdec does not read first, as the checks order
    them); returns the few bytes left only when the file is too short to hold a checksum after its header."""
    _magic, major, _minor, hlen = _PREAMBLE.unpack_from(data)
    _check_major(major, src)
    if len(data) < _PREAMBLE.size + hlen:
        return read_up_to(f, _CRC.size)
    crc, tail = zlib.crc32(data), b""  # tail: the last bytes read, held back in case they are the checksum
    while block := f.read(_READ_BLOCK):
        if len(block) < _CRC.size:
            block, tail = tail + block, b""
        view = memoryview(block)
        crc = zlib.crc32(view[:-_CRC.size], zlib.crc32(tail, crc))
        tail = bytes(view[-_CRC.size:])
    if len(tail) < _CRC.size:
        return tail  # too short for a checksum: the checks say so
    raise _unparsed_header_error(exc, _CRC.unpack(tail)[0] == crc, src)


def header_size(header: FdcHeader) -> int:
    """Bytes the MessagePack header of ``header`` takes on disk (the file adds 12 fixed bytes + payload)."""
    return len(msgpack.packb(_header_map(header), use_bin_type=True))

