"""Batch and video jobs: files, folders and videos in, one reply per image or frame out.

One implementation behind `emotion-client analyze` (in-process by default, `--server URL` for a
server) and `emotion-client predict` (the same job against a server by default): images go one
model batch at a time in-process or as concurrent `POST /v1/predict` calls to a server; a video is
read frame by frame (every frame, or every Nth) with its own frame index and timestamp, and its
faces keep a track id across frames (the in-process tracker, or the server's over one WebSocket
sent in lockstep so no frame is dropped). A file that cannot be read or decoded is reported and
skipped; a server that cannot be reached or refuses the key ends the job.

Where the work is done is `client.backends`; where the records go, `client.writers`.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from client.backends import Backend
from client.capture import open_video
from client.errors import ClientError, UsageError
from client.records import Record, failed
from client.sources import IMAGE_SUFFIXES, VideoFrames
from client.writers import Writer
from shared.protocol import FaceResult

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})


def expand(paths: Sequence[Path]) -> list[Path]:
    """Folders become their image and video files (recursively, in name order); files stay as given,
    whatever their suffix, so a wrong file named on the command line is reported, not ignored."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            media = IMAGE_SUFFIXES | VIDEO_SUFFIXES
            out.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in media))
        else:
            out.append(path)
    return out


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def require_cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise UsageError("annotated images need OpenCV: pip install 'emotion-service[camera]'") from exc
    return cv2


@dataclass
class Summary:
    files: int = 0
    images: int = 0
    videos: int = 0
    frames: int = 0
    faces: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)  # (file, code)
    plots: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    reconnects: int = 0

    def line(self) -> str:
        done = self.images + self.frames
        rate = f"{done / self.seconds:.1f}/s" if self.seconds > 0 else "-"
        parts = [f"{self.files} file(s): {self.images} image(s)"]
        if self.videos:
            parts.append(f"{self.videos} video(s) with {self.frames} frame(s)")
        text = ", ".join(parts) + f"; {self.faces} face(s) in {self.seconds:.1f} s ({rate})"
        text += f"; {len(self.bad)} bad file(s) skipped" if self.bad else "; no bad files"
        if self.bad:
            text += (
                ": "
                + ", ".join(f"{f} ({c})" for f, c in self.bad[:5])
                + (" ..." if len(self.bad) > 5 else "")
            )
        return text


def log(msg: str) -> None:
    print(f"emotion-client: {msg}", file=sys.stderr, flush=True)


def _progress(total: int | None, unit: str, enabled: bool | None) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, disable=(None if enabled is None else not enabled), file=sys.stderr)


FrameHook = Callable[[Any, Record], bool]  # (picture, record) -> False to stop


def run_job(
    paths: Sequence[Path],
    backend: Backend,
    writer: Writer,
    *,
    every: int = 1,
    annotate: Path | None = None,
    plot: Callable[[Path, Path], Path | None] | None = None,
    progress: bool | None = None,
    on_frame: FrameHook | None = None,
    capture: str = "auto",
) -> Summary:
    """Process `paths` (files; see :func:`expand`), writing every record as it comes; never raises for
    a bad file, only for a server that is gone (:class:`ServerUnavailable`) or refuses the key.

    `plot(video, session_jsonl)` draws a video's timeline and returns where it wrote it;
    `on_frame(picture, record)` sees every processed video frame (a live window) and may stop the job;
    `capture` picks the video reader (`client.capture.capture_backend`).
    """
    files = expand(paths)
    if not files:
        raise UsageError("no images or videos found in " + ", ".join(map(str, paths)))
    summary = Summary(files=len(files))
    started = time.perf_counter()
    images = [p for p in files if not is_video(p)]
    videos = [p for p in files if is_video(p)]
    opened: list[tuple[Path, VideoFrames | None, tuple[str, str] | None]] = []
    for v in videos:
        try:
            opened.append((v, open_video(v, every, capture), None))
        except FileNotFoundError as exc:
            opened.append((v, None, ("not_found", str(exc))))
        except OSError as exc:
            opened.append((v, None, ("invalid_video", str(exc))))
    totals = [len(images)] + [f.total for _, f, _ in opened if f is not None]
    total = None if any(t is None for t in totals) else sum(t for t in totals if t is not None)
    bar = _progress(total, "frame" if videos else "img", progress)

    def bad(record: Record) -> None:
        assert record.error is not None
        summary.bad.append((record.file, record.error.code))
        bar.write(
            f"emotion-client: skipped {record.file}: {record.error.code}: {record.error.message}",
            file=sys.stderr,
        )

    try:
        for record in backend.images(images):
            writer.write(record)
            bar.update(1)
            if record.error is not None:
                bad(record)
                continue
            summary.images += 1
            assert record.reply is not None
            summary.faces += len(record.reply.faces)
            if annotate is not None:
                out = annotate / f"{Path(record.file).stem}.annotated.png" if len(files) > 1 else annotate
                annotate_image(Path(record.file), record.reply.faces, out)
        for path, frames, error in opened:
            if frames is None:
                code, message = error or ("invalid_video", "cannot decode")
                record = failed(str(path), code, message)
                writer.write(record)
                bad(record)
                continue
            summary.videos += 1
            with _timeline(plot is not None, path.stem) as timeline:
                frames_out = backend.video(path, frames)
                for frame, record in frames_out:
                    writer.write(record)
                    bar.update(1)
                    summary.frames += 1
                    if record.reply is not None:
                        summary.faces += len(record.reply.faces)
                        if timeline is not None:
                            timeline.write(json.dumps(record.to_json()) + "\n")
                    if on_frame is not None and not on_frame(frame.image, record):
                        frames_out.close()  # closes the stream now, not when collected
                        break
                if plot is not None and timeline is not None:
                    timeline.flush()
                    if (written := plot(path, Path(timeline.name))) is not None:
                        summary.plots.append(written)
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - started
        summary.reconnects = getattr(backend, "reconnects", 0)
    return summary


@contextlib.contextmanager
def _timeline(enabled: bool, name: str) -> Iterator[IO[str] | None]:
    """Per-frame records for the plot, in a temporary file (a long video never sits in memory);
    named after the video, since the plot's title shows the file name."""
    if not enabled:
        yield None
        return
    with (
        tempfile.TemporaryDirectory() as tmp,
        (Path(tmp) / f"{name}.jsonl").open("w", encoding="utf-8") as fh,
    ):
        yield fh


def annotate_image(image: Path, faces: Sequence[FaceResult], out: Path) -> None:
    cv2 = require_cv2()
    import numpy as np

    from client.overlay import draw_result

    # IMREAD_COLOR applies EXIF orientation, matching the server's "EXIF-upright" boxes
    img = cv2.imdecode(np.frombuffer(image.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ClientError(f"cannot decode {image} locally to annotate it")
    annotated = draw_result(img, list(faces))
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), annotated):
        raise ClientError(f"cannot write {out} (unknown image extension?)")
    log(f"wrote {out}")
