"""`emotion-client` command line: stream, predict, plot.

Exit codes: 0 done (or quit by the user), 1 runtime failure (server unreachable for
--retry-for, capture broke), 2 usage/config errors (bad arguments, camera will not open,
API key refused), 130 forced interrupt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from client.errors import ClientError, UsageError

DEFAULT_SERVER = os.environ.get("EMOTION_SERVER", "http://127.0.0.1:8000")
EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1200x800, got {text!r}") from exc
    if not (100 <= w <= 10000 and 100 <= h <= 10000):
        raise argparse.ArgumentTypeError("plot size must be between 100 and 10000 pixels per side")
    return w, h


def _smoothing(text: str) -> float:
    v = float(text)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError("smoothing is an EMA factor in [0, 1)")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emotion-client", description="Client for the emotion-detection server.")
    sub = p.add_subparsers(dest="command", required=True)

    def server_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--server", default=DEFAULT_SERVER, help="server base URL (env EMOTION_SERVER)")
        sp.add_argument(
            "--api-key", default=os.environ.get("EMOTION_API_KEY"), help="API key (env EMOTION_API_KEY)"
        )

    s = sub.add_parser("stream", help="stream a camera, video or image folder and show the results live")
    server_args(s)
    src = s.add_mutually_exclusive_group()
    src.add_argument("--camera", type=int, default=None, metavar="N", help="camera index (default 0)")
    src.add_argument("--video", type=Path, help="video file instead of a camera")
    src.add_argument("--images", type=Path, metavar="DIR", help="folder of images, sent in name order")
    s.add_argument(
        "--fps", type=float, help="max frames per second to send (default: camera rate / file rate)"
    )
    s.add_argument("--width", type=int, default=640, help="downscale frames to this width before sending")
    s.add_argument(
        "--quality", type=int, default=80, choices=range(1, 101), metavar="1-100", help="JPEG quality"
    )
    s.add_argument(
        "--smoothing", type=_smoothing, help="server-side per-track EMA factor in [0, 1), e.g. 0.6"
    )
    s.add_argument("--no-display", action="store_true", help="headless: JSON lines only, no window")
    s.add_argument(
        "--jsonl",
        type=Path,
        help="write one JSON line per reply here ('-' = stdout; the default with --no-display)",
    )
    s.add_argument("--record", type=Path, help="also write the annotated frames to a video (.mp4/.avi)")
    s.add_argument("--emoji", action="store_true", help="draw an emoji over each face")
    s.add_argument("--loop", action="store_true", help="restart the video / image folder at its end")
    s.add_argument("--duration", type=float, help="stop after this many seconds")
    s.add_argument(
        "--max-inflight", type=int, default=2, help="frames sent but not yet answered (pipelining)"
    )
    s.add_argument("--retry-for", type=float, help="give up after the server was unreachable this long (s)")

    pr = sub.add_parser("predict", help="classify still images via POST /v1/predict and print the JSON")
    server_args(pr)
    pr.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    pr.add_argument(
        "--annotate",
        type=Path,
        metavar="OUT",
        help="write the annotated image here (a folder when several images are given)",
    )

    pl = sub.add_parser("plot", help="plot emotions over time per track from a stream --jsonl log")
    pl.add_argument("session", type=Path, metavar="SESSION.jsonl")
    pl.add_argument("-o", "--out", type=Path, default=Path("timeline.png"), help="PNG to write")
    pl.add_argument(
        "--size", type=_size, default=(1200, 800), help="WIDTHxHEIGHT in pixels (default 1200x800)"
    )
    pl.add_argument("--style", choices=("area", "lines"), default="area")
    pl.add_argument("--max-tracks", type=int, default=6)
    return p


@contextlib.contextmanager
def _jsonl_out(path: Path | None, headless: bool) -> Iterator[IO[str] | None]:
    if path is None and not headless:
        yield None
    elif path is None or str(path) == "-":
        yield sys.stdout
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8", buffering=1) as fh:
            yield fh


def cmd_stream(args: argparse.Namespace) -> int:
    from client.capture import CaptureThread, LatestFrame, open_source
    from client.display import Viewer, open_viewer
    from client.stream import StreamOptions, StreamSession, log

    source = open_source(args.camera, args.video, args.images)  # fails fast: camera / file problems
    viewer: Viewer | None = None
    try:
        viewer = None if args.no_display else open_viewer()
        capture = CaptureThread(
            source, LatestFrame(), args.fps, args.width, args.quality, loop_source=args.loop
        )
    except BaseException:
        source.close()
        raise
    opts = StreamOptions(
        server=args.server,
        api_key=args.api_key,
        smoothing=args.smoothing,
        emoji=args.emoji,
        duration=args.duration,
        retry_for=args.retry_for,
        max_inflight=max(1, args.max_inflight),
    )
    with _jsonl_out(args.jsonl, args.no_display) as out:
        session = StreamSession(opts, capture, viewer, out, args.record)
        try:
            asyncio.run(session.run())
        finally:
            if session.stats.sent:
                log(session.stats.summary(capture.slot.skipped))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from client.transport import predict

    results = []
    for image in args.images:
        if not image.is_file():
            raise ClientError(f"image not found: {image}")
        res = predict(args.server, image, args.api_key)
        results.append(res)
        if args.annotate is not None:
            out = args.annotate / f"{image.stem}.annotated.png" if len(args.images) > 1 else args.annotate
            _annotate(image, res.faces, out)
    docs = [r.model_dump(mode="json") for r in results]
    print(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2))
    return 0


def _annotate(image: Path, faces: Sequence[object], out: Path) -> None:
    import cv2
    import numpy as np

    from client.overlay import draw_result
    from shared.protocol import FaceResult

    # IMREAD_COLOR applies EXIF orientation, matching the server's "EXIF-upright" boxes
    img = cv2.imdecode(np.frombuffer(image.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ClientError(f"cannot decode {image} locally to annotate it")
    annotated = draw_result(img, [f for f in faces if isinstance(f, FaceResult)])
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), annotated):
        raise ClientError(f"cannot write {out} (unknown image extension?)")
    print(f"emotion-client: wrote {out}", file=sys.stderr)


def cmd_plot(args: argparse.Namespace) -> int:
    from client.plot import plot_session

    n = plot_session(args.session, args.out, size=args.size, style=args.style, max_tracks=args.max_tracks)
    print(f"emotion-client: wrote {args.out} ({n} track(s))", file=sys.stderr)
    return 0


COMMANDS = {"stream": cmd_stream, "predict": cmd_predict, "plot": cmd_plot}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ClientError as exc:
        print(f"emotion-client: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAIL
    except KeyboardInterrupt:
        print("emotion-client: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
