"""`emotion-client` command line: stream, analyze / predict (batch and video jobs), plot.

Exit codes: 0 done (or quit by the user), 1 runtime failure (server never answered, or
unreachable for --retry-for, capture broke), 2 usage/config errors (bad arguments, camera will
not open, API key refused, plot would overwrite a file), 130 forced interrupt, 141 stdout closed
early (e.g. `| head`), as for a process killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from client.capture import BACKENDS
from client.errors import ClientError, UsageError

DEFAULT_SERVER = os.environ.get("EMOTION_SERVER", "http://127.0.0.1:8000")
EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 2, 130, 141
# The extras' modules: an install without one (`pip install -e ".[server]"` brings the
# `emotion-client` command too) gets a usage error naming the extra instead of a traceback.
EXTRA_OF_MODULE = {"httpx": "client", "websockets": "client", "tqdm": "client", "matplotlib": "plot"}


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to every option that has a meaningful default (not None/False) and
    takes a value: a flag's default is the opposite of what it does (``--no-detect``: True)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        takes_value = action.nargs != 0
        shown = (
            action.default not in (None, False, argparse.SUPPRESS) and action.option_strings and takes_value
        )
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


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return v


def _camera(text: str) -> int | str:
    """A camera index, or a device as the capture library names it (/dev/video2, 'video=NAME')."""
    return int(text) if text.isdigit() else text


def _probability(text: str) -> float:
    v = float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError("must be within [0, 1]")
    return v


def job_args(sp: argparse.ArgumentParser, server_default: str | None) -> None:
    """The batch/video job's options, the same for `analyze` and `predict` (one implementation)."""
    where = (
        f"server base URL (env EMOTION_SERVER; default: {server_default})"
        if server_default
        else "analyze on this server instead of in-process (needs only the client extra)"
    )
    sp.add_argument("--server", default=server_default, help=where)
    # The env default is applied in main() (resolve_env), so --help never prints a key.
    sp.add_argument("--api-key", help="API key (env EMOTION_API_KEY)")
    sp.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="image or video files, or folders of them"
    )
    sp.add_argument(
        "-o", "--output", type=Path, help="write results here (.csv or .jsonl; default: JSON lines on stdout)"
    )
    sp.add_argument("--format", choices=("jsonl", "csv"), help="output format (default: from -o's suffix)")
    sp.add_argument("--max-faces", type=_positive, help="at most this many faces per image (server caps it)")
    sp.add_argument("--min-confidence", type=_probability, help="minimum detector score (default: server's)")
    sp.add_argument(
        "--no-detect",
        dest="detect",
        action="store_false",
        help="each image is one already-cropped face (API detect=false)",
    )
    sp.add_argument("--every", type=_positive, default=1, help="videos: process every Nth frame (default 1)")
    sp.add_argument(
        "--annotate",
        type=Path,
        metavar="OUT",
        help="write annotated images here (a folder when several images are given; needs [camera])",
    )
    sp.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="videos: timeline plot here (default: beside -o as <name>.timeline.png; needs [plot])",
    )
    sp.add_argument("--no-plot", action="store_true", help="videos: no timeline plot")
    sp.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar with rate and ETA on stderr (default: when stderr is a terminal)",
    )
    sp.add_argument("--concurrency", type=_positive, default=4, help="server: requests in flight (default 4)")
    sp.add_argument(
        "--batch-size", type=_positive, default=8, help="in-process: images per batch (default 8)"
    )
    sp.add_argument(
        "--device", default="auto", help="in-process: auto, cpu, cuda, cuda:N, mps (default auto)"
    )
    sp.add_argument("--checkpoint", type=Path, help="in-process: emotion model (default: the bundled one)")


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
    src.add_argument(
        "--camera",
        type=_camera,
        default=None,
        metavar="N",
        help="camera index (default 0), or a device: /dev/video2, or on Windows with PyAV 'video=NAME'",
    )
    src.add_argument("--video", type=Path, help="video file instead of a camera")
    src.add_argument("--images", type=Path, metavar="DIR", help="folder of images, sent in name order")
    s.add_argument(
        "--fps", type=float, help="max frames per second to send (default: camera rate; not for --video)"
    )
    s.add_argument(
        "--every",
        type=_positive,
        default=1,
        help="--video: process every Nth frame of the file (default 1: every frame, none skipped)",
    )
    s.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--video: progress bar on stderr (default: when stderr is a terminal)",
    )
    s.add_argument(
        "--capture",
        choices=BACKENDS,
        default="auto",
        help="capture library: auto = OpenCV if installed (camera extra), else PyAV (webcam extra)",
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

    an = sub.add_parser(
        "analyze",
        formatter_class=_HelpFormatter,
        help="images, folders and videos -> one JSON line per image/frame or one CSV row per face "
        "(in-process; --server URL to use a server)",
    )
    job_args(an, server_default=None)
    pr = sub.add_parser(
        "predict",
        formatter_class=_HelpFormatter,
        help="the same job as analyze, against a server (POST /v1/predict; WebSocket for videos)",
    )
    job_args(pr, server_default=DEFAULT_SERVER)

    pl = sub.add_parser(
        "plot",
        formatter_class=_HelpFormatter,
        help="plot emotions over time per track from a stream --jsonl log",
    )
    pl.add_argument(
        "session",
        type=Path,
        metavar="SESSION.jsonl",
        help="a log written by `stream --jsonl` (or `stream > FILE`), or by analyze/predict of a video",
    )
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


def require_opencv(what: str) -> None:
    """UsageError before anything starts when `what` needs OpenCV and it is not installed."""
    import importlib.util

    if importlib.util.find_spec("cv2") is None:
        raise UsageError(f"{what} needs OpenCV: pip install 'emotion-service[camera]'")


def cmd_stream_video(args: argparse.Namespace) -> int:
    """`stream --video FILE`: a file is not a webcam, so it is the video job: every frame (or every
    Nth), each answered in order with its source frame index and the video's own timestamp."""
    from client.backends import RemoteBackend
    from client.batch import run_job
    from client.display import open_viewer
    from client.picture import to_bgr
    from client.records import JobOptions

    if args.record is not None:
        require_opencv("--record")
        from client.overlay import draw_result
    if not args.video.is_file():
        raise UsageError(f"video {args.video} not found (or not a file); check --video FILE")
    options = JobOptions(every=args.every, smoothing=args.smoothing)

    viewer = None if args.no_display else open_viewer()
    recorder: dict[str, object] = {}

    def on_frame(image: object, record: object) -> bool:
        from client.records import Record

        assert isinstance(record, Record)
        faces = record.reply.faces if record.reply is not None else []
        if args.record is not None:
            import cv2

            drawn = draw_result(to_bgr(image), faces, emoji=args.emoji)
            writer = recorder.get("writer")
            if writer is None:
                h, w = drawn.shape[:2]
                fourcc = cv2.VideoWriter.fourcc(*("MJPG" if args.record.suffix.lower() == ".avi" else "mp4v"))
                args.record.parent.mkdir(parents=True, exist_ok=True)
                writer = recorder["writer"] = cv2.VideoWriter(str(args.record), fourcc, 25.0, (w, h))
            writer.write(drawn)  # type: ignore[attr-defined]
        return viewer.show(image, faces, None, args.emoji) if viewer is not None else True

    backend = RemoteBackend(args.server, args.api_key, options)
    try:
        with _jsonl_out(args.jsonl, args.no_display) as out:
            from client.writers import JsonlWriter

            summary = run_job(
                [args.video],
                backend,
                JsonlWriter(out) if out is not None else _NullWriter(),
                every=args.every,
                progress=args.progress,
                on_frame=on_frame if (viewer is not None or args.record is not None) else None,
                capture=args.capture,
            )
    finally:
        backend.close()
        if (writer := recorder.get("writer")) is not None:
            writer.release()  # type: ignore[attr-defined]
        if viewer is not None:
            viewer.close()
    print(f"emotion-client: {summary.line()}", file=sys.stderr)
    return EXIT_FAIL if summary.bad else 0


class _NullWriter:
    def write(self, record: object) -> None:
        pass


def cmd_stream(args: argparse.Namespace) -> int:
    if args.video is not None and not args.loop:
        return cmd_stream_video(args)
    from client.capture import CaptureThread, LatestFrame, open_source
    from client.display import Viewer, open_viewer
    from client.stream import StreamOptions, StreamSession, log

    if args.record is not None:
        require_opencv("--record")
    # fails fast: camera / file problems, no capture library
    source = open_source(args.camera, args.video, args.images, backend=args.capture)
    viewer: Viewer | None = None
    try:
        viewer = None if args.no_display else open_viewer()
        pictures = viewer is not None or args.record is not None
        capture = CaptureThread(
            source,
            LatestFrame(),
            args.fps,
            args.width,
            args.quality,
            loop_source=args.loop,
            pictures=pictures,
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


def _plotter(args: argparse.Namespace, n_videos: int) -> Callable[[Path, Path], Path | None] | None:
    """Where each video's timeline goes: --plot, else beside -o; none without a place or matplotlib."""
    if args.no_plot or (args.plot is None and (args.output is None or str(args.output) == "-")):
        return None
    try:
        from client.plot import plot_session
    except ImportError:
        if args.plot is not None:
            raise UsageError("--plot needs matplotlib: pip install 'emotion-service[plot]'") from None
        return None

    def plot(video: Path, session: Path) -> Path:
        if args.plot is not None:
            out = args.plot if n_videos == 1 else args.plot.with_name(f"{args.plot.stem}.{video.stem}.png")
        else:
            stem = args.output.with_suffix("").name
            name = f"{stem}.timeline.png" if n_videos == 1 else f"{stem}.{video.stem}.timeline.png"
            out = args.output.with_name(name)
        plot_session(session, out)
        return out

    return plot


def cmd_job(args: argparse.Namespace) -> int:
    """`analyze` and `predict`: exit 0 when every file was processed, 1 when some were skipped."""
    from client.backends import LocalBackend, RemoteBackend
    from client.batch import expand, is_video, require_cv2, run_job
    from client.records import JobOptions
    from client.writers import open_writer, output_format

    options = JobOptions(args.max_faces, args.min_confidence, args.detect, args.every)
    if args.server and (args.device != "auto" or args.checkpoint is not None):
        raise UsageError(
            "--device and --checkpoint are for in-process analysis (`analyze` without --server); "
            f"the server at {args.server} uses its own model and device"
        )
    if args.annotate is not None:
        require_cv2()  # fail before any work when OpenCV (the [camera] extra) is missing
    files = expand(args.paths)
    backend = (
        RemoteBackend(args.server, args.api_key, options, concurrency=args.concurrency)
        if args.server
        else LocalBackend(options, batch_size=args.batch_size, device=args.device, checkpoint=args.checkpoint)
    )
    try:
        with open_writer(args.output, output_format(args.output, args.format)) as writer:
            summary = run_job(
                files or args.paths,
                backend,
                writer,
                every=args.every,
                annotate=args.annotate,
                plot=_plotter(args, sum(map(is_video, files))),
                progress=args.progress,
            )
    finally:
        backend.close()
    for png in summary.plots:
        print(f"emotion-client: wrote {png}", file=sys.stderr)
    print(f"emotion-client: {summary.line()}", file=sys.stderr)
    return EXIT_FAIL if summary.bad else 0


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


COMMANDS = {"stream": cmd_stream, "predict": cmd_job, "analyze": cmd_job, "plot": cmd_plot}


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
    except ModuleNotFoundError as exc:
        module = (exc.name or "").partition(".")[0]
        extra = EXTRA_OF_MODULE.get(module)
        if extra is None:
            raise
        print(
            f"emotion-client: error: {module} is missing: this command needs the {extra} extra: "
            f"pip install 'emotion-service[{extra}]' (in a checkout: pip install -e '.[server,{extra}]')",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("emotion-client: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
