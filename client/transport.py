"""Talking to the server: REST predict, the WS stream connection, and reconnect backoff.

Every reply is validated against `shared.protocol`, so a server/client version skew fails
loudly here instead of drawing garbage.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from client.errors import AuthError, ClientError, ServerError, ServerUnavailable, UsageError
from shared.protocol import ErrorBody, PredictResponse, StreamControl, StreamResult

WS_1008_POLICY_VIOLATION = 1008
STREAM_PATH = "/v1/stream"
PREDICT_PATH = "/v1/predict"
AUTH_STATUSES = frozenset({401, 403})
CLOSE_NAMES = {
    1000: "normal",
    1001: "going away",
    1006: "connection lost",
    1011: "server error",
    1012: "restart",
    1013: "try again later",
}
#: Closes that mean every frame we would send gets the same answer, so reconnecting cannot help.
FATAL_CLOSES = {1003: "frames not accepted", 1009: "frame too big (lower --width or --quality)"}


def _split(server: str) -> tuple[str, str, str]:
    if "://" not in server:
        server = "http://" + server
    parts = urlsplit(server)
    if parts.scheme not in {"http", "https", "ws", "wss"} or not parts.netloc:
        raise UsageError(f"bad --server URL {server!r}: expected http(s)://host:port")
    secure = parts.scheme in {"https", "wss"}
    return ("https" if secure else "http"), parts.netloc, parts.path.rstrip("/")


def http_url(server: str, path: str) -> str:
    """`server` may be http(s):// or ws(s):// with an optional path prefix (reverse proxies)."""
    scheme, netloc, prefix = _split(server)
    return urlunsplit((scheme, netloc, prefix + path, "", ""))


def ws_url(server: str, path: str = STREAM_PATH) -> str:
    scheme, netloc, prefix = _split(server)
    return urlunsplit(("wss" if scheme == "https" else "ws", netloc, prefix + path, "", ""))


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def parse_error(text: str | bytes) -> ErrorBody | None:
    try:
        return ErrorBody.model_validate_json(text)
    except ValidationError:
        return None


def _http_error(resp: httpx.Response) -> ClientError:
    body = parse_error(resp.content)
    detail = (
        f"{body.error.code}: {body.error.message}" if body else resp.text[:200].strip() or resp.reason_phrase
    )
    if resp.status_code in AUTH_STATUSES:
        return AuthError(f"API key refused by the server (HTTP {resp.status_code} {detail}); check --api-key")
    return ServerError(
        f"server error HTTP {resp.status_code}: {detail}",
        resp.status_code,
        body.error.code if body else None,
        body.error.message if body else None,
    )


def predict(
    server: str,
    image: Path | bytes,
    api_key: str | None = None,
    timeout: float = 30.0,
    params: dict[str, str] | None = None,
    client: httpx.Client | None = None,
    name: str = "image",
) -> PredictResponse:
    """POST one image as multipart `image`; the server sniffs the format, so the bytes go as they are.

    `params` are the endpoint's query options (max_faces, min_confidence, detect); `client` reuses
    one connection pool across many calls.
    """
    url = http_url(server, PREDICT_PATH)
    data = image.read_bytes() if isinstance(image, Path) else image
    files = {"image": (image.name if isinstance(image, Path) else name, data, "application/octet-stream")}
    try:
        if client is None:
            resp = httpx.post(url, files=files, params=params, headers=auth_headers(api_key), timeout=timeout)
        else:
            resp = client.post(
                url, files=files, params=params, headers=auth_headers(api_key), timeout=timeout
            )
    except httpx.TransportError as exc:
        raise ServerUnavailable(f"cannot reach {url}: {exc}") from exc
    if resp.status_code != 200:
        raise _http_error(resp)
    try:
        return PredictResponse.model_validate_json(resp.content)
    except ValidationError as exc:
        raise ServerError(f"reply from {url} does not match the protocol: {exc}") from exc


def server_info(server: str, api_key: str | None = None, timeout: float = 10.0) -> dict[str, object]:
    """`GET /v1/info` as a dict (limits, classes, model); raises like `predict`."""
    url = http_url(server, "/v1/info")
    try:
        resp = httpx.get(url, headers=auth_headers(api_key), timeout=timeout)
    except httpx.TransportError as exc:
        raise ServerUnavailable(f"cannot reach {url}: {exc}") from exc
    if resp.status_code != 200:
        raise _http_error(resp)
    info: dict[str, object] = resp.json()
    return info


def parse_stream_message(msg: str | bytes) -> StreamResult | ErrorBody:
    """One server message of `WS /v1/stream`, validated against the protocol."""
    if isinstance(msg, bytes):
        raise ServerError("unexpected binary message from server")
    data = json.loads(msg)
    if isinstance(data, dict) and "error" in data:
        return ErrorBody.model_validate(data)
    try:
        return StreamResult.model_validate(data)
    except ValidationError as exc:
        raise ServerError(f"stream reply does not match the protocol: {exc}") from exc


@dataclass
class Backoff:
    """Exponential backoff with full jitter, so many clients do not reconnect in lockstep."""

    initial: float = 0.5
    maximum: float = 10.0
    factor: float = 2.0
    jitter: float = 0.2
    attempt: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * self.factor**self.attempt)
        self.attempt += 1
        return base * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        self.attempt = 0


class StreamConnection:
    """One WS /v1/stream connection. Frame indices restart at 0 on every connection (server side too)."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self.sent = 0

    @classmethod
    async def open(
        cls, server: str, api_key: str | None = None, open_timeout: float = 5.0
    ) -> StreamConnection:
        url = ws_url(server)
        try:
            ws = await connect(
                url,
                additional_headers=auth_headers(api_key),
                open_timeout=open_timeout,
                max_size=2**22,
                ping_interval=10,
                ping_timeout=10,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            body = parse_error(bytes(exc.response.body or b""))
            detail = f" ({body.error.message})" if body else ""
            if status in AUTH_STATUSES:
                raise AuthError(f"API key refused by {url}: HTTP {status}{detail}; check --api-key") from exc
            raise ServerUnavailable(f"{url} rejected the WebSocket handshake: HTTP {status}{detail}") from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise ServerUnavailable(f"cannot connect to {url}: {exc or type(exc).__name__}") from exc
        return cls(ws)

    async def send_control(self, control: StreamControl) -> None:
        try:
            await self._ws.send(control.model_dump_json(exclude_none=True))
        except ConnectionClosed as exc:
            raise self._closed(exc) from exc

    async def send_frame(self, jpeg: bytes) -> int:
        """Send one JPEG and return the index the server will echo in its reply."""
        idx = self.sent
        try:
            await self._ws.send(jpeg)
        except ConnectionClosed as exc:
            raise self._closed(exc) from exc
        self.sent += 1
        return idx

    async def results(self) -> AsyncIterator[StreamResult | ErrorBody]:
        """Replies until the connection closes; a policy close (bad key) raises AuthError."""
        try:
            async for msg in self._ws:
                yield self._parse(msg)
        except ConnectionClosed as exc:
            raise self._closed(exc) from exc
        raise self._closed(None)

    def _closed(self, exc: ConnectionClosed | None) -> ClientError:
        code = exc.rcvd.code if exc and exc.rcvd else self._ws.close_code
        reason = (exc.rcvd.reason if exc and exc.rcvd else self._ws.close_reason) or ""
        if code == WS_1008_POLICY_VIOLATION:
            return AuthError(
                f"server closed the stream: policy violation (1008) {reason}".strip() + "; check --api-key"
            )
        if code in FATAL_CLOSES:
            return ServerError(
                f"server closed the stream: {FATAL_CLOSES[code]} ({code}) {reason}".strip(), code=str(code)
            )
        name = CLOSE_NAMES.get(code or 1006, "closed")
        return ServerUnavailable(
            f"stream closed by server: {name} ({code or 1006}{', ' + reason if reason else ''})"
        )

    @staticmethod
    def _parse(msg: str | bytes) -> StreamResult | ErrorBody:
        return parse_stream_message(msg)

    async def close(self) -> None:
        await self._ws.close()
