#!/usr/bin/env bash
# Build flowdec's training corpus from Debian data packages (see docs/corpus.md).
#
#   scripts/build_corpus.sh [CORPUS_DIR]        (default /work/corpus; never inside the repository)
#
# Environment: PYTHON (default: the repo's .venv/bin/python, else python3; needs numpy, soundfile, soxr),
#              JOBS (parallel conversion jobs, default 2), NICE (niceness, default 10),
#              APT_UPDATE=1 to force `apt-get update` first, FETCH_ONLY=1 to stop after download+extract.
# Needs: apt-get + dpkg-deb (Debian bookworm main), root to install fluidsynth if it is missing.
# Re-runnable: downloaded .debs, extracted packages and MIDI renders are cached in CORPUS_DIR/_build;
# the outputs (audio/, manifest.csv, lists, stats) are rebuilt from scratch, identically, each run.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
ROOT="${1:-${CORPUS_DIR:-/work/corpus}}"
JOBS="${JOBS:-2}"
NICE="${NICE:-10}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
TOOLS="$HERE/corpus_tools.py"
RESERVED="klettres-data fretsonfire-songs-muldjord fretsonfire-songs-sectoid hydrogen-drumkits singularity-music alsa-utils"

mkdir -p "$ROOT"
ROOT="$(cd "$ROOT" && pwd)"
case "$ROOT/" in "$REPO/"*) echo "error: the corpus must live outside the repository ($REPO)" >&2; exit 2;; esac

t0=$(date +%s)
"$PYTHON" -c "import numpy, soundfile, soxr" || { echo "error: $PYTHON lacks numpy/soundfile/soxr" >&2; exit 2; }
mapfile -t PKGS < <("$PYTHON" "$TOOLS" packages)
for p in "${PKGS[@]}"; do
  for r in $RESERVED; do
    [[ "$p" == "$r" ]] && { echo "error: $p is reserved for evaluation" >&2; exit 2; }
  done
done

SUDO=""
[[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null && SUDO="sudo"
if [[ "${APT_UPDATE:-0}" == 1 ]] || ! apt-cache show "${PKGS[0]}" >/dev/null 2>&1; then
  $SUDO apt-get update
fi
if ! command -v fluidsynth >/dev/null; then
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends fluidsynth
fi

# 1. download (cached) -- data packages only, no dependencies needed since we only extract them
DEBS="$ROOT/_build/debs"
mkdir -p "$DEBS"
chmod 777 "$DEBS" 2>/dev/null || true   # lets apt's _apt sandbox user write here
missing=()
for p in "${PKGS[@]}"; do
  compgen -G "$DEBS/${p}_*.deb" >/dev/null || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "downloading ${#missing[@]} packages: ${missing[*]}"
  (cd "$DEBS" && apt-get download "${missing[@]}")
fi

# 2. extract (cached; a marker records which .deb was extracted)
for p in "${PKGS[@]}"; do
  deb=$(ls "$DEBS/${p}"_*.deb | sort | tail -n 1)
  dst="$ROOT/_build/ext/$p"
  if [[ ! -f "$dst/.extracted" || "$(cat "$dst/.extracted")" != "$(basename "$deb")" ]]; then
    rm -rf "$dst"; mkdir -p "$dst"
    dpkg-deb -x "$deb" "$dst"
    basename "$deb" > "$dst/.extracted"
  fi
done
echo "debs: $(du -cb "$DEBS"/*.deb | tail -n 1 | awk '{printf "%.1f MB", $1/1e6}') in ${#PKGS[@]} packages"

if [[ "${FETCH_ONLY:-0}" == 1 ]]; then echo "FETCH_ONLY=1: stopping after extraction"; exit 0; fi

# 3. render MIDI, cut, resample, write FLAC segments + manifest + split lists
nice -n "$NICE" "$PYTHON" "$TOOLS" build "$ROOT" --jobs "$JOBS"

echo "corpus: $ROOT  (manifest: $ROOT/manifest.csv, $(du -sh "$ROOT/audio" | cut -f1) of FLAC)"
echo "took $(( $(date +%s) - t0 )) s"
