#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before a GPU session's first `run`: puts FER2013 and the wheels
# the GPU machine lacks into git-ignored folders that the device tool carries.
# The GPU machine has torch, torchvision, numpy, pillow, safetensors, scikit-learn, tqdm, matplotlib;
# it lacks pydantic (the checkpoint format's metadata model). Versions follow this checkout's .venv.
#
# A call carries at most 64 MiB, tracked files included (39 MB, most of it the bundled checkpoint and
# its int8 build); all of FER2013 (44 MB) does not fit beside them. So FER2013 travels without
# PrivateTest (evaluated here, never on the device), xz-compressed, in three calls: the Training archive
# (34 MB) in two halves, .data/train-0 and .data/train-1, then .data/public (PublicTest, 4.5 MB) with
# .whl. See training/gpu_run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=$((64 * 1024 * 1024))
FER=${FER2013_PATH:-../shared/data/fer2013.tar.gz}
mkdir -p .data/public .whl
rm -rf .data/fer2013.tar.gz .data/train  # the old one- and two-call layouts
if [[ ! -s .data/fer-train.tar.xz || ! -s .data/public/fer-public.tar.xz ]]; then
  tmp=$(mktemp -d)
  tar xzf "$FER" -C "$tmp"
  tar cf - -C "$tmp" --sort=name train | xz -9 -T0 >.data/fer-train.tar.xz.part
  tar cf - -C "$tmp" --sort=name --exclude='PrivateTest_*' test | xz -9 -T0 >.data/public/fer-public.tar.xz.part
  rm -rf "$tmp"
  # complete files only: an interrupted run leaves .part files, never a short archive that looks done
  mv .data/fer-train.tar.xz.part .data/fer-train.tar.xz
  mv .data/public/fer-public.tar.xz.part .data/public/fer-public.tar.xz
fi
# The Training archive in two halves, one per call (gpu_run.sh joins them): byte ranges of the file.
size=$(stat -c %s .data/fer-train.tar.xz)
half=$(((size + 1) / 2))
mkdir -p .data/train-0 .data/train-1
head -c "$half" .data/fer-train.tar.xz >.data/train-0/fer-train.tar.xz.0
tail -c +"$((half + 1))" .data/fer-train.tar.xz >.data/train-1/fer-train.tar.xz.1
PIP=${PIP:-.venv/bin/pip}
pkgs=("$@")
[[ ${#pkgs[@]} -gt 0 ]] || pkgs=(pydantic pydantic-core annotated-types typing-inspection)
for p in "${pkgs[@]}"; do
  v=$($PIP show "$p" 2>/dev/null | awk '/^Version:/{print $2}')
  [[ -n $v ]] || { echo "$p is not installed in this venv" >&2; exit 1; }
  ls .whl | grep -qi "^${p//-/_}-$v-" && continue
  $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$p==$v"
done
tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
ok=0
for call in ".data/train-0" ".data/train-1" ".data/public .whl"; do
  # shellcheck disable=SC2086
  total=$((tracked + $(du -cb $call | tail -1 | cut -f1)))
  awk -v c="$call:" -v t="$total" 'BEGIN { printf "call carrying %-20s %5.1f MiB of 64\n", c, t / 1048576 }'
  ((total < LIMIT)) || ok=1
done
exit $ok
