"""Log spectrograms side by side (``flowdec plot``), drawn with matplotlib (the ``plot`` extra).

Each file is mixed down to mono (mean over channels), analysed with a 2048-sample periodic
Hann window and a hop of 512, and shown as power in dB relative to the loudest bin of the
*reference*, over a fixed 100 dB range (-100 to 0 dB), on a linear frequency axis from 0 to
half the sample rate (the axis of each panel follows that file's own sample rate). All
panels share one colour scale, so levels can be compared across panels. A silent reference
has no peak to be relative to: the panels are then scaled to the loudest one's peak, and the
colour bar and a notice say so. A panel has at most 4,096 time columns: a longer file (over 44 s at
48 kHz) is shown by the loudest value of each group of consecutive frames, so transients stay visible and
memory stays that of the audio.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import terminal_text
from ..exceptions import FlowdecError
from ..fileio import atomic_write_bytes
from .pairing import read_scored_audio

__all__ = ["PlotUnavailable", "plot_spectrograms", "N_FFT", "HOP", "DYNAMIC_RANGE_DB"]

PLOT_EXTRA_HINT = "pip install 'flowdec-cli[plot]'"  # quoted: zsh reads [plot] as a pattern
N_FFT = 2048
HOP = 512
DYNAMIC_RANGE_DB = 100.0
MAX_COLUMNS = 4096  # time columns of a panel; a 2,048-point hop-512 STFT has that many in 44 s at 48 kHz
_BLOCK_FRAMES = 4096  # frames transformed at a time
TITLE_CHARS = 44  # about what a 4-inch panel holds at 10 pt before titles run into each other


class PlotUnavailable(FlowdecError, RuntimeError):
    """matplotlib is not installed."""

    def __init__(self) -> None:
        super().__init__(
            f"plotting needs the 'matplotlib' package, which is not installed; "
            f"install the plot extra: {PLOT_EXTRA_HINT}"
        )


def _power_spectrogram(x: np.ndarray, max_columns: int = MAX_COLUMNS) -> np.ndarray:
    """Power STFT ``[bins, columns]`` of a mono float signal (centred frames, zero padding). A file of more
    than ``max_columns`` frames is shown by the loudest value of each group of consecutive frames (a panel
    is a few hundred pixels wide; the whole STFT of an hour took tens of GB), computed a block at a time so
    memory stays that of the audio and the image."""
    pad = N_FFT // 2
    xp = np.pad(np.asarray(x, dtype=np.float32), (pad, pad))
    if len(xp) < N_FFT:
        xp = np.pad(xp, (0, N_FFT - len(xp)))
    frames = np.lib.stride_tricks.sliding_window_view(xp, N_FFT)[::HOP]
    group = -(-len(frames) // max_columns)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)
    out = np.empty((N_FFT // 2 + 1, -(-len(frames) // group)))
    step = group * max(1, _BLOCK_FRAMES // group)  # whole groups per block
    for start in range(0, len(frames), step):
        block = frames[start:start + step].astype(np.float64) * window
        power = np.abs(np.fft.rfft(block, axis=-1)) ** 2
        edges = np.arange(0, len(power), group)
        out[:, start // group:start // group + len(edges)] = np.maximum.reduceat(power, edges, axis=0).T
    return out


def _fit_title(title: str, limit: int = TITLE_CHARS) -> str:
    """``title`` cut in the middle to ``limit`` characters: both ends of a path or name say the most."""
    if len(title) <= limit:
        return title
    head = (limit - 1) // 2
    return title[:head] + "\u2026" + title[len(title) - (limit - 1 - head):]


def plot_spectrograms(
    ref_path: str | Path,
    out_paths: Sequence[str | Path],
    titles: Sequence[str] | None,
    png_path: str | Path,
    dpi: int = 120,
    overwrite: bool = True,
    notices: list[str] | None = None,
) -> Path:
    """Draw the reference and each output as log spectrograms in one row; save to ``png_path``.

    ``titles``: one per panel (reference first, ``1 + len(out_paths)`` of them), or one per
    output (the reference is then titled ``reference``), or None (file names). Raises
    :class:`PlotUnavailable` without matplotlib, ``ValueError`` for a wrong number of titles,
    and soundfile's errors for unreadable files. The image is written in full to a temporary sibling and
    then moved into place; with ``overwrite=False`` an existing ``png_path`` stays as it is
    (:class:`~flowdec_cli.fileio.OutputExistsError`). Titles longer than a panel holds are shortened
    in the middle. What the picture cannot show by itself (a silent reference, a file without
    samples) is appended to ``notices`` when given. Returns ``Path(png_path)``.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotUnavailable() from exc

    paths = [Path(ref_path)] + [Path(p) for p in out_paths]
    if titles is None or len(titles) == 0:
        names = ["reference: " + paths[0].name] + [p.name for p in paths[1:]]
    elif len(titles) == len(paths):
        names = list(titles)
    elif len(titles) == len(paths) - 1:
        names = ["reference"] + list(titles)
    else:
        raise ValueError(
            f"got {len(titles)} titles for {len(paths)} panels; give one per output "
            f"({len(paths) - 1}) or one per panel including the reference ({len(paths)})"
        )
    # a file name's bytes that are not UTF-8 (lone surrogates here) or control characters: matplotlib cannot
    # draw them and raised a TypeError; written as escapes, as messages write them
    names = [terminal_text(n) for n in names]

    specs = []
    for p in paths:
        audio, sr = read_scored_audio(p)
        specs.append((_power_spectrogram(audio.mean(axis=1)), sr, len(audio)))
    notes = notices if notices is not None else []
    for p, (_spec, _sr, length) in zip(paths, specs):
        if length == 0:
            notes.append(f"{p}: no samples; its panel is empty")
    ref_level = float(specs[0][0].max())
    scale_label = "dB re. reference peak"
    if ref_level <= 0:
        ref_level = max(float(spec.max()) for spec, _sr, _n in specs)
        if ref_level > 0:
            scale_label = "dB re. loudest panel's peak (reference silent)"
            notes.append(f"{paths[0]}: the reference is silent; the panels are scaled to the loudest one's peak")
        else:
            ref_level, scale_label = 1.0, "dB (every panel silent)"
            notes.append("every file is silent: the panels show only the floor")
    floor = ref_level * 10.0 ** (-DYNAMIC_RANGE_DB / 10.0)

    n = len(paths)
    fig = Figure(figsize=(4.0 * n + 1.0, 4.0), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, sharey=False, squeeze=False)[0]
    image = None
    for ax, (spec, sr, length), name in zip(axes, specs, names):
        db = 10.0 * np.log10(np.maximum(spec, floor) / ref_level)
        duration = length / sr
        image = ax.imshow(
            db,
            origin="lower",
            aspect="auto",
            extent=(0.0, duration if length else 1.0, 0.0, sr / 2000.0),
            vmin=-DYNAMIC_RANGE_DB,
            vmax=0.0,
            cmap="magma",
            interpolation="nearest",
        )
        ax.set_title(_fit_title(name), fontsize=10)
        ax.set_xlabel("time (s)")
        if length == 0:
            ax.text(0.5, 0.5, "no samples", transform=ax.transAxes, ha="center", va="center", color="white")
            ax.set_xticks([])
    axes[0].set_ylabel("frequency (kHz)")
    assert image is not None  # at least one panel: paths is never empty here
    fig.colorbar(image, ax=list(axes), label=scale_label)
    png_path = Path(png_path)
    image = io.BytesIO()
    with warnings.catch_warnings():  # a title in a script the font lacks is drawn as boxes, not reported
        warnings.simplefilter("ignore", UserWarning)
        fig.savefig(image, format="png")
    atomic_write_bytes(png_path, image.getvalue(), make_parents=False, overwrite=overwrite)
    return png_path
