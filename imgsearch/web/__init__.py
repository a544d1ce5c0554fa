"""The HTTP layer: the only part of the project that imports Flask."""
from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask

from ..config import PROJECT_DIR, Settings
from ..engines import load_active_engine
from ..imaging import configure_pillow
from ..service import ImageSearchService
from . import api, errors, images, pages

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, service: ImageSearchService | None = None) -> Flask:
    """Build the app: load the engine (once), open the feature store, register the routes."""
    settings = settings or Settings.from_env()
    configure_pillow(settings.max_image_pixels)
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
    app.register_blueprint(pages.blueprint)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(images.blueprint)
    return app
