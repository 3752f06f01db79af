"""`emotion-client` against a real server on loopback: headless stream, predict, plot.

The client runs as a subprocess (`python -m client`), exactly as a user runs it, so exit
codes, stdout/stderr separation and the capture thread are all exercised for real.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from server_harness import LiveServer, run_client, server_settings

from client.cli import EXIT_BROKEN_PIPE, EXIT_FAIL, main
from shared.protocol import FaceResult, PredictResponse

pytestmark = pytest.mark.slow
FRAMES = 12


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    with LiveServer(server_settings(tiny_checkpoint)) as srv:
        yield srv


@pytest.fixture(scope="module")
def face_video(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    """A short clip of a real face drifting sideways, so the tracker has motion to follow."""
    path = tmp_path_factory.mktemp("video") / "astronaut.avi"
    bgr = np.ascontiguousarray(astronaut[..., ::-1])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (640, 512))
    for i in range(FRAMES):
        frame = np.zeros((512, 640, 3), np.uint8)
        frame[:, 4 * i : 4 * i + 512] = bgr
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def session(
    server: LiveServer, face_video: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, object]:
    """One headless session, JSON lines on stdout (the --no-display default), plus a recorded overlay."""
    out = tmp_path_factory.mktemp("session")
    proc = run_client(
        "stream", "--server", server.url, "--video", str(face_video), "--no-display",
        "--smoothing", "0.5", "--record", str(out / "overlay.avi"), "--emoji",
    )  # fmt: skip
    log = out / "session.jsonl"
    log.write_text(proc.stdout)
    return {"proc": proc, "log": log, "record": out / "overlay.avi"}


def test_headless_video_answers_every_frame_with_its_index_and_timestamp(session: dict[str, object]) -> None:
    """Issue 16.2: a file is not a webcam: no frame skipped, `frame` is the source frame index and
    `ts_ms` the video's own timestamp (10 fps here), not the send count and the wall clock."""
    proc = session["proc"]
    assert isinstance(proc, subprocess.CompletedProcess)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [rec["frame"] for rec in lines] == list(range(FRAMES))
    assert [rec["ts_ms"] for rec in lines] == pytest.approx([100.0 * i for i in range(FRAMES)], abs=1.0)
    assert re.search(rf"1 video\(s\) with {FRAMES} frame\(s\).*no bad files", proc.stderr), proc.stderr
    for rec in lines:
        assert set(rec) >= {"file", "ts", "frame", "ts_ms", "faces", "timing_ms"}
        for face in rec["faces"]:
            FaceResult.model_validate(face)
    ids = Counter(face["track_id"] for rec in lines for face in rec["faces"])
    with_faces = sum(1 for rec in lines if rec["faces"])
    assert with_faces >= len(lines) - 1, "the astronaut's face should be found in (nearly) every frame"
    assert None not in ids
    _, top_count = ids.most_common(1)[0]
    assert top_count >= with_faces - 1, f"one face should keep one track id: {ids}"


def test_video_every_nth_frame(server: LiveServer, face_video: Path) -> None:
    proc = run_client(
        "stream", "--server", server.url, "--video", str(face_video), "--no-display", "--every", "5"
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(rec["frame"], round(rec["ts_ms"])) for rec in lines] == [(0, 0), (5, 500), (10, 1000)]


def test_record_has_the_overlay(session: dict[str, object], face_video: Path) -> None:
    def frames(path: object) -> list[np.ndarray]:
        cap, out = cv2.VideoCapture(str(path)), []
        while (got := cap.read())[0]:
            out.append(got[1].astype(np.int16))
        cap.release()
        return out

    recorded, sources = frames(session["record"]), frames(face_video)
    assert len(recorded) == FRAMES and recorded[-1].shape == (512, 640, 3)
    # Whichever source frame it was drawn on, boxes / HUD / emoji change a good part of it.
    changed = min((np.abs(recorded[-1] - src).sum(axis=2) > 60).mean() for src in sources)
    assert changed > 0.02


def test_plot_of_a_real_session(session: dict[str, object], tmp_path: Path) -> None:
    out = tmp_path / "timeline.png"
    assert main(["plot", str(session["log"]), "-o", str(out), "--size", "1000x600"]) == 0
    img = cv2.imread(str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert img is not None and img.shape[:2] == (600, 1000)


def test_predict_prints_schema_valid_json_and_annotates(
    server: LiveServer, astronaut_jpeg: bytes, tmp_path: Path
) -> None:
    image, annotated = tmp_path / "astronaut.jpg", tmp_path / "annotated.png"
    image.write_bytes(astronaut_jpeg)
    proc = run_client("predict", str(image), "--server", server.url, "--annotate", str(annotated))
    assert proc.returncode == 0, proc.stderr
    reply = PredictResponse.model_validate_json(proc.stdout)
    assert reply.faces and (reply.image.width, reply.image.height) == (512, 512)
    drawn = cv2.imread(str(annotated))
    original = cv2.imdecode(np.frombuffer(astronaut_jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert drawn is not None and original is not None and drawn.shape == original.shape
    assert (np.abs(drawn.astype(int) - original.astype(int)).sum(axis=2) > 60).mean() > 0.01


# The rest call main(argv) in-process: the same code path, without paying an interpreter start each.


def test_predict_several_images_gives_json_lines(
    server: LiveServer, astronaut_jpeg: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [tmp_path / f"{i}.jpg" for i in range(2)]
    for p in paths:
        p.write_bytes(astronaut_jpeg)
    out = tmp_path / "out"
    assert main(["predict", *map(str, paths), "--server", server.url, "--annotate", str(out)]) == 0
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [doc["file"] for doc in docs] == list(map(str, paths))
    assert [PredictResponse.model_validate(doc).image.width for doc in docs] == [512, 512]
    assert sorted(p.name for p in out.iterdir()) == ["0.annotated.png", "1.annotated.png"]


def test_predict_on_garbage_reports_the_server_error(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"definitely not an image")
    assert main(["predict", str(bad), "--server", server.url]) == EXIT_FAIL
    out, err = capsys.readouterr()
    assert f"skipped {bad}: unsupported_media_type: " in err and "1 bad file(s) skipped" in err
    error = json.loads(out)["error"]
    assert error["code"] == "unsupported_media_type"
    assert error["message"] and "unsupported_media_type" not in error["message"]  # the server's own words


def test_unreachable_server_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", __file__, "--server", "http://127.0.0.1:9"]) == EXIT_FAIL
    assert "cannot reach http://127.0.0.1:9/v1/predict" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["predict", "stream"])
def test_output_into_a_closed_pipe_ends_quietly(server: LiveServer, tmp_path: Path, command: str) -> None:
    """`emotion-client ... | head -3`: the reader leaves early; no BrokenPipeError traceback, no hang."""
    image = tmp_path / "a.jpg"
    image.write_bytes(cv2.imencode(".jpg", np.full((64, 64, 3), 90, np.uint8))[1].tobytes())
    stream = ["stream", "--images", str(tmp_path), "--loop", "--fps", "20", "--no-display", "--duration=20"]
    args = ["predict", str(image)] if command == "predict" else stream
    proc = subprocess.Popen(
        [sys.executable, "-m", "client", *args, "--server", server.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    start = time.monotonic()
    proc.stdout.close()  # like `head` exiting before the client writes
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=30) == EXIT_BROKEN_PIPE, err
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert time.monotonic() - start < 15, "the stream ends at the first failed write, not at --duration"
