"""Shared fixtures: generated images in a temporary library, apps built on real engines, a live server."""
from __future__ import annotations

import contextlib
import http.server
import io
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bench.common import PostgresServer, ServerProcess, postgres_binaries
from imgsearch.config import Settings
from imgsearch.engines import get_engine
from imgsearch.service import ImageSearchService
from imgsearch.web import create_app

PROJECT_DIR = Path(__file__).resolve().parent.parent
# The labelled evaluation sets are never part of the project: tests that need one find it here, or skip.
DATASETS = Path(os.environ.get("IMAGE_SEARCH_TEST_DATASETS", PROJECT_DIR.parent / "shared" / "datasets"))


def dataset(name: str) -> Path:
    """The folder of a labelled evaluation set (corel1k, caltech101), or a skip that says how to supply it."""
    folder = DATASETS / name
    if not (folder / "labels.csv").is_file():
        pytest.skip(f"the {name} dataset is not at {folder}: set IMAGE_SEARCH_TEST_DATASETS to the folder that "
                    f"holds {name}/labels.csv (default: ../shared/datasets beside the project)")
    return folder

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run"]

PALETTE = {
    "red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220),
    "yellow": (240, 220, 20), "purple": (140, 40, 160), "gray": (128, 128, 128),
}


def make_image(color="red", size=(96, 80), fmt="PNG", seed=0, shape="ellipse") -> bytes:
    """A small synthetic photo-like image: a coloured shape on a noisy background."""
    rng = np.random.default_rng(seed)
    base = np.full((size[1], size[0], 3), 235, np.uint8)
    base = np.clip(base.astype(int) + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(base)
    draw = ImageDraw.Draw(image)
    w, h = size
    box = (w * 0.15, h * 0.15, w * 0.85, h * 0.85)
    getattr(draw, shape)(box, fill=PALETTE[color])
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def make_library(data_dir: Path, originals: dict[str, bytes], uploads: dict[str, bytes] | None = None) -> Path:
    images = data_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    for name, data in {**originals, **(uploads or {})}.items():
        (images / name).write_bytes(data)
    (data_dir / "original_filenames.txt").write_text("".join(f"{n}\n" for n in sorted(originals)))
    return data_dir


DEFAULT_ORIGINALS = {
    "red_circle.png": ("red", "ellipse"),
    "red_square.png": ("red", "rectangle"),
    "blue_circle.png": ("blue", "ellipse"),
    "blue_square.png": ("blue", "rectangle"),
    "green_circle.png": ("green", "ellipse"),
    "yellow_square.png": ("yellow", "rectangle"),
}


@pytest.fixture
def data_dir(tmp_path) -> Path:
    originals = {name: make_image(color, shape=shape, seed=i)
                 for i, (name, (color, shape)) in enumerate(DEFAULT_ORIGINALS.items())}
    return make_library(tmp_path / "data", originals)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return Path(os.environ.get("IMAGE_SEARCH_TEST_CACHE", tmp_path_factory.mktemp("model-cache")))


@pytest.fixture
def settings(data_dir, cache_dir) -> Settings:
    """In-process apps do not watch their folder: a test says when files are synced (the watcher has its own tests)."""
    return Settings(data_dir=data_dir, cache_dir=cache_dir, model="efficientnet-lite0", batch_size=4,
                    watch_folder=False, rescan_seconds=0)


_open_services: list[ImageSearchService] = []


def build_app(settings: Settings, wait: bool = True, close_after_test: bool = True):
    """An app on a real service; it is closed after the test unless the caller closes it (a module's app)."""
    engine = get_engine(settings.model, settings)
    service = ImageSearchService(settings, engine).open()
    if close_after_test:
        _open_services.append(service)
    if wait and service.startup_job is not None:
        service.startup_job.thread.join()
    app = create_app(settings, service=service)
    app.config["TESTING"] = True
    return app


@pytest.fixture(autouse=True)
def close_services():
    """Services built in a test stop their watcher and follower threads and let their database go after it."""
    yield
    while _open_services:
        _open_services.pop().close()


@pytest.fixture
def app(settings):
    return build_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


class LiveServer(ServerProcess):
    """`python app.py` as a real process on a free port, ready once its startup indexing has finished."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, cache_dir: Path | None = None,
                 log_name: str = "server.log"):
        server_env = {"IMAGE_SEARCH_DATA_DIR": str(data_dir), "IMAGE_SEARCH_MODEL": "efficientnet-lite0"}
        if cache_dir:
            server_env["IMAGE_SEARCH_CACHE_DIR"] = str(cache_dir)
        super().__init__([sys.executable, str(PROJECT_DIR / "app.py")], {**server_env, **(env or {})},
                         data_dir / log_name, "/api/status",
                         ready=lambda response: response.json()["startup"]["state"] == "ready")

    def start(self, timeout: float = 180) -> "LiveServer":
        return super().start(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self._log.close()


@pytest.fixture
def live_server(data_dir, cache_dir, request):
    server = LiveServer(data_dir, cache_dir=cache_dir).start()
    yield server
    server.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(server.output())


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session; tests that need it skip, saying why, when it is not installed."""
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server programs are not installed (Debian: apt-get install postgresql; "
                    ".ci/run installs them)")
    server = PostgresServer(binaries).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalogue_env(request) -> dict[str, str]:
    """The environment that puts a live server's catalogue in SQLite (the default) or in a new PostgreSQL database."""
    if request.param == "sqlite":
        return {}
    return {"IMAGE_SEARCH_DATABASE": request.getfixturevalue("postgres").create_database()}


@pytest.fixture(scope="session")
def image_server():
    """A loopback web server for search by URL: `/blue.png` is an image, `/page.html` is not, the rest 404."""
    files = {"/blue.png": (make_image("blue", seed=42), "image/png"), "/page.html": (b"<html></html>", "text/html")}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body, kind = files.get(self.path, (b"not found", "text/plain"))
            self.send_response(200 if self.path in files else 404)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with loopback_server(Handler) as url:
        yield url


@contextlib.contextmanager
def loopback_server(handler):
    """A threaded HTTP server on a free loopback port, serving `handler`; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright, one per test module."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()
