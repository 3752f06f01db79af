#!/usr/bin/env bash
# The GPU standing order (issue 10): train the best recipe, ResNet18 s1 stem @ 48 px, 130 epochs,
# on one GPU in under 10 minutes, and leave the checkpoint and its log in $OUT.
#
# Here, once:   training/gpu_prep.sh
# Device tool, three calls in a row on the same warm machine (FER2013 does not fit in one call):
#   run(command="bash training/gpu_run.sh data", carry=[".data/train-0"], timeout_s=120)
#   run(command="bash training/gpu_run.sh data", carry=[".data/train-1"], timeout_s=120)
#   run(command="bash training/gpu_run.sh", carry=[".data/public", ".whl"], timeout_s=600)
# Back here:    training/gpu_fetch.sh <files_at folder>   (reassembles, evaluates on PublicTest)
#
# Returned files must be under 16 MB each, so the fp16 checkpoint comes back in parts.
set -uo pipefail
cd "$(dirname "$0")/.."
FER=/tmp/fer2013  # outside the work tree: kept on the machine between the calls
PARTS=/tmp/fer-train-parts
PY=${PYTHON:-python3}
untar() { $PY -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" "$@"; }
if [[ ${1:-train} == data ]]; then
  # keep whichever half of the Training archive this call carried; join them once both are here
  mkdir -p "$PARTS" && cp .data/train-*/fer-train.tar.xz.* "$PARTS/" || exit 1
  if [[ -s $PARTS/fer-train.tar.xz.0 && -s $PARTS/fer-train.tar.xz.1 ]]; then
    mkdir -p "$FER" && cat "$PARTS"/fer-train.tar.xz.0 "$PARTS"/fer-train.tar.xz.1 >/tmp/fer-train.tar.xz \
      && untar /tmp/fer-train.tar.xz "$FER" || exit 1
    echo "Training images on the machine: $(find "$FER/train" -name '*.jpg' | wc -l)"
  else
    echo "Training archive halves on the machine: $(cd "$PARTS" && ls); now the other half"
  fi
  exit 0
fi
if [[ ! -d $FER/train ]]; then
  echo "no $FER/train on this machine: call 'bash training/gpu_run.sh data' carrying .data/train-0, then" \
    "carrying .data/train-1, then this one at once, while the machine is warm" >&2
  exit 2
fi
untar .data/public/fer-public.tar.xz "$FER" || exit 1
OUT=${OUT:-/tmp/gpu-out}
EPOCHS=${EPOCHS:-130}
mkdir -p "$OUT"
if ! $PY -c "import pydantic" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || exit 1
fi
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
RUN=/tmp/gpu-run
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/device.txt"
# The budget is 10 minutes a command: stop cleanly before it, keeping the best epoch so far.
timeout "${TRAIN_TIMEOUT:-540}" $PY -m training.train \
  --data "$FER" --out "$RUN" \
  --stem s1 --input-size 48 --epochs "$EPOCHS" --batch-size 128 \
  --opt sgd --lr 0.1 --label-smoothing 0.1 --ema 0.999 --amp auto \
  --device "${DEVICE:-cuda}" ${EXTRA_ARGS:-} 2>&1 | tee "$OUT/train.log" | grep -v '^\s*$' | tail -n 5
$PY - "$RUN" "$OUT" <<'PY'
import sys
from pathlib import Path

import torch

from server.model.checkpoint import load_checkpoint, save_checkpoint

run, out = Path(sys.argv[1]), Path(sys.argv[2])
model, meta = load_checkpoint(run / "best.safetensors")
save_checkpoint(out / "best-fp16.safetensors", model, meta, dtype=torch.float16)
PY
for f in log.jsonl summary.json curves.png; do [[ -f $RUN/$f ]] && cp "$RUN/$f" "$OUT/"; done
split -b 15M -d "$OUT/best-fp16.safetensors" "$OUT/best-fp16.safetensors.part" && rm "$OUT/best-fp16.safetensors"
ls -la "$OUT"
