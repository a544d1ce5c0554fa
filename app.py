"""Entry point: `python app.py [--host HOST] [--port PORT]` serves the image search app."""
from __future__ import annotations

import argparse
import errno
import logging
import socket

from imgsearch.catalogue import CatalogueError
from imgsearch.config import Settings
from imgsearch.web import create_app
from imgsearch.web.hosts import HostAllowlist, bind_addresses

log = logging.getLogger("imgsearch")


def bind(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address `host` resolves to; raises SystemExit with one line if any is taken."""
    sockets = []
    try:
        for family, kind, proto, _, address in bind_addresses(host, port):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        reason = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror or exc})"
        raise SystemExit(f"Port {port} on {host} {reason}; start the app on another one with --port.") from None
    return sockets


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
    if args.threads < settings.max_streams + 2:
        parser.error(f"--threads must be at least IMAGE_SEARCH_MAX_STREAMS + 2 ({settings.max_streams + 2}), "
                     "so that progress streams cannot hold every thread")
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Bind before the model loads, so a taken port is one line at once rather than a traceback later.
    sockets = bind(settings.host, settings.port)
    hosts = HostAllowlist.for_settings(settings)
    if not hosts.loopback_only and not settings.token:
        log.warning("Binding to %s without IMAGE_SEARCH_TOKEN: anyone who can reach this address can upload "
                    "and delete images. Requests are served only under %s (add names with "
                    "IMAGE_SEARCH_ALLOWED_HOSTS). Set IMAGE_SEARCH_TOKEN to require a token.",
                    settings.host, hosts.describe())
    try:
        app = create_app(settings)
    except CatalogueError as exc:
        log.error("%s", exc)
        raise SystemExit(1) from None
    if args.dev:
        for sock in sockets:  # Flask's server binds on its own
            sock.close()
        log.info("Serving on http://%s:%d", settings.host, settings.port)
        app.run(host=settings.host, port=settings.port, threaded=True)
    else:
        from waitress import create_server

        # Waitress buffers a whole body before Flask sees it: cap it at what Flask would accept anyway.
        server = create_server(app, sockets=sockets, threads=args.threads, channel_timeout=120,
                               max_request_body_size=app.config["MAX_CONTENT_LENGTH"])
        log.info("Serving on http://%s:%d", settings.host, settings.port)
        server.run()


if __name__ == "__main__":
    main()
