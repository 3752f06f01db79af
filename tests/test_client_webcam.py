"""The lean webcam client (`.[client,webcam]`: PyAV capture, Tk window, no OpenCV or numpy).

The client runs as a subprocess with `cv2` and `numpy` made unimportable, as in a lean install,
against a real server on loopback; the camera is a video file written with PyAV itself (the
same capture code reads both). The Tk window runs on a real X server (Xvfb) when one can be
started, and those tests skip otherwise (`apt install xvfb`).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from server_harness import LiveServer, free_port, server_settings

av = pytest.importorskip("av")

from client.av_capture import ImageDirSource, VideoSource, qscale_for  # noqa: E402
from client.capture import CaptureThread, LatestFrame  # noqa: E402
from client.layout import HudStats  # noqa: E402
from client.picture import RgbImage  # noqa: E402
from shared.protocol import FaceBox, FaceResult  # noqa: E402

FRAMES = 10
SIZE = (640, 512)
# A lean install: what the [client,webcam] extras do not bring cannot be imported.
LEAN = (
    "import sys; sys.modules.update(cv2=None, numpy=None); "
    "from client.cli import main; raise SystemExit(main())"
)


def write_video(path: Path, astronaut: np.ndarray, codec: str, frames: int = FRAMES) -> Path:
    """A real face drifting sideways, encoded by PyAV (`mjpeg` in AVI, or inter-coded `mpeg4`)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for i in range(frames):
            img = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
            img[:, 4 * i : 4 * i + 512] = astronaut
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def mjpeg_video(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "face.avi", astronaut, "mjpeg")


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    with LiveServer(server_settings(tiny_checkpoint)) as srv:
        yield srv


def lean_client(*args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", LEAN, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw,
    )  # fmt: skip


def run_lean(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str, str]:
    proc = lean_client(*args, env=env)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def decoded_size(jpeg: bytes) -> tuple[int, int]:
    with av.open(io.BytesIO(jpeg), format="mjpeg") as c:
        frame = next(c.decode(video=0))
        return frame.width, frame.height


# --- capture -------------------------------------------------------------------------------------


def test_mjpeg_packets_are_sent_as_they_come_when_no_resize_is_needed(mjpeg_video: Path) -> None:
    with av.open(str(mjpeg_video)) as c:
        packets = [bytes(p) for p in c.demux(video=0) if p.size]
    assert len(packets) == FRAMES
    source = VideoSource(mjpeg_video)
    try:
        for i, expected in enumerate(packets):
            raw = source.read()
            picture, jpeg = source.prepare(raw, 640 if i % 2 else None, 80, picture=bool(i % 2))
            assert jpeg == expected  # no decode / re-encode: the camera's own bytes
            if i % 2:
                assert isinstance(picture, RgbImage) and (picture.width, picture.height) == SIZE
            else:
                assert picture is None
        assert source.read() is None
    finally:
        source.close()


def test_downscaled_frames_are_re_encoded_at_the_requested_size_and_quality(
    mjpeg_video: Path, tmp_path: Path, astronaut: np.ndarray
) -> None:
    inter = write_video(tmp_path / "face.mp4", astronaut, "mpeg4")  # frames depend on earlier ones
    for path in (mjpeg_video, inter):
        source = VideoSource(path)
        sizes: dict[int, int] = {}
        try:
            for quality in (90, 50, 10):
                raw = source.read()
                picture, jpeg = source.prepare(raw, 320, quality, picture=True)
                assert decoded_size(jpeg) == (320, 256)
                assert isinstance(picture, RgbImage) and (picture.width, picture.height) == (320, 256)
                sizes[quality] = len(jpeg)
            rest = 0
            while source.read() is not None:
                rest += 1
            assert rest == FRAMES - 3, path  # every frame decoded, none lost to the decoder's delay
        finally:
            source.close()
        assert sizes[90] > sizes[50] > sizes[10], sizes
    assert [qscale_for(q) for q in (100, 95, 80, 50, 25, 1)] == [1, 1, 3, 8, 16, 31]


def test_capture_thread_drives_the_pyav_source(tmp_path: Path, astronaut: np.ndarray) -> None:
    """The same CaptureThread / LatestFrame as the OpenCV backend, over a PyAV image folder."""
    import asyncio

    from PIL import Image

    Image.fromarray(astronaut).save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg")  # skipped, as OpenCV's folder source skips it

    async def run() -> list[tuple[int, int]]:
        slot = LatestFrame()
        slot.bind(asyncio.get_running_loop())
        CaptureThread(ImageDirSource(tmp_path), slot, fps=20, width=256, quality=70).start()
        got = []
        while (frame := await slot.take()) is not None:
            got.append(decoded_size(frame.jpeg))
            assert (frame.image.width, frame.image.height) == (256, 256)
        return got

    assert asyncio.run(run()) == [(256, 256)]


def test_live_camera_source_is_drained_and_paced(monkeypatch: pytest.MonkeyPatch) -> None:
    """A live FFmpeg input through CameraSource and the capture thread: FFmpeg's lavfi test source
    stands in for the v4l2 / avfoundation / dshow device (no camera here); only the device name is
    substituted, the opening, first-frame check, draining and encoding are the real ones."""
    import asyncio

    from client import av_capture

    monkeypatch.setattr(
        av_capture, "_camera_input", lambda camera: ("lavfi", "testsrc2=size=640x480:rate=30", [{}])
    )
    source = av_capture.CameraSource(0)
    assert source.live and source.native_fps == pytest.approx(30)

    async def run() -> list[Any]:
        slot = LatestFrame()
        slot.bind(asyncio.get_running_loop())
        capture = CaptureThread(source, slot, fps=5, width=320, quality=80, pictures=False)
        capture.start()
        frames = []
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            frames.append(await asyncio.wait_for(slot.take(), 2))
        capture.stop()
        capture.join(2)
        return frames

    frames = asyncio.run(run())
    assert all(decoded_size(f.jpeg) == (320, 240) and f.image is None for f in frames)
    gaps = [b.captured - a.captured for a, b in itertools.pairwise(frames)]
    assert 5 <= len(frames) <= 10 and min(gaps) > 0.1, gaps  # paced at --fps 5, not the source's 30


# --- the stream command, lean -------------------------------------------------------------------


@pytest.mark.slow
def test_lean_stream_of_a_pyav_video_reaches_the_server_and_prints_json_lines(
    server: LiveServer, mjpeg_video: Path
) -> None:
    code, out, err = run_lean(
        "stream", "--server", server.url, "--video", str(mjpeg_video), "--loop", "--no-display",
        "--fps", "8", "--duration", "4", "--width", "320",
    )  # fmt: skip
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) >= 8, err
    assert all(rec["image"] == {"width": 320, "height": 256} for rec in lines)  # resized before sending
    with_faces = [rec for rec in lines if rec["faces"]]
    assert len(with_faces) >= len(lines) // 2, lines
    for rec in with_faces:
        FaceResult.model_validate(rec["faces"][0])
    assert "sent " in err and "connections 1" in err


@pytest.mark.slow
def test_lean_video_job_answers_every_frame_with_its_index_and_timestamp(
    server: LiveServer, tmp_path: Path, astronaut: np.ndarray
) -> None:
    """`stream --video FILE` without --loop is the video job; the lean install reads it with PyAV."""
    video = write_video(tmp_path / "face.mp4", astronaut, "mpeg4")
    code, out, err = run_lean("stream", "--server", server.url, "--video", str(video), "--no-display")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [rec["frame"] for rec in lines] == list(range(FRAMES))
    assert [rec["ts_ms"] for rec in lines] == pytest.approx([100.0 * i for i in range(FRAMES)], abs=1.0)
    assert sum(bool(rec["faces"]) for rec in lines) >= FRAMES // 2
    assert f"1 video(s) with {FRAMES} frame(s)" in err


@pytest.mark.slow
def test_lean_stream_reconnects_after_a_server_restart(
    tiny_checkpoint: Path, mjpeg_video: Path, tmp_path: Path
) -> None:
    log = tmp_path / "session.jsonl"
    settings = server_settings(tiny_checkpoint)
    first = LiveServer(settings, port=free_port()).start()
    client = lean_client(
        "stream", "--server", first.url, "--video", str(mjpeg_video), "--loop", "--no-display",
        "--fps", "6", "--jsonl", str(log), "--duration", "60",
    )  # fmt: skip
    second: LiveServer | None = None

    def lines() -> list[dict[str, Any]]:
        text = log.read_text() if log.exists() else ""
        return [json.loads(x) for x in text.splitlines() if x.endswith("}")]

    try:
        wait_for(lambda: len(lines()) >= 3, 30, "first replies")
        first.stop()
        time.sleep(1.0)
        second = LiveServer(settings, port=first.port).start()
        wait_for(lambda: sum(rec["conn"] > 1 for rec in lines()) >= 2, 30, "replies after the restart")
        client.terminate()  # SIGTERM: a clean stop
        _, err = client.communicate(timeout=15)
    finally:
        if client.poll() is None:
            client.kill()
        first.stop()
        if second is not None:
            second.stop()
    assert client.returncode == 0, err
    assert "reconnected" in err, err


def test_lean_stream_errors_are_one_line_with_what_to_do(mjpeg_video: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    code, _, err = run_lean("stream", "--video", str(mjpeg_video), "--loop", env=env)
    assert code == 2 and "cannot open a window" in err and "--no-display" in err, err
    code, _, err = run_lean("stream", "--camera", "/dev/video-none", "--no-display")
    assert code == 2 and "cannot open camera /dev/video-none" in err, err
    code, _, err = run_lean(
        "stream", "--video", str(mjpeg_video), "--loop", "--no-display", "--record", "x.avi"
    )
    assert code == 2 and "--record needs OpenCV" in err, err
    code, _, err = run_lean("stream", "--capture", "opencv", "--video", str(mjpeg_video), "--no-display")
    assert code == 2 and "needs OpenCV" in err, err
    no_av = LEAN.replace("numpy=None", "numpy=None, av=None")
    proc = subprocess.run(
        [sys.executable, "-c", no_av, "stream", "--no-display"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "emotion-service[webcam]" in proc.stderr, proc.stderr
    assert "Traceback" not in err + proc.stderr


# --- the Tk window on a real X server ------------------------------------------------------------


@pytest.fixture(scope="module")
def x_display() -> Iterator[str]:
    """A private Xvfb display; skip when Xvfb is not installed."""
    pytest.importorskip("tkinter", reason="no tkinter in this Python (Debian/Ubuntu: apt install python3-tk)")
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip("Xvfb not installed (apt install xvfb)")
    for number in range(90, 110):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            break
    proc = subprocess.Popen(
        [xvfb, f":{number}", "-screen", "0", "800x600x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(lambda: Path(f"/tmp/.X11-unix/X{number}").exists() or proc.poll() is not None, 10, "Xvfb")
        if proc.poll() is not None:
            pytest.skip(f"Xvfb did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


FACE = FaceResult(
    box=FaceBox(x=200, y=60, w=150, h=170),
    confidence=0.98,
    emotions={"angry": 0.02, "disgust": 0.0, "fear": 0.03, "happy": 0.81, "sad": 0.04, "surprise": 0.02,
              "neutral": 0.08},
    dominant="happy",
    track_id=3,
)  # fmt: skip


def test_tk_window_shows_the_frame_and_draws_the_overlay(
    x_display: str, mjpeg_video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPLAY", x_display)
    from client.colors import rgb
    from client.tk_display import TkViewer

    source = VideoSource(mjpeg_video)
    picture, _ = source.prepare(source.read(), None, 80, picture=True)
    source.close()
    assert isinstance(picture, RgbImage)
    viewer = TkViewer()
    try:
        assert viewer.show(picture, [FACE], HudStats(fps=9.5, latency_ms=40, faces=1, status="live?"))
        canvas, photo = viewer.canvas, viewer._photo
        assert photo is not None and (photo.width(), photo.height()) == SIZE
        for x, y in ((0, 0), (300, 100), (639, 511)):  # the pixels are the frame's
            i = (y * SIZE[0] + x) * 3
            assert tuple(photo.get(x, y)) == tuple(picture.data[i : i + 3])
        items = canvas.find_withtag("overlay")
        texts = [canvas.itemcget(i, "text") for i in items if canvas.type(i) == "text"]
        assert texts[0] == "happy 81%  #3"
        assert texts[1:8] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
        assert texts[8].startswith(" 9.5 fps   rtt 40 ms") and texts[9] == "live?"
        box = next(i for i in items if canvas.type(i) == "rectangle" and canvas.itemcget(i, "outline"))
        assert canvas.coords(box) == [200.0, 60.0, 350.0, 230.0]
        assert canvas.itemcget(box, "outline") == "#{:02x}{:02x}{:02x}".format(*rgb("happy"))
        rects = [i for i in items if canvas.type(i) == "rectangle"]
        bars = [i for i in rects if canvas.itemcget(i, "fill") == "#{:02x}{:02x}{:02x}".format(*rgb("happy"))]
        happy_bar = canvas.coords(bars[-1])
        trough = canvas.coords([i for i in rects if canvas.itemcget(i, "fill") == "#464646"][3])
        assert (happy_bar[2] - happy_bar[0]) == pytest.approx(0.81 * (trough[2] - trough[0]), abs=2)
        panels = [i for i in items if canvas.type(i) == "image"]  # translucent: bars and HUD backgrounds
        assert len(panels) == 2 and canvas.coords(panels[0]) == [356.0, 60.0]  # right of the box
        name = canvas.itemcget(panels[0], "image")
        size = (int(canvas.tk.call("image", "width", name)), int(canvas.tk.call("image", "height", name)))
        assert size[0] > trough[2] - 356 and size[1] > 7 * (trough[3] - trough[1])
        # the next frame replaces the overlay instead of piling up
        assert viewer.show(picture, [], None)
        assert canvas.find_withtag("overlay") == ()
        viewer.root.event_generate("<KeyPress>", keysym="q")
        assert not viewer.poll()  # q quits
        assert not viewer.show(picture, [FACE])
    finally:
        viewer.close()


@pytest.mark.slow
def test_lean_stream_with_a_window(x_display: str, server: LiveServer, mjpeg_video: Path) -> None:
    env = os.environ | {"DISPLAY": x_display}
    code, out, err = run_lean(
        "stream", "--server", server.url, "--video", str(mjpeg_video), "--loop", "--fps", "8",
        "--duration", "3", env=env,
    )  # fmt: skip
    assert code == 0, err
    assert out == ""  # a window and no --jsonl: nothing on stdout
    assert "sent " in err and "Traceback" not in err


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
