#!/usr/bin/env bash
# Continue training the built-in model on a borrowed GPU machine that has torch but no internet and no
# copy of the corpus, in calls that each fit a short lease (docs/models.md records what was run):
#
#   scripts/train_on_gpu.sh carry       # only unpack the corpus shard this call carried (a sharded pack)
#   scripts/train_on_gpu.sh codec       # GPU tests + benchmarks, then the codec from the shipped weights
#   scripts/train_on_gpu.sh postfilter  # coded pairs from that codec, sigma_y, the postfilter, export
#   scripts/train_on_gpu.sh phase       # an experiment: a phase-carrying D0 behind the shipped encoder
#
# Before: `python scripts/carry_corpus.py pack /work/corpus .gpudata/corpus` here (about 30 MB), and the
# wheels the machine lacks in .whl/; both travel with the repository. Outputs go to $OUT (the files that
# come back): logs, benchmark JSON, metrics, and the exported model folder as a split tar. A corpus packed
# in shards (carry_corpus.py pack --shards N) comes one shard per call, `carry` for all but the last;
# training refuses to start until every shard is unpacked on this (warm) machine.
# Environment: CODEC_SECONDS (default 200) or CODEC_UNTIL (seconds after the start), PF_SECONDS (default
# 170), CODEC_BATCH (default 128) and PF_BATCH (default 32), PAIRS_EVERY (default 1: code every Nth training
# file for the postfilter's pairs), CODEC_LR_FINAL (default 2e-5; empty: x0.9997 a step), SKIP_CHECKS=1,
# TONES (default 0: that many synthetic harmonic tones from scripts/make_harmonic_tones.py join the codec's
# training files), LONG_WINDOW=1 (the codec's mel loss gains an 8,192-point window with 640 bands),
# TRANSPORT (default 0: the weight of the codec's spectral transport loss, loss.transport_weight),
# PHASE_SECONDS (default 400), PHASE_BATCH (default 64), PHASE_INIT (a decoder.pt that travelled with the
# repository: start from it), PHASE_JOINT=1 (the encoder and codebooks learn with the phase decoder, at
# PHASE_LR_ENCODER, default 3e-4; PHASE_FROM_RUN: a joint or tone run's .pt to start all three from), and
# TRANSPORT in phase mode (the weight of the phase decoder's spectral transport loss), DEVICE (default
# cuda), WORK (default /tmp/flowdec-gpu: the corpus, runs and pairs, kept between calls on a warm machine).
set -uo pipefail
case "${1:-}" in carry|codec|postfilter|phase) ;; *) echo "usage: $0 carry|codec|postfilter|phase" >&2; exit 2;; esac
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/flowdec-gpu-out}
WORK=${WORK:-/tmp/flowdec-gpu}
DEVICE=${DEVICE:-cuda}
SHIPPED=$PWD/src/flowdec_cli/assets/models/flowdec-small
FLOWDEC="$PY -m flowdec_cli"
source scripts/default_model_steps.sh
mkdir -p "$OUT" "$WORK"
stamp() { echo "== $(date +%T) $*"; }

if [ -d .whl ] && ! $PY -c "import soundfile, soxr, constriction" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
[ -d /tmp/site ] && export PYTHONPATH=$PYTHONPATH:/tmp/site
CORPUS=$WORK/corpus
if [ -d .gpudata/corpus ]; then  # the shard(s) this call carried; earlier calls' shards are already in
  stamp unpack; $PY scripts/carry_corpus.py unpack .gpudata/corpus "$CORPUS" --jobs "$(nproc)" || exit 1
fi
if [ "${1:-}" = carry ]; then
  $PY scripts/carry_corpus.py complete "$CORPUS"; stamp done; exit 0
fi
$PY scripts/carry_corpus.py complete "$CORPUS" || exit 1

case "${1:-}" in
codec)
  if [ "${SKIP_CHECKS:-0}" != 1 ]; then
    stamp gpu tests
    $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_postfilter.py \
      tests/test_postfilter_long.py 2>&1 | tee "$OUT/gpu-tests.log"
    # the official-size postfilter, compiled, with a per-kernel device profile (docs/performance.md has the
    # eager figures, and CUDA graphs measured no gain: the compiled pass is kernel-bound)
    stamp postfilter benchmark, official size
    $PY benchmarks/postfilter.py --device "$DEVICE" --duration 10 --chunked --compile --profile 25 \
      --json "$OUT/bench-postfilter-compile.json" 2>&1 | tee "$OUT/bench.log"
  fi
  # CODEC_UNTIL: train until this many seconds after the script started (whatever the checks took)
  [ -n "${CODEC_UNTIL:-}" ] && CODEC_SECONDS=$(( CODEC_UNTIL - SECONDS > 60 ? CODEC_UNTIL - SECONDS : 60 ))
  # Batch 128: at 32 an H200 ran 13-15 steps/s, about what launching a step's ~14,000 small ops allows
  # (counted on the CPU); at 128 it ran 4.7-5.2 steps/s, 1.3-1.5x the audio per second.
  # The rate falls from 2e-4 to CODEC_LR_FINAL over the time budget, so the lease ends annealed however
  # many steps the GPU runs: the leases that ended at 1.0-1.4e-4 fell on unseen packages, the one that
  # ended at 6e-5 did not, and annealing one of them on the CPU undid its fall on speech and sounds
  # (docs/models.md, "Annealing the codec"). CODEC_LR_FINAL= (empty) keeps the old x0.9997 per step.
  secs=${CODEC_SECONDS:-200}; lr_final=${CODEC_LR_FINAL-2e-5}
  if [ -n "$lr_final" ]; then schedule=(--set "optim.lr_final=$lr_final"); else schedule=(--set optim.lr_gamma=0.9997); fi
  codec_data="\"$CORPUS/train.txt\""; extra=()
  if [ "${TONES:-0}" -gt 0 ]; then  # steady partials at arbitrary pitches (docs/models.md, "Why the harmonics stick")
    $PY scripts/make_harmonic_tones.py "$WORK/tones" --count "$TONES" || exit 1
    codec_data+=", \"$WORK/tones/train.txt\""
  fi
  if [ "${LONG_WINDOW:-0}" = 1 ]; then  # 6 Hz bins: a partial moved to the next 75 Hz comb line costs loss
    extra+=(--set "loss.mel_windows=[32, 64, 128, 256, 512, 1024, 2048, 8192]"
            --set "loss.mel_bins=[5, 10, 20, 40, 80, 160, 320, 640]")
  fi
  if [ "${TRANSPORT:-0}" != 0 ]; then  # a partial moved towards its place lowers this loss step by step
    extra+=(--set "loss.transport_weight=$TRANSPORT")
  fi
  stamp codec training for "$secs" s
  rm -rf "$WORK/ndac"  # a retried stage starts again from the shipped weights (the trainer refuses a used folder)
  # the trainer ends itself at train.max_seconds (the loop's own clock); timeout only guards a hang
  timeout --signal=TERM "$((secs + 120))" $FLOWDEC train ndac configs/default-ndac.toml --device "$DEVICE" -q \
    --out "$WORK/ndac" --set "train.init_from=\"$SHIPPED\"" --set train.max_seconds="$secs" \
    --set "data.train=[$codec_data]" --set "data.validation=[\"$CORPUS/valid.txt\"]" "${extra[@]}" \
    --set data.batch_size=${CODEC_BATCH:-128} --set data.segment_seconds=0.75 --set data.num_workers=12 \
    --set optim.lr=2e-4 "${schedule[@]}" --set train.val_every=0 --set train.checkpoint_every=500 \
    --set train.tf32=true --set train.amp=\"none\" --set train.tensorboard=false --set train.log_every=50 \
    2>&1 | tail -n 20 | tee "$OUT/codec-train.log"
  cp "$WORK/ndac/metrics.csv" "$OUT/codec-metrics.csv"
  ls "$WORK/ndac/checkpoints"
  # the first check of a new codec: do steady partials above 400 Hz leave the 75 Hz frame-rate comb?
  # (docs/models.md, "Why the harmonics stick"; about a minute on the host's CPU)
  stamp tone pitch of the new codec
  $PY scripts/experiment_tone_pitch.py --model "$WORK/ndac/model" --codebooks 4,10 2>&1 | tee "$OUT/tone-pitch.txt"
  ;;
postfilter)
  NDAC_CKPT=$WORK/ndac  # its latest checkpoint
  PAIRS=$WORK/pairs
  stamp pairs from "$NDAC_CKPT"
  code_pairs "$CORPUS" "$NDAC_CKPT" "$PAIRS" "$DEVICE"
  stamp sigma
  $FLOWDEC train estimate-sigma configs/default-postfilter.toml --pairs "$PAIRS/train.txt" -o "$PAIRS/sigma.json" \
    -f -q --device "$DEVICE"
  # Batch 32: at 64 an H200 ran 17-20 steps/s (about 1,180 items/s) against 34-44 at 32 (up to 1,400):
  # no more audio per second, and half the updates.
  stamp postfilter training for "${PF_SECONDS:-170}" s
  rm -rf "$WORK/postfilter"  # as for the codec: a retry starts from the shipped weights
  timeout --signal=TERM "$((${PF_SECONDS:-170} + 120))" $FLOWDEC train postfilter configs/default-postfilter.toml \
    --device "$DEVICE" -q --out "$WORK/postfilter" --set "train.init_from=\"$SHIPPED\"" \
    --set train.max_seconds="${PF_SECONDS:-170}" \
    --set "data.train=[\"$PAIRS/train.txt\"]" --set "data.validation=[\"$PAIRS/validation.txt\"]" \
    --set "sigma.file=\"$PAIRS/sigma.json\"" --set data.batch_size=${PF_BATCH:-32} --set data.num_workers=12 \
    --set optim.lr=2e-4 --set optim.ema_decay=0.999 --set train.val_every=0 --set train.checkpoint_every=500 \
    --set train.tensorboard=false --set train.log_every=50 \
    2>&1 | tail -n 20 | tee "$OUT/pf-train.log"
  cp "$WORK/postfilter/metrics.csv" "$OUT/pf-metrics.csv"
  cp "$PAIRS/sigma.json" "$OUT/sigma.json"
  stamp export
  TRAINED_CODEBOOKS=${TRAINED_CODEBOOKS:-$(trained_with "$SHIPPED")} \
    export_default_model "$WORK/model" "$NDAC_CKPT" "$WORK/postfilter"
  tar -C "$WORK" -cf - model | split -b 15M - "$OUT/model.tar.part-"
  ;;
phase)
  # docs/models.md, "A decoder that carries phase": the shipped encoder and codes, a new D0 with its phases
  # locked and its advances taught, shown steady tones beside the corpus (with PHASE_JOINT=1 the encoder and
  # codebooks learn too); what comes back is the checkpoint (to go on with PHASE_INIT, PHASE_FROM_RUN or on
  # the CPU with --resume) and the tones it plays
  secs=${PHASE_SECONDS:-400}
  $PY scripts/make_harmonic_tones.py "$WORK/tones" --count "${TONES:-600}" --seed 3 || exit 1
  init=(); [ -n "${PHASE_INIT:-}" ] && init=(--init "$PHASE_INIT")
  [ -n "${PHASE_FROM_RUN:-}" ] && init+=(--from-run "$PHASE_FROM_RUN")
  [ "${PHASE_JOINT:-0}" = 1 ] && init+=(--joint --lr-encoder "${PHASE_LR_ENCODER:-3e-4}")
  [ -n "${TRANSPORT:-}" ] && init+=(--transport-weight "$TRANSPORT")
  rm -rf "$WORK/phase" "$WORK/phase-model"
  stamp phase decoder for "$secs" s
  timeout --signal=TERM "$((secs + 300))" $PY scripts/experiment_phase_decoder.py --out "$WORK/phase" \
    --corpus "$CORPUS" --also "$WORK/tones/train.txt" --device "$DEVICE" --minutes "$($PY -c "print($secs / 60)")" \
    --batch "${PHASE_BATCH:-64}" --workers 12 --threads 4 --no-gate --lock --advance-weight 1 --val-every 500 \
    "${init[@]}" 2>&1 | tail -n 30 | tee "$OUT/phase-train.log"
  cp "$WORK/phase/decoder.pt" "$WORK/phase/log.jsonl" "$OUT/" || exit 1  # no checkpoint: nothing to check
  $PY scripts/experiment_phase_decoder.py --out "$WORK/phase" --no-gate --lock --export "$WORK/phase-model" &&
    $PY scripts/experiment_tone_pitch.py --model "$WORK/phase-model" --codebooks 4,10 --nfe 0 2>&1 |
    tee "$OUT/phase-tone-pitch.txt"
  ;;
esac
stamp done
