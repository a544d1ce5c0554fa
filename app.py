"""Entry point: `python app.py [--host HOST] [--port PORT]` serves the image search app."""
from __future__ import annotations

import argparse
import logging

from imgsearch.config import Settings
from imgsearch.web import LOOPBACK_NAMES, create_app

log = logging.getLogger("imgsearch")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Image similarity search web app.")
    parser.add_argument("--host", help="address to bind (default from HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default from PORT, else 5000)")
    parser.add_argument("--threads", type=int, default=8, help="request threads of the waitress server")
    parser.add_argument("--dev", action="store_true", help="use Flask's development server instead of waitress")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(host=args.host, port=args.port)
    except ValueError as exc:
        parser.error(str(exc))  # one line and exit code 2, before anything loads
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.host not in LOOPBACK_NAMES and not settings.token:
        log.warning("Binding to %s without IMAGE_SEARCH_TOKEN: anyone who can reach this address can upload "
                    "and delete images. Set IMAGE_SEARCH_TOKEN to require a token.", settings.host)
    app = create_app(settings)
    log.info("Serving on http://%s:%d", settings.host, settings.port)
    if args.dev:
        app.run(host=settings.host, port=settings.port, threaded=True)
    else:
        from waitress import serve

        # Waitress buffers a whole body before Flask sees it: cap it at what Flask would accept anyway.
        serve(app, host=settings.host, port=settings.port, threads=args.threads, channel_timeout=120,
              max_request_body_size=app.config["MAX_CONTENT_LENGTH"])


if __name__ == "__main__":
    main()
