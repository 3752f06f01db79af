"""PyAV capture (the lean `webcam` extra): cameras, video files and image folders without numpy.

PyAV bundles FFmpeg, so one code path reads a webcam (v4l2 on Linux, avfoundation on macOS,
dshow on Windows), a video file and an image. A camera is asked for MJPEG first: its packets
are JPEGs already, so when no downscale is needed they are sent as they come, with no decode or
re-encode (a camera's JPEG without Huffman tables is still read by the server's libjpeg-turbo,
which supplies the standard ones). Otherwise frames are scaled with FFmpeg's swscale and encoded
by its `mjpeg` encoder. Pictures for the window are packed rgb24 (`picture.RgbImage`).
"""

from __future__ import annotations

import collections
import fractions
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av

from client.errors import CaptureError
from client.picture import RgbImage
from client.sources import Source, VideoFrame, image_files

# Codecs whose packets decode on their own: a live camera's packets can then be skipped undecoded.
_INTRA_ONLY = frozenset({"mjpeg", "rawvideo"})


def qscale_for(quality: int) -> int:
    """FFmpeg's mjpeg qscale (1 best .. 31 worst) for a libjpeg/OpenCV-style quality (1..100).

    libjpeg scales its tables by (200 - 2Q)% above Q50 and 5000/Q% below; FFmpeg's qscale 8 matches
    libjpeg's Q50 (file sizes measured on the same image, Q95..Q50 against qscale 1..8).
    """
    q = max(1, min(100, int(quality)))
    scale = (200 - 2 * q) / 100 if q >= 50 else 50 / q
    return max(1, min(31, round(8 * scale)))


def target_size(width: int, height: int, max_width: int | None) -> tuple[int, int]:
    """Downscale (never upscale) to `max_width`: the server's detector gains nothing from more pixels."""
    if not max_width or width <= max_width:
        return width, height
    return max_width, max(1, round(height * max_width / width))


def rgb_image(frame: av.VideoFrame) -> RgbImage:
    """Packed rgb24 bytes of a frame (FFmpeg pads rows; Tk's PPM reader wants them unpadded)."""
    if frame.format.name != "rgb24":
        frame = frame.reformat(format="rgb24")
    plane = frame.planes[0]
    row, stride, buf = frame.width * 3, plane.line_size, memoryview(plane)
    if stride == row:
        data = bytes(buf[: row * frame.height])
    else:
        data = b"".join(buf[y * stride : y * stride + row] for y in range(frame.height))
    return RgbImage(frame.width, frame.height, data)


class JpegEncoder:
    """FFmpeg's mjpeg encoder at a fixed quality; reopened when the picture size changes."""

    def __init__(self, quality: int) -> None:
        self.qscale = qscale_for(quality)
        self._ctx: Any = None
        self._pts = 0  # the encoder refuses a pts that does not grow

    def encode(self, frame: av.VideoFrame) -> bytes:
        if self._ctx is None or (self._ctx.width, self._ctx.height) != (frame.width, frame.height):
            ctx = av.CodecContext.create("mjpeg", "w")
            ctx.width, ctx.height, ctx.pix_fmt = frame.width, frame.height, "yuvj420p"
            ctx.time_base = fractions.Fraction(1, 30)
            ctx.options = {"qmin": str(self.qscale), "qmax": str(self.qscale)}
            self._ctx = ctx
        if frame.format.name != "yuvj420p":
            frame = frame.reformat(format="yuvj420p")
        # A pts in the encoder's time base (PyAV rescales from the frame's), growing by one per frame.
        frame.pts, frame.time_base, self._pts = self._pts, self._ctx.time_base, self._pts + 1
        packets = self._ctx.encode(frame)
        if not packets:
            raise CaptureError("JPEG encoding failed")
        return bytes(packets[0])


def prepare_frame(
    frame: av.VideoFrame, width: int | None, encoder: JpegEncoder, picture: bool
) -> tuple[RgbImage | None, bytes]:
    """Downscale a decoded frame (area averaging), then its window picture and its JPEG."""
    w, h = target_size(frame.width, frame.height, width)
    if (w, h) != (frame.width, frame.height):
        frame = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA")
    return (rgb_image(frame) if picture else None), encoder.encode(frame)


class _AvSource(Source):
    """One video stream of an FFmpeg input: raw frames are packets (intra-only codecs) or frames."""

    def __init__(self, container: Any, what: str) -> None:
        self._container = container
        try:
            self._stream = container.streams.video[0]
        except IndexError:
            container.close()
            raise CaptureError(f"{what} has no video stream") from None
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        fps = float(rate) if rate else 0.0
        self.native_fps = fps if 0.5 < fps < 240 else None
        self._lazy = self._stream.codec_context.name in _INTRA_ONLY
        self._mjpeg = self._stream.codec_context.name == "mjpeg"
        self._packets: Iterator[Any] = container.demux(self._stream)
        self._ahead: collections.deque[Any] = collections.deque()  # raw frames read but not yet returned
        self._encoder: JpegEncoder | None = None

    def read(self) -> Any | None:
        while not self._ahead:
            packet = next(self._packets, None)
            if packet is None:
                return None
            if self._lazy:
                if packet.size:
                    return packet
                continue
            self._ahead.extend(self._stream.codec_context.decode(packet))  # size 0: flush at the end
        return self._ahead.popleft()

    def prepare(self, raw: Any, width: int | None, quality: int, picture: bool) -> tuple[Any, bytes]:
        if self._encoder is None or self._encoder.qscale != qscale_for(quality):
            self._encoder = JpegEncoder(quality)
        if isinstance(raw, av.Packet):
            passes = self._passes(width)
            frames = self._stream.codec_context.decode(raw) if picture or not passes else []
            if passes:  # the camera's own JPEG, as it came
                return (rgb_image(frames[0]) if frames else None), bytes(raw)
            if not frames:
                raise CaptureError("a frame could not be decoded")
            raw = frames[0]
        return prepare_frame(raw, width, self._encoder, picture)

    def _passes(self, width: int | None) -> bool:
        return self._mjpeg and target_size(self._stream.width, self._stream.height, width) == (
            self._stream.width,
            self._stream.height,
        )

    def rewind(self) -> bool:
        try:
            self._container.seek(0)
        except av.FFmpegError:
            return False
        self._packets = self._container.demux(self._stream)
        self._ahead.clear()
        return True

    def close(self) -> None:
        self._container.close()


def _camera_input(camera: int | str) -> tuple[str, str, list[dict[str, str]]]:
    """FFmpeg's (device format, input name, option sets to try in order) for this system's cameras."""
    system = platform.system()
    if system == "Linux":
        device = f"/dev/video{camera}" if isinstance(camera, int) else camera
        return "v4l2", device, [{"input_format": "mjpeg"}, {}]  # MJPEG if the camera has it
    if system == "Darwin":
        return (
            "avfoundation",
            f"{camera}:none" if isinstance(camera, int) else camera,
            [{"framerate": "30"}, {}],
        )
    if system == "Windows":
        if isinstance(camera, int):
            raise CaptureError(
                "on Windows the lean (PyAV) capture needs the camera's name: --camera 'video=NAME' "
                "(list them: ffmpeg -list_devices true -f dshow -i dummy), or install the camera extra"
            )
        return "dshow", camera, [{"vcodec": "mjpeg"}, {}]
    raise CaptureError(f"no known camera interface for {system}; use --video FILE or --images DIR")


class CameraSource(_AvSource):
    live = True

    def __init__(self, camera: int | str) -> None:
        fmt, name, attempts = _camera_input(camera)
        error: Exception | None = None
        for options in attempts:
            try:
                container = av.open(name, format=fmt, options=options, timeout=10.0)
                break
            except (av.FFmpegError, OSError) as exc:
                error = exc
        else:
            raise CaptureError(
                f"cannot open camera {camera} ({fmt} {name}: {error}): no such device, or it is in use by "
                "another program, or this user may not access it "
                "(try another --camera N, or --video FILE / --images DIR)"
            ) from error
        super().__init__(container, f"camera {camera}")
        first = self.read()
        if first is None:
            self.close()
            raise CaptureError(
                f"camera {camera} opened but returned no frame (is it in use or covered by a driver?)"
            )
        self._ahead.append(first)


class VideoSource(_AvSource):
    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise CaptureError(f"video file not found: {path}")
        try:
            container = av.open(str(path))
        except (av.FFmpegError, OSError) as exc:
            raise CaptureError(f"cannot decode video {path}: {exc}") from exc
        super().__init__(container, f"video {path}")


def decode_image(path: Path) -> av.VideoFrame | None:
    """The first frame of an image file, or None if FFmpeg cannot read it."""
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                return frame
    except (av.FFmpegError, OSError, IndexError):
        pass
    return None


class ImageDirSource(Source):
    native_fps = 2.0

    def __init__(self, folder: Path) -> None:
        self._paths = image_files(folder)
        self._it: Iterator[Path] = iter(self._paths)
        self._encoder: JpegEncoder | None = None

    def read(self) -> av.VideoFrame | None:
        for path in self._it:
            frame = decode_image(path)
            if frame is not None:
                return frame
        return None

    def prepare(self, raw: Any, width: int | None, quality: int, picture: bool) -> tuple[Any, bytes]:
        if self._encoder is None or self._encoder.qscale != qscale_for(quality):
            self._encoder = JpegEncoder(quality)
        return prepare_frame(raw, width, self._encoder, picture)

    def rewind(self) -> bool:
        self._it = iter(self._paths)
        return True


class VideoFileFrames:
    """`sources.VideoFrames` read by PyAV: the video job (`predict clip.mp4`, `stream --video`) without
    OpenCV. Every frame is decoded (inter-coded video needs its predecessors); every `every`-th is
    kept, with its index in the file and its own timestamp."""

    def __init__(self, path: Path, every: int = 1) -> None:
        self.path, self.every = path, max(1, every)
        try:
            self._container = av.open(str(path))
            self._stream = self._container.streams.video[0]
        except (av.FFmpegError, OSError, IndexError) as exc:
            if hasattr(self, "_container"):
                self._container.close()
            raise OSError(f"cannot decode video {path} ({exc})") from exc
        self._stream.thread_type = "AUTO"
        count = self._stream.frames
        self.total = -(-count // self.every) if count > 0 else None
        rate = self._stream.average_rate or self._stream.guessed_rate
        self._fps = float(rate) if rate else 25.0
        self._encoder: JpegEncoder | None = None

    def __iter__(self) -> Iterator[Any]:

        try:
            for index, frame in enumerate(self._container.decode(self._stream)):
                if index % self.every:
                    continue
                ts_ms = frame.time * 1000.0 if frame.time is not None else index * 1000.0 / self._fps
                yield VideoFrame(index, ts_ms, rgb_image(frame), frame)
        except av.FFmpegError:  # a damaged tail ends the video, as OpenCV's reader does
            return
        finally:
            self._container.close()

    def jpeg(self, frame: Any, quality: int) -> bytes | None:
        if self._encoder is None or self._encoder.qscale != qscale_for(quality):
            self._encoder = JpegEncoder(quality)
        try:
            return self._encoder.encode(frame.source)
        except (av.FFmpegError, CaptureError):
            return None
