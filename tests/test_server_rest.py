"""POST /v1/predict, GET /v1/info, health, metrics and the page, on a real uvicorn server."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from server_harness import (
    LiveServer,
    encode,
    faces_canvas,
    jpeg,
    jpeg_claiming,
    png_claiming,
    server_settings,
)

from shared.emotions import EMOTIONS
from shared.protocol import ErrorBody, PredictResponse

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def srv(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    server = LiveServer(server_settings(tiny_checkpoint)).start()
    yield server
    server.stop()


def post(srv: LiveServer, body: bytes, ctype: str = "image/jpeg", params: str = "") -> httpx.Response:
    return httpx.post(
        f"{srv.url}/v1/predict{params}", content=body, headers={"content-type": ctype}, timeout=30
    )


def ok(resp: httpx.Response) -> PredictResponse:
    assert resp.status_code == 200, resp.text
    return PredictResponse.model_validate_json(resp.content)


def error(resp: httpx.Response, status: int, code: str | None = None) -> ErrorBody:
    assert resp.status_code == status, resp.text
    body = ErrorBody.model_validate_json(resp.content)  # always the ErrorBody shape, never a traceback
    if code is not None:
        assert body.error.code == code
    assert "Traceback" not in resp.text
    return body


def test_health_ready_info(srv: LiveServer) -> None:
    assert httpx.get(srv.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(srv.url + "/readyz").json() == {"status": "ready"}
    info = httpx.get(srv.url + "/v1/info").json()
    assert info["classes"] == list(EMOTIONS)
    assert info["model"]["version"].startswith("test-") and info["model"]["input_size"] == 48
    assert info["detector"]["kind"] == "distilled" and info["device"] == "cpu"
    assert info["detector"]["input_size"] == "300x300 (SSD 96x96 per doubtful face)"
    assert info["backend"] in ("torch", "openvino") and info["flip_tta"] is False
    assert info["prior_shift"] == {}  # the test checkpoint has none
    # What the networks compute in: on the CPU with OpenVINO the face detector's shipped int8 build.
    cpu_int8 = info["backend"] == "openvino" and os.environ.get("EMOTION_CPU_PRECISION", "auto") == "auto"
    assert info["detector"]["precision"] in (("int8",) if cpu_int8 else ("bf16", "f32", "float32"))
    assert info["model"]["precision"] in ("bf16", "f32", "float32")
    assert info["limits"]["max_body_bytes"] == 10 * MiB and info["limits"]["max_pixels"] == 40_000_000


def test_multi_face_image(srv: LiveServer, astronaut: np.ndarray) -> None:
    canvas = faces_canvas(astronaut)  # faces of 160, 300, 220 px, left to right
    res = ok(post(srv, jpeg(canvas)))
    assert res.image.width == canvas.shape[1] and res.image.height == canvas.shape[0]
    assert len(res.faces) == 3
    areas = [f.box.w * f.box.h for f in res.faces]
    assert areas == sorted(areas, reverse=True)  # largest first
    # Tiles: 160 px at x 40-200, 300 px at 240-540, 220 px at 580-800 -> middle, right, left.
    tiles = [(240, 540), (580, 800), (40, 200)]
    for face, (lo, hi) in zip(res.faces, tiles, strict=True):
        assert lo <= face.box.x and face.box.x + face.box.w <= hi
    for face in res.faces:
        assert list(face.emotions) == list(EMOTIONS)
        assert abs(sum(face.emotions.values()) - 1.0) < 1e-4
        assert face.dominant == max(face.emotions, key=face.emotions.__getitem__)
        assert 0.5 <= face.confidence <= 1.0 and face.track_id is None
    assert res.model.name == "emotion-resnet18"
    t = res.timing_ms
    assert t.total >= t.decode + t.detect + t.classify - 1.0 and min(t.decode, t.detect, t.classify) > 0


def test_formats_content_types_and_multipart(srv: LiveServer, astronaut: np.ndarray) -> None:
    boxes = []
    for fmt, ctype in [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp"), ("PNG", "")]:
        res = ok(
            post(srv, encode(astronaut, fmt, quality=95) if fmt != "PNG" else encode(astronaut, fmt), ctype)
        )
        boxes.append(res.faces[0].box)
    res = ok(post(srv, encode(astronaut, "PNG"), "application/octet-stream"))
    boxes.append(res.faces[0].box)
    for field in ("image", "file"):
        resp = httpx.post(srv.url + "/v1/predict", files={field: ("a.jpg", encode(astronaut), "image/jpeg")})
        boxes.append(ok(resp).faces[0].box)
    xs = [b.x for b in boxes]
    assert max(xs) - min(xs) <= 3  # the same face whatever the container


def test_query_parameters(srv: LiveServer, astronaut: np.ndarray) -> None:
    body = jpeg(faces_canvas(astronaut))
    assert len(ok(post(srv, body, params="?max_faces=2")).faces) == 2
    assert len(ok(post(srv, body, params="?min_confidence=1.0")).faces) == 0
    whole = ok(post(srv, jpeg(astronaut), params="?detect=false"))
    assert len(whole.faces) == 1 and whole.faces[0].confidence == 1.0
    assert whole.faces[0].box.model_dump() == {"x": 0, "y": 0, "w": 512, "h": 512}
    assert whole.timing_ms.detect < 5


def test_exif_rotated_photo_gives_upright_boxes(srv: LiveServer, astronaut: np.ndarray) -> None:
    canvas = faces_canvas(astronaut, (300,))
    upright = ok(post(srv, jpeg(canvas))).faces[0].box
    stored = np.ascontiguousarray(np.rot90(canvas, k=1))  # stored rotated 90 CCW, as a phone would
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "JPEG", exif=exif.tobytes(), quality=90)
    res = ok(post(srv, buf.getvalue()))
    assert (res.image.width, res.image.height) == (canvas.shape[1], canvas.shape[0])
    box = res.faces[0].box
    assert abs(box.x - upright.x) <= 4 and abs(box.y - upright.y) <= 4


def test_body_over_limit_is_413(srv: LiveServer) -> None:
    big = b"\xff\xd8\xff" + b"\0" * (10 * MiB)
    error(post(srv, big), 413, "payload_too_large")
    files = {"image": ("big.jpg", big, "image/jpeg")}
    error(httpx.post(srv.url + "/v1/predict", files=files, timeout=30), 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        for _ in range(11):
            yield b"\0" * MiB

    resp = httpx.post(
        srv.url + "/v1/predict", content=chunks(), headers={"content-type": "image/jpeg"}, timeout=30
    )
    error(resp, 413, "payload_too_large")


def test_pixels_over_limit_are_413_from_the_header(srv: LiveServer) -> None:
    assert len(jpeg_claiming(9000, 9000)) < 2000
    error(post(srv, jpeg_claiming(9000, 9000)), 413, "image_too_large")
    error(post(srv, png_claiming(20000, 20000), "image/png"), 413, "image_too_large")


def test_unsupported_and_corrupt_images(srv: LiveServer, astronaut_jpeg: bytes) -> None:
    error(post(srv, b"plain text", "text/plain"), 415, "unsupported_media_type")
    error(post(srv, encode(np.zeros((8, 8, 3), np.uint8), "GIF"), "application/octet-stream"), 415)
    error(post(srv, b"not an image at all"), 415, "unsupported_media_type")
    error(post(srv, astronaut_jpeg[: len(astronaut_jpeg) // 3]), 400, "invalid_image")
    error(post(srv, b""), 400)
    bad_form = httpx.post(srv.url + "/v1/predict", files={"other": ("a.jpg", astronaut_jpeg, "image/jpeg")})
    error(bad_form, 422, "invalid_parameters")


@pytest.mark.parametrize("params", ["?max_faces=0", "?max_faces=abc", "?min_confidence=1.5", "?detect=maybe"])
def test_bad_parameters_are_422(srv: LiveServer, astronaut_jpeg: bytes, params: str) -> None:
    body = error(post(srv, astronaut_jpeg, params=params), 422, "invalid_parameters")
    assert params[1:].split("=")[0] in body.error.message


def test_unknown_routes_use_the_error_shape(srv: LiveServer) -> None:
    error(httpx.get(srv.url + "/v1/nope"), 404, "not_found")
    error(httpx.get(srv.url + "/v1/predict"), 405, "method_not_allowed")


def test_page_and_metrics(srv: LiveServer, astronaut_jpeg: bytes) -> None:
    page = httpx.get(srv.url + "/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    script = httpx.get(srv.url + "/app.js")
    assert script.status_code == 200
    for reply in (page, script):  # not framed by other sites, nothing loaded from elsewhere, no sniffing
        assert "frame-ancestors 'none'" in reply.headers["content-security-policy"]
        assert "script-src" not in reply.headers["content-security-policy"]  # default-src 'self' covers it
        assert (
            reply.headers["x-frame-options"] == "DENY"
            and reply.headers["x-content-type-options"] == "nosniff"
        )
    ok(post(srv, astronaut_jpeg))
    metrics = httpx.get(srv.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert srv.metric("emotion_request_duration_seconds_count", route="/v1/predict", status="200") >= 1
    assert srv.metric("emotion_batch_size_count") >= 1
    before = srv.metric("emotion_errors_total", code="unsupported_media_type")
    error(post(srv, b"plain text, not an image"), 415, "unsupported_media_type")
    assert srv.metric("emotion_errors_total", code="unsupported_media_type") == before + 1
    assert srv.metric("emotion_ready") == 1
