"""Packages ../../server, ../../training and ../../emotion_service (see pyproject.toml)."""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "build_backend"))
import requirements as req  # noqa: E402

top = [p for p in req.SERVER_PACKAGES if (ROOT / p).is_dir()]  # a server image may leave training out
packages = find_packages(where=str(ROOT), include=[f"{p}{s}" for p in top for s in ("", ".*")])
scripts = [s for s in req.SERVER_SCRIPTS if s.split("= ")[1].split(".")[0] in top]
rel = Path("..", "..")

setup(
    options=req.fresh_build_options("emotion-server-build-"),  # never a stale ./build
    packages=packages,
    package_dir={p: str(rel / p) for p in top},
    package_data={k: v for k, v in req.SERVER_PACKAGE_DATA.items() if k in top},
    install_requires=["emotion-service", *req.BASE],
    extras_require={
        "model": req.MODEL,
        "server": [*req.MODEL, *req.SERVER],
        "train": [*req.MODEL, *req.TRAIN],
    },
    entry_points={"console_scripts": scripts},
)
