"""Client exceptions; the CLI prints the message as one line and maps the class to an exit code."""

from __future__ import annotations


class ClientError(RuntimeError):
    """Something the user should read as is; exit 1."""


class UsageError(ClientError):
    """Bad arguments or local setup (no window system, unreadable file); retrying cannot help; exit 2."""


class AuthError(UsageError):
    """The server refused the API key (HTTP 401/403 or WS close 1008); exit 2, never reconnect."""


class CaptureError(UsageError):
    """The camera / video / image folder cannot be opened or read."""


class ServerError(ClientError):
    """The server answered with an error body, or with something that is not the protocol."""

    def __init__(
        self, message: str, status: int | None = None, code: str | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code = status, code
        self.detail = detail  # the error body's message alone (without status and code), when there is one


class ServerUnavailable(ClientError):
    """Connection refused/reset/timed out, or the stream closed: worth retrying."""
