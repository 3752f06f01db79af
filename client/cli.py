"""`emotion-client` command line: stream, predict, plot.

Exit codes: 0 done (or quit by the user), 1 runtime failure (server never answered, or
unreachable for --retry-for, capture broke), 2 usage/config errors (bad arguments, camera will
not open, API key refused, plot would overwrite a file), 130 forced interrupt, 141 stdout closed
early (e.g. `| head`), as for a process killed by SIGPIPE.
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
EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 2, 130, 141


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to every option that has a meaningful default (not None/False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and action.option_strings
        if shown and "%(default)" not in text and "default" not in text:
            text += " (default: %(default)s)"
        return text


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
        # The env default is applied in main(), so --help never prints a key.
        sp.add_argument("--api-key", help="API key (env EMOTION_API_KEY)")

    s = sub.add_parser(
        "stream",
        formatter_class=_HelpFormatter,
        help="stream a camera, video or image folder and show the results live",
    )
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
    s.add_argument(
        "--retry-for",
        type=float,
        metavar="S",
        help="wait up to S seconds for an unreachable server, first connection included "
        "(default: fail at once if it never answered, retry forever once it has)",
    )

    pr = sub.add_parser(
        "predict",
        formatter_class=_HelpFormatter,
        help="classify still images via POST /v1/predict and print the JSON",
    )
    server_args(pr)
    pr.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    pr.add_argument(
        "--annotate",
        type=Path,
        metavar="OUT",
        help="write the annotated image here (a folder when several images are given)",
    )

    pl = sub.add_parser(
        "plot",
        formatter_class=_HelpFormatter,
        help="plot emotions over time per track from a stream --jsonl log",
    )
    pl.add_argument("session", type=Path, metavar="SESSION.jsonl")
    pl.add_argument(
        "-o",
        "--out",
        type=Path,
        help="PNG to write, replaced if it exists (default: SESSION.png beside the log, never replaced "
        "without --force)",
    )
    pl.add_argument("-f", "--force", action="store_true", help="replace the default output if it exists")
    pl.add_argument(
        "--size", type=_size, default=(1200, 800), help="WIDTHxHEIGHT in pixels (default 1200x800)"
    )
    pl.add_argument("--style", choices=("area", "lines"), default="area", help="stacked areas or lines")
    pl.add_argument("--max-tracks", type=int, default=6, help="panels for the longest tracks")
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

    out: Path = args.out or args.session.with_suffix(".png")
    if args.out is None and out.exists() and not args.force:
        raise UsageError(f"{out} exists; pass -o PATH for another file or --force to replace it")
    n = plot_session(args.session, out, size=args.size, style=args.style, max_tracks=args.max_tracks)
    print(f"emotion-client: wrote {out.resolve()} ({n} track(s))", file=sys.stderr)
    return 0


def resolve_env(args: argparse.Namespace) -> argparse.Namespace:
    """Fill ``--api-key`` from ``EMOTION_API_KEY`` after parsing, so ``--help`` never shows a key."""
    if "api_key" in vars(args) and args.api_key is None:
        args.api_key = os.environ.get("EMOTION_API_KEY") or None
    return args


COMMANDS = {"stream": cmd_stream, "predict": cmd_predict, "plot": cmd_plot}


def main(argv: Sequence[str] | None = None) -> int:
    args = resolve_env(build_parser().parse_args(argv))
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly. Point stdout at devnull so the
        # interpreter's final flush does not raise (and print) the same error again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except ClientError as exc:
        print(f"emotion-client: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAIL
    except KeyboardInterrupt:
        print("emotion-client: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
