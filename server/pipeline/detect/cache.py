"""The converted SSD weights, cached as safetensors keyed by the caffemodel's hash.

Conversion (:mod:`~server.pipeline.detect.fold`) takes about a second, so it runs once per
machine: the result is kept in the cache directory the caller passes
(``Settings.cache_dir``, ``EMOTION_CACHE_DIR``), outside the repository.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from server.pipeline.detect.caffemodel import read_caffemodel
from server.pipeline.detect.files import DetectorFiles, DetectorWeightsError
from server.pipeline.detect.fold import bn_eps_from_prototxt, convert_caffe
from server.pipeline.detect.prototxt import prototxt_layers

log = logging.getLogger(__name__)

#: Bump when the converted layout changes, so stale caches are not reused.
CONVERTER_VERSION = "1"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(files: DetectorFiles) -> dict[str, torch.Tensor]:
    """The SSD state dict from the Caffe files; unreadable ones raise :class:`DetectorWeightsError`."""
    try:
        blobs = read_caffemodel(files.caffemodel)
        return convert_caffe(blobs, bn_eps_from_prototxt(prototxt_layers(files.prototxt)))
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise DetectorWeightsError(f"cannot read face-detector weights {files.caffemodel}: {exc}") from exc


def load_converted(files: DetectorFiles, cache_dir: str | Path | None) -> dict[str, torch.Tensor]:
    """Converted SSD weights, from ``cache_dir`` when a conversion of this exact caffemodel is there.

    ``None`` converts without caching. The cache is an optimisation only: an unwritable
    cache directory costs a re-conversion, never a failure.
    """
    if cache_dir is None:
        return convert(files)
    digest = file_sha256(files.caffemodel)[:16]
    cache = Path(cache_dir)
    path = cache / f"res10-ssd-{digest}-v{CONVERTER_VERSION}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            log.warning("ignoring unreadable detector cache %s: %s", path, exc)
    state = convert(files)
    tmp: str | None = None
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache, suffix=".tmp")
        os.close(fd)
        save_file(state, tmp, metadata={"source": files.caffemodel.name, "sha256": digest})
        os.replace(tmp, path)  # atomic: concurrent workers never read a half-written file
        log.info("cached converted face-detector weights at %s", path)
    except (OSError, SafetensorError) as exc:
        log.warning("could not cache detector weights in %s: %s", cache, exc)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return state
