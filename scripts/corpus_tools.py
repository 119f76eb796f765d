#!/usr/bin/env python3
"""Build the flowdec training corpus from Debian data packages (driven by scripts/build_corpus.sh).

Subcommands
  packages            print the Debian packages the corpus needs, one per line
  inventory ROOT      per source: files and minutes available (after the sample-rate floor)
  build ROOT          render MIDI, cut 48 kHz mono FLAC segments, write manifest.csv, lists and stats

ROOT (default /work/corpus) holds the cache ``_build/{debs,ext,render}`` that build_corpus.sh fills and
the outputs ``audio/{train,valid}/CATEGORY/PACKAGE/*.flac``, ``manifest.csv``, ``packages.csv``,
``train.txt``/``valid.txt`` (+ per category), ``stats.txt`` and ``licences/PACKAGE.copyright``.

Everything is deterministic: files are visited in the order of a hash of ``package/relative path``, the
split of a source file is a hash of the same key (so all segments of a file share a split), per-package
caps stop the walk, and no randomness is used anywhere.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SR = 48000
SEG_S = 10.0  # segment length (long files are cut into windows of this length)
MIN_TAIL_S = 3.0  # a last, shorter window is kept when at least this long
SHORT_S = 4.0  # files shorter than this are trimmed and concatenated into <= SEG_S segments
GAP_S = 0.2  # silence between concatenated short clips
MIN_SEG_S = 1.0  # a concatenation left shorter than this at the end of a source is dropped
MAX_PER_FILE_S = 60.0  # at most this much from one long file (windows spread over the file)
VALID_PERMILLE = 50  # ~5 % of source files go to validation
MIN_SR = 22050  # source files below this rate are skipped
SILENT_RMS_DB = -50.0  # windows quieter than this (RMS, dBFS) are dropped
ACTIVE_DB = -55.0  # a 50 ms frame counts as active above this level ...
MIN_ACTIVE = 0.25  # ... and a window needs this fraction of active frames

# Never to be used for training: these are reserved for evaluation.
RESERVED = {
    "klettres-data",
    "fretsonfire-songs-muldjord",
    "fretsonfire-songs-sectoid",
    "hydrogen-drumkits",
    "singularity-music",
    "alsa-utils",
}
# Kept out of the corpus too: scripts/build_heldout_set.py --set unseen builds a development set from
# them, whole packages a model never saw, to measure and choose on without spending the reserved set.
UNSEEN = {
    "nexuiz-music",
    "fillets-ng-data-cs",
    "frozen-bubble-data",
    "warmux-data",
}

# Licences of the audio used, read from each package's /usr/share/doc/PKG/copyright (and the
# licence files shipped next to the audio where the Debian file is only generic).
LICENCES = {
    "warzone2100-music": "GPL-2+ (aftermath album also CC-BY-SA-3.0+)",
    "hedgewars-data": "GPL-2 (music); GFDL-1.3 (Data/Sounds incl. voices; Droplet*: CC-BY-SA-3.0)",
    "tuxpaint-plugins-default": "GPL-2+",
    "btanks-data": "GPL with the Battle Tanks exception (Debian main)",
    "neverball-common": "GPL-2+",
    "abe-data": "GPL-2+",
    "openttd-openmsx": "GPL-2.0 (scores)",
    "planetblupi-music-midi": "GPL-3+ (scores)",
    "musescore-general-soundfont": "MIT, parts PD/CC0 (soundfont used for the renders)",
    "tuxpaint-stamps-default": "GPL-2",
    "ktuberling-data": "GPL-2+",
    "fillets-ng-data-nl": "GPL-2",
    "lmms-common": "GPL-2+",
    "minetest-data": "CC-BY-SA-3.0 (some sounds CC0-1.0)",
    "sound-theme-freedesktop": "CC-BY-SA-3.0 / CC-BY-3.0 / GPL-2(+)",
    "oxygen-sounds": "LGPL-3.0-or-later",
    "deepin-sound-theme": "GPL-3",
    "yaru-theme-sound": "CC-BY-SA-4.0",
    "wesnoth-1.16-music": "GPL-2+",
    "colobot-common-sounds": "GPL-3+",
    "drascula-music": "Drascula licence (free redistribution; Debian main)",
    "hyperrogue-music": "GPL-2+",
    "supertux-data": "GPL-3+ (music GPL-2+ / CC-BY-SA, sounds per file: GPL-2+ / CC-BY-SA / CC0)",
    "supertuxkart-data": "GPL-3+ (sounds and music per file: GPL / CC-BY-SA / CC-BY / CC0)",
    "megaglest-data": "CC-BY-SA-3.0",
}

SOUNDFONT_PKG = "musescore-general-soundfont"
SOUNDFONT = "usr/share/sounds/sf3/MuseScore_General_Full.sf3"
AUDIO_EXT = r"\.(ogg|oga|opus|wav|flac|aiff?)$"


@dataclass(frozen=True)
class Source:
    name: str  # unique id (also the output sub-folder)
    package: str
    category: str  # music | speech | sounds
    include: str  # regex on the path relative to the extracted package root
    cap_min: float  # minutes taken at most (both splits together, shared 95/5)
    exclude: str | None = None
    render: bool = False  # MIDI rendered with fluidsynth + SOUNDFONT
    # Training minutes beyond the cap's 95 %. The validation share stays what cap_min gives, so the
    # validation split (what every model in docs/models.md was scored on) does not move when a corpus
    # grows; sources added later have cap_min 0 and thus no validation files at all.
    more_train_min: float = 0.0

    def caps_s(self) -> dict[str, float]:
        return {"train": self.cap_min * 60 * (1000 - VALID_PERMILLE) / 1000 + self.more_train_min * 60,
                "valid": self.cap_min * 60 * VALID_PERMILLE / 1000}


# Caps are chosen so music and speech have ~100-110 min each (sounds what the packages hold, ~60) and no
# package dominates (docs/corpus.md); v1's caps alone gave ~30-40 min a category.
SOURCES = [
    # ---------------- music ----------------
    Source("warzone2100-music", "warzone2100-music", "music", r"music/.*\.opus$", 8, more_train_min=8),
    Source("hedgewars-music", "hedgewars-data", "music", r"Data/Music/.*\.ogg$", 7, more_train_min=6),
    Source("neverball-music", "neverball-common", "music", r"/bgm/.*\.ogg$", 5, more_train_min=3),
    Source("abe-music", "abe-data", "music", r"sounds/.*\.ogg$", 3),
    Source("openttd-openmsx-render", "openttd-openmsx", "music", r"\.mid$", 8, render=True),
    Source("planetblupi-midi-render", "planetblupi-music-midi", "music", r"\.mid$", 5, render=True),
    # added in corpus v2 (training only; see Source.more_train_min)
    Source("wesnoth-music", "wesnoth-1.16-music", "music", r"data/core/music/.*\.ogg$", 0, more_train_min=20),
    Source("colobot-music", "colobot-common-sounds", "music", r"colobot/music/.*" + AUDIO_EXT, 0, more_train_min=10),
    Source("drascula-music", "drascula-music", "music", r"drascula/audio/.*\.ogg$", 0, more_train_min=8),
    Source("hyperrogue-music", "hyperrogue-music", "music", r"hyperrogue/music/.*" + AUDIO_EXT, 0, more_train_min=6),
    Source("supertux-music", "supertux-data", "music", r"supertux2/music/.*" + AUDIO_EXT, 0, more_train_min=10),
    Source("supertuxkart-music", "supertuxkart-data", "music", r"data/music/.*" + AUDIO_EXT, 0, more_train_min=10),
    # ---------------- speech ----------------
    Source("tuxpaint-speech", "tuxpaint-stamps-default", "speech",
           r"stamps/(.*_desc[^/]*|symbols/.*)\.(ogg|wav)$", 10, more_train_min=45),
    Source("ktuberling-speech", "ktuberling-data", "speech", r"ktuberling/sounds/[^/]+/[^/]+" + AUDIO_EXT, 9,
           more_train_min=14),
    Source("hedgewars-voices", "hedgewars-data", "speech", r"Data/Sounds/voices/.*\.ogg$", 8, more_train_min=6),
    Source("fillets-nl-speech", "fillets-ng-data-nl", "speech", r"fillets-ng/sound/.*\.ogg$", 8),
    # ---------------- general sounds ----------------
    Source("tuxpaint-sounds", "tuxpaint-stamps-default", "sounds", r"stamps/.*\.(ogg|wav)$", 8,
           exclude=r"(_desc|stamps/symbols/)"),
    Source("hedgewars-sounds", "hedgewars-data", "sounds", r"Data/Sounds/.*\.ogg$", 4, exclude=r"/voices/"),
    Source("lmms-samples", "lmms-common", "sounds", r"lmms/samples/" + r".*" + AUDIO_EXT, 6,
           exclude=r"samples/(shapes|waveforms)/"),
    Source("minetest-sounds", "minetest-data", "sounds", r"/sounds/.*" + AUDIO_EXT, 4),
    Source("tuxpaint-magic-sounds", "tuxpaint-plugins-default", "sounds", r"sounds/magic/.*" + AUDIO_EXT, 2),
    # 22.05 kHz Vorbis (band-limited to ~11 kHz): ambience loops (city, forest, swamp...) and effects
    Source("btanks-sounds", "btanks-data", "sounds", r"data/sounds/.*\.ogg$", 9),
    Source("neverball-sounds", "neverball-common", "sounds", r"/snd/.*\.ogg$", 2),
    Source("abe-sounds", "abe-data", "sounds", r"sounds/.*\.wav$", 2),
    # freedesktop's audio-channel-* test phrases are left out (alsa-utils' test sounds are reserved).
    Source("freedesktop-theme", "sound-theme-freedesktop", "sounds", r"sounds/.*" + AUDIO_EXT, 2,
           exclude=r"audio-(channel|test)"),
    Source("oxygen-theme", "oxygen-sounds", "sounds", r"sounds/.*" + AUDIO_EXT, 2),
    Source("deepin-theme", "deepin-sound-theme", "sounds", r"sounds/.*" + AUDIO_EXT, 2),
    Source("yaru-theme", "yaru-theme-sound", "sounds", r"sounds/.*" + AUDIO_EXT, 2),
    # added in corpus v2 (training only)
    Source("megaglest-sounds", "megaglest-data", "sounds", r"megaglest/.*" + AUDIO_EXT, 0, more_train_min=15),
    Source("supertuxkart-sounds", "supertuxkart-data", "sounds", r"data/(sfx|tracks)/.*" + AUDIO_EXT, 0,
           more_train_min=12),
    Source("supertux-sounds", "supertux-data", "sounds", r"supertux2/sounds/.*" + AUDIO_EXT, 0, more_train_min=3),
    Source("colobot-sounds", "colobot-common-sounds", "sounds", r"colobot/sounds/.*" + AUDIO_EXT, 0,
           more_train_min=3),
    Source("hyperrogue-sounds", "hyperrogue-music", "sounds", r"hyperrogue/sounds/.*" + AUDIO_EXT, 0,
           more_train_min=3),
]

PACKAGES = sorted({s.package for s in SOURCES} | {SOUNDFONT_PKG})
assert not RESERVED & set(PACKAGES), "a reserved evaluation package is in the corpus list"
assert not UNSEEN & set(PACKAGES), "a package of the unseen development set is in the corpus list"
assert set(PACKAGES) <= set(LICENCES), set(PACKAGES) - set(LICENCES)


# --------------------------------------------------------------------------------------------------
# helpers


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big")


def split_of(key: str) -> str:
    # salted differently from the visiting order so that the two are independent
    return "valid" if key_hash("split:" + key) % 1000 < VALID_PERMILLE else "train"


def db(x: float) -> float:
    return 10.0 * np.log10(max(x, 1e-20))


def rms_db(x: np.ndarray) -> float:
    return db(float(np.mean(np.square(x, dtype=np.float64)))) if len(x) else -200.0


def frame_db(x: np.ndarray, frame: int) -> np.ndarray:
    n = len(x) // frame
    if n == 0:
        return np.array([rms_db(x)])
    f = x[: n * frame].astype(np.float64).reshape(n, frame)
    return 10.0 * np.log10(np.maximum(np.mean(f * f, axis=1), 1e-20))


def is_silent(x: np.ndarray) -> bool:
    if rms_db(x) < SILENT_RMS_DB:
        return True
    return float(np.mean(frame_db(x, SR // 20) > ACTIVE_DB)) < MIN_ACTIVE


def trim(x: np.ndarray) -> np.ndarray:
    """Cut leading/trailing silence of a short clip (10 ms frames, 45 dB under the peak frame)."""
    fr = SR // 100
    lv = frame_db(x, fr)
    thr = max(-65.0, float(lv.max()) - 45.0)
    on = np.nonzero(lv > thr)[0]
    if len(on) == 0:
        return x[:0]
    a = max(0, on[0] * fr - 2 * fr)
    b = min(len(x), (on[-1] + 1) * fr + 2 * fr)
    return x[a:b]


def load_48k_mono(path: Path) -> tuple[np.ndarray, int]:
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    x = data.mean(axis=1)
    if sr != SR:
        x = soxr.resample(x, sr, SR, quality="VHQ").astype(np.float32)
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak > 0.999:  # lossy decoding / resampling overshoot: scale the whole file, never clip
        x = x * (0.999 / peak)
    return x, sr


def file_rate(path: Path) -> int:
    try:
        return sf.info(str(path)).samplerate
    except Exception:
        return 0


def safe_stem(rel: str) -> str:
    parts = Path(rel).with_suffix("").parts[-2:]
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", "__".join(parts)).strip("_")[:80]
    return f"{s}_{hashlib.sha1(rel.encode()).hexdigest()[:6]}"


def package_version(root: Path, pkg: str) -> str:
    debs = sorted((root / "_build" / "debs").glob(f"{pkg}_*.deb"))
    if not debs:
        return ""
    return debs[-1].name.split("_")[1].replace("%3a", ":")


def deb_size(root: Path, pkg: str) -> int:
    debs = sorted((root / "_build" / "debs").glob(f"{pkg}_*.deb"))
    return debs[-1].stat().st_size if debs else 0


def list_source_files(root: Path, src: Source) -> list[tuple[str, Path]]:
    base = root / "_build" / "ext" / src.package
    if not base.is_dir():
        raise SystemExit(f"missing extracted package {base} (run scripts/build_corpus.sh)")
    inc = re.compile(src.include, re.IGNORECASE)
    exc = re.compile(src.exclude, re.IGNORECASE) if src.exclude else None
    out = []
    for dirpath, dirnames, files in os.walk(base):
        dirnames.sort()
        for f in sorted(files):
            p = Path(dirpath) / f
            rel = p.relative_to(base).as_posix()
            if p.is_symlink() or not inc.search(rel) or (exc and exc.search(rel)):
                continue
            out.append((rel, p))
    # visiting order: hash of package/rel (deterministic, mixes folders, languages, albums)
    out.sort(key=lambda t: (key_hash(f"{src.package}/{t[0]}"), t[0]))
    return out


def render_midi(root: Path, src: Source, rel: str, mid: Path) -> Path:
    out = root / "_build" / "render" / src.package / (rel.replace("/", "__") + ".wav")
    if out.exists() and out.stat().st_size > 44:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    sf3 = root / "_build" / "ext" / SOUNDFONT_PKG / SOUNDFONT
    tmp = out.with_suffix(".tmp.wav")
    # float output: no dither noise, bit-exact re-renders; reverb on (natural), chorus off.
    cmd = ["fluidsynth", "-ni", "-q", "-R", "1", "-C", "0", "-g", "0.3", "-r", str(SR),
           "-O", "float", "-T", "wav", "-o", "synth.cpu-cores=1", "-F", str(tmp), str(sf3), str(mid)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp.replace(out)
    return out


# --------------------------------------------------------------------------------------------------
# building one source


def build_source(args: tuple[str, Source]) -> tuple[list[dict], dict]:
    root = Path(args[0])
    src = args[1]
    files = list_source_files(root, src)
    cap = src.caps_s()
    got = {"train": 0.0, "valid": 0.0}
    rows: list[dict] = []
    seen_md5: set[str] = set()
    pending: dict[str, list] = {"train": [], "valid": []}  # short clips waiting to be concatenated
    counters = {"train": 0, "valid": 0}
    info = {"files_seen": 0, "files_used": 0, "skipped_rate": 0, "skipped_dup": 0, "silent": 0, "dropped_short": 0}
    licence = LICENCES[src.package]
    version = package_version(root, src.package)

    def outdir(split: str) -> Path:
        d = root / "audio" / split / src.category / src.name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def emit(split: str, name: str, x: np.ndarray, kind: str, source: str, start: str, orig_sr: str) -> None:
        path = outdir(split) / name
        sf.write(str(path), x, SR, format="FLAC", subtype="PCM_16")
        rows.append({
            "path": path.relative_to(root).as_posix(), "split": split, "category": src.category,
            "source_id": src.name, "package": src.package, "version": version, "licence": licence,
            "duration_s": f"{len(x) / SR:.3f}", "orig_sr": orig_sr, "kind": kind, "start_s": start,
            "rms_dbfs": f"{rms_db(x):.1f}", "source": source,
        })
        got[split] += len(x) / SR

    def flush(split: str) -> None:
        clips = pending[split]
        if not clips:
            return
        gap = np.zeros(int(GAP_S * SR), dtype=np.float32)
        pieces = []
        for i, (_, _, c) in enumerate(clips):
            if i:
                pieces.append(gap)
            pieces.append(c)
        x = np.concatenate(pieces)
        pending[split] = []
        if len(x) < MIN_SEG_S * SR:
            info["dropped_short"] += 1
            return
        counters[split] += 1
        rates = sorted({r for _, r, _ in clips})
        emit(split, f"concat_{counters[split]:04d}.flac", x, "concat",
             ";".join(rel for rel, _, _ in clips), "", "/".join(map(str, rates)))

    def pending_len(split: str) -> float:
        clips = pending[split]
        return sum(len(c) for _, _, c in clips) / SR + GAP_S * max(0, len(clips) - 1)

    for rel, path in files:
        split = split_of(f"{src.package}/{rel}")
        if got[split] + (pending_len(split) if pending[split] else 0) >= cap[split]:
            if all(got[s] + pending_len(s) >= cap[s] for s in cap):
                break
            continue
        info["files_seen"] += 1
        if src.render:
            path = render_midi(root, src, rel, path)
        else:
            digest = hashlib.md5(path.read_bytes()).hexdigest()
            if digest in seen_md5:
                info["skipped_dup"] += 1
                continue
            seen_md5.add(digest)
        sr = file_rate(path)
        if sr < MIN_SR:
            info["skipped_rate"] += 1
            continue
        try:
            x, sr = load_48k_mono(path)
        except Exception as e:  # unreadable file: report and go on
            print(f"  [{src.name}] cannot read {rel}: {e}", file=sys.stderr)
            continue
        used = False
        if len(x) < SHORT_S * SR:
            c = trim(x)
            if len(c) < 0.1 * SR or rms_db(c) < SILENT_RMS_DB:
                info["silent"] += 1
                continue
            if pending[split] and pending_len(split) + GAP_S + len(c) / SR > SEG_S:
                flush(split)
            pending[split].append((rel, sr, c))
            used = True
            if got[split] + pending_len(split) >= cap[split]:
                flush(split)
        else:
            win = int(SEG_S * SR)
            n_full = len(x) // win
            starts = [i * win for i in range(n_full)]
            if len(x) - n_full * win >= MIN_TAIL_S * SR:
                starts.append(n_full * win)
            k = int(MAX_PER_FILE_S // SEG_S)
            if len(starts) > k:  # spread the windows over the whole file
                idx = np.round(np.linspace(0, len(starts) - 1, k)).astype(int)
                starts = [starts[i] for i in sorted(set(idx.tolist()))]
            for _j, s in enumerate(starts):
                if got[split] >= cap[split]:
                    break
                seg = x[s: s + win]
                if is_silent(seg):
                    info["silent"] += 1
                    continue
                kind = "render" if src.render else "window"
                emit(split, f"{safe_stem(rel)}_{s // win:03d}.flac", seg, kind, rel, f"{s / SR:.2f}", str(sr))
                used = True
        info["files_used"] += int(used)
    for s in ("train", "valid"):
        flush(s)
    info.update({"train_min": got["train"] / 60, "valid_min": got["valid"] / 60, "files_total": len(files)})
    return rows, info


# --------------------------------------------------------------------------------------------------
# commands

FIELDS = ["path", "split", "category", "source_id", "package", "version", "licence", "duration_s",
          "orig_sr", "kind", "start_s", "rms_dbfs", "source"]


def cmd_build(root: Path, jobs: int) -> None:
    for d in ("audio", "licences"):
        if (root / d).exists():
            shutil.rmtree(root / d)
    # big sources first for load balance; results are re-sorted, so the order does not matter
    order = sorted(SOURCES, key=lambda s: -sum(s.caps_s().values()))
    tasks = [(str(root), s) for s in order]
    with Pool(jobs) as pool:
        results = dict(zip([s.name for s in order], pool.map(build_source, tasks, chunksize=1)))
    rows = [r for s in SOURCES for r in results[s.name][0]]
    rows.sort(key=lambda r: r["path"])
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    # file lists in the format flowdec's trainer reads (paths relative to the list)
    for split in ("train", "valid"):
        sel = [r for r in rows if r["split"] == split]
        (root / f"{split}.txt").write_text("".join(r["path"] + "\n" for r in sel))
        for cat in ("music", "speech", "sounds"):
            (root / f"{split}_{cat}.txt").write_text("".join(r["path"] + "\n" for r in sel if r["category"] == cat))
    # licences and package table
    (root / "licences").mkdir()
    used_min: dict[str, float] = defaultdict(float)
    for r in rows:
        used_min[r["package"]] += float(r["duration_s"]) / 60
    with open(root / "packages.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["package", "version", "deb_bytes", "licence", "minutes_used"])
        for pkg in PACKAGES:
            cp = root / "_build" / "ext" / pkg / "usr" / "share" / "doc" / pkg / "copyright"
            if cp.exists():
                shutil.copyfile(cp, root / "licences" / f"{pkg}.copyright")
            w.writerow([pkg, package_version(root, pkg), deb_size(root, pkg), LICENCES[pkg],
                        f"{used_min.get(pkg, 0.0):.2f}"])
    # statistics
    lines = []
    tot: dict[tuple[str, str], float] = defaultdict(float)
    cnt: dict[tuple[str, str], int] = defaultdict(int)
    for r in rows:
        tot[(r["category"], r["split"])] += float(r["duration_s"]) / 60
        cnt[(r["category"], r["split"])] += 1
    lines.append(f"{'category':<8} {'train min':>10} {'valid min':>10} {'total min':>10} {'segments':>9}")
    for cat in ("music", "speech", "sounds"):
        t, v = tot[(cat, "train")], tot[(cat, "valid")]
        lines.append(f"{cat:<8} {t:>10.2f} {v:>10.2f} {t + v:>10.2f} {cnt[(cat, 'train')] + cnt[(cat, 'valid')]:>9}")
    T = sum(v for (c, s), v in tot.items() if s == "train")
    V = sum(v for (c, s), v in tot.items() if s == "valid")
    lines.append(f"{'all':<8} {T:>10.2f} {V:>10.2f} {T + V:>10.2f} {len(rows):>9}")
    lines.append("")
    lines.append(f"{'source':<26} {'cat':<7} {'train':>7} {'valid':>7} {'files used/total':>17} "
                 f"{'silent':>7} {'<rate':>6} {'dup':>5}")
    for s in SOURCES:
        i = results[s.name][1]
        lines.append(f"{s.name:<26} {s.category:<7} {i['train_min']:>7.2f} {i['valid_min']:>7.2f} "
                     f"{i['files_used']:>8}/{i['files_total']:<8} {i['silent']:>7} {i['skipped_rate']:>6} "
                     f"{i['skipped_dup']:>5}")
    lines.append("")
    lines.append(f"debs: {sum(deb_size(root, p) for p in PACKAGES) / 1e6:.1f} MB in {len(PACKAGES)} packages")
    text = "\n".join(lines) + "\n"
    (root / "stats.txt").write_text(text)
    print(text, end="")


def cmd_inventory(root: Path) -> None:
    for s in SOURCES:
        files = list_source_files(root, s)
        if s.render:
            print(f"{s.name:<26} {len(files):>5} MIDI files")
            continue
        mins = defaultdict(float)
        for _, p in files:
            try:
                i = sf.info(str(p))
                mins[i.samplerate] += i.duration / 60
            except Exception:
                mins["unreadable"] += 0
        ok = sum(v for k, v in mins.items() if isinstance(k, int) and k >= MIN_SR)
        print(f"{s.name:<26} {len(files):>5} files  {ok:7.1f} min >= {MIN_SR} Hz  "
              + " ".join(f"{k}:{v:.1f}" for k, v in sorted(mins.items(), key=lambda t: str(t[0]))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["packages", "inventory", "build"])
    ap.add_argument("root", nargs="?", default="/work/corpus")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    if a.command == "packages":
        print("\n".join(PACKAGES))
    elif a.command == "inventory":
        cmd_inventory(Path(a.root))
    else:
        cmd_build(Path(a.root), a.jobs)


if __name__ == "__main__":
    main()
