"""The HTTP layer: the only part of the project that imports Flask."""
from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

from flask import Flask, request

from ..config import PROJECT_DIR, Settings
from ..engines import load_active_engine
from ..imaging import configure_decoding
from ..service import ImageSearchService
from . import api, errors, images, pages
from .errors import ApiError

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
# Only multipart uploads carry images. A JSON or form body beyond this is no request of ours, and parsing
# one costs several times its size in memory, even before the token is checked.
MAX_PLAIN_BODY = 1024 * 1024


def create_app(settings: Settings | None = None, service: ImageSearchService | None = None) -> Flask:
    """Build the app: load the engine (once), open the feature store, register the routes."""
    settings = settings or Settings.from_env()
    configure_decoding(settings.max_image_pixels, settings.max_decode_bytes, settings.max_decodes)
    if service is None:
        engine = load_active_engine(settings)
        engine.warm_up()
        service = ImageSearchService(settings, engine).open()
    app = Flask(
        __name__,
        template_folder=str(Path(PROJECT_DIR) / "templates"),
        static_folder=str(Path(PROJECT_DIR) / "static"),
    )
    # Room for a full request of max-size files; each file's own limit is checked separately.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_files_per_request * settings.max_upload_bytes + 1024 * 1024
    app.config["MAX_FORM_MEMORY_SIZE"] = 1024 * 1024
    app.url_map.merge_slashes = False  # a doubled slash is a bad name (404), not a redirect
    app.extensions["image_search"] = service
    errors.init_app(app)
    app.before_request(_cap_plain_bodies)
    if settings.host in LOOPBACK_NAMES and not settings.token:
        app.before_request(_refuse_foreign_host_names)
    app.register_blueprint(pages.blueprint)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(images.blueprint)
    return app


def _refuse_foreign_host_names():
    """Without a token, only requests addressed to this machine by a loopback name are served.

    A web page can point its own domain at 127.0.0.1 (DNS rebinding) and then use the app as if it were that
    site, reading the gallery and deleting images; its requests still name that domain in the Host header.
    """
    try:
        hostname = urlsplit(f"//{request.host}").hostname
    except ValueError:
        hostname = None
    if hostname not in LOOPBACK_NAMES:
        raise ApiError(403, "This server answers only requests to localhost or 127.0.0.1; "
                            "set IMAGE_SEARCH_TOKEN to serve it under another name.")


def _cap_plain_bodies():
    if request.mimetype != "multipart/form-data":
        request.max_content_length = MAX_PLAIN_BODY
