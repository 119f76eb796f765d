"""Long inputs through the postfilter: overlapping chunks on the whole-file STFT frame grid, cross-faded, in
memory that does not grow with the length.

:func:`enhance_long` is :meth:`Postfilter.enhance <flowdec_cli.postfilter.Postfilter.enhance>` for inputs of
any length: it plans the chunks (:func:`plan_chunks`), reads the input piece by piece (a tensor, an array or a
``numpy.memmap``), draws the start noise on the whole-file grid (so a frame gets the same noise in every chunk
that holds it), runs batches of chunks through the model's field and writes the cross-faded result in order.
An input no longer than one chunk goes through ``enhance`` unchanged, so short files give bit-identical
results either way.

This module uses the model (:mod:`flowdec_cli.postfilter`); the model knows nothing of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .exceptions import InvalidValue
from .features import HOP_LENGTH, PAD_MULTIPLE, num_frames, padded_frames, peak_normfac
from .ncsnpp import NCSNpp
from .numeric import is_real
from .postfilter import Postfilter, check_normfac
from .progress import Progress
from .sampler import check_seed, draw_noise, nfe_to_steps

__all__ = ["enhance_long", "auto_batch_size", "ChunkPlan", "plan_chunks", "DEFAULT_CHUNK_SECONDS",
           "FRAMEWISE_CHUNK_SECONDS"]

DEFAULT_CHUNK_SECONDS = {"cuda": 10.0, "cpu": 5.0}  # rounded up to whole 64-frame blocks: 10.24 s, 5.12 s
FRAMEWISE_CHUNK_SECONDS = {"cuda": 60.0, "cpu": 30.0}  # a frame-wise pass needs ~10 MB per second of audio


# --------------------------------------------------------------------------------------------------
# Chunk planning for long inputs


@dataclass(frozen=True)
class ChunkPlan:
    """Where the chunks of a long input lie and where they are cross-faded, in frames and samples.

    Chunk k covers STFT frames ``starts[k] .. starts[k] + chunk_frames - 1`` of the whole-file frame grid
    and contributes samples ``[starts[k] * hop, ends[k])``. Seam k (between chunks k and k + 1) is a
    raised-cosine cross-fade over samples ``[fades[k], fades[k] + fade_length)``, centred in the samples
    both chunks cover.
    """

    total_frames: int
    chunk_frames: int
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    fades: tuple[int, ...]
    fade_length: int
    hop: int

    @property
    def whole(self) -> bool:
        """True when the input fits in one chunk and runs unchunked (exactly as ``enhance``)."""
        return len(self.starts) == 1


def plan_chunks(length: int, chunk_frames: int, overlap_frames: int, hop: int = HOP_LENGTH,
                multiple: int = 8) -> ChunkPlan:
    """Equal chunks of at most ``chunk_frames`` frames overlapping by at least ``overlap_frames``.

    The number of chunks is the smallest that keeps every overlap >= ``overlap_frames`` with chunks of
    ``chunk_frames``; the chunks are then shrunk to the smallest multiple of ``multiple`` frames (the
    U-Net's downsampling factor) with which that many still cover the input, because every frame of
    surplus overlap is paid for at full price in every network pass (a 10 s file in 5.12 s chunks: 1,920
    frames without the shrink, 1,512 with it). Their starts are spread evenly from frame 0 to the last full
    chunk, so every chunk has the same size (they batch, and none needs zero padding). A cross-fade of
    ``(overlap_frames - 1) * hop`` samples sits in the middle of each overlap, away from both chunks'
    edges, where the network sees no context.
    """
    if chunk_frames <= 0 or chunk_frames % multiple:
        raise InvalidValue(f"chunk_frames must be a positive multiple of {multiple}, got {chunk_frames}")
    if not 2 <= overlap_frames <= (chunk_frames - 2) // 3:
        raise InvalidValue(f"overlap of {overlap_frames} frames must lie in [2, {(chunk_frames - 2) // 3}] for "
                         f"chunks of {chunk_frames} frames (at most a third of a chunk)")
    total = num_frames(length, hop)
    if total <= chunk_frames:
        return ChunkPlan(total, padded_frames(total), (0,), (length,), (), 0, hop)
    count = -(-(total - overlap_frames) // (chunk_frames - overlap_frames))
    count = max(count, 2)
    # count chunks of n frames with overlaps >= o cover the input when count * n >= total + (count - 1) * o;
    # a chunk also stays at least 3 overlaps long, so neighbouring cross-fades never meet.
    needed = max(-(-(total + (count - 1) * overlap_frames) // count), 3 * overlap_frames + 2)
    chunk_frames = min(chunk_frames, -(-needed // multiple) * multiple)
    span = total - chunk_frames
    starts = tuple(int(round(k * span / (count - 1))) for k in range(count))
    ends = tuple((a + chunk_frames - 1) * hop for a in starts[:-1]) + (length,)
    fade = (overlap_frames - 1) * hop
    fades = []
    for k in range(count - 1):
        lo, hi = starts[k + 1] * hop, ends[k]  # samples both chunks cover
        fades.append((lo + hi - fade) // 2)
    for k in range(1, len(fades)):  # guaranteed by the overlap limit; checked because it is cheap
        assert fades[k] >= fades[k - 1] + fade
    return ChunkPlan(total, chunk_frames, starts, ends, tuple(fades), fade, hop)


# --------------------------------------------------------------------------------------------------
# Reading inputs piece by piece


class _Signal:
    """A ``[B, 1, L]`` view of a tensor or array-like (numpy memmap included) given as [L], [B, L] or
    [B, 1, L]; reads sample ranges as float32 tensors, reflecting at both ends like ``torch.stft``."""

    def __init__(self, data: Any) -> None:
        if not isinstance(data, torch.Tensor) and not hasattr(data, "shape"):
            data = np.asarray(data, dtype=np.float32)
        self.data = data
        self.ndim = len(data.shape)
        if self.ndim not in (1, 2, 3) or (self.ndim == 3 and data.shape[1] != 1):
            raise InvalidValue(f"audio must be shaped [L], [B, L] or [B, 1, L], got {tuple(data.shape)}")
        self.batch = 1 if self.ndim == 1 else int(data.shape[0])
        self.length = int(data.shape[-1])

    def read(self, start: int, stop: int) -> torch.Tensor:
        piece = self.data[..., start:stop]
        t = piece if isinstance(piece, torch.Tensor) else torch.from_numpy(np.asarray(piece, dtype=np.float32))
        return t.to(torch.float32).reshape(self.batch, 1, stop - start)

    def read_reflected(self, start: int, stop: int) -> torch.Tensor:
        """Samples ``start .. stop - 1`` of the signal reflect-padded on both sides (needs L > pad)."""
        parts = []
        if start < 0:
            parts.append(self.read(1, 1 - start).flip(-1))
        parts.append(self.read(max(start, 0), min(stop, self.length)))
        if stop > self.length:
            n = stop - self.length
            parts.append(self.read(self.length - 1 - n, self.length - 1).flip(-1))
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]

    def peak(self, block: int = 1 << 20) -> torch.Tensor:
        """Official normalisation factor of the whole signal, read block by block: [B, 1, 1]."""
        peak = torch.zeros(self.batch, 1, 1)
        for a in range(0, self.length, block):
            piece = self.read(a, min(a + block, self.length))
            peak = torch.maximum(peak, piece.abs().amax(dim=-1, keepdim=True).cpu())
        return peak_normfac(peak)

    def wrap(self, y: torch.Tensor) -> torch.Tensor:
        """Give a [B, 1, L] result the caller's layout."""
        return y.reshape(tuple(self.data.shape[:-1]) + (y.shape[-1],))


class _NoiseStream:
    """Start noise on the whole-file frame grid, drawn block by block so memory stays flat.

    Blocks of ``block`` frames are drawn in order from one generator (``torch.randn`` complex64
    ``[B, 1, F, block]``), so the noise of a frame never depends on how the file is chunked: overlapping
    chunks see the same noise in their common frames. Blocks before the lowest frame still needed are freed.
    """

    def __init__(self, batch: int, freqs: int, generator: torch.Generator | None,
                 device: torch.device, block: int = PAD_MULTIPLE) -> None:
        self.batch, self.freqs, self.generator, self.device, self.block = batch, freqs, generator, device, block
        self.blocks: dict[int, torch.Tensor] = {}
        self.drawn = 0

    def get(self, start: int, stop: int) -> torch.Tensor:
        first, last = start // self.block, (stop - 1) // self.block
        while self.drawn <= last:
            self.blocks[self.drawn] = draw_noise((self.batch, 1, self.freqs, self.block), self.generator,
                                                 self.device)
            self.drawn += 1
        for k in [k for k in self.blocks if k < first]:
            del self.blocks[k]
        cat = torch.cat([self.blocks[k] for k in range(first, last + 1)], dim=-1)
        return cat[..., start - first * self.block: stop - first * self.block]


def _raised_cosine(n: int) -> torch.Tensor:
    """Fade-in weights 0 -> 1 over n samples (sin^2); the fade-out is 1 minus this, so they sum to 1."""
    pos = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.sin(0.5 * math.pi * pos).pow(2).to(torch.float32)


# --------------------------------------------------------------------------------------------------
# The runner


def enhance_long(model: Postfilter, source: Any, out: Any = None, *, nfe: int = 6, solver: str = "midpoint",
                 chunk_seconds: float | None = None, overlap_seconds: float = 1.0,
                 batch_size: int | None = None,
                 seed: int | None = None, generator: torch.Generator | None = None,
                 noise: Any = None, normfac: torch.Tensor | float | None = None,
                 sink: Callable[[int, torch.Tensor], None] | None = None,
                 progress: Progress | None = None, device: torch.device | str | None = None,
                 pitch: Any = None) -> Any:
    """:meth:`Postfilter.enhance` of ``model`` for inputs of any length, in memory that does not grow with
    the length.

    ``source`` is audio shaped ``[L]``, ``[B, L]`` or ``[B, 1, L]`` (rows are independent signals, e.g.
    channels): a tensor or any array that slices along the last axis without loading everything (a
    ``numpy.memmap``). Results go to ``out`` (a writable array or tensor of the same shape, e.g. a
    memmap), or to ``sink(start_sample, block [B, 1, n])`` in increasing order, or, if neither is
    given, into a new tensor that is returned.

    How it works:

    * the peak normalisation uses the peak of the whole input (one streaming pass), as ``enhance``;
    * chunks of at most ``chunk_seconds`` (rounded up to a multiple of 64 frames; default 10.24 s on
      CUDA, 5.12 s on CPU, where a 5 s chunk needs about 3.5 GB) lie on the whole-file STFT frame grid
      and overlap by at least ``overlap_seconds`` (capped at a third of a chunk); they are shrunk to the
      smallest multiple of the U-Net's downsampling factor that still covers the input with as many
      chunks (see :func:`plan_chunks`); each chunk's features are computed from its real neighbouring
      samples, so they equal the whole-file features frame by frame;
    * the start noise lives on the same grid (``_NoiseStream``): a frame gets the same noise in every
      chunk that holds it; with ``noise`` given (``[B, 1, F, >= frames]``) its frames are used instead;
    * ``batch_size`` chunks run through the network together (default: 1 on CPU, where batching
      gains nothing; on CUDA as many as fit in 60 % of the free memory, at most 16);
    * neighbouring chunks are cross-faded with complementary raised-cosine weights in the middle of
      their overlap (see :func:`plan_chunks`);
    * an input that fits in one chunk runs through :meth:`Postfilter.enhance` unchanged (bit-identical for
      the same ``seed``/``generator``/``noise``);
    * ``pitch`` (``[B, frames]`` F0 in Hz on the whole-file frame grid, 0 unvoiced) goes with each chunk's
      frames to a model that reads it (:attr:`Postfilter.takes_pitch`).

    GroupNorm statistics are per chunk, so chunked output is close to, not equal to, whole-file output.
    ``progress(desc, total, "pass")`` bars count one row's network passes (chunks x rows x NFE).
    ``device`` moves ``model`` there first.
    """
    steps = nfe_to_steps(nfe, solver)
    seed = check_seed(seed)  # 1.5 gave seed 1's noise, -1 that of 2**64-1
    for name, value in (("chunk_seconds", chunk_seconds), ("overlap_seconds", overlap_seconds)):
        if value is not None and not (is_real(value) and 0 < value < math.inf):
            raise InvalidValue(f"{name} must be a positive number of seconds, got {value!r}")
    check_normfac(normfac)
    if device is not None and torch.device(device) != model.device:
        model.to(device)
    if generator is None and seed is not None:
        # a CPU generator: the same seed gives the same noise on every device
        generator = torch.Generator().manual_seed(seed)
    if batch_size is not None and batch_size < 1:
        raise InvalidValue(f"batch_size must be at least 1, got {batch_size}")
    if chunk_seconds is None:
        defaults = DEFAULT_CHUNK_SECONDS if isinstance(model.backbone, NCSNpp) else FRAMEWISE_CHUNK_SECONDS
        chunk_seconds = defaults.get(model.device.type, defaults["cpu"])
    signal = _Signal(source)
    fe = model.feature_extractor
    hop = fe.hop_length
    chunk_frames = padded_frames(max(1, int(math.ceil(chunk_seconds * model.sample_rate / hop))),
                                 fe.pad_multiple)
    # at least 2 frames, at most a third of a chunk (plan_chunks' limits)
    overlap_frames = min(max(2, int(round(overlap_seconds * model.sample_rate / hop))), (chunk_frames - 2) // 3)
    plan = plan_chunks(signal.length, chunk_frames, overlap_frames, hop,
                       multiple=model.backbone.downsampling_factor)
    write = _Writer(signal, out, sink)

    if steps == 0 or signal.length == 0:
        for a in range(0, signal.length, 1 << 20):
            write(a, signal.read(a, min(a + (1 << 20), signal.length)))
        return write.result()

    nf = signal.peak() if normfac is None else torch.as_tensor(normfac, dtype=torch.float32).reshape(-1, 1, 1)
    nf = nf.expand(signal.batch, 1, 1).to(model.device)

    if plan.whole:
        y = signal.read(0, signal.length)
        nz = None
        if noise is not None:
            frames = padded_frames(num_frames(signal.length, hop), fe.pad_multiple)  # as enhance pads them
            nz = torch.as_tensor(noise[..., :frames]).to(model.device)
        write(0, model.enhance(y, nfe, solver, noise=nz, generator=generator, normfac=nf, progress=progress,
                               pitch=pitch))
        return write.result()

    if batch_size is None:
        batch_size = auto_batch_size(model, plan.chunk_frames * signal.batch, len(plan.starts))
    f0 = model.checked_pitch(pitch, signal.batch)
    return _enhance_chunked(model, signal, plan, steps, solver, nf, generator, noise, batch_size, write,
                            progress, nfe, f0)


def auto_batch_size(model: Postfilter, rows_frames: int, chunks: int, limit: int = 16) -> int:
    """Chunks per network pass: 1 on CPU; on CUDA as many as fit in 60 % of the free memory."""
    if model.device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(model.device)
    return max(1, min(chunks, limit, int(0.6 * free) // max(1, model.activation_bytes(rows_frames))))


def _enhance_chunked(model: Postfilter, signal: _Signal, plan: ChunkPlan, steps: int, solver: str,
                     nf: torch.Tensor, generator: torch.Generator | None, noise: Any, batch_size: int,
                     write: _Writer, progress: Progress | None, nfe: int, pitch: torch.Tensor | None) -> Any:
    fe = model.feature_extractor
    hop, n, B = plan.hop, plan.chunk_frames, signal.batch
    stream = None if noise is not None else _NoiseStream(B, fe.n_freqs, generator, model.device)
    fade_in = _raised_cosine(plan.fade_length)
    bar = progress("postfilter", nfe * len(plan.starts) * B, "pass") if progress is not None else None
    emitted = 0  # samples written so far
    tail: torch.Tensor | None = None  # previous chunk's samples inside the pending cross-fade
    try:
        for first in range(0, len(plan.starts), batch_size):
            ks = list(range(first, min(first + batch_size, len(plan.starts))))
            with torch.inference_mode(), model._backend_flags():
                Ys, noises, f0s = [], [], []
                for k in ks:
                    a = plan.starts[k]
                    lo, hi = fe.segment_span(a, n)
                    seg = signal.read_reflected(lo, hi).to(model.device)
                    Ys.append(fe.frames(seg, nf))
                    nz = stream.get(a, a + n) if stream is not None else torch.as_tensor(noise[..., a:a + n])
                    noises.append(nz.to(model.device))
                    if pitch is not None:  # the chunk's frames; none past the end of the track
                        piece = pitch[:, a:a + n]
                        f0s.append(torch.nn.functional.pad(piece, (0, n - piece.shape[1])))
                Y = torch.cat(Ys, dim=0)
                x = model.start(Y, torch.cat(noises, dim=0))
                del Ys, noises
                x = model.solve_rows(Y, x, steps, solver, bar.update if bar is not None else None,
                                     pitch=torch.cat(f0s) if f0s else None)
                waves = []
                for i, k in enumerate(ks):
                    a = plan.starts[k] * hop
                    xk = x[i * B:(i + 1) * B]
                    waves.append(fe.inverse(xk, nf, plan.ends[k] - a, n).cpu())
                del x, Y
            for k, wave in zip(ks, waves):
                a = plan.starts[k] * hop
                if k > 0:  # finish the seam with the previous chunk
                    assert tail is not None
                    f = plan.fades[k - 1]
                    mine = wave[..., f - a: f - a + plan.fade_length]
                    write(emitted, tail * (1 - fade_in) + mine * fade_in)
                    emitted = f + plan.fade_length
                stop = plan.fades[k] if k < len(plan.fades) else signal.length
                write(emitted, wave[..., emitted - a: stop - a])
                emitted = stop
                if k < len(plan.fades):
                    tail = wave[..., stop - a: stop - a + plan.fade_length].clone()
    finally:
        if bar is not None:
            bar.close()
    assert emitted == signal.length
    return write.result()


class _Writer:
    """Delivers finished ``[B, 1, n]`` sample blocks to ``out``, to ``sink``, or into a new tensor."""

    def __init__(self, signal: _Signal, out: Any, sink: Callable[[int, torch.Tensor], None] | None) -> None:
        if out is not None and sink is not None:
            raise InvalidValue("give either out or sink, not both")
        if out is not None and tuple(out.shape) != tuple(signal.data.shape):
            raise InvalidValue(f"out must be shaped like the input {tuple(signal.data.shape)}, got {tuple(out.shape)}")
        dtype = getattr(out, "dtype", None)
        if out is not None and not (dtype.is_floating_point if isinstance(dtype, torch.dtype)
                                    else np.issubdtype(dtype, np.floating)):
            raise InvalidValue(f"out must hold floats (audio of full scale 1), got {dtype}")  # int16 got zeros
        if isinstance(out, np.ndarray) and not out.flags.writeable:
            raise InvalidValue("out is read-only")
        self.signal, self.out, self.sink = signal, out, sink
        self.buffer = None
        if out is None and sink is None:
            self.buffer = torch.empty(signal.batch, 1, signal.length, dtype=torch.float32)

    def __call__(self, start: int, block: torch.Tensor) -> None:
        n = block.shape[-1]
        if n == 0:
            return
        block = block.to("cpu", torch.float32)
        if self.sink is not None:
            self.sink(start, block)
        elif self.buffer is not None:
            self.buffer[..., start:start + n] = block
        elif isinstance(self.out, torch.Tensor):
            self.out[..., start:start + n] = self.signal.wrap(block).to(self.out.device, self.out.dtype)
        else:
            self.out[..., start:start + n] = self.signal.wrap(block).numpy()

    def result(self) -> Any:
        if self.buffer is not None:
            data = self.signal.data
            res = self.signal.wrap(self.buffer)
            return res.to(data.device) if isinstance(data, torch.Tensor) else res
        return self.out if self.out is not None else None
