"""The HTTP layer: the only part of the project that imports Flask."""
from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask, request

from ..config import PROJECT_DIR, Settings
from ..engines import load_active_engine
from ..imaging import configure_decoding
from ..service import ImageSearchService
from . import api, errors, images, pages
from .errors import ApiError
from .hosts import HostAllowlist

log = logging.getLogger(__name__)

# Only multipart uploads carry images. A JSON or form body beyond this is no request of ours, and parsing
# one costs several times its size in memory, even before the token is checked.
MAX_PLAIN_BODY = 1024 * 1024
# The UI runs only its own scripts and styles (no inline script or style attribute). Images may also be
# data: (the favicon), blob: (the preview of a query file) or any http(s) URL (the preview of a URL query,
# which the user typed). No site may frame the UI (clickjacking).
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self' data: blob: http: https:",
    "object-src 'none'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'",
])


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
    app.after_request(_security_headers)
    if not settings.token:
        app.before_request(_host_guard(HostAllowlist.for_settings(settings)))
    app.register_blueprint(pages.blueprint)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(images.blueprint)
    return app


def _host_guard(hosts: HostAllowlist):
    """Without a token, only requests addressed to this server's own addresses or configured names are served.

    See imgsearch/web/hosts.py for why (DNS rebinding) and how the names are found.
    """
    def refuse_foreign_host_names():
        if not hosts.allows(request.host):
            raise ApiError(403, "This server answers only to its own addresses and configured names; add this "
                                "name to IMAGE_SEARCH_ALLOWED_HOSTS, or set IMAGE_SEARCH_TOKEN.")

    return refuse_foreign_host_names


def _cap_plain_bodies():
    if request.mimetype != "multipart/form-data":
        request.max_content_length = MAX_PLAIN_BODY


def _security_headers(response):
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response
