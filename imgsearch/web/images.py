"""Library files and their thumbnails, with caching headers; anything outside the library is a 404."""
from __future__ import annotations

from flask import Blueprint, current_app, send_file

blueprint = Blueprint("images", __name__)


def _send(path, mimetype=None):
    response = send_file(path, mimetype=mimetype, conditional=True, etag=True, max_age=3600)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@blueprint.get("/images/<path:filename>")
def image(filename: str):
    service = current_app.extensions["image_search"]
    return _send(service.library.path_of(filename))


@blueprint.get("/images/thumb/<path:filename>")
def thumbnail(filename: str):
    service = current_app.extensions["image_search"]
    return _send(service.library.thumbnail(filename), "image/jpeg")
