"""The ``.fdc`` container: NDAC codes plus everything needed to decode them (spec: docs/fdc-format.md).

Layout: magic ``89 'F' 'D' 'C'``, major and minor version bytes, a uint16 LE header length, a MessagePack
header map with small integer keys, the codes bit-packed at ceil(log2(codebook_size)) bits each (channel,
then frame, then codebook; most significant bit first), and a CRC-32 (LE) over everything before it.

Reading never executes code and never trusts a length before comparing it with the real size of the data.
Every problem with a file is reported as :class:`FdcError`, whose message names the file.
"""

from __future__ import annotations

import math
import operator
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from .fileio import atomic_write_bytes

from . import __version__

__all__ = [
    "FDC_MAGIC",
    "FORMAT_VERSION",
    "FdcError",
    "FdcHeader",
    "actual_bitrate",
    "bits_for_codebook_size",
    "decode_fdc",
    "encode_fdc",
    "frames_for_samples",
    "header_size",
    "max_file_size",
    "nominal_bitrate",
    "pack_codes",
    "read_fdc",
    "unpack_codes",
    "write_fdc",
]

FDC_MAGIC = b"\x89FDC"
FORMAT_VERSION = (1, 0)  # (major, minor) this module writes; it reads every minor version of major 1
_PREAMBLE = struct.Struct("<4sBBH")  # magic, major, minor, header length
_CRC = struct.Struct("<I")
FIXED_OVERHEAD = _PREAMBLE.size + _CRC.size  # 12 bytes besides header and payload

MAX_HEADER_BYTES = 0xFFFF
_MAX_STR = 256
_MAX_RATE = 10_000_000
_MAX_COUNT = 2**62
_MAX_GAIN = 1e9
_BITRATE_RTOL = 1e-9
# Codes handled per numpy block while packing/unpacking (a multiple of 8, so every block but the last
# fills whole bytes); bounds the temporary bit arrays to a few MB however long the file is.
_BLOCK = 1 << 18


class FdcError(Exception):
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
    extra: dict = field(default_factory=dict)  # unknown / application keys, kept as read
    format_version: tuple = field(default=FORMAT_VERSION, compare=False)  # as read; writers write FORMAT_VERSION

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
    def payload_size(self) -> int:
        return _payload_size(self.channels * self.n_codebooks * self.num_frames, self.bits_per_code)

    def validate(self, source_name: str = "<header>") -> None:
        """Raise :class:`FdcError` if a field has the wrong type or is out of bounds."""
        _check_fields({name: getattr(self, name) for name, _k, _t, _lo, _hi in _FIELDS}, source_name)
        gain = self.gain
        if (isinstance(gain, bool) or not isinstance(gain, (int, float, np.floating, np.integer))
                or not 0 < gain <= _MAX_GAIN):
            raise FdcError(f"{source_name}: invalid header: gain must be a number in (0, {_MAX_GAIN:g}], "
                           f"got {gain!r}")
        lo, hi = frames_for_samples(self.num_samples, self.sample_rate, self.model_sample_rate, self.hop_length)
        if not lo <= self.num_frames <= hi:
            need = f"{lo}" if lo == hi else f"{lo} to {hi}"
            raise FdcError(f"{source_name}: invalid header: {self.num_samples} samples at {self.sample_rate} Hz "
                           f"take {need} frames of {self.hop_length} at {self.model_sample_rate} Hz, but the "
                           f"header says {self.num_frames}")
        if not isinstance(self.extra, dict):
            raise FdcError(f"{source_name}: invalid header: extra must be a dict")
        for key in self.extra:
            if isinstance(key, bool) or not isinstance(key, (int, str)):
                raise FdcError(f"{source_name}: invalid header: extra key {key!r} is neither int nor str")
            if key in _KNOWN_KEYS:
                raise FdcError(f"{source_name}: invalid header: extra key {key!r} is reserved for "
                               f"{_KNOWN_KEYS[key]}")

    def to_dict(self) -> dict[str, Any]:
        """All fields and derived values under readable names (for ``flowdec info --json``)."""
        d = {name: getattr(self, name) for name, _k, _t, _lo, _hi in _FIELDS}
        d["gain"] = self.gain
        d["format_version"] = "%d.%d" % tuple(self.format_version)
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
_KNOWN_KEYS = {key: name for name, key, _t, _lo, _hi in _FIELDS}
_KNOWN_KEYS[_KEY_BITRATE] = "nominal_bitrate"
_KNOWN_KEYS[_KEY_GAIN] = "gain"


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
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise FdcError(f"{src}: invalid header: {name} must be an integer, got {type(v).__name__}")
            v = int(v)
            top = values[hi] if isinstance(hi, str) else hi
            if not lo <= v <= top:
                raise FdcError(f"{src}: invalid header: {name} = {v} is out of range [{lo}, {top}]")


def frames_for_samples(num_samples: int, sample_rate: int, model_sample_rate: int, hop: int) -> tuple[int, int]:
    """The frame counts (lowest, highest) the codec makes for ``num_samples`` at ``sample_rate``: resampled to
    round(n * model_rate / rate) samples (either rounding of a tie), then ceil(that / hop) frames. A header
    outside this range lies about its length (a 110-byte file must not decode into terabytes of padding)."""
    n, sr, msr, hop = int(num_samples), int(sample_rate), int(model_sample_rate), int(hop)
    num = n * msr  # exact integers, however large
    low, high = num // sr, -(-num // sr)  # floor and ceil of the exact model-rate length
    return -(-low // hop), -(-high // hop)


def bits_for_codebook_size(codebook_size: int) -> int:
    """ceil(log2(codebook_size)): 1024 -> 10, 1000 -> 10, 1025 -> 11, 2 -> 1."""
    if codebook_size < 2:
        raise ValueError(f"codebook size must be at least 2, got {codebook_size}")
    return (int(codebook_size) - 1).bit_length()


def nominal_bitrate(sample_rate: float, hop: int, n_codebooks: int, codebook_size: int) -> float:
    """Nominal bitrate of one channel in bit/s: frames per second x codebooks x bits per code."""
    return sample_rate / hop * n_codebooks * bits_for_codebook_size(codebook_size)


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


def unpack_codes(data: bytes, bits: int, shape: tuple[int, int, int]) -> np.ndarray:
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
    for key, value in header.extra.items():
        m[key] = value
    return m


def encode_fdc(header: FdcHeader, codes: np.ndarray, source_name: str = "<bytes>") -> bytes:
    """The bytes of a .fdc file for ``header`` and ``codes`` [channels, n_codebooks, num_frames]."""
    header.validate(source_name)
    arr = np.asarray(codes)
    if arr.shape != header.codes_shape:
        raise FdcError(f"{source_name}: codes have shape {arr.shape}, the header says "
                       f"[channels, n_codebooks, num_frames] = {list(header.codes_shape)}")
    if arr.size:
        if not np.issubdtype(arr.dtype, np.integer):
            raise FdcError(f"{source_name}: codes must be integers, got dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= header.codebook_size:
            raise FdcError(f"{source_name}: code {lo if lo < 0 else hi} is outside the codebook "
                           f"(valid: 0 to {header.codebook_size - 1})")
    try:
        head = msgpack.packb(_header_map(header), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise FdcError(f"{source_name}: cannot store header: {e}") from None
    if len(head) > MAX_HEADER_BYTES:
        raise FdcError(f"{source_name}: header is {len(head)} bytes, at most {MAX_HEADER_BYTES} are allowed")
    _parse_header(head, source_name)  # never write what a reader would refuse (e.g. ext types in extra)
    payload = pack_codes(arr, header.bits_per_code)
    body = _PREAMBLE.pack(FDC_MAGIC, FORMAT_VERSION[0], FORMAT_VERSION[1], len(head)) + head + payload
    return body + _CRC.pack(zlib.crc32(body))


def write_fdc(path: str | os.PathLike, header: FdcHeader, codes: np.ndarray, overwrite: bool = True) -> None:
    """Write a .fdc file atomically: a temporary file in the same folder, then a rename.

    Header and codes are checked first (:class:`FdcError`); an existing file is replaced only by a
    complete new one, and only with ``overwrite`` (else ``OutputExistsError``); no temporary file is left
    behind on failure (``OSError`` propagates).
    """
    data = encode_fdc(header, codes, source_name=str(os.fspath(path)))
    atomic_write_bytes(os.path.abspath(path), data, make_parents=False, overwrite=overwrite)


# -- decoding ---------------------------------------------------------------------------------------

def _ext_hook(code: int, data: bytes) -> Any:
    raise ValueError(f"MessagePack extension type {code} is not allowed")


def _pairs_hook(pairs: list) -> dict:
    d: dict = {}
    for key, value in pairs:
        if isinstance(key, bool) or not isinstance(key, (int, str)):
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
        raise FdcError(f"{src}: invalid header: not a valid MessagePack map ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise FdcError(f"{src}: invalid header: expected a MessagePack map, got {type(obj).__name__}")
    # Timestamps (ext -1) do not go through ext_hook; look for them iteratively (no recursion limit).
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
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
    extra = {k: v for k, v in obj.items() if k not in _KNOWN_KEYS}
    try:
        header = FdcHeader(**values, gain=gain, extra=extra)
        header.validate(src)
    except FdcError:
        raise
    except Exception as e:
        raise FdcError(f"{src}: invalid header: {e}") from None
    expected = header.nominal_bitrate
    if (isinstance(br, bool) or not isinstance(br, (int, float)) or not math.isfinite(br)
            or abs(br - expected) > _BITRATE_RTOL * max(1.0, expected)):
        raise FdcError(f"{src}: invalid header: nominal_bitrate {br!r} does not match the model layout "
                       f"({expected!r} bit/s)")
    return header


def decode_fdc(data: bytes, source_name: str = "<bytes>") -> tuple[FdcHeader, np.ndarray]:
    """Parse the bytes of a .fdc file: (header, int64 codes [channels, n_codebooks, num_frames]).

    Any problem raises :class:`FdcError` with a message that starts with ``source_name``.
    """
    src = source_name
    data = bytes(data)
    size = len(data)
    if size == 0:
        raise FdcError(f"{src}: empty file: not a .fdc file")
    if data[:4] != FDC_MAGIC[:min(size, 4)]:
        raise FdcError(f"{src}: bad magic: not a .fdc file")
    if size < _PREAMBLE.size:
        raise FdcError(f"{src}: truncated file ({size} bytes, a .fdc file has at least {FIXED_OVERHEAD})")
    _magic, major, minor, hlen = _PREAMBLE.unpack_from(data)
    supported = FORMAT_VERSION[0]
    if major != supported:
        relation = "newer than" if major > supported else "older than"
        advice = "; upgrade flowdec" if major > supported else ""
        raise FdcError(f"{src}: format version {major}.x is {relation} this flowdec supports "
                       f"({supported}.x){advice}")
    header_end = _PREAMBLE.size + hlen
    if size < header_end + _CRC.size:
        raise FdcError(f"{src}: truncated file (expected a {hlen}-byte header and a checksum, "
                       f"got {size - _PREAMBLE.size} bytes after the fixed fields)")

    def crc_ok(end: int) -> bool:  # does the CRC stored at data[end:end+4] match data[:end]?
        return _CRC.unpack_from(data, end)[0] == zlib.crc32(memoryview(data)[:end])

    crc_at_end = crc_ok(size - _CRC.size)
    try:
        header = _parse_header(data[_PREAMBLE.size:header_end], src)
    except FdcError:
        if not crc_at_end:
            raise FdcError(f"{src}: CRC mismatch: file is corrupt") from None
        raise
    header.format_version = (major, minor)
    payload_size = header.payload_size
    end = header_end + payload_size
    got = size - header_end - _CRC.size
    if got < payload_size:
        if crc_at_end:
            raise FdcError(f"{src}: invalid file: the header declares {payload_size} payload bytes "
                           f"but the file holds {got}")
        raise FdcError(f"{src}: truncated file (expected {payload_size} payload bytes, got {got})")
    if got > payload_size:
        if crc_ok(end):
            raise FdcError(f"{src}: {got - payload_size} unexpected bytes after the end of the file")
        if crc_at_end:
            raise FdcError(f"{src}: invalid file: the header declares {payload_size} payload bytes "
                           f"but the file holds {got}")
        raise FdcError(f"{src}: CRC mismatch: file is corrupt (size does not match the header)")
    if not crc_at_end:
        raise FdcError(f"{src}: CRC mismatch: file is corrupt")
    try:
        codes = unpack_codes(memoryview(data)[header_end:end], header.bits_per_code, header.codes_shape)
    except FdcError as e:
        raise FdcError(f"{src}: invalid payload: {e}") from None
    if codes.size and int(codes.max()) >= header.codebook_size:
        raise FdcError(f"{src}: invalid payload: code {int(codes.max())} is outside the codebook "
                       f"(size {header.codebook_size})")
    return header, codes


def read_fdc(path: str | os.PathLike) -> tuple[FdcHeader, np.ndarray]:
    """Read a .fdc file: (header, int64 codes [channels, n_codebooks, num_frames]); FdcError on any problem."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FdcError(f"{name}: cannot read: {e.strerror or e}") from None
    return decode_fdc(data, source_name=str(name))


def header_size(header: FdcHeader) -> int:
    """Bytes the MessagePack header of ``header`` takes on disk (the file adds 12 fixed bytes + payload)."""
    return len(msgpack.packb(_header_map(header), use_bin_type=True))

