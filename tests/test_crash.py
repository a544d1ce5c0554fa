"""SIGKILL the real server while it writes, restart it, and check that nothing is lost or left half-done.

Right after each kill, the catalogue holds a row and a vector for every upload that was answered 200 (a
change is acknowledged only once its transaction has committed). After every restart: no temporary files
of the interrupted writes remain, every acknowledged upload is in the library, and the work that was
pending is picked up again on its own (the server indexes pending images at startup).
The folder watcher is off here, so that feature generation runs only when a test asks for it.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import LiveServer, make_image, make_library
from imgsearch.catalogue import Catalogue, database_url, read_vectors
from imgsearch.engines.color import ColorHistogramEngine

# Slow: real server processes (or the browser, or the benchmark run); `make test-fast` leaves these out.
pytestmark = pytest.mark.slow

ENV = {"IMAGE_SEARCH_MODEL": "color", "IMAGE_SEARCH_BATCH_SIZE": "4", "IMAGE_SEARCH_WATCH": "0",
       "IMAGE_SEARCH_RESCAN_SECONDS": "0"}
HAND_COPIED = 150
UPLOAD_KILL_DELAYS = (0.4, 0.9, 1.5)


def leftovers(data_dir: Path) -> list[str]:
    """Temporary files of writes that never finished: staged uploads and atomic-write temp files."""
    staged = [p for p in (data_dir / "uploads").iterdir()]
    temporary = [p for p in data_dir.rglob("*.tmp")]
    return sorted(str(p.relative_to(data_dir)) for p in staged + temporary)


def committed_vectors(data_dir: Path, env: dict[str, str]) -> set[str]:
    """Names with a row and a colour vector in the catalogue, as a crash left it."""
    catalogue = Catalogue(database_url(env.get("IMAGE_SEARCH_DATABASE", ""), data_dir)).open()
    try:
        with catalogue.reading() as conn:
            with_vectors = {name for names, _, _ in read_vectors(conn, "color-none-chi2", ColorHistogramEngine.dim)
                            for name in names}
        return with_vectors & {record.name for record in catalogue.records()}
    finally:
        catalogue.close()


def assert_recovered(server: LiveServer, data_dir: Path, must_exist: set[str]) -> dict:
    """The restarted server (already past its startup indexing) has a whole, consistent library."""
    status = requests.get(server.url + "/api/status", timeout=30).json()
    assert status["pending"] == 0 and status["unreadable"] == []
    listing = requests.get(server.url + "/api/images", timeout=30).json()
    assert must_exist <= set(listing["images"]), sorted(must_exist - set(listing["images"]))
    assert status["indexed"] == len(listing["images"])
    assert leftovers(data_dir) == []
    return status


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return make_library(tmp_path / "data", {f"original_{i}.png": make_image("red", seed=i) for i in range(3)})


@pytest.fixture
def env(catalogue_env) -> dict[str, str]:
    return {**ENV, **catalogue_env}


@pytest.mark.timeout(240)
def test_kill_during_feature_generation(data_dir, env):
    server = LiveServer(data_dir, env).start()
    images = data_dir / "images"
    for i in range(HAND_COPIED):
        (images / f"copied_{i:03d}.jpg").write_bytes(
            make_image(["red", "green", "blue"][i % 3], size=(160, 120), fmt="JPEG", seed=i))
    seen = {}
    try:
        with requests.post(server.url + "/api/generate-features", stream=True, timeout=60) as stream:
            for line in stream.iter_lines():
                if line.startswith(b"data: "):
                    seen = json.loads(line[6:])
                    if seen.get("current", 0) > 0:
                        server.kill()
                        break
    finally:
        server.stop()
    assert 0 < seen["current"] < seen["total"] == HAND_COPIED, seen
    assert 3 <= len(committed_vectors(data_dir, env)) < HAND_COPIED + 3  # whole batches, committed as they finished

    restarted = LiveServer(data_dir, env).start()
    try:
        status = assert_recovered(restarted, data_dir, {f"copied_{i:03d}.jpg" for i in range(HAND_COPIED)})
        assert status["indexed"] == HAND_COPIED + 3
    finally:
        restarted.stop()


class Uploader(threading.Thread):
    """Uploads in a loop until the server dies; remembers every name that was answered 200."""

    def __init__(self, url: str, number: int, accepted: set[str]):
        super().__init__(daemon=True)
        self.url, self.number, self.accepted = url, number, accepted

    def run(self):
        session = requests.Session()
        for i in range(10_000):
            data = make_image(["blue", "yellow", "purple"][i % 3], size=(64, 48), seed=1000 * self.number + i)
            try:
                response = session.post(self.url + "/api/upload-image",
                                        files={"file": (f"up{self.number}_{i}.png", data)}, timeout=30)
            except requests.RequestException:
                return
            if response.status_code == 200:
                self.accepted.add(response.json()["filename"])


@pytest.mark.timeout(240)
def test_kill_during_uploads(data_dir, env):
    accepted: set[str] = set()
    for delay in UPLOAD_KILL_DELAYS:
        server = LiveServer(data_dir, env).start()
        try:
            assert_recovered(server, data_dir, accepted)
            uploaders = [Uploader(server.url, n, accepted) for n in range(3)]
            for uploader in uploaders:
                uploader.start()
            time.sleep(delay)
            server.kill()
            for uploader in uploaders:
                uploader.join(60)
        finally:
            server.stop()
        assert accepted <= committed_vectors(data_dir, env), sorted(accepted - committed_vectors(data_dir, env))
    assert len(accepted) > len(UPLOAD_KILL_DELAYS)

    final = LiveServer(data_dir, env).start()
    try:
        assert_recovered(final, data_dir, accepted)
    finally:
        final.stop()


def test_temporary_files_of_interrupted_writes_are_removed_at_startup(data_dir):
    """What a kill in the middle of a write leaves: a staged upload and atomic-write temp files."""
    first = LiveServer(data_dir, ENV).start()
    first.stop()
    planted = [data_dir / "uploads" / ".upload-k1ll3d", data_dir / "thumbnails" / ".original_0.png.jpg.k1ll3d.tmp"]
    in_progress = data_dir / "uploads" / ".upload-0f4n0th3r"  # another server on the folder, writing right now
    for path in planted + [in_progress]:
        path.write_bytes(b"half written")
    an_hour_ago = time.time() - 3600
    for path in planted:
        os.utime(path, (an_hour_ago, an_hour_ago))
    server = LiveServer(data_dir, ENV).start()
    try:
        assert "Removed 2 temporary files" in server.output()
        assert in_progress.exists() and not any(path.exists() for path in planted)
    finally:
        server.stop()
