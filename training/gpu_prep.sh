#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before a GPU session's first `run`: puts FER2013 and the wheels
# the GPU machine lacks into git-ignored folders that the device tool carries (.data, .whl).
# The GPU machine has torch, torchvision, numpy, pillow, safetensors, scikit-learn, tqdm, matplotlib;
# it lacks pydantic (the checkpoint format's metadata model). Versions follow this checkout's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .data .whl
cp -u "${FER2013_PATH:-../shared/data/fer2013.tar.gz}" .data/fer2013.tar.gz
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
du -sh .data .whl
