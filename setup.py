"""Which packages and extras this build has: see build_backend/emotion_build.py for why it varies.

A wheel (``pip install ".[client]"``) holds ``shared`` and ``client`` only; the ``model``,
``server`` and ``train`` extras pull the server code and checkpoint in as the local distribution
``packaging/server`` (``emotion-service-server``). An editable install maps every package of the
checkout and lists the server's dependencies itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "build_backend"))
import requirements as req  # noqa: E402

EDITABLE = os.environ.get("EMOTION_BUILD_EDITABLE") == "1"
SELF = "emotion-service"

packages = find_packages(include=["shared", "shared.*", "client", "client.*"])
package_data: dict[str, list[str]] = {"shared": ["py.typed"]}
scripts = list(req.CLIENT_SCRIPTS)
if EDITABLE:
    packages += find_packages(include=[f"{p}{s}" for p in req.SERVER_PACKAGES for s in ("", ".*")])
    package_data.update(req.SERVER_PACKAGE_DATA)
    scripts += req.SERVER_SCRIPTS
    model = req.MODEL
    server = [f"{SELF}[model]", *req.SERVER]
    train = [f"{SELF}[model]", *req.TRAIN]
else:
    server_dist = f"emotion-service-server @ {(ROOT / 'packaging' / 'server').as_uri()}"
    model = [server_dist.replace(" @", "[model] @")]
    server = [server_dist.replace(" @", "[server] @")]
    train = [server_dist.replace(" @", "[train] @")]


setup(
    options=req.fresh_build_options("emotion-build-"),  # never a stale ./build
    packages=packages,
    package_data=package_data,
    entry_points={"console_scripts": scripts},
    extras_require={
        "model": model,
        "server": server,
        "train": train,
        "client": req.CLIENT,
        "webcam": [f"{SELF}[client]", *req.WEBCAM],
        "camera": [f"{SELF}[client]", *req.CAMERA],
        "plot": [f"{SELF}[client]", *req.PLOT],
        "dev": [f"{SELF}[server,train,client,webcam,camera,plot]", *req.DEV],
    },
)
