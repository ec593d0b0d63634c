"""Typed errors. Every error a user can see is one of these: one line, no traceback.

``status`` is the HTTP status the server answers with, ``exit_code`` the CLI's.
Messages never contain secrets.
"""

from __future__ import annotations

import sys
from typing import Any


def warn(message: str) -> None:
    """One warning line on stderr (the CLI's terminal, the server's log); never raises."""
    try:
        sys.stderr.write(f"gencli: warning: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class GencliError(Exception):
    status = 500
    exit_code = 1
    kind = "server_error"
    partial: list[Any] = []  # events parsed in the same read before a mid-stream error (kept)

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(GencliError):
    """Bad input from the user: a bad field, flag or file."""

    status = 400
    exit_code = 2
    kind = "invalid_request_error"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class ModelNotFound(UsageError):
    status = 404
    kind = "not_found_error"

    def __init__(self, message: str, name: str = ""):
        super().__init__(message, field="model")
        self.name = name


class ContextError(UsageError):
    def __init__(self, message: str):
        super().__init__(message, field="context")


class ImageError(UsageError):
    def __init__(self, message: str):
        super().__init__(message, field="images")


class ConfigError(GencliError):
    """A malformed models.json or .env; names the file, the entry and the fault."""

    status = 500
    exit_code = 1


class MissingKey(GencliError):
    """The model's provider key is not set; names the variable to set."""

    status = 400
    exit_code = 1
    kind = "authentication_error"

    def __init__(self, message: str, variable: str = ""):
        super().__init__(message)
        self.variable = variable


class UpstreamError(GencliError):
    """The upstream provider failed. ``upstream_status`` is what it answered (0: no answer)."""

    status = 502
    exit_code = 1
    kind = "upstream_error"

    def __init__(
        self,
        message: str,
        upstream_status: int = 0,
        retry_after: float | None = None,
        status: int | None = None,
    ):
        super().__init__(message)
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        if status is not None:
            self.status = status


class UpstreamAuthError(UpstreamError):
    """The upstream rejected the key (never includes the key)."""

    kind = "authentication_error"


class UpstreamRateLimited(UpstreamError):
    status = 429
    kind = "rate_limit_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    kind = "timeout_error"


class UpstreamUnreachable(UpstreamError):
    status = 502


class RunnerCrashed(GencliError):
    """The local model's runner process died while it served a request (a crash, an abort, the
    out-of-memory killer); the message names the cause. The next request starts a new runner."""

    status = 500
    exit_code = 1
    kind = "server_error"

    def __init__(self, message: str, returncode: int = 0):
        super().__init__(message)
        self.returncode = returncode


class ServerBusy(GencliError):
    """Too many generations are waiting for the same local model (the queue is full)."""

    status = 503
    exit_code = 1
    kind = "overloaded_error"
