"""Hostile inputs to POST /v1/predict on a real server: each gets a 4xx ErrorBody or a correct 200.

What test_server_rest.py already covers (plain text, GIF, a truncated JPEG, an empty body,
9000x9000 header claims, a 10 MiB body three ways, bad parameters, one EXIF orientation) is
not repeated one by one here; it is part of the set replayed for the memory check. The table
in docs/reliability.md says which test covers which case.
"""

from __future__ import annotations

import gc
import io
import logging
import socket
import struct
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
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
    retry,
    server_settings,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from hardening import png_chunk, png_from_rows

from shared.protocol import ErrorBody, PredictResponse

MiB = 1024 * 1024
BODY_LIMIT = 2 * MiB  # this module's server: small, so "a valid image over the limit" is cheap to make


@pytest.fixture(scope="module")
def srv(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    server = LiveServer(server_settings(tiny_checkpoint, max_body_bytes=BODY_LIMIT)).start()
    yield server
    server.stop()


# ----------------------------------------------------------------------------- hostile images


def zero_png(side: int) -> bytes:
    """A real side x side black RGB PNG: a few hundred KiB that decode to side^2 * 3 bytes."""
    row = b"\0" * (1 + side * 3)
    return png_from_rows(side, side, 8, 2, (row for _ in range(side)))


def png16_rgb(img: np.ndarray) -> bytes:
    """48-bit RGB PNG (Pillow cannot write one): each 8-bit value v becomes v * 257."""
    wide = (img.astype(">u2") * 257).reshape(img.shape[0], -1)
    return png_from_rows(img.shape[1], img.shape[0], 16, 2, (b"\0" + r.tobytes() for r in wide))


def with_chunk_before_iend(png: bytes, chunk: bytes) -> bytes:
    return png[:-12] + chunk + png[-12:]


def ztxt_bomb(base: bytes) -> bytes:
    """A valid PNG plus a zTXt text chunk that inflates to 256 MiB."""
    z = zlib.compressobj(9)
    text = b"".join(z.compress(b"\0" * MiB) for _ in range(256)) + z.flush()
    return with_chunk_before_iend(base, png_chunk(b"zTXt", b"comment\0\0" + text))


def idat_bomb() -> bytes:
    """A 64x64 PNG whose pixel stream inflates to 256 MiB (far more than 64x64 needs)."""
    z = zlib.compressobj(9)
    data = b"".join(z.compress(b"\0" * MiB) for _ in range(256)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")
    )


def noise_png(side: int) -> bytes:
    """Incompressible: a valid PNG of about side^2 * 3 bytes."""
    rng = np.random.default_rng(0)
    return encode(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), "PNG", compress_level=1)


def exif_jpeg(img: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", exif=exif.tobytes(), quality=90)
    return buf.getvalue()


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> tuple[bytes, str]:
    """(body, content type) from (field, filename or None for a text field, data) parts."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        ctype = "Content-Type: image/jpeg\r\n" if filename else ""
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{ctype}\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# ----------------------------------------------------------------------------- the hostile set


#: The reply each error code comes with (docs/protocol.md).
STATUS = {
    "ok": 200,
    "bad_request": 400,
    "invalid_image": 400,
    "payload_too_large": 413,
    "image_too_large": 413,
    "unsupported_media_type": 415,
    "invalid_parameters": 422,
    "invalid_image_shape": 422,
}
JPG, PNG = "image/jpeg", "image/png"


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    expect: str  # "ok" (a 200, validated as a PredictResponse) or the ErrorBody code
    ctype: str = JPG
    params: str = ""

    @property
    def status(self) -> int:
        return STATUS[self.expect]


@pytest.fixture(scope="module")
def hostile(astronaut_jpeg: bytes) -> list[Case]:
    rng = np.random.default_rng(1)
    small = encode(np.zeros((16, 16, 3), np.uint8), "PNG")
    photo = astronaut_jpeg
    header_only = photo[: photo.index(b"\xff\xda") + 20]  # SOF and tables, the scan cut short
    two, two_type = multipart([("image", "a.jpg", photo), ("file", "b.jpg", photo)])
    three, three_type = multipart([("image", f"{i}.jpg", photo) for i in range(3)])
    twice, twice_type = multipart([("image", "a.jpg", photo), ("image", "b.jpg", photo)])
    other, other_type = multipart([("image", "a.jpg", photo), ("notes", "n.txt", b"hello")])
    text, text_type = multipart([("image", None, b"not a file")])
    empty, empty_type = multipart([])
    cases = [
        Case("empty body", b"", "bad_request"),
        Case("1 byte", b"\xff", "unsupported_media_type"),
        Case("random bytes as image/jpeg", rng.bytes(4096), "unsupported_media_type"),
        Case("random bytes after a JPEG magic", b"\xff\xd8\xff" + rng.bytes(4096), "invalid_image"),
        Case("random bytes after a PNG magic", b"\x89PNG\r\n\x1a\n" + rng.bytes(4096), "invalid_image", PNG),
        Case("truncated JPEG (header, no scan)", header_only, "invalid_image"),
        Case("JPEG header claiming 60000x60000", jpeg_claiming(60000, 60000), "image_too_large"),
        Case("PNG header claiming 60000x60000", png_claiming(60000, 60000), "image_too_large", PNG),
        Case("real 8000x8000 PNG (64 MP) of 0.2 MB", zero_png(8000), "image_too_large", PNG),
        Case("real 4000x4000 PNG (16 MP), under the limit", zero_png(4000), "ok", PNG),
        Case("PNG with a 256 MiB zTXt chunk", ztxt_bomb(small), "invalid_image", PNG),
        Case("PNG whose pixel data inflates to 256 MiB", idat_bomb(), "ok", PNG),
        Case("valid PNG over the byte limit", noise_png(900), "payload_too_large", PNG),
        Case("1x1 JPEG", encode(np.full((1, 1, 3), 200, np.uint8)), "ok"),
        Case(
            "1x1 PNG, detect=false", encode(np.zeros((1, 1, 4), np.uint8), "PNG"), "ok", PNG, "?detect=false"
        ),
        Case("1x4000 PNG", encode(np.zeros((1, 4000, 3), np.uint8), "PNG"), "invalid_image_shape", PNG),
        Case("multipart: image and file", two, "ok", two_type),
        Case("multipart: 'image' twice", twice, "bad_request", twice_type),
        Case("multipart: image and another file", other, "ok", other_type),
        Case("multipart: three files", three, "bad_request", three_type),
        Case("multipart: 'image' is a text field", text, "invalid_parameters", text_type),
        Case("multipart: no parts", empty, "invalid_parameters", empty_type),
        Case("multipart: no boundary", b"--x\r\n\r\n", "bad_request", "multipart/form-data"),
        Case("JPEG sent as image/gif", photo, "unsupported_media_type", "image/gif"),
        Case("unknown and repeated parameters", photo, "ok", params="?x=1&max_faces=1&max_faces=2"),
    ]
    absurd = ["max_faces=-1", "max_faces=1000000000000000000000", "max_faces=1e3", "max_faces="]
    absurd += ["min_confidence=NaN", "min_confidence=inf", "min_confidence=-1e-9", "min_confidence=0x1"]
    absurd += ["detect=2", "detect="]
    return cases + [Case(f"?{q}", photo, "invalid_parameters", params="?" + q) for q in absurd]


def post(srv: LiveServer, case: Case) -> httpx.Response:
    return httpx.post(
        f"{srv.url}/v1/predict{case.params}",
        content=case.body,
        headers={"content-type": case.ctype},
        timeout=60,
    )


def check(case: Case, resp: httpx.Response) -> None:
    assert "Traceback" not in resp.text
    assert resp.status_code == case.status, f"{case.name}: {resp.status_code} {resp.text}"
    if case.expect == "ok":
        PredictResponse.model_validate_json(resp.content)
    else:
        assert ErrorBody.model_validate_json(resp.content).error.code == case.expect, case.name


def test_every_hostile_input_gets_an_error_body_or_a_correct_reply(
    srv: LiveServer, hostile: list[Case]
) -> None:
    for case in hostile:
        check(case, post(srv, case))
    assert httpx.get(srv.url + "/healthz").json() == {"status": "ok"}
    assert srv.metric("emotion_errors_total", code="internal_error") == 0


def rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_memory_returns_to_baseline_after_repeated_hostile_inputs(
    srv: LiveServer, hostile: list[Case]
) -> None:
    """The server runs in this process (a thread), so this process's RSS is the server's."""
    for case in hostile:  # the first pass grows pools and caches to their working size
        post(srv, case)
    gc.collect()
    baseline = rss_mb()
    for _ in range(3):
        for case in hostile:
            check(case, post(srv, case))
    gc.collect()
    growth = rss_mb() - baseline
    assert growth < 50, f"RSS grew {growth:.0f} MiB over 3 passes of {len(hostile)} hostile requests"
    assert httpx.get(srv.url + "/healthz").status_code == 200


# ----------------------------------------------------------------------------- decoded correctly


def test_every_image_mode_finds_the_face_where_rgb_does(srv: LiveServer, astronaut: np.ndarray) -> None:
    canvas = faces_canvas(astronaut, (300,))
    ref = PredictResponse.model_validate_json(post(srv, Case("rgb", jpeg(canvas), "ok")).content).faces[0].box
    pil = Image.fromarray(canvas)
    gray16 = Image.fromarray(np.asarray(pil.convert("L")).astype(np.uint16) * 257)
    variants = {
        "16-bit RGB PNG": png16_rgb(canvas),
        "16-bit grayscale PNG": _save(gray16, "PNG"),
        "CMYK JPEG": _save(pil.convert("CMYK"), "JPEG"),
        "palette PNG": _save(pil.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "grayscale JPEG": _save(pil.convert("L"), "JPEG"),
        "RGBA PNG (opaque)": _save(pil.convert("RGBA"), "PNG"),
        "RGBA WebP": _save(pil.convert("RGBA"), "WEBP", lossless=True),
        "1-bit PNG": _save(pil.convert("1"), "PNG"),
    }
    for name, data in variants.items():
        resp = post(srv, Case(name, data, "ok", "application/octet-stream"))
        assert resp.status_code == 200, f"{name}: {resp.text}"
        res = PredictResponse.model_validate_json(resp.content)
        assert (res.image.width, res.image.height) == (canvas.shape[1], canvas.shape[0]), name
        if name == "1-bit PNG":
            continue  # dithered black and white: any answer is fine, as long as it is one
        assert len(res.faces) == 1, f"{name}: {len(res.faces)} faces"
        box = res.faces[0].box
        assert max(abs(box.x - ref.x), abs(box.y - ref.y), abs(box.w - ref.w), abs(box.h - ref.h)) <= 12, name


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", [3, 8])
def test_exif_orientations_give_boxes_in_the_upright_image(
    srv: LiveServer, astronaut: np.ndarray, orientation: int
) -> None:
    """Orientation 6 is in test_server_rest; 3 (upside down) and 8 (90 CCW) complete the rotations."""
    canvas = np.full((380, 620, 3), 128, np.uint8)  # wide, face off-centre, so a wrong rotation shows
    canvas[40:340, 40:340] = faces_canvas(astronaut, (300,))[40:340, 40:340]
    upright = (
        PredictResponse.model_validate_json(post(srv, Case("up", jpeg(canvas), "ok")).content).faces[0].box
    )
    stored = np.ascontiguousarray(np.rot90(canvas, k={3: 2, 8: -1}[orientation]))  # what undoes the tag
    res = PredictResponse.model_validate_json(
        post(srv, Case("exif", exif_jpeg(stored, orientation), "ok")).content
    )
    assert (res.image.width, res.image.height) == (620, 380)
    box = res.faces[0].box
    assert abs(box.x - upright.x) <= 6 and abs(box.y - upright.y) <= 6


def test_broken_exif_orientation_is_ignored(srv: LiveServer, astronaut: np.ndarray) -> None:
    resp = post(srv, Case("bad exif", exif_jpeg(faces_canvas(astronaut, (200,)), 99), "ok"))
    assert resp.status_code == 200 and len(resp.json()["faces"]) == 1


def test_multipart_prefers_the_image_field(srv: LiveServer, astronaut: np.ndarray) -> None:
    body, ctype = multipart(
        [
            ("file", "small.png", encode(np.zeros((10, 20, 3), np.uint8), "PNG")),
            ("image", "a.jpg", jpeg(astronaut)),
        ]
    )
    res = PredictResponse.model_validate_json(post(srv, Case("both", body, "ok", ctype)).content)
    assert (res.image.width, res.image.height) == (512, 512)


def flood_headers(port: int, total: int, start: bytes = b"POST /v1/predict HTTP/1.1\r\nX-Pad: ") -> bytes:
    """Send a request head of ``total`` bytes in 64 KiB pieces; what the server said, if anything."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(start)
            for _ in range(total // 65536):
                sock.sendall(b"a" * 65536)
        except OSError:
            pass  # the server closed on us mid-flood: what it should do
        try:
            return sock.recv(1024)
        except OSError:
            return b""


@pytest.mark.parametrize("start", [b"POST /v1/predict?x=", b"POST /v1/predict HTTP/1.1\r\nX-Pad: "])
def test_an_oversized_request_head_is_cut_off_at_64_kib(srv: LiveServer, start: bytes) -> None:
    """httptools sets no limit on a header block: without BoundedHeadProtocol each such client made
    the server buffer everything it sent (50 MiB per connection in seconds)."""
    reply = flood_headers(srv.port, 200_000, start)
    assert reply == b"" or reply.startswith(b"HTTP/1.1 431"), reply[:100]  # 431, or reset mid-send
    if reply:
        body = reply.partition(b"\r\n\r\n")[2]
        assert ErrorBody.model_validate_json(body).error.code == "headers_too_large"
    gc.collect()
    before = rss_mb()
    for _ in range(4):
        flood_headers(srv.port, 20 * MiB, start)
    gc.collect()
    assert rss_mb() - before < 20
    assert httpx.get(srv.url + "/healthz").status_code == 200


@pytest.mark.parametrize("earlier", [0, 1])
def test_a_whole_oversized_head_in_one_write_is_refused(srv: LiveServer, earlier: int) -> None:
    """A 70 KB head that arrives complete (one write; ``earlier``: after a normal request on the same
    keep-alive connection) is refused too: the parser would dispatch it before a count after it."""
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 70_000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        for _ in range(earlier):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(big)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 431"), reply[:100]
    assert ErrorBody.model_validate_json(reply.partition(b"\r\n\r\n")[2]).error.code == "headers_too_large"
    # A head just under the limit, in one write, is answered as usual.
    ok = httpx.get(srv.url + "/healthz", headers={"X-Pad": "a" * 60_000})
    assert ok.status_code == 200


def test_random_bytes_under_any_declared_type_never_crash(srv: LiveServer) -> None:
    rng = np.random.default_rng(2)
    for ctype in ("image/jpeg", "image/png", "image/webp", "application/octet-stream", ""):
        for size in (2, 17, 1000, 70_000):
            for magic in (b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\0\0\0\0WEBP"):
                resp = httpx.post(
                    srv.url + "/v1/predict", content=magic + rng.bytes(size), headers={"content-type": ctype}
                )
                assert resp.status_code in (400, 415), resp.text
                ErrorBody.model_validate_json(resp.content)
    assert srv.metric("emotion_errors_total", code="internal_error") == 0


def test_a_client_vanishing_mid_upload_is_not_a_server_error(
    srv: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Was a 500 ``internal_error`` with a traceback in the log (starlette's ClientDisconnect)."""
    before = srv.metric("emotion_errors_total", code="client_disconnected")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n\xff\xd8\xff")
        time.sleep(0.2)  # the app is now waiting for the rest of the body
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
    assert retry(lambda: srv.metric("emotion_errors_total", code="client_disconnected") == before + 1)
    assert srv.metric("emotion_errors_total", code="internal_error") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
