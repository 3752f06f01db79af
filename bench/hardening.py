"""Issue 15's probes against a real ``emotion-server`` subprocess: what was sent, what came back.

Each probe is one hostile client from the issue (trailer floods, slowloris after an unread
body, a 40 MP JPEG with 4,000 scans, huge and extreme-aspect PNGs, a 7.6 MiB control message,
encoded key parameters, idle streams, library warnings, HEAD, a cross-site page, a 300-frame
burst under the frame cap). It prints one markdown table row per probe; run it on two trees
to compare before and after:

    python bench/hardening.py                               # this checkout
    python bench/hardening.py --repo /tmp/before            # another tree (same venv)

The image generators are shared with the tests (tests/test_reliability_*.py).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import serverproc
from PIL import Image
from serverproc import ServerProcess, proc_status
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

MiB = 1024 * 1024
KEY = "probe-key-0123456789"

# ----------------------------------------------------------------------------- hostile images


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment; a scan's end includes its entropy-coded data."""
    i, out = 2, []
    while i < len(data):
        marker = data[i + 1]
        if marker == 0xD9:
            out.append((marker, i, i + 2))
            break
        end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xDA:
            while True:
                end = data.index(b"\xff", end)
                if data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                    end += 2
                    continue
                break
        out.append((marker, i, end))
        i = end
    return out


def many_scan_jpeg(width: int, height: int, repeats: int) -> bytes:
    """A valid progressive black JPEG whose last scan is repeated ``repeats`` times: small, slow to decode."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buf, "JPEG", progressive=True, quality=50)
    data = buf.getvalue()
    _, start, end = [s for s in jpeg_segments(data) if s[0] == 0xDA][-1]
    return data[:end] + data[start:end] * repeats + data[end:]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_from_rows(width: int, height: int, depth: int, color: int, rows: Iterator[bytes]) -> bytes:
    """A PNG streamed from raw scanlines (filter byte included), compressed as they come."""
    z = zlib.compressobj(6)
    idat = b"".join(z.compress(row) for row in rows) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def black_png(width: int, height: int, color: int = 0) -> bytes:
    """A real black PNG (gray, ``color=0``, or RGB, ``color=2``): a few KB for millions of pixels."""
    row = b"\0" * (1 + width * (3 if color == 2 else 1))
    return png_from_rows(width, height, 8, color, (row for _ in range(height)))


def exif_bomb_jpeg(entries: int = 5000) -> bytes:
    """A 64x64 JPEG whose EXIF block has ``entries`` entries, each too large for the file:
    Pillow warns once per entry ("Tag data larger than file. Skipping tag N")."""
    ifd = struct.pack("<H", entries) + b"".join(
        struct.pack("<HHII", 0x9000 + i, 4, 1000, 8) for i in range(entries)
    )
    app1 = b"Exif\0\0" + b"II*\0" + struct.pack("<I", 8) + ifd + b"\0\0\0\0"
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


# ----------------------------------------------------------------------------- probes


def still_open(sock: socket.socket) -> bool:
    """Whether the server has not closed ``sock`` (whatever it sent before is read and dropped)."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def trailer_flood(srv: ServerProcess) -> str:
    rss0 = srv.rss_mb()
    line = b"X-Trailer: " + b"a" * 1000 + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n")
            while sent < 64 * MiB:
                sock.sendall(line * 64)
                sent += 64 * len(line)
        except OSError:
            pass
        time.sleep(1.0)
        open_ = still_open(sock)
    state = "open" if open_ else "closed"
    return f"{sent / MiB:.1f} MiB accepted, connection {state}, RSS {srv.rss_mb() - rss0:+.0f} MiB"


def unread_body(srv: ServerProcess) -> str:
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(30)]
    for sock in socks:
        sock.sendall(b"GET /v1/info HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    status = {sock.recv(4096)[:12] for sock in socks}
    for sock in socks:
        sock.sendall(b"x")
    time.sleep(12.0)
    left = sum(still_open(s) for s in socks)
    for sock in socks:
        sock.close()
    return f"{b','.join(status).decode()}; {left} of 30 open 12 s after their last byte"


def post(
    srv: ServerProcess, data: bytes, params: str = "", timeout: float = 120.0
) -> tuple[str, float, float]:
    """'status code', seconds, peak RSS growth (MiB) of the server during the request."""
    base = srv.rss_mb()
    Path(f"/proc/{srv.pid}/clear_refs").write_text("5")  # resets VmHWM
    t0 = time.monotonic()
    try:
        resp = httpx.post(srv.url + "/v1/predict" + params, content=data, headers=srv.auth(), timeout=timeout)
        what = f"{resp.status_code} {resp.json()['error']['code']}" if resp.status_code != 200 else "200"
    except httpx.TimeoutException:
        what = f"no reply in {timeout:.0f} s"
    except httpx.TransportError as exc:
        what = type(exc).__name__
    peak = int(proc_status(srv.pid)["VmHWM"].split()[0]) / 1024 - base
    return what, time.monotonic() - t0, peak


def slow_jpeg(srv: ServerProcess) -> str:
    data = many_scan_jpeg(7200, 5500, 4000)
    scans = data.count(b"\xff\xda")
    what, secs, _ = post(srv, data, timeout=60.0)
    return f"{len(data) / 1e3:.0f} KB, 40 MP, {scans} scans: {what} in {secs:.2f} s"


def crop_memory(width: int, height: int) -> Callable[[ServerProcess], str]:
    def probe(srv: ServerProcess) -> str:
        data = black_png(width, height)
        what, secs, peak = post(srv, data, "?detect=false")
        return (
            f"{len(data) / 1e3:.0f} KB PNG, `detect=false`: {what} in {secs:.2f} s, peak RSS {peak:+.0f} MiB"
        )

    return probe


def run_ws(coro: Any, timeout: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def control_flood(srv: ServerProcess) -> str:
    text = json.dumps({f"f{i}": 0 for i in range(800_000)}, separators=(",", ":"))

    async def main() -> tuple[int, float, float]:
        async with connect(f"{srv.ws_url}?api_key={KEY}", max_size=None) as ws:
            t0 = time.monotonic()
            await ws.send(text)
            health = asyncio.create_task(asyncio.to_thread(httpx.get, srv.url + "/healthz", timeout=30))
            t1 = time.monotonic()
            await health
            health_s = time.monotonic() - t1
            reply = await ws.recv()
            return len(reply), time.monotonic() - t0, health_s

    size, secs, health_s = run_ws(main())
    return (
        f"{len(text) / MiB:.1f} MiB text: a {size:,}-byte `invalid_control` reply after {secs:.2f} s; "
        f"/healthz meanwhile {health_s:.2f} s"
    )


def encoded_key(srv: ServerProcess) -> str:
    found = []
    for name in ("api%5Fkey", "%61pi_key"):

        async def main(name: str = name) -> str:
            async with connect(f"{srv.ws_url}?{name}={KEY}") as ws:
                await ws.send(b"\xff\xd8\xff")  # closes with 1003: authenticated, then refused
                try:
                    await asyncio.wait_for(ws.recv(), 10)
                except ConnectionClosed as exc:
                    return str(exc.rcvd.code if exc.rcvd else "?")
                return "answered"

        code = run_ws(main())
        time.sleep(0.2)
        found.append(
            f"`?{name}=`: close {code}, key in log: {'yes' if KEY in srv.log_path.read_text() else 'no'}"
        )
    return "; ".join(found)


def idle_slots(srv: ServerProcess, limit: int, idle_s: float) -> str:
    async def main() -> str:
        idle = [await connect(f"{srv.ws_url}?api_key={KEY}") for _ in range(limit)]
        async with connect(f"{srv.ws_url}?api_key={KEY}") as extra:
            try:
                await asyncio.wait_for(extra.recv(), 5)
                first = "answered"
            except ConnectionClosed as exc:
                first = f"{exc.rcvd.code if exc.rcvd else '?'}"
        await asyncio.sleep(idle_s + 2)
        codes = []
        for ws in idle:
            try:
                await asyncio.wait_for(ws.recv(), 0.5)
            except ConnectionClosed as exc:
                codes.append(exc.rcvd.code if exc.rcvd else 0)
            except TimeoutError:
                codes.append(0)
            await ws.close()
        return (
            f"{limit} idle streams, then one more: {first}; {idle_s + 2:.0f} s later the idle ones: "
            + ", ".join(f"{codes.count(c)} x {c or 'still open'}" for c in sorted(set(codes)))
        )

    return str(run_ws(main(), 120))


def exif_warnings(srv: ServerProcess) -> str:
    def lines() -> int:  # not counting the access log's one line per request
        return sum("uvicorn.access" not in line for line in srv.log_path.read_text().splitlines())

    before = lines()
    data = exif_bomb_jpeg()
    statuses = [
        httpx.post(srv.url + "/v1/predict", content=data, headers=srv.auth(), timeout=30).status_code
        for _ in range(3)
    ]
    return f"3 x {len(data) / 1e3:.0f} KB JPEG: {statuses}, {lines() - before} non-access log lines"


def head(srv: ServerProcess) -> str:
    paths = ["/", "/healthz", "/readyz", "/v1/info"]
    return ", ".join(f"{p} {httpx.head(srv.url + p, headers=srv.auth()).status_code}" for p in paths)


def cross_site(srv: ServerProcess) -> str:
    async def main() -> str:
        async with connect(
            f"{srv.ws_url}?api_key={KEY}", additional_headers={"Origin": "http://evil.example"}
        ) as ws:
            try:
                await asyncio.wait_for(ws.recv(), 5)
            except ConnectionClosed as exc:
                return f"close {exc.rcvd.code} {exc.rcvd.reason!r}" if exc.rcvd else "closed"
            except TimeoutError:
                return "stream open"
            return "answered"

    return str(run_ws(main()))


def newest_wins(srv: ServerProcess, frame: bytes) -> str:
    async def main() -> str:
        replies: list[dict[str, Any]] = []
        async with connect(f"{srv.ws_url}?api_key={KEY}") as ws:
            for _ in range(300):
                await ws.send(frame)
            while True:
                try:
                    replies.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
                except TimeoutError:
                    break
        dropped = sum(r["dropped"] for r in replies)
        n = len(replies)
        return (
            f"last reply for frame {replies[-1]['frame']}; {n} answered + {dropped} dropped = {n + dropped}"
        )

    return str(run_ws(main(), 120))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, default=serverproc.REPO, help="tree to run the server from")
    p.add_argument("--checkpoint", type=Path, help="EMOTION_CHECKPOINT (default: the tree's bundled one)")
    args = p.parse_args()
    serverproc.REPO = args.repo.resolve()
    env = {
        "EMOTION_API_KEYS": KEY,
        "EMOTION_HEADER_TIMEOUT_S": "10",
        "EMOTION_BODY_TIMEOUT_S": "10",
        "EMOTION_STREAM_IDLE_TIMEOUT_S": "5",
        "EMOTION_MAX_STREAMS": "4",
        "EMOTION_STREAM_MAX_FPS": "5",
        "EMOTION_LOG_LEVEL": "info",  # access and handshake lines: where a key would show
    }
    if args.checkpoint:
        env["EMOTION_CHECKPOINT"] = str(args.checkpoint)
    rng = np.random.default_rng(0)
    frame_buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(frame_buf, "JPEG", quality=70)
    probes: list[tuple[str, Callable[[ServerProcess], str]]] = [
        ("1 trailer flood", trailer_flood),
        ("2 unread body + 1 byte", unread_body),
        ("4 6324x6324 PNG", crop_memory(6324, 6324)),
        ("4 2,000,000x20 PNG", crop_memory(2_000_000, 20)),
        ("4 40,000,000x1 PNG", crop_memory(40_000_000, 1)),
        ("5 control message, 800,000 unknown fields", control_flood),
        ("6 encoded key parameter", encoded_key),
        ("7 idle streams", lambda s: idle_slots(s, 4, 5.0)),
        ("10 EXIF warnings", exif_warnings),
        ("11 HEAD", head),
        ("Origin", cross_site),
        ("issue 12: 300-frame burst at 5 fps cap", lambda s: newest_wins(s, frame_buf.getvalue())),
        ("3 progressive JPEG, 4,000 scans", slow_jpeg),  # last: before the fix it runs on after the timeout
    ]
    print(f"server tree: {args.repo}")
    print("| probe | came back |\n| --- | --- |")
    with ServerProcess(env=env) as srv:
        for name, probe in probes:
            try:
                result = probe(srv)
            except Exception as exc:  # a probe that breaks is a result too
                result = f"probe failed: {type(exc).__name__}: {exc}"
            print(f"| {name} | {result} |", flush=True)
            if srv.proc is None or srv.proc.poll() is not None:
                print("| server | exited |")
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
