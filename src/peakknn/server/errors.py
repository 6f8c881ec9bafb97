"""The errors a request can end with: `ApiError(status, message)`, answered as
{"error": message} with that HTTP status (app.py installs the handler)."""

from __future__ import annotations


class ApiError(Exception):
    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(ApiError):
    status = 400


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class TooLarge(ApiError):
    status = 413


class Unavailable(ApiError):
    """The server cannot take the request now (queue full, collection failed, shutting down)."""

    status = 503


def fault_message(e: Exception) -> str:
    """The {"error": ...} of a 500: a server fault, named by its type and message."""
    return f"internal server error: {type(e).__name__}: {e}"
