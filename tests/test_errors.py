"""The error table (server/errors.py): every domain error has a row, the rows are documented, and
REST and the stream answer the same failure from the same row."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from server_harness import LiveServer, jpeg, run, server_settings
from starlette.requests import ClientDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.errors import (
    ERRORS,
    INTERNAL,
    ApiError,
    ErrorSpec,
    HeadersTooLarge,
    NotReady,
    json_reply,
    raw_reply,
    spec_for,
)
from server.pipeline.batcher import BatcherClosed, BatcherFull
from server.pipeline.decode import CorruptImage, DecodeError
from shared.protocol import ErrorBody

PROTOCOL_DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
#: Close codes an endpoint may send (RFC 6455 7.4): 1004-1006 and 1015 are reserved, 4000-4999 private.
SENDABLE_CLOSES = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, *range(4000, 5000)}


def subclasses(cls: type[Exception]) -> set[type[Exception]]:
    found = set(cls.__subclasses__())
    return found.union(*(subclasses(c) for c in found)) if found else found


DOMAIN_ERRORS = sorted(
    subclasses(ApiError)
    | {DecodeError}
    | subclasses(DecodeError)
    | {BatcherFull, BatcherClosed, ClientDisconnect},
    key=lambda c: c.__name__,
)


@pytest.mark.parametrize("error", DOMAIN_ERRORS, ids=lambda c: c.__name__)
def test_every_domain_error_has_its_own_row(error: type[Exception]) -> None:
    spec = ERRORS.get(error)
    assert spec is not None, f"{error.__name__} has no row in server.errors.ERRORS"
    assert 400 <= spec.status < 600 and re.fullmatch(r"[a-z]+(_[a-z]+)*", spec.code)
    assert spec.close in SENDABLE_CLOSES


def test_rows_are_found_along_the_class_hierarchy() -> None:
    class OddDecodeError(CorruptImage):  # a new decode error without a row of its own
        pass

    assert spec_for(OddDecodeError("x")) is ERRORS[CorruptImage]
    assert spec_for(KeyError("a bug")) is INTERNAL
    assert spec_for(BatcherFull("12 items already waiting")).code == "overloaded"


def _section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end, text.index(start))]


def test_every_row_is_documented() -> None:
    """docs/protocol.md lists each status with its code ("Errors") and each close code ("Closes")."""
    doc = PROTOCOL_DOC.read_text()
    errors = _section(doc, "## Errors", "## `POST /v1/predict`")
    closes = _section(doc, "**Closes**", "**Slots.**")
    for spec in [*ERRORS.values(), INTERNAL]:
        rows = [line for line in errors.splitlines() if line.startswith(f"| {spec.status} |")]
        assert any(f"`{spec.code}`" in row for row in rows), (
            f"{spec.status} {spec.code} is not in the Errors table"
        )
        assert re.search(rf"^\| {spec.close} ", closes, re.M), (
            f"close {spec.close} is not in the Closes table"
        )


def test_http_replies_follow_the_row() -> None:
    reply = json_reply(NotReady())
    assert reply.status_code == 503 and reply.headers["retry-after"] == "2"
    body = ErrorBody.model_validate_json(bytes(reply.body))
    assert body.error.code == "not_ready" and "loading" in body.error.message
    # the pipeline's own text is for the log when the row says so
    full = ErrorBody.model_validate_json(bytes(json_reply(BatcherFull("12 items already waiting")).body))
    assert full.error.message == ERRORS[BatcherFull].message
    hidden = ErrorBody.model_validate_json(bytes(json_reply(KeyError("/secret/path")).body)).error
    assert (hidden.code, hidden.message) == ("internal_error", "internal server error")


def test_raw_replies_below_the_app_are_whole_http_messages() -> None:
    data = raw_reply(HeadersTooLarge("request headers over 65536 bytes"))
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert status == "HTTP/1.1 431 Request Header Fields Too Large"
    assert headers["connection"] == "close" and int(headers["content-length"]) == len(body)
    assert ErrorBody.model_validate_json(body).error.code == "headers_too_large"


# ----------------------------------------------------------------------------- on a real server

KEY = "k3y-errors-0123456789"
MAX_PIXELS = 250_000
MAX_BODY = 300_000


@pytest.fixture(scope="module")
def srv(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    settings = server_settings(tiny_checkpoint, api_keys=KEY, max_pixels=MAX_PIXELS, max_body_bytes=MAX_BODY)
    server = LiveServer(settings).start()
    yield server
    server.stop()


def _failures(astronaut: np.ndarray) -> dict[str, tuple[bytes, dict[str, str]]]:
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    auth = {"X-API-Key": KEY}
    cases = {
        "corrupt": (b"\xff\xd8\xff" + b"garbage" * 10, auth),
        "too-many-pixels": (jpeg(astronaut), auth),  # 512 x 512 > MAX_PIXELS
        "sliver": (jpeg(np.zeros((1, 4000, 3), np.uint8)), auth),
        "too-many-bytes": (jpeg(noise, quality=100), auth),
        "no-key": (jpeg(astronaut[:200, :200]), {}),
    }
    assert len(cases["too-many-bytes"][0]) > MAX_BODY and len(cases["too-many-pixels"][0]) < MAX_BODY
    return cases


async def _stream_close(url: str, data: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """Send one frame (a refused stream may already be closing) and read until the server closes."""
    async with connect(url, additional_headers=headers) as ws:
        try:
            await ws.send(data)
            while True:
                await asyncio.wait_for(ws.recv(), 20)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, "the server must send a close frame"
            return exc.rcvd.code, exc.rcvd.reason


def test_rest_and_stream_answer_a_failure_from_the_same_row(srv: LiveServer, astronaut: np.ndarray) -> None:
    seen: dict[str, tuple[ErrorSpec, str]] = {}
    for name, (data, headers) in _failures(astronaut).items():
        resp = httpx.post(
            srv.url + "/v1/predict",
            content=data,
            headers={"Content-Type": "image/jpeg", **headers},
            timeout=30,
        )
        error = ErrorBody.model_validate_json(resp.content).error
        rows = [s for s in ERRORS.values() if (s.status, s.code) == (resp.status_code, error.code)]
        assert rows, f"{name}: REST answered {resp.status_code} {error.code}, which no row gives"
        close, reason = run(_stream_close(srv.ws_url, data, headers))
        assert {s.close for s in rows} == {close}, (
            f"{name}: REST {error.code}, but the stream closed with {close}"
        )
        seen[name] = rows[0], reason
        if name in ("corrupt", "too-many-pixels", "sliver"):  # the decoder's own words
            assert reason.startswith("frame 0: ") and error.message.startswith(reason[9:].removesuffix("..."))
    codes = {name: spec.code for name, (spec, _) in seen.items()}
    assert codes == {
        "corrupt": "invalid_image",
        "too-many-pixels": "image_too_large",
        "sliver": "invalid_image_shape",
        "too-many-bytes": "payload_too_large",
        "no-key": "unauthorized",
    }


def test_stream_errors_count_by_close_code(srv: LiveServer) -> None:
    before = srv.metric("emotion_errors_total", code="ws_1003")
    assert run(_stream_close(srv.ws_url, b"\x89PNG not a jpeg", {"X-API-Key": KEY}))[0] == 1003
    assert srv.metric("emotion_errors_total", code="ws_1003") == before + 1
