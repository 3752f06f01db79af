#!/usr/bin/env bash
# Start, or resume, the long CPU training run in the background at the lowest priority.
#
#   training/cpu_run.sh            start or resume (idempotent: does nothing if it is running)
#   training/cpu_run.sh status     is it running, and the last epoch logged
#   training/cpu_run.sh pause      SIGSTOP (take benchmarks), then `resume` to SIGCONT
#   training/cpu_run.sh stop       SIGTERM; the next start resumes from the last finished epoch
#
# The recipe is fixed here, not on the command line: the one-cycle schedule's length is
# set when the run starts, and `emotion-train --resume` refuses a changed recipe.
# State (last.pt, best.safetensors, log.jsonl, train.log) lives in RUN_DIR, git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${RUN_DIR:-runs/cpu-long}
DATA=${FER2013_PATH:-../shared/data/fer2013.tar.gz}
PY=${PYTHON:-.venv/bin/python}
PIDFILE=$RUN_DIR/pid
mkdir -p "$RUN_DIR"

running() { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

case "${1:-start}" in
  status)
    if running; then echo "running, pid $(cat "$PIDFILE")"; else echo "not running"; fi
    [[ -f $RUN_DIR/log.jsonl ]] && tail -n 1 "$RUN_DIR/log.jsonl"
    exit 0 ;;
  pause) running && kill -STOP "$(cat "$PIDFILE")" && echo paused; exit 0 ;;
  resume) running && kill -CONT "$(cat "$PIDFILE")" && echo resumed; exit 0 ;;
  stop) running && kill -TERM "$(cat "$PIDFILE")" && echo stopped; exit 0 ;;
  start) ;;
  *) echo "usage: $0 [start|status|pause|resume|stop]" >&2; exit 2 ;;
esac

if running; then echo "already running, pid $(cat "$PIDFILE")"; exit 0; fi
[[ -f $DATA ]] || { echo "FER2013 not found at $DATA (set FER2013_PATH)" >&2; exit 1; }

# Recipe (docs/model-card.md records why): ResNet18 s1-pool stem at 48 px, bf16 autocast,
# SGD one-cycle peak 0.1, label smoothing 0.1, EMA of the weights, 100 epochs.
TQDM_MININTERVAL=60 nohup nice -n 19 "$PY" -m training.train \
  --data "$DATA" --out "$RUN_DIR" \
  --stem s1-pool --input-size 48 --epochs 100 --batch-size 128 \
  --opt sgd --lr 0.1 --label-smoothing 0.1 --ema 0.999 --amp auto \
  --device cpu --resume \
  >>"$RUN_DIR/train.log" 2>&1 &
echo $! >"$PIDFILE"
echo "started pid $! (log: $RUN_DIR/train.log, epochs: $RUN_DIR/log.jsonl)"
