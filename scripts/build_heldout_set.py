"""Build the evaluation sets that nothing is trained on, from Debian packages outside the training corpus.

``reserved`` (the held-out set): real audio from the packages reserved for evaluation. No model is trained
or tuned on them (docs/corpus.md); they score the built-in model independently of the validation split
that chose its checkpoints. Twelve clips, picked deterministically (sorted file names, fixed offsets), at
their native rates:

    speech  4   alsa-utils' channel announcements (48 kHz, 1.4-1.5 s) and two chains of klettres-data
                syllables (44.1 kHz, German and Spanish, about 6.5 s)
    music   6   three singularity-music tracks (48 kHz) and three fretsonfire-songs-muldjord songs
                (44.1 kHz), 8 s from the 60th second, downmixed to mono
    sounds  2   two hydrogen-drumkits kits, one hit of each of eight instruments every half second (48 kHz)

    apt-get download alsa-utils klettres-data singularity-music fretsonfire-songs-muldjord hydrogen-drumkits
    for d in *.deb; do dpkg-deb -x "$d" ext; done
    python scripts/build_heldout_set.py ext /work/heldout
    python scripts/evaluate_default_model.py flowdec-small /work/heldout --per-category 0

``unseen`` (a development set): whole packages that are neither in the corpus nor reserved, so that how
well a model carries over to audio from packages it never saw can be measured, and used for choices,
without spending the reserved set on them. The validation split cannot tell this: its files come from the
corpus's own packages. Fourteen clips:

    speech  4   two chains of warmux voice lines (44.1 kHz) and two of fillets-ng-data-cs dialogue
                (22.05 kHz, Czech; the corpus has the Dutch recordings of the same game)
    music   6   three nexuiz-music tracks (44.1 kHz, read from the game's music.pk3) and three warmux
                in-game tracks, 8 s from the 60th second, downmixed to mono
    sounds  4   chains of short effects: frozen-bubble-data's, and warmux-data's game sounds and (two) weapons

    apt-get download nexuiz-music fillets-ng-data-cs frozen-bubble-data warmux-data
    for d in *.deb; do dpkg-deb -x "$d" ext; done
    python scripts/build_heldout_set.py ext /work/unseen --set unseen

The output has a ``manifest.csv`` (every clip in split ``valid``), so the evaluation script reads it as it
reads the training corpus.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf

GAP_S = 0.15
MUSIC_START_S = 60.0
MUSIC_SECONDS = 8.0
HIT_EVERY_S = 0.5
HITS = 8


def _mono(path: Path) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return audio.mean(axis=1), rate


def _chain(paths: list[Path]) -> tuple[np.ndarray, int]:
    """Syllables one after another with a short silence between them (all at one rate)."""
    pieces, rate = [], None
    for p in paths:
        audio, r = _mono(p)
        if rate is not None and r != rate:
            raise SystemExit(f"{p}: {r} Hz among {rate} Hz files")
        rate = r
        pieces += [audio, np.zeros(int(GAP_S * r), np.float32)]
    assert rate is not None
    return np.concatenate(pieces[:-1]), rate


def _excerpt(path: Path | io.BytesIO) -> tuple[np.ndarray, int]:
    info = sf.info(path)
    if isinstance(path, io.BytesIO):
        path.seek(0)
    start = int(min(MUSIC_START_S, max(0.0, info.duration - MUSIC_SECONDS)) * info.samplerate)
    audio, rate = sf.read(path, start=start, frames=int(MUSIC_SECONDS * info.samplerate), dtype="float32",
                          always_2d=True)
    return audio.mean(axis=1), rate


def _effects(paths: list[Path], seconds: float = 6.0) -> list[Path]:
    """Short files (under 4 s) at the most common rate among them, in order, until about ``seconds``."""
    infos = [(p, sf.info(p)) for p in paths]
    short = [(p, i) for p, i in infos if i.duration < 4.0]
    rate = Counter(i.samplerate for _, i in short).most_common(1)[0][0]
    chosen, total = [], 0.0
    for p, i in short:
        if i.samplerate == rate and total < seconds:
            chosen.append(p)
            total += i.duration + GAP_S
    return chosen


def _pattern(kit: Path) -> tuple[np.ndarray, int]:
    """One sample of each of the first HITS instruments (their first velocity layer), every HIT_EVERY_S."""
    firsts: dict[str, Path] = {}
    for p in sorted(kit.glob("*.wav")) + sorted(kit.glob("*.flac")):
        firsts.setdefault(p.stem.rsplit("-", 1)[0], p)
    chosen = sorted(firsts.values())[:HITS]
    rate = sf.info(chosen[0]).samplerate
    out = np.zeros(int((HITS * HIT_EVERY_S + 1.0) * rate), np.float32)
    for n, p in enumerate(chosen):
        hit, r = _mono(p)
        if r != rate:
            continue
        start = int(n * HIT_EVERY_S * rate)
        hit = hit[: len(out) - start]
        out[start:start + len(hit)] += hit
    peak = float(np.abs(out).max())
    return (out / peak * 0.7 if peak > 0.7 else out), rate


def unseen_clips(root: Path) -> list[tuple[str, str, np.ndarray, int, str]]:
    """The ``unseen`` set: (category, name, audio, rate, source) for every clip, in a fixed order."""
    games = root / "usr" / "share" / "games"
    out = []

    def effects_clip(category: str, name: str, paths: list[Path]) -> None:
        files = _effects(paths)
        out.append((category, name, *_chain(files), f"{files[0].parent.relative_to(root)} ({len(files)} chained)"))

    voices = sorted((games / "warmux" / "sound" / "default" / "voices").glob("*.ogg"))
    effects_clip("speech", "warmux-voices-a", voices[::2])
    effects_clip("speech", "warmux-voices-b", voices[1::2])
    for level in ("gods", "linux"):
        dialogue = sorted((games / "fillets-ng" / "sound" / level / "cs").glob("*.ogg"))
        effects_clip("speech", f"fillets-cs-{level}", dialogue)
    pk3 = games / "nexuiz" / "data" / "music.pk3"
    with zipfile.ZipFile(pk3) as z:
        tracks = sorted(n for n in z.namelist() if n.endswith(".ogg") and z.getinfo(n).file_size > 1_000_000)
        for name in tracks[::len(tracks) // 3][:3]:
            out.append(("music", f"nexuiz-{Path(name).stem}", *_excerpt(io.BytesIO(z.read(name))),
                        f"{pk3.relative_to(root)}:{name}"))
    ingame = sorted((games / "warmux" / "music" / "ingame").glob("*.ogg"))
    for p in ingame[::2][:3]:
        out.append(("music", f"warmux-{p.stem.replace('.', '')}", *_excerpt(p), str(p.relative_to(root))))
    weapons = sorted((games / "warmux" / "sound" / "default" / "weapons").glob("*.ogg"))
    for name, paths in (("frozen-bubble", sorted((games / "frozen-bubble" / "snd").glob("*.ogg"))),
                        ("warmux-misc", sorted((games / "warmux" / "sound" / "default" / "misc").glob("*.ogg"))),
                        ("warmux-weapons-a", weapons[::2]), ("warmux-weapons-b", weapons[1::2])):
        effects_clip("sounds", name, paths)
    return out


def clips(root: Path) -> list[tuple[str, str, np.ndarray, int, str]]:
    """The ``reserved`` set: (category, name, audio, rate, source) for every clip, in a fixed order."""
    share = root / "usr" / "share"
    out = []
    for name in ("Front_Center", "Rear_Right"):
        p = share / "sounds" / "alsa" / f"{name}.wav"
        out.append(("speech", f"alsa-{name}", *_mono(p), str(p.relative_to(root))))
    for lang in ("de", "es"):
        files = sorted((share / "klettres" / lang / "syllab").glob("*.ogg"))[:4]
        out.append(("speech", f"klettres-{lang}", *_chain(files), f"{files[0].parent.relative_to(root)} (4 chained)"))
    for p in sorted((share / "games" / "singularity" / "music").glob("*.ogg"))[:3]:
        out.append(("music", f"singularity-{p.stem}", *_excerpt(p), str(p.relative_to(root))))
    for p in sorted((share / "games" / "fretsonfire" / "data" / "songs" / "muldjord").glob("*/song.ogg"))[:3]:
        out.append(("music", f"fretsonfire-{p.parent.name}", *_excerpt(p), str(p.relative_to(root))))
    for kit in ("ForzeeStereo", "rumpf_kit_z01_h2"):
        d = share / "hydrogen" / "data" / "drumkits" / kit
        out.append(("sounds", f"hydrogen-{kit}", *_pattern(d), str(d.relative_to(root))))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="Folder the set's packages were extracted into (dpkg-deb -x).")
    ap.add_argument("out", type=Path)
    ap.add_argument("--set", choices=("reserved", "unseen"), default="reserved",
                    help="Which set to build (see the module's description).")
    args = ap.parse_args()
    rows = []
    for category, name, audio, rate, source in (clips if args.set == "reserved" else unseen_clips)(args.root):
        rel = Path("audio") / category / (name.replace(" ", "_") + ".flac")
        (args.out / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(args.out / rel, audio, rate, subtype="PCM_24")
        rows.append({"path": str(rel), "split": "valid", "category": category, "duration_s": f"{len(audio) / rate:.3f}",
                     "orig_sr": rate, "source": source})
    with open(args.out / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} clips in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
