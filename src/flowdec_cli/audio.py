"""Audio files in and out: reading any soundfile format block by block, resampling, atomic writing.

Everything here works on float32 arrays shaped ``[frames, channels]`` (soundfile's layout) and streams, so
hours-long files never have to sit in memory at once.
"""

from __future__ import annotations

import fnmatch
import io
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from .exceptions import FlowdecError
from .fileio import OutputExistsError, no_space_left, publish, temporary_sibling, why_absent

__all__ = [
    "AudioError",
    "AudioInfo",
    "AUDIO_EXTENSIONS",
    "audio_files_below",
    "is_audio_path",
    "matches_glob",
    "probe",
    "repair_streamed_wav",
    "read_blocks",
    "read_audio",
    "Resampler",
    "resample",
    "AtomicAudioWriter",
    "write_audio",
    "output_format_for",
    "check_output_format",
    "format_suffix",
    "output_rate_for",
    "check_output_channels",
]

MAX_CHANNELS = 1024  # libsndfile's limit (SF_MAX_CHANNELS); beyond it it says only "Format not recognised."


def hidden_below(rel: Path) -> bool:
    """Whether a path below a folder being converted is hidden (a part starting with ``.``: ``.git``, macOS's
    ``._song.wav`` AppleDouble files, which are not audio): folder modes leave such files out, as most tools
    do; a hidden file named directly is still taken."""
    return any(part.startswith(".") for part in rel.parts)


def matches_glob(rel: Path, pattern: str | None) -> bool:
    """Whether a path below a folder being converted is one ``--glob`` asks for: the pattern matched against
    the whole path relative to the folder (``*`` also crosses ``/``, so ``*.flac`` takes every FLAC and
    ``sub/*`` everything under ``sub``). No pattern takes everything."""
    return pattern is None or fnmatch.fnmatchcase(rel.as_posix(), pattern)


class AudioError(FlowdecError):
    """An audio file that cannot be read or written; the message names the file and the problem."""


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str
    # which file was probed (device, inode, size, modification time): a later read of the same path checks it
    identity: tuple[int, int, int, int] | None = field(default=None, compare=False, repr=False)
    # whether ``frames`` is a count the decode must reach (an MP3's Xing/Info header's; _counts_promised)
    frames_promised: bool = field(default=False, compare=False, repr=False)

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _describe(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    msg = text[-1] if text else type(exc).__name__
    # soundfile prefixes messages with "Error opening '...': " - the file is named by us already.
    if ": " in msg and msg.startswith("Error opening"):
        msg = msg.split(": ", 1)[1]
    return msg


def _open_fd(path: Path) -> int:
    """``path`` opened by Python, so that libsndfile is handed a descriptor, not a name: it refuses names
    longer than about 1 KiB (Linux allows 4 KiB) and any that are not UTF-8, and reports a file it may not
    read only as "System error."."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise AudioError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _identity(fd: int) -> tuple[int, int, int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def probe(path: str | os.PathLike) -> AudioInfo:
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: {why_absent(path)}")
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")
    fd = _open_fd(path)
    try:
        identity = _identity(fd)
        try:
            with sf.SoundFile(fd, closefd=False) as f:
                rate, channels, frames, fmt, subtype, log = (f.samplerate, f.channels, f.frames, f.format,
                                                             f.subtype, f.extra_info)
        except Exception as exc:
            hint = ("; a SPHERE file compressed with shorten: expand it first (sph2pipe -f wav IN OUT.wav)"
                    if path.suffix.lower() in (".sph", ".nist") and "unimplemented" in str(exc).lower() else "")
            raise AudioError(f"{path}: not a readable audio file ({_describe(exc)}){hint}") from None
        if frames < 0 or frames > 2**62:  # some streams (mp3/ogg) report unknown lengths; count them
            os.lseek(fd, 0, os.SEEK_SET)
            frames = sum(len(b) for b in _blocks(fd, path, 1 << 18))
    finally:
        os.close(fd)
    unsized = _unsized_wav_data(path) if frames == 0 and fmt == "WAV" else None
    if unsized is not None:
        raise AudioError(f"{path}: its WAV header says no samples, but {unsized[1]} bytes of audio follow it (a "
                         "WAV written to a pipe, whose writer could not go back to fill in its sizes); pipe it "
                         "into flowdec as - (which repairs its copy), or rewrite the file (e.g. sox IN OUT.wav)")
    if rate <= 0 or channels <= 0:
        raise AudioError(f"{path}: invalid header (rate {rate}, channels {channels})")
    truncated = _truncation(path, log, fmt, int(frames))
    if truncated is not None:
        raise AudioError(f"{path}: {truncated}")
    return AudioInfo(path, int(rate), int(channels), int(frames), fmt, subtype, identity,
                     _counts_promised(fmt, log))


# A declared size this large is a writer's "unknown length" (0xFFFFFFFF from ffmpeg, about 2 GB from sox and
# others writing to a pipe), not a promise: such files are read to their end as they are.
_UNKNOWN_LENGTH = 0x7F000000
# Some writers miscount a chunk by a pad byte or a partial last frame; a copy cut short misses far more.
_SIZE_SLACK = 64
# An MP3's length is counted in frames of 1152 samples.
_DECODE_SLACK = 1152
# Where libsndfile logs a sample chunk that holds less than its header says, as (declared, there) bytes or
# samples; it then reads such a file to where its bytes end. Only the audio's own size counts: an outer
# size (W64's riff, 8SVX's FORM) that is wrong beside an intact data chunk is a harmless writer's slip, as in
# WAV and AIFF, which are measured from their chunks (_audio_chunk).
_SHORT_CHUNK = {"AU": re.compile(r"Data Size\s*:\s*(-?\d+) \(should be (\d+)\)"),
                "CAF": re.compile(r"^data : (\d+) \(should be (\d+)\)", re.M),
                "SVX": re.compile(r"BODY : (\d+) \(should be (\d+)\)"),
                "WVE": re.compile(r"Data length (\d+) should be (\d+)")}


@dataclass(frozen=True)
class _AudioChunk:
    """Where a WAV's ``data`` or an AIFF's ``SSND`` chunk is: the offset of its size field, the size it
    declares, and the bytes that really follow its header."""

    size_offset: int
    declared: int
    present: int
    wav: bool  # RIFF WAVE (little-endian sizes), else AIFF/AIFC
    sized64: bool = False  # RF64: the size is ds64's 64-bit one, never a writer's unknown-length placeholder


def _audio_chunk(path: Path) -> _AudioChunk | None:
    """The sample chunk of a RIFF WAV, RF64 or AIFF/AIFC file, by walking its chunk list; None for any other
    format, a chunk list that ends first, or an RF64 whose ds64 chunk gives no data size."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12:
                return None
            rf64 = head[:4] == b"RF64" and head[8:12] == b"WAVE"
            if (head[:4] == b"RIFF" and head[8:12] == b"WAVE") or rf64:
                order, wanted = "little", b"data"
            elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
                order, wanted = "big", b"SSND"
            else:
                return None
            end = os.fstat(f.fileno()).st_size
            pos = 12
            data64 = None
            while pos + 8 <= end:
                f.seek(pos)
                chunk = f.read(8)
                size = int.from_bytes(chunk[4:8], order)  # type: ignore[arg-type]
                if rf64 and chunk[:4] == b"ds64" and size >= 16:
                    data64 = int.from_bytes(f.read(16)[8:16], "little")  # after the RIFF size
                if chunk[:4] == wanted:
                    if rf64 and size == 0xFFFFFFFF:
                        if not data64:
                            return None  # no size to check against
                        size = data64
                    return _AudioChunk(pos + 4, size, end - (pos + 8), order == "little", rf64)
                pos += 8 + size + (size & 1)
    except OSError:
        return None
    return None


def _unsized_wav_data(path: Path) -> tuple[int, int] | None:
    """For a RIFF WAV whose data chunk declares 0 bytes but is followed by some: (the offset of that size
    field, the bytes that follow). A writer to a pipe cannot seek back to fill in the sizes, and some leave
    them 0, which libsndfile reads as an empty file. None for anything else."""
    chunk = _audio_chunk(path)
    if chunk is None or not chunk.wav or chunk.sized64 or chunk.declared != 0 or chunk.present <= 0:
        return None
    return chunk.size_offset, chunk.present


def _counts_promised(fmt: str, log: str) -> bool:
    """Whether libsndfile's frame count is one the decode must reach: an MP3's, where a Xing or Info header
    counts its frames (libsndfile then logs the bitrate mode as variable). Without one the count is
    mpg123's estimate from the first frame, which a variable-rate file can miss either way (reads stop at it;
    a file whose estimate is too high is not cut short)."""
    return fmt == "MP3" and "bitrate mode   : variable" in log


def _ogg_cut_inside_page(path: Path) -> bool:
    """Whether an Ogg file ends inside its last page: the last capture pattern (``OggS``) in its final 64 KiB
    (a page is at most 65,307 bytes) begins a page whose header and segment table say it runs past the end.
    Bytes after a whole last page (an ID3v1 tag) and a stream without its end-of-stream mark (a live
    capture) are no cut; libsndfile logs both in the words it logs a cut."""
    try:
        with open(path, "rb") as f:
            end = os.fstat(f.fileno()).st_size
            f.seek(max(0, end - 65_536 - 282))
            tail = f.read()
    except OSError:
        return False
    at = tail.rfind(b"OggS")
    if at < 0 or at + 27 > len(tail):
        return at >= 0
    segments = tail[at + 26]
    table = tail[at + 27: at + 27 + segments]
    return len(table) < segments or at + 27 + segments + sum(table) > len(tail)


def _declared_frames(path: Path, fmt: str, log: str) -> int | None:
    """The samples a channel that a W64, AVR or NIST SPHERE header declares, where libsndfile counts what
    the bytes hold without a word: W64 from its logged data chunk size, AVR from its logged frame count,
    NIST from the ``sample_count`` of its text header. None for other formats or a header without it."""
    if fmt == "W64":
        size, align = re.search(r"^data : (\d+)", log, re.M), re.search(r"Block Align\s*:\s*(\d+)", log)
        return (int(size.group(1)) - 24) // int(align.group(1)) if size and align and int(align.group(1)) else None
    if fmt == "AVR":
        count = re.search(r"Frames\s*:\s*(\d+)", log)
        return int(count.group(1)) if count else None
    if fmt == "NIST":
        try:
            with open(path, "rb") as f:
                head = f.read(1024)
        except OSError:
            return None
        sampled = re.search(rb"\nsample_count -i (\d+)", head)
        return int(sampled.group(1)) if sampled else None
    return None


def _truncation(path: Path, log: str, fmt: str, frames: int) -> str | None:
    """Why the file is cut short, or None. libsndfile reads a truncated WAV, AIFF, W64, AU, CAF, VOC or Ogg
    file up to where its bytes end and says so only in its log, so a copy cut short would be coded as if it
    were whole."""
    chunk = _audio_chunk(path)
    if chunk is not None and chunk.present + _SIZE_SLACK < chunk.declared and \
            (chunk.sized64 or chunk.declared < _UNKNOWN_LENGTH):
        return (f"truncated: its header promises {chunk.declared} bytes of audio, {max(chunk.present, 0)} are "
                "there (a copy cut short?)")
    short = _SHORT_CHUNK.get(fmt)
    for declared, there in ((int(a), int(b)) for a, b in (short.findall(log) if short else ())):
        if there + _SIZE_SLACK < declared < _UNKNOWN_LENGTH:  # -1 and 0xFFFFFFFF: a writer's unknown size
            return f"truncated: its header gives a size of {declared}, the file holds {there} (a copy cut short?)"
    declared_frames = _declared_frames(path, fmt, log)
    if declared_frames is not None and frames + _SIZE_SLACK // 2 < declared_frames < _UNKNOWN_LENGTH:
        return (f"truncated: its header promises {declared_frames} samples a channel, {frames} are there (a copy "
                "cut short?)")
    if fmt == "VOC" and "Seems to be a truncated file" in log:
        return "truncated: its last block ends early (a copy cut short?)"
    if fmt == "OGG" and ("ended unexpectedly without an End-Of-Stream" in log or _ogg_cut_inside_page(path)):
        return "truncated: the Ogg stream ends inside a page (a copy cut short?)"
    return None


def unrecognised_start(prefix: bytes) -> bool:
    """Whether libsndfile knows no format that begins with ``prefix`` (a stream's first bytes): the test
    that lets a copy of a pipe stop early rather than fill the temporary folder with what it will refuse.
    Only "format not recognised" counts; a prefix that is too short for its format, or any other complaint,
    is left to the reader of the whole stream, and an MP3's ID3 tag (pictures can make it megabytes long)
    is never judged by its start, nor an MPEG stream (libmpg123 writes warnings about a part of one on
    stderr), nor an HTK file (libsndfile knows one by its header's sample count against the file's
    length)."""
    if prefix.startswith(b"ID3") or (len(prefix) > 1 and prefix[0] == 0xFF and prefix[1] & 0xE0 == 0xE0):
        return False
    if prefix[8:12] == b"\x00\x02\x00\x00":  # HTK: 2-byte samples of kind WAVEFORM (0)
        return False
    try:
        sf.info(io.BytesIO(prefix))
    except sf.LibsndfileError as exc:
        return exc.code == 1  # SF_ERR_UNRECOGNISED_FORMAT
    except Exception:
        return False
    return False


def unsized_wav(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a WAV written to a pipe with its data size left 0, which
    :func:`repair_streamed_wav` can mend in a copy."""
    return _unsized_wav_data(Path(path)) is not None


def repair_streamed_wav(path: str | os.PathLike) -> bool:
    """Fill in the sizes of a WAV written to a pipe with its data size left 0 (:func:`_unsized_wav_data`), in
    place: for flowdec's own spooled copy of standard input, never for a user's file. True when repaired."""
    path = Path(path)
    unsized = _unsized_wav_data(path)
    if unsized is None:
        return False
    offset, follow = unsized
    follow = min(follow, 0xFFFFFFFF - offset)  # RIFF sizes are 32-bit
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(follow.to_bytes(4, "little"))
        f.seek(4)
        f.write(min(offset + 4 + follow - 8, 0xFFFFFFFF).to_bytes(4, "little"))
    return True


def read_blocks(path: str | os.PathLike, block_frames: int = 1 << 20,
                same_as: AudioInfo | None = None) -> Iterator[np.ndarray]:
    """float32 blocks [n, channels] of the whole file, in order. With ``same_as`` (what :func:`probe` said of
    it), a file replaced or rewritten since is refused: a later pass must read the audio the first one saw."""
    path = Path(path)
    fd = _open_fd(path)
    try:
        _require_unchanged(fd, path, same_as)
        yield from _blocks(fd, path, block_frames,
                           same_as.frames if same_as is not None and same_as.frames_promised else None)
        _require_unchanged(fd, path, same_as)  # rewritten in place while this pass read it
    finally:
        os.close(fd)


def _require_unchanged(fd: int, path: Path, same_as: AudioInfo | None) -> None:
    if same_as is not None and same_as.identity is not None and _identity(fd) != same_as.identity:
        raise AudioError(f"{path}: changed while flowdec was reading it (replaced or rewritten); run again once "
                         "it is complete")


def _blocks(fd: int, path: Path, block_frames: int, promised: int | None = None) -> Iterator[np.ndarray]:
    """``promised``: the frames a header counts that the decode must reach (:attr:`AudioInfo.frames_promised`); a
    file that decodes to fewer by more than :data:`_DECODE_SLACK` is refused by name once its end shows it
    (an MP3 cut short)."""
    decoded = 0
    try:
        with sf.SoundFile(fd, closefd=False) as f:
            while True:
                block = f.read(block_frames, dtype="float32", always_2d=True)
                if not len(block):
                    if promised is not None and decoded + _DECODE_SLACK < promised:
                        raise AudioError(f"{path}: truncated: its header promises {promised} samples, only "
                                         f"{decoded} decode (a copy cut short?)")
                    break
                decoded += len(block)
                if not np.isfinite(block).all():
                    raise AudioError(f"{path}: contains NaN or infinite samples (or values beyond float32's "
                                     "+-3.4e38, which flowdec reads them as)")
                yield block
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(f"{path}: cannot decode audio ({_describe(exc)})") from None


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """The whole file as float32 [frames, channels] and its sample rate."""
    info = probe(path)
    blocks = list(read_blocks(path, same_as=info))
    data = np.concatenate(blocks) if blocks else np.zeros((0, info.channels), np.float32)
    return data, info.sample_rate


class Resampler:
    """Streaming sample-rate conversion (soxr, very high quality) with an exact output length.

    soxr is linear-phase with its delay compensated, so a stream fed block by block gives the same result as
    one call on the whole signal; :meth:`finish` pads or trims to ``round(n_in * out/in)`` samples (or a
    requested length), which is what lets us give users back exactly the length they gave us.
    """

    def __init__(self, in_rate: int, out_rate: int, channels: int) -> None:
        self.in_rate, self.out_rate, self.channels = int(in_rate), int(out_rate), int(channels)
        self.identity = self.in_rate == self.out_rate
        self._stream = None
        if not self.identity:
            import soxr

            self._stream = soxr.ResampleStream(self.in_rate, self.out_rate, self.channels, dtype="float32",
                                               quality="VHQ")
        self.n_in = 0
        self.n_out = 0

    def process(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        block = np.ascontiguousarray(block, dtype=np.float32).reshape(-1, self.channels)
        self.n_in += len(block)
        out = block if self._stream is None else self._stream.resample_chunk(block, last=last)
        out = np.asarray(out, dtype=np.float32).reshape(-1, self.channels)
        self.n_out += len(out)
        return out

    def expected_length(self) -> int:
        return int(round(self.n_in * self.out_rate / self.in_rate))

    def count_delivered(self, n: int) -> None:
        """Record that ``n`` output samples were delivered in all (the caller trimmed the rest), so that
        :meth:`finish` pads up to its length from there."""
        self.n_out = int(n)

    def finish(self, length: int | None = None) -> np.ndarray:
        """Flush; returns the remaining samples so that the total equals ``length`` (default: exact ratio)."""
        tail = self.process(np.zeros((0, self.channels), np.float32), last=True) if self._stream is not None \
            else np.zeros((0, self.channels), np.float32)
        target = self.expected_length() if length is None else int(length)
        have_before_tail = self.n_out - len(tail)
        want_tail = target - have_before_tail
        if want_tail < 0:
            raise AudioError("resampler produced more samples than requested; trim before finishing")
        if len(tail) >= want_tail:
            return tail[:want_tail]
        return np.concatenate([tail, np.zeros((want_tail - len(tail), self.channels), np.float32)])


def resample(x: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Whole-array form of :class:`Resampler` (x: [frames, channels])."""
    if in_rate == out_rate:
        return np.asarray(x, dtype=np.float32)
    r = Resampler(in_rate, out_rate, x.shape[1])
    head = r.process(x)
    target = r.expected_length()
    if len(head) > target:
        return head[:target]
    return np.concatenate([head, r.finish(target)])


_FORMATS = {
    ".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS"), ".oga": ("OGG", "VORBIS"),
    ".opus": ("OGG", "OPUS"), ".mp3": ("MP3", "MPEG_LAYER_III"), ".aif": ("AIFF", "PCM_16"),
    ".aiff": ("AIFF", "PCM_16"), ".aifc": ("AIFF", "PCM_16"), ".w64": ("W64", "PCM_16"), ".caf": ("CAF", "PCM_16"),
    ".au": ("AU", "PCM_16"), ".rf64": ("RF64", "PCM_16"),
    # the other types libsndfile reads and writes whose extension names nothing else (NIST SPHERE: speech
    # corpora; not .mat, .mpc, .htk or .xi, which mostly name other things)
    ".snd": ("AU", "PCM_16"), ".sph": ("NIST", "PCM_16"), ".nist": ("NIST", "PCM_16"), ".voc": ("VOC", "PCM_16"),
    ".ircam": ("IRCAM", "PCM_16"), ".paf": ("PAF", "PCM_16"), ".svx": ("SVX", "PCM_16"), ".8svx": ("SVX", "PCM_16"),
    ".avr": ("AVR", "PCM_16"), ".sds": ("SDS", "PCM_16"), ".pvf": ("PVF", "PCM_16"),
}
#: Other names of a type above, left out where types are listed
_ALIAS_EXTENSIONS = (".oga", ".aif", ".aifc", ".snd", ".nist", ".8svx")
#: What a folder run takes as audio: every type flowdec reads and writes back
AUDIO_EXTENSIONS = tuple(_FORMATS)


def is_audio_path(path: str | os.PathLike) -> bool:
    """Whether a folder run takes ``path`` as audio (by its extension, any case: :data:`AUDIO_EXTENSIONS`)."""
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def audio_files_below(root: str | os.PathLike, pattern: str | None = None, exclude: str | os.PathLike | None = None,
                      onerror: Callable[[OSError], None] | None = None) -> list[Path]:
    """The audio files below a folder, sorted by path: what every folder mode (corpus encode, eval,
    training lists, entropy tables) takes, by one rule. Hidden files and folders are left out
    (:func:`hidden_below`), links to folders not followed (a link to ``.`` or a parent would list the
    same files again and again), ``exclude`` (a folder inside ``root``, e.g. the other side of a pairing)
    not entered, and ``pattern`` applied as ``--glob`` does (:func:`matches_glob`). ``onerror`` hears each
    folder that cannot be listed (default: passed over, as ``os.walk`` does)."""
    root = Path(root)
    skip = Path(exclude).resolve() if exclude is not None else None
    found: list[Path] = []
    for folder, dirs, names in os.walk(root, onerror=onerror):
        here = Path(folder)
        dirs[:] = [d for d in dirs if not d.startswith(".") and not (here / d).is_symlink()
                   and (skip is None or (here / d).resolve() != skip)]
        for name in names:
            path = here / name
            rel = path.relative_to(root)
            if not hidden_below(rel) and is_audio_path(path) and path.is_file() and matches_glob(rel, pattern):
                found.append(path)
    return sorted(found)


def output_format_for(path: str | os.PathLike, subtype: str | None = None,
                      named: str | None = None) -> tuple[str, str]:
    """The (format, subtype) an output's extension gives; ``named`` is what an error calls the output where
    the path is not the user's (``--format flac`` for a folder or ``-``)."""
    ext = Path(path).suffix.lower()
    if ext not in _FORMATS:
        what = f"{named}: unsupported output type" if named else f"{path}: unsupported output extension"
        raise AudioError(f"{what} '{ext or '(none)'}' (use one of {', '.join(sorted(_FORMATS))})")
    fmt, default_subtype = _FORMATS[ext]
    return fmt, subtype or default_subtype


# Pairs soundfile's check_format accepts but libsndfile (1.2) cannot write ("Supported file format but
# unsupported encoding"): found by writing every pair the output types offer.
_UNWRITABLE = {("WAV", "MPEG_LAYER_III"), ("MP3", "MPEG_LAYER_I"), ("MP3", "MPEG_LAYER_II"), ("AIFF", "DWVW_12")}


def can_write(fmt: str, subtype: str) -> bool:
    """Whether libsndfile writes ``subtype`` samples in a ``fmt`` file."""
    return bool(sf.check_format(fmt, subtype)) and (fmt, subtype) not in _UNWRITABLE


# The next finest sample formats to try for an input's that the output type cannot hold.
_FINEST_FIRST = {"DOUBLE": ("FLOAT", "PCM_32", "PCM_24"), "FLOAT": ("PCM_32", "PCM_24"), "PCM_32": ("PCM_24",)}


def kept_subtype(input_subtype: str, path: str | os.PathLike) -> str | None:
    """The input's sample format for an output of ``path``'s type where that type holds it (a 24-bit FLAC
    comes back as a 24-bit FLAC or WAV), else the finest the type holds below a float or 32-bit input's (a
    float WAV in a 24-bit FLAC), else None, the type's default (an MP3's samples in a WAV)."""
    fmt, _ = output_format_for(path)
    if not input_subtype:
        return None
    return next((s for s in (input_subtype, *_FINEST_FIRST.get(input_subtype, ())) if can_write(fmt, s)), None)


#: The rates Opus codes at; other rates are resampled to 48 kHz for an Opus output.
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
#: The rates MPEG-1/2/2.5 Layer III takes; others go to the next one up (48 kHz above it).
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def format_suffix(out_format: str, subtype: str | None = None) -> str:
    """The extension ``--format`` names (``flac``, ``.FLAC`` -> ``.flac``) for outputs that take their type
    from it (a folder's files, standard output), refused with the subtype as for a named file."""
    suffix = "." + out_format.lstrip(".").lower()
    check_output_format(Path("out" + suffix), subtype, f"--format {out_format}")
    return suffix


def check_output_format(path: str | os.PathLike, subtype: str | None = None,
                        named: str | None = None) -> tuple[str, str]:
    """The (format, subtype) an output path and ``--subtype`` give, refused before any work when soundfile
    cannot write that combination (``named``: as for :func:`output_format_for`)."""
    fmt, sub = output_format_for(path, subtype.upper() if subtype else None, named)
    if Path(path).suffix.lower() == ".opus" and sub != "OPUS":  # an Ogg file all the same, named wrongly
        holders = [e for e, (f, _) in sorted(_FORMATS.items())
                   if e != ".opus" and e not in _ALIAS_EXTENSIONS and can_write(f, sub)]
        where = f"{sub} goes in {', '.join(holders)}" if holders else f"no output type here holds {sub}"
        raise AudioError(f"--subtype {subtype}: a .opus file holds OPUS only ({where})")
    if not can_write(fmt, sub):
        valid = ", ".join(sorted(s for s in sf.available_subtypes(fmt) if can_write(fmt, s)))
        raise AudioError(f"--subtype {subtype}: not available for {Path(path).suffix or fmt} output "
                         f"(valid: {valid})")
    return fmt, sub


#: The highest rate an output type holds (by format or subtype), and the rate written above it: FLAC's
#: stream header has room for 655,350 Hz; libsndfile's Vorbis encoder refuses a first block above 200 kHz
#: and then crashes the process when the file is closed; an 8SVX header keeps the rate in 16 bits (96 kHz
#: was written as 30,464 Hz).
RATE_CEILINGS = {"FLAC": (655_350, 384_000), "VORBIS": (200_000, 192_000), "SVX": (65_535, 48_000)}
#: The most channels an output type holds (by format or subtype) where it is below :data:`MAX_CHANNELS`;
#: past them libsndfile says only "Format not recognised." (its Vorbis encoder crashes instead). Found by
#: writing every pair the output types offer (tests/test_shell.py checks them against this libsndfile).
MOST_CHANNELS = {"MP3": 2, "FLAC": 8, "VORBIS": 255, "OPUS": 255, "VOC": 2, "AVR": 2, "SVX": 1, "SDS": 1, "IRCAM": 256,
                 **dict.fromkeys(("ALAC_16", "ALAC_20", "ALAC_24", "ALAC_32"), 8),
                 **dict.fromkeys(("IMA_ADPCM", "MS_ADPCM"), 2),
                 **dict.fromkeys(("GSM610", "G721_32", "G723_24", "G723_40", "NMS_ADPCM_16", "NMS_ADPCM_24",
                                  "NMS_ADPCM_32"), 1)}


def output_rate_for(path: str | os.PathLike, subtype: str | None, sample_rate: int) -> int:
    """The rate an output is written at: the original one, except where the format cannot hold it (Opus
    takes 8, 12, 16, 24 or 48 kHz: other rates become 48 kHz; MP3 takes :data:`MP3_RATES`: another rate
    becomes the next one up, or 48 kHz; above a :data:`RATE_CEILINGS` rate, its replacement)."""
    fmt, sub = output_format_for(path, subtype.upper() if subtype else None)
    rate = int(sample_rate)
    if sub == "OPUS" and rate not in OPUS_RATES:
        return 48000
    if sub == "MPEG_LAYER_III" and rate not in MP3_RATES:
        return min((r for r in MP3_RATES if r >= rate), default=48000)
    for kind in (fmt, sub):
        if kind in RATE_CEILINGS and rate > RATE_CEILINGS[kind][0]:
            return RATE_CEILINGS[kind][1]
    return rate


def _most_channels(fmt: str, subtype: str) -> int:
    return min(MOST_CHANNELS.get(fmt, MAX_CHANNELS), MOST_CHANNELS.get(subtype, MAX_CHANNELS))


def check_output_channels(path: str | os.PathLike, subtype: str | None, channels: int) -> None:
    """Refuse an output whose type cannot hold ``channels`` channels, naming the types that can: checked
    before any work (and again when the file is opened)."""
    fmt, sub = output_format_for(path, subtype.upper() if subtype else None)
    if not 1 <= int(channels) <= MAX_CHANNELS:
        raise AudioError(f"{path}: cannot write {channels} channels; audio files here hold 1 to {MAX_CHANNELS}")
    most = _most_channels(fmt, sub)
    if int(channels) > most:
        held = {1: "1 channel", 2: "1 or 2 channels"}.get(most, f"at most {most} channels")
        if MOST_CHANNELS.get(fmt, MAX_CHANNELS) > most and sub not in ("VORBIS", "OPUS"):  # the samples' limit
            raise AudioError(f"{path}: {sub} holds {held}, not {channels}; choose another --subtype")
        holders = ", ".join(e for e, (f, d) in sorted(_FORMATS.items())
                            if _most_channels(f, d) >= int(channels) and e not in _ALIAS_EXTENSIONS
                            and can_write(f, d))
        name = {"VORBIS": "Vorbis", "OPUS": "Opus"}.get(sub, fmt)
        raise AudioError(f"{path}: {name} holds {held}, not {channels}; write {holders}")


_RIFF_LIMIT = 0xFFFFFFFF - (1 << 16)  # a RIFF chunk's size is 32 bits; the headers take a little of it
_SAMPLE_BYTES = {"PCM_S8": 1, "PCM_U8": 1, "ULAW": 1, "ALAW": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4,
                 "FLOAT": 4, "DOUBLE": 8}


def _pcm_bytes(frames: int, channels: int, subtype: str) -> int:
    """The sample bytes of ``frames`` frames in ``subtype``; one of no fixed size counts 8 a sample, to be
    safe."""
    return int(frames) * int(channels) * _SAMPLE_BYTES.get(subtype, 8)


def wav_container_for(frames: int | None, channels: int, subtype: str) -> str:
    """``WAV``; ``WAVEX`` (WAVE_FORMAT_EXTENSIBLE, with libsndfile's default speaker mask: 5.1 for six
    channels) for more than two channels, as Microsoft's format asks, so that players need not guess the
    layout; or ``RF64`` (EBU Tech 3306, the 64-bit WAV that libsndfile, ffmpeg and sox read) when ``frames``
    would not fit a RIFF file's 4 GiB: a plain WAV past it carries a size field that readers take as
    truncated or refuse."""
    if frames is not None and _pcm_bytes(frames, channels, subtype) > _RIFF_LIMIT:
        return "RF64"
    return "WAVEX" if channels > 2 and can_write("WAVEX", subtype) else "WAV"


#: Room beyond an uncompressed file's samples: its header (under 200 bytes) and the file system's last block
_HEADER_AND_BLOCK_BYTES = 64 << 10

#: Formats (or subtypes) of which libsndfile writes no readable file without samples (0 bytes, a bad header)
_NO_EMPTY_FILE = ("FLAC", "MP3", "OPUS")


class AtomicAudioWriter:
    """Writes blocks to a temporary file beside ``path`` and renames it into place only on success; with
    ``overwrite=False`` a file that appeared at ``path`` meanwhile is left alone (``OutputExistsError``).
    ``frames``, when known, lets a .wav that would pass 4 GiB be written as RF64 (:func:`wav_container_for`)."""

    def __init__(self, path: str | os.PathLike, sample_rate: int, channels: int, subtype: str | None = None,
                 overwrite: bool = True, frames: int | None = None) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        fmt, sub = output_format_for(self.path, subtype.upper() if subtype else None)
        if fmt == "WAV":
            fmt = wav_container_for(frames, channels, sub)
        check_output_channels(self.path, sub, channels)
        if sub == "VORBIS" and int(sample_rate) > RATE_CEILINGS["VORBIS"][0]:
            # libsndfile's Vorbis encoder takes such a rate on opening and crashes the process on closing
            raise AudioError(f"{self.path}: Vorbis holds rates up to {RATE_CEILINGS['VORBIS'][0]} Hz, not "
                             f"{sample_rate}")
        if frames == 0 and (fmt in _NO_EMPTY_FILE or sub in _NO_EMPTY_FILE):  # one that nothing reads back
            raise AudioError(f"{self.path}: {sub if sub == 'OPUS' else fmt} cannot hold audio of 0 samples "
                             "(libsndfile writes no file that can be read back); write .wav")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AudioError(f"{self.path}: cannot write ({exc.strerror or exc})") from None
        if frames is not None and fmt in ("WAV", "WAVEX", "RF64", "AIFF") and sub in _SAMPLE_BYTES:
            wanted = _pcm_bytes(frames, channels, sub)  # uncompressed: known before any work
            if no_space_left(self.path.parent, wanted, margin=_HEADER_AND_BLOCK_BYTES):
                size = f"{wanted / 1e9:.1f} GB" if wanted >= 1e8 else f"{wanted / 1e6:.2f} MB"
                raise AudioError(f"{self.path}: cannot write (no space left on device for its {size} of "
                                 "audio)")
        self._frames = 0
        try:
            self.tmp = temporary_sibling(self.path)
        except OSError as exc:
            raise AudioError(f"{self.path}: cannot write ({exc.strerror or exc})") from None
        self._fd = -1
        try:  # a descriptor, not a name: libsndfile refuses names longer than about 1 KiB (see _open_fd)
            self._fd = os.open(self.tmp, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
            self._file = sf.SoundFile(self._fd, "w", samplerate=int(sample_rate), channels=int(channels),
                                      format=fmt, subtype=sub, closefd=False)
        except BaseException as exc:  # a signal may land here too: never leave the temporary file
            self._close_fd()
            self.tmp.unlink(missing_ok=True)
            if not isinstance(exc, Exception):
                raise
            raise AudioError(f"{self.path}: cannot write ({_describe(exc)})") from None

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    @property
    def subtype(self) -> str:
        """The sample format being written (``PCM_16``, ``FLOAT``, ...)."""
        return str(self._file.subtype)

    def _failed(self, exc: Exception, wanted: int = 0) -> AudioError:
        if isinstance(exc, OSError) and exc.errno is not None:
            reason = exc.strerror or str(exc)
        elif no_space_left(self.tmp.parent, wanted):  # libsndfile says only "System error."
            reason = "no space left on device"
        else:
            reason = _describe(exc)
        return AudioError(f"{self.path}: cannot write ({reason})")

    def write(self, block: np.ndarray) -> None:
        try:
            self._file.write(block)
        except (RuntimeError, OSError) as exc:  # soundfile's LibsndfileError is a RuntimeError
            raise self._failed(exc, np.asarray(block).nbytes) from None
        self._frames += len(block)

    def commit(self) -> None:
        """Close, check and publish; on any failure (a signal too) the temporary file goes, the output stays
        as it was, and the error names the output."""
        try:
            try:
                self._file.close()
                self._close_fd()
            except (RuntimeError, OSError) as exc:
                raise self._failed(exc) from None
            self._require_all_frames()
            try:
                publish(self.tmp, self.path, self.overwrite)
            except OutputExistsError:
                raise
            except OSError as exc:
                raise AudioError(f"{self.path}: cannot write ({exc.strerror or exc})") from None
        except BaseException:
            self._close_fd()
            self.tmp.unlink(missing_ok=True)
            raise

    def _require_all_frames(self) -> None:
        """libsndfile's Ogg writer (Vorbis, Opus) drops the write errors of a full disk: the file closes
        without complaint, holding only what fitted. Its length is read back (from the last page: cheap)."""
        if self._file.format != "OGG":
            return
        fd = os.open(self.tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with sf.SoundFile(fd, closefd=False) as written:
                held = written.frames
        except (RuntimeError, OSError) as exc:
            raise self._failed(exc) from None
        finally:
            os.close(fd)
        if held != self._frames:
            reason = ("no space left on device" if no_space_left(self.tmp.parent)
                      else f"the encoder saved {held} of {self._frames} samples")
            raise AudioError(f"{self.path}: cannot write ({reason})")

    def abort(self) -> None:
        try:
            self._file.close()
        finally:
            self._close_fd()
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicAudioWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_audio(path: str | os.PathLike, data: np.ndarray, sample_rate: int, subtype: str | None = None,
                overwrite: bool = True) -> None:
    """``data`` [samples] or [samples, channels] to ``path`` in one atomic step (see :class:`AtomicAudioWriter`;
    with ``overwrite=False`` an existing file stays and ``OutputExistsError`` is raised)."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 1:
        data = data[:, None]
    with AtomicAudioWriter(path, sample_rate, data.shape[1], subtype, overwrite=overwrite, frames=len(data)) as w:
        w.write(data)
