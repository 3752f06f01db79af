"""The browser page in real headless Chromium with a fake camera showing a real face.

Covers what only a browser can: getUserMedia, canvas.toBlob JPEGs over ws://, the API-key
form (the server has keys on, so the page must ask, get refused with 1008, then connect),
and boxes/labels drawn on the overlay canvas. A screenshot lands in tests/artifacts/.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from cdp import Chromium, find_chromium, write_y4m
from selfsigned import make_cert
from server_harness import LiveServer, server_settings

pytestmark = pytest.mark.slow
KEY = "browser-test-key-1"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

# Count overlay pixels that are opaque-ish, and those in the dominant emotion's colour (box + label pill).
OVERLAY_PIXELS = """(() => {
  const c = document.getElementById('overlay');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const face = emotionApp.lastResult && emotionApp.lastResult.faces[0];
  const hex = face ? {angry:'#e63946', disgust:'#6a994e', fear:'#8e6cc8', happy:'#ffbe0b', sad:'#3a86ff',
                      surprise:'#ff70a6', neutral:'#a0a0a0'}[face.dominant] : '#000000';
  const rgb = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  let opaque = 0, tinted = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] > 200) {
      opaque++;
      if (Math.abs(d[i] - rgb[0]) + Math.abs(d[i + 1] - rgb[1]) + Math.abs(d[i + 2] - rgb[2]) < 30) tinted++;
    }
  }
  return {opaque, tinted, total: d.length / 4};
})()"""


# What a user reads on the page: button, placeholder, chips, panel, status pill, message.
PAGE_TEXT = """JSON.stringify({
  toggle: document.getElementById('toggle').textContent,
  disabled: document.getElementById('toggle').disabled,
  placeholder: document.getElementById('placeholder').textContent,
  placeholder_visible: !document.getElementById('placeholder').hidden,
  fps: document.getElementById('fps').textContent,
  latency: document.getElementById('latency').textContent,
  stale: Boolean(document.querySelector('#result.stale')),
  note: (document.getElementById('result-note') || {}).textContent || '',
  status: document.getElementById('status').textContent,
  message: document.getElementById('message').textContent,
})"""
NEXT_FRAMES = "new Promise((ok) => requestAnimationFrame(() => requestAnimationFrame(() => ok(1))))"


@pytest.fixture(scope="module")
def chromium_exe() -> str:
    exe = find_chromium()
    if exe is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    return exe


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, chromium_exe: str) -> Iterator[LiveServer]:
    with LiveServer(server_settings(tiny_checkpoint, api_keys=[KEY])) as srv:
        yield srv


@pytest.fixture
def camera(tmp_path: Path, astronaut: np.ndarray) -> Path:
    """The astronaut on a 640x480 canvas, as Chromium's fake webcam."""
    canvas = np.full((480, 640, 3), 40, np.uint8)
    canvas[16:464, 96:544] = cv2.resize(astronaut, (448, 448), interpolation=cv2.INTER_AREA)
    path = tmp_path / "camera.y4m"
    write_y4m(path, canvas)
    return path


def test_page_asks_for_the_key_then_streams_and_draws(
    server: LiveServer, chromium_exe: str, camera: Path, tmp_path: Path
) -> None:
    browser = Chromium(chromium_exe, camera, tmp_path / "profile")
    try:
        browser.send("Page.enable")
        browser.send("Page.navigate", url=server.url + "/")
        # Keys are on (GET /v1/info): the page shows the key form and does not connect yet.
        assert browser.wait_for("!document.getElementById('key-form').hidden", 20), browser.log_tail()
        assert browser.wait_for("emotionApp.running && emotionApp.status === 'key'", 20), (
            "the camera starts, the stream waits for a key"
        )
        ARTIFACTS.mkdir(exist_ok=True)
        browser.screenshot(ARTIFACTS / "browser-key-required.png")
        # No key was typed, so none was refused: "required", not "refused".
        pill = browser.evaluate("document.getElementById('status').textContent")
        shown = browser.evaluate("document.getElementById('message').textContent")
        assert pill == "key required" and "refused" not in shown and "requires" in shown, (pill, shown)

        def submit(key: str) -> None:
            browser.evaluate(
                f"document.getElementById('api-key').value = {json.dumps(key)};"
                "document.getElementById('key-form').requestSubmit()"
            )

        submit("not-the-key")  # the server closes with 1008 and the page says so
        assert browser.wait_for("emotionApp.error && emotionApp.error.includes('refused')", 20)
        assert browser.evaluate("emotionApp.status") == "key"
        assert browser.evaluate("document.getElementById('status').textContent") == "key refused"

        submit(KEY)
        n = browser.wait_for("emotionApp.results >= 4 && emotionApp.results", 45)
        state = browser.evaluate(
            "JSON.stringify({s: emotionApp.status, n: emotionApp.results, lat: emotionApp.latencyMs,"
            " r: emotionApp.lastResult, dom: document.getElementById('dominant').textContent,"
            " fills: [...document.querySelectorAll('#bars .fill')].map((e) => e.offsetWidth),"
            " track: document.querySelector('#bars .track').offsetWidth})"
        )
        browser.wait_for(
            "new Promise((ok) => requestAnimationFrame(() => requestAnimationFrame(() => ok(1))))", 5
        )
        pixels = browser.evaluate(OVERLAY_PIXELS)
        ARTIFACTS.mkdir(exist_ok=True)
        browser.screenshot(ARTIFACTS / "browser.png")
    finally:
        browser.close()

    info = json.loads(state)
    assert n and n >= 4, f"frames should flow: {info}"
    assert info["s"] == "live" and info["lat"] > 0
    faces = info["r"]["faces"]
    assert faces, "the astronaut's face should be detected through the fake camera"
    assert (info["r"]["image"]["width"], info["r"]["image"]["height"]) == (640, 480)
    assert info["dom"].startswith(faces[0]["dominant"])  # the side panel shows the label
    # ... and its bars: each fill is as wide as its share of the track (an inline span had none).
    p = faces[0]["emotions"][faces[0]["dominant"]]
    assert abs(max(info["fills"]) - p * info["track"]) < 3, (info["fills"], info["track"], p)
    assert pixels["opaque"] > 2000, f"boxes, labels and bars should be drawn: {pixels}"
    assert pixels["tinted"] > 300, f"box and label in the dominant emotion's colour: {pixels}"
    assert pixels["opaque"] < pixels["total"] / 3, "the overlay must not cover the video"


@pytest.fixture(scope="module")
def open_settings(tiny_checkpoint: Path, chromium_exe: str) -> Any:
    return server_settings(tiny_checkpoint)


def test_page_without_a_camera_offers_retry(open_settings: Any, chromium_exe: str, tmp_path: Path) -> None:
    with LiveServer(open_settings) as srv:
        browser = Chromium(chromium_exe, None, tmp_path / "profile")
        try:
            browser.send("Page.navigate", url=srv.url + "/")
            assert browser.wait_for("emotionApp.status === 'error'", 20), browser.log_tail()
            ui = json.loads(browser.evaluate(PAGE_TEXT))
            ARTIFACTS.mkdir(exist_ok=True)
            browser.screenshot(ARTIFACTS / "browser-no-camera.png")
        finally:
            browser.close()
    assert ui["toggle"] == "Retry" and not ui["disabled"], ui
    assert "Waiting" not in ui["placeholder"] and "camera" in ui["placeholder"].lower(), ui
    assert ui["placeholder_visible"] and "No camera" in ui["message"], ui


def test_page_greys_stale_results_while_reconnecting_then_recovers(
    open_settings: Any, chromium_exe: str, camera: Path, tmp_path: Path
) -> None:
    first = LiveServer(open_settings).start()
    second: LiveServer | None = None
    browser = Chromium(chromium_exe, camera, tmp_path / "profile")
    try:
        browser.send("Page.navigate", url=first.url + "/")
        assert browser.wait_for("emotionApp.results >= 3 && emotionApp.lastResult.faces.length", 45)
        browser.wait_for(NEXT_FRAMES, 5)
        live = browser.evaluate(OVERLAY_PIXELS)
        live_ui = json.loads(browser.evaluate(PAGE_TEXT))
        first.stop()  # the server dies mid-session
        assert browser.wait_for("emotionApp.status === 'reconnecting'", 20)
        browser.wait_for(NEXT_FRAMES, 5)
        stale = browser.evaluate(OVERLAY_PIXELS)
        stale_ui = json.loads(browser.evaluate(PAGE_TEXT))
        ARTIFACTS.mkdir(exist_ok=True)
        browser.screenshot(ARTIFACTS / "browser-reconnecting.png")
        second = LiveServer(open_settings, port=first.port).start()
        n = browser.evaluate("emotionApp.results")
        assert browser.wait_for(f"emotionApp.status === 'live' && emotionApp.results > {n} + 2", 45)
        browser.wait_for(NEXT_FRAMES, 5)
        back_ui = json.loads(browser.evaluate(PAGE_TEXT))
        ARTIFACTS.mkdir(exist_ok=True)
        browser.screenshot(ARTIFACTS / "browser-recovered.png")
    finally:
        browser.close()
        if second is not None:
            second.stop()
        first.stop()
    assert live["opaque"] > 2000 and not live_ui["stale"], (live, live_ui)
    assert live_ui["fps"] != "–" and live_ui["latency"] != "–"
    # Reconnecting: no box over the live video, no fps/latency as if current, the panel greyed and saying so.
    assert stale["opaque"] == 0, f"the last box must not stay drawn while reconnecting: {stale}"
    assert stale_ui["fps"] == "–" and stale_ui["latency"] == "–", stale_ui
    assert stale_ui["stale"] and "reconnecting" in stale_ui["note"], stale_ui
    assert "reconnecting" in stale_ui["status"], stale_ui
    assert not back_ui["stale"] and back_ui["note"] == "" and back_ui["fps"] != "–", back_ui


def test_on_a_phone_labels_clear_the_hud_and_bars_never_cover_the_face(
    open_settings: Any, chromium_exe: str, camera: Path, tmp_path: Path
) -> None:
    """390x844 at 2x: the face sits near the top of a 340 px wide video, where its label used to
    go under the fps/latency chips; the per-face bars, with no room beside the box, went over it."""
    with LiveServer(open_settings) as srv:
        browser = Chromium(chromium_exe, camera, tmp_path / "profile")
        try:
            browser.send(
                "Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=2, mobile=True
            )
            browser.send("Page.navigate", url=srv.url + "/")
            assert browser.wait_for("emotionApp.results >= 3 && emotionApp.drawn.length", 45), (
                browser.log_tail()
            )
            browser.wait_for(NEXT_FRAMES, 5)
            drawn = json.loads(
                browser.evaluate("JSON.stringify({faces: emotionApp.drawn, hud: emotionApp.drawn.hud})")
            )
            ARTIFACTS.mkdir(exist_ok=True)
            browser.screenshot(ARTIFACTS / "browser-phone.png")
        finally:
            browser.close()

    def overlap(a: list[float], b: list[float]) -> bool:
        return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]

    hud = [0.0, 0.0, drawn["hud"]["right"], drawn["hud"]["bottom"]]
    for face in drawn["faces"]:
        assert not overlap(face["label"], hud), drawn
        assert face["bars"] is None or not (
            overlap(face["bars"], face["box"]) or overlap(face["bars"], hud)
        ), drawn


def test_remote_camera_page_needs_https_and_works_over_it(
    tiny_checkpoint: Path, open_settings: Any, chromium_exe: str, camera: Path, tmp_path: Path
) -> None:
    """A browser on another machine: the host is not localhost, so only HTTPS gives it the camera.

    `emotion.test` is mapped to 127.0.0.1 inside Chromium, so the page is not a localhost page;
    the self-signed certificate is accepted with --ignore-certificate-errors (a real deployment
    uses a trusted one: README "HTTPS for remote cameras")."""
    cert, key = make_cert(tmp_path / "tls", ("emotion.test",))
    tls = LiveServer(
        server_settings(tiny_checkpoint, ssl_certfile=cert, ssl_keyfile=key, log_level="warning")
    ).start(wait_ready=False)
    plain = LiveServer(open_settings).start()
    flags = ("--host-resolver-rules=MAP emotion.test 127.0.0.1", "--ignore-certificate-errors")
    browser = Chromium(chromium_exe, camera, tmp_path / "profile", extra_args=flags)
    try:
        browser.send("Page.navigate", url=f"http://emotion.test:{plain.port}/")
        assert browser.wait_for("emotionApp.status === 'error'", 20), browser.log_tail()
        insecure = json.loads(browser.evaluate(PAGE_TEXT))
        assert browser.evaluate("window.isSecureContext") is False

        browser.send("Page.navigate", url=f"https://emotion.test:{tls.port}/")
        n = browser.wait_for("emotionApp.results >= 3 && emotionApp.results", 60)
        secure = browser.evaluate("window.isSecureContext")
        faces = browser.evaluate("emotionApp.lastResult.faces.length")
    finally:
        browser.close()
        plain.stop()
        tls.stop()
    assert "https" in insecure["message"] and insecure["toggle"] == "Retry", insecure
    assert secure is True and n and n >= 3 and faces >= 1
