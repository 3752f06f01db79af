"""Where a batch job's records go: JSON lines (the reply as the API gives it) or CSV (a row per face)."""

from __future__ import annotations

import contextlib
import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol

from client.records import Record
from shared.emotions import EMOTIONS
from shared.protocol import FaceResult

CSV_COLUMNS = [
    "file",
    "frame",
    "ts_ms",
    "face",
    "track_id",
    "x",
    "y",
    "w",
    "h",
    "confidence",
    "dominant",
    *EMOTIONS,
    "error",
]


class Writer(Protocol):
    def write(self, record: Record) -> None: ...


class JsonlWriter:
    """One line per image or video frame: the `/v1/predict` reply plus file (frame, ts_ms, ts), or error."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh

    def write(self, record: Record) -> None:
        self.fh.write(json.dumps(record.to_json(), separators=(",", ":")) + "\n")
        self.fh.flush()


class CsvWriter:
    """One row per face; an image or frame without faces, or a bad file, still gets one row."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh
        self.csv = csv.DictWriter(fh, CSV_COLUMNS, extrasaction="ignore")
        self.csv.writeheader()

    def write(self, record: Record) -> None:
        base: dict[str, Any] = {"file": record.file, "frame": record.frame}
        if record.ts_ms is not None:
            base["ts_ms"] = round(record.ts_ms, 3)
        if record.error is not None:
            self.csv.writerow({**base, "error": f"{record.error.code}: {record.error.message}"})
        elif record.reply is not None and record.reply.faces:
            for i, face in enumerate(record.reply.faces):
                self.csv.writerow({**base, **face_columns(face), "face": i})
        else:
            self.csv.writerow(base)
        self.fh.flush()


def face_columns(face: FaceResult) -> dict[str, Any]:
    b = face.box
    row: dict[str, Any] = {
        "track_id": face.track_id,
        "x": b.x,
        "y": b.y,
        "w": b.w,
        "h": b.h,
        "confidence": round(face.confidence, 6),
        "dominant": face.dominant,
    }
    row.update({name: round(p, 6) for name, p in face.emotions.items()})
    return row


def output_format(path: Path | None, fmt: str | None) -> str:
    if fmt:
        return fmt
    return "csv" if path is not None and path.suffix.lower() == ".csv" else "jsonl"


@contextlib.contextmanager
def open_writer(path: Path | None, fmt: str) -> Iterator[Writer]:
    """`path` None or '-' is stdout."""
    if path is None or str(path) == "-":
        yield CsvWriter(sys.stdout) if fmt == "csv" else JsonlWriter(sys.stdout)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        yield CsvWriter(fh) if fmt == "csv" else JsonlWriter(fh)
