"""Parameter blobs of a binary Caffe ``.caffemodel``, read without Caffe or protobuf.

A small protobuf wire-format decoder is enough: the blobs are plain packed float32
and only three messages (NetParameter, LayerParameter, BlobProto) are walked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


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
