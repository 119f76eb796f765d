"""File-level coding: audio file -> .fdc -> audio file, in bounded memory. The CLI is a thin layer over this.

Compress: read blocks of the input, divide by the peak if it exceeds full scale (the gain is stored),
resample to the model rate, code each channel separately (channels ride as the batch), pack the codes.

Compress also measures the model-rate input's band levels for the side channel, when the model (or the
caller) asks for one (:mod:`flowdec_cli.envelope`).

Decompress: D0 decodes chunk by chunk into a model-rate buffer; the postfilter (``nfe > 0``) reads it in
overlapping chunks into a second buffer; a file's side channel, when it has one, brings that buffer's band
levels to the original's; the result gets the stored gain back, is divided by its peak if it
exceeds full scale (the official demo's clip guard), is resampled to the original rate and trimmed or padded
to the exact original length, then written atomically. Buffers longer than a few minutes live in temporary
files on disk (``numpy.memmap``), so memory stays flat however long the file is.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from . import __version__
from .audio import (
    AUDIO_EXTENSIONS,
    MAX_CHANNELS,
    AtomicAudioWriter,
    AudioInfo,
    Resampler,
    check_output_channels,
    kept_subtype,
    output_rate_for,
    probe,
    read_blocks,
)
from .container import (
    MAX_GAIN,
    FdcError,
    FdcHeader,
    actual_bitrate,
    bitpacked_file_size,
    check_codes,
    check_sample_rate,
    entropy_saving,
    frames_for_samples,
    read_fdc,
    write_fdc,
)
from .container import check_header as check_fdc_header
from .envelope import (
    BandMeter,
    EnvelopeError,
    EnvelopeLayout,
    apply_envelope,
    envelope_layout,
    quantise,
)
from .exceptions import CodecError
from .features import num_frames
from .fileio import OutputExistsError, check_output
from .harmonics import redraw_harmonics
from .models.loading import Model, load_model
from .models.resolve import resolve_named_by_data
from .numeric import is_integer, is_real
from .pitch import PitchMeter, frame_track, pitch_layout
from .pitch import quantise as quantise_pitch
from .progress import Progress, ProgressBar, no_progress
from .rateplan import RatePoint, entries_of, plan_point, plan_rate, rate_plan, side_names
from .runtime import resolve_device
from .sampler import check_seed

__all__ = ["Codec", "CodecError", "CompressResult", "DecompressResult", "Decompressor", "Progress",
           "check_fdc_destination", "check_rate_request", "from_pretrained", "no_progress"]

IN_MEMORY_SAMPLES = 48000 * 60 * 4  # model-rate samples (all channels) kept in RAM; beyond, a disk buffer
READ_BLOCK_FRAMES = 1 << 18
_OUT_BLOCK_VALUES = 1 << 22  # samples x channels of one resampled output block (16 MB of float32)


_no_progress = no_progress


def check_rate_request(bitrate_kbps: float | None, n_codebooks: int | None, cap_kbps: float | None = None) -> None:
    """A rate is asked for by bitrate or by codebook count, not both; a count is an int and a rate a number
    (2.5 codebooks would be truncated to 2, a string or True taken for something else); a cap on disk, a
    positive number (checked before the minutes of coding it follows)."""
    if n_codebooks is not None and bitrate_kbps is not None:
        raise CodecError("give either a bitrate or a codebook count, not both")
    if n_codebooks is not None and not is_integer(n_codebooks):
        raise CodecError(f"a codebook count must be an int, got {n_codebooks!r}")
    if bitrate_kbps is not None and not is_real(bitrate_kbps):
        raise CodecError(f"a bitrate must be a number of kbit/s per channel, got {bitrate_kbps!r}")
    if cap_kbps is not None and not (is_real(cap_kbps) and math.isfinite(cap_kbps) and cap_kbps > 0):
        raise CodecError(f"a cap on disk (cap_kbps) must be a positive number of kbit/s per channel, got {cap_kbps!r}")


def check_fdc_destination(dst: str | os.PathLike) -> None:
    """A .fdc written under an audio file's name (``compress in.wav out.wav``, where roundtrip was meant)
    would be found later by players and tools that cannot read it: refused before any work."""
    suffix = Path(dst).suffix.lower()
    if suffix in AUDIO_EXTENSIONS:
        raise CodecError(f"{dst}: compress writes .fdc data, not {suffix} audio; name it .fdc (roundtrip writes "
                         "audio)")


def _input_gain(peak: float, source: str) -> float:
    """The gain a header stores: the input's peak where it exceeds full scale (float audio may), so that
    the codec sees at most full scale and the decoder restores the level; refused beyond what a header
    holds."""
    if peak > MAX_GAIN:
        raise CodecError(f"{source}: its peak is {peak:.3g} times full scale, more than the {MAX_GAIN:g} a .fdc "
                         "can restore; scale the audio down first")
    return peak if peak > 1.0 else 1.0


def _check_seed(seed: Any) -> None:
    """:func:`flowdec_cli.sampler.check_seed`, refused as a decoding request."""
    try:
        check_seed(seed)
    except ValueError as exc:
        raise CodecError(str(exc)) from None


@dataclass
class CompressResult:
    """What coding a file or array gave: the header written (or to write) and the codes it describes; for a
    file, its size (``file_bytes``) and the rate on disk (``actual_bitrate``, bit/s per channel)."""

    header: FdcHeader
    codes: np.ndarray = field(repr=False)  # millions of numbers for a song; its shape is in the header
    file_bytes: int = 0
    nominal_kbps: float = 0.0  # the rate -b counts (Codec.nominal_kbps); 0.0 where no codec said

    @property
    def bitpacked_bytes(self) -> int:
        """Size of the same codes in a bit-packed file (the nominal rate)."""
        return bitpacked_file_size(self.header)

    @property
    def saving(self) -> float:
        """Fraction of the bit-packed size that entropy coding saved (0.0 for a bit-packed file)."""
        return entropy_saving(self.header, self.file_bytes)

    @property
    def duration(self) -> float:
        return self.header.duration

    @property
    def actual_bitrate(self) -> float:
        """bit/s per channel on disk."""
        return actual_bitrate(self.file_bytes, self.duration, self.header.channels)


@dataclass
class DecompressResult:
    """What a decode did: the file's header, the NFE it ran, the clip guard's factor, the output's rate
    (``resampled`` when the output type could not hold the original's), and where the time went."""

    header: FdcHeader
    nfe: int
    peak_scaled: float  # factor the clip guard divided by (1.0 when it did nothing)
    sample_rate: int = 0  # rate of the written output: the original's, or 48 kHz for Opus from other rates
    seconds: float = 0.0  # wall-clock time of the decode
    file_bytes: int = 0  # size of the .fdc file decoded (decompress_file)
    model: str = ""  # name of the model that decoded it
    warnings: list[str] = field(default_factory=list)  # e.g. weights that differ from the coder's
    d0_seconds: float = 0.0  # of ``seconds``: decoding the codes to D0 (the NDAC decoder)
    postfilter_seconds: float = 0.0  # of ``seconds``: the postfilter (0.0 at NFE 0); the rest is I/O and resampling
    envelope_seconds: float = 0.0  # of ``seconds``: applying the file's side channel (0.0 when it has none)
    nominal_kbps: float = 0.0  # the file's rate as -b counts it, by the decoding model (Codec.nominal_kbps)

    @property
    def resampled(self) -> bool:
        """The output's rate differs from the original's (a format that cannot hold it, such as Opus)."""
        return bool(self.sample_rate) and self.sample_rate != self.header.sample_rate


class DiskArray:
    """A float32 [rows, length] array kept in a temporary file, read and written with explicit file I/O.

    A ``numpy.memmap`` would do the same job, but every page it touches counts as the process's resident
    memory until the kernel reclaims it, so a long file looks like a memory leak. Explicit reads and writes
    leave the pages in the kernel's cache, outside the process. Supports ``a[..., i:j]`` and ``a[:, i:j]``
    for reading and assignment, which is all the chunked stages need.
    """

    dtype = np.dtype(np.float32)

    def __init__(self, rows: int, length: int) -> None:
        self.shape = (int(rows), int(length))
        self._file = tempfile.TemporaryFile(prefix="flowdec-")  # noqa: SIM115 - closed by close()
        self._file.truncate(self.shape[0] * self.shape[1] * 4)  # sparse: reads of unwritten parts give zeros
        self._fd = self._file.fileno()

    def _span(self, key: Any) -> tuple[int, int]:
        if not isinstance(key, tuple) or len(key) != 2 or key[0] not in (Ellipsis, slice(None)) \
                or not isinstance(key[1], slice) or key[1].step not in (None, 1):
            raise IndexError("DiskArray supports [..., i:j] and [:, i:j] only")
        start, stop, _ = key[1].indices(self.shape[1])
        return start, max(start, stop)

    def __getitem__(self, key: Any) -> np.ndarray:
        start, stop = self._span(key)
        out = np.empty((self.shape[0], stop - start), np.float32)
        for r in range(self.shape[0]):
            raw = os.pread(self._fd, (stop - start) * 4, (r * self.shape[1] + start) * 4)
            out[r] = np.frombuffer(raw, np.float32, count=stop - start)
        return out

    def __setitem__(self, key: Any, value: Any) -> None:
        start, stop = self._span(key)
        value = np.broadcast_to(np.asarray(value, dtype=np.float32).reshape(-1, stop - start),
                                (self.shape[0], stop - start))
        for r in range(self.shape[0]):
            os.pwrite(self._fd, np.ascontiguousarray(value[r]).tobytes(), (r * self.shape[1] + start) * 4)

    def close(self) -> None:
        self._file.close()


class _ModelRateBuffer:
    """A [channels, length] float32 signal at the model rate, in RAM or, when long, in a temporary file."""

    def __init__(self, channels: int, length: int) -> None:
        self.data: np.ndarray | DiskArray
        if channels * length <= IN_MEMORY_SAMPLES:
            self.data = np.zeros((channels, length), np.float32)
        else:
            self.data = DiskArray(channels, length)

    def close(self) -> None:
        if isinstance(self.data, DiskArray):
            self.data.close()
        self.data = None  # type: ignore[assignment]


class _Decoded(NamedTuple):
    """The model-rate signal of a decode, the gain to restore, and the seconds each model stage took."""

    buf: _ModelRateBuffer
    gain: float
    d0_seconds: float
    postfilter_seconds: float
    envelope_seconds: float = 0.0


class SideMeter:
    """The side channels of one rate-plan entry (band levels, pitch), measured on the model-rate input as it
    goes to the encoder, block by block."""

    def __init__(self, channels: int, point: RatePoint) -> None:
        self.band = BandMeter(point.layout, channels) if point.layout is not None else None
        self.pitch = PitchMeter(point.pitch, channels) if point.pitch is not None else None

    def push(self, block: np.ndarray) -> None:
        if self.band is not None:
            self.band.push(block)
        if self.pitch is not None:
            self.pitch.push(block)

    def finish(self, length: int) -> dict[str, Any]:
        """The header fields of the side channels of the first ``length`` samples (what the codes cover),
        quantised as a file holds them; the fields of a channel this entry does not send are empty."""
        fields: dict[str, Any] = {"envelope_layout": "", "envelope": None, "pitch_layout": "", "pitch": None}
        if self.band is not None:
            fields["envelope_layout"] = self.band.layout.name
            fields["envelope"] = quantise(self.band.layout, self.band.finish(length))
        if self.pitch is not None:
            fields["pitch_layout"] = self.pitch.layout.name
            fields["pitch"] = quantise_pitch(self.pitch.layout, self.pitch.finish(length))
        return fields


def _check_default_nfe(nfe: Any) -> None:
    """A codec's own NFE (used when a decode names none) is checked when it is given, not at every decode;
    whether the solver takes it (midpoint: even) is still each decode's check."""
    from .sampler import nfe_to_steps

    if nfe is not None:
        try:
            nfe_to_steps(nfe, "euler")
        except ValueError as exc:
            raise CodecError(str(exc)) from None


class Codec:
    """A loaded model plus the device it runs on."""

    def __init__(self, model: Model, device: torch.device | str = "cpu", chunk_seconds: float = 10.0,
                 precision: str = "auto", temperature: float | None = None, envelope: bool | None = None,
                 nfe: int | None = None, harmonic_redraw_hz: int | None = None) -> None:
        """``nfe``: the postfilter passes a decode runs when none is given (None: the model's default,
        :meth:`resolve_nfe`). ``precision`` of the postfilter: ``auto`` is bfloat16 on CUDA (about 1e-2
        relative difference, see docs/performance.md) and float32 on the CPU; ``float32`` is exact to float
        rounding everywhere. ``temperature`` replaces the postfilter's start-noise temperature (its config's,
        else 1 = FlowDec). ``harmonic_redraw_hz`` replaces the cut-off below which a file's voiced harmonics
        are redrawn at its pitch before the postfilter (its config's, else none; 0 turns it off;
        :mod:`flowdec_cli.harmonics`). ``envelope``: whether the files this codec writes carry the band-level side
        channel (None: as the model's card says; the released models have none, so their files decode exactly
        as the official code's). Decoding always follows a file's side channel when it has one."""
        self.model = model
        _check_default_nfe(nfe)
        frame_seconds = model.ndac.hop_length / model.ndac.sample_rate
        if not is_real(chunk_seconds) or not frame_seconds <= float(chunk_seconds) < math.inf:
            raise CodecError(f"chunk_seconds must be a number of seconds of at least one frame ({frame_seconds:g} "
                             f"s), got {chunk_seconds!r}")
        if nfe is not None and nfe > 0 and model.postfilter is None:
            raise CodecError(f"model '{model.name}' was loaded without a postfilter, so it cannot decode at NFE "
                             f"{nfe}; load it with its postfilter, or decode at NFE 0")
        self.default_nfe = nfe
        if envelope is not None and not isinstance(envelope, (bool, np.bool_)):  # 0 or "no" turned it on
            raise CodecError(f"envelope must be True, False or None (as the model's card says), got {envelope!r}")
        self._envelope = model.side_channel_layout(None if envelope is None else bool(envelope))
        self._plan = model.planned_rates(self._envelope)
        self._points = self._plan or [RatePoint(k, model.ndac.bitrate(k) / 1000, self._envelope)
                                      for k in range(1, model.ndac.n_codebooks + 1)]
        self.device = resolve_device(device)
        self.model.to(self.device)
        self.ndac = model.ndac
        self.postfilter = model.postfilter
        self.chunk_frames = max(1, int(round(chunk_seconds * self.ndac.frame_rate)))
        self._tables: Any = False  # not looked for yet
        if self.postfilter is not None:
            self._configure_postfilter(precision)
            try:
                if temperature is not None:
                    self.postfilter.temperature = temperature
                if harmonic_redraw_hz is not None:
                    self.postfilter.harmonic_redraw_hz = harmonic_redraw_hz
            except ValueError as exc:
                raise CodecError(str(exc)) from None

    def _configure_postfilter(self, precision: str) -> None:
        from .postfilter import Postfilter

        try:
            settings = Postfilter.settings_for(self.device, precision)
        except ValueError as exc:
            raise CodecError(str(exc)) from None
        assert self.postfilter is not None
        self.postfilter.configure(**settings)

    @property
    def envelope_layout(self) -> str:
        """The name of the side-channel layout the files this codec writes carry ("" for none); under a rate
        plan, the layout of each codebook count is :meth:`layout_for`'s."""
        return self._envelope.name if self._envelope is not None else ""

    @property
    def rate_plan(self) -> list[RatePoint] | None:
        """The model card's rate plan this codec follows (None: the codes keep their own rates, as without
        the side channel)."""
        return self._plan

    def layout_for(self, n_codebooks: int) -> EnvelopeLayout | None:
        """The side-channel layout of files with ``n_codebooks`` codebooks asked for by count (``-n``): the
        cheapest rate-plan entry with that count, else the one layout this codec writes (None: none)."""
        return self.choose_rate(n_codebooks=n_codebooks).layout

    def tune_process(self) -> None:
        """Process-wide tuning for a postfilter on the CPU: glibc keeps large buffers mapped rather than
        unmapping them after every pass (:func:`flowdec_cli.postfilter.tune_cpu_allocator`). It changes the
        whole process, so the library never does it by itself; the ``flowdec`` command opts in."""
        if self.postfilter is not None and self.device.type == "cpu":
            from .postfilter import tune_cpu_allocator

            tune_cpu_allocator()

    @classmethod
    def load(cls, ref: str | os.PathLike[str] | None, device: str | torch.device = "auto",
             with_postfilter: bool | None = True, *, nfe: int | None = None,
             cache_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> Codec:
        """A codec for ``ref`` (None: the default model). ``with_postfilter=None`` loads the postfilter only
        when runs of ``nfe`` passes (None: the model's default) need it; ``cache_dir`` is the model cache
        (default ``$FLOWDEC_HOME`` or ``~/.cache/flowdec``)."""
        from .models import ModelError
        from .models.catalogue import builtin_model_name, chosen_default_model

        _check_default_nfe(nfe)
        dev = resolve_device(device)  # before the weights load: a missing GPU is refused at once
        chosen_in = None
        if ref is None:
            chosen = chosen_default_model(cache_dir)
            ref, chosen_in = chosen if chosen else (builtin_model_name(), None)
        try:
            model = load_model(ref, with_postfilter=with_postfilter, cache_dir=cache_dir, nfe=nfe)
        except ModelError as exc:
            if chosen_in is None:
                raise
            raise ModelError(f"the default model set in {chosen_in}: {exc}") from None  # not an option's fault
        return cls(model, dev, nfe=nfe, **kwargs)

    @classmethod
    def from_pretrained(cls, ref: str | os.PathLike, device: str | torch.device = "auto",
                        with_postfilter: bool = True, **kwargs: Any) -> Codec:
        """A ready codec (and its postfilter) by name (``flowdec-small``, ``flowdec-75m``), local path, or
        Hugging Face hub id (``OWNER/REPO``, ``hf://OWNER/REPO[@REV]``), as ``from_pretrained`` elsewhere."""
        from .models import pretrained_ref

        return cls.load(pretrained_ref(ref), device, with_postfilter=with_postfilter, **kwargs)
    # -- entropy coding ----------------------------------------------------------------------------
    @property
    def entropy_tables(self) -> Any:
        """The model's entropy tables (``entropy.safetensors`` in its folder), or None when it has none or
        they were learned for other codec weights. Loaded on first use."""
        if self._tables is False:
            from .entropy import EntropyError, tables_for_model_folder
            from .models import ModelError

            tables = None
            folder = Path(self.model.source) if self.model.source else None
            if folder is not None and folder.is_dir():
                try:
                    tables = tables_for_model_folder(folder)
                except EntropyError as exc:
                    raise ModelError(str(exc)) from None
            if tables is not None and tables.ndac_hash and tables.ndac_hash != self.model.ndac_hash:
                tables = None  # stale: learned for other weights (rebuild with flowdec train entropy-tables)
            if tables is not None and (tables.codebook_size != self.ndac.codebook_size
                                       or tables.n_codebooks < self.ndac.n_codebooks):
                tables = None
            self._tables = tables
        return self._tables

    def tables_for(self, header: FdcHeader, source: str) -> Any:
        """The entropy tables an entropy-coded file needs; CodecError when this model does not have them."""
        from .entropy import EntropyError, tables_for_model_folder

        tables = self.entropy_tables
        if tables is None and self.model.source and Path(self.model.source).is_dir():
            try:  # stale tables still decode the files they wrote
                tables = tables_for_model_folder(Path(self.model.source))
            except EntropyError:
                tables = None
        if tables is None or tables.id != header.entropy_tables:
            have = f"has tables {tables.id}" if tables is not None else "has no entropy tables"
            raise CodecError(f"{source}: entropy-coded with tables {header.entropy_tables} of "
                             f"'{header.model_name}'; model '{self.model.name}' {have}, so it cannot decode it")
        return tables

    # -- bitrates --------------------------------------------------------------------------------
    def bitrates(self) -> list[tuple[int, float]]:
        """(codebooks, kbit/s per channel) for every rate ``-b`` offers, in rising order: the codes' own
        rates, or, under a rate plan, each entry's nominal rate of the codes and their side channel together
        (a codebook count may then appear more than once, with different side channels)."""
        return [(p.codebooks, p.kbps) for p in self._points]

    def rate_of(self, n_codebooks: int) -> float:
        """The nominal kbit/s per channel of ``n_codebooks`` codebooks asked for by count (see
        :meth:`choose_rate`)."""
        return self.choose_rate(n_codebooks=n_codebooks).kbps

    def choose_rate(self, bitrate_kbps: float | None = None, n_codebooks: int | None = None) -> RatePoint:
        """What a request gets: the codebooks, their nominal rate and the side-channel layout. A rate gets the
        highest offered rate that does not exceed it; a codebook count gets the cheapest entry with that
        count (:func:`flowdec_cli.rateplan.plan_point`); neither gets the most codebooks."""
        check_rate_request(bitrate_kbps, n_codebooks)
        valid = ", ".join(f"{p.kbps:g}" for p in self._points)
        if n_codebooks is not None and not 1 <= n_codebooks <= self.ndac.n_codebooks:
            raise CodecError(f"model '{self.model.name}' has {self.ndac.n_codebooks} codebooks; "
                             f"cannot code with {n_codebooks}")
        if bitrate_kbps is not None and (not math.isfinite(bitrate_kbps) or bitrate_kbps <= 0):
            raise CodecError(f"a bitrate must be a positive number of kbit/s per channel, got {bitrate_kbps:g}; "
                             f"valid rates of model '{self.model.name}': {valid}")
        point = plan_point(self._points, bitrate_kbps, n_codebooks)
        if point is None:
            raise CodecError(f"{bitrate_kbps:g} kbit/s is below the lowest rate of model '{self.model.name}'; "
                             f"valid rates (kbit/s per channel): {valid}")
        return point

    def _points_of(self, header: FdcHeader) -> list[RatePoint]:
        """The offered rates a file's header matches: its codebook count with its side channel (none when
        this model did not code it so)."""
        return entries_of(self._points, header.n_codebooks, header.envelope_layout or "", header.pitch_layout or "")

    def nominal_kbps(self, header: FdcHeader) -> float:
        """A file's nominal kbit/s per channel as ``-b`` counts it: under a rate plan the entry's rate (the
        codes and their side channel's typical cost), else, or for a file this model's plan does not offer,
        the codes' own rate that the header records."""
        rate = plan_rate(self._points, header.n_codebooks, header.envelope_layout or "", header.pitch_layout or "")
        return rate if rate is not None else header.nominal_bitrate / 1000

    def choose_codebooks(self, bitrate_kbps: float | None = None, n_codebooks: int | None = None) -> int:
        """The codebook count for a request (:meth:`choose_rate`, whose side channel goes with it)."""
        return self.choose_rate(bitrate_kbps, n_codebooks).codebooks

    # -- compress ----------------------------------------------------------------------------------
    def _header(self, sample_rate: int, channels: int, num_samples: int, k: int, n_frames: int,
                gain: float, meter: SideMeter | None = None) -> FdcHeader:
        side = meter.finish(n_frames * self.ndac.hop_length) if meter is not None else {}
        return FdcHeader(
            model_name=self.model.name, model_hash=self.model.ndac_hash, package_version=__version__,
            created_by="flowdec", sample_rate=int(sample_rate), channels=int(channels),
            num_samples=int(num_samples), model_sample_rate=self.ndac.sample_rate,
            hop_length=self.ndac.hop_length, codebook_size=self.ndac.codebook_size, n_codebooks=int(k),
            model_codebooks=self.ndac.n_codebooks, num_frames=int(n_frames), chunk_frames=self.chunk_frames,
            context_frames=self.ndac.encoder_context_frames, gain=float(gain), **side)

    @staticmethod
    def _meter(channels: int, point: RatePoint) -> SideMeter | None:
        """The meter of the side channels of the chosen rate, or None when it has none."""
        return SideMeter(channels, point) if point.layout is not None or point.pitch is not None else None

    def _model_rate_blocks(self, blocks: Iterator[np.ndarray], sample_rate: int, channels: int, scale: float,
                           meter: SideMeter | None = None) -> Iterator[np.ndarray]:
        """The input scaled and resampled to the model's rate, [channels, n] blocks, each metered on the way.
        Blocks are cut so that each resampled one holds about _OUT_BLOCK_VALUES values: a low input rate
        multiplies the samples (soxr crashed on one call's output past 2^30 values, a 1 Hz input)."""
        resampler = Resampler(sample_rate, self.ndac.sample_rate, channels)
        step = max(1, _OUT_BLOCK_VALUES * sample_rate // (self.ndac.sample_rate * channels))
        for whole in blocks:
            for a in range(0, len(whole), step):
                block = whole[a:a + step]
                out = resampler.process(block * scale if scale != 1.0 else block)
                if len(out):
                    if meter is not None:
                        meter.push(out.T)
                    yield out.T
        tail = resampler.finish()
        if len(tail):
            if meter is not None:
                meter.push(tail.T)
            yield tail.T

    def _encode_blocks(self, blocks: Iterator[np.ndarray], sample_rate: int, channels: int, scale: float,
                       k: int, bar: ProgressBar, meter: SideMeter | None = None) -> np.ndarray:
        tensors = (torch.from_numpy(np.ascontiguousarray(b)).unsqueeze(1).to(self.device)
                   for b in self._model_rate_blocks(blocks, sample_rate, channels, scale, meter))
        pieces = []
        for codes in self.ndac.encode_stream(tensors, k, self.chunk_frames):
            pieces.append(codes.cpu().numpy())
            bar.update(codes.shape[-1])
        if not pieces:
            return np.zeros((channels, k, 0), np.int64)
        return np.concatenate(pieces, axis=-1)

    def compress_array(self, audio: np.ndarray, sample_rate: int, n_codebooks: int | None = None,
                       bitrate_kbps: float | None = None,
                       progress: Progress = _no_progress) -> tuple[FdcHeader, np.ndarray]:
        """Header and codes [C,K,T] for float audio [frames, channels] at ``sample_rate`` (a whole number of
        Hz). Integer PCM is refused rather than scaled: its full scale depends on where it came from (int16
        from a WAV file is ``x / 32768``, but int32 may hold 24-bit samples), and unscaled it would be coded
        thousands of times too loud. More than ``audio.MAX_CHANNELS`` channels is refused too: it is almost
        always [channels, frames] audio, which would be coded as thousands of channels for minutes."""
        sample_rate = _checked_sample_rate(sample_rate)
        audio = np.asarray(audio)
        if audio.dtype.kind != "f":
            raise CodecError(f"audio must be float samples in [-1, 1], got dtype {audio.dtype} (scale integer "
                             f"PCM first, e.g. int16 / 32768)")
        audio = audio.astype(np.float32, copy=False)
        if audio.ndim == 1:
            audio = audio[:, None]
        if audio.ndim != 2 or audio.shape[1] < 1:
            raise CodecError(f"audio must be [frames, channels], got shape {audio.shape}")
        if audio.shape[1] > MAX_CHANNELS:
            raise CodecError(f"audio must be [frames, channels], got shape {audio.shape}: {audio.shape[1]} "
                             f"channels is more than the {MAX_CHANNELS} an audio file holds (transpose "
                             f"[channels, frames] audio)")
        if not np.isfinite(audio).all():
            raise CodecError("audio contains NaN or infinite samples")
        point = self.choose_rate(bitrate_kbps, n_codebooks)
        k = point.codebooks
        gain = _input_gain(float(np.abs(audio).max()) if audio.size else 0.0, "audio")
        n_model = _model_rate_length(len(audio), sample_rate, self.ndac.sample_rate)
        bar = progress("encode", -(-n_model // self.ndac.hop_length), "frame")
        meter = self._meter(audio.shape[1], point)
        try:
            codes = self._encode_blocks(iter([audio]), sample_rate, audio.shape[1], 1.0 / gain, k, bar, meter)
        finally:
            bar.close()
        return self._header(sample_rate, audio.shape[1], len(audio), k, codes.shape[-1], gain, meter), codes

    def code_file(self, src: str | os.PathLike, n_codebooks: int | None = None, bitrate_kbps: float | None = None,
                  progress: Progress = _no_progress, info: AudioInfo | None = None) -> tuple[FdcHeader, np.ndarray]:
        """Header and codes of an audio file, read twice in blocks (the peak first, for the input gain); a file
        replaced or rewritten between the passes is refused (``info``: what :func:`probe` said of it)."""
        src = Path(src)
        info = info or probe(src)
        _checked_sample_rate(info.sample_rate, src)  # before any work: the header could not hold it
        point = self.choose_rate(bitrate_kbps, n_codebooks)
        k = point.codebooks
        peak, frames = 0.0, 0
        for block in read_blocks(src, READ_BLOCK_FRAMES, same_as=info):  # first pass: the peak, for the gain
            peak = max(peak, float(np.abs(block).max()))
            frames += len(block)  # what decodes, which the header states: an MP3's count may be an estimate
        gain = _input_gain(peak, str(src))
        n_model = _model_rate_length(info.frames, info.sample_rate, self.ndac.sample_rate)
        bar = progress(f"encode {src.name}", -(-n_model // self.ndac.hop_length), "frame")
        meter = self._meter(info.channels, point)
        try:
            codes = self._encode_blocks(read_blocks(src, READ_BLOCK_FRAMES, same_as=info), info.sample_rate,
                                        info.channels, 1.0 / gain, k, bar, meter)
        finally:
            bar.close()
        return self._header(info.sample_rate, info.channels, frames, k, codes.shape[-1], gain, meter), codes

    def _coded_file(self, src: Path, n_codebooks: int | None, bitrate_kbps: float | None, progress: Progress,
                    cap_kbps: float | None, entropy: bool = True,
                    info: AudioInfo | None = None) -> tuple[FdcHeader, np.ndarray]:
        """:meth:`code_file`, then :meth:`fit_on_disk` when there is a cap (the file is read again for the
        side channel of a cheaper rate-plan entry, should one be needed)."""
        check_rate_request(bitrate_kbps, n_codebooks, cap_kbps)
        info = info or probe(src)
        header, codes = self.code_file(src, n_codebooks, bitrate_kbps, progress, info=info)
        if cap_kbps is None:
            return header, codes

        def side_for(point: RatePoint) -> dict[str, Any]:
            meter = SideMeter(header.channels, point)
            for _ in self._model_rate_blocks(read_blocks(src, READ_BLOCK_FRAMES, same_as=info), header.sample_rate,
                                             header.channels, 1.0 / header.gain, meter):
                pass
            return meter.finish(header.coded_length)

        return self.fit_on_disk(header, codes, cap_kbps, entropy, source=str(src), side_for=side_for)

    def coded_bytes(self, header: FdcHeader, codes: np.ndarray) -> int:
        """The size of the .fdc file these codes make (entropy-coded with the model's tables if it has them)."""
        from .container import encode_fdc

        return len(encode_fdc(header, codes, tables=self.entropy_tables))

    def fit_on_disk(self, header: FdcHeader, codes: np.ndarray, cap_kbps: float, entropy: bool = True,
                    source: str = "audio",
                    side_for: Callable[[RatePoint], dict[str, Any]] | None = None) -> tuple[FdcHeader, np.ndarray]:
        """The richest file of these codes whose whole (header, side channel and CRC included) takes at most
        ``cap_kbps`` per channel on disk: a hard size budget. ``-b`` alone picks a nominal rate, and the
        header and a side channel's busy passages come on top of it; music's codes barely entropy-code, so
        its files land a few per cent above the request (docs/performance.md). The codes of residual
        quantisation are prefixes of each other, so fewer codebooks need no second encode. Without
        ``side_for`` fewer codebooks keep the header's side channels; with it (the header fields of the input's
        side channels of a given entry, :meth:`SideMeter.finish`), the candidates are this codec's rates at
        or below the header's with no more codebooks, each with its own side channels, so a rate plan's
        cheaper layouts are tried too."""
        import dataclasses

        from .container import encode_fdc_written

        check_rate_request(None, None, cap_kbps)
        seconds = header.duration
        if not seconds:  # an empty input: a header-only file, which no rate describes
            return header, codes
        tables = self.entropy_tables if entropy else None
        measured: dict[tuple[str, str], dict[str, Any]] = {}
        for point in self._fit_candidates(header, side_for is not None):
            fitted = dataclasses.replace(header, n_codebooks=point.codebooks)
            names = side_names(point)
            if side_for is not None and names != (header.envelope_layout, header.pitch_layout):
                if names not in measured:
                    measured[names] = side_for(point)
                fitted = dataclasses.replace(fitted, **measured[names])
            k = point.codebooks
            kept = np.ascontiguousarray(codes[:, :k])
            written, data = encode_fdc_written(fitted, kept, tables=tables)
            on_disk = actual_bitrate(len(data), seconds, header.channels)  # as every report computes it
            if on_disk <= cap_kbps * 1000:
                return fitted, kept
        side = f", {written.side_bytes} of them side channel" if written.side_bytes else ""
        # without it the file is the side channel's bytes (and a few header bytes) smaller: suggested only
        # where that alone would be enough
        bare = actual_bitrate(len(data) - written.side_bytes, seconds, header.channels)
        helps = bool(side) and bare <= cap_kbps * 1000
        raise CodecError(f"{source}: {cap_kbps:g} kbit/s per channel on disk cannot hold its {seconds:.3g} s: with "
                         f"one codebook it takes {on_disk / 1000:.3f} kbit/s "
                         f"({len(data)} bytes{side}); ask for more"
                         + (", or leave out the side channel (--no-envelope)" if helps else ""))

    def _fit_candidates(self, header: FdcHeader, other_layouts: bool) -> list[RatePoint]:
        """What :meth:`fit_on_disk` tries, richest first: the rates offered at or below the header's (its
        codebook count with its side channels) with no more codebooks, each with its layouts; or, without
        ``other_layouts`` or when the header's rate is not one of them, fewer codebooks with the header's
        side channels."""
        here = self._points_of(header)
        if other_layouts and here:
            top = max(p.kbps for p in here)
            below = [p for p in self._points if p.kbps <= top and p.codebooks <= header.n_codebooks]
            return sorted(below, key=lambda p: -p.kbps)
        kept = (envelope_layout(header.envelope_layout) if header.envelope_layout else None,
                pitch_layout(header.pitch_layout) if header.pitch_layout else None)
        return [RatePoint(k, 0.0, *kept) for k in range(header.n_codebooks, 0, -1)]

    def compress_bytes(self, src: str | os.PathLike, n_codebooks: int | None = None,
                       bitrate_kbps: float | None = None,
                       progress: Progress = _no_progress, entropy: bool = True,
                       cap_kbps: float | None = None) -> tuple[CompressResult, bytes]:
        """Code an audio file into the bytes of a .fdc file (for a pipe, a socket or a database);
        ``cap_kbps``: see :meth:`fit_on_disk`."""
        from .container import encode_fdc_written

        header, codes = self._coded_file(Path(src), n_codebooks, bitrate_kbps, progress, cap_kbps, entropy)
        header, data = encode_fdc_written(header, codes, tables=self.entropy_tables if entropy else None)
        return CompressResult(header, codes, len(data), self.nominal_kbps(header)), data

    def compress_file(self, src: str | os.PathLike, dst: str | os.PathLike, n_codebooks: int | None = None,
                      bitrate_kbps: float | None = None, progress: Progress = _no_progress,
                      overwrite: bool = True, entropy: bool = True, cap_kbps: float | None = None) -> CompressResult:
        """Code an audio file into a .fdc file (written atomically; with ``overwrite=False`` a file that
        exists when it is published stays and ``OutputExistsError`` is raised). ``entropy``: entropy-code
        the codes with the model's tables when it has them and it saves bytes; False writes a bit-packed
        file. ``cap_kbps``: drop codebooks until the whole file fits this rate (:meth:`fit_on_disk`)."""
        src, dst = Path(src), Path(dst)
        check_output(dst, overwrite, src)
        check_fdc_destination(dst)
        header, codes = self._coded_file(src, n_codebooks, bitrate_kbps, progress, cap_kbps, entropy)
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            header = write_fdc(dst, header, codes, tables=self.entropy_tables if entropy else None,
                               overwrite=overwrite)
        except OutputExistsError:
            raise
        except OSError as exc:
            raise CodecError(f"{dst}: cannot write ({exc.strerror or exc})") from None
        return CompressResult(header, codes, dst.stat().st_size, self.nominal_kbps(header))

    # -- decompress --------------------------------------------------------------------------------
    def check_header(self, header: FdcHeader, source: str) -> list[str]:
        """Refuse codes this model cannot decode; return warnings for weights that differ."""
        mine = (self.ndac.sample_rate, self.ndac.hop_length, self.ndac.codebook_size)
        theirs = (header.model_sample_rate, header.hop_length, header.codebook_size)
        if mine != theirs or max(header.n_codebooks, header.model_codebooks) > self.ndac.n_codebooks:
            raise CodecError(
                f"{source}: coded by '{header.model_name}' ({header.model_sample_rate} Hz, hop {header.hop_length}, "
                f"{header.model_codebooks}x{header.codebook_size} codebooks), which model '{self.model.name}' "
                f"({self.ndac.sample_rate} Hz, hop {self.ndac.hop_length}, "
                f"{self.ndac.n_codebooks}x{self.ndac.codebook_size}) cannot decode")
        warnings = []
        if header.model_hash and header.model_hash != self.model.ndac_hash:
            warnings.append(f"{source}: coded with weights {header.model_hash} of '{header.model_name}', decoding "
                            f"with weights {self.model.ndac_hash} of '{self.model.name}'; the sound may differ")
        return warnings

    def _checked_input(self, header: FdcHeader, codes: Any, source: str = "<header>") -> tuple[np.ndarray, list[str]]:
        """Codes and a header handed over in code, checked as a file's are when it is read, and before any
        decoding: a bad gain would come out as NaN audio or silence, a bad code as an error deep inside the
        decoder. The codes as int64, and the warnings of :meth:`check_header` (naming ``source``)."""
        if not isinstance(header, FdcHeader):
            raise CodecError(f"header must be an FdcHeader, got {type(header).__name__}")
        try:
            check_fdc_header(header)
        except FdcError as exc:
            raise CodecError(str(exc)) from None
        warnings = self.check_header(header, source)
        try:
            arr = np.asarray(codes)
        except (TypeError, ValueError):
            raise CodecError("codes must be an integer array [channels, n_codebooks, frames]") from None
        _check_codes_fit(header, arr)
        try:
            check_codes(arr, header.codebook_size)
        except FdcError as exc:
            raise CodecError(str(exc)) from None
        return arr.astype(np.int64, copy=False), warnings

    def resolve_nfe(self, nfe: int | None, solver: str | None = None) -> int:
        """``nfe``, or for ``None`` the codec's (``nfe`` when it was loaded), else the model's default
        (:attr:`Model.default_nfe`: 6 as in the paper unless its card says otherwise; 0 without a
        postfilter). With ``solver``, checked to suit it (:func:`flowdec_cli.sampler.nfe_to_steps`: midpoint
        takes an even NFE)."""
        if nfe is None:
            if self.default_nfe is not None:
                nfe = self.default_nfe
            else:  # loaded without its postfilter (with_postfilter=False): the codec alone
                nfe = self.model.default_nfe if self.postfilter is not None else 0
        if solver is not None:
            from .sampler import nfe_to_steps

            try:
                nfe_to_steps(nfe, solver)
            except ValueError as exc:
                raise CodecError(str(exc)) from None
            return int(nfe)
        return nfe

    def _decode_to_model_rate(self, codes: np.ndarray, header: FdcHeader, nfe: int, solver: str,
                              seed: int | None, progress: Progress) -> _Decoded:
        """D0's whole, untrimmed output (then the postfilter's), as the official pipeline has it before trimming;
        each stage is timed (the output reaches the CPU inside it, so no device work is left pending)."""
        t0 = time.perf_counter()
        channels = codes.shape[0]
        c = torch.from_numpy(np.ascontiguousarray(codes)).to(self.device)
        d0 = _ModelRateBuffer(channels, self.ndac.decoded_length(codes.shape[-1]))
        n_chunks = -(-codes.shape[-1] // self.chunk_frames)
        bar = progress("decode D0", n_chunks, "chunk")
        try:
            pos = 0
            for piece in self.ndac.decode_chunks(c, self.chunk_frames):
                d0.data[:, pos:pos + piece.shape[-1]] = piece[:, 0, :].float().cpu().numpy()
                pos += piece.shape[-1]
                bar.update(1)
        finally:
            bar.close()
        d0_seconds = time.perf_counter() - t0
        if nfe == 0:
            return _Decoded(d0, float(header.gain), d0_seconds, 0.0, self._apply_envelope(d0, header, codes))
        if self.postfilter is None:
            d0.close()
            raise CodecError(f"model '{self.model.name}' has no postfilter; decode at NFE 0")
        from .longaudio import enhance_long

        side_first = 0.0  # seconds of the side channels applied before the postfilter
        if self.model.info.get("envelope_before_postfilter"):
            # a postfilter trained on corrected pairs (train prepare-pairs --envelope) refines a balanced D0
            side_first = self._apply_envelope(d0, header, codes)
        side_first += self._redraw_harmonics(d0, header)
        out = _ModelRateBuffer(channels, d0.data.shape[1])
        t1 = time.perf_counter()
        try:
            enhance_long(self.postfilter, d0.data, out.data, nfe=nfe, solver=solver, seed=seed,
                         device=self.device, progress=progress, pitch=self._pitch_track(header, d0.data.shape[1]))
        except BaseException:
            out.close()
            raise
        finally:
            d0.close()
        postfilter_seconds = time.perf_counter() - t1
        return _Decoded(out, float(header.gain), d0_seconds, postfilter_seconds,
                        side_first + self._apply_envelope(out, header, codes))

    def _pitch_track(self, header: FdcHeader, length: int) -> np.ndarray | None:
        """The file's pitch side channel as F0 per postfilter frame of a ``length``-sample decode, for a
        postfilter that reads it (None otherwise, or when the file sends none)."""
        if header.pitch is None or self.postfilter is None or not self.postfilter.takes_pitch:
            return None
        hop = self.postfilter.feature_extractor.hop_length
        return frame_track(pitch_layout(header.pitch_layout), header.pitch, num_frames(length, hop), hop)

    def _redraw_harmonics(self, buf: _ModelRateBuffer, header: FdcHeader) -> float:
        """Redraw the voiced harmonics of ``buf`` at the file's pitch, in place, for a postfilter trained on
        decodes redrawn so (its ``harmonic_redraw_hz``; nothing otherwise, or when the file sends no pitch);
        the seconds it took. On failure ``buf`` is closed, as by every decode stage."""
        cutoff = self.postfilter.harmonic_redraw_hz if self.postfilter is not None else 0
        if not cutoff or header.pitch is None:
            return 0.0
        t0 = time.perf_counter()
        try:
            redraw_harmonics(pitch_layout(header.pitch_layout), buf.data, np.asarray(header.pitch), cutoff)
        except BaseException:
            buf.close()
            raise
        return time.perf_counter() - t0

    def _apply_envelope(self, buf: _ModelRateBuffer, header: FdcHeader, codes: np.ndarray) -> float:
        """Apply the file's side channel to ``buf`` in place (nothing when it has none); the seconds it took.
        On failure ``buf`` is closed, as every decode stage leaves no buffer behind."""
        if header.envelope is None:
            return 0.0
        t0 = time.perf_counter()
        try:
            apply_envelope(envelope_layout(header.envelope_layout), buf.data, codes.shape[-1] * header.hop_length,
                           np.asarray(header.envelope))
        except EnvelopeError as exc:
            buf.close()
            raise CodecError(f"the file's envelope cannot be applied: {exc}") from None
        except BaseException:
            buf.close()
            raise
        return time.perf_counter() - t0

    def _finish(self, buf: _ModelRateBuffer, header: FdcHeader, gain: float,
                sink: Callable[[np.ndarray], None], out_rate: int | None = None) -> float:
        """Trim or zero-pad to the input's model-rate length, restore the gain, apply the clip guard, resample
        back and deliver exactly ``num_samples`` frames as [n, C] blocks to ``sink`` (at ``out_rate`` when
        given and different from the original rate: the same duration, ``round(num_samples * out_rate /
        sample_rate)`` frames)."""
        out_rate = int(out_rate or header.sample_rate)
        n_out = _output_frames(header, out_rate)
        data = buf.data
        target = _model_rate_length(header.num_samples, header.sample_rate, header.model_sample_rate)
        have = min(data.shape[1], target)
        # model-rate samples per block, so that each resampled block holds about _OUT_BLOCK_VALUES values
        # however high the output rate and however many the channels (a header may say 10 MHz, 1,024 ch)
        block = max(1024, min(READ_BLOCK_FRAMES,
                              _OUT_BLOCK_VALUES * header.model_sample_rate // (out_rate * header.channels)))
        peak = 0.0
        for a in range(0, have, block):
            peak = max(peak, float(np.abs(data[:, a:min(a + block, have)]).max()) * gain)
        guard = peak if peak > 1.0 else 1.0
        scale = gain / guard
        resampler = Resampler(header.model_sample_rate, out_rate, header.channels)
        written = 0
        for a in range(0, target, block):
            piece = data[:, a:min(a + block, have)] if a < have else np.zeros((header.channels, 0), np.float32)
            if piece.shape[1] < min(block, target - a):
                piece = np.pad(piece, ((0, 0), (0, min(block, target - a) - piece.shape[1])))
            out = resampler.process(np.ascontiguousarray(piece.T) * scale)
            out = out[: max(n_out - written, 0)]
            if len(out):
                sink(out)
                written += len(out)
        resampler.count_delivered(written)  # trimmed output counts as delivered
        if written < n_out:
            sink(resampler.finish(n_out))
        return guard

    def decompress_codes(self, header: FdcHeader, codes: np.ndarray, nfe: int | None = None, solver: str = "midpoint",
                         seed: int | None = None, progress: Progress = _no_progress) -> np.ndarray:
        """Float audio [frames, channels] at the original rate and length. The postfilter's start noise comes
        from ``seed`` (the same audio every time), or without one from torch's global generator (so
        ``torch.manual_seed`` repeats it too); the same holds for every decode method."""
        return self.decompress_codes_timed(header, codes, nfe, solver, seed, progress)[0]

    def decompress_codes_timed(self, header: FdcHeader, codes: np.ndarray, nfe: int | None = None,
                               solver: str = "midpoint", seed: int | None = None,
                               progress: Progress = _no_progress) -> tuple[np.ndarray, DecompressResult]:
        """:meth:`decompress_codes` and its :class:`DecompressResult`: the seconds of the whole decode, of D0
        and of the postfilter (what ``flowdec eval --codec`` reports), and the clip guard's factor."""
        t0 = time.perf_counter()
        nfe, codes, warnings = self._prepared(header, codes, nfe, solver, seed)
        dec = self._decode_to_model_rate(codes, header, nfe, solver, seed, progress)
        pieces: list[np.ndarray] = []
        try:
            guard = self._finish(dec.buf, header, dec.gain, pieces.append)
        finally:
            dec.buf.close()
        audio = np.concatenate(pieces).astype(np.float32, copy=False) if pieces else \
            np.zeros((0, header.channels), np.float32)
        return audio, self._decoded(header, nfe, guard, header.sample_rate, t0, dec, warnings)

    def _prepared(self, header: FdcHeader, codes: Any, nfe: int | None, solver: str, seed: int | None,
                  source: str = "<header>",
                  warn: Callable[[str], None] | None = None) -> tuple[int, np.ndarray, list[str]]:
        """Everything a decode checks before it starts: (NFE resolved, codes checked, the header's warnings,
        each also told to ``warn`` now rather than after the decode)."""
        nfe = self.resolve_nfe(nfe, solver)
        _check_seed(seed)
        checked, warnings = self._checked_input(header, codes, source)
        if warn is not None:
            for w in warnings:
                warn(w)
        return nfe, checked, warnings

    def _decoded(self, header: FdcHeader, nfe: int, guard: float, rate: int, t0: float, dec: _Decoded,
                 warnings: list[str]) -> DecompressResult:
        return DecompressResult(header, nfe, guard, rate, time.perf_counter() - t0, model=self.model.name,
                                d0_seconds=dec.d0_seconds, postfilter_seconds=dec.postfilter_seconds,
                                envelope_seconds=dec.envelope_seconds, warnings=warnings,
                                nominal_kbps=self.nominal_kbps(header))

    def decompress_file(self, src: str | os.PathLike, dst: str | os.PathLike, nfe: int | None = None,
                        solver: str = "midpoint", seed: int | None = None, subtype: str | None = None,
                        progress: Progress = _no_progress,
                        warn: Callable[[str], None] | None = None, overwrite: bool = True) -> DecompressResult:
        """Decode a .fdc file into an audio file of its original rate, channels and length (the type from
        ``dst``'s extension, written atomically; its folder is made if missing), running the postfilter
        ``nfe`` passes (None: :meth:`resolve_nfe`). ``warn`` hears what :meth:`check_header` finds (weights
        that differ from the coder's)."""
        src, dst = Path(src), Path(dst)
        check_output(dst, overwrite, src)
        header, codes = read_fdc(src, tables=lambda h: self.tables_for(h, str(src)))
        return self._decode_read_file(src, header, codes, dst, nfe, solver, seed, subtype, progress, warn,
                                      overwrite)

    def _decode_read_file(self, src: Path, header: FdcHeader, codes: np.ndarray, dst: Path, nfe: int | None,
                          solver: str, seed: int | None, subtype: str | None, progress: Progress,
                          warn: Callable[[str], None] | None, overwrite: bool) -> DecompressResult:
        """:meth:`decompress_file` once ``src`` was read (by it, or by a :class:`Decompressor` that picked
        this codec by the file's model name): the decode, its warnings naming the file, the file's size."""
        res = self._decode_to_file(header, codes, dst, nfe, solver, seed, subtype, progress, overwrite, str(src),
                                   warn)
        res.file_bytes = src.stat().st_size
        return res

    def decompress_codes_to_file(self, header: FdcHeader, codes: np.ndarray, dst: str | os.PathLike,
                                 nfe: int | None = None, solver: str = "midpoint", seed: int | None = None,
                                 subtype: str | None = None, progress: Progress = _no_progress,
                                 overwrite: bool = True, source: str = "<header>") -> DecompressResult:
        """Decode codes already in memory (a .fdc read elsewhere, a row of a Parquet shard) into an audio file,
        written atomically as :meth:`decompress_file` does. ``source`` is what refusals and the result's
        warnings call the codes (a shard's row, say)."""
        check_output(Path(dst), overwrite)
        return self._decode_to_file(header, codes, Path(dst), nfe, solver, seed, subtype, progress, overwrite,
                                    source)

    def _decode_to_file(self, header: FdcHeader, codes: np.ndarray, dst: Path, nfe: int | None, solver: str,
                        seed: int | None, subtype: str | None, progress: Progress, overwrite: bool,
                        source: str = "<header>", warn: Callable[[str], None] | None = None) -> DecompressResult:
        """:meth:`decompress_codes_to_file` once the output was checked (by it, or when a run started)."""
        t0 = time.perf_counter()
        nfe, codes, warnings = self._prepared(header, codes, nfe, solver, seed, source, warn)
        rate = output_rate_for(dst, subtype, header.sample_rate)
        writer = AtomicAudioWriter(dst, rate, header.channels, subtype, overwrite=overwrite,
                                   frames=_output_frames(header, rate))
        clip = _clip_for(writer)
        try:
            dec = self._decode_to_model_rate(codes, header, nfe, solver, seed, progress)
            try:
                guard = self._finish(dec.buf, header, dec.gain, lambda b: writer.write(clip(b)), rate)
            finally:
                dec.buf.close()
        except BaseException:
            writer.abort()
            raise
        writer.commit()
        return self._decoded(header, nfe, guard, rate, t0, dec, warnings)

    def roundtrip_file(self, src: str | os.PathLike, dst: str | os.PathLike, n_codebooks: int | None = None,
                       bitrate_kbps: float | None = None, nfe: int | None = None, solver: str = "midpoint",
                       seed: int | None = None, subtype: str | None = None, progress: Progress = _no_progress,
                       overwrite: bool = True,
                       cap_kbps: float | None = None) -> tuple[CompressResult, DecompressResult]:
        """Compress and decompress in one go; the .fdc is built in memory and its size reported
        (``cap_kbps``: see :meth:`fit_on_disk`). Without a ``subtype`` the output keeps the input's sample
        format where its type holds it (:func:`~flowdec_cli.audio.kept_subtype`)."""
        from .container import encode_fdc_written

        src, dst = Path(src), Path(dst)
        check_output(dst, overwrite, src)
        info = probe(src)
        if subtype is None:
            subtype = kept_subtype(info.subtype, dst)
        check_output_channels(dst, subtype, info.channels)  # before the coding, not after it
        header, codes = self._coded_file(src, n_codebooks, bitrate_kbps, progress, cap_kbps, info=info)
        header, data = encode_fdc_written(header, codes, tables=self.entropy_tables)
        comp = CompressResult(header, codes, len(data), self.nominal_kbps(header))
        dec = self._decode_to_file(comp.header, comp.codes, dst, nfe, solver, seed, subtype, progress,
                                            overwrite)
        return comp, dec


class Decompressor:
    """Decodes .fdc files with the model each file names (or one given instead), loading each model once:
    what ``flowdec decompress`` runs for a file or a folder."""

    def __init__(self, model: str | os.PathLike[str] | None = None, device: str | torch.device = "auto",
                 nfe: int | None = None, precision: str = "auto", cache_dir: str | os.PathLike[str] | None = None,
                 tune_process: bool = False, temperature: float | None = None,
                 harmonic_redraw_hz: int | None = None) -> None:
        self.override = model
        self.device = resolve_device(device)
        self.nfe, self.precision, self.cache_dir, self.tune = nfe, precision, cache_dir, tune_process
        self.temperature, self.harmonic_redraw_hz = temperature, harmonic_redraw_hz
        self._codecs: dict[str, Codec] = {}

    def codec_for(self, model_name: str, source: str | os.PathLike[str]) -> Codec:
        """The codec for a file coded with ``model_name`` (the override when there is one)."""
        from .models.folder import ModelError

        key = str(self.override or model_name)
        if key not in self._codecs:
            try:
                ref = self.override or resolve_named_by_data(model_name, self.cache_dir)
                codec = Codec.load(ref, self.device, with_postfilter=None, nfe=self.nfe, precision=self.precision,
                                   cache_dir=self.cache_dir, temperature=self.temperature,
                                   harmonic_redraw_hz=self.harmonic_redraw_hz)
            except ModelError as exc:
                if self.override:
                    raise
                raise ModelError(f"{source}: coded with model '{model_name}', which cannot be loaded here ({exc}); "
                                 "pass --model NAME_OR_PATH") from None
            if self.tune:
                codec.tune_process()
            self._codecs[key] = codec
        return self._codecs[key]

    def decompress_file(self, src: str | os.PathLike[str], dst: str | os.PathLike[str], solver: str = "midpoint",
                        seed: int | None = None, subtype: str | None = None, progress: Progress = no_progress,
                        warn: Callable[[str], None] | None = None, overwrite: bool = True) -> DecompressResult:
        """Decode ``src`` into ``dst`` at this decompressor's NFE (None: each model's default)."""
        src = Path(src)
        check_output(Path(dst), overwrite, src)
        header, codes = read_fdc(src, tables=lambda h: self.codec_for(h.model_name, src).tables_for(h, str(src)))
        codec = self.codec_for(header.model_name, src)
        return codec._decode_read_file(src, header, codes, Path(dst), self.nfe, solver, seed, subtype, progress,
                                       warn, overwrite)


def _checked_sample_rate(sample_rate: Any, source: Path | None = None) -> int:
    """The rate as the int a header stores; the container's rule, refused as a coding request (of the file
    ``source``, when the rate is a file's)."""
    try:
        return check_sample_rate(sample_rate)
    except FdcError as exc:
        raise CodecError(f"{source}: a .fdc file cannot hold its rate ({exc})" if source else str(exc)) from None


def _check_codes_fit(header: FdcHeader, codes: np.ndarray) -> None:
    """Never write more than the codes describe: the header's length must be one the codec makes from
    this many frames (container.frames_for_samples), so padding stays under a frame."""
    codes = np.asarray(codes)
    if codes.ndim != 3 or codes.shape[0] != header.channels or not 1 <= codes.shape[1] <= header.n_codebooks:
        raise CodecError(f"codes of shape {list(codes.shape)} do not match the header "
                         f"([channels, n_codebooks, frames] = {list(header.codes_shape)})")
    lo, hi = frames_for_samples(header.num_samples, header.sample_rate, header.model_sample_rate,
                                header.hop_length)
    if not lo <= codes.shape[-1] <= hi:
        raise CodecError(f"{header.num_samples} samples at {header.sample_rate} Hz cannot come from "
                         f"{codes.shape[-1]} frames (the codec makes {lo} to {hi}); refusing to pad")


def from_pretrained(ref: str | os.PathLike, device: str | torch.device = "auto", with_postfilter: bool = True,
                    **kwargs: Any) -> Codec:
    """:meth:`Codec.from_pretrained`: ``flowdec_cli.from_pretrained("flowdec-small")``; the codec is
    ``.ndac``, the postfilter ``.postfilter`` (None for a codec alone)."""
    return Codec.from_pretrained(ref, device, with_postfilter=with_postfilter, **kwargs)


def planned_kbps(header: FdcHeader, cache_dir: str | os.PathLike[str] | None = None) -> float | None:
    """A file's nominal rate as its model's rate plan counts it (the codes and their side channel, what
    ``-b`` chose), from the card of that model when it is here (built in or cached: nothing is fetched, no
    weights load); None when it is not, has no plan, or the file is none of its entries. For ``flowdec
    info``, which loads no model; :meth:`Codec.nominal_kbps` says the same with a model loaded."""
    from .bitrate import codes_kbps
    from .models.resolve import local_card

    card = local_card(header.model_name, cache_dir)
    raw = card.get("rate_plan") if card else None
    if raw is None or not header.envelope_layout:
        return None
    codes = codes_kbps(header.model_sample_rate, header.hop_length, header.model_codebooks, header.codebook_size)
    try:
        plan = rate_plan(raw, codes, header.model_sample_rate)
    except EnvelopeError:
        return None
    return plan_rate(plan, header.n_codebooks, header.envelope_layout, header.pitch_layout)


def _output_frames(header: FdcHeader, out_rate: int) -> int:
    """Frames a decode delivers at ``out_rate``: the original's count, or the same duration at another rate."""
    if out_rate == header.sample_rate:
        return header.num_samples
    return _model_rate_length(header.num_samples, header.sample_rate, out_rate)


def _model_rate_length(n: int, rate: int, model_rate: int) -> int:
    return int(round(n * model_rate / rate))


def _clip_for(writer: AtomicAudioWriter) -> Callable[[np.ndarray], np.ndarray]:
    """Integer PCM wraps or saturates unpredictably beyond full scale: clip explicitly there."""
    subtype = writer.subtype
    if subtype in ("FLOAT", "DOUBLE", "VORBIS", "OPUS", "MPEG_LAYER_III"):
        return lambda b: b
    return lambda b: np.clip(b, -1.0, 1.0)
