"""Shared fixtures: generated images in a temporary library, apps built on real engines, a live server."""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image, ImageDraw

from imgsearch.config import Settings
from imgsearch.engines import get_engine
from imgsearch.service import ImageSearchService
from imgsearch.web import create_app

PROJECT_DIR = Path(__file__).resolve().parent.parent
SHARED_DATASETS = PROJECT_DIR.parent / "shared" / "datasets"

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
    return Settings(data_dir=data_dir, cache_dir=cache_dir, model="efficientnet-lite0", batch_size=4)


def build_app(settings: Settings, wait: bool = True):
    engine = get_engine(settings.model, settings)
    service = ImageSearchService(settings, engine).open()
    if wait and service.startup_job is not None:
        service.startup_job.thread.join()
    app = create_app(settings, service=service)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def app(settings):
    return build_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """`python app.py` as a real process on a free port."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, cache_dir: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "server.log"
        self.env = {**os.environ, "IMAGE_SEARCH_DATA_DIR": str(data_dir), "IMAGE_SEARCH_MODEL": "efficientnet-lite0",
                    "PYTHONUNBUFFERED": "1", **(env or {})}
        if cache_dir:
            self.env.setdefault("IMAGE_SEARCH_CACHE_DIR", str(cache_dir))
        self.process = None

    def start(self, timeout: float = 180) -> "LiveServer":
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, str(PROJECT_DIR / "app.py"), "--port", str(self.port)],
            cwd=PROJECT_DIR, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                status = requests.get(self.url + "/api/status", timeout=2).json()
                if status["startup"]["state"] == "ready":
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server did not become ready:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

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
