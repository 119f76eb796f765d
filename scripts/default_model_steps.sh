# The built-in model's recipe steps that every training script shares (sourced, not run), so the CPU
# script (train_default_model.sh) and the GPU one (train_on_gpu.sh) code the pairs and export alike.
# Needs FLOWDEC (the flowdec command line) set by the sourcing script.

# code_pairs CORPUS NDAC PAIRS DEVICE: each training file coded at one of 4/6/8/10 codebooks (3, 4.5, 6,
# 7.5 kbit/s), chosen by its position in the list, so the four rates share the corpus without coding it
# four times; the side channel (ENVELOPE, default bands15) applied to the coded side. On CUDA the four
# rates run at once. PAIRS_EVERY=N codes only every Nth training file (a large corpus on a short lease).
code_pairs() {
  local corpus=$1 ndac=$2 pairs=$3 device=$4 i k
  mkdir -p "$pairs"
  for i in 0 1 2 3; do
    k=$((4 + 2 * i))
    awk -v e="${PAIRS_EVERY:-1}" 'NR % e == 0' "$corpus/train.txt" |
      awk -v i=$i -v root="$corpus" 'NR % 4 == i { print root "/" $0 }' > "$pairs/clean-nq$k.txt"
    if [[ $device == cuda* ]]; then _code_rate "$pairs" "$ndac" $k "$device" & else _code_rate "$pairs" "$ndac" $k "$device"; fi
  done
  wait
  cat "$pairs"/nq*/train.txt > "$pairs/train.txt"
  cat "$pairs"/nq*/validation.txt > "$pairs/validation.txt"
}

_code_rate() {  # PAIRS NDAC K DEVICE
  $FLOWDEC train prepare-pairs "$1/clean-nq$3.txt" --ndac "$2" -o "$1/nq$3" -n "$3" \
    --validation-fraction 0.05 --test-fraction 0 --device "$4" -q --envelope "${ENVELOPE:-bands15}"
}

# export_default_model DEST NDAC POSTFILTER: the model folder as the package ships it (default NFE,
# temperature and side channel as DEFAULT_NFE, TEMPERATURE, ENVELOPE say; 6, 0.25, bands15).
export_default_model() {
  $FLOWDEC train export "$1" --ndac "$2" --postfilter "$3" --name flowdec-small \
    --licence "MIT (weights); training data: see docs/corpus.md" \
    --description "Small built-in FlowDec-style model: NDAC 75 Hz, 10x1024 codebooks (0.75-7.5 kbit/s) + a frame-wise flow postfilter; trained on Debian-packaged audio (docs/corpus.md, docs/models.md)" \
    --trained-codebooks 4,6,8,10 --default-nfe "${DEFAULT_NFE:-6}" --temperature "${TEMPERATURE:-0.25}" \
    --envelope "${ENVELOPE:-bands15}" --envelope-before-postfilter -f
}
