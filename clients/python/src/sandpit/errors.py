"""The SDK's one exception hierarchy: every error carries the server's error code.

The server answers errors as ``{"error": {"code", "message"}}`` with a status; ``from_response``
maps that onto the subclass for the status, so callers can catch by kind
(``NotFoundError``) or by code (``err.code == "not_running"``).
"""

from __future__ import annotations

import builtins
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import ExecResult


class SandpitError(Exception):
    """Root of every error the SDK raises.

    ``code`` is the server's stable snake_case code (``"not_found"``, ``"invalid_path"``...),
    or one of the SDK's own (``"connection_error"``, ``"command_failed"``); ``status`` is the
    HTTP status, or ``None`` when no answer came back.
    """

    def __init__(self, message: str, code: str = "error", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status

    def __str__(self) -> str:
        where = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.code}: {self.message}{where}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, status={self.status!r})"


class BadRequestError(SandpitError):
    """400 and other client mistakes: ``bad_request``, ``invalid_path``, ``invalid_id``..."""


class AuthError(SandpitError):
    """401/403: the token is missing or wrong."""


class NotFoundError(SandpitError):
    """404: no such sandbox, file, session, process, context or route."""


class ConflictError(SandpitError):
    """409: ``already_exists``, ``not_empty``, ``not_running``."""


class PayloadTooLargeError(BadRequestError):
    """413: an upload or body over the server's limit."""


class TimeoutError(SandpitError, builtins.TimeoutError):
    """408 from the server (``timeout``, e.g. wait-port), or the client's own read timeout."""


class QuotaExceededError(SandpitError):
    """429 ``quota_exceeded``: the tenant's quota (sandboxes, memory, creations per minute).
    ``retry_after`` is the server's ``Retry-After`` in seconds, when it sent one."""

    def __init__(
        self, message: str, code: str = "quota_exceeded", status: int | None = 429, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code, status)
        self.retry_after = retry_after


class ServerError(SandpitError):
    """5xx: the server or the sandbox failed (``internal``, ``sandbox_unavailable``)."""


class NoSpaceError(ServerError):
    """507 ``no_space``: the sandbox's disk (``limits.disk_mb``) or the server's data dir is
    full."""


class ConnectionError(SandpitError, builtins.ConnectionError):
    """The server could not be reached (code ``connection_error``)."""


class CommandError(SandpitError):
    """A command exited non-zero or timed out; raised by ``ExecResult.check()``."""

    def __init__(self, result: ExecResult) -> None:
        what = "timed out" if result.timed_out else f"exited with code {result.exit_code}"
        tail = result.stderr.strip().splitlines()[-1:] if result.stderr.strip() else []
        message = f"command {what}" + (f": {tail[0]}" if tail else "")
        super().__init__(message, "command_failed", None)
        self.result = result
        self.exit_code = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr


class CodeError(SandpitError):
    """Code run by ``run_code`` raised; raised by ``Execution.check()``."""

    def __init__(self, name: str, value: str, traceback: str) -> None:
        super().__init__(f"{name}: {value}", "code_error", None)
        self.name = name
        self.value = value
        self.traceback = traceback


_BY_STATUS: dict[int, type[SandpitError]] = {
    400: BadRequestError,
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    405: BadRequestError,
    408: TimeoutError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: BadRequestError,
    429: QuotaExceededError,
    507: NoSpaceError,
}


def error_class(status: int) -> type[SandpitError]:
    """The exception class for an HTTP error status."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return ServerError
    if status >= 400:
        return BadRequestError
    return SandpitError


def from_body(status: int, body: bytes, retry_after: str | None = None) -> SandpitError:
    """Build the error for a non-2xx answer from its body (the server's error JSON, or text)
    and, for a 429, its ``Retry-After`` header."""
    code = "http_error"
    message = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        err = parsed["error"]
        code = str(err.get("code", code))
        message = str(err.get("message", message))
    err_class = error_class(status)
    if err_class is QuotaExceededError:
        return QuotaExceededError(message, code, status, _seconds(retry_after))
    return err_class(message, code, status)


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def from_event(data: dict[str, Any]) -> SandpitError:
    """An SSE ``error`` event (``{"code", "message"}``) as an exception."""
    code = str(data.get("code", "stream_error"))
    message = str(data.get("message", "the stream failed"))
    if code in ("timeout", "TimeoutError"):
        return TimeoutError(message, code, None)
    if code in ("not_found", "route_not_found"):
        return NotFoundError(message, code, None)
    if code in ("not_running", "already_exists"):
        return ConflictError(message, code, None)
    if code == "no_space":
        return NoSpaceError(message, code, None)
    return ServerError(message, code, None)
