"""Twenty clients hammer one real server at once; afterwards the gallery, the feature files and the index agree.

The clients upload (with clashing names), search by file and by library name, delete one or several images,
fetch thumbnails, start feature generation and drop files into images/ by hand, all at the same time.
`IMAGE_SEARCH_CONCURRENCY_SECONDS` sets how long they run (default 20, on each database).

The races such a run can only hit by luck are then replayed deterministically in-process: the competing
request is made to happen exactly inside the window between a check and the action that relies on it.
"""
from __future__ import annotations

import collections
import io
import itertools
import json
import os
import random
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import DEFAULT_ORIGINALS, LiveServer, build_app, make_image, make_library
from imgsearch import imaging
from imgsearch.config import Settings
from imgsearch.imaging import ALLOWED_EXTENSIONS
from imgsearch.catalogue import Catalogue, database_url, read_vectors
from imgsearch.engines.color import ColorHistogramEngine
from imgsearch.store import FeatureSet

# Slow: real server processes (or the browser, or the benchmark run); `make test-fast` leaves these out.
pytestmark = pytest.mark.slow

DURATION = float(os.environ.get("IMAGE_SEARCH_CONCURRENCY_SECONDS", "20"))
CLIENTS = 20
COLOURS = ["red", "green", "blue", "yellow", "purple", "gray"]
# Names several clients upload at once, so that they compete for the same free name.
SHARED_NAMES = ["photo.png", "IMG_0001.jpg", "red_circle.png", "holiday.png"]
# Which statuses each operation may get while others change the library under it; anything else is a failure.
ALLOWED = {
    "upload": {200},
    "search_file": {200},
    "search_name": {200, 404},
    "delete": {200, 404},
    "delete_many": {200, 404},
    "generate": {200, 429},  # 429: every progress stream slot is taken while the job runs
    "thumbnail": {200, 404},
    "image": {200, 404},
    "list": {200},
    "status": {200},
    "drop": {None},
}
WEIGHTS = {"upload": 6, "search_file": 3, "search_name": 3, "delete": 3, "delete_many": 1, "generate": 1,
           "thumbnail": 3, "image": 1, "list": 2, "status": 1, "drop": 1}


class Shared:
    """What the clients learn and record, behind one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.user_images: list[str] = []
        self.uploaded: set[str] = set()
        self.deleted: set[str] = set()
        self.statuses: collections.Counter = collections.Counter()
        self.failures: list[str] = []
        self.server_errors = 0
        self.serial = itertools.count()


class Client(threading.Thread):
    def __init__(self, number: int, server: LiveServer, images_dir: Path, shared: Shared, deadline: float):
        super().__init__(name=f"client-{number}", daemon=True)
        self.number = number
        self.base = server.url
        self.images_dir = images_dir
        self.shared = shared
        self.deadline = deadline
        self.rng = random.Random(number)
        self.http = requests.Session()

    def run(self):
        names, weights = zip(*WEIGHTS.items())
        while time.monotonic() < self.deadline:
            operation = self.rng.choices(names, weights)[0]
            try:
                status, body = getattr(self, operation)()
            except requests.RequestException as exc:
                status, body = f"exception {type(exc).__name__}", str(exc)
            with self.shared.lock:
                self.shared.statuses[(operation, status)] += 1
                self.shared.server_errors += isinstance(status, int) and status >= 500
                if status not in ALLOWED[operation]:
                    self.shared.failures.append(f"{operation}: {status} {body[:300]}")

    def _some_user_image(self) -> str | None:
        with self.shared.lock:
            return self.rng.choice(self.shared.user_images) if self.shared.user_images else None

    def _any_image(self) -> str:
        return self._some_user_image() if self.rng.random() < 0.6 else self.rng.choice(list(DEFAULT_ORIGINALS))

    def _image_bytes(self, fmt: str | None = None) -> tuple[bytes, str]:
        fmt = fmt or self.rng.choice(["PNG", "JPEG"])
        data = make_image(self.rng.choice(COLOURS), size=(48, 40), fmt=fmt, seed=self.rng.randrange(10**6))
        return data, fmt

    def upload(self):
        data, fmt = self._image_bytes()
        if self.rng.random() < 0.5:
            name = self.rng.choice(SHARED_NAMES)
        else:
            name = f"client{self.number}_{next(self.shared.serial)}.{'png' if fmt == 'PNG' else 'jpg'}"
        response = self.http.post(self.base + "/api/upload-image", files={"file": (name, data)}, timeout=60)
        if response.status_code == 200:
            stored = response.json()["filename"]
            with self.shared.lock:
                self.shared.uploaded.add(stored)
                self.shared.user_images.append(stored)
        return response.status_code, response.text

    def search_file(self):
        data, _ = self._image_bytes()
        response = self.http.post(self.base + "/api/search", files={"file": ("query.png", data)},
                                  data={"k": "5"}, timeout=60)
        return response.status_code, response.text

    def search_name(self):
        name = self._any_image() or "red_circle.png"
        response = self.http.post(self.base + "/api/search", json={"filename": name, "k": 5}, timeout=60)
        return response.status_code, response.text

    def _forget(self, names):
        with self.shared.lock:
            self.shared.deleted.update(names)
            self.shared.user_images = [n for n in self.shared.user_images if n not in names]

    def delete(self):
        name = self._some_user_image()
        if name is None:
            return 404, "nothing to delete yet"
        response = self.http.delete(f"{self.base}/api/delete-image/{name}", timeout=60)
        if response.status_code == 200:
            self._forget({name})
        return response.status_code, response.text

    def delete_many(self):
        names = sorted({n for n in (self._some_user_image(), self._some_user_image()) if n})
        if not names:
            return 404, "nothing to delete yet"
        response = self.http.post(self.base + "/api/delete-images", json={"filenames": names}, timeout=60)
        if response.status_code == 200:
            self._forget(set(response.json()["deleted"]))
        return response.status_code, response.text

    def generate(self):
        with self.http.post(self.base + "/api/generate-features", stream=True, timeout=120) as response:
            events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith(b"data: ")]
        if response.status_code == 200 and not (events and events[-1].get("complete")):
            return "stream ended without completing", json.dumps(events[-3:])
        return response.status_code, json.dumps(events[-1:])

    def thumbnail(self):
        response = self.http.get(f"{self.base}/images/thumb/{self._any_image()}", timeout=60)
        return response.status_code, response.text if response.status_code != 200 else ""

    def image(self):
        response = self.http.get(f"{self.base}/images/{self._any_image()}", timeout=60)
        return response.status_code, response.text if response.status_code != 200 else ""

    def list(self):
        response = self.http.get(self.base + "/api/images", timeout=60)
        if response.status_code == 200:
            listing = response.json()
            originals = set(listing["original_images"])
            with self.shared.lock:
                self.shared.user_images = [n for n in listing["images"] if n not in originals]
        return response.status_code, ""

    def status(self):
        response = self.http.get(self.base + "/api/status", timeout=60)
        return response.status_code, response.text

    def drop(self):
        """Copy an image into images/ behind the app's back, the way a user adds files by hand."""
        name = f"hand_{self.number}_{next(self.shared.serial)}.png"
        staged = self.images_dir.parent / f"staging-{name}"
        staged.write_bytes(self._image_bytes("PNG")[0])
        os.replace(staged, self.images_dir / name)
        with self.shared.lock:
            self.shared.uploaded.add(name)
        return None, ""


def catalogue_state(data_dir: Path, env: dict[str, str],
                    model_id: str = "color-none-chi2") -> tuple[dict[str, bool], set[str]]:
    """The catalogue's rows (name -> original?) and the names with a vector, read from its database."""
    catalogue = Catalogue(database_url(env.get("IMAGE_SEARCH_DATABASE", ""), data_dir)).open()
    try:
        rows = {record.name: record.is_original for record in catalogue.records()}
        with catalogue.reading() as conn:
            vectors = {name for names, _, _ in read_vectors(conn, model_id, ColorHistogramEngine.dim) for name in names}
    finally:
        catalogue.close()
    return rows, vectors


@pytest.mark.timeout(DURATION + 240)
def test_many_clients_leave_a_consistent_library(tmp_path, catalogue_env):
    originals = {name: make_image(colour, shape=shape, seed=i)
                 for i, (name, (colour, shape)) in enumerate(DEFAULT_ORIGINALS.items())}
    data_dir = make_library(tmp_path / "data", originals)
    images_dir = data_dir / "images"
    server = LiveServer(data_dir, {"IMAGE_SEARCH_MODEL": "color", **catalogue_env}).start()
    shared = Shared()
    try:
        deadline = time.monotonic() + DURATION
        clients = [Client(i, server, images_dir, shared, deadline) for i in range(CLIENTS)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(DURATION + 120)
        assert not any(client.is_alive() for client in clients), "a client hung"

        # One last run indexes whatever the hand-dropped files left pending.
        final = requests.post(server.url + "/api/generate-features", timeout=120).text
        assert '"complete": true' in final
        status = requests.get(server.url + "/api/status", timeout=30).json()
        listing = requests.get(server.url + "/api/images", timeout=30).json()
    finally:
        server.stop()

    print(dict(shared.statuses))
    assert shared.server_errors == 0, shared.failures[:10]
    assert not shared.failures, shared.failures[:10]
    assert sum(n for (op, _), n in shared.statuses.items() if op == "upload") > CLIENTS

    on_disk = {p.name for p in images_dir.iterdir() if p.suffix[1:].lower() in ALLOWED_EXTENSIONS}
    assert set(listing["images"]) == on_disk
    assert set(listing["original_images"]) == set(originals)
    assert shared.uploaded - shared.deleted <= on_disk, "an upload that was never deleted is missing"

    assert status["pending"] == 0 and status["unreadable"] == []
    assert status["indexed"] == len(on_disk) and status["index"]["consistent"] is True
    rows, with_vectors = catalogue_state(data_dir, catalogue_env)
    assert set(rows) == with_vectors == on_disk, "the catalogue and the images disagree"
    assert {name for name, original in rows.items() if original} == set(originals)

    thumbnails = {p.name for p in (data_dir / "thumbnails").iterdir()}
    assert {name[: -len(".jpg")] for name in thumbnails} <= on_disk, "thumbnail of a deleted image"
    assert list((data_dir / "uploads").iterdir()) == []
    assert not list(data_dir.rglob("*.tmp"))
    assert "Traceback" not in server.output()


# ----- the same races, made deterministic: the other request runs exactly inside the window -----------------

@pytest.fixture
def app(data_dir, cache_dir):
    return build_app(Settings(data_dir=data_dir, cache_dir=cache_dir, model="color"))


def _upload(client, name: str):
    return client.post("/api/upload-image", data={"file": (io.BytesIO(make_image("green", seed=9)), name)},
                       content_type="multipart/form-data")


@pytest.mark.parametrize("request_line", ["GET /images/{}", "GET /images/thumb/{}", "POST /api/search"])
def test_image_deleted_between_check_and_read_is_a_404(app, data_dir, monkeypatch, request_line):
    (data_dir / "images" / "dropped.png").write_bytes(make_image("blue", seed=4))  # not indexed yet
    library = app.extensions["image_search"].library
    check = library.path_of

    def check_then_lose(name):
        path = check(name)
        path.unlink(missing_ok=True)
        return path

    monkeypatch.setattr(library, "path_of", check_then_lose)
    method, path = request_line.split()
    response = app.test_client().open(path.format("dropped.png"), method=method, json={"filename": "dropped.png"})
    assert response.status_code == 404 and response.is_json and response.get_json()["error"]


def test_upload_deleted_before_it_is_indexed_is_still_a_success(app, data_dir, monkeypatch):
    service = app.extensions["image_search"]
    link = service.library.link_upload

    def link_then_lose(*args):
        name = link(*args)
        (data_dir / "images" / name).unlink()  # removed by hand the moment it appeared
        return name

    monkeypatch.setattr(service.library, "link_upload", link_then_lose)
    response = _upload(app.test_client(), "fleeting.png")
    assert response.status_code == 200 and response.get_json()["filename"] == "fleeting.png"
    assert "fleeting.png" not in service.store and not (data_dir / "images" / "fleeting.png").exists()
    assert "fleeting.png" not in service.catalogue


def test_thumbnail_finished_after_its_image_was_deleted_is_not_kept(app, data_dir, monkeypatch):
    client = app.test_client()
    name = _upload(client, "brief.png").get_json()["filename"]
    service = app.extensions["image_search"]
    write = imaging.write_thumbnail

    def write_while_deleted(source, destination):
        unfinished = destination.with_name("unfinished.jpg")
        write(source, unfinished)
        service.delete_images([name])
        os.replace(unfinished, destination)

    monkeypatch.setattr(imaging, "write_thumbnail", write_while_deleted)
    assert client.get(f"/images/thumb/{name}").status_code == 404
    assert list((data_dir / "thumbnails").iterdir()) == []


def test_row_readers_never_see_a_half_compacted_feature_set(tmp_path):
    """Status and search read single rows without any lock while deletes mark and compact the set."""
    feature_set = FeatureSet(4)
    names = [f"img{i}.png" for i in range(200)]
    stamp_of = {name: (i, 10_000 + i) for i, name in enumerate(names)}
    vector_of = {name: np.full(4, i, np.float32) for i, name in enumerate(names)}
    feature_set.add(names, np.stack([vector_of[n] for n in names]), [stamp_of[n] for n in names])
    stop, wrong = threading.Event(), []

    def read():
        rng = random.Random(threading.get_ident())
        while not stop.is_set():
            name = rng.choice(names)
            try:
                stamp, vector = feature_set.stamp(name), feature_set.vector(name)
            except Exception as exc:  # an IndexError is exactly the failure this test looks for
                wrong.append(repr(exc))
                continue
            if stamp not in (None, stamp_of[name]) or (vector is not None and vector[0] != vector_of[name][0]):
                wrong.append(f"{name}: {stamp} {vector}")

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    readers = [threading.Thread(target=read) for _ in range(3)]
    try:
        for reader in readers:
            reader.start()
        for round_ in range(300):
            gone = random.Random(round_).sample(names, 20)
            feature_set.remove(gone)
            feature_set.add(gone, np.stack([vector_of[n] for n in gone]), [stamp_of[n] for n in gone])
    finally:
        stop.set()
        for reader in readers:
            reader.join()
        sys.setswitchinterval(switch)
    assert wrong == []
