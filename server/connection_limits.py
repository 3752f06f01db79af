"""Limits on connections that uvicorn leaves out, as subclasses of its HTTP and WebSocket
(asyncio) protocol classes. Their error replies are built from :mod:`server.errors`.

* **Request head** (slowloris, header floods): uvicorn closes idle keep-alive connections, but a
  connection that never sends a request, or sends its request line and headers a byte at a time,
  is kept open forever; and with httptools a header block has no size limit, so one client can
  make the server buffer gigabytes. :class:`BoundedHeadProtocol` answers 408 and closes when the
  head has not fully arrived ``head_timeout`` seconds after the connection opened or the request
  began, and 431 when it grows past ``MAX_HEAD_BYTES``. (The body has its own deadline in the
  app, ``EMOTION_BODY_TIMEOUT_S``, and its size limit, ``EMOTION_MAX_BODY_BYTES``.)
* **Rest of a message** (trailer floods, slowloris after an unread body): once a request's head
  is in, uvicorn parses the rest of the message even when the app answered without reading it
  (a 401, ``/healthz``); trailer lines after a chunked body were appended to the headers with no
  limit, and any byte of such a body cancelled the keep-alive timer for good. The protocol now
  gives the rest of each message ``body_timeout + 1`` seconds from the end of its head (the app's
  own 408 comes first when it is reading the body), closes the connection after
  ``MAX_HEAD_BYTES`` in a row that carry no body (trailers, chunk extensions), and restarts the
  keep-alive timer on bytes that arrive after the reply.
* **Pipelining flood**: uvicorn queues each pipelined request it parses (a request object, ~1.7
  KB) behind the one being answered, and reads on after every reply, so one client sending
  requests nonstop without waiting for replies made the server queue 232,000 of them (590 MB in
  8 s). Past ``MAX_PIPELINED`` queued requests the rest are dropped unanswered and the last one
  queued is answered with ``Connection: close``, which ends the connection (RFC 9112 9.3.2: a
  client retries what a closed connection left unanswered).
* **Stalled WebSocket peer**: a client that stops reading fills the send buffer; uvicorn's
  keepalive then gives up and calls ``transport.close()``, which waits for that buffer to
  drain, i.e. forever, so the socket and the app's stream slot (one of ``EMOTION_MAX_STREAMS``)
  were never released. :class:`AbortingWebSocketProtocol` aborts the connection instead, and
  after the app has finished it gives the closing handshake ``close_timeout`` seconds.
* **Ping flood**: the protocol answers each ping with a pong written straight to the transport,
  past the backpressure the app's own sends wait for, so a client that sends pings and never
  reads made the server buffer every pong (250 MB in 16 s on loopback, on any connection, one
  refused for a bad key too). Past ``MAX_WS_WRITE_BACKLOG`` buffered bytes the connection is
  aborted; the app's sends never get there (they wait below the transport's high-water mark).

Both subclass the protocol classes uvicorn picks itself when ``uvicorn[standard]`` is
installed (httptools for HTTP, the websockets sans-I/O one for WebSocket).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from server.errors import HeadersTooLarge, RequestTimeout, raw_reply

log = logging.getLogger(__name__)

#: Request line plus headers; h11 allows 16 KiB, nginx 32 KiB by default.
MAX_HEAD_BYTES = 64 * 1024

HEAD_TIMEOUT_RESPONSE = raw_reply(RequestTimeout("request headers not received in time"))
HEAD_TOO_LARGE_RESPONSE = raw_reply(HeadersTooLarge(f"request headers over {MAX_HEAD_BYTES} bytes"))
TRAILERS_TOO_LARGE_RESPONSE = raw_reply(
    HeadersTooLarge(f"request trailers or chunk extensions over {MAX_HEAD_BYTES} bytes")
)
MESSAGE_TIMEOUT_RESPONSE = raw_reply(RequestTimeout("request body not received in time"))
#: Bytes a WebSocket connection may have waiting to be sent after a pong: the app's replies stop
#: at the transport's high-water mark (64 KiB) plus one message, so only a peer that pings and does
#: not read gets here.
MAX_WS_WRITE_BACKLOG = 1024 * 1024
#: Pipelined requests queued behind the one being answered; browsers do not pipeline at all.
MAX_PIPELINED = 64
#: The app's body deadline answers first (with its own 408) when the app reads the body.
MESSAGE_GRACE_S = 1.0


class AbortingWebSocketProtocol(WebSocketsSansIOProtocol):
    """Drops a peer that stopped reading instead of waiting forever for it to drain."""

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()  # sends a 1011 close if it can, then close() (which may never finish)
        self._abort()

    def handle_ping(self) -> None:
        if self.transport.is_closing():
            self.conn.data_to_send()  # aborted below, earlier in this read: nothing more is written
            return
        super().handle_ping()
        if self.transport.get_write_buffer_size() > MAX_WS_WRITE_BACKLOG:
            self._abort("its peer sends pings and does not read the pongs")

    async def run_asgi(self) -> None:
        await super().run_asgi()
        # The app is done; whatever close handshake uvicorn started has close_timeout to finish.
        self.loop.call_later(self.close_timeout + 1.0, self._abort)

    def _abort(self, why: str = "its peer stopped reading") -> None:
        if not self.disconnected:
            log.info("aborting a WebSocket connection: %s", why)
            self.transport.abort()


class BoundedHeadProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines and size limits on each request head and on
    the rest of the message (body framing, trailers)."""

    head_timeout = 10.0
    body_timeout = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None  # set while a request head is awaited
        self._head_bytes = 0
        self._head_tail = b""  # the last bytes of the previous read, for a head's end split across two
        self._message_timer: asyncio.TimerHandle | None = None  # set from head complete to message complete
        self._bodiless_bytes = 0  # bytes received since the last body byte, while a message is open
        self._pipeline_full = False  # over MAX_PIPELINED: later requests are dropped, the connection closes

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a request is a slow head too

    def data_received(self, data: bytes) -> None:
        if self._message_timer is None:
            # No message open: these bytes are (the start of) a request head. Counted before the
            # parser sees them, up to the blank line that ends the head: a head that is complete in
            # one read is dispatched by the parser at once, so it could not be refused after.
            self._head_bytes += self._head_part(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(HEAD_TOO_LARGE_RESPONSE, "request head over %d bytes", MAX_HEAD_BYTES)
                return
        else:
            self._bodiless_bytes += len(data)  # on_body resets it while the parser runs
        super().data_received(data)  # may complete the head, which disarms
        if self._message_timer is not None and self._bodiless_bytes > MAX_HEAD_BYTES:
            self._refuse(
                TRAILERS_TOO_LARGE_RESPONSE,
                "over %d bytes of trailers or chunk framing",
                MAX_HEAD_BYTES,
                in_message=True,
            )
        if self._answered() and self.timeout_keep_alive_task is None and not self.transport.is_closing():
            # Bytes of a body nobody reads: uvicorn cancelled its idle timer for them and would
            # only start it again after the next reply; start it now.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _head_part(self, data: bytes) -> int:
        """The bytes of ``data`` up to the end of the head (all of them if it does not end
        in it); the end is looked for across the previous read too, as ``\r\n\r\n`` may be split."""
        tail = self._head_tail
        self._head_tail = data[-3:]
        end = (tail + data).find(b"\r\n\r\n")
        return len(data) if end < 0 else max(0, end + 4 - len(tail))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()  # also for a WebSocket upgrade, whose head ends here
        queued = len(self.pipeline)
        super().on_headers_complete()
        if len(self.pipeline) > queued and (self._pipeline_full or len(self.pipeline) > MAX_PIPELINED):
            self.pipeline.popleft()  # the request just parsed (queued newest first): never answered
            if not self._pipeline_full:
                self._pipeline_full = True
                self.pipeline[0][0].keep_alive = False  # the last one answered closes the connection
                log.info("over %d pipelined requests: answering those queued, then closing", MAX_PIPELINED)
        if not self.parser.should_upgrade():
            self._bodiless_bytes = 0
            self._message_timer = self.loop.call_later(
                self.body_timeout + MESSAGE_GRACE_S, self._message_expired
            )

    def on_body(self, body: bytes) -> None:
        self._bodiless_bytes = 0
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm_message()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_message()
        super().connection_lost(exc)

    def _answered(self) -> bool:
        """Idle as far as the app is concerned: the last request has its full reply (whether or
        not the rest of its body is still arriving) and no new request head has begun."""
        return (
            self._head_timer is None
            and self.cycle is not None
            and self.cycle.response_complete
            and not self.pipeline
        )

    def _disarm_message(self) -> None:
        if self._message_timer is not None:
            self._message_timer.cancel()
            self._message_timer = None

    def _message_expired(self) -> None:
        self._message_timer = None
        self._refuse(
            MESSAGE_TIMEOUT_RESPONSE,
            "request body still arriving after %.1f s",
            self.body_timeout,
            in_message=True,
        )

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._head_bytes = 0
        self._head_tail = b""

    def _expired(self) -> None:
        self._head_timer = None
        self._refuse(HEAD_TIMEOUT_RESPONSE, "request head took over %.1f s", self.head_timeout)

    def _refuse(self, response: bytes, why: str, arg: float, *, in_message: bool = False) -> None:
        """Answer ``response`` (unless the app has begun its own reply to this message) and close."""
        self._disarm()
        self._disarm_message()
        if not self.transport.is_closing():
            log.info("closing a connection: " + why, arg)
            cycle = self.cycle if in_message else None
            if cycle is None or not cycle.response_started:
                self.transport.write(response)  # never into the middle of the app's own reply
                if cycle is not None:
                    cycle.disconnected = True  # the app's receive() sees a disconnect, its send() is dropped
            self.transport.close()  # also stops reading: whatever else it sends is not buffered


def bounded_head_protocol(timeout: float, body_timeout: float = 30.0) -> type[BoundedHeadProtocol]:
    """:class:`BoundedHeadProtocol` with ``timeout`` seconds for each request head and
    ``body_timeout`` (plus a grace second) for the rest of each message."""
    attrs = {"head_timeout": timeout, "body_timeout": body_timeout}
    return type("BoundedHeadProtocol", (BoundedHeadProtocol,), attrs)
