"""Pair reference and degraded audio files: two files, or two folders by relative path.

Folder rules (:func:`pair_paths`):

* Audio files are found recursively by extension (``flowdec_cli.audio.AUDIO_EXTENSIONS``, any case).
  Files and folders whose name starts with ``.`` are ignored. When one folder lies inside
  the other (``flowdec eval data data/decoded``), the inner folder is left out of the outer
  folder's listing.
* A reference file is paired first with the degraded file at the same relative path.
* The remaining files are paired by their relative path without extension
  (``a/b.flac`` <-> ``a/b.wav``), when that stem path names exactly one remaining file on each
  side. Anything else is reported as unpaired (an ambiguous stem such as ``x.wav`` and
  ``x.flac`` on one side with ``x.opus`` on the other is unpaired too).

This module also holds :func:`read_scored_audio`, the single place where the evaluation code reads audio,
and :func:`score_pair`, what ``flowdec eval REF DEG`` does with each pair.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from ..audio import audio_files_below
from ..exceptions import FlowdecError

__all__ = [
    "AudioReadError",
    "Pair",
    "Pairing",
    "PairingError",
    "find_audio",
    "pair_paths",
    "read_scored_audio",
    "score_pair",
    "ScoringError",
]


class PairingError(FlowdecError, ValueError):
    """The two paths cannot be paired (missing, file against folder, ...)."""


class AudioReadError(FlowdecError, OSError):
    """An audio file cannot be read; the message names the file and the reason."""


class ScoringError(FlowdecError, ValueError):
    """A pair that cannot be scored (unreadable, empty, not a decoding of its reference); the message names
    the file at fault."""


@dataclass(frozen=True)
class Pair:
    """One reference/degraded pair; ``name`` is the reference's path relative to its folder
    (POSIX separators), or its file name when two files were given."""

    name: str
    ref: Path
    deg: Path


@dataclass
class Pairing:
    """The result of :func:`pair_paths`."""

    pairs: list[Pair] = field(default_factory=list)
    unpaired_ref: list[Path] = field(default_factory=list)
    unpaired_deg: list[Path] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.unpaired_ref and not self.unpaired_deg


def find_audio(root: Path, exclude: Path | None = None) -> list[Path]:
    """Audio files under ``root`` as every folder mode takes them (:func:`flowdec_cli.audio.audio_files_below`:
    sorted, hidden names and links to folders left out), ``exclude`` not entered; a folder that cannot be
    listed is an error here, since a score over part of a set would pass for the whole."""

    def refuse(exc: OSError) -> None:
        raise PairingError(f"{exc.filename}: cannot list folder ({exc.strerror or exc})") from exc

    return audio_files_below(root, exclude=exclude, onerror=refuse)


def _inside(inner: Path, outer: Path) -> bool:
    try:
        inner.resolve().relative_to(outer.resolve())
    except ValueError:
        return False
    return inner.resolve() != outer.resolve()


def pair_paths(ref: str | Path, deg: str | Path) -> Pairing:
    """Pair two audio files, or two folders by relative path (see the module docstring).

    Raises :class:`PairingError` when a path does not exist or one is a file and the other a
    folder. Two files are always paired as given, whatever their extensions.
    """
    ref, deg = Path(ref), Path(deg)
    for p in (ref, deg):
        if not p.exists():
            raise PairingError(f"{p}: no such file or folder")
    if ref.is_file() and deg.is_file():
        return Pairing(pairs=[Pair(ref.name, ref, deg)])
    if ref.is_dir() != deg.is_dir():
        folder, single = (ref, deg) if ref.is_dir() else (deg, ref)
        raise PairingError(
            f"{single}: is a file but {folder} is a folder; give two files or two folders"
        )

    ref_files = find_audio(ref, exclude=deg if _inside(deg, ref) else None)
    deg_files = find_audio(deg, exclude=ref if _inside(ref, deg) else None)
    ref_rel = {PurePosixPath(p.relative_to(ref).as_posix()): p for p in ref_files}
    deg_rel = {PurePosixPath(p.relative_to(deg).as_posix()): p for p in deg_files}

    result = Pairing()
    matched: list[tuple[PurePosixPath, Path, Path]] = []
    for rel in list(ref_rel):
        if rel in deg_rel:
            matched.append((rel, ref_rel.pop(rel), deg_rel.pop(rel)))

    by_stem_ref: dict[PurePosixPath, list[PurePosixPath]] = defaultdict(list)
    by_stem_deg: dict[PurePosixPath, list[PurePosixPath]] = defaultdict(list)
    for rel in ref_rel:
        by_stem_ref[rel.with_suffix("")].append(rel)
    for rel in deg_rel:
        by_stem_deg[rel.with_suffix("")].append(rel)
    for stem, rels in by_stem_ref.items():
        others = by_stem_deg.get(stem, [])
        if len(rels) == 1 and len(others) == 1:
            matched.append((rels[0], ref_rel.pop(rels[0]), deg_rel.pop(others[0])))

    matched.sort(key=lambda t: str(t[0]))
    result.pairs = [Pair(str(rel), r, d) for rel, r, d in matched]
    result.unpaired_ref = sorted(ref_rel.values())
    result.unpaired_deg = sorted(deg_rel.values())
    return result


def read_scored_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read an audio file as float32 ``[frames, channels]`` and its sample rate, through the package's
    audio module; any failure is raised as :class:`AudioReadError` naming the file."""
    from ..audio import AudioError, read_audio

    try:
        return read_audio(path)
    except AudioError as exc:
        hint = "; a .fdc file holds codes, not audio: `flowdec decompress` it first" \
            if Path(path).suffix.lower() == ".fdc" else ""
        raise AudioReadError(f"{exc}{hint}") from None


def score_pair(pair: Pair, names: list[str], allow_mismatch: bool = False,
               warn: Callable[[str], None] | None = None) -> dict[str, float]:
    """The metrics ``names`` of one (reference, decoded) pair. :class:`ScoringError` names the file when the
    pair cannot be scored: unreadable or empty, or of another rate or length than its reference unless
    ``allow_mismatch`` (then resampled and trimmed, which ``warn`` hears, as it hears each metric that could
    not score these signals). A metric that is not installed (``MetricUnavailable``) is not the pair's
    fault: it propagates and should stop the run."""
    from .metrics import MetricError, comparability_problems, compute_metrics

    say = warn or (lambda _: None)
    try:
        ref_audio, ref_sr = read_scored_audio(pair.ref)
        deg_audio, deg_sr = read_scored_audio(pair.deg)
    except AudioReadError as exc:
        raise ScoringError(str(exc)) from exc
    for path, audio in ((pair.ref, ref_audio), (pair.deg, deg_audio)):
        if len(audio) == 0:  # the file at fault, not always the decoded one
            raise ScoringError(f"{path}: empty signal (0 frames)")
    problems = comparability_problems(len(ref_audio), ref_sr, len(deg_audio), deg_sr)
    if problems and not allow_mismatch:
        raise ScoringError(f"{pair.deg}: {'; '.join(problems)}: not a decoding of {pair.ref}? "
                           "(--allow-mismatch scores it anyway)")
    for p in problems:  # the decoded file is the one that differs from what it should be, as in the refusal
        say(f"{pair.deg}: {p}; resampled and trimmed to the shorter")
    errors: dict[str, str] = {}
    try:
        scores = compute_metrics(ref_audio, ref_sr, deg_audio, deg_sr, names, errors=errors)
    except MetricError as exc:
        raise ScoringError(f"{pair.deg}: {exc}") from exc
    for m, msg in errors.items():
        say(f"{pair.name}: {m} not computed: {msg}")
    return scores
