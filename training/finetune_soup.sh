#!/usr/bin/env bash
# Model II-e's recipe on any start (docs/model-card.md, "Recipe (as run)"): four short fine-tunes of
# INIT on FER2013 plus real-photo crops, two recipes x two seeds, averaged weight by weight into one
# checkpoint (a model soup), its scores shifted toward the crops' class frequencies
# (training.prior_shift), then scored on PublicTest. Why: a fine-tune on the crops fixes the
# classifier on real photos but costs FER2013; the soup keeps the first and wins back part of the second.
#
#   training/finetune_soup.sh INIT CROPS OUT [DATA]
#
# INIT  base weights, e.g. a long run's best.safetensors (its stem and input size are kept)
# CROPS python -m training.photo_crops ... --out DIR  ->  DIR/crops
# OUT   folder: OUT/<fine-tune>/, OUT/soup.safetensors and its CPU int8 build OUT/soup.int8.xml, OUT/eval-public/
# DATA  FER2013 (default $FER2013_PATH or ../shared/data/fer2013.tar.gz)
# A fine-tune that finished is kept, so a stopped run goes on where it was. FT_ARGS: more
# emotion-train arguments, appended (smoke tests). ~30 minutes on 2 CPU cores.
set -euo pipefail
INIT=${1:?usage: $0 INIT CROPS OUT [DATA]}
CROPS=${2:?usage: $0 INIT CROPS OUT [DATA]}
OUT=${3:?usage: $0 INIT CROPS OUT [DATA]}
DATA=${4:-${FER2013_PATH:-../shared/data/fer2013.tar.gz}}
BIN=${BIN:-$(dirname "$(command -v emotion-train || echo .venv/bin/emotion-train)")}
[[ -f $INIT ]] || { echo "INIT: checkpoint $INIT not found" >&2; exit 1; }
mkdir -p "$OUT"

finetune() {  # NAME SEED EPOCHS CROP_REPEAT FER_LIMIT
  [[ -f $OUT/$1/best.safetensors ]] && return
  # INIT's stem and input size are kept (emotion-train reads them from its metadata)
  # shellcheck disable=SC2086
  if ! "$BIN/emotion-train" --data "$DATA" --init-from "$INIT" \
    --epochs "$3" --lr 0.01 --ema 0 --limit "$5" --seed "$2" --amp auto --out "$OUT/$1" \
    --extra-train "$CROPS" --extra-repeat "$4" ${FT_ARGS:-} >"$OUT/$1.log" 2>&1; then
    echo "$1 failed; the end of $OUT/$1.log:" >&2
    tail -n 3 "$OUT/$1.log" >&2
    exit 1
  fi
  echo "$1: $(tail -n 1 "$OUT/$1/log.jsonl")"
}
# 8,000 FER2013 faces per epoch x 3 epochs, crops x2: the photos' side
finetune s8k-seed0 0 3 2 8000
finetune s8k-seed1 1 3 2 8000
# all of FER2013 x 2 epochs, crops x3: FER2013's side
finetune full-r3-seed0 0 2 3 0
finetune full-r3-seed1 1 2 3 0
"$BIN/python" -m training.interpolate "$OUT"/{s8k-seed0,s8k-seed1,full-r3-seed0,full-r3-seed1}/best.safetensors \
  --out "$OUT/soup.safetensors"
# its prior shift toward the crops' class frequencies (alpha chosen on PublicTest)
"$BIN/python" -m training.prior_shift --crops "$CROPS" --data "$DATA" --checkpoint "$OUT/soup.safetensors" \
  --out "$OUT/soup.safetensors" >"$OUT/prior-shift.log" 2>&1 \
  || { echo "prior shift failed; the end of $OUT/prior-shift.log:" >&2; tail -n 3 "$OUT/prior-shift.log" >&2; exit 1; }
# the soup's own PublicTest, recorded in its header as its validation block (/v1/info shows it)
"$BIN/emotion-eval" --data "$DATA" --split public --tta none --checkpoint "$OUT/soup.safetensors" \
  --out "$OUT/eval-public" --no-progress --bundle "$OUT/soup.safetensors"
# its int8 build beside it, which the server runs on CPUs (training.quantize_classifier)
"$BIN/python" -m training.quantize_classifier --data "$DATA" --checkpoint "$OUT/soup.safetensors" >"$OUT/int8.log" 2>&1 \
  || { echo "int8 build failed; the end of $OUT/int8.log:" >&2; tail -n 3 "$OUT/int8.log" >&2; exit 1; }
