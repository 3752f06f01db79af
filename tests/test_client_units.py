"""Client pieces that need no server: capture, backoff, URLs, overlay, plot, CLI error paths."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import time
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import pytest

from client.capture import CaptureThread, LatestFrame
from client.cli import EXIT_USAGE, main
from client.cv_capture import ImageDirSource, VideoSource, resize_to_width
from client.errors import UsageError
from client.overlay import HudStats, draw_emoji, draw_result
from client.plot import load_tracks, plot_session, session_figure
from client.transport import Backoff, http_url, ws_url
from shared.emotions import EMOTIONS
from shared.protocol import FaceBox, FaceResult


def _face(x: int, y: int, w: int, h: int, dominant: str = "happy", track: int | None = 1) -> FaceResult:
    probs = {e: (0.7 if e == dominant else 0.3 / (len(EMOTIONS) - 1)) for e in EMOTIONS}
    box = FaceBox(x=x, y=y, w=w, h=h)
    return FaceResult(box=box, confidence=0.9, emotions=probs, dominant=dominant, track_id=track)


def test_backoff_doubles_caps_and_resets() -> None:
    b = Backoff(initial=0.5, maximum=4.0, jitter=0.0)
    assert [b.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    b.reset()
    assert b.next_delay() == 0.5
    jittery = Backoff(initial=1.0, jitter=0.5)
    assert all(0.5 <= jittery.next_delay() / (2**i) <= 1.0 for i in range(3))


@pytest.mark.parametrize(
    ("server", "http", "ws"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1/predict", "ws://127.0.0.1:8000/v1/stream"),
        ("https://emo.example/api/", "https://emo.example/api/v1/predict", "wss://emo.example/api/v1/stream"),
        ("ws://h:1", "http://h:1/v1/predict", "ws://h:1/v1/stream"),
        ("localhost:9", "http://localhost:9/v1/predict", "ws://localhost:9/v1/stream"),
    ],
)
def test_urls_follow_the_scheme(server: str, http: str, ws: str) -> None:
    assert http_url(server, "/v1/predict") == http
    assert ws_url(server) == ws


def test_bad_server_url_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="bad --server"):
        ws_url("ftp://x")


def test_overlay_draws_box_label_bars_and_hud(astronaut: np.ndarray) -> None:
    img = np.ascontiguousarray(astronaut[..., ::-1])
    before = img.copy()
    out = draw_result(img, [_face(180, 80, 140, 160)], HudStats(fps=9.5, latency_ms=42, dropped=3, faces=1))
    assert np.array_equal(img, before), "the caller's frame must stay clean"
    diff = np.any(out != img, axis=2)
    happy_bgr = np.array([11, 190, 255])
    assert np.all(out[160, 180] == happy_bgr) or np.all(out[80 + 80, 181] == happy_bgr)  # box edge
    assert diff[:30, :200].mean() > 0.2  # HUD
    assert diff[80:240, 330:440].mean() > 0.2  # bars right of the box
    assert not diff[400:, :100].any()  # elsewhere untouched


@pytest.mark.parametrize("emotion", [*EMOTIONS, "unknown"])
def test_every_emoji_draws_inside_its_box(emotion: str) -> None:
    img = np.zeros((200, 200, 3), np.uint8)
    draw_emoji(img, (50, 50, 100, 100), emotion)
    ys, xs = np.nonzero(img.any(axis=2))
    assert len(ys) > 3000
    assert ys.min() >= 45 and ys.max() <= 155 and xs.min() >= 45 and xs.max() <= 155  # outline stroke


def test_resize_only_downscales() -> None:
    img = np.zeros((480, 640, 3), np.uint8)
    assert resize_to_width(img, 320).shape == (240, 320, 3)
    assert resize_to_width(img, 1280) is img


def test_latest_frame_slot_keeps_only_the_newest(tmp_path: Path, astronaut: np.ndarray) -> None:
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), astronaut[..., ::-1])
    (tmp_path / "notes.txt").write_text("not an image")

    async def run() -> tuple[list[int], int]:
        slot = LatestFrame()
        slot.bind(asyncio.get_running_loop())
        cap = CaptureThread(ImageDirSource(tmp_path), slot, fps=50, width=256, quality=70)
        cap.start()
        await asyncio.sleep(0.3)  # nobody takes: frames pile up in one slot
        seqs = []
        while (frame := await slot.take()) is not None:
            assert frame.image.shape == (256, 256, 3) and frame.jpeg[:2] == b"\xff\xd8"
            seqs.append(frame.seq)
        cap.join(2)
        return seqs, slot.skipped

    seqs, skipped = asyncio.run(run())
    assert seqs == [2] and skipped == 2


def test_video_source_paces_at_the_requested_rate(tmp_path: Path, astronaut: np.ndarray) -> None:
    path = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 25, (256, 256))
    for _ in range(6):
        writer.write(cv2.resize(astronaut[..., ::-1], (256, 256)))
    writer.release()
    source = VideoSource(path)
    assert source.native_fps == pytest.approx(25)

    async def run() -> list[float]:
        slot = LatestFrame()
        slot.bind(asyncio.get_running_loop())
        CaptureThread(source, slot, fps=10, width=None, quality=80).start()
        times = []
        while (frame := await slot.take()) is not None:
            times.append(frame.captured)
        return times

    times = asyncio.run(run())
    assert len(times) == 6
    assert 0.35 < times[-1] - times[0] < 1.5  # 5 intervals at 10 fps, with slack for busy CI


def _write_log(path: Path, n: int = 30) -> None:
    t0 = time.time()
    with path.open("w") as fh:
        for i in range(n):
            faces = [_face(10, 10, 50, 50, EMOTIONS[i % 7], track=1)]
            if i > 10:
                faces.append(_face(100, 10, 40, 40, "sad", track=2))
            rec = {"ts": t0 + i / 10, "frame": i, "faces": [f.model_dump() for f in faces]}
            fh.write(json.dumps(rec) + "\n")


@pytest.mark.parametrize("style", ["lines"])  # "area" is the default, exercised on a real session
def test_plot_is_a_png_of_the_requested_size(tmp_path: Path, style: Literal["area", "lines"]) -> None:
    log, out = tmp_path / "s.jsonl", tmp_path / "t.png"
    _write_log(log)
    tracks, n = load_tracks(log)
    assert n == 30 and sorted(tracks) == ["track 1", "track 2"] and len(tracks["track 2"].t) == 19
    assert plot_session(log, out, size=(900, 500), style=style) == 2
    img = cv2.imread(str(out))
    assert img is not None
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and img.shape[:2] == (500, 900)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # something was drawn


def _gap_log(path: Path) -> tuple[float, float]:
    """Track 1 in replies 0-12 and 20-29 (absent 13-19, 1.3-1.9 s); track 2 throughout. Returns the gap."""
    t0 = time.time()
    with path.open("w") as fh:
        for i in range(30):
            faces = [_face(100, 10, 40, 40, "sad", track=2)]
            if not 13 <= i < 20:
                faces.insert(0, _face(10, 10, 50, 50, "happy", track=1))
            rec = {"ts": t0 + i / 10, "conn": 1, "frame": i, "faces": [f.model_dump() for f in faces]}
            fh.write(json.dumps(rec) + "\n")
    return 1.2, 2.0  # last sample before, first after


@pytest.mark.parametrize("style", ["area", "lines"])
def test_plot_draws_a_gap_where_a_track_was_absent_and_labels_probability(
    tmp_path: Path, style: Literal["area", "lines"]
) -> None:
    log = tmp_path / "s.jsonl"
    before, after = _gap_log(log)
    fig, shown = session_figure(log, style=style)
    assert shown == 2
    axes = {ax.get_ylabel().splitlines()[0]: ax for ax in fig.axes if ax.get_ylabel()}
    assert set(axes) == {"track 1", "track 2"}
    assert all("probability" in ax.get_ylabel() for ax in axes.values())

    def spans(ax: object) -> list[tuple[float, float]]:
        """x extent of every drawn piece: each filled polygon, or each line segment between finite points."""
        if style == "area":
            return [
                (p.vertices[:, 0].min(), p.vertices[:, 0].max())
                for c in ax.collections
                for p in c.get_paths()
            ]  # type: ignore[attr-defined]
        out = []
        for ln in ax.get_lines():  # type: ignore[attr-defined]
            xy = ln.get_xydata()
            out += [
                (a[0], b[0]) for a, b in itertools.pairwise(xy) if not (math.isnan(a[1]) or math.isnan(b[1]))
            ]
        return out

    pieces = spans(axes["track 1"])
    assert min(lo for lo, _ in pieces) == pytest.approx(0) and max(hi for _, hi in pieces) == pytest.approx(
        2.9
    )
    crossing = [(lo, hi) for lo, hi in pieces if lo < after - 1e-6 and hi > before + 1e-6]
    assert not crossing, f"nothing may be drawn while track 1 was absent: {crossing[:3]}"
    assert any(lo < after - 1e-6 and hi > before + 1e-6 for lo, hi in spans(axes["track 2"])), (
        "track 2 is continuous"
    )


def test_plot_without_out_writes_beside_the_log_and_never_overwrites_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "session.jsonl"
    _write_log(log)
    assert main(["plot", str(log)]) == 0
    png = logs / "session.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "timeline.png").exists()
    assert f"wrote {png.resolve()}" in capsys.readouterr().err, "says where, as an absolute path"
    png.write_bytes(b"keep me")
    assert main(["plot", str(log)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "exists" in err and "--force" in err and png.read_bytes() == b"keep me"
    assert main(["plot", str(log), "--force"]) == 0 and png.read_bytes()[:4] == b"\x89PNG"
    explicit = tmp_path / "chosen.png"
    explicit.write_bytes(b"old")
    assert main(["plot", str(log), "-o", str(explicit)]) == 0, "an explicit -o is the user's choice"
    assert explicit.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("command", "defaults"),
    [
        ("stream", ["default: http://127.0.0.1:8000", "(default: 640)", "(default: 80)", "(default: 2)"]),
        ("predict", ["default: http://127.0.0.1:8000"]),
        ("plot", ["(default: area)", "(default: 6)", "1200x800"]),
    ],
)
def test_help_shows_defaults_but_never_the_key(
    command: str, defaults: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMOTION_API_KEY", "secret-key-from-env")
    monkeypatch.delenv("EMOTION_SERVER", raising=False)
    import client.cli

    monkeypatch.setattr(client.cli, "DEFAULT_SERVER", "http://127.0.0.1:8000")
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for text in defaults:
        assert text in out, f"{text!r} missing from {command} --help"
    assert "secret-key-from-env" not in out and "(default: None)" not in out
    assert "(default: True)" not in out  # `--no-detect ... (default: True)` read as "on by default"


def test_api_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from client.cli import build_parser, resolve_env

    monkeypatch.setenv("EMOTION_API_KEY", "key-from-env-1")
    assert resolve_env(build_parser().parse_args(["predict", "x.jpg"])).api_key == "key-from-env-1"
    args = build_parser().parse_args(["predict", "x.jpg", "--api-key", "flag-key-22"])
    assert resolve_env(args).api_key == "flag-key-22"


def test_plot_rejects_a_non_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"no": "ts"}\n')
    assert main(["plot", str(bad), "-o", str(tmp_path / "x.png")]) == EXIT_USAGE
    assert "not a stream log line" in capsys.readouterr().err


def test_missing_camera_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stream", "--camera", "57", "--no-display", "--server", "http://127.0.0.1:9"]) == EXIT_USAGE
    assert "cannot open camera 57" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("module", "command", "extra"),
    [
        ("httpx", ["predict", "a.jpg", "--server", "http://127.0.0.1:9"], "client"),
        ("matplotlib", ["plot", "s.jsonl"], "plot"),
    ],
)
def test_missing_extra_names_it(
    module: str,
    command: list[str],
    extra: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`pip install -e ".[server]"` installs `emotion-client` without the client or plot extra."""
    import sys

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "s.jsonl").write_text("")
    for name in [m for m in sys.modules if m == "client.plot" or m.partition(".")[0] == module]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # import MODULE -> ModuleNotFoundError(name=MODULE)
    assert main(command) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{module} is missing" in err and f"emotion-service[{extra}]" in err


def test_missing_video_is_not_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/client.md: a missing video exits 2 (`stream --video`); in a job it is `not_found`, not a codec."""
    from client.batch import run_job

    missing = tmp_path / "nope.mp4"
    assert (
        main(["stream", "--video", str(missing), "--no-display", "--server", "http://127.0.0.1:9"])
        == EXIT_USAGE
    )
    assert "nope.mp4 not found" in capsys.readouterr().err

    class NoBackend:
        def images(self, paths: object) -> list[object]:
            return []

        def close(self) -> None:
            pass

    records: list[object] = []

    class Collect:
        def write(self, record: object) -> None:
            records.append(record)

    summary = run_job([missing], NoBackend(), Collect(), progress=False)  # type: ignore[arg-type]
    assert summary.bad == [(str(missing), "not_found")]
    capsys.readouterr()


HEADLESS_CV = re.search(r"GUI:\s+NONE", cv2.getBuildInformation()) is not None


@pytest.mark.skipif(not HEADLESS_CV, reason="needs the headless OpenCV build the [client] extra installs")
def test_display_without_a_window_system_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    (tmp_path / "a.png").write_bytes(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    assert main(["stream", "--images", str(tmp_path), "--server", "http://127.0.0.1:9"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "cannot open a window" in err and "--no-display" in err
