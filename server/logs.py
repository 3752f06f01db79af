"""What reaches the server's log: API keys masked, library warnings rate-limited.

* **Keys**: the WebSocket accepts ``?api_key=``, and uvicorn (access log) and websockets
  (handshake debug lines) log request targets. Parameter names are URL-decoded before they
  are compared, because ``?api%5Fkey=`` and ``?%61pi_key=`` authenticate too (starlette
  decodes them): every parameter whose decoded name is ``api_key`` has its value masked.
* **Warnings**: libraries report odd input with :func:`warnings.warn`, and Pillow warns once
  per broken EXIF entry, each with its own text, so Python's once-per-message rule let one
  small JPEG write 10,000 lines. Warnings go to the ``py.warnings`` logger instead, at most
  ``WARNINGS_PER_MINUTE`` per source line a minute; how many were left out is logged with the
  next warning from that line after the minute.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import warnings
from typing import Any
from urllib.parse import unquote_plus

#: ``?`` or ``&``, a parameter name, ``=``, its value (up to the next separator or quote).
_PARAM = re.compile(r"([?&])([^=&?\s\"']{1,64})=([^&\s\"']*)")
KEY_PARAM = "api_key"
WARNINGS_PER_MINUTE = 5


def mask_keys(text: str) -> str:
    """``...?api%5Fkey=secret&x=1`` -> ``...?api%5Fkey=***&x=1``."""

    def repl(m: re.Match[str]) -> str:
        if unquote_plus(m.group(2)).strip().lower() == KEY_PARAM:
            return f"{m.group(1)}{m.group(2)}=***"
        return m.group(0)

    return _PARAM.sub(repl, text) if "=" in text else text


class RedactApiKeys(logging.Filter):
    """Masks API keys in query strings in the records of the logger it is attached to."""

    def filter(self, record: logging.LogRecord) -> bool:
        def mask(value: object) -> object:
            return mask_keys(value) if isinstance(value, str) else value

        record.msg = mask(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(mask(a) for a in record.args)
        return True


def install_redaction() -> None:
    """uvicorn's access and error loggers (the latter also carries websockets' handshake lines)."""
    for name in ("uvicorn.access", "uvicorn.error", "websockets.server"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactApiKeys) for f in logger.filters):
            logger.addFilter(RedactApiKeys())


class WarningLimiter:
    """``warnings.showwarning`` replacement: to a logger, ``per_minute`` per source line."""

    def __init__(self, per_minute: int = WARNINGS_PER_MINUTE, logger: str = "py.warnings") -> None:
        self.per_minute = per_minute
        self.log = logging.getLogger(logger)
        self._lock = threading.Lock()  # decoding threads warn concurrently
        self._windows: dict[tuple[Any, ...], tuple[float, int, int]] = {}  # key -> (start, shown, left out)

    def __call__(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        key = (category, filename, lineno)
        now = time.monotonic()
        with self._lock:
            start, shown, left_out = self._windows.get(key, (now, 0, 0))
            if now - start >= 60.0:
                if left_out:
                    self.log.warning(
                        "%d more %s from %s:%d left out in the last minute",
                        left_out,
                        category.__name__,
                        filename,
                        lineno,
                    )
                start, shown, left_out = now, 0, 0
            if shown < self.per_minute:
                shown += 1
                self._windows[key] = (start, shown, left_out)
                suffix = (
                    " (further ones from here this minute are suppressed)" if shown == self.per_minute else ""
                )
                self.log.warning("%s:%d: %s: %s%s", filename, lineno, category.__name__, message, suffix)
            else:
                self._windows[key] = (start, shown, left_out + 1)


def route_warnings_to_log(per_minute: int = WARNINGS_PER_MINUTE) -> None:
    """For the server process (not for tests, whose warnings filters turn warnings into errors).

    Python's filters still decide which warnings are shown (by default each distinct text once);
    the limiter caps how many of those reach the log."""
    warnings.showwarning = WarningLimiter(per_minute)
