"""Issue 15, resource exhaustion without a key: trailer floods, slowloris after an unread body,
slow progressive JPEGs, memory in the crop step; and the smaller HTTP holes (probes that say
too much after a failed load, 500 replies without ``Connection: close``, HEAD, a Host allow-list).

Every test talks to a real uvicorn server over real sockets; the table in docs/reliability.md
says what each one sends and what comes back.
"""

from __future__ import annotations

import gc
import io
import socket
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from server_harness import LiveServer, faces_canvas, jpeg, retry, server_settings

from emotion_service import EmotionAnalyzer
from server.config import Settings
from server.connection_limits import MAX_PIPELINED
from server.pipeline.runner import Pipeline
from server.runtime import load_analyzer
from shared.protocol import ErrorBody, PredictResponse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from hardening import black_png, many_scan_jpeg, png_from_rows

MiB = 1024 * 1024
KEY = "exhaust-key-0123456789"
BODY_S = 2.0  # this module's body deadline: the protocol closes a message still arriving at BODY_S + 1
HOST = "api.example.test"


@pytest.fixture(scope="module")
def srv(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    settings = server_settings(
        tiny_checkpoint,
        api_keys=KEY,
        body_timeout_s=BODY_S,
        allowed_hosts=f"{HOST},127.0.0.1",
    )
    server = LiveServer(settings).start()
    yield server
    server.stop()


def auth() -> dict[str, str]:
    return {"X-API-Key": KEY}


def rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


def peak_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024


def reset_peak() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def closed_by_server(sock: socket.socket, within: float) -> tuple[bool, bytes]:
    """Whether the server closes ``sock`` within ``within`` seconds; what it sent before."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + within
    got = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


# ----------------------------------------------------------------------------- 1. trailer flood


def chunked_head(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n".encode()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
@pytest.mark.parametrize("path", ["/healthz", "/v1/info"])
def test_a_trailer_flood_is_cut_off(srv: LiveServer, path: str) -> None:
    """Was: every trailer line was appended to the request's headers with no limit (122 MiB of
    trailers raised RSS by ~131 MiB). Now past 64 KiB of trailers the connection is closed."""
    gc.collect()
    before = rss_mb()
    sent = 0
    line = b"X-Trailer: " + b"a" * 1000 + b"\r\n"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        try:
            sock.sendall(chunked_head(path) + b"1\r\nx\r\n0\r\n")
            for _ in range(32 * MiB // (64 * len(line))):
                sock.sendall(line * 64)
                sent += 64 * len(line)
        except OSError:
            pass  # closed mid-flood: what it should do
        closed, reply = closed_by_server(sock, 5.0)
    assert closed, f"the server still accepted trailers after {sent} bytes"
    assert sent < 8 * MiB, f"{sent} bytes of trailers accepted"
    assert reply.startswith(b"HTTP/1.1 "), reply[:80]  # the request itself was answered (200 / 401)
    gc.collect()
    assert rss_mb() - before < 16
    assert httpx.get(srv.url + "/healthz").status_code == 200


def test_trickled_trailers_are_cut_off_by_the_body_deadline(srv: LiveServer) -> None:
    """A chunked request whose trailers arrive a line at a time: was open forever (each byte
    cancelled the keep-alive timer); now closed BODY_S + 1 s after its head."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(chunked_head("/healthz") + b"0\r\n")
        start = time.monotonic()
        sock.settimeout(0.3)
        closed = False
        while time.monotonic() - start < BODY_S + 6:
            try:
                sock.sendall(b"X-Slow: 1\r\n")
                if sock.recv(65536) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        elapsed = time.monotonic() - start
    assert closed, "a request still sending trailers after the body deadline was kept open"
    assert elapsed < BODY_S + 3


def test_a_chunked_body_with_small_trailers_is_still_served(srv: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(chunked_head("/healthz") + b"1\r\nx\r\n0\r\nX-Checksum: abc\r\n\r\n")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # the connection is reusable
        time.sleep(0.5)
        replies = sock.recv(65536)
    assert replies.count(b"HTTP/1.1 200") == 2, replies


# ----------------------------------------------------------------------------- 2. slowloris, unread body


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /v1/info HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n",  # 401, body unread
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n",  # 200, body unread
    ],
    ids=["401", "healthz"],
)
def test_one_more_byte_after_an_unread_body_does_not_keep_the_connection(
    srv: LiveServer, request_head: bytes
) -> None:
    """Was: answered without reading its body, one more body byte cancelled the keep-alive timer
    and nothing restarted it (30 of 30 connections open after 45 s). Now the idle timer starts
    again (uvicorn's keep-alive, 5 s) and the message deadline closes it at the latest."""
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(5)]
    try:
        for sock in socks:
            sock.sendall(request_head)
        for sock in socks:
            assert sock.recv(4096).startswith(b"HTTP/1.1 ")
            sock.sendall(b"x")  # one byte of the unread body
        start = time.monotonic()
        with ThreadPoolExecutor(len(socks)) as pool:
            closed = list(pool.map(lambda s: closed_by_server(s, 8.0)[0], socks))
        assert all(closed), f"{closed.count(False)} of {len(socks)} connections still open after 8 s"
        assert time.monotonic() - start < 8.0
    finally:
        for sock in socks:
            sock.close()


# ----------------------------------------------------------------------------- pipelining


def http_connections(srv: LiveServer) -> list[Any]:
    return [c for c in srv.server.server_state.connections if hasattr(c, "pipeline")]


def test_a_pipelining_flood_is_not_queued_without_bound(srv: LiveServer) -> None:
    """Was: uvicorn queues every pipelined request it parses (a request object each, ~1.7 KB) and
    reads on after each reply, so one client sending ``GET /healthz`` nonstop without reading
    grew the server by 590 MB in 8 s, no key needed. Past ``MAX_PIPELINED`` queued requests the
    rest are dropped, and the connection closes after the last one queued is answered."""
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(request * 5)  # a short pipeline is answered in full, and the connection stays
        got = b""
        while got.count(b"HTTP/1.1 200") < 5:
            got += sock.recv(65536)
        sock.sendall(request)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", srv.port))
    sock.setblocking(False)
    flood, pending, sent, deepest = request * 2000, b"", 0, 0
    start = time.monotonic()
    while time.monotonic() - start < 8 and sent < 32 * MiB:
        pending = pending or flood
        try:
            n = sock.send(pending)
            sent, pending = sent + n, pending[n:]
        except BlockingIOError:
            time.sleep(0.01)
        except OSError:
            break  # the server closed the connection: fine
        deepest = max([deepest, *(len(c.pipeline) for c in http_connections(srv))])
    sock.setblocking(True)
    closed, got = closed_by_server(sock, 10.0)
    sock.close()
    assert deepest <= MAX_PIPELINED, f"{deepest} pipelined requests queued after {sent} bytes sent"
    assert closed, "the connection of the flood was never closed"
    assert 0 < got.count(b"HTTP/1.1 200") < 2 * MAX_PIPELINED


# ----------------------------------------------------------------------------- 3. slow JPEG decode


def test_a_jpeg_with_thousands_of_scans_is_refused_before_decoding(srv: LiveServer) -> None:
    """Was: a 40 MP progressive JPEG whose scan is repeated 4,000 times took 12.7 s to decode
    and held up everyone else. The scans are counted from the markers before decoding."""
    data = many_scan_jpeg(6000, 4000, 2000)  # 24 MP, 2010 scans, about 0.2 MB
    start = time.monotonic()
    resp = httpx.post(srv.url + "/v1/predict", content=data, headers=auth(), timeout=120)
    elapsed = time.monotonic() - start
    assert resp.status_code == 413, resp.text[:200]
    assert ErrorBody.model_validate_json(resp.content).error.code == "image_too_complex"
    assert elapsed < 2.0, f"took {elapsed:.1f} s"


def test_an_ordinary_progressive_jpeg_is_decoded(srv: LiveServer, astronaut: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(faces_canvas(astronaut, (300,))).save(buf, "JPEG", progressive=True, quality=90)
    resp = httpx.post(srv.url + "/v1/predict", content=buf.getvalue(), headers=auth(), timeout=60)
    assert resp.status_code == 200 and len(resp.json()["faces"]) == 1


def test_a_large_photo_is_decoded_at_the_size_the_pipeline_needs(
    srv: LiveServer, astronaut: np.ndarray
) -> None:
    """A 6000x4500 JPEG is decoded at a reduced DCT scale; the face box still comes back in the
    photo's own pixels, where the same scene at 1/5 the size puts it (within rounding)."""
    small = np.full((900, 1200, 3), 128, np.uint8)
    small[300:600, 450:750] = faces_canvas(astronaut, (300,))[40:340, 40:340]
    big = np.asarray(Image.fromarray(small).resize((6000, 4500), Image.Resampling.BILINEAR))
    ref = PredictResponse.model_validate_json(
        httpx.post(srv.url + "/v1/predict", content=jpeg(small), headers=auth(), timeout=60).content
    )
    resp = httpx.post(srv.url + "/v1/predict", content=jpeg(big), headers=auth(), timeout=60)
    res = PredictResponse.model_validate_json(resp.content)
    assert (res.image.width, res.image.height) == (6000, 4500)
    assert len(res.faces) == len(ref.faces) == 1
    a, b = res.faces[0].box, ref.faces[0].box
    assert max(abs(a.x - 5 * b.x), abs(a.y - 5 * b.y), abs(a.w - 5 * b.w), abs(a.h - 5 * b.h)) <= 25
    assert res.timing_ms.decode < 4000


# ----------------------------------------------------------------------------- 4. memory in the crop step


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads peak RSS from /proc")
@pytest.mark.parametrize("detect", ["false", "true"])
def test_memory_per_request_is_bounded_by_what_the_model_needs(srv: LiveServer, detect: str) -> None:
    """Was: a 39 KB black 6324x6324 PNG with detect=false added 1.6 GB of RSS (full-size float
    copies, a roi_align buffer as large as the box). Now the peak stays near the decode itself."""
    data = black_png(6000, 6000, color=2)  # 36 MP RGB, 0.1 MB
    httpx.post(
        srv.url + "/v1/predict?detect=false", content=jpeg(np.zeros((64, 64, 3), np.uint8)), headers=auth()
    )
    gc.collect()
    base = rss_mb()
    reset_peak()
    resp = httpx.post(f"{srv.url}/v1/predict?detect={detect}", content=data, headers=auth(), timeout=120)
    peak = peak_mb() - base
    assert resp.status_code == 200, resp.text[:200]
    assert (resp.json()["image"]["width"], resp.json()["image"]["height"]) == (6000, 6000)
    # Pillow holds the decoded PNG (4 bytes a pixel: 144 MB); everything after it is small.
    assert peak < 320, f"peak RSS +{peak:.0f} MiB for one 36 MP image"


@pytest.mark.parametrize(("width", "height"), [(2_000_000, 20), (40_000_000, 1), (20, 100_000), (4000, 1)])
def test_extreme_aspect_ratios_are_refused_with_a_4xx(srv: LiveServer, width: int, height: int) -> None:
    """Was: 2,000,000x20 added 2.7 GB; 40,000,000x1 raised MemoryError, a 500 with a traceback."""
    row = b"\0" * (1 + width)
    data = png_from_rows(width, height, 8, 0, (row for _ in range(height)))
    resp = httpx.post(srv.url + "/v1/predict?detect=false", content=data, headers=auth(), timeout=120)
    assert resp.status_code == 422, resp.text[:200]
    assert ErrorBody.model_validate_json(resp.content).error.code == "invalid_image_shape"


# ----------------------------------------------------------------------------- 8, 9: failures


def test_probes_after_a_failed_load_say_only_what_a_prober_needs(
    tiny_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret_path = "/srv/private/models/emotion.safetensors"

    def broken(settings: Settings) -> EmotionAnalyzer:
        raise RuntimeError(f"cannot read {secret_path}: permission denied")

    server = LiveServer(server_settings(tiny_checkpoint), analyzer_factory=broken).start(wait_ready=False)
    try:
        assert retry(lambda: server.runtime.load_error is not None)
        for path in ("/healthz", "/readyz"):
            resp = httpx.get(server.url + path)
            assert resp.status_code == 503
            assert ErrorBody.model_validate_json(resp.content).error.code == "load_failed"
            assert secret_path not in resp.text and "permission denied" not in resp.text
            assert str(tiny_checkpoint) not in resp.text and "RuntimeError" not in resp.text
    finally:
        server.stop()
    assert secret_path in caplog.text  # the details are in the server's log


class FailingPipeline(Pipeline):
    """The real pipeline with a fault injected into its batch function."""

    def run(self, jobs: object) -> list[object]:  # type: ignore[override]
        raise RuntimeError("injected fault")


def failing_factory(settings: Settings) -> EmotionAnalyzer:
    """The real analyzer, its pipeline swapped for one with the fault."""
    analyzer = load_analyzer(settings)
    real = analyzer.pipeline
    analyzer.pipeline = FailingPipeline(real.classifier, real.detector, analyzer.device)
    return analyzer


def test_a_500_reply_says_connection_close(tiny_checkpoint: Path, astronaut_jpeg: bytes) -> None:
    """Was: the 500 closed the connection without saying so; a client reusing it got a reset."""
    server = LiveServer(server_settings(tiny_checkpoint, warmup=False), analyzer_factory=failing_factory)
    server.start()
    try:
        with httpx.Client() as client:
            resp = client.post(server.url + "/v1/predict", content=astronaut_jpeg)
            assert resp.status_code == 500
            assert resp.headers.get("connection") == "close"
            assert ErrorBody.model_validate_json(resp.content).error.code == "internal_error"
            assert client.get(server.url + "/healthz").status_code == 200  # a new connection, no reset
    finally:
        server.stop()


# ----------------------------------------------------------------------------- 11. HEAD


def test_head_answers_wherever_get_does(srv: LiveServer) -> None:
    for path, headers in [
        ("/", {}),
        ("/app.js", {}),
        ("/healthz", {}),
        ("/readyz", {}),
        ("/v1/info", auth()),
        ("/metrics", auth()),
    ]:
        get = httpx.get(srv.url + path, headers=headers)
        head = httpx.head(srv.url + path, headers=headers)
        assert get.status_code == 200 and head.status_code == 200, (path, head.status_code)
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]
    assert httpx.head(srv.url + "/v1/info").status_code == 401  # HEAD needs the key where GET does
    assert httpx.head(srv.url + "/v1/predict", headers=auth()).status_code == 405  # POST only


# ----------------------------------------------------------------------------- Host allow-list


def test_a_host_outside_the_allow_list_is_refused(srv: LiveServer) -> None:
    resp = httpx.get(srv.url + "/v1/info", headers={**auth(), "Host": "evil.example"})
    assert resp.status_code == 400
    assert ErrorBody.model_validate_json(resp.content).error.code == "invalid_host"
    assert httpx.get(srv.url + "/v1/info", headers={**auth(), "Host": f"{HOST}:8443"}).status_code == 200
    # probes stay open to orchestrators, which address pods by IP
    assert httpx.get(srv.url + "/healthz", headers={"Host": "10.1.2.3:8000"}).status_code == 200


def test_any_host_is_accepted_by_default(tiny_checkpoint: Path) -> None:
    assert Settings(checkpoint=tiny_checkpoint, device="cpu").allowed_hosts == []


# ----------------------------------------------------------------------------- 3. hanging up


def test_a_request_whose_client_hung_up_is_not_decoded(tiny_checkpoint: Path) -> None:
    """With one decode thread busy, a second request's client hangs up while its decode is
    queued: the decode never starts (was: it ran anyway, costing the same again)."""
    slow = many_scan_jpeg(7000, 5000, 18)  # 35 MP x 28 scans: allowed, about a second to decode
    server = LiveServer(server_settings(tiny_checkpoint, decode_threads=1)).start()
    try:
        decodes = lambda: server.metric("emotion_stage_duration_seconds_count", stage="decode")  # noqa: E731
        before = decodes()
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, server.url + "/v1/predict", content=slow, timeout=120)
            time.sleep(0.3)  # the first decode is running
            head = f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(slow)}\r\n\r\n".encode()
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(head + slow)
                time.sleep(0.3)  # the body is read, its decode queued behind the first
            assert first.result().status_code == 200
        time.sleep(3.0)  # long enough for a second decode to have run
        assert decodes() - before == 1
        assert retry(lambda: server.metric("emotion_errors_total", code="client_disconnected") == 1)
    finally:
        server.stop()
