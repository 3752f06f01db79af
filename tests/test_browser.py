"""The browser page in real headless Chromium with a fake camera showing a real face.

Covers what only a browser can: getUserMedia, canvas.toBlob JPEGs over ws://, the API-key
form (the server has keys on, so the page must ask, get refused with 1008, then connect),
and boxes/labels drawn on the overlay canvas. A screenshot lands in tests/artifacts/.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from cdp import Chromium, find_chromium, write_y4m
from liveserver import LiveServer, settings_for

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


@pytest.fixture(scope="module")
def chromium_exe() -> str:
    exe = find_chromium()
    if exe is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    return exe


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, chromium_exe: str) -> Iterator[LiveServer]:
    with LiveServer(settings_for(tiny_checkpoint, api_keys=[KEY])) as srv:
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
        assert browser.wait_for("emotionApp.status === 'key'", 20), (
            "the camera starts, the stream waits for a key"
        )

        def submit(key: str) -> None:
            browser.evaluate(
                f"document.getElementById('api-key').value = {json.dumps(key)};"
                "document.getElementById('key-form').requestSubmit()"
            )

        submit("not-the-key")  # the server closes with 1008 and the page says so
        assert browser.wait_for("emotionApp.error && emotionApp.error.includes('refused')", 20)
        assert browser.evaluate("emotionApp.status") == "key"

        submit(KEY)
        n = browser.wait_for("emotionApp.results >= 4 && emotionApp.results", 45)
        state = browser.evaluate(
            "JSON.stringify({s: emotionApp.status, n: emotionApp.results, lat: emotionApp.latencyMs,"
            " r: emotionApp.lastResult, dom: document.getElementById('dominant').textContent})"
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
    assert pixels["opaque"] > 2000, f"boxes, labels and bars should be drawn: {pixels}"
    assert pixels["tinted"] > 300, f"box and label in the dominant emotion's colour: {pixels}"
    assert pixels["opaque"] < pixels["total"] / 3, "the overlay must not cover the video"
