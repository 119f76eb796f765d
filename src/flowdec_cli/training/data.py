"""Training data: audio from folders or file lists, random crops, pair lists, and the loaders.

* Sources are folders (searched recursively for audio files) or text files listing one audio path per
  line (relative paths are relative to the list; ``#`` starts a comment). Any rate and channel count:
  every item is mixed to mono and resampled to the model rate with :mod:`flowdec_cli.audio` (soxr).
* The validation split is deterministic: a file is in it when the hash of its path relative to its
  source (plus a salt) falls below ``validation_fraction``. Adding or removing files never moves others.
* Every random choice of an item (crop offset, gain, polarity, the postfilter's noise seed) comes from a
  generator seeded by ``(seed, epoch, index)``, so an item is the same whatever worker, process or resumed
  run loads it. That is what makes a resumed run continue exactly and a run on N processes see the same
  global batches as one process with an N times larger batch.
* Pair lists are the official postfilter format: ``clean_path<delim>coded_path`` per line (delimiter
  ``,``). The coded signal is cropped to the clean one's length (an error if it is shorter), and both get
  the same crop.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..audio import AudioError, audio_files_below, is_audio_path, probe, read_audio, resample
from ..exceptions import FlowdecError
from ..pitch import PitchLayout, steps_of_signal
from ..signals import ignore_stop_signals

__all__ = [
    "DataError",
    "AudioItem",
    "read_file_list",
    "list_audio",
    "split_items",
    "read_pairs",
    "write_pairs",
    "fits_pair_list",
    "load_mono",
    "load_excerpt",
    "SegmentDataset",
    "PairDataset",
    "EvalDataset",
    "EpochSampler",
    "make_loader",
    "item_rng",
    "mix_seed",
]


class DataError(FlowdecError):
    """A data source that cannot be used; the message names the file."""


@dataclass(frozen=True)
class AudioItem:
    path: str  # absolute path
    key: str  # path relative to its source (what the validation split hashes)


def mix_seed(*values: int) -> int:
    """A 63-bit seed from several integers (stable across processes and Python versions)."""
    h = hashlib.blake2b(digest_size=8)
    for v in values:
        h.update(int(v).to_bytes(8, "little", signed=True))
    return int.from_bytes(h.digest(), "little") >> 1


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng(mix_seed(seed, epoch, index))


# --------------------------------------------------------------------------------------------------
# Listing files


def read_file_list(path: Path) -> list[str]:
    """The entries of a file list, as written: a line whose first non-blank character is ``#`` is a comment,
    blank lines are skipped, and a ``#`` elsewhere belongs to the path (``Symphony #5.flac``)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the file list ({exc})") from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def list_audio(sources: Sequence[str | os.PathLike], sort: bool = True) -> list[AudioItem]:
    """Every audio file of ``sources`` (folders, searched recursively, path lists, or audio files), unique,
    sorted by path (``sort=False``: in the order the sources and lists give them)."""
    items: dict[str, AudioItem] = {}
    for src in sources:
        src = Path(src).expanduser()
        if src.is_dir():  # as every folder mode lists one (hidden files such as macOS's ._x.wav left out)
            for p in audio_files_below(src):
                items.setdefault(str(p.resolve()), AudioItem(str(p.resolve()), p.relative_to(src).as_posix()))
        elif src.exists():  # a list file, or one read from a pipe (<(find ...), /dev/stdin)
            if is_audio_path(src) and src.is_file():
                items.setdefault(str(src.resolve()), AudioItem(str(src.resolve()), src.name))
                continue
            for line in read_file_list(src):
                p = Path(line).expanduser()
                p = p if p.is_absolute() else src.parent / p
                items.setdefault(str(p.resolve()), AudioItem(str(p.resolve()), line))
        else:
            raise DataError(f"{src}: no such folder or file list")
    return sorted(items.values(), key=lambda it: it.path) if sort else list(items.values())


def _hash_fraction(key: str, salt: str) -> float:
    digest = hashlib.sha1(f"{salt}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_items(items: Sequence[AudioItem], fractions: dict[str, float], salt: str = "flowdec"
                ) -> dict[str, list[AudioItem]]:
    """Deterministic split by path hash: ``fractions`` (e.g. validation 0.01, test 0.01) are taken in
    order from the bottom of the hash range; the rest is "train"."""
    total = sum(fractions.values())
    if total >= 1.0 or any(f < 0 for f in fractions.values()):
        raise DataError(f"split fractions {fractions} must be non-negative and sum to less than 1")
    out: dict[str, list[AudioItem]] = {name: [] for name in fractions}
    out["train"] = []
    for it in items:
        h = _hash_fraction(it.key, salt)
        edge = 0.0
        for name, frac in fractions.items():
            edge += frac
            if h < edge:
                out[name].append(it)
                break
        else:
            out["train"].append(it)
    return out


def read_pairs(paths: Sequence[str | os.PathLike], delimiter: str = ",") -> list[tuple[str, str]]:
    """(clean, coded) path pairs from lists in the official format; relative paths are relative to the list."""
    pairs: list[tuple[str, str]] = []
    for lst in paths:
        lst = Path(lst)
        if lst.is_dir():
            raise DataError(f"{lst}: is a folder; a pair list is a file of 'clean{delimiter}coded' lines (such as "
                            "the train.txt that 'flowdec train prepare-pairs' writes)")
        if not lst.is_file():
            raise DataError(f"{lst}: no such pair list")
        for n, line in enumerate(read_file_list(lst), 1):
            parts = line.split(delimiter)
            if len(parts) != 2:
                raise DataError(f"{lst}:{n}: expected 'clean{delimiter}coded', got {line!r}")
            a, b = (Path(p.strip()).expanduser() for p in parts)
            pairs.append((str(a if a.is_absolute() else lst.parent / a), str(b if b.is_absolute() else lst.parent / b)))
    return pairs


def fits_pair_list(path: str, delimiter: str = ",") -> bool:
    """Whether ``path`` can be written in a pair list: it must hold neither the delimiter nor a line break."""
    return delimiter not in path and "\n" not in path and "\r" not in path


def write_pairs(path: str | os.PathLike, pairs: Sequence[tuple[str, str]], delimiter: str = ",") -> None:
    for pair in pairs:
        unfit = next((p for p in pair if not fits_pair_list(p, delimiter)), None)
        if unfit is not None:
            raise DataError(f"path contains the delimiter {delimiter!r} or a newline: {unfit}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text("".join(f"{a}{delimiter}{b}\n" for a, b in pairs), encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Reading audio


def _mono(data: np.ndarray) -> np.ndarray:
    return data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0].astype(np.float32, copy=False)


def load_mono(path: str, sample_rate: int) -> np.ndarray:
    """The whole file, mixed to mono and resampled to ``sample_rate``: float32 [L]."""
    try:
        data, sr = read_audio(path)
    except AudioError as exc:
        raise DataError(str(exc)) from None
    return np.ascontiguousarray(resample(_mono(data)[:, None], sr, sample_rate)[:, 0])


def source_length(path: str, sample_rate: int) -> int:
    """Length of a file in samples at ``sample_rate`` (what :func:`load_mono` would return)."""
    try:
        info = probe(path)
    except AudioError as exc:
        raise DataError(str(exc)) from None
    return int(round(info.frames * sample_rate / info.sample_rate))


_MARGIN = 64  # source samples read beyond an excerpt on both sides (resampler edge effects stay outside)


def load_excerpt(path: str, sample_rate: int, start: int, length: int) -> np.ndarray:
    """Samples ``[start, start + length)`` at ``sample_rate`` (zero beyond the file), mono float32.

    Only the needed part of the file is read (plus a margin when resampling), so random crops of long
    files are cheap.
    """
    try:
        info = probe(path)
    except AudioError as exc:
        raise DataError(str(exc)) from None
    sr = info.sample_rate
    if sr == sample_rate:
        a, b = max(start, 0), min(start + length, info.frames)
        data = _read_frames(path, a, max(b - a, 0), info.channels)
        out = np.zeros(length, np.float32)
        if b > a:
            out[a - start: b - start] = _mono(data)
        return out
    # Read the source span with a margin, resample, and take the wanted samples.
    step = sr // math.gcd(sr, sample_rate)  # source starts on this grid map to whole output samples
    src_a = max(int(math.floor(start * sr / sample_rate)) - _MARGIN, 0) // step * step
    src_b = min(int(math.ceil((start + length) * sr / sample_rate)) + _MARGIN, info.frames)
    out = np.zeros(length, np.float32)
    if src_b <= src_a:
        return out
    data = _mono(_read_frames(path, src_a, src_b - src_a, info.channels))
    y = resample(data[:, None], sr, sample_rate)[:, 0]
    offset = src_a * sample_rate // sr  # output index of y[0] (exact on the grid)
    lo = max(start, offset)
    hi = min(start + length, offset + len(y))
    if hi > lo:
        out[lo - start: hi - start] = y[lo - offset: hi - offset]
    return out


def _read_frames(path: str, start: int, frames: int, channels: int) -> np.ndarray:
    try:
        with sf.SoundFile(path) as f:
            if start:
                f.seek(start)
            data = f.read(frames, dtype="float32", always_2d=True)
    except Exception as exc:
        raise DataError(f"{path}: cannot decode audio ({str(exc).strip().splitlines()[-1] if str(exc) else exc})") \
            from None
    if not np.isfinite(data).all():
        raise DataError(f"{path}: contains NaN or infinite samples")
    if data.shape[0] < frames:
        data = np.concatenate([data, np.zeros((frames - data.shape[0], channels), np.float32)])
    return data


# --------------------------------------------------------------------------------------------------
# Datasets. Indices are (epoch, index) pairs from EpochSampler; plain ints mean epoch 0.


def _split_index(idx: Any) -> tuple[int, int]:
    if isinstance(idx, (tuple, list)):
        return int(idx[0]), int(idx[1])
    return 0, int(idx)


def _gain(rng: np.random.Generator, gain_db: Sequence[float]) -> float:
    lo, hi = float(gain_db[0]), float(gain_db[1])
    return 10.0 ** (rng.uniform(lo, hi) / 20.0) if hi > lo else 10.0 ** (lo / 20.0)


class SegmentDataset(Dataset):
    """Random fixed-length excerpts of audio files (NDAC training): float32 [1, segment].

    Per item: a uniform random start (files shorter than the segment are zero-padded at the end), RMS
    normalisation to ``loudness_db`` dBFS (silence is left alone), a random gain in ``gain_db``, a random
    polarity flip, and a peak limit to 1 (the codec's decoder ends in tanh).
    """

    def __init__(self, items: Sequence[AudioItem], sample_rate: int, segment: int, seed: int = 0,
                 loudness_db: float | None = -16.0, gain_db: Sequence[float] = (0.0, 0.0),
                 random_polarity: bool = False) -> None:
        if not items:
            raise DataError("no training audio files found")
        self.items = list(items)
        self.sample_rate, self.segment, self.seed = int(sample_rate), int(segment), int(seed)
        self.loudness_db, self.gain_db, self.random_polarity = loudness_db, list(gain_db), random_polarity
        self._lengths: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _length(self, index: int) -> int:
        if index not in self._lengths:
            self._lengths[index] = source_length(self.items[index].path, self.sample_rate)
        return self._lengths[index]

    def __getitem__(self, idx: Any) -> torch.Tensor:
        epoch, index = _split_index(idx)
        rng = item_rng(self.seed, epoch, index)
        n = self._length(index)
        start = int(rng.integers(0, n - self.segment + 1)) if n > self.segment else 0
        x = load_excerpt(self.items[index].path, self.sample_rate, start, self.segment)
        x = self._augment(x, rng)
        return torch.from_numpy(x)[None]

    def _augment(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.loudness_db is not None:
            rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
            if rms > 1e-6:
                x = x * (10.0 ** (self.loudness_db / 20.0) / rms)
        x = x * _gain(rng, self.gain_db)
        if self.random_polarity and rng.random() < 0.5:
            x = -x
        peak = float(np.max(np.abs(x))) if len(x) else 0.0
        if peak > 1.0:
            x = x / peak
        return x.astype(np.float32, copy=False)


def _load_pair(clean: str, coded: str, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    x = load_mono(clean, sample_rate)
    y = load_mono(coded, sample_rate)
    if len(y) < len(x):
        raise DataError(f"{coded}: the coded file is shorter than its clean file {clean} "
                        f"({len(y)} < {len(x)} samples at {sample_rate} Hz)")
    return x, y[:len(x)]


def _fit(x: np.ndarray, y: np.ndarray, length: int, start: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Crop both at ``start`` (None: centre) to ``length``, or zero-pad both on both sides (official)."""
    n = len(x)
    if n >= length:
        a = (n - length) // 2 if start is None else start
        return x[a:a + length], y[a:a + length]
    pad = length - n
    left = pad // 2
    return np.pad(x, (left, pad - left)), np.pad(y, (left, pad - left))


class PairDataset(Dataset):
    """(clean, coded) excerpts for the postfilter: ``(x [1,L], y [1,L], noise_seed int64)``, and with a
    ``pitch`` layout the clean excerpt's pitch steps ``[1, values]`` as a file would send them (measured
    here, in the loader's workers, not in the training loop).

    Training crops start uniformly at random (the same offset in both); validation (``train=False``)
    takes the centre. Shorter files are zero-padded on both sides, as officially. ``noise_seed`` seeds the
    item's flow time and noise draw on the training device.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], sample_rate: int, segment: int, seed: int = 0,
                 train: bool = True, gain_db: Sequence[float] = (0.0, 0.0),
                 pitch: PitchLayout | None = None) -> None:
        if not pairs:
            raise DataError("no (clean, coded) pairs found")
        self.pairs = list(pairs)
        self.sample_rate, self.segment, self.seed, self.train = int(sample_rate), int(segment), int(seed), train
        self.gain_db = list(gain_db)
        self.pitch = pitch
        self._lengths: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, idx: Any) -> tuple[torch.Tensor, ...]:
        epoch, index = _split_index(idx)
        rng = item_rng(self.seed, epoch, index)
        clean, coded = self.pairs[index]
        if index not in self._lengths:
            n = source_length(clean, self.sample_rate)
            if source_length(coded, self.sample_rate) < n:
                raise DataError(f"{coded}: the coded file is shorter than its clean file {clean}")
            self._lengths[index] = n
        n = self._lengths[index]
        if self.train and n > self.segment:
            start = int(rng.integers(0, n - self.segment + 1))
            x = load_excerpt(clean, self.sample_rate, start, self.segment)
            y = load_excerpt(coded, self.sample_rate, start, self.segment)
        else:
            x, y = _load_pair(clean, coded, self.sample_rate)
            x, y = _fit(x, y, self.segment, None)
        g = _gain(rng, self.gain_db)
        noise_seed = int(rng.integers(0, 2**62))
        item = (torch.from_numpy(np.ascontiguousarray(x * g, np.float32))[None],
                torch.from_numpy(np.ascontiguousarray(y * g, np.float32))[None],
                torch.tensor(noise_seed, dtype=torch.int64))
        if self.pitch is None:
            return item
        steps = steps_of_signal(self.pitch, item[0].numpy())
        return (*item, torch.from_numpy(steps.astype(np.int64)))


class EvalDataset(Dataset):
    """Whole files (or centre crops of ``max_samples``) for validation: a list of [1, L] tensors.

    ``pairs`` gives (clean, coded) items; otherwise ``items`` gives single files (the coded side is None).
    """

    def __init__(self, sample_rate: int, items: Sequence[AudioItem] = (),
                 pairs: Sequence[tuple[str, str]] = (), max_samples: int | None = None,
                 multiple: int = 1) -> None:
        self.sample_rate, self.max_samples, self.multiple = sample_rate, max_samples, max(int(multiple), 1)
        self.entries: list[tuple[str, str | None]] = [(p[0], p[1]) for p in pairs] or \
            [(it.path, None) for it in items]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        clean, coded = self.entries[index]
        if coded is None:
            x = load_mono(clean, self.sample_rate)
            y = x
        else:
            x, y = _load_pair(clean, coded, self.sample_rate)
        if self.max_samples is not None and len(x) > self.max_samples:
            n = self.max_samples - self.max_samples % self.multiple or self.max_samples
            x, y = _fit(x, y, n, None)
        xt = torch.from_numpy(np.ascontiguousarray(x))[None]
        return xt, (None if coded is None else torch.from_numpy(np.ascontiguousarray(y))[None])


# --------------------------------------------------------------------------------------------------
# Sampling and loading


class EpochSampler(Sampler):
    """A :class:`DistributedSampler` that yields ``(epoch, index)`` and can skip into an epoch.

    The tag lets every item draw its randomness from ``(seed, epoch, index)``; ``skip`` (in samples of
    this process) resumes an epoch part-way without loading the skipped items.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True) -> None:
        self.inner: DistributedSampler[int] = DistributedSampler(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = int(epoch), int(skip)
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i, index in enumerate(self.inner):
            if i >= self.skip:
                yield (self.epoch, int(index))

    def __len__(self) -> int:
        return max(len(self.inner) - self.skip, 0)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers only read and resample; leave the cores to the main process
    # Ctrl-C, `timeout` and batch schedulers signal the whole process group; only the main process handles
    # it (saves a checkpoint and shuts the workers down). A worker killed by it would turn the clean stop
    # into a DataLoader error raised in the middle of a step or of the save.
    ignore_stop_signals()


def make_loader(dataset: Dataset, batch_size: int, sampler: Sampler | None, num_workers: int,
                prefetch_factor: int, device: torch.device, drop_last: bool = True) -> DataLoader:
    """A DataLoader with worker processes, prefetching and (on CUDA) pinned memory. The workers persist
    across epochs: every random choice comes from the (epoch, index) the sampler hands out in the main
    process, and forking a dozen workers again at each epoch of a small corpus idles a GPU."""
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(prefetch_factor=max(int(prefetch_factor), 1), persistent_workers=True,
                      worker_init_fn=_worker_init)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=device.type == "cuda", drop_last=drop_last, **kwargs)
