"""A lockstep WebSocket stream: one frame in flight, every frame answered, reconnecting when lost.

The video job sends a file's frames through it (no frame may be dropped, unlike the live `stream`
command, which keeps only the newest); `bench/proxy_failover.py` drives it through a proxy.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from client.errors import AuthError, ClientError, ServerError, ServerUnavailable
from shared.protocol import ErrorBody, StreamControl, StreamResult


class LockstepStream:
    """`WS /v1/stream` with one frame in flight: every frame sent is answered, in order.

    A connection lost mid-video is reopened (with backoff, for up to `retry_for` seconds, e.g.
    through a proxy to another replica) and the unanswered frame is sent again; track ids then
    restart, as they do on any new stream. A server that never answered fails at once.
    """

    def __init__(
        self, server: str, api_key: str | None, control: StreamControl, retry_for: float = 30.0
    ) -> None:
        from shared.protocol import ModelRef

        self.server, self.api_key, self.control, self.retry_for = server, api_key, control, retry_for
        self.model = ModelRef(name="server", version="stream")
        self.reconnects = 0
        self._connected_once = False
        self._ws: Any = None
        self._sent = 0
        try:
            from client.transport import server_info

            model = server_info(server, api_key).get("model", {})
            if isinstance(model, dict):
                self.model = ModelRef(name=str(model.get("name")), version=str(model.get("version")))
        except ClientError:
            pass

    def _connect(self) -> None:
        from websockets.exceptions import InvalidStatus, WebSocketException
        from websockets.sync.client import connect

        from client.transport import AUTH_STATUSES, auth_headers, ws_url

        url = ws_url(self.server)
        try:
            ws = connect(url, additional_headers=auth_headers(self.api_key), open_timeout=10, max_size=2**22)
            # Entered like a context manager (closed in close()): websockets 17.1+ deprecates a bare
            # connect(), and its `legacy=True` spelling does not exist in the older versions we support.
            self._ws = ws.__enter__()
        except InvalidStatus as exc:
            if exc.response.status_code in AUTH_STATUSES:
                raise AuthError(f"API key refused by {url}; check --api-key") from exc
            raise ServerUnavailable(f"{url} refused the stream: HTTP {exc.response.status_code}") from exc
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise ServerUnavailable(f"cannot connect to {url}: {exc or type(exc).__name__}") from exc
        self._sent = 0
        self._connected_once = True
        self._ws.send(self.control.model_dump_json(exclude_none=True))

    def _exchange(self, jpeg: bytes) -> StreamResult:
        from websockets.exceptions import ConnectionClosed

        from client.transport import parse_stream_message

        try:
            if self._ws is None:
                self._connect()
            index = self._sent
            self._ws.send(jpeg)
            self._sent += 1
            while True:
                msg = self._ws.recv(timeout=60)
                parsed = parse_stream_message(msg)
                if isinstance(parsed, ErrorBody):
                    raise ServerError(f"stream error {parsed.error.code}: {parsed.error.message}")
                if parsed.frame == index:
                    return parsed
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            reason = exc.rcvd.reason if exc.rcvd else ""
            self._ws = None
            if code == 1008:
                why = f"policy violation (1008) {reason}".strip()
                raise AuthError(f"server closed the stream: {why}; check --api-key") from exc
            if code in (1003, 1009):
                raise ServerError(f"server refused a frame ({code} {reason})") from exc
            raise ServerUnavailable(f"stream closed ({code} {reason})".strip()) from exc
        except (OSError, TimeoutError) as exc:
            self._ws = None
            raise ServerUnavailable(f"stream lost: {exc or type(exc).__name__}") from exc

    def ask(self, jpeg: bytes) -> StreamResult:
        from client.transport import Backoff

        backoff, deadline = Backoff(), time.monotonic() + self.retry_for
        while True:
            try:
                return self._exchange(jpeg)
            except ServerUnavailable:
                if not self._connected_once or time.monotonic() > deadline:
                    raise  # a server that never answered fails at once; a lost one is retried
                self.close()
                self.reconnects += 1
                time.sleep(backoff.next_delay())

    def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close()
            self._ws = None
