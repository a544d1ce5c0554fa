"""One error shape for the API: `{"error": "..."}` with a fitting status, never a stack trace."""
from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from ..errors import RequestError, shorten
from ..library import NotFound
from ..vocabulary import NoVocabularyMatch

log = logging.getLogger(__name__)


class ApiError(RequestError):
    """A request the HTTP layer refuses before reaching the core."""

    def __init__(self, status: int, message: str):
        super().__init__(message, status)


def error_response(status: int, message: str, **details):
    response = jsonify({"error": message, **details})
    response.status_code = status
    return response


def init_app(app: Flask) -> None:
    @app.errorhandler(RequestError)
    def refused(exc: RequestError):
        return error_response(exc.status, exc.message)

    @app.errorhandler(NoVocabularyMatch)
    def unknown_words(exc: NoVocabularyMatch):
        return error_response(exc.status, exc.message, suggestions=exc.suggestions)

    @app.errorhandler(NotFound)
    def not_found(exc: NotFound):
        return error_response(404, f"No image named {shorten(exc.args[0])!r} in the library.")

    @app.errorhandler(FileNotFoundError)
    def vanished(exc: FileNotFoundError):
        # Another request deleted the image between the name check and the read.
        return error_response(404, "The image is no longer in the library.")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code == 413:
            return error_response(413, "The request is too large.")
        if request.path.startswith("/api/") or request.path.startswith("/images/"):
            return error_response(exc.code or 500, exc.description or exc.name)
        return exc

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("Unhandled error on %s %s", request.method, request.path)
        return error_response(500, "Internal server error.")
