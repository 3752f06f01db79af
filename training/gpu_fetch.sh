#!/usr/bin/env bash
# Reassemble what training/gpu_run.sh returned (the device tool's files_at folder) into runs/gpu-<date>/
# and evaluate it on PublicTest (selection split). PrivateTest only once it is chosen: see the model card.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:?usage: $0 FILES_AT_FOLDER}
DST=runs/gpu-$(date +%Y%m%d-%H%M)
mkdir -p "$DST"
cat "$SRC"/best-fp16.safetensors.part* >"$DST/best.safetensors"
cp "$SRC"/*.jsonl "$SRC"/*.json "$SRC"/*.log "$SRC"/*.png "$DST/" 2>/dev/null || true
.venv/bin/emotion-eval --data "${FER2013_PATH:-../shared/data/fer2013.tar.gz}" --split public \
  --checkpoint "$DST/best.safetensors" --out "$DST/eval-public"
echo "checkpoint: $DST/best.safetensors"
echo "next (real photos): training/finetune_soup.sh $DST/best.safetensors runs/rc3/crops $DST/soup" \
  "(crops from python -m training.photo_crops; an s1 stem fine-tunes ~4x slower on the CPU than s1-pool)"
