"""The one shape of error the core raises for bad requests: a message for the user and an HTTP status."""
from __future__ import annotations


class RequestError(Exception):
    """A request the core will not carry out; `status` is the HTTP status it maps to."""

    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


def shorten(text: str, limit: int = 100) -> str:
    """Client input echoed in a message, cut to `limit` characters: a 2 MB name makes no better error."""
    return text if len(text) <= limit else text[:limit] + "…"
