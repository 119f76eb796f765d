#!/usr/bin/env bash
# Rebuild the built-in default model ("flowdec-small") from scratch: corpus -> NDAC -> coded pairs ->
# sigma_y -> postfilter -> export into the package -> evaluation. CPU-only by default; every training
# stage resumes from its last checkpoint when re-run. See docs/models.md for what was run and measured.
#
#   scripts/train_default_model.sh                 # NDAC_MINUTES=30 PF_MINUTES=25 by default
#   NDAC_STEPS=20000 PF_STEPS=20000 scripts/train_default_model.sh    # step budgets instead of minutes
#   FROM_SHIPPED=1 NDAC_MINUTES=0 PF_MINUTES=80 scripts/train_default_model.sh
#       # on a new machine: continue from the weights in the package instead of from scratch (the codec
#       # kept as shipped when NDAC_MINUTES=0; the postfilter starts from the shipped EMA weights)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CORPUS=${CORPUS:-/work/corpus}
RUNS=${RUNS:-/work/runs}
NAME=flowdec-small
DEST=src/flowdec_cli/assets/models/$NAME
FLOWDEC="$PY -m flowdec_cli"
source scripts/default_model_steps.sh
[ "${FROM_SHIPPED:-0}" = 1 ] && TRAINED_CODEBOOKS=${TRAINED_CODEBOOKS:-$(trained_with "$DEST")}

[ -f "$CORPUS/manifest.csv" ] || scripts/build_corpus.sh "$CORPUS"

# The configs name /work/corpus and /work/runs; every path is passed here, so CORPUS and RUNS decide.
train_for() {  # train_for STAGE CONFIG MINUTES STEPS [ARGS...]: a wall-clock budget (or a step budget)
  local stage=$1 config=$2 minutes=$3 steps=$4 resume=()
  shift 4
  if [ -f "$RUNS/default-$stage/checkpoints/latest" ]; then
    resume=(--resume)
  elif [ "${FROM_SHIPPED:-0}" = 1 ]; then
    resume=(--set "train.init_from=\"$PWD/$DEST\"")
  fi
  [ -z "$steps" ] && [ "$minutes" = 0 ] && return 0
  if [ -n "$steps" ]; then
    $FLOWDEC train "$stage" "$config" --threads 2 --out "$RUNS/default-$stage" --max-steps "$steps" "$@" "${resume[@]}"
  else
    timeout --signal=TERM "$((minutes * 60))" \
      $FLOWDEC train "$stage" "$config" --threads 2 --out "$RUNS/default-$stage" "$@" "${resume[@]}" || true
  fi
}

# 1. the codec
train_for ndac configs/default-ndac.toml "${NDAC_MINUTES:-30}" "${NDAC_STEPS:-}" \
  --set "data.train=[\"$CORPUS/train.txt\"]" --set "data.validation=[\"$CORPUS/valid.txt\"]"
if [ -f "$RUNS/default-ndac/checkpoints/latest" ]; then
  NDAC_CKPT="$RUNS/default-ndac/checkpoints/$(cat "$RUNS/default-ndac/checkpoints/latest")"
else
  NDAC_CKPT="$DEST"  # FROM_SHIPPED with no codec training: the codec in the package
fi

# 2. coded pairs (scripts/default_model_steps.sh)
PAIRS=$RUNS/default-pairs
code_pairs "$CORPUS" "$NDAC_CKPT" "$PAIRS" cpu

# 3. beta and the per-band sigma_y curve (official heuristics), then the postfilter
# deterministic (seed 302); follows re-coded pairs
$FLOWDEC train estimate-sigma configs/default-postfilter.toml --pairs "$PAIRS/train.txt" -o "$PAIRS/sigma.json" -f
train_for postfilter configs/default-postfilter.toml "${PF_MINUTES:-25}" "${PF_STEPS:-}" \
  --set "data.train=[\"$PAIRS/train.txt\"]" --set "data.validation=[\"$PAIRS/validation.txt\"]" \
  --set "sigma.file=\"$PAIRS/sigma.json\""

# 4. into the package, as the default
export_default_model "$DEST" "$NDAC_CKPT" "$RUNS/default-postfilter"
# the entropy tables follow the codec when it is unchanged (export keeps tables of the same NDAC weights);
# a retrained codec needs new ones, learned from training audio only
[ -f "$DEST/entropy.safetensors" ] || $FLOWDEC train entropy-tables "$DEST" "$CORPUS/train.txt" --every 4
echo "$NAME" > src/flowdec_cli/assets/models/DEFAULT

# 5. quality on the validation split, beside Opus and the codec alone
$PY scripts/evaluate_default_model.py "$DEST" "$CORPUS" --json "$RUNS/default-eval.json"
