"""What a batch job asks and gets back: the per-request options, and one record per image or frame."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.protocol import ErrorDetail, PredictResponse, StreamControl


@dataclass(frozen=True)
class JobOptions:
    """The API's per-request options (`POST /v1/predict` query, stream control) and video sampling."""

    max_faces: int | None = None
    min_confidence: float | None = None
    detect: bool = True
    every: int = 1  # video: process every Nth frame
    smoothing: float | None = None  # server video: the stream's per-track EMA factor

    def query(self) -> dict[str, str]:
        q = {"detect": "true" if self.detect else "false"}
        if self.max_faces is not None:
            q["max_faces"] = str(self.max_faces)
        if self.min_confidence is not None:
            q["min_confidence"] = str(self.min_confidence)
        return q

    def control(self) -> StreamControl:
        return StreamControl(
            max_faces=self.max_faces,
            min_confidence=self.min_confidence,
            detect=self.detect,
            smoothing=self.smoothing,
        )


@dataclass
class Record:
    """One image or one video frame: its reply, or why it has none."""

    file: str
    reply: PredictResponse | None = None
    frame: int | None = None  # video: index of the frame in the file, from 0
    ts_ms: float | None = None  # video: the frame's own timestamp in the file
    error: ErrorDetail | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"file": self.file}
        if self.frame is not None:
            ts = round(self.ts_ms or 0.0, 3)
            doc.update(frame=self.frame, ts_ms=ts, ts=round(ts / 1000.0, 6))  # ts: what `plot` reads
        if self.error is not None:
            doc["error"] = self.error.model_dump()
        elif self.reply is not None:
            doc.update(self.reply.model_dump(mode="json"))
        return doc


def failed(file: str, code: str, message: str, **where: Any) -> Record:
    return Record(file, error=ErrorDetail(code=code, message=message), **where)
