# The built-in model's recipe steps that every training script shares (sourced, not run), so the CPU
# script (train_default_model.sh) and the GPU one (train_on_gpu.sh) code the pairs and export alike.
# Needs FLOWDEC (the flowdec command line) set by the sourcing script.

# code_pairs CORPUS NDAC PAIRS DEVICE: each training file coded at one of the PAIR_CODEBOOKS counts
# (default 2 3 4 5: the rate plan's cheapest entries for them, 2.6, 4.35, 5.1 and 7.85 kbit/s), chosen by
# its position in the list, so the rates share the corpus without coding it once per rate; the coded side
# gets the side channel of its rate (the layout configs/default-rate-plan.json gives that count; ENVELOPE
# forces one layout for all; HARMONIC_REDRAW=HZ redraws its voiced harmonics below HZ at the clean side's pitch,
# for a postfilter export_default_model then exports with the same setting). On CUDA the rates run at once. PAIRS_EVERY=N codes only every Nth training
# file (a large corpus on a short lease); PAIRS_OFFSET=J (0 ... N-1, default 0) picks which of each N, so a
# later run can train on files an earlier one did not code.
RATE_PLAN=${RATE_PLAN:-configs/default-rate-plan.json}
PAIR_CODEBOOKS=${PAIR_CODEBOOKS:-2 3 4 5}

code_pairs() {
  local corpus=$1 ndac=$2 pairs=$3 device=$4 i=0 k
  local -a counts=($PAIR_CODEBOOKS)
  mkdir -p "$pairs"
  for k in "${counts[@]}"; do
    awk -v e="${PAIRS_EVERY:-1}" -v o="${PAIRS_OFFSET:-0}" 'NR % e == o % e' "$corpus/train.txt" |
      awk -v i=$i -v n=${#counts[@]} -v root="$corpus" 'NR % n == i { print root "/" $0 }' > "$pairs/clean-nq$k.txt"
    if [[ $device == cuda* ]]; then _code_rate "$pairs" "$ndac" $k "$device" & else _code_rate "$pairs" "$ndac" $k "$device"; fi
    i=$((i + 1))
  done
  wait
  cat "$pairs"/nq*/train.txt > "$pairs/train.txt"
  cat "$pairs"/nq*/validation.txt > "$pairs/validation.txt"
}

_plan_layout() {  # K: the side-channel layout the rate plan gives K codebooks asked for by count (its cheapest)
  $PY -c 'import json, sys; print(next(e["envelope"] for e in json.load(open(sys.argv[1]))
                                       if e["codebooks"] == int(sys.argv[2])))' "$RATE_PLAN" "$1"
}

_code_rate() {  # PAIRS NDAC K DEVICE
  $FLOWDEC train prepare-pairs "$1/clean-nq$3.txt" --ndac "$2" -o "$1/nq$3" -n "$3" \
    --validation-fraction 0.05 --test-fraction 0 --device "$4" -q --envelope "${ENVELOPE:-$(_plan_layout "$3")}" \
    ${HARMONIC_REDRAW:+--harmonic-redraw "$HARMONIC_REDRAW"}
}

# trained_with MODEL: the codebook counts MODEL's postfilter was trained at, and PAIR_CODEBOOKS: what the
# card of a postfilter continued from MODEL's on these pairs records (export_default_model's TRAINED_CODEBOOKS)
trained_with() {
  $PY -c 'import json, sys
card = json.load(open(sys.argv[1]))
kbps = set(card["trained_bitrates_kbps"])
print(" ".join(sorted({str(e["codebooks"]) for e in card["rate_plan"] if e["kbps"] in kbps} | set(sys.argv[2:]), key=int)))' \
    "$1/flowdec.json" $PAIR_CODEBOOKS
}

# export_default_model DEST NDAC POSTFILTER: the model folder as the package ships it (default NFE and
# temperature as DEFAULT_NFE and TEMPERATURE say, 6 and 0.25; the side channels by the rate plan; the
# postfilter's weights stored as float16, which keeps the folder inside the 25 MB budget).
export_default_model() {
  $FLOWDEC train export "$1" --ndac "$2" --postfilter "$3" --name flowdec-small \
    --licence "MIT (weights); data: free Debian packages" \
    --description "Small built-in FlowDec-style model: NDAC 75 Hz, 10x1024 codebooks (0.75-7.5 kbit/s of codes; 0.95-11.65 kbit/s with the side channels of each rate) + a frame-wise flow postfilter told the input's pitch; trained on audio from Debian main packages (their list and licences: docs/corpus.md and docs/models.md at https://github.com/flowdec/flowdec-cli)" \
    --trained-codebooks "$(echo ${TRAINED_CODEBOOKS:-$PAIR_CODEBOOKS} | tr ' ' ',')" --default-nfe "${DEFAULT_NFE:-6}" \
    --temperature "${TEMPERATURE:-0.25}" --envelope bands15 --rate-plan "$RATE_PLAN" \
    --envelope-before-postfilter --postfilter-dtype float16 ${HARMONIC_REDRAW:+--harmonic-redraw "$HARMONIC_REDRAW"} -f
}
